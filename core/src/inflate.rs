//! Turning one chunk's compressed bytes into verified content.
//!
//! The gzip-bomb rule: the output is exactly the chunk's size, whatever the
//! member would inflate to. libdeflate inflates a whole member at once, so
//! it gets a scratch buffer of the chunk plus a fixed slack (the member
//! also holds tar padding and the following headers); a member larger than
//! that, or a chunk that starts further into its member than the slack,
//! goes through a streaming decoder that discards the bytes before the
//! chunk through a small fixed buffer and stops at the chunk's end.
//! No buffer is ever sized by `innerOffset`.

use std::io::Read;

use crate::digest::{Digest, Hasher};
use crate::error::ChunkError;
use crate::footer::Compression;
use crate::limits::{DEFLATE_MAX_RATIO, MAX_INNER_OFFSET, ZSTD_MAX_RATIO};
use crate::tree::Chunk;

/// Room past the chunk for the padding and headers sharing its member.
const MEMBER_SLACK: usize = 64 * 1024;
/// Largest `innerOffset` the one-shot (libdeflate) path takes; the scratch
/// buffer has this much room before the chunk whatever the offset is.
/// Packed members put small files a few KiB apart, so this keeps most of
/// them on the fast path; larger offsets stream.
const FAST_INNER_MAX: usize = 64 * 1024;
/// Size of the buffer the streaming paths skip and emit through.
const STREAM_PIECE: usize = 64 * 1024;

/// The most uncompressed bytes `compressed_len` bytes of `compression`
/// can stand for.
pub fn max_inflated(compression: Compression, compressed_len: u64) -> u64 {
    let ratio = match compression {
        Compression::Gzip => DEFLATE_MAX_RATIO,
        Compression::Zstd => ZSTD_MAX_RATIO,
    };
    compressed_len.saturating_mul(ratio)
}

/// Why a chunk's geometry cannot be real, if it cannot: `innerOffset`
/// beyond [`MAX_INNER_OFFSET`], or a chunk ending past what its compressed
/// span could inflate to. Shared by TOC validation and the readers.
pub fn check_geometry(compression: Compression, chunk: &Chunk) -> Result<(), GeometryError> {
    if chunk.inner_offset > MAX_INNER_OFFSET {
        return Err(GeometryError::InnerOffset(chunk.inner_offset));
    }
    let span = chunk.compressed_len();
    let most = max_inflated(compression, span);
    match chunk.inner_offset.checked_add(chunk.size) {
        Some(end) if end <= most => Ok(()),
        _ => Err(GeometryError::Unreachable {
            inner_offset: chunk.inner_offset,
            size: chunk.size,
            span,
            most,
        }),
    }
}

/// A chunk no member could hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("innerOffset {0} exceeds {MAX_INNER_OFFSET}")]
    InnerOffset(u64),
    #[error(
        "chunk ends {inner_offset} + {size} bytes into a member of {span} compressed bytes, which inflates to at most {most}"
    )]
    Unreachable {
        inner_offset: u64,
        size: u64,
        span: u64,
        most: u64,
    },
}

/// Reusable state for inflating chunks: one per thread.
pub struct ChunkReader {
    gzip: libdeflater::Decompressor,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader")
            .field("scratch", &self.scratch.capacity())
            .finish()
    }
}

impl Default for ChunkReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkReader {
    pub fn new() -> Self {
        ChunkReader {
            gzip: libdeflater::Decompressor::new(),
            scratch: Vec::new(),
        }
    }

    /// Inflates `chunk` from `compressed` (the blob bytes from
    /// `chunk.offset`, at least through the end of its member; normally
    /// `[offset, next_offset)`) into `out`, which must be exactly
    /// `chunk.size` long, then checks the result against `expected`.
    /// With `expected == None` the read fails: unverified bytes never leave.
    pub fn read(
        &mut self,
        compression: Compression,
        chunk: &Chunk,
        expected: Option<Digest>,
        compressed: &[u8],
        out: &mut [u8],
    ) -> Result<(), ChunkError> {
        let expected = expected.ok_or(ChunkError::Unverifiable)?;
        self.inflate(compression, chunk, compressed, out)?;
        let actual = Digest::of(out);
        if actual != expected {
            return Err(ChunkError::DigestMismatch { expected, actual });
        }
        Ok(())
    }

    /// Inflates without verifying. For writers checking their own output
    /// and for callers that verify by other means.
    pub fn inflate(
        &mut self,
        compression: Compression,
        chunk: &Chunk,
        compressed: &[u8],
        out: &mut [u8],
    ) -> Result<(), ChunkError> {
        if out.len() as u64 != chunk.size {
            return Err(ChunkError::BadRequest(format!(
                "buffer of {} bytes for a {}-byte chunk",
                out.len(),
                chunk.size
            )));
        }
        check_geometry(compression, chunk).map_err(|e| ChunkError::BadRequest(e.to_string()))?;
        // Bounded by MAX_INNER_OFFSET above.
        let inner = chunk.inner_offset;
        match compression {
            Compression::Gzip => self.inflate_gzip(compressed, inner, out),
            Compression::Zstd => stream_exact(zstd_decoder(compressed)?, inner, out),
        }
    }

    /// Streams `chunk` out of `compressed` (read from `chunk.offset` on)
    /// to `sink` in pieces of at most 64 KiB, then checks the whole
    /// against `expected` (`None` fails: nothing is unverifiable by
    /// accident). Memory stays fixed whatever the chunk's size or offset.
    ///
    /// The pieces reach `sink` before the digest is known: on an error the
    /// caller must discard everything it was given (hashing is the use).
    pub fn stream(
        &mut self,
        compression: Compression,
        chunk: &Chunk,
        compressed: impl Read,
        expected: Option<Digest>,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), ChunkError> {
        let expected = expected.ok_or(ChunkError::Unverifiable)?;
        check_geometry(compression, chunk).map_err(|e| ChunkError::BadRequest(e.to_string()))?;
        let mut h = Hasher::new();
        let mut emit = |b: &[u8]| {
            h.update(b);
            sink(b);
        };
        match compression {
            Compression::Gzip => stream_to(
                flate2::read::GzDecoder::new(compressed),
                chunk.inner_offset,
                chunk.size,
                &mut emit,
            )?,
            Compression::Zstd => stream_to(
                zstd_decoder(std::io::BufReader::new(compressed))?,
                chunk.inner_offset,
                chunk.size,
                &mut emit,
            )?,
        }
        let actual = h.finish();
        if actual != expected {
            return Err(ChunkError::DigestMismatch { expected, actual });
        }
        Ok(())
    }

    fn inflate_gzip(
        &mut self,
        compressed: &[u8],
        inner: u64,
        out: &mut [u8],
    ) -> Result<(), ChunkError> {
        let inner_fast = usize::try_from(inner).ok().filter(|&i| i <= FAST_INNER_MAX);
        let Some(inner_fast) = inner_fast else {
            return stream_exact(flate2::read::GzDecoder::new(compressed), inner, out);
        };
        // Sized by the caller's buffer and constants only.
        let cap = out.len().saturating_add(FAST_INNER_MAX + MEMBER_SLACK);
        let want = inner_fast + out.len();
        if self.scratch.len() < cap {
            self.scratch.resize(cap, 0);
        }
        match self
            .gzip
            .gzip_decompress(compressed, &mut self.scratch[..cap])
        {
            Ok(n) if n >= want => {
                out.copy_from_slice(&self.scratch[inner_fast..want]);
                self.shrink_scratch();
                Ok(())
            }
            Ok(n) => Err(ChunkError::Corrupt(format!(
                "member inflates to {n} bytes, chunk needs {want}"
            ))),
            // A member with many headers after the chunk (no room), or one
            // libdeflate refuses as a whole (a bad CRC or bytes after the
            // member, past the chunk's end): stream it and stop at the
            // chunk's end, as the streaming read does, so both agree on
            // which chunks read. The digest check decides what is right.
            Err(_) => stream_exact(flate2::read::GzDecoder::new(compressed), inner, out),
        }
    }

    /// Keeps the scratch buffer for the next chunk only when it is small:
    /// one for a 4 MiB chunk, kept by each inflate thread, was 8 MiB of a
    /// 39 MB RssAnon with three images open (#18); most chunks are small
    /// files, and a big chunk's allocation costs little next to its
    /// inflate.
    fn shrink_scratch(&mut self) {
        const KEEP: usize = (1 << 20) + FAST_INNER_MAX + MEMBER_SLACK;
        if self.scratch.len() > KEEP {
            self.scratch = Vec::new();
        }
    }
}

fn zstd_decoder<R: std::io::BufRead>(
    compressed: R,
) -> Result<zstd::stream::read::Decoder<'static, R>, ChunkError> {
    Ok(zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| ChunkError::Corrupt(format!("zstd: {e}")))?
        .single_frame())
}

fn corrupt(e: std::io::Error) -> ChunkError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            ChunkError::Corrupt("member ends before the chunk does".into())
        }
        _ => ChunkError::Corrupt(e.to_string()),
    }
}

/// Discards `skip` decompressed bytes through a fixed stack buffer.
fn skip_exact(r: &mut impl Read, skip: u64) -> Result<(), ChunkError> {
    let mut piece = [0u8; 8 * 1024];
    let mut left = skip;
    while left > 0 {
        let n = left.min(piece.len() as u64) as usize;
        match r.read(&mut piece[..n]) {
            Ok(0) => {
                return Err(ChunkError::Corrupt(
                    "member ends before the chunk starts".into(),
                ));
            }
            Ok(got) => left -= got as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ChunkError::Corrupt(e.to_string())),
        }
    }
    Ok(())
}

fn stream_exact(mut r: impl Read, skip: u64, out: &mut [u8]) -> Result<(), ChunkError> {
    skip_exact(&mut r, skip)?;
    r.read_exact(out).map_err(corrupt)
}

/// Skips `skip` bytes, then hands exactly `size` bytes to `emit` in
/// pieces of at most [`STREAM_PIECE`].
fn stream_to(
    mut r: impl Read,
    skip: u64,
    size: u64,
    emit: &mut impl FnMut(&[u8]),
) -> Result<(), ChunkError> {
    skip_exact(&mut r, skip)?;
    let mut piece = vec![0u8; STREAM_PIECE];
    let mut left = size;
    while left > 0 {
        let n = left.min(STREAM_PIECE as u64) as usize;
        r.read_exact(&mut piece[..n]).map_err(corrupt)?;
        emit(&piece[..n]);
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::default());
        let mut out = vec![0u8; c.gzip_compress_bound(data.len())];
        let n = c.gzip_compress(data, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn reads_exactly_the_chunk_from_a_larger_member() {
        let member: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let z = gzip(&member);
        let mut r = ChunkReader::new();
        for (inner, size) in [(0usize, 5000usize), (0, 10), (100, 900), (4999, 1)] {
            let chunk = Chunk::new(1, 1 + z.len() as u64, inner as u64, 0, size as u64);
            let want = &member[inner..inner + size];
            let mut out = vec![0u8; size];
            r.read(
                Compression::Gzip,
                &chunk,
                Some(Digest::of(want)),
                &z,
                &mut out,
            )
            .unwrap();
            assert_eq!(out, want);
        }
        // Past the member's end.
        let chunk = Chunk::new(1, 1 + z.len() as u64, 4990, 0, 20);
        let mut out = vec![0u8; 20];
        assert!(matches!(
            r.inflate(Compression::Gzip, &chunk, &z, &mut out),
            Err(ChunkError::Corrupt(_))
        ));
    }

    #[test]
    fn a_gzip_bomb_costs_only_the_chunk() {
        // 64 MiB of zeros compress to ~64 KiB; the chunk wants 10 bytes.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        let chunk = Chunk::new(1, 2, 0, 0, 10);
        let mut out = vec![1u8; 10];
        let mut r = ChunkReader::new();
        r.read(
            Compression::Gzip,
            &chunk,
            Some(Digest::of(&[0u8; 10])),
            &bomb,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [0u8; 10]);
        assert!(
            r.scratch.len() <= 10 + FAST_INNER_MAX + MEMBER_SLACK,
            "scratch grew to {}",
            r.scratch.len()
        );
    }

    #[test]
    fn refuses_bad_digests_bad_buffers_and_garbage() {
        let z = gzip(b"hello world");
        let chunk = Chunk::new(1, 2, 0, 0, 5);
        let mut r = ChunkReader::new();
        let mut out = [0u8; 5];
        assert!(matches!(
            r.read(
                Compression::Gzip,
                &chunk,
                Some(Digest::of(b"jello")),
                &z,
                &mut out
            ),
            Err(ChunkError::DigestMismatch { .. })
        ));
        assert!(matches!(
            r.read(Compression::Gzip, &chunk, None, &z, &mut out),
            Err(ChunkError::Unverifiable)
        ));
        let mut wrong = [0u8; 4];
        assert!(matches!(
            r.inflate(Compression::Gzip, &chunk, &z, &mut wrong),
            Err(ChunkError::BadRequest(_))
        ));
        assert!(
            r.inflate(Compression::Gzip, &chunk, b"not gzip at all", &mut out)
                .is_err()
        );
        assert!(
            r.inflate(Compression::Zstd, &chunk, b"not zstd at all", &mut out)
                .is_err()
        );
        assert!(
            r.inflate(Compression::Gzip, &chunk, &z[..z.len() / 2], &mut out)
                .is_err()
        );
    }

    #[test]
    fn inner_offsets_never_size_a_buffer() {
        // #14: these made the scratch buffer ask for 64 TiB (abort) and
        // overflow its capacity (panic). Now they are refused up front.
        let z = gzip(&[7u8; 4096]);
        let mut r = ChunkReader::new();
        for inner in [1u64 << 46, i64::MAX as u64, u64::MAX, MAX_INNER_OFFSET + 1] {
            let chunk = Chunk::new(1, u64::MAX, inner, 0, 10);
            let mut out = [0u8; 10];
            for c in [Compression::Gzip, Compression::Zstd] {
                assert!(
                    matches!(
                        r.inflate(c, &chunk, &z, &mut out),
                        Err(ChunkError::BadRequest(_))
                    ),
                    "{inner}"
                );
                assert!(matches!(
                    r.stream(c, &chunk, &z[..], Some(Digest::of(b"")), |_| {}),
                    Err(ChunkError::BadRequest(_))
                ));
            }
        }
        assert_eq!(r.scratch.capacity(), 0);
        // An offset the span cannot inflate to: 100 compressed bytes of
        // gzip are at most 103 200 uncompressed.
        let chunk = Chunk::new(1, 101, 200_000, 0, 10);
        let mut out = [0u8; 10];
        assert!(matches!(
            r.inflate(Compression::Gzip, &chunk, &z, &mut out),
            Err(ChunkError::BadRequest(_))
        ));
    }

    #[test]
    fn a_chunk_deep_in_its_member_streams_through_a_fixed_buffer() {
        // A packed member: the chunk starts 3 MiB in. The bytes before it
        // are skipped, not buffered.
        let member: Vec<u8> = (0..4u32 << 20).map(|i| (i % 253) as u8).collect();
        let z = gzip(&member);
        let inner = 3usize << 20;
        let size = 1000;
        let want = &member[inner..inner + size];
        let chunk = Chunk::new(1, 1 + z.len() as u64, inner as u64, 0, size as u64);
        let mut r = ChunkReader::new();
        let mut out = vec![0u8; size];
        r.read(
            Compression::Gzip,
            &chunk,
            Some(Digest::of(want)),
            &z,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, want);
        assert!(
            r.scratch.len() <= size + FAST_INNER_MAX + MEMBER_SLACK,
            "scratch grew to {} for a {size}-byte chunk",
            r.scratch.len()
        );
        let mut streamed = Vec::new();
        r.stream(
            Compression::Gzip,
            &chunk,
            &z[..],
            Some(Digest::of(want)),
            |p| {
                assert!(p.len() <= STREAM_PIECE);
                streamed.extend_from_slice(p)
            },
        )
        .unwrap();
        assert_eq!(streamed, want);
        // zstd the same way.
        let zz = zstd::encode_all(&member[..], 3).unwrap();
        let chunk = Chunk::new(1, 1 + zz.len() as u64, inner as u64, 0, size as u64);
        r.read(
            Compression::Zstd,
            &chunk,
            Some(Digest::of(want)),
            &zz,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, want);
    }

    #[test]
    fn streaming_a_chunk_larger_than_its_data_fails_cleanly() {
        // Declared 64 MiB (within what 70 KiB of deflate could be), the
        // member holds 5000 bytes: an error after the real bytes, and no
        // buffer of the declared size.
        let z = gzip(&[1u8; 5000]);
        let chunk = Chunk::new(1, 70_000, 0, 0, 64 << 20);
        let mut got = 0usize;
        let err = ChunkReader::new()
            .stream(
                Compression::Gzip,
                &chunk,
                &z[..],
                Some(Digest::of(b"")),
                |p| got += p.len(),
            )
            .unwrap_err();
        assert!(matches!(err, ChunkError::Corrupt(_)), "{err}");
        assert!(got <= 5000);
    }

    #[test]
    fn zstd_frames_are_bounded_too() {
        let data = vec![3u8; 1 << 20];
        let z = zstd::encode_all(&data[..], 3).unwrap();
        let chunk = Chunk::new(1, 2, 1000, 0, 100);
        let mut out = vec![0u8; 100];
        ChunkReader::new()
            .read(
                Compression::Zstd,
                &chunk,
                Some(Digest::of(&[3u8; 100])),
                &z,
                &mut out,
            )
            .unwrap();
    }
}
