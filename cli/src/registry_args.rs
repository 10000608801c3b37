//! How the tools reach registries: credentials from the docker config
//! (and its credential helpers), extra CA certificates, plain HTTP when
//! asked (this machine's registries always get it).

use std::path::PathBuf;
use std::sync::Arc;

use ringstar_fetcher::{DockerConfig, Fetcher, FetcherConfig, ResolverConfig};
use ringstar_image::{ImageRef, ImageStore, RootRef};

#[derive(clap::Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Speak plain HTTP to every registry (as ctr-remote's --plain-http).
    /// A registry on this machine gets HTTPS if it answers TLS, plain
    /// HTTP otherwise.
    #[arg(long)]
    pub plain_http: bool,
    /// Trust these CA certificates (PEM) besides the system's.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

impl RegistryArgs {
    pub fn fetcher(&self) -> anyhow::Result<Fetcher> {
        Ok(Fetcher::new(FetcherConfig {
            ca_file: self.ca_file.clone(),
            credentials: Some(Arc::new(DockerConfig::from_env())),
            ..FetcherConfig::default()
        })?)
    }

    /// The store `r` names and its root; a layout is made if `create`.
    pub fn open(
        &self,
        fetcher: &Fetcher,
        r: &ImageRef,
        create: bool,
    ) -> anyhow::Result<(ImageStore, RootRef)> {
        let (mut store, root) = ImageStore::open(r, fetcher, &ResolverConfig::default(), create)?;
        if self.plain_http
            && let ImageStore::Registry { repo, .. } = &mut store
            && let Some(rest) = repo.endpoint.base.strip_prefix("https://")
        {
            // Asked for: no TLS, whatever the registry would answer.
            repo.endpoint.base = format!("http://{rest}");
        }
        Ok((store, root))
    }
}
