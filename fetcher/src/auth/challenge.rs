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
    repository_of(url).map(|repo| format!("repository:{repo}:pull"))
}

/// The scope a request to a registry URL needs: pull for reads,
/// `pull,push` for writes (uploads, manifests put).
pub fn scope_for(url: &str, push: bool) -> Option<String> {
    let access = if push { "pull,push" } else { "pull" };
    repository_of(url).map(|repo| format!("repository:{repo}:{access}"))
}

/// The repository a registry URL names (`/v2/<repo>/blobs/…`,
/// `/v2/<repo>/manifests/…`, `/v2/<repo>/blobs/uploads/…`).
pub fn repository_of(url: &str) -> Option<&str> {
    let path = url.split("://").nth(1)?;
    let path = &path[path.find('/')?..];
    let path = path.split('?').next()?;
    let rest = path.strip_prefix("/v2/")?;
    let repo = ["/blobs/", "/manifests/"].iter().find_map(|sep| {
        // An upload URL holds `/blobs/uploads/`: the repository ends
        // at the first `/blobs/` after it.
        let i = if sep == &"/blobs/" {
            rest.find("/blobs/uploads").or_else(|| rest.rfind(sep))
        } else {
            rest.rfind(sep)
        };
        i.map(|i| &rest[..i])
    })?;
    (!repo.is_empty()).then_some(repo)
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
        assert_eq!(
            scope_for("http://r/v2/a/b/blobs/uploads/uuid-1?_state=x", true).as_deref(),
            Some("repository:a/b:pull,push")
        );
        assert_eq!(
            scope_for("http://r/v2/a/manifests/v1", false).as_deref(),
            Some("repository:a:pull")
        );
        assert_eq!(pull_scope("https://r.example/v2//blobs/x"), None);
    }
}
