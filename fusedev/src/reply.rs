//! Encoding replies into a payload buffer, and the dispatcher shared by
//! both transports: one decoded request in, one reply payload out.

use std::any::Any;
use std::ffi::OsStr;
use std::mem::size_of;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

use zerocopy::{FromZeros, IntoBytes};

use crate::abi;
use crate::fs::{DeferSeed, DirOut, Filesystem, Opened, ReadOut, ReadResult};
use crate::request::{Operation, Request};
use crate::types::{Entry, Errno, Ino, Unique};

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
                // One panicking forget must not cost the rest of the batch
                // their counts.
                let forget = catch_unwind(AssertUnwindSafe(|| fs.forget(Ino(f.nodeid), f.nlookup)));
                if let Err(payload) = forget {
                    log_panic("BATCH_FORGET", ctx.unique, &*payload, "no answer due");
                }
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
            seed.deferred.store(false, Ordering::Relaxed);
            let r = fs.read(
                ctx,
                ino,
                *fh,
                *offset,
                ReadOut {
                    buf: &mut out[..n],
                    seed,
                },
            );
            let deferred = seed.deferred.load(Ordering::Relaxed);
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
    seed.deferred.store(false, Ordering::Relaxed);
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
    } else if seed.deferred.load(Ordering::Relaxed) && !seed.pending.take_over(unique) {
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
mod tests {
    use std::ffi::OsStr;
    use std::sync::atomic::AtomicU64;
    use std::sync::{Arc, Mutex};

    use zerocopy::{FromZeros, IntoBytes};

    use super::*;
    use crate::abi::{self, opcode};
    use crate::fs::{DeferSeed, DeferredRead, PendingReplies, ReadOut, ReadResult, ReplySink};
    use crate::request::{Ctx, decode_classic};
    use crate::types::{AttrReply, FileHandle, Ino, Unique};

    /// A deferred reply as sent: the request id and the answer.
    type SentReply = (u64, Result<Vec<u8>, Errno>);

    /// Records what the transport would have sent for deferred replies.
    #[derive(Default)]
    struct Sent(Mutex<Vec<SentReply>>);

    impl ReplySink for Sent {
        fn send(&self, _token: u64, unique: Unique, result: Result<&[u8], Errno>) {
            self.0
                .lock()
                .unwrap()
                .push((unique.0, result.map(<[u8]>::to_vec)));
        }
    }

    /// Panics in lookup, in forget of inode 3, and in reads (after
    /// deferring, keeping the handle for inode 2, dropping it otherwise).
    #[derive(Default)]
    struct PanicFs {
        kept: Mutex<Vec<DeferredRead>>,
        forgotten: AtomicU64,
    }

    impl Filesystem for PanicFs {
        fn lookup(&self, _: &Ctx, _: Ino, name: &OsStr) -> Result<Entry, Errno> {
            panic!("lookup of {name:?} went wrong");
        }
        fn forget(&self, ino: Ino, n: u64) {
            assert_ne!(ino.0, 3, "forget of 3 went wrong");
            self.forgotten.fetch_add(n, Ordering::Relaxed);
        }
        fn getattr(&self, _: &Ctx, _: Ino) -> Result<AttrReply, Errno> {
            Err(Errno::ENOENT)
        }
        fn read(&self, _: &Ctx, ino: Ino, _: FileHandle, _: u64, out: ReadOut<'_>) -> ReadResult {
            let handle = out.defer();
            if ino.0 == 2 {
                self.kept.lock().unwrap().push(handle);
                panic!("read went wrong after deferring");
            }
            panic!("read went wrong holding its handle");
        }
        fn readdir(
            &self,
            _: &Ctx,
            _: Ino,
            _: FileHandle,
            _: u64,
            _: &mut DirOut<'_>,
        ) -> Result<(), Errno> {
            Ok(())
        }
    }

    fn message(opcode: u32, unique: u64, ino: u64, body: &[u8]) -> Vec<u8> {
        let mut h = abi::InHeader::new_zeroed();
        h.len = (40 + body.len()) as u32;
        h.opcode = opcode;
        h.unique = unique;
        h.nodeid = ino;
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// A tracing writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Log {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn serve(fs: &PanicFs, seed: &mut DeferSeed, msg: &[u8]) -> (Outcome, String) {
        let log = Log::default();
        let w = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        let req = decode_classic(msg).unwrap();
        seed.unique = req.ctx.unique;
        let mut out = vec![0u8; 4096];
        let outcome = tracing::subscriber::with_default(subscriber, || {
            dispatch_guarded(fs, &req, &mut out, seed)
        });
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        (outcome, text)
    }

    #[test]
    fn a_panic_answers_eio_and_logs_one_line() {
        let fs = PanicFs::default();
        let sent = Arc::new(Sent::default());
        let pending = Arc::new(PendingReplies::default());
        let mut seed = DeferSeed::new(sent.clone(), pending.clone());

        let (outcome, log) = serve(&fs, &mut seed, &message(opcode::LOOKUP, 42, 1, b"x\0"));
        assert_eq!(outcome, Outcome::Error(Errno::EIO));
        assert_eq!(log.lines().count(), 1, "{log}");
        for part in [
            r#"op="LOOKUP""#,
            "unique=42",
            r#"panic="lookup of \"x\" went wrong""#,
            r#"answer="EIO""#,
        ] {
            assert!(log.contains(part), "{part} missing from {log}");
        }

        // A read that deferred and kept its handle elsewhere: the handle is
        // cancelled, the pending entry goes, EIO is answered here.
        let mut read = abi::ReadIn::new_zeroed();
        read.size = 100;
        let (outcome, log) = serve(
            &fs,
            &mut seed,
            &message(opcode::READ, 44, 2, read.as_bytes()),
        );
        assert_eq!(outcome, Outcome::Error(Errno::EIO));
        assert!(
            log.contains("after deferring") && log.contains("unique=44"),
            "{log}"
        );
        assert_eq!(pending.len(), 0);
        assert!(fs.kept.lock().unwrap()[0].is_cancelled());
        fs.kept.lock().unwrap().clear();
        assert!(
            sent.0.lock().unwrap().is_empty(),
            "a cancelled handle answered"
        );

        // A read whose handle was dropped while unwinding: its EIO went
        // through the sink, once; the transport waits for it as deferred.
        let (outcome, log) = serve(
            &fs,
            &mut seed,
            &message(opcode::READ, 46, 5, read.as_bytes()),
        );
        assert_eq!(outcome, Outcome::Deferred);
        assert!(log.contains("holding its handle"), "{log}");
        assert_eq!(*sent.0.lock().unwrap(), vec![(46, Err(Errno::EIO))]);
        assert_eq!(pending.len(), 0);

        // FORGET takes no answer, panic or not.
        let forget = abi::ForgetIn { nlookup: 1 };
        let (outcome, log) = serve(
            &fs,
            &mut seed,
            &message(opcode::FORGET, 48, 3, forget.as_bytes()),
        );
        assert_eq!(outcome, Outcome::NoReply);
        assert!(log.contains("op=\"FORGET\""), "{log}");

        // A panicking item of a BATCH_FORGET does not cost the others.
        let mut body = abi::BatchForgetIn { count: 3, dummy: 0 }
            .as_bytes()
            .to_vec();
        for ino in [2u64, 3, 4] {
            body.extend_from_slice(
                abi::ForgetOne {
                    nodeid: ino,
                    nlookup: 5,
                }
                .as_bytes(),
            );
        }
        let (outcome, log) = serve(&fs, &mut seed, &message(opcode::BATCH_FORGET, 50, 0, &body));
        assert_eq!(outcome, Outcome::NoReply);
        assert_eq!(log.lines().count(), 1, "{log}");
        assert_eq!(fs.forgotten.load(Ordering::Relaxed), 10);
    }
}
