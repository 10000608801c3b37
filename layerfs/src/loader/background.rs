//! The background fetch: every chunk the store lacks, in blob order, in
//! the planner's windows, one request at a time, each after the
//! foreground has been quiet for a while. Its one thread fetches and
//! inflates its own windows, so they never queue on the inflate pool
//! ahead of a foreground read's chunks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{ClaimedChunk, Loader, blob_range};
use crate::chunks::BlobChunk;
use crate::layer::RemoteLayer;
use crate::planner::extent;

impl Loader {
    /// Queues the layer for background fetch (when enabled).
    pub fn start_background(&self, layer: &Arc<RemoteLayer>) {
        if self.background_config.enabled {
            let _ = self.background.send(layer.clone());
        }
    }

    /// Waits until no foreground fetch ran for the idle time.
    fn wait_foreground_idle(&self) {
        let idle = self.background_config.idle;
        loop {
            let quiet = self.last_foreground.lock().expect("clock").elapsed();
            if self.foreground.load(Ordering::Acquire) == 0 && quiet >= idle {
                return;
            }
            std::thread::sleep(idle.saturating_sub(quiet).max(Duration::from_millis(20)));
        }
    }

    /// Fetches every chunk of `layer` the store lacks (on the
    /// `background` thread).
    pub(super) fn background_layer(&self, layer: &Arc<RemoteLayer>) {
        let started = Instant::now();
        let window = self.background_config.window;
        let mut from = 0;
        let mut fetched = 0u64;
        while let Some(start) = self.next_absent(layer, from) {
            if layer.is_removed() {
                return;
            }
            self.wait_foreground_idle();
            let extent = extent(layer.tree().all_chunks(), start, window, u64::MAX);
            from = extent.chunks.end;
            let mut claimed = Vec::new();
            self.claim_extent(layer, &extent, None, &mut claimed);
            if claimed.is_empty() {
                continue;
            }
            let Some(bytes) = self.background_window(layer, claimed) else {
                // Leave the rest for later reads; the registry is not
                // answering now.
                tracing::info!(layer = %layer.digest, "background fetch stopped after an error");
                return;
            };
            fetched += bytes;
        }
        layer.record_background(fetched, started.elapsed());
        tracing::info!(layer = %layer.digest, bytes = fetched, ms = started.elapsed().as_millis() as u64, "background fetch complete");
    }

    /// The first blob-order chunk from `from` on that belongs to a file,
    /// can be verified and is not stored.
    fn next_absent(&self, layer: &RemoteLayer, from: usize) -> Option<BlobChunk> {
        let all = layer.tree().all_chunks();
        (from..all.len()).map(BlobChunk).find(|&blob| {
            layer.owner(blob).is_some_and(|node| {
                layer
                    .store_key(node)
                    .and_then(|_| layer.store_chunk(node, &all[blob.0]))
                    .is_some_and(|sc| !self.stored(layer, node, blob, &sc))
            })
        })
    }

    /// Fetches one window (blocking this thread), inflates and stores its
    /// chunks, keeps to the rate cap. The bytes fetched, or `None` when
    /// the fetch failed.
    fn background_window(&self, layer: &RemoteLayer, claimed: Vec<ClaimedChunk>) -> Option<u64> {
        let (lo, hi) = blob_range(layer, &claimed);
        self.stats
            .background_fetches
            .fetch_add(1, Ordering::Relaxed);
        let t = Instant::now();
        let result = self.fetcher.read_range(&layer.location, lo, hi - lo);
        self.count_fetched(&result);
        let failed = result.is_err();
        let _ = self.finish_chunks(layer, claimed, lo, result);
        if failed {
            return None;
        }
        let rate = self.background_config.bytes_per_sec;
        if rate > 0 {
            let should = Duration::from_secs_f64((hi - lo) as f64 / rate as f64);
            if let Some(rest) = should.checked_sub(t.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        Some(hi - lo)
    }
}
