//! Requests served by operation: a count each, and (once turned on) a
//! histogram of how long the filesystem took to answer or defer them.
//! Read by the daemon's metrics; the transports only add.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::request::Operation;

/// The operations counted, in index order; `OTHER` is everything else.
pub const OP_NAMES: [&str; 19] = [
    "LOOKUP",
    "FORGET",
    "GETATTR",
    "READLINK",
    "OPEN",
    "READ",
    "RELEASE",
    "OPENDIR",
    "READDIR",
    "READDIRPLUS",
    "RELEASEDIR",
    "STATFS",
    "GETXATTR",
    "LISTXATTR",
    "ACCESS",
    "FLUSH",
    "CREATE",
    "RMDIR",
    "OTHER",
];

/// Upper bounds of the latency buckets, in microseconds (the last
/// bucket, +Inf, is implied).
pub const LATENCY_BUCKETS_US: [u64; 12] =
    [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 10_000, 100_000];

fn index(op: &Operation<'_>) -> usize {
    match op {
        Operation::Lookup { .. } => 0,
        Operation::Forget { .. } | Operation::BatchForget { .. } => 1,
        Operation::Getattr { .. } => 2,
        Operation::Readlink => 3,
        Operation::Open { .. } => 4,
        Operation::Read { .. } => 5,
        Operation::Release { .. } => 6,
        Operation::Opendir { .. } => 7,
        Operation::Readdir { plus: false, .. } => 8,
        Operation::Readdir { plus: true, .. } => 9,
        Operation::Releasedir { .. } => 10,
        Operation::Statfs => 11,
        Operation::Getxattr { .. } => 12,
        Operation::Listxattr { .. } => 13,
        Operation::Access => 14,
        Operation::Flush => 15,
        Operation::Create { .. } => 16,
        Operation::Rmdir { .. } => 17,
        _ => 18,
    }
}

#[derive(Debug, Default)]
struct OpCounter {
    count: AtomicU64,
    timed: AtomicU64,
    sum_ns: AtomicU64,
    /// Per bucket, not cumulative; the last is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

/// Counts and latencies of every operation of a session.
#[derive(Debug, Default)]
pub struct OpStats {
    timing: AtomicBool,
    ops: [OpCounter; OP_NAMES.len()],
}

/// One operation's figures at a moment.
#[derive(Debug, Clone, PartialEq)]
pub struct OpSnapshot {
    pub name: &'static str,
    pub count: u64,
    /// Requests timed (since timing was turned on).
    pub timed: u64,
    pub sum_seconds: f64,
    /// (upper bound in seconds, cumulative count), +Inf last.
    pub buckets: Vec<(f64, u64)>,
}

impl OpStats {
    /// Times every request from now on (two clock reads each).
    pub fn enable_timing(&self) {
        self.timing.store(true, Ordering::Relaxed);
    }

    /// The start of a request's handling, if timed.
    pub(crate) fn start(&self) -> Option<Instant> {
        self.timing.load(Ordering::Relaxed).then(Instant::now)
    }

    /// Counts `op`, and its time since `started`.
    pub(crate) fn record(&self, op: &Operation<'_>, started: Option<Instant>) {
        let c = &self.ops[index(op)];
        c.count.fetch_add(1, Ordering::Relaxed);
        let Some(t) = started else { return };
        let ns = t.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        let us = ns / 1_000;
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        c.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        c.timed.fetch_add(1, Ordering::Relaxed);
        c.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Every operation's figures.
    pub fn snapshot(&self) -> Vec<OpSnapshot> {
        OP_NAMES
            .iter()
            .zip(&self.ops)
            .map(|(name, c)| {
                let mut total = 0;
                let mut buckets: Vec<(f64, u64)> = c
                    .buckets
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        total += b.load(Ordering::Relaxed);
                        let le = LATENCY_BUCKETS_US
                            .get(i)
                            .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
                        (le, total)
                    })
                    .collect();
                buckets.shrink_to_fit();
                OpSnapshot {
                    name,
                    count: c.count.load(Ordering::Relaxed),
                    timed: total,
                    sum_seconds: c.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
                    buckets,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn counts_always_and_times_once_enabled() {
        let s = OpStats::default();
        let lookup = Operation::Lookup {
            name: OsStr::new("x"),
        };
        s.record(&lookup, s.start());
        s.enable_timing();
        s.record(&lookup, s.start());
        s.record(&Operation::Destroy, s.start());
        let snap = s.snapshot();
        let l = &snap[0];
        assert_eq!((l.name, l.count, l.timed), ("LOOKUP", 2, 1));
        assert_eq!(l.buckets.last().unwrap(), &(f64::INFINITY, 1));
        assert!(l.buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative");
        assert_eq!(snap[OP_NAMES.len() - 1].count, 1, "DESTROY is OTHER");
    }
}
