//! A complete layer unpacked as a plain directory, for overlayfs to read
//! without FUSE (#18). Once every file of a layer is in the store, a
//! container started on it gains nothing from the FUSE mount and pays one
//! request per lookup, open, release and xattr check: a whole-image read
//! of gcc makes ~31 000 of them. A new container's lowerdir is the
//! unpacked directory instead; containers already running keep the mount.
//!
//! The directory is what the mount shows of the layer (the `whiteout`
//! view: whiteouts as 0:0 char devices, opaque directories by xattr, root
//! landmarks hidden, the TOC's overlayfs control xattrs dropped, the
//! state directory at the root), with the TOC's modes, owners, mtimes and
//! xattrs. A regular file is a hard link to the store's complete file, so
//! its bytes are still stored once, with this entry's metadata; a store
//! file is linked by one entry at most (another entry of the same content,
//! in this layer or another, gets a copy), so no two files the image keeps
//! apart share an inode.
//!
//! Durability: a layer is built under `<name>.partial`, the filesystem is
//! synced, and then it is renamed to `<name>`. A directory under its final
//! name is whole and on disk, so it can be used after a crash or restart
//! (the store's own complete files are written without fsync and
//! re-hashed after a crash; these are synced before they are used).
//! `.partial` and `.trash` leftovers are removed at open. Everything is
//! created with `*at` calls under directory descriptors opened beneath the
//! root with no symlink followed, so a name in a layer can only ever make
//! an entry inside that layer's directory.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ringstar_core::store::Store;
use ringstar_core::whiteout::{self, ViewEntry};
use ringstar_core::{FileKind, LayerTree, NodeId};
use rustix::fs::{
    AtFlags, Dev, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};

use crate::RemoteLayer;
use crate::state_dir::{STATE_DIR, state_file_name, state_json};

/// Why a layer was not unpacked (it stays served by the mount).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("layer name {0:?} is not a plain name")]
    BadName(String),
    #[error("directory {path} is reached twice")]
    DirectoryLoop { path: String },
}

/// The directory of unpacked layers, `ROOT/unpacked`.
#[derive(Debug)]
pub struct Unpacked {
    root: PathBuf,
}

const PARTIAL: &str = ".partial";
const TRASH: &str = ".trash";
/// Makes every trash name unique within the process.
static TRASHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes an unpack may copy (files whose store file another entry links
/// already), and the free space it leaves the filesystem at least: copies
/// are outside the store's bound, and a hostile layer can name one
/// stored file a thousand times. Past either, the layer stays on FUSE.
pub const COPY_BUDGET: u64 = 256 << 20;
pub const KEEP_FREE_PERCENT: u64 = 10;

impl Unpacked {
    /// Opens (creating) `root`, removing what an interrupted run left.
    pub fn open(root: &Path) -> io::Result<Unpacked> {
        std::fs::create_dir_all(root)?;
        for e in std::fs::read_dir(root)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(PARTIAL) || name.contains(TRASH) {
                remove_tree(&e.path());
            }
        }
        Ok(Unpacked {
            root: root.to_path_buf(),
        })
    }

    /// Where layer `name` is unpacked, if it is.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        plain(name).ok()?;
        let p = self.root.join(name);
        p.is_dir().then_some(p)
    }

    /// Names of the unpacked layers.
    pub fn names(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        dir.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| plain(n).is_ok())
            .collect()
    }

    /// Takes layer `name`'s directory away (no snapshot may use it): one
    /// rename, so that a caller answering containerd does not wait for a
    /// big tree to be deleted; [`Unpacked::empty_trash`] deletes it (and
    /// `open`, after a crash).
    pub fn remove(&self, name: &str) {
        let Some(path) = self.path(name) else { return };
        let n = TRASHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let doomed = self
            .root
            .join(format!("{name}{TRASH}-{}-{n}", std::process::id()));
        if let Err(e) = std::fs::rename(&path, &doomed) {
            tracing::warn!(layer = %name, error = %e, "removing the unpacked layer");
        }
    }

    /// Deletes what [`Unpacked::remove`] took away.
    pub fn empty_trash(&self) {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().contains(TRASH) {
                remove_tree(&e.path());
            }
        }
    }

    /// Unpacks `layer` as `name`. Fails, leaving nothing, if a regular
    /// file is not complete in `store` or the filesystem refuses an entry.
    pub fn unpack(
        &self,
        name: &str,
        layer: &RemoteLayer,
        store: &Store,
    ) -> Result<PathBuf, UnpackError> {
        plain(name)?;
        let partial_name = format!("{name}{PARTIAL}");
        let partial = self.root.join(&partial_name);
        remove_tree(&partial);
        std::fs::create_dir(&partial).map_err(io_at(&partial))?;
        let built = Builder {
            tree: layer.tree(),
            layer,
            store,
            linked: HashMap::new(),
            copied: 0,
        }
        .build(&partial);
        if let Err(e) = built {
            remove_tree(&partial);
            return Err(e);
        }
        let root = rustix::fs::open(
            &self.root,
            OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_at(&self.root)(e.into()))?;
        let finished = rustix::fs::syncfs(&root)
            .and_then(|()| rustix::fs::renameat(&root, partial_name.as_str(), &root, name))
            .and_then(|()| rustix::fs::fsync(&root));
        if let Err(e) = finished {
            remove_tree(&partial);
            return Err(io_at(&self.root)(e.into()));
        }
        Ok(self.root.join(name))
    }
}

/// The layer's state directory, as the mount shows it once the layer is
/// complete (the reference's in-container view of a layer's state:
/// scripts read `/.stargz-snapshotter/*.json` for 100 %). Unlike the
/// mount's, it is listed: a plain directory cannot hide a name.
fn write_state_dir(top: &Path, layer: &RemoteLayer) -> Result<(), UnpackError> {
    let dir = top.join(STATE_DIR);
    let file = dir.join(state_file_name(&layer.digest));
    std::fs::create_dir(&dir).map_err(io_at(&dir))?;
    std::fs::write(&file, state_json(layer)).map_err(io_at(&file))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400))
        .map_err(io_at(&file))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).map_err(io_at(&dir))
}

/// Makes an I/O error on `path` an [`UnpackError`].
fn io_at(path: &Path) -> impl FnOnce(io::Error) -> UnpackError {
    let path = path.display().to_string();
    move |source| UnpackError::Io { path, source }
}

/// A layer name is one plain path component (they are hex digests).
fn plain(name: &str) -> Result<(), UnpackError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(())
        .ok_or_else(|| UnpackError::BadName(name.to_string()))
}

fn remove_tree(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "removing an unpacked layer");
    }
}

struct Builder<'a> {
    tree: &'a LayerTree,
    layer: &'a RemoteLayer,
    store: &'a Store,
    /// Non-directory nodes made already, by their first path (hard links).
    linked: HashMap<NodeId, PathBuf>,
    /// Bytes copied so far.
    copied: u64,
}

impl Builder<'_> {
    /// Makes every entry breadth first, then gives directories their
    /// metadata (last, since making their entries changes their mtime).
    fn build(mut self, top: &Path) -> Result<(), UnpackError> {
        let layer = self.layer;
        let err = |rel: &Path, source: io::Error| UnpackError::Io {
            path: format!("{}:/{}", layer.digest, rel.display()),
            source,
        };
        let top_fd = rustix::fs::open(top, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| err(Path::new(""), e.into()))?;
        let mut dirs = vec![(NodeId::ROOT, PathBuf::new())];
        let mut queue = VecDeque::from([(NodeId::ROOT, PathBuf::new())]);
        let mut seen = std::collections::HashSet::from([NodeId::ROOT]);
        while let Some((dir, rel)) = queue.pop_front() {
            let fd = beneath(&top_fd, &rel).map_err(|e| err(&rel, e))?;
            for (_, entry) in whiteout::entries_from(self.tree, dir, 0) {
                // The mount shows its state directory there instead.
                if dir == NodeId::ROOT && entry.name == STATE_DIR {
                    continue;
                }
                let path = rel.join(entry.name);
                let node = self.tree.node(entry.node);
                if !entry.whiteout && node.kind() == FileKind::Dir {
                    if !seen.insert(entry.node) {
                        return Err(UnpackError::DirectoryLoop {
                            path: path.display().to_string(),
                        });
                    }
                    rustix::fs::mkdirat(&fd, entry.name, Mode::from_raw_mode(0o700))
                        .map_err(|e| err(&path, e.into()))?;
                    dirs.push((entry.node, path.clone()));
                    queue.push_back((entry.node, path));
                } else {
                    self.entry(&fd, &top_fd, entry, &path)
                        .map_err(|e| err(&path, e))?;
                }
            }
        }
        // Before the root's metadata: it changes the root's mtime.
        write_state_dir(top, layer)?;
        for (node, rel) in dirs {
            let fd = beneath(&top_fd, &rel).map_err(|e| err(&rel, e))?;
            let view = ViewEntry {
                name: "",
                node,
                whiteout: false,
            };
            self.set_fd_metadata(&fd, view).map_err(|e| err(&rel, e))?;
        }
        Ok(())
    }

    /// Makes one non-directory entry `entry` in `dir`.
    fn entry(
        &mut self,
        dir: &OwnedFd,
        top: &OwnedFd,
        entry: ViewEntry<'_>,
        path: &Path,
    ) -> io::Result<()> {
        let name = entry.name;
        if entry.whiteout {
            return Ok(rustix::fs::mknodat(
                dir,
                name,
                FileType::CharacterDevice,
                Mode::empty(),
                0,
            )?);
        }
        if let Some(first) = self.linked.get(&entry.node) {
            return Ok(rustix::fs::linkat(top, first, dir, name, AtFlags::empty())?);
        }
        self.linked.insert(entry.node, path.to_path_buf());
        let node = self.tree.node(entry.node);
        match node.kind() {
            FileKind::Reg => self.regular(dir, entry),
            FileKind::Symlink => {
                let target = self.tree.link_target(entry.node).unwrap_or_default();
                rustix::fs::symlinkat(target, dir, name)?;
                self.set_at_metadata(dir, entry)
            }
            FileKind::Char | FileKind::Block | FileKind::Fifo => {
                let kind = match node.kind() {
                    FileKind::Char => FileType::CharacterDevice,
                    FileKind::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let (major, minor) = node.rdev();
                let dev: Dev = rustix::fs::makedev(major, minor);
                rustix::fs::mknodat(dir, name, kind, Mode::empty(), dev)?;
                self.set_at_metadata(dir, entry)
            }
            FileKind::Dir | FileKind::Hardlink => Err(io::Error::other("unexpected entry kind")),
        }
    }

    /// A regular file: the store's complete file when no other entry
    /// links it yet, else a copy. Two entries sharing an inode would be
    /// hard links of each other in a container's view (tar would store
    /// one as a link to the other; a chmod of one would show in the
    /// other, across images too), which the image never said.
    fn regular(&mut self, dir: &OwnedFd, entry: ViewEntry<'_>) -> io::Result<()> {
        let node = self.tree.node(entry.node);
        let create = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW;
        if node.size() == 0 {
            let fd = rustix::fs::openat(dir, entry.name, create | OFlags::CLOEXEC, Mode::empty())?;
            return self.set_fd_metadata(&fd, entry);
        }
        let content = self.layer.content_key(entry.node);
        let incomplete = || io::Error::other("not complete in the store");
        let path = self
            .store
            .complete_file_path(&content, node.size())
            .ok_or_else(incomplete)?;
        let file = File::open(&path)?;
        if rustix::fs::fstat(&file)?.st_nlink == 1 {
            // A layer that linked it before and is gone may have left its
            // xattrs (file capabilities, say): none may reach this one.
            clear_xattrs(&file)?;
            self.set_fd_metadata(file.as_fd(), entry)?;
            // Links the inode checked above, whatever happens to the
            // store's name for it meanwhile.
            return Ok(rustix::fs::linkat(
                &file,
                "",
                dir,
                entry.name,
                AtFlags::EMPTY_PATH,
            )?);
        }
        self.charge_copy(&file, node.size())?;
        let fd = rustix::fs::openat(dir, entry.name, create | OFlags::CLOEXEC, Mode::empty())?;
        let mut copy = File::from(fd);
        io::copy(&mut &file, &mut copy)?;
        self.set_fd_metadata(copy.as_fd(), entry)
    }

    /// Counts `size` more bytes copied: an error past [`COPY_BUDGET`], or
    /// if the copy would leave less than [`KEEP_FREE_PERCENT`] free.
    fn charge_copy(&mut self, file: &File, size: u64) -> io::Result<()> {
        self.copied = self.copied.saturating_add(size);
        if self.copied > COPY_BUDGET {
            return Err(io::Error::other(format!(
                "more than {COPY_BUDGET} bytes would be copies of stored files"
            )));
        }
        let fs = rustix::fs::fstatvfs(file)?;
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        let keep = fs.f_blocks.saturating_mul(fs.f_frsize) / 100 * KEEP_FREE_PERCENT;
        if free.saturating_sub(size) < keep {
            return Err(io::Error::other("the filesystem is too full for a copy"));
        }
        Ok(())
    }

    /// Owner, mode, xattrs and times of `entry` on an open file or
    /// directory (owner first: chown clears set-id bits).
    fn set_fd_metadata(&self, fd: impl AsFd, entry: ViewEntry<'_>) -> io::Result<()> {
        let node = self.tree.node(entry.node);
        let (uid, gid) = ids(node.uid(), node.gid());
        rustix::fs::fchown(&fd, Some(uid), Some(gid))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(node.mode() & 0o7777))?;
        for (k, v) in host_xattrs(self.tree, entry) {
            rustix::fs::fsetxattr(&fd, k, v, XattrFlags::empty())?;
        }
        rustix::fs::futimens(&fd, &times(node.mtime()))?;
        Ok(())
    }

    /// The same for an entry that cannot be opened (a symlink, a device,
    /// a FIFO): by name in `dir`, never following a link.
    fn set_at_metadata(&self, dir: &OwnedFd, entry: ViewEntry<'_>) -> io::Result<()> {
        let node = self.tree.node(entry.node);
        let (uid, gid) = ids(node.uid(), node.gid());
        let name = entry.name;
        rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
        if node.kind() != FileKind::Symlink {
            rustix::fs::chmodat(
                dir,
                name,
                Mode::from_raw_mode(node.mode() & 0o7777),
                AtFlags::empty(),
            )?;
        }
        let xattrs = host_xattrs(self.tree, entry);
        if !xattrs.is_empty() {
            // The only xattr call on a name that does not follow links.
            let by_fd = format!("/proc/self/fd/{}/{name}", fd_number(dir));
            for (k, v) in xattrs {
                rustix::fs::lsetxattr(by_fd.as_str(), k, v, XattrFlags::empty())?;
            }
        }
        rustix::fs::utimensat(dir, name, &times(node.mtime()), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }
}

/// The xattrs the mount shows for `entry`, less those the host would
/// enforce or label by rather than show: the FUSE mount shows a TOC's
/// `security.selinux` or POSIX ACL and the kernel ignores it, a file on
/// ext4 would be labelled or access-checked by it. File capabilities stay
/// (`security.capability`: an image's `ping` needs its own).
fn host_xattrs<'t>(tree: &'t LayerTree, entry: ViewEntry<'t>) -> Vec<(&'t str, &'t [u8])> {
    whiteout::xattrs(tree, entry)
        .into_iter()
        .filter(|(k, _)| !host_owned(k))
        .collect()
}

fn host_owned(name: &str) -> bool {
    (name.starts_with("security.") && name != "security.capability") || name.starts_with("system.")
}

/// Removes every xattr of `file` that a layer can have set (the host's
/// own, `security.selinux` say, cannot be removed and are the host's).
fn clear_xattrs(file: &File) -> io::Result<()> {
    let len = rustix::fs::flistxattr_query(file)?;
    if len == 0 {
        return Ok(());
    }
    let mut names = vec![0u8; len];
    let n = rustix::fs::flistxattr(file, &mut names[..])?;
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if std::str::from_utf8(name).is_ok_and(host_owned) {
            continue;
        }
        let name = std::ffi::CStr::from_bytes_with_nul(&[name, b"\0"].concat())
            .map_err(io::Error::other)?
            .to_owned();
        rustix::fs::fremovexattr(file, name.as_c_str())?;
    }
    Ok(())
}

fn fd_number(fd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

fn ids(uid: u32, gid: u32) -> (Uid, Gid) {
    (Uid::from_raw(uid), Gid::from_raw(gid))
}

fn times(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Opens directory `rel` under `top`, refusing to leave it or follow a
/// symlink on the way.
fn beneath(top: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    Ok(rustix::fs::openat2(
        top,
        rel,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )?)
}
