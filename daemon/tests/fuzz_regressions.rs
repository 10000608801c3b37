//! Every input under fuzz/regressions/config/ through the checks the
//! `config` fuzz target runs (fuzz/checks_config.rs).

mod checks {
    include!("../../fuzz/checks_config.rs");
}

#[test]
fn every_config_regression_input_passes() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        checks::config(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
