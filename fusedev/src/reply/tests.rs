//! The panic containment of [`super::dispatch_guarded`], case by case.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use zerocopy::{FromZeros, IntoBytes};

use super::*;
use crate::abi::{self, opcode};
use crate::deferred::{DeferSeed, DeferredRead, PendingReplies, ReplySink};
use crate::fs::{ReadOut, ReadResult};
use crate::request::{Ctx, decode_classic};
use crate::types::{AttrReply, Entry, FileHandle, Ino, Unique};

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
        let (handle, _deferred) = out.defer();
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
