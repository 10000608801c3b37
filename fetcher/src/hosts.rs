//! Which endpoints serve a registry host: its configured mirrors in order,
//! then the host itself (snapshotter-protocol.md §7.1).

use std::collections::HashMap;
use std::time::Duration;

/// One mirror of a host, as `[[resolver.host."H".mirrors]]` configures it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorConfig {
    /// `host[:port]`, optionally with a scheme (`http://…`) and path prefix.
    pub host: String,
    /// Plain HTTP.
    pub insecure: bool,
    /// Per-request timeout for this mirror (the fetcher's default otherwise).
    pub request_timeout: Option<Duration>,
    /// Extra request headers (not sent on redirects).
    pub headers: Vec<(String, String)>,
}

/// Mirrors by registry host.
#[derive(Debug, Clone, Default)]
pub struct ResolverConfig {
    pub mirrors: HashMap<String, Vec<MirrorConfig>>,
}

/// Where to send a registry request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port][/prefix]` with no trailing slash.
    pub base: String,
    /// For a mirror: the original host, sent as `?ns=`.
    pub namespace: Option<String>,
    pub request_timeout: Option<Duration>,
    pub headers: Vec<(String, String)>,
}

impl Endpoint {
    /// The blob URL of `digest` in `repository`.
    pub fn blob_url(&self, repository: &str, digest: &str) -> String {
        let mut url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        if let Some(ns) = &self.namespace {
            url.push_str("?ns=");
            url.push_str(ns);
        }
        url
    }
}

fn is_local(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    matches!(name, "localhost" | "127.0.0.1" | "[::1]" | "::1") || name.starts_with("127.")
}

fn base_of(host: &str, insecure: bool) -> String {
    if host.starts_with("http://") || host.starts_with("https://") {
        return host.trim_end_matches('/').to_string();
    }
    let scheme = if insecure || is_local(host) {
        "http"
    } else {
        "https"
    };
    format!("{scheme}://{}", host.trim_end_matches('/'))
}

impl ResolverConfig {
    /// The endpoints for registry host `host`, mirrors first.
    pub fn endpoints(&self, host: &str) -> Vec<Endpoint> {
        let origin = if host == crate::reference::DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            host
        };
        let mut out: Vec<Endpoint> = self
            .mirrors
            .get(host)
            .into_iter()
            .flatten()
            .map(|m| {
                let base = base_of(&m.host, m.insecure);
                let mirror_host = m
                    .host
                    .trim_start_matches("http://")
                    .trim_start_matches("https://");
                Endpoint {
                    namespace: (mirror_host != origin).then(|| host.to_string()),
                    base,
                    request_timeout: m.request_timeout,
                    headers: m.headers.clone(),
                }
            })
            .collect();
        out.push(Endpoint {
            base: base_of(origin, false),
            namespace: None,
            request_timeout: None,
            headers: Vec::new(),
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_first_then_origin() {
        let mut c = ResolverConfig::default();
        c.mirrors.insert(
            "docker.io".into(),
            vec![
                MirrorConfig {
                    host: "mirror.local:5000".into(),
                    insecure: true,
                    request_timeout: Some(Duration::from_secs(3)),
                    headers: vec![("x-a".into(), "b".into())],
                },
                MirrorConfig {
                    host: "https://m2.example/prefix/".into(),
                    ..MirrorConfig::default()
                },
            ],
        );
        let e = c.endpoints("docker.io");
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].base, "http://mirror.local:5000");
        assert_eq!(
            e[0].blob_url("library/a", "sha256:x"),
            "http://mirror.local:5000/v2/library/a/blobs/sha256:x?ns=docker.io"
        );
        assert_eq!(e[1].base, "https://m2.example/prefix");
        assert_eq!(e[2].base, "https://registry-1.docker.io");
        assert_eq!(
            e[2].blob_url("library/a", "sha256:x"),
            "https://registry-1.docker.io/v2/library/a/blobs/sha256:x"
        );
    }

    #[test]
    fn localhost_is_plain_http() {
        let c = ResolverConfig::default();
        assert_eq!(
            c.endpoints("localhost:5000")[0].base,
            "http://localhost:5000"
        );
        assert_eq!(
            c.endpoints("127.0.0.1:5000")[0].base,
            "http://127.0.0.1:5000"
        );
        assert_eq!(c.endpoints("ghcr.io")[0].base, "https://ghcr.io");
    }
}
