//! Opening a layer: footer → TOC → verified tree, from nothing but the
//! blob's size and ranged reads.

use std::cell::RefCell;
use std::io::{self, Read};
use std::time::Instant;

use crate::blob::{BlobRead, BlobReader};
use crate::digest::{Digest, Hasher};
use crate::error::Error;
use crate::footer::{Footer, MAX_FOOTER_SIZE};
use crate::limits::{BLOB_READ_PIECE, MAX_TOC_BYTES, MAX_TOC_STRING_BYTES};
use crate::tar::Scanner;
use crate::toc::{self, Limits, TOC_NAME};
use crate::tree::LayerTree;

pub use crate::footer::Compression;

/// Options for [`Layer::open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The `containerd.io/snapshot/stargz/toc.digest` label. When set, a TOC
    /// that hashes differently is refused.
    pub toc_digest: Option<Digest>,
    /// How many bytes of the blob's tail the first read takes, so footer
    /// and TOC usually arrive in one round trip.
    pub tail_bytes: u64,
    /// Largest TOC accepted, compressed or not (the decompressed TOC is
    /// parsed as it streams, so this bounds work, not memory).
    pub max_toc_bytes: u64,
    pub limits: Limits,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            toc_digest: None,
            tail_bytes: 512 * 1024,
            max_toc_bytes: MAX_TOC_BYTES,
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

/// Counts, hashes and bounds the TOC JSON as the parser reads it, and
/// refuses a JSON string longer than [`MAX_TOC_STRING_BYTES`] before the
/// parser buffers it.
struct TocJson<R> {
    inner: R,
    hasher: Hasher,
    read: u64,
    limit: u64,
    in_string: bool,
    escaped: bool,
    string_len: usize,
    /// Why reading stopped early, for the error the parser reports.
    refused: Option<TocRefusal>,
}

/// Why the TOC's JSON stream was cut off: a bound that protects memory.
#[derive(Debug, Clone, Copy, thiserror::Error)]
enum TocRefusal {
    #[error("TOC inflates past {0} bytes")]
    TooLarge(u64),
    #[error("a TOC string longer than {MAX_TOC_STRING_BYTES} bytes")]
    LongString,
}

impl<R: Read> TocJson<R> {
    fn new(inner: R, limit: u64) -> Self {
        TocJson {
            inner,
            hasher: Hasher::new(),
            read: 0,
            limit,
            in_string: false,
            escaped: false,
            string_len: 0,
            refused: None,
        }
    }

    fn refuse(&mut self, why: TocRefusal) -> io::Error {
        self.refused = Some(why);
        io::Error::other(why)
    }

    /// Reads (and hashes) whatever the parser left, for the digest.
    fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }
}

impl<R: Read> Read for TocJson<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = self.refused {
            return Err(io::Error::other(why));
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            let limit = self.limit;
            return Err(self.refuse(TocRefusal::TooLarge(limit)));
        }
        let got = &buf[..n];
        self.hasher.update(got);
        for &b in got {
            if !self.in_string {
                if b == b'"' {
                    self.in_string = true;
                    self.string_len = 0;
                }
                continue;
            }
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                continue;
            }
            self.string_len += 1;
            if self.string_len > MAX_TOC_STRING_BYTES {
                return Err(self.refuse(TocRefusal::LongString));
            }
        }
        Ok(n)
    }
}

/// Reads a stream through [`BlobRead`] offsets, forward only, so the tar
/// [`Scanner`] can find the TOC entry's header in a decompressing stream.
struct Forward<R> {
    inner: RefCell<(R, u64)>,
}

impl<R: Read> BlobRead for Forward<R> {
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut g = self.inner.borrow_mut();
        let (r, pos) = &mut *g;
        let gap = offset
            .checked_sub(*pos)
            .ok_or_else(|| io::Error::other("TOC tar read backwards"))?;
        io::copy(&mut (&mut *r).take(gap), &mut io::sink())?;
        // `len` is a header block or a PAX/GNU record (at most
        // tar::MAX_META_SIZE), never a payload.
        let mut buf = vec![0u8; len];
        r.read_exact(&mut buf)?;
        *pos = offset + len as u64;
        Ok(buf)
    }
}

/// The stream of the TOC's JSON bytes, and how many there must be.
fn toc_json_stream<'a>(
    loc: &TocLocation,
    compressed: impl Read + 'a,
    max: u64,
) -> Result<(Box<dyn Read + 'a>, u64), Error> {
    match loc.compression {
        Compression::Gzip => {
            // One member only: GzDecoder stops at the end of the first.
            let tar = Forward {
                inner: RefCell::new((flate2::read::GzDecoder::new(compressed), 0)),
            };
            let first = Scanner::new(&tar, u64::MAX)
                .next_entry()
                .map_err(|e| Error::BadToc(format!("TOC tar: {e}")))?
                .ok_or_else(|| Error::BadToc("TOC member holds no tar entry".into()))?;
            if first.entry.name != TOC_NAME {
                return Err(Error::BadToc(format!(
                    "TOC member's first entry is {:?}, not {TOC_NAME}",
                    first.entry.name
                )));
            }
            let len = first.entry.size;
            if len > max {
                return Err(Error::Limit(format!("TOC of {len} bytes exceeds {max}")));
            }
            let (dec, pos) = tar.inner.into_inner();
            if pos != first.data_offset {
                return Err(Error::BadToc("TOC tar entry is not where it says".into()));
            }
            Ok((Box::new(dec.take(len)), len))
        }
        Compression::Zstd => {
            let want = loc.uncompressed_len.unwrap_or(0);
            if want > max {
                return Err(Error::Limit(format!(
                    "zstd:chunked TOC of {want} bytes exceeds {max}"
                )));
            }
            let dec = zstd::stream::read::Decoder::new(compressed)
                .map_err(|e| Error::BadToc(format!("zstd: {e}")))?
                .single_frame();
            // One byte more than promised, so a frame that inflates to
            // more than the footer says is refused, not cut short.
            Ok((Box::new(dec.take(want.saturating_add(1))), want))
        }
    }
}

/// Inflates and parses the TOC in one pass, hashing the JSON as it goes.
/// On a parse error with a digest to check, the rest is read too, so a
/// TOC that is not the one the label names says so rather than why it
/// does not parse.
fn parse_toc(
    loc: &TocLocation,
    compressed: impl Read,
    opts: &OpenOptions,
) -> Result<(Digest, LayerTree, u64), Error> {
    let (json, want) = toc_json_stream(loc, compressed, opts.max_toc_bytes)?;
    let mut json = TocJson::new(json, opts.max_toc_bytes);
    let parsed = toc::parse_reader(
        io::BufReader::with_capacity(64 * 1024, &mut json),
        loc.data_end,
        loc.compression,
        opts.limits,
    );
    let parsed = match (parsed, json.refused.take()) {
        (_, Some(why)) => return Err(Error::Limit(why.to_string())),
        (Err(e), _) => {
            if let Some(expected) = opts.toc_digest
                && json.drain().is_ok()
            {
                let actual = json.hasher.finish();
                if actual != expected {
                    return Err(Error::TocDigestMismatch { expected, actual });
                }
            }
            return Err(e);
        }
        (Ok(tree), None) => tree,
    };
    if json.read != want {
        return Err(Error::BadToc(format!(
            "TOC inflates to {} bytes, {} says {want}",
            json.read,
            match loc.compression {
                Compression::Gzip => "its tar header",
                Compression::Zstd => "the zstd:chunked footer",
            }
        )));
    }
    Ok((json.hasher.finish(), parsed, json.read))
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
        // The TOC is read in pieces and parsed as it inflates: nothing
        // here is sized by what the layer claims.
        let parsed = if loc.start >= tail_start {
            let part = &tail[(loc.start - tail_start) as usize..(loc.end - tail_start) as usize];
            parse_toc(&loc, part, opts)?
        } else {
            let r = BlobReader::new(blob, loc.start, loc.end, BLOB_READ_PIECE);
            parse_toc(&loc, r, opts)?
        };
        Layer::checked(footer, &loc, blob_size, parsed, opts, started)
    }

    /// Opens a layer whose footer says its TOC is elsewhere
    /// ([`Error::ExternalToc`]), with that TOC: `toc_blob`, the blob of the
    /// `-esgztoc` image (one gzip stream of a tar whose first entry is
    /// `stargz.index.json`), checked against `opts.toc_digest` as a TOC in
    /// the blob would be.
    pub fn open_external_toc(
        blob_size: u64,
        toc_blob: &[u8],
        opts: &OpenOptions,
    ) -> Result<Layer, Error> {
        let started = Instant::now();
        let footer_start = blob_size
            .checked_sub(Footer::ExternalToc.size() as u64)
            .ok_or_else(|| Error::BadFooter(format!("a {blob_size}-byte blob has no footer")))?;
        if toc_blob.len() as u64 > opts.max_toc_bytes {
            return Err(Error::Limit(format!(
                "external TOC blob of {} bytes",
                toc_blob.len()
            )));
        }
        let loc = TocLocation {
            compression: Compression::Gzip,
            start: 0,
            end: toc_blob.len() as u64,
            data_end: footer_start,
            uncompressed_len: None,
        };
        let parsed = parse_toc(&loc, toc_blob, opts)?;
        Layer::checked(Footer::ExternalToc, &loc, blob_size, parsed, opts, started)
    }

    /// The layer of a parsed TOC, once its digest is the one asked for.
    fn checked(
        footer: Footer,
        loc: &TocLocation,
        blob_size: u64,
        (toc_digest, tree, toc_bytes): (Digest, LayerTree, u64),
        opts: &OpenOptions,
        started: Instant,
    ) -> Result<Layer, Error> {
        if let Some(expected) = opts.toc_digest
            && expected != toc_digest
        {
            return Err(Error::TocDigestMismatch {
                expected,
                actual: toc_digest,
            });
        }
        tracing::debug!(
            blob_size,
            toc_bytes,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn zstd_chunked(json: &[u8], declared: u64) -> Vec<u8> {
        let frame = zstd::encode_all(json, 3).unwrap();
        let mut blob = vec![0x50, 0x2a, 0x4d, 0x18];
        blob.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        blob.extend_from_slice(&frame);
        blob.extend_from_slice(
            &Footer::ZstdChunked {
                toc_offset: 8,
                toc_compressed_len: frame.len() as u64,
                toc_uncompressed_len: declared,
            }
            .encode(),
        );
        blob
    }

    #[test]
    fn a_zstd_toc_must_inflate_to_exactly_what_the_footer_says() {
        let json = br#"{"version":1,"entries":[{"name":"d","type":"dir"}]}"#;
        let n = json.len() as u64;
        let open = |declared| {
            let b = zstd_chunked(json, declared);
            Layer::open(&b[..], b.len() as u64, &OpenOptions::default())
        };
        let layer = open(n).unwrap();
        assert_eq!(layer.toc_digest, Digest::of(json));
        assert!(layer.tree.lookup_path("d").is_some());
        for declared in [n - 1, n + 1] {
            let err = open(declared).unwrap_err();
            assert!(
                matches!(err, Error::BadToc(_) | Error::Limit(_)),
                "{declared}: {err}"
            );
        }
        let err = open(u64::MAX).unwrap_err();
        assert!(matches!(err, Error::Limit(_)), "{err}");
    }
}
