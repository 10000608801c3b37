//! ringstar-testkit: the test and benchmark harness, never compiled into
//! a release binary. Debian's
//! docker-registry on a free loopback port, blob pushes through the
//! registry API, certificates made with openssl, a counting TCP forwarder
//! and a delay proxy that models a shared WAN link, blob storage behind a
//! registry's redirects, a log capture, and a panic injected into the
//! fetch task.

#![allow(clippy::missing_panics_doc)]

pub mod containerd;
pub mod images;
pub mod mounted;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringstar_core::Digest;

use ringstar_fetcher::BlobLocation;

#[derive(Debug)]
pub struct Registry {
    child: Child,
    pub addr: String,
    config: std::path::PathBuf,
    /// Where its access log goes (one line per request), when kept.
    pub access_log: Option<std::path::PathBuf>,
    /// Config dir, and the storage dir when the registry owns it.
    _dirs: Vec<tempfile::TempDir>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Credentials for one host, as a credential source (a fetcher's config).
pub fn static_credentials(
    host: &str,
    user: &str,
    secret: &str,
) -> Arc<dyn ringstar_fetcher::CredentialSource> {
    let mut table = ringstar_fetcher::StaticCredentials::default();
    table.0.insert(
        host.to_string(),
        ringstar_fetcher::Credentials {
            username: user.into(),
            secret: secret.into(),
        },
    );
    Arc::new(table)
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

/// How a test registry asks clients to authenticate.
#[derive(Debug, Clone)]
pub enum RegistryAuth {
    /// Basic auth against an htpasswd file (see [`write_htpasswd`]).
    Htpasswd { path: std::path::PathBuf },
    /// Bearer tokens from a [`TokenServer`].
    Token {
        realm: String,
        service: String,
        issuer: String,
        root_cert: std::path::PathBuf,
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

    fn wait_ready(&self, tls: bool) {
        let ready = |r: &Registry| {
            TcpStream::connect(&r.addr).is_ok()
                && (tls || matches!(http(&r.addr, "GET", "/v2/", b"").0, 200 | 401))
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

/// A CA (`ca.pem`) and a server certificate (`server.pem`, `server.key`)
/// for 127.0.0.1 and localhost signed by it.
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
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
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
        Self::start_wan(upstream, rtt, bits_per_sec, false)
    }

    /// With `handshake`, a new connection also costs one round trip
    /// before its first byte moves (TCP's handshake; TLS would add more).
    pub fn start_wan(
        upstream: String,
        rtt: Duration,
        bits_per_sec: u64,
        handshake: bool,
    ) -> DelayProxy {
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
                let (up, down) = (up.clone(), down.clone());
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    if handshake {
                        std::thread::sleep(rtt);
                    }
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (c2, s2) = (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    );
                    std::thread::spawn(move || pump(client, s2, up));
                    pump(server, c2, down);
                });
            }
        });
        DelayProxy { addr, connections }
    }
}

/// What a [`TokenServer`] was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` (classic, Basic credentials or none) or `POST` (OAuth2 form).
    pub method: String,
    /// `password`, `refresh_token` or empty (GET).
    pub grant: String,
    pub scopes: Vec<String>,
    pub authenticated: bool,
}

#[derive(Debug, Default)]
struct TokenPolicy {
    /// The next this many tokens carry an `exp` this many seconds in the
    /// past (the registry allows 60 s of leeway).
    stale: Vec<i64>,
}

/// A bearer token server for docker-registry's `token` auth: ES256 JWTs
/// with an `x5c` chain of one self-signed certificate, which the registry
/// trusts through `rootcertbundle`.
#[derive(Debug, Clone)]
pub struct TokenServer {
    pub addr: String,
    pub service: String,
    pub issuer: String,
    /// The signing certificate (PEM) for the registry's `rootcertbundle`.
    pub root_cert: std::path::PathBuf,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    policy: Arc<Mutex<TokenPolicy>>,
    /// Serves https.
    tls: bool,
}

/// Settings of a [`TokenServer`].
#[derive(Debug, Clone, Default)]
pub struct TokenServerOptions {
    /// Required credentials (`None`: tokens for anyone).
    pub user: Option<(String, String)>,
    /// An identity token accepted by the refresh-token grant.
    pub refresh_token: Option<String>,
    /// Answer the OAuth2 POST (otherwise 404, as classic servers do).
    pub oauth: bool,
    /// `expires_in` told to clients (`None`: left out).
    pub expires_in: Option<u64>,
    /// Serve over TLS with this (certificate, key) (see [`make_certs`]);
    /// the realm is then `https://localhost:PORT/token`.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HTTP/1.1 request as read: method, target, headers, body.
type RawRequest = (String, String, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 request from a stream.
fn read_request<S: Read>(r: &mut BufReader<S>) -> Option<RawRequest> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0usize);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((method, target, headers, body))
}

fn form_pairs(s: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(s.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl TokenServer {
    pub fn start(dir: &Path, options: TokenServerOptions) -> TokenServer {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "token.key",
                "-out",
                "token.pem",
                "-days",
                "2",
                "-subj",
                "/CN=ringstar test token issuer",
            ],
        );
        openssl(
            dir,
            &[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                "token.key",
                "-outform",
                "DER",
                "-out",
                "token.key.der",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-in",
                "token.pem",
                "-outform",
                "DER",
                "-out",
                "token.der",
            ],
        );
        let key_der = std::fs::read(dir.join("token.key.der")).unwrap();
        let cert_der = std::fs::read(dir.join("token.der")).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_der,
            &rng,
        )
        .unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let tls = options.tls.as_ref().map(|(c, k)| tls_server_config(c, k));
        let server = TokenServer {
            tls: tls.is_some(),
            addr,
            service: "ringstar-test-registry".into(),
            issuer: "ringstar-test-issuer".into(),
            root_cert: dir.join("token.pem"),
            requests: Arc::default(),
            policy: Arc::default(),
        };
        let x5c = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&cert_der)
        };
        let me = server.clone();
        let key = Arc::new(key);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { break };
                let (me, key, x5c, options) =
                    (me.clone(), key.clone(), x5c.clone(), options.clone());
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    Some(cfg) => me.serve(tls_stream(conn, cfg), &key, &x5c, &options),
                    None => me.serve(conn, &key, &x5c, &options),
                });
            }
        });
        server
    }

    /// The realm URL for the registry's config.
    pub fn realm(&self) -> String {
        if self.tls {
            let port = self.addr.rsplit_once(':').map_or("", |(_, p)| p);
            format!("https://localhost:{port}/token")
        } else {
            format!("http://{}/token", self.addr)
        }
    }

    pub fn registry_auth(&self) -> RegistryAuth {
        RegistryAuth::Token {
            realm: self.realm(),
            service: self.service.clone(),
            issuer: self.issuer.clone(),
            root_cert: self.root_cert.clone(),
        }
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The next token issued expires (for the registry) `seconds_ago`
    /// seconds ago, while clients are told it lasts.
    pub fn issue_stale(&self, seconds_ago: i64) {
        self.policy.lock().unwrap().stale.push(seconds_ago);
    }

    fn serve<S: Read + Write>(
        &self,
        conn: S,
        key: &ring::signature::EcdsaKeyPair,
        x5c: &str,
        options: &TokenServerOptions,
    ) {
        let mut r = BufReader::new(conn);
        while let Some((method, target, headers, body)) = read_request(&mut r) {
            let query = target.split_once('?').map_or("", |(_, q)| q);
            let mut params = form_pairs(query);
            if method == "POST" {
                params.extend(form_pairs(&String::from_utf8_lossy(&body)));
            }
            let get = |k: &str| {
                params
                    .iter()
                    .find(|(pk, _)| pk == k)
                    .map(|(_, v)| v.clone())
            };
            let grant = get("grant_type").unwrap_or_default();
            let scopes: Vec<String> = params
                .iter()
                .filter(|(k, _)| k == "scope")
                .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
                .filter(|s| !s.is_empty())
                .collect();
            let basic = headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .and_then(|(_, v)| v.strip_prefix("Basic "))
                .and_then(|b| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.decode(b).ok()
                })
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| {
                    s.split_once(':')
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                });
            let authenticated = match method.as_str() {
                "POST" if grant == "password" => {
                    options.user.as_ref().map(|(u, p)| (u.clone(), p.clone()))
                        == get("username").zip(get("password"))
                }
                "POST" if grant == "refresh_token" => {
                    options.refresh_token.is_some() && options.refresh_token == get("refresh_token")
                }
                _ => basic.is_some() && basic == options.user,
            };
            self.requests.lock().unwrap().push(TokenRequest {
                method: method.clone(),
                grant: grant.clone(),
                scopes: scopes.clone(),
                authenticated,
            });
            let status = if method == "POST" && !options.oauth {
                "404 Not Found"
            } else if (options.user.is_some() || options.refresh_token.is_some()) && !authenticated
            {
                "401 Unauthorized"
            } else {
                "200 OK"
            };
            let body = if status.starts_with("200") {
                let stale = {
                    let mut p = self.policy.lock().unwrap();
                    (!p.stale.is_empty()).then(|| p.stale.remove(0))
                };
                let jwt = self.jwt(key, x5c, &scopes, stale);
                let mut answer = serde_json::json!({ "token": jwt, "access_token": jwt });
                if let Some(e) = options.expires_in {
                    answer["expires_in"] = e.into();
                }
                answer.to_string()
            } else {
                String::new()
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let w = r.get_mut();
            if w.write_all(resp.as_bytes())
                .and_then(|()| w.flush())
                .is_err()
            {
                break;
            }
        }
    }

    fn jwt(
        &self,
        key: &ring::signature::EcdsaKeyPair,
        x5c: &str,
        scopes: &[String],
        stale: Option<i64>,
    ) -> String {
        let now = unix_now();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let mut parts = s.splitn(2, ':');
                let kind = parts.next()?;
                let (name, actions) = parts.next()?.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": kind, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let exp = match stale {
            Some(ago) => now - ago,
            None => now + 3600,
        };
        let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [x5c] });
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": "ringstar-test", "aud": self.service,
            "exp": exp, "nbf": now - 120, "iat": now - 120,
            "jti": format!("{}", fastrand::u64(..)), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = key.sign(&rng, signing_input.as_bytes()).unwrap();
        format!("{signing_input}.{}", b64url(sig.as_ref()))
    }
}

/// What a [`FaultProxy`] does with the next connection.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Forward both ways.
    Pass,
    /// Read the request, answer with these raw bytes, close.
    Answer(Vec<u8>),
    /// Forward, but close both sides after this many response bytes.
    CutAfter(usize),
    /// Accept and never answer.
    Stall,
}

impl Fault {
    /// A bodiless answer with this status line (e.g. `"503 Service
    /// Unavailable"`) and extra header lines.
    pub fn status(status: &str, headers: &str) -> Fault {
        Fault::Answer(
            format!("HTTP/1.1 {status}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n")
                .into_bytes(),
        )
    }
}

/// A TCP proxy in front of a real server that applies planned faults, a
/// connection at a time, and records what clients sent.
#[derive(Debug, Clone)]
pub struct FaultProxy {
    pub addr: String,
    pub connections: Arc<AtomicUsize>,
    plan: Arc<Mutex<std::collections::VecDeque<Fault>>>,
    sent: Arc<Mutex<Vec<u8>>>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl FaultProxy {
    pub fn start(upstream: String) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = FaultProxy {
            addr: l.local_addr().unwrap().to_string(),
            connections: Arc::default(),
            plan: Arc::default(),
            sent: Arc::default(),
            live: Arc::default(),
        };
        let me = proxy.clone();
        std::thread::spawn(move || {
            let mut stalled = Vec::new();
            for conn in l.incoming() {
                let Ok(client) = conn else { break };
                me.connections.fetch_add(1, Ordering::SeqCst);
                let fault = me.plan.lock().unwrap().pop_front().unwrap_or(Fault::Pass);
                match fault {
                    Fault::Stall => stalled.push(client),
                    Fault::Answer(resp) => {
                        let sent = me.sent.clone();
                        std::thread::spawn(move || {
                            let mut client = client;
                            let mut buf = [0u8; 8192];
                            if let Ok(n) = client.read(&mut buf) {
                                sent.lock().unwrap().extend_from_slice(&buf[..n]);
                            }
                            let _ = client.write_all(&resp);
                        });
                    }
                    Fault::Pass | Fault::CutAfter(_) => {
                        let limit = match fault {
                            Fault::CutAfter(n) => n,
                            _ => usize::MAX,
                        };
                        let Ok(server) = TcpStream::connect(&upstream) else {
                            continue;
                        };
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        me.live.lock().unwrap().push(client.try_clone().unwrap());
                        let sent = me.sent.clone();
                        std::thread::spawn(move || {
                            copy_limited(client, s2, usize::MAX, Some(sent))
                        });
                        std::thread::spawn(move || copy_limited(server, c2, limit, None));
                    }
                }
            }
        });
        proxy
    }

    /// Plans faults for the next connections, in order (then `Pass`).
    pub fn plan(&self, faults: impl IntoIterator<Item = Fault>) {
        self.plan.lock().unwrap().extend(faults);
    }

    /// Closes every forwarded connection, so the next request opens a new
    /// one (and meets the next planned fault).
    pub fn cut_all(&self) {
        for c in self.live.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Everything clients sent through the proxy, as text.
    pub fn sent(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned()
    }
}

/// Copies `from` → `to` until either ends or `limit` bytes passed, then
/// shuts both down (a connection cut mid-body when the limit hits).
fn copy_limited(
    mut from: TcpStream,
    mut to: TcpStream,
    limit: usize,
    record: Option<Arc<Mutex<Vec<u8>>>>,
) {
    let mut buf = vec![0u8; 16 << 10];
    let mut passed = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(limit - passed),
        };
        if let Some(r) = &record {
            r.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        passed += n;
        if passed >= limit {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// A rustls server configuration for `cert` and `key` (PEM files, as
/// [`make_certs`] writes them), speaking HTTP/1.1.
pub fn tls_server_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// The server side of TLS over an accepted connection (the handshake
/// happens on first use).
pub fn tls_stream(
    conn: TcpStream,
    cfg: Arc<rustls::ServerConfig>,
) -> rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    rustls::StreamOwned::new(rustls::ServerConnection::new(cfg).unwrap(), conn)
}

/// Blob storage behind a registry's redirects (S3, a CDN): serves the
/// files under `root` by request path (the query, where a presigned URL
/// carries its signature, is ignored), whole or one `Range: bytes=A-B`,
/// one request per connection, over TLS when given (certificate, key).
/// Records each request target.
#[derive(Debug, Clone)]
pub struct BlobStorage {
    pub addr: String,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl BlobStorage {
    pub fn start(root: &Path, tls: Option<(&Path, &Path)>) -> BlobStorage {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let storage = BlobStorage {
            addr: l.local_addr().unwrap().to_string(),
            requests: Arc::default(),
        };
        let tls = tls.map(|(c, k)| tls_server_config(c, k));
        let root = root.to_path_buf();
        let requests = storage.requests.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { break };
                let (root, requests, tls) = (root.clone(), requests.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    Some(cfg) => serve_file(tls_stream(conn, cfg), &root, &requests),
                    None => serve_file(conn, &root, &requests),
                });
            }
        });
        storage
    }
}

fn serve_file<S: Read + Write>(conn: S, root: &Path, requests: &Mutex<Vec<String>>) {
    let mut r = BufReader::new(conn);
    let Some((_method, target, headers, _)) = read_request(&mut r) else {
        return;
    };
    requests.lock().unwrap().push(target.clone());
    let path = target.split(['?', '#']).next().unwrap_or("");
    let file = (!path.contains(".."))
        .then(|| std::fs::read(root.join(path.trim_start_matches('/'))).ok())
        .flatten();
    let range = headers
        .iter()
        .find(|(k, _)| k == "range")
        .and_then(|(_, v)| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    let (head, body) = match (file, range) {
        (None, _) => ("404 Not Found".to_string(), Vec::new()),
        (Some(data), Some((a, b))) if a <= b && a < data.len() => {
            let b = b.min(data.len() - 1);
            (
                format!(
                    "206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}",
                    data.len()
                ),
                data[a..=b].to_vec(),
            )
        }
        (Some(data), _) => ("200 OK".to_string(), data),
    };
    let w = r.get_mut();
    let _ = write!(
        w,
        "HTTP/1.1 {head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .and_then(|()| w.write_all(&body))
    .and_then(|()| w.flush());
}

/// Log lines captured from `tracing` for the whole test process.
#[derive(Debug, Clone)]
pub struct LogCapture {
    lines: Arc<Mutex<Vec<String>>>,
}

impl LogCapture {
    /// Every line so far (`LEVEL message field=value ...`).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The lines that contain `needle` (tests in one process share the
    /// capture: filter by something of the test's own, like an address).
    pub fn matching(&self, needle: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }
}

struct CaptureSubscriber {
    lines: Arc<Mutex<Vec<String>>>,
}

struct LineVisitor(String);

impl tracing::field::Visit for LineVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl tracing::Subscriber for CaptureSubscriber {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut v = LineVisitor(event.metadata().level().to_string());
        event.record(&mut v);
        self.lines.lock().unwrap().push(v.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Captures every `tracing` event of this process from now on (installs a
/// global subscriber on first call; later calls share it). The fetcher
/// logs from its own thread, so a thread-local subscriber would miss it.
pub fn capture_logs() -> LogCapture {
    static CAPTURE: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            tracing::subscriber::set_global_default(CaptureSubscriber {
                lines: lines.clone(),
            })
            .expect("another global tracing subscriber is set");
            LogCapture { lines }
        })
        .clone()
}

/// Makes the next `times` fetch attempts of a URL containing `needle`
/// panic inside the fetcher's fetch task: a bug the fetcher must contain.
pub fn inject_panics(needle: &str, times: usize) {
    ringstar_core::faults::arm_for("fetch", needle, times);
}

/// Disarms the panics planned for `needle`.
pub fn stop_panics(needle: &str) {
    ringstar_core::faults::disarm_for("fetch", needle);
}
