//! Test and benchmark harness (feature `testing`): Debian's
//! docker-registry on a free loopback port, blob pushes through the
//! registry API, certificates made with openssl, a counting TCP forwarder
//! and a delay proxy that models a shared WAN link.

#![allow(clippy::missing_panics_doc)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringstar_core::Digest;

use crate::BlobLocation;

#[derive(Debug)]
pub struct Registry {
    child: Child,
    pub addr: String,
    /// Config dir, and the storage dir when the registry owns it.
    _dirs: Vec<tempfile::TempDir>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.1 exchange (Connection: close): status, headers, body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    (status, headers, rest)
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
        let bin = "/usr/bin/docker-registry";
        assert!(
            Path::new(bin).exists(),
            "Debian's docker-registry is needed (apt-get install docker-registry; test.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((cert, key)) = tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        std::fs::write(&config, yaml).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let reg = Registry {
            child,
            addr,
            _dirs: vec![dir],
        };
        let ready = |r: &Registry| {
            TcpStream::connect(&r.addr).is_ok()
                && (tls.is_some() || http(&r.addr, "GET", "/v2/", b"").0 == 200)
        };
        let start = Instant::now();
        while !ready(&reg) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
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
}

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl {args:?}");
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
pub fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ringstar test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// One direction of a WAN link shared by every connection through a
/// [`DelayProxy`]: bytes leave one after another at `rate` bytes/s and
/// arrive `one_way` later.
struct Link {
    free_at: Mutex<Instant>,
    rate: f64,
    one_way: Duration,
}

impl Link {
    /// When a chunk of `len` bytes sent now arrives.
    fn arrival(&self, len: usize) -> Instant {
        let mut free = self.free_at.lock().expect("link");
        let start = (*free).max(Instant::now());
        *free = start + Duration::from_secs_f64(len as f64 / self.rate);
        *free + self.one_way
    }
}

fn pump(mut from: TcpStream, to: TcpStream, link: Arc<Link>) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut to = to;
        for (at, chunk) in rx {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((link.arrival(n), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
}

/// A TCP proxy with WAN latency and bandwidth (this kernel has no netem):
/// `rtt / 2` each way, `bits_per_sec` shared by all connections in each
/// direction.
#[derive(Debug, Clone)]
pub struct DelayProxy {
    pub addr: String,
    pub connections: Arc<AtomicUsize>,
}

impl DelayProxy {
    pub fn start(upstream: String, rtt: Duration, bits_per_sec: u64) -> DelayProxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let c = connections.clone();
        let link = |_| {
            Arc::new(Link {
                free_at: Mutex::new(Instant::now()),
                rate: bits_per_sec as f64 / 8.0,
                one_way: rtt / 2,
            })
        };
        let (up, down) = (link(0), link(1));
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(client) = conn else { break };
                c.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (up, down) = (up.clone(), down.clone());
                std::thread::spawn(move || pump(client, s2, up));
                std::thread::spawn(move || pump(server, c2, down));
            }
        });
        DelayProxy { addr, connections }
    }
}
