//! Image root filesystems from Debian packages, offline: `debootstrap
//! --variant=minbase` for the base layer, then each application installed
//! with apt in a chroot over an overlay of the base, whose upper dir is
//! the application's layer. Directory trees become layer tars here, with
//! overlayfs whiteouts turned into OCI ones.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
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
    umount_below(&merged);
    for d in [&upper, &work, &merged] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d)?;
    }
    eprintln!("hellobench: apt-get install {} (once)", packages.join(" "));
    sh(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            base.display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged))?;
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
    let mut out = Vec::new();
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        let emptied = ["proc", "sys", "dev", "run", "tmp"]
            .iter()
            .any(|d| rel == Path::new(d));
        if !rel.as_os_str().is_empty()
            && xattr::get(&dir, "trusted.overlay.opaque")
                .ok()
                .flatten()
                .as_deref()
                == Some(b"y")
        {
            push(
                &mut out,
                entry(
                    &format!("{}/.wh..wh..opq", rel.display()),
                    EntryType::Reg,
                    0o644,
                ),
                &[],
            );
        }
        // Directories are pushed after their siblings' entries: collect
        // them and descend in name order.
        let mut subdirs = Vec::new();
        for name in names {
            if emptied {
                continue;
            }
            let relp = rel.join(&name);
            let path = root.join(&relp);
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
                push(&mut out, e, &[]);
                subdirs.push(relp);
            } else if ft.is_char_device() && md.rdev() == 0 {
                // An overlay whiteout.
                let wh = match relp.parent() {
                    Some(p) if !p.as_os_str().is_empty() => {
                        format!("{}/.wh.{}", p.display(), name.to_string_lossy())
                    }
                    _ => format!(".wh.{}", name.to_string_lossy()),
                };
                push(&mut out, entry(&wh, EntryType::Reg, 0o644), &[]);
            } else if ft.is_symlink() {
                e.entry_type = Some(EntryType::Symlink);
                e.link_name = std::fs::read_link(&path)?.to_string_lossy().into_owned();
                push(&mut out, e, &[]);
            } else if ft.is_file() {
                if md.nlink() > 1 {
                    if let Some(first) = links.get(&(md.dev(), md.ino())) {
                        e.entry_type = Some(EntryType::Hardlink);
                        e.link_name = first.clone();
                        push(&mut out, e, &[]);
                        continue;
                    }
                    links.insert((md.dev(), md.ino()), name_s.clone());
                }
                if let Ok(Some(cap)) = xattr::get(&path, "security.capability") {
                    e.xattrs.push(("security.capability".into(), cap));
                }
                let data = std::fs::read(&path)?;
                e.size = data.len() as u64;
                push(&mut out, e, &data);
            } else if ft.is_char_device() || ft.is_block_device() {
                e.entry_type = Some(if ft.is_char_device() {
                    EntryType::Char
                } else {
                    EntryType::Block
                });
                let rdev = md.rdev();
                e.dev_major = ((rdev >> 8) & 0xfff) as u32 | ((rdev >> 32) & !0xfff) as u32;
                e.dev_minor = (rdev & 0xff) as u32 | ((rdev >> 12) & !0xff) as u32;
                push(&mut out, e, &[]);
            } else if ft.is_fifo() {
                e.entry_type = Some(EntryType::Fifo);
                push(&mut out, e, &[]);
            }
            // Sockets are not layer content.
        }
        stack.extend(subdirs.into_iter().rev());
    }
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
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

/// `path` (absolute, as a process inside `root` names it) resolved inside
/// `root`: symlinks followed as the chroot would, never leaving it. The
/// result is relative to `root`.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut todo: Vec<String> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .rev()
        .collect();
    let mut at = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&c);
        let md = std::fs::symlink_metadata(root.join(&next)).ok()?;
        if md.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(root.join(&next)).ok()?;
            if target.is_absolute() {
                at = PathBuf::new();
            }
            let mut parts: Vec<String> = target
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                })
                .collect();
            parts.reverse();
            todo.extend(parts);
        } else {
            at = next;
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let d = tempfile_dir();
        std::fs::create_dir_all(d.join("usr/lib")).unwrap();
        std::fs::write(d.join("usr/lib/libx.so.1"), b"x").unwrap();
        std::os::unix::fs::symlink("usr/lib", d.join("lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/libx.so.1", d.join("usr/lib/libx.so")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", d.join("usr/lib/up")).unwrap();
        assert_eq!(
            resolve_in_root(&d, "/lib/libx.so").unwrap(),
            PathBuf::from("usr/lib/libx.so.1")
        );
        // Up past the root stays at the root.
        assert!(resolve_in_root(&d, "/usr/lib/up/passwd").is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

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
