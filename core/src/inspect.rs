//! The raw per-entry view behind `ringstar inspect`: every name the TOC
//! defines (implicit directories and landmarks included), each regular
//! file read back chunk by chunk through inflate and verification.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;

use crate::blob::{BlobRead, BlobReader};
use crate::digest::{Digest, Hasher};
use crate::error::ChunkError;
use crate::inflate::ChunkReader;
use crate::layer::Layer;
use crate::limits::BLOB_READ_PIECE;
use crate::tree::{FileKind, NodeId};

/// One entry, field names as in the conformance testdata.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Content sha256 (hex), for regular files that read back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Why a regular file did not read back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor: Option<u32>,
    /// Values base64.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    pub mtime: i64,
    pub nlink: u32,
}

/// Reads a regular file's whole content through inflate + verify, calling
/// `sink` with pieces of at most 64 KiB as they inflate. Memory stays
/// fixed whatever sizes the TOC declares: compressed bytes come in pieces
/// ([`BLOB_READ_PIECE`]) and nothing is allocated by a chunk's size. A
/// chunk's pieces reach `sink` before its digest is checked: on an error,
/// discard what `sink` got.
pub fn read_file<B: BlobRead + ?Sized>(
    layer: &Layer,
    blob: &B,
    reader: &mut ChunkReader,
    node: NodeId,
    mut sink: impl FnMut(&[u8]),
) -> Result<(), ChunkError> {
    let tree = &layer.tree;
    for chunk in tree.chunks(node) {
        let compressed = BlobReader::new(blob, chunk.offset, chunk.next_offset, BLOB_READ_PIECE);
        reader.stream(
            layer.compression,
            chunk,
            compressed,
            tree.chunk_digest(node, chunk),
            &mut sink,
        )?;
    }
    Ok(())
}

/// The content digest of a regular file, read and verified chunk by chunk
/// and checked against the file's own `digest` when the TOC has one.
pub fn file_digest<B: BlobRead + ?Sized>(
    layer: &Layer,
    blob: &B,
    reader: &mut ChunkReader,
    node: NodeId,
) -> Result<Digest, ChunkError> {
    let mut h = Hasher::new();
    read_file(layer, blob, reader, node, |b| h.update(b))?;
    let got = h.finish();
    match layer.tree.digest(node) {
        Some(expected) if expected != got => Err(ChunkError::DigestMismatch {
            expected,
            actual: got,
        }),
        _ => Ok(got),
    }
}

/// Every entry of the layer, sorted by name.
pub fn inspect<B: BlobRead + ?Sized>(layer: &Layer, blob: &B) -> Vec<Record> {
    let tree = &layer.tree;
    let mut reader = ChunkReader::new();
    let mut out: Vec<Record> = tree
        .walk()
        .into_iter()
        .map(|(name, id)| {
            let n = tree.node(id);
            let (major, minor) = match n.kind() {
                FileKind::Char | FileKind::Block => (Some(n.rdev().0), Some(n.rdev().1)),
                _ => (None, None),
            };
            let mut r = Record {
                name,
                kind: n.kind().name(),
                mode: n.mode(),
                uid: n.uid(),
                gid: n.gid(),
                uname: tree.uname(id).map(str::to_string),
                gname: tree.gname(id).map(str::to_string),
                size: None,
                sha256: None,
                error: None,
                link: tree.link_target(id).map(str::to_string),
                major,
                minor,
                xattrs: tree
                    .xattrs(id)
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            base64::engine::general_purpose::STANDARD.encode(v),
                        )
                    })
                    .collect(),
                mtime: n.mtime(),
                nlink: n.nlink(),
            };
            if n.kind() == FileKind::Reg {
                r.size = Some(n.size());
                match file_digest(layer, blob, &mut reader, id) {
                    Ok(d) => r.sha256 = Some(d.hex()),
                    Err(e) => r.error = Some(e.to_string()),
                }
            }
            r
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
