//! Protection before authentication: what a flood of forged or expired tokens may cost.
//!
//! A valid token is verified once and then served from the verified-token cache; a forged
//! one that never repeats costs a full signature check every time. Two brakes bound that
//! cost, and both apply only to tokens *not* in the cache, so callers already verified pass:
//! - per client address (IPv6 by /64), failed authentications are counted with GCRA
//!   (`auth.failed_auth_limit`); a client over it gets 429 with `Retry-After` before any
//!   signature check;
//! - globally, signature checks in flight are capped (`auth.max_verifications_in_flight`);
//!   past it, 503 with `Retry-After`.
//!
//! The state is process-wide (it outlives reloads, like rate-limit state) and local to the
//! instance: each gateway of a fleet counts the failures it sees.

use crate::edge::client_bucket;
use crate::metrics::METRICS;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tollgate_ratelimit::{Gcra, LocalStore};

/// How many client addresses are tracked at most (idle ones are evicted first).
const MAX_CLIENTS: usize = 100_000;

/// Why an uncached token was refused before its signature was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreAuthRefusal {
    /// The client failed authentication too often: 429, retry after this many seconds.
    FailedAuthLimit { retry_after_secs: u64 },
    /// Too many signature checks in flight: 503.
    Busy,
    /// The revocation list has not been read yet (its Redis down since start): 503. Counted
    /// where it is decided, not by the brakes.
    RevocationUnavailable,
    /// The introspection endpoint could not answer, or its circuit is open: 503 (fail
    /// closed). Counted where it is decided.
    IntrospectionUnavailable,
}

impl PreAuthRefusal {
    pub fn label(&self) -> &'static str {
        match self {
            PreAuthRefusal::FailedAuthLimit { .. } => "failed_auth_limit",
            PreAuthRefusal::Busy => "verification_budget",
            PreAuthRefusal::RevocationUnavailable => "revocation_unavailable",
            PreAuthRefusal::IntrospectionUnavailable => "introspection_unavailable",
        }
    }
}

/// The process's pre-authentication state.
pub static PREAUTH: once_cell::sync::Lazy<PreAuth> = once_cell::sync::Lazy::new(PreAuth::default);

/// Process-wide pre-authentication state.
pub struct PreAuth {
    /// GCRA state per client bucket: one failure spends one unit.
    failures: LocalStore,
    /// Until when (ns on the store's clock) a client is over its limit.
    blocked: moka::sync::Cache<IpAddr, u64>,
    in_flight: AtomicUsize,
}

/// A place among the signature checks in flight; released on drop.
pub struct VerifyPermit<'a> {
    in_flight: &'a AtomicUsize,
}

impl Drop for VerifyPermit<'_> {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        METRICS.verifications_in_flight.dec();
    }
}

/// What the brakes are set to, from the current snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Brakes {
    pub failed_auth_limit: Gcra,
    pub max_in_flight: usize,
}

impl Default for PreAuth {
    fn default() -> Self {
        PreAuth {
            failures: LocalStore::new(MAX_CLIENTS),
            blocked: moka::sync::Cache::builder()
                .max_capacity(MAX_CLIENTS as u64)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            in_flight: AtomicUsize::new(0),
        }
    }
}

impl PreAuth {
    /// Admits a signature check for `client` at `now_ns`, or says why not.
    pub fn admit(
        &self,
        client: Option<IpAddr>,
        brakes: &Brakes,
        now_ns: u64,
    ) -> Result<VerifyPermit<'_>, PreAuthRefusal> {
        if let Some(ip) = client.map(client_bucket) {
            if let Some(until) = self.blocked.get(&ip).filter(|until| *until > now_ns) {
                return Err(self.refused(PreAuthRefusal::FailedAuthLimit {
                    retry_after_secs: (until - now_ns).div_ceil(1_000_000_000).max(1),
                }));
            }
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= brakes.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refused(PreAuthRefusal::Busy));
        }
        METRICS.verifications_in_flight.inc();
        Ok(VerifyPermit {
            in_flight: &self.in_flight,
        })
    }

    fn refused(&self, r: PreAuthRefusal) -> PreAuthRefusal {
        METRICS
            .preauth_refusals
            .with_label_values(&[r.label()])
            .inc();
        r
    }

    /// Counts a failed authentication (a presented token that was refused) for `client`.
    pub fn record_failure(&self, client: Option<IpAddr>, brakes: &Brakes, now_ns: u64) {
        let Some(ip) = client.map(client_bucket) else {
            return;
        };
        let key = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        let verdict = self.failures.check(&key, &brakes.failed_auth_limit, now_ns);
        if !verdict.allowed {
            let wait = verdict.retry_after.as_nanos() as u64;
            self.blocked.insert(ip, now_ns + wait.max(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_ratelimit::Rate;

    fn brakes(max_in_flight: usize) -> Brakes {
        Brakes {
            failed_auth_limit: Gcra::new(Rate::parse("1/s").unwrap(), 3).unwrap(),
            max_in_flight,
        }
    }

    #[test]
    fn a_client_over_its_failure_limit_is_refused_until_its_retry_time() {
        let p = PreAuth::default();
        let b = brakes(10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = 1_000_000_000_000;
        for _ in 0..4 {
            assert!(p.admit(Some(ip), &b, t0).is_ok());
            p.record_failure(Some(ip), &b, t0);
        }
        match p.admit(Some(ip), &b, t0).map(|_| ()) {
            Err(PreAuthRefusal::FailedAuthLimit { retry_after_secs }) => {
                assert!(retry_after_secs >= 1)
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(
            p.admit(Some(other), &b, t0).is_ok(),
            "others are not affected"
        );
        assert!(
            p.admit(Some(ip), &b, t0 + 2_000_000_000).is_ok(),
            "the block ends with its retry time"
        );
    }

    #[test]
    fn checks_past_the_in_flight_budget_are_refused_and_a_finished_one_frees_its_place() {
        let p = PreAuth::default();
        let b = brakes(2);
        let first = p.admit(None, &b, 0).unwrap();
        let _second = p.admit(None, &b, 0).unwrap();
        assert_eq!(p.admit(None, &b, 0).map(|_| ()), Err(PreAuthRefusal::Busy));
        drop(first);
        assert!(p.admit(None, &b, 0).is_ok());
    }
}
