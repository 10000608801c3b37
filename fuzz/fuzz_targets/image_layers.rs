//! Fuzz target `image_layers`; the checks are in ../checks_layerstore.rs.
#![no_main]

mod checks {
    include!("../checks_layerstore.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::image_layers(data);
});
