//! An OCI image layout on disk (image-spec `image-layout.md`): the
//! `oci-layout` marker, `index.json` naming manifests by
//! `org.opencontainers.image.ref.name`, and blobs under
//! `blobs/sha256/<hex>`. Blobs are written to a temporary file and renamed
//! into place once their digest is known, so a reader never sees half a
//! blob; read back, their bytes are checked against their digest.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ringstar_core::Digest;
use ringstar_core::digest::Hasher;

use crate::ImageError;
use crate::media::{Descriptor, OCI_INDEX, REF_NAME_ANNOTATION};

const LAYOUT_MARKER: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// An OCI layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    /// Opens an existing layout.
    pub fn open(dir: &Path) -> Result<Layout, ImageError> {
        if !dir.join("oci-layout").is_file() {
            return Err(ImageError::Layout {
                dir: dir.to_path_buf(),
                reason: "no oci-layout file: not an OCI image layout".into(),
            });
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens a layout, making an empty one if `dir` has none.
    pub fn create(dir: &Path) -> Result<Layout, ImageError> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        if !dir.join("oci-layout").is_file() {
            std::fs::write(dir.join("oci-layout"), LAYOUT_MARKER)?;
        }
        if !dir.join("index.json").is_file() {
            write_atomic(
                &dir.join("index.json"),
                &serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []
                }))?,
            )?;
        }
        Layout::open(dir)
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Blob `d`, read as a stream checked against `d` at its end.
    pub fn open_blob(&self, d: &Digest) -> Result<Checked<File>, ImageError> {
        let path = self.blob_path(d);
        let file = File::open(&path).map_err(|e| ImageError::Layout {
            dir: self.dir.clone(),
            reason: format!("blob {d}: {e}"),
        })?;
        Ok(Checked::new(file, *d))
    }

    /// Blob `d` whole, refused past `max` bytes or when it is not `d`.
    pub fn read_blob(&self, d: &Digest, max: u64) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        let mut r = self.open_blob(d)?.take(max + 1);
        r.read_to_end(&mut out)?;
        if out.len() as u64 > max {
            return Err(ImageError::TooLarge {
                what: format!("blob {d}"),
                max,
            });
        }
        Ok(out)
    }

    /// Starts writing a blob.
    pub fn blob_writer(&self) -> Result<LayoutBlob, ImageError> {
        let tmp = tempfile::NamedTempFile::new_in(self.dir.join("blobs/sha256"))?;
        Ok(LayoutBlob {
            layout: self.clone(),
            tmp: io::BufWriter::new(tmp),
            hasher: Hasher::new(),
            size: 0,
        })
    }

    /// Writes `bytes` as a blob; returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, ImageError> {
        let d = Digest::of(bytes);
        if !self.has_blob(&d) {
            let mut w = self.blob_writer()?;
            w.write_all(bytes)?;
            w.finish()?;
        }
        Ok(d)
    }

    /// The manifests `index.json` lists.
    pub fn index(&self) -> Result<Vec<Descriptor>, ImageError> {
        let bytes = std::fs::read(self.dir.join("index.json"))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)?;
        let manifests = v.get("manifests").cloned().unwrap_or_default();
        Ok(serde_json::from_value(manifests)?)
    }

    /// The manifest named `tag`; with no tag, the only one.
    pub fn find(&self, tag: Option<&str>) -> Result<Descriptor, ImageError> {
        let index = self.index()?;
        let found: Vec<&Descriptor> = match tag {
            Some(t) => index
                .iter()
                .filter(|d| d.annotation(REF_NAME_ANNOTATION) == Some(t))
                .collect(),
            None => index.iter().collect(),
        };
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ImageError::NotFound(format!(
                "{} in {}",
                tag.unwrap_or("a manifest"),
                self.dir.display()
            ))),
            _ => Err(ImageError::Layout {
                dir: self.dir.clone(),
                reason: format!(
                    "{} manifests match {}: name one with :TAG",
                    found.len(),
                    tag.unwrap_or("no tag")
                ),
            }),
        }
    }

    /// Lists `desc` in `index.json` under `tag` (replacing what had it).
    pub fn tag(&self, mut desc: Descriptor, tag: &str) -> Result<(), ImageError> {
        let path = self.dir.join("index.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        let mut index: Vec<Descriptor> =
            serde_json::from_value(v.get("manifests").cloned().unwrap_or_default())?;
        index.retain(|d| d.annotation(REF_NAME_ANNOTATION) != Some(tag));
        desc.annotations
            .insert(REF_NAME_ANNOTATION.into(), tag.to_string().into());
        index.push(desc);
        v["manifests"] = serde_json::to_value(index)?;
        write_atomic(&path, &serde_json::to_vec(&v)?)?;
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A blob being written into a layout.
#[derive(Debug)]
pub struct LayoutBlob {
    layout: Layout,
    tmp: io::BufWriter<tempfile::NamedTempFile>,
    hasher: Hasher,
    size: u64,
}

impl Write for LayoutBlob {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.tmp.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tmp.flush()
    }
}

impl LayoutBlob {
    /// Puts the blob in place under its digest; returns digest and size.
    pub fn finish(self) -> Result<(Digest, u64), ImageError> {
        let d = self.hasher.finish();
        let tmp = self.tmp.into_inner().map_err(|e| e.into_error())?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.layout.blob_path(&d))
            .map_err(|e| e.error)?;
        Ok((d, self.size))
    }
}

/// A reader that fails at its end unless what it read is `digest`.
#[derive(Debug)]
pub struct Checked<R> {
    inner: R,
    hasher: Hasher,
    digest: Digest,
    /// The end was reached and the bytes were the digest's.
    ended: bool,
}

impl<R> Checked<R> {
    pub fn new(inner: R, digest: Digest) -> Self {
        Checked {
            inner,
            hasher: Hasher::new(),
            digest,
            ended: false,
        }
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.ended {
            let got = std::mem::take(&mut self.hasher).finish();
            if got != self.digest {
                // Not marked ended: a read after this fails again.
                return Err(io::Error::other(format!(
                    "blob {} has digest {got}",
                    self.digest
                )));
            }
            self.ended = true;
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_index_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::create(dir.path()).unwrap();
        let d = l.put_blob(b"hello").unwrap();
        assert_eq!(l.read_blob(&d, 100).unwrap(), b"hello");
        assert!(matches!(
            l.read_blob(&d, 3),
            Err(ImageError::TooLarge { .. })
        ));
        std::fs::write(l.blob_path(&d), b"jello").unwrap();
        assert!(l.read_blob(&d, 100).is_err());
        let desc = Descriptor {
            media_type: crate::media::OCI_MANIFEST.into(),
            digest: d,
            size: 5,
            annotations: Default::default(),
            rest: Default::default(),
        };
        l.tag(desc.clone(), "v1").unwrap();
        l.tag(desc.clone(), "v2").unwrap();
        l.tag(desc, "v1").unwrap();
        assert_eq!(l.index().unwrap().len(), 2);
        assert_eq!(l.find(Some("v2")).unwrap().digest, d);
        assert!(l.find(None).is_err());
        assert!(matches!(l.find(Some("v3")), Err(ImageError::NotFound(_))));
    }
}
