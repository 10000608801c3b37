//! Single flight: one fetch per chunk however many reads wait for it.
//!
//! Each chunk (a [`ChunkKey`]) is in one of these states:
//!
//! ```text
//!   idle ──claim/join──▶ loading(waiters) ──finish(Ok)──▶ ready (idle again: in the store)
//!                              │          ──finish(Err)─▶ failed (idle again: the next read retries)
//!                              └─ Loading dropped unfinished ─▶ failed (Abandoned)
//! ```
//!
//! *idle* is "not in the map" (the store says whether the bytes are
//! there); *loading* is an entry in the map, owned by exactly one
//! [`Loading`] token, the only way to leave it. The token finishes on
//! drop too, so a fetch that is lost (the fetcher stopped and dropped its
//! callback, a panic unwound past it) never leaves a read waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::chunks::ChunkKey;
use crate::error::ChunkFailure;

/// Called once with a chunk's verified bytes, or why there are none.
///
/// Which thread runs it: the one that ends the chunk's loading, and so
/// one of
/// 1. an `inflate-N` pool worker: every chunk fetched for a miss, the
///    read-ahead that follows a sequential reader, or the prefetch
///    (`Loader::finish_chunks` runs there);
/// 2. the `background` thread: a chunk its background fetch claimed
///    (it inflates its own windows, so they never queue on the pool ahead
///    of a foreground read's);
/// 3. the thread calling `Loader::load`, before `load` returns, when the
///    chunk fails before any fetch (no such chunk, nothing to verify it
///    by);
/// 4. only when a fetch is lost, where its [`Loading`] tokens drop: the
///    thread that issued it (the fetcher was stopped and dropped the
///    request), or the fetcher's runtime thread (a panic in the fetch's
///    completion unwound past them).
///
/// A waiter must therefore not block for long, and must take no lock its
/// caller of `load` may hold.
pub type ChunkWaiter = Box<dyn FnOnce(Result<Arc<Vec<u8>>, ChunkFailure>) + Send>;

/// The chunks being loaded, and who waits for each.
#[derive(Default)]
pub(crate) struct Flights {
    loading: Mutex<HashMap<ChunkKey, Vec<ChunkWaiter>>>,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.loading.lock().map_or(0, |m| m.len());
        f.debug_struct("Flights").field("loading", &n).finish()
    }
}

impl Flights {
    /// The chunks being loaded now, with how many wait for each.
    pub(crate) fn snapshot(&self) -> Vec<(ChunkKey, usize)> {
        let loading = self
            .loading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loading.iter().map(|(k, w)| (*k, w.len())).collect()
    }
}

/// What [`Flights::join`] did.
pub(crate) enum Joined {
    /// The chunk was idle: the caller loads it and must finish `Loading`.
    Leader(Loading),
    /// Someone loads it already: the waiter is queued on theirs.
    Follower,
}

impl Flights {
    /// idle → loading (the caller loads, `waiter` its first waiter), or
    /// loading → loading with `waiter` queued.
    pub fn join(self: &Arc<Self>, key: ChunkKey, waiter: ChunkWaiter) -> Joined {
        let mut map = self.loading.lock().expect("flights");
        match map.get_mut(&key) {
            Some(waiters) => {
                waiters.push(waiter);
                Joined::Follower
            }
            None => {
                map.insert(key, vec![waiter]);
                Joined::Leader(self.token(key))
            }
        }
    }

    /// idle → loading with nobody waiting yet (read-ahead, prefetch,
    /// background); `None` when someone loads it already.
    pub fn claim(self: &Arc<Self>, key: ChunkKey) -> Option<Loading> {
        let mut map = self.loading.lock().expect("flights");
        if map.contains_key(&key) {
            return None;
        }
        map.insert(key, Vec::new());
        Some(self.token(key))
    }

    fn token(self: &Arc<Self>, key: ChunkKey) -> Loading {
        Loading {
            flights: self.clone(),
            key,
            finished: false,
        }
    }

    /// loading → idle; the waiters are answered after the lock is let go
    /// (a waiter writes its reply to /dev/fuse).
    fn end(&self, key: &ChunkKey, result: Result<Arc<Vec<u8>>, ChunkFailure>) {
        let waiters = self
            .loading
            .lock()
            .expect("flights")
            .remove(key)
            .unwrap_or_default();
        for w in waiters {
            w(result.clone());
        }
    }
}

/// The one owner of a chunk in the *loading* state.
pub(crate) struct Loading {
    flights: Arc<Flights>,
    key: ChunkKey,
    finished: bool,
}

impl std::fmt::Debug for Loading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loading").field("key", &self.key).finish()
    }
}

impl Loading {
    /// loading → ready (`Ok`) or failed (`Err`): every waiter gets the
    /// result, on this thread.
    pub fn finish(mut self, result: Result<Arc<Vec<u8>>, ChunkFailure>) {
        self.finished = true;
        self.flights.end(&self.key, result);
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        if !self.finished {
            self.flights.end(&self.key, Err(ChunkFailure::Abandoned));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use ringstar_core::NodeId;

    fn key() -> ChunkKey {
        ChunkKey {
            layer: 1,
            node: NodeId(3),
            file_offset: 0,
        }
    }

    fn counting(ok: &Arc<AtomicUsize>, failed: &Arc<AtomicUsize>) -> ChunkWaiter {
        let (ok, failed) = (ok.clone(), failed.clone());
        Box::new(move |r| {
            let n = if r.is_ok() { ok } else { failed };
            n.fetch_add(1, Ordering::Relaxed);
        })
    }

    #[test]
    fn one_leader_many_waiters_then_idle_again() {
        let flights = Arc::new(Flights::default());
        let (ok, failed) = (Arc::default(), Arc::default());
        let Joined::Leader(loading) = flights.join(key(), counting(&ok, &failed)) else {
            panic!("the first join leads");
        };
        assert!(matches!(
            flights.join(key(), counting(&ok, &failed)),
            Joined::Follower
        ));
        assert!(flights.claim(key()).is_none());
        loading.finish(Ok(Arc::new(vec![1])));
        assert_eq!(ok.load(Ordering::Relaxed), 2);
        assert!(flights.claim(key()).is_some(), "idle again");
    }

    #[test]
    fn a_dropped_load_fails_its_waiters() {
        let flights = Arc::new(Flights::default());
        let (ok, failed) = (Arc::default(), Arc::default());
        let loading = flights.claim(key()).unwrap();
        assert!(matches!(
            flights.join(key(), counting(&ok, &failed)),
            Joined::Follower
        ));
        drop(loading);
        assert_eq!(failed.load(Ordering::Relaxed), 1);
        assert_eq!(ok.load(Ordering::Relaxed), 0);
    }
}
