//! A TCP proxy in front of a real server that applies planned faults a
//! connection at a time (an answer of its own, a cut, a stall).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    plan: Arc<Mutex<VecDeque<Fault>>>,
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
        // Shut down after the lock is given up: a proxy thread may be
        // waiting for it to record a new connection.
        let live = std::mem::take(&mut *self.live.lock().unwrap());
        for c in live {
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
