//! The files a workload opens, in the order it first opens them, seen by
//! fanotify on the root filesystem's own overlay mount. The mark is on the
//! filesystem (the overlay's superblock), not on a mount: runc gives the
//! container its own copy of the mount, which a mount mark would not see.
//! Nothing else uses that overlay. Opens before the first exec on it are
//! runc's own, setting the container up (it reads the image's
//! `/etc/passwd` and `/etc/group`), and are not recorded: the workload
//! starts with the exec of its entrypoint.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};

use crate::ImageError;

/// A recording in progress.
#[derive(Debug)]
pub struct Recorder {
    group: Fanotify,
    /// The root filesystem as this process sees it: an event's path may
    /// come with it in front (opened through this mount) or without
    /// (opened through the container's copy of it).
    mount: PathBuf,
    seen: HashSet<String>,
    /// Whether the entrypoint was executed yet.
    started: bool,
    /// Root-relative paths, first open first.
    opened: Vec<String>,
}

fn fanotify_error(what: &str, e: nix::Error) -> ImageError {
    ImageError::Io(std::io::Error::other(format!(
        "fanotify {what}: {e} (recording needs root on a kernel with fanotify)"
    )))
}

impl Recorder {
    /// Starts recording opens on the filesystem mounted at `mount`.
    pub fn start(mount: &Path) -> Result<Recorder, ImageError> {
        let group = Fanotify::init(
            InitFlags::FAN_CLASS_NOTIF
                | InitFlags::FAN_CLOEXEC
                | InitFlags::FAN_NONBLOCK
                | InitFlags::FAN_UNLIMITED_QUEUE,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(|e| fanotify_error("init", e))?;
        let dir = File::open(mount)?;
        group
            .mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
                MaskFlags::FAN_OPEN | MaskFlags::FAN_OPEN_EXEC,
                dir.as_fd(),
                None::<&str>,
            )
            .map_err(|e| fanotify_error("mark", e))?;
        Ok(Recorder {
            group,
            mount: mount.to_path_buf(),
            seen: HashSet::new(),
            started: false,
            opened: Vec::new(),
        })
    }

    /// Waits up to `timeout` for events, then takes every queued one.
    pub fn poll(&mut self, timeout: std::time::Duration) -> Result<(), ImageError> {
        let mut fds = [rustix::event::PollFd::new(
            &self.group,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec::try_from(timeout).ok();
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
        self.drain()
    }

    /// Takes every queued event.
    pub fn drain(&mut self) -> Result<(), ImageError> {
        let me = std::process::id() as i32;
        loop {
            let events = match self.group.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(fanotify_error("read", e)),
            };
            if events.is_empty() {
                return Ok(());
            }
            for event in events {
                if !event.check_version() || event.pid() == me {
                    continue;
                }
                if event.mask().contains(MaskFlags::FAN_Q_OVERFLOW) {
                    tracing::warn!("fanotify's queue overflowed: some opens are not recorded");
                    continue;
                }
                self.started |= event.mask().contains(MaskFlags::FAN_OPEN_EXEC);
                if !self.started {
                    continue;
                }
                let Some(fd) = event.fd() else { continue };
                let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                else {
                    continue;
                };
                if let Some(rel) = root_relative(&path, &self.mount)
                    && self.seen.insert(rel.clone())
                {
                    self.opened.push(rel);
                }
            }
        }
    }

    /// The root-relative paths opened, first open first.
    pub fn finish(mut self) -> Result<Vec<String>, ImageError> {
        self.drain()?;
        Ok(self.opened)
    }
}

/// `path` (an event's file, as the kernel names it) relative to the root:
/// with the mount in front when it was opened through this process's
/// mount, as the container saw it otherwise.
fn root_relative(path: &Path, mount: &Path) -> Option<String> {
    let text = path.to_str()?;
    if text.ends_with(" (deleted)") {
        return None;
    }
    let rel = path.strip_prefix(mount).unwrap_or(path);
    let clean = ringstar_core::name::clean(rel.to_str()?);
    (!clean.is_empty()).then_some(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_root_relative_whichever_mount_named_them() {
        let mount = Path::new("/tmp/x/merged");
        let rel = |p: &str| root_relative(Path::new(p), mount);
        assert_eq!(
            rel("/tmp/x/merged/usr/bin/sh").as_deref(),
            Some("usr/bin/sh")
        );
        assert_eq!(rel("/usr/bin/sh").as_deref(), Some("usr/bin/sh"));
        assert_eq!(rel("/tmp/x/merged"), None);
        assert_eq!(rel("/etc/gone (deleted)"), None);
    }
}
