//! FUSE-over-io_uring: one ring per kernel queue (one per possible CPU),
//! each owned by a pinned thread that registers `depth` entries and runs
//! the commit-and-fetch loop (fuse-io-uring.md §3). A deferred read keeps
//! its entry in userspace; its answer arrives through the core's mailbox
//! and an eventfd read that is always armed on the same ring.
//!
//! Entries held by deferred reads are lost to the queue until answered, and
//! the kernel routes a request only to its CPU's queue; so that slow reads
//! never starve that CPU's metadata, the queue registers more entries
//! (REGISTER works on a live queue, see docs/fusedev.md) whenever fewer
//! than `depth` entries are free, up to `max` entries.
//!
//! Depends on `serving` (what the session's threads share), `reply`,
//! `deferred` and `sys`; only the session depends on it.

use std::fs::File;
use std::io::{self, Write};
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use io_uring::{IoUring, cqueue, opcode, squeue::Entry128, types};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::abi::{InHeader, OutHeader, UringCmdReq, UringReqHeader, uring_cmd};
use crate::deferred::{DeferSeed, ReplySink};
use crate::fs::Filesystem;
use crate::reply::Outcome;
use crate::request::{self, Operation};
use crate::serving::Shared;
use crate::sync::lock;
use crate::sys;
use crate::types::{Errno, Unique};

/// user_data of the eventfd read; entries use their index.
const WAKE: u64 = u64::MAX;

/// A deferred answer: the entry it belongs to, the request, the reply.
type Answer = (u32, Unique, Result<Vec<u8>, Errno>);

/// Deferred answers waiting for their core.
struct Mailbox {
    queue: Mutex<Vec<Answer>>,
    wake: Arc<File>,
}

impl ReplySink for Mailbox {
    fn send(&self, token: u64, unique: Unique, result: Result<&[u8], Errno>) {
        let answer = (token as u32, unique, result.map(<[u8]>::to_vec));
        lock(&self.queue).push(answer);
        // The guard is gone: the eventfd write happens unlocked.
        if let Err(e) = (&*self.wake).write_all(&1u64.to_ne_bytes()) {
            tracing::warn!(error = %e, "waking a FUSE ring");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Registered or committed: the kernel owns the buffers.
    InKernel,
    /// Holding a deferred request until its answer comes.
    Deferred { unique: Unique, commit_id: u64 },
    /// Finished for good (connection gone).
    Dead,
}

/// One ring entry: the buffers the kernel copies requests into and replies
/// out of. Boxed so their addresses never move while registered (the
/// entry itself may move when the queue's Vec grows).
struct RingEntry {
    header: Box<UringReqHeader>,
    payload: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
    slot: Slot,
}

impl RingEntry {
    fn new(payload_len: usize) -> RingEntry {
        let mut header = Box::new(UringReqHeader::new_zeroed());
        let mut payload = vec![0u8; payload_len].into_boxed_slice();
        let iov = Box::new([
            libc::iovec {
                iov_base: (&mut *header as *mut UringReqHeader).cast(),
                iov_len: size_of::<UringReqHeader>(),
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload.len(),
            },
        ]);
        RingEntry {
            header,
            payload,
            iov,
            slot: Slot::InKernel,
        }
    }
}

/// Sets `sqe->len` (byte 24), which the io-uring crate's UringCmd80 has no
/// setter for; REGISTER needs it to be the iovec count.
fn with_len(entry: Entry128, len: u32) -> Entry128 {
    const _: () = assert!(size_of::<Entry128>() == 128);
    // SAFETY: Entry128 is repr(C), 128 bytes of plain integer SQE fields
    // (no references, no padding invariants); any byte pattern is valid.
    let mut bytes: [u8; 128] = unsafe { std::mem::transmute(entry) };
    bytes[24..28].copy_from_slice(&len.to_le_bytes());
    // SAFETY: as above, the bytes came from a valid Entry128.
    unsafe { std::mem::transmute::<[u8; 128], Entry128>(bytes) }
}

fn cmd(qid: u16, commit_id: u64) -> [u8; 80] {
    let req = UringCmdReq {
        flags: 0,
        commit_id,
        qid,
        padding: [0; 6],
    };
    let mut out = [0u8; 80];
    out[..size_of::<UringCmdReq>()].copy_from_slice(req.as_bytes());
    out
}

struct Queue {
    ring: IoUring<Entry128, cqueue::Entry>,
    qid: u16,
}

impl Queue {
    fn push(&mut self, sqe: &Entry128) -> io::Result<()> {
        loop {
            // SAFETY: every SQE we push points only at buffers owned by a
            // RingEntry or the wake buffer, which live until the ring is
            // dropped (`QueueServer` declares the ring first, so it drops first).
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn register(&mut self, index: usize, entry: &RingEntry) -> io::Result<()> {
        let sqe = opcode::UringCmd80::new(types::Fixed(0), uring_cmd::REGISTER)
            .cmd(cmd(self.qid, 0))
            .addr(Some(entry.iov.as_ptr() as u64))
            .build()
            .user_data(index as u64);
        self.push(&with_len(sqe, 2))
    }

    fn commit(&mut self, index: usize, commit_id: u64) -> io::Result<()> {
        let sqe = opcode::UringCmd80::new(types::Fixed(0), uring_cmd::COMMIT_AND_FETCH)
            .cmd(cmd(self.qid, commit_id))
            .build()
            .user_data(index as u64);
        self.push(&sqe)
    }

    fn arm_wake(&mut self, fd: &File, buf: &mut [u8; 8]) -> io::Result<()> {
        let sqe = opcode::Read::new(types::Fd(fd.as_raw_fd()), buf.as_mut_ptr(), 8)
            .build()
            .user_data(WAKE);
        self.push(&Entry128::from(sqe))
    }
}

/// Puts a reply into an entry's buffers.
fn fill_reply(entry: &mut RingEntry, unique: Unique, result: Result<usize, Errno>) {
    let (error, len) = match result {
        Ok(n) => (0, n),
        Err(e) => (-e.0, 0),
    };
    let out = OutHeader {
        len: (16 + len) as u32,
        error,
        unique: unique.0,
    };
    entry.header.in_out[..16].copy_from_slice(out.as_bytes());
    entry.header.ring_ent_in_out.payload_sz = len as u32;
}

/// Serves kernel queue `qid` until the connection ends: `depth` entries
/// registered up front, growing to at most `max` while deferred reads hold
/// entries.
pub(crate) fn serve_queue<F: Filesystem + ?Sized>(
    fuse: Arc<File>,
    qid: u16,
    depth: u16,
    max: u16,
    shared: &Shared<F>,
) -> io::Result<()> {
    QueueServer::start(&fuse, qid, depth, max, shared)?.run()
}

/// A ring for `max` entries and the wake read. One thread creates,
/// submits to and reaps it, so the kernel may skip cross-thread locking
/// (SINGLE_ISSUER) and run request delivery as task work only when we
/// wait (DEFER_TASKRUN). Older kernels refuse the flags: retry without.
fn build_ring(depth: usize, max: usize) -> io::Result<IoUring<Entry128, cqueue::Entry>> {
    let sq_len = (depth as u32 + 2).next_power_of_two();
    // One CQE per entry at most is outstanding, plus the wake read: size
    // the CQ for the grown queue so completions never overflow.
    let cq_len = (max as u32 + 2).next_power_of_two() * 2;
    match IoUring::<Entry128, cqueue::Entry>::builder()
        .setup_cqsize(cq_len)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(sq_len)
    {
        Ok(r) => Ok(r),
        Err(_) => IoUring::<Entry128, cqueue::Entry>::builder()
            .setup_cqsize(cq_len)
            .build(sq_len),
    }
}

/// One queue's serving state, owned by its thread.
struct QueueServer<'a, F: ?Sized> {
    /// Declared before the buffers it points at: fields drop in order, so
    /// the ring goes first and kernel-owned buffers are never freed while
    /// the kernel may still write them.
    q: Queue,
    entries: Vec<RingEntry>,
    wake_buf: Box<[u8; 8]>,
    mailbox: Arc<Mailbox>,
    seed: DeferSeed,
    shared: &'a Shared<F>,
    payload_len: usize,
    depth: usize,
    max: usize,
    /// A copy of a request's payload, decoded while the entry's payload
    /// buffer takes the reply.
    rest: Vec<u8>,
    cqes: Vec<(u64, i32)>,
    /// The connection is gone: stop once no entry is in the kernel.
    gone: bool,
    /// Entries answering nothing until their deferred read is answered.
    held: usize,
    warned_full: bool,
}

impl<'a, F: Filesystem + ?Sized> QueueServer<'a, F> {
    /// Sets the queue up: buffers, mailbox, ring, `depth` entries
    /// registered, the wake read armed, all submitted.
    fn start(
        fuse: &File,
        qid: u16,
        depth: u16,
        max: u16,
        shared: &'a Shared<F>,
    ) -> io::Result<Self> {
        let payload_len = shared.negotiated.max_write.max(8192);
        let (depth, max) = (
            usize::from(depth.max(1)),
            usize::from(max.max(depth.max(1))),
        );
        let mailbox = Arc::new(Mailbox {
            queue: Mutex::new(Vec::new()),
            wake: Arc::new(File::from(sys::eventfd()?)),
        });
        shared.stop.register(mailbox.wake.clone());
        let sink: Arc<dyn ReplySink> = mailbox.clone();
        let ring = build_ring(depth, max)?;
        ring.submitter().register_files(&[fuse.as_raw_fd()])?;
        let mut server = QueueServer {
            q: Queue { ring, qid },
            entries: (0..depth).map(|_| RingEntry::new(payload_len)).collect(),
            wake_buf: Box::new([0u8; 8]),
            seed: DeferSeed::new(sink, shared.pending.clone()),
            mailbox,
            shared,
            payload_len,
            depth,
            max,
            rest: vec![0u8; payload_len],
            cqes: Vec::with_capacity(max + 1),
            gone: false,
            held: 0,
            warned_full: false,
        };
        for (i, e) in server.entries.iter().enumerate() {
            server.q.register(i, e)?;
        }
        shared
            .stats
            .ring_entries
            .fetch_add(depth as u64, Ordering::Relaxed);
        server
            .q
            .arm_wake(&server.mailbox.wake, &mut server.wake_buf)?;
        server.q.ring.submit()?;
        Ok(server)
    }

    /// The commit-and-fetch loop, until the connection ends.
    fn run(mut self) -> io::Result<()> {
        loop {
            // Shutdown: the connection was aborted, so every entry still in
            // the kernel completes with an error; entries held by deferred
            // reads were released by the kernel's teardown and have nothing
            // to wait for.
            if self.shared.stop.is_stopping() {
                self.gone = true;
            }
            if self.entries.iter().all(|e| e.slot == Slot::Dead)
                || (self.gone && self.entries.iter().all(|e| e.slot != Slot::InKernel))
            {
                break;
            }
            match self.q.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            self.cqes.clear();
            let completed = self
                .q
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()));
            self.cqes.extend(completed);
            for i in 0..self.cqes.len() {
                let (user_data, res) = self.cqes[i];
                if user_data == WAKE {
                    self.deliver_answers()?;
                } else {
                    self.complete(user_data as usize, res)?;
                }
            }
            if !self.gone {
                self.grow()?;
            }
        }
        tracing::debug!(qid = self.q.qid, "FUSE ring queue done");
        Ok(())
    }

    /// The wake read completed: copies each deferred answer waiting in the
    /// mailbox into its entry and commits it, then re-arms the read.
    fn deliver_answers(&mut self) -> io::Result<()> {
        // The mailbox's lock is held only for the swap, not the commits.
        let answers = std::mem::take(&mut *lock(&self.mailbox.queue));
        for (slot, unique, result) in answers {
            let Some(e) = self.entries.get_mut(slot as usize) else {
                continue;
            };
            let Slot::Deferred {
                unique: u,
                commit_id,
            } = e.slot
            else {
                continue;
            };
            if u != unique {
                continue;
            }
            let r = result.map(|data| {
                let n = data.len().min(e.payload.len());
                e.payload[..n].copy_from_slice(&data[..n]);
                n
            });
            fill_reply(e, unique, r);
            e.slot = Slot::InKernel;
            self.held -= 1;
            self.q.commit(slot as usize, commit_id)?;
        }
        if !self.gone {
            self.q.arm_wake(&self.mailbox.wake, &mut self.wake_buf)?;
        }
        Ok(())
    }

    /// Entry `index` completed with `res`: a request to serve, or the end
    /// of the entry.
    fn complete(&mut self, index: usize, res: i32) -> io::Result<()> {
        if res < 0 {
            match -res {
                libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV => {
                    self.gone = true
                }
                errno => tracing::error!(qid = self.q.qid, errno, "FUSE ring entry failed"),
            }
            self.entries[index].slot = Slot::Dead;
            return Ok(());
        }
        self.shared.stats.ring.fetch_add(1, Ordering::Relaxed);
        let hdr: UringReqHeader = *self.entries[index].header;
        let commit_id = hdr.ring_ent_in_out.commit_id;
        let Ok((in_header, _)) = InHeader::read_from_prefix(&hdr.in_out[..]) else {
            return Ok(());
        };
        let unique = Unique(in_header.unique);
        let outcome = self.serve(index, &hdr, &in_header);
        let e = &mut self.entries[index];
        match outcome {
            Outcome::Reply(n) => fill_reply(e, unique, Ok(n)),
            Outcome::Error(err) => fill_reply(e, unique, Err(err)),
            // Requests that take no answer never come through the ring;
            // re-arm the entry all the same.
            Outcome::NoReply => fill_reply(e, unique, Ok(0)),
            Outcome::Deferred => {
                e.slot = Slot::Deferred { unique, commit_id };
                self.held += 1;
                return Ok(());
            }
        }
        self.q.commit(index, commit_id)
    }

    /// Decodes the request in entry `index` and dispatches it; the reply
    /// payload goes into the entry's payload buffer.
    fn serve(&mut self, index: usize, hdr: &UringReqHeader, in_header: &InHeader) -> Outcome {
        let e = &mut self.entries[index];
        let rest_len = (hdr.ring_ent_in_out.payload_sz as usize).min(e.payload.len());
        self.rest[..rest_len].copy_from_slice(&e.payload[..rest_len]);
        match request::decode(in_header, &hdr.op_in, &self.rest[..rest_len]) {
            Ok(req) if matches!(req.op, Operation::Interrupt { .. }) => Outcome::Reply(0),
            Ok(req) => {
                self.seed.unique = Unique(in_header.unique);
                self.seed.token = index as u64;
                self.shared.dispatch(&req, &mut e.payload, &self.seed)
            }
            Err(err) => {
                tracing::warn!(qid = self.q.qid, error = %err, "malformed FUSE request");
                Outcome::Error(Errno::EINVAL)
            }
        }
    }

    /// Keeps `depth` entries free for new requests while deferred reads
    /// hold others. The kernel hands a new entry only requests that arrive
    /// after it (fuse_uring_do_register does not look at the queue's
    /// waiting list), so this grows before the queue runs dry.
    fn grow(&mut self) -> io::Result<()> {
        let live = self.entries.iter().filter(|e| e.slot != Slot::Dead).count();
        let free = live - self.held;
        let qid = self.q.qid;
        if free < self.depth && self.entries.len() < self.max {
            let add = (self.depth - free).min(self.max - self.entries.len());
            for _ in 0..add {
                self.entries.push(RingEntry::new(self.payload_len));
                let i = self.entries.len() - 1;
                self.q.register(i, &self.entries[i])?;
            }
            self.shared
                .stats
                .ring_entries
                .fetch_add(add as u64, Ordering::Relaxed);
            let entries = self.entries.len();
            tracing::debug!(qid, entries, held = self.held, "FUSE ring queue grew");
        } else if free == 0 && !self.warned_full {
            self.warned_full = true;
            tracing::warn!(
                qid,
                entries = self.entries.len(),
                "every entry of this FUSE ring queue is held by a deferred read; new \
                 requests from this CPU wait until one is answered (raise ring_max_entries)"
            );
        }
        Ok(())
    }
}
