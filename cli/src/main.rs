//! `ringstar`: the project's command. Subcommands:
//! - `image convert SRC DST`: an image (every platform) to eStargz, from a
//!   registry or OCI layout to a registry or OCI layout;
//! - `image rpull REF`: an image pulled into containerd lazily;
//! - `inspect BLOB [--toc-digest D]`: the layer's raw tree as JSON lines,
//!   every regular file read back and verified;
//! - `convert IN OUT`: one layer tar (plain, gzip or zstd) → eStargz;
//! - `mount --ref REF --digest D --toc-digest T MOUNTPOINT`: one layer
//!   from a registry, lazily, without containerd (until Ctrl-C);
//! - `push REF LAYER.tar...`: an image of eStargz (or gzip) layers built
//!   and pushed.

mod image_cmd;
mod image_opts;
mod layer_cmd;
mod mount_cmd;
mod optimize_cmd;
mod progress;
mod push_cmd;
mod registry_args;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringstar_core::Digest;

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
    /// Image tools: convert to eStargz, pull lazily into containerd.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
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
        #[command(flatten)]
        writer: layer_cmd::WriterArgs,
        /// Skip prioritized files that are not in the layer.
        #[arg(long)]
        allow_missing: bool,
    },
    /// Mount one eStargz layer from a registry at MOUNTPOINT, fetching
    /// file contents on first read, until interrupted (Ctrl-C or SIGTERM
    /// unmounts). Registries on localhost/127.x are spoken to in plain
    /// HTTP; credentials come from the docker config.
    Mount(mount_cmd::MountArgs),
    /// Build an image from layer tars (base first) and push it to a
    /// registry or OCI layout: eStargz by our writer (the TOC digest
    /// annotation set), or plain gzip with --format gzip. Prints the
    /// manifest digest.
    Push(push_cmd::PushArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Image(cmd) => image_cmd::image_cmd(cmd),
        Command::Inspect { blob, toc_digest } => layer_cmd::inspect_cmd(blob, *toc_digest),
        Command::Convert {
            input,
            output,
            writer,
            allow_missing,
        } => writer
            .options(*allow_missing)
            .and_then(|opts| layer_cmd::convert_cmd(input, output, &opts)),
        Command::Mount(args) => mount_cmd::mount_cmd(args),
        Command::Push(args) => push_cmd::push_cmd(args),
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
