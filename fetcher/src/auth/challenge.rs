//! What a registry asks for in its 401, and what answers it.

use base64::Engine as _;

use super::Credentials;

/// What a registry asked for in its 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// The challenge to answer among a 401's `WWW-Authenticate` values:
    /// Bearer if offered, else Basic. `None`: nothing we can answer.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
        let mut basic = false;
        for value in values {
            let Ok(challenges) = http_auth::parse_challenges(value) else {
                continue;
            };
            for c in challenges {
                let param = |name: &str| {
                    c.params
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.to_unescaped())
                };
                if c.scheme.eq_ignore_ascii_case("bearer") {
                    if let Some(realm) = param("realm").filter(|r| !r.is_empty()) {
                        return Some(Challenge::Bearer {
                            realm,
                            service: param("service"),
                            scope: param("scope"),
                        });
                    }
                } else if c.scheme.eq_ignore_ascii_case("basic") {
                    basic = true;
                }
            }
        }
        basic.then_some(Challenge::Basic)
    }
}

/// `Authorization: Basic …` for these credentials.
pub fn basic_header(c: &Credentials) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.secret))
    )
}

/// The pull scope of a registry URL (`/v2/<repo>/blobs/…` or
/// `/v2/<repo>/manifests/…`), as tokens are requested and cached by.
pub fn pull_scope(url: &str) -> Option<String> {
    let path = url.split("://").nth(1)?;
    let path = &path[path.find('/')?..];
    let path = path.split('?').next()?;
    let rest = path.strip_prefix("/v2/")?;
    let repo = ["/blobs/", "/manifests/"]
        .iter()
        .find_map(|sep| rest.rfind(sep).map(|i| &rest[..i]))?;
    (!repo.is_empty()).then(|| format!("repository:{repo}:pull"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_prefer_bearer_and_unescape() {
        let c = Challenge::parse([
            r#"Basic realm="r""#,
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        ]);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into()),
            })
        );
        assert_eq!(
            Challenge::parse([r#"Basic realm="Registry Realm""#]),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse(["Negotiate"]), None);
        assert_eq!(Challenge::parse([r#"Bearer service="x""#]), None);
        assert_eq!(Challenge::parse(["\"broken"]), None);
    }

    #[test]
    fn scopes_come_from_the_url() {
        assert_eq!(
            pull_scope("https://r.example/v2/library/busybox/blobs/sha256:00?ns=docker.io"),
            Some("repository:library/busybox:pull".into())
        );
        assert_eq!(
            pull_scope("http://127.0.0.1:5000/v2/a/manifests/latest"),
            Some("repository:a:pull".into())
        );
        assert_eq!(pull_scope("https://s3.example/bucket/object"), None);
        assert_eq!(pull_scope("https://r.example/v2//blobs/x"), None);
    }
}
