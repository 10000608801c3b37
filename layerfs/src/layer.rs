//! One remote layer as the filesystem serves it: the resolved core layer,
//! where its blob is, and how much of it is fetched.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use ringstar_core::store::{FileKey, StoreChunk};
use ringstar_core::tree::Chunk;
use ringstar_core::{Digest, FileKind, Layer, NodeId};
use ringstar_fetcher::BlobLocation;

use crate::chunks::BlobChunk;
use crate::planner::ReadAhead;

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
    /// One bit per blob-order chunk: known present. Only the bit of each
    /// member's *canonical* chunk is used — the first blob-order chunk
    /// with that member offset (superseded duplicates share members) —
    /// found through `canonical`.
    present: Vec<AtomicU64>,
    /// Blob-order chunk → its canonical chunk's blob-order number.
    canonical: Vec<u32>,
    /// The regular file each blob-order chunk belongs to (`u32::MAX`: a
    /// superseded entry's chunk, nobody's).
    owners: Vec<u32>,
    /// One bit per canonical chunk: its bytes count in the state file's
    /// `fetchedSize` only once present (see [`counted_chunks`]).
    counted: Vec<u64>,
    /// Compressed bytes of counted chunks not yet known present.
    absent_bytes: AtomicU64,
    prefetch: Prefetch,
    last_error: Mutex<Option<String>>,
    removed: AtomicBool,
    /// Prefetch and background fetch were started (once its TOC was
    /// verified).
    fetching: AtomicBool,
    /// How this layer's misses read ahead (the planner's state).
    pub(crate) read_ahead: ReadAhead,
    /// Each node's store key, made on first use (`None`: a file the store
    /// cannot hold, whose reads fail).
    store_keys: Box<[OnceLock<Option<FileKey>>]>,
    /// The layers of the image a container last mounted this one in,
    /// uppermost first: predictions look a program's libraries up as that
    /// container sees them (weak: a layer does not keep another).
    image: Mutex<Vec<Weak<RemoteLayer>>>,
    /// Files whose next opens were predicted (once each).
    predicted: Mutex<std::collections::HashSet<NodeId>>,
    /// Prefetch and background fetch, once done: (bytes, time taken).
    prefetched: OnceLock<(u64, Duration)>,
    background_fetched: OnceLock<(u64, Duration)>,
}

/// The canonical chunks whose bytes the state file counts as fetched
/// only once stored: the contents of files the store can hold (each
/// chunk verifiable and not too big, the chunks tiling the file: what
/// [`RemoteLayer::store_key`] asks), which reads and the background
/// fetch store. The rest of the blob — tar headers, the TOC and footer,
/// the landmark files, superseded entries, files the store cannot hold
/// (their reads fail) — counts as fetched once the layer is resolved,
/// so the state file reaches 100 % when every file is stored, as the
/// reference's does (#18). No hashing: this runs at resolve.
fn counted_chunks(tree: &ringstar_core::LayerTree, canonical: &[u32]) -> Vec<u64> {
    use ringstar_core::tree::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK};
    let landmarks: Vec<NodeId> = [PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK]
        .iter()
        .filter_map(|name| tree.lookup(NodeId::ROOT, name))
        .collect();
    let mut counted = vec![0u64; tree.all_chunks().len().div_ceil(64)];
    for id in (0..tree.len() as u32).map(NodeId) {
        let span = tree.chunk_span(id);
        if span.is_empty() || landmarks.contains(&id) {
            continue;
        }
        let mut reach = 0u64;
        let storable = tree.chunks(id).iter().all(|c| {
            let ok = c.chunk_offset == reach
                && c.size > 0
                && c.size <= MAX_CHUNK
                && tree.chunk_digest(id, c).is_some();
            reach = c.chunk_offset.saturating_add(c.size);
            ok
        }) && reach == tree.node(id).size();
        if storable {
            for g in span {
                let canon = canonical[g] as usize;
                counted[canon / 64] |= 1 << (canon % 64);
            }
        }
    }
    counted
}

fn is_set(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
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
        let mut owners = vec![u32::MAX; chunks.len()];
        for id in 0..layer.tree.len() as u32 {
            for g in layer.tree.chunk_span(NodeId(id)) {
                owners[g] = id;
            }
        }
        let counted = counted_chunks(&layer.tree, &canonical);
        let absent = chunks
            .iter()
            .enumerate()
            .filter(|(i, _)| is_set(&counted, *i))
            .map(|(_, c)| c.compressed_len())
            .sum();
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
            counted,
            absent_bytes: AtomicU64::new(absent),
            layer,
            prefetch: Prefetch::default(),
            last_error: Mutex::new(None),
            removed: AtomicBool::new(false),
            fetching: AtomicBool::new(false),
            read_ahead: ReadAhead::default(),
            store_keys,
            image: Mutex::default(),
            predicted: Mutex::default(),
            prefetched: OnceLock::new(),
            background_fetched: OnceLock::new(),
        }
    }

    /// The state file's `fetchedPercent`: 100 once every file is stored.
    pub fn fetched_percent(&self) -> f64 {
        if self.blob_size == 0 {
            100.0
        } else {
            self.fetched_size() as f64 / self.blob_size as f64 * 100.0
        }
    }

    /// The prefetch is done: `bytes` fetched in `took` (for metrics).
    pub fn record_prefetch(&self, bytes: u64, took: Duration) {
        let _ = self.prefetched.set((bytes, took));
    }

    /// The background fetch is done: `bytes` fetched in `took`.
    pub fn record_background(&self, bytes: u64, took: Duration) {
        let _ = self.background_fetched.set((bytes, took));
    }

    /// (bytes, time) of the prefetch, once done.
    pub fn prefetch_record(&self) -> Option<(u64, Duration)> {
        self.prefetched.get().copied()
    }

    /// (bytes, time) of the background fetch, once done.
    pub fn background_record(&self) -> Option<(u64, Duration)> {
        self.background_fetched.get().copied()
    }

    /// Records the layers of an image being mounted with this one in it,
    /// uppermost first (a layer shared by images: the latest mount's).
    pub fn set_image(&self, layers: &[Arc<RemoteLayer>]) {
        *self.image.lock().expect("image") = layers.iter().map(Arc::downgrade).collect();
    }

    /// The layers of the image this one was last mounted in that are
    /// still served, uppermost first (empty before any mount).
    pub fn image(&self) -> Vec<Arc<RemoteLayer>> {
        let image = self.image.lock().expect("image");
        image.iter().filter_map(Weak::upgrade).collect()
    }

    /// Marks `node` as predicted from; true the first time.
    pub(crate) fn first_prediction(&self, node: NodeId) -> bool {
        self.predicted.lock().expect("predicted").insert(node)
    }

    pub(crate) fn was_predicted(&self, node: NodeId) -> bool {
        self.predicted.lock().expect("predicted").contains(&node)
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

    /// The store's view of `chunk` of `node`: `None` when the TOC
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

    /// Records that chunk `blob` is in the store.
    pub fn mark_present(&self, blob: BlobChunk) {
        let Some(&canon) = self.canonical.get(blob.0) else {
            return;
        };
        let canon = canon as usize;
        let bit = 1u64 << (canon % 64);
        if self.present[canon / 64].fetch_or(bit, Ordering::AcqRel) & bit == 0
            && is_set(&self.counted, canon)
        {
            let c = &self.tree().all_chunks()[canon];
            self.absent_bytes
                .fetch_sub(c.compressed_len(), Ordering::AcqRel);
        }
    }

    /// The regular file chunk `blob` belongs to.
    pub fn owner(&self, blob: BlobChunk) -> Option<NodeId> {
        self.owners
            .get(blob.0)
            .filter(|&&o| o != u32::MAX)
            .map(|&o| NodeId(o))
    }

    pub fn is_present(&self, blob: BlobChunk) -> bool {
        self.canonical.get(blob.0).is_some_and(|&c| {
            let c = c as usize;
            self.present[c / 64].load(Ordering::Acquire) & (1 << (c % 64)) != 0
        })
    }

    /// `fetchedSize` as the state file reports it: the blob minus the
    /// compressed bytes of file contents not yet stored (so metadata,
    /// fetched at resolve time, counts as fetched).
    pub fn fetched_size(&self) -> u64 {
        self.blob_size
            .saturating_sub(self.absent_bytes.load(Ordering::Acquire))
    }

    pub fn fully_fetched(&self) -> bool {
        self.absent_bytes.load(Ordering::Acquire) == 0
    }

    pub fn set_error(&self, e: impl Into<String>) {
        *self.last_error.lock().expect("layer error") = Some(e.into());
    }

    /// The last fetch error, for the state file.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("layer error").clone()
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
