//! INIT: the flags ringstar asks the kernel for (and why it refuses the
//! rest), and what the answer settles. Depends only on `abi` and
//! `options`; the session reads INIT and the serving threads read the
//! settled [`Negotiated`].

use std::io;

use zerocopy::FromZeros;

use crate::abi::{self, InitOut, init_flags as f};
use crate::options::{MountOptions, TransportChoice};

/// Flags ringstar asks for; the rest are refused. Why each refusal:
/// - POSIX_LOCKS, FLOCK_LOCKS: the kernel's local locking is enough for a read-only fs.
/// - AUTO_INVAL_DATA: triggers GETATTRs before cached reads; image content is immutable.
/// - WRITEBACK_CACHE: read-only, and incompatible with passthrough.
/// - NO_OPENDIR_SUPPORT: we keep OPENDIR to set FOPEN_CACHE_DIR.
/// - SPLICE_*: classic-only gains, not used with the ring.
/// - EXPORT_SUPPORT: NFS export of image layers is not supported.
/// - POSIX_ACL, SECURITY_CTX, CREATE_SUPP_GROUP, HANDLE_KILLPRIV*: nothing is created or written.
/// - HAS_INODE_DAX, MAP_ALIGNMENT, SUBMOUNTS: DAX/virtiofs only.
/// - REQUEST_TIMEOUT: a slow registry must not abort the whole connection.
const WANTED: u64 = f::ASYNC_READ
    | f::BIG_WRITES
    | f::DO_READDIRPLUS
    | f::READDIRPLUS_AUTO
    | f::ASYNC_DIO
    | f::PARALLEL_DIROPS
    | f::MAX_PAGES
    | f::CACHE_SYMLINKS
    | f::EXPLICIT_INVAL_DATA
    | f::INIT_EXT;

/// What INIT settled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiated {
    pub(crate) flags: u64,
    pub(crate) max_write: usize,
    /// The protocol minor answered (the lower of the kernel's and ours).
    pub(crate) minor: u32,
    pub(crate) max_pages: u16,
}

impl Negotiated {
    pub(crate) fn ring(&self) -> bool {
        self.flags & f::OVER_IO_URING != 0
    }
    pub(crate) fn passthrough(&self) -> bool {
        self.flags & f::PASSTHROUGH != 0
    }
}

pub(crate) fn negotiate(
    init: &abi::InitIn,
    opts: &MountOptions,
) -> io::Result<(InitOut, Negotiated)> {
    if init.major != abi::KERNEL_VERSION {
        return Err(io::Error::other(format!(
            "kernel speaks FUSE {}.{}",
            init.major, init.minor
        )));
    }
    let mut offered = u64::from(init.flags);
    if offered & f::INIT_EXT != 0 {
        offered |= u64::from(init.flags2) << 32;
    }
    let mut want = WANTED;
    if opts.passthrough {
        want |= f::PASSTHROUGH;
    }
    if opts.transport != TransportChoice::Classic {
        want |= f::OVER_IO_URING;
    }
    let flags = want & offered;
    let max_pages = opts.max_pages.max(1);
    let max_write = usize::from(max_pages) * 4096;
    let mut out = InitOut::new_zeroed();
    out.major = abi::KERNEL_VERSION;
    out.minor = init.minor.min(abi::KERNEL_MINOR_VERSION);
    out.max_readahead = init.max_readahead;
    out.flags = flags as u32;
    out.flags2 = (flags >> 32) as u32;
    out.max_background = 64;
    out.congestion_threshold = 48;
    out.max_write = max_write as u32;
    out.time_gran = 1;
    out.max_pages = max_pages;
    if flags & f::PASSTHROUGH != 0 {
        out.max_stack_depth = 1;
    }
    let negotiated = Negotiated {
        flags,
        max_write,
        minor: out.minor,
        max_pages,
    };
    Ok((out, negotiated))
}
