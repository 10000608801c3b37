//! tar (plain, gzip or zstd) → eStargz, as the reference `estargz.Build`
//! lays it out (estargz-format.md §2, §5.1, §7, §11). The input streams
//! through: without prioritized files it is read once, front to back;
//! with them, a first pass spools only those files, and the last pass
//! streams the rest. Members are compressed on as many threads as asked;
//! the same input always gives the same bytes, whatever the threads.
//!
//! Layout: this file holds the options, results and the build's steps;
//! `order` (decompressing the input, spooling and ordering the
//! prioritized files), `entry` (one entry's header, chunks and TOC
//! entries), `member` (gzip members, offsets, blob digest and DiffID).

mod entry;
mod member;
mod order;

use std::collections::HashSet;
use std::io::{self, Read, Write};

use crate::digest::Digest;
use crate::footer::Footer;
use crate::limits::MAX_CHUNK_SPAN;
use crate::name;
use crate::tar::{self, Entry, EntryType, Located, TarError, TarStream};
use crate::toc::{TOC_NAME, TocDocument, TocEntry};
use crate::tree::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK};
use entry::{Payload, TocBuilder, write_entry};
use member::MemberWriter;
pub use order::decompressed;
use order::{is_replaced, order_prioritized, spool_prioritized};

/// The single byte a landmark file holds.
pub const LANDMARK_CONTENT: u8 = 0x0f;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("input tar: {0}")]
    Tar(#[from] TarError),
    #[error("prioritized file {0:?} is not in the layer")]
    MissingPrioritized(String),
    #[error("bad option: {0}")]
    Option(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The gzip level used unless asked otherwise: libdeflate's 6. On the
/// bench images it writes smaller blobs than the reference's default (Go's
/// level 9: 76.3 MB against 78.5 MB for gcc's largest layer) in an eighth
/// of the time of libdeflate's 9, whose deeper match search crawls on
/// repetitive files (3.3 s against 26.8 s on 2 cores).
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 6;
/// The zstd level used for zstd:chunked unless asked otherwise: zstd's
/// default, as the reference's `--zstdchunked-compression-level`.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// What kind of blob the writer makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// eStargz: gzip members, the TOC as a tar entry in the last member,
    /// the 51-byte gzip footer.
    #[default]
    Estargz,
    /// zstd:chunked as the reference writes it: zstd frames, the TOC as
    /// one zstd frame in a skippable frame, a 40-byte footer in another
    /// (readers that do not know it decompress the tar and skip both).
    ZstdChunked,
    /// eStargz with an external TOC: the blob has the payload members and
    /// the 46-byte `STARGZEXTERNALTOC` footer; the TOC goes into a blob of
    /// its own ([`Built::external_toc`]), which converters put in the
    /// image's `-esgztoc` image.
    ExternalToc,
}

impl OutputFormat {
    /// The levels the format's compressor takes, and its default.
    pub fn levels(self) -> (std::ops::RangeInclusive<i32>, i32) {
        match self {
            OutputFormat::Estargz | OutputFormat::ExternalToc => {
                (0..=12, DEFAULT_COMPRESSION_LEVEL)
            }
            OutputFormat::ZstdChunked => (1..=22, DEFAULT_ZSTD_LEVEL),
        }
    }
}

/// Build options.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Uncompressed bytes per chunk (reference default 4 MiB).
    pub chunk_size: u64,
    /// A file starts a new gzip member only once the current one holds at
    /// least this many uncompressed bytes; smaller files share members
    /// (TOC `innerOffset`). 0: every file starts its own, as the
    /// reference does by default.
    pub min_chunk_size: u64,
    pub format: OutputFormat,
    /// gzip level, 0 (store) to 12 (libdeflate's best); zstd's 1 to 22
    /// for zstd:chunked ([`OutputFormat::levels`]).
    pub compression_level: i32,
    /// Files to put first, in this order, before `.prefetch.landmark`.
    pub prioritized: Vec<String>,
    /// Record missing prioritized files instead of failing.
    pub allow_missing_prioritized: bool,
    /// Threads compressing members (0 or 1: the caller's own).
    pub threads: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            chunk_size: 4 << 20,
            min_chunk_size: 0,
            format: OutputFormat::Estargz,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            prioritized: Vec::new(),
            allow_missing_prioritized: false,
            threads: 1,
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub blob_size: u64,
    pub blob_digest: Digest,
    /// The `containerd.io/snapshot/stargz/toc.digest` annotation.
    pub toc_digest: Digest,
    /// sha256 of the whole decompressed blob: the layer's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// Length of the decompressed blob (the
    /// `io.containers.estargz.uncompressed-size` annotation).
    pub uncompressed_size: u64,
    /// Prioritized names that were not found (with `allow_missing_prioritized`).
    pub missing_prioritized: Vec<String>,
    /// zstd:chunked's own descriptor annotations, for that format.
    pub zstd_chunked: Option<ZstdChunkedManifest>,
    /// The TOC blob, for [`OutputFormat::ExternalToc`]: one gzip stream
    /// of a tar holding `stargz.index.json`.
    pub external_toc: Option<Vec<u8>>,
}

/// Where a zstd:chunked blob keeps its TOC (the "manifest"), as the
/// `io.containers.zstd-chunked.*` annotations say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZstdChunkedManifest {
    /// sha256 of the compressed TOC frame (`…manifest-checksum`).
    pub checksum: Digest,
    /// `OFFSET:COMPRESSED:UNCOMPRESSED:1` (`…manifest-position`).
    pub position: String,
}

/// Largest chunk size the writer takes: half of what a reader accepts as
/// one member's compressed span ([`MAX_CHUNK_SPAN`]), leaving the other
/// half for deflate's expansion of incompressible data and the headers
/// that share the last chunk's member.
pub const MAX_WRITER_CHUNK_SIZE: u64 = MAX_CHUNK_SPAN / 2;

/// Converts a tar stream into an eStargz blob written to `out`. With
/// prioritized files the input is spooled (as it came, compressed or not)
/// so it can be read twice; [`build_from`] reads a source that can be
/// opened again instead.
pub fn build(input: impl Read, out: impl Write, opts: &WriterOptions) -> Result<Built, WriteError> {
    if opts.prioritized.is_empty() {
        let mut input = Some(input);
        return build_from(
            || {
                input
                    .take()
                    .ok_or_else(|| io::Error::other("the input was read already"))
            },
            out,
            opts,
        );
    }
    let mut spool = tempfile::tempfile()?;
    let mut input = input;
    io::copy(&mut input, &mut spool)?;
    build_from(
        || {
            let mut f = spool.try_clone()?;
            io::Seek::rewind(&mut f)?;
            Ok(f)
        },
        out,
        opts,
    )
}

/// Converts the tar (plain, gzip or zstd) that `open` reads from its
/// start into an eStargz blob written to `out`. `open` is called once
/// without prioritized files, two or three times with them.
pub fn build_from<R: Read>(
    mut open: impl FnMut() -> io::Result<R>,
    out: impl Write,
    opts: &WriterOptions,
) -> Result<Built, WriteError> {
    check_options(opts)?;
    let mut w = MemberWriter::new(out, opts.format, opts.compression_level, opts.threads)?;
    let mut toc = TocBuilder::default();
    let mut written: HashSet<String> = HashSet::new();
    let mut missing = Vec::new();
    if opts.prioritized.is_empty() {
        write_landmark(&mut w, &mut toc, NO_PREFETCH_LANDMARK, opts)?;
    } else {
        let spooled = spool_prioritized(&mut open, opts)?;
        let (first, not_found) = order_prioritized(&spooled.entries, opts)?;
        missing = not_found;
        let landmark = if first.is_empty() {
            // None of the files is in this layer: nothing to prefetch.
            NO_PREFETCH_LANDMARK
        } else {
            PREFETCH_LANDMARK
        };
        for i in first {
            let Located {
                entry, data_offset, ..
            } = &spooled.entries[i];
            written.insert(name::clean(&entry.name));
            let payload = Payload::Spool(&spooled.file, *data_offset);
            write_entry(&mut w, &mut toc, entry, payload, opts)?;
        }
        write_landmark(&mut w, &mut toc, landmark, opts)?;
    }
    let mut tar = TarStream::new(decompressed(open()?)?);
    while let Some(entry) = tar.next_entry()? {
        let clean = name::clean(&entry.name);
        if is_replaced(&clean) || written.contains(&clean) {
            continue;
        }
        write_entry(&mut w, &mut toc, &entry, Payload::Stream(&mut tar), opts)?;
    }
    drain(tar.into_inner())?;
    let (mut zstd_chunked, mut external_toc) = (None, None);
    let toc_digest = match opts.format {
        OutputFormat::Estargz => write_toc(&mut w, toc)?,
        OutputFormat::ZstdChunked => {
            let (digest, manifest) = write_zstd_toc(&mut w, toc, opts.compression_level)?;
            zstd_chunked = Some(manifest);
            digest
        }
        OutputFormat::ExternalToc => {
            let (digest, blob) = write_external_toc(&mut w, toc, opts.compression_level)?;
            external_toc = Some(blob);
            digest
        }
    };
    let (blob_size, blob_digest, diff_id, uncompressed_size) = w.close()?;
    Ok(Built {
        blob_size,
        blob_digest,
        toc_digest,
        diff_id,
        uncompressed_size,
        missing_prioritized: missing,
        zstd_chunked,
        external_toc,
    })
}

/// Reads what follows the end-of-archive blocks to the end, so that a
/// source checking its bytes at the end (a registry blob against its
/// digest) has checked every byte a pass used.
pub(super) fn drain(mut rest: impl Read) -> Result<(), WriteError> {
    io::copy(&mut rest, &mut io::sink())?;
    Ok(())
}

/// A landmark file: one byte, which tells readers where prefetch ends
/// (or that there is none).
fn write_landmark<W: Write>(
    w: &mut MemberWriter<W>,
    toc: &mut TocBuilder,
    name: &str,
    opts: &WriterOptions,
) -> Result<(), WriteError> {
    let entry = Entry {
        name: name.to_string(),
        entry_type: Some(EntryType::Reg),
        size: 1,
        ..Entry::default()
    };
    write_entry(w, toc, &entry, Payload::Bytes(&[LANDMARK_CONTENT]), opts)
}

/// Refuses options a reader would refuse the result of.
fn check_options(opts: &WriterOptions) -> Result<(), WriteError> {
    if opts.chunk_size == 0 {
        return Err(WriteError::Option("chunk size must be positive".into()));
    }
    if opts.chunk_size > MAX_WRITER_CHUNK_SIZE {
        return Err(WriteError::Option(format!(
            "chunk size {} exceeds {MAX_WRITER_CHUNK_SIZE}: readers refuse members spanning more than {MAX_CHUNK_SPAN} bytes",
            opts.chunk_size
        )));
    }
    let (levels, _) = opts.format.levels();
    if !levels.contains(&opts.compression_level) {
        return Err(WriteError::Option(format!(
            "compression level {} is outside {levels:?} for {:?}",
            opts.compression_level, opts.format
        )));
    }
    Ok(())
}

/// Ends the last payload member, then writes the TOC (its tar header,
/// JSON and the end-of-archive blocks, one member) and the footer.
/// Returns the TOC's digest.
fn write_toc<W: Write>(w: &mut MemberWriter<W>, toc: TocBuilder) -> Result<Digest, WriteError> {
    let json = toc_json(w, toc)?;
    let toc_offset = w.written();
    w.append(&toc_tar(&json));
    w.drain()?;
    w.write_raw(&Footer::Estargz { toc_offset }.encode())?;
    Ok(Digest::of(&json))
}

/// Ends the last payload member; the TOC's JSON, every offset resolved.
fn toc_json<W: Write>(w: &mut MemberWriter<W>, toc: TocBuilder) -> Result<Vec<u8>, WriteError> {
    let entries: Vec<TocEntry<'static>> = toc.finish(w.drain()?);
    Ok(TocDocument {
        version: 1,
        entries,
    }
    .to_json())
}

/// The TOC as the tar the reference wraps it in: its header, the JSON,
/// padding and the end-of-archive blocks.
fn toc_tar(json: &[u8]) -> Vec<u8> {
    let header = Entry {
        name: TOC_NAME.to_string(),
        entry_type: Some(EntryType::Reg),
        size: json.len() as u64,
        ..Entry::default()
    };
    let mut out = tar::encode_header(&header);
    out.extend_from_slice(json);
    out.resize(out.len() + tar::padding(json.len() as u64), 0);
    out.extend_from_slice(&[0u8; 2 * tar::BLOCK]);
    out
}

/// External TOC, as the reference writes it: the blob ends with the
/// payload (no end-of-archive blocks) and the 46-byte footer; the TOC's
/// tar, gzipped on its own, is returned as the TOC blob.
fn write_external_toc<W: Write>(
    w: &mut MemberWriter<W>,
    toc: TocBuilder,
    level: i32,
) -> Result<(Digest, Vec<u8>), WriteError> {
    let json = toc_json(w, toc)?;
    w.write_raw(&Footer::ExternalToc.encode())?;
    let tar = toc_tar(&json);
    let mut c = libdeflater::Compressor::new(
        libdeflater::CompressionLvl::new(level)
            .map_err(|_| WriteError::Option(format!("compression level {level}")))?,
    );
    let mut blob = vec![0u8; c.gzip_compress_bound(tar.len())];
    let n = c
        .gzip_compress(&tar, &mut blob)
        .map_err(|e| io::Error::other(format!("gzip: {e}")))?;
    blob.truncate(n);
    Ok((Digest::of(&json), blob))
}

/// zstd:chunked's trailer, as the reference writes it: the TOC JSON (not
/// a tar entry, and no end-of-archive blocks: the payload's tar ends with
/// its last entry) as one zstd frame inside a skippable frame, then the
/// footer in another. Returns the TOC's digest (of the JSON) and the
/// annotations that locate it.
fn write_zstd_toc<W: Write>(
    w: &mut MemberWriter<W>,
    toc: TocBuilder,
    level: i32,
) -> Result<(Digest, ZstdChunkedManifest), WriteError> {
    let json = toc_json(w, toc)?;
    let compressed = zstd::bulk::compress(&json, level)?;
    let frame_len = u32::try_from(compressed.len())
        .map_err(|_| WriteError::Option("the TOC does not fit a zstd skippable frame".into()))?;
    w.write_raw(&crate::footer::ZSTD_SKIPPABLE_MAGIC)?;
    w.write_raw(&frame_len.to_le_bytes())?;
    let toc_offset = w.written();
    w.write_raw(&compressed)?;
    w.write_raw(
        &Footer::ZstdChunked {
            toc_offset,
            toc_compressed_len: compressed.len() as u64,
            toc_uncompressed_len: json.len() as u64,
        }
        .encode(),
    )?;
    let manifest = ZstdChunkedManifest {
        checksum: Digest::of(&compressed),
        position: format!("{toc_offset}:{}:{}:1", compressed.len(), json.len()),
    };
    Ok((Digest::of(&json), manifest))
}

/// [`build`] into memory.
pub fn build_to_vec(
    input: impl Read,
    opts: &WriterOptions,
) -> Result<(Vec<u8>, Built), WriteError> {
    let mut blob = Vec::new();
    let built = build(input, &mut blob, opts)?;
    Ok((blob, built))
}

#[cfg(test)]
mod tests;
