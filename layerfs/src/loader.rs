//! Getting chunks into the store: one fetch per chunk however many reads
//! wait for it (a chunk-state map, keyed by what the bytes must be), the
//! inflate + verify + store work on a small pool so neither the FUSE cores
//! nor the fetcher thread do it, the prefetch of a layer's prioritized
//! range in one request, and the background fetch of the rest behind
//! foreground reads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringstar_core::NodeId;
use ringstar_core::inflate::ChunkReader;
use ringstar_core::store::{Store, StoreChunk};

use ringstar_fetcher::Fetcher;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::layer::{RemoteLayer, Sequential};

/// One fetch of a chunk: the layer fetching it (its bytes come from that
/// layer's registry and nobody else's), the file and the chunk's offset
/// in it. Reads of one layer share a
/// fetch; a layer never waits on another's, so a failing source fails
/// only its own reads.
type ChunkKey = (u64, NodeId, u64);

/// Called with a chunk's verified bytes, or why there are none.
pub type ChunkWaiter = Box<dyn FnOnce(Result<Arc<Vec<u8>>, ChunkFailure>) + Send>;

/// Why a chunk could not be had (the read gets EIO; this is the log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkFailure(pub String);

/// How the loader fetches.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// A foreground miss also fetches the chunks that follow it in the
    /// blob, up to this many compressed bytes in all, and stores them:
    /// one request then serves a run of small neighbouring files (the
    /// reference gets the same from its 50 000-byte blob chunks).
    pub read_ahead: u64,
    /// While misses follow each other through the blob (a sequential
    /// reader), each doubles the read-ahead, up to this. Off by default
    /// (equal to `read_ahead`): container startups read programs and
    /// libraries through mmap, whose faults look sequential, and growing
    /// windows fetched 3-4x their working set (hellobench, gcc
    /// esgz-noopt on loopback: 67-86 MB and a 4-5 s run with 8 MiB, 28 MB
    /// and 1.5 s with 1 MiB, 22 MB and 1.1-1.4 s with it off). Whole-layer
    /// readers (layer-bench's cold read) gain from 8 MiB.
    pub max_read_ahead: u64,
    pub background: BackgroundConfig,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            read_ahead: 128 << 10,
            max_read_ahead: 128 << 10,
            background: BackgroundConfig::default(),
        }
    }
}

/// Background fetch settings.
#[derive(Debug, Clone)]
pub struct BackgroundConfig {
    pub enabled: bool,
    /// Compressed bytes per background request.
    pub window: u64,
    /// Background waits until no foreground fetch ran for this long.
    pub idle: Duration,
    /// Cap on background bytes per second (0: none).
    pub bytes_per_sec: u64,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        BackgroundConfig {
            enabled: true,
            window: 4 << 20,
            idle: Duration::from_secs(2),
            bytes_per_sec: 0,
        }
    }
}

/// Counters for tests, logs and the debug CLI.
#[derive(Debug, Default)]
pub struct LoaderStats {
    pub fetches: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub joined: AtomicU64,
    pub failures: AtomicU64,
    pub background_fetches: AtomicU64,
}

type Job = Box<dyn FnOnce() + Send>;

/// Bytes between two chunks that a window fetches rather than split in
/// two requests (a round trip costs far more).
const WINDOW_GAP: u64 = 64 << 10;

/// Compressed bytes per prefetch request, and how many are in flight:
/// enough to keep a WAN link busy (200 Mbit/s × 40 ms is 1 MB in flight)
/// while arrived windows are inflated.
const PREFETCH_WINDOW: u64 = 4 << 20;
const PREFETCH_IN_FLIGHT: usize = 2;

/// A prefetch under way: the windows not yet issued.
struct PrefetchRun {
    layer: Arc<RemoteLayer>,
    started: Instant,
    bytes: u64,
    windows: Mutex<std::collections::VecDeque<(u64, u64, Vec<Claimed>)>>,
    outstanding: AtomicUsize,
}

/// A chunk a fetch has taken on: its file, blob-order index, store view
/// and single-flight key.
type Claimed = (NodeId, usize, StoreChunk, ChunkKey);

pub struct Loader {
    pub store: Arc<Store>,
    fetcher: Fetcher,
    inflight: Mutex<HashMap<ChunkKey, Vec<ChunkWaiter>>>,
    pool: crossbeam_channel::Sender<Job>,
    foreground: AtomicUsize,
    last_foreground: Mutex<Instant>,
    pub stats: LoaderStats,
    background: crossbeam_channel::Sender<Arc<RemoteLayer>>,
    background_config: BackgroundConfig,
    read_ahead: u64,
    max_read_ahead: u64,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

thread_local! {
    static READER: RefCell<ChunkReader> = RefCell::new(ChunkReader::new());
}

impl Loader {
    pub fn new(
        store: Arc<Store>,
        fetcher: Fetcher,
        workers: usize,
        config: LoaderConfig,
    ) -> std::io::Result<Arc<Loader>> {
        let (pool, jobs) = crossbeam_channel::unbounded::<Job>();
        for i in 0..workers.max(1) {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("inflate-{i}"))
                .spawn(move || {
                    for job in jobs {
                        // A job completes its own chunks' waiters even
                        // when inflating one panics (finish_range); this
                        // only keeps the worker alive for the next job.
                        if let Err(p) = catch_unwind(AssertUnwindSafe(job)) {
                            tracing::error!(
                                panic = ringstar_core::faults::message(&*p),
                                "an inflate job panicked"
                            );
                        }
                    }
                })?;
        }
        let (background, layers) = crossbeam_channel::unbounded();
        let loader = Arc::new(Loader {
            store,
            fetcher,
            inflight: Mutex::new(HashMap::new()),
            pool,
            foreground: AtomicUsize::new(0),
            last_foreground: Mutex::new(Instant::now()),
            stats: LoaderStats::default(),
            background,
            background_config: config.background,
            read_ahead: config.read_ahead,
            max_read_ahead: config.max_read_ahead.max(config.read_ahead),
        });
        let weak = Arc::downgrade(&loader);
        std::thread::Builder::new()
            .name("background".into())
            .spawn(move || {
                for layer in layers {
                    let Some(loader) = weak.upgrade() else { return };
                    // A panic ends this layer's background fetch (its
                    // chunks are fetched on demand), not the thread.
                    if let Err(p) =
                        catch_unwind(AssertUnwindSafe(|| loader.background_layer(&layer)))
                    {
                        tracing::error!(layer = %layer.digest, panic = ringstar_core::faults::message(&*p), "background fetch panicked");
                    }
                }
            })?;
        Ok(loader)
    }

    fn key(layer: &RemoteLayer, node: NodeId, chunk: &StoreChunk) -> ChunkKey {
        (layer.id, node, chunk.offset)
    }

    /// Takes ownership of fetching `key` unless someone already fetches
    /// it (then `waiter` joins them). Returns whether the caller fetches.
    fn claim(&self, key: ChunkKey, waiter: Option<ChunkWaiter>) -> bool {
        let mut map = self.inflight.lock().expect("inflight");
        match map.get_mut(&key) {
            Some(waiters) => {
                waiters.extend(waiter);
                self.stats.joined.fetch_add(1, Ordering::Relaxed);
                false
            }
            None => {
                map.insert(key, waiter.into_iter().collect());
                true
            }
        }
    }

    fn complete(&self, key: &ChunkKey, result: Result<Arc<Vec<u8>>, ChunkFailure>) {
        let waiters = self
            .inflight
            .lock()
            .expect("inflight")
            .remove(key)
            .unwrap_or_default();
        for w in waiters {
            w(result.clone());
        }
    }

    /// Gets chunk `index` of regular file `node` into the store (a
    /// foreground read waits for it): joins a fetch in flight, or fetches
    /// the chunk's compressed range. `done` runs on a worker thread.
    pub fn load(
        self: &Arc<Self>,
        layer: &Arc<RemoteLayer>,
        node: NodeId,
        index: usize,
        done: ChunkWaiter,
    ) {
        let tree = layer.tree();
        let Some(chunk) = tree.chunks(node).get(index).copied() else {
            return done(Err(ChunkFailure(format!("no chunk {index}"))));
        };
        let Some(sc) = layer
            .store_key(node)
            .and_then(|_| layer.store_chunk(node, &chunk))
        else {
            return done(Err(ChunkFailure(format!(
                "chunk at {} of {} bytes has no digest to verify it by, or is too big",
                chunk.chunk_offset, chunk.size
            ))));
        };
        let key = Self::key(layer, node, &sc);
        if !self.claim(key, Some(done)) {
            if layer.seq_reader_at(chunk.offset) {
                self.advance(layer);
            }
            return;
        }
        let global = tree.chunk_span(node).start + index;
        let budget = layer.read_ahead(node, chunk.offset, self.read_ahead, self.max_read_ahead);
        if budget > self.read_ahead {
            // A sequential reader: follow it. The stream stays locked
            // until its first window is out, so no arrival of an older
            // window issues one beside it.
            let end = {
                let mut seq = layer.seq();
                *seq = Sequential {
                    active: true,
                    generation: seq.generation + 1,
                    reader: chunk.offset,
                    frontier: chunk.offset,
                    budget,
                    in_flight: 0,
                };
                let (end, issued) = self.fetch_window(
                    layer,
                    global,
                    vec![(node, global, sc, key)],
                    budget,
                    Some(seq.generation),
                );
                seq.frontier = end;
                seq.in_flight = u32::from(issued);
                end
            };
            layer.note_miss_end(end);
            self.advance(layer);
        } else {
            layer.seq_stop();
            let (end, _) =
                self.fetch_window(layer, global, vec![(node, global, sc, key)], budget, None);
            layer.note_miss_end(end);
        }
    }

    /// Keeps up to two windows in flight ahead of a sequential reader, as
    /// long as it is within three windows of the frontier, each twice the
    /// last up to the maximum read-ahead.
    fn advance(self: &Arc<Self>, layer: &Arc<RemoteLayer>) {
        let chunks = layer.tree().all_chunks();
        let mut seq = layer.seq();
        while seq.active && seq.in_flight < 2 && seq.frontier - seq.reader < 3 * seq.budget {
            let from = chunks.partition_point(|c| c.offset < seq.frontier);
            if from >= chunks.len() {
                seq.active = false;
                break;
            }
            let (end, issued) =
                self.fetch_window(layer, from, Vec::new(), seq.budget, Some(seq.generation));
            seq.frontier = end;
            seq.in_flight += u32::from(issued);
            // Each window of a stream the reader keeps up with is bigger.
            seq.budget = (seq.budget * 2).min(self.max_read_ahead);
            layer.note_miss_end(end);
        }
    }

    /// Claims the chunks from blob-order index `from` on that are
    /// contiguous, within `budget` compressed bytes, and neither stored nor
    /// fetched by anyone (besides those in `claimed` already), and fetches
    /// them in one range. Returns where the window ends in the blob and
    /// whether a fetch went out; its arrival moves sequential stream
    /// `sequential` on.
    fn fetch_window(
        self: &Arc<Self>,
        layer: &Arc<RemoteLayer>,
        from: usize,
        mut claimed: Vec<Claimed>,
        budget: u64,
        sequential: Option<u64>,
    ) -> (u64, bool) {
        let chunks = layer.tree().all_chunks();
        let start = chunks[from].offset;
        let first_claimed = !claimed.is_empty();
        let mut end = start;
        for (g, c) in chunks.iter().enumerate().skip(from) {
            // Small gaps (headers of symlinks, directories, empty
            // files) ride along rather than cut the window.
            if c.offset < end
                || c.offset - end > WINDOW_GAP
                || (g > from && c.next_offset - start > budget)
            {
                break;
            }
            end = c.next_offset;
            if g == from && first_claimed {
                continue;
            }
            let Some(owner) = layer.owner(g) else {
                continue;
            };
            let Some(sc) = layer
                .store_key(owner)
                .and_then(|_| layer.store_chunk(owner, c))
            else {
                continue;
            };
            if self.stored(layer, owner, g, &sc) {
                continue;
            }
            let key = Self::key(layer, owner, &sc);
            if self.claim(key, None) {
                claimed.push((owner, g, sc, key));
            }
        }
        let (Some(lo), Some(hi)) = (
            claimed.iter().map(|c| chunks[c.1].offset).min(),
            claimed.iter().map(|c| chunks[c.1].next_offset).max(),
        ) else {
            return (end, false);
        };
        self.foreground.fetch_add(1, Ordering::AcqRel);
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        let layer = layer.clone();
        self.fetcher
            .read_range_then(&layer.location.clone(), lo, hi - lo, move |fetched| {
                *me.last_foreground.lock().expect("clock") = Instant::now();
                me.foreground.fetch_sub(1, Ordering::AcqRel);
                me.count_fetched(&fetched);
                if let Some(generation) = sequential {
                    layer.seq_arrived(generation);
                    // Whatever happens to the next window, this one's
                    // chunks go to the pool below and answer their reads.
                    if let Err(p) = catch_unwind(AssertUnwindSafe(|| me.advance(&layer))) {
                        tracing::error!(layer = %layer.digest, panic = ringstar_core::faults::message(&*p), "read-ahead panicked");
                    }
                }
                // One job per chunk: both workers inflate, and the first
                // chunk's reader is answered before the last is inflated.
                for one in claimed {
                    let (me2, layer2, fetched) = (me.clone(), layer.clone(), fetched.clone());
                    let job: Job = Box::new(move || {
                        me2.finish_range(&layer2, std::slice::from_ref(&one), lo, fetched);
                    });
                    if let Err(crossbeam_channel::SendError(job)) = me.pool.send(job) {
                        job();
                    }
                }
            });
        (end, true)
    }

    /// Inflates one chunk from its compressed bytes (starting at the
    /// chunk's offset), checks its digest, stores it.
    fn inflate_and_store(
        &self,
        layer: &RemoteLayer,
        node: NodeId,
        global: usize,
        sc: &StoreChunk,
        compressed: &[u8],
    ) -> Result<Arc<Vec<u8>>, ChunkFailure> {
        ringstar_core::faults::point("inflate");
        let chunk = layer.tree().all_chunks()[global];
        let file = layer
            .store_key(node)
            .ok_or_else(|| ChunkFailure("file cannot be verified".into()))?;
        let mut out = vec![0u8; sc.len as usize];
        READER
            .with(|r| {
                r.borrow_mut()
                    .inflate(layer.layer.compression, &chunk, compressed, &mut out)
            })
            .map_err(|e| ChunkFailure(format!("chunk at {}: {e}", chunk.chunk_offset)))?;
        let verified = sc.verify(&out).ok_or_else(|| {
            ChunkFailure(format!(
                "chunk at {}: content does not match its digest",
                chunk.chunk_offset
            ))
        })?;
        match self.store.put(&file, verified) {
            Ok(()) => layer.mark_present(global),
            // The bytes are verified: serve them even if they cannot be
            // kept.
            Err(e) => tracing::warn!(file = %file.content(), error = %e, "could not store a chunk"),
        }
        Ok(Arc::new(out))
    }

    /// Whether a chunk is in the store already (marks it present).
    fn stored(&self, layer: &RemoteLayer, node: NodeId, global: usize, sc: &StoreChunk) -> bool {
        if layer.is_present(global) {
            return true;
        }
        if layer
            .store_key(node)
            .is_some_and(|file| self.store.has_chunk(&file, sc))
        {
            layer.mark_present(global);
            return true;
        }
        false
    }

    /// Every chunk of regular files, as (node, global index, store view),
    /// in blob order.
    fn all_chunks(layer: &RemoteLayer) -> Vec<(NodeId, usize, StoreChunk)> {
        let tree = layer.tree();
        let mut out = Vec::new();
        for node in layer.regular_files() {
            let span = tree.chunk_span(node);
            if layer.store_key(node).is_none() {
                continue;
            }
            for (i, c) in tree.chunks(node).iter().enumerate() {
                if let Some(sc) = layer.store_chunk(node, c) {
                    out.push((node, span.start + i, sc));
                }
            }
        }
        let chunks = tree.all_chunks();
        out.sort_by_key(|(_, g, _)| chunks[*g].offset);
        out
    }

    /// Fetches `[0, landmark)` and stores every chunk in it, in windows
    /// of about [`PREFETCH_WINDOW`] compressed bytes, in blob order, two
    /// in flight: the link stays busy while arrived windows are inflated
    /// on the pool (not one thread after the whole range), and the first
    /// files are ready long before the last arrive. Reads of those chunks
    /// meanwhile wait for their window instead of fetching their own.
    /// Marks the layer's prefetch done when the last window is in.
    pub fn prefetch(self: &Arc<Self>, layer: &Arc<RemoteLayer>) {
        let Some(end) = layer.tree().prefetch_range().filter(|&e| e > 0) else {
            layer.finish_prefetch();
            return;
        };
        let chunks = layer.tree().all_chunks();
        let mine: Vec<Claimed> = Self::all_chunks(layer)
            .into_iter()
            .filter(|(_, g, _)| chunks[*g].next_offset <= end)
            .filter(|(n, g, sc)| !self.stored(layer, *n, *g, sc))
            .filter_map(|(n, g, sc)| {
                let key = Self::key(layer, n, &sc);
                self.claim(key, None).then_some((n, g, sc, key))
            })
            .collect();
        if mine.is_empty() {
            layer.finish_prefetch();
            return;
        }
        // Windows of claimed chunks, each a range from its first chunk's
        // start to its last one's end.
        let mut windows: Vec<(u64, u64, Vec<Claimed>)> = Vec::new();
        for c in mine {
            let (lo, hi) = (chunks[c.1].offset, chunks[c.1].next_offset);
            match windows.last_mut() {
                Some(w) if hi - w.0 <= PREFETCH_WINDOW || w.2.is_empty() => {
                    w.1 = w.1.max(hi);
                    w.2.push(c);
                }
                _ => windows.push((lo, hi, vec![c])),
            }
        }
        let run = Arc::new(PrefetchRun {
            layer: layer.clone(),
            started: Instant::now(),
            bytes: end,
            windows: Mutex::new(windows.into_iter().collect()),
            outstanding: AtomicUsize::new(0),
        });
        for _ in 0..PREFETCH_IN_FLIGHT {
            self.next_prefetch_window(&run);
        }
    }

    /// Issues `run`'s next window, if any is left.
    fn next_prefetch_window(self: &Arc<Self>, run: &Arc<PrefetchRun>) {
        let Some((lo, hi, claimed)) = run.windows.lock().expect("windows").pop_front() else {
            return;
        };
        run.outstanding.fetch_add(1, Ordering::AcqRel);
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        self.foreground.fetch_add(1, Ordering::AcqRel);
        let me = self.clone();
        let run2 = run.clone();
        self.fetcher
            .read_range_then(&run.layer.location, lo, hi - lo, move |fetched| {
                *me.last_foreground.lock().expect("clock") = Instant::now();
                me.foreground.fetch_sub(1, Ordering::AcqRel);
                me.count_fetched(&fetched);
                // The next window goes out before this one is inflated, so
                // two stay on the wire.
                let me2 = me.clone();
                let job: Job = Box::new(move || {
                    me2.next_prefetch_window(&run2);
                    me2.finish_range(&run2.layer, &claimed, lo, fetched);
                    let left = run2.outstanding.fetch_sub(1, Ordering::AcqRel) - 1;
                    if left == 0 && run2.windows.lock().expect("windows").is_empty() {
                        run2.layer.finish_prefetch();
                        tracing::info!(layer = %run2.layer.digest, bytes = run2.bytes, ms = run2.started.elapsed().as_millis() as u64, "prefetched");
                    }
                });
                if let Err(crossbeam_channel::SendError(job)) = me.pool.send(job) {
                    job();
                }
            });
    }

    fn count_fetched(&self, fetched: &Result<Bytes, ringstar_fetcher::FetchError>) {
        if let Ok(bytes) = fetched {
            self.stats
                .fetched_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    }

    /// Inflates and stores the claimed chunks from a fetched range that
    /// starts at blob offset `base`, completing their waiters.
    fn finish_range(
        &self,
        layer: &RemoteLayer,
        claimed: &[Claimed],
        base: u64,
        fetched: Result<Bytes, ringstar_fetcher::FetchError>,
    ) {
        let chunks = layer.tree().all_chunks();
        match fetched {
            Ok(bytes) => {
                for (node, global, sc, key) in claimed {
                    let c = &chunks[*global];
                    let (from, to) = ((c.offset - base) as usize, (c.next_offset - base) as usize);
                    let result = match bytes.get(from..to) {
                        // A panic in inflating or storing one chunk fails
                        // that chunk's reads (EIO), and its waiters are
                        // answered like any failure's.
                        Some(part) => catch_unwind(AssertUnwindSafe(|| {
                            self.inflate_and_store(layer, *node, *global, sc, part)
                        }))
                        .unwrap_or_else(|p| {
                            Err(ChunkFailure(format!(
                                "panicked: {}",
                                ringstar_core::faults::message(&*p)
                            )))
                        }),
                        None => Err(ChunkFailure("range shorter than its chunks".into())),
                    };
                    if let Err(f) = &result {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        layer.set_error(f.0.clone());
                        tracing::warn!(layer = %layer.digest, offset = c.offset, reason = %f.0, "chunk read failed; answering EIO");
                    }
                    self.complete(key, result);
                }
            }
            Err(e) => {
                tracing::warn!(layer = %layer.digest, error = %e, "range fetch failed");
                layer.set_error(e.to_string());
                for (.., key) in claimed {
                    self.complete(key, Err(ChunkFailure(format!("fetch: {e}"))));
                }
            }
        }
    }

    /// Queues the layer for background fetch (when enabled).
    pub fn start_background(&self, layer: &Arc<RemoteLayer>) {
        if self.background_config.enabled {
            let _ = self.background.send(layer.clone());
        }
    }

    /// Waits until no foreground fetch ran for the idle time.
    fn wait_foreground_idle(&self) {
        loop {
            let quiet = self.last_foreground.lock().expect("clock").elapsed();
            if self.foreground.load(Ordering::Acquire) == 0 && quiet >= self.background_config.idle
            {
                return;
            }
            std::thread::sleep(
                self.background_config
                    .idle
                    .saturating_sub(quiet)
                    .max(Duration::from_millis(20)),
            );
        }
    }

    /// Fetches every chunk the store lacks, in blob order, in windows of
    /// contiguous chunks, one request at a time, each after the
    /// foreground has been idle.
    fn background_layer(&self, layer: &Arc<RemoteLayer>) {
        let started = Instant::now();
        let all = Self::all_chunks(layer);
        let chunks = layer.tree().all_chunks();
        let cfg = &self.background_config;
        let mut i = 0;
        let mut fetched = 0u64;
        while i < all.len() {
            if layer.is_removed() {
                return;
            }
            // The next window: contiguous chunks not stored yet.
            let (n, g, sc) = all[i];
            if self.stored(layer, n, g, &sc) {
                i += 1;
                continue;
            }
            let start = chunks[g].offset;
            let mut end = chunks[g].next_offset;
            let mut j = i + 1;
            while j < all.len() {
                let c = &chunks[all[j].1];
                if c.offset > end + WINDOW_GAP || c.next_offset - start > cfg.window {
                    break;
                }
                end = end.max(c.next_offset);
                j += 1;
            }
            self.wait_foreground_idle();
            let claimed: Vec<_> = all[i..j]
                .iter()
                .filter(|(n, g, sc)| !self.stored(layer, *n, *g, sc))
                .filter_map(|&(n, g, sc)| {
                    let key = Self::key(layer, n, &sc);
                    self.claim(key, None).then_some((n, g, sc, key))
                })
                .collect();
            if !claimed.is_empty() {
                let lo = claimed
                    .iter()
                    .map(|c| chunks[c.1].offset)
                    .min()
                    .unwrap_or(start);
                let hi = claimed
                    .iter()
                    .map(|c| chunks[c.1].next_offset)
                    .max()
                    .unwrap_or(end);
                self.stats
                    .background_fetches
                    .fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let result = self.fetcher.read_range(&layer.location, lo, hi - lo);
                self.count_fetched(&result);
                if result.is_err() {
                    // Leave the rest for later reads; the registry is not
                    // answering now.
                    self.finish_range(layer, &claimed, lo, result);
                    tracing::info!(layer = %layer.digest, "background fetch stopped after an error");
                    return;
                }
                self.finish_range(layer, &claimed, lo, result);
                fetched += hi - lo;
                if cfg.bytes_per_sec > 0 {
                    let should =
                        Duration::from_secs_f64((hi - lo) as f64 / cfg.bytes_per_sec as f64);
                    if let Some(rest) = should.checked_sub(t.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
            }
            i = j;
        }
        tracing::info!(layer = %layer.digest, bytes = fetched, ms = started.elapsed().as_millis() as u64, "background fetch complete");
    }
}
