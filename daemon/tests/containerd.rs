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
    // Its lower layers are ringstar's: the mount's directories, or the
    // unpacked ones once the background fetch has stored every file.
    let root = w.root().display().to_string();
    assert!(
        mounts.contains(&format!("lowerdir={root}/fuse/"))
            || mounts.contains(&format!("lowerdir={root}/unpacked/")),
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
    // Unpacked layers go too (deleted by the unpack thread).
    wait_for("unpacked layers to go", Duration::from_secs(20), || {
        std::fs::read_dir(root.join("unpacked")).unwrap().count() == 0
    });
}

/// Once the background fetch has stored every file of an image, its
/// layers are unpacked under `ROOT/unpacked` and new containers' overlays
/// read them there, past FUSE (#18): the same files (whiteouts applied),
/// the state file at 100 %, every file a hard link to the store's (no
/// second copy); a restarted daemon reuses them, and removing the image
/// removes them.
#[test]
fn complete_layers_are_unpacked_for_new_containers() {
    let mut w = World::start();
    let image = w.push("ringstar/unpack", "esgz", &estargz(), &["sh", "-c", SCRIPT]);
    let reference = format!("{}/ringstar/unpack:esgz", w.registry.addr);
    w.rpull(&reference);
    let root = w.root();
    let unpacked = root.join("unpacked");
    let count = |dir: &Path| std::fs::read_dir(dir).map_or(0, |d| d.count());
    wait_for("both layers unpacked", Duration::from_secs(60), || {
        count(&unpacked) == image.layers.len()
    });

    let expected = [
        "hello from ringstar",
        "hello from layer 1",
        "whiteout-applied",
    ];
    let out = w.run_container(&reference, &[]);
    assert_eq!(out.lines().collect::<Vec<_>>(), expected, "{}", w.logs());
    let check_lower = |w: &mut World| {
        let out = w.run_container(
            &reference,
            &[
                "sh",
                "-c",
                "grep ' / / ' /proc/self/mountinfo; cat /.stargz-snapshotter/*.json",
            ],
        );
        let lower = format!("{}/", unpacked.display());
        assert_eq!(out.matches(&lower).count(), image.layers.len(), "{out}");
        assert!(!out.contains("/fuse/"), "{out}");
        for layer in &image.layers {
            assert!(out.contains(&layer.digest.to_string()), "{out}");
        }
        assert_eq!(
            out.matches("\"fetchedPercent\":100.0").count(),
            image.layers.len(),
            "{out}"
        );
    };
    check_lower(&mut w);

    // Every non-empty file is the store's own inode.
    let mut files = 0;
    let mut stack = vec![unpacked.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let md = e.path().symlink_metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file()
                && md.len() > 0
                && !e.path().to_string_lossy().contains(".stargz-snapshotter")
            {
                use std::os::unix::fs::MetadataExt;
                assert!(md.nlink() >= 2, "{} is a copy", e.path().display());
                files += 1;
            }
        }
    }
    assert!(files >= 3, "{files}");

    // A restarted daemon keeps them and gives them to new containers.
    w.stop_ringstar(libc::SIGTERM);
    w.start_ringstar();
    wait_for("containerd to reconnect", Duration::from_secs(30), || {
        w.ctr(&["snapshot", "--snapshotter", "ringstar", "ls"]).0
    });
    check_lower(&mut w);
    let out = w.run_container(&reference, &[]);
    assert_eq!(out.lines().collect::<Vec<_>>(), expected, "{}", w.logs());

    w.ctr_ok(&["image", "rm", "--sync", &reference]);
    w.wait_no_snapshots();
    wait_for("unpacked layers to go", Duration::from_secs(20), || {
        count(&unpacked) == 0
    });
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
