//! Open files, and each inode's io mode. The kernel fixes an inode's mode
//! while it is open: a passthrough open of an inode open in cached mode
//! fails with EIO, and so does a passthrough open with a backing file
//! other than the one the inode already uses. So while one cached open
//! lasts (a binary that started running before its file was complete,
//! say) later opens of that inode are cached too, and all passthrough
//! opens of an inode share one backing file.
//!
//! Opening a backing file (open(2), an ioctl on /dev/fuse) and closing
//! one (its drop, another ioctl) happen outside the open-files lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ringstar_core::Digest;
use ringstar_fusedev::{BackingFile, BackingId};

/// An open regular file: its store key (pinned while open) and how it is
/// served.
#[derive(Debug)]
struct OpenFile {
    key: Digest,
    ino: u64,
    /// Served by passthrough (the inode's shared backing file).
    passthrough: bool,
}

#[derive(Debug, Default)]
struct Table {
    by_fh: HashMap<u64, OpenFile>,
    /// Inode → its cached opens.
    cached: HashMap<u64, u32>,
    /// Inode → its backing file and passthrough opens.
    passthrough: HashMap<u64, (Arc<BackingFile>, u32)>,
}

/// The open regular files of a mount.
#[derive(Debug, Default)]
pub(crate) struct OpenFiles {
    table: Mutex<Table>,
}

impl OpenFiles {
    /// Records open `fh` of inode `ino` (content `key`, pinned by the
    /// caller). `backing` makes a backing file when the inode has no mode
    /// yet; it runs without the lock. Returns the backing id when the
    /// open is served by passthrough.
    pub fn open(
        &self,
        fh: u64,
        ino: u64,
        key: Digest,
        backing: impl FnOnce() -> Option<BackingFile>,
    ) -> Option<BackingId> {
        let made = if self.has_mode(ino) {
            None
        } else {
            backing().map(Arc::new)
        };
        let mut t = self.table.lock().expect("open files");
        // Decided again under the lock: another open may have fixed the
        // mode meanwhile (then ours, if any, is dropped below, unlocked).
        let id = if t.cached.contains_key(&ino) {
            None
        } else if let Some((b, n)) = t.passthrough.get_mut(&ino) {
            *n += 1;
            Some(b.id())
        } else if let Some(b) = made.clone() {
            let id = b.id();
            t.passthrough.insert(ino, (b, 1));
            Some(id)
        } else {
            None
        };
        if id.is_none() {
            *t.cached.entry(ino).or_default() += 1;
        }
        t.by_fh.insert(
            fh,
            OpenFile {
                key,
                ino,
                passthrough: id.is_some(),
            },
        );
        drop(t);
        drop(made);
        id
    }

    /// Whether `ino` is open already (its mode fixed).
    fn has_mode(&self, ino: u64) -> bool {
        let t = self.table.lock().expect("open files");
        t.cached.contains_key(&ino) || t.passthrough.contains_key(&ino)
    }

    /// Forgets open `fh`; returns the key to unpin.
    pub fn release(&self, fh: u64) -> Option<Digest> {
        let mut t = self.table.lock().expect("open files");
        let f = t.by_fh.remove(&fh)?;
        let count = if f.passthrough {
            t.passthrough.get_mut(&f.ino).map(|(_, n)| n)
        } else {
            t.cached.get_mut(&f.ino)
        };
        let mut closed = None;
        if let Some(n) = count {
            *n -= 1;
            if *n == 0 {
                t.cached.remove(&f.ino);
                // The kernel holds its own reference to the backing file
                // for as long as it needs it.
                closed = t.passthrough.remove(&f.ino);
            }
        }
        drop(t);
        drop(closed);
        Some(f.key)
    }
}
