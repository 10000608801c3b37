//! What the data-plane threads of one session share: the filesystem, the
//! pending deferred reads, the settled INIT, counters, and the stop signal.
//! Both transports (`classic`, `uring`) and the session depend on it; it
//! depends on neither of them.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::deferred::PendingReplies;
use crate::init::Negotiated;
use crate::sync::lock;

/// Requests served, by the path they came in on.
#[derive(Debug, Default)]
pub struct Stats {
    /// Through FUSE-over-io_uring entries.
    pub ring: AtomicU64,
    /// Through read(2) on /dev/fuse (INIT, FORGET and INTERRUPT included).
    pub classic: AtomicU64,
    /// Ring entries registered, all queues together: `ring_depth` per
    /// queue at mount, more while deferred reads hold entries.
    pub ring_entries: AtomicU64,
    /// By operation.
    pub ops: crate::op_stats::OpStats,
}

/// State every data-plane thread shares.
pub(crate) struct Shared<F: ?Sized> {
    pub(crate) fs: Arc<F>,
    pub(crate) pending: Arc<PendingReplies>,
    pub(crate) negotiated: Negotiated,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stop: Arc<Stop>,
    /// Takeover sessions only: the stop eventfd the classic threads poll
    /// beside their non-blocking channel, so a handover can stop them
    /// without aborting the connection. `None`: blocking reads, as before.
    pub(crate) wake: Option<Arc<File>>,
}

impl<F: crate::fs::Filesystem + ?Sized> Shared<F> {
    /// Serves one request (counted and, when on, timed by operation).
    #[inline]
    pub(crate) fn dispatch(
        &self,
        req: &crate::request::Request<'_>,
        out: &mut [u8],
        seed: &crate::deferred::DeferSeed,
    ) -> crate::reply::Outcome {
        let started = self.stats.ops.start();
        let outcome = crate::reply::dispatch_guarded(&*self.fs, req, out, seed);
        self.stats.ops.record(&req.op, started);
        outcome
    }
}

/// Tells the ring threads the session is going down. A queue whose every
/// entry is held by a deferred read has nothing in the kernel that the
/// abort could complete, so without this poke its thread would wait in
/// io_uring_enter forever and unmount would never finish.
#[derive(Default)]
pub(crate) struct Stop {
    stopping: AtomicBool,
    wakes: Mutex<Vec<Arc<File>>>,
}

impl Stop {
    /// Registers a ring thread's wake eventfd. The thread must check
    /// [`Stop::is_stopping`] after this and in every loop turn.
    pub(crate) fn register(&self, wake: Arc<File>) {
        lock(&self.wakes).push(wake);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        // The eventfd writes happen after the lock is released.
        let wakes = lock(&self.wakes).clone();
        for wake in wakes {
            if let Err(e) = (&*wake).write_all(&1u64.to_ne_bytes()) {
                tracing::warn!(error = %e, "waking a FUSE ring for shutdown");
            }
        }
    }
}
