//! Hostile answers against Debian's real docker-registry (issue #14):
//! redirects that downgrade to plain http, token realms that would get
//! credentials in clear, token lifetimes and ranges at u64::MAX, panics in
//! the fetch task and in callers' callbacks, credential helpers that hang,
//! and presigned URLs that must not reach errors or logs.
//!
//! The logs of this process are captured (one global subscriber), so each
//! test looks only at lines naming its own addresses.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ringstar_fetcher::{BlobLocation, DockerConfig, FetchError, Fetcher, FetcherConfig};
use ringstar_testkit::{
    BlobStorage, Fault, FaultProxy, Registry, RegistryAuth, TokenServer, TokenServerOptions,
    capture_logs, inject_panics, make_certs, stop_panics, write_htpasswd,
};

fn blob_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 17 % 239) as u8).collect()
}

fn config() -> FetcherConfig {
    FetcherConfig {
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_retries: 3,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..FetcherConfig::default()
    }
}

/// A fetcher trusting the test CA in `certs`.
fn tls_config(certs: &Path) -> FetcherConfig {
    FetcherConfig {
        ca_file: Some(certs.join("ca.pem")),
        ..config()
    }
}

fn tls_pair(certs: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (certs.join("server.pem"), certs.join("server.key"))
}

/// A scratch dir with test certificates in `certs/`: (dir, certs dir,
/// server certificate, server key).
fn with_certs() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_certs(&certs);
    let (cert, key) = tls_pair(&certs);
    (dir, certs, cert, key)
}

/// Blob GETs of `digest` in the registry's access log.
fn blob_gets(reg: &Registry, digest: &str) -> usize {
    reg.requests()
        .iter()
        .filter(|(m, p, _)| m == "GET" && p.contains(digest))
        .count()
}

/// Item 1: a registry over https whose blob storage is plain http: the
/// redirect is refused (typed, not retried, nothing sent to storage); one
/// whose storage is https on another host: followed.
#[test]
fn https_redirects_to_another_host_are_followed_and_downgrades_refused() {
    let logs = capture_logs();
    let (dir, certs, cert, key) = with_certs();
    let storage = dir.path().join("storage");
    std::fs::create_dir(&storage).unwrap();
    let data = blob_bytes(100_000);
    let digest = Registry::start_with(&storage, None).push("s/app", &data);

    // https registry → https storage on another host (localhost, not
    // 127.0.0.1): allowed, as S3 and CDN redirects are.
    let tls_storage = BlobStorage::start(&storage, Some((&cert, &key)));
    let port = tls_storage.addr.rsplit_once(':').unwrap().1;
    let reg = Registry::start_redirecting(
        &storage,
        Some((&cert, &key)),
        &format!("https://localhost:{port}"),
        &dir.path().join("access-ok.log"),
    );
    let f = Fetcher::new(tls_config(&certs)).unwrap();
    let loc = reg.tls_location("s/app", &digest);
    assert_eq!(
        &f.read_range(&loc, 500, 1000).unwrap()[..],
        &data[500..1500]
    );
    assert_eq!(
        tls_storage.requests.lock().unwrap().len(),
        1,
        "the blob came from storage"
    );
    drop(reg);

    // https registry → http storage: refused before storage is asked, and
    // not retried (one GET at the registry although 3 retries are allowed).
    let plain_storage = BlobStorage::start(&storage, None);
    let reg = Registry::start_redirecting(
        &storage,
        Some((&cert, &key)),
        &format!("http://{}", plain_storage.addr),
        &dir.path().join("access-down.log"),
    );
    let f = Fetcher::new(tls_config(&certs)).unwrap();
    let loc = reg.tls_location("s/app", &digest);
    match f.read_range(&loc, 0, 10) {
        Err(FetchError::RedirectRefused { target, reason, .. }) => {
            assert!(target.starts_with("http://"), "{target}");
            assert!(reason.contains("downgrade"), "{reason}");
        }
        other => panic!("want RedirectRefused, got {other:?}"),
    }
    assert!(plain_storage.requests.lock().unwrap().is_empty());
    // The registry logs a request after answering it: wait for the line,
    // then for any retry's.
    let start = Instant::now();
    while blob_gets(&reg, &digest) == 0 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(blob_gets(&reg, &digest), 1, "{:?}", reg.requests());
    // The size probe (resolve) is refused the same way.
    let endpoint = ringstar_fetcher::Endpoint {
        base: format!("https://{}", reg.addr),
        namespace: None,
        request_timeout: None,
        headers: Vec::new(),
    };
    assert!(matches!(
        f.resolve_blob(&[endpoint], "s/app", &digest),
        Err(FetchError::RedirectRefused { .. })
    ));
    assert!(plain_storage.requests.lock().unwrap().is_empty());
    let refused = logs.matching(&plain_storage.addr);
    assert!(
        refused.iter().any(|l| l.contains("refused a redirect")),
        "{refused:?}"
    );
}

/// Item 2: an https registry whose token realm is plain http: no request
/// reaches the realm (the password grant would carry the password in
/// clear); a typed error and one log line. An https realm on another host
/// (Docker Hub's auth.docker.io) is used.
#[test]
fn an_http_realm_of_an_https_registry_gets_no_credentials() {
    let logs = capture_logs();
    let (dir, certs, cert, key) = with_certs();
    let data = blob_bytes(20_000);

    for tls_realm in [false, true] {
        let sub = dir.path().join(format!("realm-{tls_realm}"));
        std::fs::create_dir(&sub).unwrap();
        let tokens = TokenServer::start(
            &sub,
            TokenServerOptions {
                user: Some(("dave".into(), "pw".into())),
                oauth: true,
                tls: tls_realm.then(|| (cert.clone(), key.clone())),
                ..Default::default()
            },
        );
        let storage = sub.join("storage");
        let digest = Registry::start_with(&storage, None).push("t/app", &data);
        let reg = Registry::start_configured(
            &storage,
            Some((&cert, &key)),
            Some(&tokens.registry_auth()),
        );
        let f = Fetcher::new(FetcherConfig {
            credentials: Some(ringstar_testkit::static_credentials(
                &reg.addr, "dave", "pw",
            )),
            ..tls_config(&certs)
        })
        .unwrap();
        let loc = reg.tls_location("t/app", &digest);
        let got = f.read_range(&loc, 100, 100);
        if tls_realm {
            assert_eq!(&got.unwrap()[..], &data[100..200]);
            let asked = tokens.requests();
            assert_eq!(asked.len(), 1, "{asked:?}");
            assert!(asked[0].authenticated);
        } else {
            match got {
                Err(FetchError::RealmRefused { realm, reason, .. }) => {
                    assert!(realm.starts_with("http://"), "{realm}");
                    assert!(reason.contains("plain http"), "{reason}");
                }
                other => panic!("want RealmRefused, got {other:?}"),
            }
            assert!(tokens.requests().is_empty(), "{:?}", tokens.requests());
            let lines: Vec<_> = logs
                .matching(&tokens.addr)
                .into_iter()
                .filter(|l| l.contains("refused a token realm"))
                .collect();
            assert_eq!(lines.len(), 1, "{lines:?}");
        }
    }
}

/// Item 4: a token server answering `expires_in: u64::MAX` overflowed the
/// expiry instant: a panic in the fetch task that leaked the host's
/// in-flight count, so the host was wedged (one fetch at a time until it
/// is warm, 16 after). Now the lifetime is clamped and every fetch works.
#[test]
fn a_token_lifetime_of_u64_max_does_not_wedge_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(
        dir.path(),
        TokenServerOptions {
            expires_in: Some(u64::MAX),
            ..Default::default()
        },
    );
    let data = blob_bytes(200_000);
    let storage = dir.path().join("storage");
    let digest = Registry::start_with(&storage, None).push("u/app", &data);
    let reg = Registry::start_configured(&storage, None, Some(&tokens.registry_auth()));
    let f = Fetcher::new(config()).unwrap();
    let loc = reg.location("u/app", &digest);
    for i in 0..24usize {
        let (tx, rx) = std::sync::mpsc::channel();
        f.read_range_then(&loc, (i * 1000) as u64, 500, move |r| {
            let _ = tx.send(r);
        });
        let got = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("fetch {i} hangs"));
        assert_eq!(
            &got.unwrap()[..],
            &data[i * 1000..i * 1000 + 500],
            "fetch {i}"
        );
    }
    // The clamped token is cached: one token request for all of them.
    assert_eq!(tokens.requests().len(), 1);
}

/// Item 4: Content-Range and Retry-After at u64::MAX from a server in
/// front of the real registry: no overflow (a suffix range ending at
/// u64::MAX panicked the probe), the tail falls back to a plain probe, and
/// the wait is capped.
#[test]
fn wire_numbers_at_u64_max_are_refused_not_overflowed() {
    let reg = Registry::start();
    let data = blob_bytes(50_000);
    let digest = reg.push("n/app", &data);
    let proxy = FaultProxy::start(reg.addr.clone());
    proxy.plan([Fault::Answer(
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-18446744073709551615/0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    )]);
    let f = Fetcher::new(config()).unwrap();
    let endpoint = ringstar_fetcher::Endpoint {
        base: format!("http://{}", proxy.addr),
        namespace: None,
        request_timeout: None,
        headers: Vec::new(),
    };
    let (_, size, tail) = f
        .resolve_blob_tail(&[endpoint], "n/app", &digest, 100)
        .unwrap();
    assert_eq!((size, tail), (data.len() as u64, None));

    proxy.plan([
        Fault::status("503 Service Unavailable", "Retry-After: 18446744073709551615\r\n"),
        Fault::Answer(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 18446744073709551614-18446744073709551615/18446744073709551615\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        ),
    ]);
    proxy.cut_all();
    let loc = BlobLocation {
        url: format!("http://{}/v2/n/app/blobs/{digest}", proxy.addr),
        headers: Vec::new(),
        request_timeout: None,
    };
    let start = Instant::now();
    // 503 (wait capped at backoff_max), then a lying range (a typed error,
    // not retried).
    assert!(matches!(
        f.read_range(&loc, 10, 10),
        Err(FetchError::BadResponse { .. })
    ));
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(&f.read_range(&loc, 10, 10).unwrap()[..], &data[10..20]);
}

/// Item 5: a panic inside the fetch task answers every waiter with a
/// typed error, releases the host's in-flight count and the single-flight
/// entry, is logged, and the fetcher goes on serving that host.
#[test]
fn a_panicking_fetch_answers_its_waiters_and_the_host_keeps_serving() {
    let logs = capture_logs();
    let reg = Registry::start();
    let data = blob_bytes(300_000);
    let digest = reg.push("p/app", &data);
    let loc = reg.location("p/app", &digest);
    let f = Fetcher::new(config()).unwrap();
    // Every attempt of this blob panics until disarmed: a burst of reads,
    // some merged, some queued behind the first (the host is not warm, so
    // one request at a time).
    inject_panics(&digest, usize::MAX);
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..8u64 {
        let tx = tx.clone();
        f.read_range_then(&loc, i * 2000, 1000, move |r| {
            let _ = tx.send(r);
        });
    }
    drop(tx);
    let mut answered = 0;
    while let Ok(r) = rx.recv_timeout(Duration::from_secs(30)) {
        match r {
            Err(FetchError::Internal { reason, .. }) => {
                assert!(reason.contains("panicked"), "{reason}")
            }
            other => panic!("want Internal, got {other:?}"),
        }
        answered += 1;
        if answered == 8 {
            break;
        }
    }
    assert_eq!(answered, 8, "a waiter was never answered");
    stop_panics(&digest);
    // Had a count leaked, the host would be stuck (limit 1 while cold, 16
    // once warm): more fetches than that all succeed.
    for i in 0..20usize {
        let (tx, rx) = std::sync::mpsc::channel();
        f.read_range_then(&loc, (i * 3000) as u64, 100, move |r| {
            let _ = tx.send(r);
        });
        let got = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("fetch {i} after the panics hangs"));
        assert_eq!(&got.unwrap()[..], &data[i * 3000..i * 3000 + 100]);
    }
    let lines: Vec<_> = logs
        .matching(&reg.addr)
        .into_iter()
        .filter(|l| l.contains("fetch task failed"))
        .collect();
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|l| l.starts_with("ERROR")), "{lines:?}");
}

/// Item 5: a caller's callback that panics (it runs on the fetcher's
/// runtime) is contained and logged; the fetcher goes on serving.
#[test]
fn a_panicking_callback_is_contained_and_logged() {
    let logs = capture_logs();
    let reg = Registry::start();
    let data = blob_bytes(10_000);
    let digest = reg.push("c/app", &data);
    let loc = reg.location("c/app", &digest);
    let f = Fetcher::new(config()).unwrap();
    for _ in 0..3 {
        f.read_range_then(&loc, 0, 10, |_| panic!("caller bug"));
    }
    assert_eq!(&f.read_range(&loc, 10, 10).unwrap()[..], &data[10..20]);
    // The log line is written on the fetcher thread; wait for it.
    let start = Instant::now();
    let lines = loop {
        let lines: Vec<_> = logs
            .matching(&reg.addr)
            .into_iter()
            .filter(|l| l.contains("callback panicked") && l.contains("caller bug"))
            .collect();
        if lines.len() == 3 || start.elapsed() > Duration::from_secs(30) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
}

/// Item 6: a credential helper that hangs fails the fetch with a typed
/// error in bounded time (it used to hang the lookup forever, each
/// attempt leaving a blocked thread behind).
#[test]
fn a_hanging_credential_helper_fails_the_fetch_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, "erin", "pw");
    let data = blob_bytes(10_000);
    let storage = dir.path().join("storage");
    let digest = Registry::start_with(&storage, None).push("h/app", &data);
    let reg = Registry::start_configured(
        &storage,
        None,
        Some(&RegistryAuth::Htpasswd { path: htpasswd }),
    );
    let helpers = dir.path().join("bin");
    std::fs::create_dir(&helpers).unwrap();
    let helper = helpers.join("docker-credential-stuck");
    ringstar_testkit::write_executable(&helper, "#!/bin/sh\nexec sleep 120\n");
    let docker = dir.path().join("config.json");
    std::fs::write(
        &docker,
        format!(r#"{{"credHelpers":{{"{}":"stuck"}}}}"#, reg.addr),
    )
    .unwrap();
    let source = DockerConfig::at(&docker)
        .with_helper_dir(&helpers)
        .with_helper_timeout(Duration::from_secs(1));
    let f = Fetcher::new(FetcherConfig {
        credentials: Some(Arc::new(source)),
        ..config()
    })
    .unwrap();
    let start = Instant::now();
    match f.read_range(&reg.location("h/app", &digest), 0, 10) {
        Err(FetchError::Unauthorized { reason, .. }) => {
            assert!(reason.contains("no answer within"), "{reason}")
        }
        other => panic!("want Unauthorized (helper timeout), got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

/// Redirects every request to `target` (a presigned URL, query and all).
fn redirector(target: String) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { break };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
            }
            c.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                w,
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (addr, count)
}

/// Item 7: a presigned URL's query (its signature) appears in no error
/// (Display or Debug) and no log line, while blob storage does get it.
#[test]
fn a_redirected_fetch_error_does_not_show_the_presigned_query() {
    let logs = capture_logs();
    let reg = Registry::start();
    let data = blob_bytes(50_000);
    let digest = reg.push("q/app", &data);
    // Blob storage: the real registry behind a proxy that cuts the first
    // connections before answering.
    let storage = FaultProxy::start(reg.addr.clone());
    let signed = format!(
        "http://user:pw@{}/v2/q/app/blobs/{digest}?X-Amz-Credential=AKIDSECRET&X-Amz-Signature=SIGSECRET",
        storage.addr
    );
    let (registry, _) = redirector(signed);
    let loc = BlobLocation {
        url: format!("http://{registry}/v2/q/app/blobs/{digest}"),
        headers: vec![("authorization".into(), "Bearer MIRRORSECRET".into())],
        request_timeout: None,
    };
    storage.plan(std::iter::repeat_n(Fault::CutAfter(0), 4));
    let f = Fetcher::new(config()).unwrap();
    let err = f.read_range(&loc, 0, 10).unwrap_err();
    let shown = format!("{err} | {err:?} | {loc:?}");
    assert!(
        shown.contains(&storage.addr),
        "the error names storage: {shown}"
    );
    assert!(shown.contains("?REDACTED"), "{shown}");
    for secret in ["SIGSECRET", "AKIDSECRET", "user:pw", "MIRRORSECRET"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    // Storage answers now; it did get the signature.
    assert_eq!(&f.read_range(&loc, 0, 10).unwrap()[..], &data[..10]);
    assert!(storage.sent().contains("SIGSECRET"));
    let lines = logs.matching(&storage.addr);
    assert!(!lines.is_empty(), "the retries were logged");
    for l in logs.lines() {
        assert!(!l.contains("SIGSECRET") && !l.contains("AKIDSECRET"), "{l}");
    }
}
