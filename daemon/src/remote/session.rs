//! The FUSE session behind the remote layers: set once the mount is
//! served (at once for a new mount; after the restored layers are back
//! for a taken-over one), invalidations, and the two ways it ends —
//! unmounted (SIGINT) or handed over (SIGTERM, with takeover).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringstar_fusedev::{Handover, Ino, Session};

use super::{Remote, State};

impl Remote {
    /// Serves the mount through `session` from now on.
    pub fn set_session(&self, session: Session) {
        if self.op_timing.load(std::sync::atomic::Ordering::Relaxed) {
            session.stats().ops.enable_timing();
        }
        *self.session.lock().expect("session") = Some(Arc::new(session));
    }

    /// Times every FUSE request by operation from now on (metrics).
    pub fn enable_op_timing(&self) {
        self.op_timing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(s) = self.session.lock().expect("session").as_ref() {
            s.stats().ops.enable_timing();
        }
    }

    /// The FUSE requests served so far, by operation (none before the
    /// mount is served).
    pub fn fuse_ops(&self) -> Vec<ringstar_fusedev::op_stats::OpSnapshot> {
        let session = self.session.lock().expect("session").clone();
        session.map_or_else(Vec::new, |s| s.stats().ops.snapshot())
    }

    /// Waits until no restored layer is still resolving, or `timeout`
    /// passed. A taken-over mount waits for this before it serves: the
    /// kernel holds inode numbers of those layers, and until they are
    /// back their requests would fail instead of waiting in the kernel.
    pub fn settle_restores(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut slots = self.slots.lock().expect("slots");
        loop {
            let resolving = slots
                .values()
                .filter(|s| s.show_when_ready && matches!(s.state, State::Resolving))
                .count();
            let now = Instant::now();
            if resolving == 0 {
                return;
            }
            if now >= deadline {
                tracing::warn!(
                    resolving,
                    ?timeout,
                    "restored layers still resolving; serving without them"
                );
                return;
            }
            slots = self
                .changed
                .wait_timeout(slots, deadline - now)
                .expect("slots")
                .0;
        }
    }

    /// Drops the kernel's cached lookup of `name` in the mount's root: a
    /// write to `/dev/fuse`, made without the session lock.
    pub(super) fn invalidate_root(&self, name: &str) {
        let session = self.session.lock().expect("session").clone();
        if let Some(s) = session {
            // Only the name: the root's attributes never change and its
            // listing is never cached (layerfs `ROOT_ATTR_TTL`).
            let _ = s.invalidate_entry(Ino(1), std::ffi::OsStr::new(name));
        }
    }

    /// The session, once no invalidation in flight shares it.
    fn take_session(&self) -> Option<Session> {
        let mut session = self.session.lock().expect("session").take()?;
        // An invalidation in flight holds the session for two writes.
        loop {
            match Arc::try_unwrap(session) {
                Ok(s) => return Some(s),
                Err(shared) => {
                    session = shared;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Unmounts the layer filesystem (every layer goes with it).
    pub fn shutdown(&self) {
        if let Some(session) = self.take_session()
            && let Err(e) = session.unmount()
        {
            tracing::warn!(error = %e, "unmounting the layer filesystem");
        }
    }

    /// Stops serving and leaves the mount to the next process: reads in
    /// flight get up to `grace`, the rest are resent to it.
    pub fn handover(&self, grace: Duration) -> Option<Handover> {
        let session = self.take_session()?;
        match session.handover(grace) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "handing the layer filesystem over");
                None
            }
        }
    }
}
