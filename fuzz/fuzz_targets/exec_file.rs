//! Fuzz target `exec_file`; the checks are in ../checks.rs.
#![no_main]

mod checks {
    include!("../checks.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::exec_file(data));
