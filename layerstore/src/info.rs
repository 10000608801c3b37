//! A layer's `info` file: the JSON containers/storage decodes into its
//! `Layer` record (`layers.go`), with the fields an additional layer
//! store is expected to fill. `id`, `parent` and `created` are set by
//! containers/storage itself.

use ringstar_core::Digest;
use ringstar_image::media::LayerCompression;
use serde::{Deserialize, Serialize};

/// The fields of `info`, named as containers/storage names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// The blob's digest: the one asked for.
    #[serde(rename = "compressed-diff-digest")]
    pub compressed_diff_digest: Digest,
    #[serde(rename = "compressed-size")]
    pub compressed_size: u64,
    /// The DiffID: containers/storage derives layer ids from it, and
    /// push and save find the layer by it.
    #[serde(rename = "diff-digest")]
    pub diff_digest: Digest,
    /// The tar's size, when the manifest says
    /// (`io.containers.estargz.uncompressed-size`).
    #[serde(rename = "diff-size", skip_serializing_if = "Option::is_none")]
    pub diff_size: Option<u64>,
    /// containers/storage's `archive.Compression`.
    pub compression: u8,
}

impl LayerInfo {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("info is plain JSON")
    }
}

/// containers/storage's numbering (`pkg/archive`): 0 none, 1 bzip2,
/// 2 gzip, 3 xz, 4 zstd.
pub fn compression_code(c: LayerCompression) -> u8 {
    match c {
        LayerCompression::None => 0,
        LayerCompression::Gzip => 2,
        LayerCompression::Zstd => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_is_what_containers_storage_decodes() {
        let info = LayerInfo {
            compressed_diff_digest: Digest::of(b"blob"),
            compressed_size: 4,
            diff_digest: Digest::of(b"tar"),
            diff_size: Some(1024),
            compression: compression_code(LayerCompression::Gzip),
        };
        let v: serde_json::Value = serde_json::from_slice(&info.to_json()).unwrap();
        assert_eq!(v["compressed-diff-digest"], Digest::of(b"blob").to_string());
        assert_eq!(v["compressed-size"], 4);
        assert_eq!(v["diff-digest"], Digest::of(b"tar").to_string());
        assert_eq!(v["diff-size"], 1024);
        assert_eq!(v["compression"], 2);
        let no_size = LayerInfo {
            diff_size: None,
            ..info
        };
        let v: serde_json::Value = serde_json::from_slice(&no_size.to_json()).unwrap();
        assert!(v.get("diff-size").is_none(), "unknown: left out");
        assert_eq!(compression_code(LayerCompression::Zstd), 4);
        assert_eq!(compression_code(LayerCompression::None), 0);
    }
}
