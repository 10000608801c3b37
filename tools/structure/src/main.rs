//! `ringstar-structure [ROOT]`: checks the workspace's structural rules
//! (issue #15) and exits 1 naming each violation. ROOT defaults to the
//! workspace this tool is built in.
//!
//! 1. no non-test source file over 600 lines (inline `#[cfg(test)]` modules count);
//! 2. no non-test function over 80 lines, signature to closing brace;
//! 3. no import cycle between the files of a crate (a module naming its own
//!    descendants does not count);
//! 4. no `Result<_, String>` or `Result<_, &str>` in library code.
//!
//! Test files (`tests.rs`, anything under `tests/` or `benches/`, files
//! declared only under `#[cfg(test)]`) are not checked.

mod check;
mod cycles;
mod imports;
mod lengths;
mod modtree;
mod report;
mod string_errors;
mod syntax;
mod workspace;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};

fn root_from_args() -> Result<PathBuf> {
    let mut args = std::env::args().skip(1);
    let root = match (args.next(), args.next()) {
        (None, _) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
        (Some(flag), _) if flag == "-h" || flag == "--help" => {
            println!(
                "usage: ringstar-structure [ROOT]  (ROOT: the workspace, by default the one this tool is in)"
            );
            std::process::exit(0);
        }
        (Some(root), None) => PathBuf::from(root),
        (Some(_), Some(extra)) => {
            bail!("unexpected argument {extra:?}; usage: ringstar-structure [ROOT]")
        }
    };
    root.canonicalize()
        .with_context(|| format!("workspace root {}", root.display()))
}

fn run() -> Result<bool> {
    let root = root_from_args()?;
    let started = Instant::now();
    let report = check::check_workspace(&root)?;
    print!("{}", report::render(&report, started.elapsed()));
    Ok(report.violations.is_empty())
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ringstar-structure: {e:#}");
            ExitCode::from(2)
        }
    }
}
