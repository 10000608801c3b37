//! The real world the end-to-end tests run in: Debian's docker-registry,
//! containerd (its own root, state and socket, ringstar as a proxy
//! plugin, CRI off), runc and the `ringstar-snapshotter` binary, each
//! with its own dirs under one temporary directory. Needs root,
//! containerd, runc, ctr-remote (Debian's stargz-snapshotter) and
//! busybox-static: `.ci/run` installs them.
// Each test binary uses its own part of the harness.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringstar_image::{Image, ImageStore, LayerFormat, RunConfig, build_image, push_image};
use ringstar_testkit::Registry;
use ringstar_testkit::images::busybox_layers;

/// containerd 1.6 keeps runc state in /run/containerd/runc/<namespace>
/// whatever its root: each world takes its own namespace.
pub fn namespace() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("ringstar-test-{}-{n}", std::process::id())
}

pub fn need(bin: &str) -> String {
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

pub fn busybox() -> PathBuf {
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
pub fn run(cmd: &mut Command, limit: Duration) -> (bool, String, String) {
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

pub fn signal(child: &Child, sig: i32) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A registry, containerd and ringstar, each with its own dirs.
pub struct World {
    pub dir: tempfile::TempDir,
    pub registry: Registry,
    pub containerd: Child,
    pub ringstar: Option<Child>,
    /// The reference daemon (containerd-stargz-grpc) as proxy plugin
    /// `stargz`, when started with it.
    pub reference: Option<Child>,
    pub namespace: String,
    pub runs: u32,
    /// ringstar's config file.
    pub config: String,
}

/// What ringstar logs once its snapshots API is up.
const SERVING: &str = "serving the snapshots API";

impl World {
    pub fn start() -> World {
        World::start_configured("")
    }

    /// A world whose ringstar config starts with these top-level keys.
    pub fn start_configured(top_level: &str) -> World {
        World::start_inner(top_level, None)
    }

    /// A world with the reference daemon at `bin` beside ringstar, as
    /// snapshotter `stargz` (its config: prefetch on, this machine's
    /// registry in plain HTTP, as the reference does for localhost).
    pub fn start_with_reference(bin: &Path) -> World {
        World::start_inner("", Some(bin))
    }

    fn start_inner(top_level: &str, reference: Option<&Path>) -> World {
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
        let stargz_sock = d.join("stargz.sock");
        let mut proxies = vec![("ringstar", d.join("ringstar.sock"))];
        let reference = reference.map(|bin| {
            proxies.push(("stargz", stargz_sock.clone()));
            std::fs::write(d.join("stargz.toml"), "noprefetch = false\n").unwrap();
            let log = std::fs::File::create(d.join("stargz.log")).unwrap();
            let child = Command::new(bin)
                .arg("--address")
                .arg(&stargz_sock)
                .arg("--root")
                .arg(d.join("stargz-root"))
                .arg("--config")
                .arg(d.join("stargz.toml"))
                .arg("--log-level")
                // Remote mounts are logged at debug.
                .arg("debug")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            wait_for("the reference daemon", Duration::from_secs(20), || {
                stargz_sock.exists()
            });
            child
        });
        let proxies: Vec<(&str, &Path)> = proxies.iter().map(|(n, p)| (*n, p.as_path())).collect();
        let config = ringstar_testkit::containerd::containerd_config(d, &proxies);
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
            reference,
            namespace: namespace(),
            runs: 0,
            config: format!("{top_level}\n[ringstar]\nstore_size = 1073741824\n"),
        };
        w.start_ringstar();
        let sock = w.dir.path().join("containerd.sock");
        wait_for("containerd", Duration::from_secs(20), || {
            sock.exists() && w.ctr(&["version"]).0
        });
        w
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("ringstar")
    }

    pub fn start_ringstar(&mut self) {
        self.start_ringstar_with(&[]);
    }

    /// Starts ringstar with `extra` arguments and waits until it serves
    /// the snapshots API (a line in its log: with `--takeover` the socket
    /// is the old daemon's until the new one binds it).
    pub fn start_ringstar_with(&mut self, extra: &[&str]) {
        self.start_ringstar_from(Path::new(env!("CARGO_BIN_EXE_ringstar-snapshotter")), extra);
    }

    /// As [`World::start_ringstar_with`], running the binary at `bin`.
    pub fn start_ringstar_from(&mut self, bin: &Path, extra: &[&str]) {
        let before = self.spawn_ringstar(bin, extra);
        self.wait_serving(before);
    }

    /// Starts ringstar without waiting for it; what [`World::wait_serving`]
    /// takes.
    pub fn spawn_ringstar(&mut self, bin: &Path, extra: &[&str]) -> usize {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("ringstar.log"))
            .unwrap();
        std::fs::write(d.join("ringstar.toml"), &self.config).unwrap();
        let before = self.ringstar_log().matches(SERVING).count();
        let child = Command::new(bin)
            .arg("--root")
            .arg(self.root())
            .arg("--address")
            .arg(d.join("ringstar.sock"))
            .arg("--config")
            .arg(d.join("ringstar.toml"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.ringstar = Some(child);
        before
    }

    /// Waits until a ringstar started after `before` serving lines serves.
    pub fn wait_serving(&self, before: usize) {
        wait_for("ringstar to serve", Duration::from_secs(30), || {
            self.ringstar_log().matches(SERVING).count() > before
        });
    }

    pub fn ringstar_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ringstar.log")).unwrap_or_default()
    }

    /// Stops ringstar with `sig` and waits for it to exit.
    pub fn stop_ringstar(&mut self, sig: i32) {
        let mut child = self.ringstar.take().expect("ringstar running");
        signal(&child, sig);
        assert!(
            wait_exit(&mut child, Duration::from_secs(20)),
            "ringstar did not exit on signal {sig}"
        );
    }

    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- ringstar.log\n{}\n--- stargz.log\n{}\n--- containerd.log\n{}",
            tail(read("ringstar.log")),
            tail(read("stargz.log")),
            tail(read("containerd.log"))
        )
    }

    pub fn ctr_cmd(&self, bin: &str) -> Command {
        let mut c = Command::new(need(bin));
        c.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .arg("--namespace")
            .arg(&self.namespace);
        c
    }

    pub fn ctr(&self, args: &[&str]) -> (bool, String, String) {
        run(self.ctr_cmd("ctr").args(args), Duration::from_secs(120))
    }

    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.ctr(args);
        assert!(ok, "ctr {args:?} failed: {out}\n{err}\n{}", self.logs());
        out
    }

    pub fn rpull(&self, reference: &str) {
        self.rpull_on("ringstar", reference);
    }

    /// `ctr-remote image rpull` of `reference` through `snapshotter`.
    pub fn rpull_on(&self, snapshotter: &str, reference: &str) {
        let (ok, out, err) = run(
            self.ctr_cmd("ctr-remote").args([
                "image",
                "rpull",
                "--plain-http",
                "--snapshotter",
                snapshotter,
                reference,
            ]),
            Duration::from_secs(120),
        );
        assert!(ok, "rpull {reference}: {out}\n{err}\n{}", self.logs());
    }

    /// `ctr run --rm` of `reference` with `cmd`; its output.
    pub fn run_container(&mut self, reference: &str, cmd: &[&str]) -> String {
        self.run_on("ringstar", reference, cmd)
    }

    /// `ctr run --rm` of `reference` with `cmd` through `snapshotter`.
    pub fn run_on(&mut self, snapshotter: &str, reference: &str, cmd: &[&str]) -> String {
        self.runs += 1;
        let id = format!("c{}", self.runs);
        let mut args = vec![
            "run",
            "--rm",
            "--snapshotter",
            snapshotter,
            "--net-host",
            reference,
            &id,
        ];
        args.extend_from_slice(cmd);
        self.ctr_ok(&args)
    }

    pub fn push(&self, repo: &str, tag: &str, format: &LayerFormat, cmd: &[&str]) -> Image {
        let layers = busybox_layers(&busybox()).unwrap();
        self.push_layers(repo, tag, &layers, format, cmd)
    }

    /// Pushes an image of these layer tars (the first is the base).
    pub fn push_layers(
        &self,
        repo: &str,
        tag: &str,
        layers: &[Vec<u8>],
        format: &LayerFormat,
        cmd: &[&str],
    ) -> Image {
        let run = RunConfig {
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..RunConfig::default()
        };
        let image = build_image(layers, format, &run).unwrap();
        let fetcher = ringstar_fetcher::Fetcher::new(Default::default()).unwrap();
        let store = ImageStore::repository(&fetcher, &self.registry.addr, repo);
        push_image(&store, &image, tag).unwrap();
        image
    }

    /// The registry's access log once it names every one of `digests`
    /// (docker-registry writes a line after the response, not before).
    pub fn requests_naming(&self, digests: &[String]) -> Vec<(String, String, u16)> {
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
    pub fn wait_no_snapshots(&self) {
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

    pub fn snapshots(&self) -> Vec<String> {
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
        // A test that failed with ringstar killed leaves its fd keeper
        // holding the mount: stop it (SIGINT above already did otherwise).
        let keeper = self.root().join("takeover/fdkeeper.sock");
        if let Ok(k) = ringstar_keeper::Keeper::connect(&keeper) {
            let _ = k.shutdown();
        }
        if let Some(mut r) = self.reference.take() {
            signal(&r, libc::SIGTERM);
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

pub fn estargz() -> LayerFormat {
    LayerFormat::Estargz(ringstar_core::writer::WriterOptions::default())
}

pub const SCRIPT: &str =
    "cat /etc/hello.txt /etc/one.txt; test ! -e /etc/removed.txt && echo whiteout-applied";
