//! The kubeconfig keychain (`[kubeconfig_keychain]`) with the real
//! parts (tests/cri_world: containerd with CRI, runc, a TLS + htpasswd
//! docker-registry, ringstar with no docker config). The test plays
//! kubelet: it pulls through containerd's own image service with the
//! pull secret's credentials, as kubelet does without the CRI keychain,
//! so ringstar's only way to the credentials is the secret.
//!
//! No Kubernetes API server is packaged for this machine, so the test
//! runs a minimal one that speaks the real protocol for what the keychain
//! asks: the list of secrets (`GET /api/v1/secrets?fieldSelector=…`)
//! and the watch that follows (`…&watch=true`, chunked JSON events). It
//! starts late, to check that ringstar starts without it and retries.

mod cri_world;
mod world;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use cri_world::{CriWorld, PASSWORD, USER};
use world::wait_for;

/// The API server's secrets and its open watches.
#[derive(Default)]
struct Cluster {
    secrets: Vec<serde_json::Value>,
    version: u64,
    watches: Vec<TcpStream>,
    /// Requests seen (method and path), for the failure message.
    requests: Vec<String>,
}

fn pull_secret(
    name: &str,
    registry: &str,
    user: &str,
    password: &str,
    version: u64,
) -> serde_json::Value {
    let config = serde_json::json!({"auths": {registry: {"username": user, "password": password}}});
    let b64 = base64::engine::general_purpose::STANDARD.encode(config.to_string());
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "team", "resourceVersion": version.to_string(),
                     "uid": format!("uid-{name}")},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": b64},
    })
}

/// Serves `cluster` on `listener`: lists, and watches kept open.
fn serve(listener: TcpListener, cluster: Arc<Mutex<Cluster>>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { return };
        let cluster = cluster.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                // Headers (no body on GET).
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                let mut c = cluster.lock().unwrap();
                c.requests.push(line.trim().to_string());
                if !path.starts_with("/api/v1/secrets") {
                    let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    continue;
                }
                if path.contains("watch=true") || path.contains("watch=1") {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                    );
                    c.watches.push(conn.try_clone().unwrap());
                    return;
                }
                let body = serde_json::json!({
                    "apiVersion": "v1", "kind": "SecretList",
                    "metadata": {"resourceVersion": c.version.to_string()},
                    "items": c.secrets,
                })
                .to_string();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
    }
}

/// Sends a watch event to every open watch.
fn event(cluster: &Mutex<Cluster>, kind: &str, object: serde_json::Value) {
    let line = format!("{}\n", serde_json::json!({"type": kind, "object": object}));
    let mut c = cluster.lock().unwrap();
    c.watches
        .retain_mut(|w| write!(w, "{:x}\r\n{line}\r\n", line.len()).is_ok());
}

#[test]
fn pull_secrets_from_the_api_server_reach_the_layers() {
    let port = ringstar_testkit::free_port();
    let w = CriWorld::start(|d| {
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{port}\n\
                 contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
                 current-context: test\nusers:\n- name: test\n  user:\n    token: test-token\n"
            ),
        )
        .unwrap();
        format!(
            "[kubeconfig_keychain]\nenable_keychain = true\nkubeconfig_path = \"{}\"\n",
            kubeconfig.display()
        )
    });
    // ringstar started without an API server: one warning, retrying.
    wait_for(
        "the keychain's first failure",
        Duration::from_secs(20),
        || {
            w.ringstar_log()
                .contains("cannot read pull secrets; retrying")
        },
    );
    assert_eq!(
        w.ringstar_log().matches("cannot read pull secrets").count(),
        1,
        "one line, not one per retry"
    );

    let registry = w.registry.addr.clone();
    let cluster = Arc::new(Mutex::new(Cluster {
        secrets: vec![pull_secret("pull", &registry, USER, PASSWORD, 1)],
        version: 1,
        ..Cluster::default()
    }));
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let c = cluster.clone();
    std::thread::spawn(move || serve(listener, c));
    wait_for("the secrets listed", Duration::from_secs(60), || {
        w.ringstar_log()
            .contains("pull secrets listed from the API server secrets=1")
    });

    // kubelet without the CRI keychain: the pull secret goes to
    // containerd, and ringstar has only the API server's copy.
    let out = w.pull_and_run(&w.dir.path().join("containerd.sock"));
    assert!(out.contains("hello from ringstar"), "{out}\n{}", w.logs());
    w.assert_lazy();

    // Secret changes follow through the watch.
    wait_for("the watch", Duration::from_secs(20), || {
        !cluster.lock().unwrap().watches.is_empty()
    });
    event(
        &cluster,
        "ADDED",
        pull_secret("other", "other.example", "u", "p", 2),
    );
    wait_for("the added secret", Duration::from_secs(20), || {
        w.ringstar_log()
            .contains("pull secret from the API server secret=team/other")
    });
    event(
        &cluster,
        "DELETED",
        pull_secret("pull", &registry, USER, PASSWORD, 3),
    );
    wait_for("the deleted secret", Duration::from_secs(20), || {
        w.ringstar_log()
            .contains("pull secret removed secret=team/pull")
    });
    let requests = cluster.lock().unwrap().requests.clone();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("fieldSelector=type%3Dkubernetes.io%2Fdockerconfigjson")),
        "{requests:?}"
    );
}
