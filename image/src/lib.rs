//! ringstar-image: OCI images and the image tools.
//!
//! - [`media`]: media types and descriptors;
//! - [`layout`]: OCI image layouts on disk;
//! - [`store`]: where images are read and written (a registry through the
//!   fetcher, or a layout);
//! - [`convert`]: `ringstar image convert`, every layer of an image (every
//!   platform) to eStargz, streamed;
//! - [`optimize`]: `ringstar image optimize`, the workload run once under
//!   runc with its opens recorded, then convert with those files first;
//! - [`platform`]: which manifest of an index a tool works on;
//! - [`rpull`]: `ringstar image rpull`, an image pulled into containerd
//!   lazily through a remote snapshotter;
//! - this file: images built from layer tars (eStargz by our writer, or
//!   plain gzip) and pushed, for `ringstar push`, the demo, the tests and
//!   hellobench.

pub mod convert;
pub mod layout;
pub mod media;
pub mod optimize;
pub mod platform;
pub mod rpull;
pub mod store;

use std::io::Write;

use ringstar_core::Digest;
use ringstar_core::writer::{self, WriterOptions};

pub use media::{
    OCI_CONFIG as CONFIG_TYPE, OCI_LAYER_GZIP as LAYER_GZIP_TYPE, OCI_MANIFEST as MANIFEST_TYPE,
    TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION,
};
pub use store::{ImageRef, ImageStore, RootRef};

/// The largest manifest or index read (containerd's limit is the same).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;
/// The largest image config read.
pub const MAX_CONFIG_SIZE: usize = 16 << 20;
/// How deep indexes may nest.
pub const MAX_INDEX_DEPTH: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("layer {index}: {source}")]
    Write {
        index: usize,
        source: writer::WriteError,
    },
    #[error(transparent)]
    Fetch(#[from] ringstar_fetcher::FetchError),
    #[error("OCI layout {dir}: {reason}")]
    Layout {
        dir: std::path::PathBuf,
        reason: String,
    },
    #[error("{what} is larger than {max} bytes")]
    TooLarge { what: String, max: u64 },
    #[error("not found: {0}")]
    NotFound(String),
    /// The image is malformed, or a name does not parse.
    #[error("{0}")]
    Invalid(String),
    /// containerd refused a call, or could not be reached.
    #[error("containerd: {0}")]
    Containerd(String),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How layers are compressed.
#[derive(Debug, Clone)]
pub enum LayerFormat {
    /// eStargz by our writer, with these options (prioritized files).
    Estargz(WriterOptions),
    /// Plain gzip: what a non-lazy pull gets.
    Gzip,
}

/// One built layer.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub blob: Vec<u8>,
    pub digest: Digest,
    pub diff_id: Digest,
    pub toc_digest: Option<Digest>,
    pub uncompressed_size: u64,
}

/// An image ready to push: layers, config and manifest.
#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<BuiltLayer>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl Image {
    pub fn manifest_digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }
}

/// What the image runs.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
}

/// Builds layer `index` from a tar.
pub fn build_layer(
    index: usize,
    tar: &[u8],
    format: &LayerFormat,
) -> Result<BuiltLayer, ImageError> {
    match format {
        LayerFormat::Estargz(opts) => {
            let (blob, built) = writer::build_to_vec(tar, opts)
                .map_err(|source| ImageError::Write { index, source })?;
            Ok(BuiltLayer {
                digest: built.blob_digest,
                diff_id: built.diff_id,
                toc_digest: Some(built.toc_digest),
                uncompressed_size: built.uncompressed_size,
                blob,
            })
        }
        LayerFormat::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(tar)?;
            let blob = enc.finish()?;
            Ok(BuiltLayer {
                digest: Digest::of(&blob),
                diff_id: Digest::of(tar),
                toc_digest: None,
                uncompressed_size: tar.len() as u64,
                blob,
            })
        }
    }
}

/// Builds an image of `tars` (base first).
pub fn build_image(
    tars: &[Vec<u8>],
    format: &LayerFormat,
    run: &RunConfig,
) -> Result<Image, ImageError> {
    let layers = tars
        .iter()
        .enumerate()
        .map(|(i, t)| build_layer(i, t, format))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(assemble(layers, run))
}

/// An image of built layers (base first): its config and manifest.
pub fn assemble(layers: Vec<BuiltLayer>, run: &RunConfig) -> Image {
    let env = if run.env.is_empty() {
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()]
    } else {
        run.env.clone()
    };
    let mut cfg = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": { "Env": env, "Cmd": run.cmd },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        },
    });
    if let Some(w) = &run.working_dir {
        cfg["config"]["WorkingDir"] = w.clone().into();
    }
    let config = serde_json::to_vec(&cfg).expect("json");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "digest": Digest::of(&config).to_string(),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| {
            let mut d = serde_json::json!({
                "mediaType": LAYER_GZIP_TYPE,
                "digest": l.digest.to_string(),
                "size": l.blob.len(),
            });
            if let Some(t) = &l.toc_digest {
                d["annotations"] = serde_json::json!({
                    TOC_DIGEST_ANNOTATION: t.to_string(),
                    UNCOMPRESSED_SIZE_ANNOTATION: l.uncompressed_size.to_string(),
                });
            }
            d
        }).collect::<Vec<_>>(),
    });
    Image {
        layers,
        config,
        manifest: serde_json::to_vec(&manifest).expect("json"),
    }
}

/// Pushes `image` into `store` under `tag`: the blobs it lacks, then the
/// manifest. Returns the manifest's descriptor.
pub fn push_image(
    store: &ImageStore,
    image: &Image,
    tag: &str,
) -> Result<media::Descriptor, ImageError> {
    for blob in image
        .layers
        .iter()
        .map(|l| l.blob.as_slice())
        .chain(std::iter::once(image.config.as_slice()))
    {
        store.put_blob(blob)?;
    }
    store.put_document(&image.manifest, MANIFEST_TYPE, Some(tag))
}
