//! End to end with the real world: Debian's docker-registry, containerd
//! (its own root, state and socket, ringstar as a proxy plugin, CRI off)
//! and runc, and the `ringstar-snapshotter` binary. Images are made here
//! from a static busybox with our writer and pushed through the registry
//! API; `ctr-remote image rpull` pulls them lazily and `ctr run` runs them.
//! Needs root, containerd, runc, ctr-remote (Debian's stargz-snapshotter)
//! and busybox-static: `.ci/run` installs them.

mod world;

use std::path::Path;
use std::time::Duration;

use ringstar_image::LayerFormat;
use world::{SCRIPT, World, estargz, wait_for};

#[test]
fn lazy_pull_runs_keeps_writes_survives_restart_and_cleans_up() {
    let mut w = World::start();
    let image = w.push("ringstar/demo", "esgz", &estargz(), &["sh", "-c", SCRIPT]);
    let reference = format!("{}/ringstar/demo:esgz", w.registry.addr);
    w.rpull(&reference);

    // Both layers are remote snapshots, committed by ringstar itself.
    let snaps = w.snapshots();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    for s in &snaps {
        let info = w.ctr_ok(&["snapshot", "--snapshotter", "ringstar", "info", s]);
        assert!(info.contains("containerd.io/snapshot/remote"), "{info}");
    }

    // The image's command runs, whiteout applied.
    let out = w.run_container(&reference, &[]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "hello from ringstar",
            "hello from layer 1",
            "whiteout-applied"
        ],
        "{}",
        w.logs()
    );

    // Lazily: the rootfs is ringstar's layer directories (each layer's
    // state file is visible through the overlay), and the registry never
    // sent a layer blob whole.
    let state = w.run_container(&reference, &["sh", "-c", "cat /.stargz-snapshotter/*.json"]);
    for layer in &image.layers {
        assert!(
            state.contains(&layer.digest.to_string()),
            "state of {} missing in {state}",
            layer.digest
        );
    }
    let digests: Vec<String> = image.layers.iter().map(|l| l.digest.to_string()).collect();
    let requests = w.requests_naming(&digests);
    for layer in &image.layers {
        let d = layer.digest.to_string();
        let gets: Vec<_> = requests
            .iter()
            .filter(|(m, p, _)| m == "GET" && p.ends_with(&d))
            .collect();
        assert!(!gets.is_empty(), "ringstar never fetched {d}");
        assert!(
            gets.iter().all(|(_, _, status)| *status == 206),
            "layer {d} was fetched whole: {gets:?}"
        );
    }

    // A container's writes land in its own upper dir.
    w.ctr_ok(&[
        "run",
        "--snapshotter",
        "ringstar",
        "--net-host",
        &reference,
        "writer",
        "sh",
        "-c",
        "echo written > /etc/new.txt",
    ]);
    let mounts = w.ctr_ok(&[
        "snapshot",
        "--snapshotter",
        "ringstar",
        "mounts",
        "/mnt",
        "writer",
    ]);
    let upper = mounts
        .split(',')
        .find_map(|o| o.strip_prefix("upperdir="))
        .unwrap_or_else(|| panic!("no upperdir in {mounts}"));
    assert!(
        mounts.contains(&format!("lowerdir={}/fuse/", w.root().display())),
        "{mounts}"
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(upper).join("etc/new.txt")).unwrap(),
        "written\n"
    );
    w.ctr_ok(&["container", "rm", "writer"]);

    // SIGTERM, start again: the pulled image still runs (its layers are
    // restored from the metadata).
    w.stop_ringstar(libc::SIGTERM);
    w.start_ringstar();
    // containerd redials the proxy plugin with a backoff.
    wait_for("containerd to reconnect", Duration::from_secs(30), || {
        w.ctr(&["snapshot", "--snapshotter", "ringstar", "ls"]).0
    });
    let out = w.run_container(&reference, &["cat", "/etc/hello.txt"]);
    assert_eq!(out, "hello from ringstar\n", "{}", w.logs());

    // Removing the image leaves nothing behind.
    w.ctr_ok(&["image", "rm", "--sync", &reference]);
    w.wait_no_snapshots();
    let root = w.root();
    wait_for("snapshot dirs to go", Duration::from_secs(20), || {
        std::fs::read_dir(root.join("snapshots")).unwrap().count() == 0
    });
    assert_eq!(
        std::fs::read_dir(root.join("fuse")).unwrap().count(),
        0,
        "layers left in the mount"
    );
}

#[test]
fn gzip_images_fall_back_to_a_normal_pull() {
    let mut w = World::start();
    let image = w.push(
        "ringstar/plain",
        "org",
        &LayerFormat::Gzip,
        &["sh", "-c", SCRIPT],
    );
    let reference = format!("{}/ringstar/plain:org", w.registry.addr);
    // A plain pull through ringstar: local overlayfs snapshots.
    w.ctr_ok(&[
        "image",
        "pull",
        "--plain-http",
        "--snapshotter",
        "ringstar",
        &reference,
    ]);
    let out = w.run_container(&reference, &[]);
    assert!(
        out.contains("hello from ringstar\n") && out.contains("whiteout-applied"),
        "{out}"
    );
    // The layers were downloaded whole (status 200), as a normal pull does.
    let digests: Vec<String> = image.layers.iter().map(|l| l.digest.to_string()).collect();
    let requests = w.requests_naming(&digests);
    for layer in &image.layers {
        let d = layer.digest.to_string();
        assert!(
            requests
                .iter()
                .any(|(m, p, s)| m == "GET" && p.ends_with(&d) && *s == 200),
            "{d} not downloaded: {requests:?}"
        );
    }
    // And an rpull of it (remote labels, no TOC digest) falls back too.
    w.ctr_ok(&["image", "rm", "--sync", &reference]);
    w.wait_no_snapshots();
    w.rpull(&reference);
    let out = w.run_container(&reference, &["cat", "/etc/one.txt"]);
    assert_eq!(out, "hello from layer 1\n");
    let log = std::fs::read_to_string(w.dir.path().join("ringstar.log")).unwrap();
    assert!(log.contains("remote_snapshot_prepared=false"), "{log}");
}
