//! Runs every case in `shared/testdata/estargz/` (see its README): `ok`
//! cases must yield every listed field of `tree` and every file's content
//! through inflate + verify; `eio` files must fail verification; `reject`
//! cases must fail to open with a reason. New cases are picked up by
//! dropping a `NAME.blob` + `NAME.json` pair into the folder.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;

use ringstar_core::inspect::{self, Record};
use ringstar_core::{Digest, Layer, OpenOptions};
use serde_json::Value;

fn testdata() -> PathBuf {
    let dir = std::env::var_os("RINGSTAR_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/estargz")
        });
    assert!(
        dir.is_dir(),
        "conformance folder {} is missing",
        dir.display()
    );
    dir
}

fn cases() -> Vec<(String, Value, Vec<u8>)> {
    let dir = testdata();
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let spec: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
            let blob = fs::read(path.with_extension("blob")).unwrap();
            out.push((name, spec, blob));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 10,
        "expected the conformance cases, found {}",
        out.len()
    );
    out
}

fn options(spec: &Value) -> OpenOptions {
    OpenOptions {
        toc_digest: spec["toc_digest"]
            .as_str()
            .map(|d| d.parse::<Digest>().unwrap()),
        ..OpenOptions::default()
    }
}

fn field(r: &Record, key: &str) -> Value {
    let v = serde_json::to_value(r).unwrap();
    v.get(key).cloned().unwrap_or(Value::Null)
}

fn check_ok(name: &str, spec: &Value, blob: &[u8]) -> Vec<String> {
    let mut failures = Vec::new();
    let layer = match Layer::open(blob, blob.len() as u64, &options(spec)) {
        Ok(l) => l,
        Err(e) => return vec![format!("{name}: open failed: {e}")],
    };
    let records = inspect::inspect(&layer, blob);
    let by_name: HashMap<&str, &Record> = records.iter().map(|r| (r.name.as_str(), r)).collect();
    let eio: Vec<&str> = spec["eio"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for want in spec["tree"].as_array().unwrap() {
        let wname = want["name"].as_str().unwrap();
        let Some(got) = by_name.get(wname) else {
            failures.push(format!("{name}: missing entry {wname:?}"));
            continue;
        };
        for (key, wv) in want.as_object().unwrap() {
            let gv = match key.as_str() {
                "xattrs" => serde_json::to_value(&got.xattrs).unwrap(),
                "sha256" if eio.contains(&wname) => continue,
                k => field(got, k),
            };
            if &gv != wv {
                failures.push(format!("{name}: {wname:?}.{key}: want {wv}, got {gv}"));
            }
        }
        // Every parent a name implies exists as a directory.
        let mut p = wname;
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            if by_name.get(p).is_none_or(|r| r.kind != "dir") {
                failures.push(format!("{name}: implied directory {p:?} missing"));
            }
        }
    }
    for r in &records {
        let is_eio = eio.contains(&r.name.as_str());
        match (r.kind, is_eio, &r.sha256, &r.error) {
            ("reg", true, None, Some(_)) | ("reg", false, Some(_), None) => {}
            ("reg", _, _, _) => failures.push(format!(
                "{name}: {:?} eio={is_eio} but sha256={:?} error={:?}",
                r.name, r.sha256, r.error
            )),
            _ => {}
        }
    }
    for e in &eio {
        if !by_name.contains_key(e) {
            failures.push(format!("{name}: eio file {e:?} missing"));
        }
    }
    failures
}

#[test]
fn every_case_in_the_conformance_folder() {
    let mut failures = Vec::new();
    let mut ran = BTreeMap::new();
    for (name, spec, blob) in cases() {
        assert_eq!(
            Digest::of(&blob).to_string(),
            spec["blob_digest"].as_str().unwrap(),
            "{name}: blob differs from its JSON"
        );
        match spec["expect"].as_str().unwrap() {
            "ok" => failures.extend(check_ok(&name, &spec, &blob)),
            "reject" => match Layer::open(&blob[..], blob.len() as u64, &options(&spec)) {
                Ok(_) => failures.push(format!("{name}: opened, but must be rejected")),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.len() > 10, "{name}: reason too terse: {msg:?}");
                    eprintln!("{name}: rejected: {msg}");
                }
            },
            other => panic!("{name}: unknown expectation {other:?}"),
        }
        ran.insert(name, spec["expect"].as_str().unwrap().to_string());
    }
    eprintln!("ran {} cases: {ran:?}", ran.len());
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn footer_magic_is_reported_as_not_estargz() {
    let blob = fs::read(testdata().join("bad-footer-magic.blob")).unwrap();
    let err = Layer::open(&blob[..], blob.len() as u64, &OpenOptions::default()).unwrap_err();
    assert!(err.is_not_estargz(), "{err}");
}

#[test]
fn rejections_name_their_reason() {
    for (case, needle) in [
        ("bad-toc-digest", "TOC digest mismatch"),
        ("bad-toc-offset", "past the end"),
        ("bad-hardlink", "does not exist"),
        ("bad-toc-json", "JSON"),
    ] {
        let path = testdata().join(format!("{case}.json"));
        let spec: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let blob = fs::read(path.with_extension("blob")).unwrap();
        let err = Layer::open(&blob[..], blob.len() as u64, &options(&spec)).unwrap_err();
        assert!(err.to_string().contains(needle), "{case}: {err}");
        assert!(!err.is_not_estargz(), "{case}: {err}");
    }
}

#[test]
fn small_tail_reads_fetch_the_toc_separately() {
    // With a footer-only first read, the TOC takes a second read; the
    // result is the same.
    for (name, spec, blob) in cases() {
        if spec["expect"] != "ok" {
            continue;
        }
        let opts = OpenOptions {
            tail_bytes: 0,
            ..options(&spec)
        };
        let a = Layer::open(&blob[..], blob.len() as u64, &opts).unwrap();
        let b = Layer::open(&blob[..], blob.len() as u64, &options(&spec)).unwrap();
        assert_eq!(a.toc_digest, b.toc_digest, "{name}");
        assert_eq!(a.tree.len(), b.tree.len(), "{name}");
    }
}
