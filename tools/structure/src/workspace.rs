//! Finding the workspace's crates, their source files and their crate roots.

use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};

/// What a crate root builds: the library, or one of the binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    Lib,
    Bin,
}

/// A file the compiler starts a crate from (src/lib.rs, src/main.rs, src/bin/*.rs).
#[derive(Debug, Clone)]
pub struct Root {
    pub path: PathBuf,
    pub kind: RootKind,
}

/// One package of the workspace: a folder with a Cargo.toml that has a `[package]`.
#[derive(Debug)]
pub struct Crate {
    /// The folder, relative to the workspace root ("." for the root itself).
    pub name: String,
    /// Source files that are not test files by name or place, sorted.
    pub files: Vec<PathBuf>,
    pub roots: Vec<Root>,
}

impl Crate {
    pub fn has_lib(&self) -> bool {
        self.roots.iter().any(|r| r.kind == RootKind::Lib)
    }
}

/// Folders never holding non-test source: build output, integration tests, benchmarks.
fn skipped_dir(name: &str) -> bool {
    name.starts_with('.') || matches!(name, "target" | "tests" | "benches")
}

fn is_package(dir: &Path) -> bool {
    fs::read_to_string(dir.join("Cargo.toml"))
        .map(|toml| toml.lines().any(|l| l.trim() == "[package]"))
        .unwrap_or(false)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort();
    Ok(entries)
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// Every crate under `root`, sorted by folder.
pub fn find_crates(root: &Path) -> Result<Vec<Crate>> {
    let mut dirs = Vec::new();
    collect_package_dirs(root, &mut dirs)?;
    dirs.into_iter().map(|dir| load_crate(root, dir)).collect()
}

fn collect_package_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if is_package(dir) {
        out.push(dir.to_path_buf());
    }
    for entry in sorted_entries(dir)? {
        if entry.is_dir() && !skipped_dir(file_name(&entry)) {
            collect_package_dirs(&entry, out)?;
        }
    }
    Ok(())
}

fn load_crate(root: &Path, dir: PathBuf) -> Result<Crate> {
    let name = display_path(root, &dir);
    let src = dir.join("src");
    let mut files = Vec::new();
    let roots = if src.is_dir() {
        collect_sources(&src, &mut files)?;
        standard_roots(&src)?
    } else {
        // A crate without src/ (fuzz/) names its targets in Cargo.toml; each
        // file is taken as its own root.
        collect_sources(&dir, &mut files)?;
        files
            .iter()
            .map(|path| Root {
                path: path.clone(),
                kind: RootKind::Bin,
            })
            .collect()
    };
    Ok(Crate {
        name: if name.is_empty() { ".".into() } else { name },
        files,
        roots,
    })
}

/// `*.rs` files under `dir`, without test files and without nested crates.
fn collect_sources(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in sorted_entries(dir)? {
        let name = file_name(&entry);
        if entry.is_dir() {
            if !skipped_dir(name) && !entry.join("Cargo.toml").exists() {
                collect_sources(&entry, out)?;
            }
        } else if name.ends_with(".rs") && name != "tests.rs" {
            out.push(entry);
        }
    }
    Ok(())
}

fn standard_roots(src: &Path) -> Result<Vec<Root>> {
    let mut roots = Vec::new();
    let mut push = |path: PathBuf, kind| {
        if path.is_file() {
            roots.push(Root { path, kind });
        }
    };
    push(src.join("lib.rs"), RootKind::Lib);
    push(src.join("main.rs"), RootKind::Bin);
    let bin = src.join("bin");
    if bin.is_dir() {
        for entry in sorted_entries(&bin)? {
            if entry.is_dir() {
                push(entry.join("main.rs"), RootKind::Bin);
            } else if file_name(&entry).ends_with(".rs") {
                push(entry, RootKind::Bin);
            }
        }
    }
    Ok(roots)
}

/// `path` relative to `root`, with `/` separators.
pub fn display_path(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// `a/b/../c` as `a/c`, without touching the file system.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
