//! The rate-limit key builder: deterministic, and two different header or claim values never
//! share a bucket (`tollgate::fuzzing::bucket_key`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tollgate::fuzzing::bucket_key(data));
