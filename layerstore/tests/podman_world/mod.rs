//! The real world the store's tests run in: Debian's docker-registry
//! (access log kept), the `ringstar-store` binary, and Debian's podman
//! 4.3 with runc (`ringstar_testkit::podman`), each with its own dirs
//! under one temporary directory. Needs root, podman, runc and
//! busybox-static: test.sh installs them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ringstar_testkit::Registry;
use ringstar_testkit::podman::{Podman, StoreProcess};

pub struct PodmanWorld {
    pub registry: Registry,
    pub podman: Podman,
    pub store: Option<StoreProcess>,
    /// Where containers/storage finds the store.
    pub mountpoint: PathBuf,
    pub store_root: PathBuf,
    starts: u32,
    /// Last: removed after everything above has stopped.
    pub dir: tempfile::TempDir,
}

impl Drop for PodmanWorld {
    fn drop(&mut self) {
        // Containers first (they hold overlays on the store's layers),
        // then the store.
        self.podman.clean();
        self.store = None;
    }
}

impl PodmanWorld {
    /// A registry, podman's config, and the store started.
    pub fn start() -> PodmanWorld {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::start_logged(&dir.path().join("access.log"));
        Self::start_with(dir, registry)
    }

    /// As [`PodmanWorld::start`], with `registry` (its access log in
    /// `dir/access.log`).
    pub fn start_with(dir: tempfile::TempDir, registry: Registry) -> PodmanWorld {
        let mountpoint = dir.path().join("store");
        let podman = Podman::configure(
            &dir.path().join("podman"),
            Some(&mountpoint),
            &[&registry.addr],
        );
        // The reference's stargz-store keys, as its users have them; the
        // idle time short, so the test sees a layer released.
        let store_toml = "noprefetch = false\nmax_concurrency = 2\nmetadata_store = \"memory\"\n\
                          resolve_result_entry_ttl_sec = 3\n[directory_cache]\ndirect = true\n";
        std::fs::write(dir.path().join("store.toml"), store_toml).unwrap();
        let mut w = PodmanWorld {
            store_root: dir.path().join("store-root"),
            registry,
            podman,
            store: None,
            mountpoint,
            starts: 0,
            dir,
        };
        w.start_store();
        w
    }

    pub fn store_log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("store-{n}.log"))
    }

    /// Starts `ringstar-store` and waits until it serves.
    pub fn start_store(&mut self) {
        self.starts += 1;
        self.store = Some(StoreProcess::start(
            Path::new(env!("CARGO_BIN_EXE_ringstar-store")),
            &self.store_root,
            &self.mountpoint,
            &self.dir.path().join("store.toml"),
            &self.log_path(self.starts),
        ));
    }

    /// Stops the store with `signal` (`TERM`, `INT`) and waits for it.
    pub fn stop_store(&mut self, signal: &str) {
        if let Some(mut s) = self.store.take() {
            s.stop(signal);
        }
    }

    /// Runs podman with `args`; its stdout, or a panic with everything
    /// that helps.
    pub fn podman(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.podman.try_run(args);
        assert!(
            ok,
            "podman {args:?} failed:\n{out}\n{err}\nstore log:\n{}",
            self.store_log()
        );
        out
    }

    /// The registry's requests for blob `digest` of any repository:
    /// (method, status).
    pub fn blob_requests(&self, digest: &str) -> Vec<(String, u16)> {
        self.registry
            .requests()
            .into_iter()
            .filter(|(_, path, _)| path.ends_with(&format!("/blobs/{digest}")))
            .map(|(m, _, s)| (m, s))
            .collect()
    }

    /// How many uses the store counts for layer `digest` of `reference`,
    /// from what it keeps (`als/layers/*.json`, `als/uses.json`).
    pub fn uses(&self, reference: &str, digest: &str) -> u64 {
        let Ok(dir) = std::fs::read_dir(self.store_root.join("als/layers")) else {
            return 0;
        };
        let key = dir.filter_map(|e| e.ok()).find_map(|e| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            (v["reference"] == reference && v["digest"] == digest)
                .then(|| e.path().file_stem().unwrap().to_string_lossy().into_owned())
        });
        let Some(key) = key else { return 0 };
        let uses: serde_json::Value = std::fs::read(self.store_root.join("als/uses.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        uses[&key]["count"].as_u64().unwrap_or(0)
    }
}
