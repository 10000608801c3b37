//! Getting chunks into the store: single flight per chunk
//! ([`crate::flight`]), windows planned by [`crate::planner`], one request
//! per window, the inflate + verify + store work on a small pool so
//! neither the FUSE threads nor the fetcher thread do it. Prefetch and
//! background fetch are in `loader/prefetch.rs` and
//! `loader/background.rs`.

mod background;
mod config;
mod predict;
mod prefetch;
mod replay;

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use ringstar_core::NodeId;
use ringstar_core::inflate::ChunkReader;
use ringstar_core::store::{Store, StoreChunk};
use ringstar_fetcher::{FetchError, Fetcher};

use crate::chunks::{BlobChunk, ChunkKey, FileChunk};
use crate::error::ChunkFailure;
use crate::flight::{Flights, Joined, Loading};
use crate::layer::RemoteLayer;
use crate::planner::{Extent, Planned, Policy};
use crate::starts::StartRecords;

pub use self::config::{BackgroundConfig, LoaderConfig, LoaderStats};
pub use crate::flight::ChunkWaiter;

type Job = Box<dyn FnOnce() + Send>;

/// A chunk a fetch has taken on: its file, its blob-order number, the
/// store's view of it, the single-flight entry it must finish, and
/// whether its arrival is a file being executed or loaded, so what it
/// opens next is predicted ([`predict`]).
#[derive(Debug)]
pub(crate) struct ClaimedChunk {
    node: NodeId,
    blob: BlobChunk,
    store: StoreChunk,
    loading: Loading,
    predict: bool,
}

pub struct Loader {
    pub store: Arc<Store>,
    fetcher: Fetcher,
    flights: Arc<Flights>,
    pool: crossbeam_channel::Sender<Job>,
    /// Foreground (miss, read-ahead, prefetch) fetches on the wire, and
    /// when the last one ended: the background waits for quiet.
    foreground: AtomicUsize,
    last_foreground: Mutex<Instant>,
    pub stats: LoaderStats,
    background: crossbeam_channel::Sender<Arc<RemoteLayer>>,
    background_config: BackgroundConfig,
    policy: Policy,
    /// Predict what executed files open next ([`predict`]).
    predict: bool,
    /// Where starts are recorded and replayed from (`crate::starts`).
    pub starts: Option<Arc<StartRecords>>,
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
    /// The chunks being fetched and inflated now (a debug view): each
    /// with how many reads wait for it.
    pub fn in_flight(&self) -> Vec<(crate::chunks::ChunkKey, usize)> {
        self.flights.snapshot()
    }

    /// A loader with `workers` inflate threads and one background thread.
    pub fn new(
        store: Arc<Store>,
        fetcher: Fetcher,
        workers: usize,
        config: LoaderConfig,
    ) -> std::io::Result<Arc<Loader>> {
        let pool = spawn_pool(workers)?;
        let starts = match &config.start_records {
            Some(dir) => Some(StartRecords::open(dir)?),
            None => None,
        };
        let (background, layers) = crossbeam_channel::unbounded();
        let loader = Arc::new(Loader {
            store,
            fetcher,
            flights: Arc::default(),
            pool,
            foreground: AtomicUsize::new(0),
            last_foreground: Mutex::new(Instant::now()),
            stats: LoaderStats::default(),
            background,
            background_config: config.background,
            policy: Policy {
                read_ahead: config.read_ahead,
                max_read_ahead: config.max_read_ahead.max(config.read_ahead),
            },
            predict: config.predict,
            starts,
        });
        spawn_background(Arc::downgrade(&loader), layers)?;
        Ok(loader)
    }

    /// A container's snapshot of image `image` (uppermost first) is being
    /// mounted: replay the image's start record if it has one and is
    /// cold, else record this start.
    pub fn image_mounted(self: &Arc<Self>, image: &[Arc<RemoteLayer>]) {
        let Some(starts) = &self.starts else {
            return;
        };
        let digests: Vec<_> = image.iter().map(|l| l.digest).collect();
        match starts.load(&digests) {
            Some(record) => {
                if self.replay(image, &record) {
                    tracing::info!(
                        files = record.files.len(),
                        "replaying the image's start record"
                    );
                }
            }
            None => starts.begin(image),
        }
    }

    /// The store's view of chunk `index` of regular file `node`, or why
    /// it has none (no such chunk; no digest to verify it by, too big).
    fn store_chunk_of(
        layer: &RemoteLayer,
        node: NodeId,
        index: FileChunk,
    ) -> Result<StoreChunk, ChunkFailure> {
        let chunk = layer
            .tree()
            .chunks(node)
            .get(index.0)
            .copied()
            .ok_or(ChunkFailure::NoSuchChunk(index))?;
        layer
            .store_key(node)
            .and_then(|_| layer.store_chunk(node, &chunk))
            .ok_or(ChunkFailure::Unverifiable {
                file_offset: chunk.chunk_offset,
                size: chunk.size,
            })
    }

    fn key(layer: &RemoteLayer, node: NodeId, chunk: &StoreChunk) -> ChunkKey {
        ChunkKey {
            layer: layer.id,
            node,
            file_offset: chunk.offset,
        }
    }

    /// Gets chunk `index` of regular file `node` into the store (a
    /// foreground read waits for it): joins a load in flight, or fetches
    /// the window the planner gives the miss. `done` runs as
    /// [`ChunkWaiter`] says.
    pub fn load(
        self: &Arc<Self>,
        layer: &Arc<RemoteLayer>,
        node: NodeId,
        index: FileChunk,
        done: ChunkWaiter,
    ) {
        let tree = layer.tree();
        let sc = match Self::store_chunk_of(layer, node, index) {
            Ok(sc) => sc,
            Err(e) => return done(Err(e)),
        };
        let chunk = tree.chunks(node)[index.0];
        let loading = match self.flights.join(Self::key(layer, node, &sc), done) {
            Joined::Leader(loading) => loading,
            Joined::Follower => {
                self.stats.joined.fetch_add(1, Ordering::Relaxed);
                if layer.read_ahead.reader_at(chunk.offset) {
                    self.follow(layer);
                }
                return;
            }
        };
        let blob = BlobChunk::of(tree, node, index);
        let planned = layer
            .read_ahead
            .miss(tree.all_chunks(), node, blob, self.policy);
        let first = ClaimedChunk {
            node,
            blob,
            store: sc,
            loading,
            // A miss on a file's first chunk: maybe a program starting
            // (not a reader going through the blob).
            predict: self.predict && index.0 == 0 && !planned.continues,
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            let e = &planned.extent;
            tracing::debug!(
                layer = %layer.digest,
                path = %tree.path_of(node),
                file_offset = chunk.chunk_offset,
                window = e.blob_end - chunk.offset,
                "miss"
            );
        }
        let stream = planned.stream.is_some();
        self.fetch_planned(layer, planned, Some(first));
        if stream {
            self.follow(layer);
        }
    }

    /// Sends the windows the planner has due for the reader being
    /// followed (none unless one is).
    fn follow(self: &Arc<Self>, layer: &Arc<RemoteLayer>) {
        while let Some(planned) = layer.read_ahead.next_window(layer.tree()) {
            let generation = planned.stream;
            if !self.fetch_planned(layer, planned, None)
                && let Some(generation) = generation
            {
                layer.read_ahead.window_done(generation);
            }
        }
    }

    /// Claims what is left to fetch of a planned window (besides `first`,
    /// claimed already) and fetches it in one request. Returns whether a
    /// request went out.
    fn fetch_planned(
        self: &Arc<Self>,
        layer: &Arc<RemoteLayer>,
        planned: Planned,
        first: Option<ClaimedChunk>,
    ) -> bool {
        let skip = first.as_ref().map(|c| c.blob);
        let mut claimed: Vec<ClaimedChunk> = first.into_iter().collect();
        self.claim_extent(layer, &planned.extent, skip, &mut claimed);
        self.fetch_claimed(layer, claimed, planned.stream)
    }

    /// Fetches `claimed` in one request (a window of followed stream
    /// `stream`, if any); their chunks are inflated on the pool, one job
    /// each, and predicted from where marked. Returns whether a request
    /// went out (none for nothing claimed).
    fn fetch_claimed(
        self: &Arc<Self>,
        layer: &Arc<RemoteLayer>,
        claimed: Vec<ClaimedChunk>,
        stream: Option<u64>,
    ) -> bool {
        if claimed.is_empty() {
            return false;
        }
        self.fetch_then(layer, claimed, move |me, layer, claimed, base, fetched| {
            if let Some(generation) = stream {
                layer.read_ahead.window_done(generation);
                // Whatever happens to the next window, this one's chunks
                // go to the pool below and answer their reads.
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| me.follow(&layer))) {
                    tracing::error!(layer = %layer.digest, panic = ringstar_core::faults::message(&*p), "read-ahead panicked");
                }
            }
            me.finish_on_pool(&layer, claimed, base, fetched);
        });
        true
    }

    /// Inflates and stores fetched `claimed` on the pool, one job per
    /// chunk (both workers inflate, and the first chunk's reader is
    /// answered before the last is inflated), predicting from the chunks
    /// marked for it.
    fn finish_on_pool(
        self: &Arc<Self>,
        layer: &Arc<RemoteLayer>,
        claimed: Vec<ClaimedChunk>,
        base: u64,
        fetched: Fetched,
    ) {
        for one in claimed {
            let (me, layer, fetched) = (self.clone(), layer.clone(), fetched.clone());
            self.run_on_pool(Box::new(move || {
                for (node, first) in me.finish_chunks(&layer, vec![one], base, fetched) {
                    me.predict_after(&layer, node, first);
                }
            }));
        }
    }

    /// Claims the chunks of `extent` (but `skip`) that belong to a file,
    /// can be verified, are not stored and nobody loads; appends them to
    /// `out`.
    fn claim_extent(
        &self,
        layer: &RemoteLayer,
        extent: &Extent,
        skip: Option<BlobChunk>,
        out: &mut Vec<ClaimedChunk>,
    ) {
        let all = layer.tree().all_chunks();
        for blob in extent.blob_chunks().filter(|&b| Some(b) != skip) {
            let Some(node) = layer.owner(blob) else {
                continue;
            };
            let Some(sc) = layer
                .store_key(node)
                .and_then(|_| layer.store_chunk(node, &all[blob.0]))
            else {
                continue;
            };
            if self.stored(layer, node, blob, &sc) {
                continue;
            }
            match self.flights.claim(Self::key(layer, node, &sc)) {
                Some(loading) => out.push(ClaimedChunk {
                    node,
                    blob,
                    store: sc,
                    loading,
                    predict: false,
                }),
                None => {
                    self.stats.joined.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Fetches the blob range covering `claimed` (a foreground fetch: the
    /// background waits for it); `arrived` runs on the fetcher's thread
    /// with the chunks, the range's start and its bytes.
    fn fetch_then(
        self: &Arc<Self>,
        layer: &Arc<RemoteLayer>,
        claimed: Vec<ClaimedChunk>,
        arrived: impl FnOnce(&Arc<Loader>, Arc<RemoteLayer>, Vec<ClaimedChunk>, u64, Fetched)
        + Send
        + 'static,
    ) {
        let (lo, hi) = blob_range(layer, &claimed);
        self.foreground.fetch_add(1, Ordering::AcqRel);
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        let layer = layer.clone();
        let location = layer.location.clone();
        self.fetcher
            .read_range_then(&location, lo, hi - lo, move |fetched| {
                *me.last_foreground.lock().expect("clock") = Instant::now();
                me.foreground.fetch_sub(1, Ordering::AcqRel);
                me.count_fetched(&fetched);
                arrived(&me, layer, claimed, lo, fetched);
            });
    }

    fn run_on_pool(&self, job: Job) {
        // The workers live as long as the loader: a failed send is a
        // loader being torn down, and the job runs here.
        if let Err(crossbeam_channel::SendError(job)) = self.pool.send(job) {
            job();
        }
    }

    fn count_fetched(&self, fetched: &Fetched) {
        if let Ok(bytes) = fetched {
            self.stats
                .fetched_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    }

    /// Whether a chunk is in the store already (marks it present).
    fn stored(&self, layer: &RemoteLayer, node: NodeId, blob: BlobChunk, sc: &StoreChunk) -> bool {
        if layer.is_present(blob) {
            return true;
        }
        if layer
            .store_key(node)
            .is_some_and(|file| self.store.has_chunk(&file, sc))
        {
            layer.mark_present(blob);
            return true;
        }
        false
    }

    /// Inflates and stores `claimed` from a fetched range that starts at
    /// blob offset `base`, finishing their loads (their waiters run here).
    /// Returns the arrived chunks marked for prediction (files' first
    /// chunks), for the caller to predict from once every read is
    /// answered.
    #[must_use]
    fn finish_chunks(
        &self,
        layer: &RemoteLayer,
        claimed: Vec<ClaimedChunk>,
        base: u64,
        fetched: Fetched,
    ) -> Vec<(NodeId, Arc<Vec<u8>>)> {
        let bytes = match fetched {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(layer = %layer.digest, error = %e, "range fetch failed");
                layer.set_error(e.to_string());
                for c in claimed {
                    c.loading.finish(Err(ChunkFailure::Fetch(e.clone())));
                }
                return Vec::new();
            }
        };
        let mut arrived = Vec::new();
        let all = layer.tree().all_chunks();
        for c in claimed {
            let member = &all[c.blob.0];
            let range = (member.offset - base) as usize..(member.next_offset - base) as usize;
            let result = match bytes.get(range) {
                // A panic in inflating or storing one chunk fails that
                // chunk's reads (EIO), and its waiters are answered like
                // any failure's.
                Some(part) => catch_unwind(AssertUnwindSafe(|| {
                    self.inflate_and_store(layer, c.node, c.blob, &c.store, part)
                }))
                .unwrap_or_else(|p| {
                    Err(ChunkFailure::Panicked(
                        ringstar_core::faults::message(&*p).to_string(),
                    ))
                }),
                None => Err(ChunkFailure::ShortRange),
            };
            if let Err(f) = &result {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                layer.set_error(f.to_string());
                tracing::warn!(layer = %layer.digest, offset = member.offset, reason = %f, "chunk read failed; answering EIO");
            }
            if let (true, Ok(bytes)) = (c.predict, &result) {
                arrived.push((c.node, bytes.clone()));
            }
            c.loading.finish(result);
        }
        arrived
    }

    /// Inflates one chunk from its compressed bytes (starting at the
    /// chunk's member), checks its digest, stores it.
    fn inflate_and_store(
        &self,
        layer: &RemoteLayer,
        node: NodeId,
        blob: BlobChunk,
        sc: &StoreChunk,
        compressed: &[u8],
    ) -> Result<Arc<Vec<u8>>, ChunkFailure> {
        ringstar_core::faults::point("inflate");
        let chunk = layer.tree().all_chunks()[blob.0];
        let file_offset = chunk.chunk_offset;
        let file = layer.store_key(node).ok_or(ChunkFailure::Unverifiable {
            file_offset,
            size: chunk.size,
        })?;
        let mut out = vec![0u8; sc.len as usize];
        READER
            .with(|r| {
                r.borrow_mut()
                    .inflate(layer.layer.compression, &chunk, compressed, &mut out)
            })
            .map_err(|e| ChunkFailure::Inflate {
                file_offset,
                source: Arc::new(e),
            })?;
        let verified = sc
            .verify(&out)
            .ok_or(ChunkFailure::DigestMismatch { file_offset })?;
        match self.store.put(&file, verified) {
            Ok(()) => layer.mark_present(blob),
            // The bytes are verified: serve them even if they cannot be
            // kept.
            Err(e) => tracing::warn!(file = %file.content(), error = %e, "could not store a chunk"),
        }
        Ok(Arc::new(out))
    }
}

/// A fetched range, or why there is none.
type Fetched = Result<Bytes, FetchError>;

/// The blob range `[lo, hi)` covering the members of `claimed`.
fn blob_range(layer: &RemoteLayer, claimed: &[ClaimedChunk]) -> (u64, u64) {
    let all = layer.tree().all_chunks();
    let lo = claimed.iter().map(|c| all[c.blob.0].offset).min();
    let hi = claimed.iter().map(|c| all[c.blob.0].next_offset).max();
    (lo.unwrap_or(0), hi.unwrap_or(0))
}

/// The inflate pool: `workers` threads taking jobs off one queue.
fn spawn_pool(workers: usize) -> std::io::Result<crossbeam_channel::Sender<Job>> {
    let (pool, jobs) = crossbeam_channel::unbounded::<Job>();
    for i in 0..workers.max(1) {
        let jobs = jobs.clone();
        std::thread::Builder::new()
            .name(format!("inflate-{i}"))
            .spawn(move || {
                for job in jobs {
                    // A job finishes its own chunks' loads even when
                    // inflating one panics (finish_chunks); this only
                    // keeps the worker alive for the next job.
                    if let Err(p) = catch_unwind(AssertUnwindSafe(job)) {
                        tracing::error!(
                            panic = ringstar_core::faults::message(&*p),
                            "an inflate job panicked"
                        );
                    }
                }
            })?;
    }
    Ok(pool)
}

/// Starts the `background` thread: it fetches the layers queued on
/// `layers`, one after the other, while the loader lives.
fn spawn_background(
    loader: Weak<Loader>,
    layers: crossbeam_channel::Receiver<Arc<RemoteLayer>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("background".into())
        .spawn(move || {
            for layer in layers {
                let Some(loader) = loader.upgrade() else {
                    return;
                };
                // A panic ends this layer's background fetch (its chunks
                // are fetched on demand), not the thread.
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| loader.background_layer(&layer)))
                {
                    tracing::error!(layer = %layer.digest, panic = ringstar_core::faults::message(&*p), "background fetch panicked");
                }
            }
        })?;
    Ok(())
}
