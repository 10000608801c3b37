//! Image references: `[host[:port]/]path[:tag][@sha256:…]`, with Docker
//! Hub's defaults (`docker.io`, `library/`, `latest`).

use std::fmt;
use std::str::FromStr;

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io` for Hub).
    pub host: String,
    /// Repository path (`library/alpine`).
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ParseReferenceError {
    pub input: String,
    pub reason: &'static str,
}

fn valid_component(c: &str) -> bool {
    // lowercase alphanumerics separated by '.', '_', '__' or '-'s.
    !c.is_empty()
        && c.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && c.as_bytes()[0].is_ascii_alphanumeric()
        && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
}

fn valid_tag(t: &str) -> bool {
    (1..=128).contains(&t.len())
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl FromStr for Reference {
    type Err = ParseReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseReferenceError {
            input: input.chars().take(256).collect(),
            reason,
        };
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) if valid_digest(d) => (r, Some(d.to_string())),
            Some(_) => return Err(err("bad digest (want sha256:<64 hex>)")),
            None => (input, None),
        };
        // A ':' after the last '/' is a tag; before it, a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(err("bad tag"));
                }
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        let (host, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let host = if host == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            host
        };
        let path = if host == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if path.is_empty() || !path.split('/').all(valid_component) {
            return Err(err(
                "bad repository path (lowercase letters, digits, '.', '_', '-')",
            ));
        }
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@' || c == '/') {
            return Err(err("bad host"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            host,
            repository: path,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn docker_hub_defaults() {
        let a = r("alpine");
        assert_eq!(
            (a.host.as_str(), a.repository.as_str(), a.tag.as_deref()),
            ("docker.io", "library/alpine", Some("latest"))
        );
        assert_eq!(r("user/app:1.0").repository, "user/app");
        assert_eq!(
            r("docker.io/alpine:3").to_string(),
            "docker.io/library/alpine:3"
        );
        assert_eq!(r("index.docker.io/library/alpine").host, "docker.io");
    }

    #[test]
    fn hosts_ports_tags_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let x = r(&format!("127.0.0.1:5000/ns/img:v1@{d}"));
        assert_eq!(x.host, "127.0.0.1:5000");
        assert_eq!(x.repository, "ns/img");
        assert_eq!(x.tag.as_deref(), Some("v1"));
        assert_eq!(x.digest.as_deref(), Some(d.as_str()));
        let y = r(&format!("localhost/img@{d}"));
        assert_eq!((y.host.as_str(), y.tag.as_deref()), ("localhost", None));
        assert_eq!(r("ghcr.io/o/r/deep:tag").repository, "o/r/deep");
        assert_eq!(r("localhost:5000/a").tag.as_deref(), Some("latest"));
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "UPPER/case",
            "a//b",
            "img:",
            "img@sha256:zz",
            "img:bad tag",
            "-lead",
            "host.io/",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?}");
        }
    }
}
