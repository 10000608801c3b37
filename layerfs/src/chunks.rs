//! How layerfs numbers chunks and names their offsets (docs/layerfs.md,
//! "Chunk numbering"). Core's `Chunk.offset` is a *blob* offset (where the
//! compressed member starts) and `StoreChunk.offset` a *file* offset
//! (where the uncompressed bytes go); the two index schemes below say
//! which list an index is into, so one can never be used for the other.

use ringstar_core::{LayerTree, NodeId};

/// File-local numbering: an index into `LayerTree::chunks(node)`, in file
/// order. Reads think in these (which chunks does `[offset, offset+len)`
/// of this file need).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileChunk(pub usize);

/// Blob-order numbering ("global"): an index into
/// `LayerTree::all_chunks()`, every chunk of the layer (superseded
/// duplicates included) in blob order. Windows, the presence bitmap and
/// chunk owners think in these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobChunk(pub usize);

impl BlobChunk {
    /// The blob-order number of chunk `index` of regular file `node`.
    pub fn of(tree: &LayerTree, node: NodeId, index: FileChunk) -> BlobChunk {
        BlobChunk(tree.chunk_span(node).start + index.0)
    }
}

/// What a single-flight entry is keyed by: the layer fetching (its bytes
/// come from that layer's registry and nobody else's), the file, and the
/// chunk's offset in the file. Reads of one layer share a fetch; a layer
/// never waits on another's, so a failing source fails only its own reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    pub layer: u64,
    pub node: NodeId,
    pub file_offset: u64,
}
