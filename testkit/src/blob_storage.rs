//! Blob storage behind a registry's redirects (S3, a CDN).

use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::certs::{tls_server_config, tls_stream};
use crate::helpers::read_request;

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
