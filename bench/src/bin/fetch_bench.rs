//! Registry range reads over a WAN: 64 scattered 64 KiB ranges of one blob
//! through a delay proxy (40 ms RTT, 200 Mbit/s shared link), fetched over
//! TLS with HTTP/2 (one multiplexed connection) and with HTTP/1.1 (a
//! keep-alive pool) at the same concurrency limit, one at a time, and with
//! HTTP/1.1 over plain TCP (no TLS handshakes) for reference. Modes are
//! interleaved per round; medians of the rounds. Needs Debian's
//! docker-registry and openssl.
//!
//!     cargo run --release -p ringstar-bench --bin fetch-bench [ROUNDS]

use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringstar_bench::{Rng, median, report};
use ringstar_fetcher::{BlobLocation, Fetcher, FetcherConfig};
use ringstar_testkit::{DelayProxy, Registry, make_certs};

const RANGES: u64 = 64;
const RANGE_LEN: u64 = 64 << 10;
const STRIDE: u64 = 1 << 20;
const CONCURRENCY: usize = 16;

/// All ranges at once through the fetcher's scheduler: seconds.
fn concurrent(f: &Fetcher, loc: &BlobLocation) -> f64 {
    let t = Instant::now();
    let (tx, rx) = mpsc::channel();
    for i in 0..RANGES {
        let tx = tx.clone();
        f.read_range_then(loc, i * STRIDE, RANGE_LEN, move |r| {
            tx.send(r.map(|b| b.len())).expect("send")
        });
    }
    for _ in 0..RANGES {
        assert_eq!(rx.recv().expect("recv").expect("range") as u64, RANGE_LEN);
    }
    t.elapsed().as_secs_f64()
}

/// One range after the other: seconds.
fn serial(f: &Fetcher, loc: &BlobLocation) -> f64 {
    let t = Instant::now();
    for i in 0..RANGES {
        assert_eq!(
            f.read_range(loc, i * STRIDE, RANGE_LEN)
                .expect("range")
                .len() as u64,
            RANGE_LEN
        );
    }
    t.elapsed().as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(3), |s| s.parse())?;
    let certs = tempfile::tempdir()?;
    make_certs(certs.path());
    let storage = tempfile::tempdir()?;
    let plain = Registry::start_with(storage.path(), None);
    let mut rng = Rng::new(9);
    let blob: Vec<u8> = (0..RANGES * STRIDE).map(|_| rng.next_u64() as u8).collect();
    let digest = plain.push("bench/blob", &blob);
    let tls = Registry::start_with(
        storage.path(),
        Some((
            &certs.path().join("server.pem"),
            &certs.path().join("server.key"),
        )),
    );
    let (rtt, bw) = (Duration::from_millis(40), 200_000_000);
    let h1_proxy = DelayProxy::start(plain.addr.clone(), rtt, bw);
    let h2_proxy = DelayProxy::start(tls.addr.clone(), rtt, bw);
    let path = format!("/v2/bench/blob/blobs/{digest}");
    let h1_loc = BlobLocation {
        url: format!("http://{}{path}", h1_proxy.addr),
        headers: Vec::new(),
        request_timeout: None,
    };
    let h2_loc = BlobLocation {
        url: format!("https://{}{path}", h2_proxy.addr),
        ..h1_loc.clone()
    };
    let config = FetcherConfig {
        max_in_flight_per_host: CONCURRENCY,
        ..FetcherConfig::default()
    };
    let tls_config = FetcherConfig {
        ca_file: Some(certs.path().join("ca.pem")),
        ..config.clone()
    };
    let mut results: [Vec<f64>; 4] = Default::default();
    for _ in 0..rounds {
        // Fresh fetchers each round: every mode pays its own connection setup.
        let h2 = Fetcher::new(tls_config.clone())?;
        let h1_tls = Fetcher::new(FetcherConfig {
            http2: false,
            ..tls_config.clone()
        })?;
        let one = Fetcher::new(tls_config.clone())?;
        let h1_plain = Fetcher::new(config.clone())?;
        results[0].push(concurrent(&h2, &h2_loc));
        results[1].push(concurrent(&h1_tls, &h2_loc));
        results[2].push(serial(&one, &h2_loc));
        results[3].push(concurrent(&h1_plain, &h1_loc));
    }
    let [h2, h1, one, plain] = results.map(median);
    report(
        "fetch",
        serde_json::json!({
            "ranges": RANGES,
            "range_kib": RANGE_LEN >> 10,
            "rtt_ms": 40,
            "link_mbit": 200,
            "concurrency": CONCURRENCY,
            "tls_http2_s": (h2 * 1000.0).round() / 1000.0,
            "tls_http1_s": (h1 * 1000.0).round() / 1000.0,
            "tls_serial_s": (one * 1000.0).round() / 1000.0,
            "plain_http1_s": (plain * 1000.0).round() / 1000.0,
            "http1_over_http2": (h1 / h2 * 100.0).round() / 100.0,
            "serial_over_http2": (one / h2 * 100.0).round() / 100.0,
            "tls_connections": h2_proxy.connections.load(std::sync::atomic::Ordering::SeqCst),
            "plain_connections": h1_proxy.connections.load(std::sync::atomic::Ordering::SeqCst),
        }),
    );
    Ok(())
}
