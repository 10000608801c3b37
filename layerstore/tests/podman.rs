//! `ringstar-store` under Debian's podman 4.3 (native overlay, runc),
//! with Debian's docker-registry, on an image written as eStargz by
//! ringstar's writer (two busybox layers, the top one deleting a file
//! of the base through a whiteout):
//! - `podman pull` then `podman run` prints the workload's output, and
//!   the layers are served lazily: podman's storage holds no copy (each
//!   layer's `diff` leads into the store), and the registry saw ranged
//!   GETs of their blobs only;
//! - a plain gzip image is not offered, and podman pulls it as usual;
//! - `rmi` then a second `run` works, and the uses are counted;
//! - `podman save` of the lazily pulled image reads the blobs through
//!   `blob` and loads back into a podman without the store;
//! - a restarted store serves the stored image's layers again.

mod podman_world;

use ringstar_image::{ImageStore, LayerFormat, RunConfig, build_image, push_image};
use ringstar_testkit::images::busybox_layers;

use podman_world::PodmanWorld;

/// Pushes the busybox image as `repo:tag` in `format`; its layer digests.
fn push_busybox(w: &PodmanWorld, repo: &str, tag: &str, format: LayerFormat) -> Vec<String> {
    let tars = busybox_layers(std::path::Path::new("/bin/busybox")).expect("busybox-static");
    let run = RunConfig {
        cmd: vec!["/bin/cat".into(), "/etc/hello.txt".into()],
        ..RunConfig::default()
    };
    let image = build_image(&tars, &format, &run).unwrap();
    let fetcher = ringstar_fetcher::Fetcher::new(Default::default()).unwrap();
    let store = ImageStore::repository(&fetcher, &w.registry.addr, repo);
    push_image(&store, &image, tag).unwrap();
    image.layers.iter().map(|l| l.digest.to_string()).collect()
}

/// The `diff` of each of the image's layers, as `podman image inspect`
/// names them (UpperDir, then LowerDir): where each symlink leads
/// (`None`: a real directory, a layer downloaded and applied).
fn layer_diffs(w: &PodmanWorld, image: &str) -> Vec<Option<std::path::PathBuf>> {
    let out = w.podman(&["image", "inspect", image]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let data = &v[0]["GraphDriver"]["Data"];
    let mut dirs = vec![data["UpperDir"].as_str().expect("UpperDir").to_string()];
    if let Some(lower) = data["LowerDir"].as_str() {
        dirs.extend(lower.split(':').map(str::to_string));
    }
    dirs.iter().map(|d| std::fs::read_link(d).ok()).collect()
}

#[test]
fn podman_pulls_lazily_through_the_store() {
    let mut w = PodmanWorld::start();
    let esgz = push_busybox(
        &w,
        "demo/busybox",
        "esgz",
        LayerFormat::Estargz(Default::default()),
    );
    let plain = push_busybox(&w, "demo/plain", "org", LayerFormat::Gzip);
    let image = format!("{}/demo/busybox:esgz", w.registry.addr);

    w.podman(&["pull", "-q", &image]);
    let out = w.podman(&["run", "--rm", &image]);
    assert_eq!(out, "hello from ringstar\n");
    let script = "cat /etc/one.txt; test -e /etc/removed.txt || echo removed";
    let out = w.podman(&["run", "--rm", &image, "sh", "-c", script]);
    assert_eq!(
        out, "hello from layer 1\nremoved\n",
        "the whiteout hides removed.txt"
    );

    // No copy in podman's storage: each layer's diff is the store's.
    let diffs = layer_diffs(&w, &image);
    assert_eq!(diffs.len(), 2);
    for d in &diffs {
        let target = d.as_ref().expect("diff is a link into the store");
        assert!(target.starts_with(&w.mountpoint), "{}", target.display());
    }
    // The registry sent ranges of the layer blobs, never a whole one
    // (the HEADs are the push's).
    for digest in &esgz {
        let gets: Vec<u16> = w
            .blob_requests(digest)
            .into_iter()
            .filter_map(|(m, s)| (m == "GET").then_some(s))
            .collect();
        assert!(!gets.is_empty(), "{digest} was never read");
        assert!(gets.iter().all(|&s| s == 206), "{digest}: {gets:?}");
    }
    for digest in &esgz {
        assert!(w.uses(&image, digest) >= 1, "a stored layer holds a use");
    }

    // A plain gzip image is not offered: podman downloads and applies it.
    let plain_image = format!("{}/demo/plain:org", w.registry.addr);
    w.podman(&["pull", "-q", &plain_image]);
    assert_eq!(
        w.podman(&["run", "--rm", &plain_image]),
        "hello from ringstar\n"
    );
    assert!(layer_diffs(&w, &plain_image).iter().all(Option::is_none));
    for digest in &plain {
        assert!(
            w.blob_requests(digest)
                .iter()
                .any(|(m, s)| m == "GET" && *s == 200),
            "{digest} downloaded whole"
        );
    }
    assert!(
        w.store_log().contains("layer not offered"),
        "{}",
        w.store_log()
    );

    // save reads the blobs through `blob`; the archive loads elsewhere.
    let archive = w.dir.path().join("saved.tar");
    w.podman(&["save", "-q", "-o", archive.to_str().unwrap(), &image]);
    let other = other_podman(&w);
    let (ok, _, err) = other.try_run(&["load", "-q", "-i", archive.to_str().unwrap()]);
    assert!(ok, "load: {err}");
    let (ok, out, err) = other.try_run(&["run", "--rm", &image]);
    other.clean();
    assert!(ok, "run of the loaded image: {err}");
    assert_eq!(out, "hello from ringstar\n");

    // rmi lets go of the layers; a second run pulls them lazily again.
    w.podman(&["rmi", &image]);
    for digest in &esgz {
        assert_eq!(w.uses(&image, digest), 0, "rmi released {digest}");
    }
    // Idle past `resolve_result_entry_ttl_sec` (3 s here): out of the
    // layer plane, its contents still in the store.
    let started = std::time::Instant::now();
    while w.store_log().matches("no user for the idle time").count() < esgz.len() {
        assert!(
            started.elapsed().as_secs() < 30,
            "never released:\n{}",
            w.store_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(w.podman(&["run", "--rm", &image]), "hello from ringstar\n");

    // A restarted store serves the stored image's layers again.
    w.stop_store("TERM");
    w.start_store();
    assert_eq!(
        w.podman(&["run", "--rm", &image, "cat", "/etc/one.txt"]),
        "hello from layer 1\n"
    );
}

/// Podman with its own storage and no additional layer store.
fn other_podman(w: &PodmanWorld) -> ringstar_testkit::podman::Podman {
    ringstar_testkit::podman::Podman::configure(&w.dir.path().join("other"), None, &[])
}

/// A registry asking for a password: `podman login` writes Podman's auth
/// file, and the store (no docker config) reads the same file, so the
/// layers are still served lazily. The registry answers nothing without
/// the password, so its ranged GETs prove the store sent it.
#[test]
fn podman_login_credentials_reach_the_store() {
    use ringstar_testkit::podman::StoreProcess;
    use ringstar_testkit::{Registry, RegistryAuth, write_htpasswd};
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, "alice", "s3cret");
    let storage = dir.path().join("registry");
    std::fs::create_dir_all(&storage).unwrap();
    let registry = Registry::start_full(
        &storage,
        None,
        Some(&RegistryAuth::Htpasswd { path: htpasswd }),
        Some(&dir.path().join("access.log")),
    );
    let mut w = PodmanWorld::start_with(dir, registry);
    // As on a node: `podman login` (as root) writes the file the store
    // reads (for the test, under the store's XDG_RUNTIME_DIR).
    let auth = StoreProcess::auth_file(&w.store_root);
    std::fs::create_dir_all(auth.parent().unwrap()).unwrap();
    w.podman.auth_file = Some(auth);
    let addr = w.registry.addr.clone();
    w.podman(&["login", "-u", "alice", "-p", "s3cret", &addr]);

    let tars = busybox_layers(std::path::Path::new("/bin/busybox")).expect("busybox-static");
    let run = RunConfig {
        cmd: vec!["/bin/cat".into(), "/etc/hello.txt".into()],
        ..RunConfig::default()
    };
    let image = build_image(&tars, &LayerFormat::Estargz(Default::default()), &run).unwrap();
    let config = ringstar_fetcher::FetcherConfig {
        credentials: Some(ringstar_testkit::static_credentials(
            &addr, "alice", "s3cret",
        )),
        ..Default::default()
    };
    let fetcher = ringstar_fetcher::Fetcher::new(config).unwrap();
    push_image(
        &ImageStore::repository(&fetcher, &addr, "private/app"),
        &image,
        "esgz",
    )
    .unwrap();

    let reference = format!("{addr}/private/app:esgz");
    assert_eq!(
        w.podman(&["run", "--rm", &reference]),
        "hello from ringstar\n"
    );
    for d in layer_diffs(&w, &reference) {
        let target = d.expect("served by the store");
        assert!(target.starts_with(&w.mountpoint), "{}", target.display());
    }
    for l in &image.layers {
        let gets: Vec<u16> = w
            .blob_requests(&l.digest.to_string())
            .into_iter()
            .filter_map(|(m, s)| (m == "GET").then_some(s))
            .collect();
        assert!(gets.contains(&206), "{}: {gets:?}", l.digest);
        assert!(
            !gets.contains(&200),
            "{}: downloaded whole: {gets:?}",
            l.digest
        );
    }
    w.stop_store("INT");
}
