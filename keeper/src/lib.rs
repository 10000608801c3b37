//! ringstar-keeper: hold file descriptors — a FUSE connection's
//! `/dev/fuse` fds — while the process that serves them dies or is
//! replaced.
//!
//! - `wire`: the protocol (one `SOCK_SEQPACKET` message per request and
//!   answer, fds as `SCM_RIGHTS`).
//! - [`Keeper`] (`client`): deposit, replace, fetch, take, drop.
//! - [`serve`] (`server`): the keeper, run by the `ringstar-fdkeeper`
//!   binary. It knows nothing of images or FUSE.
//!
//! `client` and `server` both depend on `wire`, never on each other
//! (the server reaches the client only through the crate root).

mod client;
mod server;
mod wire;

use std::path::PathBuf;

pub use client::{Deposit, Keeper};
pub use server::serve;
pub use wire::{MAX_FDS, MAX_MESSAGE};

/// What can go wrong talking to (or being) a keeper.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("keeper socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("keeper socket: {0}")]
    Sys(#[from] rustix::io::Errno),
    #[error("{0} fds in one entry (at most {MAX_FDS})")]
    TooManyFds(usize),
    #[error("a message of {0} bytes (at most {MAX_MESSAGE})")]
    TooLarge(usize),
    #[error("keeper protocol: {0}")]
    Protocol(&'static str),
    #[error("the keeper closed the connection")]
    Closed,
    #[error("the keeper refused the request: {0}")]
    Refused(String),
    #[error("the keeper answered status {0}")]
    Status(u8),
    #[error("the keeper already holds an entry named {0:?}")]
    Exists(String),
    #[error("the keeper holds no entry named {0:?}")]
    NotFound(String),
    #[error("a keeper already answers on {0}")]
    AlreadyRunning(PathBuf),
}
