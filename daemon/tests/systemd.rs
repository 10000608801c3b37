//! The restart takeover through systemd's fd store. This machine has no
//! systemd as PID 1, so the test plays the service manager's part of the
//! protocol itself (sd_notify(3), sd_listen_fds(3)): it keeps the fds
//! sent with `FDSTORE=1` by `FDNAME`, drops them on `FDSTOREREMOVE=1`,
//! and starts the next process with them at fd 3 onwards, named in
//! `LISTEN_FDNAMES`, as systemd does on a restart. One test in its own
//! binary: the stored fds are inheritable while the next process starts,
//! and no other test may spawn a child meanwhile.

use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};

/// The service manager's side of the notify socket and its fd store.
struct FakeSystemd {
    sock: UnixDatagram,
    path: PathBuf,
    store: BTreeMap<String, OwnedFd>,
}

impl FakeSystemd {
    fn bind(path: &Path) -> FakeSystemd {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        FakeSystemd {
            sock,
            path: path.to_path_buf(),
            store: BTreeMap::new(),
        }
    }

    /// Handles messages until one is `until` (the fd store's own ones
    /// applied), and returns the others.
    fn pump_until(&mut self, until: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(16))];
            let mut ancillary = RecvAncillaryBuffer::new(&mut space);
            let got = recvmsg(
                &self.sock,
                &mut [IoSliceMut::new(&mut buf)],
                &mut ancillary,
                RecvFlags::CMSG_CLOEXEC,
            )
            .expect("a notify message within 30 s");
            let mut fds: Vec<OwnedFd> = Vec::new();
            for m in ancillary.drain() {
                if let RecvAncillaryMessage::ScmRights(rights) = m {
                    fds.extend(rights);
                }
            }
            let text = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
            if text == until {
                return seen;
            }
            let fields: BTreeMap<&str, &str> =
                text.lines().filter_map(|l| l.split_once('=')).collect();
            let name = fields.get("FDNAME").map(|n| n.to_string());
            if fields.get("FDSTORE") == Some(&"1") {
                assert_eq!(fds.len(), 1, "{text}");
                self.store.insert(name.expect("FDNAME"), fds.pop().unwrap());
            } else if fields.get("FDSTOREREMOVE") == Some(&"1") {
                self.store.remove(&name.expect("FDNAME"));
            }
            seen.push(text);
        }
    }

    fn names(&self) -> Vec<String> {
        self.store.keys().cloned().collect()
    }

    /// `daemon args…` started the way systemd restarts a service with a
    /// non-empty fd store: the stored fds at 3, 4, … (dup'd above 100
    /// first, so no move overwrites another), `LISTEN_PID` the process's
    /// own pid, `LISTEN_FDS` and `LISTEN_FDNAMES`.
    fn restart(&self, daemon: &Path, args: &[&str], log: &Path) -> Child {
        let mut high = Vec::new();
        let mut moves = Vec::new();
        let mut closes = Vec::new();
        for (i, fd) in self.store.values().enumerate() {
            let dup = rustix::io::fcntl_dupfd_cloexec(fd, 100).unwrap();
            rustix::io::fcntl_setfd(&dup, rustix::io::FdFlags::empty()).unwrap();
            moves.push(format!("{}<&{}", 3 + i, dup.as_raw_fd()));
            closes.push(format!("{}<&-", dup.as_raw_fd()));
            high.push(dup);
        }
        let names: Vec<&str> = self.store.keys().map(String::as_str).collect();
        let script = format!(
            "exec {} {}; export LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={}; exec \"$0\" \"$@\"",
            moves.join(" "),
            closes.join(" "),
            names.len(),
            names.join(":")
        );
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg(daemon)
            .args(args)
            .env("NOTIFY_SOCKET", &self.path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        drop(high);
        child
    }
}

/// Kills what is left and unmounts, whatever the test's outcome.
struct Cleanup {
    daemons: Vec<Child>,
    mountpoint: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
    }
}

fn kill(child: &Child, sig: &str) {
    assert!(
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn a_killed_daemon_is_restarted_with_its_fd_store_and_serves_the_same_mount() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mountpoint = root.join("fuse");
    std::fs::write(dir.path().join("c.toml"), "").unwrap();
    let mut systemd = FakeSystemd::bind(&dir.path().join("notify"));
    let daemon = Path::new(env!("CARGO_BIN_EXE_ringstar-snapshotter"));
    let socket = dir.path().join("r.sock");
    let config = dir.path().join("c.toml");
    let args = [
        "--root",
        root.to_str().unwrap(),
        "--address",
        socket.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let first = Command::new(daemon)
        .args(args)
        .env("NOTIFY_SOCKET", &systemd.path)
        .stderr(std::fs::File::create(dir.path().join("first.log")).unwrap())
        .spawn()
        .unwrap();
    let mut cleanup = Cleanup {
        daemons: vec![first],
        mountpoint: mountpoint.clone(),
    };

    // Before READY: the channels (main + one per CPU) and the state.
    systemd.pump_until("READY=1");
    let cpus = std::thread::available_parallelism().unwrap().get();
    let mut want: Vec<String> = (0..=cpus).map(|i| format!("ringstar-fuse-{i}")).collect();
    want.push("ringstar-fuse-state".into());
    want.sort();
    assert_eq!(systemd.names(), want);
    assert!(
        !root.join("takeover/fdkeeper.sock").exists(),
        "a keeper under systemd"
    );
    let device = std::fs::metadata(&mountpoint).unwrap().dev();

    // kill -9: a request made now waits in the kernel (the store holds the
    // connection) and completes once the next process serves.
    kill(&cleanup.daemons[0], "KILL");
    let _ = cleanup.daemons[0].wait();
    let (tx, rx) = std::sync::mpsc::channel();
    let m = mountpoint.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_dir(&m).map(|d| d.count()));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "answered with no daemon"
    );
    let second = systemd.restart(daemon, &args, &dir.path().join("second.log"));
    cleanup.daemons.push(second);
    let started = Instant::now();
    systemd.pump_until("READY=1");
    let listed = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the held request");
    assert_eq!(listed.unwrap(), 0);
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap();
    assert!(log.contains("layer filesystem taken over"), "{log}");
    assert_eq!(
        std::fs::metadata(&mountpoint).unwrap().dev(),
        device,
        "remounted"
    );
    assert_eq!(systemd.names(), want, "the store after the restart");
    eprintln!("restart to READY: {:?}", started.elapsed());

    // SIGINT: unmounted, and the store emptied.
    kill(&cleanup.daemons[1], "INT");
    systemd.pump_until("STOPPING=1");
    assert!(cleanup.daemons[1].wait().unwrap().success());
    let started = Instant::now();
    while !systemd.store.is_empty() && started.elapsed() < Duration::from_secs(10) {
        systemd
            .sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 512];
        if let Ok(n) = systemd.sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if let Some(name) = text.strip_prefix("FDSTOREREMOVE=1\nFDNAME=") {
                systemd.store.remove(name.trim_end());
            }
        }
    }
    assert!(
        systemd.store.is_empty(),
        "left in the store: {:?}",
        systemd.names()
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(mountpoint.to_str().unwrap()),
        "left mounted"
    );
}
