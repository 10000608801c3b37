//! Media types and descriptors of OCI and Docker images, and what the
//! image tools need to tell them apart: an index from a manifest, a layer
//! that is a tar (and how it is compressed) from one that is not, a layer
//! that is eStargz already.

use ringstar_core::Digest;
use serde::{Deserialize, Serialize};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// What a registry is asked to send for a manifest reference.
pub const MANIFEST_ACCEPT: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// The TOC digest of an eStargz layer, which containerd forwards to the
/// snapshotter.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The decompressed size of an eStargz layer.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";
/// External TOC: on each layer of the `-esgztoc` image, the digest of
/// the eStargz layer whose TOC it is.
pub const LAYER_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/layer.digest";
/// What an image's TOC image adds to its tag.
pub const TOC_IMAGE_SUFFIX: &str = "-esgztoc";
/// zstd:chunked: sha256 of the compressed TOC frame.
pub const ZSTD_CHUNKED_CHECKSUM_ANNOTATION: &str = "io.containers.zstd-chunked.manifest-checksum";
/// zstd:chunked: `OFFSET:COMPRESSED:UNCOMPRESSED:1` of the TOC frame.
pub const ZSTD_CHUNKED_POSITION_ANNOTATION: &str = "io.containers.zstd-chunked.manifest-position";
/// The tag of a manifest in an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// A content descriptor; fields other than these (platform, urls,
/// artifactType, …) are kept as they came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub annotations: serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

impl Descriptor {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).and_then(|v| v.as_str())
    }
}

/// What a manifest-like document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    /// An OCI index or a Docker manifest list.
    Index,
    /// An OCI or Docker image manifest.
    Manifest,
}

/// The kind of a document from its media type (the `Content-Type` or its
/// own `mediaType` field); `None` for anything else (an artifact).
pub fn document_kind(media_type: &str) -> Option<DocumentKind> {
    match media_type {
        OCI_INDEX | DOCKER_LIST => Some(DocumentKind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(DocumentKind::Manifest),
        _ => None,
    }
}

/// How a layer's tar is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

/// A layer's compression if it is a tar layer the tools may convert;
/// `None` for anything else (non-distributable layers, attestations,
/// artifacts), which is kept as it is.
pub fn tar_layer(media_type: &str) -> Option<LayerCompression> {
    match media_type {
        OCI_LAYER_TAR | DOCKER_LAYER_TAR => Some(LayerCompression::None),
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Some(LayerCompression::Gzip),
        OCI_LAYER_ZSTD => Some(LayerCompression::Zstd),
        _ => None,
    }
}

/// The OCI media type for a Docker one (the tools write OCI images: only
/// OCI descriptors carry the annotations lazy pulling needs).
pub fn to_oci(media_type: &str) -> &str {
    match media_type {
        DOCKER_LIST => OCI_INDEX,
        DOCKER_MANIFEST => OCI_MANIFEST,
        DOCKER_CONFIG => OCI_CONFIG,
        DOCKER_LAYER_GZIP => OCI_LAYER_GZIP,
        DOCKER_LAYER_TAR => OCI_LAYER_TAR,
        other => other,
    }
}

/// The media type of a document: its `mediaType` field, else what it was
/// served as.
pub fn media_type_of(doc: &serde_json::Value, served_as: &str) -> String {
    doc.get("mediaType")
        .and_then(|v| v.as_str())
        .unwrap_or(served_as)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_keep_unknown_fields() {
        let json = r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":7,"platform":{"os":"linux","architecture":"arm64"},"annotations":{"a":"b"}}"#;
        let d: Descriptor = serde_json::from_str(json).unwrap();
        assert_eq!(d.annotation("a"), Some("b"));
        let back: serde_json::Value = serde_json::to_value(&d).unwrap();
        assert_eq!(back["platform"]["architecture"], "arm64");
        assert_eq!(document_kind(&d.media_type), Some(DocumentKind::Manifest));
        assert_eq!(tar_layer(DOCKER_LAYER_GZIP), Some(LayerCompression::Gzip));
        assert_eq!(tar_layer("application/vnd.in-toto+json"), None);
    }
}
