//! Every input under fuzz/regressions/registry_answer/ through the checks
//! the fuzz target runs (fuzz/checks_fetcher.rs).

mod checks {
    include!("../../fuzz/checks_fetcher.rs");
}

#[test]
fn every_regression_input_passes_registry_answer() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions/registry_answer");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            checks::registry_answer(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= 5, "{n} inputs in {}", dir.display());
}
