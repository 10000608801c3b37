//! The TOC of an eStargz layer that keeps it outside its blob: found in
//! the image's TOC image, `<reference>-esgztoc` (same repository, the
//! tag with `-esgztoc` added, as the reference's converter names it),
//! whose layer annotated `containerd.io/snapshot/stargz/layer.digest` =
//! this layer's digest is the TOC blob. Everything fetched is bounded,
//! the blob checked against its digest, and the TOC against the digest
//! containerd passed, as a TOC in the blob would be.

use ringstar_core::Digest;
use ringstar_fetcher::{Fetcher, Reference, Repository, ResolverConfig};

/// The annotation naming the layer a TOC blob belongs to.
pub const LAYER_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/layer.digest";
/// What the TOC image's tag adds to the image's.
pub const TOC_IMAGE_SUFFIX: &str = "-esgztoc";
/// The largest TOC image manifest read.
const MAX_TOC_MANIFEST: usize = 4 << 20;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Why a layer's external TOC was not found.
#[derive(Debug, thiserror::Error)]
pub enum ExternalTocError {
    #[error("{0} has no tag to find its TOC image by")]
    NoTag(Box<Reference>),
    #[error("TOC image {image}: {source}")]
    Fetch {
        image: String,
        source: Box<ringstar_fetcher::FetchError>,
    },
    #[error("TOC image {image}: {reason}")]
    Invalid { image: String, reason: String },
    #[error("TOC image {image} has no TOC for layer {layer}")]
    NoLayer { image: String, layer: Digest },
}

/// The TOC blob of layer `layer` of image `reference`, at most `max`
/// bytes.
pub fn fetch_external_toc(
    fetcher: &Fetcher,
    resolver: &ResolverConfig,
    reference: &Reference,
    layer: &Digest,
    max: usize,
) -> Result<bytes::Bytes, ExternalTocError> {
    let tag = reference
        .tag
        .as_ref()
        .ok_or_else(|| ExternalTocError::NoTag(Box::new(reference.clone())))?;
    let toc_tag = format!("{tag}{TOC_IMAGE_SUFFIX}");
    let image = format!("{}/{}:{toc_tag}", reference.host, reference.repository);
    let repo = Repository::origin_of(reference, resolver);
    let fetch = |e| ExternalTocError::Fetch {
        image: image.clone(),
        source: Box::new(e),
    };
    let invalid = |reason: String| ExternalTocError::Invalid {
        image: image.clone(),
        reason,
    };
    let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
    let mut doc = fetcher
        .fetch_manifest(&repo, &toc_tag, &accept, MAX_TOC_MANIFEST)
        .map_err(fetch)?;
    let mut v: serde_json::Value =
        serde_json::from_slice(&doc.bytes).map_err(|e| invalid(e.to_string()))?;
    if let Some(manifests) = v.get("manifests").and_then(|m| m.as_array()) {
        // An index: this machine's platform (the reference takes its
        // default platform too).
        let digest = manifests
            .iter()
            .find(|m| {
                let p = &m["platform"];
                p["os"] == "linux" && p["architecture"] == host_architecture()
            })
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| invalid("no manifest for this platform".into()))?
            .to_string();
        doc = fetcher
            .fetch_manifest(&repo, &digest, &accept, MAX_TOC_MANIFEST)
            .map_err(fetch)?;
        v = serde_json::from_slice(&doc.bytes).map_err(|e| invalid(e.to_string()))?;
    }
    let layers = v["layers"]
        .as_array()
        .ok_or_else(|| invalid("a manifest without layers".into()))?;
    let wanted = layer.to_string();
    let toc = layers
        .iter()
        .find(|l| l["annotations"][LAYER_DIGEST_ANNOTATION].as_str() == Some(wanted.as_str()))
        .ok_or_else(|| ExternalTocError::NoLayer {
            image: image.clone(),
            layer: *layer,
        })?;
    let toc_digest: Digest = toc["digest"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| invalid("a TOC layer without a digest".into()))?;
    fetcher.fetch_blob(&repo, &toc_digest, max).map_err(fetch)
}

/// This machine's architecture, as OCI names it.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
