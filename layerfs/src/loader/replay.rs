//! Replaying a start record (`crate::starts`): the chunks an earlier
//! start of the image read first are fetched in that order, a few files
//! at a time so misses outside the record still get the link.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ringstar_core::{FileKind, NodeId};

use super::{ClaimedChunk, Loader};
use crate::chunks::BlobChunk;
use crate::layer::RemoteLayer;
use crate::planner::{self, PREFETCH_WINDOW};
use crate::starts::StartRecord;

/// Files of a record being fetched at once.
pub const REPLAY_IN_FLIGHT: usize = 4;

/// One file of a record: its layer, node and the chunks to fetch.
struct ReplayFile {
    layer: Arc<RemoteLayer>,
    node: NodeId,
    chunks: Vec<usize>,
}

struct ReplayRun {
    queue: Mutex<VecDeque<ReplayFile>>,
    started: Instant,
    files: usize,
    fetched: AtomicUsize,
}

impl ReplayRun {
    /// One more file is in (or had nothing to fetch); the last one logs.
    fn file_done(&self) {
        if self.fetched.fetch_add(1, Ordering::AcqRel) + 1 == self.files {
            tracing::info!(
                files = self.files,
                ms = self.started.elapsed().as_millis() as u64,
                "start record replayed"
            );
        }
    }
}

impl Loader {
    /// Fetches what `record` says the image `image` (uppermost first, the
    /// layers the record names) read at its first start, in that order;
    /// nothing when its first file is in already (a warm start). Returns
    /// whether the replay started.
    pub fn replay(self: &Arc<Self>, image: &[Arc<RemoteLayer>], record: &StartRecord) -> bool {
        let files: VecDeque<ReplayFile> = record
            .files
            .iter()
            .filter_map(|f| {
                let layer = image.get(f.layer)?.clone();
                let tree = layer.tree();
                let node = tree.lookup_path(&f.path)?;
                if tree.node(node).kind() != FileKind::Reg {
                    return None;
                }
                let n = tree.chunks(node).len();
                let chunks: Vec<usize> = f
                    .chunks
                    .iter()
                    .map(|&c| c as usize)
                    .filter(|&c| c < n)
                    .collect();
                (!chunks.is_empty()).then_some(ReplayFile {
                    layer,
                    node,
                    chunks,
                })
            })
            .collect();
        let warm = files.front().is_none_or(|f| {
            let span = f.layer.tree().chunk_span(f.node);
            f.layer.is_present(BlobChunk(span.start + f.chunks[0]))
        });
        if warm {
            return false;
        }
        let run = Arc::new(ReplayRun {
            files: files.len(),
            queue: Mutex::new(files),
            started: Instant::now(),
            fetched: AtomicUsize::new(0),
        });
        for _ in 0..REPLAY_IN_FLIGHT {
            self.replay_next(&run);
        }
        true
    }

    /// Sends the next file of `run` that has anything left to fetch.
    fn replay_next(self: &Arc<Self>, run: &Arc<ReplayRun>) {
        loop {
            let Some(file) = run.queue.lock().expect("replay").pop_front() else {
                return;
            };
            let claimed = self.claim_file_chunks(&file);
            if claimed.is_empty() {
                run.file_done();
                continue;
            }
            let (me, run2) = (self.clone(), run.clone());
            self.fetch_then(
                &file.layer,
                claimed,
                move |me3, layer, claimed, base, fetched| {
                    me3.finish_on_pool(&layer, claimed, base, fetched);
                    run2.file_done();
                    me.replay_next(&run2);
                },
            );
            return;
        }
    }

    /// Claims the chunks of a record's file nobody has or fetches, up to
    /// one window of [`PREFETCH_WINDOW`] from its first listed chunk (a
    /// record names what was read; more of a big file is its misses').
    fn claim_file_chunks(&self, file: &ReplayFile) -> Vec<ClaimedChunk> {
        let tree = file.layer.tree();
        let span = tree.chunk_span(file.node);
        let all = tree.all_chunks();
        let mut claimed = Vec::new();
        let mut wanted: Vec<usize> = file.chunks.clone();
        wanted.sort_unstable();
        wanted.dedup();
        let first = span.start + wanted[0];
        let window = planner::extent(
            all,
            BlobChunk(first),
            PREFETCH_WINDOW,
            all[span.end - 1].next_offset,
        );
        for c in wanted.into_iter().map(|c| span.start + c) {
            if !window.chunks.contains(&c) {
                break;
            }
            let one = planner::Extent {
                chunks: c..c + 1,
                blob_end: all[c].next_offset,
            };
            self.claim_extent(&file.layer, &one, None, &mut claimed);
            // A replayed first chunk is predicted from as a miss's is:
            // what the program opens next follows it.
            if c == span.start
                && let Some(first) = claimed.last_mut().filter(|l| l.blob.0 == c)
            {
                first.predict = self.predict;
            }
        }
        claimed
    }
}
