//! End to end with the real world: Debian's docker-registry, containerd
//! (its own root, state and socket, ringstar as a proxy plugin, CRI off)
//! and runc, and the `ringstar-snapshotter` binary. Images are made here
//! from a static busybox with our writer and pushed through the registry
//! API; `ctr-remote image rpull` pulls them lazily and `ctr run` runs them.
//! Needs root, containerd, runc, ctr-remote (Debian's stargz-snapshotter)
//! and busybox-static: `.ci/run` installs them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringstar_image::{Image, LayerFormat, RunConfig, build_image, push_plain_http};
use ringstar_testkit::Registry;
use ringstar_testkit::images::busybox_layers;

/// containerd 1.6 keeps runc state in /run/containerd/runc/<namespace>
/// whatever its root: each world takes its own namespace.
fn namespace() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("ringstar-test-{}-{n}", std::process::id())
}

fn need(bin: &str) -> String {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!(
        "{bin} is needed (Debian packages containerd, runc, stargz-snapshotter, busybox-static; .ci/run installs them)"
    );
}

fn busybox() -> PathBuf {
    // busybox-static's binary: the image has no libc to link against.
    let p = PathBuf::from("/bin/busybox");
    let out = Command::new("ldd").arg(&p).output().expect("ldd");
    assert!(
        !out.status.success() || String::from_utf8_lossy(&out.stdout).contains("not a dynamic"),
        "/bin/busybox must be static (apt-get install busybox-static)"
    );
    p
}

/// Runs `cmd` to completion within `limit`, killing it otherwise.
fn run(cmd: &mut Command, limit: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (o, e) = (t_out.join().unwrap(), t_err.join().unwrap());
    match status {
        Some(st) => (st.success(), o, e),
        None => (false, o, format!("{e}\n(killed after {limit:?})")),
    }
}

fn signal(child: &Child, sig: i32) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A registry, containerd and ringstar, each with its own dirs.
struct World {
    dir: tempfile::TempDir,
    registry: Registry,
    containerd: Child,
    ringstar: Option<Child>,
    namespace: String,
    runs: u32,
}

impl World {
    fn start() -> World {
        let ctr_bin = need("containerd");
        need("runc");
        need("ctr");
        need("ctr-remote");
        let dir = tempfile::Builder::new()
            .prefix("rs-e2e")
            .tempdir_in("/tmp")
            .unwrap();
        let registry = Registry::start_logged(&dir.path().join("registry.log"));
        let d = dir.path();
        let config = ringstar_testkit::containerd::containerd_config(
            d,
            &[("ringstar", &d.join("ringstar.sock"))],
        );
        std::fs::write(d.join("containerd.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let containerd = Command::new(ctr_bin)
            .arg("--config")
            .arg(d.join("containerd.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut w = World {
            dir,
            registry,
            containerd,
            ringstar: None,
            namespace: namespace(),
            runs: 0,
        };
        w.start_ringstar();
        let sock = w.dir.path().join("containerd.sock");
        wait_for("containerd", Duration::from_secs(20), || {
            sock.exists() && w.ctr(&["version"]).0
        });
        w
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("ringstar")
    }

    fn start_ringstar(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("ringstar.log"))
            .unwrap();
        std::fs::write(
            d.join("ringstar.toml"),
            "[ringstar]\nstore_size = 1073741824\n",
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ringstar-snapshotter"))
            .arg("--root")
            .arg(self.root())
            .arg("--address")
            .arg(d.join("ringstar.sock"))
            .arg("--config")
            .arg(d.join("ringstar.toml"))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.ringstar = Some(child);
        let sock = d.join("ringstar.sock");
        wait_for("ringstar's socket", Duration::from_secs(20), || {
            sock.exists()
        });
    }

    /// Stops ringstar with `sig` and waits for it to exit.
    fn stop_ringstar(&mut self, sig: i32) {
        let mut child = self.ringstar.take().expect("ringstar running");
        signal(&child, sig);
        assert!(
            wait_exit(&mut child, Duration::from_secs(20)),
            "ringstar did not exit on signal {sig}"
        );
    }

    fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- ringstar.log\n{}\n--- containerd.log\n{}",
            tail(read("ringstar.log")),
            tail(read("containerd.log"))
        )
    }

    fn ctr_cmd(&self, bin: &str) -> Command {
        let mut c = Command::new(need(bin));
        c.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .arg("--namespace")
            .arg(&self.namespace);
        c
    }

    fn ctr(&self, args: &[&str]) -> (bool, String, String) {
        run(self.ctr_cmd("ctr").args(args), Duration::from_secs(120))
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.ctr(args);
        assert!(ok, "ctr {args:?} failed: {out}\n{err}\n{}", self.logs());
        out
    }

    fn rpull(&self, reference: &str) {
        let (ok, out, err) = run(
            self.ctr_cmd("ctr-remote").args([
                "image",
                "rpull",
                "--plain-http",
                "--snapshotter",
                "ringstar",
                reference,
            ]),
            Duration::from_secs(120),
        );
        assert!(ok, "rpull {reference}: {out}\n{err}\n{}", self.logs());
    }

    /// `ctr run --rm` of `reference` with `cmd`; its output.
    fn run_container(&mut self, reference: &str, cmd: &[&str]) -> String {
        self.runs += 1;
        let id = format!("c{}", self.runs);
        let mut args = vec![
            "run",
            "--rm",
            "--snapshotter",
            "ringstar",
            "--net-host",
            reference,
            &id,
        ];
        args.extend_from_slice(cmd);
        self.ctr_ok(&args)
    }

    fn push(&self, repo: &str, tag: &str, format: &LayerFormat, cmd: &[&str]) -> Image {
        let layers = busybox_layers(&busybox()).unwrap();
        let run = RunConfig {
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..RunConfig::default()
        };
        let image = build_image(&layers, format, &run).unwrap();
        push_plain_http(&self.registry.addr, repo, tag, &image).unwrap();
        image
    }

    /// The registry's access log once it names every one of `digests`
    /// (docker-registry writes a line after the response, not before).
    fn requests_naming(&self, digests: &[String]) -> Vec<(String, String, u16)> {
        let started = Instant::now();
        loop {
            let requests = self.registry.requests();
            let all = digests
                .iter()
                .all(|d| requests.iter().any(|(_, p, _)| p.ends_with(d.as_str())));
            if all || started.elapsed() > Duration::from_secs(10) {
                return requests;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// containerd's garbage collector removes an image's snapshots
    /// shortly after the image goes.
    fn wait_no_snapshots(&self) {
        let started = Instant::now();
        while !self.snapshots().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "snapshots left: {}\n{}",
                self.ctr_ok(&["snapshot", "--snapshotter", "ringstar", "ls"]),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn snapshots(&self) -> Vec<String> {
        self.ctr_ok(&["snapshot", "--snapshotter", "ringstar", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Containers first (their overlays stack on ringstar's mount).
        if let (true, out, _) = self.ctr(&["task", "ls", "-q"]) {
            for id in out.lines() {
                let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                let _ = self.ctr(&["task", "rm", "-f", id]);
            }
        }
        if let Some(mut r) = self.ringstar.take() {
            signal(&r, libc::SIGINT);
            if !wait_exit(&mut r, Duration::from_secs(10)) {
                let _ = r.kill();
                let _ = r.wait();
            }
        }
        signal(&self.containerd, libc::SIGTERM);
        if !wait_exit(&mut self.containerd, Duration::from_secs(10)) {
            let _ = self.containerd.kill();
            let _ = self.containerd.wait();
        }
        // Whatever is still mounted under the world goes, deepest first.
        let prefix = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

fn estargz() -> LayerFormat {
    LayerFormat::Estargz(ringstar_core::writer::WriterOptions::default())
}

const SCRIPT: &str =
    "cat /etc/hello.txt /etc/one.txt; test ! -e /etc/removed.txt && echo whiteout-applied";

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
