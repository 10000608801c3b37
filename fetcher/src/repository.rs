//! One repository at one endpoint, and the distribution API's URLs in it:
//! manifests, blobs, uploads (OCI distribution-spec §3).

use crate::hosts::Endpoint;
use crate::reference::Reference;

/// A repository (`library/alpine`) at one endpoint of its registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    pub endpoint: Endpoint,
    pub name: String,
}

impl Repository {
    /// `reference`'s repository at its registry's origin (not a mirror:
    /// what tools write to, and read from unless told otherwise).
    pub fn origin_of(reference: &Reference, resolver: &crate::ResolverConfig) -> Repository {
        let endpoint = resolver
            .endpoints(&reference.host)
            .pop()
            .expect("endpoints always end with the origin");
        Repository {
            endpoint,
            name: reference.repository.clone(),
        }
    }

    /// The URL of manifest `reference` (a tag or a digest).
    pub fn manifest_url(&self, reference: &str) -> String {
        self.with_namespace(format!(
            "{}/v2/{}/manifests/{reference}",
            self.endpoint.base, self.name
        ))
    }

    /// The URL of blob `digest`.
    pub fn blob_url(&self, digest: &str) -> String {
        self.endpoint.blob_url(&self.name, digest)
    }

    /// Where an upload starts; `mount`: (digest, source repository) for a
    /// cross-repository mount.
    pub fn uploads_url(&self, mount: Option<(&str, &str)>) -> String {
        let mut url = format!("{}/v2/{}/blobs/uploads/", self.endpoint.base, self.name);
        if let Some((digest, from)) = mount {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("mount", digest)
                .append_pair("from", from)
                .finish();
            url.push('?');
            url.push_str(&query);
        }
        url
    }

    /// An upload `Location` as a registry sends it (absolute, or a path
    /// on the endpoint's host), as a URL. Untrusted: anything other than
    /// an absolute http(s) URL or a path is refused.
    pub fn location(&self, location: &str) -> Option<String> {
        if location.starts_with("http://") || location.starts_with("https://") {
            return Some(location.to_string());
        }
        if !location.starts_with('/') || location.starts_with("//") {
            return None;
        }
        // The endpoint's scheme://host, without a mirror's path prefix:
        // the registry sends a path from its root.
        let (scheme, rest) = self.endpoint.base.split_once("://")?;
        let host = rest.split('/').next()?;
        Some(format!("{scheme}://{host}{location}"))
    }

    fn with_namespace(&self, mut url: String) -> String {
        if let Some(ns) = &self.endpoint.namespace {
            url.push_str("?ns=");
            url.push_str(ns);
        }
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> Repository {
        let r: Reference = "127.0.0.1:5000/a/b:v1".parse().unwrap();
        Repository::origin_of(&r, &crate::ResolverConfig::default())
    }

    #[test]
    fn urls() {
        let r = repo();
        assert_eq!(
            r.manifest_url("v1"),
            "http://127.0.0.1:5000/v2/a/b/manifests/v1"
        );
        assert_eq!(
            r.uploads_url(Some(("sha256:00", "c/d"))),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/?mount=sha256%3A00&from=c%2Fd"
        );
        assert_eq!(
            r.location("/v2/a/b/blobs/uploads/x?_state=1").as_deref(),
            Some("http://127.0.0.1:5000/v2/a/b/blobs/uploads/x?_state=1")
        );
        assert_eq!(r.location("//evil/x"), None);
        assert_eq!(r.location("relative"), None);
    }
}
