//! DPoP (RFC 9449) in the authenticate step: after the access token is verified, a request
//! that presents it with `Authorization: DPoP` (or on a provider or route that requires DPoP)
//! must carry one `DPoP` proof, signed by the key the token is bound to (`cnf.jkt`), for this
//! method and URI, fresh, with the token's hash, and never seen before.
//!
//! The proof's own checks are `tollgate_jwt::dpop`'s. This module adds what needs the gateway:
//! the request's URI as the client addressed it, the token's binding, and the replay cache of
//! proof `jti`s: in this process always, and in Redis too when rate limits use Redis, so a
//! proof replayed at another instance of the fleet is refused as well.

use crate::limits::{RedisStore, Stores};
use crate::telemetry::metrics::METRICS;
use once_cell::sync::Lazy;
use pingora_http::RequestHeader;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tollgate_config::{DpopMode, DpopSettings, OnStoreError};
use tollgate_jwt::dpop::{normalize_htu, verify_proof, ProofRequest, ProofWindow};

/// How the token came: the `Authorization` scheme it was found under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Bearer`, or any source other than `Authorization` (a header, cookie or query).
    Bearer,
    /// `Authorization: DPoP`.
    Dpop,
}

/// Why a request's DPoP did not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpopRefusal {
    /// The token cannot be used the way it came (401 `invalid_token`): bound but sent as
    /// Bearer, unbound but sent as DPoP, or DPoP required and not used.
    Token(&'static str),
    /// The proof is missing, malformed, for another request, another key, or replayed
    /// (401 `invalid_dpop_proof`).
    Proof(&'static str),
    /// The replay cache could not take the proof (503).
    Unavailable,
}

impl DpopRefusal {
    /// The `reason` label of `tollgate_auth_decisions_total` and the access log.
    pub fn reason(&self) -> &'static str {
        match self {
            DpopRefusal::Token(_) => tollgate_jwt::Reason::Binding.as_str(),
            DpopRefusal::Proof(_) => "dpop_proof",
            DpopRefusal::Unavailable => "dpop_replay_unavailable",
        }
    }
}

/// Whether the request may go on, for a token verified for a provider in `mode` (already the
/// stricter of the provider's and the route's), presented under `scheme`. `htu` is the request
/// URI as the client addressed it; `record` is false in a dry run, which must not spend jtis.
#[allow(clippy::too_many_arguments)]
pub async fn check(
    req: &RequestHeader,
    token: &str,
    claims: &serde_json::Map<String, Value>,
    scheme: Scheme,
    mode: DpopMode,
    htu: Option<&str>,
    settings: &DpopSettings,
    stores: &Stores,
    record: bool,
    now: u64,
) -> Result<(), DpopRefusal> {
    let jkt = claims
        .get("cnf")
        .and_then(Value::as_object)
        .and_then(|c| c.get("jkt"));
    match (scheme, mode) {
        (Scheme::Bearer, DpopMode::Off) => return Ok(()),
        (Scheme::Bearer, DpopMode::Required) => {
            return Err(DpopRefusal::Token(
                "this route takes only DPoP-bound tokens, with Authorization: DPoP and a proof",
            ))
        }
        // RFC 9449 §7.2: a bound token sent as a bearer token is refused.
        (Scheme::Bearer, DpopMode::Optional) if jkt.is_some() => {
            return Err(DpopRefusal::Token(
                "the token is bound to a DPoP key: send it with Authorization: DPoP and a proof",
            ))
        }
        (Scheme::Bearer, DpopMode::Optional) => return Ok(()),
        (Scheme::Dpop, DpopMode::Off) => {
            return Err(DpopRefusal::Token(
                "the token's provider does not take DPoP",
            ))
        }
        (Scheme::Dpop, _) => {}
    }
    let Some(Value::String(jkt)) = jkt else {
        return Err(DpopRefusal::Token(
            "the token is not bound to a key (cnf.jkt)",
        ));
    };
    let invalid = |detail| {
        METRICS.dpop_proofs.with_label_values(&["invalid"]).inc();
        DpopRefusal::Proof(detail)
    };
    let mut proofs = req.headers.get_all("dpop").iter();
    let (Some(proof), None) = (proofs.next(), proofs.next()) else {
        return Err(invalid("exactly one DPoP proof header is required"));
    };
    let proof = proof
        .to_str()
        .map_err(|_| invalid("the DPoP proof is not text"))?;
    let Some(htu) = htu else {
        return Err(invalid(
            "the request has no host to check the proof's htu against",
        ));
    };
    let window = ProofWindow {
        max_age_s: settings.max_age.as_secs(),
        leeway_s: settings.leeway.as_secs(),
    };
    let request = ProofRequest {
        method: req.method.as_str(),
        htu,
        access_token: Some(token),
    };
    let proof = verify_proof(proof, &request, window, now).map_err(|e| invalid(e.0))?;
    if proof.jkt != *jkt {
        return Err(invalid(
            "the DPoP proof key is not the key the token is bound to",
        ));
    }
    if !record {
        return Ok(());
    }
    // Remembered until the proof can no longer be accepted anyway.
    let expires = proof
        .iat
        .saturating_add(window.max_age_s)
        .saturating_add(window.leeway_s)
        .saturating_add(1);
    let key = replay_key(&proof.jkt, &proof.jti);
    match first_use(stores, &key, expires, now).await {
        Ok(true) => {
            METRICS.dpop_proofs.with_label_values(&["accepted"]).inc();
            Ok(())
        }
        Ok(false) => {
            METRICS.dpop_proofs.with_label_values(&["replayed"]).inc();
            Err(DpopRefusal::Proof("the DPoP proof was already used"))
        }
        Err(()) => {
            METRICS
                .dpop_proofs
                .with_label_values(&["unavailable"])
                .inc();
            Err(DpopRefusal::Unavailable)
        }
    }
}

/// The request URI as the client addressed it, in the form `htu` is compared in: the scheme
/// it came on, its (canonical) `Host` and path. `None` without a usable host.
pub fn request_htu(req: &RequestHeader, https: bool) -> Option<String> {
    let host = req.headers.get(http::header::HOST)?.to_str().ok()?;
    let scheme = if https { "https" } else { "http" };
    normalize_htu(&format!("{scheme}://{host}{}", req.uri.path()))
}

/// Proofs are keyed by their key and `jti` together: two clients may well pick the same
/// `jti`, and only a replay by the same key is one.
fn replay_key(jkt: &str, jti: &str) -> [u8; 16] {
    let d = crate::util::digest::sha256(&[jkt.as_bytes(), b"\n", jti.as_bytes()]);
    d[..16].try_into().expect("SHA-256 is 32 bytes")
}

/// Whether this is the proof's first use: in this process, then (when rate limits use Redis)
/// in the fleet. `Err` when it cannot be told.
async fn first_use(stores: &Stores, key: &[u8; 16], expires: u64, now: u64) -> Result<bool, ()> {
    if !REPLAY.first_use(*key, expires, now)? {
        return Ok(false);
    }
    let Some(redis) = &stores.redis else {
        return Ok(true);
    };
    match redis
        .set_once(&redis_key(key), expires.saturating_sub(now))
        .await
    {
        Ok(first) => Ok(first),
        // The local cache has it; whether another instance saw it cannot be told.
        Err(_) if redis.on_error() == OnStoreError::Deny => Err(()),
        Err(_) => Ok(true),
    }
}

fn redis_key(key: &[u8; 16]) -> String {
    let mut out = String::from("tollgate:dpop:");
    for b in key {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The process's replay cache, shared by every snapshot: a reload does not forget a jti.
pub static REPLAY: Lazy<ReplayCache> = Lazy::new(ReplayCache::default);

const SHARDS: usize = 16;

/// Proof keys until they expire (unix seconds), in shards. It never evicts an entry that has
/// not expired: at capacity it refuses instead, because forgetting a live jti would let that
/// proof be replayed.
///
/// Each shard keeps its keys by expiry second as well, and drops the expired ones from the
/// front of that order as time passes: every key is inserted once and removed once, so a
/// proof costs O(1) amortised (plus the log of the few distinct expiry seconds), full cache
/// or not, instead of a scan of the shard.
pub struct ReplayCache {
    shards: [Mutex<ReplayShard>; SHARDS],
    capacity: AtomicUsize,
}

#[derive(Default)]
struct ReplayShard {
    live: HashMap<[u8; 16], u64>,
    by_expiry: std::collections::BTreeMap<u64, Vec<[u8; 16]>>,
}

impl ReplayShard {
    /// Forgets every key expired at `now`.
    fn expire(&mut self, now: u64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if *entry.key() > now {
                break;
            }
            for key in entry.remove() {
                // A key used again after it expired has a later expiry: keep that one.
                if self.live.get(&key).is_some_and(|until| *until <= now) {
                    self.live.remove(&key);
                }
            }
        }
    }
}

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache {
            shards: std::array::from_fn(|_| Mutex::new(ReplayShard::default())),
            capacity: AtomicUsize::new(DpopSettings::default().replay_cache_size),
        }
    }
}

impl ReplayCache {
    /// `auth.dpop.replay_cache_size` of the snapshot going live (set when it is put in
    /// use, not per request).
    pub fn set_capacity(&self, entries: usize) {
        self.capacity.store(entries, Ordering::Relaxed);
    }

    /// Records `key` until `expires`; `Ok(false)` when it is already there and live, `Err`
    /// when the cache is full of live entries.
    fn first_use(&self, key: [u8; 16], expires: u64, now: u64) -> Result<bool, ()> {
        let per_shard = self
            .capacity
            .load(Ordering::Relaxed)
            .div_ceil(SHARDS)
            .max(1);
        let mut shard = self.shards[usize::from(key[0]) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shard.expire(now);
        if shard.live.contains_key(&key) {
            return Ok(false);
        }
        if shard.live.len() >= per_shard {
            return Err(());
        }
        shard.live.insert(key, expires);
        shard.by_expiry.entry(expires).or_default().push(key);
        Ok(true)
    }

    #[cfg(test)]
    fn entries(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(live, queued), s| {
            let s = s.lock().unwrap();
            (
                live + s.live.len(),
                queued + s.by_expiry.values().map(Vec::len).sum::<usize>(),
            )
        })
    }
}

impl RedisStore {
    /// `SET key 1 NX EX ttl`: whether the key was new.
    pub(crate) async fn set_once(&self, key: &str, ttl_s: u64) -> Result<bool, String> {
        let conn = self.connection().ok_or("not connected")?;
        let mut conn = (*conn).clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(1).arg("NX").arg("EX").arg(ttl_s.max(1));
        let reply: Option<String> =
            tokio::time::timeout(self.timeout(), cmd.query_async(&mut conn))
                .await
                .map_err(|_| "no answer in time".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .inspect_err(|_| self.count_error())?;
        Ok(reply.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_refused_until_it_expires_and_a_full_cache_refuses_rather_than_forgets() {
        let cache = ReplayCache::default();
        cache.set_capacity(SHARDS);
        let key = |i: u8| [i; 16];
        assert_eq!(cache.first_use(key(0), 100, 10), Ok(true));
        assert_eq!(cache.first_use(key(0), 100, 50), Ok(false));
        // Expired: the proof could not be accepted any more, so the key may be reused.
        assert_eq!(cache.first_use(key(0), 200, 100), Ok(true));
        // One entry per shard: shard 0 is full of a live entry.
        assert_eq!(cache.first_use(key(16), 300, 150), Err(()));
        assert_eq!(cache.first_use(key(16), 300, 200), Ok(true));
    }

    #[test]
    fn a_full_replay_cache_under_a_flood_does_constant_work_and_stays_bounded() {
        // Issue 22 (9): once full, every proof scanned its whole shard (`retain`). Now expired
        // keys leave in expiry order, each once: a flood of a million proofs over 100 s of
        // clock keeps at most the live window, and refuses nothing that has expired.
        let cache = ReplayCache::default();
        cache.set_capacity(16_000);
        let mut refused = 0;
        let mut counter = 0u64;
        for second in 0..100u64 {
            for _ in 0..10_000 {
                counter += 1;
                let mut key = [0u8; 16];
                key[0] = (counter % 251) as u8;
                key[1..9].copy_from_slice(&counter.to_le_bytes());
                // Proofs live 1 s: at most 10,000 are live at once, under the capacity.
                if cache.first_use(key, second + 1, second) != Ok(true) {
                    refused += 1;
                }
            }
            let (live, queued) = cache.entries();
            assert!(
                live <= 16_000 && queued <= 16_000,
                "{live} live, {queued} queued"
            );
        }
        assert_eq!(refused, 0, "expired keys always made room");
    }
}
