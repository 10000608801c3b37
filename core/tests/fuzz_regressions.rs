//! Every input under fuzz/regressions/TARGET/ (crashes a fuzzer found,
//! and hand-made hostile cases) through the same checks the fuzz target
//! runs (fuzz/checks.rs).

use std::fs;
use std::path::PathBuf;

mod checks {
    include!("../../fuzz/checks.rs");
}

fn run(target: &str, check: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_file() {
            check(&fs::read(&path).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn every_regression_input_passes_its_target() {
    let total: usize = [
        ("footer", checks::footer as fn(&[u8])),
        ("toc", checks::toc),
        ("tar_header", checks::tar_header),
        ("layer_open", checks::layer_open),
        ("chunk_inflate", checks::chunk_inflate),
        ("layer_toc", checks::layer_toc),
        ("exec_file", checks::exec_file),
    ]
    .into_iter()
    .map(|(t, f)| run(t, f))
    .sum();
    assert!(total > 0, "no regression inputs found");
}
