//! Blob uploads (distribution-spec "pushing blobs"): a session started by
//! a POST, bytes sent in PATCHes of a chunk each as they are written, the
//! last chunk with the closing PUT (one PUT for a blob that fits in one
//! chunk: a monolithic upload); and cross-repository mounts. The digest
//! is computed from the bytes sent, so what the registry is told is what
//! it got.

use std::io::Write;

use bytes::Bytes;
use http::StatusCode;
use http::header::{CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use ringstar_core::Digest;
use ringstar_core::digest::Hasher;

use crate::repository::Repository;
use crate::urls::redact;

use super::registry::refusal;
use super::transport::{Ask, Response};
use super::{FetchError, Fetcher};

/// Bytes per PATCH: big enough that a round trip per chunk costs little
/// on a WAN, small enough to hold.
pub const UPLOAD_CHUNK: usize = 16 << 20;

/// What a mount did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounted {
    /// The blob is in the target repository now.
    Yes,
    /// The registry would not (no such blob there, or mounts off).
    No,
}

/// An upload under way: write the blob's bytes, then [`BlobUpload::finish`].
/// Dropped unfinished, it is left to the registry to expire.
pub struct BlobUpload {
    fetcher: Fetcher,
    repo: Repository,
    /// Where the next request goes (each answer moves it).
    location: String,
    sent: u64,
    pending: Vec<u8>,
    chunk: usize,
    hasher: Hasher,
}

impl std::fmt::Debug for BlobUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobUpload")
            .field("repo", &self.repo)
            .field("sent", &self.sent)
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// The upload location of a 202/201 answer, as a URL.
fn location_of(
    repo: &Repository,
    url: &str,
    head: &http::response::Parts,
) -> Result<String, FetchError> {
    head.headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| repo.location(l))
        .ok_or_else(|| FetchError::BadResponse {
            url: redact(url),
            reason: "upload answer without a usable Location".into(),
        })
}

impl Fetcher {
    /// Starts an upload to `repo`, sending `chunk` bytes per PATCH
    /// ([`UPLOAD_CHUNK`] is a good size).
    pub fn start_upload(&self, repo: &Repository, chunk: usize) -> Result<BlobUpload, FetchError> {
        let location = self
            .post_upload(repo, None)?
            .ok_or_else(|| FetchError::BadResponse {
                url: redact(&repo.uploads_url(None)),
                reason: "the upload was answered as a mount".into(),
            })?;
        Ok(BlobUpload {
            fetcher: self.clone(),
            repo: repo.clone(),
            location,
            sent: 0,
            pending: Vec::new(),
            chunk: chunk.max(1),
            hasher: Hasher::new(),
        })
    }

    /// Asks the registry to mount blob `digest` of repository `from` (on
    /// the same registry) into `repo`.
    pub fn mount_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        from: &str,
    ) -> Result<Mounted, FetchError> {
        let d = digest.to_string();
        match self.post_upload(repo, Some((&d, from)))? {
            None => Ok(Mounted::Yes),
            // The registry started an upload instead: not mounted. The
            // session is left to expire (nothing was written to it).
            Some(_) => Ok(Mounted::No),
        }
    }

    /// The upload-starting POST: `Some(location)` for a session (202),
    /// `None` when a mount was done (201).
    fn post_upload(
        &self,
        repo: &Repository,
        mount: Option<(&str, &str)>,
    ) -> Result<Option<String>, FetchError> {
        let url = repo.uploads_url(mount);
        let repo = repo.clone();
        self.block_on(move |inner| async move {
            let ask = Ask::new(http::Method::POST, None);
            inner
                .exchange(&repo, &url, ask, |(head, body): Response| {
                    let (url, repo) = (url.clone(), repo.clone());
                    async move {
                        match head.status {
                            StatusCode::CREATED => Ok(None),
                            StatusCode::ACCEPTED => location_of(&repo, &url, &head).map(Some),
                            _ => Err(refusal(&url, (head, body)).await),
                        }
                    }
                })
                .await
        })
    }
}

impl BlobUpload {
    /// Sends the pending bytes as one PATCH.
    fn patch(&mut self) -> Result<(), FetchError> {
        let body = Bytes::from(std::mem::take(&mut self.pending));
        let (start, len) = (self.sent, body.len() as u64);
        let ask = Ask::new(http::Method::PATCH, None)
            .with_header(CONTENT_TYPE, "application/octet-stream")
            .with_header(CONTENT_RANGE, format!("{start}-{}", start + len - 1))
            .with_body(body);
        let (repo, url) = (self.repo.clone(), self.location.clone());
        self.location = self.fetcher.block_on(move |inner| async move {
            inner
                .exchange(&repo, &url, ask, |(head, body): Response| {
                    let (url, repo) = (url.clone(), repo.clone());
                    async move {
                        match head.status {
                            StatusCode::ACCEPTED | StatusCode::NO_CONTENT => {
                                location_of(&repo, &url, &head)
                            }
                            _ => Err(refusal(&url, (head, body)).await),
                        }
                    }
                })
                .await
        })?;
        self.sent += len;
        Ok(())
    }

    /// Ends the upload: the last bytes with the closing PUT. Returns the
    /// blob's digest and size.
    pub fn finish(mut self) -> Result<(Digest, u64), FetchError> {
        let digest = std::mem::take(&mut self.hasher).finish();
        let body = Bytes::from(std::mem::take(&mut self.pending));
        let size = self.sent + body.len() as u64;
        let sep = if self.location.contains('?') {
            '&'
        } else {
            '?'
        };
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("digest", &digest.to_string())
            .finish();
        let url = format!("{}{sep}{query}", self.location);
        let ask = Ask::new(http::Method::PUT, None)
            .with_header(CONTENT_TYPE, "application/octet-stream")
            .with_body(body);
        let repo = self.repo.clone();
        self.fetcher.block_on(move |inner| async move {
            inner
                .exchange(&repo, &url, ask, |(head, body): Response| {
                    let url = url.clone();
                    async move {
                        match head.status {
                            StatusCode::CREATED | StatusCode::NO_CONTENT => Ok(()),
                            _ => Err(refusal(&url, (head, body)).await),
                        }
                    }
                })
                .await
        })?;
        Ok((digest, size))
    }
}

impl Write for BlobUpload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= self.chunk {
            self.patch().map_err(std::io::Error::other)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
