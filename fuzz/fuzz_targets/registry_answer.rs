//! Fuzz target `registry_answer`; the checks are in ../checks_fetcher.rs.
#![no_main]

#[allow(dead_code)] // each target uses one of the shared checks
mod checks {
    include!("../checks_fetcher.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::registry_answer(data));
