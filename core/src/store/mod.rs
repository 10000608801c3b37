//! The content-addressed chunk store: what was fetched, inflated and
//! verified, kept on disk so that a file shared by layers or images is
//! fetched once and survives restarts.
//!
//! A regular file is known by a [`FileKey`]: its content digest (the
//! TOC's `digest`), its size, and its *layout*, a digest of how the
//! reader's TOC cuts it into chunks (every chunk's offset, length and
//! digest). While chunks arrive, a file lives in a sparse
//! `partial/<layout>.<id>.data` beside an append-only journal
//! `partial/<layout>.<id>.idx` recording each chunk written. Once the
//! chunks cover the file and the whole content hashes to its content
//! digest, the data file is synced and renamed to
//! `complete/<content>.<id>`: a complete file is the content its name
//! says, whoever asks, and can be handed to the kernel as a passthrough
//! backing file. `<id>` makes every file name unique to one life of one
//! entry, so a name is never reused by a later entry.
//!
//! Why one layer can never change bytes another layer reads as verified
//! (docs/security.md):
//! - partial files are keyed by layout, and a layout must tile its file
//!   (chunks in order, contiguous, none empty): each byte of a partial
//!   file belongs to exactly one chunk, and every layer that writes it
//!   agrees on that chunk's digest. Only a [`Verified`] chunk (its bytes
//!   hashed to its digest) can be put, so every write of a span writes
//!   the same bytes. A layer with other chunking, or other chunk digests,
//!   has a partial file of its own;
//! - a partial file is promoted only when no put is writing to it and
//!   none can start (`writers`, `promoting`), so the bytes hashed are the
//!   bytes kept;
//! - a read checks its records under the index lock and then copies from
//!   the file of that entry's life (its unique name): an eviction and a
//!   new put in between make a new file under a new name, never rewrite
//!   the one being read;
//! - records loaded at start are trusted only after the bytes they cover
//!   hash to the record's digest again (once, on first use), so a torn
//!   data write or journal record is just absent;
//! - a file becomes complete only by a rename after its whole content
//!   hashed to its name; one an earlier run left (no fsync: a crash may
//!   have torn it) is hashed again before its first use, read or
//!   passthrough;
//! - the store directory is locked (`flock`) by the one process using it
//!   and kept at mode 0700.
//!
//! Locking: the index mutex (and the open-file cache's) is never held
//! across a system call that can block (open, ftruncate, write, fsync,
//! mmap, munmap, rename, unlink, close). A change that needs file I/O
//! decides under the lock, marks what it is doing in the index (a partial
//! entry being opened or promoted, a writer counted), does the I/O with
//! the lock released, and publishes the result under the lock again; so
//! `has_chunk`, asked from the fetcher's runtime thread, never waits
//! behind the disk.
//!
//! Layout of this module: [`keys`] (what a file and a chunk are),
//! `index` (the in-memory state, entries and their states), `files`
//! (names and paths on disk, hashing a file), `journal` (a partial file's
//! journal), `load` (opening a store a previous run left), `read` (reads
//! and the open-file cache), `write` (puts, and opening a partial file),
//! `promote` (partial → complete), `evict` (the capacity bound).

mod evict;
mod files;
mod index;
mod journal;
mod keys;
mod load;
mod promote;
mod read;
mod write;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::digest::Digest;
use index::{Index, State};

pub use keys::{FileKey, StoreChunk, Verified};

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("store {0} is in use by another process (its lock file is held)")]
    Locked(PathBuf),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How full the store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub bytes: u64,
    pub files: usize,
    pub complete_files: usize,
    pub capacity: u64,
    /// Entries evicted since the store was opened.
    pub evictions: u64,
}

/// Open files of one life of an entry, by (key, id), read with `pread`.
/// Not mappings: a mapping's pages count in the daemon's RSS and its
/// cgroup (#18: 175 MB of RssFile after reading gcc whole).
type OpenFiles = lru::LruCache<(Digest, u64), Arc<File>>;

/// The store. Shared by every core and fetch worker (`&self` methods,
/// internally locked; file I/O happens outside the lock).
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    /// Signalled when a partial entry's files are opened (or failed to):
    /// puts that found it being opened wait here, the index unlocked.
    opened: Condvar,
    open_files: Mutex<OpenFiles>,
    /// Entries evicted since the store was opened.
    evictions: std::sync::atomic::AtomicU64,
    /// Holds the directory's `flock` while the store is open.
    _lock: File,
    /// Tests hold the first put that opens files here (see
    /// `pause_before_file_io`).
    #[cfg(test)]
    io_pause: Mutex<Option<Arc<std::sync::Barrier>>>,
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().expect("store index")
    }

    /// Whether a reader of `file` expecting `chunk` would find it. Takes
    /// the index lock only, which no file I/O ever holds.
    pub fn has_chunk(&self, file: &FileKey, chunk: &StoreChunk) -> bool {
        let mut index = self.lock();
        index.complete(file).is_some()
            || index.partial(file).is_some_and(|(p, _)| {
                p.records
                    .get(&(chunk.offset, chunk.len))
                    .is_some_and(|r| r.digest == chunk.digest)
            })
    }

    /// Whether the file with content `content` is complete (and so
    /// verified whole).
    pub fn is_complete(&self, content: &Digest) -> bool {
        self.lock()
            .entries
            .get(content)
            .is_some_and(|e| matches!(e.state, State::Complete { .. }))
    }

    /// Opens a complete file for reading (a passthrough backing file),
    /// verified first if an earlier run left it.
    pub fn open_complete(&self, content: &Digest, size: u64) -> Option<File> {
        let id = self.verified_complete(content, size)?;
        File::open(self.complete_path(content, id)).ok()
    }

    /// The path of a complete file, verified first if an earlier run left
    /// it (an unpacked layer hard-links it: `ringstar_layerfs::unpack`).
    pub fn complete_file_path(&self, content: &Digest, size: u64) -> Option<PathBuf> {
        let id = self.verified_complete(content, size)?;
        Some(self.complete_path(content, id))
    }

    /// Keeps `content` from eviction while a reader has it open.
    pub fn pin(&self, content: &Digest) {
        *self.lock().pins.entry(*content).or_default() += 1;
    }

    pub fn unpin(&self, content: &Digest) {
        let mut index = self.lock();
        if let Some(n) = index.pins.get_mut(content) {
            *n -= 1;
            if *n == 0 {
                index.pins.remove(content);
            }
        }
    }

    pub fn usage(&self) -> Usage {
        let index = self.lock();
        Usage {
            bytes: index.used,
            files: index.entries.len(),
            complete_files: index
                .entries
                .values()
                .filter(|e| matches!(e.state, State::Complete { .. }))
                .count(),
            capacity: self.capacity,
            evictions: self.evictions.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Holds the calling thread, if a test asked for it, where a put is
    /// about to create or open a partial file (no lock held): the test
    /// sees it arrive, queries the store, then lets it go.
    #[cfg(test)]
    fn pause_before_file_io(&self) {
        let pause = self.io_pause.lock().expect("io pause").take();
        if let Some(barrier) = pause {
            barrier.wait();
            barrier.wait();
        }
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn pause_before_file_io(&self) {}
}

#[cfg(test)]
mod tests;
