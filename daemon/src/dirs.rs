//! A snapshot's directories on disk: made (with the parent's owner) and
//! measured.

use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use crate::metadata::Kind;

/// Disk usage of a snapshot's own files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub size: i64,
    pub inodes: i64,
}

pub(crate) fn make_dirs(dir: &Path, kind: Kind, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(dir.join("fs"))?;
    if kind == Kind::Active {
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(dir.join("work"))?;
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir.join("fs"), Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Bytes (allocated blocks) and inodes under `dir`, each inode once, not
/// crossing into other filesystems.
pub fn disk_usage(dir: &Path) -> std::io::Result<DiskUsage> {
    let top = std::fs::symlink_metadata(dir)?;
    let mut seen = HashSet::new();
    let mut usage = DiskUsage::default();
    let mut stack = vec![dir.to_path_buf()];
    seen.insert((top.dev(), top.ino()));
    usage.inodes += 1;
    usage.size += top.blocks() as i64 * 512;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let md = entry.metadata()?;
            if md.dev() != top.dev() || !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            usage.inodes += 1;
            usage.size += md.blocks() as i64 * 512;
            if md.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}
