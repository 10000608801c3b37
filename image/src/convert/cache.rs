//! What earlier conversions made, by source layer and options: a layer
//! converted before whose result the target already has is neither
//! converted nor uploaded again (the writer is deterministic, so the
//! record names the very blob a conversion would make). One small JSON
//! file per layer and option set; a damaged record is ignored.

use std::path::{Path, PathBuf};

use ringstar_core::Digest;
use ringstar_core::writer::WriterOptions;
use serde::{Deserialize, Serialize};

/// A converted layer as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub digest: Digest,
    pub size: u64,
    pub toc_digest: Digest,
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    /// zstd:chunked's TOC checksum and position annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd_chunked: Option<(Digest, String)>,
}

/// The records under one directory.
#[derive(Debug, Clone)]
pub struct ConvertCache {
    dir: PathBuf,
}

/// The options that decide a conversion's bytes (not its threads).
fn key(source: &Digest, opts: &WriterOptions) -> String {
    let mut k = format!(
        "ringstar-convert v1\n{source}\n{}\n{}\n{}\n{}\n{:?}\n",
        opts.chunk_size,
        opts.min_chunk_size,
        opts.compression_level,
        opts.allow_missing_prioritized,
        opts.format
    );
    for p in &opts.prioritized {
        k.push_str(p);
        k.push('\0');
    }
    Digest::of(k.as_bytes()).hex()
}

impl ConvertCache {
    pub fn at(dir: &Path) -> ConvertCache {
        ConvertCache {
            dir: dir.to_path_buf(),
        }
    }

    /// The user's cache: `$XDG_CACHE_HOME/ringstar/converted`, else
    /// `~/.cache/ringstar/converted`.
    pub fn user() -> Option<ConvertCache> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
        Some(ConvertCache::at(&base.join("ringstar/converted")))
    }

    pub fn get(&self, source: &Digest, opts: &WriterOptions) -> Option<Record> {
        let bytes = std::fs::read(self.dir.join(key(source, opts))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records a conversion; a failure to write is logged, not fatal.
    pub fn put(&self, source: &Digest, opts: &WriterOptions, record: &Record) {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            serde_json::to_writer(&mut tmp, record)?;
            tmp.persist(self.dir.join(key(source, opts)))
                .map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not record a conversion");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_keyed_by_source_and_options_not_threads() {
        let dir = tempfile::tempdir().unwrap();
        let c = ConvertCache::at(dir.path());
        let src = Digest::of(b"layer");
        let opts = WriterOptions::default();
        let r = Record {
            digest: Digest::of(b"out"),
            size: 3,
            toc_digest: Digest::of(b"toc"),
            diff_id: Digest::of(b"diff"),
            uncompressed_size: 9,
            zstd_chunked: None,
        };
        c.put(&src, &opts, &r);
        let threads = WriterOptions {
            threads: 8,
            ..opts.clone()
        };
        assert_eq!(c.get(&src, &threads), Some(r));
        let level = WriterOptions {
            compression_level: 9,
            ..opts.clone()
        };
        assert_eq!(c.get(&src, &level), None);
        std::fs::write(dir.path().join(key(&src, &opts)), b"{broken").unwrap();
        assert_eq!(c.get(&src, &opts), None);
    }
}
