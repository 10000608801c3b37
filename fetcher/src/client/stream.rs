//! A blob read as a stream, for the image tools (a layer converted as it
//! arrives): the body is pumped by a task on the fetcher thread into a
//! small bounded channel, and read by the caller's thread. The bytes are
//! hashed as they are read, and the end of the stream is an error unless
//! they are the digest asked for.

use std::io::Read;

use bytes::{Buf, Bytes};
use http::StatusCode;
use http_body_util::BodyExt;
use ringstar_core::Digest;
use ringstar_core::digest::Hasher;
use tokio::sync::mpsc;

use crate::repository::Repository;
use crate::urls::redact;

use super::registry::refusal;
use super::transport::{Ask, Response};
use super::{FetchError, Fetcher};

/// Body frames buffered between the fetcher thread and the reader.
const FRAMES_IN_FLIGHT: usize = 32;

/// A blob being read. Its `Read` fails (never returns wrong bytes) when
/// the transfer breaks or the bytes are not the blob's digest.
pub struct BlobReader {
    frames: mpsc::Receiver<Result<Bytes, FetchError>>,
    current: Bytes,
    hasher: Hasher,
    digest: Digest,
    /// The size the registry announced (`Content-Length`), if any.
    pub size: Option<u64>,
    read: u64,
    done: bool,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("read", &self.read)
            .finish()
    }
}

impl Fetcher {
    /// Opens blob `digest` of `repo` for reading from its start.
    pub fn open_blob(&self, repo: &Repository, digest: &Digest) -> Result<BlobReader, FetchError> {
        let (repo, url) = (repo.clone(), repo.blob_url(&digest.to_string()));
        let idle = repo.endpoint.request_timeout;
        let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
        let size = self.block_on(move |inner| async move {
            let idle = idle.unwrap_or(inner.config.request_timeout);
            let (size, body) = inner
                .exchange(&repo, &url, Ask::get(None), |(head, body): Response| {
                    let url = url.clone();
                    async move {
                        if head.status != StatusCode::OK {
                            return Err(refusal(&url, (head, body)).await);
                        }
                        let size = head
                            .headers
                            .get(http::header::CONTENT_LENGTH)
                            .and_then(|v| v.to_str().ok()?.parse().ok());
                        Ok((size, body))
                    }
                })
                .await?;
            tokio::spawn(pump(url, body, tx, idle));
            Ok(size)
        })?;
        Ok(BlobReader {
            frames: rx,
            current: Bytes::new(),
            hasher: Hasher::new(),
            digest: *digest,
            size,
            read: 0,
            done: false,
        })
    }
}

/// Moves the body's frames into the channel until it ends, breaks, stalls
/// for `idle`, or the reader is gone.
async fn pump(
    url: String,
    mut body: hyper::body::Incoming,
    tx: mpsc::Sender<Result<Bytes, FetchError>>,
    idle: std::time::Duration,
) {
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => Err(FetchError::Timeout {
                url: redact(&url),
                after: idle,
            }),
            Ok(None) => return,
            Ok(Some(Err(e))) => Err(FetchError::Transport {
                url: redact(&url),
                reason: format!("body: {e}"),
            }),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => Ok(data),
                Err(_) => continue,
            },
        };
        let failed = frame.is_err();
        if tx.send(frame).await.is_err() || failed {
            return;
        }
    }
}

impl BlobReader {
    /// The check at the end of the stream: the size announced and the
    /// digest asked for.
    fn check_end(&mut self) -> std::io::Result<()> {
        self.done = true;
        if self.size.is_some_and(|s| s != self.read) {
            return Err(std::io::Error::other(format!(
                "blob {} ended after {} of {} bytes",
                self.digest,
                self.read,
                self.size.unwrap_or_default()
            )));
        }
        let got = std::mem::take(&mut self.hasher).finish();
        if got != self.digest {
            return Err(std::io::Error::other(format!(
                "blob {} has digest {got}",
                self.digest
            )));
        }
        Ok(())
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.frames.blocking_recv() {
                Some(Ok(data)) => self.current = data,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(std::io::Error::other(e));
                }
                None => {
                    self.check_end()?;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.size.is_some_and(|s| self.read > s) {
            self.done = true;
            return Err(std::io::Error::other(format!(
                "blob {} is longer than announced",
                self.digest
            )));
        }
        Ok(n)
    }
}
