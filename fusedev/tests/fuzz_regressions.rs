//! Every input under fuzz/regressions/fuse_request/ through the checks
//! the `fuse_request` fuzz target runs (fuzz/checks_fuse.rs).

mod checks {
    include!("../../fuzz/checks_fuse.rs");
}

#[test]
fn every_regression_input_passes() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/fuse_request");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        checks::fuse_request(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}
