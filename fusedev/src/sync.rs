//! Locks shared between data-plane threads. A leaf: depends on nothing
//! else in the crate.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m` even if a thread panicked while holding it: every map and
/// queue behind these locks is left consistent by each single operation,
/// so one panicking thread must not take the others down with it. Callers
/// drop the guard before any syscall that can block (a `/dev/fuse` or
/// eventfd write, a ring submit).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
