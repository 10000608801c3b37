//! The trait a read-only filesystem implements, served by either
//! transport. Metadata operations answer at once; a read may answer at
//! once (fill the buffer) or later (take a [`DeferredRead`] and complete it
//! from any thread), so a core never blocks on the network.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::passthrough::BackingId;
use crate::request::Ctx;
use crate::types::{AttrReply, Entry, Errno, FileHandle, Ino, Statfs, Unique};

/// What open/opendir answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Opened {
    pub fh: u64,
    /// Keep the page cache across opens (immutable content).
    pub keep_cache: bool,
    /// Cache directory listings (opendir).
    pub cache_dir: bool,
    pub direct_io: bool,
    /// Serve this open straight from a backing file (FUSE passthrough).
    pub backing: Option<BackingId>,
}

/// How a read answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadResult {
    /// This many bytes of the buffer hold the answer (fewer than asked
    /// means end of file).
    Data(usize),
    /// [`ReadOut::defer`] was called; the handle will answer.
    Deferred,
    Error(Errno),
}

/// The destination of one read.
pub struct ReadOut<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) seed: &'a DeferSeed,
}

impl std::fmt::Debug for ReadOut<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOut")
            .field("len", &self.buf.len())
            .finish()
    }
}

impl ReadOut<'_> {
    /// The buffer to fill: as long as the read asked for (capped by the
    /// connection's maximum).
    pub fn buf(&mut self) -> &mut [u8] {
        self.buf
    }

    /// Answer later: the returned handle completes the read from any
    /// thread; dropping it unanswered answers EIO.
    pub fn defer(self) -> DeferredRead {
        self.seed.deferred.store(true, Ordering::Relaxed);
        let done = Arc::new(AtomicBool::new(false));
        self.seed.pending.insert(
            self.seed.unique,
            PendingReply {
                sink: self.seed.sink.clone(),
                token: self.seed.token,
                done: done.clone(),
            },
        );
        DeferredRead {
            sink: self.seed.sink.clone(),
            token: self.seed.token,
            unique: self.seed.unique,
            max: self.buf.len(),
            done,
            pending: self.seed.pending.clone(),
        }
    }
}

/// Where a deferred reply goes: a transport's way to answer a request
/// after the dispatching call has returned.
pub(crate) trait ReplySink: Send + Sync {
    /// Sends the reply for `unique` (`token` is the transport's own
    /// locator: the ring entry).
    fn send(&self, token: u64, unique: Unique, result: Result<&[u8], Errno>);
}

/// What a transport hands the dispatcher so a read can be deferred.
pub(crate) struct DeferSeed {
    pub(crate) sink: Arc<dyn ReplySink>,
    pub(crate) token: u64,
    pub(crate) unique: Unique,
    pub(crate) pending: Arc<PendingReplies>,
    /// Set when the request being dispatched took a [`DeferredRead`]
    /// (the dispatcher clears it first). Only the dispatching thread
    /// touches it; atomic so that `ReadOut` stays `Send`.
    pub(crate) deferred: AtomicBool,
}

impl DeferSeed {
    pub(crate) fn new(sink: Arc<dyn ReplySink>, pending: Arc<PendingReplies>) -> DeferSeed {
        DeferSeed {
            sink,
            token: 0,
            unique: Unique(0),
            pending,
            deferred: AtomicBool::new(false),
        }
    }
}

/// Locks `m` even if a thread panicked while holding it: every map and
/// queue behind these locks is left consistent by each single operation,
/// so one panicking thread must not take the others down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct PendingReply {
    sink: Arc<dyn ReplySink>,
    token: u64,
    done: Arc<AtomicBool>,
}

/// Deferred requests by id, so an INTERRUPT can answer them.
#[derive(Default)]
pub(crate) struct PendingReplies(Mutex<HashMap<u64, PendingReply>>);

impl PendingReplies {
    fn insert(&self, unique: Unique, p: PendingReply) {
        lock(&self.0).insert(unique.0, p);
    }

    fn remove(&self, unique: Unique) {
        lock(&self.0).remove(&unique.0);
    }

    /// Takes a deferred request back from its handle (which then answers
    /// nothing and reports [`DeferredRead::is_cancelled`]). Returns whether
    /// it was still unanswered: the caller must then answer it. False means
    /// the handle's answer is already on its way through the sink.
    pub(crate) fn take_over(&self, unique: Unique) -> bool {
        let Some(p) = lock(&self.0).remove(&unique.0) else {
            return false;
        };
        !p.done.swap(true, Ordering::AcqRel)
    }

    /// Answers a deferred request with EINTR, if it is still waiting.
    /// Returns whether it was.
    pub(crate) fn interrupt(&self, unique: Unique) -> bool {
        let Some(p) = lock(&self.0).remove(&unique.0) else {
            return false;
        };
        if p.done.swap(true, Ordering::AcqRel) {
            return false;
        }
        p.sink.send(p.token, unique, Err(Errno::EINTR));
        true
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

/// Collects directory entries into a READDIR or READDIRPLUS reply.
pub struct DirOut<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) len: usize,
    pub(crate) plus: bool,
}

impl std::fmt::Debug for DirOut<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirOut")
            .field("len", &self.len)
            .field("plus", &self.plus)
            .finish()
    }
}

impl DirOut<'_> {
    /// Whether the kernel asked for attributes too (READDIRPLUS). Plain
    /// readdir uses only the entry's inode number and type.
    pub fn is_plus(&self) -> bool {
        self.plus
    }

    /// Adds an entry; `next_offset` is the cookie to resume after it.
    /// Returns false (adding nothing) when the reply is full.
    pub fn push(&mut self, name: &OsStr, next_offset: u64, entry: &Entry) -> bool {
        crate::reply::push_dirent(self, name, next_offset, entry, true)
    }

    /// Adds `.` or `..`: listed, but not a lookup the kernel keeps.
    pub fn push_dot(&mut self, name: &OsStr, next_offset: u64, entry: &Entry) -> bool {
        crate::reply::push_dirent(self, name, next_offset, entry, false)
    }
}

/// Information about the connection, given to [`Filesystem::init`].
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Whether the kernel accepted passthrough (backing files can be opened).
    pub passthrough: Option<crate::passthrough::Passthrough>,
    pub max_read: usize,
}

/// A read-only filesystem. Every method runs on a data-plane core and must
/// not block; defaults answer as a read-only image filesystem should.
pub trait Filesystem: Send + Sync + 'static {
    fn init(&self, _info: &ConnInfo) {}

    fn lookup(&self, ctx: &Ctx, parent: Ino, name: &OsStr) -> Result<Entry, Errno>;

    /// The kernel dropped `nlookup` references to `ino`.
    fn forget(&self, _ino: Ino, _nlookup: u64) {}

    fn getattr(&self, ctx: &Ctx, ino: Ino) -> Result<AttrReply, Errno>;

    fn readlink(&self, _ctx: &Ctx, _ino: Ino) -> Result<Vec<u8>, Errno> {
        Err(Errno::EINVAL)
    }

    fn open(&self, _ctx: &Ctx, _ino: Ino, _flags: u32) -> Result<Opened, Errno> {
        Ok(Opened {
            keep_cache: true,
            ..Opened::default()
        })
    }

    fn read(
        &self,
        ctx: &Ctx,
        ino: Ino,
        fh: FileHandle,
        offset: u64,
        out: ReadOut<'_>,
    ) -> ReadResult;

    fn release(&self, _ctx: &Ctx, _ino: Ino, _fh: FileHandle) {}

    fn opendir(&self, _ctx: &Ctx, _ino: Ino) -> Result<Opened, Errno> {
        Ok(Opened {
            keep_cache: true,
            cache_dir: true,
            ..Opened::default()
        })
    }

    /// Fills `out` with entries after cookie `offset` (0 = from the start).
    fn readdir(
        &self,
        ctx: &Ctx,
        ino: Ino,
        fh: FileHandle,
        offset: u64,
        out: &mut DirOut<'_>,
    ) -> Result<(), Errno>;

    fn releasedir(&self, _ctx: &Ctx, _ino: Ino, _fh: FileHandle) {}

    fn statfs(&self, _ctx: &Ctx, _ino: Ino) -> Result<Statfs, Errno> {
        Ok(Statfs {
            bsize: 4096,
            frsize: 4096,
            namelen: 255,
            ..Statfs::default()
        })
    }

    /// The value of one extended attribute; ENODATA when absent.
    fn getxattr(&self, _ctx: &Ctx, _ino: Ino, _name: &OsStr) -> Result<Vec<u8>, Errno> {
        Err(Errno::ENODATA)
    }

    /// NUL-terminated attribute names, concatenated.
    fn listxattr(&self, _ctx: &Ctx, _ino: Ino) -> Result<Vec<u8>, Errno> {
        Ok(Vec::new())
    }
}
