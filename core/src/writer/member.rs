//! Members (gzip members for eStargz, zstd frames for zstd:chunked) and
//! what the blob's trailer needs from them: uncompressed bytes gather in a
//! buffer and become one member when a new one must start. Members are independent, so they are compressed in parallel
//! when threads are given, and written in order; a member's compressed
//! offset is known once the members before it are written, so callers
//! name members by index and ask for offsets at the end.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use super::{OutputFormat, WriteError};
use crate::digest::{Digest, Hasher};

/// One member to compress: its index and uncompressed bytes.
type Job = (u64, Vec<u8>);
/// A compressed member, or why it failed.
type Done = (u64, io::Result<Vec<u8>>);

/// Compressor threads and their channels.
struct Pool {
    jobs: SyncSender<Job>,
    done: Receiver<Done>,
    threads: usize,
}

/// Writes members in order; tracks the compressed offset of each, the
/// blob digest and the DiffID (digest of everything uncompressed).
pub(super) struct MemberWriter<W: Write> {
    out: BufWriter<W>,
    codec: Codec,
    pool: Option<Pool>,
    pending: Vec<u8>,
    /// Index of the member `pending` becomes.
    next_member: u64,
    /// Compressed start offset of each member written so far.
    offsets: Vec<u64>,
    /// Compressed members waiting for the ones before them.
    ready: BTreeMap<u64, Vec<u8>>,
    written: u64,
    uncompressed: u64,
    blob_hash: Hasher,
    diff_hash: Hasher,
}

/// One compressor of the blob's format.
enum Codec {
    Gzip(libdeflater::Compressor),
    Zstd(zstd::bulk::Compressor<'static>),
}

impl Codec {
    fn new(format: OutputFormat, level: i32) -> Result<Codec, WriteError> {
        let bad = || WriteError::Option(format!("compression level {level} for {format:?}"));
        Ok(match format {
            OutputFormat::Estargz | OutputFormat::ExternalToc => {
                Codec::Gzip(libdeflater::Compressor::new(
                    libdeflater::CompressionLvl::new(level).map_err(|_| bad())?,
                ))
            }
            OutputFormat::ZstdChunked => {
                Codec::Zstd(zstd::bulk::Compressor::new(level).map_err(|_| bad())?)
            }
        })
    }

    /// `data` as one member: a gzip member or a zstd frame.
    fn compress(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Codec::Gzip(c) => {
                let mut out = vec![0u8; c.gzip_compress_bound(data.len())];
                let n = c
                    .gzip_compress(data, &mut out)
                    .map_err(|e| io::Error::other(format!("gzip: {e}")))?;
                out.truncate(n);
                Ok(out)
            }
            Codec::Zstd(c) => c.compress(data),
        }
    }
}

/// Starts `threads` compressors at `level`. They end when the job sender
/// is dropped.
fn start_pool(format: OutputFormat, level: i32, threads: usize) -> Result<Pool, WriteError> {
    let (jobs_tx, jobs_rx) = sync_channel::<Job>(threads * 2);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Done>();
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    for i in 0..threads {
        let mut c = Codec::new(format, level)?;
        let (jobs, done) = (jobs_rx.clone(), done_tx.clone());
        std::thread::Builder::new()
            .name(format!("compress-{i}"))
            .spawn(move || {
                loop {
                    // The lock is held only to take a job off the channel.
                    let job = jobs
                        .lock()
                        .map_err(|_| ())
                        .and_then(|rx| rx.recv().map_err(|_| ()));
                    let Ok((index, data)) = job else { return };
                    if done.send((index, c.compress(&data))).is_err() {
                        return;
                    }
                }
            })?;
    }
    Ok(Pool {
        jobs: jobs_tx,
        done: done_rx,
        threads,
    })
}

impl<W: Write> MemberWriter<W> {
    /// A writer compressing to `format` at `level` on `threads` threads
    /// (0 or 1: on the caller's).
    pub(super) fn new(
        out: W,
        format: OutputFormat,
        level: i32,
        threads: usize,
    ) -> Result<Self, WriteError> {
        let pool = if threads > 1 {
            Some(start_pool(format, level, threads)?)
        } else {
            None
        };
        Ok(MemberWriter {
            out: BufWriter::new(out),
            codec: Codec::new(format, level)?,
            pool,
            pending: Vec::new(),
            next_member: 0,
            offsets: Vec::new(),
            ready: BTreeMap::new(),
            written: 0,
            uncompressed: 0,
            blob_hash: Hasher::new(),
            diff_hash: Hasher::new(),
        })
    }

    pub(super) fn append(&mut self, data: &[u8]) {
        self.diff_hash.update(data);
        self.uncompressed += data.len() as u64;
        self.pending.extend_from_slice(data);
    }

    /// The index of the member the next appended bytes go into (after
    /// [`MemberWriter::finish_member`]: a new one).
    pub(super) fn current_member(&self) -> u64 {
        self.next_member
    }

    /// Ends the current member (nothing if it is empty).
    pub(super) fn finish_member(&mut self) -> Result<(), WriteError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let index = self.next_member;
        self.next_member += 1;
        let data = std::mem::take(&mut self.pending);
        let Some(pool) = &self.pool else {
            let member = self.codec.compress(&data)?;
            return self.write_member(member);
        };
        // Members compressed but not written are bounded: a slow one
        // holds back at most this many after it.
        let bound = (pool.threads * 3 + 2) as u64;
        pool.jobs
            .send((index, data))
            .map_err(|_| io::Error::other("a compressor thread stopped"))?;
        while self.offsets.len() as u64 + bound <= index {
            self.take_done(true)?;
        }
        while self.take_done(false)? {}
        Ok(())
    }

    /// Takes one compressed member off the pool (waiting for one if
    /// `wait`) and writes what is in order; false when none was there.
    fn take_done(&mut self, wait: bool) -> Result<bool, WriteError> {
        let Some(pool) = &self.pool else {
            return Ok(false);
        };
        let (index, member) = if wait {
            pool.done
                .recv()
                .map_err(|_| io::Error::other("a compressor thread stopped"))?
        } else {
            match pool.done.try_recv() {
                Ok(d) => d,
                Err(_) => return Ok(false),
            }
        };
        self.ready.insert(index, member?);
        while let Some(m) = self.ready.remove(&(self.offsets.len() as u64)) {
            self.write_member(m)?;
        }
        Ok(true)
    }

    fn write_member(&mut self, member: Vec<u8>) -> Result<(), WriteError> {
        self.offsets.push(self.written);
        self.write_raw(&member)
    }

    /// Ends the current member and waits for every member to be written;
    /// returns each member's compressed offset, by index.
    pub(super) fn drain(&mut self) -> Result<&[u64], WriteError> {
        self.finish_member()?;
        while (self.offsets.len() as u64) < self.next_member {
            self.take_done(true)?;
        }
        Ok(&self.offsets)
    }

    /// Bytes written so far (every member drained: the blob's length).
    pub(super) fn written(&self) -> u64 {
        self.written
    }

    pub(super) fn write_raw(&mut self, data: &[u8]) -> Result<(), WriteError> {
        self.out.write_all(data)?;
        self.blob_hash.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Uncompressed bytes in the member under way.
    pub(super) fn pending_len(&self) -> u64 {
        self.pending.len() as u64
    }

    /// Flushes the output; returns the blob's length and digest, and the
    /// digest and length of everything uncompressed (the DiffID).
    pub(super) fn close(self) -> Result<(u64, Digest, Digest, u64), WriteError> {
        let mut out = self.out;
        out.flush()?;
        Ok((
            self.written,
            self.blob_hash.finish(),
            self.diff_hash.finish(),
            self.uncompressed,
        ))
    }
}
