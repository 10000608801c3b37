//! Faults between the fetcher and Debian's real docker-registry, made by a
//! TCP proxy in the test: 429/503 answers, connections cut mid-body,
//! servers that never answer; and a registry that redirects to blob
//! storage, whose signed URL expires.

use std::time::{Duration, Instant};

use ringstar_fetcher::{BlobLocation, FetchError, Fetcher, FetcherConfig};
use ringstar_testkit::{Fault, FaultProxy, Registry};

fn blob_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 241) as u8).collect()
}

fn config() -> FetcherConfig {
    FetcherConfig {
        request_timeout: Duration::from_millis(800),
        connect_timeout: Duration::from_secs(1),
        max_retries: 3,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_secs(2),
        ..FetcherConfig::default()
    }
}

fn through(proxy: &FaultProxy, repo: &str, digest: &str) -> BlobLocation {
    BlobLocation {
        url: format!("http://{}/v2/{repo}/blobs/{digest}", proxy.addr),
        headers: Vec::new(),
        request_timeout: None,
    }
}

#[test]
fn throttling_and_unavailability_are_retried_honouring_retry_after() {
    let reg = Registry::start();
    let data = blob_bytes(300_000);
    let digest = reg.push("f/app", &data);
    let proxy = FaultProxy::start(reg.addr.clone());
    proxy.plan([
        Fault::status("503 Service Unavailable", ""),
        Fault::status("429 Too Many Requests", "Retry-After: 1\r\n"),
    ]);
    let f = Fetcher::new(config()).unwrap();
    let start = Instant::now();
    let got = f
        .read_range(&through(&proxy, "f/app", &digest), 1000, 5000)
        .unwrap();
    assert_eq!(&got[..], &data[1000..6000]);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After ignored"
    );
    assert_eq!(
        proxy.connections.load(std::sync::atomic::Ordering::SeqCst),
        3
    );

    // Unavailable past the budget: the typed error, in bounded time.
    proxy.plan(std::iter::repeat_n(
        Fault::status("503 Service Unavailable", ""),
        10,
    ));
    let f = Fetcher::new(config()).unwrap();
    let start = Instant::now();
    match f.read_range(&through(&proxy, "f/app", &digest), 0, 10) {
        Err(FetchError::Exhausted { attempts: 4, last }) => {
            assert!(matches!(*last, FetchError::Status { status: 503, .. }))
        }
        other => panic!("want Exhausted(503), got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_connection_cut_mid_body_is_replaced_and_the_read_completes() {
    let reg = Registry::start();
    let data = blob_bytes(2 << 20);
    let digest = reg.push("f/cut", &data);
    let proxy = FaultProxy::start(reg.addr.clone());
    // Two connections die after 64 KiB of a 1 MiB answer.
    proxy.plan([Fault::CutAfter(64 << 10), Fault::CutAfter(64 << 10)]);
    let f = Fetcher::new(config()).unwrap();
    let loc = through(&proxy, "f/cut", &digest);
    let got = f.read_range(&loc, 500_000, 1 << 20).unwrap();
    assert_eq!(&got[..], &data[500_000..500_000 + (1 << 20)]);
    assert_eq!(
        proxy.connections.load(std::sync::atomic::Ordering::SeqCst),
        3
    );

    // Every connection cut: a transport error after the budget, never a
    // short or padded answer.
    proxy.plan(std::iter::repeat_n(Fault::CutAfter(10_000), 10));
    let f = Fetcher::new(config()).unwrap();
    match f.read_range(&loc, 0, 1 << 20) {
        Err(FetchError::Exhausted { last, .. }) => {
            assert!(matches!(*last, FetchError::Transport { .. }), "{last:?}")
        }
        other => panic!("want Exhausted(Transport), got {other:?}"),
    }
}

#[test]
fn a_stalled_server_times_out_and_the_next_connection_serves() {
    let reg = Registry::start();
    let data = blob_bytes(100_000);
    let digest = reg.push("f/stall", &data);
    let proxy = FaultProxy::start(reg.addr.clone());
    proxy.plan([Fault::Stall]);
    let f = Fetcher::new(config()).unwrap();
    let loc = through(&proxy, "f/stall", &digest);
    let start = Instant::now();
    assert_eq!(&f.read_range(&loc, 10, 10).unwrap()[..], &data[10..20]);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // Stalled every time: a timeout error within attempts × timeout +
    // backoff, not a hang.
    proxy.plan(std::iter::repeat_n(Fault::Stall, 10));
    let f = Fetcher::new(config()).unwrap();
    let start = Instant::now();
    match f.read_range(&loc, 0, 10) {
        Err(FetchError::Exhausted { attempts: 4, last }) => {
            assert!(matches!(*last, FetchError::Timeout { .. }))
        }
        other => panic!("want Exhausted(Timeout), got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}

/// Redirects every blob request to `target` + the requested path, the way
/// a registry sends clients to blob storage.
fn redirector(target: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { break };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
            }
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = write!(
                w,
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (addr, count)
}

#[test]
fn redirects_drop_registry_headers_and_an_expired_target_is_asked_again() {
    let reg = Registry::start();
    let data = blob_bytes(100_000);
    let digest = reg.push("r/app", &data);
    // Blob storage: the real registry behind a recording proxy.
    let storage = FaultProxy::start(reg.addr.clone());
    let (registry, asked) = redirector(format!("http://{}", storage.addr));
    let f = Fetcher::new(config()).unwrap();
    let endpoint = ringstar_fetcher::Endpoint {
        base: format!("http://{registry}"),
        namespace: None,
        request_timeout: None,
        headers: vec![("authorization".into(), "Bearer registry-secret".into())],
    };
    let (loc, size) = f.resolve_blob(&[endpoint], "r/app", &digest).unwrap();
    assert_eq!(size, data.len() as u64);
    assert!(loc.url.contains(&registry), "callers keep the registry URL");
    assert_eq!(&f.read_range(&loc, 100, 100).unwrap()[..], &data[100..200]);
    assert_eq!(&f.read_range(&loc, 300, 100).unwrap()[..], &data[300..400]);
    // The redirect is remembered: one question to the registry so far.
    let n = asked.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(n, 1);
    assert!(
        !storage
            .sent()
            .to_ascii_lowercase()
            .contains("registry-secret"),
        "a registry header reached blob storage"
    );
    // The signed URL expires: storage answers 403, the registry is asked
    // again, and the read succeeds.
    storage.plan([Fault::status("403 Forbidden", "")]);
    storage.cut_all();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(&f.read_range(&loc, 0, 100).unwrap()[..], &data[..100]);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), n + 1);
    // A fresh redirect that is refused too is an error, not a loop.
    storage.plan([
        Fault::status("403 Forbidden", ""),
        Fault::status("403 Forbidden", ""),
    ]);
    storage.cut_all();
    std::thread::sleep(Duration::from_millis(100));
    assert!(matches!(
        f.read_range(&loc, 1000, 100),
        Err(FetchError::Status { status: 403, .. })
    ));
}
