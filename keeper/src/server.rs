//! The keeper itself: listens on a unix socket, holds named entries (fds +
//! state blob), hands them back. It knows nothing of what the fds are.
//! Depends on `wire`.
//!
//! Lifetime: it exits when told (SHUTDOWN), or once it has held nothing
//! for `idle_exit` (counted from start and from the moment the last entry
//! leaves). While it holds anything it never exits on its own.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::net::{
    AddressFamily, SocketAddrUnix, SocketFlags, SocketType, accept_with, bind, listen, socket_with,
};

use crate::KeeperError;
use crate::wire::{self, Request, op, status};

/// One named entry.
struct Entry {
    fds: Vec<OwnedFd>,
    state: Vec<u8>,
}

/// What the keeper holds.
#[derive(Default)]
struct Store {
    entries: BTreeMap<String, Entry>,
}

impl Store {
    fn fd_count(&self) -> usize {
        self.entries.values().map(|e| e.fds.len()).sum()
    }
}

/// Whether the keeper goes on after a request.
#[derive(PartialEq)]
enum Next {
    Continue,
    Exit,
}

/// Binds `path` (replacing a stale socket file; refusing if a keeper
/// answers there) and serves until told to stop or idle for `idle_exit`.
pub fn serve(path: &Path, idle_exit: Duration) -> Result<(), KeeperError> {
    if path.exists() {
        if crate::Keeper::connect(path).is_ok() {
            return Err(KeeperError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path)?;
    }
    let listener = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    bind(&listener, &SocketAddrUnix::new(path)?)?;
    listen(&listener, 16)?;
    tracing::info!(socket = %path.display(), idle_exit_s = idle_exit.as_secs(), "fd keeper up");
    let r = accept_loop(listener.as_fd(), idle_exit);
    let _ = std::fs::remove_file(path);
    tracing::info!(socket = %path.display(), "fd keeper down");
    r
}

/// Clients served at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 64;

/// One thread, every client multiplexed with poll(2): a daemon may keep
/// its connection open for its whole life without keeping others out.
fn accept_loop(listener: BorrowedFd<'_>, idle_exit: Duration) -> Result<(), KeeperError> {
    let mut store = Store::default();
    let mut clients: Vec<OwnedFd> = Vec::new();
    let mut empty_since = Some(Instant::now());
    loop {
        let timeout = match empty_since {
            Some(t) => match idle_exit.checked_sub(t.elapsed()) {
                Some(left) => Some(Timespec::try_from(left).unwrap_or(Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                })),
                None => {
                    tracing::info!("held nothing for the idle time; exiting");
                    return Ok(());
                }
            },
            None => None,
        };
        let ready = match wait(listener, &clients, timeout.as_ref()) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut gone = Vec::new();
        for i in ready.clients {
            match serve_one(&clients[i], &mut store) {
                Some(Next::Exit) => return Ok(()),
                Some(Next::Continue) => {}
                None => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            clients.swap_remove(i);
        }
        if ready.listener && clients.len() < MAX_CLIENTS {
            match accept_with(listener, SocketFlags::CLOEXEC) {
                Ok(c) => clients.push(c),
                Err(e) => tracing::warn!(error = %e, "accepting a keeper client"),
            }
        }
        empty_since = match (store.entries.is_empty(), empty_since) {
            (true, None) => Some(Instant::now()),
            (true, since) => since,
            (false, _) => None,
        };
    }
}

/// What poll found readable.
struct Ready {
    listener: bool,
    clients: Vec<usize>,
}

fn wait(
    listener: BorrowedFd<'_>,
    clients: &[OwnedFd],
    timeout: Option<&Timespec>,
) -> Result<Ready, rustix::io::Errno> {
    let mut fds = vec![PollFd::new(&listener, PollFlags::IN)];
    fds.extend(clients.iter().map(|c| PollFd::new(c, PollFlags::IN)));
    poll(&mut fds, timeout)?;
    Ok(Ready {
        listener: !fds[0].revents().is_empty(),
        clients: (1..fds.len())
            .filter(|&i| !fds[i].revents().is_empty())
            .map(|i| i - 1)
            .collect(),
    })
}

/// Serves one request from a readable client. `None`: the client hung
/// up (or broke the protocol) and is dropped.
fn serve_one(conn: &OwnedFd, store: &mut Store) -> Option<Next> {
    let msg = match wire::recv(conn.as_fd()) {
        Ok(Some(m)) => m,
        Ok(None) => return None,
        Err(e) => {
            tracing::debug!(error = %e, "keeper client");
            return None;
        }
    };
    let Some(req) = wire::decode_request(&msg.bytes) else {
        let _ = wire::answer(conn, status::BAD_REQUEST, b"malformed request", &[]);
        return Some(Next::Continue);
    };
    match handle(conn, store, &req, msg.fds) {
        Ok(next) => Some(next),
        Err(e) => {
            tracing::debug!(error = %e, "answering a keeper client");
            None
        }
    }
}

/// Answers one request. Fds received with a request that does not keep
/// them are closed when `fds` drops.
fn handle(
    conn: &OwnedFd,
    store: &mut Store,
    req: &Request<'_>,
    fds: Vec<OwnedFd>,
) -> Result<Next, KeeperError> {
    let entry = || Entry {
        fds,
        state: req.blob.to_vec(),
    };
    match req.op {
        op::DEPOSIT if store.entries.contains_key(req.name) => {
            wire::answer(conn, status::EXISTS, b"", &[])?;
        }
        op::DEPOSIT | op::REPLACE => {
            let n = store.entries.insert(req.name.to_string(), entry());
            tracing::info!(name = req.name, replaced = n.is_some(), "entry stored");
            wire::answer(conn, status::OK, b"", &[])?;
        }
        op::FETCH | op::TAKE => return give(conn, store, req),
        op::DROP => {
            let st = match store.entries.remove(req.name) {
                Some(_) => status::OK,
                None => status::NOT_FOUND,
            };
            wire::answer(conn, st, b"", &[])?;
        }
        op::LIST => {
            let names: Vec<&str> = store.entries.keys().map(String::as_str).collect();
            wire::answer(conn, status::OK, names.join("\n").as_bytes(), &[])?;
        }
        op::STATS => {
            let text = format!("{} {}", store.fd_count(), store.entries.len());
            wire::answer(conn, status::OK, text.as_bytes(), &[])?;
        }
        op::SHUTDOWN => {
            store.entries.clear();
            wire::answer(conn, status::OK, b"", &[])?;
            return Ok(Next::Exit);
        }
        _ => wire::answer(conn, status::BAD_REQUEST, b"unknown operation", &[])?,
    }
    Ok(Next::Continue)
}

/// FETCH (copies; the keeper keeps the entry) or TAKE (the entry leaves
/// only once the answer carrying its fds is sent).
fn give(conn: &OwnedFd, store: &mut Store, req: &Request<'_>) -> Result<Next, KeeperError> {
    let Some(entry) = store.entries.get(req.name) else {
        wire::answer(conn, status::NOT_FOUND, b"", &[])?;
        return Ok(Next::Continue);
    };
    let fds: Vec<BorrowedFd<'_>> = entry.fds.iter().map(AsFd::as_fd).collect();
    wire::answer(conn, status::OK, &entry.state, &fds)?;
    if req.op == op::TAKE {
        store.entries.remove(req.name);
        tracing::info!(name = req.name, "entry taken");
    }
    Ok(Next::Continue)
}
