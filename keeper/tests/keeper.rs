//! The keeper binary, driven through the client library: fds survive the
//! depositing process's handles, come back working, are replaced and
//! dropped without leaking, and the keeper exits when told or when idle.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ringstar_keeper::{Keeper, KeeperError};

/// The keeper process; killed if a test fails before it exits.
struct KeeperProcess(Child);

impl Drop for KeeperProcess {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn start(socket: &Path, idle: u64) -> (KeeperProcess, Keeper) {
    let child = Command::new(env!("CARGO_BIN_EXE_ringstar-fdkeeper"))
        .arg(socket)
        .args(["--idle-exit", &idle.to_string()])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn keeper");
    let child = KeeperProcess(child);
    let k = Keeper::connect_wait(socket, Duration::from_secs(20)).expect("keeper up");
    // One round trip: the keeper has accepted this connection, so its fd
    // is in every count below.
    assert_eq!(k.held_fds().unwrap(), 0);
    (child, k)
}

fn wait_exit(
    KeeperProcess(child): &mut KeeperProcess,
    within: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "keeper did not exit in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let (r, w) = rustix::pipe::pipe().unwrap();
    (std::fs::File::from(r), std::fs::File::from(w))
}

#[test]
fn deposit_fetch_replace_take_drop() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("keeper.sock");
    let (mut child, k) = start(&socket, 600);
    let base = open_fds(child.0.id());

    let (r, mut w) = pipe();
    k.deposit("conn", &[r.as_fd(), w.as_fd()], b"state-1")
        .unwrap();
    assert!(matches!(
        k.deposit("conn", &[r.as_fd()], b"x"),
        Err(KeeperError::Exists(_))
    ));
    drop(r);
    assert_eq!(k.held_fds().unwrap(), 2);
    assert_eq!(open_fds(child.0.id()), base + 2);

    // The fetched copy is the same pipe: what we write arrives there.
    let got = k.fetch("conn").unwrap().expect("held");
    assert_eq!(got.state, b"state-1");
    assert_eq!(got.fds.len(), 2);
    w.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    std::fs::File::from(got.fds.into_iter().next().unwrap())
        .read_exact(&mut buf)
        .unwrap();
    assert_eq!(&buf, b"ping");

    // Replace closes the old fds: the count follows the new entry.
    let (r2, w2) = pipe();
    k.replace("conn", &[r2.as_fd()], b"state-2").unwrap();
    assert_eq!(k.held_fds().unwrap(), 1);
    assert_eq!(open_fds(child.0.id()), base + 1);
    assert_eq!(k.fetch("conn").unwrap().unwrap().state, b"state-2");
    assert_eq!(k.list().unwrap(), vec!["conn".to_string()]);

    k.deposit("other", &[w2.as_fd()], b"").unwrap();
    assert!(k.drop_entry("other").unwrap());
    assert!(!k.drop_entry("other").unwrap());

    let taken = k.take("conn").unwrap().expect("held");
    assert_eq!(taken.state, b"state-2");
    assert!(k.fetch("conn").unwrap().is_none());
    assert_eq!(k.held_fds().unwrap(), 0);
    assert_eq!(open_fds(child.0.id()), base);
    let _: Vec<OwnedFd> = taken.fds;

    k.shutdown().unwrap();
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
    assert!(!socket.exists(), "the keeper removes its socket");
}

#[test]
fn idle_keeper_exits_but_not_while_holding() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("keeper.sock");
    let (mut child, k) = start(&socket, 1);
    let (r, _w) = pipe();
    k.deposit("conn", &[r.as_fd()], b"").unwrap();
    // Holding something: still there well past the idle time.
    let held_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < held_until {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "exited while holding"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(k.drop_entry("conn").unwrap());
    drop(k);
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}

#[test]
fn a_second_keeper_on_the_same_socket_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("keeper.sock");
    let (mut child, k) = start(&socket, 600);
    let out = Command::new(env!("CARGO_BIN_EXE_ringstar-fdkeeper"))
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    k.shutdown().unwrap();
    wait_exit(&mut child, Duration::from_secs(20));
}

/// An entry whose fd's other end is gone for good (POLLERR or POLLHUP:
/// here pipes with one end left; in the daemon a `/dev/fuse` fd whose
/// connection was unmounted) is dropped, and the keeper, holding
/// nothing, goes idle and exits.
#[test]
fn an_entry_whose_fd_ended_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("keeper.sock");
    let (mut child, k) = start(&socket, 1);
    let (alive_r, alive_w) = pipe();
    k.deposit("alive", &[alive_r.as_fd()], b"").unwrap();
    let (r, w) = pipe();
    k.deposit("ended", &[w.as_fd()], b"").unwrap();
    drop(w);
    assert_eq!(k.list().unwrap(), vec!["alive", "ended"]);
    drop(r);
    let started = Instant::now();
    while k.list().unwrap() != vec!["alive".to_string()] {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            k.list()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The live entry is kept (a read end whose writer is still open
    // reports nothing), and keeps the keeper from its idle exit.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(k.list().unwrap(), vec!["alive".to_string()]);
    // Its writer gone, the read end reports POLLHUP: dropped too, and
    // the keeper, holding nothing, exits after its idle second.
    drop(alive_w);
    drop(k);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
}

/// LEASE: once its holder hangs up, an entry nobody fetches within the
/// lease is dropped; one fetched in time is kept, and the lease is the
/// fetcher's from then on.
#[test]
fn a_lease_drops_what_nobody_comes_back_for() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("keeper.sock");
    let (_child, watcher) = start(&socket, 600);
    let (r, _w) = pipe();

    // Its holder goes; another client fetches it within the lease: kept.
    let holder = Keeper::connect(&socket).unwrap();
    holder.deposit("kept", &[r.as_fd()], b"").unwrap();
    holder.lease("kept", Duration::from_secs(2)).unwrap();
    drop(holder);
    std::thread::sleep(Duration::from_millis(500));
    let successor = Keeper::connect(&socket).unwrap();
    assert!(successor.fetch("kept").unwrap().is_some());
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(watcher.list().unwrap(), vec!["kept".to_string()]);

    // The successor goes too and nobody comes back: dropped after 2 s.
    drop(successor);
    let gone_at = Instant::now();
    while !watcher.list().unwrap().is_empty() {
        assert!(gone_at.elapsed() < Duration::from_secs(10), "still held");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone_at.elapsed() >= Duration::from_millis(1500));
    assert!(matches!(
        watcher.lease("absent", Duration::from_secs(1)),
        Err(KeeperError::NotFound(_))
    ));
}
