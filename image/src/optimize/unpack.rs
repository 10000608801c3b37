//! An image's root filesystem on disk, for running its workload: each
//! layer's tar applied in order, whiteouts and opaque directories
//! included, with owners, modes and times (Python, for one, trusts a
//! source file's time to keep using its compiled copy).
//!
//! The layers are untrusted. Every name is resolved by the kernel inside
//! the root (`openat2` with `RESOLVE_IN_ROOT`), and the last component is
//! never followed, so no `..`, absolute symlink or symlinked directory in
//! a layer reaches a file outside it. Payloads are copied through a fixed
//! buffer, whatever size a header declares.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use ringstar_core::name;
use ringstar_core::tar::{Entry, EntryType, TarStream};
use ringstar_core::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::ImageError;

/// Which layer each regular file (or hard link) of the root came from:
/// the topmost one that wrote the name.
#[derive(Debug, Default)]
pub struct Provenance {
    layer_of: HashMap<String, usize>,
}

impl Provenance {
    /// The layer whose copy of `path` (root-relative, cleaned) the root
    /// shows, if a layer wrote it as a file.
    pub fn layer_of(&self, path: &str) -> Option<usize> {
        self.layer_of.get(path).copied()
    }
}

/// Applies layers, base first, to the directory `root`.
#[derive(Debug)]
pub struct Unpacker {
    root: OwnedFd,
    provenance: Provenance,
}

/// The error for entry `name` of layer `index`.
fn entry_error(index: usize, name: &str, what: impl std::fmt::Display) -> ImageError {
    ImageError::Invalid(format!("layer {index}: entry {name:?}: {what}"))
}

impl Unpacker {
    /// An unpacker into `root`, an empty directory.
    pub fn new(root: &Path) -> Result<Unpacker, ImageError> {
        let root = rfs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)?;
        Ok(Unpacker {
            root,
            provenance: Provenance::default(),
        })
    }

    /// Applies layer `index`, read as a tar from `tar` (decompressed).
    pub fn apply(&mut self, index: usize, tar: impl Read) -> Result<(), ImageError> {
        let mut stream = TarStream::new(tar);
        // Names this layer wrote: an opaque marker or a whiteout removes
        // only what lower layers left, wherever it sits in the tar.
        let mut written = HashSet::new();
        while let Some(entry) = stream
            .next_entry()
            .map_err(|e| ImageError::Invalid(format!("layer {index}: {e}")))?
        {
            let clean = name::clean(&entry.name);
            if clean.is_empty() {
                continue; // The root itself.
            }
            if let Some(why) = name::refused(&clean) {
                return Err(entry_error(index, &clean, why));
            }
            let base = name::base(&clean);
            if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
                let parent = self.dir(name::parent(&clean), index)?;
                if base == OPAQUE_MARKER {
                    self.empty_dir(&parent, name::parent(&clean), &written)?;
                } else if !written.contains(&join(name::parent(&clean), hidden)) {
                    remove(&parent, hidden)?;
                }
                continue;
            }
            self.write_entry(index, &clean, &entry, &mut stream)?;
            if matches!(entry.kind(), EntryType::Reg | EntryType::Hardlink) {
                self.provenance.layer_of.insert(clean.clone(), index);
            }
            written.insert(clean);
        }
        Ok(())
    }

    /// Which layer each file came from.
    pub fn into_provenance(self) -> Provenance {
        self.provenance
    }

    /// The directory `dir` (cleaned, root-relative) of the root, made
    /// (with its missing parents) when absent.
    fn dir(&self, dir: &str, index: usize) -> Result<OwnedFd, ImageError> {
        match open_in_root(&self.root, dir, OFlags::DIRECTORY) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(entry_error(index, dir, e)),
        }
        let mut at = self.root.try_clone()?;
        let mut path = String::new();
        for part in dir.split('/') {
            path = join(&path, part);
            at = match open_in_root(&self.root, &path, OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    rfs::mkdirat(&at, part, Mode::from_raw_mode(0o755))
                        .map_err(|e| entry_error(index, &path, e))?;
                    open_in_root(&self.root, &path, OFlags::DIRECTORY)
                        .map_err(|e| entry_error(index, &path, e))?
                }
                Err(e) => return Err(entry_error(index, &path, e)),
            };
        }
        Ok(at)
    }

    /// Removes every child of `dir` that this layer did not write.
    fn empty_dir(
        &self,
        dir: &OwnedFd,
        dir_name: &str,
        written: &HashSet<String>,
    ) -> Result<(), ImageError> {
        let listed = rfs::openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)?;
        let mut children = Vec::new();
        for e in rfs::Dir::read_from(&listed).map_err(std::io::Error::from)? {
            let e = e.map_err(std::io::Error::from)?;
            let child = e.file_name().to_string_lossy().into_owned();
            if child != "." && child != ".." && !written.contains(&join(dir_name, &child)) {
                children.push(child);
            }
        }
        for child in children {
            remove(dir, &child)?;
        }
        Ok(())
    }

    /// Creates one entry (replacing what lower layers had there, unless
    /// both are directories) and sets its owner, mode and time.
    fn write_entry<R: Read>(
        &self,
        index: usize,
        clean: &str,
        entry: &Entry,
        stream: &mut TarStream<R>,
    ) -> Result<(), ImageError> {
        let parent = self.dir(name::parent(clean), index)?;
        let base = name::base(clean);
        let existing = rfs::statat(&parent, base, AtFlags::SYMLINK_NOFOLLOW).ok();
        let existing_dir =
            existing.is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory);
        if existing.is_some() && !(existing_dir && entry.kind() == EntryType::Dir) {
            remove(&parent, base)?;
        }
        let fail = |e: Errno| entry_error(index, clean, e);
        let mode = Mode::from_raw_mode(entry.mode & 0o7777);
        match entry.kind() {
            EntryType::Dir => {
                if !existing_dir {
                    rfs::mkdirat(&parent, base, mode).map_err(fail)?;
                }
            }
            EntryType::Reg => {
                let fd = rfs::openat(
                    &parent,
                    base,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    mode,
                )
                .map_err(fail)?;
                copy_payload(stream, entry.size, File::from(fd))
                    .map_err(|e| entry_error(index, clean, e))?;
            }
            EntryType::Symlink => {
                rfs::symlinkat(entry.link_name.as_str(), &parent, base).map_err(fail)?
            }
            EntryType::Hardlink => {
                let target = name::clean(&entry.link_name);
                let fd = open_in_root(&self.root, &target, OFlags::NOFOLLOW).map_err(|e| {
                    entry_error(index, clean, format!("link target {target:?}: {e}"))
                })?;
                rfs::linkat(&fd, "", &parent, base, AtFlags::EMPTY_PATH).map_err(fail)?;
                return Ok(()); // The target's metadata is the link's.
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match entry.kind() {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = rfs::makedev(entry.dev_major, entry.dev_minor);
                if let Err(e) = rfs::mknodat(&parent, base, kind, mode, dev) {
                    // A workload's /dev is runc's; a device the layer
                    // carries is not worth failing the run for.
                    tracing::debug!(layer = index, name = clean, error = %e, "device node not made");
                    return Ok(());
                }
            }
        }
        set_metadata(&parent, base, entry).map_err(fail)
    }
}

/// `parent/child`, for cleaned names (`""` is the root).
fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}/{child}")
    }
}

/// Opens `path` inside `root`, every component resolved by the kernel as
/// if `root` were `/` (symlinks and `..` included).
fn open_in_root(root: &OwnedFd, path: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    let path = if path.is_empty() { "." } else { path };
    rfs::openat2(
        root,
        path,
        OFlags::PATH | OFlags::CLOEXEC | flags,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Removes `child` of `dir`, a whole tree if it is a directory (never
/// following a symlink), and nothing if it is absent.
fn remove(dir: &OwnedFd, child: &str) -> Result<(), ImageError> {
    match rfs::unlinkat(dir, child, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {
            // std's tree removal works below a directory fd and never
            // follows symlinks; the fd's /proc link names `dir` itself.
            let path = format!("/proc/self/fd/{}/{child}", dir.as_raw_fd());
            std::fs::remove_dir_all(path)?;
            Ok(())
        }
        Err(e) => Err(std::io::Error::from(e).into()),
    }
}

/// Copies a regular file's payload, `size` bytes, into `out`.
fn copy_payload<R: Read>(
    stream: &mut TarStream<R>,
    size: u64,
    mut out: File,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        stream
            .read_payload(&mut buf[..n])
            .map_err(std::io::Error::other)?;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Owner, mode (after the owner: chown clears setuid) and time, on the
/// entry itself, never through a symlink.
fn set_metadata(parent: &OwnedFd, base: &str, entry: &Entry) -> Result<(), Errno> {
    let at: BorrowedFd<'_> = parent.as_fd();
    rfs::chownat(
        at,
        base,
        Some(rfs::Uid::from_raw(entry.uid)),
        Some(rfs::Gid::from_raw(entry.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if entry.kind() != EntryType::Symlink {
        rfs::chmodat(
            at,
            base,
            Mode::from_raw_mode(entry.mode & 0o7777),
            AtFlags::empty(),
        )?;
    }
    let time = rfs::Timespec {
        tv_sec: entry.mtime,
        tv_nsec: 0,
    };
    rfs::utimensat(
        at,
        base,
        &rfs::Timestamps {
            last_access: time,
            last_modification: time,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

#[cfg(test)]
mod tests;
