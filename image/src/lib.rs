//! ringstar-image: OCI images from layer tars, as eStargz (our writer,
//! with the TOC digest annotation containerd forwards to the snapshotter)
//! or plain gzip, pushed to a registry through the distribution API. What
//! `ringstar push`, the demo, the end-to-end tests and hellobench use to
//! put images where containerd pulls them; the home of the image tools
//! (convert, optimize, rpull).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ringstar_core::Digest;
use ringstar_core::writer::{self, WriterOptions};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("layer {index}: {source}")]
    Write {
        index: usize,
        source: writer::WriteError,
    },
    #[error("registry {addr}: {step}: {status} {body}")]
    Refused {
        addr: String,
        step: PushStep,
        status: u16,
        /// What the registry said (its error JSON, usually).
        body: String,
    },
    #[error("registry {addr}: upload without a Location")]
    NoLocation { addr: String },
    #[error("registry {addr}: odd upload location {location:?}")]
    OddLocation { addr: String, location: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A step of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushStep {
    StartUpload,
    Upload(Digest),
    Manifest,
}

impl std::fmt::Display for PushStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushStep::StartUpload => f.write_str("starting an upload"),
            PushStep::Upload(d) => write!(f, "uploading {d}"),
            PushStep::Manifest => f.write_str("pushing the manifest"),
        }
    }
}

/// How layers are compressed.
#[derive(Debug, Clone)]
pub enum LayerFormat {
    /// eStargz by our writer, with these options (prioritized files).
    Estargz(WriterOptions),
    /// Plain gzip: what a non-lazy pull gets.
    Gzip,
}

/// One built layer.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub blob: Vec<u8>,
    pub digest: Digest,
    pub diff_id: Digest,
    pub toc_digest: Option<Digest>,
    pub uncompressed_size: u64,
}

/// An image ready to push: layers, config and manifest.
#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<BuiltLayer>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl Image {
    pub fn manifest_digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }
}

/// What the image runs.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
}

/// Builds layer `index` from a tar.
pub fn build_layer(
    index: usize,
    tar: &[u8],
    format: &LayerFormat,
) -> Result<BuiltLayer, ImageError> {
    match format {
        LayerFormat::Estargz(opts) => {
            let (blob, built) = writer::build_to_vec(tar, opts)
                .map_err(|source| ImageError::Write { index, source })?;
            let uncompressed_size = {
                let mut d = flate2::read::MultiGzDecoder::new(blob.as_slice());
                std::io::copy(&mut d, &mut std::io::sink())?
            };
            Ok(BuiltLayer {
                digest: built.blob_digest,
                diff_id: built.diff_id,
                toc_digest: Some(built.toc_digest),
                uncompressed_size,
                blob,
            })
        }
        LayerFormat::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(tar)?;
            let blob = enc.finish()?;
            Ok(BuiltLayer {
                digest: Digest::of(&blob),
                diff_id: Digest::of(tar),
                toc_digest: None,
                uncompressed_size: tar.len() as u64,
                blob,
            })
        }
    }
}

/// Builds an image of `tars` (base first).
pub fn build_image(
    tars: &[Vec<u8>],
    format: &LayerFormat,
    run: &RunConfig,
) -> Result<Image, ImageError> {
    let layers = tars
        .iter()
        .enumerate()
        .map(|(i, t)| build_layer(i, t, format))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(assemble(layers, run))
}

/// An image of built layers (base first): its config and manifest.
pub fn assemble(layers: Vec<BuiltLayer>, run: &RunConfig) -> Image {
    let env = if run.env.is_empty() {
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()]
    } else {
        run.env.clone()
    };
    let mut cfg = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": { "Env": env, "Cmd": run.cmd },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        },
    });
    if let Some(w) = &run.working_dir {
        cfg["config"]["WorkingDir"] = w.clone().into();
    }
    let config = serde_json::to_vec(&cfg).expect("json");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "digest": Digest::of(&config).to_string(),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| {
            let mut d = serde_json::json!({
                "mediaType": LAYER_GZIP_TYPE,
                "digest": l.digest.to_string(),
                "size": l.blob.len(),
            });
            if let Some(t) = &l.toc_digest {
                d["annotations"] = serde_json::json!({
                    TOC_DIGEST_ANNOTATION: t.to_string(),
                    UNCOMPRESSED_SIZE_ANNOTATION: l.uncompressed_size.to_string(),
                });
            }
            d
        }).collect::<Vec<_>>(),
    });
    Image {
        layers,
        config,
        manifest: serde_json::to_vec(&manifest).expect("json"),
    }
}

/// Pushes `image` as `repo:tag` to a plain-HTTP registry at `addr`
/// (`host:port`): blobs it lacks, then the manifest.
pub fn push_plain_http(addr: &str, repo: &str, tag: &str, image: &Image) -> Result<(), ImageError> {
    let refused = |step: PushStep, status: u16, body: &[u8]| ImageError::Refused {
        addr: addr.to_string(),
        step,
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    };
    let blobs = image
        .layers
        .iter()
        .map(|l| l.blob.as_slice())
        .chain(std::iter::once(image.config.as_slice()));
    for blob in blobs {
        let digest = Digest::of(blob);
        let (status, _, _) = http(
            addr,
            "HEAD",
            &format!("/v2/{repo}/blobs/{digest}"),
            &[],
            &[],
        )?;
        if status == 200 {
            continue;
        }
        let (status, headers, body) = http(
            addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            &[],
        )?;
        if status != 202 {
            return Err(refused(PushStep::StartUpload, status, &body));
        }
        let location = header(&headers, "location").ok_or_else(|| ImageError::NoLocation {
            addr: addr.to_string(),
        })?;
        let path = match location.find("/v2/") {
            Some(i) => location[i..].to_string(),
            None => {
                return Err(ImageError::OddLocation {
                    addr: addr.to_string(),
                    location: location.to_string(),
                });
            }
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, _, body) = http(
            addr,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            blob,
        )?;
        if status != 201 {
            return Err(refused(PushStep::Upload(digest), status, &body));
        }
    }
    let (status, _, body) = http(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", MANIFEST_TYPE)],
        &image.manifest,
    )?;
    if status != 201 {
        return Err(refused(PushStep::Manifest, status, &body));
    }
    Ok(())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 exchange on a fresh connection.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut out_headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            out_headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut rest = Vec::new();
    if method != "HEAD" {
        let _ = r.read_to_end(&mut rest);
    }
    Ok((status, out_headers, rest))
}
