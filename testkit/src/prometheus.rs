//! Debian's Prometheus as a process, scraping one target: what the
//! metrics tests check the daemon's `/metrics` with.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's Prometheus scraping `target` every second.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus (`bin`) scraping `target` every second.
    pub fn start(bin: &str, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ringstar\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", crate::free_port());
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("prometheus");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The value of instant query `q`, once it has one (60 s at most).
    pub fn value(&self, q: &str) -> f64 {
        let path = format!("/api/v1/query?query={}", urlencode(q));
        let started = Instant::now();
        loop {
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                let (status, _, body) = crate::http(&self.addr, "GET", &path, b"");
                if status == 200 {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    if let Some(x) = v["data"]["result"][0]["value"][1].as_str() {
                        return x.parse().unwrap();
                    }
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "Prometheus has no value for {q}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
