//! Where the store finds registry credentials: Podman's auth files
//! (containers-auth.json(5)), then the docker config, the first that
//! knows a registry answering for it.

use std::path::PathBuf;
use std::sync::Arc;

use ringstar_fetcher::DockerConfig;
use ringstar_fetcher::auth::{CredentialSource, Keychain};

/// Podman's auth files, in containers/image's order of precedence:
/// `$REGISTRY_AUTH_FILE`, `${XDG_RUNTIME_DIR}/containers/auth.json` (for
/// root without `XDG_RUNTIME_DIR`, `/run/containers/0/auth.json`),
/// `$HOME/.config/containers/auth.json`, `/etc/containers/auth.json`.
pub fn podman_auth_files() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut files = Vec::new();
    files.extend(env("REGISTRY_AUTH_FILE"));
    match env("XDG_RUNTIME_DIR") {
        Some(dir) => files.push(dir.join("containers/auth.json")),
        None => files.push(PathBuf::from(format!(
            "/run/containers/{}/auth.json",
            rustix::process::getuid().as_raw()
        ))),
    }
    files.extend(env("HOME").map(|h| h.join(".config/containers/auth.json")));
    files.push(PathBuf::from("/etc/containers/auth.json"));
    files
}

/// Podman's auth files, then the docker config.
pub fn keychain() -> Keychain {
    let mut sources: Vec<Arc<dyn CredentialSource>> = podman_auth_files()
        .into_iter()
        .map(|p| Arc::new(DockerConfig::at(p)) as Arc<dyn CredentialSource>)
        .collect();
    sources.push(Arc::new(DockerConfig::from_env()));
    Keychain(sources)
}
