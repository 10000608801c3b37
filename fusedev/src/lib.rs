//! ringstar-fusedev: serve `/dev/fuse` directly, no libfuse.
//!
//! - [`abi`]: the protocol 7.45 structs, with compile-time layout asserts.
//! - [`request`]: decoding requests from untrusted bytes.
//! - [`fs`]: the [`Filesystem`] trait (metadata answers now; reads now or
//!   later through a [`DeferredRead`]).
//! - [`session`]: mount, INIT, the per-core threads, teardown.
//! - classic transport (read/write on cloned fds) and FUSE-over-io_uring.
//! - [`passthrough`]: backing files the kernel reads directly.
//! - [`takeover`]: handing a live connection to another process.
//!
//! The crate knows nothing of images.
//!
//! Dependencies between the modules point one way (docs/fusedev.md has
//! the map): the leaves `abi`, `types`, `sync`, `sys`; above them
//! `encode`, `request`, `passthrough`, `deferred`, `options`; then `fs`,
//! `knob`, `init`, `control`; then `reply` (the dispatcher); `serving`;
//! the transports `classic` and `uring`; `takeover` (the state handed over), then
//! `session` and `offline` on top.

pub mod abi;
mod classic;
mod control;
mod deferred;
mod encode;
pub mod fs;
mod init;
mod knob;
pub mod offline;
pub mod op_stats;
mod options;
pub mod passthrough;
mod reply;
pub mod request;
mod serving;
pub mod session;
mod sync;
mod sys;
pub mod takeover;
pub mod types;
mod uring;

pub use fs::{ConnInfo, Deferred, DeferredRead, DirOut, Filesystem, Opened, ReadOut, ReadResult};
pub use passthrough::{BackingFile, BackingId, Passthrough};
pub use request::Ctx;
pub use session::{
    DEFAULT_RING_DEPTH, DEFAULT_RING_MAX_ENTRIES, ENABLE_URING_KNOB, FuseUring, MountOptions,
    Session, Stats, Transport, TransportChoice, UnknownFuseUring, UringKnob, abort_connection,
    detach_mount, mounted_connection_id,
};
pub use takeover::{Handover, TAKEOVER_STATE_VERSION, TakeoverError, TakeoverState};
pub use types::{
    AttrReply, Entry, Errno, FileAttr, FileHandle, FileType, Ino, Statfs, Timestamp, Unique,
};
