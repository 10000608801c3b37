//! Error kinds. The layer-level [`Error`] decides whether a snapshotter falls
//! back to a normal pull; [`ChunkError`] is one failed read (EIO) and never
//! takes the layer down.

use std::io;

use crate::digest::Digest;

/// Why a layer could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No footer variant matched: this is an ordinary tar.gz (or garbage).
    /// Callers fall back to a normal pull.
    #[error("not an eStargz layer: {0}")]
    NotEstargz(String),
    /// An eStargz blob whose TOC lives in a separate image (external-TOC
    /// variant). Recognised, not served: callers fall back to a normal pull.
    #[error("eStargz layer with an external TOC is not supported")]
    ExternalToc,
    /// A footer was recognised but what it says cannot be true of this blob.
    #[error("bad footer: {0}")]
    BadFooter(String),
    /// The TOC could not be decompressed, un-tarred or decoded.
    #[error("bad TOC: {0}")]
    BadToc(String),
    /// One TOC entry is malformed; the layer is refused (the TOC is signed
    /// by its digest, so a bad entry means a bad writer, not bad luck).
    #[error("bad TOC entry {name:?}: {reason}")]
    BadEntry { name: String, reason: String },
    /// The TOC does not hash to the `toc.digest` label.
    #[error("TOC digest mismatch: expected {expected}, got {actual}")]
    TocDigestMismatch { expected: Digest, actual: Digest },
    /// A limit that protects memory was exceeded.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// Reading the blob failed.
    #[error("reading the blob: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// Whether a snapshotter should treat the layer as "not lazily
    /// pullable" and let containerd download it. Every open error qualifies;
    /// this says which ones are expected (not a sign of a broken layer).
    pub fn is_not_estargz(&self) -> bool {
        matches!(self, Error::NotEstargz(_) | Error::ExternalToc)
    }

    pub(crate) fn entry(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadEntry {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// Why one chunk read failed. Each maps to EIO for that read only.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The decompressed bytes do not hash to the TOC's `chunkDigest`.
    #[error("chunk digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// The compressed bytes are not a valid member, or decompress to fewer
    /// bytes than the chunk needs.
    #[error("corrupt compressed data: {0}")]
    Corrupt(String),
    /// The caller passed a buffer or range that does not fit the chunk.
    #[error("bad chunk request: {0}")]
    BadRequest(String),
    /// The chunk has no digest to verify against and verification is on.
    #[error("chunk has no digest to verify against")]
    Unverifiable,
    /// Fetching the compressed bytes failed.
    #[error("reading the blob: {0}")]
    Io(#[from] io::Error),
}
