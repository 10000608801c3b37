//! Opening a layer: footer → TOC → verified tree, from nothing but the
//! blob's size and ranged reads.

use std::io::Read;
use std::time::Instant;

use crate::blob::BlobRead;
use crate::digest::Digest;
use crate::error::Error;
use crate::footer::{Footer, MAX_FOOTER_SIZE};
use crate::tar::Scanner;
use crate::toc::{self, Limits, TOC_NAME};
use crate::tree::LayerTree;

/// How the blob's members are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

/// Options for [`Layer::open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The `containerd.io/snapshot/stargz/toc.digest` label. When set, a TOC
    /// that hashes differently is refused.
    pub toc_digest: Option<Digest>,
    /// How many bytes of the blob's tail the first read takes, so footer
    /// and TOC usually arrive in one round trip.
    pub tail_bytes: u64,
    /// Largest TOC accepted, compressed or not.
    pub max_toc_bytes: u64,
    pub limits: Limits,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            toc_digest: None,
            tail_bytes: 512 * 1024,
            max_toc_bytes: 512 << 20,
            limits: Limits::default(),
        }
    }
}

/// An opened layer: its footer, verified TOC digest and tree.
#[derive(Debug, Clone)]
pub struct Layer {
    pub footer: Footer,
    pub compression: Compression,
    pub blob_size: u64,
    /// Where payload members end (the TOC starts).
    pub data_end: u64,
    /// sha256 of the uncompressed TOC JSON.
    pub toc_digest: Digest,
    pub tree: LayerTree,
}

/// Where the TOC is, once the footer is known.
struct TocLocation {
    compression: Compression,
    start: u64,
    end: u64,
    data_end: u64,
    uncompressed_len: Option<u64>,
}

fn locate(footer: Footer, blob_size: u64) -> Result<TocLocation, Error> {
    let footer_start = blob_size - footer.size() as u64;
    match footer {
        Footer::Estargz { toc_offset } | Footer::Legacy { toc_offset } => {
            if toc_offset >= footer_start {
                return Err(Error::BadFooter(format!(
                    "TOC offset {toc_offset} is past the end of the data (footer at {footer_start}, blob size {blob_size})"
                )));
            }
            Ok(TocLocation {
                compression: Compression::Gzip,
                start: toc_offset,
                end: footer_start,
                data_end: toc_offset,
                uncompressed_len: None,
            })
        }
        Footer::ZstdChunked {
            toc_offset,
            toc_compressed_len,
            toc_uncompressed_len,
        } => {
            let end = toc_offset.checked_add(toc_compressed_len);
            if toc_offset < 8 || end.is_none_or(|e| e > footer_start) || toc_compressed_len == 0 {
                return Err(Error::BadFooter(format!(
                    "zstd:chunked TOC [{toc_offset}, +{toc_compressed_len}) does not fit a {blob_size}-byte blob"
                )));
            }
            Ok(TocLocation {
                compression: Compression::Zstd,
                start: toc_offset,
                end: end.expect("checked"),
                // The TOC frame sits inside a skippable frame whose 8-byte
                // header precedes it.
                data_end: toc_offset - 8,
                uncompressed_len: Some(toc_uncompressed_len),
            })
        }
        Footer::ExternalToc => Err(Error::ExternalToc),
    }
}

fn read_bounded(mut r: impl Read, limit: u64, what: &str) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    (&mut r)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::BadToc(format!("decompressing the {what}: {e}")))?;
    if out.len() as u64 > limit {
        return Err(Error::Limit(format!("{what} inflates past {limit} bytes")));
    }
    Ok(out)
}

/// Extracts `stargz.index.json` from the TOC member's tar.
fn toc_from_tar(tar: &[u8]) -> Result<&[u8], Error> {
    let mut scanner = Scanner::new(tar, tar.len() as u64);
    let first = scanner
        .next_entry()
        .map_err(|e| Error::BadToc(format!("TOC tar: {e}")))?
        .ok_or_else(|| Error::BadToc("TOC member holds no tar entry".into()))?;
    if first.entry.name != TOC_NAME {
        return Err(Error::BadToc(format!(
            "TOC member's first entry is {:?}, not {TOC_NAME}",
            first.entry.name
        )));
    }
    let start = first.data_offset as usize;
    Ok(&tar[start..start + first.entry.size as usize])
}

/// Decompresses a TOC's bytes to its JSON.
fn toc_json(loc: &TocLocation, compressed: &[u8], max: u64) -> Result<Vec<u8>, Error> {
    match loc.compression {
        Compression::Gzip => {
            // One member only: GzDecoder stops at the end of the first.
            let tar = read_bounded(flate2::read::GzDecoder::new(compressed), max, "TOC")?;
            Ok(toc_from_tar(&tar)?.to_vec())
        }
        Compression::Zstd => {
            let want = loc.uncompressed_len.unwrap_or(0);
            if want > max {
                return Err(Error::Limit(format!(
                    "zstd:chunked TOC of {want} bytes exceeds {max}"
                )));
            }
            let dec = zstd::stream::read::Decoder::with_buffer(compressed)
                .map_err(|e| Error::BadToc(format!("zstd: {e}")))?
                .single_frame();
            let json = read_bounded(dec, want, "TOC")?;
            if json.len() as u64 != want {
                return Err(Error::BadToc(format!(
                    "zstd:chunked TOC inflates to {} bytes, footer says {want}",
                    json.len()
                )));
            }
            Ok(json)
        }
    }
}

impl Layer {
    /// Opens a layer of `blob_size` bytes: one read of the tail (footer,
    /// and the TOC when it fits in `tail_bytes`), a second read for the
    /// TOC only when it did not, then digest check and tree build.
    pub fn open<B: BlobRead + ?Sized>(
        blob: &B,
        blob_size: u64,
        opts: &OpenOptions,
    ) -> Result<Layer, Error> {
        let started = Instant::now();
        let tail_len = opts.tail_bytes.max(MAX_FOOTER_SIZE as u64).min(blob_size);
        let tail_start = blob_size - tail_len;
        let tail = blob.read_at(tail_start, tail_len as usize)?;
        let footer = Footer::find(&tail).ok_or_else(|| {
            Error::NotEstargz(format!(
                "no eStargz, stargz or zstd:chunked footer at the end of the {blob_size}-byte blob"
            ))
        })?;
        let loc = locate(footer, blob_size)?;
        let toc_len = loc.end - loc.start;
        if toc_len > opts.max_toc_bytes {
            return Err(Error::Limit(format!("compressed TOC of {toc_len} bytes")));
        }
        let fetched;
        let compressed: &[u8] = if loc.start >= tail_start {
            &tail[(loc.start - tail_start) as usize..(loc.end - tail_start) as usize]
        } else {
            fetched = blob.read_at(loc.start, toc_len as usize)?;
            &fetched
        };
        let json = toc_json(&loc, compressed, opts.max_toc_bytes)?;
        let toc_digest = Digest::of(&json);
        if let Some(expected) = opts.toc_digest
            && expected != toc_digest
        {
            return Err(Error::TocDigestMismatch {
                expected,
                actual: toc_digest,
            });
        }
        let tree = toc::parse(&json, loc.data_end, opts.limits)?;
        tracing::debug!(
            blob_size,
            toc_bytes = json.len(),
            entries = tree.toc_entries(),
            nodes = tree.len(),
            tree_bytes = tree.memory_bytes(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "opened layer"
        );
        Ok(Layer {
            footer,
            compression: loc.compression,
            blob_size,
            data_end: loc.data_end,
            toc_digest,
            tree,
        })
    }
}
