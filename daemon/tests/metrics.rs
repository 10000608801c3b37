//! The daemon's metrics and debug endpoints with the real world: a lazy
//! pull and a container run through containerd (see tests/world), the
//! metrics scraped by hand and checked by Debian's `promtool check
//! metrics`, and by a real Prometheus (Debian's `prometheus`) scraping
//! the endpoint during the run; the debug socket's layer dump. Needs
//! what tests/containerd.rs needs, and prometheus.

mod world;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ringstar_testkit::prometheus::Prometheus;
use world::{SCRIPT, World, estargz, need, wait_for};

/// GET `path` from the HTTP server on unix socket `socket`: the body.
fn get_unix(socket: &Path, path: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

fn get(addr: &str, path: &str) -> String {
    let (status, _, body) = ringstar_testkit::http(addr, "GET", path, b"");
    assert_eq!(status, 200, "GET {path}");
    String::from_utf8(body).unwrap()
}

/// The value of the sample `name{labels}` (labels as written, sorted as
/// the encoder writes them), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn metrics_and_debug_endpoints_show_a_lazy_run() {
    let port = ringstar_testkit::free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("debug.sock");
    let mut w = World::start_configured(&format!(
        "metrics_address = \"{metrics_addr}\"\ndebug_address = \"{}\"\n",
        socket.display()
    ));
    let prometheus = Prometheus::start(&need("prometheus"), &metrics_addr);
    w.push(
        "ringstar/metrics",
        "esgz",
        &estargz(),
        &["sh", "-c", SCRIPT],
    );
    let reference = format!("{}/ringstar/metrics:esgz", w.registry.addr);
    w.rpull(&reference);
    let out = w.run_container(&reference, &[]);
    assert!(out.contains("whiteout-applied"), "{out}");

    // By hand: the container's requests and reads, its layers, the
    // registry's requests.
    let text = get(&metrics_addr, "/metrics");
    let count = |op: &str| {
        sample(
            &text,
            &format!("ringstar_fuse_requests_total{{operation=\"{op}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(count("LOOKUP") > 0.0 && count("OPEN") > 0.0, "{text}");
    assert!(
        text.contains(
            "ringstar_fuse_operation_duration_seconds_bucket{operation=\"LOOKUP\",le=\"0.001\"}"
        ),
        "{text}"
    );
    let host = format!(
        "ringstar_registry_requests_total{{host=\"{}\"}}",
        w.registry.addr
    );
    assert!(sample(&text, &host).unwrap_or(0.0) > 0.0, "{text}");
    assert!(
        text.contains("stargz_fs_layer_size_bytes{digest=\"sha256:"),
        "{text}"
    );
    assert!(text.contains("ringstar_layer_fetched_percent{"), "{text}");
    assert!(text.contains("ringstar_store_capacity_bytes "), "{text}");

    // promtool accepts the exposition.
    let mut check = Command::new(need("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let done = check.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );

    // A real Prometheus scraped it, and sees the container's opens.
    assert_eq!(prometheus.value("up{job=\"ringstar\"}"), 1.0);
    assert!(prometheus.value("ringstar_fuse_requests_total{operation=\"OPEN\"}") > 0.0);
    assert!(prometheus.value("sum(stargz_fs_layer_size_bytes)") > 0.0);

    // The debug socket: every layer with its progress, and the requests.
    let layers: serde_json::Value =
        serde_json::from_str(&get_unix(&socket, "/debug/layers")).unwrap();
    let layers = layers.as_array().unwrap();
    assert_eq!(layers.len(), 2, "{layers:?}");
    for l in layers {
        assert_eq!(l["state"], "ready");
        assert!(l["digest"].as_str().unwrap().starts_with("sha256:"));
        assert!(l["fetchedPercent"].as_f64().is_some());
    }
    // Background fetch finishes the layers: 100 %, in the metrics too.
    wait_for("background fetch", Duration::from_secs(60), || {
        let text = get(&metrics_addr, "/metrics");
        text.lines()
            .filter(|l| l.starts_with("ringstar_layer_fetched_percent{"))
            .all(|l| l.ends_with(" 100"))
    });
    // Complete, both are unpacked for new containers: counted, and
    // /debug/layers says where.
    wait_for("layers unpacked", Duration::from_secs(60), || {
        get(&metrics_addr, "/metrics").contains("\nringstar_layers_unpacked 2\n")
    });
    let layers: serde_json::Value =
        serde_json::from_str(&get_unix(&socket, "/debug/layers")).unwrap();
    for l in layers.as_array().unwrap() {
        let dir = l["unpacked"].as_str().unwrap_or_else(|| panic!("{l}"));
        assert!(std::path::Path::new(dir).is_dir(), "{l}");
    }
    let fetches: serde_json::Value =
        serde_json::from_str(&get_unix(&socket, "/debug/fetches")).unwrap();
    assert!(fetches.is_array(), "{fetches}");
    let fuse: serde_json::Value = serde_json::from_str(&get_unix(&socket, "/debug/fuse")).unwrap();
    assert!(fuse["LOOKUP"].as_u64().unwrap() > 0);
    assert!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o077 == 0);
}

use std::os::unix::fs::PermissionsExt;
