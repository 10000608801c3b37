//! Every case of shared/testdata/estargz pushed to Debian's real
//! docker-registry, resolved and mounted through the layer filesystem,
//! and compared through `std::fs` with its `tree` in mounted form
//! (landmarks hidden, whiteouts as overlay whiteouts); `eio` files fail
//! with EIO while their neighbours read; `reject` cases refuse to mount.

use ringstar_testkit::mounted as common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use base64::Engine as _;
use ringstar_core::Digest;
use ringstar_layerfs::unpack::Unpacked;
use ringstar_layerfs::{BackgroundConfig, LoaderConfig, STATE_DIR};
use ringstar_testkit::Registry;
use serde_json::Value;

use common::{Mounted, push_case, testdata};

fn kind_of(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_file() {
        "reg"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_char_device() {
        "char"
    } else if t.is_block_device() {
        "block"
    } else if t.is_fifo() {
        "fifo"
    } else {
        "other"
    }
}

fn major_minor(rdev: u64) -> (u64, u64) {
    (
        ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff),
        (rdev & 0xff) | ((rdev >> 12) & !0xff),
    )
}

/// The mounted form of a raw tree: (name → expected fields), plus the
/// names that must be absent and the directories that must be opaque.
struct MountedForm {
    entries: BTreeMap<String, Value>,
    absent: Vec<String>,
    opaque: BTreeSet<String>,
}

fn mounted_form(tree: &[Value]) -> MountedForm {
    let raw: BTreeSet<String> = tree
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    let mut out = MountedForm {
        entries: BTreeMap::new(),
        absent: Vec::new(),
        opaque: BTreeSet::new(),
    };
    for e in tree {
        let name = e["name"].as_str().unwrap();
        let (dir, base) = name.rsplit_once('/').unwrap_or(("", name));
        let join = |b: &str| {
            if dir.is_empty() {
                b.to_string()
            } else {
                format!("{dir}/{b}")
            }
        };
        if dir.is_empty() && (base == ".prefetch.landmark" || base == ".no.prefetch.landmark") {
            out.absent.push(name.to_string());
        } else if base == ".wh..wh..opq" {
            out.absent.push(name.to_string());
            out.opaque.insert(dir.to_string());
        } else if let Some(target) = base.strip_prefix(".wh.") {
            out.absent.push(name.to_string());
            if !raw.contains(&join(target)) {
                out.entries.insert(
                    join(target),
                    serde_json::json!({"type": "char", "major": 0, "minor": 0, "whiteout": true}),
                );
            }
        } else {
            out.entries.insert(name.to_string(), e.clone());
        }
    }
    out
}

/// `unpacked`: `root` is a layer unpacked on disk, where a symlink's mode
/// is 0777 whatever the TOC says (as in any extracted layer); the mount
/// shows the TOC's.
fn check_case(root: &Path, case: &str, spec: &Value, unpacked: bool, failures: &mut Vec<String>) {
    let form = mounted_form(spec["tree"].as_array().unwrap());
    let eio: Vec<&str> = spec["eio"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
        .unwrap_or_default();
    let mut fail = |m: String| failures.push(format!("{case}: {m}"));
    for name in &form.absent {
        if root.join(name).symlink_metadata().is_ok() {
            fail(format!("{name:?} must be hidden"));
        }
    }
    for (name, want) in &form.entries {
        let path = root.join(name);
        let meta = match path.symlink_metadata() {
            Ok(m) => m,
            Err(e) => {
                fail(format!("{name:?}: {e}"));
                continue;
            }
        };
        let wkind = want["type"].as_str().unwrap();
        let got_kind = kind_of(&meta);
        let expect_kind = if wkind == "hardlink" { "reg" } else { wkind };
        if got_kind != expect_kind {
            fail(format!("{name:?}: type {got_kind}, want {expect_kind}"));
            continue;
        }
        for (key, wv) in want.as_object().unwrap() {
            // A hardlink is its target's inode: its own TOC attributes
            // are not what stat shows.
            if wkind == "hardlink" && !matches!(key.as_str(), "link" | "sha256" | "size") {
                continue;
            }
            if unpacked && wkind == "symlink" && key == "mode" {
                continue;
            }
            let ok = match key.as_str() {
                "mode" => u64::from(meta.permissions().mode() & 0o7777) == wv.as_u64().unwrap(),
                "uid" => u64::from(meta.uid()) == wv.as_u64().unwrap(),
                "gid" => u64::from(meta.gid()) == wv.as_u64().unwrap(),
                "mtime" => meta.mtime() == wv.as_i64().unwrap(),
                "size" if got_kind == "reg" => meta.size() == wv.as_u64().unwrap(),
                "major" => major_minor(meta.rdev()).0 == wv.as_u64().unwrap(),
                "minor" => major_minor(meta.rdev()).1 == wv.as_u64().unwrap(),
                "link" if wkind == "symlink" => {
                    std::fs::read_link(&path).unwrap().to_str() == wv.as_str()
                }
                "link" if wkind == "hardlink" => {
                    let target = root.join(wv.as_str().unwrap());
                    target.metadata().is_ok_and(|t| t.ino() == meta.ino())
                }
                "xattrs" => {
                    let mut got = BTreeMap::new();
                    for k in xattr::list(&path).unwrap() {
                        let v = xattr::get(&path, &k).unwrap().unwrap_or_default();
                        got.insert(
                            k.to_string_lossy().into_owned(),
                            base64::engine::general_purpose::STANDARD.encode(v),
                        );
                    }
                    let want: BTreeMap<String, String> = wv
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect();
                    got.retain(|k, _| k != "trusted.overlay.opaque");
                    got == want
                }
                "sha256" if eio.contains(&name.as_str()) => {
                    let err = std::fs::read(&path).unwrap_err();
                    err.raw_os_error() == Some(libc::EIO)
                }
                "sha256" => std::fs::read(&path)
                    .map(|d| Digest::of(&d).hex())
                    .is_ok_and(|h| Some(h.as_str()) == wv.as_str()),
                _ => true,
            };
            if !ok {
                fail(format!("{name:?}.{key}: want {wv}"));
            }
        }
    }
    // Opaque directories say so; listings show exactly the mounted names.
    for dir in &form.opaque {
        let v = xattr::get(root.join(dir), "trusted.overlay.opaque").unwrap();
        if v.as_deref() != Some(b"y".as_slice()) {
            fail(format!("{dir:?} must be opaque"));
        }
    }
    let mut dirs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in form.entries.keys() {
        if name.is_empty() {
            continue;
        }
        // The name, and every directory it implies, in its parent.
        let mut cur = name.as_str();
        loop {
            let (dir, base) = cur.rsplit_once('/').unwrap_or(("", cur));
            dirs.entry(dir.to_string())
                .or_default()
                .insert(base.to_string());
            if dir.is_empty() {
                break;
            }
            cur = dir;
        }
        dirs.entry(name.clone()).or_default();
    }
    for (dir, want) in dirs {
        let p = root.join(&dir);
        if !p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let got: BTreeSet<String> = std::fs::read_dir(&p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            // An unpacked layer lists its state directory.
            .filter(|n| !(unpacked && dir.is_empty() && n == STATE_DIR))
            .collect();
        if got != want {
            fail(format!("listing of {dir:?}: got {got:?}, want {want:?}"));
        }
    }
}

#[test]
fn every_case_mounts_as_its_json_says() {
    let reg = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(
        store.path(),
        1 << 30,
        LoaderConfig {
            background: BackgroundConfig {
                enabled: false,
                ..BackgroundConfig::default()
            },
            ..LoaderConfig::default()
        },
    );
    let mut names: Vec<String> = std::fs::read_dir(testdata())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "json")
                .then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    assert!(names.len() >= 10);
    let mut failures = Vec::new();
    let mut mounted = Vec::new();
    for name in &names {
        let (spec, digest) = push_case(&reg, name);
        let toc = spec["toc_digest"].as_str();
        let result = m.add(&reg.addr, "conformance/layers", name, &digest, toc);
        match (spec["expect"].as_str().unwrap(), result) {
            ("ok", Ok(_)) => mounted.push((name.clone(), spec, digest)),
            ("ok", Err(e)) => failures.push(format!("{name}: did not mount: {e}")),
            ("reject", Ok(_)) => failures.push(format!("{name}: mounted, must be refused")),
            ("reject", Err(e)) => {
                let msg = e.to_string();
                assert!(msg.len() > 20, "{name}: reason too terse: {msg}");
                eprintln!("{name}: refused: {msg}");
                assert!(
                    !m.path(name).exists(),
                    "{name}: a refused layer left a directory"
                );
            }
            (other, _) => panic!("{name}: unknown expectation {other}"),
        }
    }
    // The mount root lists exactly the mounted layers.
    let listed: BTreeSet<String> = std::fs::read_dir(m.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = mounted.iter().map(|(n, ..)| n.clone()).collect();
    assert_eq!(listed, want);
    for (name, spec, digest) in &mounted {
        let root = m.path(name);
        check_case(&root, name, spec, false, &mut failures);
        // The state dir: reachable, not listed, its JSON describes the blob.
        let state = root.join(STATE_DIR).join(format!("{digest}.json"));
        let json: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        assert_eq!(json["digest"], digest.as_str());
        assert_eq!(json["size"], spec["blob_size"]);
        assert!(json["fetchedPercent"].as_f64().unwrap() > 0.0);
        let meta = root.join(STATE_DIR).metadata().unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o500);
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every file read once: the store has them; the cases sharing files
    // (the same content in several layers) were fetched once.
    eprintln!("loader: {:?}", m.loader.stats);

    // Once every file is read, the state file says 100 %: tar headers,
    // the TOC, the footer and the landmarks count as fetched once the
    // layer is resolved (#18). Not a layer whose chunk failed its digest:
    // that chunk is never stored, and the state file names the error.
    let mut complete = Vec::new();
    for (name, spec, digest) in &mounted {
        read_every_file(&m.path(name));
        let json = state_of(&m, name, digest);
        if spec["eio"].as_array().is_some_and(|e| !e.is_empty()) {
            assert!(json["error"].is_string(), "{name}: {json}");
        } else {
            assert_eq!(json["fetchedSize"], json["size"], "{name}: {json}");
            assert_eq!(json["fetchedPercent"], 100.0, "{name}: {json}");
            complete.push((name, spec));
        }
    }

    // Each complete layer unpacked as a plain directory (what a new
    // container's overlay then reads instead of the mount) looks exactly
    // as the mount does, and its files are the store's: every byte once.
    let unpacked_dir = tempfile::tempdir().unwrap();
    let unpacked = Unpacked::open(unpacked_dir.path()).unwrap();
    for (name, spec) in &complete {
        let layer = m.fs.layer(name).unwrap();
        let dir = unpacked.unpack(name, &layer, &m.loader.store).unwrap();
        assert_eq!(unpacked.path(name).as_deref(), Some(dir.as_path()));
        check_case(
            &dir,
            &format!("{name} (unpacked)"),
            spec,
            true,
            &mut failures,
        );
        let state: Value = serde_json::from_slice(
            &std::fs::read(dir.join(STATE_DIR).join(format!("{}.json", layer.digest))).unwrap(),
        )
        .unwrap();
        assert_eq!(state["fetchedPercent"], 100.0, "{name}: {state}");
        let linked = spec["tree"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "reg" && e["size"].as_u64() > Some(0))
            .filter(|e| {
                std::fs::metadata(dir.join(e["name"].as_str().unwrap()))
                    .is_ok_and(|m| m.nlink() >= 2)
            })
            .count();
        assert!(
            linked > 0
                || spec["tree"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|e| e["type"] != "reg" || e["size"].as_u64() == Some(0)),
            "{name}: no file of the unpacked layer is the store's"
        );
    }
    assert!(complete.len() >= 8, "{}", complete.len());
    let mut listed = unpacked.names();
    listed.sort();
    let mut want: Vec<String> = complete.iter().map(|(n, _)| n.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
    for (name, _) in &complete {
        unpacked.remove(name);
        assert!(unpacked.path(name).is_none());
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn state_of(m: &Mounted, name: &str, digest: &str) -> Value {
    let state = m.path(name).join(STATE_DIR).join(format!("{digest}.json"));
    serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap()
}

/// Reads every regular file under `dir` (errors are the cases' own
/// business, checked by `check_case`).
fn read_every_file(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            read_every_file(&e.path());
        } else if t.is_file() {
            let _ = std::fs::read(e.path());
        }
    }
}

/// The background fetch alone brings every layer to 100 %: what the
/// state file counts is what the background fetch fetches.
#[test]
fn background_fetch_brings_every_state_file_to_100_percent() {
    let reg = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(
        store.path(),
        1 << 30,
        LoaderConfig {
            background: BackgroundConfig {
                enabled: true,
                window: 64 << 10,
                idle: std::time::Duration::from_millis(20),
                bytes_per_sec: 0,
            },
            ..LoaderConfig::default()
        },
    );
    let mut layers = Vec::new();
    for e in std::fs::read_dir(testdata()).unwrap() {
        let p = e.unwrap().path();
        let Some(name) = p
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_suffix(".json")
        else {
            continue;
        };
        let name = name.to_string();
        let (spec, digest) = push_case(&reg, &name);
        let clean = spec["eio"].as_array().is_none_or(|e| e.is_empty());
        if spec["expect"] != "ok" || !clean {
            continue;
        }
        let layer = m
            .add(
                &reg.addr,
                "conformance/layers",
                &name,
                &digest,
                spec["toc_digest"].as_str(),
            )
            .unwrap();
        m.loader.start_background(&layer);
        layers.push((name, digest));
    }
    assert!(layers.len() >= 8, "{layers:?}");
    let started = std::time::Instant::now();
    for (name, digest) in &layers {
        loop {
            let json = state_of(&m, name, digest);
            if json["fetchedPercent"] == 100.0 {
                assert_eq!(json["fetchedSize"], json["size"], "{name}: {json}");
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "{name}: background fetch stuck at {json}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
