//! Shared pieces of ringstar's benchmarks: timing, inputs, reporting.
//!
//! Benchmarks report ratios against a baseline measured in the same run,
//! never absolute thresholds: machines here are small and shared.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ringstar_core::footer::Footer;

/// The conformance testdata folder (overridable with `RINGSTAR_TESTDATA`).
pub fn testdata() -> PathBuf {
    std::env::var_os("RINGSTAR_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/estargz")
        })
}

/// Median wall time of `runs` calls of `f` (after one warm-up call).
pub fn median_time(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Every path under `dir` that is not a directory, appended to `out` in
/// directory order.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), out)?;
        } else {
            out.push(e.path());
        }
    }
    Ok(())
}

/// Every regular file under `root`, in sorted walk order.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(root, &mut out).expect("walk");
    out.sort();
    out.retain(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()));
    out
}

/// Reads all of `files` with `readers` threads (file i by thread i mod
/// `readers`): the bytes read.
pub fn read_all(files: &[PathBuf], readers: usize) -> u64 {
    let chunks: Vec<Vec<PathBuf>> = (0..readers)
        .map(|r| files.iter().skip(r).step_by(readers).cloned().collect())
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|list| {
            std::thread::spawn(move || {
                list.iter()
                    .map(|p| std::fs::read(p).expect("read").len() as u64)
                    .sum::<u64>()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("reader")).sum()
}

/// The TOC JSON of an eStargz blob (gzip TOC member).
pub fn toc_json_of(blob: &[u8]) -> anyhow::Result<Vec<u8>> {
    let Some(Footer::Estargz { toc_offset }) = Footer::find(blob) else {
        anyhow::bail!("not an eStargz blob");
    };
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&blob[toc_offset as usize..]).read_to_end(&mut tar)?;
    let size = usize::from_str_radix(
        std::str::from_utf8(&tar[124..135])?.trim_matches(['\0', ' ']),
        8,
    )?;
    Ok(tar[512..512 + size].to_vec())
}

/// A data end for parsing `json` alone: just past its last member, so
/// every chunk's span stays within what the parser accepts
/// (`ringstar_core::limits::MAX_CHUNK_SPAN`).
pub fn toc_data_end(json: &[u8]) -> u64 {
    let doc: serde_json::Value = serde_json::from_slice(json).expect("TOC JSON");
    let last = doc["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["offset"].as_u64())
        .max()
        .unwrap_or(0);
    last + (1 << 20)
}

/// A deterministic pseudo-random generator (xorshift), so inputs are the
/// same on every run without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Text-like bytes that compress about as well as source code and
/// configuration files do (3-4x with gzip -9).
pub fn texty_bytes(len: usize, rng: &mut Rng) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "fn",
        "let",
        "mut",
        "self",
        "return",
        "import",
        "def",
        "class",
        "if",
        "else",
        "for",
        "while",
        "in",
        "None",
        "true",
        "false",
        "value",
        "config",
        "path",
        "/usr/lib/",
        "error",
        "result",
        "buffer",
        "=",
        "==",
        "(",
        ")",
        "{",
        "}",
        ":",
        ";",
        ",",
        "\n",
        "\n    ",
        "0x",
        "42",
        "string",
        "append",
        "request",
        "layer",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let w = WORDS[rng.below(WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
        if rng.below(3) == 0 {
            out.extend_from_slice(format!("{}", rng.below(100_000)).as_bytes());
        }
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// Prints one result as a JSON line (for tools) and a readable line.
pub fn report(bench: &str, fields: serde_json::Value) {
    let mut obj = serde_json::json!({ "bench": bench });
    if let (Some(o), Some(f)) = (obj.as_object_mut(), fields.as_object()) {
        o.extend(f.clone());
    }
    println!("{obj}");
}

/// A TOC shaped like a real image's: directories of small files, a few
/// symlinks, each file with its digest and chunk digest.
pub fn generated_toc(entries: usize) -> Vec<u8> {
    let mut rng = Rng::new(7);
    let mut out = Vec::with_capacity(entries);
    let mut offset = 100i64;
    let mut dir = 0;
    while out.len() < entries {
        let dir_name = format!("./usr/lib/python3/dist-packages/pkg{dir:04}/");
        out.push(ringstar_core::toc::TocEntry {
            name: dir_name.clone().into(),
            kind: "dir".into(),
            mode: 0o755,
            mod_time: Some("2024-01-02T03:04:05Z".into()),
            ..ringstar_core::toc::TocEntry::default()
        });
        for f in 0..99 {
            if out.len() >= entries {
                break;
            }
            let name = format!("{dir_name}module_{f:03}_{}.py", rng.below(1000));
            if f % 20 == 19 {
                out.push(ringstar_core::toc::TocEntry {
                    name: name.into(),
                    kind: "symlink".into(),
                    link_name: Some("module_000.py".into()),
                    mode: 0o777,
                    ..ringstar_core::toc::TocEntry::default()
                });
                continue;
            }
            let size = 200 + rng.below(20_000) as i64;
            let digest = ringstar_core::Digest::of(name.as_bytes()).to_string();
            out.push(ringstar_core::toc::TocEntry {
                name: name.into(),
                kind: "reg".into(),
                size,
                mod_time: Some("2024-01-02T03:04:05Z".into()),
                mode: 0o644,
                offset,
                digest: Some(digest.clone().into()),
                chunk_digest: Some(digest.into()),
                ..ringstar_core::toc::TocEntry::default()
            });
            offset += size / 3 + 100;
        }
        dir += 1;
    }
    ringstar_core::toc::TocDocument {
        version: 1,
        entries: out,
    }
    .to_json()
}
