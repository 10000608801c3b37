//! The daemon's errors: why a snapshotter call failed ([`SnapError`],
//! one variant per gRPC code containerd acts on, each with a typed
//! reason), why a List filter is not one ([`FilterError`]), and why the
//! daemon could not start ([`StartError`]).
//!
//! A snapshotter error's text is all containerd gets (a status message),
//! so each reason's text includes its cause's.

use std::path::PathBuf;

use containerd_snapshots::tonic::Status;
use ringstar_core::Digest;

use crate::remote::{LabelError, LayerError};

/// Why a snapshotter call failed; the gRPC code is what containerd acts
/// on (snapshotter-protocol.md §2).
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error(transparent)]
    NotFound(NotFound),
    #[error(transparent)]
    AlreadyExists(AlreadyExists),
    #[error(transparent)]
    InvalidArgument(InvalidArgument),
    #[error(transparent)]
    FailedPrecondition(FailedPrecondition),
    #[error(transparent)]
    Unavailable(Box<Unavailable>),
    #[error(transparent)]
    Internal(Box<Internal>),
}

impl From<SnapError> for Status {
    fn from(e: SnapError) -> Status {
        let message = e.to_string();
        match e {
            SnapError::NotFound(_) => Status::not_found(message),
            SnapError::AlreadyExists(_) => Status::already_exists(message),
            SnapError::InvalidArgument(_) => Status::invalid_argument(message),
            SnapError::FailedPrecondition(_) => Status::failed_precondition(message),
            SnapError::Unavailable(_) => Status::unavailable(message),
            SnapError::Internal(_) => Status::unknown(message),
        }
    }
}

/// NOT_FOUND: what the call names does not exist.
#[derive(Debug, thiserror::Error)]
pub enum NotFound {
    #[error("snapshot {key:?} does not exist")]
    Snapshot { key: String },
    #[error("parent snapshot {parent:?} does not exist")]
    Parent { parent: String },
}

/// ALREADY_EXISTS: a name is taken (for a remote Prepare: the answer
/// that tells containerd the layer is there).
#[derive(Debug, thiserror::Error)]
pub enum AlreadyExists {
    #[error("snapshot {key:?} already exists")]
    Snapshot { key: String },
    #[error("target snapshot {target:?}: already exists")]
    Target { target: String },
}

/// INVALID_ARGUMENT: the request itself is wrong.
#[derive(Debug, thiserror::Error)]
pub enum InvalidArgument {
    #[error("empty snapshot key")]
    EmptyKey,
    #[error("empty snapshot name")]
    EmptyName,
    #[error("parent {parent:?} is not a committed snapshot")]
    ParentNotCommitted { parent: String },
    #[error("filter {filter:?}: {cause}")]
    Filter { filter: String, cause: FilterError },
    #[error("cannot update {path:?} of snapshot {name:?}: only labels are mutable")]
    Immutable { path: String, name: String },
}

/// FAILED_PRECONDITION: the snapshot is not in a state the call needs.
#[derive(Debug, thiserror::Error)]
pub enum FailedPrecondition {
    #[error("snapshot {key:?} is committed: only active and view snapshots have mounts")]
    Committed { key: String },
    #[error("snapshot {key:?} is {kind}, not active")]
    NotActive { key: String, kind: &'static str },
    #[error("cannot remove snapshot {key:?}: snapshot {child:?} is its child")]
    HasChild { key: String, child: String },
}

/// UNAVAILABLE: a remote layer the snapshot needs cannot be served now
/// (each use tries again).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("layer of {snapshot:?} unavailable: {cause}")]
    Labels { snapshot: String, cause: LabelError },
    #[error("snapshot {snapshot:?}: {cause}")]
    Layer { snapshot: String, cause: LayerError },
}

/// UNKNOWN: the daemon failed (disk, database, a thread).
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    #[error("{action} {}: {cause}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{action} the directories of {key:?}: {cause}")]
    SnapshotDirs {
        action: &'static str,
        key: String,
        cause: std::io::Error,
    },
    #[error("disk usage of {key:?}: {cause}")]
    DiskUsage { key: String, cause: std::io::Error },
    #[error("spawning the restore thread: {0}")]
    Spawn(std::io::Error),
    #[error(
        "cannot restore remote snapshot {snapshot:?} (layer {layer}): {cause}; \
         set [snapshotter] allow_invalid_mounts_on_restart = true to start anyway"
    )]
    Restore {
        snapshot: String,
        layer: Digest,
        cause: LayerError,
    },
    #[error("metadata database: {0}")]
    Database(redb::Error),
    #[error("metadata database: record {key:?}: {cause}")]
    Record {
        key: String,
        cause: serde_json::Error,
    },
    #[error("metadata database: the parent chain of {key:?} loops")]
    ChainLoops { key: String },
    #[error("snapshotter call failed: {0}")]
    Call(tokio::task::JoinError),
}

macro_rules! snap_error_from {
    ($($kind:ident),*) => {$(
        impl From<$kind> for SnapError {
            fn from(e: $kind) -> SnapError {
                SnapError::$kind(e)
            }
        }
    )*};
}
snap_error_from!(NotFound, AlreadyExists, InvalidArgument, FailedPrecondition);

impl From<Unavailable> for SnapError {
    fn from(e: Unavailable) -> SnapError {
        SnapError::Unavailable(Box::new(e))
    }
}

impl From<Internal> for SnapError {
    fn from(e: Internal) -> SnapError {
        SnapError::Internal(Box::new(e))
    }
}

/// Why a List filter string is not one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FilterError {
    #[error("expected a field at {at}")]
    ExpectedField { at: usize },
    #[error("expected a value at {at}")]
    ExpectedValue { at: usize },
    #[error("unterminated quote at {at}")]
    Unterminated { at: usize },
    #[error("unexpected {rest:?} at {at}")]
    Unexpected { rest: String, at: usize },
    #[error("quoted string is not UTF-8 (at {at})")]
    NotUtf8 { at: usize },
    #[error("{0}")]
    Regex(#[from] regex::Error),
}

/// Why the daemon could not start (or serve).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        cause: std::io::Error,
    },
    #[error("starting the fetcher")]
    Fetcher(#[source] std::io::Error),
    #[error("opening the store at {}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        cause: ringstar_core::store::StoreError,
    },
    #[error("starting the loader")]
    Loader(#[source] std::io::Error),
    #[error("starting the resolvers")]
    Resolvers(#[source] std::io::Error),
    #[error("opening the unpacked layers at {}", path.display())]
    Unpacked {
        path: PathBuf,
        #[source]
        cause: std::io::Error,
    },
    #[error("opening the snapshots")]
    Snapshots(#[source] SnapError),
    #[error("serving")]
    Serve(#[source] containerd_snapshots::tonic::transport::Error),
    #[error("stopping")]
    Stop(#[source] tokio::task::JoinError),
    #[error("takeover")]
    Takeover(#[source] crate::takeover::TakeoverStartError),
    #[error("starting the takeover journal")]
    Journal(#[source] ringstar_layerfs::journal::JournalError),
    #[error("serving HTTP at {address}: {reason}")]
    Endpoint { address: String, reason: String },
}

impl StartError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StartError {
        let path = path.into();
        move |cause| StartError::Io {
            action,
            path,
            cause,
        }
    }
}
