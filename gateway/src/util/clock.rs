//! The clock that GCRA state in this process is kept on: rate limits in the local store and
//! the pre-auth failure counts; and the wall clock certificates are valid on.

use once_cell::sync::Lazy;
use std::time::Instant;

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

/// Nanoseconds since the process started (monotonic).
pub(crate) fn now_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}

/// Seconds since the Unix epoch (wall clock), for certificate validity.
pub(crate) fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
