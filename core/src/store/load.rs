//! Opening a store: taking its lock, and loading what a previous run
//! left (complete files as they are, partial ones through their
//! journals); leftovers that cannot be trusted are removed.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::files::{parse_name, private_dir};
use super::index::{Entry, Index, State};
use super::{Store, StoreError, io_at, journal};
use crate::digest::Digest;

/// Store files kept open for reads (each one fd of the daemon's).
const OPEN_FILES: usize = 1024;
/// Held (`flock`, exclusive) by the process that has the store open.
const LOCK_FILE: &str = "lock";
/// How long opening waits for that lock: a previous user giving it up (a
/// process exiting, or this process's last fetches of a store it just
/// closed finishing) lets go within moments; a second daemon on the same
/// store holds it for good, and is refused after this.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Entries found on disk, with the time each was last written (their
/// order of use in the previous run).
type Found = Vec<(SystemTime, Digest)>;

impl Store {
    /// Opens (creating) the store under `root`, bounded by `capacity`
    /// bytes, and locks it for this process. What a previous run left is
    /// loaded: complete files as they are, partial ones through their
    /// journals (to be re-verified on first use); leftovers that cannot be
    /// trusted are removed.
    pub fn open(root: &Path, capacity: u64) -> Result<Store, StoreError> {
        private_dir(root)?;
        let lock = lock_root(root)?;
        let (complete_dir, partial_dir) = (root.join("complete"), root.join("partial"));
        private_dir(&complete_dir)?;
        private_dir(&partial_dir)?;
        let mut index = Index::default();
        let mut found = Found::new();
        load_complete(&complete_dir, &mut index, &mut found)?;
        load_partials(&partial_dir, &mut index, &mut found)?;
        remove_orphan_data(&partial_dir)?;
        // Oldest first: the order of use the previous run left.
        found.sort();
        for (_, key) in found {
            index.touch(&key);
        }
        let store = Store {
            root: root.to_path_buf(),
            capacity,
            index: Mutex::new(index),
            opened: Condvar::new(),
            open_files: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(OPEN_FILES).expect("nonzero"),
            )),
            evictions: Default::default(),
            _lock: lock,
            #[cfg(test)]
            io_pause: Mutex::new(None),
        };
        store.evict(None);
        Ok(store)
    }
}

/// Takes the store's `flock`, waiting up to [`LOCK_WAIT`] for a previous
/// user to let go.
fn lock_root(root: &Path) -> Result<File, StoreError> {
    let lock_path = root.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_at(&lock_path))?;
    let asked = Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(fs::TryLockError::WouldBlock) if asked.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(root.into())),
            Err(fs::TryLockError::Error(e)) => return Err(io_at(&lock_path)(e)),
        }
    }
}

/// Loads `complete/`: every well-named file, as it is.
fn load_complete(dir: &Path, index: &mut Index, found: &mut Found) -> Result<(), StoreError> {
    for e in fs::read_dir(dir).map_err(io_at(dir))? {
        let e = e.map_err(io_at(dir))?;
        let name = e.file_name();
        let parsed = name
            .to_str()
            .and_then(parse_name)
            .filter(|(_, _, tail)| tail.is_empty());
        let (Some((key, id, _)), Ok(meta)) = (parsed, e.metadata()) else {
            let _ = fs::remove_file(e.path());
            continue;
        };
        index.next_id = index.next_id.max(id);
        // Two lives of one content (a crash between a promotion's
        // rename and the removal of the older one): keep the newer.
        if let Some(old) = index.entries.get(&key) {
            let (drop_id, keep) = if old.id < id {
                (old.id, true)
            } else {
                (id, false)
            };
            let _ = fs::remove_file(dir.join(format!("{}.{drop_id}", key.hex())));
            if !keep {
                continue;
            }
            index.used -= old.charged;
        }
        index.used += meta.len();
        // Its last change, not its mtime: an unpacked layer that links
        // the file gives it the TOC's mtime, which an image chooses (a
        // future one would keep its files and evict other images').
        let changed = UNIX_EPOCH
            + Duration::new(
                u64::try_from(meta.ctime()).unwrap_or(0),
                u32::try_from(meta.ctime_nsec()).unwrap_or(0),
            );
        found.push((changed, key));
        index.entries.insert(
            key,
            Entry {
                id,
                size: meta.len(),
                charged: meta.len(),
                last_use: 0,
                state: State::Complete { verified: false },
            },
        );
    }
    Ok(())
}

/// Loads `partial/` through the journals; a journal that does not agree
/// with its data file goes, with the data file.
fn load_partials(dir: &Path, index: &mut Index, found: &mut Found) -> Result<(), StoreError> {
    for e in fs::read_dir(dir).map_err(io_at(dir))? {
        let e = e.map_err(io_at(dir))?;
        let path = e.path();
        let name = e.file_name();
        match name.to_str().and_then(parse_name) {
            Some((key, id, "idx")) => {
                index.next_id = index.next_id.max(id);
                let data_path = path.with_extension("data");
                match journal::load(&path, &data_path, id) {
                    Some(entry) if !index.entries.contains_key(&key) => {
                        index.used += entry.charged;
                        let mtime = e
                            .metadata()
                            .and_then(|m| m.modified())
                            .unwrap_or(UNIX_EPOCH);
                        found.push((mtime, key));
                        index.entries.insert(key, entry);
                    }
                    _ => {
                        let _ = fs::remove_file(&path);
                        let _ = fs::remove_file(&data_path);
                    }
                }
            }
            Some((_, id, "data")) => index.next_id = index.next_id.max(id),
            _ => {
                let _ = fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

/// Data files whose journal is gone hold nothing provable.
fn remove_orphan_data(dir: &Path) -> Result<(), StoreError> {
    for e in fs::read_dir(dir).map_err(io_at(dir))? {
        let path = e.map_err(io_at(dir))?.path();
        if path.extension().is_some_and(|x| x == "data") && !path.with_extension("idx").exists() {
            let _ = fs::remove_file(path);
        }
    }
    Ok(())
}
