//! The keeper's wire format: one `SOCK_SEQPACKET` message per request and
//! per answer, file descriptors riding along as `SCM_RIGHTS`. A leaf: the
//! client and the server both depend on it, never the reverse.
//!
//! Request: `MAGIC` (4 bytes) · op (1) · name length (u16 LE) · name ·
//! the rest of the message is the state blob. Answer: `MAGIC` · status (1)
//! · the rest is the blob (the state for FETCH/TAKE, the names for LIST,
//! `fds entries` for STATS, an error text otherwise).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

use crate::KeeperError;

/// Version 1 of the protocol. A keeper never needs upgrading, so a change
/// here means a new magic, answered by the old keeper with `BAD_REQUEST`.
pub(crate) const MAGIC: &[u8; 4] = b"RSK1";

/// The most fds one entry may hold (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS: usize = 250;

/// The largest message (name + state blob).
pub const MAX_MESSAGE: usize = 1 << 20;

/// Operations.
pub(crate) mod op {
    /// Store an entry; fails if the name is taken.
    pub const DEPOSIT: u8 = 1;
    /// Store an entry, closing the one it replaces.
    pub const REPLACE: u8 = 2;
    /// Get copies of an entry's fds and its state; the keeper keeps it.
    pub const FETCH: u8 = 3;
    /// Get an entry and forget it.
    pub const TAKE: u8 = 4;
    /// Close an entry's fds and forget it.
    pub const DROP: u8 = 5;
    /// The names held, one per line.
    pub const LIST: u8 = 6;
    /// Close everything and exit.
    pub const SHUTDOWN: u8 = 7;
    /// `"<fds> <entries>"`: what the keeper holds.
    pub const STATS: u8 = 8;
    /// Blob: seconds as a little-endian u32. Once the client that sent
    /// this hangs up, the entry is dropped unless a client fetches or
    /// takes it within that time. (A keeper without it answers
    /// `BAD_REQUEST`, and holds as before.)
    pub const LEASE: u8 = 9;
}

/// Answer statuses.
pub(crate) mod status {
    pub const OK: u8 = 0;
    pub const NOT_FOUND: u8 = 1;
    pub const EXISTS: u8 = 2;
    pub const BAD_REQUEST: u8 = 3;
}

/// One message received: its bytes and the fds that came with it.
pub(crate) struct Message {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Sends one message with `fds` attached.
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> Result<(), KeeperError> {
    if fds.len() > MAX_FDS {
        return Err(KeeperError::TooManyFds(fds.len()));
    }
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total > MAX_MESSAGE {
        return Err(KeeperError::TooLarge(total));
    }
    let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(KeeperError::TooManyFds(fds.len()));
    }
    let sent = sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL)?;
    if sent != total {
        return Err(KeeperError::Protocol("a message was sent in part"));
    }
    Ok(())
}

/// Receives one message. `Ok(None)`: the peer closed the connection.
pub(crate) fn recv(sock: BorrowedFd<'_>) -> Result<Option<Message>, KeeperError> {
    let mut bytes = vec![0u8; MAX_MESSAGE];
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = {
        let mut iov = [IoSliceMut::new(&mut bytes)];
        recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?
    };
    // Take ownership of every fd first, so none leaks on an error below.
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    if got
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(KeeperError::Protocol("a message or its fds were truncated"));
    }
    if got.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    bytes.truncate(got.bytes);
    Ok(Some(Message { bytes, fds }))
}

/// A request, decoded.
pub(crate) struct Request<'a> {
    pub(crate) op: u8,
    pub(crate) name: &'a str,
    pub(crate) blob: &'a [u8],
}

/// Encodes a request's head (the blob follows as its own part).
pub(crate) fn request_head(op: u8, name: &str) -> Result<Vec<u8>, KeeperError> {
    let len = u16::try_from(name.len()).map_err(|_| KeeperError::Protocol("name too long"))?;
    let mut head = Vec::with_capacity(7 + name.len());
    head.extend_from_slice(MAGIC);
    head.push(op);
    head.extend_from_slice(&len.to_le_bytes());
    head.extend_from_slice(name.as_bytes());
    Ok(head)
}

/// Decodes a request; `None` if it is malformed.
pub(crate) fn decode_request(bytes: &[u8]) -> Option<Request<'_>> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (&op, rest) = rest.split_first()?;
    let len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
    Some(Request {
        op,
        name,
        blob: &rest[2 + len..],
    })
}

/// Decodes an answer into (status, blob).
pub(crate) fn decode_answer(bytes: &[u8]) -> Result<(u8, &[u8]), KeeperError> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or(KeeperError::Protocol("answer without the magic"))?;
    let (&status, blob) = rest
        .split_first()
        .ok_or(KeeperError::Protocol("answer without a status"))?;
    Ok((status, blob))
}

/// Sends an answer.
pub(crate) fn answer(
    sock: impl AsFd,
    status: u8,
    blob: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), KeeperError> {
    send(sock.as_fd(), &[MAGIC, &[status], blob], fds)
}
