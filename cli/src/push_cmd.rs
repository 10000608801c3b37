//! `ringstar push`: an image built from layer tars (eStargz by our writer,
//! or plain gzip) pushed to a registry, through the fetcher's auth and
//! TLS.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::ValueEnum;
use ringstar_image::{ImageRef, LayerFormat, RunConfig, build_image, push_image};

use crate::layer_cmd::WriterArgs;
use crate::registry_args::RegistryArgs;

/// How `push` writes its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PushFormat {
    /// eStargz by our writer, lazily pulled by ringstar.
    Estargz,
    /// Plain gzip: what a non-lazy pull gets.
    Gzip,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// REGISTRY/REPOSITORY:TAG (e.g. 127.0.0.1:5000/demo/app:esgz), or an
    /// OCI layout oci:DIR:TAG.
    reference: ImageRef,
    /// Layer tars, base first (plain, gzip or zstd).
    #[arg(required = true)]
    layers: Vec<PathBuf>,
    /// How the layers are written.
    #[arg(long, value_enum, default_value_t = PushFormat::Estargz)]
    format: PushFormat,
    /// Plain gzip layers instead of eStargz (as --format gzip).
    #[arg(long, conflicts_with = "format")]
    gzip: bool,
    /// The image's command (repeat for each argument).
    #[arg(long = "cmd", allow_hyphen_values = true)]
    cmd: Vec<String>,
    #[command(flatten)]
    writer: WriterArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn push_cmd(args: &PushArgs) -> anyhow::Result<()> {
    let tars = args
        .layers
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let format = if args.gzip || args.format == PushFormat::Gzip {
        LayerFormat::Gzip
    } else {
        LayerFormat::Estargz(args.writer.options(true)?)
    };
    let run = RunConfig {
        cmd: args.cmd.clone(),
        ..RunConfig::default()
    };
    let image = build_image(&tars, &format, &run)?;
    let fetcher = args.registry.fetcher()?;
    let (store, root) = args.registry.open(&fetcher, &args.reference, true)?;
    let tag = root.tag().unwrap_or("latest");
    let pushed = push_image(&store, &image, tag)?;
    println!(
        "{}",
        serde_json::json!({
            "reference": args.reference.to_string(),
            "manifest_digest": pushed.digest.to_string(),
            "layers": image.layers.iter().map(|l| serde_json::json!({
                "digest": l.digest.to_string(),
                "size": l.blob.len(),
                "toc_digest": l.toc_digest.map(|d| d.to_string()),
            })).collect::<Vec<_>>(),
        })
    );
    Ok(())
}
