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

/// Where to send a registry request. Its `Debug` shows the base as
/// [`crate::urls::Shown`] does and the headers' names only (they may carry
/// credentials).
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port][/prefix]` with no trailing slash.
    pub base: String,
    /// For a mirror: the original host, sent as `?ns=`.
    pub namespace: Option<String>,
    pub request_timeout: Option<Duration>,
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Endpoint")
            .field("base", &crate::urls::Shown(&self.base))
            .field("namespace", &self.namespace)
            .field("request_timeout", &self.request_timeout)
            .field("headers", &names)
            .finish()
    }
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

/// Whether `host` (`host[:port]`, as a reference names it) is this machine
/// by a literal: "localhost", an IPv4 loopback address (127.0.0.0/8) or
/// IPv6 `::1`, with or without a port (containerd's rule). Such a registry
/// is spoken to in plain HTTP. The name is parsed as an address, so a DNS
/// name that merely starts with "127." (`127.evil.example`) gets https.
pub fn is_local(host: &str) -> bool {
    use std::net::IpAddr;
    let loopback = |name: &str| {
        name.eq_ignore_ascii_case("localhost")
            || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    };
    let is_port = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    // `[v6]` or `[v6]:port`.
    if let Some(rest) = host.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return port_ok
            && addr
                .parse::<std::net::Ipv6Addr>()
                .is_ok_and(|ip| ip.is_loopback());
    }
    // A bare address (`::1`) before a port is split off it.
    if loopback(host) {
        return true;
    }
    match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) && !name.contains(':') => loopback(name),
        _ => false,
    }
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

    #[test]
    fn only_loopback_literals_are_plain_http() {
        for local in [
            "localhost",
            "localhost:5000",
            "LOCALHOST:5000",
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.1.2.3:80",
            "127.255.255.255",
            "::1",
            "[::1]",
            "[::1]:5000",
            "[0:0:0:0:0:0:0:1]:5000",
        ] {
            assert!(is_local(local), "{local}");
            assert!(base_of(local, false).starts_with("http://"), "{local}");
        }
        for remote in [
            "127.evil.example",
            "127.evil.example:5000",
            "127.0.0.1.evil.example",
            "127.1",
            "127.0.0.1:",
            "127.0.0.1:5000x",
            "localhost.evil.example",
            "evil-localhost:5000",
            "[::1]evil",
            "[::2]:5000",
            "::ffff:127.0.0.1",
            "128.0.0.1:5000",
            "[127.0.0.1]:5000",
        ] {
            assert!(!is_local(remote), "{remote}");
            assert!(base_of(remote, false).starts_with("https://"), "{remote}");
        }
        let c = ResolverConfig::default();
        assert_eq!(
            c.endpoints("127.evil.example")[0].base,
            "https://127.evil.example"
        );
    }

    #[test]
    fn endpoint_debug_hides_credentials() {
        let e = Endpoint {
            base: "https://u:pw@mirror.example".into(),
            namespace: None,
            request_timeout: None,
            headers: vec![("authorization".into(), "Bearer s3cret".into())],
        };
        let shown = format!("{e:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("pw@"),
            "{shown}"
        );
    }
}
