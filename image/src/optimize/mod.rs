//! `ringstar image optimize`: the image's workload run once in a sandbox,
//! the files it opens recorded in order, and the image converted with
//! those files first in their layers, then the prefetch landmark.
//!
//! The layers are unpacked into a scratch directory, which becomes the
//! lower layer of an overlay with a throwaway upper: what the workload
//! writes stays in the scratch directory and is deleted with it (the
//! conversion reads the source's layers, never the root it ran on).
//! runc runs the workload (`sandbox`), fanotify records its opens
//! (`record`), each file is attributed to the topmost layer holding it
//! (`unpack`), and `convert` writes the layers.

mod record;
mod sandbox;
mod unpack;
mod workload;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sandbox::{RunEnd, SandboxOptions, Workload};
pub use workload::WorkloadOverrides;

use crate::convert::progress::Progress;
use crate::convert::{ConvertOptions, LayerOut, convert_manifest_prioritized};
use crate::media::{Descriptor, tar_layer};
use crate::store::{ImageStore, RootRef};
use crate::{ImageError, MAX_CONFIG_SIZE};

/// How to optimize.
#[derive(Debug, Clone)]
pub struct OptimizeOptions {
    pub convert: ConvertOptions,
    /// `os/architecture` of the manifest to run (an index's others are
    /// not kept: the result is that platform's image).
    pub platform: String,
    pub workload: WorkloadOverrides,
    pub sandbox: SandboxOptions,
    /// Where the scratch directory is made (the image is unpacked there).
    pub scratch: PathBuf,
}

/// The reference's default run time, in seconds.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(10);

/// What an optimization did.
#[derive(Debug, Clone)]
pub struct Optimized {
    pub manifest: Descriptor,
    pub layers: Vec<LayerOut>,
    pub workload: Workload,
    pub end: RunEnd,
    /// The image's files the workload opened, first open first, with the
    /// layer each was put first in.
    pub recorded: Vec<(String, usize)>,
}

/// Optimizes the image `src_root` of `src` into `dst`, tagged `dst_tag`.
pub fn optimize(
    src: &ImageStore,
    src_root: &RootRef,
    dst: &ImageStore,
    dst_tag: Option<&str>,
    opts: &OptimizeOptions,
    progress: &dyn Progress,
) -> Result<Optimized, ImageError> {
    let root = src.root(src_root)?;
    let doc = crate::platform::manifest_for(src, &root, &opts.platform)?;
    let manifest: serde_json::Value = serde_json::from_slice(&doc.bytes)?;
    let config: Descriptor =
        serde_json::from_value(manifest.get("config").cloned().unwrap_or_default())?;
    let layers: Vec<Descriptor> =
        serde_json::from_value(manifest.get("layers").cloned().unwrap_or_default())?;
    let cfg: serde_json::Value =
        serde_json::from_slice(&src.blob_bytes(&config.digest, MAX_CONFIG_SIZE)?)?;

    let scratch = Scratch::make(&opts.scratch)?;
    let mut unpacker = unpack::Unpacker::new(&scratch.lower)?;
    for (i, l) in layers.iter().enumerate() {
        if tar_layer(&l.media_type).is_none() {
            return Err(ImageError::Invalid(format!(
                "layer {i} ({}) is not a tar layer",
                l.media_type
            )));
        }
        tracing::info!(layer = i, digest = %l.digest, "unpacking");
        let tar = ringstar_core::writer::decompressed(src.open_blob(&l.digest)?)?;
        unpacker.apply(i, tar)?;
    }
    let provenance = unpacker.into_provenance();
    scratch.mount()?;
    let workload = workload::workload(&cfg, &opts.workload, &scratch.merged)?;
    tracing::info!(args = ?workload.args, period = ?opts.sandbox.period, "running the workload");
    let mut recorder = record::Recorder::start(&scratch.merged)?;
    let end = sandbox::run(
        &workload,
        &scratch.merged,
        &scratch.dir,
        &opts.sandbox,
        &mut recorder,
    )?;
    let opened = recorder.finish()?;
    tracing::info!(end = ?end, "the workload is done; removing the scratch directory");
    drop(scratch);

    let mut layer_files = vec![Vec::new(); layers.len()];
    let mut recorded = Vec::new();
    for path in opened {
        if let Some(i) = provenance.layer_of(&path) {
            layer_files[i].push(path.clone());
            recorded.push((path, i));
        }
    }
    tracing::info!(
        files = recorded.len(),
        per_layer = ?layer_files.iter().map(Vec::len).collect::<Vec<_>>(),
        "recorded the workload's files"
    );
    let (manifest, layers) = convert_manifest_prioritized(
        src,
        &doc,
        dst,
        dst_tag,
        &opts.convert,
        progress,
        &layer_files,
    )?;
    Ok(Optimized {
        manifest,
        layers,
        workload,
        end,
        recorded,
    })
}

/// The scratch directory: `lower` (the unpacked image), `upper` and
/// `work` (the overlay's), `merged` (the root the workload runs on).
/// Unmounted and deleted when dropped, whatever happened.
#[derive(Debug)]
struct Scratch {
    dir: PathBuf,
    lower: PathBuf,
    merged: PathBuf,
    mounted: std::cell::Cell<bool>,
    _dir: tempfile::TempDir,
}

impl Scratch {
    fn make(under: &Path) -> Result<Scratch, ImageError> {
        std::fs::create_dir_all(under)?;
        let dir = tempfile::Builder::new()
            .prefix("ringstar-optimize-")
            .tempdir_in(under)?;
        let path = dir.path().to_path_buf();
        for d in ["lower", "upper", "work", "merged"] {
            std::fs::create_dir(path.join(d))?;
        }
        Ok(Scratch {
            lower: path.join("lower"),
            merged: path.join("merged"),
            dir: path,
            mounted: std::cell::Cell::new(false),
            _dir: dir,
        })
    }

    /// Mounts the overlay at `merged`.
    fn mount(&self) -> Result<(), ImageError> {
        let data = format!(
            // volatile: the upper is thrown away, so unmounting it need
            // not sync the filesystem under it (seconds on a busy disk).
            "lowerdir={},upperdir={},workdir={},volatile",
            self.lower.display(),
            self.dir.join("upper").display(),
            self.dir.join("work").display()
        );
        rustix::mount::mount(
            "overlay",
            &self.merged,
            "overlay",
            rustix::mount::MountFlags::empty(),
            Some(
                std::ffi::CString::new(data)
                    .map_err(std::io::Error::other)?
                    .as_c_str(),
            ),
        )
        .map_err(|e| {
            ImageError::Io(std::io::Error::other(format!(
                "mounting the overlay at {}: {e} (optimize needs root)",
                self.merged.display()
            )))
        })?;
        self.mounted.set(true);
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.mounted.get()
            && let Err(e) =
                rustix::mount::unmount(&self.merged, rustix::mount::UnmountFlags::DETACH)
        {
            tracing::warn!(dir = %self.merged.display(), error = %e, "could not unmount the scratch overlay");
        }
    }
}
