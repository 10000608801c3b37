//! One remote layer as the filesystem serves it: the resolved core layer,
//! where its blob is, and how much of it is fetched.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ringstar_core::store::{FileKey, StoreChunk};
use ringstar_core::tree::Chunk;
use ringstar_core::{Digest, FileKind, Layer, NodeId};
use ringstar_fetcher::BlobLocation;

/// The most a stream of misses across neighbouring files reads ahead.
/// Measured with hellobench (gcc, esgz-noopt, loopback): letting such a
/// stream grow to the 8 MiB a file read through gets fetched 67–86 MB
/// for a 22 MB working set and ran 4–5 s instead of 1.1 s.
pub const CROSS_FILE_READ_AHEAD: u64 = 512 << 10;

/// Biggest chunk we inflate into memory; a TOC claiming more gets EIO
/// for that read (bounded memory per read, whatever the TOC says).
pub const MAX_CHUNK: u64 = 256 << 20;

/// A resolved remote layer.
#[derive(Debug)]
pub struct RemoteLayer {
    /// Unique to this object in this process (single-flight keys).
    pub id: u64,
    /// Its directory's name under the mount root.
    pub name: String,
    /// The blob's digest (`sha256:…`).
    pub digest: Digest,
    pub blob_size: u64,
    pub location: BlobLocation,
    pub layer: Layer,
    /// One bit per chunk of `layer.tree.all_chunks()`: known present.
    /// Only each span's first chunk's bit is used (superseded duplicates
    /// share spans), found through `canonical`.
    present: Vec<AtomicU64>,
    canonical: Vec<u32>,
    /// The regular file each chunk of `all_chunks()` belongs to
    /// (`u32::MAX`: a superseded entry's chunk, nobody's).
    owners: Vec<u32>,
    /// Compressed bytes of chunks not yet known present.
    absent_bytes: AtomicU64,
    prefetch: Prefetch,
    last_error: Mutex<Option<String>>,
    removed: AtomicBool,
    /// Prefetch and background fetch were started (once its TOC was
    /// verified).
    fetching: AtomicBool,
    /// Where the last foreground miss's fetch ended, and the read-ahead
    /// it used: a miss starting there is a sequential reader's.
    miss_end: AtomicU64,
    /// The file of the last foreground miss.
    miss_node: AtomicU32,
    read_ahead: AtomicU64,
    seq: Mutex<Sequential>,
    /// Each node's store key, made on first use (`None`: a file the store
    /// cannot hold, whose reads fail).
    store_keys: Box<[OnceLock<Option<FileKey>>]>,
}

/// A sequential reader being followed: windows of `budget` compressed
/// bytes are fetched up to `frontier` while it reads at `reader`, so the
/// link is busy while it inflates and reads the last ones.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sequential {
    pub active: bool,
    pub generation: u64,
    pub reader: u64,
    pub frontier: u64,
    pub budget: u64,
    pub in_flight: u32,
}

#[derive(Debug, Default)]
struct Prefetch {
    done: Mutex<bool>,
    cv: Condvar,
}

impl RemoteLayer {
    pub fn new(
        name: String,
        digest: Digest,
        blob_size: u64,
        location: BlobLocation,
        layer: Layer,
    ) -> RemoteLayer {
        let chunks = layer.tree.all_chunks();
        let mut first = std::collections::HashMap::new();
        let canonical: Vec<u32> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| *first.entry(c.offset).or_insert(i as u32))
            .collect();
        let absent = chunks
            .iter()
            .enumerate()
            .filter(|(i, _)| canonical[*i] as usize == *i)
            .map(|(_, c)| c.compressed_len())
            .sum();
        let mut owners = vec![u32::MAX; chunks.len()];
        for id in 0..layer.tree.len() as u32 {
            for g in layer.tree.chunk_span(NodeId(id)) {
                owners[g] = id;
            }
        }
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let store_keys = (0..layer.tree.len()).map(|_| OnceLock::new()).collect();
        RemoteLayer {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            owners,
            name,
            digest,
            blob_size,
            location,
            present: (0..chunks.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            canonical,
            absent_bytes: AtomicU64::new(absent),
            layer,
            prefetch: Prefetch::default(),
            last_error: Mutex::new(None),
            removed: AtomicBool::new(false),
            fetching: AtomicBool::new(false),
            miss_end: AtomicU64::new(u64::MAX),
            miss_node: AtomicU32::new(u32::MAX),
            read_ahead: AtomicU64::new(0),
            seq: Mutex::new(Sequential::default()),
            store_keys,
        }
    }

    pub fn tree(&self) -> &ringstar_core::LayerTree {
        &self.layer.tree
    }

    /// The content digest of a regular file, or (for TOCs without one) a
    /// name private to this layer and entry, which can never be promoted
    /// to a complete, shared file.
    pub fn content_key(&self, node: NodeId) -> Digest {
        self.tree().digest(node).unwrap_or_else(|| {
            Digest::of(format!("ringstar-undigested:{}:{}", self.digest, node.0).as_bytes())
        })
    }

    /// The store's key of regular file `node`: its content and how this
    /// layer's TOC chunks it. `None` when a chunk cannot be verified (no
    /// digest, too big) or the chunks do not tile the file.
    pub fn store_key(&self, node: NodeId) -> Option<FileKey> {
        *self.store_keys.get(node.0 as usize)?.get_or_init(|| {
            let chunks: Option<Vec<StoreChunk>> = self
                .tree()
                .chunks(node)
                .iter()
                .map(|c| self.store_chunk(node, c))
                .collect();
            FileKey::new(
                self.content_key(node),
                self.tree().node(node).size(),
                &chunks?,
            )
        })
    }

    /// The store's view of chunk `index` of `node`: `None` when the TOC
    /// gives no digest to verify it by, or it is too big to inflate.
    pub fn store_chunk(&self, node: NodeId, chunk: &Chunk) -> Option<StoreChunk> {
        if chunk.size > MAX_CHUNK {
            return None;
        }
        Some(StoreChunk {
            offset: chunk.chunk_offset,
            len: chunk.size,
            digest: self.tree().chunk_digest(node, chunk)?,
        })
    }

    /// Records that chunk `global` (an index into `all_chunks`) is in
    /// the store.
    pub fn mark_present(&self, global: usize) {
        let Some(&canon) = self.canonical.get(global) else {
            return;
        };
        let canon = canon as usize;
        let bit = 1u64 << (canon % 64);
        if self.present[canon / 64].fetch_or(bit, Ordering::AcqRel) & bit == 0 {
            let c = &self.tree().all_chunks()[canon];
            self.absent_bytes
                .fetch_sub(c.compressed_len(), Ordering::AcqRel);
        }
    }

    /// The regular file chunk `global` belongs to.
    pub fn owner(&self, global: usize) -> Option<NodeId> {
        self.owners
            .get(global)
            .filter(|&&o| o != u32::MAX)
            .map(|&o| NodeId(o))
    }

    pub fn is_present(&self, global: usize) -> bool {
        self.canonical.get(global).is_some_and(|&c| {
            let c = c as usize;
            self.present[c / 64].load(Ordering::Acquire) & (1 << (c % 64)) != 0
        })
    }

    /// `fetchedSize` as the state file reports it: the blob minus the
    /// compressed bytes of chunks not yet stored (so metadata, fetched at
    /// resolve time, counts as fetched).
    pub fn fetched_size(&self) -> u64 {
        self.blob_size
            .saturating_sub(self.absent_bytes.load(Ordering::Acquire))
    }

    pub fn fully_fetched(&self) -> bool {
        self.absent_bytes.load(Ordering::Acquire) == 0
    }

    /// The read-ahead budget for a miss of file `node` at blob offset
    /// `offset`: doubled when it continues where the last miss's fetch
    /// ended — up to `max` within one file (a file read through), up to
    /// [`CROSS_FILE_READ_AHEAD`] across files (a program opening files
    /// that neighbour in the blob does not read the whole layer) — `base`
    /// otherwise.
    pub fn read_ahead(&self, node: NodeId, offset: u64, base: u64, max: u64) -> u64 {
        let same_file = self.miss_node.swap(node.0, Ordering::AcqRel) == node.0;
        let sequential = self.miss_end.load(Ordering::Acquire) == offset;
        let cap = if same_file {
            max
        } else {
            max.min(CROSS_FILE_READ_AHEAD.max(base))
        };
        let next = if sequential {
            (self.read_ahead.load(Ordering::Acquire).max(base) * 2).min(cap)
        } else {
            base
        };
        self.read_ahead.store(next, Ordering::Release);
        next
    }

    /// A read that is not the sequential reader's next: stop following.
    pub fn seq_stop(&self) {
        let mut seq = self.seq.lock().expect("seq");
        seq.active = false;
        seq.generation += 1;
    }

    /// The sequential reader got to blob offset `offset` (a read joined a
    /// window in flight): true if that moved it on.
    pub fn seq_reader_at(&self, offset: u64) -> bool {
        let mut seq = self.seq.lock().expect("seq");
        if seq.active && (seq.reader..seq.frontier).contains(&offset) {
            seq.reader = offset;
            return true;
        }
        false
    }

    /// A window of stream `generation` arrived.
    pub fn seq_arrived(&self, generation: u64) {
        let mut seq = self.seq.lock().expect("seq");
        if seq.generation == generation {
            seq.in_flight = seq.in_flight.saturating_sub(1);
        }
    }

    /// The sequential stream, locked, for the loader to issue windows.
    pub fn seq(&self) -> std::sync::MutexGuard<'_, Sequential> {
        self.seq.lock().expect("seq")
    }

    pub fn note_miss_end(&self, end: u64) {
        self.miss_end.store(end, Ordering::Release);
    }

    pub fn set_error(&self, e: impl Into<String>) {
        *self.last_error.lock().expect("layer error") = Some(e.into());
    }

    /// The state file's content (snapshotter-protocol.md §6).
    pub fn state_json(&self) -> Vec<u8> {
        let fetched = self.fetched_size();
        let percent = if self.blob_size == 0 {
            100.0
        } else {
            fetched as f64 / self.blob_size as f64 * 100.0
        };
        let mut v = serde_json::Map::new();
        if let Some(e) = self.last_error.lock().expect("layer error").clone() {
            v.insert("error".into(), e.into());
        }
        v.insert("digest".into(), self.digest.to_string().into());
        v.insert("size".into(), self.blob_size.into());
        v.insert("fetchedSize".into(), fetched.into());
        v.insert("fetchedPercent".into(), percent.into());
        let mut out = serde_json::to_vec(&v).expect("json");
        out.push(b'\n');
        out
    }

    pub fn finish_prefetch(&self) {
        *self.prefetch.done.lock().expect("prefetch") = true;
        self.prefetch.cv.notify_all();
    }

    /// Waits up to `timeout` for the prefetch; whether it finished.
    pub fn wait_prefetch(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut done = self.prefetch.done.lock().expect("prefetch");
        while !*done {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            done = self
                .prefetch
                .cv
                .wait_timeout(done, deadline - now)
                .expect("prefetch")
                .0;
        }
        true
    }

    /// True the first time: the caller starts prefetch and background
    /// fetch.
    pub fn begin_fetching(&self) -> bool {
        !self.fetching.swap(true, Ordering::AcqRel)
    }

    pub fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Every regular file node (hardlinked names once).
    pub fn regular_files(&self) -> impl Iterator<Item = NodeId> + '_ {
        let tree = self.tree();
        (0..tree.len() as u32)
            .map(NodeId)
            .filter(move |&n| tree.node(n).kind() == FileKind::Reg && tree.node(n).size() > 0)
    }
}
