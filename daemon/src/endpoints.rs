//! The daemon's HTTP endpoints, each a small server on a thread of its
//! own (never a data-plane core): Prometheus `/metrics` on
//! `metrics_address` (TCP), and the debug endpoints on `debug_address`
//! (a unix socket, mode 0600: they name every layer):
//!
//! - `/debug/layers`: every layer, its state, sizes and fetch progress;
//! - `/debug/fuse`: FUSE requests by operation;
//! - `/debug/fetches`: the chunks being fetched now, each with its layer,
//!   file, offset and how many reads wait for it;
//! - `/metrics` as well, so an operator with only the socket sees them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use crate::StartError;
use crate::remote::Remote;

/// The running servers; stopped when dropped.
#[derive(Default)]
pub struct Endpoints {
    servers: Vec<(Arc<tiny_http::Server>, std::thread::JoinHandle<()>)>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("servers", &self.servers.len())
            .finish()
    }
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        for (server, thread) in self.servers.drain(..) {
            server.unblock();
            let _ = thread.join();
        }
    }
}

impl Endpoints {
    /// Starts what the settings ask for; none when neither is set.
    pub fn start(
        remote: &Arc<Remote>,
        metrics: Option<&str>,
        debug: Option<&Path>,
    ) -> Result<Endpoints, StartError> {
        let mut e = Endpoints::default();
        if let Some(addr) = metrics {
            remote.enable_op_timing();
            let server = tiny_http::Server::http(addr).map_err(|err| StartError::Endpoint {
                address: addr.to_string(),
                reason: err.to_string(),
            })?;
            tracing::info!(address = addr, "serving Prometheus metrics at /metrics");
            e.spawn(server, remote.clone(), false)?;
        }
        if let Some(path) = debug {
            let _ = std::fs::remove_file(path);
            let server =
                tiny_http::Server::http_unix(path).map_err(|err| StartError::Endpoint {
                    address: path.display().to_string(),
                    reason: err.to_string(),
                })?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(StartError::io("chmod 0600", path))?;
            tracing::info!(socket = %path.display(), "serving the debug endpoints");
            e.spawn(server, remote.clone(), true)?;
        }
        Ok(e)
    }

    fn spawn(
        &mut self,
        server: tiny_http::Server,
        remote: Arc<Remote>,
        debug: bool,
    ) -> Result<(), StartError> {
        let server = Arc::new(server);
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name(if debug { "debug-http" } else { "metrics-http" }.into())
            .spawn(move || {
                for request in s.incoming_requests() {
                    answer(request, &remote, debug);
                }
            })
            .map_err(StartError::Resolvers)?;
        self.servers.push((server, thread));
        Ok(())
    }
}

fn answer(request: tiny_http::Request, remote: &Remote, debug: bool) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let (status, content_type, body) = match (path.as_str(), debug) {
        ("/metrics", _) => (
            200,
            "text/plain; version=0.0.4",
            crate::metrics::render(remote),
        ),
        ("/debug/layers", true) => (200, "application/json", layers_json(remote)),
        ("/debug/fuse", true) => (200, "application/json", fuse_json(remote)),
        ("/debug/fetches", true) => (200, "application/json", fetches_json(remote)),
        _ => (404, "text/plain", "not found\n".to_string()),
    };
    let header = tiny_http::Header::from_bytes("Content-Type", content_type).expect("header");
    let response = tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(header);
    if let Err(e) = request.respond(response) {
        tracing::debug!(error = %e, path, "answering an HTTP request");
    }
}

fn layers_json(remote: &Remote) -> String {
    let secs = |t: std::time::Duration| t.as_secs_f64();
    let layers: Vec<serde_json::Value> = remote
        .layers()
        .into_iter()
        .map(|v| {
            let mut o = serde_json::json!({
                "name": v.name,
                "state": v.state,
                "shown": v.shown,
                "stateAgeSeconds": secs(v.age),
            });
            if let Some(dir) = remote.unpacked_dir(&v.name) {
                o["unpacked"] = dir.display().to_string().into();
            }
            if let Some(l) = &v.layer {
                o["digest"] = l.digest.to_string().into();
                o["size"] = l.blob_size.into();
                o["fetchedSize"] = l.fetched_size().into();
                o["fetchedPercent"] = l.fetched_percent().into();
                o["files"] = l.regular_files().count().into();
                if let Some((bytes, t)) = l.prefetch_record() {
                    o["prefetch"] = serde_json::json!({"bytes": bytes, "seconds": secs(t)});
                }
                if let Some((bytes, t)) = l.background_record() {
                    o["backgroundFetch"] = serde_json::json!({"bytes": bytes, "seconds": secs(t)});
                }
                if let Some(e) = l.last_error() {
                    o["lastError"] = e.into();
                }
            }
            o
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&layers).expect("json");
    out.push('\n');
    out
}

fn fetches_json(remote: &Remote) -> String {
    let layers: std::collections::HashMap<u64, _> = remote
        .layers()
        .into_iter()
        .filter_map(|v| v.layer)
        .map(|l| (l.id, l))
        .collect();
    let fetches: Vec<serde_json::Value> = remote
        .fs()
        .loader()
        .in_flight()
        .into_iter()
        .map(|(key, waiting)| {
            let layer = layers.get(&key.layer);
            serde_json::json!({
                "layer": layer.map(|l| l.digest.to_string()),
                "file": layer.map(|l| l.tree().path_of(key.node)),
                "offset": key.file_offset,
                "waiting": waiting,
            })
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&fetches).expect("json");
    out.push('\n');
    out
}

fn fuse_json(remote: &Remote) -> String {
    let ops: serde_json::Map<String, serde_json::Value> = remote
        .fuse_ops()
        .into_iter()
        .filter(|o| o.count > 0)
        .map(|o| (o.name.to_string(), o.count.into()))
        .collect();
    let mut out = serde_json::to_string_pretty(&ops).expect("json");
    out.push('\n');
    out
}
