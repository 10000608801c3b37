//! Handing a live FUSE connection to another process: the versioned
//! [`TakeoverState`] that travels with the `/dev/fuse` fds, the
//! [`Handover`] a stopping session gives back, and the RESEND notification
//! a new process writes. Depends on `abi` and `init`; the session depends
//! on it. docs/fusedev.md ("Takeover") has the mechanism and its limits.

use std::io::{self, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zerocopy::IntoBytes;

use crate::abi::{self, init_flags};
use crate::init::Negotiated;

/// The format version written into every [`TakeoverState`]. A process
/// refuses a state of any other version rather than guess.
pub const TAKEOVER_STATE_VERSION: u32 = 1;

/// What a new process needs to serve a connection it did not open: what
/// INIT settled (INIT is never sent again) and which fd is which. The fds
/// travel beside it, in this order: the main channel, then every cloned
/// channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverState {
    /// [`TAKEOVER_STATE_VERSION`] when written.
    pub version: u32,
    /// Where the connection is mounted.
    pub mountpoint: PathBuf,
    /// `/sys/fs/fuse/connections/<id>`, when it was known.
    pub connection_id: Option<u32>,
    /// The protocol minor answered to INIT.
    pub proto_minor: u32,
    /// The INIT flags (`flags | flags2 << 32`) both sides agreed on.
    pub flags: u64,
    /// The negotiated `max_write`: read buffers must hold this much more
    /// than a header, or the kernel answers EINVAL.
    pub max_write: usize,
    /// The negotiated `max_pages`.
    pub max_pages: u16,
    /// How many fds travel with the state: 1 (main) + the clones.
    pub channels: usize,
    /// Whether the kernel accepted passthrough. Backing ids belong to the
    /// connection and outlive the process; which id names which file is
    /// the filesystem's business.
    pub passthrough: bool,
}

/// A session handed over: its fds (main first, then the clones) and its
/// state. Nothing was unmounted or aborted.
#[derive(Debug)]
pub struct Handover {
    pub fds: Vec<OwnedFd>,
    pub state: TakeoverState,
    /// Deferred reads that were still unanswered when the grace time ran
    /// out: the kernel keeps them and the next process gets them again
    /// through RESEND.
    pub abandoned: usize,
}

/// Why a takeover could not happen.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("takeover: {0}")]
    Io(#[from] io::Error),
    #[error("this session was mounted without MountOptions::takeover")]
    NotEnabled,
    #[error("takeover state version {found} (this build reads {TAKEOVER_STATE_VERSION})")]
    Version { found: u32 },
    #[error("takeover state: {0}")]
    Format(#[from] serde_json::Error),
    #[error("takeover state names {expected} channels, {got} fds came with it")]
    Channels { expected: usize, got: usize },
    #[error("the connection uses FUSE-over-io_uring, which cannot be taken over")]
    Ring,
    #[error("takeover state: max_write {max_write} is not max_pages {max_pages} pages")]
    Inconsistent { max_write: usize, max_pages: u16 },
    #[error("takeover needs the classic transport; TransportChoice::Ring was required")]
    RingRequired,
}

/// Only the version, read first so a state from another format version is
/// refused by number rather than by a parse error.
#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}

impl TakeoverState {
    pub(crate) fn new(
        negotiated: &Negotiated,
        mountpoint: PathBuf,
        connection_id: Option<u32>,
        channels: usize,
    ) -> TakeoverState {
        TakeoverState {
            version: TAKEOVER_STATE_VERSION,
            mountpoint,
            connection_id,
            proto_minor: negotiated.minor,
            flags: negotiated.flags,
            max_write: negotiated.max_write,
            max_pages: negotiated.max_pages,
            channels,
            passthrough: negotiated.passthrough(),
        }
    }

    /// The state as bytes (JSON), for a keeper or the systemd fd store.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a TakeoverState always serializes")
    }

    /// Reads a state written by [`TakeoverState::to_bytes`], refusing
    /// another format version.
    pub fn from_bytes(bytes: &[u8]) -> Result<TakeoverState, TakeoverError> {
        let probe: VersionProbe = serde_json::from_slice(bytes)?;
        if probe.version != TAKEOVER_STATE_VERSION {
            return Err(TakeoverError::Version {
                found: probe.version,
            });
        }
        let state: TakeoverState = serde_json::from_slice(bytes)?;
        if state.flags & init_flags::OVER_IO_URING != 0 {
            return Err(TakeoverError::Ring);
        }
        // max_write sizes every read buffer: it must be what INIT derived
        // from max_pages (a u16 of pages), never a free number.
        if state.max_write != usize::from(state.max_pages) * 4096 {
            return Err(TakeoverError::Inconsistent {
                max_write: state.max_write,
                max_pages: state.max_pages,
            });
        }
        Ok(state)
    }

    pub(crate) fn negotiated(&self) -> Negotiated {
        Negotiated {
            flags: self.flags,
            max_write: self.max_write,
            minor: self.proto_minor,
            max_pages: self.max_pages,
        }
    }
}

/// Writes `FUSE_NOTIFY_RESEND` on `main`: the kernel puts every request
/// that was read on any channel of the connection but not answered back at
/// the head of its queue, with bit 63 set in its unique. Returns false on
/// a kernel older than 6.9 (EINVAL): those requests then wait until their
/// callers are killed.
pub(crate) fn notify_resend(main: BorrowedFd<'_>) -> io::Result<bool> {
    let header = abi::OutHeader {
        len: 16,
        error: abi::notify::RESEND,
        unique: 0,
    };
    let mut file = std::fs::File::from(main.try_clone_to_owned()?);
    match file.write(header.as_bytes()) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> TakeoverState {
        TakeoverState {
            version: TAKEOVER_STATE_VERSION,
            mountpoint: "/mnt/x".into(),
            connection_id: Some(42),
            proto_minor: 45,
            flags: 7,
            max_write: 1 << 20,
            max_pages: 256,
            channels: 3,
            passthrough: false,
        }
    }

    #[test]
    fn state_round_trips_and_other_versions_are_refused() {
        let s = state();
        assert_eq!(TakeoverState::from_bytes(&s.to_bytes()).unwrap(), s);
        let mut v2 = state();
        v2.version = 2;
        assert!(matches!(
            TakeoverState::from_bytes(&v2.to_bytes()),
            Err(TakeoverError::Version { found: 2 })
        ));
        assert!(matches!(
            TakeoverState::from_bytes(b"{\"version\":1}"),
            Err(TakeoverError::Format(_))
        ));
        let mut ring = state();
        ring.flags |= init_flags::OVER_IO_URING;
        assert!(matches!(
            TakeoverState::from_bytes(&ring.to_bytes()),
            Err(TakeoverError::Ring)
        ));
    }

    #[test]
    fn a_max_write_other_than_max_pages_pages_is_refused() {
        let mut huge = state();
        huge.max_write = usize::MAX;
        assert!(matches!(
            TakeoverState::from_bytes(&huge.to_bytes()),
            Err(TakeoverError::Inconsistent { .. })
        ));
    }
}
