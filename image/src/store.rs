//! Where images are read from and written to: a registry repository
//! (through the fetcher: its auth, TLS and mirrors) or an OCI layout on
//! disk, named as users name them (`REGISTRY/REPO:TAG`, `oci:DIR[:TAG]`).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::str::FromStr;

use bytes::Bytes;
use ringstar_core::Digest;
use ringstar_fetcher::{BlobUpload, Fetcher, Mounted, Reference, Repository, ResolverConfig};

use crate::layout::{Layout, LayoutBlob};
use crate::media::{Descriptor, MANIFEST_ACCEPT, media_type_of};
use crate::{ImageError, MAX_MANIFEST_SIZE};

/// An image as a user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `REGISTRY/REPO[:TAG][@DIGEST]`.
    Registry(Reference),
    /// `oci:DIR[:TAG]` or `oci:DIR@DIGEST`: an OCI image layout.
    Layout {
        dir: PathBuf,
        tag: Option<String>,
        digest: Option<Digest>,
    },
}

impl FromStr for ImageRef {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(rest) = s.strip_prefix("oci:") else {
            return Ok(ImageRef::Registry(s.parse().map_err(
                |e: ringstar_fetcher::ParseReferenceError| ImageError::Invalid(e.to_string()),
            )?));
        };
        if let Some((dir, d)) = rest.split_once('@') {
            let digest = d
                .parse()
                .map_err(|e: ringstar_core::digest::ParseDigestError| {
                    ImageError::Invalid(e.to_string())
                })?;
            return Ok(ImageRef::Layout {
                dir: dir.into(),
                tag: None,
                digest: Some(digest),
            });
        }
        // A tag is what follows the last ':' when that holds no '/'.
        let (dir, tag) = match rest.rsplit_once(':') {
            Some((dir, tag)) if !tag.contains('/') && !tag.is_empty() => {
                (dir, Some(tag.to_string()))
            }
            _ => (rest, None),
        };
        if dir.is_empty() {
            return Err(ImageError::Invalid(format!("{s}: no directory after oci:")));
        }
        Ok(ImageRef::Layout {
            dir: dir.into(),
            tag,
            digest: None,
        })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Registry(r) => write!(f, "{r}"),
            ImageRef::Layout { dir, tag, digest } => {
                write!(f, "oci:{}", dir.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
        }
    }
}

/// A manifest-like document as stored.
#[derive(Debug, Clone)]
pub struct Document {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Bytes,
}

/// A store of images: one registry repository, or one layout.
#[derive(Debug, Clone)]
pub enum ImageStore {
    Registry { fetcher: Fetcher, repo: Repository },
    Layout(Layout),
}

/// A blob being written into a store.
#[derive(Debug)]
pub enum BlobSink {
    Upload(BlobUpload),
    Layout(LayoutBlob),
}

impl Write for BlobSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            BlobSink::Upload(u) => u.write(buf),
            BlobSink::Layout(l) => l.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            BlobSink::Upload(u) => u.flush(),
            BlobSink::Layout(l) => l.flush(),
        }
    }
}

impl BlobSink {
    /// Ends the blob; returns its digest and size.
    pub fn finish(self) -> Result<(Digest, u64), ImageError> {
        match self {
            BlobSink::Upload(u) => Ok(u.finish()?),
            BlobSink::Layout(l) => l.finish(),
        }
    }
}

impl ImageStore {
    /// Repository `name` at registry `host` (its origin; plain HTTP for
    /// this machine, as containerd does).
    pub fn repository(fetcher: &Fetcher, host: &str, name: &str) -> ImageStore {
        let reference = Reference {
            host: host.to_string(),
            repository: name.to_string(),
            tag: None,
            digest: None,
        };
        ImageStore::Registry {
            fetcher: fetcher.clone(),
            repo: Repository::origin_of(&reference, &ResolverConfig::default()),
        }
    }

    /// The store `r` names, and the reference of its root document (tag
    /// or digest). `create`: a layout is made when missing (a target).
    pub fn open(
        r: &ImageRef,
        fetcher: &Fetcher,
        resolver: &ResolverConfig,
        create: bool,
    ) -> Result<(ImageStore, RootRef), ImageError> {
        match r {
            ImageRef::Registry(reference) => {
                let mut repo = Repository::origin_of(reference, resolver);
                prefer_tls_locally(fetcher, &mut repo, &reference.host);
                let root = match (&reference.digest, &reference.tag) {
                    (Some(d), _) => RootRef::Digest(d.parse().map_err(
                        |e: ringstar_core::digest::ParseDigestError| {
                            ImageError::Invalid(e.to_string())
                        },
                    )?),
                    (None, t) => RootRef::Tag(t.clone().unwrap_or_else(|| "latest".into())),
                };
                let store = ImageStore::Registry {
                    fetcher: fetcher.clone(),
                    repo,
                };
                Ok((store, root))
            }
            ImageRef::Layout { dir, tag, digest } => {
                let layout = if create {
                    Layout::create(dir)?
                } else {
                    Layout::open(dir)?
                };
                let root = match (digest, tag) {
                    (Some(d), _) => RootRef::Digest(*d),
                    (None, Some(t)) => RootRef::Tag(t.clone()),
                    (None, None) => RootRef::Only,
                };
                Ok((ImageStore::Layout(layout), root))
            }
        }
    }

    /// The root document (an index or a manifest).
    pub fn root(&self, root: &RootRef) -> Result<Document, ImageError> {
        match self {
            ImageStore::Registry { fetcher, repo } => {
                let reference = match root {
                    RootRef::Tag(t) => t.clone(),
                    RootRef::Digest(d) => d.to_string(),
                    RootRef::Only => "latest".into(),
                };
                let m =
                    fetcher.fetch_manifest(repo, &reference, MANIFEST_ACCEPT, MAX_MANIFEST_SIZE)?;
                let doc: serde_json::Value = serde_json::from_slice(&m.bytes)?;
                Ok(Document {
                    media_type: media_type_of(&doc, &m.media_type),
                    digest: m.digest,
                    bytes: m.bytes,
                })
            }
            ImageStore::Layout(l) => {
                let (digest, listed_as) = match root {
                    RootRef::Digest(d) => (*d, String::new()),
                    RootRef::Tag(t) => {
                        let d = l.find(Some(t))?;
                        (d.digest, d.media_type)
                    }
                    RootRef::Only => {
                        let d = l.find(None)?;
                        (d.digest, d.media_type)
                    }
                };
                let bytes = Bytes::from(l.read_blob(&digest, MAX_MANIFEST_SIZE as u64)?);
                let doc: serde_json::Value = serde_json::from_slice(&bytes)?;
                Ok(Document {
                    media_type: media_type_of(&doc, &listed_as),
                    digest,
                    bytes,
                })
            }
        }
    }

    /// The document `desc` points at (a manifest an index lists).
    pub fn document(&self, desc: &Descriptor) -> Result<Document, ImageError> {
        let doc = self.root(&RootRef::Digest(desc.digest))?;
        Ok(Document {
            media_type: media_type_of(&serde_json::from_slice(&doc.bytes)?, &desc.media_type),
            ..doc
        })
    }

    /// Blob `d` whole (a config), refused past `max` bytes or when it is
    /// not `d`.
    pub fn blob_bytes(&self, d: &Digest, max: usize) -> Result<Bytes, ImageError> {
        match self {
            ImageStore::Registry { fetcher, repo } => Ok(fetcher.fetch_blob(repo, d, max)?),
            ImageStore::Layout(l) => Ok(Bytes::from(l.read_blob(d, max as u64)?)),
        }
    }

    /// Blob `d` as a stream, checked against `d` at its end.
    pub fn open_blob(&self, d: &Digest) -> Result<Box<dyn Read + Send>, ImageError> {
        match self {
            ImageStore::Registry { fetcher, repo } => Ok(Box::new(fetcher.open_blob(repo, d)?)),
            ImageStore::Layout(l) => Ok(Box::new(l.open_blob(d)?)),
        }
    }

    pub fn has_blob(&self, d: &Digest) -> Result<bool, ImageError> {
        match self {
            ImageStore::Registry { fetcher, repo } => Ok(fetcher.blob_exists(repo, d)?.is_some()),
            ImageStore::Layout(l) => Ok(l.has_blob(d)),
        }
    }

    /// Starts writing a blob.
    pub fn blob_sink(&self) -> Result<BlobSink, ImageError> {
        match self {
            ImageStore::Registry { fetcher, repo } => Ok(BlobSink::Upload(
                fetcher.start_upload(repo, ringstar_fetcher::UPLOAD_CHUNK)?,
            )),
            ImageStore::Layout(l) => Ok(BlobSink::Layout(l.blob_writer()?)),
        }
    }

    /// Writes `bytes` as a blob unless the store has it.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, ImageError> {
        let d = Digest::of(bytes);
        if !self.has_blob(&d)? {
            let mut sink = self.blob_sink()?;
            sink.write_all(bytes)?;
            sink.finish()?;
        }
        Ok(d)
    }

    /// Makes blob `d` of `src` present here: nothing when it is already,
    /// a cross-repository mount within one registry, else a streamed
    /// copy. Returns what was done.
    pub fn copy_blob(&self, src: &ImageStore, d: &Digest) -> Result<Copied, ImageError> {
        if self.has_blob(d)? {
            return Ok(Copied::Present);
        }
        if let (ImageStore::Registry { fetcher, repo }, ImageStore::Registry { repo: from, .. }) =
            (self, src)
            && from.endpoint.base == repo.endpoint.base
            && fetcher.mount_blob(repo, d, &from.name)? == Mounted::Yes
        {
            return Ok(Copied::Mounted);
        }
        let mut sink = self.blob_sink()?;
        std::io::copy(&mut src.open_blob(d)?, &mut sink)?;
        let (got, _) = sink.finish()?;
        if got != *d {
            return Err(ImageError::Invalid(format!("blob {d} copied as {got}")));
        }
        Ok(Copied::Copied)
    }

    /// Stores a manifest-like document, tagged `tag` if given; returns its
    /// descriptor.
    pub fn put_document(
        &self,
        bytes: &[u8],
        media_type: &str,
        tag: Option<&str>,
    ) -> Result<Descriptor, ImageError> {
        let digest = Digest::of(bytes);
        let desc = Descriptor {
            media_type: media_type.to_string(),
            digest,
            size: bytes.len() as u64,
            annotations: Default::default(),
            rest: Default::default(),
        };
        match self {
            ImageStore::Registry { fetcher, repo } => {
                let reference = tag.map_or_else(|| digest.to_string(), str::to_string);
                fetcher.put_manifest(
                    repo,
                    &reference,
                    media_type,
                    Bytes::copy_from_slice(bytes),
                )?;
            }
            ImageStore::Layout(l) => {
                l.put_blob(bytes)?;
                if let Some(t) = tag {
                    l.tag(desc.clone(), t)?;
                }
            }
        }
        Ok(desc)
    }
}

/// A registry on this machine gets HTTPS when it answers TLS, plain HTTP
/// otherwise (docker's rule for local registries; containerd's default of
/// plain HTTP would never reach a local TLS registry).
fn prefer_tls_locally(fetcher: &Fetcher, repo: &mut Repository, host: &str) {
    if !ringstar_fetcher::hosts::is_local(host) || !repo.endpoint.base.starts_with("http://") {
        return;
    }
    let mut tls = repo.clone();
    tls.endpoint.base = format!("https://{host}");
    if fetcher.ping(&tls).is_ok() {
        tracing::debug!(host, "local registry answers TLS");
        *repo = tls;
    }
}

/// Which document of a store is the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootRef {
    Tag(String),
    Digest(Digest),
    /// A layout's only manifest.
    Only,
}

impl RootRef {
    /// The tag to write the result under.
    pub fn tag(&self) -> Option<&str> {
        match self {
            RootRef::Tag(t) => Some(t),
            _ => None,
        }
    }
}

/// How a blob came to be in a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    Present,
    Mounted,
    Copied,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let r: ImageRef = "oci:/tmp/x:v1".parse().unwrap();
        assert_eq!(
            r,
            ImageRef::Layout {
                dir: "/tmp/x".into(),
                tag: Some("v1".into()),
                digest: None
            }
        );
        let r: ImageRef = "oci:./a/b".parse().unwrap();
        assert!(matches!(r, ImageRef::Layout { tag: None, .. }));
        let r: ImageRef = "127.0.0.1:5000/a/b:c".parse().unwrap();
        assert!(matches!(r, ImageRef::Registry(_)));
        assert_eq!(r.to_string(), "127.0.0.1:5000/a/b:c");
        assert!("oci:".parse::<ImageRef>().is_err());
    }
}
