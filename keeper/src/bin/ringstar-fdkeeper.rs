//! `ringstar-fdkeeper SOCKET [--idle-exit SECONDS]`: holds fds for
//! processes that may die (see the crate docs). Exits when told
//! (SHUTDOWN), or after holding nothing for `--idle-exit` seconds
//! (default 600). Start it outside the cgroup and process group of the
//! daemon whose fds it keeps.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: ringstar-fdkeeper SOCKET [--idle-exit SECONDS]";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, idle) = match args.as_slice() {
        [s] => (PathBuf::from(s), 600),
        [s, flag, n] if flag == "--idle-exit" => match n.parse::<u64>() {
            Ok(n) => (PathBuf::from(s), n),
            Err(_) => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match ringstar_keeper::serve(&socket, Duration::from_secs(idle)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringstar-fdkeeper: {e}");
            ExitCode::FAILURE
        }
    }
}
