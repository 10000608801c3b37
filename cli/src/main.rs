//! `ringstar`: the project's command. Subcommands:
//! - `inspect BLOB [--toc-digest D]`: the layer's raw tree as JSON lines,
//!   every regular file read back and verified.
//! - `convert IN OUT`: tar (plain, gzip or zstd) → eStargz.
//! - `mount --ref REF --digest D --toc-digest T MOUNTPOINT`: one layer
//!   from a registry, lazily, without containerd (until Ctrl-C).
//! - `push REF LAYER.tar...`: an image of eStargz (or gzip) layers pushed
//!   to a plain-HTTP registry.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use ringstar_core::writer::{self, WriterOptions};
use ringstar_core::{Digest, Layer, OpenOptions, inspect};
use ringstar_daemon::config::FuseUringChoice;
use ringstar_daemon::{Settings, defaults};

#[derive(Parser)]
#[command(
    name = "ringstar",
    version,
    about = "Lazy-pulling eStargz snapshotter for containerd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List a layer blob's entries (JSON lines, sorted by name), reading
    /// and verifying every chunk of every regular file.
    Inspect {
        /// The layer blob (eStargz, legacy stargz or zstd:chunked).
        blob: PathBuf,
        /// Verify the TOC against this digest (the
        /// containerd.io/snapshot/stargz/toc.digest annotation).
        #[arg(long)]
        toc_digest: Option<Digest>,
    },
    /// Convert a tar layer (plain, gzip or zstd) to eStargz. Prints the
    /// TOC digest, DiffID and blob digest as JSON.
    Convert {
        input: PathBuf,
        output: PathBuf,
        /// Uncompressed bytes per chunk.
        #[arg(long, default_value_t = 4 << 20)]
        chunk_size: u64,
        /// gzip level 0-12 (libdeflate).
        #[arg(long, default_value_t = 9)]
        level: i32,
        /// Files to prefetch, in order (comma separated); adds
        /// .prefetch.landmark after them.
        #[arg(long, value_delimiter = ',')]
        prioritized: Vec<String>,
        /// Skip prioritized files that are not in the layer.
        #[arg(long)]
        allow_missing: bool,
    },
    /// Mount one eStargz layer from a registry at MOUNTPOINT, fetching
    /// file contents on first read, until interrupted (Ctrl-C or SIGTERM
    /// unmounts). Registries on localhost/127.x are spoken to in plain
    /// HTTP; credentials come from the docker config.
    Mount(MountArgs),
    /// Build an image from layer tars (base first) and push it to a
    /// plain-HTTP registry: eStargz by our writer (the TOC digest
    /// annotation set), or plain gzip with --format gzip. Prints the
    /// manifest digest.
    Push(PushArgs),
}

/// How `push` writes its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PushFormat {
    /// eStargz by our writer, lazily pulled by ringstar.
    Estargz,
    /// Plain gzip: what a non-lazy pull gets.
    Gzip,
}

#[derive(clap::Args)]
struct PushArgs {
    /// REGISTRY/REPOSITORY:TAG, e.g. 127.0.0.1:5000/demo/app:esgz.
    reference: ringstar_fetcher::Reference,
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
    /// Files each eStargz layer puts first, before .prefetch.landmark
    /// (comma separated; missing ones are skipped).
    #[arg(long, value_delimiter = ',')]
    prioritized: Vec<String>,
    /// Uncompressed bytes per eStargz chunk.
    #[arg(long, default_value_t = 4 << 20)]
    chunk_size: u64,
}

#[derive(clap::Args)]
struct MountArgs {
    /// The image reference the layer belongs to (registry and
    /// repository; tag or digest are ignored).
    #[arg(long = "ref")]
    reference: ringstar_fetcher::Reference,
    /// The layer blob's digest.
    #[arg(long)]
    digest: Digest,
    /// The TOC digest to verify against (the
    /// containerd.io/snapshot/stargz/toc.digest annotation).
    #[arg(long)]
    toc_digest: Option<Digest>,
    /// Mount without verifying the TOC (when no TOC digest is known).
    #[arg(long, conflicts_with = "toc_digest")]
    no_verify: bool,
    /// Where fetched content is kept: a store of its own, not the
    /// daemon's (`--root`/store). A store is locked by the one process
    /// using it; a second one is refused.
    #[arg(long, default_value = "/var/lib/ringstar-mount/store")]
    store: PathBuf,
    /// Store bound in bytes.
    #[arg(long, default_value_t = defaults::STORE_SIZE)]
    store_size: u64,
    /// Do not prefetch the layer's prioritized files.
    #[arg(long)]
    no_prefetch: bool,
    /// Do not fetch the rest of the layer in the background.
    #[arg(long)]
    no_background_fetch: bool,
    /// FUSE-over-io_uring (the daemon's `[ringstar] fuse_uring`).
    #[arg(long, value_enum, default_value_t = FuseUringChoice::default())]
    fuse_uring: FuseUringChoice,
    /// Hand fully fetched files to the kernel (FUSE passthrough), as the
    /// daemon does; `--passthrough=false` serves every read.
    #[arg(long, default_value_t = defaults::PASSTHROUGH, num_args = 0..=1,
          default_missing_value = "true", require_equals = true,
          action = clap::ArgAction::Set)]
    passthrough: bool,
    /// Per-request registry timeout, seconds.
    #[arg(long, default_value_t = defaults::request_timeout().as_secs())]
    request_timeout: u64,
    mountpoint: PathBuf,
}

fn inspect_cmd(path: &PathBuf, toc_digest: Option<Digest>) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    let opts = OpenOptions {
        toc_digest,
        ..OpenOptions::default()
    };
    let layer =
        Layer::open(&file, size, &opts).with_context(|| format!("{} rejected", path.display()))?;
    let stdout = io::stdout().lock();
    let mut out = BufWriter::new(stdout);
    for record in inspect::inspect(&layer, &file) {
        serde_json::to_writer(&mut out, &record)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn convert_cmd(input: &PathBuf, output: &PathBuf, opts: &WriterOptions) -> anyhow::Result<()> {
    // Opened again for each pass (prioritized files take two): a file is
    // never copied.
    File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let out = File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let built = writer::build_from(|| File::open(input), io::BufWriter::new(out), opts)?;
    println!(
        "{}",
        serde_json::json!({
            "toc_digest": built.toc_digest.to_string(),
            "diff_id": built.diff_id.to_string(),
            "blob_digest": built.blob_digest.to_string(),
            "blob_size": built.blob_size,
            "missing_prioritized": built.missing_prioritized,
        })
    );
    Ok(())
}

impl MountArgs {
    /// The daemon's settings with this command's flags applied.
    fn settings(&self) -> Settings {
        let mut s = Settings {
            store_size: self.store_size,
            passthrough: self.passthrough,
            fuse_uring: self.fuse_uring.into(),
            // A foreground mount ends with its command: nothing takes it
            // over.
            takeover: false,
            ..Settings::default()
        };
        s.fetcher.request_timeout = std::time::Duration::from_secs(self.request_timeout);
        s.loader.background.enabled = !self.no_background_fetch;
        s.remote.noprefetch = self.no_prefetch;
        s
    }

    fn source(&self) -> ringstar_layerfs::resolve::LayerSource {
        ringstar_layerfs::resolve::LayerSource {
            reference: self.reference.clone(),
            digest: self.digest,
            size: None,
            toc_digest: self.toc_digest,
        }
    }
}

fn mount_cmd(args: &MountArgs) -> anyhow::Result<()> {
    use std::sync::Arc;

    use ringstar_fetcher::Fetcher;
    use ringstar_fusedev::Session;
    use ringstar_layerfs::resolve::resolve;
    use ringstar_layerfs::{LayerFs, Loader};

    anyhow::ensure!(
        args.toc_digest.is_some() || args.no_verify,
        "--toc-digest is needed to verify the layer (or --no-verify to skip that)"
    );
    let settings = args.settings();
    let fetcher = Fetcher::new(settings.fetcher.clone())?;
    ringstar_daemon::raise_open_file_limit();
    let store = Arc::new(
        ringstar_core::store::Store::open(&args.store, settings.store_size)
            .with_context(|| format!("opening the store at {}", args.store.display()))?,
    );
    let loader = Loader::new(
        store,
        fetcher.clone(),
        settings.inflate_workers,
        settings.loader.clone(),
    )?;
    let layer = resolve(
        &fetcher,
        &settings.resolver,
        &args.source(),
        args.digest.to_string(),
        settings.remote.tail_bytes,
    )?;
    let layer = Arc::new(layer);
    let fs = Arc::new(LayerFs::single(
        loader.clone(),
        layer.clone(),
        settings.passthrough,
    ));
    let session = Session::mount(fs, &args.mountpoint, &settings.mount_options())
        .with_context(|| format!("mounting at {}", args.mountpoint.display()))?;
    if settings.remote.noprefetch {
        layer.finish_prefetch();
    } else {
        loader.prefetch(&layer);
    }
    loader.start_background(&layer);
    println!(
        "mounted {} at {} ({} entries, {:?} transport)",
        args.digest,
        args.mountpoint.display(),
        layer.tree().len(),
        session.transport()
    );
    io::stdout().flush()?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let signal = signals.forever().next();
    tracing::info!(?signal, "unmounting");
    session.unmount()?;
    Ok(())
}

fn push_cmd(args: &PushArgs) -> anyhow::Result<()> {
    use ringstar_image::{LayerFormat, RunConfig, build_image, push_plain_http};
    let tars = args
        .layers
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let format = if args.gzip || args.format == PushFormat::Gzip {
        LayerFormat::Gzip
    } else {
        LayerFormat::Estargz(WriterOptions {
            chunk_size: args.chunk_size,
            prioritized: args.prioritized.clone(),
            allow_missing_prioritized: true,
            ..WriterOptions::default()
        })
    };
    let run = RunConfig {
        cmd: args.cmd.clone(),
        ..RunConfig::default()
    };
    let image = build_image(&tars, &format, &run)?;
    let r = &args.reference;
    let tag = r.tag.as_deref().unwrap_or("latest");
    push_plain_http(&r.host, &r.repository, tag, &image)?;
    println!(
        "{}",
        serde_json::json!({
            "reference": format!("{}/{}:{tag}", r.host, r.repository),
            "manifest_digest": image.manifest_digest().to_string(),
            "layers": image.layers.iter().map(|l| serde_json::json!({
                "digest": l.digest.to_string(),
                "size": l.blob.len(),
                "toc_digest": l.toc_digest.map(|d| d.to_string()),
            })).collect::<Vec<_>>(),
        })
    );
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Inspect { blob, toc_digest } => inspect_cmd(blob, *toc_digest),
        Command::Convert {
            input,
            output,
            chunk_size,
            level,
            prioritized,
            allow_missing,
        } => convert_cmd(
            input,
            output,
            &WriterOptions {
                chunk_size: *chunk_size,
                compression_level: *level,
                prioritized: prioritized.clone(),
                allow_missing_prioritized: *allow_missing,
                threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
        ),
        Command::Mount(args) => mount_cmd(args),
        Command::Push(args) => push_cmd(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined.
            eprintln!("ringstar: {e:#}");
            ExitCode::FAILURE
        }
    }
}
