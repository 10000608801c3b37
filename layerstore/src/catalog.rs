//! Which layers the store offers: for an image reference and a layer
//! digest (what a store path names), the layer's source (where its blob
//! is, its size and TOC digest) and the `info` containers/storage reads,
//! from the image's manifest and config.
//!
//! Manifests and configs are cached per reference for a while (one pull
//! asks about each layer of an image in turn). Layers once offered are
//! kept on disk (`ROOT/als/layers/`): containers/storage bakes the store
//! path into its layer records, so the path must lead to the same layer
//! after a restart, or after the tag has moved on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringstar_core::Digest;
use ringstar_fetcher::{Fetcher, Reference, ResolverConfig};
use ringstar_image::media::{Descriptor, tar_layer};
use ringstar_image::platform::{host_platform, manifest_for};
use ringstar_image::{ImageError, ImageRef, ImageStore, MAX_CONFIG_SIZE};
use ringstar_layerfs::resolve::LayerSource;
use serde::{Deserialize, Serialize};

use crate::info::{LayerInfo, compression_code};

/// Why a layer is not offered (Podman then pulls it normally).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("image {reference}: {source}")]
    Image {
        reference: String,
        source: Box<ImageError>,
    },
    #[error("image reference {0:?}: {1}")]
    Reference(String, ringstar_fetcher::ParseReferenceError),
    #[error("image {reference}: no layer {digest}")]
    NotInImage { reference: String, digest: Digest },
    #[error("image {reference}: {reason}")]
    BadImage { reference: String, reason: String },
    #[error("layer {digest}: media type {media_type:?} is not a tar layer")]
    NotTar { digest: Digest, media_type: String },
    #[error("layer {digest}: no TOC digest annotation, and verification is required")]
    Unverifiable { digest: Digest },
    #[error("layer {digest}: size {size} is more than containers/storage can hold")]
    TooBig { digest: Digest, size: u64 },
}

/// One layer the store may offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerEntry {
    /// The reference as containers/storage gave it.
    pub reference: String,
    pub digest: Digest,
    pub size: u64,
    pub toc_digest: Option<Digest>,
    pub info: LayerInfo,
}

impl LayerEntry {
    /// Where the layer's blob comes from, as the layer plane resolves it.
    pub fn source(&self) -> Result<LayerSource, CatalogError> {
        let reference: Reference = self
            .reference
            .parse()
            .map_err(|e| CatalogError::Reference(self.reference.clone(), e))?;
        Ok(LayerSource {
            reference,
            digest: self.digest,
            size: Some(self.size),
            toc_digest: self.toc_digest,
        })
    }

    /// The key of (reference, digest): a file name.
    pub fn key(&self) -> String {
        key(&self.reference, &self.digest)
    }
}

fn key(reference: &str, digest: &Digest) -> String {
    let mut text = reference.as_bytes().to_vec();
    text.push(0);
    text.extend_from_slice(digest.to_string().as_bytes());
    Digest::of(&text).hex()[..40].to_string()
}

/// What an image's manifest and config say about its layers.
#[derive(Debug)]
struct ImageLayers {
    layers: Vec<(Descriptor, Digest)>,
}

/// How layers are verified: the TOC digest from the manifest, or
/// nothing when the config turns verification off (or allows layers
/// without the annotation).
#[derive(Debug, Clone, Copy)]
pub struct Verification {
    pub disable: bool,
    pub allow_missing: bool,
}

/// The layers asked about and those offered.
#[derive(Debug)]
pub struct Catalog {
    fetcher: Fetcher,
    resolver: ResolverConfig,
    verification: Verification,
    dir: PathBuf,
    images_ttl: Duration,
    images: Mutex<HashMap<String, (Instant, Arc<ImageLayers>)>>,
    /// Offered (kept on disk), by key.
    kept: Mutex<HashMap<String, Arc<LayerEntry>>>,
}

impl Catalog {
    /// Opens the catalog kept under `dir` (made if missing).
    pub fn open(
        dir: &Path,
        fetcher: Fetcher,
        resolver: ResolverConfig,
        verification: Verification,
        images_ttl: Duration,
    ) -> std::io::Result<Catalog> {
        std::fs::create_dir_all(dir)?;
        let mut kept = HashMap::new();
        for e in std::fs::read_dir(dir)? {
            let path = e?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&path).map(|b| serde_json::from_slice::<LayerEntry>(&b)) {
                Ok(Ok(entry)) => {
                    kept.insert(entry.key(), Arc::new(entry));
                }
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable layer record; skipped")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable layer record; skipped")
                }
            }
        }
        tracing::info!(layers = kept.len(), "layer records loaded");
        Ok(Catalog {
            fetcher,
            resolver,
            verification,
            dir: dir.to_path_buf(),
            images_ttl,
            images: Mutex::new(HashMap::new()),
            kept: Mutex::new(kept),
        })
    }

    /// A kept layer, without asking the registry.
    pub fn kept(&self, reference: &str, digest: &Digest) -> Option<Arc<LayerEntry>> {
        self.kept
            .lock()
            .expect("kept")
            .get(&key(reference, digest))
            .cloned()
    }

    /// Layer `digest` of image `reference`: kept, or from the image's
    /// manifest and config (fetched, or cached). Blocking.
    pub fn entry(&self, reference: &str, digest: &Digest) -> Result<Arc<LayerEntry>, CatalogError> {
        if let Some(e) = self.kept(reference, digest) {
            return Ok(e);
        }
        let image = self.image(reference)?;
        let (desc, diff_id) = image
            .layers
            .iter()
            .find(|(d, _)| d.digest == *digest)
            .ok_or_else(|| CatalogError::NotInImage {
                reference: reference.into(),
                digest: *digest,
            })?;
        layer_entry(reference, desc, *diff_id, self.verification).map(Arc::new)
    }

    /// The other layers of image `reference` (for resolving ahead), from
    /// the cache only.
    pub fn siblings(&self, reference: &str, digest: &Digest) -> Vec<LayerEntry> {
        let image = self
            .images
            .lock()
            .expect("images")
            .get(reference)
            .map(|(_, i)| i.clone());
        let Some(image) = image else {
            return Vec::new();
        };
        image
            .layers
            .iter()
            .filter(|(d, _)| d.digest != *digest)
            .filter_map(|(d, diff_id)| layer_entry(reference, d, *diff_id, self.verification).ok())
            .collect()
    }

    /// Records an offered layer on disk (once).
    pub fn keep(&self, entry: &Arc<LayerEntry>) {
        let k = entry.key();
        if self.kept.lock().expect("kept").contains_key(&k) {
            return;
        }
        if let Err(e) = self.write_record(&k, entry) {
            tracing::warn!(layer = %entry.digest, error = %e, "cannot keep the layer record; it is not known after a restart");
        }
        self.kept.lock().expect("kept").insert(k, entry.clone());
    }

    /// Forgets path `key` (its layer was released: nobody stored it), on
    /// disk too; a later lookup asks the registry again.
    pub fn forget(&self, key: &str) {
        self.kept.lock().expect("kept").remove(key);
        let path = self.dir.join(format!("{key}.json"));
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a layer record");
        }
    }

    fn write_record(&self, key: &str, entry: &LayerEntry) -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        serde_json::to_writer(&mut tmp, entry)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.dir.join(format!("{key}.json")))?;
        Ok(())
    }

    /// The layers of image `reference`, cached for the TTL.
    fn image(&self, reference: &str) -> Result<Arc<ImageLayers>, CatalogError> {
        if let Some((at, image)) = self.images.lock().expect("images").get(reference)
            && at.elapsed() < self.images_ttl
        {
            return Ok(image.clone());
        }
        let image = Arc::new(self.fetch_image(reference)?);
        let mut images = self.images.lock().expect("images");
        images.retain(|_, (at, _)| at.elapsed() < self.images_ttl);
        images.insert(reference.into(), (Instant::now(), image.clone()));
        Ok(image)
    }

    fn fetch_image(&self, reference: &str) -> Result<ImageLayers, CatalogError> {
        let wrap = |e: ImageError| CatalogError::Image {
            reference: reference.into(),
            source: Box::new(e),
        };
        let parsed: Reference = reference
            .parse()
            .map_err(|e| CatalogError::Reference(reference.into(), e))?;
        let (store, root) = ImageStore::open(
            &ImageRef::Registry(parsed),
            &self.fetcher,
            &self.resolver,
            false,
        )
        .map_err(wrap)?;
        let top = store.root(&root).map_err(wrap)?;
        let manifest = manifest_for(&store, &top, &host_platform()).map_err(wrap)?;
        let m: ManifestConfig =
            serde_json::from_slice(&manifest.bytes).map_err(|e| CatalogError::BadImage {
                reference: reference.into(),
                reason: e.to_string(),
            })?;
        let config = store
            .blob_bytes(&m.config.digest, MAX_CONFIG_SIZE)
            .map_err(wrap)?;
        let layers =
            image_layers(&manifest.bytes, &config).map_err(|e| CatalogError::BadImage {
                reference: reference.into(),
                reason: e.0,
            })?;
        Ok(ImageLayers { layers })
    }
}

/// Why a manifest and config do not describe an image's layers.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ImageLayersError(pub String);

/// Each layer of a manifest with its DiffID from the config, base first.
pub fn image_layers(
    manifest: &[u8],
    config: &[u8],
) -> Result<Vec<(Descriptor, Digest)>, ImageLayersError> {
    let bad = |e: serde_json::Error| ImageLayersError(e.to_string());
    let m: ManifestLayers = serde_json::from_slice(manifest).map_err(bad)?;
    let c: ConfigRootfs = serde_json::from_slice(config).map_err(bad)?;
    if c.rootfs.diff_ids.len() != m.layers.len() {
        return Err(ImageLayersError(format!(
            "{} layers but {} diff_ids",
            m.layers.len(),
            c.rootfs.diff_ids.len()
        )));
    }
    Ok(m.layers.into_iter().zip(c.rootfs.diff_ids).collect())
}

/// The entry of layer `desc` (DiffID `diff_id`) of image `reference`:
/// its TOC digest from the manifest's annotations, its `info`.
pub fn layer_entry(
    reference: &str,
    desc: &Descriptor,
    diff_id: Digest,
    verification: Verification,
) -> Result<LayerEntry, CatalogError> {
    let compression = tar_layer(&desc.media_type).ok_or_else(|| CatalogError::NotTar {
        digest: desc.digest,
        media_type: desc.media_type.clone(),
    })?;
    let toc_digest = [
        ringstar_image::TOC_DIGEST_ANNOTATION,
        ringstar_image::media::ZSTD_CHUNKED_CHECKSUM_ANNOTATION,
    ]
    .iter()
    .find_map(|k| desc.annotation(k)?.parse::<Digest>().ok());
    let toc_digest = match (verification, toc_digest) {
        (Verification { disable: true, .. }, _) => None,
        (_, Some(t)) => Some(t),
        (
            Verification {
                allow_missing: true,
                ..
            },
            None,
        ) => None,
        (_, None) => {
            return Err(CatalogError::Unverifiable {
                digest: desc.digest,
            });
        }
    };
    // containers/storage decodes sizes into int64: a bigger one would
    // fail the whole pull instead of this layer.
    if i64::try_from(desc.size).is_err() {
        return Err(CatalogError::TooBig {
            digest: desc.digest,
            size: desc.size,
        });
    }
    let diff_size = desc
        .annotation(ringstar_image::UNCOMPRESSED_SIZE_ANNOTATION)
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|n| u64::try_from(n).ok());
    Ok(LayerEntry {
        reference: reference.into(),
        digest: desc.digest,
        size: desc.size,
        toc_digest,
        info: LayerInfo {
            compressed_diff_digest: desc.digest,
            compressed_size: desc.size,
            diff_digest: diff_id,
            diff_size,
            compression: compression_code(compression),
        },
    })
}

#[derive(Deserialize)]
struct ManifestConfig {
    config: Descriptor,
}

#[derive(Deserialize)]
struct ManifestLayers {
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: Rootfs,
}

#[derive(Deserialize)]
struct Rootfs {
    diff_ids: Vec<Digest>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(layers: &[serde_json::Value]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": Digest::of(b"c").to_string(), "size": 1},
            "layers": layers,
        }))
        .unwrap()
    }

    fn layer(blob: &[u8], annotations: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": Digest::of(blob).to_string(),
            "size": blob.len(),
            "annotations": annotations,
        })
    }

    fn config(diff_ids: &[&[u8]]) -> Vec<u8> {
        let ids: Vec<String> = diff_ids.iter().map(|d| Digest::of(d).to_string()).collect();
        serde_json::to_vec(&serde_json::json!({"rootfs": {"type": "layers", "diff_ids": ids}}))
            .unwrap()
    }

    const VERIFY: Verification = Verification {
        disable: false,
        allow_missing: false,
    };

    #[test]
    fn layers_pair_with_their_diff_ids_and_mismatches_are_refused() {
        let toc = Digest::of(b"toc").to_string();
        let m = manifest(&[
            layer(
                b"a",
                serde_json::json!({ringstar_image::TOC_DIGEST_ANNOTATION: toc,
                   ringstar_image::UNCOMPRESSED_SIZE_ANNOTATION: "4096"}),
            ),
            layer(b"b", serde_json::json!({})),
        ]);
        let layers = image_layers(&m, &config(&[b"ta", b"tb"])).unwrap();
        assert_eq!(layers[1].1, Digest::of(b"tb"));
        assert!(
            image_layers(&m, &config(&[b"ta"])).is_err(),
            "one DiffID short"
        );
        assert!(image_layers(b"{}", &config(&[])).is_err());

        let e = layer_entry("r/x:1", &layers[0].0, layers[0].1, VERIFY).unwrap();
        assert_eq!(e.toc_digest, Some(Digest::of(b"toc")));
        assert_eq!(e.info.diff_size, Some(4096));
        assert_eq!(e.info.diff_digest, Digest::of(b"ta"));
        assert_eq!(e.info.compression, 2);
        // No TOC digest: not offered unless the config allows it.
        assert!(matches!(
            layer_entry("r/x:1", &layers[1].0, layers[1].1, VERIFY),
            Err(CatalogError::Unverifiable { .. })
        ));
        let lax = Verification {
            allow_missing: true,
            ..VERIFY
        };
        let e = layer_entry("r/x:1", &layers[1].0, layers[1].1, lax).unwrap();
        assert_eq!((e.toc_digest, e.info.diff_size), (None, None));
        let off = Verification {
            disable: true,
            ..VERIFY
        };
        let e = layer_entry("r/x:1", &layers[0].0, layers[0].1, off).unwrap();
        assert_eq!(e.toc_digest, None, "verification off: nothing checked");

        // Sizes containers/storage cannot decode (int64) fail this layer,
        // not the pull: a size past i64 is not offered, a diff size past
        // it (or negative) is left out.
        let toc = serde_json::json!({ringstar_image::TOC_DIGEST_ANNOTATION: Digest::of(b"t").to_string(),
            ringstar_image::UNCOMPRESSED_SIZE_ANNOTATION: u64::MAX.to_string()});
        let mut huge = layers[0].0.clone();
        huge.annotations = toc.as_object().unwrap().clone();
        let e = layer_entry("r/x:1", &huge, layers[0].1, VERIFY).unwrap();
        assert_eq!(e.info.diff_size, None);
        huge.annotations.insert(
            ringstar_image::UNCOMPRESSED_SIZE_ANNOTATION.into(),
            "-5".into(),
        );
        assert_eq!(
            layer_entry("r/x:1", &huge, layers[0].1, VERIFY)
                .unwrap()
                .info
                .diff_size,
            None
        );
        huge.size = u64::MAX;
        assert!(matches!(
            layer_entry("r/x:1", &huge, layers[0].1, VERIFY),
            Err(CatalogError::TooBig { .. })
        ));
    }

    #[test]
    fn kept_layers_are_known_after_a_restart_without_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::new(Default::default()).unwrap();
        let open = || {
            Catalog::open(
                dir.path(),
                fetcher.clone(),
                ResolverConfig::default(),
                VERIFY,
                Duration::from_secs(60),
            )
            .unwrap()
        };
        let m = manifest(&[layer(
            b"a",
            serde_json::json!({ringstar_image::TOC_DIGEST_ANNOTATION: Digest::of(b"t").to_string()}),
        )]);
        let layers = image_layers(&m, &config(&[b"ta"])).unwrap();
        let entry =
            Arc::new(layer_entry("127.0.0.1:1/r:1", &layers[0].0, layers[0].1, VERIFY).unwrap());
        let catalog = open();
        assert!(catalog.kept("127.0.0.1:1/r:1", &Digest::of(b"a")).is_none());
        catalog.keep(&entry);
        std::fs::write(dir.path().join("junk.json"), b"{not a record").unwrap();
        let again = open();
        // Port 1 answers nothing: this comes from the record.
        let got = again.entry("127.0.0.1:1/r:1", &Digest::of(b"a")).unwrap();
        assert_eq!(*got, *entry);
        assert!(
            again
                .entry("127.0.0.1:1/r:1", &Digest::of(b"other"))
                .is_err()
        );
    }
}
