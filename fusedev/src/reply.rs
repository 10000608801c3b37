//! Encoding replies into a payload buffer, and the dispatcher shared by
//! both transports: one decoded request in, one reply payload out.

use std::ffi::OsStr;
use std::mem::size_of;
use std::os::unix::ffi::OsStrExt;

use zerocopy::{FromZeros, IntoBytes};

use crate::abi;
use crate::fs::{DeferSeed, DirOut, Filesystem, Opened, ReadOut, ReadResult};
use crate::request::{Operation, Request};
use crate::types::{Entry, Errno};

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

fn split_ttl(d: std::time::Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

pub(crate) fn entry_out(e: &Entry) -> abi::EntryOut {
    let (ev, evn) = split_ttl(e.entry_ttl);
    let (av, avn) = split_ttl(e.attr_ttl);
    abi::EntryOut {
        nodeid: e.attr.ino.0,
        generation: e.generation,
        entry_valid: ev,
        attr_valid: av,
        entry_valid_nsec: evn,
        attr_valid_nsec: avn,
        attr: e.attr.to_abi(),
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

/// Adds one READDIR(PLUS) record; false when it does not fit.
pub(crate) fn push_dirent(
    out: &mut DirOut<'_>,
    name: &OsStr,
    next_offset: u64,
    entry: &Entry,
    counted: bool,
) -> bool {
    let name = name.as_bytes();
    let dirent_len = abi::dirent_padded_len(name.len());
    let rec_len = if out.plus {
        size_of::<abi::EntryOut>() + dirent_len
    } else {
        dirent_len
    };
    let Some(rec) = out.buf.get_mut(out.len..out.len + rec_len) else {
        return false;
    };
    rec.fill(0);
    let mut at = 0;
    if out.plus {
        let mut e = entry_out(entry);
        if !counted {
            // The kernel skips nodeid 0 entries when counting lookups.
            e = abi::EntryOut::new_zeroed();
        }
        rec[..size_of::<abi::EntryOut>()].copy_from_slice(e.as_bytes());
        at = size_of::<abi::EntryOut>();
    }
    let d = abi::Dirent {
        ino: entry.attr.ino.0,
        off: next_offset,
        namelen: name.len() as u32,
        typ: entry.attr.kind.dirent_type(),
    };
    rec[at..at + size_of::<abi::Dirent>()].copy_from_slice(d.as_bytes());
    at += size_of::<abi::Dirent>();
    rec[at..at + name.len()].copy_from_slice(name);
    out.len += rec_len;
    true
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
                fs.forget(crate::types::Ino(f.nodeid), f.nlookup);
            }
            Outcome::NoReply
        }
        Operation::Getattr { .. } => result(fs.getattr(ctx, ino).map(|a| {
            let (v, n) = split_ttl(a.ttl);
            put(
                out,
                &abi::AttrOut {
                    attr_valid: v,
                    attr_valid_nsec: n,
                    dummy: 0,
                    attr: a.attr.to_abi(),
                },
            )
        })),
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
            let n = (*size as usize).min(out.len());
            let mut deferred = false;
            let r = fs.read(
                ctx,
                ino,
                *fh,
                *offset,
                ReadOut {
                    buf: &mut out[..n],
                    seed,
                    deferred: &mut deferred,
                },
            );
            match r {
                ReadResult::Data(len) if len <= n => Outcome::Reply(len),
                ReadResult::Data(_) => Outcome::Error(Errno::EIO),
                ReadResult::Deferred if deferred => Outcome::Deferred,
                ReadResult::Deferred => Outcome::Error(Errno::EIO),
                ReadResult::Error(e) => Outcome::Error(e),
            }
        }
        Operation::Readdir {
            fh,
            offset,
            size,
            plus,
        } => {
            let n = (*size as usize).min(out.len());
            let mut d = DirOut {
                buf: &mut out[..n],
                len: 0,
                plus: *plus,
            };
            match fs.readdir(ctx, ino, *fh, *offset, &mut d) {
                Ok(()) => Outcome::Reply(d.len),
                Err(e) => Outcome::Error(e),
            }
        }
        Operation::Release { fh } => {
            fs.release(ctx, ino, *fh);
            Outcome::Reply(0)
        }
        Operation::Releasedir { fh } => {
            fs.releasedir(ctx, ino, *fh);
            Outcome::Reply(0)
        }
        Operation::Flush | Operation::Access | Operation::Destroy => Outcome::Reply(0),
        Operation::Statfs => result(fs.statfs(ctx, ino).map(|s| {
            put(
                out,
                &abi::Kstatfs {
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
                },
            )
        })),
        Operation::Getxattr { name, size } => result(
            fs.getxattr(ctx, ino, name)
                .map(|v| sized_reply(out, &v, *size)),
        ),
        Operation::Listxattr { size } => {
            result(fs.listxattr(ctx, ino).map(|v| sized_reply(out, &v, *size)))
        }
        Operation::Modify => Outcome::Error(Errno::EROFS),
        // INIT is the session's; INTERRUPT is handled before dispatch.
        Operation::Init(_) | Operation::Interrupt { .. } => Outcome::NoReply,
        Operation::Unsupported => Outcome::Error(Errno::ENOSYS),
    }
}
