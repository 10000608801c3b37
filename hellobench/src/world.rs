//! The benchmark's world: Debian's docker-registry (storage kept in the
//! cache, so pushed images survive between runs), an optional WAN delay
//! proxy in front of it, and for each sample a fresh containerd and
//! snapshotter with wiped state and dropped page caches.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ringstar_testkit::{AccessLogEntry, DelayProxy, Registry, access_log_entries};

use crate::rootfs::{sh, umount_below};

/// Which snapshotter a sample uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Snap {
    /// containerd's overlayfs snapshotter: a normal pull of `org`.
    Legacy,
    Ringstar,
    Peer,
}

impl Snap {
    pub fn label(self) -> &'static str {
        match self {
            Snap::Legacy => "overlayfs",
            Snap::Ringstar => "ringstar",
            Snap::Peer => "peer",
        }
    }

    /// The proxy plugin name in containerd's config.
    pub fn plugin(self) -> &'static str {
        match self {
            Snap::Legacy => "overlayfs",
            Snap::Ringstar => "ringstar",
            Snap::Peer => "stargz",
        }
    }
}

/// A network profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    Lo,
    /// 40 ms RTT, 200 Mbit/s shared, one RTT per new connection.
    Wan,
}

impl Net {
    pub fn parse(s: &str) -> anyhow::Result<Net> {
        match s {
            "lo" => Ok(Net::Lo),
            "wan" => Ok(Net::Wan),
            o => bail!("no network profile {o:?} (lo, wan)"),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Net::Lo => "lo",
            Net::Wan => "wan-40ms-200mbit",
        }
    }
}

#[derive(Debug)]
pub struct World {
    dir: PathBuf,
    pub registry: Registry,
    proxy: Option<DelayProxy>,
    ringstar: PathBuf,
    /// The `ringstar` command (its `image rpull`).
    ringstar_cli: PathBuf,
    peer: Option<PathBuf>,
    containerd: Option<Child>,
    snapshotter: Option<(Snap, Child)>,
    namespace: String,
    /// Appended to ringstar's config (for experiments).
    pub ringstar_toml: String,
}

impl World {
    pub fn new(
        dir: &Path,
        cache: &Path,
        ringstar: PathBuf,
        ringstar_cli: PathBuf,
        peer: Option<PathBuf>,
    ) -> anyhow::Result<World> {
        for bin in ["containerd", "ctr", "ctr-remote", "runc", "docker-registry"] {
            if !which(bin) {
                bail!(
                    "{bin} is needed (apt-get install containerd runc stargz-snapshotter docker-registry)"
                );
            }
        }
        std::fs::create_dir_all(dir)?;
        let storage = cache.join("registry");
        std::fs::create_dir_all(&storage)?;
        let registry = Registry::start_full(&storage, None, None, Some(&dir.join("registry.log")));
        Ok(World {
            dir: dir.to_path_buf(),
            registry,
            proxy: None,
            ringstar,
            ringstar_cli,
            peer,
            containerd: None,
            snapshotter: None,
            namespace: "hellobench".into(),
            ringstar_toml: String::new(),
        })
    }

    pub fn has_peer(&self) -> bool {
        self.peer.is_some()
    }

    /// Puts the delay proxy in front of the registry (or takes it away).
    pub fn set_net(&mut self, net: Net) {
        self.proxy = match net {
            Net::Lo => None,
            Net::Wan => Some(DelayProxy::start_wan(
                self.registry.addr.clone(),
                Duration::from_millis(40),
                200_000_000,
                true,
            )),
        };
    }

    /// Where clients reach the registry.
    pub fn host(&self) -> String {
        match &self.proxy {
            Some(p) => p.addr.clone(),
            None => self.registry.addr.clone(),
        }
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The snapshotter's root directory (its mounts are below it).
    pub fn snap_root(&self, s: Snap) -> PathBuf {
        self.dir.join(format!("{}-root", s.plugin()))
    }

    fn snap_sock(&self, s: Snap) -> PathBuf {
        self.dir.join(format!("{}.sock", s.plugin()))
    }

    /// Stops everything, wipes every state dir, drops the page cache and
    /// starts `snap` (when lazy) and containerd afresh.
    pub fn reset(&mut self, snap: Snap, noprefetch: bool) -> anyhow::Result<()> {
        self.stop();
        for d in ["containerd", "ringstar-root", "stargz-root"] {
            let p = self.dir.join(d);
            umount_below(&p);
            let _ = std::fs::remove_dir_all(&p);
        }
        if snap != Snap::Legacy {
            let bin = match snap {
                Snap::Ringstar => self.ringstar.clone(),
                _ => self
                    .peer
                    .clone()
                    .context("no peer snapshotter given (--peer)")?,
            };
            let config = self.dir.join(format!("{}.toml", snap.plugin()));
            let extra = if snap == Snap::Ringstar {
                self.ringstar_toml.as_str()
            } else {
                ""
            };
            std::fs::write(&config, format!("noprefetch = {noprefetch}\n{extra}\n"))?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("{}.log", snap.plugin())))?;
            let child = Command::new(&bin)
                .arg("--address")
                .arg(self.snap_sock(snap))
                .arg("--root")
                .arg(self.snap_root(snap))
                .arg("--config")
                .arg(&config)
                .arg("--log-level")
                .arg("info")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            self.snapshotter = Some((snap, child));
            wait_until(Duration::from_secs(30), || self.snap_sock(snap).exists())
                .with_context(|| format!("{} did not open its socket", bin.display()))?;
        }
        let d = &self.dir;
        std::fs::write(
            d.join("containerd.toml"),
            ringstar_testkit::containerd::containerd_config(
                d,
                &[
                    ("ringstar", &self.snap_sock(Snap::Ringstar)),
                    ("stargz", &self.snap_sock(Snap::Peer)),
                ],
            ),
        )?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))?;
        self.containerd = Some(
            Command::new("containerd")
                .arg("--config")
                .arg(d.join("containerd.toml"))
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        wait_until(Duration::from_secs(30), || {
            self.sock().exists() && self.ctr(&["version"]).is_ok()
        })
        .context("containerd did not start")?;
        let _ = Command::new("sync").status();
        std::fs::write("/proc/sys/vm/drop_caches", "3")
            .context("dropping the page cache (root?)")?;
        Ok(())
    }

    /// Stops containerd (tasks first) and the snapshotter.
    pub fn stop(&mut self) {
        if self.containerd.is_some()
            && let Ok(out) = self.ctr(&["task", "ls", "-q"])
        {
            for id in out.lines() {
                let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                let _ = self.ctr(&["task", "rm", "-f", id]);
            }
        }
        if let Some(c) = self.containerd.take() {
            stop_child(c, "TERM");
        }
        if let Some((_, c)) = self.snapshotter.take() {
            stop_child(c, "INT");
        }
    }

    /// The running lazy snapshotter's process id.
    pub fn snapshotter_pid(&self) -> Option<u32> {
        self.snapshotter.as_ref().map(|(_, c)| c.id())
    }

    /// `bin` (ctr, ctr-remote) with this world's address and namespace.
    pub fn ctr_cmd(&self, bin: &str) -> Command {
        let mut c = Command::new(bin);
        c.arg("--address")
            .arg(self.sock())
            .arg("--namespace")
            .arg(&self.namespace)
            .stdin(Stdio::null());
        c
    }

    /// `ctr ARGS`, its stdout; an error with its output when it fails.
    /// Where a container's output is written (its log URI's file).
    pub fn output_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.out"))
    }

    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        sh(self.ctr_cmd("ctr").args(args))
    }

    pub fn ctr_remote(&self, args: &[&str]) -> anyhow::Result<String> {
        sh(self.ctr_cmd("ctr-remote").args(args))
    }

    /// `ringstar image ARGS` (convert, optimize), its stdout.
    pub fn ringstar_image(&self, args: &[&str]) -> anyhow::Result<String> {
        sh(Command::new(&self.ringstar_cli)
            .arg("image")
            .args(args)
            .stdin(Stdio::null()))
    }

    /// Pulls `reference`: a normal pull for overlayfs, a lazy one for the
    /// lazy snapshotters (`ringstar image rpull` for ringstar, the peer's
    /// own tool, `ctr-remote image rpull`, for the peer).
    pub fn pull(&self, snap: Snap, reference: &str) -> anyhow::Result<String> {
        match snap {
            Snap::Legacy => self.ctr(&["image", "pull", "--plain-http", reference]),
            Snap::Ringstar => sh(Command::new(&self.ringstar_cli)
                .args(["image", "rpull", "--plain-http", "--address"])
                .arg(self.sock())
                .args([
                    "--namespace",
                    &self.namespace,
                    "--snapshotter",
                    "ringstar",
                    reference,
                ])
                .stdin(Stdio::null())),
            s => self.ctr_remote(&[
                "image",
                "rpull",
                "--plain-http",
                "--snapshotter",
                s.plugin(),
                reference,
            ]),
        }
    }

    /// How many layers the lazy snapshotter serves itself: ringstar's
    /// layer directories, the peer's FUSE mounts.
    pub fn lazy_layers(&self, snap: Snap) -> usize {
        let root = self.snap_root(snap);
        match snap {
            Snap::Legacy => 0,
            Snap::Ringstar => std::fs::read_dir(root.join("fuse")).map_or(0, |d| d.count()),
            Snap::Peer => {
                let fuse_mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split(' ').collect();
                        (f.len() > 2
                            && f[1].starts_with(root.to_str().unwrap_or("-"))
                            && f[2].starts_with("fuse"))
                        .then(|| f[1].to_string())
                    })
                    .collect();
                // A ringstar build as the peer: one FUSE mount at
                // ROOT/fuse with a directory per layer (as above).
                let one = root.join("fuse");
                if fuse_mounts.len() == 1 && Path::new(&fuse_mounts[0]) == one {
                    std::fs::read_dir(&one).map_or(0, |d| d.count())
                } else {
                    fuse_mounts.len()
                }
            }
        }
    }

    /// Where the registry's access log ends now (a sample's requests are
    /// what comes after).
    pub fn registry_log_end(&self) -> u64 {
        std::fs::metadata(self.dir.join("registry.log")).map_or(0, |m| m.len())
    }

    /// The registry's requests logged after byte `from` of its access
    /// log.
    pub fn registry_log(&self, from: u64) -> Vec<AccessLogEntry> {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("registry.log")) {
            let _ = f.seek(SeekFrom::Start(from));
            let _ = f.read_to_string(&mut text);
        }
        access_log_entries(&text)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop();
        umount_below(&self.dir);
    }
}

fn stop_child(mut c: Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(c.id().to_string())
        .status();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let started = Instant::now();
    while !ok() {
        if started.elapsed() > limit {
            bail!("timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Lazy means: every layer served by the snapshotter, and no layer blob
/// (one of `digests`) sent whole by the registry.
pub fn check_lazy(
    what: &str,
    log: &[AccessLogEntry],
    digests: &[String],
    lazy: usize,
    layers: usize,
) -> anyhow::Result<()> {
    let whole: Vec<_> = log
        .iter()
        .filter(|r| {
            r.method == "GET" && r.status == 200 && digests.iter().any(|d| r.path.ends_with(d))
        })
        .collect();
    if lazy < layers || !whole.is_empty() {
        bail!(
            "{what}: NOT LAZY: {lazy} of {layers} layers served by the snapshotter, {} layer blobs downloaded whole (a fallback to a normal pull?)",
            whole.len()
        );
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Memory {
    pub peak_mb: f64,
    pub rss_mb: f64,
    pub anon_mb: f64,
    pub file_mb: f64,
}

/// A process's memory from `/proc/PID/status`.
pub fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1e3
    };
    Memory {
        peak_mb: kb("VmHWM:"),
        rss_mb: kb("VmRSS:"),
        anon_mb: kb("RssAnon:"),
        file_mb: kb("RssFile:") + kb("RssShmem:"),
    }
}

pub fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(bin).is_file())
}
