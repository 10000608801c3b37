//! `ringstar image …`: the image tools.
//! - `convert SRC DST`: every layer of an image (every platform) to
//!   eStargz, streamed from SRC to DST (registry references or
//!   `oci:DIR[:TAG]` layouts);
//! - `optimize SRC DST`: convert, with the files the workload opens
//!   first (`optimize_cmd`);
//! - `rpull REF`: the image pulled into containerd lazily, through a
//!   remote snapshotter (ringstar), as `ctr-remote image rpull` does.

use std::time::Instant;

use ringstar_image::ImageRef;
use ringstar_image::convert::convert;

use crate::layer_cmd::WriterArgs;
use crate::registry_args::RegistryArgs;

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Convert an image to eStargz: every layer of every platform,
    /// streamed from SRC to DST, with a new config (DiffIDs) and
    /// manifests carrying the TOC digest annotations. Layers that are
    /// eStargz already are kept; blobs DST has are not sent again. SRC and
    /// DST are registry references or OCI layouts (oci:DIR[:TAG]).
    Convert(ConvertArgs),
    /// Convert an image to eStargz with the files its workload reads
    /// first: the workload runs once under runc (no network unless
    /// --net-host, writes thrown away), fanotify records the files it
    /// opens, and each layer gets those it holds first, then
    /// .prefetch.landmark. One platform (this machine's by default).
    Optimize(Box<crate::optimize_cmd::OptimizeArgs>),
    /// Pull an image into containerd lazily: its manifest and config go
    /// into containerd's content store, each layer is prepared through
    /// the snapshotter with the remote-snapshot labels (mounted from the
    /// registry, not downloaded); layers that are not eStargz are pulled
    /// whole. Then `ctr run --snapshotter ringstar REF ID`.
    Rpull(RpullArgs),
}

#[derive(clap::Args)]
pub struct RpullArgs {
    /// The image, REGISTRY/REPOSITORY[:TAG|@DIGEST].
    pub reference: ringstar_fetcher::Reference,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub address: std::path::PathBuf,
    /// containerd namespace (ctr's default).
    #[arg(
        long,
        short = 'n',
        default_value = "default",
        env = "CONTAINERD_NAMESPACE"
    )]
    pub namespace: String,
    /// The snapshotter to unpack through (ringstar's proxy plugin name).
    #[arg(long, default_value = "ringstar")]
    pub snapshotter: String,
    /// The platform to pull from a multi-platform image (os/arch).
    #[arg(long)]
    pub platform: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(clap::Args)]
pub struct ConvertArgs {
    pub src: ImageRef,
    pub dst: ImageRef,
    #[command(flatten)]
    pub writer: WriterArgs,
    /// Layers converted at once.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Convert every layer, even one converted before with the same
    /// options whose result DST has (recorded in ~/.cache/ringstar).
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn image_cmd(cmd: &ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Convert(args) => convert_cmd(args),
        ImageCommand::Optimize(args) => crate::optimize_cmd::optimize_cmd(args),
        ImageCommand::Rpull(args) => rpull_cmd(args),
    }
}

fn rpull_cmd(args: &RpullArgs) -> anyhow::Result<()> {
    use ringstar_image::rpull::{RpullOptions, rpull};
    let fetcher = args.registry.fetcher()?;
    let image = ImageRef::Registry(args.reference.clone());
    let (src, root) = args.registry.open(&fetcher, &image, false)?;
    let opts = RpullOptions {
        address: args.address.clone(),
        namespace: args.namespace.clone(),
        snapshotter: args.snapshotter.clone(),
        platform: args
            .platform
            .clone()
            .unwrap_or_else(ringstar_image::platform::host_platform),
    };
    let started = Instant::now();
    let pulled = rpull(&src, &args.reference, &root, &opts)?;
    let remote = pulled.layers.iter().filter(|l| l.remote).count();
    eprintln!(
        "pulled {} in {:.2} s: {remote} of {} layers mounted lazily",
        pulled.name,
        started.elapsed().as_secs_f64(),
        pulled.layers.len()
    );
    println!(
        "{}",
        serde_json::json!({
            "name": pulled.name,
            "digest": pulled.target.digest.to_string(),
            "layers": pulled.layers.iter().map(|l| serde_json::json!({
                "digest": l.digest.to_string(),
                "chain_id": l.chain_id.to_string(),
                "remote": l.remote,
            })).collect::<Vec<_>>(),
        })
    );
    Ok(())
}

fn convert_cmd(args: &ConvertArgs) -> anyhow::Result<()> {
    let fetcher = args.registry.fetcher()?;
    let (src, src_root) = args.registry.open(&fetcher, &args.src, false)?;
    let (dst, dst_root) = args.registry.open(&fetcher, &args.dst, true)?;
    let tag = crate::image_opts::dst_tag(&dst_root);
    let opts = crate::image_opts::convert_options(&args.writer, args.jobs, args.no_cache)?;
    let started = Instant::now();
    let progress = crate::progress::Shown::new();
    let done = convert(&src, &src_root, &dst, tag.as_deref(), &opts, &progress)?;
    eprintln!(
        "converted {} to {} in {:.1} s",
        args.src,
        args.dst,
        started.elapsed().as_secs_f64()
    );
    println!(
        "{}",
        serde_json::json!({
            "digest": done.root.digest.to_string(),
            "media_type": done.root.media_type,
            "size": done.root.size,
            "toc_image": done.toc_image.as_ref().map(|d| d.digest.to_string()),
            "manifests": done.manifests.iter().map(|(m, layers)| serde_json::json!({
                "digest": m.digest.to_string(),
                "layers": layers.iter().map(|l| serde_json::json!({
                    "digest": l.descriptor.digest.to_string(),
                    "size": l.descriptor.size,
                    "toc_digest": l.descriptor.annotation(ringstar_image::TOC_DIGEST_ANNOTATION),
                    "converted": l.diff_id.is_some(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    );
    Ok(())
}
