//! Several credential sources asked in order (Podman's auth files, then
//! the docker config): the first that knows a host answers for it.

use std::sync::Arc;

use super::{AuthError, CredentialSource, Credentials};

/// Credential sources in order of precedence.
#[derive(Debug, Default, Clone)]
pub struct Keychain(pub Vec<Arc<dyn CredentialSource>>);

impl CredentialSource for Keychain {
    /// The first source with credentials for `host` (and `repository`,
    /// see [`CredentialSource::lookup_for`]). A source that fails
    /// (an unreadable file, a broken helper) is logged and skipped, so
    /// one bad file does not hide the next one's credentials; with none
    /// found, the first failure is the answer.
    fn lookup(&self, host: &str) -> Result<Option<Credentials>, AuthError> {
        self.lookup_for(host, None)
    }

    fn lookup_for(
        &self,
        host: &str,
        repository: Option<&str>,
    ) -> Result<Option<Credentials>, AuthError> {
        let mut first_error = None;
        for source in &self.0 {
            match source.lookup_for(host, repository) {
                Ok(Some(c)) => return Ok(Some(c)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(host, error = %e, "credential source failed; trying the next");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(None), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::auth::{DockerConfig, StaticCredentials};

    fn creds(user: &str) -> Credentials {
        Credentials {
            username: user.into(),
            secret: "s".into(),
        }
    }

    #[test]
    fn first_source_that_knows_the_host_wins() {
        let a = StaticCredentials(HashMap::from([("a:5000".to_string(), creds("first"))]));
        let b = StaticCredentials(HashMap::from([
            ("a:5000".to_string(), creds("second")),
            ("b:5000".to_string(), creds("only-b")),
        ]));
        let chain = Keychain(vec![Arc::new(a), Arc::new(b)]);
        assert_eq!(chain.lookup("a:5000").unwrap(), Some(creds("first")));
        assert_eq!(chain.lookup("b:5000").unwrap(), Some(creds("only-b")));
        assert_eq!(chain.lookup("c:5000").unwrap(), None);
    }

    #[test]
    fn a_broken_source_does_not_hide_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("auth.json");
        std::fs::write(&bad, b"{not json").unwrap();
        let good = StaticCredentials(HashMap::from([("h".to_string(), creds("u"))]));
        let chain = Keychain(vec![Arc::new(DockerConfig::at(&bad)), Arc::new(good)]);
        assert_eq!(chain.lookup("h").unwrap(), Some(creds("u")));
        assert!(
            chain.lookup("other").is_err(),
            "nobody knows it: the failure"
        );
    }
}
