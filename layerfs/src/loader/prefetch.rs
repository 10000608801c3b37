//! The prefetch of a layer's prioritized range (`[0, landmark)`): every
//! chunk in it claimed up front, so reads of those chunks meanwhile wait
//! for their window instead of fetching their own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{ClaimedChunk, Loader};
use crate::layer::RemoteLayer;
use crate::planner::{PREFETCH_IN_FLIGHT, prefetch_extents};

/// A prefetch under way: the windows not yet sent.
struct PrefetchRun {
    layer: Arc<RemoteLayer>,
    started: Instant,
    bytes: u64,
    windows: Mutex<VecDeque<Vec<ClaimedChunk>>>,
    outstanding: AtomicUsize,
}

impl Loader {
    /// Fetches `[0, landmark)` and stores every chunk in it, in the
    /// planner's prefetch windows, in blob order, two in flight: the link
    /// stays busy while arrived windows are inflated on the pool (not one
    /// thread after the whole range), and the first files are ready long
    /// before the last arrive. Marks the layer's prefetch done when the
    /// last window is in.
    pub fn prefetch(self: &Arc<Self>, layer: &Arc<RemoteLayer>) {
        let Some(end) = layer.tree().prefetch_range().filter(|&e| e > 0) else {
            layer.finish_prefetch();
            return;
        };
        let windows: VecDeque<Vec<ClaimedChunk>> = prefetch_extents(layer.tree().all_chunks(), end)
            .map(|extent| {
                let mut claimed = Vec::new();
                self.claim_extent(layer, &extent, None, &mut claimed);
                claimed
            })
            .filter(|claimed| !claimed.is_empty())
            .collect();
        if windows.is_empty() {
            layer.finish_prefetch();
            return;
        }
        let run = Arc::new(PrefetchRun {
            layer: layer.clone(),
            started: Instant::now(),
            bytes: end,
            windows: Mutex::new(windows),
            outstanding: AtomicUsize::new(0),
        });
        for _ in 0..PREFETCH_IN_FLIGHT {
            self.next_prefetch_window(&run);
        }
    }

    /// Sends `run`'s next window, if any is left.
    fn next_prefetch_window(self: &Arc<Self>, run: &Arc<PrefetchRun>) {
        let Some(claimed) = run.windows.lock().expect("windows").pop_front() else {
            return;
        };
        run.outstanding.fetch_add(1, Ordering::AcqRel);
        let run = run.clone();
        self.fetch_then(&run.layer.clone(), claimed, move |me, layer, claimed, base, fetched| {
            // The next window goes out before this one is inflated, so
            // two stay on the wire.
            let me2 = me.clone();
            me.run_on_pool(Box::new(move || {
                me2.next_prefetch_window(&run);
                // Prefetched files are not being executed: nothing to predict.
                let _ = me2.finish_chunks(&layer, claimed, base, fetched);
                let left = run.outstanding.fetch_sub(1, Ordering::AcqRel) - 1;
                if left == 0 && run.windows.lock().expect("windows").is_empty() {
                    run.layer.finish_prefetch();
                    run.layer.record_prefetch(run.bytes, run.started.elapsed());
                    tracing::info!(layer = %run.layer.digest, bytes = run.bytes, ms = run.started.elapsed().as_millis() as u64, "prefetched");
                }
            }));
        });
    }
}
