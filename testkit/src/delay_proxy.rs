//! A TCP proxy that models a shared WAN link: latency each way and one
//! bandwidth shared by every connection in each direction.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
