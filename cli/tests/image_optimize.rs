//! `ringstar image optimize` as users run it, with Debian's runc: a
//! three-layer busybox image in an OCI layout, its workload run once in
//! the sandbox, and the result checked layer by layer. The files the
//! workload opened come first in the layer that provides them, then
//! `.prefetch.landmark`; the files it did not open come after; a layer
//! it read nothing from gets `.no.prefetch.landmark`; what it wrote is
//! in no layer; it had no network; every layer opens in the reference
//! reader.

use std::path::Path;
use std::process::Command;

use ringstar_image::layout::Layout;
use ringstar_image::media::Descriptor;
use ringstar_image::{ImageStore, LayerFormat, RootRef, RunConfig, build_image, push_image};
use ringstar_testkit::images::{TarBuilder, busybox_layers};

fn source_image(dir: &Path) {
    let mut tars = busybox_layers(Path::new("/bin/busybox")).unwrap();
    tars.push(
        TarBuilder::default()
            .dir("data/")
            .file("data/read.txt", 0o644, b"read by the workload\n")
            .file("data/unread.txt", 0o644, b"never opened\n")
            .finish(),
    );
    tars.push(
        TarBuilder::default()
            .file("opt/untouched", 0o644, b"nothing here is read\n")
            .finish(),
    );
    let run = RunConfig {
        cmd: [
            "sh",
            "-c",
            "cat /etc/hello.txt /data/read.txt; echo leaked > /data/written.txt; \
             echo interfaces $(grep -c : /proc/net/dev)",
        ]
        .map(String::from)
        .to_vec(),
        ..RunConfig::default()
    };
    let image = build_image(&tars, &LayerFormat::Gzip, &run).unwrap();
    let store = ImageStore::Layout(Layout::create(dir).unwrap());
    push_image(&store, &image, "org").unwrap();
}

/// The optimized image's layers: (blob order of names, layer blob).
fn layers_of(dir: &Path, tag: &str) -> Vec<(Vec<String>, Descriptor)> {
    let store = ImageStore::Layout(Layout::open(dir).unwrap());
    let doc = store.root(&RootRef::Tag(tag.into())).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&doc.bytes).unwrap();
    let layers: Vec<Descriptor> = serde_json::from_value(manifest["layers"].clone()).unwrap();
    layers
        .into_iter()
        .map(|l| {
            let blob = store.blob_bytes(&l.digest, 64 << 20).unwrap();
            let toc = l
                .annotation(ringstar_image::TOC_DIGEST_ANNOTATION)
                .expect("eStargz");
            ringstar_testkit::reference_reads(&blob, toc);
            (ringstar_testkit::entry_order(&blob), l)
        })
        .collect()
}

fn position(names: &[String], name: &str) -> usize {
    names
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("{name} not in {names:?}"))
}

#[test]
fn the_workload_files_come_first_in_their_layers_and_nothing_it_wrote_leaks() {
    if Command::new("runc").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have runc (test.sh installs it)"
        );
        eprintln!("skipped: no runc");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    source_image(&src);
    let record = dir.path().join("record.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ringstar"))
        .args([
            "image",
            "optimize",
            "--period",
            "60",
            "--no-cache",
            "--record-out",
        ])
        .arg(&record)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .arg(format!("oci:{}:org", src.display()))
        .arg(format!("oci:{}:esgz", dst.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The workload's output (on stderr), and its network: loopback only.
    assert!(
        stderr.contains("hello from ringstar\nread by the workload\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("interfaces 1\n"),
        "a network was shared: {stderr}"
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["args"][0], "sh");

    let recorded: Vec<(String, u64)> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["path"].as_str().unwrap().to_string(),
                v["layer"].as_u64().unwrap(),
            )
        })
        .collect();
    for want in [
        ("bin/busybox", 0),
        ("etc/hello.txt", 1),
        ("data/read.txt", 2),
    ] {
        assert!(
            recorded.contains(&(want.0.to_string(), want.1)),
            "{want:?} not in {recorded:?}"
        );
    }
    assert!(
        recorded
            .iter()
            .all(|(p, _)| !p.contains("written") && !p.contains("unread"))
    );
    // runc's own opens (the image's /etc/passwd) are not the workload's.
    assert!(
        recorded.iter().all(|(p, _)| p != "etc/passwd"),
        "{recorded:?}"
    );

    let layers = layers_of(&dst, "esgz");
    assert_eq!(layers.len(), 4);
    let landmark = |names: &[String]| position(names, ".prefetch.landmark");
    let (base, top, data, untouched) = (&layers[0].0, &layers[1].0, &layers[2].0, &layers[3].0);
    assert!(position(base, "bin/busybox") < landmark(base), "{base:?}");
    assert!(position(base, "etc/one.txt") > landmark(base), "{base:?}");
    assert!(position(top, "etc/hello.txt") < landmark(top), "{top:?}");
    assert!(position(data, "data/read.txt") < landmark(data), "{data:?}");
    assert!(
        position(data, "data/unread.txt") > landmark(data),
        "{data:?}"
    );
    assert!(
        untouched.contains(&".no.prefetch.landmark".to_string()),
        "{untouched:?}"
    );
    for (names, _) in &layers {
        assert!(!names.iter().any(|n| n.contains("written")), "{names:?}");
    }
    // The scratch directory (unpacked image, overlay) is gone.
    assert_eq!(
        std::fs::read_dir(dir.path().join("work")).unwrap().count(),
        0
    );
}

#[test]
fn a_workload_that_outlives_the_period_is_killed_and_what_it_opened_is_kept() {
    if Command::new("runc").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have runc (test.sh installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    source_image(&src);
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ringstar"))
        .args(["image", "optimize", "--period", "2", "--no-cache"])
        .args(["--args", r#"["-c", "cat /data/read.txt; sleep 600"]"#])
        .args(["--entrypoint", r#"["sh"]"#])
        .arg(format!("oci:{}:org", src.display()))
        .arg(format!("oci:{}:esgz", dst.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("was killed after 2 s"), "{stderr}");
    // Killed at the period, not after the sleep (generous for a busy CI).
    assert!(started.elapsed().as_secs() < 120);
    let layers = layers_of(&dst, "esgz");
    let data = &layers[2].0;
    assert!(position(data, "data/read.txt") < position(data, ".prefetch.landmark"));
}
