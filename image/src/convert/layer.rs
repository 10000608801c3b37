//! One layer: kept as it is (eStargz already, or not a tar), found
//! converted before, or converted by streaming it from the source through
//! the writer into the target (never held whole).

use std::sync::Mutex;

use ringstar_core::Digest;
use ringstar_core::writer::{self, WriterOptions};

use super::ConvertOptions;
use super::cache::Record;
use super::progress::{Counted, LayerOutcome, LayerProgress, Progress};
use crate::ImageError;
use crate::media::{
    Descriptor, LAYER_DIGEST_ANNOTATION, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION, ZSTD_CHUNKED_CHECKSUM_ANNOTATION,
    ZSTD_CHUNKED_POSITION_ANNOTATION, tar_layer, to_oci,
};
use crate::store::ImageStore;

/// A layer of the new manifest.
#[derive(Debug, Clone)]
pub struct LayerOut {
    pub descriptor: Descriptor,
    /// Its new DiffID, when it changed.
    pub diff_id: Option<Digest>,
    /// With an external TOC: the TOC blob (stored in the target), for the
    /// TOC image.
    pub external_toc: Option<Descriptor>,
}

/// How one layer is written.
#[derive(Debug, Clone)]
pub(super) struct LayerPlan {
    pub writer: WriterOptions,
    /// Rewrite a layer that is eStargz already (its order changes).
    pub rewrite_estargz: bool,
}

/// Why a layer is kept as it is, if it is.
fn kept_because(layer: &Descriptor, plan: &LayerPlan) -> Option<&'static str> {
    if tar_layer(&layer.media_type).is_none() {
        return Some("not a tar layer");
    }
    if layer.annotation(TOC_DIGEST_ANNOTATION).is_some() && !plan.rewrite_estargz {
        return Some("already eStargz");
    }
    None
}

/// The descriptor of `layer` converted as `r` says.
fn converted_descriptor(layer: &Descriptor, r: &Record) -> Descriptor {
    let mut descriptor = layer.clone();
    descriptor.media_type = OCI_LAYER_GZIP.to_string();
    // Annotations of the source's own format do not describe the new blob.
    descriptor
        .annotations
        .remove(ZSTD_CHUNKED_CHECKSUM_ANNOTATION);
    descriptor
        .annotations
        .remove(ZSTD_CHUNKED_POSITION_ANNOTATION);
    if let Some((checksum, position)) = &r.zstd_chunked {
        descriptor.media_type = OCI_LAYER_ZSTD.to_string();
        descriptor.annotations.insert(
            ZSTD_CHUNKED_CHECKSUM_ANNOTATION.into(),
            checksum.to_string().into(),
        );
        descriptor.annotations.insert(
            ZSTD_CHUNKED_POSITION_ANNOTATION.into(),
            position.clone().into(),
        );
    }
    descriptor.digest = r.digest;
    descriptor.size = r.size;
    descriptor.annotations.insert(
        TOC_DIGEST_ANNOTATION.into(),
        r.toc_digest.to_string().into(),
    );
    descriptor.annotations.insert(
        UNCOMPRESSED_SIZE_ANNOTATION.into(),
        r.uncompressed_size.to_string().into(),
    );
    descriptor
}

/// Converts (or keeps, or reuses) layer `index`.
pub(super) fn convert_layer(
    src: &ImageStore,
    dst: &ImageStore,
    index: usize,
    layer: &Descriptor,
    plan: &LayerPlan,
    opts: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<LayerOut, ImageError> {
    let mut p = progress.layer_started(index, &layer.digest, layer.size);
    if tar_layer(&layer.media_type).is_some()
        && let Some(r) = opts
            .cache
            .as_ref()
            .and_then(|c| c.get(&layer.digest, &plan.writer))
        && dst.has_blob(&r.digest)?
    {
        p.finish(&LayerOutcome::Reused { digest: r.digest });
        return Ok(LayerOut {
            descriptor: converted_descriptor(layer, &r),
            diff_id: Some(r.diff_id),
            external_toc: None,
        });
    }
    if let Some(why) = kept_because(layer, plan) {
        return keep_layer(src, dst, layer, why, p);
    }
    stream_layer(src, dst, index, layer, plan, opts, p)
}

/// A layer kept as it is: made present in the target (unless it is not
/// ours to copy), its media type made OCI's.
fn keep_layer(
    src: &ImageStore,
    dst: &ImageStore,
    layer: &Descriptor,
    why: &'static str,
    mut p: Box<dyn LayerProgress>,
) -> Result<LayerOut, ImageError> {
    let copy =
        if layer.media_type.contains("nondistributable") || layer.media_type.contains("foreign") {
            // Fetched from its URLs by whoever pulls it.
            crate::store::Copied::Present
        } else {
            dst.copy_blob(src, &layer.digest)?
        };
    p.finish(&LayerOutcome::Kept { why, copy });
    let mut descriptor = layer.clone();
    descriptor.media_type = to_oci(&layer.media_type).to_string();
    Ok(LayerOut {
        descriptor,
        diff_id: None,
        external_toc: None,
    })
}

/// A layer converted from the source's stream into the target's upload,
/// and recorded.
fn stream_layer(
    src: &ImageStore,
    dst: &ImageStore,
    index: usize,
    layer: &Descriptor,
    plan: &LayerPlan,
    opts: &ConvertOptions,
    p: Box<dyn LayerProgress>,
) -> Result<LayerOut, ImageError> {
    let progress = Mutex::new(p);
    let mut opens = 0;
    let open = || {
        if opens > 0
            && let Ok(mut p) = progress.lock()
        {
            p.restart();
        }
        opens += 1;
        src.open_blob(&layer.digest)
            .map(|inner| Counted {
                inner,
                progress: &progress,
            })
            .map_err(std::io::Error::other)
    };
    let mut sink = dst.blob_sink()?;
    let built = writer::build_from(open, &mut sink, &plan.writer)
        .map_err(|source| ImageError::Write { index, source })?;
    let (digest, size) = sink.finish()?;
    if digest != built.blob_digest || size != built.blob_size {
        return Err(ImageError::Invalid(format!(
            "layer {index}: the target stored {digest} ({size} bytes), the writer wrote {} ({} bytes)",
            built.blob_digest, built.blob_size
        )));
    }
    let record = Record {
        digest,
        size,
        toc_digest: built.toc_digest,
        diff_id: built.diff_id,
        uncompressed_size: built.uncompressed_size,
        zstd_chunked: built
            .zstd_chunked
            .as_ref()
            .map(|z| (z.checksum, z.position.clone())),
    };
    // An external TOC's blob is not recorded: such layers convert again.
    if let Some(c) = &opts.cache
        && built.external_toc.is_none()
    {
        c.put(&layer.digest, &plan.writer, &record);
    }
    let descriptor = converted_descriptor(layer, &record);
    let external_toc = match &built.external_toc {
        Some(toc) => Some(Descriptor {
            media_type: OCI_LAYER_GZIP.into(),
            digest: dst.put_blob(toc)?,
            size: toc.len() as u64,
            annotations: [(
                LAYER_DIGEST_ANNOTATION.to_string(),
                digest.to_string().into(),
            )]
            .into_iter()
            .collect(),
            rest: Default::default(),
        }),
        None => None,
    };
    if let Ok(mut p) = progress.lock() {
        p.finish(&LayerOutcome::Converted { digest, size });
    }
    Ok(LayerOut {
        descriptor,
        diff_id: Some(built.diff_id),
        external_toc,
    })
}
