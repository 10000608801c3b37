//! The read-ahead and window policy, all of it: which run of chunks one
//! request fetches ([`extent`], the one window rule), how big a miss's
//! window is and when a reader is followed with growing windows
//! ([`ReadAhead`]), and the window sizes of the prefetch and the
//! background fetch. The loader only claims and fetches what this module
//! plans; the fetcher coalesces nothing further that matters here.
//!
//! Figures (measured; see [`crate::LoaderConfig`] for the read-ahead):
//! container startups fault pages of programs and libraries in, which
//! looks sequential but wants small windows, so by default a miss fetches
//! 128 KiB and nothing grows; a reader that runs through a file is
//! followed with windows doubling up to `max_read_ahead` when that is set
//! higher.

use std::ops::Range;
use std::sync::Mutex;

use ringstar_core::tree::Chunk;
use ringstar_core::{LayerTree, NodeId};

use crate::chunks::BlobChunk;

/// Bytes between two chunks that a window fetches rather than split in
/// two requests (a round trip costs far more).
pub(crate) const WINDOW_GAP: u64 = 64 << 10;

/// Compressed bytes per prefetch request, and how many are in flight:
/// enough to keep a WAN link busy (200 Mbit/s × 40 ms is 1 MB in flight)
/// while arrived windows are inflated.
pub(crate) const PREFETCH_WINDOW: u64 = 4 << 20;
pub(crate) const PREFETCH_IN_FLIGHT: usize = 2;

/// The most a stream of misses across neighbouring files reads ahead.
/// Measured with hellobench (gcc, esgz-noopt, loopback): letting such a
/// stream grow to the 8 MiB a file read through gets fetched 67–86 MB
/// for a 22 MB working set and ran 4–5 s instead of 1.1 s.
pub const CROSS_FILE_READ_AHEAD: u64 = 512 << 10;

/// A reader whose misses have continued exactly where the last window
/// ended this many times in a row is reading the blob through (tar, a
/// backup agent, a model server loading its weights), not faulting in a
/// program: its windows then grow to [`PROVEN_STREAM_READ_AHEAD`] whatever
/// `max_read_ahead` says. Startups rarely string so many together, and
/// any other miss of the layer starts the count again (#18).
pub const STREAM_PROOF: u32 = 8;

/// How far a proven stream reads ahead (8 MiB, as layer-bench measured
/// for whole-layer reads over a WAN).
pub const PROVEN_STREAM_READ_AHEAD: u64 = 8 << 20;

/// A followed reader keeps this many windows in flight at most ...
const STREAM_IN_FLIGHT: u32 = 2;
/// ... and is followed while it is within this many windows of the
/// frontier.
const STREAM_LEAD: u64 = 3;

/// A run of blob-order chunks one request fetches: the chunks
/// `chunks.start..chunks.end` of `LayerTree::all_chunks()`, ending at blob
/// offset `blob_end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Extent {
    pub chunks: Range<usize>,
    pub blob_end: u64,
}

impl Extent {
    pub fn blob_chunks(&self) -> impl Iterator<Item = BlobChunk> {
        self.chunks.clone().map(BlobChunk)
    }
}

/// The one window rule, for misses, read-ahead, prefetch and background:
/// from chunk `from` on, the chunks that follow each other in the blob
/// with gaps of at most [`WINDOW_GAP`] (headers of symlinks, directories,
/// empty files ride along rather than cut the window), spanning at most
/// `budget` compressed bytes (the first chunk always goes), none ending
/// past blob offset `limit`.
pub(crate) fn extent(all: &[Chunk], from: BlobChunk, budget: u64, limit: u64) -> Extent {
    let start = all.get(from.0).map_or(0, |c| c.offset);
    let mut end = start;
    let mut to = from.0;
    for (g, c) in all.iter().enumerate().skip(from.0) {
        if c.offset < end
            || c.offset - end > WINDOW_GAP
            || (g > from.0 && c.next_offset - start > budget)
            || c.next_offset > limit
        {
            break;
        }
        end = c.next_offset;
        to = g + 1;
    }
    Extent {
        chunks: from.0..to,
        blob_end: end,
    }
}

/// How big read-ahead windows get (from [`crate::LoaderConfig`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub read_ahead: u64,
    pub max_read_ahead: u64,
}

/// A window [`ReadAhead`] planned: its extent, the followed stream it
/// belongs to (its arrival moves that stream on), if any, and whether
/// the miss continued where the last window ended: a reader going
/// through the blob more likely than a program starting, so nothing is
/// predicted from it (predicted files fetched out of blob order break a
/// stream into short windows: gcc's whole-image read went from 97 to 147
/// requests when every first-chunk miss predicted).
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub extent: Extent,
    pub stream: Option<u64>,
    pub continues: bool,
}

/// One layer's read-ahead state: where the last miss's window ended and
/// how big it was (a miss starting there is a sequential reader's), and
/// the sequential reader being followed, if any. Planning runs under its
/// lock (pure arithmetic over the tree); claiming and fetching the
/// planned window happen after it is let go.
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Blob offset where the last miss's (or stream window's) fetch ended.
    miss_end: u64,
    /// The file of the last foreground miss.
    miss_node: Option<NodeId>,
    /// The last miss's window budget.
    miss_budget: u64,
    /// Misses in a row that started where the last window ended.
    run: u32,
    stream: Stream,
}

impl Default for State {
    fn default() -> Self {
        State {
            miss_end: u64::MAX,
            miss_node: None,
            miss_budget: 0,
            run: 0,
            stream: Stream::default(),
        }
    }
}

/// A sequential reader being followed: windows of `budget` compressed
/// bytes are fetched up to `frontier` while it reads at `reader`, so the
/// link is busy while it inflates and reads the last ones. `generation`
/// tells an old stream's windows from this one's.
#[derive(Debug, Default, Clone, Copy)]
struct Stream {
    active: bool,
    generation: u64,
    reader: u64,
    frontier: u64,
    budget: u64,
    /// The most a window of this stream grows to.
    cap: u64,
    in_flight: u32,
}

impl ReadAhead {
    /// A foreground miss of file `node` at blob-order chunk `from` (whose
    /// member starts at blob offset `at`): its window. The budget doubles
    /// when the miss continues where the last window ended — up to
    /// [`PROVEN_STREAM_READ_AHEAD`] once [`STREAM_PROOF`] misses in a row
    /// did, else up to `max_read_ahead` within one file (a file read
    /// through), up to [`CROSS_FILE_READ_AHEAD`] across files (a program
    /// opening files that neighbour in the blob does not read the whole
    /// layer) — and is `read_ahead` otherwise. A budget above
    /// `read_ahead` starts following the reader (the caller then calls
    /// [`Self::next_window`]).
    pub fn miss(&self, all: &[Chunk], node: NodeId, from: BlobChunk, policy: Policy) -> Planned {
        let at = all[from.0].offset;
        let mut st = self.state.lock().expect("read-ahead");
        let same_file = st.miss_node.replace(node) == Some(node);
        let base = policy.read_ahead;
        let continues = st.miss_end == at;
        st.run = if continues {
            st.run.saturating_add(1)
        } else {
            0
        };
        // How far the windows of a stream started here grow.
        let stream_cap = if st.run >= STREAM_PROOF {
            policy.max_read_ahead.max(PROVEN_STREAM_READ_AHEAD)
        } else {
            policy.max_read_ahead
        };
        let cap = if same_file || st.run >= STREAM_PROOF {
            stream_cap
        } else {
            stream_cap.min(CROSS_FILE_READ_AHEAD.max(base))
        };
        let budget = if continues {
            (st.miss_budget.max(base) * 2).min(cap)
        } else {
            base
        };
        st.miss_budget = budget;
        let extent = extent(all, from, budget, u64::MAX);
        st.miss_end = extent.blob_end;
        let generation = st.stream.generation + 1;
        st.stream = if budget > base {
            // The miss's window always goes out (it carries the missed
            // chunk), so it is in flight from here.
            Stream {
                active: true,
                generation,
                reader: at,
                frontier: extent.blob_end,
                budget,
                cap: stream_cap,
                in_flight: 1,
            }
        } else {
            Stream {
                generation,
                ..Stream::default()
            }
        };
        let stream = st.stream.active.then_some(generation);
        Planned {
            extent,
            stream,
            continues,
        }
    }

    /// A read joined a window in flight at blob offset `at`: true if that
    /// moved the followed reader on (the caller then calls
    /// [`Self::next_window`]).
    pub fn reader_at(&self, at: u64) -> bool {
        let mut st = self.state.lock().expect("read-ahead");
        let s = &mut st.stream;
        if s.active && (s.reader..s.frontier).contains(&at) {
            s.reader = at;
            return true;
        }
        false
    }

    /// The followed reader's next window, when one is due: fewer than
    /// two in flight and the reader within three windows of the frontier.
    /// Each is twice the last, up to the stream's cap (`max_read_ahead`,
    /// or [`PROVEN_STREAM_READ_AHEAD`] for a proven stream). The window counts
    /// as in flight from here; [`Self::window_done`] when it is in, or
    /// was not sent (nothing in it left to fetch).
    pub fn next_window(&self, tree: &LayerTree) -> Option<Planned> {
        let mut st = self.state.lock().expect("read-ahead");
        let s = st.stream;
        if !s.active
            || s.in_flight >= STREAM_IN_FLIGHT
            || s.frontier - s.reader >= STREAM_LEAD * s.budget
        {
            return None;
        }
        let from = tree.first_chunk_from_blob_offset(s.frontier);
        if from >= tree.all_chunks().len() {
            st.stream.active = false;
            return None;
        }
        let extent = extent(tree.all_chunks(), BlobChunk(from), s.budget, u64::MAX);
        st.stream.frontier = extent.blob_end;
        st.stream.in_flight += 1;
        st.stream.budget = (s.budget * 2).min(s.cap);
        st.miss_end = extent.blob_end;
        Some(Planned {
            extent,
            stream: Some(s.generation),
            continues: true,
        })
    }

    /// A window of stream `generation` arrived, or was not sent.
    pub fn window_done(&self, generation: u64) {
        let mut st = self.state.lock().expect("read-ahead");
        if st.stream.generation == generation {
            st.stream.in_flight = st.stream.in_flight.saturating_sub(1);
        }
    }
}

/// The windows of `[0, landmark)` for the prefetch, in blob order.
pub(crate) fn prefetch_extents(all: &[Chunk], landmark: u64) -> impl Iterator<Item = Extent> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || {
        let e = extent(all, BlobChunk(from), PREFETCH_WINDOW, landmark);
        from = e.chunks.end;
        (!e.chunks.is_empty()).then_some(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of `len` compressed bytes each, `gap` bytes apart.
    fn chunks(n: usize, len: u64, gap: u64) -> Vec<Chunk> {
        (0..n as u64)
            .map(|i| {
                let at = i * (len + gap);
                Chunk::new(at, at + len, 0, 0, len)
            })
            .collect()
    }

    #[test]
    fn a_window_keeps_to_its_budget_but_always_takes_its_first_chunk() {
        let all = chunks(10, 100 << 10, 0);
        let e = extent(&all, BlobChunk(2), 250 << 10, u64::MAX);
        assert_eq!(e.chunks, 2..4);
        assert_eq!(e.blob_end, 4 * (100 << 10));
        let e = extent(&all, BlobChunk(9), 1, u64::MAX);
        assert_eq!(e.chunks, 9..10);
    }

    #[test]
    fn small_gaps_ride_along_and_big_ones_cut_the_window() {
        let all = chunks(4, 1000, WINDOW_GAP);
        assert_eq!(extent(&all, BlobChunk(0), u64::MAX, u64::MAX).chunks, 0..4);
        let all = chunks(4, 1000, WINDOW_GAP + 1);
        assert_eq!(extent(&all, BlobChunk(0), u64::MAX, u64::MAX).chunks, 0..1);
    }

    /// Misses that keep continuing where the last window ended grow
    /// windows only once they have done so STREAM_PROOF times in a row;
    /// a miss elsewhere starts the count again.
    #[test]
    fn only_a_proven_stream_grows_past_the_default() {
        let all = chunks(4000, 32 << 10, 0);
        let policy = Policy {
            read_ahead: 128 << 10,
            max_read_ahead: 128 << 10,
        };
        let ra = ReadAhead::default();
        let mut from = 0;
        let mut budgets = Vec::new();
        for i in 0..12 {
            let p = ra.miss(&all, NodeId::ROOT, BlobChunk(from), policy);
            assert_eq!(p.continues, i > 0, "miss {i}");
            budgets.push(p.extent.blob_end - all[from].offset);
            from = p.extent.chunks.end;
        }
        assert!(
            budgets[..STREAM_PROOF as usize]
                .iter()
                .all(|&b| b == 128 << 10)
        );
        assert!(budgets[STREAM_PROOF as usize] > 128 << 10, "{budgets:?}");
        // A miss elsewhere: back to the default, and the count restarts.
        let p = ra.miss(&all, NodeId::ROOT, BlobChunk(3000), policy);
        assert_eq!(p.extent.chunks.len(), 4);
        assert!(p.stream.is_none());
    }

    #[test]
    fn prefetch_windows_stop_at_the_landmark() {
        let all = chunks(100, 100 << 10, 0);
        let windows: Vec<Extent> = prefetch_extents(&all, 50 * (100 << 10)).collect();
        assert_eq!(windows.first().unwrap().chunks.start, 0);
        assert_eq!(windows.last().unwrap().chunks.end, 50);
        assert!(windows.iter().all(|w| w.chunks.len() <= 40));
        assert!(
            windows
                .windows(2)
                .all(|p| p[0].chunks.end == p[1].chunks.start)
        );
    }
}
