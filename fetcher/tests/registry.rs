//! The fetcher against Debian's real docker-registry (started per test on
//! a free loopback port, storage in a temp dir), and against small
//! misbehaving servers for the failure paths.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringstar_core::{BlobRead, Digest, Layer, OpenOptions};
use ringstar_fetcher::{BlobLocation, FetchError, Fetcher, FetcherConfig, RemoteBlob};
use ringstar_testkit::{DelayProxy, Registry, free_port, make_certs};

fn quick_config() -> FetcherConfig {
    FetcherConfig {
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        max_retries: 3,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..FetcherConfig::default()
    }
}

fn blob_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn every_range_shape() {
    let reg = Registry::start();
    let data = blob_bytes(300_000);
    let digest = reg.push("test/ranges", &data);
    let loc = reg.location("test/ranges", &digest);
    let f = Fetcher::new(FetcherConfig::default()).unwrap();
    assert_eq!(f.blob_size(&loc).unwrap(), data.len() as u64);
    for (off, len) in [
        (0u64, 100u64),
        (0, 1),
        (123_456, 50_000),
        (299_999, 1),
        (0, 300_000),
        (250_000, 50_000),
    ] {
        let got = f.read_range(&loc, off, len).unwrap();
        assert_eq!(
            &got[..],
            &data[off as usize..(off + len) as usize],
            "{off}+{len}"
        );
    }
    assert!(f.read_range(&loc, 5, 0).unwrap().is_empty());
    let tail = f.read_tail(&loc, data.len() as u64, 51).unwrap();
    assert_eq!(&tail[..], &data[data.len() - 51..]);
    // Past the end: a typed error, not bytes.
    match f.read_range(&loc, 400_000, 10) {
        Err(FetchError::RangeNotSatisfiable { .. }) => {}
        other => panic!("want RangeNotSatisfiable, got {other:?}"),
    }
    // A range running over the end is refused as short, never padded.
    assert!(f.read_range(&loc, 299_990, 20).is_err());
    let missing = reg.location("test/ranges", &Digest::of(b"nope").to_string());
    assert!(matches!(
        f.read_range(&missing, 0, 10),
        Err(FetchError::NotFound { .. })
    ));
}

#[test]
fn concurrent_ranges_complete_through_callbacks() {
    let reg = Registry::start();
    let data = blob_bytes(1 << 20);
    let digest = reg.push("test/concurrent", &data);
    let loc = reg.location("test/concurrent", &digest);
    let f = Fetcher::new(FetcherConfig::default()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..64u64 {
        let tx = tx.clone();
        f.read_range_then(&loc, i * 16_000, 4096, move |r| tx.send((i, r)).unwrap());
    }
    for _ in 0..64 {
        let (i, r) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let off = (i * 16_000) as usize;
        assert_eq!(&r.unwrap()[..], &data[off..off + 4096]);
    }
}

/// Counts reads, to check round trips.
struct Counting<B> {
    inner: B,
    reads: AtomicUsize,
}

impl<B: BlobRead> BlobRead for Counting<B> {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_at(offset, len)
    }
}

#[test]
fn a_layer_opens_from_the_registry_in_one_round_trip() {
    let testdata = std::env::var_os("RINGSTAR_TESTDATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/estargz")
        });
    let blob = std::fs::read(testdata.join("many-files.blob")).unwrap();
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(testdata.join("many-files.json")).unwrap()).unwrap();
    let reg = Registry::start();
    let digest = reg.push("test/layer", &blob);
    let f = Fetcher::new(FetcherConfig::default()).unwrap();
    let remote = Counting {
        inner: RemoteBlob {
            fetcher: f.clone(),
            location: reg.location("test/layer", &digest),
        },
        reads: AtomicUsize::new(0),
    };
    let size = f.blob_size(&remote.inner.location).unwrap();
    let opts = OpenOptions {
        toc_digest: Some(spec["toc_digest"].as_str().unwrap().parse().unwrap()),
        ..OpenOptions::default()
    };
    let layer = Layer::open(&remote, size, &opts).unwrap();
    assert_eq!(
        remote.reads.load(Ordering::Relaxed),
        1,
        "footer and TOC should come in one request"
    );
    // Files read back through inflate + verify from registry bytes.
    let mut reader = ringstar_core::inflate::ChunkReader::new();
    let mut checked = 0;
    for want in spec["tree"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "reg")
        .take(20)
    {
        let id = layer
            .tree
            .lookup_path(want["name"].as_str().unwrap())
            .unwrap();
        let got = ringstar_core::inspect::file_digest(&layer, &remote, &mut reader, id).unwrap();
        assert_eq!(got.hex(), want["sha256"].as_str().unwrap());
        checked += 1;
    }
    assert_eq!(checked, 20);
}

/// A server that answers each connection from a script: the n-th
/// connection gets `script(n)`, `None` = accept and never answer.
fn scripted_server(
    script: impl Fn(usize) -> Option<Vec<u8>> + Send + 'static,
) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in l.incoming() {
            let Ok(mut s) = conn else { break };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            match script(n) {
                Some(resp) => {
                    let _ = s.write_all(&resp);
                }
                None => held.push(s),
            }
        }
    });
    (addr, count)
}

fn location(addr: &str) -> BlobLocation {
    BlobLocation {
        url: format!("http://{addr}/v2/x/blobs/sha256:00"),
        headers: Vec::new(),
        request_timeout: None,
    }
}

#[test]
fn retries_recover_from_503_and_429() {
    let (addr, count) = scripted_server(|n| {
        Some(match n {
            0 => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            1 => b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            _ => b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 10-14/100\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_vec(),
        })
    });
    let f = Fetcher::new(quick_config()).unwrap();
    assert_eq!(
        &f.read_range(&location(&addr), 10, 5).unwrap()[..],
        b"hello"
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[test]
fn a_lying_or_broken_server_is_an_error_never_wrong_bytes() {
    // Wrong range, and a body cut short, then a 200 with the whole blob
    // (from which only the asked bytes are taken).
    let (addr, _) = scripted_server(|n| {
        Some(match n % 3 {
            0 => b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-4/100\r\nContent-Length: 5\r\nConnection: close\r\n\r\nWRONG".to_vec(),
            1 => b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 10-14/100\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhe".to_vec(),
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\nConnection: close\r\n\r\n0123456789abcdefghij".to_vec(),
        })
    });
    let f = Fetcher::new(FetcherConfig {
        max_retries: 0,
        ..quick_config()
    })
    .unwrap();
    let loc = location(&addr);
    assert!(matches!(
        f.read_range(&loc, 10, 5),
        Err(FetchError::BadResponse { .. })
    ));
    assert!(f.read_range(&loc, 10, 5).is_err());
    assert_eq!(&f.read_range(&loc, 10, 5).unwrap()[..], b"abcde");
}

#[test]
fn a_silent_server_times_out_within_the_budget() {
    let (addr, count) = scripted_server(|_| None);
    let cfg = FetcherConfig {
        request_timeout: Duration::from_millis(300),
        max_retries: 2,
        ..quick_config()
    };
    let f = Fetcher::new(cfg).unwrap();
    let start = Instant::now();
    match f.read_range(&location(&addr), 0, 10) {
        Err(FetchError::Exhausted { attempts: 3, last }) => {
            assert!(matches!(*last, FetchError::Timeout { .. }))
        }
        other => panic!("want Exhausted(Timeout), got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(count.load(Ordering::SeqCst) >= 1);
    // Nobody listening: connection errors, retried, then a typed error.
    let dead = format!("127.0.0.1:{}", free_port());
    assert!(matches!(
        f.read_range(&location(&dead), 0, 10),
        Err(FetchError::Exhausted { .. })
    ));
}

#[test]
fn tls_negotiates_h2_and_multiplexes_ranges_on_one_connection() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    // Push over plain HTTP, then serve the same storage over TLS.
    let storage = tempfile::tempdir().unwrap();
    let plain = Registry::start_with(storage.path(), None);
    let data = blob_bytes(2 << 20);
    let digest = plain.push("test/tls", &data);
    drop(plain);
    let tls = Registry::start_with(
        storage.path(),
        Some((
            &certs.path().join("server.pem"),
            &certs.path().join("server.key"),
        )),
    );
    // A proxy with no delay, to count connections.
    let DelayProxy {
        addr: proxy,
        connections,
    } = DelayProxy::start(tls.addr.clone(), Duration::ZERO, u64::MAX);
    let f = Fetcher::new(FetcherConfig {
        ca_file: Some(certs.path().join("ca.pem")),
        ..FetcherConfig::default()
    })
    .unwrap();
    let loc = BlobLocation {
        url: format!("https://{proxy}/v2/test/tls/blobs/{digest}"),
        headers: Vec::new(),
        request_timeout: None,
    };
    // A cold burst: the first request opens the connection alone, the rest
    // join it once ALPN has said h2.
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..64u64 {
        let tx = tx.clone();
        f.read_range_then(&loc, i * 32_000, 8192, move |r| tx.send((i, r)).unwrap());
    }
    for _ in 0..64 {
        let (i, r) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let off = (i * 32_000) as usize;
        assert_eq!(&r.unwrap()[..], &data[off..off + 8192]);
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "all streams on one HTTP/2 connection"
    );
    assert_eq!(f.probe_version(&loc).unwrap(), http::Version::HTTP_2);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    // Without our CA the certificate is refused: a typed error, at once
    // (not retried), no bytes.
    let untrusting = Fetcher::new(FetcherConfig::default()).unwrap();
    let started = Instant::now();
    match untrusting.read_range(&loc, 0, 10) {
        Err(FetchError::Tls { reason, .. }) => assert!(reason.contains("certificate"), "{reason}"),
        other => panic!("want a TLS error, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "certificate errors must not be retried"
    );
}

/// Answers every request with a redirect to `target`.
fn redirecting_server(target: String) -> String {
    scripted_server(move |_| {
        Some(
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
        )
    })
    .0
}

#[test]
fn blobs_resolve_through_mirrors_in_order_and_follow_a_redirect() {
    let reg = Registry::start();
    let data = blob_bytes(100_000);
    let digest = reg.push("library/app", &data);
    let f = Fetcher::new(quick_config()).unwrap();
    let dead = format!("127.0.0.1:{}", free_port());
    // A dead mirror, then one without the blob, then the registry itself.
    let empty = Registry::start();
    let mut cfg = ringstar_fetcher::ResolverConfig::default();
    cfg.mirrors.insert(
        reg.addr.clone(),
        vec![
            ringstar_fetcher::MirrorConfig {
                host: dead,
                insecure: true,
                ..Default::default()
            },
            ringstar_fetcher::MirrorConfig {
                host: empty.addr.clone(),
                insecure: true,
                headers: vec![("x-mirror".into(), "1".into())],
                ..Default::default()
            },
        ],
    );
    let endpoints = cfg.endpoints(&reg.addr);
    assert_eq!(endpoints.len(), 3);
    let (loc, size) = f.resolve_blob(&endpoints, "library/app", &digest).unwrap();
    assert_eq!(size, data.len() as u64);
    assert_eq!(loc.url, reg.location("library/app", &digest).url);
    assert_eq!(&f.read_range(&loc, 500, 100).unwrap()[..], &data[500..600]);
    // Nothing anywhere: the last endpoint's error.
    assert!(matches!(
        f.resolve_blob(&endpoints, "library/app", &Digest::of(b"none").to_string()),
        Err(FetchError::NotFound { .. })
    ));
    // A registry that redirects to blob storage (headers and the expiry of
    // signed URLs: tests/faults.rs).
    let target = reg.location("library/app", &digest).url;
    let redirector = redirecting_server(target);
    let endpoint = ringstar_fetcher::Endpoint {
        base: format!("http://{redirector}"),
        namespace: None,
        request_timeout: None,
        headers: Vec::new(),
    };
    let (loc, size) = f.resolve_blob(&[endpoint], "library/app", &digest).unwrap();
    assert_eq!(size, data.len() as u64);
    assert_eq!(&f.read_range(&loc, 7, 3).unwrap()[..], &data[7..10]);
}

/// Finding a blob, its size and its tail is one request when the
/// registry answers a suffix range; a server that does not (a plain 200)
/// still gives the size, and the tail comes apart.
#[test]
fn a_blob_is_found_with_its_tail_in_one_request() {
    use ringstar_fetcher::ResolverConfig;
    use ringstar_testkit::FaultProxy;
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr.clone());
    let f = Fetcher::new(quick_config()).unwrap();
    let endpoints = ResolverConfig::default().endpoints(&proxy.addr);
    for len in [300_000usize, 700] {
        let data = blob_bytes(len);
        let digest = reg.push("test/tail", &data);
        let before = proxy.sent().matches("GET /v2/").count();
        let (loc, size, tail) = f
            .resolve_blob_tail(&endpoints, "test/tail", &digest, 4096)
            .unwrap();
        assert_eq!(size, len as u64);
        assert!(loc.url.ends_with(&digest));
        let tail = tail.expect("the registry answers suffix ranges");
        assert_eq!(&tail[..], &data[len.saturating_sub(4096)..]);
        assert_eq!(
            proxy.sent().matches("GET /v2/").count() - before,
            1,
            "one request for size and tail"
        );
    }
    let missing = f.resolve_blob_tail(
        &endpoints,
        "test/tail",
        "sha256:1111111111111111111111111111111111111111111111111111111111111111",
        4096,
    );
    assert!(
        matches!(missing, Err(FetchError::NotFound { .. })),
        "{missing:?}"
    );
    // A server that ignores Range and sends the whole blob.
    let data = blob_bytes(10_000);
    let body = data.clone();
    let (addr, _) = scripted_server(move |_| {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        Some(out)
    });
    let endpoints = ResolverConfig::default().endpoints(&addr);
    let (_, size, tail) = f
        .resolve_blob_tail(&endpoints, "x/y", "sha256:abc", 4096)
        .unwrap();
    assert_eq!(size, 10_000);
    assert!(tail.is_none());
}
