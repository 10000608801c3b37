//! What each registry host was asked and answered: requests, the body
//! bytes its answers announced (`Content-Length`), and failures
//! (transport and TLS errors, and answers of 400 or more). For metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::lock;

/// One host's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
}

/// Figures by host (`host:port` as the URL names it).
#[derive(Debug, Default)]
pub struct HostTable(Mutex<BTreeMap<String, HostStats>>);

/// Hosts kept at most: past this, new hosts count under `other` (a
/// registry redirecting to many storage hosts must not grow the table).
const MAX_HOSTS: usize = 256;

impl HostTable {
    pub(super) fn record(&self, url: &str, bytes: Option<u64>, failed: bool) {
        let host = host_of(url);
        let mut t = lock(&self.0);
        let key = if t.contains_key(host) || t.len() < MAX_HOSTS {
            host
        } else {
            "other"
        };
        let s = t.entry(key.to_string()).or_default();
        s.requests += 1;
        s.bytes += bytes.unwrap_or(0);
        s.errors += u64::from(failed);
    }

    pub fn snapshot(&self) -> Vec<(String, HostStats)> {
        lock(&self.0).iter().map(|(h, s)| (h.clone(), *s)).collect()
    }
}

/// `https://host:5000/v2/…` → `host:5000`.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_host_and_bounds_the_table() {
        let t = HostTable::default();
        t.record(
            "https://r.example:5000/v2/x/blobs/sha256:a",
            Some(10),
            false,
        );
        t.record("http://r.example:5000/v2/", None, true);
        t.record("https://cdn.example/blob?sig=1", Some(5), false);
        let snap = t.snapshot();
        assert_eq!(
            snap,
            vec![
                (
                    "cdn.example".to_string(),
                    HostStats {
                        requests: 1,
                        bytes: 5,
                        errors: 0
                    }
                ),
                (
                    "r.example:5000".to_string(),
                    HostStats {
                        requests: 2,
                        bytes: 10,
                        errors: 1
                    }
                ),
            ]
        );
        for i in 0..2 * MAX_HOSTS {
            t.record(&format!("https://h{i}.example/"), None, false);
        }
        assert!(t.snapshot().len() <= MAX_HOSTS + 1);
    }
}
