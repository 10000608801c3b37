//! Fuzz target `fuse_request`; the checks are in ../checks_fuse.rs.
#![no_main]

mod checks {
    include!("../checks_fuse.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::fuse_request(data));
