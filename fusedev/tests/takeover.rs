//! Takeover over real FUSE (run as root): a server process deposits its
//! connection in a keeper process; it is killed -9 (or hands over
//! gracefully) while a reader waits in a read it took; a second server
//! process resumes from the keeper, RESENDs, and the read completes with
//! the right bytes. Both processes are this test binary re-run with
//! `TS_MODE` set (`server_process` below). Every wait has a deadline.

#[path = "takeover/server.rs"]
mod server;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use ringstar_keeper::Keeper;

const WAIT: Duration = Duration::from_secs(60);

/// The child-process entry point; a no-op in a normal test run.
#[test]
fn server_process() {
    match std::env::var("TS_MODE").as_deref() {
        Ok("keeper") => {
            let socket = PathBuf::from(std::env::var("TS_KEEPER").unwrap());
            ringstar_keeper::serve(&socket, Duration::from_secs(600)).expect("keeper");
            std::process::exit(0);
        }
        Ok("reader") => server::run_reader(),
        Ok(_) => server::run(),
        Err(_) => {}
    }
}

fn child(envs: &[(&str, String)]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "server_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn a test child")
}

/// A server process: its `@@` lines arrive on a channel.
struct Server {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    backlog: std::cell::RefCell<Vec<String>>,
}

impl Server {
    /// The next line starting with `prefix`; lines that do not match
    /// wait for a later call (two reads may finish in either order).
    fn expect(&self, prefix: &str) -> String {
        let mut backlog = self.backlog.borrow_mut();
        if let Some(i) = backlog.iter().position(|l| l.starts_with(prefix)) {
            return backlog.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(l) => backlog.push(l),
                Err(e) => panic!("waiting for {prefix:?} from the server: {e}"),
            }
        }
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("server stdin");
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

/// A keeper process and a mount point; dropping it cleans up whatever a
/// failed test left (servers, the mount, the keeper).
struct Harness {
    dir: tempfile::TempDir,
    mnt: PathBuf,
    keeper: Child,
    servers: Vec<u32>,
}

impl Harness {
    fn new() -> (Harness, Keeper) {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let socket = dir.path().join("keeper.sock");
        let keeper = child(&[
            ("TS_MODE", "keeper".into()),
            ("TS_KEEPER", socket.display().to_string()),
        ]);
        let h = Harness {
            dir,
            mnt,
            keeper,
            servers: Vec::new(),
        };
        let k = Keeper::connect_wait(&socket, WAIT).expect("keeper up");
        assert_eq!(k.held_fds().unwrap(), 0);
        (h, k)
    }

    fn server(&mut self, mode: &str, pass_slow: usize, grace_ms: u64) -> Server {
        let child = child(&[
            ("TS_MODE", mode.into()),
            ("TS_MNT", self.mnt.display().to_string()),
            (
                "TS_KEEPER",
                self.dir.path().join("keeper.sock").display().to_string(),
            ),
            ("TS_PASS_SLOW", pass_slow.to_string()),
            ("TS_GRACE_MS", grace_ms.to_string()),
        ]);
        self.servers.push(child.id());
        wrap(child)
    }

    /// The process that does every read of the mount (see
    /// `server::run_reader` for why not this one).
    fn reader(&mut self) -> Server {
        let child = child(&[
            ("TS_MODE", "reader".into()),
            ("TS_MNT", self.mnt.display().to_string()),
        ]);
        self.servers.push(child.id());
        wrap(child)
    }
}

/// A child whose `@@` lines arrive on a channel.
fn wrap(mut child: Child) -> Server {
    let (tx, lines) = channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            // libtest may print "test server_process ... " first.
            if let Some(at) = line.find("@@")
                && tx.send(line[at..].to_string()).is_err()
            {
                break;
            }
        }
    });
    let stdin = child.stdin.take().unwrap();
    Server {
        child,
        stdin,
        lines,
        backlog: Default::default(),
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for &pid in &self.servers {
            // SAFETY: kill(2) takes no pointers. A pid already reaped may
            // in theory be reused; the test's children live only as long
            // as the test, so this names one of them or nobody.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if mounts(&self.mnt) > 0 {
            if let Some(id) = connection_of(&self.mnt) {
                let _ = ringstar_fusedev::abort_connection(id);
            }
            let _ = ringstar_fusedev::detach_mount(&self.mnt);
        }
        let _ = self.keeper.kill();
        let _ = self.keeper.wait();
    }
}

/// How many mounts sit on `mnt` (0 after a clean end, 1 while served).
fn mounts(mnt: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = mnt.to_str().unwrap();
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(target))
        .count()
}

/// The FUSE connection id (the minor of the mount's device).
fn connection_of(mnt: &Path) -> Option<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = mnt.to_str()?;
    let line = info.lines().find(|l| l.split(' ').nth(4) == Some(target))?;
    line.split(' ').nth(2)?.split(':').nth(1)?.parse().ok()
}

impl Server {
    /// Waits for the reader's verdict on a read of `name`.
    fn read_verdict(&self, name: &str) -> Instant {
        let line = self.expect(&format!("@@read {name} "));
        assert_eq!(line, format!("@@read {name} good"), "the read of {name}");
        Instant::now()
    }

    fn read_now(&mut self, name: &str) {
        self.send(&format!("read {name}"));
        self.read_verdict(name);
    }
}

fn keeper_open_fds(h: &Harness) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", h.keeper.id()))
        .unwrap()
        .count()
}

fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    s.trim()
        .split(',')
        .filter_map(|p| p.rsplit('-').next()?.parse::<usize>().ok())
        .max()
        .unwrap()
        + 1
}

#[test]
fn kill9_while_a_read_is_blocked() {
    let (mut h, keeper) = Harness::new();
    let mut reader = h.reader();
    let mut s1 = h.server("mount", 0, 0);
    s1.expect("@@ready");
    reader.read_now("hello");
    reader.send("read slow");
    s1.expect("@@held 1");
    let killed = Instant::now();
    s1.kill9();
    assert_eq!(mounts(&h.mnt), 1, "the mount outlives its server");
    let mut s2 = h.server("resume", usize::MAX, 0);
    let done = reader.read_verdict("slow");
    eprintln!("takeover gap: {:?}", done - killed);
    s2.expect("@@ready");
    for (name, _) in server::FILES {
        reader.read_now(name);
    }
    assert_eq!(keeper.held_fds().unwrap(), 1 + possible_cpus());
    s2.send("unmount");
    s2.expect("@@unmounted");
    assert_eq!(mounts(&h.mnt), 0);
    assert_eq!(keeper.held_fds().unwrap(), 0);
}

#[test]
fn graceful_handover_finishes_what_it_read() {
    let (mut h, _keeper) = Harness::new();
    let mut reader = h.reader();
    // A grace long enough that the release below lands inside it even
    // under load; the abandoned read then waits it out.
    let mut s1 = h.server("mount", 0, 10_000);
    s1.expect("@@ready");
    reader.send("read slow");
    s1.expect("@@held 1");
    reader.send("read slow");
    s1.expect("@@held 2");
    s1.send("handover");
    // Answered by the first server while it waits out its grace time.
    s1.send("release-one");
    reader.read_verdict("slow");
    assert_eq!(s1.expect("@@handed-over"), "@@handed-over 1");
    let status = s1.child.wait().unwrap();
    assert!(status.success(), "the first server exits cleanly: {status}");
    assert_eq!(mounts(&h.mnt), 1, "a handover does not unmount");
    // Nobody serves now: this waits in the kernel for the next server.
    reader.send("read hello");
    let mut s2 = h.server("resume", 1, 0);
    // The read the first server abandoned, resent, and the waiting one.
    reader.read_verdict("slow");
    reader.read_verdict("hello");
    s2.expect("@@ready");
    reader.read_now("big");
    s2.send("unmount");
    s2.expect("@@unmounted");
    assert_eq!(mounts(&h.mnt), 0);
}

#[test]
fn twenty_kill9_takeovers_with_a_reader_looping() {
    let (mut h, keeper) = Harness::new();
    let mut reader = h.reader();
    let mut s = h.server("mount", 0, 0);
    s.expect("@@ready");
    let held = keeper.held_fds().unwrap();
    let open = keeper_open_fds(&h);
    reader.send("loop");
    let mut gaps = Vec::new();
    for cycle in 0..20 {
        reader.send("read slow");
        s.expect("@@held 1");
        let killed = Instant::now();
        s.kill9();
        s = h.server("resume", 1, 0);
        gaps.push(reader.read_verdict("slow") - killed);
        s.expect("@@ready");
        assert_eq!(mounts(&h.mnt), 1, "cycle {cycle}: one mount");
        assert_eq!(
            keeper.held_fds().unwrap(),
            held,
            "cycle {cycle}: keeper fds"
        );
        assert_eq!(keeper_open_fds(&h), open, "cycle {cycle}: keeper open fds");
    }
    reader.send("stop");
    let counts = reader.expect("@@loop ");
    let mut fields = counts.split(' ').skip(1);
    let ok: usize = fields.next().unwrap().parse().unwrap();
    let failed: usize = fields.next().unwrap().parse().unwrap();
    assert_eq!(failed, 0, "failed reads: {counts}");
    assert!(ok > 0, "the looping reader read");
    gaps.sort();
    eprintln!(
        "takeover gap over 20 kill -9 cycles: median {:?}, min {:?}, max {:?}",
        gaps[10], gaps[0], gaps[19]
    );
    s.send("unmount");
    s.expect("@@unmounted");
    assert_eq!(mounts(&h.mnt), 0);
}
