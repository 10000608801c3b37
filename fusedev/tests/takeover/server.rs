//! The test server for `takeover.rs`: this same test binary, re-run as a
//! child process with `TS_MODE` set (so a kill -9 kills a whole serving
//! process, as in production). It mounts (or takes over, from the keeper)
//! a tiny read-only filesystem: `hello`, `big`, and `slow`, whose reads at
//! offset 0 are held (deferred) once `TS_PASS_SLOW` of them were answered.
//!
//! Protocol with the test: lines on stdout starting with `@@` (`@@ready`,
//! `@@held N`, `@@handed-over N`); commands on stdin (`release-one`,
//! `handover`, `unmount`).

use std::ffi::OsStr;
use std::io::BufRead;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringstar_fusedev::{
    AttrReply, Ctx, DeferredRead, DirOut, Entry, Errno, FileAttr, FileHandle, FileType, Filesystem,
    Ino, MountOptions, Opened, ReadOut, ReadResult, Session, TakeoverState,
};
use ringstar_keeper::Keeper;

pub const ENTRY: &str = "mount";
pub const HELLO: &[u8] = b"hello across a takeover\n";
pub const FILES: [(&str, u64); 3] = [("hello", 2), ("big", 3), ("slow", 4)];

pub fn content(ino: u64) -> Vec<u8> {
    match ino {
        2 => HELLO.to_vec(),
        3 => pattern(300_000, 3),
        4 => pattern(70_000, 9),
        _ => Vec::new(),
    }
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// The filesystem: answers from memory; `slow` may hold.
struct TinyFs {
    pass_slow: usize,
    slow_seen: AtomicUsize,
    held: Mutex<Vec<(DeferredRead, Vec<u8>)>>,
}

impl TinyFs {
    fn attr(ino: u64) -> FileAttr {
        if ino == 1 {
            return FileAttr::new(Ino(1), FileType::Directory, 0, 0o755);
        }
        FileAttr::new(
            Ino(ino),
            FileType::RegularFile,
            content(ino).len() as u64,
            0o644,
        )
    }

    fn entry(ino: u64) -> Entry {
        Entry {
            attr: Self::attr(ino),
            generation: 0,
            entry_ttl: Duration::from_secs(3600),
            attr_ttl: Duration::from_secs(3600),
        }
    }

    fn release_one(&self) {
        let first = {
            let mut held = self.held.lock().unwrap();
            (!held.is_empty()).then(|| held.remove(0))
        };
        if let Some((handle, data)) = first {
            handle.reply(&data);
        }
    }
}

impl Filesystem for TinyFs {
    fn lookup(&self, _ctx: &Ctx, parent: Ino, name: &OsStr) -> Result<Entry, Errno> {
        if parent.0 != 1 {
            return Err(Errno::ENOTDIR);
        }
        FILES
            .iter()
            .find(|(n, _)| OsStr::new(n) == name)
            .map(|&(_, ino)| Self::entry(ino))
            .ok_or(Errno::ENOENT)
    }

    fn getattr(&self, _ctx: &Ctx, ino: Ino) -> Result<AttrReply, Errno> {
        Ok(AttrReply {
            attr: Self::attr(ino.0),
            ttl: Duration::from_secs(3600),
        })
    }

    /// Direct I/O: every read reaches the server, none is cached.
    fn open(&self, _ctx: &Ctx, _ino: Ino, _flags: u32) -> Result<Opened, Errno> {
        Ok(Opened {
            direct_io: true,
            ..Opened::default()
        })
    }

    fn read(
        &self,
        _ctx: &Ctx,
        ino: Ino,
        _fh: FileHandle,
        offset: u64,
        mut out: ReadOut<'_>,
    ) -> ReadResult {
        let data = content(ino.0);
        let start = (offset as usize).min(data.len());
        let max = out.buf().len();
        let slice = &data[start..(start + max).min(data.len())];
        if ino.0 == 4
            && offset == 0
            && self.slow_seen.fetch_add(1, Ordering::SeqCst) >= self.pass_slow
        {
            let (handle, deferred) = out.defer();
            let n = {
                let mut held = self.held.lock().unwrap();
                held.push((handle, slice.to_vec()));
                held.len()
            };
            println!("@@held {n}");
            return ReadResult::Deferred(deferred);
        }
        out.buf()[..slice.len()].copy_from_slice(slice);
        ReadResult::Data(slice.len())
    }

    fn readdir(
        &self,
        _ctx: &Ctx,
        _ino: Ino,
        _fh: FileHandle,
        offset: u64,
        out: &mut DirOut<'_>,
    ) -> Result<(), Errno> {
        for (i, (name, ino)) in FILES.iter().enumerate().skip(offset as usize) {
            if !out.push(OsStr::new(name), i as u64 + 1, &Self::entry(*ino)) {
                break;
            }
        }
        Ok(())
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} unset"))
}

/// Runs the server (never returns).
pub fn run() -> ! {
    let mode = env("TS_MODE");
    let mountpoint = PathBuf::from(env("TS_MNT"));
    let keeper = Keeper::connect(&PathBuf::from(env("TS_KEEPER"))).expect("keeper");
    let grace = Duration::from_millis(env("TS_GRACE_MS").parse().unwrap());
    let fs = Arc::new(TinyFs {
        pass_slow: env("TS_PASS_SLOW").parse().unwrap(),
        slow_seen: AtomicUsize::new(0),
        held: Mutex::new(Vec::new()),
    });
    let opts = MountOptions {
        takeover: true,
        pin_threads: false,
        passthrough: false,
        ..MountOptions::default()
    };
    let session = if mode == "mount" {
        let s = Session::mount(fs.clone(), &mountpoint, &opts).expect("mount");
        let state = s.takeover_state().unwrap().to_bytes();
        keeper
            .deposit(ENTRY, &s.takeover_fds().unwrap(), &state)
            .expect("deposit");
        s
    } else {
        let d = keeper.fetch(ENTRY).expect("fetch").expect("an entry");
        let state = TakeoverState::from_bytes(&d.state).expect("state");
        let s = Session::resume(fs.clone(), d.fds, &state, &opts).expect("resume");
        keeper
            .replace(
                ENTRY,
                &s.takeover_fds().unwrap(),
                &s.takeover_state().unwrap().to_bytes(),
            )
            .expect("replace");
        s
    };
    println!("@@ready");
    // One thread reads the commands: releases are served there, so they
    // work while the main thread waits in a handover.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let fs2 = fs.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let line = line.unwrap_or_default();
            if line == "release-one" {
                fs2.release_one();
            } else if tx.send(line).is_err() {
                break;
            }
        }
    });
    for line in rx {
        match line.as_str() {
            "handover" => {
                let h = session.handover(grace).expect("handover");
                let fds: Vec<_> = h.fds.iter().map(AsFd::as_fd).collect();
                keeper
                    .replace(ENTRY, &fds, &h.state.to_bytes())
                    .expect("replace");
                println!("@@handed-over {}", h.abandoned);
                std::process::exit(0);
            }
            "unmount" => {
                session.unmount().expect("unmount");
                keeper.drop_entry(ENTRY).expect("drop");
                println!("@@unmounted");
                std::process::exit(0);
            }
            _ => {}
        }
    }
    std::process::exit(0)
}

/// The reader process: FUSE I/O never happens in the test process, which
/// spawns the servers (a spawn from a process with a thread blocked in a
/// read of the mount waited for that read, and the read for the server
/// being spawned). Commands on stdin: `read NAME` (answers
/// `@@read NAME good|bad|err MSG`), `loop` (reads `hello` and `big`
/// until `stop`, then answers `@@loop OK FAILED FIRST_ERROR`).
pub fn run_reader() -> ! {
    let mnt = PathBuf::from(env("TS_MNT"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counts = Arc::new(Mutex::new((0usize, 0usize, String::new())));
    let mut looper = None;
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap_or_default();
        let mut words = line.split(' ');
        match (words.next(), words.next()) {
            (Some("read"), Some(name)) => {
                let (path, name) = (mnt.join(name), name.to_string());
                let ino = FILES.iter().find(|(n, _)| *n == name).unwrap().1;
                std::thread::spawn(move || {
                    // The verdict goes out before the file is closed:
                    // close(2) may send FLUSH (the first of a connection)
                    // and wait for its answer, which a server handing
                    // over no longer reads (the next server answers it).
                    let (verdict, file) = match open_and_read(&path, ino) {
                        Ok((d, f)) if d == content(ino) => ("good".to_string(), Some(f)),
                        Ok((d, f)) => (format!("bad {} bytes", d.len()), Some(f)),
                        Err(e) => (format!("err {e}"), None),
                    };
                    println!("@@read {name} {verdict}");
                    drop(file);
                });
            }
            (Some("loop"), _) => {
                let (stop, counts, mnt) = (stop.clone(), counts.clone(), mnt.clone());
                looper = Some(std::thread::spawn(move || read_loop(&mnt, &stop, &counts)));
            }
            (Some("stop"), _) => {
                stop.store(true, Ordering::Relaxed);
                if let Some(t) = looper.take() {
                    t.join().unwrap();
                }
                let c = counts.lock().unwrap();
                println!("@@loop {} {} {}", c.0, c.1, c.2);
            }
            _ => {}
        }
    }
    std::process::exit(0)
}

fn read_loop(
    mnt: &std::path::Path,
    stop: &std::sync::atomic::AtomicBool,
    counts: &Mutex<(usize, usize, String)>,
) {
    while !stop.load(Ordering::Relaxed) {
        for (name, ino) in [("hello", 2), ("big", 3)] {
            let r = read_exactly(&mnt.join(name), ino);
            let mut c = counts.lock().unwrap();
            match r {
                Ok(d) if d == content(ino) => c.0 += 1,
                other => {
                    c.1 += 1;
                    if c.2.is_empty() {
                        c.2 = format!("{name}: {:?}", other.map(|d| d.len()));
                    }
                }
            }
        }
    }
}

/// Opens and reads the file's known length in one read(2): one READ
/// request (direct I/O), with no read past the end to wait for — a read to
/// EOF would need one more request, which a server that stopped reading
/// for a handover does not take.
fn read_exactly(path: &std::path::Path, ino: u64) -> std::io::Result<Vec<u8>> {
    open_and_read(path, ino).map(|(data, _file)| data)
}

/// [`read_exactly`], handing back the still open file.
fn open_and_read(path: &std::path::Path, ino: u64) -> std::io::Result<(Vec<u8>, std::fs::File)> {
    use std::io::Read;
    let mut buf = vec![0u8; content(ino).len()];
    let mut file = std::fs::File::open(path)?;
    file.read_exact(&mut buf)?;
    Ok((buf, file))
}
