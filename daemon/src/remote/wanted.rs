//! What a remote Prepare's labels ask for: the layer, whether its TOC
//! is verified, and the image's other layers.

use std::collections::BTreeMap;

use ringstar_core::Digest;
use ringstar_core::digest::ParseDigestError;
use ringstar_fetcher::{ParseReferenceError, Reference};
use ringstar_layerfs::resolve::LayerSource;

use super::settings::RemoteSettings;

/// Labels containerd (unpacker, CRI) and ctr-remote send with a layer's
/// Prepare (snapshotter-protocol.md §3).
pub mod labels {
    pub const TARGET: &str = "containerd.io/snapshot.ref";
    pub const CRI_REF: &str = "containerd.io/snapshot/cri.image-ref";
    pub const CRI_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
    pub const CRI_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
    pub const STARGZ_REF: &str = "containerd.io/snapshot/remote/stargz.reference";
    pub const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
    pub const STARGZ_LAYERS: &str = "containerd.io/snapshot/remote/stargz.layers";
    pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
    pub const SKIP_VERIFY: &str = "containerd.io/snapshot/remote/stargz.skipverify";
    /// Marks a committed remote snapshot (the reference's value).
    pub const REMOTE: &str = "containerd.io/snapshot/remote";
    pub const REMOTE_VALUE: &str = "remote snapshot";
}

/// The layer a Prepare's labels name, and the image's other layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub source: LayerSource,
    /// Verify the TOC against `source.toc_digest` (absent only when
    /// verification is off or skipped by label and config).
    pub verify: bool,
    pub others: Vec<LayerSource>,
}

/// Reads the labels of a remote Prepare. `Err`: why it cannot be remote.
pub fn wanted(
    labels: &BTreeMap<String, String>,
    settings: &RemoteSettings,
) -> Result<Wanted, LabelError> {
    let get = |a: &str, b: &str| labels.get(a).or_else(|| labels.get(b)).cloned();
    let reference = get(labels::CRI_REF, labels::STARGZ_REF).ok_or(LabelError::NoReference)?;
    let digest = get(labels::CRI_DIGEST, labels::STARGZ_DIGEST).ok_or(LabelError::NoDigest)?;
    let reference: Reference = reference.parse()?;
    let digest: Digest = digest.parse().map_err(LabelError::Digest)?;
    let (toc_digest, verify) = if settings.disable_verification {
        (None, false)
    } else if let Some(t) = labels.get(labels::TOC_DIGEST) {
        let d = t.parse::<Digest>().map_err(LabelError::TocDigest)?;
        (Some(d), true)
    } else if settings.allow_no_verification
        && labels
            .get(labels::SKIP_VERIFY)
            .is_some_and(|v| v != "false")
    {
        tracing::warn!(layer = %digest, "mounting without TOC verification (skipverify label)");
        (None, false)
    } else {
        return Err(LabelError::NoTocDigest);
    };
    let others = get(labels::CRI_LAYERS, labels::STARGZ_LAYERS)
        .unwrap_or_default()
        .split(',')
        .filter_map(|d| d.trim().parse::<Digest>().ok())
        .filter(|d| *d != digest)
        .map(|d| LayerSource {
            reference: reference.clone(),
            digest: d,
            size: None,
            toc_digest: None,
        })
        .collect();
    Ok(Wanted {
        source: LayerSource {
            reference,
            digest,
            size: None,
            toc_digest,
        },
        verify,
        others,
    })
}

/// Why a Prepare's labels do not name a remote layer (it is then pulled
/// normally).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LabelError {
    #[error("no image reference label")]
    NoReference,
    #[error("no layer digest label")]
    NoDigest,
    #[error("image reference: {0}")]
    Reference(#[from] ParseReferenceError),
    #[error("layer digest: {0}")]
    Digest(ParseDigestError),
    #[error("TOC digest: {0}")]
    TocDigest(ParseDigestError),
    #[error("digest of TOC JSON must be passed (no toc.digest label)")]
    NoTocDigest,
}
