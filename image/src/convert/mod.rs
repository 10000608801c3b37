//! `ringstar image convert`: an image (an index and every platform's
//! manifest, or one manifest) rewritten with eStargz layers, a config with
//! the new DiffIDs and manifests carrying the TOC digest and uncompressed
//! size annotations. Layers convert in parallel, each streamed from the
//! source into the target.
//!
//! Layout: this file walks the documents; `layer` does one layer;
//! `cache` records what was converted; `progress` is what a conversion
//! reports.

mod cache;
mod layer;
pub mod progress;

use std::sync::atomic::{AtomicUsize, Ordering};

use ringstar_core::writer::{OutputFormat, WriterOptions};

use crate::media::{
    Descriptor, DocumentKind, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, TOC_IMAGE_SUFFIX, document_kind,
};
use crate::store::{Document, ImageStore, RootRef};
use crate::{ImageError, MAX_CONFIG_SIZE, MAX_INDEX_DEPTH};
pub use cache::ConvertCache;
pub use layer::LayerOut;
use progress::Progress;

/// How to convert.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub writer: WriterOptions,
    /// Layers converted at once.
    pub jobs: usize,
    /// Where conversions are recorded, so that a layer converted before
    /// is not converted or sent again; `None`: always convert.
    pub cache: Option<ConvertCache>,
}

/// What a conversion made.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The new root document (index or manifest).
    pub root: Descriptor,
    /// Every manifest written, with its layers.
    pub manifests: Vec<(Descriptor, Vec<LayerOut>)>,
    /// With external TOCs: the TOC image (`TAG-esgztoc`).
    pub toc_image: Option<Descriptor>,
}

/// Converts the image `src_root` of `src` into `dst`, tagged `dst_tag`.
pub fn convert(
    src: &ImageStore,
    src_root: &RootRef,
    dst: &ImageStore,
    dst_tag: Option<&str>,
    opts: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<Converted, ImageError> {
    let doc = src.root(src_root)?;
    let mut walk = Walk {
        src,
        dst,
        opts,
        progress,
        layer_files: None,
        manifests: Vec::new(),
    };
    if opts.writer.format == OutputFormat::ExternalToc && dst_tag.is_none() {
        return Err(ImageError::Invalid(
            "an external TOC goes into DST's TAG-esgztoc image: DST needs a tag".into(),
        ));
    }
    let root = walk.document(&doc, dst_tag, 0)?;
    let toc_image = match dst_tag {
        Some(tag) if opts.writer.format == OutputFormat::ExternalToc => {
            Some(put_toc_image(dst, tag, &walk.manifests)?)
        }
        _ => None,
    };
    Ok(Converted {
        root,
        manifests: walk.manifests,
        toc_image,
    })
}

/// The TOC image of an external-TOC conversion, as the reference makes
/// it: one manifest (every platform's layers), an empty config, a layer
/// per TOC blob (sorted by digest) annotated with its layer's digest,
/// tagged `TAG-esgztoc`.
fn put_toc_image(
    dst: &ImageStore,
    tag: &str,
    manifests: &[(Descriptor, Vec<LayerOut>)],
) -> Result<Descriptor, ImageError> {
    let mut tocs: Vec<&Descriptor> = manifests
        .iter()
        .flat_map(|(_, layers)| layers.iter().filter_map(|l| l.external_toc.as_ref()))
        .collect();
    tocs.sort_by_key(|d| d.digest.to_string());
    tocs.dedup_by_key(|d| d.digest);
    let config = b"{}";
    let config_digest = dst.put_blob(config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: config_digest,
            size: config.len() as u64,
            annotations: Default::default(),
            rest: Default::default(),
        },
        "layers": tocs,
    });
    let bytes = serde_json::to_vec(&manifest)?;
    dst.put_document(
        &bytes,
        OCI_MANIFEST,
        Some(&format!("{tag}{TOC_IMAGE_SUFFIX}")),
    )
}

/// Converts the one manifest `doc` of `src` into `dst` (tagged
/// `dst_tag`), with `layer_files[i]` first in layer `i` (then the
/// prefetch landmark): what `ringstar image optimize` recorded. Every
/// layer is rewritten, eStargz ones too, since its order changes.
pub fn convert_manifest_prioritized(
    src: &ImageStore,
    doc: &Document,
    dst: &ImageStore,
    dst_tag: Option<&str>,
    opts: &ConvertOptions,
    progress: &dyn Progress,
    layer_files: &[Vec<String>],
) -> Result<(Descriptor, Vec<LayerOut>), ImageError> {
    let walk = Walk {
        src,
        dst,
        opts,
        progress,
        layer_files: Some(layer_files),
        manifests: Vec::new(),
    };
    walk.manifest(doc, dst_tag)
}

/// One conversion's walk over the documents: where from, where to, how,
/// and the manifests written so far.
struct Walk<'a> {
    src: &'a ImageStore,
    dst: &'a ImageStore,
    opts: &'a ConvertOptions,
    progress: &'a dyn Progress,
    /// The files to put first in each layer of the (one) manifest, when
    /// they were recorded; otherwise `opts.writer.prioritized` for all.
    layer_files: Option<&'a [Vec<String>]>,
    manifests: Vec<(Descriptor, Vec<LayerOut>)>,
}

impl Walk<'_> {
    fn document(
        &mut self,
        doc: &Document,
        tag: Option<&str>,
        depth: usize,
    ) -> Result<Descriptor, ImageError> {
        match document_kind(&doc.media_type) {
            Some(DocumentKind::Manifest) => {
                let (desc, layers) = self.manifest(doc, tag)?;
                self.manifests.push((desc.clone(), layers));
                Ok(desc)
            }
            Some(DocumentKind::Index) if depth < MAX_INDEX_DEPTH => self.index(doc, tag, depth),
            Some(DocumentKind::Index) => Err(ImageError::Invalid(format!(
                "indexes nested more than {MAX_INDEX_DEPTH} deep"
            ))),
            None => Err(ImageError::Invalid(format!(
                "{}: {:?} is not an image manifest or index",
                doc.digest, doc.media_type
            ))),
        }
    }

    /// Every manifest an index lists converted (other documents, such as
    /// artifacts, copied as they are), and the index rewritten to them.
    fn index(
        &mut self,
        doc: &Document,
        tag: Option<&str>,
        depth: usize,
    ) -> Result<Descriptor, ImageError> {
        let (src, dst) = (self.src, self.dst);
        let mut index: serde_json::Value = serde_json::from_slice(&doc.bytes)?;
        let listed: Vec<Descriptor> =
            serde_json::from_value(index.get("manifests").cloned().unwrap_or_default())?;
        let mut new = Vec::with_capacity(listed.len());
        for d in listed {
            let child = src.document(&d)?;
            let converted = if document_kind(&child.media_type).is_some() {
                self.document(&child, None, depth + 1)?
            } else {
                // Not an image (an artifact): stored as it is, by digest.
                dst.put_document(&child.bytes, &child.media_type, None)?;
                d.clone()
            };
            // The index's own fields for the entry (platform, annotations)
            // stay; what it points at changes.
            new.push(Descriptor {
                media_type: converted.media_type,
                digest: converted.digest,
                size: converted.size,
                ..d
            });
        }
        index["manifests"] = serde_json::to_value(new)?;
        index["mediaType"] = OCI_INDEX.into();
        let bytes = serde_json::to_vec(&index)?;
        dst.put_document(&bytes, OCI_INDEX, tag)
    }

    /// A manifest's layers converted in parallel (at most `opts.jobs` at a
    /// time, in index order), its config rewritten with the new DiffIDs.
    fn manifest(
        &self,
        doc: &Document,
        tag: Option<&str>,
    ) -> Result<(Descriptor, Vec<LayerOut>), ImageError> {
        let (src, dst) = (self.src, self.dst);
        let mut manifest: serde_json::Value = serde_json::from_slice(&doc.bytes)?;
        let config: Descriptor =
            serde_json::from_value(manifest.get("config").cloned().unwrap_or_default())?;
        let layers: Vec<Descriptor> =
            serde_json::from_value(manifest.get("layers").cloned().unwrap_or_default())?;
        let plans: Vec<layer::LayerPlan> = match self.layer_files {
            Some(files) if files.len() != layers.len() => {
                return Err(ImageError::Invalid(format!(
                    "{} lists of files for {} layers",
                    files.len(),
                    layers.len()
                )));
            }
            Some(files) => files
                .iter()
                .map(|f| layer::LayerPlan {
                    writer: WriterOptions {
                        prioritized: f.clone(),
                        allow_missing_prioritized: true,
                        ..self.opts.writer.clone()
                    },
                    rewrite_estargz: true,
                })
                .collect(),
            None => vec![
                layer::LayerPlan {
                    writer: self.opts.writer.clone(),
                    rewrite_estargz: false,
                };
                layers.len()
            ],
        };
        let converted = convert_layers(src, dst, &layers, &plans, self.opts, self.progress)?;

        let mut cfg: serde_json::Value =
            serde_json::from_slice(&src.blob_bytes(&config.digest, MAX_CONFIG_SIZE)?)?;
        let diff_ids = cfg
            .pointer_mut("/rootfs/diff_ids")
            .and_then(|v| v.as_array_mut())
            .ok_or_else(|| {
                ImageError::Invalid(format!("config {}: no rootfs.diff_ids", config.digest))
            })?;
        if diff_ids.len() != converted.len() {
            return Err(ImageError::Invalid(format!(
                "config {} lists {} DiffIDs for {} layers",
                config.digest,
                diff_ids.len(),
                converted.len()
            )));
        }
        for (slot, l) in diff_ids.iter_mut().zip(&converted) {
            if let Some(d) = l.diff_id {
                *slot = d.to_string().into();
            }
        }
        let cfg_bytes = serde_json::to_vec(&cfg)?;
        let cfg_digest = dst.put_blob(&cfg_bytes)?;
        manifest["config"] = serde_json::to_value(Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: cfg_digest,
            size: cfg_bytes.len() as u64,
            ..config
        })?;
        manifest["layers"] =
            serde_json::to_value(converted.iter().map(|l| &l.descriptor).collect::<Vec<_>>())?;
        manifest["mediaType"] = OCI_MANIFEST.into();
        let bytes = serde_json::to_vec(&manifest)?;
        let desc = dst.put_document(&bytes, OCI_MANIFEST, tag)?;
        Ok((desc, converted))
    }
}

/// Each layer converted on one of `opts.jobs` threads, taking layers in
/// order; the first failure is returned (the others finish first).
fn convert_layers(
    src: &ImageStore,
    dst: &ImageStore,
    layers: &[Descriptor],
    plans: &[layer::LayerPlan],
    opts: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<Vec<LayerOut>, ImageError> {
    let next = AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<LayerOut, ImageError>>>> =
        layers.iter().map(|_| Default::default()).collect();
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, layers.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(layer) = layers.get(i) else { return };
                    let r = layer::convert_layer(src, dst, i, layer, &plans[i], opts, progress);
                    let failed = r.is_err();
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                    if failed {
                        // No new layers once one failed.
                        next.store(layers.len(), Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    let mut out = Vec::with_capacity(layers.len());
    for (i, slot) in results.into_iter().enumerate() {
        match slot.into_inner().ok().flatten() {
            Some(r) => out.push(r?),
            None => {
                return Err(ImageError::Invalid(format!(
                    "layer {i} was not converted (another failed first)"
                )));
            }
        }
    }
    Ok(out)
}
