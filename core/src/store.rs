//! The content-addressed chunk store: what was fetched, inflated and
//! verified, kept on disk so that a file shared by layers or images is
//! fetched once and survives restarts.
//!
//! Each regular file's bytes live in one cache file named by the file's
//! content digest (the TOC's `digest`). While chunks arrive it is a sparse
//! `partial/<hex>.data` of the file's size beside an append-only journal
//! `partial/<hex>.idx` recording each chunk written (offset, length,
//! sha256). Once the chunks cover the file and the whole content hashes to
//! its name, the data file is synced and renamed to `complete/<hex>`: a
//! complete file is the content its name says, whoever asks, and can be
//! handed to the kernel as a passthrough backing file.
//!
//! Why this is safe against a crash at any point and against hostile
//! layers:
//! - a chunk is readable only through a record whose sha256 equals the
//!   digest the *reader's* (verified) TOC expects, so a layer lying about a
//!   file digest cannot feed other layers its bytes;
//! - records loaded at start are trusted only after the bytes they cover
//!   hash to the record's digest again (once, on first use), so a torn
//!   data write or journal record is just absent;
//! - a file becomes complete only by a rename after fsync, and only after
//!   its whole content hashed to its name.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memmap2::Mmap;

use crate::digest::{Digest, Hasher};

/// Journal: a header, then one record per chunk written.
const JOURNAL_MAGIC: &[u8; 8] = b"RSTRJNL1";
const HEADER_LEN: usize = 16;
const RECORD_LEN: usize = 48;
/// Open mappings kept for reads (each is one VMA; the default limit is
/// 65 530 per process).
const MAPPINGS: usize = 1024;

/// One chunk of a file as a reader's TOC describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreChunk {
    /// Offset in the file's uncompressed content.
    pub offset: u64,
    pub len: u64,
    /// What the uncompressed bytes must hash to.
    pub digest: Digest,
}

/// How full the store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub bytes: u64,
    pub files: usize,
    pub complete_files: usize,
    pub capacity: u64,
}

#[derive(Debug)]
struct Record {
    digest: Digest,
    /// Hashed again since this process loaded it (or written by it).
    verified: bool,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    complete: bool,
    /// `(offset, len)` → what was written there.
    records: HashMap<(u64, u64), Record>,
    /// Bytes on disk this entry is charged for.
    charged: u64,
    last_use: u64,
    /// Writers for a partial entry.
    data: Option<Arc<File>>,
    journal: Option<Arc<File>>,
    /// Covered, but the content does not hash to the name: never promote.
    mismatched: bool,
    promoting: bool,
}

impl Entry {
    fn new(size: u64) -> Entry {
        Entry {
            size,
            complete: false,
            records: HashMap::new(),
            charged: 0,
            last_use: 0,
            data: None,
            journal: None,
            mismatched: false,
            promoting: false,
        }
    }

    /// Whether verified records tile `[0, size)`.
    fn covered(&self) -> bool {
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
        reach >= self.size
    }
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<Digest, Entry>,
    /// Files some reader has open (whether or not stored yet): never
    /// evicted.
    pins: HashMap<Digest, u32>,
    used: u64,
    clock: u64,
}

/// The store. Shared by every core and fetch worker (`&self` methods,
/// internally locked; file I/O happens outside the lock).
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    maps: Mutex<lru::LruCache<Digest, Arc<Mmap>>>,
}

/// Maps a cache file for reading.
fn map(file: &File) -> io::Result<Mmap> {
    // SAFETY: the store's files are written only through this store, at
    // ranges no reader reads until their record is verified, and never
    // truncated while the store runs (eviction unlinks, which keeps the
    // mapped inode alive); reads are bounds-checked against the map's own
    // length, so a file shorter than expected cannot fault.
    unsafe { Mmap::map(file) }
}

fn hex_name(d: &Digest) -> String {
    d.hex()
}

fn parse_hex_name(name: &str) -> Option<Digest> {
    let bytes = hex::decode(name).ok()?;
    Some(Digest(bytes.try_into().ok()?))
}

impl Store {
    /// Opens (creating) the store under `root`, bounded by `capacity`
    /// bytes. What a previous run left is loaded: complete files as they
    /// are, partial ones through their journals (to be re-verified on
    /// first use); leftovers that cannot be trusted are removed.
    pub fn open(root: &Path, capacity: u64) -> io::Result<Store> {
        fs::create_dir_all(root.join("complete"))?;
        fs::create_dir_all(root.join("partial"))?;
        let mut index = Index::default();
        let mut found: Vec<(std::time::SystemTime, Digest)> = Vec::new();
        for e in fs::read_dir(root.join("complete"))? {
            let e = e?;
            let name = e.file_name();
            let Some(key) = name.to_str().and_then(parse_hex_name) else {
                let _ = fs::remove_file(e.path());
                continue;
            };
            let meta = e.metadata()?;
            let mut entry = Entry::new(meta.len());
            entry.complete = true;
            entry.charged = meta.len();
            index.used += entry.charged;
            found.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), key));
            index.entries.insert(key, entry);
        }
        for e in fs::read_dir(root.join("partial"))? {
            let e = e?;
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Some(stem) = name.strip_suffix(".idx") else {
                if !name.ends_with(".data") {
                    let _ = fs::remove_file(&path);
                }
                continue;
            };
            let key = parse_hex_name(stem);
            let data_path = path.with_extension("data");
            match key.and_then(|k| Self::load_partial(&path, &data_path).map(|e| (k, e))) {
                Some((key, entry)) if !index.entries.contains_key(&key) => {
                    index.used += entry.charged;
                    let mtime = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    found.push((mtime, key));
                    index.entries.insert(key, entry);
                }
                _ => {
                    let _ = fs::remove_file(&path);
                    let _ = fs::remove_file(&data_path);
                }
            }
        }
        // Data files whose journal is gone hold nothing provable.
        for e in fs::read_dir(root.join("partial"))? {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "data") && !path.with_extension("idx").exists()
            {
                let _ = fs::remove_file(path);
            }
        }
        // Oldest first: the order of use the previous run left.
        found.sort();
        for (_, key) in found {
            index.clock += 1;
            if let Some(e) = index.entries.get_mut(&key) {
                e.last_use = index.clock;
            }
        }
        let store = Store {
            root: root.to_path_buf(),
            capacity,
            index: Mutex::new(index),
            maps: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(MAPPINGS).expect("nonzero"),
            )),
        };
        store.evict(None);
        Ok(store)
    }

    /// A partial entry from its journal, if the journal and the data file
    /// agree on the file's size. Records past the end or torn are dropped.
    fn load_partial(journal: &Path, data: &Path) -> Option<Entry> {
        let bytes = fs::read(journal).ok()?;
        if bytes.len() < HEADER_LEN || &bytes[..8] != JOURNAL_MAGIC {
            return None;
        }
        let size = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
        if fs::metadata(data).ok()?.len() != size {
            return None;
        }
        let mut entry = Entry::new(size);
        for rec in bytes[HEADER_LEN..].chunks_exact(RECORD_LEN) {
            let offset = u64::from_le_bytes(rec[0..8].try_into().ok()?);
            let len = u64::from_le_bytes(rec[8..16].try_into().ok()?);
            let digest = Digest(rec[16..48].try_into().ok()?);
            if len == 0 || offset.checked_add(len).is_none_or(|end| end > size) {
                continue;
            }
            if entry
                .records
                .insert(
                    (offset, len),
                    Record {
                        digest,
                        verified: false,
                    },
                )
                .is_none()
            {
                entry.charged += len;
            }
        }
        Some(entry)
    }

    fn partial_paths(&self, key: &Digest) -> (PathBuf, PathBuf) {
        let base = self.root.join("partial").join(hex_name(key));
        (base.with_extension("data"), base.with_extension("idx"))
    }

    fn complete_path(&self, key: &Digest) -> PathBuf {
        self.root.join("complete").join(hex_name(key))
    }

    fn touch(index: &mut Index, key: &Digest) {
        index.clock += 1;
        let clock = index.clock;
        if let Some(e) = index.entries.get_mut(key) {
            e.last_use = clock;
        }
    }

    /// The mapping of `key`'s cache file (complete or partial).
    fn mapping(&self, key: &Digest, complete: bool) -> io::Result<Arc<Mmap>> {
        if let Some(m) = self.maps.lock().expect("maps").get(key) {
            return Ok(m.clone());
        }
        let path = if complete {
            self.complete_path(key)
        } else {
            self.partial_paths(key).0
        };
        let m = Arc::new(map(&File::open(path)?)?);
        self.maps.lock().expect("maps").put(*key, m.clone());
        Ok(m)
    }

    /// Copies `[offset, offset + buf.len())` of file `key` (of `size`
    /// bytes, cut into `chunks` by the reader's TOC) into `buf`, if every
    /// chunk it touches is present and verified. Otherwise returns the
    /// indices (into `chunks`) of the chunks still missing.
    pub fn read(
        &self,
        key: &Digest,
        size: u64,
        chunks: &[StoreChunk],
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), Vec<usize>> {
        let end = offset.saturating_add(buf.len() as u64).min(size);
        let wanted: Vec<usize> = chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.offset < end && c.offset + c.len > offset)
            .map(|(i, _)| i)
            .collect();
        let all = || wanted.clone();
        let mut to_check = Vec::new();
        let complete = {
            let mut index = self.index.lock().expect("store index");
            let Some(e) = index.entries.get(key) else {
                return Err(all());
            };
            if e.size != size {
                return Err(all());
            }
            let complete = e.complete;
            if !complete {
                let mut missing = Vec::new();
                for &i in &wanted {
                    let c = &chunks[i];
                    match e.records.get(&(c.offset, c.len)) {
                        Some(r) if r.digest == c.digest && r.verified => {}
                        Some(r) if r.digest == c.digest => to_check.push(i),
                        _ => missing.push(i),
                    }
                }
                if !missing.is_empty() {
                    return Err(missing);
                }
            }
            Self::touch(&mut index, key);
            complete
        };
        let Ok(m) = self.mapping(key, complete) else {
            return Err(all());
        };
        if (m.len() as u64) < end {
            return Err(all());
        }
        if !to_check.is_empty() {
            let mut bad = Vec::new();
            for &i in &to_check {
                let c = &chunks[i];
                if Digest::of(&m[c.offset as usize..(c.offset + c.len) as usize]) != c.digest {
                    bad.push(i);
                }
            }
            let mut index = self.index.lock().expect("store index");
            if let Some(e) = index.entries.get_mut(key) {
                for &i in &to_check {
                    let c = &chunks[i];
                    if bad.contains(&i) {
                        // A torn write from an earlier run: absent.
                        tracing::info!(file = %key, offset = c.offset, "cached chunk failed re-verification; fetching it again");
                        e.records.remove(&(c.offset, c.len));
                    } else if let Some(r) = e.records.get_mut(&(c.offset, c.len)) {
                        r.verified = true;
                    }
                }
            }
            if !bad.is_empty() {
                return Err(bad);
            }
        }
        if offset < end {
            let n = (end - offset) as usize;
            buf[..n].copy_from_slice(&m[offset as usize..end as usize]);
        }
        Ok(())
    }

    /// Whether a reader expecting `chunk` of file `key` would find it.
    pub fn has_chunk(&self, key: &Digest, size: u64, chunk: &StoreChunk) -> bool {
        let index = self.index.lock().expect("store index");
        index.entries.get(key).is_some_and(|e| {
            e.size == size
                && (e.complete
                    || e.records
                        .get(&(chunk.offset, chunk.len))
                        .is_some_and(|r| r.digest == chunk.digest))
        })
    }

    /// Whether file `key` is complete (and so verified whole).
    pub fn is_complete(&self, key: &Digest) -> bool {
        let index = self.index.lock().expect("store index");
        index.entries.get(key).is_some_and(|e| e.complete)
    }

    /// Opens a complete file for reading (a passthrough backing file).
    pub fn open_complete(&self, key: &Digest, size: u64) -> Option<File> {
        if !self
            .index
            .lock()
            .expect("store index")
            .entries
            .get(key)
            .is_some_and(|e| e.complete && e.size == size)
        {
            return None;
        }
        File::open(self.complete_path(key)).ok()
    }

    /// Keeps `key` from eviction while a reader has it open.
    pub fn pin(&self, key: &Digest) {
        *self
            .index
            .lock()
            .expect("store index")
            .pins
            .entry(*key)
            .or_default() += 1;
    }

    pub fn unpin(&self, key: &Digest) {
        let mut index = self.index.lock().expect("store index");
        if let Some(n) = index.pins.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                index.pins.remove(key);
            }
        }
    }

    /// Stores a chunk of file `key` (`size` bytes). `data` must already
    /// be verified against `chunk.digest` by the caller (it just inflated
    /// and checked it). When the file's chunks are all in, the whole file
    /// is hashed against its name and, if it matches, made complete.
    pub fn put(&self, key: &Digest, size: u64, chunk: &StoreChunk, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 != chunk.len
            || chunk.offset.checked_add(chunk.len).is_none_or(|e| e > size)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunk outside its file",
            ));
        }
        self.settle_size_conflict(key, size);
        let (data_file, journal) = {
            let mut index = self.index.lock().expect("store index");
            let e = index
                .entries
                .entry(*key)
                .or_insert_with(|| Entry::new(size));
            if e.size != size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "file {key} stored as {} bytes, now said to be {size}",
                        e.size
                    ),
                ));
            }
            if e.complete
                || e.records
                    .get(&(chunk.offset, chunk.len))
                    .is_some_and(|r| r.digest == chunk.digest && r.verified)
            {
                return Ok(());
            }
            if e.data.is_none() {
                let (dp, jp) = self.partial_paths(key);
                let fresh = e.records.is_empty();
                let data = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .open(&dp)?;
                let mut journal = OpenOptions::new().create(true).append(true).open(&jp)?;
                if fresh {
                    data.set_len(size)?;
                    if journal.metadata()?.len() == 0 {
                        let mut header = [0u8; HEADER_LEN];
                        header[..8].copy_from_slice(JOURNAL_MAGIC);
                        header[8..].copy_from_slice(&size.to_le_bytes());
                        journal.write_all(&header)?;
                    }
                }
                e.data = Some(Arc::new(data));
                e.journal = Some(Arc::new(journal));
            }
            (
                e.data.clone().expect("opened"),
                e.journal.clone().expect("opened"),
            )
        };
        data_file.write_all_at(data, chunk.offset)?;
        let mut rec = [0u8; RECORD_LEN];
        rec[0..8].copy_from_slice(&chunk.offset.to_le_bytes());
        rec[8..16].copy_from_slice(&chunk.len.to_le_bytes());
        rec[16..48].copy_from_slice(&chunk.digest.0);
        // One write with O_APPEND: whole or (after a crash) torn, and a
        // torn record never verifies.
        (&*journal).write_all(&rec)?;
        let promote = {
            let mut index = self.index.lock().expect("store index");
            let index = &mut *index;
            let Some(e) = index.entries.get_mut(key) else {
                return Ok(()); // evicted meanwhile
            };
            let new = e
                .records
                .insert(
                    (chunk.offset, chunk.len),
                    Record {
                        digest: chunk.digest,
                        verified: true,
                    },
                )
                .is_none();
            if new {
                e.charged += chunk.len;
                index.used += chunk.len;
            }
            let promote = !e.promoting && !e.mismatched && e.covered();
            if promote {
                e.promoting = true;
            }
            promote
        };
        Self::touch(&mut self.index.lock().expect("store index"), key);
        if promote {
            self.promote(key, size, &data_file)?;
        }
        self.evict(Some(key));
        Ok(())
    }

    /// A complete file whose length is not what a reader's TOC says is
    /// either damaged (truncated on disk) or the reader's layer is wrong:
    /// hashing it tells which. A damaged one is dropped so the chunks can
    /// come in again; a sound one stays, and the reader's put is refused
    /// (its caller serves the bytes it has without storing them).
    fn settle_size_conflict(&self, key: &Digest, size: u64) {
        let complete_len = {
            let index = self.index.lock().expect("store index");
            match index.entries.get(key) {
                Some(e) if e.complete && e.size != size && !index.pins.contains_key(key) => e.size,
                _ => return,
            }
        };
        let path = self.complete_path(key);
        let sound = File::open(&path)
            .and_then(|f| map(&f))
            .is_ok_and(|m| m.len() as u64 == complete_len && Digest::of(&m) == *key);
        if sound {
            return;
        }
        tracing::warn!(file = %key, "a complete cache file does not match its digest; dropping it");
        let mut index = self.index.lock().expect("store index");
        if let Some(e) = index.entries.remove(key) {
            index.used -= e.charged;
        }
        self.maps.lock().expect("maps").pop(key);
        let _ = fs::remove_file(path);
    }

    /// Hashes a covered partial file and, if it is what its name says,
    /// makes it complete (sync, rename, sync the directory).
    fn promote(&self, key: &Digest, size: u64, data: &File) -> io::Result<()> {
        let m = map(data)?;
        let ok = m.len() as u64 == size && {
            let mut h = Hasher::new();
            h.update(&m);
            h.finish() == *key
        };
        drop(m);
        let result = if ok {
            data.sync_all()
                .and_then(|()| fs::rename(self.partial_paths(key).0, self.complete_path(key)))
                .and_then(|()| File::open(self.root.join("complete"))?.sync_all())
        } else {
            Ok(())
        };
        let mut index = self.index.lock().expect("store index");
        let index = &mut *index;
        if let Some(e) = index.entries.get_mut(key) {
            e.promoting = false;
            match (&result, ok) {
                (Ok(()), true) => {
                    e.complete = true;
                    e.records.clear();
                    e.data = None;
                    e.journal = None;
                    index.used = index.used - e.charged + size;
                    e.charged = size;
                    let _ = fs::remove_file(self.partial_paths(key).1);
                    // The partial file's mapping is the same inode; keep it.
                }
                (_, false) => {
                    tracing::warn!(file = %key, "a file's verified chunks do not hash to its digest; keeping it partial");
                    e.mismatched = true;
                }
                (Err(_), true) => {}
            }
        }
        result
    }

    /// Removes least recently used entries nobody has open until the
    /// store fits its capacity. `keep` is never evicted (just written).
    fn evict(&self, keep: Option<&Digest>) {
        let victims: Vec<(Digest, bool)> = {
            let mut index = self.index.lock().expect("store index");
            if index.used <= self.capacity {
                return;
            }
            let mut candidates: Vec<(u64, Digest)> = index
                .entries
                .iter()
                .filter(|(k, e)| !index.pins.contains_key(*k) && !e.promoting && Some(*k) != keep)
                .map(|(k, e)| (e.last_use, *k))
                .collect();
            candidates.sort_unstable();
            let mut out = Vec::new();
            for (_, k) in candidates {
                if index.used <= self.capacity {
                    break;
                }
                if let Some(e) = index.entries.remove(&k) {
                    index.used -= e.charged;
                    out.push((k, e.complete));
                }
            }
            out
        };
        for (k, complete) in victims {
            self.maps.lock().expect("maps").pop(&k);
            if complete {
                let _ = fs::remove_file(self.complete_path(&k));
            } else {
                let (d, j) = self.partial_paths(&k);
                let _ = fs::remove_file(j);
                let _ = fs::remove_file(d);
            }
            tracing::debug!(file = %k, "evicted from the store");
        }
    }

    pub fn usage(&self) -> Usage {
        let index = self.index.lock().expect("store index");
        Usage {
            bytes: index.used,
            files: index.entries.len(),
            complete_files: index.entries.values().filter(|e| e.complete).count(),
            capacity: self.capacity,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn chunks_of(data: &[u8], size: usize) -> Vec<StoreChunk> {
        data.chunks(size)
            .enumerate()
            .map(|(i, c)| StoreChunk {
                offset: (i * size) as u64,
                len: c.len() as u64,
                digest: Digest::of(c),
            })
            .collect()
    }

    #[test]
    fn chunks_become_a_complete_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let data = file(10_000, 1);
        let key = Digest::of(&data);
        let chunks = chunks_of(&data, 3000);
        let mut buf = vec![0u8; 100];
        assert_eq!(store.read(&key, 10_000, &chunks, 0, &mut buf), Err(vec![0]));
        store
            .put(&key, 10_000, &chunks[1], &data[3000..6000])
            .unwrap();
        // A read inside chunk 1 hits; one that crosses into chunk 2 misses
        // only chunk 2.
        assert_eq!(store.read(&key, 10_000, &chunks, 3500, &mut buf), Ok(()));
        assert_eq!(&buf[..], &data[3500..3600]);
        assert_eq!(
            store.read(&key, 10_000, &chunks, 5950, &mut buf),
            Err(vec![2])
        );
        for (i, c) in chunks.iter().enumerate() {
            if i != 1 {
                let s = c.offset as usize;
                store
                    .put(&key, 10_000, c, &data[s..s + c.len as usize])
                    .unwrap();
            }
        }
        assert!(store.is_complete(&key));
        assert!(dir.path().join("complete").join(key.hex()).exists());
        assert!(
            !dir.path()
                .join("partial")
                .join(format!("{}.idx", key.hex()))
                .exists()
        );
        let mut all = vec![0u8; 10_000];
        store.read(&key, 10_000, &chunks, 0, &mut all).unwrap();
        assert_eq!(all, data);
        // Another layer cutting the same file differently reads it too.
        let other = chunks_of(&data, 4096);
        store.read(&key, 10_000, &other, 4000, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[4000..4100]);
        let mut f = store.open_complete(&key, 10_000).unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(store.usage().bytes, 10_000);
    }

    #[test]
    fn a_chunk_is_served_only_to_readers_expecting_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let data = file(8000, 2);
        let key = Digest::of(&data);
        let chunks = chunks_of(&data, 4000);
        store.put(&key, 8000, &chunks[0], &data[..4000]).unwrap();
        // A layer that claims the same file digest but other chunk bytes.
        let mut lying = chunks.clone();
        lying[0].digest = Digest::of(b"something else");
        let mut buf = vec![0u8; 10];
        assert_eq!(store.read(&key, 8000, &lying, 0, &mut buf), Err(vec![0]));
        assert!(!store.has_chunk(&key, 8000, &lying[0]));
        // And a file whose chunks verify but whose whole is not its name
        // never becomes complete.
        let fake_key = Digest::of(b"claimed");
        store
            .put(&fake_key, 8000, &chunks[0], &data[..4000])
            .unwrap();
        store
            .put(&fake_key, 8000, &chunks[1], &data[4000..])
            .unwrap();
        assert!(!store.is_complete(&fake_key));
        store
            .read(&fake_key, 8000, &chunks, 7990, &mut buf)
            .unwrap();
        assert_eq!(&buf[..], &data[7990..]);
    }

    #[test]
    fn restarts_keep_verified_chunks_and_drop_torn_ones() {
        let dir = tempfile::tempdir().unwrap();
        let data = file(9000, 3);
        let key = Digest::of(&data);
        let chunks = chunks_of(&data, 3000);
        {
            let store = Store::open(dir.path(), 1 << 30).unwrap();
            store.put(&key, 9000, &chunks[0], &data[..3000]).unwrap();
            store
                .put(&key, 9000, &chunks[1], &data[3000..6000])
                .unwrap();
        }
        // A crash that lost chunk 1's data but kept its record, and tore
        // the next record in half.
        let (dp, jp) = (
            dir.path()
                .join("partial")
                .join(format!("{}.data", key.hex())),
            dir.path()
                .join("partial")
                .join(format!("{}.idx", key.hex())),
        );
        File::options()
            .write(true)
            .open(&dp)
            .unwrap()
            .write_all_at(&[0u8; 100], 3100)
            .unwrap();
        let mut j = File::options().append(true).open(&jp).unwrap();
        j.write_all(&[7u8; 20]).unwrap();
        drop(j);
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let mut buf = vec![0u8; 3000];
        store.read(&key, 9000, &chunks, 0, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[..3000]);
        assert_eq!(
            store.read(&key, 9000, &chunks, 3000, &mut buf),
            Err(vec![1])
        );
        store
            .put(&key, 9000, &chunks[1], &data[3000..6000])
            .unwrap();
        store.put(&key, 9000, &chunks[2], &data[6000..]).unwrap();
        assert!(store.is_complete(&key));
        drop(store);
        // Complete files come back complete.
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        assert!(store.is_complete(&key));
        let mut all = vec![0u8; 9000];
        store.read(&key, 9000, &chunks, 0, &mut all).unwrap();
        assert_eq!(all, data);
    }

    #[test]
    fn a_truncated_cache_file_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        let data = file(5000, 4);
        let key = Digest::of(&data);
        let chunks = chunks_of(&data, 5000);
        {
            let store = Store::open(dir.path(), 1 << 30).unwrap();
            store.put(&key, 5000, &chunks[0], &data).unwrap();
            assert!(store.is_complete(&key));
        }
        let path = dir.path().join("complete").join(key.hex());
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let mut buf = vec![0u8; 10];
        assert_eq!(store.read(&key, 5000, &chunks, 0, &mut buf), Err(vec![0]));
        assert!(store.open_complete(&key, 5000).is_none());
        // Refetched, it is whole again.
        store.put(&key, 5000, &chunks[0], &data).unwrap();
        assert!(store.is_complete(&key));
        store.read(&key, 5000, &chunks, 0, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[..10]);
    }

    #[test]
    fn eviction_keeps_the_bound_and_spares_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 25_000).unwrap();
        let files: Vec<Vec<u8>> = (0..5).map(|i| file(10_000, 10 + i)).collect();
        let keys: Vec<Digest> = files.iter().map(|f| Digest::of(f)).collect();
        let chunks: Vec<Vec<StoreChunk>> = files.iter().map(|f| chunks_of(f, 10_000)).collect();
        store
            .put(&keys[0], 10_000, &chunks[0][0], &files[0])
            .unwrap();
        store.pin(&keys[0]);
        for i in 1..5 {
            store
                .put(&keys[i], 10_000, &chunks[i][0], &files[i])
                .unwrap();
            assert!(store.usage().bytes <= 25_000, "{:?}", store.usage());
        }
        assert!(store.is_complete(&keys[0]), "an open file was evicted");
        assert!(store.is_complete(&keys[4]));
        assert!(!store.is_complete(&keys[1]) && !store.is_complete(&keys[2]));
        assert_eq!(
            fs::read_dir(dir.path().join("complete")).unwrap().count(),
            2
        );
        store.unpin(&keys[0]);
        drop(store);
        // The bound holds across restarts with a smaller capacity.
        let store = Store::open(dir.path(), 10_000).unwrap();
        assert_eq!(store.usage().files, 1);
        assert!(store.is_complete(&keys[4]), "the newest stays");
    }
}
