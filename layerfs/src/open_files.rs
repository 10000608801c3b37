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
//!
//! When an inode's last passthrough open is released its backing file
//! is kept, registered, for the next open ([`IDLE_BACKINGS`] of them, the
//! least recently released closed first): a tar of an image, or each new
//! container's overlay, opens the same files again, and making a backing
//! file each time (open, ioctl; close, ioctl; a journal line each way)
//! was most of an OPEN and RELEASE (#18). The takeover journal keeps
//! naming the idle id as the inode's mode, so a successor reuses it
//! rather than leaking it; it is journaled away when closed.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ringstar_core::Digest;
use ringstar_fusedev::{BackingFile, BackingId};

use crate::journal::{IoMode, Journal};

/// An open regular file: its store key (pinned while open) and how it is
/// served.
#[derive(Debug)]
struct OpenFile {
    key: Digest,
    ino: u64,
    /// Served by passthrough (the inode's shared backing file).
    passthrough: bool,
}

/// An inode's backing file: ours, or one an earlier process on this
/// connection registered for opens we never saw (#16). An inherited id is
/// never closed: those opens may still use it, and the kernel refuses
/// another backing file for the inode while they last.
#[derive(Debug, Clone)]
enum Backing {
    Own(Arc<BackingFile>),
    Inherited(BackingId),
}

impl Backing {
    fn id(&self) -> BackingId {
        match self {
            Backing::Own(b) => b.id(),
            Backing::Inherited(id) => *id,
        }
    }
}

/// Backing files kept registered for inodes no open uses now. Each holds
/// a store file open (its disk space too, if evicted meanwhile).
pub(crate) const IDLE_BACKINGS: usize = 512;

#[derive(Debug)]
struct Table {
    by_fh: HashMap<u64, OpenFile>,
    /// Inode → its cached opens.
    cached: HashMap<u64, u32>,
    /// Inode → its backing file and passthrough opens.
    passthrough: HashMap<u64, (Backing, u32)>,
    /// Inode → its backing file, no open using it.
    idle: lru::LruCache<u64, Arc<BackingFile>>,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            by_fh: HashMap::new(),
            cached: HashMap::new(),
            passthrough: HashMap::new(),
            idle: lru::LruCache::new(NonZeroUsize::new(IDLE_BACKINGS).expect("nonzero")),
        }
    }
}

/// The open regular files of a mount.
#[derive(Debug, Default)]
pub(crate) struct OpenFiles {
    table: Mutex<Table>,
    /// Where mode changes are recorded for a process taking over.
    journal: Option<Arc<Journal>>,
    /// Backing files made so far.
    made: AtomicU64,
}

impl OpenFiles {
    /// Open files journaled to `journal`, starting from the modes that
    /// opens of an earlier process hold (`inherited`). Those inodes keep
    /// their mode for this process's life: their opens' releases carry
    /// handles this process never issued.
    pub fn resumed(journal: Arc<Journal>, inherited: &HashMap<u64, IoMode>) -> OpenFiles {
        let mut t = Table::default();
        for (&ino, &mode) in inherited {
            match mode {
                IoMode::Cached => {
                    t.cached.insert(ino, 1);
                }
                IoMode::Passthrough(raw) => {
                    let id = BackingId::inherited(raw);
                    t.passthrough.insert(ino, (Backing::Inherited(id), 1));
                }
            }
        }
        OpenFiles {
            table: Mutex::new(t),
            journal: Some(journal),
            made: AtomicU64::new(0),
        }
    }

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
        if made.is_some() {
            self.made.fetch_add(1, Ordering::Relaxed);
        }
        let mut t = self.table.lock().expect("open files");
        // Decided again under the lock: another open may have fixed the
        // mode meanwhile (then ours, if any, is dropped below, unlocked).
        let mut began = None;
        let id = if t.cached.contains_key(&ino) {
            None
        } else if let Some((b, n)) = t.passthrough.get_mut(&ino) {
            *n += 1;
            Some(b.id())
        } else if let Some(b) = t.idle.pop(&ino) {
            // Journaled as this inode's mode still.
            let id = b.id();
            t.passthrough.insert(ino, (Backing::Own(b), 1));
            Some(id)
        } else if let Some(b) = made.clone() {
            let id = b.id();
            t.passthrough.insert(ino, (Backing::Own(b), 1));
            began = Some(IoMode::Passthrough(id.get()));
            Some(id)
        } else {
            None
        };
        if id.is_none() {
            let n = t.cached.entry(ino).or_default();
            if *n == 0 {
                began = Some(IoMode::Cached);
            }
            *n += 1;
        }
        t.by_fh.insert(
            fh,
            OpenFile {
                key,
                ino,
                passthrough: id.is_some(),
            },
        );
        let seq = self.seq_if(began.is_some());
        drop(t);
        drop(made);
        // Recorded before the OPEN is answered: the kernel fixes the mode
        // only on our answer.
        if let (Some(j), Some(seq)) = (&self.journal, seq) {
            j.mode(seq, ino, began);
        }
        id
    }

    /// Backing files made so far (opens that found none to reuse).
    pub fn backing_files_made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// A journal sequence number when there is a journal and `event`.
    fn seq_if(&self, event: bool) -> Option<u64> {
        self.journal
            .as_ref()
            .filter(|_| event)
            .map(|j| j.next_seq())
    }

    /// Whether `ino` is open already (its mode fixed), or has a backing
    /// file kept for it.
    fn has_mode(&self, ino: u64) -> bool {
        let t = self.table.lock().expect("open files");
        t.cached.contains_key(&ino) || t.passthrough.contains_key(&ino) || t.idle.contains(&ino)
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
        // The inode whose mode ends (this one, or the one a kept backing
        // file pushes out), and the backing file to close.
        let mut ended: Option<u64> = None;
        let mut closed: Option<Arc<BackingFile>> = None;
        if let Some(n) = count {
            *n -= 1;
            if *n == 0 {
                t.cached.remove(&f.ino);
                match t.passthrough.remove(&f.ino) {
                    // Kept for the next open, still journaled as the
                    // inode's mode; the one it pushes out is closed.
                    Some((Backing::Own(b), _)) => {
                        if let Some((old_ino, old)) = t.idle.push(f.ino, b)
                            && old_ino != f.ino
                        {
                            ended = Some(old_ino);
                            closed = Some(old);
                        }
                    }
                    Some((Backing::Inherited(_), _)) | None => ended = Some(f.ino),
                }
            }
        }
        let seq = self.seq_if(ended.is_some());
        drop(t);
        // Recorded before the id is closed: a kill in between leaves an
        // id registered that nobody names, never a name for a closed id.
        // (The kernel holds its own reference to a backing file for as
        // long as it needs it.)
        if let (Some(j), Some(seq), Some(ino)) = (&self.journal, seq, ended) {
            j.mode(seq, ino, None);
        }
        drop(closed);
        Some(f.key)
    }
}
