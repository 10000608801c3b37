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

#[derive(Debug, Default)]
struct Table {
    by_fh: HashMap<u64, OpenFile>,
    /// Inode → its cached opens.
    cached: HashMap<u64, u32>,
    /// Inode → its backing file and passthrough opens.
    passthrough: HashMap<u64, (Backing, u32)>,
}

/// The open regular files of a mount.
#[derive(Debug, Default)]
pub(crate) struct OpenFiles {
    table: Mutex<Table>,
    /// Where mode changes are recorded for a process taking over.
    journal: Option<Arc<Journal>>,
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
        let mut t = self.table.lock().expect("open files");
        // Decided again under the lock: another open may have fixed the
        // mode meanwhile (then ours, if any, is dropped below, unlocked).
        let mut began = None;
        let id = if t.cached.contains_key(&ino) {
            None
        } else if let Some((b, n)) = t.passthrough.get_mut(&ino) {
            *n += 1;
            Some(b.id())
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

    /// A journal sequence number when there is a journal and `event`.
    fn seq_if(&self, event: bool) -> Option<u64> {
        self.journal
            .as_ref()
            .filter(|_| event)
            .map(|j| j.next_seq())
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
        let mut ended = false;
        if let Some(n) = count {
            *n -= 1;
            if *n == 0 {
                ended = true;
                t.cached.remove(&f.ino);
                // The kernel holds its own reference to the backing file
                // for as long as it needs it.
                closed = t.passthrough.remove(&f.ino);
            }
        }
        let seq = self.seq_if(ended);
        drop(t);
        // Recorded before the id is closed: a kill in between leaves an
        // id registered that nobody names, never a name for a closed id.
        if let (Some(j), Some(seq)) = (&self.journal, seq) {
            j.mode(seq, f.ino, None);
        }
        drop(closed);
        Some(f.key)
    }
}
