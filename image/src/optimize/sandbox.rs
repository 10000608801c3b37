//! The workload run once, by runc, on the image's root filesystem: its
//! own PID, IPC, UTS, mount and cgroup namespaces, no network unless asked
//! (a namespace with only a loopback that is down), the capabilities
//! containerd gives a container by default, and `--period` seconds at
//! most before it is killed.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::record::Recorder;
use crate::ImageError;

/// What runs, as the image's config and the user's flags say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// How the run is made.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// The OCI runtime binary (`runc`).
    pub runtime: PathBuf,
    /// How long the workload may run before it is killed.
    pub period: Duration,
    /// Share the host's network (and its resolv.conf and hosts).
    pub net_host: bool,
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The workload exited, with this status (the runtime's).
    Exited(Option<i32>),
    /// The period ran out and the workload was killed.
    Killed,
}

/// The capabilities containerd grants a container by default.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The OCI runtime spec for `workload` on the root at `rootfs`.
pub fn runtime_spec(workload: &Workload, rootfs: &Path, net_host: bool) -> serde_json::Value {
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    if net_host {
        for f in ["/etc/resolv.conf", "/etc/hosts"] {
            if Path::new(f).exists() {
                mounts.push(json!({"destination": f, "type": "bind", "source": f,
                                   "options": ["rbind", "ro"]}));
            }
        }
    } else {
        namespaces.push(json!({"type": "network"}));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": workload.uid, "gid": workload.gid,
                     "additionalGids": workload.additional_gids},
            "args": workload.args,
            "env": workload.env,
            "cwd": workload.cwd,
            "capabilities": {
                "bounding": DEFAULT_CAPABILITIES,
                "effective": DEFAULT_CAPABILITIES,
                "permitted": DEFAULT_CAPABILITIES,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": "ringstar-optimize",
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                            "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                              "/proc/sys", "/proc/sysrq-trigger"],
        },
    })
}

/// Runs `workload` on the root at `rootfs` under a bundle and runtime
/// state made in `scratch`, with `recorder` taking its opens meanwhile.
/// The workload's output goes to this process's stderr.
pub fn run(
    workload: &Workload,
    rootfs: &Path,
    scratch: &Path,
    opts: &SandboxOptions,
    recorder: &mut Recorder,
) -> Result<RunEnd, ImageError> {
    let bundle = scratch.join("bundle");
    let state = scratch.join("runtime");
    std::fs::create_dir_all(&bundle)?;
    std::fs::create_dir_all(&state)?;
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&runtime_spec(workload, rootfs, opts.net_host))?,
    )?;
    let id = format!("ringstar-optimize-{}", std::process::id());
    let runtime = |args: &[&str]| {
        let mut c = Command::new(&opts.runtime);
        c.arg("--root").arg(&state).args(args);
        c
    };
    // The workload's output goes to stderr: stdout is the tool's result.
    let stdout = std::io::stderr().as_fd().try_clone_to_owned()?;
    let mut child = runtime(&["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(stdout)
        .spawn()
        .map_err(|e| {
            ImageError::Io(std::io::Error::other(format!(
                "{}: {e} (apt-get install runc)",
                opts.runtime.display()
            )))
        })?;
    let started = Instant::now();
    let end = loop {
        if let Some(status) = child.try_wait()? {
            break RunEnd::Exited(status.code());
        }
        if started.elapsed() >= opts.period {
            break RunEnd::Killed;
        }
        recorder.poll(Duration::from_millis(50))?;
    };
    if end == RunEnd::Killed {
        let _ = runtime(&["kill", &id, "KILL"])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = runtime(&["delete", "--force", &id])
        .stderr(Stdio::null())
        .status();
    Ok(end)
}
