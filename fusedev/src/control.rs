//! Handles on a mounted connection from outside its serving threads: its
//! id (from mountinfo), aborting it through fusectl, detaching a mount.
//! Depends only on `sys`.

use std::io;
use std::path::Path;

use crate::sys;

/// The connection id of the FUSE mount at `mountpoint`: the minor number
/// of the mount's device, from mountinfo (stat-ing the mount point could
/// block on a dead daemon).
pub fn connection_id(mountpoint: &Path) -> Option<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = mountpoint.to_str()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(4) == Some(&target) && line.contains(" - fuse"))
            .then(|| fields.get(2)?.split(':').nth(1)?.parse().ok())
            .flatten()
    })
}

/// Fails every pending and future request of connection `id` at once.
pub fn abort_connection(id: u32) -> io::Result<()> {
    let dir = Path::new("/sys/fs/fuse/connections");
    if !dir.join(id.to_string()).exists() {
        // fusectl is not always mounted.
        let _ = sys::mount("fusectl", dir, "fusectl", 0, "");
    }
    std::fs::write(dir.join(id.to_string()).join("abort"), b"1")
}

/// Detaches whatever is mounted at `target` (`MNT_DETACH`): what a daemon
/// does with a mount its dead predecessor left (a FUSE mount whose server
/// is gone answers ENOTCONN to everything).
pub fn detach_mount(target: &Path) -> io::Result<()> {
    sys::umount(target, libc::MNT_DETACH)
}
