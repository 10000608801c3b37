//! tar (plain, gzip or zstd) → eStargz, as the reference `estargz.Build`
//! lays it out (estargz-format.md §2, §5.1, §7, §11), single-threaded so
//! the same input always gives the same bytes.

//!
//! Layout: this file holds the options, results and the build's steps;
//! `order` (spooling the input, choosing and ordering entries), `entry`
//! (one entry's header, chunks and TOC entries), `member` (gzip members,
//! offsets, blob digest and DiffID).

mod entry;
mod member;
mod order;

use std::io::{self, Read, Write};

use crate::digest::Digest;
use crate::footer::Footer;
use crate::limits::MAX_CHUNK_SPAN;
use crate::tar::{self, Entry, EntryType, Located, TarError};
use crate::toc::{TOC_NAME, TocDocument, TocEntry};
use entry::{NameEmitter, Payload, write_entry};
use member::MemberWriter;
use order::{Item, order_entries, read_entries, spool_tar};

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

/// Build options.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Uncompressed bytes per chunk (reference default 4 MiB).
    pub chunk_size: u64,
    /// gzip level, 0 (store) to 12 (libdeflate's best); reference default 9.
    pub compression_level: i32,
    /// Files to put first, in this order, before `.prefetch.landmark`.
    pub prioritized: Vec<String>,
    /// Record missing prioritized files instead of failing.
    pub allow_missing_prioritized: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            chunk_size: 4 << 20,
            compression_level: 9,
            prioritized: Vec::new(),
            allow_missing_prioritized: false,
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
    /// Prioritized names that were not found (with `allow_missing_prioritized`).
    pub missing_prioritized: Vec<String>,
}

/// Largest chunk size the writer takes: half of what a reader accepts as
/// one member's compressed span ([`MAX_CHUNK_SPAN`]), leaving the other
/// half for deflate's expansion of incompressible data and the headers
/// that share the last chunk's member.
pub const MAX_WRITER_CHUNK_SIZE: u64 = MAX_CHUNK_SPAN / 2;

/// Converts a tar stream into an eStargz blob written to `out`.
pub fn build(input: impl Read, out: impl Write, opts: &WriterOptions) -> Result<Built, WriteError> {
    check_options(opts)?;
    let (spool, len) = spool_tar(input)?;
    let entries = read_entries(&spool, len)?;
    let (order, missing) = order_entries(&entries, opts)?;
    let mut w = MemberWriter::new(out, opts.compression_level)?;
    let mut toc_entries: Vec<TocEntry<'static>> = Vec::new();
    let mut names = NameEmitter::default();
    let landmark_entry = |name: &str| Entry {
        name: name.to_string(),
        entry_type: Some(EntryType::Reg),
        size: 1,
        ..Entry::default()
    };
    for item in order {
        match item {
            Item::Input(i) => {
                let Located {
                    entry, data_offset, ..
                } = &entries[i];
                write_entry(
                    &mut w,
                    &mut toc_entries,
                    &mut names,
                    entry,
                    &Payload::Spool(&spool, *data_offset),
                    opts,
                )?;
            }
            Item::Landmark(name) => {
                write_entry(
                    &mut w,
                    &mut toc_entries,
                    &mut names,
                    &landmark_entry(name),
                    &Payload::Bytes(&[LANDMARK_CONTENT]),
                    opts,
                )?;
            }
        }
    }
    let toc_digest = write_toc(&mut w, toc_entries)?;
    let (blob_size, blob_digest, diff_id) = w.close()?;
    Ok(Built {
        blob_size,
        blob_digest,
        toc_digest,
        diff_id,
        missing_prioritized: missing,
    })
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
    if !(0..=12).contains(&opts.compression_level) {
        return Err(WriteError::Option(format!(
            "compression level {} is outside 0..=12",
            opts.compression_level
        )));
    }
    Ok(())
}

/// Ends the last payload member, then writes the TOC (its tar header,
/// JSON and the end-of-archive blocks, one member) and the footer.
/// Returns the TOC's digest.
fn write_toc<W: Write>(
    w: &mut MemberWriter<W>,
    toc_entries: Vec<TocEntry<'static>>,
) -> Result<Digest, WriteError> {
    w.finish_member()?;
    let toc_offset = w.written;
    let json = TocDocument {
        version: 1,
        entries: toc_entries,
    }
    .to_json();
    let toc_digest = Digest::of(&json);
    let toc_header = Entry {
        name: TOC_NAME.to_string(),
        entry_type: Some(EntryType::Reg),
        size: json.len() as u64,
        ..Entry::default()
    };
    w.append(&tar::encode_header(&toc_header));
    w.append(&json);
    w.append(&vec![0u8; tar::padding(json.len() as u64)]);
    w.append(&[0u8; 2 * tar::BLOCK]);
    w.finish_member()?;
    w.write_raw(&Footer::Estargz { toc_offset }.encode())?;
    Ok(toc_digest)
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
