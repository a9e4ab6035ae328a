//! tollgate-ratelimit: per-key rate limits with GCRA (the generic cell rate algorithm, a token
//! bucket that needs no timer: one stored timestamp per key). Pure: no I/O, no async, no clock
//! reads. The caller passes `now` in nanoseconds on its own monotonic clock, so every decision is
//! reproducible in tests and the gateway decides what clock to trust.
//!
//! - [`Rate`] parses `100/s`, `6000/min`, `10/h`, `5/10s`.
//! - [`Gcra`] is the arithmetic: stored TAT + `now` → [`Verdict`] + TAT to store.
//! - [`LocalStore`] keeps TATs in process: sharded, concurrent, bounded in key count.
//! - [`REDIS_GCRA_SCRIPT`] is the same arithmetic as a Lua script for a store shared by a fleet.
//!
//! ```
//! use std::time::Duration;
//! use tollgate_ratelimit::{Gcra, LocalStore, Rate};
//!
//! // 10 requests per second, and an idle client may send 3 at once.
//! let gcra = Gcra::new(Rate::parse("10/s")?, 3)?;
//! let store = LocalStore::new(100_000);
//! let now = 5_000_000_000; // nanoseconds on the caller's monotonic clock
//!
//! for remaining in [2, 1, 0] {
//!     let v = store.check(b"client-a", &gcra, now);
//!     assert!(v.allowed);
//!     assert_eq!(v.remaining, remaining);
//! }
//! let denied = store.check(b"client-a", &gcra, now);
//! assert!(!denied.allowed);
//! assert_eq!(denied.retry_after, Duration::from_millis(100)); // one emission interval
//! assert_eq!(denied.retry_after_secs(), 1); // what goes into `Retry-After`
//!
//! // Each key has its own bucket, and time refills them.
//! assert!(store.check(b"client-b", &gcra, now).allowed);
//! assert!(store.check(b"client-a", &gcra, now + 100_000_000).allowed);
//! # Ok::<(), tollgate_ratelimit::RateLimitError>(())
//! ```

mod gcra;
mod local;
mod rate;
mod redis;
#[cfg(test)]
mod testing;

pub use gcra::{Decision, Gcra, Verdict};
pub use local::LocalStore;
pub use rate::Rate;
pub use redis::REDIS_GCRA_SCRIPT;

/// Why a rate or a limit was refused. Messages are lowercase and quote the input, so config
/// validation can show them next to the YAML path as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// The text is not `COUNT/PERIOD`.
    #[error("invalid rate {input:?}: expected COUNT/PERIOD such as \"100/s\", \"6000/min\" or \"5/10s\"")]
    Syntax { input: String },
    /// The count is not a whole number from 1 to 4294967295.
    #[error("invalid rate {input:?}: the count must be a whole number from 1 to 4294967295")]
    Count { input: String },
    /// The period's unit is not one of those listed in the message.
    #[error(
        "invalid rate {input:?}: unknown period unit {unit:?}; use ns, us, ms, s, m, min, h or d"
    )]
    Unit { input: String, unit: String },
    /// The period is zero or does not fit in 64-bit nanoseconds (about 584 years).
    #[error("invalid rate {input:?}: the period must be longer than zero and at most 584 years")]
    Period { input: String },
    /// More than one request per microsecond: the Redis script counts in microseconds.
    #[error("rate {rate} is too fast: at most 1000000/s (one request per microsecond)")]
    TooFast { rate: String },
    /// A burst of zero would deny every request.
    #[error("burst must be at least 1")]
    ZeroBurst,
    /// `burst` × emission interval is longer than the arithmetic can hold exactly (`max` is the
    /// largest burst allowed at this rate).
    #[error("burst {burst} is too large for rate {rate}: at most {max}")]
    BurstTooLarge { burst: u32, rate: String, max: u64 },
}
