//! The YAML config loader through validation and runtime compilation
//! (`tollgate::fuzzing::config`): what validates compiles, twice alike.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        tollgate::fuzzing::config(text);
    }
});
