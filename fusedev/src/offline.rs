//! Serving requests without a kernel: a classic-format request decoded,
//! dispatched to a [`Filesystem`] and its reply (header and payload)
//! encoded into a buffer — the same path a core takes, minus the device.
//! For the instruction-count gate and for tests of a filesystem's answers.
//! A panic in the filesystem is not contained here (the sessions contain
//! it): it reaches the caller, so fuzzing finds it.

use std::sync::Arc;

use zerocopy::IntoBytes;

use crate::abi;
use crate::deferred::{DeferSeed, PendingReplies, ReplySink};
use crate::fs::Filesystem;
use crate::reply::{Outcome, dispatch};
use crate::request::{self, DecodeError};
use crate::types::{Errno, Unique};

/// Deferred replies have nowhere to go offline: they are dropped.
struct Discard;

impl ReplySink for Discard {
    fn send(&self, _token: u64, _unique: Unique, _result: Result<&[u8], Errno>) {}
}

/// A filesystem served from byte buffers.
pub struct Offline<F> {
    fs: Arc<F>,
    seed: DeferSeed,
    payload: Vec<u8>,
    reply: Vec<u8>,
}

impl<F> std::fmt::Debug for Offline<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offline").finish_non_exhaustive()
    }
}

impl<F: Filesystem> Offline<F> {
    /// Replies carry at most `max_payload` bytes (a mount's `max_write`).
    pub fn new(fs: Arc<F>, max_payload: usize) -> Offline<F> {
        Offline {
            fs,
            seed: DeferSeed::new(Arc::new(Discard), Arc::new(PendingReplies::default())),
            payload: vec![0; max_payload],
            reply: Vec::with_capacity(max_payload + 16),
        }
    }

    /// Serves one request; the reply as the kernel would read it, or
    /// empty when none is due (FORGET, a deferred read).
    pub fn serve(&mut self, request: &[u8]) -> Result<&[u8], DecodeError> {
        let req = request::decode_classic(request)?;
        self.seed.unique = req.ctx.unique;
        let (error, len) = match dispatch(&*self.fs, &req, &mut self.payload, &self.seed) {
            Outcome::Reply(n) => (0, n),
            Outcome::Error(e) => (-e.0, 0),
            Outcome::NoReply | Outcome::Deferred => {
                self.reply.clear();
                return Ok(&self.reply);
            }
        };
        let header = abi::OutHeader {
            len: (16 + len) as u32,
            error,
            unique: req.ctx.unique.0,
        };
        self.reply.clear();
        self.reply.extend_from_slice(header.as_bytes());
        self.reply.extend_from_slice(&self.payload[..len]);
        Ok(&self.reply)
    }
}
