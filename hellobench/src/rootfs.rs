//! Image root filesystems from Debian packages, offline: `debootstrap
//! --variant=minbase` for the base layer, then each application installed
//! with apt in a chroot over an overlay of the base, whose upper dir is
//! the application's layer. Directory trees become layer tars here, with
//! overlayfs whiteouts turned into OCI ones.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use ringstar_core::tar::{self, EntryType};

/// Runs a command, failing with its output when it fails.
pub fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Unmounts everything mounted at or below `dir`, deepest first.
pub fn umount_below(dir: &Path) {
    let prefix = dir.display().to_string();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
}

/// Empties (or makes) an overlay's upper, work and merged directories,
/// unmounting whatever is left mounted below `merged` first.
pub fn fresh_overlay_dirs(upper: &Path, work: &Path, merged: &Path) -> anyhow::Result<()> {
    umount_below(merged);
    for d in [upper, work, merged] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d)?;
    }
    Ok(())
}

/// Mounts an overlay of `lower` (topmost first) with `upper` and `work`
/// at `merged`.
pub fn mount_overlay(
    lower: &[&Path],
    upper: &Path,
    work: &Path,
    merged: &Path,
) -> anyhow::Result<()> {
    let lower: Vec<String> = lower.iter().map(|l| l.display().to_string()).collect();
    sh(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            upper.display(),
            work.display()
        ))
        .arg(merged))?;
    Ok(())
}

/// The base layer: Debian minbase, without apt's caches, the host's
/// resolver or the ability to start daemons.
pub fn build_base(cache: &Path, suite: &str, mirror: &str) -> anyhow::Result<PathBuf> {
    let dir = cache.join("rootfs/base");
    let done = cache.join("rootfs/base.done");
    if done.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().unwrap())?;
    eprintln!("hellobench: debootstrap --variant=minbase {suite} (a few minutes, once)");
    sh(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(suite)
        .arg(&dir)
        .arg(mirror))?;
    clean_apt(&dir);
    std::fs::write(dir.join("etc/resolv.conf"), "")?;
    std::fs::write(dir.join("etc/hostname"), "bench\n")?;
    std::fs::write(dir.join("usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 101\n")?;
    sh(Command::new("chmod")
        .arg("755")
        .arg(dir.join("usr/sbin/policy-rc.d")))?;
    std::fs::write(&done, "")?;
    Ok(dir)
}

fn clean_apt(root: &Path) {
    // Package lists, caches and logs: what apt leaves that no workload
    // reads (the `partial` dirs stay, apt expects them).
    for dir in [
        "var/cache/apt",
        "var/cache/apt/archives",
        "var/cache/apt/archives/partial",
        "var/lib/apt/lists",
        "var/lib/apt/lists/partial",
        "var/log/apt",
    ] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            let keep = e.file_name() == "partial" || e.file_name() == "archives";
            if !keep && e.file_type().is_ok_and(|t| !t.is_dir()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// An application layer: `packages` installed over `base`; the overlay's
/// upper dir.
pub fn build_app(
    cache: &Path,
    base: &Path,
    name: &str,
    packages: &[&str],
) -> anyhow::Result<PathBuf> {
    let root = cache.join("rootfs");
    let upper = root.join(format!("{name}-upper"));
    let done = root.join(format!("{name}.done"));
    if done.exists() {
        return Ok(upper);
    }
    let (work, merged) = (
        root.join(format!("{name}-work")),
        root.join(format!("{name}-merged")),
    );
    fresh_overlay_dirs(&upper, &work, &merged)?;
    eprintln!("hellobench: apt-get install {} (once)", packages.join(" "));
    mount_overlay(&[base], &upper, &work, &merged)?;
    let result = (|| -> anyhow::Result<()> {
        sh(Command::new("mount")
            .arg("--bind")
            .arg("/etc/resolv.conf")
            .arg(merged.join("etc/resolv.conf")))?;
        sh(Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(merged.join("proc")))?;
        sh(Command::new("chroot")
            .arg(&merged)
            .args(["apt-get", "update", "-qq"]))?;
        sh(Command::new("chroot")
            .arg(&merged)
            .args([
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
            ])
            .args(packages))?;
        sh(Command::new("chroot")
            .arg(&merged)
            .args(["apt-get", "clean"]))?;
        Ok(())
    })();
    umount_below(&merged);
    result?;
    clean_apt(&upper);
    for d in ["tmp", "proc"] {
        let _ = std::fs::remove_dir_all(upper.join(d));
    }
    // The resolv.conf bind mount point may have been copied up empty.
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&merged);
    std::fs::write(&done, "")?;
    Ok(upper)
}

/// A directory tree as a layer tar: entries in name order, hard links
/// kept, overlay whiteouts (char 0:0) as `.wh.<name>`, opaque dirs
/// (`trusted.overlay.opaque=y`) with `.wh..wh..opq`, `/proc`, `/sys`,
/// `/dev`, `/run` and `/tmp` emptied. `security.capability` xattrs kept.
pub fn tar_of_dir(root: &Path) -> anyhow::Result<Vec<u8>> {
    let mut tar = DirTar {
        root,
        out: Vec::new(),
        links: HashMap::new(),
    };
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let subdirs = tar.push_dir(&rel)?;
        stack.extend(subdirs.into_iter().rev());
    }
    tar.out.extend_from_slice(&[0u8; 1024]);
    Ok(tar.out)
}

/// Directories whose contents are not layer content (the entries
/// themselves are kept).
const EMPTIED_DIRS: [&str; 5] = ["proc", "sys", "dev", "run", "tmp"];

/// A layer tar being written from the tree at `root`.
struct DirTar<'a> {
    root: &'a Path,
    out: Vec<u8>,
    /// The first name written for each (device, inode) with several
    /// links: later names become hard links to it.
    links: HashMap<(u64, u64), String>,
}

impl DirTar<'_> {
    /// The entries of directory `rel` (relative to the root), in name
    /// order; returns its subdirectories, to be descended into in that
    /// order after their siblings' entries.
    fn push_dir(&mut self, rel: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let dir = self.root.join(rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        let emptied = EMPTIED_DIRS.iter().any(|d| rel == Path::new(d));
        if !rel.as_os_str().is_empty() && is_opaque(&dir) {
            let marker = format!("{}/.wh..wh..opq", rel.display());
            push(&mut self.out, entry(&marker, EntryType::Reg, 0o644), &[]);
        }
        let mut subdirs = Vec::new();
        if emptied {
            return Ok(subdirs);
        }
        for name in names {
            let relp = rel.join(&name);
            if self.push_node(&relp, &name)? {
                subdirs.push(relp);
            }
        }
        Ok(subdirs)
    }

    /// The entry of `relp` (whose file name is `name`); true when it is a
    /// directory.
    fn push_node(&mut self, relp: &Path, name: &OsStr) -> anyhow::Result<bool> {
        let path = self.root.join(relp);
        let md = std::fs::symlink_metadata(&path)?;
        let name_s = relp.to_string_lossy().into_owned();
        let ft = md.file_type();
        let mut e = entry(&name_s, EntryType::Reg, md.mode() & 0o7777);
        e.uid = md.uid();
        e.gid = md.gid();
        e.mtime = md.mtime();
        if ft.is_dir() {
            e.name.push('/');
            e.entry_type = Some(EntryType::Dir);
            push(&mut self.out, e, &[]);
            return Ok(true);
        }
        if ft.is_char_device() && md.rdev() == 0 {
            // An overlay whiteout.
            let wh = whiteout_name(relp, name);
            push(&mut self.out, entry(&wh, EntryType::Reg, 0o644), &[]);
        } else if ft.is_symlink() {
            e.entry_type = Some(EntryType::Symlink);
            e.link_name = std::fs::read_link(&path)?.to_string_lossy().into_owned();
            push(&mut self.out, e, &[]);
        } else if ft.is_file() {
            self.push_file(e, &path, &md)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            e.entry_type = Some(if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            });
            let rdev = md.rdev();
            e.dev_major = ((rdev >> 8) & 0xfff) as u32 | ((rdev >> 32) & !0xfff) as u32;
            e.dev_minor = (rdev & 0xff) as u32 | ((rdev >> 12) & !0xff) as u32;
            push(&mut self.out, e, &[]);
        } else if ft.is_fifo() {
            e.entry_type = Some(EntryType::Fifo);
            push(&mut self.out, e, &[]);
        }
        // Sockets are not layer content.
        Ok(false)
    }

    /// A regular file: its data and capabilities, or a hard link to the
    /// first name of the same inode.
    fn push_file(
        &mut self,
        mut e: tar::Entry,
        path: &Path,
        md: &std::fs::Metadata,
    ) -> anyhow::Result<()> {
        if md.nlink() > 1 {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                e.entry_type = Some(EntryType::Hardlink);
                e.link_name = first.clone();
                push(&mut self.out, e, &[]);
                return Ok(());
            }
            self.links.insert((md.dev(), md.ino()), e.name.clone());
        }
        if let Ok(Some(cap)) = xattr::get(path, "security.capability") {
            e.xattrs.push(("security.capability".into(), cap));
        }
        let data = std::fs::read(path)?;
        e.size = data.len() as u64;
        push(&mut self.out, e, &data);
        Ok(())
    }
}

/// Whether `dir` is an overlay opaque directory.
fn is_opaque(dir: &Path) -> bool {
    xattr::get(dir, "trusted.overlay.opaque")
        .ok()
        .flatten()
        .as_deref()
        == Some(b"y")
}

/// The OCI whiteout that hides `relp` (whose file name is `name`).
fn whiteout_name(relp: &Path, name: &OsStr) -> String {
    match relp.parent() {
        Some(p) if !p.as_os_str().is_empty() => {
            format!("{}/.wh.{}", p.display(), name.to_string_lossy())
        }
        _ => format!(".wh.{}", name.to_string_lossy()),
    }
}

fn entry(name: &str, kind: EntryType, mode: u32) -> tar::Entry {
    tar::Entry {
        name: name.to_string(),
        entry_type: Some(kind),
        mode,
        ..tar::Entry::default()
    }
}

fn push(out: &mut Vec<u8>, e: tar::Entry, data: &[u8]) {
    let mut e = e;
    if e.kind() == EntryType::Reg {
        e.size = data.len() as u64;
    }
    out.extend_from_slice(&tar::encode_header(&e));
    out.extend_from_slice(data);
    out.resize(out.len() + tar::padding(data.len() as u64), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_whiteouts_become_oci_whiteouts() {
        let d = tempfile_dir();
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(d.join("etc/a"), b"hello").unwrap();
        std::fs::hard_link(d.join("etc/a"), d.join("etc/b")).unwrap();
        let st = Command::new("mknod")
            .arg(d.join("etc/gone"))
            .args(["c", "0", "0"])
            .status()
            .unwrap();
        assert!(st.success());
        let t = tar_of_dir(&d).unwrap();
        let mut scanner = ringstar_core::tar::Scanner::new(t.as_slice(), t.len() as u64);
        let mut names = Vec::new();
        while let Some(e) = scanner.next_entry().unwrap() {
            names.push((e.entry.name.clone(), e.entry.kind()));
        }
        assert_eq!(
            names,
            [
                ("etc/".to_string(), EntryType::Dir),
                ("etc/a".to_string(), EntryType::Reg),
                ("etc/b".to_string(), EntryType::Hardlink),
                ("etc/.wh.gone".to_string(), EntryType::Reg),
            ]
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "hellobench-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
