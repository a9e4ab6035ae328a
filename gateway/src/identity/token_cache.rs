//! The verified-token cache, and its counterpart for forgeries.
//!
//! Keyed by the SHA-256 of the token's bytes. An entry names the provider and the key
//! generation that verified it and counts only while that provider's keys are unchanged, so
//! a key rotation or removal re-verifies. Entries live until the token's `exp`. The claims
//! (`exp`, `nbf`, `iss`, `aud`) are still checked on every hit: the cache saves only the
//! signature check and the identity headers.

use crate::identity::keys::{unix_seconds, Provider};
use http::header::{HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tollgate_jwt::VerifiedToken;

/// Headers that carry a verified identity upstream.
pub type IdentityHeaders = Arc<[(HeaderName, HeaderValue)]>;

/// A cached verification: which provider and key generation verified the signature.
pub(crate) struct CacheEntry {
    pub(crate) provider: usize,
    pub(crate) generation: u64,
    pub(crate) token: Arc<VerifiedToken>,
    /// The identity headers of this token, computed once.
    pub(crate) headers: IdentityHeaders,
}

/// Entries live until their token's `exp` (tokens without one: `NO_EXP_TTL`).
struct ExpireAtTokenExp;

const NO_EXP_TTL: Duration = Duration::from_secs(300);
/// Forged tokens remembered, and for how long.
const FORGED_CACHE_SIZE: u64 = 10_000;
const FORGED_CACHE_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

impl moka::Expiry<[u8; 32], Arc<CacheEntry>> for ExpireAtTokenExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<CacheEntry>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(match value.token.exp {
            Some(exp) => {
                let left = exp - unix_seconds(SystemTime::now());
                if left <= 0.0 {
                    Duration::ZERO
                } else {
                    Duration::from_secs_f64(left.min(MAX_TTL.as_secs_f64()))
                }
            }
            None => NO_EXP_TTL,
        })
    }
}

/// Verified tokens and recent forgeries of one snapshot.
pub(crate) struct TokenCache {
    verified: moka::sync::Cache<[u8; 32], Arc<CacheEntry>>,
    /// Tokens whose signature failed, with the provider and key generation that refused
    /// them: a replayed forgery costs a hash and a lookup instead of a signature check.
    /// Small and short-lived; forgeries that never repeat still cost a verification each.
    forged: moka::sync::Cache<[u8; 32], (usize, u64)>,
}

impl TokenCache {
    pub(crate) fn new(max_entries: u64) -> TokenCache {
        TokenCache {
            verified: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(ExpireAtTokenExp)
                .build(),
            forged: moka::sync::Cache::builder()
                .max_capacity(FORGED_CACHE_SIZE)
                .time_to_live(FORGED_CACHE_TTL)
                .build(),
        }
    }

    /// The verification of these token bytes by one of `providers`, if still valid for
    /// that provider's current keys.
    pub(crate) fn verified(
        &self,
        key: &[u8; 32],
        providers: &[Arc<Provider>],
    ) -> Option<(Arc<Provider>, Arc<CacheEntry>)> {
        let entry = self.verified.get(key)?;
        let provider = providers.iter().find(|p| p.index == entry.provider)?;
        (provider.keys().generation == entry.generation).then(|| (provider.clone(), entry))
    }

    pub(crate) fn insert_verified(&self, key: [u8; 32], entry: CacheEntry) {
        self.verified.insert(key, Arc::new(entry));
    }

    /// The provider among `providers` that refused these token bytes with its current
    /// keys, if it did recently.
    pub(crate) fn forged_for(
        &self,
        key: &[u8; 32],
        providers: &[Arc<Provider>],
    ) -> Option<Arc<Provider>> {
        let (index, generation) = self.forged.get(key)?;
        let p = providers.iter().find(|p| p.index == index)?;
        (p.keys().generation == generation).then(|| p.clone())
    }

    pub(crate) fn insert_forged(&self, key: [u8; 32], provider: usize, generation: u64) {
        self.forged.insert(key, (provider, generation));
    }
}
