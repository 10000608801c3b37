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

mod baseline;
mod callgrind;

use std::ffi::OsStr;
use std::hint::black_box;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use baseline::Baseline;
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

/// The command line of a gate run.
struct Options {
    /// Rewrite the baseline with the counts.
    update: bool,
    /// How many percent more instructions fail a workload.
    threshold: f64,
    /// The one workload to count.
    only: Option<String>,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let update = args.iter().any(|a| a == "--update");
        let threshold: f64 = match args.iter().position(|a| a == "--threshold") {
            Some(i) => args.get(i + 1).context("--threshold PERCENT")?.parse()?,
            None => 5.0,
        };
        let only = args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1))
            .cloned();
        Ok(Options {
            update,
            threshold,
            only,
        })
    }
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
    let Options {
        update,
        threshold,
        only,
    } = Options::parse(&args)?;
    if cfg!(debug_assertions) {
        anyhow::bail!("build with --release: a debug build's counts mean nothing");
    }
    let exe = std::env::current_exe()?;
    let workloads: Vec<(&str, &str)> = WORKLOADS
        .iter()
        .copied()
        .filter(|n| only.as_ref().is_none_or(|o| o == n))
        .map(|n| (n, function_of(n)))
        .collect();
    anyhow::ensure!(!workloads.is_empty(), "no workload matches {only:?}");
    let counts = callgrind::count_all(&exe, &workloads)?;
    let path = baseline::path();
    let mut baseline = Baseline::load(&path)?;
    let here = baseline::cpu_features();
    let same_cpu = baseline.cpu_features.as_ref().is_none_or(|r| *r == here);
    if !same_cpu {
        println!(
            "perf-gate: the baseline's CPU had {:?}, this one has {here:?}: \
             the CPU-dispatched workloads are shown but not gated (update the \
             baseline on this machine kind in a commit of its own)",
            baseline.cpu_features.clone().unwrap_or_default()
        );
    }
    let failed = baseline::print_comparison(&counts, &baseline.instructions, same_cpu, threshold);
    if update {
        baseline.instructions.extend(counts);
        baseline.cpu_features = Some(here);
        baseline.write(&path)?;
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
