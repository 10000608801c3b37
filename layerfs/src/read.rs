//! READ of a layer file: from the store when every chunk it touches is
//! there, else a [`PendingRead`] that loads the missing chunks and
//! answers when they are in.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use ringstar_core::NodeId;
use ringstar_core::store::StoreChunk;
use ringstar_fusedev::{DeferredRead, Errno};

use crate::chunks::FileChunk;
use crate::error::ChunkFailure;
use crate::fs::LayerFs;
use crate::layer::RemoteLayer;
use crate::loader::Loader;

/// How many times a read loads chunks that leave the store again before
/// it is answered (eviction racing the read) before it gives up.
const MAX_ROUNDS: u32 = 3;

/// Why the store could not answer a read.
#[derive(Debug)]
pub(crate) enum StoreMiss {
    /// A chunk the read touches cannot be verified (no digest, too big):
    /// the read fails.
    Unverifiable,
    /// These chunks of the file are not in the store.
    Missing(Vec<FileChunk>),
}

impl LayerFs {
    /// Fills `buf` with `node`'s bytes from `offset` out of the store, or
    /// says which chunks are missing.
    pub(crate) fn reply_from_store(
        layer: &RemoteLayer,
        loader: &Loader,
        node: NodeId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StoreMiss> {
        let file = layer.store_key(node).ok_or(StoreMiss::Unverifiable)?;
        let range = layer
            .tree()
            .chunks_overlapping(node, offset, buf.len() as u64);
        let chunks = store_chunks(layer, node, range.clone())?;
        loader
            .store
            .read(&file, &chunks, offset, buf)
            .map_err(|missing| {
                StoreMiss::Missing(
                    missing
                        .into_iter()
                        .map(|m| FileChunk(range.start + m))
                        .collect(),
                )
            })
    }
}

/// The store's view of chunks `range` of `node`.
fn store_chunks(
    layer: &RemoteLayer,
    node: NodeId,
    range: Range<usize>,
) -> Result<Vec<StoreChunk>, StoreMiss> {
    let chunks = &layer.tree().chunks(node)[range];
    chunks
        .iter()
        .map(|c| layer.store_chunk(node, c).ok_or(StoreMiss::Unverifiable))
        .collect()
}

/// A read waiting for chunks: replies once every chunk it touches is in
/// (from the fetch's own bytes, or the store), or fails on the first
/// chunk that cannot be had.
pub(crate) struct PendingRead {
    pub layer: Arc<RemoteLayer>,
    pub loader: Arc<Loader>,
    pub node: NodeId,
    pub offset: u64,
    pub len: usize,
    pub state: Mutex<PendingState>,
}

pub(crate) struct PendingState {
    pub reply: Option<DeferredRead>,
    pub waiting: usize,
    /// Chunk → its bytes, as fetched.
    pub got: HashMap<FileChunk, Arc<Vec<u8>>>,
    pub rounds: u32,
}

impl PendingRead {
    /// Loads the chunks the store lacks; answers EIO at once when one
    /// cannot be verified.
    pub fn start(self: &Arc<Self>, missing: StoreMiss) {
        let missing = match missing {
            StoreMiss::Missing(m) => m,
            StoreMiss::Unverifiable => {
                tracing::warn!(layer = %self.layer.digest, node = self.node.0, "a chunk has no digest to verify it by (or is too big); answering EIO");
                self.fail();
                return;
            }
        };
        self.state.lock().expect("pending").waiting += missing.len();
        for index in missing {
            let me = self.clone();
            self.loader.load(
                &self.layer,
                self.node,
                index,
                Box::new(move |r| me.arrive(index, r)),
            );
        }
    }

    /// Answers EIO (once); the reply is written without the lock held.
    fn fail(&self) {
        let reply = self.state.lock().expect("pending").reply.take();
        if let Some(r) = reply {
            r.error(Errno::EIO);
        }
    }

    fn arrive(self: &Arc<Self>, index: FileChunk, r: Result<Arc<Vec<u8>>, ChunkFailure>) {
        let Ok(bytes) = r else {
            return self.fail();
        };
        let mut st = self.state.lock().expect("pending");
        st.got.insert(index, bytes);
        st.waiting -= 1;
        if st.waiting == 0 && st.reply.is_some() {
            drop(st);
            self.assemble();
        }
    }

    /// Builds the reply from fetched chunks and the store; chunks that
    /// left the store meanwhile are loaded again (a few rounds at most).
    fn assemble(self: &Arc<Self>) {
        let got = self.state.lock().expect("pending").got.clone();
        let mut buf = vec![0u8; self.len];
        let tree = self.layer.tree();
        let chunks = tree.chunks(self.node);
        let end = self.offset + self.len as u64;
        let mut missing = Vec::new();
        for i in tree.chunks_overlapping(self.node, self.offset, self.len as u64) {
            let c = &chunks[i];
            let lo = c.chunk_offset.max(self.offset);
            let hi = (c.chunk_offset + c.size).min(end);
            let dst = &mut buf[(lo - self.offset) as usize..(hi - self.offset) as usize];
            if let Some(bytes) = got.get(&FileChunk(i)) {
                dst.copy_from_slice(
                    &bytes[(lo - c.chunk_offset) as usize..(hi - c.chunk_offset) as usize],
                );
            } else if LayerFs::reply_from_store(&self.layer, &self.loader, self.node, lo, dst)
                .is_err()
            {
                missing.push(FileChunk(i));
            }
        }
        let mut st = self.state.lock().expect("pending");
        if missing.is_empty() {
            let reply = st.reply.take();
            drop(st);
            if let Some(reply) = reply {
                reply.reply(&buf);
            }
            return;
        }
        st.rounds += 1;
        if st.rounds > MAX_ROUNDS {
            drop(st);
            tracing::warn!(layer = %self.layer.digest, "chunks keep leaving the store; answering EIO");
            return self.fail();
        }
        drop(st);
        self.start(StoreMiss::Missing(missing));
    }
}
