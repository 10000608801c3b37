//! Debian's docker-registry on a free loopback port: started plain, over
//! TLS, with htpasswd or token auth, redirecting blob GETs to storage, or
//! logging every request; blobs pushed through the registry API; its
//! access log read back.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringstar_core::Digest;
use ringstar_fetcher::BlobLocation;

use crate::helpers::{free_port, http};

#[derive(Debug)]
pub struct Registry {
    child: Child,
    pub addr: String,
    config: PathBuf,
    /// Where its access log goes (one line per request), when kept.
    pub access_log: Option<PathBuf>,
    /// Config dir, and the storage dir when the registry owns it.
    _dirs: Vec<tempfile::TempDir>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a test registry asks clients to authenticate.
#[derive(Debug, Clone)]
pub enum RegistryAuth {
    /// Basic auth against an htpasswd file (see [`write_htpasswd`]).
    Htpasswd { path: PathBuf },
    /// Bearer tokens from a [`TokenServer`](crate::TokenServer).
    Token {
        realm: String,
        service: String,
        issuer: String,
        root_cert: PathBuf,
    },
}

/// An htpasswd file with one bcrypt-hashed user (what docker-registry
/// accepts).
pub fn write_htpasswd(path: &Path, user: &str, password: &str) {
    let hash = bcrypt::hash(password, 4).unwrap();
    std::fs::write(path, format!("{user}:{hash}\n")).unwrap();
}

impl Registry {
    pub fn start() -> Registry {
        let storage = tempfile::tempdir().unwrap();
        let mut reg = Self::start_with(storage.path(), None);
        reg._dirs.push(storage);
        reg
    }

    /// Serves `storage`, over TLS with `(certificate, key)` when given.
    pub fn start_with(storage: &Path, tls: Option<(&Path, &Path)>) -> Registry {
        Self::start_configured(storage, tls, None)
    }

    /// A plain-HTTP registry that logs every request to `access_log`
    /// (combined log format: method, path, status, bytes).
    pub fn start_logged(access_log: &Path) -> Registry {
        let storage = tempfile::tempdir().unwrap();
        let mut reg = Self::start_inner(storage.path(), None, None, Some(access_log));
        reg._dirs.push(storage);
        reg
    }

    /// The access log's request lines so far: (method, path, status).
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        let Some(log) = &self.access_log else {
            return Vec::new();
        };
        access_log_entries(&std::fs::read_to_string(log).unwrap_or_default())
            .into_iter()
            .map(|e| (e.method, e.path, e.status))
            .collect()
    }

    pub fn start_configured(
        storage: &Path,
        tls: Option<(&Path, &Path)>,
        auth: Option<&RegistryAuth>,
    ) -> Registry {
        Self::start_inner(storage, tls, auth, None)
    }

    /// Serves `storage` (kept by the caller), logging every request to
    /// `access_log` when given.
    pub fn start_full(
        storage: &Path,
        tls: Option<(&Path, &Path)>,
        auth: Option<&RegistryAuth>,
        access_log: Option<&Path>,
    ) -> Registry {
        Self::start_inner(storage, tls, auth, access_log)
    }

    /// Serves `storage` (kept by the caller) and answers every blob GET
    /// with a redirect to `baseurl` + the blob's storage path (the
    /// registry's `redirect` storage middleware, as with S3 or a CDN),
    /// logging requests to `access_log`.
    pub fn start_redirecting(
        storage: &Path,
        tls: Option<(&Path, &Path)>,
        baseurl: &str,
        access_log: &Path,
    ) -> Registry {
        let middleware = format!(
            "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {baseurl}\n"
        );
        Self::start_extra(storage, tls, None, Some(access_log), &middleware)
    }

    fn start_inner(
        storage: &Path,
        tls: Option<(&Path, &Path)>,
        auth: Option<&RegistryAuth>,
        access_log: Option<&Path>,
    ) -> Registry {
        Self::start_extra(storage, tls, auth, access_log, "")
    }

    fn start_extra(
        storage: &Path,
        tls: Option<(&Path, &Path)>,
        auth: Option<&RegistryAuth>,
        access_log: Option<&Path>,
        extra_yaml: &str,
    ) -> Registry {
        let bin = "/usr/bin/docker-registry";
        assert!(
            Path::new(bin).exists(),
            "Debian's docker-registry is needed (apt-get install docker-registry; test.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        let level = if access_log.is_some() {
            "warn"
        } else {
            "error"
        };
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: {level}\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((cert, key)) = tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        match auth {
            Some(RegistryAuth::Htpasswd { path }) => yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: ringstar-test\n    path: {}\n",
                path.display()
            )),
            Some(RegistryAuth::Token {
                realm,
                service,
                issuer,
                root_cert,
            }) => yaml.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                root_cert.display()
            )),
            None => {}
        }
        yaml.push_str(extra_yaml);
        std::fs::write(&config, yaml).unwrap();
        let access_log = access_log.map(Path::to_path_buf);
        let child = spawn_registry(&config, access_log.as_deref());
        let reg = Registry {
            child,
            addr,
            config,
            access_log,
            _dirs: vec![dir],
        };
        reg.wait_ready(tls.is_some());
        reg
    }

    /// Waits until the registry answers `GET /v2/` (a listener that
    /// accepts and closes, while it starts, is not an answer yet).
    fn wait_ready(&self, tls: bool) {
        let ready = |r: &Registry| {
            TcpStream::connect(&r.addr).is_ok()
                && (tls || matches!(probe_status(&r.addr), Some(200 | 401)))
        };
        let start = Instant::now();
        while !ready(self) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the registry (a crash: connections drop, nothing answers).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same address and storage (plain HTTP).
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_registry(&self.config, self.access_log.as_deref());
        self.wait_ready(false);
    }

    /// Pushes `data` as a blob of `repo` (monolithic upload); returns its digest.
    pub fn push(&self, repo: &str, data: &[u8]) -> String {
        let digest = Digest::of(data).to_string();
        let (status, headers, _) = http(
            &self.addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            b"",
        );
        assert_eq!(status, 202);
        let loc = headers
            .iter()
            .find(|(k, _)| k == "location")
            .unwrap()
            .1
            .clone();
        let path = loc
            .split_once(&self.addr)
            .map_or(loc.clone(), |(_, p)| p.to_string());
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, _, body) = http(
            &self.addr,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            data,
        );
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        digest
    }

    /// The blob's plain-HTTP location.
    pub fn location(&self, repo: &str, digest: &str) -> BlobLocation {
        BlobLocation {
            url: format!("http://{}/v2/{repo}/blobs/{digest}", self.addr),
            headers: Vec::new(),
            request_timeout: None,
        }
    }

    /// The blob's https location (a registry started with TLS).
    pub fn tls_location(&self, repo: &str, digest: &str) -> BlobLocation {
        BlobLocation {
            url: format!("https://{}/v2/{repo}/blobs/{digest}", self.addr),
            headers: Vec::new(),
            request_timeout: None,
        }
    }
}

/// One request of docker-registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
}

/// The requests in access-log text (combined format:
/// `127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 206 2 "" "agent"`); other
/// lines are skipped.
pub fn access_log_entries(text: &str) -> Vec<AccessLogEntry> {
    text.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(" \"")?;
            let (req, rest) = rest.split_once('"')?;
            let mut parts = req.split(' ');
            let method = parts.next()?.to_string();
            let path = parts.next()?.to_string();
            let mut nums = rest.split_whitespace();
            let status = nums.next()?.parse().ok()?;
            let bytes = nums.next().and_then(|b| b.parse().ok()).unwrap_or(0);
            Some(AccessLogEntry {
                method,
                path,
                status,
                bytes,
            })
        })
        .collect()
}

fn spawn_registry(config: &Path, access_log: Option<&Path>) -> Child {
    let out = |log: Option<&Path>| match log {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap(),
        ),
        None => Stdio::null(),
    };
    Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(config)
        .stdout(out(access_log))
        .stderr(out(access_log))
        .spawn()
        .unwrap()
}

/// The status of `GET /v2/` at `addr`, `None` when nothing answers it
/// (refused, closed, or not HTTP yet).
fn probe_status(addr: &str) -> Option<u16> {
    use std::io::{BufRead, Write};
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}
