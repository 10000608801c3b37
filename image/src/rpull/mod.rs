//! `ringstar image rpull`: the containerd client side of a lazy pull, as
//! `ctr-remote image rpull` does it. The manifest and config go into
//! containerd's content store (with the GC labels a pull sets); each
//! layer is prepared through the snapshotter with the remote-snapshot
//! labels, so a lazy snapshotter mounts it and answers "already exists";
//! a layer it does not mount is fetched, applied by containerd's differ
//! and committed, as containerd's unpacker does; then the image record.
//! Everything happens under a lease, deleted at the end.
//!
//! Layout: this file is the pull's steps; `client` the containerd calls
//! (namespace and lease on every request, content writes).

mod client;

use std::collections::HashMap;

use ringstar_core::Digest;
use ringstar_fetcher::Reference;

use crate::media::{Descriptor, TOC_DIGEST_ANNOTATION};
use crate::store::{Document, ImageStore, RootRef};
use crate::{ImageError, MAX_CONFIG_SIZE};
use client::Containerd;

/// The labels a remote Prepare carries (the reference's names).
pub mod labels {
    pub const TARGET: &str = "containerd.io/snapshot.ref";
    pub const STARGZ_REF: &str = "containerd.io/snapshot/remote/stargz.reference";
    pub const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
    pub const STARGZ_LAYERS: &str = "containerd.io/snapshot/remote/stargz.layers";
    /// Annotations under this prefix pass to the snapshotter as labels.
    pub const INHERITED: &str = "containerd.io/snapshot/";
    /// containerd's limit on a label's key and value together.
    pub const MAX_LABEL: usize = 4096;
}

/// Where and how to pull.
#[derive(Debug, Clone)]
pub struct RpullOptions {
    /// containerd's socket.
    pub address: std::path::PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    /// `os/architecture` to pick from an index.
    pub platform: String,
}

/// What a pull did with each layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledLayer {
    pub digest: Digest,
    pub chain_id: Digest,
    /// Mounted by the snapshotter (lazily), or already there.
    pub remote: bool,
}

#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image record's name.
    pub name: String,
    pub target: Descriptor,
    pub layers: Vec<PulledLayer>,
}

/// The chain IDs of `diff_ids` (image-spec: the first is its DiffID, each
/// next the digest of "<previous chain ID> <DiffID>").
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => *d,
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The labels of layer `i`'s Prepare: its inherited annotations, the
/// snapshot it becomes, and the remote-snapshot labels naming the image,
/// the layer and the layers from it on (as many as fit in a label).
pub fn prepare_labels(
    reference: &str,
    layers: &[Descriptor],
    i: usize,
    chain_id: &Digest,
) -> HashMap<String, String> {
    let layer = &layers[i];
    let mut out: HashMap<String, String> = layer
        .annotations
        .iter()
        .filter(|(k, _)| k.starts_with(labels::INHERITED))
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    out.insert(labels::TARGET.into(), chain_id.to_string());
    out.insert(labels::STARGZ_REF.into(), reference.to_string());
    out.insert(labels::STARGZ_DIGEST.into(), layer.digest.to_string());
    let mut joined = String::new();
    for l in &layers[i..] {
        let d = l.digest.to_string();
        let extra = d.len() + usize::from(!joined.is_empty());
        if labels::STARGZ_LAYERS.len() + joined.len() + extra > labels::MAX_LABEL {
            break;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(&d);
    }
    out.insert(labels::STARGZ_LAYERS.into(), joined);
    out
}

/// Pulls `reference` (its root `root` in `src`) into containerd lazily.
pub fn rpull(
    src: &ImageStore,
    reference: &Reference,
    root: &RootRef,
    opts: &RpullOptions,
) -> Result<Pulled, ImageError> {
    let root_doc = src.root(root)?;
    let manifest_doc = crate::platform::manifest_for(src, &root_doc, &opts.platform)?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_doc.bytes)?;
    let config: Descriptor =
        serde_json::from_value(manifest.get("config").cloned().unwrap_or_default())?;
    let layers: Vec<Descriptor> =
        serde_json::from_value(manifest.get("layers").cloned().unwrap_or_default())?;
    let config_bytes = src.blob_bytes(&config.digest, MAX_CONFIG_SIZE)?;
    let cfg: serde_json::Value = serde_json::from_slice(&config_bytes)?;
    let diff_ids: Vec<Digest> =
        serde_json::from_value(cfg.pointer("/rootfs/diff_ids").cloned().unwrap_or_default())?;
    if diff_ids.len() != layers.len() {
        return Err(ImageError::Invalid(format!(
            "config {} lists {} DiffIDs for {} layers",
            config.digest,
            diff_ids.len(),
            layers.len()
        )));
    }
    let name = reference.to_string();
    let target = Descriptor {
        media_type: root_doc.media_type.clone(),
        digest: root_doc.digest,
        size: root_doc.bytes.len() as u64,
        annotations: Default::default(),
        rest: Default::default(),
    };
    let plan = Plan {
        name: &name,
        root: &root_doc,
        manifest: &manifest_doc,
        config: &config,
        config_bytes: &config_bytes,
        layers: &layers,
        diff_ids: &diff_ids,
    };
    let pulled = Containerd::run(opts, |c| async move { c.pull(src, &plan).await })?;
    for l in &layers {
        if l.annotation(TOC_DIGEST_ANNOTATION).is_none() {
            tracing::info!(layer = %l.digest, "not eStargz: pulled whole");
        }
    }
    Ok(Pulled {
        name,
        target,
        layers: pulled,
    })
}

/// What a pull writes: the documents as fetched, the layers and DiffIDs.
pub(crate) struct Plan<'a> {
    pub name: &'a str,
    pub root: &'a Document,
    pub manifest: &'a Document,
    pub config: &'a Descriptor,
    pub config_bytes: &'a [u8],
    pub layers: &'a [Descriptor],
    pub diff_ids: &'a [Digest],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a: Digest = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .parse()
            .unwrap();
        let b: Digest = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
            .parse()
            .unwrap();
        let c = chain_ids(&[a, b]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], Digest::of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn the_layers_label_stays_within_containerds_limit() {
        let layers: Vec<Descriptor> = (0..100u32)
            .map(|i| Descriptor {
                media_type: crate::media::OCI_LAYER_GZIP.into(),
                digest: Digest::of(&i.to_le_bytes()),
                size: 1,
                annotations: [(TOC_DIGEST_ANNOTATION.to_string(), "sha256:x".into())]
                    .into_iter()
                    .collect(),
                rest: Default::default(),
            })
            .collect();
        let l = prepare_labels("r/x:y", &layers, 3, &Digest::of(b"c"));
        let joined = &l[labels::STARGZ_LAYERS];
        assert!(labels::STARGZ_LAYERS.len() + joined.len() <= labels::MAX_LABEL);
        assert!(joined.starts_with(&layers[3].digest.to_string()));
        assert_eq!(l[TOC_DIGEST_ANNOTATION], "sha256:x");
        assert_eq!(l[labels::TARGET], Digest::of(b"c").to_string());
    }
}
