//! Answering a read after its dispatching call has returned: the
//! [`DeferredRead`] handle a filesystem keeps, the [`ReplySink`] each
//! transport implements to carry the late answer, and the map of requests
//! still waiting ([`PendingReplies`], which INTERRUPT and the panic path
//! use to take a request back from its handle).
//!
//! Depends only on `types` and `sync`. `fs` (whose `ReadOut::defer` makes
//! the handle), `reply` and the transports depend on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::sync::lock;
use crate::types::{Errno, Unique};

/// Where a deferred reply goes: a transport's way to answer a request
/// after the dispatching call has returned.
pub(crate) trait ReplySink: Send + Sync {
    /// Sends the reply for `unique` (`token` is the transport's own
    /// locator: the ring entry).
    fn send(&self, token: u64, unique: Unique, result: Result<&[u8], Errno>);
}

/// What a transport thread hands the dispatcher so a read can be deferred:
/// where late answers go, and the request being dispatched.
pub(crate) struct DeferSeed {
    pub(crate) sink: Arc<dyn ReplySink>,
    /// The transport's locator of the request (the ring entry's index).
    pub(crate) token: u64,
    pub(crate) unique: Unique,
    pub(crate) pending: Arc<PendingReplies>,
    /// The request this seed last made a [`DeferredRead`] for (0: none;
    /// no request has id 0). Read only by the panic path, which has no
    /// `ReadResult` to tell whether the panicking read had deferred; the
    /// normal path learns that from `ReadResult::Deferred`'s token alone.
    /// Only the dispatching thread touches it; atomic so that `ReadOut`
    /// stays `Send`.
    last_deferred: AtomicU64,
}

impl DeferSeed {
    pub(crate) fn new(sink: Arc<dyn ReplySink>, pending: Arc<PendingReplies>) -> DeferSeed {
        DeferSeed {
            sink,
            token: 0,
            unique: Unique(0),
            pending,
            last_deferred: AtomicU64::new(0),
        }
    }

    /// A handle that answers the request being dispatched later, with at
    /// most `max` bytes; the request is filed as pending until it does.
    pub(crate) fn defer(&self, max: usize) -> DeferredRead {
        self.last_deferred.store(self.unique.0, Ordering::Relaxed);
        let done = Arc::new(AtomicBool::new(false));
        self.pending.insert(
            self.unique,
            PendingReply {
                sink: self.sink.clone(),
                token: self.token,
                done: done.clone(),
            },
        );
        DeferredRead {
            sink: self.sink.clone(),
            token: self.token,
            unique: self.unique,
            max,
            done,
            pending: self.pending.clone(),
        }
    }

    /// Whether a [`DeferredRead`] was made for `unique` (the request being
    /// dispatched) — for the panic path only.
    pub(crate) fn deferred(&self, unique: Unique) -> bool {
        self.last_deferred.load(Ordering::Relaxed) == unique.0
    }
}

pub(crate) struct PendingReply {
    sink: Arc<dyn ReplySink>,
    token: u64,
    done: Arc<AtomicBool>,
}

/// Deferred requests by id, so an INTERRUPT can answer them. Every method
/// holds the lock only for the map operation: answers are sent after the
/// guard is gone.
#[derive(Default)]
pub(crate) struct PendingReplies(Mutex<HashMap<u64, PendingReply>>);

impl PendingReplies {
    fn insert(&self, unique: Unique, p: PendingReply) {
        lock(&self.0).insert(unique.0, p);
    }

    fn remove(&self, unique: Unique) {
        lock(&self.0).remove(&unique.0);
    }

    fn take(&self, unique: Unique) -> Option<PendingReply> {
        lock(&self.0).remove(&unique.0)
    }

    /// Takes a deferred request back from its handle (which then answers
    /// nothing and reports [`DeferredRead::is_cancelled`]). Returns whether
    /// it was still unanswered: the caller must then answer it. False means
    /// the handle's answer is already on its way through the sink.
    pub(crate) fn take_over(&self, unique: Unique) -> bool {
        let Some(p) = self.take(unique) else {
            return false;
        };
        !p.done.swap(true, Ordering::AcqRel)
    }

    /// Answers a deferred request with EINTR, if it is still waiting.
    /// Returns whether it was.
    pub(crate) fn interrupt(&self, unique: Unique) -> bool {
        let Some(p) = self.take(unique) else {
            return false;
        };
        if p.done.swap(true, Ordering::AcqRel) {
            return false;
        }
        // The map's lock is released (`take` returned): a classic sink
        // writes to /dev/fuse here.
        p.sink.send(p.token, unique, Err(Errno::EINTR));
        true
    }

    /// Forgets every request still waiting, answering none of them: their
    /// handles then answer nothing and report
    /// [`DeferredRead::is_cancelled`]. For a handover, where the kernel
    /// keeps the requests and RESEND gives them to the next process.
    /// Returns how many were still unanswered.
    pub(crate) fn abandon_all(&self) -> usize {
        let all: Vec<PendingReply> = lock(&self.0).drain().map(|(_, p)| p).collect();
        all.iter()
            .filter(|p| !p.done.swap(true, Ordering::AcqRel))
            .count()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

/// A read that will be answered later, from any thread. Answers EIO if
/// dropped unanswered; answers nothing if the request was interrupted
/// first (the kernel already has its EINTR).
pub struct DeferredRead {
    sink: Arc<dyn ReplySink>,
    token: u64,
    unique: Unique,
    max: usize,
    done: Arc<AtomicBool>,
    pending: Arc<PendingReplies>,
}

impl std::fmt::Debug for DeferredRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredRead")
            .field("unique", &self.unique)
            .field("max", &self.max)
            .finish()
    }
}

impl DeferredRead {
    /// The most bytes the answer may hold.
    pub fn max_len(&self) -> usize {
        self.max
    }

    /// Whether the request was interrupted (answering is then a no-op).
    pub fn is_cancelled(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Answers with data (truncated to [`DeferredRead::max_len`]).
    pub fn reply(self, data: &[u8]) {
        let n = data.len().min(self.max);
        self.finish(Ok(&data[..n]));
    }

    /// Answers with an error.
    pub fn error(self, errno: Errno) {
        self.finish(Err(errno));
    }

    fn finish(&self, result: Result<&[u8], Errno>) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.pending.remove(self.unique);
            self.sink.send(self.token, self.unique, result);
        }
    }
}

impl Drop for DeferredRead {
    fn drop(&mut self) {
        self.finish(Err(Errno::EIO));
    }
}
