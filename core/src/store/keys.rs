//! What the store is asked about: a file as one reader's TOC cuts it
//! ([`FileKey`]), one chunk of it ([`StoreChunk`]), and a chunk's bytes
//! checked against it ([`Verified`]).

use crate::digest::{Digest, Hasher};

/// Domain separation for layout digests, so no layout digest is ever a
/// content digest of some file.
const LAYOUT_DOMAIN: &[u8] = b"ringstar store layout v1\0";

/// One chunk of a file as a reader's TOC describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreChunk {
    /// Offset in the file's uncompressed content.
    pub offset: u64,
    pub len: u64,
    /// What the uncompressed bytes must hash to.
    pub digest: Digest,
}

impl StoreChunk {
    /// Checks `data` against this chunk: the only way to a [`Verified`]
    /// chunk, and so the only way into the store.
    pub fn verify<'a>(&self, data: &'a [u8]) -> Option<Verified<'a>> {
        (data.len() as u64 == self.len && Digest::of(data) == self.digest)
            .then_some(Verified { chunk: *self, data })
    }
}

/// A chunk's bytes, hashed and found to be what the chunk says.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a> {
    chunk: StoreChunk,
    data: &'a [u8],
}

impl Verified<'_> {
    pub fn chunk(&self) -> &StoreChunk {
        &self.chunk
    }

    pub fn data(&self) -> &[u8] {
        self.data
    }
}

/// A regular file as one reader's TOC cuts it: what its content is, and
/// how it is chunked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub(super) content: Digest,
    pub(super) size: u64,
    pub(super) layout: Digest,
}

impl FileKey {
    /// The key of a file of `size` bytes whose content hashes to
    /// `content`, cut into `chunks`. `None` unless the chunks tile
    /// `[0, size)`: in order, contiguous, none empty.
    pub fn new(content: Digest, size: u64, chunks: &[StoreChunk]) -> Option<FileKey> {
        let mut h = Hasher::new();
        h.update(LAYOUT_DOMAIN);
        h.update(&content.0);
        h.update(&size.to_le_bytes());
        let mut reach = 0u64;
        for c in chunks {
            if c.offset != reach || c.len == 0 {
                return None;
            }
            reach = c.offset.checked_add(c.len)?;
            h.update(&c.offset.to_le_bytes());
            h.update(&c.len.to_le_bytes());
            h.update(&c.digest.0);
        }
        (reach == size).then(|| FileKey {
            content,
            size,
            layout: h.finish(),
        })
    }

    pub fn content(&self) -> &Digest {
        &self.content
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}
