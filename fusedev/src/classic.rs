//! The classic transport: read(2) a request from a `/dev/fuse` channel,
//! dispatch it, write(2) the reply on the same channel. Serves the per-CPU
//! cloned channels in classic mode and the main channel always. Depends on
//! `serving`, `reply` and `deferred`; only the session depends on it.

use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use zerocopy::{FromBytes, IntoBytes};

use crate::abi;
use crate::deferred::{DeferSeed, ReplySink};
use crate::fs::Filesystem;
use crate::reply::Outcome;
use crate::request::{self, Operation};
use crate::serving::Shared;
use crate::types::{Errno, Unique};

/// Writes one reply: header + payload in a single write(2).
pub(crate) fn write_reply(fd: &File, unique: Unique, result: Result<&[u8], Errno>) {
    let (error, payload): (i32, &[u8]) = match result {
        Ok(p) => (0, p),
        Err(e) => (-e.0, &[]),
    };
    let header = abi::OutHeader {
        len: (16 + payload.len()) as u32,
        error,
        unique: unique.0,
    };
    let bufs = [IoSlice::new(header.as_bytes()), IoSlice::new(payload)];
    match (&*fd).write_vectored(&bufs) {
        Ok(_) => {}
        // The request is gone (interrupted or the connection aborted).
        Err(e)
            if e.raw_os_error() == Some(libc::ENOENT) || e.raw_os_error() == Some(libc::ENODEV) => {
        }
        Err(e) => tracing::warn!(unique = unique.0, error = %e, "writing a FUSE reply"),
    }
}

/// Deferred replies on the classic transport: written on the channel the
/// request came from.
struct ClassicSink(Arc<File>);

impl ReplySink for ClassicSink {
    fn send(&self, _token: u64, unique: Unique, result: Result<&[u8], Errno>) {
        write_reply(&self.0, unique, result);
    }
}

/// A takeover session's idle channel: waits until it is readable (true)
/// or the session stops (false). The channel is non-blocking, so a
/// request another thread took first costs one EAGAIN, never a read that
/// blocks past a stop.
fn wait_for_request<F: Filesystem + ?Sized>(chan: &File, shared: &Shared<F>) -> bool {
    let Some(wake) = &shared.wake else {
        return true;
    };
    match crate::sys::wait_readable(chan.as_fd(), wake.as_fd()) {
        Ok(woken) => !(woken || shared.stop.is_stopping()),
        Err(e) => {
            tracing::warn!(error = %e, "polling /dev/fuse");
            false
        }
    }
}

/// Serves one channel with read(2)/write(2) until the connection ends.
/// Used by the classic per-core threads and by the main-fd reader (which
/// in ring mode sees only FORGET, BATCH_FORGET and INTERRUPT).
pub(crate) fn serve_classic<F: Filesystem + ?Sized>(chan: Arc<File>, shared: &Shared<F>) {
    let bufsize = (shared.negotiated.max_write + 4096).max(8192 + 80);
    let mut buf = vec![0u8; bufsize];
    let mut out = vec![0u8; shared.negotiated.max_write];
    let sink: Arc<dyn ReplySink> = Arc::new(ClassicSink(chan.clone()));
    let mut seed = DeferSeed::new(sink, shared.pending.clone());
    loop {
        if shared.wake.is_some() && shared.stop.is_stopping() {
            break;
        }
        let n = match (&*chan).read(&mut buf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) if shared.wake.is_some() => {
                    if wait_for_request(&chan, shared) {
                        continue;
                    }
                    break;
                }
                Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                Some(libc::ENODEV | libc::ECONNABORTED) => break,
                _ => {
                    tracing::warn!(error = %e, "reading /dev/fuse");
                    break;
                }
            },
        };
        shared.stats.classic.fetch_add(1, Ordering::Relaxed);
        let req = match request::decode_classic(&buf[..n]) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "malformed FUSE request");
                if let Ok((h, _)) = abi::InHeader::read_from_prefix(&buf[..n]) {
                    write_reply(&chan, Unique(h.unique), Err(Errno::EINVAL));
                }
                continue;
            }
        };
        if let Operation::Interrupt { unique } = req.op {
            shared.pending.interrupt(unique);
            continue;
        }
        seed.unique = req.ctx.unique;
        match shared.dispatch(&req, &mut out, &seed) {
            Outcome::Reply(len) => write_reply(&chan, req.ctx.unique, Ok(&out[..len])),
            Outcome::Error(e) => write_reply(&chan, req.ctx.unique, Err(e)),
            Outcome::NoReply | Outcome::Deferred => {}
        }
    }
}
