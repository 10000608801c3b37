//! The FUSE kernel ABI, protocol 7.45, as far as a read-only filesystem
//! needs it. Every struct is `#[repr(C)]` with its size and field offsets
//! asserted at compile time (the system `linux/fuse.h` is older: this is
//! written from fuse-io-uring.md). Decoding from untrusted bytes goes
//! through zerocopy, so no struct is ever read from a short buffer.

// zerocopy's KnownLayout derive generates helper types without Debug.
#![allow(missing_debug_implementations)]

use std::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR_VERSION: u32 = 45;
/// Root inode number.
pub const ROOT_ID: u64 = 1;

/// Request opcodes we handle or answer.
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const TMPFILE: u32 = 51;
}

/// INIT flags, as one 64-bit set (bits ≥ 32 travel in `flags2`).
pub mod init_flags {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const WRITEBACK_CACHE: u64 = 1 << 16;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const NO_OPENDIR_SUPPORT: u64 = 1 << 24;
    pub const EXPLICIT_INVAL_DATA: u64 = 1 << 25;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const PASSTHROUGH: u64 = 1 << 37;
    pub const OVER_IO_URING: u64 = 1 << 41;
}

/// `fuse_open_out.open_flags` bits.
pub mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const CACHE_DIR: u32 = 1 << 3;
    pub const PASSTHROUGH: u32 = 1 << 7;
}

/// Notification codes (daemon → kernel, in `fuse_out_header.error`).
pub mod notify {
    pub const INVAL_INODE: i32 = 2;
    pub const INVAL_ENTRY: i32 = 3;
    /// Re-queue every request read but not answered (Linux 6.9, 7.40).
    pub const RESEND: i32 = 7;
}

/// FUSE-over-io_uring commands (`sqe.cmd_op`).
pub mod uring_cmd {
    pub const REGISTER: u32 = 1;
    pub const COMMIT_AND_FETCH: u32 = 2;
}

/// `ioctl` numbers on `/dev/fuse`.
pub mod ioctl {
    /// `_IOR(229, 0, uint32_t)`
    pub const DEV_IOC_CLONE: u32 = 0x8004_e500;
    /// `_IOW(229, 1, struct fuse_backing_map)`
    pub const DEV_IOC_BACKING_OPEN: u32 = 0x4010_e501;
    /// `_IOW(229, 2, uint32_t)`
    pub const DEV_IOC_BACKING_CLOSE: u32 = 0x4004_e502;
}

macro_rules! abi_struct {
    ($(#[$m:meta])* $name:ident, $size:expr, { $($field:ident : $ty:ty = $off:expr),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
        pub struct $name { $(pub $field: $ty),* }
        const _: () = {
            assert!(size_of::<$name>() == $size);
            $(assert!(offset_of!($name, $field) == $off);)*
        };
    };
}

abi_struct!(InHeader, 40, {
    len: u32 = 0, opcode: u32 = 4, unique: u64 = 8, nodeid: u64 = 16, uid: u32 = 24, gid: u32 = 28,
    pid: u32 = 32, total_extlen: u16 = 36, padding: u16 = 38,
});
abi_struct!(OutHeader, 16, { len: u32 = 0, error: i32 = 4, unique: u64 = 8 });
abi_struct!(InitIn, 64, {
    major: u32 = 0, minor: u32 = 4, max_readahead: u32 = 8, flags: u32 = 12, flags2: u32 = 16,
    unused: [u32; 11] = 20,
});
abi_struct!(InitOut, 64, {
    major: u32 = 0, minor: u32 = 4, max_readahead: u32 = 8, flags: u32 = 12, max_background: u16 = 16,
    congestion_threshold: u16 = 18, max_write: u32 = 20, time_gran: u32 = 24, max_pages: u16 = 28,
    map_alignment: u16 = 30, flags2: u32 = 32, max_stack_depth: u32 = 36, request_timeout: u16 = 40,
    unused: [u16; 11] = 42,
});
abi_struct!(Attr, 88, {
    ino: u64 = 0, size: u64 = 8, blocks: u64 = 16, atime: u64 = 24, mtime: u64 = 32, ctime: u64 = 40,
    atimensec: u32 = 48, mtimensec: u32 = 52, ctimensec: u32 = 56, mode: u32 = 60, nlink: u32 = 64,
    uid: u32 = 68, gid: u32 = 72, rdev: u32 = 76, blksize: u32 = 80, flags: u32 = 84,
});
abi_struct!(EntryOut, 128, {
    nodeid: u64 = 0, generation: u64 = 8, entry_valid: u64 = 16, attr_valid: u64 = 24,
    entry_valid_nsec: u32 = 32, attr_valid_nsec: u32 = 36, attr: Attr = 40,
});
abi_struct!(AttrOut, 104, { attr_valid: u64 = 0, attr_valid_nsec: u32 = 8, dummy: u32 = 12, attr: Attr = 16 });
abi_struct!(GetattrIn, 16, { getattr_flags: u32 = 0, dummy: u32 = 4, fh: u64 = 8 });
abi_struct!(OpenIn, 8, { flags: u32 = 0, open_flags: u32 = 4 });
abi_struct!(CreateIn, 16, { flags: u32 = 0, mode: u32 = 4, umask: u32 = 8, open_flags: u32 = 12 });
abi_struct!(OpenOut, 16, { fh: u64 = 0, open_flags: u32 = 8, backing_id: i32 = 12 });
abi_struct!(ReadIn, 40, {
    fh: u64 = 0, offset: u64 = 8, size: u32 = 16, read_flags: u32 = 20, lock_owner: u64 = 24, flags: u32 = 32,
    padding: u32 = 36,
});
abi_struct!(ReleaseIn, 24, { fh: u64 = 0, flags: u32 = 8, release_flags: u32 = 12, lock_owner: u64 = 16 });
abi_struct!(Kstatfs, 80, {
    blocks: u64 = 0, bfree: u64 = 8, bavail: u64 = 16, files: u64 = 24, ffree: u64 = 32, bsize: u32 = 40,
    namelen: u32 = 44, frsize: u32 = 48, padding: u32 = 52, spare: [u32; 6] = 56,
});
abi_struct!(GetxattrIn, 8, { size: u32 = 0, padding: u32 = 4 });
abi_struct!(GetxattrOut, 8, { size: u32 = 0, padding: u32 = 4 });
abi_struct!(ForgetIn, 8, { nlookup: u64 = 0 });
abi_struct!(BatchForgetIn, 8, { count: u32 = 0, dummy: u32 = 4 });
abi_struct!(ForgetOne, 16, { nodeid: u64 = 0, nlookup: u64 = 8 });
abi_struct!(InterruptIn, 8, { unique: u64 = 0 });
abi_struct!(Dirent, 24, { ino: u64 = 0, off: u64 = 8, namelen: u32 = 16, typ: u32 = 20 });
abi_struct!(NotifyInvalInodeOut, 24, { ino: u64 = 0, off: i64 = 8, len: i64 = 16 });
abi_struct!(NotifyInvalEntryOut, 16, { parent: u64 = 0, namelen: u32 = 8, flags: u32 = 12 });
abi_struct!(BackingMap, 16, { fd: i32 = 0, flags: u32 = 4, padding: u64 = 8 });
abi_struct!(RingEntInOut, 32, { flags: u64 = 0, commit_id: u64 = 8, payload_sz: u32 = 16, padding: u32 = 20, reserved: u64 = 24 });
abi_struct!(UringReqHeader, 288, { in_out: [u8; 128] = 0, op_in: [u8; 128] = 128, ring_ent_in_out: RingEntInOut = 256 });
abi_struct!(UringCmdReq, 24, { flags: u64 = 0, commit_id: u64 = 8, qid: u16 = 16, padding: [u8; 6] = 18 });

/// `fuse_dirent` records are padded to 8 bytes.
pub const fn dirent_padded_len(namelen: usize) -> usize {
    (size_of::<Dirent>() + namelen).div_ceil(8) * 8
}
