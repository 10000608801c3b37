//! The keeper itself: listens on a unix socket, holds named entries (fds +
//! state blob), hands them back. It knows nothing of what the fds are.
//! Depends on `wire`.
//!
//! Lifetime: it exits when told (SHUTDOWN), or once it has held nothing
//! for `idle_exit` (counted from start and from the moment the last entry
//! leaves). While it holds anything it never exits on its own. An entry
//! leaves when told, when one of its fds ends (POLLERR/POLLHUP), or when
//! its lease runs out (LEASE: nobody fetched it within the lease after
//! its holder hung up).

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
    lease: Option<Lease>,
}

/// LEASE: the entry goes `within` after its holder hangs up, unless
/// someone fetches it first.
struct Lease {
    holder: u64,
    within: Duration,
    /// When the holder hung up.
    orphaned: Option<Instant>,
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

    /// Client `id` hung up: the leases it holds start running.
    fn orphan(&mut self, id: u64) {
        for lease in self.entries.values_mut().filter_map(|e| e.lease.as_mut()) {
            if lease.holder == id && lease.orphaned.is_none() {
                lease.orphaned = Some(Instant::now());
            }
        }
    }

    /// Drops the entries whose lease ran out; how long until the next
    /// one does.
    fn expire(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let mut next: Option<Duration> = None;
        self.entries.retain(|name, e| {
            let Some(Lease {
                within,
                orphaned: Some(at),
                ..
            }) = &e.lease
            else {
                return true;
            };
            let deadline = *at + *within;
            if deadline <= now {
                tracing::warn!(
                    name,
                    within_s = within.as_secs(),
                    "entry dropped: nobody came back for it within its lease"
                );
                return false;
            }
            let left = deadline - now;
            next = Some(next.map_or(left, |n| n.min(left)));
            true
        });
        next
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
    // Each client with an id of its own (fd numbers are reused).
    let mut clients: Vec<(u64, OwnedFd)> = Vec::new();
    let mut next_id = 0u64;
    let mut empty_since = Some(Instant::now());
    loop {
        let lease_left = store.expire();
        let idle_left = match empty_since {
            Some(t) => match idle_exit.checked_sub(t.elapsed()) {
                Some(left) => Some(left),
                None if store.entries.is_empty() => {
                    tracing::info!("held nothing for the idle time; exiting");
                    return Ok(());
                }
                None => None,
            },
            None => None,
        };
        let timeout = [lease_left, idle_left]
            .into_iter()
            .flatten()
            .min()
            .map(|left| {
                Timespec::try_from(left).unwrap_or(Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                })
            });
        let ready = match wait(listener, &clients, &store, timeout.as_ref()) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for name in &ready.ended {
            store.entries.remove(name);
            tracing::info!(
                name,
                "entry dropped: one of its fds ended (its other end is gone for good, e.g. an unmounted FUSE connection)"
            );
        }
        let mut gone = Vec::new();
        for i in ready.clients {
            let (id, conn) = &clients[i];
            match serve_one(*id, conn, &mut store) {
                Some(Next::Exit) => return Ok(()),
                Some(Next::Continue) => {}
                None => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            let (id, _) = clients.swap_remove(i);
            store.orphan(id);
        }
        if ready.listener && clients.len() < MAX_CLIENTS {
            match accept_with(listener, SocketFlags::CLOEXEC) {
                Ok(c) => {
                    clients.push((next_id, c));
                    next_id += 1;
                }
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

/// What poll found: readable sockets, and entries whose fds ended.
struct Ready {
    listener: bool,
    clients: Vec<usize>,
    /// Entries one of whose fds reports POLLERR or POLLHUP.
    ended: Vec<String>,
}

/// Waits for the listener, the clients, and the end of any held fd. A
/// held fd is polled for no event: poll(2) still reports POLLERR and
/// POLLHUP, which an fd whose other end is gone for good raises (a
/// `/dev/fuse` fd once its connection is unmounted or aborted: POLLERR;
/// a pipe with one end left: POLLERR or POLLHUP; a socket whose peer
/// closed: POLLHUP). Such an entry can never be used again: holding it
/// would keep the keeper alive forever (and a reported condition stays
/// reported, so it must leave the poll set).
fn wait(
    listener: BorrowedFd<'_>,
    clients: &[(u64, OwnedFd)],
    store: &Store,
    timeout: Option<&Timespec>,
) -> Result<Ready, rustix::io::Errno> {
    let mut fds = vec![PollFd::new(&listener, PollFlags::IN)];
    fds.extend(clients.iter().map(|(_, c)| PollFd::new(c, PollFlags::IN)));
    let mut owners = Vec::new();
    for (name, entry) in &store.entries {
        for fd in &entry.fds {
            fds.push(PollFd::new(fd, PollFlags::empty()));
            owners.push(name);
        }
    }
    poll(&mut fds, timeout)?;
    let held = 1 + clients.len();
    let mut ended: Vec<String> = (held..fds.len())
        .filter(|&i| fds[i].revents().intersects(PollFlags::ERR | PollFlags::HUP))
        .map(|i| owners[i - held].clone())
        .collect();
    ended.dedup();
    Ok(Ready {
        listener: !fds[0].revents().is_empty(),
        clients: (1..held)
            .filter(|&i| !fds[i].revents().is_empty())
            .map(|i| i - 1)
            .collect(),
        ended,
    })
}

/// Serves one request from a readable client. `None`: the client hung
/// up (or broke the protocol) and is dropped.
fn serve_one(id: u64, conn: &OwnedFd, store: &mut Store) -> Option<Next> {
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
    match handle(id, conn, store, &req, msg.fds) {
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
    id: u64,
    conn: &OwnedFd,
    store: &mut Store,
    req: &Request<'_>,
    fds: Vec<OwnedFd>,
) -> Result<Next, KeeperError> {
    let entry = || Entry {
        fds,
        state: req.blob.to_vec(),
        lease: None,
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
        op::FETCH | op::TAKE => return give(id, conn, store, req),
        op::LEASE => {
            let secs = req.blob.try_into().map(u32::from_le_bytes);
            let st = match (store.entries.get_mut(req.name), secs) {
                (_, Err(_)) => status::BAD_REQUEST,
                (None, _) => status::NOT_FOUND,
                (Some(e), Ok(secs)) => {
                    e.lease = Some(Lease {
                        holder: id,
                        within: Duration::from_secs(secs.into()),
                        orphaned: None,
                    });
                    status::OK
                }
            };
            wire::answer(conn, st, b"", &[])?;
        }
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

/// FETCH (copies; the keeper keeps the entry, and the fetching client
/// holds its lease) or TAKE (the entry leaves
/// only once the answer carrying its fds is sent).
fn give(
    id: u64,
    conn: &OwnedFd,
    store: &mut Store,
    req: &Request<'_>,
) -> Result<Next, KeeperError> {
    let Some(entry) = store.entries.get_mut(req.name) else {
        wire::answer(conn, status::NOT_FOUND, b"", &[])?;
        return Ok(Next::Continue);
    };
    // Somebody came back for it: the lease is theirs now (it runs again
    // if they go without taking over).
    if let Some(lease) = &mut entry.lease {
        lease.holder = id;
        lease.orphaned = None;
    }
    let fds: Vec<BorrowedFd<'_>> = entry.fds.iter().map(AsFd::as_fd).collect();
    wire::answer(conn, status::OK, &entry.state, &fds)?;
    if req.op == op::TAKE {
        store.entries.remove(req.name);
        tracing::info!(name = req.name, "entry taken");
    }
    Ok(Next::Continue)
}
