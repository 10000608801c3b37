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
//! - a file becomes complete only by a rename after fsync, and only after
//!   its whole content hashed to its name;
//! - the store directory is locked (`flock`) by the one process using it
//!   and kept at mode 0700.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memmap2::Mmap;

use crate::digest::{Digest, Hasher};

/// Journal: a header (magic, file size, content digest), then one record
/// per chunk written (offset, length, sha256).
const JOURNAL_MAGIC: &[u8; 8] = b"RSTRJNL2";
const HEADER_LEN: usize = 48;
const RECORD_LEN: usize = 48;
/// Open mappings kept for reads (each is one VMA; the default limit is
/// 65 530 per process).
const MAPPINGS: usize = 1024;
/// Held (`flock`, exclusive) by the process that has the store open.
const LOCK_FILE: &str = "lock";
/// How long opening waits for that lock: a previous user giving it up (a
/// process exiting, or this process's last fetches of a store it just
/// closed finishing) lets go within moments; a second daemon on the same
/// store holds it for good, and is refused after this.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// What the store's directories are made (and kept): only root reads the
/// cached contents of every tenant's images.
const DIR_MODE: u32 = 0o700;
/// Domain separation for layout digests, so no layout digest is ever a
/// content digest of some file.
const LAYOUT_DOMAIN: &[u8] = b"ringstar store layout v1\0";
/// How often a read starts over when the entry it found went away
/// between its check and its copy (evicted, promoted).
const READ_ATTEMPTS: usize = 3;

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

/// One chunk of a file as a reader's TOC describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreChunk {
    /// Offset in the file's uncompressed content.
    pub offset: u64,
    pub len: u64,
    /// What the uncompressed bytes must hash to.
    pub digest: Digest,
}

impl StoreChunk {
    /// Checks `data` against this chunk: the only way to a [`Verified`]
    /// chunk, and so the only way into the store.
    pub fn verify<'a>(&self, data: &'a [u8]) -> Option<Verified<'a>> {
        (data.len() as u64 == self.len && Digest::of(data) == self.digest)
            .then_some(Verified { chunk: *self, data })
    }
}

/// A chunk's bytes, hashed and found to be what the chunk says.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a> {
    chunk: StoreChunk,
    data: &'a [u8],
}

impl Verified<'_> {
    pub fn chunk(&self) -> &StoreChunk {
        &self.chunk
    }

    pub fn data(&self) -> &[u8] {
        self.data
    }
}

/// A regular file as one reader's TOC cuts it: what its content is, and
/// how it is chunked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    content: Digest,
    size: u64,
    layout: Digest,
}

impl FileKey {
    /// The key of a file of `size` bytes whose content hashes to
    /// `content`, cut into `chunks`. `None` unless the chunks tile
    /// `[0, size)`: in order, contiguous, none empty.
    pub fn new(content: Digest, size: u64, chunks: &[StoreChunk]) -> Option<FileKey> {
        let mut h = Hasher::new();
        h.update(LAYOUT_DOMAIN);
        h.update(&content.0);
        h.update(&size.to_le_bytes());
        let mut reach = 0u64;
        for c in chunks {
            if c.offset != reach || c.len == 0 {
                return None;
            }
            reach = c.offset.checked_add(c.len)?;
            h.update(&c.offset.to_le_bytes());
            h.update(&c.len.to_le_bytes());
            h.update(&c.digest.0);
        }
        (reach == size).then(|| FileKey {
            content,
            size,
            layout: h.finish(),
        })
    }

    pub fn content(&self) -> &Digest {
        &self.content
    }

    pub fn size(&self) -> u64 {
        self.size
    }
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

/// A file being filled, under its layout's key.
#[derive(Debug)]
struct Partial {
    content: Digest,
    /// `(offset, len)` → what was written there.
    records: HashMap<(u64, u64), Record>,
    /// Data file and journal, once opened by a put.
    files: Option<(Arc<File>, Arc<File>)>,
    /// Puts writing to the files now.
    writers: u32,
    /// Covered, but the content does not hash to its digest: never
    /// promote (its chunks still serve readers of this layout).
    mismatched: bool,
    /// Being hashed and renamed: no put may write.
    promoting: bool,
}

impl Partial {
    /// Whether verified records tile `[0, size)` (a layout's chunks tile
    /// its file, so this is "every chunk is in").
    fn covered(&self, size: u64) -> bool {
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
enum State {
    /// Under its content digest: the whole file, verified.
    Complete,
    /// Under its layout digest.
    Partial(Partial),
}

#[derive(Debug)]
struct Entry {
    /// This life of the entry: part of its file names, never reused.
    id: u64,
    size: u64,
    /// Bytes on disk this entry is charged for.
    charged: u64,
    last_use: u64,
    state: State,
}

impl Entry {
    /// The content digest that pins it.
    fn content<'a>(&'a self, key: &'a Digest) -> &'a Digest {
        match &self.state {
            State::Complete => key,
            State::Partial(p) => &p.content,
        }
    }

    fn busy(&self) -> bool {
        matches!(&self.state, State::Partial(p) if p.writers > 0 || p.promoting)
    }
}

#[derive(Debug, Default)]
struct Index {
    /// Complete files by content digest, partial ones by layout digest
    /// (the two never collide: layout digests are domain-separated).
    entries: HashMap<Digest, Entry>,
    /// Contents some reader has open (whether or not stored yet): never
    /// evicted.
    pins: HashMap<Digest, u32>,
    used: u64,
    clock: u64,
    next_id: u64,
}

impl Index {
    fn touch(&mut self, key: &Digest) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(e) = self.entries.get_mut(key) {
            e.last_use = clock;
        }
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The complete entry of `file`'s content, if it has `file`'s size.
    fn complete(&self, file: &FileKey) -> Option<&Entry> {
        self.entries
            .get(&file.content)
            .filter(|e| matches!(e.state, State::Complete) && e.size == file.size)
    }

    /// The partial entry of `file`'s layout.
    fn partial(&mut self, file: &FileKey) -> Option<(&mut Partial, u64)> {
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

/// A put's hold on a partial entry: its life, data file and journal.
type Writer = (u64, Arc<File>, Arc<File>);

/// The store. Shared by every core and fetch worker (`&self` methods,
/// internally locked; file I/O happens outside the lock).
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    maps: Mutex<lru::LruCache<(Digest, u64), Arc<Mmap>>>,
    /// Holds the directory's `flock` while the store is open.
    _lock: File,
}

/// Maps a cache file for reading.
fn map(file: &File) -> io::Result<Mmap> {
    // SAFETY: the store's files are written only through this store, and
    // only at spans whose bytes every writer agrees on (a layout tiles its
    // file; puts are verified), so no byte a reader was told is verified
    // changes under it; no file is ever truncated while the store runs
    // (eviction unlinks, which keeps a mapped inode alive); reads are
    // bounds-checked against the map's own length, so a file shorter than
    // expected cannot fault.
    unsafe { Mmap::map(file) }
}

/// `<64 hex>.<id>` and the rest of the name after it.
fn parse_name(name: &str) -> Option<(Digest, u64, &str)> {
    let (hex_part, rest) = name.split_at_checked(64)?;
    let rest = rest.strip_prefix('.')?;
    let (id, tail) = rest.split_once('.').unwrap_or((rest, ""));
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut bytes).ok()?;
    Some((Digest(bytes), id.parse().ok()?, tail))
}

/// Creates `dir` if needed and gives it mode 0700, whatever it had.
fn private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(io_at(dir))
}

impl Store {
    /// Opens (creating) the store under `root`, bounded by `capacity`
    /// bytes, and locks it for this process. What a previous run left is
    /// loaded: complete files as they are, partial ones through their
    /// journals (to be re-verified on first use); leftovers that cannot be
    /// trusted are removed.
    pub fn open(root: &Path, capacity: u64) -> Result<Store, StoreError> {
        private_dir(root)?;
        let lock_path = root.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        let asked = std::time::Instant::now();
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if asked.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(root.into())),
                Err(fs::TryLockError::Error(e)) => return Err(io_at(&lock_path)(e)),
            }
        }
        let (complete_dir, partial_dir) = (root.join("complete"), root.join("partial"));
        private_dir(&complete_dir)?;
        private_dir(&partial_dir)?;
        let mut index = Index::default();
        let mut found: Vec<(std::time::SystemTime, Digest)> = Vec::new();
        for e in fs::read_dir(&complete_dir).map_err(io_at(&complete_dir))? {
            let e = e.map_err(io_at(&complete_dir))?;
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
                let _ = fs::remove_file(complete_dir.join(format!("{}.{drop_id}", key.hex())));
                if !keep {
                    continue;
                }
                index.used -= old.charged;
            }
            index.used += meta.len();
            found.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), key));
            index.entries.insert(
                key,
                Entry {
                    id,
                    size: meta.len(),
                    charged: meta.len(),
                    last_use: 0,
                    state: State::Complete,
                },
            );
        }
        for e in fs::read_dir(&partial_dir).map_err(io_at(&partial_dir))? {
            let e = e.map_err(io_at(&partial_dir))?;
            let path = e.path();
            let name = e.file_name();
            let parsed = name.to_str().and_then(parse_name);
            match parsed {
                Some((key, id, "idx")) => {
                    index.next_id = index.next_id.max(id);
                    let data_path = path.with_extension("data");
                    match Self::load_partial(&path, &data_path, id) {
                        Some(entry) if !index.entries.contains_key(&key) => {
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
                Some((_, id, "data")) => index.next_id = index.next_id.max(id),
                _ => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        // Data files whose journal is gone hold nothing provable.
        for e in fs::read_dir(&partial_dir).map_err(io_at(&partial_dir))? {
            let path = e.map_err(io_at(&partial_dir))?.path();
            if path.extension().is_some_and(|x| x == "data") && !path.with_extension("idx").exists()
            {
                let _ = fs::remove_file(path);
            }
        }
        // Oldest first: the order of use the previous run left.
        found.sort();
        for (_, key) in found {
            index.touch(&key);
        }
        let store = Store {
            root: root.to_path_buf(),
            capacity,
            index: Mutex::new(index),
            maps: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(MAPPINGS).expect("nonzero"),
            )),
            _lock: lock,
        };
        store.evict(None);
        Ok(store)
    }

    /// A partial entry from its journal, if the journal and the data file
    /// agree on the file's size. Records past the end or torn are dropped.
    fn load_partial(journal: &Path, data: &Path, id: u64) -> Option<Entry> {
        let bytes = fs::read(journal).ok()?;
        if bytes.len() < HEADER_LEN || &bytes[..8] != JOURNAL_MAGIC {
            return None;
        }
        let size = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
        let content = Digest(bytes[16..48].try_into().ok()?);
        if fs::metadata(data).ok()?.len() != size {
            return None;
        }
        let mut partial = Partial {
            content,
            records: HashMap::new(),
            files: None,
            writers: 0,
            mismatched: false,
            promoting: false,
        };
        let mut charged = 0u64;
        for rec in bytes[HEADER_LEN..].chunks_exact(RECORD_LEN) {
            let offset = u64::from_le_bytes(rec[0..8].try_into().ok()?);
            let len = u64::from_le_bytes(rec[8..16].try_into().ok()?);
            let digest = Digest(rec[16..48].try_into().ok()?);
            if len == 0 || offset.checked_add(len).is_none_or(|end| end > size) {
                continue;
            }
            let record = Record {
                digest,
                verified: false,
            };
            if partial.records.insert((offset, len), record).is_none() {
                charged += len;
            }
        }
        Some(Entry {
            id,
            size,
            charged,
            last_use: 0,
            state: State::Partial(partial),
        })
    }

    fn partial_paths(&self, layout: &Digest, id: u64) -> (PathBuf, PathBuf) {
        let dir = self.root.join("partial");
        let base = format!("{}.{id}", layout.hex());
        (
            dir.join(format!("{base}.data")),
            dir.join(format!("{base}.idx")),
        )
    }

    fn complete_path(&self, content: &Digest, id: u64) -> PathBuf {
        self.root
            .join("complete")
            .join(format!("{}.{id}", content.hex()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().expect("store index")
    }

    /// The mapping of one life of an entry (`key`, `id`); the file's path
    /// is made only when it is not mapped yet.
    fn mapping(&self, key: &Digest, id: u64, complete: bool) -> io::Result<Arc<Mmap>> {
        if let Some(m) = self.maps.lock().expect("maps").get(&(*key, id)) {
            return Ok(m.clone());
        }
        let path = if complete {
            self.complete_path(key, id)
        } else {
            self.partial_paths(key, id).0
        };
        let m = Arc::new(map(&File::open(path)?)?);
        self.maps.lock().expect("maps").put((*key, id), m.clone());
        Ok(m)
    }

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
            let mut to_check = Vec::new();
            let (key, id, complete) = {
                let mut index = self.lock();
                if let Some(e) = index.complete(file) {
                    let (key, id) = (file.content, e.id);
                    index.touch(&key);
                    (key, id, true)
                } else {
                    let Some((p, id)) = index.partial(file) else {
                        return Err(all());
                    };
                    let mut missing = Vec::new();
                    for i in all() {
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
                    (file.layout, id, false)
                }
            };
            let m = match self.mapping(&key, id, complete) {
                Ok(m) => m,
                // Evicted or promoted since: look again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(_) => return Err(all()),
            };
            if (m.len() as u64) < end {
                return Err(all());
            }
            if !to_check.is_empty() {
                let bad = self.recheck(file, id, chunks, &to_check, &m);
                if !bad.is_empty() {
                    return Err(bad);
                }
            }
            if offset < end {
                let n = (end - offset) as usize;
                buf[..n].copy_from_slice(&m[offset as usize..end as usize]);
            }
            return Ok(());
        }
        Err(all())
    }

    /// Hashes chunks loaded from an earlier run's journal (indices into
    /// `chunks`) in mapping `m` of life `id`; marks the good ones verified
    /// and drops the bad ones. Returns the bad ones.
    fn recheck(
        &self,
        file: &FileKey,
        id: u64,
        chunks: &[StoreChunk],
        to_check: &[usize],
        m: &Mmap,
    ) -> Vec<usize> {
        let bad: Vec<usize> = to_check
            .iter()
            .copied()
            .filter(|&i| {
                let c = &chunks[i];
                Digest::of(&m[c.offset as usize..(c.offset + c.len) as usize]) != c.digest
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

    /// Whether a reader of `file` expecting `chunk` would find it.
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
            .is_some_and(|e| matches!(e.state, State::Complete))
    }

    /// Opens a complete file for reading (a passthrough backing file).
    pub fn open_complete(&self, content: &Digest, size: u64) -> Option<File> {
        let id = self
            .lock()
            .entries
            .get(content)
            .filter(|e| matches!(e.state, State::Complete) && e.size == size)?
            .id;
        File::open(self.complete_path(content, id)).ok()
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

    /// The data file and journal of `file`'s partial entry, counted as a
    /// writer; `None` when there is nothing to write (complete, being
    /// promoted, or the chunk is in). Files are created and opened with
    /// the index unlocked.
    fn writer(&self, file: &FileKey, chunk: &StoreChunk) -> io::Result<Option<Writer>> {
        loop {
            let (id, exists) = {
                let mut index = self.lock();
                if index.complete(file).is_some() {
                    return Ok(None);
                }
                let taken = index.entries.contains_key(&file.layout);
                match index.partial(file) {
                    Some((p, id)) => {
                        let done = p
                            .records
                            .get(&(chunk.offset, chunk.len))
                            .is_some_and(|r| r.digest == chunk.digest && r.verified);
                        if p.promoting || done {
                            return Ok(None);
                        }
                        if let Some((data, journal)) = p.files.clone() {
                            p.writers += 1;
                            return Ok(Some((id, data, journal)));
                        }
                        (id, true)
                    }
                    None if taken => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "layout digest names another file",
                        ));
                    }
                    None => (index.new_id(), false),
                }
            };
            let (dp, jp) = self.partial_paths(&file.layout, id);
            let files = if exists {
                Self::open_partial(&dp, &jp)?
            } else {
                Self::create_partial(file, &dp, &jp)?
            };
            let mut index = self.lock();
            let index = &mut *index;
            let taken = index.entries.contains_key(&file.layout);
            match index.partial(file) {
                Some((p, now)) if now == id => {
                    let (data, journal) = p.files.get_or_insert(files).clone();
                    p.writers += 1;
                    return Ok(Some((id, data, journal)));
                }
                Some(_) => {}
                None if !exists && !taken => {
                    let (data, journal) = files.clone();
                    index.entries.insert(
                        file.layout,
                        Entry {
                            id,
                            size: file.size,
                            charged: 0,
                            last_use: 0,
                            state: State::Partial(Partial {
                                content: file.content,
                                records: HashMap::new(),
                                files: Some(files),
                                writers: 1,
                                mismatched: false,
                                promoting: false,
                            }),
                        },
                    );
                    return Ok(Some((id, data, journal)));
                }
                None => {}
            }
            // Someone else made or removed the entry meanwhile: our
            // files (unique names) are nobody's.
            if !exists {
                let _ = fs::remove_file(&dp);
                let _ = fs::remove_file(&jp);
            }
        }
    }

    fn open_partial(dp: &Path, jp: &Path) -> io::Result<(Arc<File>, Arc<File>)> {
        let data = OpenOptions::new().read(true).write(true).open(dp)?;
        let journal = OpenOptions::new().append(true).open(jp)?;
        Ok((Arc::new(data), Arc::new(journal)))
    }

    fn create_partial(file: &FileKey, dp: &Path, jp: &Path) -> io::Result<(Arc<File>, Arc<File>)> {
        let data = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(dp)?;
        data.set_len(file.size)?;
        let mut journal = OpenOptions::new().create_new(true).append(true).open(jp)?;
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(JOURNAL_MAGIC);
        header[8..16].copy_from_slice(&file.size.to_le_bytes());
        header[16..48].copy_from_slice(&file.content.0);
        journal.write_all(&header)?;
        Ok((Arc::new(data), Arc::new(journal)))
    }

    /// Stores a verified chunk of `file`. When the file's chunks are all
    /// in, the whole file is hashed against its content digest and, if it
    /// matches, made complete.
    pub fn put(&self, file: &FileKey, chunk: Verified<'_>) -> io::Result<()> {
        let c = *chunk.chunk();
        if c.offset.checked_add(c.len).is_none_or(|e| e > file.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunk outside its file",
            ));
        }
        let Some((id, data_file, journal)) = self.writer(file, &c)? else {
            return Ok(());
        };
        let written = data_file
            .write_all_at(chunk.data(), c.offset)
            .and_then(|()| {
                let mut rec = [0u8; RECORD_LEN];
                rec[0..8].copy_from_slice(&c.offset.to_le_bytes());
                rec[8..16].copy_from_slice(&c.len.to_le_bytes());
                rec[16..48].copy_from_slice(&c.digest.0);
                // One write with O_APPEND: whole or (after a crash) torn, and
                // a torn record never verifies.
                (&*journal).write_all(&rec)
            });
        let promote = {
            let mut index = self.lock();
            let index = &mut *index;
            let mut charge = 0;
            let mut promote = false;
            if let Some((p, now)) = index.partial(file)
                && now == id
            {
                p.writers -= 1;
                if written.is_ok() {
                    let record = Record {
                        digest: c.digest,
                        verified: true,
                    };
                    if p.records.insert((c.offset, c.len), record).is_none() {
                        charge = c.len;
                    }
                }
                promote = p.writers == 0 && !p.promoting && !p.mismatched && p.covered(file.size);
                if promote {
                    p.promoting = true;
                }
            }
            if let Some(e) = index.entries.get_mut(&file.layout) {
                e.charged += charge;
            }
            index.used += charge;
            index.touch(&file.layout);
            promote
        };
        written?;
        if promote {
            self.promote(file, id, &data_file)?;
        }
        self.evict(Some(&file.layout));
        Ok(())
    }

    /// Hashes a covered partial file no put is writing to and, if it is
    /// what its content digest says, makes it complete (sync, rename, sync
    /// the directory).
    fn promote(&self, file: &FileKey, id: u64, data: &File) -> io::Result<()> {
        let m = map(data)?;
        let ok = m.len() as u64 == file.size && {
            let mut h = Hasher::new();
            h.update(&m);
            h.finish() == file.content
        };
        drop(m);
        let (dp, jp) = self.partial_paths(&file.layout, id);
        if !ok {
            tracing::warn!(file = %file.content, "a file's verified chunks do not hash to its digest; keeping it partial");
            if let Some((p, _)) = self.lock().partial(file) {
                p.promoting = false;
                p.mismatched = true;
            }
            return Ok(());
        }
        // A complete file of the same content and size may be there
        // already (another layout got there first): keep it.
        let (already, new_id) = {
            let mut index = self.lock();
            (index.complete(file).is_some(), index.new_id())
        };
        let target = self.complete_path(&file.content, new_id);
        let result = if already {
            Ok(())
        } else {
            data.sync_all()
                .and_then(|()| fs::rename(&dp, &target))
                .and_then(|()| File::open(self.root.join("complete"))?.sync_all())
        };
        if let Err(e) = result {
            if let Some((p, _)) = self.lock().partial(file) {
                p.promoting = false;
            }
            return Err(e);
        }
        self.maps.lock().expect("maps").pop(&(file.layout, id));
        let mut guard = self.lock();
        let index = &mut *guard;
        let mut unlink = vec![jp];
        if let Some(old) = index.entries.remove(&file.layout) {
            index.used -= old.charged;
        }
        if already {
            unlink.push(dp);
        } else {
            // A complete entry of another size (a file damaged on disk)
            // gives way to the one just proven.
            if let Some(old) = index.entries.remove(&file.content) {
                index.used -= old.charged;
                unlink.push(self.complete_path(&file.content, old.id));
            }
            index.used += file.size;
            index.entries.insert(
                file.content,
                Entry {
                    id: new_id,
                    size: file.size,
                    charged: file.size,
                    last_use: 0,
                    state: State::Complete,
                },
            );
            index.touch(&file.content);
        }
        drop(guard);
        // Unique names: nobody else's file goes with these.
        for path in unlink {
            let _ = fs::remove_file(path);
        }
        Ok(())
    }

    /// Removes least recently used entries nobody has open or is writing
    /// until the store fits its capacity. `keep` is never evicted (just
    /// written).
    fn evict(&self, keep: Option<&Digest>) {
        let victims: Vec<PathBuf> = {
            let mut index = self.lock();
            if index.used <= self.capacity {
                return;
            }
            let mut candidates: Vec<(u64, Digest)> = index
                .entries
                .iter()
                .filter(|(k, e)| {
                    !index.pins.contains_key(e.content(k)) && !e.busy() && Some(*k) != keep
                })
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
                    match e.state {
                        State::Complete => out.push(self.complete_path(&k, e.id)),
                        State::Partial(_) => {
                            let (d, j) = self.partial_paths(&k, e.id);
                            out.extend([j, d]);
                        }
                    }
                    self.maps.lock().expect("maps").pop(&(k, e.id));
                }
            }
            out
        };
        for path in victims {
            let _ = fs::remove_file(&path);
            tracing::debug!(path = %path.display(), "evicted from the store");
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
                .filter(|e| matches!(e.state, State::Complete))
                .count(),
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

    fn key_of(data: &[u8], chunks: &[StoreChunk]) -> FileKey {
        FileKey::new(Digest::of(data), data.len() as u64, chunks).unwrap()
    }

    /// Puts chunk `c` of `data`, verified, under `key`.
    fn put(store: &Store, key: &FileKey, c: &StoreChunk, data: &[u8]) {
        let part = &data[c.offset as usize..(c.offset + c.len) as usize];
        store.put(key, c.verify(part).unwrap()).unwrap();
    }

    fn read_all(
        store: &Store,
        key: &FileKey,
        chunks: &[StoreChunk],
    ) -> Result<Vec<u8>, Vec<usize>> {
        let mut buf = vec![0u8; key.size() as usize];
        store.read(key, chunks, 0, &mut buf).map(|()| buf)
    }

    #[test]
    fn chunks_become_a_complete_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let data = file(10_000, 1);
        let chunks = chunks_of(&data, 3000);
        let key = key_of(&data, &chunks);
        let mut buf = vec![0u8; 100];
        assert_eq!(store.read(&key, &chunks, 0, &mut buf), Err(vec![0]));
        put(&store, &key, &chunks[1], &data);
        // A read inside chunk 1 hits; one that crosses into chunk 2 misses
        // only chunk 2.
        assert_eq!(store.read(&key, &chunks, 3500, &mut buf), Ok(()));
        assert_eq!(&buf[..], &data[3500..3600]);
        assert_eq!(store.read(&key, &chunks, 5950, &mut buf), Err(vec![2]));
        for (i, c) in chunks.iter().enumerate() {
            if i != 1 {
                put(&store, &key, c, &data);
            }
        }
        assert!(store.is_complete(key.content()));
        let names = |d: &str| fs::read_dir(dir.path().join(d)).unwrap().count();
        assert_eq!((names("complete"), names("partial")), (1, 0));
        assert_eq!(read_all(&store, &key, &chunks).unwrap(), data);
        // Another layer cutting the same file differently reads it too.
        let other = chunks_of(&data, 4096);
        let other_key = key_of(&data, &other);
        store.read(&other_key, &other, 4000, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[4000..4100]);
        let mut f = store.open_complete(key.content(), 10_000).unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(store.usage().bytes, 10_000);
    }

    #[test]
    fn a_layout_must_tile_its_file() {
        let data = file(8000, 9);
        let chunks = chunks_of(&data, 4000);
        let d = Digest::of(&data);
        assert!(FileKey::new(d, 8000, &chunks).is_some());
        assert!(
            FileKey::new(d, 8000, &chunks[..1]).is_none(),
            "a gap at the end"
        );
        assert!(
            FileKey::new(d, 8000, &[chunks[1], chunks[0]]).is_none(),
            "out of order"
        );
        let mut overlapping = chunks.clone();
        overlapping[1].offset = 3000;
        assert!(FileKey::new(d, 8000, &overlapping).is_none());
        let mut empty = chunks.clone();
        empty.insert(
            1,
            StoreChunk {
                offset: 4000,
                len: 0,
                digest: Digest::empty(),
            },
        );
        assert!(FileKey::new(d, 8000, &empty).is_none());
        assert!(FileKey::new(Digest::empty(), 0, &[]).is_some());
    }

    #[test]
    fn only_verified_bytes_go_in() {
        let data = file(4000, 5);
        let chunks = chunks_of(&data, 4000);
        assert!(chunks[0].verify(&data).is_some());
        let mut wrong = data.clone();
        wrong[7] ^= 1;
        assert!(chunks[0].verify(&wrong).is_none());
        assert!(chunks[0].verify(&data[..3999]).is_none());
    }

    #[test]
    fn a_chunk_is_served_only_to_readers_expecting_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let data = file(8000, 2);
        let chunks = chunks_of(&data, 4000);
        let key = key_of(&data, &chunks);
        put(&store, &key, &chunks[0], &data);
        // A layer that claims the same file digest but other chunk bytes.
        let mut lying = chunks.clone();
        lying[0].digest = Digest::of(b"something else");
        let lying_key = FileKey::new(*key.content(), 8000, &lying).unwrap();
        let mut buf = vec![0u8; 10];
        assert_eq!(store.read(&lying_key, &lying, 0, &mut buf), Err(vec![0]));
        assert!(!store.has_chunk(&lying_key, &lying[0]));
        // And a file whose chunks verify but whose whole is not its name
        // never becomes complete.
        let fake_key = FileKey::new(Digest::of(b"claimed"), 8000, &chunks).unwrap();
        put(&store, &fake_key, &chunks[0], &data);
        put(&store, &fake_key, &chunks[1], &data);
        assert!(!store.is_complete(fake_key.content()));
        store.read(&fake_key, &chunks, 7990, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[7990..]);
    }

    /// The attack on the shared store (#14): a layer claims a popular
    /// file's digest and size with chunking of its own, one chunk over
    /// the victim's two, and writes its bytes. With partial files keyed by
    /// content alone, those bytes landed on the span the victim's record
    /// still called verified, and the victim's next read served them.
    #[test]
    fn a_layer_cannot_change_bytes_another_layer_reads_as_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let victim = file(8000, 3);
        let victim_chunks = chunks_of(&victim, 4000);
        let victim_key = key_of(&victim, &victim_chunks);
        put(&store, &victim_key, &victim_chunks[0], &victim);
        let evil = vec![0x90u8; 8000];
        let evil_chunks = chunks_of(&evil, 8000);
        let evil_key = FileKey::new(*victim_key.content(), 8000, &evil_chunks).unwrap();
        put(&store, &evil_key, &evil_chunks[0], &evil);
        // The attacker's file is covered but not what its name says.
        assert!(!store.is_complete(victim_key.content()));
        let mut buf = vec![0u8; 4000];
        store
            .read(&victim_key, &victim_chunks, 0, &mut buf)
            .unwrap();
        assert_eq!(buf, victim[..4000]);
        // The victim's file completes with its own bytes, and then every
        // layout reads those.
        put(&store, &victim_key, &victim_chunks[1], &victim);
        assert!(store.is_complete(victim_key.content()));
        assert_eq!(
            read_all(&store, &victim_key, &victim_chunks).unwrap(),
            victim
        );
        assert_eq!(read_all(&store, &evil_key, &evil_chunks).unwrap(), victim);
        drop(store);
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(
            read_all(&store, &victim_key, &victim_chunks).unwrap(),
            victim
        );
    }

    /// Readers, writers of two layouts (one lying) and evictions at
    /// once: every read that succeeds returns the victim's bytes, and
    /// every complete file hashes to its name, also after a restart.
    /// (Before, a read could copy from a file recreated by a put after an
    /// eviction, and a put could write after a promotion had hashed.)
    #[test]
    fn concurrent_puts_reads_and_evictions_never_serve_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<Vec<u8>> = (0..6).map(|i| file(64 << 10, 40 + i)).collect();
        // Room for about three files: evictions all the time.
        let store = Arc::new(Store::open(dir.path(), 200 << 10).unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for t in 0..4u64 {
            let (store, files, stop) = (store.clone(), files.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut reads = 0u64;
                let mut n = t;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let data = &files[(n >> 33) as usize % files.len()];
                    let chunks = chunks_of(data, 16 << 10);
                    let key = key_of(data, &chunks);
                    if t % 2 == 0 {
                        // A liar: the same content digest, its own chunking.
                        let evil = vec![t as u8; data.len()];
                        let evil_chunks = chunks_of(&evil, 24 << 10);
                        let evil_key =
                            FileKey::new(*key.content(), data.len() as u64, &evil_chunks).unwrap();
                        for c in &evil_chunks {
                            put(&store, &evil_key, c, &evil);
                        }
                    }
                    for c in &chunks {
                        if (n >> 20) % 3 != 0 {
                            put(&store, &key, c, data);
                        }
                        let mut buf = vec![0u8; 5000];
                        let off = c.offset + (n >> 40) % (c.len - 1);
                        let want = (data.len() as u64 - off).min(5000) as usize;
                        if store.read(&key, &chunks, off, &mut buf).is_ok() {
                            assert_eq!(buf[..want], data[off as usize..off as usize + want]);
                            reads += 1;
                        }
                    }
                }
                reads
            }));
        }
        std::thread::sleep(std::time::Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(reads > 0, "no read found its chunks");
        assert!(store.usage().bytes <= 200 << 10, "{:?}", store.usage());
        drop(store);
        let _store = Store::open(dir.path(), 1 << 30).unwrap();
        for e in fs::read_dir(dir.path().join("complete")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let (content, _, _) = parse_name(&name).unwrap();
            assert_eq!(Digest::of(&fs::read(e.path()).unwrap()), content, "{name}");
        }
    }

    #[test]
    fn restarts_keep_verified_chunks_and_drop_torn_ones() {
        let dir = tempfile::tempdir().unwrap();
        let data = file(9000, 3);
        let chunks = chunks_of(&data, 3000);
        let key = key_of(&data, &chunks);
        {
            let store = Store::open(dir.path(), 1 << 30).unwrap();
            put(&store, &key, &chunks[0], &data);
            put(&store, &key, &chunks[1], &data);
        }
        // A crash that lost chunk 1's data but kept its record, and tore
        // the next record in half.
        let partial = |ext: &str| {
            fs::read_dir(dir.path().join("partial"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|x| x == ext))
                .unwrap()
        };
        File::options()
            .write(true)
            .open(partial("data"))
            .unwrap()
            .write_all_at(&[0u8; 100], 3100)
            .unwrap();
        let mut j = File::options().append(true).open(partial("idx")).unwrap();
        j.write_all(&[7u8; 20]).unwrap();
        drop(j);
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let mut buf = vec![0u8; 3000];
        store.read(&key, &chunks, 0, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[..3000]);
        assert_eq!(store.read(&key, &chunks, 3000, &mut buf), Err(vec![1]));
        put(&store, &key, &chunks[1], &data);
        put(&store, &key, &chunks[2], &data);
        assert!(store.is_complete(key.content()));
        drop(store);
        // Complete files come back complete.
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        assert!(store.is_complete(key.content()));
        assert_eq!(read_all(&store, &key, &chunks).unwrap(), data);
    }

    #[test]
    fn a_truncated_cache_file_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        let data = file(5000, 4);
        let chunks = chunks_of(&data, 5000);
        let key = key_of(&data, &chunks);
        {
            let store = Store::open(dir.path(), 1 << 30).unwrap();
            put(&store, &key, &chunks[0], &data);
            assert!(store.is_complete(key.content()));
        }
        let path = fs::read_dir(dir.path().join("complete"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let mut buf = vec![0u8; 10];
        assert_eq!(store.read(&key, &chunks, 0, &mut buf), Err(vec![0]));
        assert!(store.open_complete(key.content(), 5000).is_none());
        // Refetched, it is whole again.
        put(&store, &key, &chunks[0], &data);
        assert!(store.is_complete(key.content()));
        store.read(&key, &chunks, 0, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[..10]);
        assert!(!path.exists(), "the damaged file is gone");
        assert_eq!(store.usage().bytes, 5000);
    }

    #[test]
    fn eviction_keeps_the_bound_and_spares_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 25_000).unwrap();
        let files: Vec<Vec<u8>> = (0..5).map(|i| file(10_000, 10 + i)).collect();
        let chunks: Vec<Vec<StoreChunk>> = files.iter().map(|f| chunks_of(f, 10_000)).collect();
        let keys: Vec<FileKey> = files
            .iter()
            .zip(&chunks)
            .map(|(f, c)| key_of(f, c))
            .collect();
        put(&store, &keys[0], &chunks[0][0], &files[0]);
        store.pin(keys[0].content());
        for i in 1..5 {
            put(&store, &keys[i], &chunks[i][0], &files[i]);
            assert!(store.usage().bytes <= 25_000, "{:?}", store.usage());
        }
        assert!(
            store.is_complete(keys[0].content()),
            "an open file was evicted"
        );
        assert!(store.is_complete(keys[4].content()));
        assert!(!store.is_complete(keys[1].content()) && !store.is_complete(keys[2].content()));
        assert_eq!(
            fs::read_dir(dir.path().join("complete")).unwrap().count(),
            2
        );
        store.unpin(keys[0].content());
        drop(store);
        // The bound holds across restarts with a smaller capacity.
        let store = Store::open(dir.path(), 10_000).unwrap();
        assert_eq!(store.usage().files, 1);
        assert!(store.is_complete(keys[4].content()), "the newest stays");
    }

    #[test]
    fn one_process_at_a_time_and_private_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        fs::create_dir_all(root.join("complete")).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(root.join("complete"), fs::Permissions::from_mode(0o777)).unwrap();
        let store = Store::open(&root, 1 << 20).unwrap();
        for d in ["", "complete", "partial"] {
            let mode = fs::metadata(root.join(d)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{d:?}");
        }
        assert!(matches!(
            Store::open(&root, 1 << 20),
            Err(StoreError::Locked(_))
        ));
        drop(store);
        Store::open(&root, 1 << 20).unwrap();
    }
}
