//! The canonical-request normaliser and the router together, through the gateway's own
//! decision pipeline (dry run): the canonical request is a fixed point that decides the same
//! way again (`tollgate::fuzzing::RequestHarness`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tollgate::fuzzing::RequestHarness;

fuzz_target!(|data: &[u8]| {
    static HARNESS: OnceLock<RequestHarness> = OnceLock::new();
    HARNESS.get_or_init(RequestHarness::new).request(data);
});
