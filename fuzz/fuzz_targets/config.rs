//! Fuzz target `config`; the checks are in ../checks_config.rs.
#![no_main]

mod checks {
    include!("../checks_config.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config(data));
