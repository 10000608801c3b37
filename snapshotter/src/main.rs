//! `ringstar`: the project's command. Subcommands:
//! - `inspect BLOB [--toc-digest D]`: the layer's raw tree as JSON lines,
//!   every regular file read back and verified.
//! - `convert IN OUT`: tar (plain, gzip or zstd) → eStargz.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ringstar_core::writer::{self, WriterOptions};
use ringstar_core::{Digest, Layer, OpenOptions, inspect};

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
    let inp = File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let out = File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let built = writer::build(io::BufReader::new(inp), out, opts)?;
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
            },
        ),
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
