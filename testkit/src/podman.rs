//! Debian's podman with a configuration of its own, and `ringstar-store`
//! as a process: what the store's tests and its benchmark run. Podman
//! reads its storage.conf, containers.conf and registries.conf from a
//! directory of the caller's (`CONTAINERS_*_CONF`), with its storage
//! there too, so the host's podman storage is never touched.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What `ringstar-store` logs once it serves.
pub const STORE_SERVING: &str = "additional layer store serving";

/// How long one podman command may take.
const PODMAN_LIMIT: Duration = Duration::from_secs(300);

/// Podman configured in `dir`.
#[derive(Debug)]
pub struct Podman {
    pub dir: PathBuf,
    /// `--authfile` of every command (`REGISTRY_AUTH_FILE`); none: no
    /// credentials.
    pub auth_file: Option<PathBuf>,
}

impl Podman {
    /// Writes podman's configuration into `dir`: storage there (overlay,
    /// with the additional layer store at `store` when given), runc with
    /// no network, and `insecure` registries (plain HTTP).
    pub fn configure(dir: &Path, store: Option<&Path>, insecure: &[&str]) -> Podman {
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.display();
        let als = store.map_or(String::new(), |s| {
            format!(
                "[storage.options]\nadditionallayerstores = [\"{}:ref\"]\n",
                s.display()
            )
        });
        let storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/graph\"\nrunroot = \"{d}/run\"\n{als}"
        );
        // Podman as root gives a container 1M open files and 4M
        // processes unless told, past what a sandboxed CI machine lets the
        // runtime set (EPERM): containerd's modest limits instead. runc,
        // as the containerd tests (crun refuses hybrid cgroups).
        let containers = format!(
            "[containers]\nnetns = \"none\"\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\n\
             runtime = \"runc\"\nvolume_path = \"{d}/volumes\"\n"
        );
        let mut registries = "unqualified-search-registries = []\n".to_string();
        for host in insecure {
            registries.push_str(&format!(
                "[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"
            ));
        }
        for (name, text) in [
            ("storage.conf", storage),
            ("containers.conf", containers),
            ("registries.conf", registries),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Podman {
            dir: dir.to_path_buf(),
            auth_file: None,
        }
    }

    /// `podman ARGS` with this configuration (not run).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.args(args)
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.join("registries.conf"),
            )
            .env_remove("REGISTRY_AUTH_FILE")
            .env("HOME", &self.dir)
            .env_remove("XDG_RUNTIME_DIR");
        if let Some(f) = &self.auth_file {
            cmd.env("REGISTRY_AUTH_FILE", f);
        }
        cmd
    }

    /// Runs `podman ARGS` to completion (killed past 5 minutes):
    /// (success, stdout, stderr).
    pub fn try_run(&self, args: &[&str]) -> (bool, String, String) {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("podman (apt-get install podman)");
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        let started = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if started.elapsed() > PODMAN_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (o, e) = (out.join().unwrap(), err.join().unwrap());
        (status.is_some_and(|s| s.success()), o, e)
    }

    /// Removes every container and image, then podman's overlay mount.
    pub fn clean(&self) {
        for args in [
            &["rm", "-af"][..],
            &["rmi", "-af"],
            &["system", "prune", "-af"],
        ] {
            let _ = self.try_run(args);
        }
        let _ = Command::new("umount")
            .arg(self.dir.join("graph/overlay"))
            .output();
    }
}

/// A `ringstar-store` process serving `mountpoint` from `root`.
#[derive(Debug)]
pub struct StoreProcess {
    child: Option<Child>,
    pub mountpoint: PathBuf,
    pub root: PathBuf,
    pub log: PathBuf,
}

impl StoreProcess {
    /// Where a store on `root` looks for Podman's auth file (its
    /// `${XDG_RUNTIME_DIR}/containers/auth.json`).
    pub fn auth_file(root: &Path) -> PathBuf {
        Self::home(root).join("xdg/containers/auth.json")
    }

    fn home(root: &Path) -> PathBuf {
        root.with_extension("home")
    }

    /// Starts `bin` with `config` and waits (30 s at most) until it
    /// serves. It sees no docker config, and a Podman auth file only at
    /// [`StoreProcess::auth_file`].
    pub fn start(
        bin: &Path,
        root: &Path,
        mountpoint: &Path,
        config: &Path,
        log: &Path,
    ) -> StoreProcess {
        let home = Self::home(root);
        std::fs::create_dir_all(&home).unwrap();
        let child = Command::new(bin)
            .arg("--root")
            .arg(root)
            .arg("--config")
            .arg(config)
            .arg("--log-level")
            .arg("info,ringstar_layerstore=debug")
            .arg(mountpoint)
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", home.join("xdg"))
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let mut store = StoreProcess {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
            root: root.to_path_buf(),
            log: log.to_path_buf(),
        };
        let started = Instant::now();
        while !store.log_text().contains(STORE_SERVING) {
            if let Some(st) = store.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ringstar-store exited ({st}):\n{}", store.log_text());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "ringstar-store did not start:\n{}",
                store.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        store
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`INT`, `TERM`, …) and waits for the exit (30 s,
    /// then SIGKILL); the mounts left are detached.
    pub fn stop(&mut self, signal: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for m in [self.mountpoint.clone(), self.root.join("fuse")] {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
    }
}

impl Drop for StoreProcess {
    fn drop(&mut self) {
        self.stop("INT");
    }
}
