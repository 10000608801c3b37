//! Counting a workload's instructions: this binary run again under
//! callgrind, collecting only inside the workload's function.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use anyhow::Context as _;

/// The instructions of each `(workload, function)`, counted by running
/// `exe run WORKLOAD` under callgrind, as many at once as there are CPUs.
pub fn count_all(exe: &Path, workloads: &[(&str, &str)]) -> anyhow::Result<BTreeMap<String, u64>> {
    // Callgrind runs one thread; run as many workloads at once as there
    // are CPUs (counts do not depend on it).
    let results: Mutex<BTreeMap<String, anyhow::Result<u64>>> = Mutex::default();
    let queue = Mutex::new(workloads.to_vec());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while let Some((name, function)) = queue.lock().unwrap().pop() {
                    eprintln!("perf-gate: counting {name}");
                    let r = count(exe, name, function);
                    results.lock().unwrap().insert(name.to_string(), r);
                }
            });
        }
    });
    let mut counts = BTreeMap::new();
    for (name, r) in results.into_inner().unwrap() {
        counts.insert(name, r?);
    }
    Ok(counts)
}

/// The instructions of workload `name` inside `function`.
fn count(exe: &Path, name: &str, function: &str) -> anyhow::Result<u64> {
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--toggle-collect=*{function}*"))
        .arg("--callgrind-out-file=/dev/null")
        .arg(exe)
        .arg("run")
        .arg(name)
        .output()
        .context("running valgrind (apt-get install valgrind)")?;
    let err = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "workload {name} failed:\n{err}");
    let collected = err
        .lines()
        .find_map(|l| {
            l.split_once("Collected :")
                .map(|(_, n)| n.trim().to_string())
        })
        .with_context(|| format!("no instruction count from callgrind:\n{err}"))?;
    let n: u64 = collected.parse()?;
    anyhow::ensure!(n > 0, "callgrind counted nothing in {function}");
    Ok(n)
}
