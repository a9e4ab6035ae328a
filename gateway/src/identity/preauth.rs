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
//! - network waits never hold a signature-check place, so a slow identity provider never
//!   starves local checks. Introspection calls have a budget of their own, per provider
//!   (`auth.max_network_waits_in_flight`) and per client address
//!   (`auth.max_network_waits_per_client`), counted when a call is admitted, so one client
//!   cannot hold a provider's whole budget; requests joining a call in flight for the same
//!   token add no call. An unknown-`kid` refetch is one fetch per provider at a time and
//!   one per cooldown: its waiters give up their place while they wait.
//!
//! The state is process-wide (it outlives reloads, like rate-limit state) and local to the
//! instance: each gateway of a fleet counts the failures it sees.

use crate::limits::client_bucket;
use crate::telemetry::metrics::METRICS;
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
    /// Too many requests wait on this provider's network at once: 503.
    NetworkBusy,
    /// This client has too many requests waiting on the network already: 429.
    ClientNetworkBusy,
}

impl PreAuthRefusal {
    pub fn label(&self) -> &'static str {
        match self {
            PreAuthRefusal::FailedAuthLimit { .. } => "failed_auth_limit",
            PreAuthRefusal::Busy => "verification_budget",
            PreAuthRefusal::RevocationUnavailable => "revocation_unavailable",
            PreAuthRefusal::IntrospectionUnavailable => "introspection_unavailable",
            PreAuthRefusal::NetworkBusy => "network_budget",
            PreAuthRefusal::ClientNetworkBusy => "client_network_budget",
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
    /// Network waits in flight per client bucket; an entry lives only while its count is
    /// above zero, so the map holds at most the waits in flight.
    waiting_clients: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// A place among one provider's network waits (and its client's); released on drop.
pub struct NetworkPermit<'a> {
    provider: &'a AtomicUsize,
    client: Option<(
        IpAddr,
        &'a std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
    )>,
}

impl Drop for NetworkPermit<'_> {
    fn drop(&mut self) {
        self.provider.fetch_sub(1, Ordering::AcqRel);
        if let Some((ip, clients)) = self.client.take() {
            let mut clients = clients.lock().unwrap_or_else(|e| e.into_inner());
            if let std::collections::hash_map::Entry::Occupied(mut e) = clients.entry(ip) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        METRICS.network_waits_in_flight.dec();
    }
}

/// Gives the runtime one turn before a network wait starts: the proxy watches the client
/// between the turns (see `proxy::request_filter`), so a request whose client has gone
/// starts no call, while decisions that need no network never pay for the watch.
pub async fn before_network_wait() {
    tokio::task::yield_now().await;
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
    /// Per provider.
    pub max_network_waits: usize,
    pub max_network_waits_per_client: usize,
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
            waiting_clients: Default::default(),
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
        if let Some(blocked) = self.blocked_until(client.map(client_bucket), now_ns) {
            return Err(blocked);
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

    /// Admits a network wait for `client` on a provider whose waits are counted in
    /// `provider_waits`, or says why not. A client over its failed-authentication limit is
    /// refused first, as for a signature check.
    pub fn admit_network<'a>(
        &'a self,
        provider_waits: &'a AtomicUsize,
        client: Option<IpAddr>,
        brakes: &Brakes,
        now_ns: u64,
    ) -> Result<NetworkPermit<'a>, PreAuthRefusal> {
        let bucket = client.map(client_bucket);
        if let Some(blocked) = self.blocked_until(bucket, now_ns) {
            return Err(blocked);
        }
        if provider_waits.fetch_add(1, Ordering::AcqRel) >= brakes.max_network_waits {
            provider_waits.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refused(PreAuthRefusal::NetworkBusy));
        }
        let mut permit = NetworkPermit {
            provider: provider_waits,
            client: None,
        };
        METRICS.network_waits_in_flight.inc();
        if let Some(ip) = bucket {
            let mut clients = self
                .waiting_clients
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let waiting = clients.entry(ip).or_insert(0);
            if *waiting >= brakes.max_network_waits_per_client {
                drop(clients);
                drop(permit);
                return Err(self.refused(PreAuthRefusal::ClientNetworkBusy));
            }
            *waiting += 1;
            permit.client = Some((ip, &self.waiting_clients));
        }
        Ok(permit)
    }

    /// The refusal for a client bucket over its failed-authentication limit at `now_ns`.
    fn blocked_until(&self, bucket: Option<IpAddr>, now_ns: u64) -> Option<PreAuthRefusal> {
        let until = self.blocked.get(&bucket?).filter(|until| *until > now_ns)?;
        Some(self.refused(PreAuthRefusal::FailedAuthLimit {
            retry_after_secs: (until - now_ns).div_ceil(1_000_000_000).max(1),
        }))
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
            max_network_waits: 3,
            max_network_waits_per_client: 2,
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

    #[test]
    fn network_waits_have_their_own_budget_per_provider_and_per_client() {
        // Issue 22 (3): waits on a slow identity provider took the signature-check places,
        // and one client's waits were counted only after their answers.
        let p = PreAuth::default();
        let b = brakes(1);
        let provider = AtomicUsize::new(0);
        let (a, c, d): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "192.0.2.3".parse().unwrap(),
        );
        let waits = [
            p.admit_network(&provider, Some(a), &b, 0).unwrap(),
            p.admit_network(&provider, Some(a), &b, 0).unwrap(),
        ];
        // Client a is at its own limit while the provider still has room.
        assert_eq!(
            p.admit_network(&provider, Some(a), &b, 0).map(|_| ()),
            Err(PreAuthRefusal::ClientNetworkBusy)
        );
        let third = p.admit_network(&provider, Some(c), &b, 0).unwrap();
        assert_eq!(
            p.admit_network(&provider, Some(d), &b, 0).map(|_| ()),
            Err(PreAuthRefusal::NetworkBusy)
        );
        // Waits hold no signature-check place.
        let check = p.admit(Some(d), &b, 0).expect("a local check is admitted");
        drop(check);
        drop(waits);
        drop(third);
        assert_eq!(provider.load(Ordering::Acquire), 0);
        assert!(
            p.waiting_clients.lock().unwrap().is_empty(),
            "no entry outlives its waits"
        );
        assert!(p.admit_network(&provider, Some(a), &b, 0).is_ok());
    }
}
