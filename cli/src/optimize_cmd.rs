//! `ringstar image optimize SRC DST`: the image's workload run once under
//! runc with its opens recorded, then the image converted with those
//! files first (see `ringstar_image::optimize`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ringstar_image::ImageRef;
use ringstar_image::optimize::{
    DEFAULT_PERIOD, OptimizeOptions, RunEnd, SandboxOptions, WorkloadOverrides, optimize,
};

use crate::layer_cmd::WriterArgs;
use crate::registry_args::RegistryArgs;

#[derive(clap::Args)]
pub struct OptimizeArgs {
    pub src: ImageRef,
    pub dst: ImageRef,
    /// The entrypoint, a JSON array (replaces the image's; its command is
    /// then dropped unless --args is given).
    #[arg(long, value_parser = json_strings)]
    pub entrypoint: Option<JsonStrings>,
    /// The arguments, a JSON array (replace the image's command).
    #[arg(long, value_parser = json_strings)]
    pub args: Option<JsonStrings>,
    /// KEY=VALUE added to the image's environment (repeatable).
    #[arg(long)]
    pub env: Vec<String>,
    /// The working directory (default: the image's).
    #[arg(long)]
    pub cwd: Option<String>,
    /// uid[:gid] or name[:group] (default: the image's).
    #[arg(long)]
    pub user: Option<String>,
    /// Seconds the workload runs at most before it is killed.
    #[arg(long, default_value_t = DEFAULT_PERIOD.as_secs_f64())]
    pub period: f64,
    /// Share the host's network (default: none).
    #[arg(long)]
    pub net_host: bool,
    /// The OCI runtime.
    #[arg(long, default_value = "runc")]
    pub runtime: PathBuf,
    /// The platform to run and keep, os/arch (default: this machine's).
    #[arg(long)]
    pub platform: Option<String>,
    /// Where to unpack the image and run it (default: the temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Write the recorded files here, one JSON object per line
    /// ({"path", "layer"}), first open first.
    #[arg(long)]
    pub record_out: Option<PathBuf>,
    #[command(flatten)]
    pub writer: WriterArgs,
    /// Layers converted at once.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Convert every layer, even one converted before the same way.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// A JSON array of strings, as the reference's --entrypoint and --args
/// take them (one value, not one per word).
#[derive(Debug, Clone)]
pub struct JsonStrings(Vec<String>);

fn json_strings(s: &str) -> Result<JsonStrings, serde_json::Error> {
    serde_json::from_str(s).map(JsonStrings)
}

pub fn optimize_cmd(args: &OptimizeArgs) -> anyhow::Result<()> {
    if args.writer.prioritized_files.is_some() || !args.writer.prioritized.is_empty() {
        anyhow::bail!("optimize records the files to put first: --prioritized is for convert");
    }
    let fetcher = args.registry.fetcher()?;
    let (src, src_root) = args.registry.open(&fetcher, &args.src, false)?;
    let (dst, dst_root) = args.registry.open(&fetcher, &args.dst, true)?;
    let tag = crate::image_opts::dst_tag(&dst_root);
    let opts = OptimizeOptions {
        convert: crate::image_opts::convert_options(&args.writer, args.jobs, args.no_cache)?,
        platform: args
            .platform
            .clone()
            .unwrap_or_else(ringstar_image::platform::host_platform),
        workload: WorkloadOverrides {
            entrypoint: args.entrypoint.clone().map(|j| j.0),
            args: args.args.clone().map(|j| j.0),
            env: args.env.clone(),
            cwd: args.cwd.clone(),
            user: args.user.clone(),
        },
        sandbox: SandboxOptions {
            runtime: args.runtime.clone(),
            period: Duration::try_from_secs_f64(args.period).context("--period")?,
            net_host: args.net_host,
        },
        scratch: args.work_dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    let started = Instant::now();
    let progress = crate::progress::Shown::new();
    let done = optimize(&src, &src_root, &dst, tag.as_deref(), &opts, &progress)?;
    let end = match done.end {
        RunEnd::Exited(code) => format!("exited with {code:?}"),
        RunEnd::Killed => format!("was killed after {} s", args.period),
    };
    eprintln!(
        "optimized {} to {} in {:.1} s: the workload {end} having opened {} of the image's files",
        args.src,
        args.dst,
        started.elapsed().as_secs_f64(),
        done.recorded.len()
    );
    if let Some(path) = &args.record_out {
        let mut text = String::new();
        for (p, layer) in &done.recorded {
            text.push_str(&serde_json::json!({"path": p, "layer": layer}).to_string());
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "{}",
        serde_json::json!({
            "digest": done.manifest.digest.to_string(),
            "media_type": done.manifest.media_type,
            "size": done.manifest.size,
            "args": done.workload.args,
            "recorded": done.recorded.len(),
            "layers": done.layers.iter().enumerate().map(|(i, l)| serde_json::json!({
                "digest": l.descriptor.digest.to_string(),
                "size": l.descriptor.size,
                "toc_digest": l.descriptor.annotation(ringstar_image::TOC_DIGEST_ANNOTATION),
                "prioritized": done.recorded.iter().filter(|(_, layer)| *layer == i).count(),
            })).collect::<Vec<_>>(),
        })
    );
    Ok(())
}
