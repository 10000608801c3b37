//! The dispatcher both transports (and `offline`) share: one decoded
//! request in, one reply payload out, with a panic in the filesystem
//! contained ([`dispatch_guarded`]).
//!
//! Depends on `fs` (the trait it calls), `deferred`, `encode`, `request`,
//! `abi` and `types`; only the transports and `offline` depend on it.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use zerocopy::IntoBytes;

use crate::abi;
use crate::deferred::DeferSeed;
use crate::encode::{entry_out, split_ttl};
use crate::fs::{DirOut, Filesystem, Opened, ReadOut, ReadResult};
use crate::request::{Ctx, Operation, Request};
use crate::types::{AttrReply, Errno, FileHandle, Ino, Statfs, Unique};

/// What to send back for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The first `n` bytes of the payload buffer are the reply.
    Reply(usize),
    Error(Errno),
    /// FORGET and friends: the kernel expects nothing.
    NoReply,
    /// A deferred read: its handle answers.
    Deferred,
}

fn put<T: IntoBytes + zerocopy::Immutable>(out: &mut [u8], v: &T) -> Outcome {
    let bytes = v.as_bytes();
    match out.get_mut(..bytes.len()) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            Outcome::Reply(bytes.len())
        }
        None => Outcome::Error(Errno::EIO),
    }
}

/// Two structs one after the other (CREATE's entry and open).
fn put_pair(out: &mut [u8], a: &[u8], b: &[u8]) -> Outcome {
    let n = a.len() + b.len();
    match out.get_mut(..n) {
        Some(dst) => {
            dst[..a.len()].copy_from_slice(a);
            dst[a.len()..].copy_from_slice(b);
            Outcome::Reply(n)
        }
        None => Outcome::Error(Errno::EIO),
    }
}

fn open_out(o: &Opened) -> abi::OpenOut {
    let mut flags = 0;
    if o.keep_cache {
        flags |= abi::fopen::KEEP_CACHE;
    }
    if o.cache_dir {
        flags |= abi::fopen::CACHE_DIR;
    }
    if o.direct_io {
        flags |= abi::fopen::DIRECT_IO;
    }
    let mut backing_id = 0;
    if let Some(b) = &o.backing {
        // The kernel refuses (EIO) a passthrough open with any flag outside
        // FOPEN_PASSTHROUGH_MASK (passthrough, direct_io, parallel direct
        // writes, noflush): the page-cache flags go.
        flags = abi::fopen::PASSTHROUGH | (flags & abi::fopen::DIRECT_IO);
        backing_id = b.raw();
    }
    abi::OpenOut {
        fh: o.fh,
        open_flags: flags,
        backing_id,
    }
}

/// An xattr-style answer: the size when asked for 0 bytes, ERANGE when the
/// value does not fit, else the value.
fn sized_reply(out: &mut [u8], value: &[u8], size: u32) -> Outcome {
    if size == 0 {
        return put(
            out,
            &abi::GetxattrOut {
                size: value.len() as u32,
                padding: 0,
            },
        );
    }
    if value.len() > size as usize || value.len() > out.len() {
        return Outcome::Error(Errno::ERANGE);
    }
    out[..value.len()].copy_from_slice(value);
    Outcome::Reply(value.len())
}

/// Serves one request (INIT excepted) into `out`, the reply payload buffer.
#[inline]
pub(crate) fn dispatch<F: Filesystem + ?Sized>(
    fs: &F,
    req: &Request<'_>,
    out: &mut [u8],
    seed: &DeferSeed,
) -> Outcome {
    let ctx = &req.ctx;
    let ino = req.ino;
    let result = |r: Result<Outcome, Errno>| r.unwrap_or_else(Outcome::Error);
    match &req.op {
        Operation::Lookup { name } => {
            result(fs.lookup(ctx, ino, name).map(|e| put(out, &entry_out(&e))))
        }
        Operation::Forget { nlookup } => {
            fs.forget(ino, *nlookup);
            Outcome::NoReply
        }
        Operation::BatchForget { items } => {
            for f in items {
                forget_one(fs, ctx.unique, Ino(f.nodeid), f.nlookup);
            }
            Outcome::NoReply
        }
        Operation::Getattr { .. } => result(fs.getattr(ctx, ino).map(|a| put(out, &attr_out(&a)))),
        Operation::Readlink => result(fs.readlink(ctx, ino).map(|t| {
            let n = t.len().min(out.len());
            out[..n].copy_from_slice(&t[..n]);
            Outcome::Reply(n)
        })),
        Operation::Open { flags } => {
            result(fs.open(ctx, ino, *flags).map(|o| put(out, &open_out(&o))))
        }
        Operation::Opendir { .. } => result(fs.opendir(ctx, ino).map(|o| put(out, &open_out(&o)))),
        Operation::Read { fh, offset, size } => {
            read(fs, ctx, ino, (*fh, *offset, *size), out, seed)
        }
        Operation::Readdir {
            fh,
            offset,
            size,
            plus,
        } => readdir(fs, ctx, ino, (*fh, *offset, *size), *plus, out),
        Operation::Release { fh } => {
            fs.release(ctx, ino, *fh);
            Outcome::Reply(0)
        }
        Operation::Releasedir { fh } => {
            fs.releasedir(ctx, ino, *fh);
            Outcome::Reply(0)
        }
        // A read-only filesystem has nothing to flush, and close(2) waits
        // for this answer: ENOSYS makes the kernel stop sending FLUSH on
        // this connection (`fc->no_flush`, fs/fuse/file.c fuse_flush), one
        // synchronous request less per close.
        Operation::Flush => Outcome::Error(Errno::ENOSYS),
        Operation::Access | Operation::Destroy => Outcome::Reply(0),
        Operation::Statfs => result(fs.statfs(ctx, ino).map(|s| put(out, &kstatfs(&s)))),
        Operation::Getxattr { name, size } => result(
            fs.getxattr(ctx, ino, name)
                .map(|v| sized_reply(out, &v, *size)),
        ),
        Operation::Listxattr { size } => {
            result(fs.listxattr(ctx, ino).map(|v| sized_reply(out, &v, *size)))
        }
        Operation::Create { name, flags, mode } => {
            result(fs.create(ctx, ino, name, *mode, *flags).map(|(e, o)| {
                let (entry, open) = (entry_out(&e), open_out(&o));
                put_pair(out, entry.as_bytes(), open.as_bytes())
            }))
        }
        Operation::Rmdir { name } => result(fs.rmdir(ctx, ino, name).map(|()| Outcome::Reply(0))),
        Operation::Modify => Outcome::Error(Errno::EROFS),
        // INIT is the session's; INTERRUPT is handled before dispatch.
        Operation::Init(_) | Operation::Interrupt { .. } => Outcome::NoReply,
        Operation::Unsupported => Outcome::Error(Errno::ENOSYS),
    }
}

/// One item of a BATCH_FORGET: a panicking forget must not cost the rest
/// of the batch their counts.
fn forget_one<F: Filesystem + ?Sized>(fs: &F, unique: Unique, ino: Ino, nlookup: u64) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| fs.forget(ino, nlookup))) {
        log_panic("BATCH_FORGET", unique, &*payload, "no answer due");
    }
}

// `#[inline]`: `dispatch` is instantiated in the filesystem's crate, where
// an out-of-line helper costs a call and a copy per GETATTR.
#[inline]
fn attr_out(a: &AttrReply) -> abi::AttrOut {
    let (v, n) = split_ttl(a.ttl);
    abi::AttrOut {
        attr_valid: v,
        attr_valid_nsec: n,
        dummy: 0,
        attr: a.attr.to_abi(),
    }
}

#[inline]
fn kstatfs(s: &Statfs) -> abi::Kstatfs {
    abi::Kstatfs {
        blocks: s.blocks,
        bfree: s.bfree,
        bavail: s.bavail,
        files: s.files,
        ffree: s.ffree,
        bsize: s.bsize,
        namelen: s.namelen,
        frsize: s.frsize,
        padding: 0,
        spare: [0; 6],
    }
}

/// READ: answered now from `out`, or later by the handle whose token the
/// filesystem returned. `(fh, offset, size)` as the request carries them.
// Inlined into `dispatch` as it was before it became a function of its
// own: a hot path the perf gate counts.
#[inline(always)]
fn read<F: Filesystem + ?Sized>(
    fs: &F,
    ctx: &Ctx,
    ino: Ino,
    (fh, offset, size): (FileHandle, u64, u32),
    out: &mut [u8],
    seed: &DeferSeed,
) -> Outcome {
    let n = (size as usize).min(out.len());
    let buf = &mut out[..n];
    match fs.read(ctx, ino, fh, offset, ReadOut { buf, seed }) {
        ReadResult::Data(len) if len <= n => Outcome::Reply(len),
        ReadResult::Data(_) => Outcome::Error(Errno::EIO),
        ReadResult::Deferred(_token) => Outcome::Deferred,
        ReadResult::Error(e) => Outcome::Error(e),
    }
}

/// READDIR and READDIRPLUS: the entries the filesystem pushes.
// Inlined for the same reason as `read`.
#[inline(always)]
fn readdir<F: Filesystem + ?Sized>(
    fs: &F,
    ctx: &Ctx,
    ino: Ino,
    (fh, offset, size): (FileHandle, u64, u32),
    plus: bool,
    out: &mut [u8],
) -> Outcome {
    let n = (size as usize).min(out.len());
    let mut d = DirOut {
        buf: &mut out[..n],
        len: 0,
        plus,
    };
    match fs.readdir(ctx, ino, fh, offset, &mut d) {
        Ok(()) => Outcome::Reply(d.len),
        Err(e) => Outcome::Error(e),
    }
}

/// The text of a panic payload (`panic!` with a literal or a format).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic payload that is not a string)")
}

fn log_panic(op: &str, unique: Unique, payload: &(dyn Any + Send), answer: &str) {
    tracing::error!(
        op,
        unique = unique.0,
        panic = panic_message(payload),
        answer,
        "a filesystem callback panicked; the session goes on serving"
    );
}

/// [`dispatch`] with a panic in the filesystem contained, so the serving
/// thread (a core's only one) goes on serving. The panicking request is
/// answered EIO, or not at all if it takes no answer (FORGET). A read that
/// deferred before panicking: if its handle still waits, the handle is
/// cancelled (it then answers nothing; `is_cancelled()` says so), its
/// pending entry goes, and EIO is answered here; if the handle already
/// answered (it was dropped while unwinding: EIO), that answer stands and
/// the outcome is `Deferred` so the transport waits for it as usual.
pub(crate) fn dispatch_guarded<F: Filesystem + ?Sized>(
    fs: &F,
    req: &Request<'_>,
    out: &mut [u8],
    seed: &DeferSeed,
) -> Outcome {
    let payload = match catch_unwind(AssertUnwindSafe(|| dispatch(fs, req, out, seed))) {
        Ok(outcome) => return outcome,
        Err(payload) => payload,
    };
    let unique = req.ctx.unique;
    let (outcome, answer) = if matches!(
        req.op,
        Operation::Forget { .. } | Operation::BatchForget { .. }
    ) {
        (Outcome::NoReply, "no answer due")
    } else if seed.deferred(unique) && !seed.pending.take_over(unique) {
        (Outcome::Deferred, "the dropped handle's EIO")
    } else {
        (Outcome::Error(Errno::EIO), "EIO")
    };
    log_panic(req.op.name(), unique, &*payload, answer);
    // Dropping a payload runs its destructor, which could panic in turn.
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
        tracing::error!(unique = unique.0, "dropping a panic payload panicked");
    }
    outcome
}

#[cfg(test)]
mod tests;
