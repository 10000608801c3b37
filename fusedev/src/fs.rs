//! The trait a read-only filesystem implements, served by either
//! transport. Metadata operations answer at once; a read may answer at
//! once (fill the buffer) or later (take a [`DeferredRead`] and complete it
//! from any thread), so a core never blocks on the network.
//!
//! This is the filesystem's side of the API. It depends on `deferred` (the
//! [`DeferredRead`] handle) and `encode` (directory records); the
//! dispatcher (`reply`) and the transports depend on it, never the other
//! way.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::deferred::DeferSeed;
pub use crate::deferred::DeferredRead;
use crate::encode;
use crate::passthrough::BackingId;
use crate::request::Ctx;
use crate::types::{AttrReply, Entry, Errno, FileHandle, Ino, Statfs};

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
#[derive(Debug, PartialEq, Eq)]
pub enum ReadResult {
    /// This many bytes of the buffer hold the answer (fewer than asked
    /// means end of file).
    Data(usize),
    /// The [`DeferredRead`] that [`ReadOut::defer`] returned with this
    /// token will answer.
    Deferred(Deferred),
    Error(Errno),
}

/// Proof that a read was deferred: made only by [`ReadOut::defer`] (the
/// field is private), not `Clone`, so [`ReadResult::Deferred`] can only
/// be returned by a read that took a [`DeferredRead`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "return it as ReadResult::Deferred(token)"]
pub struct Deferred(());

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
    /// thread (dropping it unanswered answers EIO); return the token as
    /// [`ReadResult::Deferred`].
    pub fn defer(self) -> (DeferredRead, Deferred) {
        (self.seed.defer(self.buf.len()), Deferred(()))
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
        self.push_record(name, next_offset, entry, true)
    }

    /// Adds `.` or `..`: listed, but not a lookup the kernel keeps.
    pub fn push_dot(&mut self, name: &OsStr, next_offset: u64, entry: &Entry) -> bool {
        self.push_record(name, next_offset, entry, false)
    }

    fn push_record(
        &mut self,
        name: &OsStr,
        next_offset: u64,
        entry: &Entry,
        counted: bool,
    ) -> bool {
        let Some(rest) = self.buf.get_mut(self.len..) else {
            return false;
        };
        match encode::dirent(
            rest,
            self.plus,
            name.as_bytes(),
            next_offset,
            entry,
            counted,
        ) {
            Some(n) => {
                self.len += n;
                true
            }
            None => false,
        }
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

    /// Creates and opens `name` in `parent` (open with O_CREAT of a name
    /// the lookup did not find). Only a mount made writable
    /// (`MountOptions::read_only` off) gets here.
    fn create(
        &self,
        _ctx: &Ctx,
        _parent: Ino,
        _name: &OsStr,
        _mode: u32,
        _flags: u32,
    ) -> Result<(Entry, Opened), Errno> {
        Err(Errno::EROFS)
    }

    /// Removes directory `name` of `parent`. As [`Filesystem::create`],
    /// only on a writable mount.
    fn rmdir(&self, _ctx: &Ctx, _parent: Ino, _name: &OsStr) -> Result<(), Errno> {
        Err(Errno::EROFS)
    }

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
