//! The performance regression gate: deterministic workloads on the hot
//! paths, measured in instructions by callgrind (repeatable on a shared,
//! noisy machine, unlike wall time), compared with `bench/baseline.json`.
//!
//! ```sh
//! cargo run --release -p ringstar-bench --bin perf-gate              # check
//! cargo run --release -p ringstar-bench --bin perf-gate -- --update  # new baseline
//! cargo run --release -p ringstar-bench --bin perf-gate -- --only toc_parse_100k
//! ```
//!
//! Exits 1 when a workload takes more than `--threshold` percent (5) more
//! instructions than its baseline, printing old/new/ratio for all.
//! Counts only the workload function itself (`--toggle-collect`), not the
//! setup that makes its input.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use ringstar_bench::{Rng, generated_toc, testdata, texty_bytes, toc_data_end, toc_json_of};
use ringstar_core::inflate::ChunkReader;
use ringstar_core::layer::Compression;
use ringstar_core::store::{FileKey, Store, StoreChunk};
use ringstar_core::toc::{self, Limits, TocDocument, TocEntry};
use ringstar_core::writer::{WriterOptions, build_to_vec};
use ringstar_core::{Digest, FileKind, Layer, LayerTree, NodeId, OpenOptions, tar};
use ringstar_fusedev::abi::{self, opcode};
use ringstar_fusedev::offline::Offline;
use ringstar_fusedev::{
    AttrReply, Ctx, DirOut, Entry, Errno, FileAttr, FileHandle, FileType, Filesystem, Ino, ReadOut,
    ReadResult,
};
use zerocopy::IntoBytes;

const WORKLOADS: &[&str] = &[
    "toc_parse_many_files",
    "toc_parse_100k",
    "inflate_verify_1mib",
    "inflate_verify_50kib",
    "fuse_lookup",
    "fuse_getattr",
    "fuse_read_128kib",
    "fuse_readdirplus",
    "tree_lookup_deep",
    "store_hit_copy",
];

// --- the workloads: each `workload_*` is all that is counted -----------

#[inline(never)]
fn workload_toc_parse(json: &[u8], data_end: u64) -> usize {
    toc::parse(json, data_end, Compression::Gzip, Limits::default())
        .expect("TOC parses")
        .len()
}

struct InflateInput {
    layer: Layer,
    blob: Vec<u8>,
}

#[inline(never)]
fn workload_inflate_verify(input: &InflateInput) -> u64 {
    let tree = &input.layer.tree;
    let mut reader = ChunkReader::new();
    let mut sum = 0u64;
    let mut out = Vec::new();
    let files = (0..tree.len() as u32)
        .map(NodeId)
        .filter(|&n| tree.node(n).kind() == FileKind::Reg);
    for id in files {
        for g in tree.chunk_span(id) {
            let c = &tree.all_chunks()[g];
            out.resize(c.size as usize, 0);
            let compressed = &input.blob[c.offset as usize..c.next_offset as usize];
            reader
                .read(
                    input.layer.compression,
                    c,
                    tree.chunk_digest(id, c),
                    compressed,
                    &mut out,
                )
                .expect("chunk verifies");
            sum += out[out.len() / 2] as u64;
        }
    }
    sum
}

/// A filesystem that costs next to nothing, so the FUSE workloads count
/// request decoding, dispatch and reply encoding.
struct FlatFs {
    files: u64,
    data: Vec<u8>,
}

impl FlatFs {
    fn attr(&self, ino: u64) -> FileAttr {
        if ino == 1 {
            FileAttr::new(Ino(1), FileType::Directory, 0, 0o755)
        } else {
            FileAttr::new(
                Ino(ino),
                FileType::RegularFile,
                self.data.len() as u64,
                0o644,
            )
        }
    }

    fn entry(&self, ino: u64) -> Entry {
        Entry {
            attr: self.attr(ino),
            generation: 0,
            entry_ttl: std::time::Duration::from_secs(3600),
            attr_ttl: std::time::Duration::from_secs(3600),
        }
    }
}

impl Filesystem for FlatFs {
    fn lookup(&self, _ctx: &Ctx, _parent: Ino, name: &OsStr) -> Result<Entry, Errno> {
        let n: u64 = name
            .to_str()
            .and_then(|s| s.strip_prefix('f'))
            .and_then(|s| s.parse().ok())
            .ok_or(Errno::ENOENT)?;
        if n >= self.files {
            return Err(Errno::ENOENT);
        }
        Ok(self.entry(n + 2))
    }

    fn getattr(&self, _ctx: &Ctx, ino: Ino) -> Result<AttrReply, Errno> {
        Ok(AttrReply {
            attr: self.attr(ino.0),
            ttl: std::time::Duration::from_secs(3600),
        })
    }

    fn read(
        &self,
        _ctx: &Ctx,
        _ino: Ino,
        _fh: FileHandle,
        offset: u64,
        mut out: ReadOut<'_>,
    ) -> ReadResult {
        let start = (offset as usize).min(self.data.len());
        let buf = out.buf();
        let n = buf.len().min(self.data.len() - start);
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        ReadResult::Data(n)
    }

    fn readdir(
        &self,
        _ctx: &Ctx,
        _ino: Ino,
        _fh: FileHandle,
        offset: u64,
        out: &mut DirOut<'_>,
    ) -> Result<(), Errno> {
        let mut name = String::new();
        for i in offset..self.files {
            name.clear();
            use std::fmt::Write;
            let _ = write!(name, "f{i:04}");
            if !out.push(OsStr::new(&name), i + 1, &self.entry(i + 2)) {
                break;
            }
        }
        Ok(())
    }
}

fn request(op: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let header = abi::InHeader {
        len: (40 + body.len()) as u32,
        opcode: op,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        total_extlen: 0,
        padding: 0,
    };
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn read_in(offset: u64, size: u32) -> Vec<u8> {
    abi::ReadIn {
        fh: 1,
        offset,
        size,
        read_flags: 0,
        lock_owner: 0,
        flags: 0,
        padding: 0,
    }
    .as_bytes()
    .to_vec()
}

#[inline(never)]
fn workload_fuse(server: &mut Offline<FlatFs>, requests: &[Vec<u8>]) -> usize {
    let mut total = 0;
    for r in requests {
        total += server.serve(r).expect("request decodes").len();
    }
    total
}

/// readdirplus pages through the directory as the kernel does, each
/// request asking from the last cookie it got.
#[inline(never)]
fn workload_readdirplus(server: &mut Offline<FlatFs>) -> usize {
    let mut cookie = 0u64;
    let mut total = 0;
    for unique in 1.. {
        let reply = server
            .serve(&request(
                opcode::READDIRPLUS,
                unique,
                1,
                &read_in(cookie, 65536),
            ))
            .expect("request decodes")
            .to_vec();
        total += reply.len();
        // Walk the direntplus records for the last cookie.
        let mut at = 16;
        let mut last = None;
        while at + 128 + 24 <= reply.len() {
            let d = &reply[at + 128..at + 128 + 24];
            let off = u64::from_ne_bytes(d[8..16].try_into().unwrap());
            let namelen = u32::from_ne_bytes(d[16..20].try_into().unwrap()) as usize;
            last = Some(off);
            at += (128 + 24 + namelen).div_ceil(8) * 8;
        }
        match last {
            Some(off) => cookie = off,
            None => break,
        }
    }
    total
}

#[inline(never)]
fn workload_tree_lookup(tree: &LayerTree, paths: &[String]) -> u32 {
    let mut sum = 0;
    for p in paths {
        sum += tree.lookup_path(p).expect("path exists").0;
    }
    sum
}

struct StoreInput {
    store: Store,
    key: FileKey,
    chunks: Vec<StoreChunk>,
    offsets: Vec<u64>,
}

#[inline(never)]
fn workload_store_hit(input: &StoreInput) -> u64 {
    let mut buf = vec![0u8; 64 << 10];
    let mut sum = 0;
    for &off in &input.offsets {
        input
            .store
            .read(&input.key, &input.chunks, off, &mut buf)
            .expect("store hit");
        sum += buf[0] as u64;
    }
    sum
}

// --- inputs -----------------------------------------------------------

fn one_file_layer(len: usize, chunk_size: u64) -> InflateInput {
    let mut rng = Rng::new(11);
    let data = texty_bytes(len, &mut rng);
    let mut t = tar::encode_header(&tar::Entry {
        name: "data".into(),
        entry_type: Some(tar::EntryType::Reg),
        mode: 0o644,
        size: data.len() as u64,
        ..tar::Entry::default()
    });
    t.extend_from_slice(&data);
    t.resize(t.len() + tar::padding(data.len() as u64) + 1024, 0);
    let (blob, _) = build_to_vec(
        t.as_slice(),
        &WriterOptions {
            chunk_size,
            ..WriterOptions::default()
        },
    )
    .expect("layer builds");
    let layer = Layer::open(&blob, blob.len() as u64, &OpenOptions::default()).expect("opens");
    InflateInput { layer, blob }
}

/// A tree of `count` files each `depth` directories deep; their paths.
fn deep_tree(count: usize, depth: usize) -> (LayerTree, Vec<String>) {
    let mut entries = Vec::new();
    let mut paths = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for i in 0..count {
        let mut path = String::new();
        for d in 0..depth {
            path.push_str(&format!("level{d}-{}/", (i >> (d % 8)) % 4));
            dirs.insert(path.clone());
        }
        path.push_str(&format!("file-{i}.so"));
        paths.push(path);
    }
    for d in &dirs {
        entries.push(TocEntry {
            name: d.clone().into(),
            kind: "dir".into(),
            mode: 0o755,
            ..TocEntry::default()
        });
    }
    for p in &paths {
        entries.push(TocEntry {
            name: p.clone().into(),
            kind: "symlink".into(),
            link_name: Some("x".into()),
            mode: 0o777,
            ..TocEntry::default()
        });
    }
    let json = TocDocument {
        version: 1,
        entries,
    }
    .to_json();
    let tree =
        toc::parse(&json, u64::MAX / 2, Compression::Gzip, Limits::default()).expect("TOC parses");
    (tree, paths)
}

fn store_input(dir: &Path) -> StoreInput {
    let mut rng = Rng::new(5);
    let data = texty_bytes(4 << 20, &mut rng);
    let store = Store::open(dir, 1 << 30).expect("store opens");
    let chunks: Vec<StoreChunk> = data
        .chunks(1 << 20)
        .enumerate()
        .map(|(i, c)| StoreChunk {
            offset: (i << 20) as u64,
            len: c.len() as u64,
            digest: Digest::of(c),
        })
        .collect();
    let key = FileKey::new(Digest::of(&data), data.len() as u64, &chunks).expect("chunks tile");
    for c in &chunks {
        let part = &data[c.offset as usize..(c.offset + c.len) as usize];
        store
            .put(&key, c.verify(part).expect("verified"))
            .expect("put");
    }
    let offsets = (0..256)
        .map(|_| rng.below(data.len() as u64 - (64 << 10)))
        .collect();
    StoreInput {
        store,
        key,
        chunks,
        offsets,
    }
}

fn flat_server() -> Offline<FlatFs> {
    let mut rng = Rng::new(3);
    let fs = FlatFs {
        files: 1000,
        data: texty_bytes(1 << 20, &mut rng),
    };
    Offline::new(Arc::new(fs), 1 << 20)
}

/// Runs workload `name` once (under callgrind, the driver counts it).
fn run_workload(name: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let result = match name {
        "toc_parse_many_files" => {
            let blob = std::fs::read(testdata().join("many-files.blob"))?;
            let json = toc_json_of(&blob)?;
            workload_toc_parse(black_box(&json), toc_data_end(&json)) as u64
        }
        "toc_parse_100k" => {
            let json = generated_toc(100_000);
            workload_toc_parse(black_box(&json), toc_data_end(&json)) as u64
        }
        "inflate_verify_1mib" => workload_inflate_verify(&one_file_layer(8 << 20, 1 << 20)),
        "inflate_verify_50kib" => workload_inflate_verify(&one_file_layer(2 << 20, 50_000)),
        "fuse_lookup" => {
            let reqs: Vec<Vec<u8>> = (0..1000u64)
                .map(|i| {
                    let mut name = format!("f{:04}", (i * 7919) % 1000).into_bytes();
                    name.push(0);
                    request(opcode::LOOKUP, i + 1, 1, &name)
                })
                .collect();
            workload_fuse(&mut flat_server(), &reqs) as u64
        }
        "fuse_getattr" => {
            let body = abi::GetattrIn {
                getattr_flags: 0,
                dummy: 0,
                fh: 0,
            };
            let reqs: Vec<Vec<u8>> = (0..1000u64)
                .map(|i| request(opcode::GETATTR, i + 1, 2 + i % 1000, body.as_bytes()))
                .collect();
            workload_fuse(&mut flat_server(), &reqs) as u64
        }
        "fuse_read_128kib" => {
            let reqs: Vec<Vec<u8>> = (0..256u64)
                .map(|i| request(opcode::READ, i + 1, 2, &read_in((i % 8) << 17, 128 << 10)))
                .collect();
            workload_fuse(&mut flat_server(), &reqs) as u64
        }
        "fuse_readdirplus" => workload_readdirplus(&mut flat_server()) as u64,
        "tree_lookup_deep" => {
            let (tree, paths) = deep_tree(2000, 16);
            workload_tree_lookup(&tree, &paths) as u64
        }
        "store_hit_copy" => workload_store_hit(&store_input(dir.path())),
        other => anyhow::bail!("no workload {other:?} (known: {})", WORKLOADS.join(", ")),
    };
    black_box(result);
    Ok(())
}

// --- the driver -------------------------------------------------------

/// The workload's function (what callgrind counts).
fn function_of(name: &str) -> &'static str {
    match name {
        "toc_parse_many_files" | "toc_parse_100k" => "workload_toc_parse",
        "inflate_verify_1mib" | "inflate_verify_50kib" => "workload_inflate_verify",
        "fuse_readdirplus" => "workload_readdirplus",
        n if n.starts_with("fuse_") => "workload_fuse",
        "tree_lookup_deep" => "workload_tree_lookup",
        _ => "workload_store_hit",
    }
}

fn count(exe: &Path, name: &str) -> anyhow::Result<u64> {
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--toggle-collect=*{}*", function_of(name)))
        .arg("--callgrind-out-file=/dev/null")
        .arg(exe)
        .arg("run")
        .arg(name)
        .output()
        .context("running valgrind (apt-get install valgrind)")?;
    let err = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "workload {name} failed:\n{err}");
    let collected = err
        .lines()
        .find_map(|l| {
            l.split_once("Collected :")
                .map(|(_, n)| n.trim().to_string())
        })
        .with_context(|| format!("no instruction count from callgrind:\n{err}"))?;
    let n: u64 = collected.parse()?;
    anyhow::ensure!(n > 0, "callgrind counted nothing in {}", function_of(name));
    Ok(n)
}

/// CPU features that libdeflate and sha2 choose code paths by at run
/// time: instruction counts of the workloads using them are comparable
/// only between machines that have the same ones.
fn cpu_features() -> Vec<String> {
    const DISPATCHED: &[&str] = &["avx2", "bmi2", "pclmulqdq", "sha_ni", "vpclmulqdq"];
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: std::collections::BTreeSet<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    DISPATCHED
        .iter()
        .filter(|f| flags.contains(*f))
        .map(|f| f.to_string())
        .collect()
}

/// Workloads whose code depends on [`cpu_features`].
fn cpu_dispatched(name: &str) -> bool {
    name.starts_with("inflate_verify")
}

fn baseline_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("baseline.json")
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("perf-gate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("run") {
        run_workload(args.get(1).context("run NAME")?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let update = args.iter().any(|a| a == "--update");
    let threshold: f64 = match args.iter().position(|a| a == "--threshold") {
        Some(i) => args.get(i + 1).context("--threshold PERCENT")?.parse()?,
        None => 5.0,
    };
    let only: Option<&String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    if cfg!(debug_assertions) {
        anyhow::bail!("build with --release: a debug build's counts mean nothing");
    }
    let exe = std::env::current_exe()?;
    let names: Vec<&str> = WORKLOADS
        .iter()
        .copied()
        .filter(|n| only.is_none_or(|o| o == n))
        .collect();
    anyhow::ensure!(!names.is_empty(), "no workload matches {only:?}");
    // Callgrind runs one thread; run as many workloads at once as there
    // are CPUs (counts do not depend on it).
    let results: Mutex<BTreeMap<String, anyhow::Result<u64>>> = Mutex::default();
    let queue = Mutex::new(names.clone());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while let Some(name) = queue.lock().unwrap().pop() {
                    eprintln!("perf-gate: counting {name}");
                    let r = count(&exe, name);
                    results.lock().unwrap().insert(name.to_string(), r);
                }
            });
        }
    });
    let mut counts = BTreeMap::new();
    for (name, r) in results.into_inner().unwrap() {
        counts.insert(name, r?);
    }
    let path = baseline_path();
    let stored: serde_json::Value = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(e.into()),
    };
    let mut baseline: BTreeMap<String, u64> = stored
        .get("instructions")
        .cloned()
        .map(serde_json::from_value)
        .transpose()?
        .unwrap_or_default();
    let here = cpu_features();
    let recorded: Option<Vec<String>> = stored
        .get("cpu_features")
        .cloned()
        .map(serde_json::from_value)
        .transpose()?;
    let same_cpu = recorded.as_ref().is_none_or(|r| *r == here);
    if !same_cpu {
        println!(
            "perf-gate: the baseline's CPU had {:?}, this one has {here:?}: \
             the CPU-dispatched workloads are shown but not gated (update the \
             baseline on this machine kind in a commit of its own)",
            recorded.unwrap_or_default()
        );
    }
    println!(
        "{:<24} {:>16} {:>16} {:>8}  verdict",
        "workload", "baseline", "now", "ratio"
    );
    let mut failed = false;
    for (name, &now) in &counts {
        let (old, ratio, verdict) = match baseline.get(name) {
            Some(&old) => {
                let ratio = now as f64 / old as f64;
                let verdict = if !same_cpu && cpu_dispatched(name) {
                    "not comparable (CPU)"
                } else if ratio > 1.0 + threshold / 100.0 {
                    failed = true;
                    "REGRESSED"
                } else if ratio < 1.0 - threshold / 100.0 {
                    "faster (update the baseline)"
                } else {
                    "ok"
                };
                (old.to_string(), format!("{ratio:.3}"), verdict)
            }
            None => {
                failed = true;
                ("-".into(), "-".into(), "NO BASELINE")
            }
        };
        println!("{name:<24} {old:>16} {now:>16} {ratio:>8}  {verdict}");
    }
    if update {
        for (name, now) in &counts {
            baseline.insert(name.clone(), *now);
        }
        let json = serde_json::json!({
            "about": "instructions per workload (callgrind), see docs/benchmarks.md; update with perf-gate --update and say why in the commit",
            "cpu_features": here,
            "instructions": baseline,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")?;
        println!("baseline written to {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    if failed {
        println!("perf-gate: FAILED (more than {threshold}% over the baseline, or no baseline)");
        return Ok(ExitCode::FAILURE);
    }
    println!("perf-gate: ok (threshold {threshold}%)");
    Ok(ExitCode::SUCCESS)
}
