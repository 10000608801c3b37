//! Every input under fuzz/regressions/TARGET/ for the fetcher's fuzz
//! targets through the checks the targets run (fuzz/checks_fetcher.rs).

mod checks {
    include!("../../fuzz/checks_fetcher.rs");
}

/// Runs `check` on every file of fuzz/regressions/`target`/; returns how
/// many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            check(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn every_regression_input_passes_registry_answer() {
    let n = replay("registry_answer", checks::registry_answer);
    assert!(n >= 5, "{n} inputs");
}

#[test]
fn every_regression_input_passes_token_answer() {
    let n = replay("token_answer", checks::token_answer);
    assert!(n >= 3, "{n} inputs");
}

#[test]
fn every_regression_input_passes_docker_config() {
    let n = replay("docker_config", checks::docker_config);
    assert!(n >= 3, "{n} inputs");
}
