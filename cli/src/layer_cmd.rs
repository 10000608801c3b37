//! `ringstar inspect` and `ringstar convert`: one layer blob read back and
//! verified, one layer tar written as eStargz; and the writer's options as
//! every command that writes layers takes them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ringstar_core::writer::{self, OutputFormat, WriterOptions};
use ringstar_core::{Digest, Layer, OpenOptions, inspect};

/// How eStargz layers are written (the reference's `--estargz-*` options
/// where it has them).
#[derive(clap::Args, Debug, Clone)]
pub struct WriterArgs {
    /// Uncompressed bytes per chunk.
    #[arg(long, default_value_t = WriterOptions::default().chunk_size)]
    pub chunk_size: u64,
    /// Files smaller than this share a gzip member with the files before
    /// them (TOC innerOffset; readers older than the reference's v0.13
    /// cannot read such layers). 0: each file has its own.
    #[arg(long, default_value_t = 0)]
    pub min_chunk_size: u64,
    /// gzip level 0-12 (libdeflate; default 6, which writes smaller
    /// layers than the reference's default 9 of Go's gzip, in far less
    /// time); with --zstdchunked, zstd's 1-22 (default 3).
    #[arg(long)]
    pub level: Option<i32>,
    /// Write zstd:chunked (zstd frames, the TOC in a skippable frame)
    /// instead of eStargz's gzip, as the reference's --zstdchunked.
    #[arg(long, conflicts_with = "external_toc")]
    pub zstdchunked: bool,
    /// Keep each layer's TOC out of its blob, in a TOC image tagged
    /// DST's tag + "-esgztoc" (the reference's --estargz-external-toc;
    /// the daemon fetches it from there).
    #[arg(long)]
    pub external_toc: bool,
    /// Files to put first, in order, before .prefetch.landmark (comma
    /// separated).
    #[arg(long, value_delimiter = ',')]
    pub prioritized: Vec<String>,
    /// A file listing files to put first, one path per line (as the
    /// reference's --estargz-prioritized-files / optimize record them).
    #[arg(long)]
    pub prioritized_files: Option<PathBuf>,
    /// Compression threads per layer (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl WriterArgs {
    /// The writer's options; prioritized files missing from a layer are
    /// skipped when `allow_missing` (an image's files spread over layers).
    pub fn options(&self, allow_missing: bool) -> anyhow::Result<WriterOptions> {
        let mut prioritized = self.prioritized.clone();
        if let Some(path) = &self.prioritized_files {
            prioritized.extend(read_list(path)?);
        }
        let format = if self.zstdchunked {
            OutputFormat::ZstdChunked
        } else if self.external_toc {
            OutputFormat::ExternalToc
        } else {
            OutputFormat::Estargz
        };
        Ok(WriterOptions {
            chunk_size: self.chunk_size,
            min_chunk_size: self.min_chunk_size,
            format,
            compression_level: self.level.unwrap_or(format.levels().1),
            prioritized,
            allow_missing_prioritized: allow_missing,
            threads: self
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        })
    }
}

/// Paths, one per line (blank lines and `#` comments skipped).
fn read_list(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

pub fn inspect_cmd(path: &PathBuf, toc_digest: Option<Digest>) -> anyhow::Result<()> {
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

pub fn convert_cmd(input: &PathBuf, output: &PathBuf, opts: &WriterOptions) -> anyhow::Result<()> {
    // Opened again for each pass (prioritized files take two): a file is
    // never copied.
    File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let out = File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let built = writer::build_from(|| File::open(input), BufWriter::new(out), opts)?;
    // An external TOC beside the layer: OUT.toc (the TOC image's blob).
    let toc_path = match &built.external_toc {
        Some(toc) => {
            let path = PathBuf::from(format!("{}.toc", output.display()));
            std::fs::write(&path, toc).with_context(|| format!("writing {}", path.display()))?;
            Some(path.display().to_string())
        }
        None => None,
    };
    println!(
        "{}",
        serde_json::json!({
            "toc_digest": built.toc_digest.to_string(),
            "diff_id": built.diff_id.to_string(),
            "blob_digest": built.blob_digest.to_string(),
            "blob_size": built.blob_size,
            "uncompressed_size": built.uncompressed_size,
            "missing_prioritized": built.missing_prioritized,
            "external_toc": toc_path,
        })
    );
    Ok(())
}
