//! Single-flight, coalescing and the per-host limit, against a test server
//! that serves ranges of a known blob slowly and logs every request.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringstar_fetcher::{BlobLocation, FetchError, Fetcher, FetcherConfig};

type Log = Arc<Mutex<Vec<(u64, u64)>>>;

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

/// Serves `Range` requests of `data` after `delay`, one thread per
/// connection, logging each (start, end).
fn range_server(data: Vec<u8>, delay: Duration) -> (BlobLocation, Log) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let log: Log = Arc::default();
    let (log2, data) = (log.clone(), Arc::new(data));
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(s) = conn else { break };
            let (log, data) = (log2.clone(), data.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut range = None;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end().to_ascii_lowercase();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.strip_prefix("range: bytes=") {
                            let (a, b) = v.split_once('-').unwrap();
                            range = Some((a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()));
                        }
                    }
                    let (a, b) = range.unwrap();
                    log.lock().unwrap().push((a, b));
                    std::thread::sleep(delay);
                    let len = data.len() as u64;
                    let mut w = &s;
                    if a >= len {
                        let _ = write!(
                            w,
                            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\n\r\n"
                        );
                        continue;
                    }
                    let b = b.min(len - 1);
                    let body = &data[a as usize..=b as usize];
                    let _ = write!(
                        w,
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{len}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = w.write_all(body);
                }
            });
        }
    });
    let loc = BlobLocation {
        url: format!("http://{addr}/v2/x/blobs/sha256:00"),
        headers: Vec::new(),
        request_timeout: None,
    };
    (loc, log)
}

fn read_all(
    f: &Fetcher,
    loc: &BlobLocation,
    reads: &[(u64, u64)],
) -> Vec<Result<Vec<u8>, FetchError>> {
    let (tx, rx) = mpsc::channel();
    for (i, &(off, len)) in reads.iter().enumerate() {
        let tx = tx.clone();
        f.read_range_then(loc, off, len, move |r| {
            tx.send((i, r.map(|b| b.to_vec()))).unwrap()
        });
    }
    let mut out: Vec<_> = (0..reads.len())
        .map(|_| rx.recv_timeout(Duration::from_secs(20)).unwrap())
        .collect();
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn identical_and_covered_reads_share_one_request() {
    let data = blob(100_000);
    let (loc, log) = range_server(data.clone(), Duration::from_millis(300));
    let f = Fetcher::new(FetcherConfig::default()).unwrap();
    let mut reads = vec![(1000u64, 4096u64); 10];
    reads.push((1100, 100)); // inside the first
    let got = read_all(&f, &loc, &reads);
    for (r, &(off, len)) in got.iter().zip(&reads) {
        assert_eq!(
            r.as_ref().unwrap()[..],
            data[off as usize..(off + len) as usize]
        );
    }
    assert_eq!(*log.lock().unwrap(), [(1000, 5095)]);
}

#[test]
fn waiting_reads_of_one_blob_merge_into_one_range() {
    let data = blob(100_000);
    let (loc, log) = range_server(data.clone(), Duration::from_millis(300));
    let f = Fetcher::new(FetcherConfig {
        max_in_flight_per_host: 1,
        ..FetcherConfig::default()
    })
    .unwrap();
    // The first takes the only slot; the next three wait, and merge.
    let reads = [
        (0u64, 100u64),
        (10_000, 100),
        (10_200, 100),
        (10_400, 100),
        (90_000, 10),
    ];
    let got = read_all(&f, &loc, &reads);
    for (r, &(off, len)) in got.iter().zip(&reads) {
        assert_eq!(
            r.as_ref().unwrap()[..],
            data[off as usize..(off + len) as usize]
        );
    }
    let mut seen = log.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, [(0, 99), (10_000, 10_499), (90_000, 90_009)]);
}

#[test]
fn a_merged_range_that_fails_retries_its_parts_alone() {
    let data = blob(10_300);
    let (loc, log) = range_server(data.clone(), Duration::from_millis(200));
    let f = Fetcher::new(FetcherConfig {
        max_in_flight_per_host: 1,
        ..FetcherConfig::default()
    })
    .unwrap();
    // The second and third merge; the merged range runs past the end.
    let reads = [(0u64, 10u64), (10_000, 100), (10_310, 10)];
    let got = read_all(&f, &loc, &reads);
    assert_eq!(got[0].as_ref().unwrap()[..], data[..10]);
    assert_eq!(got[1].as_ref().unwrap()[..], data[10_000..10_100]);
    assert!(
        matches!(got[2], Err(FetchError::RangeNotSatisfiable { .. })),
        "{:?}",
        got[2]
    );
    // One merged request, then each part alone; never a retry storm.
    assert!(log.lock().unwrap().len() <= 4, "{:?}", log.lock().unwrap());
}
