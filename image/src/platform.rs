//! Which manifest of an image a tool works on: the one for a platform
//! (`os/architecture`), this machine's unless told otherwise.

use crate::ImageError;
use crate::media::{Descriptor, DocumentKind, document_kind};
use crate::store::{Document, ImageStore};

/// This machine's platform, as OCI names it.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("linux/{arch}")
}

/// The manifest for `platform` of an index (the first that matches).
pub fn pick_manifest(index: &Document, platform: &str) -> Result<Descriptor, ImageError> {
    let v: serde_json::Value = serde_json::from_slice(&index.bytes)?;
    let listed: Vec<Descriptor> =
        serde_json::from_value(v.get("manifests").cloned().unwrap_or_default())?;
    let (os, arch) = platform.split_once('/').unwrap_or(("linux", platform));
    listed
        .into_iter()
        .find(|d| {
            let p = d.rest.get("platform");
            let field = |k: &str| p.and_then(|p| p.get(k)).and_then(|v| v.as_str());
            field("os") == Some(os) && field("architecture") == Some(arch)
        })
        .ok_or_else(|| {
            ImageError::NotFound(format!("a {platform} manifest in index {}", index.digest))
        })
}

/// The manifest `root` is, or the one it lists for `platform`.
pub fn manifest_for(
    src: &ImageStore,
    root: &Document,
    platform: &str,
) -> Result<Document, ImageError> {
    match document_kind(&root.media_type) {
        Some(DocumentKind::Manifest) => Ok(root.clone()),
        Some(DocumentKind::Index) => src.document(&pick_manifest(root, platform)?),
        None => Err(ImageError::Invalid(format!(
            "{}: {:?} is not an image",
            root.digest, root.media_type
        ))),
    }
}
