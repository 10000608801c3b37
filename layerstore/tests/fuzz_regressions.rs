//! Every input under fuzz/regressions/image_layers/ through the checks
//! the `image_layers` fuzz target runs (fuzz/checks_layerstore.rs).

mod checks {
    include!("../../fuzz/checks_layerstore.rs");
}

#[test]
fn every_image_layers_regression_input_passes() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions/image_layers");
    let (mut n, mut parsed) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        parsed += usize::from(checks::image_layers(&std::fs::read(&path).unwrap()));
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
    assert!(parsed > 0, "no input in {} is an image", dir.display());
}
