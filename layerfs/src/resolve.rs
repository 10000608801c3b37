//! Resolving a layer: where its blob is (mirrors, then the origin), its
//! tail in one request (footer and TOC together when they fit; a TOC kept
//! outside the blob comes from the image's TOC image, `external_toc`),
//! the TOC checked against the digest containerd passed, the tree built.

use std::time::Instant;

use ringstar_core::{Digest, Layer, OpenOptions};
use ringstar_fetcher::{FetchError, Fetcher, Reference, RemoteBlob, ResolverConfig};

use super::external_toc::{ExternalTocError, fetch_external_toc};
use super::layer::RemoteLayer;

/// A remote blob whose last bytes are at hand already: reads inside
/// them cost no request.
struct WithTail {
    tail_start: u64,
    tail: bytes::Bytes,
    remote: RemoteBlob,
}

impl ringstar_core::BlobRead for WithTail {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64);
        if offset >= self.tail_start && end <= self.tail_start + self.tail.len() as u64 {
            let from = (offset - self.tail_start) as usize;
            return Ok(self.tail[from..from + len].to_vec());
        }
        self.remote.read_at(offset, len)
    }
}

/// What names a remote layer (the labels containerd sends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSource {
    pub reference: Reference,
    pub digest: Digest,
    /// The blob size when known (from the manifest); checked.
    pub size: Option<u64>,
    /// The TOC digest to verify against; `None` skips verification.
    pub toc_digest: Option<Digest>,
}

impl LayerSource {
    /// The layer's directory name in the mount, and its identity in the
    /// daemon: 32 hex digits (128 bits) of a digest of where the bytes
    /// come from (registry host and repository) and what they are (the
    /// blob digest). An image that declares another image's layer digest
    /// gets a layer of its own, read from its own registry; and no
    /// declared digest can be chosen to clash with another's name.
    pub fn layer_name(&self) -> String {
        let mut h = ringstar_core::digest::Hasher::new();
        for part in [
            b"ringstar layer v1".as_slice(),
            self.reference.host.as_bytes(),
            self.reference.repository.as_bytes(),
            self.digest.to_string().as_bytes(),
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finish().hex()[..32].to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("blob {digest} of {reference}: {source}")]
    Fetch {
        reference: Box<Reference>,
        digest: Digest,
        source: Box<FetchError>,
    },
    #[error("blob {digest}: the registry says {actual} bytes, the manifest {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("layer {digest}: {source}")]
    Layer {
        digest: Digest,
        source: ringstar_core::Error,
    },
    #[error("layer {digest}: its TOC is external: {source}")]
    ExternalToc {
        digest: Digest,
        source: ExternalTocError,
    },
}

impl ResolveError {
    /// Not an eStargz layer at all: the caller falls back quietly.
    pub fn is_not_estargz(&self) -> bool {
        matches!(self, ResolveError::Layer { source, .. } if source.is_not_estargz())
    }
}

/// Resolves `source` into a layer named `name`, ready to add to a
/// [`super::LayerFs`]. Blocking (the control thread's work).
pub fn resolve(
    fetcher: &Fetcher,
    resolver: &ResolverConfig,
    source: &LayerSource,
    name: String,
    tail_bytes: u64,
) -> Result<RemoteLayer, ResolveError> {
    ringstar_core::faults::point("resolve");
    let started = Instant::now();
    let digest = source.digest;
    let fetch_err = |e| ResolveError::Fetch {
        reference: Box::new(source.reference.clone()),
        digest,
        source: Box::new(e),
    };
    let endpoints = resolver.endpoints(&source.reference.host);
    // One round trip finds the blob, its size and its tail (footer and,
    // usually, the TOC) when the registry answers a suffix range.
    let (location, size, tail) = fetcher
        .resolve_blob_tail(
            &endpoints,
            &source.reference.repository,
            &digest.to_string(),
            tail_bytes,
        )
        .map_err(fetch_err)?;
    if let Some(expected) = source.size
        && expected != size
    {
        return Err(ResolveError::SizeMismatch {
            digest,
            expected,
            actual: size,
        });
    }
    let located = started.elapsed();
    let blob = WithTail {
        tail_start: size - tail.as_ref().map_or(0, |t| t.len() as u64),
        tail: tail.unwrap_or_default(),
        remote: RemoteBlob {
            fetcher: fetcher.clone(),
            location: location.clone(),
        },
    };
    let options = OpenOptions {
        toc_digest: source.toc_digest,
        tail_bytes,
        ..OpenOptions::default()
    };
    let layer = match Layer::open(&blob, size, &options) {
        Err(ringstar_core::Error::ExternalToc) => {
            // The TOC is in the image's TOC image: one more manifest and
            // one more (small) blob.
            let external = |source| ResolveError::ExternalToc { digest, source };
            let max = usize::try_from(options.max_toc_bytes).unwrap_or(usize::MAX);
            let toc = fetch_external_toc(fetcher, resolver, &source.reference, &digest, max)
                .map_err(external)?;
            Layer::open_external_toc(size, &toc, &options)
        }
        other => other,
    }
    .map_err(|e| ResolveError::Layer { digest, source: e })?;
    tracing::info!(
        layer = %digest,
        reference = %source.reference,
        entries = layer.tree.len(),
        blob_bytes = size,
        locate_ms = located.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "layer resolved"
    );
    Ok(RemoteLayer::new(name, digest, size, location, layer))
}
