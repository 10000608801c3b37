//! Typed ids, so an inode number, a file handle and a request id can not
//! be mixed up.

use std::time::Duration;

/// An inode number as the kernel knows it (root is 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    pub const ROOT: Ino = Ino(crate::abi::ROOT_ID);
}

/// A file handle returned by open/opendir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileHandle(pub u64);

/// A request's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Unique(pub u64);

/// An errno to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EINTR: Errno = Errno(libc::EINTR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EBADF: Errno = Errno(libc::EBADF);
}

/// What kind of file an inode is (`S_IFMT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Directory,
    RegularFile,
    Symlink,
    CharDevice,
    BlockDevice,
    NamedPipe,
    Socket,
}

impl FileType {
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Directory => libc::S_IFDIR,
            FileType::RegularFile => libc::S_IFREG,
            FileType::Symlink => libc::S_IFLNK,
            FileType::CharDevice => libc::S_IFCHR,
            FileType::BlockDevice => libc::S_IFBLK,
            FileType::NamedPipe => libc::S_IFIFO,
            FileType::Socket => libc::S_IFSOCK,
        }
    }

    /// The `DT_*` value for directory entries.
    pub fn dirent_type(self) -> u32 {
        u32::from(match self {
            FileType::Directory => libc::DT_DIR,
            FileType::RegularFile => libc::DT_REG,
            FileType::Symlink => libc::DT_LNK,
            FileType::CharDevice => libc::DT_CHR,
            FileType::BlockDevice => libc::DT_BLK,
            FileType::NamedPipe => libc::DT_FIFO,
            FileType::Socket => libc::DT_SOCK,
        })
    }
}

/// A timestamp: seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamp {
    pub secs: i64,
    pub nsecs: u32,
}

/// Attributes of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAttr {
    pub ino: Ino,
    pub size: u64,
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub kind: FileType,
    /// Permission bits with setuid/setgid/sticky.
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

impl FileAttr {
    /// Attributes with the usual defaults: one link, owned by root, epoch
    /// times, 512-byte blocks covering `size`, 4 KiB I/O size, no rdev.
    pub fn new(ino: Ino, kind: FileType, size: u64, perm: u32) -> Self {
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        }
    }

    pub(crate) fn to_abi(self) -> crate::abi::Attr {
        crate::abi::Attr {
            ino: self.ino.0,
            size: self.size,
            blocks: self.blocks,
            atime: self.atime.secs as u64,
            mtime: self.mtime.secs as u64,
            ctime: self.ctime.secs as u64,
            atimensec: self.atime.nsecs,
            mtimensec: self.mtime.nsecs,
            ctimensec: self.ctime.nsecs,
            mode: self.kind.mode_bits() | (self.perm & 0o7777),
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
            blksize: self.blksize,
            flags: 0,
        }
    }
}

/// A lookup answer: the inode and how long the kernel may cache it.
/// `ino == Ino(0)` is a negative entry (the name's absence is cached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub attr: FileAttr,
    pub generation: u64,
    pub entry_ttl: Duration,
    pub attr_ttl: Duration,
}

impl Entry {
    /// "No such name", cached by the kernel for `ttl` (a plain ENOENT is
    /// not cached: every later lookup of the name comes to the daemon).
    pub fn negative(ttl: Duration) -> Entry {
        Entry {
            attr: FileAttr::new(Ino(0), FileType::RegularFile, 0, 0),
            generation: 0,
            entry_ttl: ttl,
            attr_ttl: Duration::ZERO,
        }
    }
}

/// A getattr answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrReply {
    pub attr: FileAttr,
    pub ttl: Duration,
}

/// Filesystem statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}
