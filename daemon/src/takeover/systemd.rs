//! systemd's file-descriptor store as the fd holder: when systemd runs the
//! daemon (`NOTIFY_SOCKET` set; the unit has `FileDescriptorStoreMax=`),
//! the FUSE channels go to systemd with `FDSTORE=1` over the notify
//! socket, one named message per fd (`ringstar-fuse-<i>`, so their order
//! never depends on systemd's), and the takeover state in a memfd named
//! `ringstar-fuse-state`. On the next start systemd hands them back as
//! `LISTEN_FDS` / `LISTEN_FDNAMES` (sd_listen_fds(3), sd_notify(3)).

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix};

/// The name prefix of the stored FUSE channels.
const FD_NAME: &str = "ringstar-fuse-";
/// The name of the memfd holding the state.
const STATE_NAME: &str = "ringstar-fuse-state";

/// Why the fd store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FdStoreError {
    #[error("NOTIFY_SOCKET {0:?} is not a usable address")]
    Address(String),
    #[error("sending to systemd's notify socket")]
    Send(#[source] std::io::Error),
    #[error("keeping the state in a memfd")]
    Memfd(#[source] std::io::Error),
}

/// What the fd store hands back: the FUSE channels (main first) and the
/// takeover state.
pub type Stored = (Vec<OwnedFd>, Vec<u8>);

/// systemd's fd store for this service.
#[derive(Debug)]
pub struct FdStore {
    socket: String,
    /// What systemd handed back at start (taken once).
    received: Option<Stored>,
    /// How many channels the last `store` sent.
    stored: usize,
}

impl FdStore {
    /// The fd store when systemd runs us (`NOTIFY_SOCKET`), with whatever
    /// it handed back in `LISTEN_FDS` for this process.
    pub fn from_env() -> Result<Option<FdStore>, FdStoreError> {
        let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let socket = socket.to_string_lossy().into_owned();
        let received = received_fds()?;
        let stored = received.as_ref().map_or(0, |(fds, _)| fds.len());
        Ok(Some(FdStore {
            socket,
            received,
            stored,
        }))
    }

    /// The channels (main first) and state systemd handed back, once.
    pub fn take(&mut self) -> Option<Stored> {
        self.received.take()
    }

    /// Stores `fds` and `state`, replacing what was stored.
    pub fn store(&mut self, fds: &[BorrowedFd<'_>], state: &[u8]) -> Result<(), FdStoreError> {
        self.remove();
        for (i, fd) in fds.iter().enumerate() {
            self.send(&format!("FDSTORE=1\nFDNAME={FD_NAME}{i}\n"), &[*fd])?;
        }
        let memfd = rustix::fs::memfd_create(STATE_NAME, rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| FdStoreError::Memfd(e.into()))?;
        std::io::Write::write_all(
            &mut std::fs::File::from(memfd.try_clone().map_err(FdStoreError::Memfd)?),
            state,
        )
        .map_err(FdStoreError::Memfd)?;
        self.send(
            &format!("FDSTORE=1\nFDNAME={STATE_NAME}\n"),
            &[memfd.as_fd()],
        )?;
        self.stored = fds.len();
        Ok(())
    }

    /// Asks systemd to close what it stores for us.
    pub fn remove(&mut self) {
        let names = (0..self.stored)
            .map(|i| format!("{FD_NAME}{i}"))
            .chain([STATE_NAME.to_string()]);
        for name in names {
            if let Err(e) = self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[]) {
                tracing::warn!(error = %e, "asking systemd to drop a stored fd");
            }
        }
        self.stored = 0;
    }

    fn send(&self, message: &str, fds: &[BorrowedFd<'_>]) -> Result<(), FdStoreError> {
        let addr = match self.socket.strip_prefix('@') {
            Some(abs) => SocketAddrUnix::new_abstract_name(abs.as_bytes()),
            None => SocketAddrUnix::new(self.socket.as_str()),
        }
        .map_err(|_| FdStoreError::Address(self.socket.clone()))?;
        let sock = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::DGRAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| FdStoreError::Send(e.into()))?;
        let mut space =
            vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(FdStoreError::Send(std::io::Error::other(
                "too many fds for one message",
            )));
        }
        rustix::net::sendmsg_addr(
            &sock,
            &addr,
            &[std::io::IoSlice::new(message.as_bytes())],
            &mut control,
            SendFlags::empty(),
        )
        .map_err(|e| FdStoreError::Send(e.into()))?;
        Ok(())
    }
}

/// The fds systemd passed this process: `LISTEN_PID` must be ours; fds
/// start at 3 (`SD_LISTEN_FDS_START`). Ours are taken, the others closed
/// (nothing else of ours is stored there).
fn received_fds() -> Result<Option<Stored>, FdStoreError> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    if !pid_ok || count == 0 {
        return Ok(None);
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let names: Vec<&str> = names.split(':').collect();
    let mut channels: Vec<(usize, OwnedFd)> = Vec::new();
    let mut state = None;
    // At most 4096: systemd's own bound on a service's stored fds.
    for i in 0..count.min(4096) {
        let fd = listen_fd(3 + i as i32);
        let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
        match names.get(i).copied() {
            Some(STATE_NAME) => state = Some(fd),
            Some(n) => match n
                .strip_prefix(FD_NAME)
                .and_then(|k| k.parse::<usize>().ok())
            {
                Some(k) => channels.push((k, fd)),
                None => drop(fd),
            },
            None => drop(fd),
        }
    }
    let Some(state) = state else {
        return Ok(None);
    };
    channels.sort_by_key(|(k, _)| *k);
    if channels.iter().enumerate().any(|(i, (k, _))| i != *k) {
        tracing::warn!("systemd handed back an incomplete set of FUSE channels; mounting anew");
        return Ok(None);
    }
    let mut bytes = Vec::new();
    let mut file = std::fs::File::from(state);
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(FdStoreError::Memfd)?;
    // The state is a few hundred bytes; a stored memfd of ours is never
    // bigger than one page of JSON, so a bound keeps a stranger's out.
    file.take(1 << 20)
        .read_to_end(&mut bytes)
        .map_err(FdStoreError::Memfd)?;
    Ok(Some((
        channels.into_iter().map(|(_, fd)| fd).collect(),
        bytes,
    )))
}

/// Takes ownership of an fd systemd passed.
fn listen_fd(raw: i32) -> OwnedFd {
    // SAFETY: systemd passes LISTEN_FDS open fds from 3 on to the process
    // named by LISTEN_PID (checked by the caller); nothing else in this
    // process owns them, and each is taken once.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

    /// What systemd's side of the notify socket receives: each message's
    /// text and fds (the real wire format: one datagram, SCM_RIGHTS).
    fn receive(sock: &std::os::unix::net::UnixDatagram) -> (String, Vec<OwnedFd>) {
        let mut buf = [0u8; 4096];
        let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            sock,
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::empty(),
        )
        .unwrap();
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                fds.extend(r);
            }
        }
        (String::from_utf8_lossy(&buf[..got.bytes]).into_owned(), fds)
    }

    #[test]
    fn stores_each_channel_by_name_and_the_state_in_a_memfd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let mut store = FdStore {
            socket: path.display().to_string(),
            received: None,
            stored: 0,
        };
        let a = std::fs::File::open("/dev/null").unwrap();
        let b = std::fs::File::open("/dev/zero").unwrap();
        store.store(&[a.as_fd(), b.as_fd()], b"{\"v\":1}").unwrap();
        // Nothing stored before: the removals name only the state.
        let (m, fds) = receive(&sock);
        assert_eq!(m, "FDSTOREREMOVE=1\nFDNAME=ringstar-fuse-state\n");
        assert!(fds.is_empty());
        for i in 0..2 {
            let (m, fds) = receive(&sock);
            assert_eq!(m, format!("FDSTORE=1\nFDNAME=ringstar-fuse-{i}\n"));
            assert_eq!(fds.len(), 1);
        }
        let (m, fds) = receive(&sock);
        assert_eq!(m, "FDSTORE=1\nFDNAME=ringstar-fuse-state\n");
        let mut text = String::new();
        let mut f = std::fs::File::from(fds.into_iter().next().unwrap());
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut text).unwrap();
        assert_eq!(text, "{\"v\":1}");
        store.remove();
        let names: Vec<String> = (0..3).map(|_| receive(&sock).0).collect();
        assert_eq!(
            names,
            [
                "FDSTOREREMOVE=1\nFDNAME=ringstar-fuse-0\n",
                "FDSTOREREMOVE=1\nFDNAME=ringstar-fuse-1\n",
                "FDSTOREREMOVE=1\nFDNAME=ringstar-fuse-state\n"
            ]
        );
    }
}
