//! Credentials kubelet passes with each CRI `PullImage`, kept in memory
//! (never on disk) for the image pulled, until they expire: the layers
//! of that image are then fetched with the same credentials containerd
//! pulled its manifest with. Keyed by registry host and repository, so
//! one pod's pull secret never opens another image's layers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_cri::v1::AuthConfig;
use ringstar_fetcher::Reference;
use ringstar_fetcher::auth::{AuthError, CredentialSource, Credentials};

/// Images whose credentials are kept at most (a node pulls far fewer).
const MAX_ENTRIES: usize = 4096;

/// What kubelet passed, by (host, repository).
#[derive(Debug)]
pub struct CriKeychain {
    ttl: Duration,
    entries: Mutex<HashMap<(String, String), (Credentials, Instant)>>,
}

impl CriKeychain {
    /// Credentials kept for `ttl` after their last `PullImage`.
    pub fn new(ttl: Duration) -> CriKeychain {
        CriKeychain {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps `auth` for image `image` (as `PullImage` names it). False
    /// when there is nothing usable in it, or the reference is invalid.
    pub fn remember(&self, image: &str, auth: &AuthConfig) -> bool {
        let Some(creds) = credentials_of(auth) else {
            return false;
        };
        let Ok(r) = image.parse::<Reference>() else {
            tracing::warn!(
                image,
                "PullImage names an invalid reference; its credentials are not kept"
            );
            return false;
        };
        let expires = Instant::now() + self.ttl;
        let mut entries = self.entries.lock().expect("entries");
        let now = Instant::now();
        entries.retain(|_, (_, t)| *t > now);
        if entries.len() >= MAX_ENTRIES {
            // The oldest expiry goes first.
            if let Some(k) = entries
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                entries.remove(&k);
            }
        }
        for host in hosts_of(&r.host) {
            entries.insert(
                (host.to_string(), r.repository.clone()),
                (creds.clone(), expires),
            );
        }
        true
    }
}

/// Docker Hub's registry answers at another name than the reference's.
fn hosts_of(host: &str) -> Vec<&str> {
    if host == "docker.io" {
        vec!["docker.io", "registry-1.docker.io", "index.docker.io"]
    } else {
        vec![host]
    }
}

/// The credentials of an `AuthConfig`: username and password, `auth`
/// (base64 of `user:password`), or an identity token.
fn credentials_of(auth: &AuthConfig) -> Option<Credentials> {
    if !auth.username.is_empty() {
        return Some(Credentials {
            username: auth.username.clone(),
            secret: auth.password.clone(),
        });
    }
    if !auth.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, pass) = text.split_once(':')?;
        return Some(Credentials {
            username: user.to_string(),
            secret: pass.to_string(),
        });
    }
    (!auth.identity_token.is_empty()).then(|| Credentials {
        username: String::new(),
        secret: auth.identity_token.clone(),
    })
}

impl CredentialSource for CriKeychain {
    /// Only per image: a host alone names no image.
    fn lookup(&self, _host: &str) -> Result<Option<Credentials>, AuthError> {
        Ok(None)
    }

    fn lookup_for(
        &self,
        host: &str,
        repository: Option<&str>,
    ) -> Result<Option<Credentials>, AuthError> {
        let Some(repo) = repository else {
            return Ok(None);
        };
        let entries = self.entries.lock().expect("entries");
        Ok(entries
            .get(&(host.to_string(), repo.to_string()))
            .filter(|(_, t)| *t > Instant::now())
            .map(|(c, _)| c.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(user: &str, pass: &str) -> AuthConfig {
        AuthConfig {
            username: user.into(),
            password: pass.into(),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn credentials_are_per_image_and_expire() {
        let k = CriKeychain::new(Duration::from_secs(60));
        assert!(k.remember("reg.example:5000/team/app:1", &auth("alice", "pw")));
        let got = k
            .lookup_for("reg.example:5000", Some("team/app"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.username.as_str(), got.secret.as_str()),
            ("alice", "pw")
        );
        assert!(
            k.lookup_for("reg.example:5000", Some("team/other"))
                .unwrap()
                .is_none()
        );
        assert!(k.lookup_for("reg.example:5000", None).unwrap().is_none());
        assert!(k.lookup("reg.example:5000").unwrap().is_none());
        // `auth` form, and Docker Hub's names.
        let b64 = AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("bob:s3"),
            ..AuthConfig::default()
        };
        assert!(
            k.remember("library/busybox", &b64) || k.remember("docker.io/library/busybox", &b64)
        );
        let hub = k
            .lookup_for("registry-1.docker.io", Some("library/busybox"))
            .unwrap()
            .unwrap();
        assert_eq!(hub.username, "bob");
        // Nothing usable: not kept.
        assert!(!k.remember("reg.example:5000/x:1", &AuthConfig::default()));
        // Expired: gone.
        let short = CriKeychain::new(Duration::ZERO);
        short.remember("reg.example:5000/team/app:1", &auth("alice", "pw"));
        assert!(
            short
                .lookup_for("reg.example:5000", Some("team/app"))
                .unwrap()
                .is_none()
        );
    }
}
