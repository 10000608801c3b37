//! `ringstar mount`: one eStargz layer from a registry at a mountpoint,
//! served lazily by the daemon's data plane, without containerd.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use ringstar_core::Digest;
use ringstar_daemon::config::FuseUringChoice;
use ringstar_daemon::{Settings, defaults};

#[derive(clap::Args)]
pub struct MountArgs {
    /// The image reference the layer belongs to (registry and
    /// repository; tag or digest are ignored).
    #[arg(long = "ref")]
    reference: ringstar_fetcher::Reference,
    /// The layer blob's digest.
    #[arg(long)]
    digest: Digest,
    /// The TOC digest to verify against (the
    /// containerd.io/snapshot/stargz/toc.digest annotation).
    #[arg(long)]
    toc_digest: Option<Digest>,
    /// Mount without verifying the TOC (when no TOC digest is known).
    #[arg(long, conflicts_with = "toc_digest")]
    no_verify: bool,
    /// Where fetched content is kept: a store of its own, not the
    /// daemon's (`--root`/store). A store is locked by the one process
    /// using it; a second one is refused.
    #[arg(long, default_value = "/var/lib/ringstar-mount/store")]
    store: PathBuf,
    /// Store bound in bytes.
    #[arg(long, default_value_t = defaults::STORE_SIZE)]
    store_size: u64,
    /// Do not prefetch the layer's prioritized files.
    #[arg(long)]
    no_prefetch: bool,
    /// Do not fetch the rest of the layer in the background.
    #[arg(long)]
    no_background_fetch: bool,
    /// FUSE-over-io_uring (the daemon's `[ringstar] fuse_uring`).
    #[arg(long, value_enum, default_value_t = FuseUringChoice::default())]
    fuse_uring: FuseUringChoice,
    /// Hand fully fetched files to the kernel (FUSE passthrough), as the
    /// daemon does; `--passthrough=false` serves every read.
    #[arg(long, default_value_t = defaults::PASSTHROUGH, num_args = 0..=1,
          default_missing_value = "true", require_equals = true,
          action = clap::ArgAction::Set)]
    passthrough: bool,
    /// Per-request registry timeout, seconds.
    #[arg(long, default_value_t = defaults::request_timeout().as_secs())]
    request_timeout: u64,
    mountpoint: PathBuf,
}

impl MountArgs {
    /// The daemon's settings with this command's flags applied.
    fn settings(&self) -> Settings {
        let mut s = Settings {
            store_size: self.store_size,
            passthrough: self.passthrough,
            fuse_uring: self.fuse_uring.into(),
            // A foreground mount ends with its command: nothing takes it
            // over.
            takeover: false,
            ..Settings::default()
        };
        s.fetcher.request_timeout = std::time::Duration::from_secs(self.request_timeout);
        s.loader.background.enabled = !self.no_background_fetch;
        s.remote.noprefetch = self.no_prefetch;
        s
    }

    fn source(&self) -> ringstar_layerfs::resolve::LayerSource {
        ringstar_layerfs::resolve::LayerSource {
            reference: self.reference.clone(),
            digest: self.digest,
            size: None,
            toc_digest: self.toc_digest,
        }
    }
}

pub fn mount_cmd(args: &MountArgs) -> anyhow::Result<()> {
    use std::sync::Arc;

    use ringstar_fetcher::Fetcher;
    use ringstar_fusedev::Session;
    use ringstar_layerfs::resolve::resolve;
    use ringstar_layerfs::{LayerFs, Loader};

    anyhow::ensure!(
        args.toc_digest.is_some() || args.no_verify,
        "--toc-digest is needed to verify the layer (or --no-verify to skip that)"
    );
    let settings = args.settings();
    let fetcher = Fetcher::new(settings.fetcher.clone())?;
    ringstar_daemon::raise_open_file_limit();
    let store = Arc::new(
        ringstar_core::store::Store::open(&args.store, settings.store_size)
            .with_context(|| format!("opening the store at {}", args.store.display()))?,
    );
    let loader = Loader::new(
        store,
        fetcher.clone(),
        settings.inflate_workers,
        settings.loader.clone(),
    )?;
    let layer = resolve(
        &fetcher,
        &settings.resolver,
        &args.source(),
        args.digest.to_string(),
        settings.remote.tail_bytes,
    )?;
    let layer = Arc::new(layer);
    let fs = Arc::new(LayerFs::single(
        loader.clone(),
        layer.clone(),
        settings.passthrough,
    ));
    let session = Session::mount(fs, &args.mountpoint, &settings.mount_options())
        .with_context(|| format!("mounting at {}", args.mountpoint.display()))?;
    if settings.remote.noprefetch {
        layer.finish_prefetch();
    } else {
        loader.prefetch(&layer);
    }
    loader.start_background(&layer);
    println!(
        "mounted {} at {} ({} entries, {:?} transport)",
        args.digest,
        args.mountpoint.display(),
        layer.tree().len(),
        session.transport()
    );
    io::stdout().flush()?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let signal = signals.forever().next();
    tracing::info!(?signal, "unmounting");
    session.unmount()?;
    Ok(())
}
