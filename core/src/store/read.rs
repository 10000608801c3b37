//! Reads: find the chunks under the index lock, then `pread` from the
//! file of that entry's life with the lock released. Open files are
//! cached (`open_files`); opening, and closing what the cache lets go, happen
//! outside both locks.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::Store;
use super::files::hash_range;
use super::keys::{FileKey, StoreChunk};
use crate::digest::Digest;

/// How often a read starts over when the entry it found went away
/// between its check and its copy (evicted, promoted).
const READ_ATTEMPTS: usize = 3;

/// Where a read's bytes are, as found under the index lock.
struct Found {
    /// The entry's key and life.
    key: Digest,
    id: u64,
    complete: bool,
    /// Chunks (indices into the reader's) loaded from an earlier run and
    /// not hashed again yet.
    to_check: Vec<usize>,
}

impl Store {
    /// Copies `[offset, offset + buf.len())` of `file` into `buf`, if
    /// every chunk it touches is present and verified. `chunks` are the
    /// chunks of the reader's layout that the range touches. Otherwise
    /// returns the indices (into `chunks`) of the chunks still missing.
    pub fn read(
        &self,
        file: &FileKey,
        chunks: &[StoreChunk],
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), Vec<usize>> {
        let end = offset.saturating_add(buf.len() as u64).min(file.size);
        let all = || {
            (0..chunks.len())
                .filter(|&i| chunks[i].offset < end && chunks[i].offset + chunks[i].len > offset)
                .collect::<Vec<usize>>()
        };
        for _ in 0..READ_ATTEMPTS {
            let found = self.find(file, chunks, &all)?;
            let f = match self.open_file(&found.key, found.id, found.complete) {
                Ok(f) => f,
                // Evicted or promoted since: look again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(_) => return Err(all()),
            };
            if !found.to_check.is_empty() {
                let bad = self.recheck(file, found.id, chunks, &found.to_check, &f);
                if !bad.is_empty() {
                    return Err(bad);
                }
            }
            if offset < end {
                let n = (end - offset) as usize;
                // A file shorter than its records say (damaged on disk):
                // the bytes are absent, to be fetched again.
                if f.read_exact_at(&mut buf[..n], offset).is_err() {
                    return Err(all());
                }
            }
            return Ok(());
        }
        Err(all())
    }

    /// Under the index lock: the entry a read of the chunks `touched()`
    /// returns copies from, or the chunks it misses.
    fn find(
        &self,
        file: &FileKey,
        chunks: &[StoreChunk],
        touched: &dyn Fn() -> Vec<usize>,
    ) -> Result<Found, Vec<usize>> {
        if let Some(id) = self.verified_complete(&file.content, file.size) {
            self.lock().touch(&file.content);
            return Ok(Found {
                key: file.content,
                id,
                complete: true,
                to_check: Vec::new(),
            });
        }
        let mut index = self.lock();
        let Some((p, id)) = index.partial(file) else {
            return Err(touched());
        };
        let (mut missing, mut to_check) = (Vec::new(), Vec::new());
        for i in touched() {
            let c = &chunks[i];
            match p.records.get(&(c.offset, c.len)) {
                Some(r) if r.digest == c.digest && r.verified => {}
                Some(r) if r.digest == c.digest => to_check.push(i),
                _ => missing.push(i),
            }
        }
        if !missing.is_empty() {
            return Err(missing);
        }
        index.touch(&file.layout);
        Ok(Found {
            key: file.layout,
            id,
            complete: false,
            to_check,
        })
    }

    /// Hashes chunks loaded from an earlier run's journal (indices into
    /// `chunks`) in file `f` of life `id`; marks the good ones verified
    /// and drops the bad ones. Returns the bad ones.
    fn recheck(
        &self,
        file: &FileKey,
        id: u64,
        chunks: &[StoreChunk],
        to_check: &[usize],
        f: &File,
    ) -> Vec<usize> {
        let bad: Vec<usize> = to_check
            .iter()
            .copied()
            .filter(|&i| {
                let c = &chunks[i];
                hash_range(f, c.offset, c.len).ok() != Some(c.digest)
            })
            .collect();
        let mut index = self.lock();
        if let Some((p, now)) = index.partial(file)
            && now == id
        {
            for &i in to_check {
                let c = &chunks[i];
                if bad.contains(&i) {
                    // A torn write from an earlier run: absent.
                    tracing::info!(file = %file.content, offset = c.offset, "cached chunk failed re-verification; fetching it again");
                    p.records.remove(&(c.offset, c.len));
                } else if let Some(r) = p.records.get_mut(&(c.offset, c.len)) {
                    r.verified = true;
                }
            }
        }
        bad
    }

    /// The open file of one life of an entry (`key`, `id`); the file's
    /// path is made only when it is not open yet. Opening happens with no
    /// lock held; a file the cache drops to make room is closed after its
    /// lock is released.
    fn open_file(&self, key: &Digest, id: u64, complete: bool) -> io::Result<Arc<File>> {
        if let Some(f) = self.open_files.lock().expect("open files").get(&(*key, id)) {
            return Ok(f.clone());
        }
        let path = if complete {
            self.complete_path(key, id)
        } else {
            self.partial_paths(key, id).0
        };
        let f = Arc::new(File::open(path)?);
        let dropped = self
            .open_files
            .lock()
            .expect("open files")
            .push((*key, id), f.clone());
        drop(dropped);
        Ok(f)
    }

    pub(super) fn forget_file(&self, key: &Digest, id: u64) -> Option<Arc<File>> {
        self.open_files.lock().expect("open files").pop(&(*key, id))
    }
}
