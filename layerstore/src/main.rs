//! `ringstar-store`: the additional layer store for Podman and CRI-O.
//!
//! ```text
//! ringstar-store [--root /var/lib/ringstar-store]
//!     [--config /etc/ringstar-store/config.toml] [--log-level info] MOUNTPOINT
//! ```
//!
//! As the reference's `stargz-store`: storage.conf names
//! `MOUNTPOINT:ref` in `additionallayerstores`. SIGINT and SIGTERM
//! unmount the store and the layers; start it before Podman and keep it
//! running while containers use its layers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use ringstar_daemon::Settings;
use ringstar_daemon::config::Config;
use ringstar_layerstore::{LayerStore, StoreSettings, credentials};

const DEFAULT_CONFIG: &str = "/etc/ringstar-store/config.toml";

#[derive(Parser)]
#[command(
    name = "ringstar-store",
    version,
    about = "Lazy-pulling additional layer store for Podman and CRI-O (containers/storage)"
)]
struct Args {
    /// Where the layer mount, the store and the layer records live.
    #[arg(long, default_value = "/var/lib/ringstar-store")]
    root: PathBuf,
    /// TOML configuration (the reference's stargz-store keys are accepted).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// error, warn, info, debug or trace (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Where containers/storage finds the store (`additionallayerstores`).
    mountpoint: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringstar-store: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let optional = args.config == std::path::Path::new(DEFAULT_CONFIG);
    let loaded = Config::load(&args.config, optional)?;
    for key in &loaded.not_applied {
        tracing::info!(key = %key, "config key accepted but not used by ringstar");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut int, mut term) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _entered = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    let mut plane = Settings::from_config(&loaded.config);
    plane.fetcher.credentials = Some(Arc::new(credentials::keychain()));
    let settings = StoreSettings {
        idle: loaded.config.unused_layer_ttl(),
        plane,
    };
    ringstar_daemon::raise_open_file_limit();
    let store = LayerStore::start(&args.root, &args.mountpoint, &settings)?;
    ringstar_daemon::notify_systemd("READY=1");
    runtime.block_on(async {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    });
    tracing::info!("stopping");
    ringstar_daemon::notify_systemd("STOPPING=1");
    store.stop();
    Ok(())
}
