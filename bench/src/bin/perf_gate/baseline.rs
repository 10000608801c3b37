//! `bench/baseline.json`: the instructions each workload took when the
//! baseline was last updated, and the CPU features they depend on; the
//! comparison of a run's counts with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The stored baseline.
pub struct Baseline {
    /// Instructions per workload.
    pub instructions: BTreeMap<String, u64>,
    /// The [`cpu_features`] of the machine that counted them (none in an
    /// old baseline).
    pub cpu_features: Option<Vec<String>>,
}

/// Where the baseline is kept.
pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("baseline.json")
}

impl Baseline {
    /// The baseline at `path`; an empty one if there is no file.
    pub fn load(path: &Path) -> anyhow::Result<Baseline> {
        let stored: serde_json::Value = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
            Err(e) => return Err(e.into()),
        };
        let instructions: BTreeMap<String, u64> = stored
            .get("instructions")
            .cloned()
            .map(serde_json::from_value)
            .transpose()?
            .unwrap_or_default();
        let cpu_features: Option<Vec<String>> = stored
            .get("cpu_features")
            .cloned()
            .map(serde_json::from_value)
            .transpose()?;
        Ok(Baseline {
            instructions,
            cpu_features,
        })
    }

    /// Writes the baseline to `path`.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::json!({
            "about": "instructions per workload (callgrind), see docs/benchmarks.md; update with perf-gate --update and say why in the commit",
            "cpu_features": self.cpu_features.clone().unwrap_or_default(),
            "instructions": self.instructions,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")?;
        Ok(())
    }
}

/// CPU features that libdeflate and sha2 choose code paths by at run
/// time: instruction counts of the workloads using them are comparable
/// only between machines that have the same ones.
pub fn cpu_features() -> Vec<String> {
    const DISPATCHED: &[&str] = &["avx2", "bmi2", "pclmulqdq", "sha_ni", "vpclmulqdq"];
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: std::collections::BTreeSet<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    DISPATCHED
        .iter()
        .filter(|f| flags.contains(*f))
        .map(|f| f.to_string())
        .collect()
}

/// Workloads whose code depends on [`cpu_features`].
fn cpu_dispatched(name: &str) -> bool {
    name.starts_with("inflate_verify")
}

/// Prints each workload's count beside its baseline, with a verdict;
/// true when one regressed by more than `threshold` percent or has no
/// baseline. On another CPU (`!same_cpu`), the CPU-dispatched workloads
/// are shown but not judged.
pub fn print_comparison(
    counts: &BTreeMap<String, u64>,
    baseline: &BTreeMap<String, u64>,
    same_cpu: bool,
    threshold: f64,
) -> bool {
    println!(
        "{:<24} {:>16} {:>16} {:>8}  verdict",
        "workload", "baseline", "now", "ratio"
    );
    let mut failed = false;
    for (name, &now) in counts {
        let (old, ratio, verdict) = match baseline.get(name) {
            Some(&old) => {
                let ratio = now as f64 / old as f64;
                let verdict = if !same_cpu && cpu_dispatched(name) {
                    "not comparable (CPU)"
                } else if ratio > 1.0 + threshold / 100.0 {
                    failed = true;
                    "REGRESSED"
                } else if ratio < 1.0 - threshold / 100.0 {
                    "faster (update the baseline)"
                } else {
                    "ok"
                };
                (old.to_string(), format!("{ratio:.3}"), verdict)
            }
            None => {
                failed = true;
                ("-".into(), "-".into(), "NO BASELINE")
            }
        };
        println!("{name:<24} {old:>16} {now:>16} {ratio:>8}  {verdict}");
    }
    failed
}
