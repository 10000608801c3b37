//! The client side: connect to a keeper and deposit, replace, fetch, take
//! or drop named entries (fds + a state blob). Depends on `wire`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, connect, socket_with};

use crate::KeeperError;
use crate::wire::{self, op, status};

/// What a keeper holds under one name: fds and the state that says what
/// they are.
#[derive(Debug)]
pub struct Deposit {
    /// The fds, in the order they were deposited.
    pub fds: Vec<OwnedFd>,
    /// The state blob deposited with them.
    pub state: Vec<u8>,
}

/// A connection to a keeper. Each call is one request and one answer.
#[derive(Debug)]
pub struct Keeper {
    sock: OwnedFd,
}

impl Keeper {
    /// Connects to the keeper listening on `path`. Answers are awaited at
    /// most 30 s: a keeper that does not answer is an error, not a hang.
    pub fn connect(path: &Path) -> Result<Keeper, KeeperError> {
        let sock = socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        connect(&sock, &SocketAddrUnix::new(path)?)?;
        rustix::net::sockopt::set_socket_timeout(
            &sock,
            rustix::net::sockopt::Timeout::Recv,
            Some(Duration::from_secs(30)),
        )?;
        Ok(Keeper { sock })
    }

    /// Connects to a keeper that may still be starting: retries until
    /// `timeout` (every 5 ms; the socket appears once it listens).
    pub fn connect_wait(path: &Path, timeout: Duration) -> Result<Keeper, KeeperError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match Keeper::connect(path) {
                Ok(k) => return Ok(k),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn call(
        &self,
        opcode: u8,
        name: &str,
        blob: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(u8, Deposit), KeeperError> {
        let head = wire::request_head(opcode, name)?;
        wire::send(self.sock.as_fd(), &[&head, blob], fds)?;
        let msg = wire::recv(self.sock.as_fd())?.ok_or(KeeperError::Closed)?;
        let (st, blob) = wire::decode_answer(&msg.bytes)?;
        if st == status::BAD_REQUEST {
            return Err(KeeperError::Refused(
                String::from_utf8_lossy(blob).into_owned(),
            ));
        }
        let state = blob.to_vec();
        Ok((
            st,
            Deposit {
                fds: msg.fds,
                state,
            },
        ))
    }

    /// Stores `fds` and `state` under `name`. Fails with
    /// [`KeeperError::Exists`] if the name is taken.
    pub fn deposit(
        &self,
        name: &str,
        fds: &[BorrowedFd<'_>],
        state: &[u8],
    ) -> Result<(), KeeperError> {
        match self.call(op::DEPOSIT, name, state, fds)?.0 {
            status::OK => Ok(()),
            status::EXISTS => Err(KeeperError::Exists(name.to_string())),
            st => Err(KeeperError::Status(st)),
        }
    }

    /// Stores `fds` and `state` under `name`, closing whatever the keeper
    /// held under it before.
    pub fn replace(
        &self,
        name: &str,
        fds: &[BorrowedFd<'_>],
        state: &[u8],
    ) -> Result<(), KeeperError> {
        self.expect_ok(op::REPLACE, name, state, fds)
    }

    /// Copies of the fds and the state under `name`; the keeper keeps
    /// holding them. `None` if it holds nothing under that name.
    pub fn fetch(&self, name: &str) -> Result<Option<Deposit>, KeeperError> {
        self.get(op::FETCH, name)
    }

    /// The fds and the state under `name`, which the keeper then forgets.
    pub fn take(&self, name: &str) -> Result<Option<Deposit>, KeeperError> {
        self.get(op::TAKE, name)
    }

    fn get(&self, opcode: u8, name: &str) -> Result<Option<Deposit>, KeeperError> {
        match self.call(opcode, name, &[], &[])? {
            (status::OK, deposit) => Ok(Some(deposit)),
            (status::NOT_FOUND, _) => Ok(None),
            (st, _) => Err(KeeperError::Status(st)),
        }
    }

    /// Closes what the keeper holds under `name`. Returns whether it held
    /// anything.
    pub fn drop_entry(&self, name: &str) -> Result<bool, KeeperError> {
        match self.call(op::DROP, name, &[], &[])?.0 {
            status::OK => Ok(true),
            status::NOT_FOUND => Ok(false),
            st => Err(KeeperError::Status(st)),
        }
    }

    /// The names held.
    pub fn list(&self) -> Result<Vec<String>, KeeperError> {
        let (_, d) = self.call(op::LIST, "", &[], &[])?;
        let text = String::from_utf8_lossy(&d.state).into_owned();
        Ok(text.lines().map(str::to_string).collect())
    }

    /// How many fds the keeper holds, all entries together.
    pub fn held_fds(&self) -> Result<usize, KeeperError> {
        let (_, d) = self.call(op::STATS, "", &[], &[])?;
        let text = String::from_utf8_lossy(&d.state).into_owned();
        text.split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or(KeeperError::Protocol("malformed STATS answer"))
    }

    /// Once this connection is gone (its process exited or died), the
    /// keeper drops `name` unless another client fetches or takes it
    /// within `within`: a holder nobody comes back for lets go, so the
    /// callers waiting on what the fds serve get an error instead of
    /// waiting forever. A client that fetches the entry holds the lease
    /// from then on; a REPLACE or DEPOSIT starts without one.
    pub fn lease(&self, name: &str, within: Duration) -> Result<(), KeeperError> {
        let secs = u32::try_from(within.as_secs()).unwrap_or(u32::MAX);
        match self.call(op::LEASE, name, &secs.to_le_bytes(), &[])?.0 {
            status::OK => Ok(()),
            status::NOT_FOUND => Err(KeeperError::NotFound(name.to_string())),
            st => Err(KeeperError::Status(st)),
        }
    }

    /// Tells the keeper to close everything and exit.
    pub fn shutdown(&self) -> Result<(), KeeperError> {
        self.expect_ok(op::SHUTDOWN, "", &[], &[])
    }

    fn expect_ok(
        &self,
        opcode: u8,
        name: &str,
        blob: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), KeeperError> {
        match self.call(opcode, name, blob, fds)?.0 {
            status::OK => Ok(()),
            st => Err(KeeperError::Status(st)),
        }
    }
}
