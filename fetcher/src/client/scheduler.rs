//! The request scheduler, all on the fetcher thread: a read that a
//! running fetch covers joins it (single-flight); at most
//! `max_in_flight_per_host` requests run per host, and reads waiting
//! behind that limit merge with waiting reads of the same blob nearby
//! (coalescing); each waiter gets its slice.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::urls::{Shown, redact};

use super::{BlobLocation, FetchError, Inner, host_of, lock};

/// Someone waiting for `[start, end]` (inclusive) of a fetch.
struct Waiter {
    start: u64,
    end: u64,
    tx: oneshot::Sender<Result<Bytes, FetchError>>,
}

/// One range request to make, and who waits for parts of it.
struct Fetch {
    loc: BlobLocation,
    start: u64,
    end: u64,
    waiters: Vec<Waiter>,
}

/// A fetch the scheduler has started: its id in `Sched::running` and
/// what to request.
struct Started {
    id: u64,
    loc: BlobLocation,
    start: u64,
    end: u64,
}

#[derive(Default)]
struct HostState {
    in_flight: usize,
    queue: VecDeque<Fetch>,
    /// A request to this host has completed, so a connection exists and
    /// its protocol is known. Until then one request runs at a time: a
    /// burst of first requests would each open a TLS connection before
    /// ALPN could tell they may share one HTTP/2 connection.
    warmed: bool,
}

impl HostState {
    fn limit(&self, max: usize) -> usize {
        if self.warmed { max.max(1) } else { 1 }
    }
}

/// Fetches running and waiting, per host: what single-flight and
/// coalescing look at.
#[derive(Default)]
pub(super) struct Sched {
    hosts: HashMap<String, HostState>,
    running: HashMap<u64, Fetch>,
    next_id: u64,
}

impl Sched {
    /// Joins `w` to a running fetch of `loc` that covers it.
    fn join_running(&mut self, loc: &BlobLocation, w: Waiter) -> Result<(), Waiter> {
        match self
            .running
            .values_mut()
            .find(|f| f.loc == *loc && f.start <= w.start && w.end <= f.end)
        {
            Some(f) => {
                f.waiters.push(w);
                Ok(())
            }
            None => Err(w),
        }
    }

    /// Records `fetch` as running and gives it an id.
    fn start(&mut self, fetch: Fetch) -> Started {
        let id = self.next_id;
        self.next_id += 1;
        let started = Started {
            id,
            loc: fetch.loc.clone(),
            start: fetch.start,
            end: fetch.end,
        };
        self.running.insert(id, fetch);
        started
    }

    /// Removes finished fetch `id`, frees its host's slot and starts what
    /// waited for one.
    fn finish(&mut self, id: u64, host: &str, max: usize) -> (Option<Fetch>, Vec<Started>) {
        let done = self.running.remove(&id);
        let state = self.hosts.entry(host.to_string()).or_default();
        state.warmed = true;
        state.in_flight = state.in_flight.saturating_sub(1);
        let mut ready = Vec::new();
        while state.in_flight < state.limit(max)
            && let Some(f) = state.queue.pop_front()
        {
            state.in_flight += 1;
            ready.push(f);
        }
        let next = ready.into_iter().map(|f| self.start(f)).collect();
        (done, next)
    }
}

/// Merges `w` into a waiting fetch of `loc` within `gap` of it, if the
/// merged range stays under `max`.
fn join_queued(
    queue: &mut VecDeque<Fetch>,
    loc: &BlobLocation,
    w: Waiter,
    gap: u64,
    max: u64,
) -> Result<(), Waiter> {
    let near = queue.iter_mut().find(|f| {
        let (lo, hi) = (f.start.min(w.start), f.end.max(w.end));
        f.loc == *loc
            && w.start <= f.end.saturating_add(gap)
            && f.start <= w.end.saturating_add(gap)
            && hi - lo < max
    });
    match near {
        Some(f) => {
            f.start = f.start.min(w.start);
            f.end = f.end.max(w.end);
            f.waiters.push(w);
            Ok(())
        }
        None => Err(w),
    }
}

/// Answers every waiter of a fetch of `[start, end]` that returned
/// `bytes`, each with its slice.
fn answer_slices(waiters: Vec<Waiter>, bytes: &Bytes, url: &str, start: u64, end: u64) {
    for w in waiters {
        // fetch_range returns exactly end - start + 1 bytes and every
        // waiter lies inside; checked all the same, since a slice out of
        // range panics.
        let (lo, hi) = (w.start - start, w.end - start);
        let part = if hi < bytes.len() as u64 {
            Ok(bytes.slice(lo as usize..=hi as usize))
        } else {
            Err(FetchError::Internal {
                url: redact(url),
                reason: format!("{} bytes for range {start}-{end}", bytes.len()),
            })
        };
        let _ = w.tx.send(part);
    }
}

impl Inner {
    /// `[offset, offset+len)` through the scheduler: joins a running fetch
    /// that covers it (single-flight), or a waiting one of the same blob
    /// near it (coalescing), or starts or queues its own.
    pub(super) async fn read_range(
        self: Arc<Self>,
        loc: &BlobLocation,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, FetchError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset
            .checked_add(len - 1)
            .ok_or_else(|| FetchError::Invalid("range overflows".into()))?;
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            start: offset,
            end,
            tx,
        };
        let start_now = self.enqueue(loc, waiter);
        if let Some(started) = start_now {
            self.clone().spawn_fetch(started);
        }
        rx.await.map_err(|_| FetchError::Stopped)?
    }

    /// Places a waiter; returns a fetch to start now, if any.
    fn enqueue(&self, loc: &BlobLocation, w: Waiter) -> Option<Started> {
        let mut s = lock(&self.sched);
        let Err(w) = s.join_running(loc, w) else {
            return None;
        };
        let (gap, max) = (self.config.coalesce_gap, self.config.max_coalesced);
        let host = s.hosts.entry(host_of(&loc.url)).or_default();
        let Err(w) = join_queued(&mut host.queue, loc, w, gap, max) else {
            return None;
        };
        let fetch = Fetch {
            loc: loc.clone(),
            start: w.start,
            end: w.end,
            waiters: vec![w],
        };
        if host.in_flight >= host.limit(self.config.max_in_flight_per_host) {
            host.queue.push_back(fetch);
            return None;
        }
        host.in_flight += 1;
        Some(s.start(fetch))
    }

    fn spawn_fetch(self: Arc<Self>, started: Started) {
        tokio::spawn(async move {
            let Started {
                id,
                loc,
                start,
                end,
            } = started;
            // A panic in the fetch (a bug) is caught as an error here, so
            // the bookkeeping below always runs: the host's in-flight count
            // and the single-flight entry are released and every waiter is
            // answered.
            let result = self.clone().fetch_caught(&loc, start, end).await;
            let (done, next) = {
                let max = self.config.max_in_flight_per_host;
                lock(&self.sched).finish(id, &host_of(&loc.url), max)
            };
            for started in next {
                self.clone().spawn_fetch(started);
            }
            if let Some(done) = done {
                self.answer_waiters(done, result);
            }
        });
    }

    /// Answers the waiters of a finished fetch.
    fn answer_waiters(self: Arc<Self>, done: Fetch, result: Result<Bytes, FetchError>) {
        let (loc, start, end) = (&done.loc, done.start, done.end);
        match result {
            Ok(bytes) => answer_slices(done.waiters, &bytes, &loc.url, start, end),
            // A merged range can fail for one part (past the end) that
            // alone would; each waiter then tries its own range.
            Err(e)
                if done
                    .waiters
                    .iter()
                    .any(|w| (w.start, w.end) != (start, end)) =>
            {
                tracing::debug!(url = %Shown(&loc.url), error = %e, "merged range failed; retrying parts alone");
                for w in done.waiters {
                    let inner = self.clone();
                    let loc = loc.clone();
                    tokio::spawn(async move {
                        let _ = w.tx.send(inner.fetch_caught(&loc, w.start, w.end).await);
                    });
                }
            }
            Err(e) => {
                for w in done.waiters {
                    let _ = w.tx.send(Err(e.clone()));
                }
            }
        }
    }
}
