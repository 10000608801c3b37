//! Predicting what a file being executed opens next, so it is fetched at
//! once instead of one round trip per file as the program gets to each
//! (#17). A miss on an ELF file's first chunk (a program exec'd, a
//! library mapped) fetches, as soon as that chunk is in: the rest of the
//! file's code and data (its executable and writable segments and the
//! dynamic section, in parallel windows), its loader (`PT_INTERP`), the
//! loader's cache, and each library it needs (`DT_NEEDED`, looked up on
//! its run path and the standard directories through the image's
//! layers as the container sees them). Each predicted library is
//! predicted from in turn when its first chunk arrives. A script's `#!`
//! interpreter is fetched likewise.
//!
//! Prediction only adds fetches: a wrong guess costs bytes, never a
//! wrong answer, and a file is predicted from once per layer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use ringstar_core::exec::{self, ElfDeps, FilePieces, Parsed};
use ringstar_core::merged::MergedView;
use ringstar_core::{LayerTree, NodeId};

use super::{ClaimedChunk, Loader};
use crate::chunks::{BlobChunk, FileChunk};
use crate::flight::{ChunkWaiter, Joined};
use crate::layer::RemoteLayer;
use crate::planner::{self, PREFETCH_WINDOW};

/// Chunks of one file that parsing it may wait for besides the first
/// (the dynamic section and its strings can each lie in a far chunk of a
/// big program).
const MAX_PARSE_FETCHES: u32 = 3;

/// The most compressed bytes of one file's code and data fetched ahead:
/// beyond that (a huge library a program may barely touch), its misses
/// fetch what it uses.
pub const MAX_PREDICTED_FILE: u64 = 16 << 20;

/// Where `#!/usr/bin/env NAME` finds NAME (a shell's default PATH).
const PATH_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

impl Loader {
    /// The first chunk of `node` arrived for a miss or a prediction:
    /// fetch what executing or loading it opens next. Contained: a panic
    /// here costs the prediction, nothing else.
    pub(super) fn predict_after(
        self: &Arc<Self>,
        layer: &Arc<RemoteLayer>,
        node: NodeId,
        first: Arc<Vec<u8>>,
    ) {
        if !layer.first_prediction(node) {
            return;
        }
        let predicted = catch_unwind(AssertUnwindSafe(|| {
            if first.starts_with(b"#!") {
                self.predict_script(layer, &first);
            } else if first.starts_with(b"\x7fELF") {
                self.predict_elf(layer, node, vec![(0, first.clone())], 0);
            }
        }));
        if let Err(p) = predicted {
            tracing::error!(layer = %layer.digest, panic = ringstar_core::faults::message(&*p), "prediction panicked");
        }
    }

    /// Parses ELF file `node` from the chunks held (`pieces`, at file
    /// offsets), waiting for a further chunk when the answer lies there.
    /// No bytes are held while waiting (an image could keep many parses
    /// waiting): the chunks held so far are read back from the store
    /// when the next one is in.
    fn predict_elf(
        self: &Arc<Self>,
        layer: &Arc<RemoteLayer>,
        node: NodeId,
        pieces: Vec<(u64, Arc<Vec<u8>>)>,
        waited: u32,
    ) {
        let tree = layer.tree();
        let mut file = FilePieces::new(tree.node(node).size());
        for (at, bytes) in &pieces {
            file.add(*at, bytes);
        }
        let parsed = exec::parse_elf(&file);
        drop(file);
        match parsed {
            Ok(Parsed::NotElf) => {}
            Err(e) => {
                tracing::debug!(layer = %layer.digest, path = %tree.path_of(node), error = %e, "not predicting from this file");
            }
            Ok(Parsed::Incomplete { missing, hot }) => {
                let index = tree
                    .chunk_index_at(node, missing)
                    .filter(|_| waited < MAX_PARSE_FETCHES);
                // The chunk parsing waits for goes out alone: the
                // libraries wait for it, and the rest of the code would
                // share the link with it (it follows the libraries).
                let Some(index) = index else {
                    if waited == 0 {
                        self.fetch_hot(layer, node, &hot);
                    }
                    return;
                };
                let at = tree.chunks(node)[index].chunk_offset;
                let held: Vec<u64> = pieces.iter().map(|(at, _)| *at).collect();
                drop(pieces);
                let (me, layer2) = (self.clone(), layer.clone());
                self.chunk_then(
                    layer,
                    node,
                    FileChunk(index),
                    Box::new(move |arrived| {
                        let Ok(bytes) = arrived else { return };
                        let tree = layer2.tree();
                        let mut pieces = Vec::with_capacity(held.len() + 1);
                        for offset in held {
                            let Some(i) = tree.chunk_index_at(node, offset) else {
                                return;
                            };
                            let Some(b) = me.stored_chunk(&layer2, node, FileChunk(i)) else {
                                return;
                            };
                            pieces.push((offset, b));
                        }
                        pieces.push((at, bytes));
                        me.predict_elf(&layer2, node, pieces, waited + 1);
                    }),
                );
            }
            Ok(Parsed::Done(deps)) => {
                self.fetch_deps(layer, node, &deps);
                self.fetch_hot(layer, node, &deps.hot);
            }
        }
    }

    /// Fetches the chunks of `node` that `hot` (file ranges) touch and
    /// nobody has fetched, up to [`MAX_PREDICTED_FILE`] compressed bytes,
    /// in windows of [`PREFETCH_WINDOW`] sent at once.
    fn fetch_hot(
        self: &Arc<Self>,
        layer: &Arc<RemoteLayer>,
        node: NodeId,
        hot: &[std::ops::Range<u64>],
    ) {
        let tree = layer.tree();
        let chunks = tree.chunks(node);
        let mut wanted = vec![false; chunks.len()];
        for r in hot {
            for i in tree.chunks_overlapping(node, r.start, r.end - r.start) {
                wanted[i] = true;
            }
        }

        let span = tree.chunk_span(node);
        // Held chunks (the first, the dynamic section's) would be holes
        // a window fetches again.
        for (i, w) in wanted.iter_mut().enumerate() {
            *w = *w && !layer.is_present(BlobChunk(span.start + i));
        }
        let mut budget = MAX_PREDICTED_FILE;
        let mut i = 0;
        while i < chunks.len() {
            if !wanted[i] {
                i += 1;
                continue;
            }
            let mut end = i;
            while end < chunks.len() && wanted[end] {
                end += 1;
            }
            let all = tree.all_chunks();
            let limit = all[span.start + end - 1].next_offset;
            let mut from = span.start + i;
            while from < span.start + end && budget > 0 {
                let extent =
                    planner::extent(all, BlobChunk(from), PREFETCH_WINDOW.min(budget), limit);
                budget = budget.saturating_sub(extent.blob_end - all[from].offset);
                from = extent.chunks.end;
                let mut claimed = Vec::new();
                self.claim_extent(layer, &extent, None, &mut claimed);
                self.fetch_claimed(layer, claimed, None);
            }
            i = end;
        }
    }

    /// Fetches the files `deps` says the loader opens next.
    fn fetch_deps(self: &Arc<Self>, layer: &Arc<RemoteLayer>, node: NodeId, deps: &ElfDeps) {
        let layers = image_layers(layer);
        let trees: Vec<&LayerTree> = layers.iter().map(|l| l.tree()).collect();
        let view = MergedView::new(&trees);
        let mut found = Vec::new();
        if let Some(interp) = &deps.interpreter {
            found.extend(view.resolve_file(interp));
            if !deps.needed.is_empty() {
                found.extend(view.resolve_file("/etc/ld.so.cache"));
            }
        }
        let tree = layer.tree();
        let origin = format!("/{}", tree.path_of(tree.node(node).parent()));
        let dirs: Vec<String> = deps
            .search
            .iter()
            .map(|d| d.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin))
            .chain(exec::library_dirs(deps.machine))
            .collect();
        for name in &deps.needed {
            if name.starts_with('/') {
                found.extend(view.resolve_file(name));
            } else if !name.contains('/') {
                found.extend(
                    dirs.iter()
                        .find_map(|d| view.resolve_file(&format!("{d}/{name}"))),
                );
            }
        }
        tracing::debug!(layer = %layer.digest, path = %tree.path_of(node), needed = deps.needed.len(), found = found.len(), "predicted");
        for (i, file) in found {
            self.fetch_predicted(&layers[i], file);
        }
    }

    /// A script: fetches its interpreter (through `env`, the program it
    /// names, looked up on the default PATH).
    fn predict_script(self: &Arc<Self>, layer: &Arc<RemoteLayer>, first: &[u8]) {
        let Some((interp, arg)) = exec::shebang(first) else {
            return;
        };
        let layers = image_layers(layer);
        let trees: Vec<&LayerTree> = layers.iter().map(|l| l.tree()).collect();
        let view = MergedView::new(&trees);
        let mut found: Vec<(usize, NodeId)> = view.resolve_file(&interp).into_iter().collect();
        if let Some(program) = arg.filter(|a| interp.ends_with("/env") && !a.contains('/')) {
            found.extend(
                PATH_DIRS
                    .iter()
                    .find_map(|d| view.resolve_file(&format!("{d}/{program}"))),
            );
        }
        for (i, file) in found {
            self.fetch_predicted(&layers[i], file);
        }
    }

    /// A file predicted to be executed or loaded: its first chunk is
    /// fetched (the whole of most libraries), and predicted from when in.
    fn fetch_predicted(self: &Arc<Self>, layer: &Arc<RemoteLayer>, node: NodeId) {
        if layer.tree().chunks(node).is_empty() || layer.was_predicted(node) {
            return;
        }
        let (me, layer2) = (self.clone(), layer.clone());
        self.chunk_then(
            layer,
            node,
            FileChunk(0),
            Box::new(move |arrived| {
                if let Ok(first) = arrived {
                    me.predict_after(&layer2, node, first);
                }
            }),
        );
    }

    /// Gets chunk `index` of `node` to `done`: from the store when there
    /// (on the pool, never inline: a chain of predicted libraries an image
    /// declares must not become a chain of nested calls), else joining its
    /// load in flight or fetching it alone.
    fn chunk_then(
        self: &Arc<Self>,
        layer: &Arc<RemoteLayer>,
        node: NodeId,
        index: FileChunk,
        done: ChunkWaiter,
    ) {
        if let Some(bytes) = self.stored_chunk(layer, node, index) {
            return self.run_on_pool(Box::new(move || done(Ok(bytes))));
        }
        let sc = match Self::store_chunk_of(layer, node, index) {
            Ok(sc) => sc,
            Err(e) => return done(Err(e)),
        };
        let blob = BlobChunk::of(layer.tree(), node, index);
        match self.flights.join(Self::key(layer, node, &sc), done) {
            Joined::Follower => {}
            Joined::Leader(loading) => {
                let claimed = ClaimedChunk {
                    node,
                    blob,
                    store: sc,
                    loading,
                    predict: false,
                };
                self.fetch_claimed(layer, vec![claimed], None);
            }
        }
    }
}

impl Loader {
    /// Chunk `index` of `node` read from the store, if it is there.
    fn stored_chunk(
        &self,
        layer: &RemoteLayer,
        node: NodeId,
        index: FileChunk,
    ) -> Option<Arc<Vec<u8>>> {
        let sc = Self::store_chunk_of(layer, node, index).ok()?;
        let file = layer.store_key(node)?;
        if !self.stored(layer, node, BlobChunk::of(layer.tree(), node, index), &sc) {
            return None;
        }
        let mut buf = vec![0; sc.len as usize];
        self.store
            .read(&file, std::slice::from_ref(&sc), sc.offset, &mut buf)
            .ok()?;
        Some(Arc::new(buf))
    }
}

/// The layers of the image `layer` was last mounted in, uppermost
/// first; `layer` alone before any mount.
fn image_layers(layer: &Arc<RemoteLayer>) -> Vec<Arc<RemoteLayer>> {
    let image = layer.image();
    if image.iter().any(|l| Arc::ptr_eq(l, layer)) {
        image
    } else {
        vec![layer.clone()]
    }
}
