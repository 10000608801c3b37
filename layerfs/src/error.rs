//! The errors of the read path.

use std::sync::Arc;

use ringstar_core::ChunkError;
use ringstar_fetcher::FetchError;

use crate::chunks::FileChunk;

/// Why a chunk could not be had. The read waiting for it gets EIO; this
/// is the log line, and the state file's `error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChunkFailure {
    #[error("no chunk {} in the file", .0.0)]
    NoSuchChunk(FileChunk),
    #[error("chunk at {file_offset} of {size} bytes has no digest to verify it by, or is too big")]
    Unverifiable { file_offset: u64, size: u64 },
    #[error("chunk at {file_offset}: {source}")]
    Inflate {
        file_offset: u64,
        source: Arc<ChunkError>,
    },
    #[error("chunk at {file_offset}: content does not match its digest")]
    DigestMismatch { file_offset: u64 },
    #[error("panicked: {0}")]
    Panicked(String),
    #[error("range shorter than its chunks")]
    ShortRange,
    #[error("fetch: {0}")]
    Fetch(#[source] FetchError),
    /// Its fetch was lost before it could answer (the fetcher stopped, or
    /// a panic unwound past it).
    #[error("the fetch was abandoned")]
    Abandoned,
}

/// Why a layer cannot be shown in the mount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddLayerError {
    #[error("bad layer name {0:?}")]
    BadName(String),
    #[error("layer has too many entries ({0})")]
    TooBig(usize),
    #[error("layer {0:?} is already mounted")]
    Taken(String),
}
