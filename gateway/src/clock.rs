//! The clock that GCRA state in this process is kept on: rate limits in the local store and
//! the pre-auth failure counts.

use once_cell::sync::Lazy;
use std::time::Instant;

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

/// Nanoseconds since the process started (monotonic).
pub(crate) fn now_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}
