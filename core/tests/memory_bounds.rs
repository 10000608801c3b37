//! Memory a hostile layer can make ringstar spend (#14): a TOC padded
//! with whitespace, a file declaring far more than its data, an
//! impossible innerOffset. Each case runs in a child process of this test
//! binary, which resets its peak RSS (`/proc/self/clear_refs`) after
//! building the blob and reports how far the peak rose during the
//! operation alone: measuring the real process, not a model of it.

use std::io::Write;
use std::process::Command;

use base64::Engine as _;
use ringstar_core::footer::Footer;
use ringstar_core::tar::{self, Entry, EntryType};
use ringstar_core::{Digest, Error, Layer, OpenOptions, inspect};

const CHILD_ENV: &str = "RINGSTAR_MEMORY_CHILD";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A blob: `payload` (members already compressed) then a TOC member
/// holding `json` followed by `pad` bytes of whitespace (written in
/// pieces, so building it costs no memory), then the footer.
fn blob(payload: &[u8], json: &[u8], pad: usize) -> (Vec<u8>, Digest) {
    let size = (json.len() + pad) as u64;
    let header = tar::encode_header(&Entry {
        name: "stargz.index.json".into(),
        entry_type: Some(EntryType::Reg),
        mode: 0o444,
        size,
        ..Entry::default()
    });
    let mut hasher = ringstar_core::digest::Hasher::new();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&header).unwrap();
    e.write_all(json).unwrap();
    hasher.update(json);
    let spaces = vec![b' '; 64 * 1024];
    let mut left = pad;
    while left > 0 {
        let n = left.min(spaces.len());
        e.write_all(&spaces[..n]).unwrap();
        hasher.update(&spaces[..n]);
        left -= n;
    }
    e.write_all(&vec![0u8; tar::padding(size) + 1024]).unwrap();
    let toc = e.finish().unwrap();
    let mut out = payload.to_vec();
    let toc_offset = out.len() as u64;
    out.extend_from_slice(&toc);
    out.extend_from_slice(&Footer::Estargz { toc_offset }.encode());
    (out, hasher.finish())
}

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// In the child: runs `setup`, resets the peak, runs `op` on what setup
/// made and prints how far the peak rose above the RSS it started from.
/// In the parent: runs the test `name` in a child and returns that rise
/// in KiB.
fn peak_rise_kb<T>(name: &str, setup: impl FnOnce() -> T, op: impl FnOnce(T)) -> Option<u64> {
    if std::env::var_os(CHILD_ENV).is_some() {
        let state = setup();
        std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS");
        let before = status_kb("VmRSS:");
        op(state);
        let rise = status_kb("VmHWM:").saturating_sub(before);
        println!("PEAK_RISE_KB={rise}");
        return None;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rise = stdout
        .lines()
        .find_map(|l| l.split("PEAK_RISE_KB=").nth(1))
        .unwrap_or_else(|| panic!("no measurement in {stdout}"));
    Some(rise.parse().unwrap())
}

/// What a few allocator arenas and the TOC's own tree may cost; the bad
/// cases below cost 48 MiB and more on the old code.
const BOUND_KB: u64 = 8 * 1024;

#[test]
fn whitespace_padding_does_not_cost_memory_to_open() {
    // 24 MiB of spaces inflate from ~25 KiB; the old reader held them
    // twice over (the #14 report's 300 MB peaked at 650 MB).
    let rise = peak_rise_kb(
        "whitespace_padding_does_not_cost_memory_to_open",
        || {
            let json = br#"{"version":1,"entries":[{"name":"a","type":"dir"}]}"#;
            blob(&[], json, 24 << 20)
        },
        |(b, digest)| {
            let opts = OpenOptions {
                toc_digest: Some(digest),
                ..OpenOptions::default()
            };
            let layer = Layer::open(&b[..], b.len() as u64, &opts).unwrap();
            assert!(layer.tree.lookup_path("a").is_some());
            assert_eq!(layer.toc_digest, digest);
        },
    );
    if let Some(rise) = rise {
        assert!(rise < BOUND_KB, "opening took {rise} KiB more");
    }
}

#[test]
fn a_huge_declared_file_size_does_not_cost_memory_to_inspect() {
    // One member of 80 KiB of incompressible bytes at offset 512; the
    // file says it is 64 MiB (something 80 KiB of deflate could hold, so
    // the TOC is valid), and inspect reads it back.
    let mut data = vec![0u8; 80 << 10];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let member = gzip(&data);
    let mut payload = gzip(&[0u8; 512]);
    payload.resize(512, 0);
    let offset = payload.len();
    payload.extend_from_slice(&member);
    let d = Digest::of(&data).to_string();
    let json = serde_json::to_vec(&serde_json::json!({"version": 1, "entries": [
        {"name": "big", "type": "reg", "size": 64u64 << 20, "offset": offset, "digest": d, "chunkDigest": d},
    ]}))
    .unwrap();
    let (b, _) = blob(&payload, &json, 0);
    let layer = Layer::open(&b[..], b.len() as u64, &OpenOptions::default()).unwrap();
    let rise = peak_rise_kb(
        "a_huge_declared_file_size_does_not_cost_memory_to_inspect",
        || (),
        |()| {
            let records = inspect::inspect(&layer, &b[..]);
            let big = records.iter().find(|r| r.name == "big").unwrap();
            // The member holds 80 KiB, not 64 MiB: a read error.
            assert!(big.sha256.is_none() && big.error.is_some(), "{big:?}");
        },
    );
    if let Some(rise) = rise {
        assert!(rise < BOUND_KB, "inspect took {rise} KiB more");
    }
}

#[test]
fn sizes_no_member_could_hold_are_refused_at_open() {
    // The #14 cases: a multi-exabyte file, and innerOffsets of 1<<46 and
    // i64::MAX. The old code opened these layers, then aborted (or
    // panicked) allocating for them on the first read.
    let member = gzip(b"hello");
    let mut payload = gzip(&[0u8; 512]);
    let offset = payload.len();
    payload.extend_from_slice(&member);
    let d = Digest::of(b"hello").to_string();
    for (size, inner) in [(1u64 << 60, 0u64), (5, 1 << 46), (5, i64::MAX as u64)] {
        let json = serde_json::to_vec(&serde_json::json!({"version": 1, "entries": [
            {"name": "f", "type": "reg", "size": size, "offset": offset, "innerOffset": inner, "digest": d},
        ]}))
        .unwrap();
        let (b, _) = blob(&payload, &json, 0);
        let err = Layer::open(&b[..], b.len() as u64, &OpenOptions::default()).unwrap_err();
        assert!(
            matches!(&err, Error::BadEntry { name, .. } if name == "f"),
            "{size} {inner}: {err}"
        );
    }
}

#[test]
fn a_toc_string_cannot_grow_without_bound() {
    // One 8 MiB xattr value: refused before the parser buffers it all.
    let value = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 6 << 20]);
    let json =
        format!(r#"{{"entries":[{{"name":"a","type":"dir","xattrs":{{"user.x":"{value}"}}}}]}}"#);
    let (b, _) = blob(&[], json.as_bytes(), 0);
    let err = Layer::open(&b[..], b.len() as u64, &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err}");
}
