//! The store's in-memory state: every entry (complete or partial), the
//! pins, the bytes used, the use clock. Only ever touched under the
//! store's index lock, and so never across file I/O.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use super::keys::FileKey;
use crate::digest::Digest;

#[derive(Debug)]
pub(super) struct Record {
    pub(super) digest: Digest,
    /// Hashed again since this process loaded it (or written by it).
    pub(super) verified: bool,
}

/// A partial file's data file and journal.
pub(super) type PartialFiles = (Arc<File>, Arc<File>);

/// A file being filled, under its layout's key.
#[derive(Debug)]
pub(super) struct Partial {
    pub(super) content: Digest,
    /// `(offset, len)` → what was written there.
    pub(super) records: HashMap<(u64, u64), Record>,
    /// Data file and journal, once opened by a put.
    pub(super) files: Option<PartialFiles>,
    /// A put is creating or opening `files` (with the index unlocked):
    /// other puts wait for it rather than open the files again.
    pub(super) opening: bool,
    /// Puts writing to the files now (or opening them).
    pub(super) writers: u32,
    /// Covered, but the content does not hash to its digest: never
    /// promote (its chunks still serve readers of this layout).
    pub(super) mismatched: bool,
    /// Being hashed and renamed: no put may write.
    pub(super) promoting: bool,
}

impl Partial {
    pub(super) fn new(content: Digest) -> Partial {
        Partial {
            content,
            records: HashMap::new(),
            files: None,
            opening: false,
            writers: 0,
            mismatched: false,
            promoting: false,
        }
    }

    /// Whether verified records tile `[0, size)` (a layout's chunks tile
    /// its file, so this is "every chunk is in").
    pub(super) fn covered(&self, size: u64) -> bool {
        let mut spans: Vec<(u64, u64)> = self
            .records
            .iter()
            .filter(|(_, r)| r.verified)
            .map(|(&(o, l), _)| (o, o + l))
            .collect();
        spans.sort_unstable();
        let mut reach = 0u64;
        for (start, end) in spans {
            if start > reach {
                return false;
            }
            reach = reach.max(end);
        }
        reach >= size
    }
}

#[derive(Debug)]
pub(super) enum State {
    /// Under its content digest: the whole file. `verified`: hashed to
    /// its name in this process's life. A complete file an earlier run
    /// left is trusted only after that (once, on first use): promotion
    /// does not fsync, so after a crash its bytes may be torn.
    Complete { verified: bool },
    /// Under its layout digest.
    Partial(Partial),
}

#[derive(Debug)]
pub(super) struct Entry {
    /// This life of the entry: part of its file names, never reused.
    pub(super) id: u64,
    pub(super) size: u64,
    /// Bytes on disk this entry is charged for.
    pub(super) charged: u64,
    pub(super) last_use: u64,
    pub(super) state: State,
}

impl Entry {
    /// The content digest that pins it.
    pub(super) fn content<'a>(&'a self, key: &'a Digest) -> &'a Digest {
        match &self.state {
            State::Complete { .. } => key,
            State::Partial(p) => &p.content,
        }
    }

    /// Being written, opened or promoted: not to be evicted.
    pub(super) fn busy(&self) -> bool {
        matches!(&self.state, State::Partial(p) if p.writers > 0 || p.promoting)
    }
}

#[derive(Debug, Default)]
pub(super) struct Index {
    /// Complete files by content digest, partial ones by layout digest
    /// (the two never collide: layout digests are domain-separated).
    pub(super) entries: HashMap<Digest, Entry>,
    /// Contents some reader has open (whether or not stored yet): never
    /// evicted.
    pub(super) pins: HashMap<Digest, u32>,
    pub(super) used: u64,
    pub(super) clock: u64,
    pub(super) next_id: u64,
}

impl Index {
    pub(super) fn touch(&mut self, key: &Digest) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(e) = self.entries.get_mut(key) {
            e.last_use = clock;
        }
    }

    pub(super) fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The complete entry of `file`'s content, if it has `file`'s size.
    pub(super) fn complete(&self, file: &FileKey) -> Option<&Entry> {
        self.entries
            .get(&file.content)
            .filter(|e| matches!(e.state, State::Complete { .. }) && e.size == file.size)
    }

    /// The partial entry of `file`'s layout.
    pub(super) fn partial(&mut self, file: &FileKey) -> Option<(&mut Partial, u64)> {
        match self.entries.get_mut(&file.layout) {
            Some(Entry {
                id,
                size,
                state: State::Partial(p),
                ..
            }) if *size == file.size && p.content == file.content => Some((p, *id)),
            _ => None,
        }
    }
}
