//! `ringstar-snapshotter`: the containerd proxy snapshotter daemon.
//!
//! ```text
//! ringstar-snapshotter [--address /run/ringstar/ringstar.sock]
//!     [--root /var/lib/ringstar] [--config /etc/ringstar/config.toml]
//!     [--log-level info] [--takeover]
//! ```
//!
//! SIGINT unmounts everything and removes what no snapshot owns. SIGTERM
//! stops serving and exits, leaving the layer mount to the next process
//! (takeover; kill -9 and a crash leave it the same way): running
//! containers keep their files. `--takeover` replaces a running daemon
//! (an upgrade). Remote snapshots are restored on the next start.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ringstar_daemon::config::Config;
use ringstar_daemon::{Daemon, Settings, Stop};

const DEFAULT_CONFIG: &str = "/etc/ringstar/config.toml";

#[derive(Parser)]
#[command(
    name = "ringstar-snapshotter",
    version,
    about = "Lazy-pulling eStargz snapshotter for containerd (proxy plugin)"
)]
struct Args {
    /// The unix socket containerd's proxy plugin connects to.
    #[arg(long, default_value = "/run/ringstar/ringstar.sock")]
    address: PathBuf,
    /// Where snapshots, the layer mount and the store live.
    #[arg(long, default_value = "/var/lib/ringstar")]
    root: PathBuf,
    /// TOML configuration (the reference daemon's keys are accepted).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// error, warn, info, debug or trace (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Replace the daemon running on this root (an upgrade): it gets
    /// SIGTERM, hands the layer mount over, and this one serves it.
    #[arg(long)]
    takeover: bool,
    /// Run as the fd keeper on this socket (started by the daemon itself).
    #[arg(long, hide = true, value_name = "SOCKET")]
    run_fdkeeper: Option<PathBuf>,
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
    if let Some(socket) = &args.run_fdkeeper {
        return match ringstar_daemon::takeover::run_keeper(
            socket,
            ringstar_daemon::defaults::KEEPER_IDLE_EXIT,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringstar-snapshotter --run-fdkeeper: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringstar-snapshotter: {e:#}");
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("control")
        .enable_all()
        .build()?;
    // The handlers go in before anything is mounted or announced: a
    // signal in between would otherwise kill the daemon without cleanup
    // (found by a test that stopped it right after READY).
    let (mut int, mut term) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _entered = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    let mut settings = Settings::from_config(&loaded.config);
    settings.replace_running = args.takeover;
    ringstar_daemon::raise_open_file_limit();
    let daemon = Daemon::start(&args.root, &settings)?;
    let how = runtime.block_on(async {
        let stop = async {
            tokio::select! {
                _ = int.recv() => Stop::Graceful,
                _ = term.recv() => Stop::Terminate,
            }
        };
        daemon.serve(&args.address, stop).await
    })?;
    tracing::info!(?how, "stopped");
    Ok(())
}
