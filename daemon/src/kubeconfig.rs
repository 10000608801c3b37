//! The kubeconfig keychain (`[kubeconfig_keychain]`): registry
//! credentials from the cluster's `kubernetes.io/dockerconfigjson`
//! secrets (what pods name as `imagePullSecrets`), listed and then
//! watched through the API server with the `kube` crate, so a secret
//! added, changed or deleted takes effect without a restart.
//!
//! The watch runs on a thread of its own and never holds up the daemon:
//! a missing kubeconfig or an API server that does not answer is one
//! log line, then retries with backoff (each failure after the first of
//! a streak is logged at debug).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, Event};
use ringstar_fetcher::auth::{
    AuthError, ConfigAnswer, CredentialSource, Credentials, config_answer,
};

/// The secret type and key image pull secrets use.
const SECRET_TYPE: &str = "kubernetes.io/dockerconfigjson";
const SECRET_KEY: &str = ".dockerconfigjson";

/// Waits between attempts to reach the API server: doubling to a cap.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Why the pull secrets could not be read (this time).
#[derive(Debug, thiserror::Error)]
pub enum KeychainError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("API client: {0}")]
    Client(#[from] kube::Error),
    #[error("watching secrets: {0}")]
    Watch(#[from] watcher::Error),
    #[error("the watch of secrets ended")]
    Ended,
}

/// The docker config JSON of every pull secret, by `namespace/name`.
#[derive(Debug, Default)]
pub struct KubeconfigKeychain {
    secrets: RwLock<BTreeMap<String, Vec<u8>>>,
}

impl KubeconfigKeychain {
    /// How many pull secrets are known.
    pub fn len(&self) -> usize {
        self.secrets.read().expect("secrets").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn apply(&self, secret: &Secret) {
        let Some(key) = key_of(secret) else { return };
        match config_json(secret) {
            Some(json) => {
                let hosts = hosts_in(&json);
                tracing::info!(secret = %key, ?hosts, "pull secret from the API server");
                self.secrets.write().expect("secrets").insert(key, json);
            }
            None => self.delete(secret),
        }
    }

    fn delete(&self, secret: &Secret) {
        let Some(key) = key_of(secret) else { return };
        if self
            .secrets
            .write()
            .expect("secrets")
            .remove(&key)
            .is_some()
        {
            tracing::info!(secret = %key, "pull secret removed");
        }
    }

    fn replace(&self, all: BTreeMap<String, Vec<u8>>) {
        tracing::info!(
            secrets = all.len(),
            "pull secrets listed from the API server"
        );
        *self.secrets.write().expect("secrets") = all;
    }
}

fn key_of(secret: &Secret) -> Option<String> {
    let m = &secret.metadata;
    Some(format!(
        "{}/{}",
        m.namespace.as_deref()?,
        m.name.as_deref()?
    ))
}

/// The docker config JSON of a pull secret; `None` for other secrets.
fn config_json(secret: &Secret) -> Option<Vec<u8>> {
    if secret.type_.as_deref() != Some(SECRET_TYPE) {
        return None;
    }
    secret.data.as_ref()?.get(SECRET_KEY).map(|b| b.0.clone())
}

/// The registry hosts a docker config names (for the log: no secret).
fn hosts_in(json: &[u8]) -> Vec<String> {
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| {
            v.get("auths")?
                .as_object()
                .map(|o| o.keys().cloned().collect())
        })
        .unwrap_or_default()
}

impl CredentialSource for KubeconfigKeychain {
    /// The first pull secret (by namespace and name) with credentials
    /// for `host`. A secret that names a credential helper is skipped:
    /// helpers are programs of the node, not of the cluster.
    fn lookup(&self, host: &str) -> Result<Option<Credentials>, AuthError> {
        let secrets = self.secrets.read().expect("secrets");
        for (key, json) in secrets.iter() {
            match config_answer(json, host) {
                Ok(ConfigAnswer::Credentials(c)) => return Ok(Some(c)),
                Ok(_) => {}
                Err(e) => tracing::debug!(secret = %key, error = %e, "unreadable pull secret"),
            }
        }
        Ok(None)
    }
}

/// Starts the watch of pull secrets through `kubeconfig` (or
/// `$KUBECONFIG`, then `~/.kube/config`) into `keychain`.
pub fn spawn(
    keychain: std::sync::Arc<KubeconfigKeychain>,
    kubeconfig: Option<PathBuf>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("kubeconfig-keychain".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "kubeconfig keychain: no runtime; secrets are not read");
                    return;
                }
            };
            rt.block_on(watch(&keychain, kubeconfig));
        })
        .map(|_| ())
}

/// Connects, lists and watches, forever; each failure waits longer.
async fn watch(keychain: &KubeconfigKeychain, kubeconfig: Option<PathBuf>) {
    let mut wait = RETRY_FIRST;
    let mut failures = 0u32;
    loop {
        let err = match client(kubeconfig.as_deref()).await {
            Ok(client) => match follow(keychain, client, &mut failures).await {
                Ok(()) => continue,
                Err(e) => e,
            },
            Err(e) => e,
        };
        failures += 1;
        if failures == 1 {
            tracing::warn!(error = %err, "kubeconfig keychain: cannot read pull secrets; retrying with backoff");
        } else {
            tracing::debug!(error = %err, failures, "kubeconfig keychain: still failing");
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

async fn client(path: Option<&std::path::Path>) -> Result<kube::Client, KeychainError> {
    let options = kube::config::KubeConfigOptions::default();
    let config = match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)?;
            kube::Config::from_custom_kubeconfig(kc, &options).await?
        }
        None => kube::Config::from_kubeconfig(&options).await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// The watch stream of pull secrets into `keychain` until it fails.
async fn follow(
    keychain: &KubeconfigKeychain,
    client: kube::Client,
    failures: &mut u32,
) -> Result<(), KeychainError> {
    let api = kube::Api::<Secret>::all(client);
    let config = watcher::Config::default().fields(&format!("type={SECRET_TYPE}"));
    let mut stream = Box::pin(watcher::watcher(api, config));
    let mut listing: Option<BTreeMap<String, Vec<u8>>> = None;
    while let Some(event) = stream.next().await {
        match event? {
            Event::Init => listing = Some(BTreeMap::new()),
            Event::InitApply(s) => {
                if let (Some(l), Some(k), Some(j)) = (listing.as_mut(), key_of(&s), config_json(&s))
                {
                    l.insert(k, j);
                }
            }
            Event::InitDone => {
                keychain.replace(listing.take().unwrap_or_default());
                *failures = 0;
            }
            Event::Apply(s) => keychain.apply(&s),
            Event::Delete(s) => keychain.delete(&s),
        }
    }
    Err(KeychainError::Ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(ns: &str, name: &str, json: &str) -> Secret {
        let mut s = Secret::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s.type_ = Some(SECRET_TYPE.into());
        s.data = Some([(SECRET_KEY.to_string(), ByteString(json.as_bytes().to_vec()))].into());
        s
    }

    #[test]
    fn secrets_give_credentials_and_follow_changes() {
        let k = KubeconfigKeychain::default();
        let auths = |user: &str| {
            format!(r#"{{"auths":{{"reg.example:5000":{{"username":"{user}","password":"pw"}}}}}}"#)
        };
        k.apply(&secret("team", "pull", &auths("alice")));
        assert_eq!(
            k.lookup("reg.example:5000").unwrap().unwrap().username,
            "alice"
        );
        assert!(k.lookup("other.example").unwrap().is_none());
        k.apply(&secret("team", "pull", &auths("bob")));
        assert_eq!(
            k.lookup("reg.example:5000").unwrap().unwrap().username,
            "bob",
            "changed"
        );
        let mut opaque = secret("team", "pull", "{}");
        opaque.type_ = Some("Opaque".into());
        k.apply(&opaque);
        assert!(k.is_empty(), "no longer a pull secret");
        k.apply(&secret("team", "pull", &auths("carol")));
        k.delete(&secret("team", "pull", ""));
        assert!(k.lookup("reg.example:5000").unwrap().is_none(), "deleted");
        k.apply(&secret("team", "junk", "{not json"));
        assert!(k.lookup("reg.example:5000").unwrap().is_none());
    }
}
