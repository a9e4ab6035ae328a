//! Tokens the gateway mints for upstreams (`routes[].upstream_token`): after the caller's
//! token passed, the upstream gets a short-lived token signed with the gateway's own key
//! (`auth.signing_keys`), so a backend trusts one issuer whatever the callers' providers
//! are. Minted tokens are reused per (caller claims, route) until half their lifetime, so a
//! hot caller costs one signature per half-TTL, not one per request. The public keys are
//! served as a JWKS at `/.well-known/jwks.json` on the metrics listener.

use crate::limits::Claims;
use crate::metrics::METRICS;
use arc_swap::ArcSwapOption;
use http::HeaderValue;
use prometheus::IntCounter;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tollgate_config::{Problem, SigningKeys, UpstreamToken};
use tollgate_jwt::{Algorithm, SigningKey};

/// Minted tokens kept, over all shards. Past it a shard drops its expired entries, then
/// all of them: a bound, not an LRU (entries live half a TTL anyway).
const CACHE_ENTRIES: usize = 100_000;
const SHARDS: usize = 16;

/// The JWKS of the config in use, served by the metrics listener; `None` without
/// `auth.signing_keys`. Set when a config goes live (not when one is only compiled).
static PUBLISHED: ArcSwapOption<Vec<u8>> = ArcSwapOption::const_empty();

/// Publishes the keys of the config going live.
pub fn publish(minter: Option<&Minter>) {
    PUBLISHED.store(minter.map(|m| m.jwks.clone()));
}

/// The JWKS document the metrics listener serves now.
pub fn published() -> Option<Arc<Vec<u8>>> {
    PUBLISHED.load_full()
}

/// A route's `upstream_token`: what to mint, with the minter and the route's counters.
pub struct RouteTokens {
    minter: Arc<Minter>,
    pub spec: UpstreamToken,
    /// `tollgate_upstream_tokens_total{route}` for minted, cached and error, resolved once.
    counters: [IntCounter; 3],
}

impl RouteTokens {
    pub fn new(route: &str, minter: Arc<Minter>, spec: UpstreamToken) -> RouteTokens {
        RouteTokens {
            minter,
            spec,
            counters: ["minted", "cached", "error"]
                .map(|r| METRICS.upstream_tokens.with_label_values(&[route, r])),
        }
    }

    /// The header value for `caller`'s request, counted; `None` if signing failed.
    pub fn value_for(&self, caller: &Claims) -> Option<HeaderValue> {
        let (value, counter) = match self.minter.token_for(&self.spec, caller) {
            Some((v, Issued::Minted)) => (Some(v), 0),
            Some((v, Issued::Cached)) => (Some(v), 1),
            None => (None, 2),
        };
        self.counters[counter].inc();
        value
    }
}

/// Whether a token was signed for this request or reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    Minted,
    Cached,
}

/// The gateway's signing key and the cache of what it signed.
pub struct Minter {
    issuer: String,
    kid: String,
    alg: Algorithm,
    key: SigningKey,
    jwks: Arc<Vec<u8>>,
    cache: [Mutex<HashMap<String, Minted>>; SHARDS],
}

struct Minted {
    value: HeaderValue,
    /// Reused until then: half the token's lifetime.
    fresh_until: Instant,
}

impl Minter {
    /// Reads every key of `auth.signing_keys`: Ed25519 (EdDSA) or P-256 (ES256) PKCS#8 PEM.
    /// Errors carry the YAML path of the key that failed.
    pub fn build(s: &SigningKeys) -> Result<Minter, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut public = Vec::new();
        let mut signer = None;
        for (i, k) in s.keys.iter().enumerate() {
            let path = format!("auth.signing_keys.keys[{i}].file");
            let read = std::fs::read(&k.file)
                .map_err(|e| format!("cannot read {}: {e}", k.file))
                .and_then(|pem| SigningKey::from_pem(&pem).map_err(|e| e.to_string()));
            let key = match read {
                Ok(key) => key,
                Err(message) => {
                    problems.push(Problem { path, message });
                    continue;
                }
            };
            let alg = key.default_algorithm();
            if !matches!(alg, Algorithm::EdDSA | Algorithm::ES256) {
                problems.push(Problem {
                    path,
                    message: format!(
                        "a {} key: the gateway signs with Ed25519 (EdDSA) or P-256 (ES256) keys",
                        alg.as_str()
                    ),
                });
                continue;
            }
            let mut jwk = key
                .public_jwk(Some(&k.kid), Some(alg))
                .expect("an asymmetric key has a public JWK");
            if let Some(obj) = jwk.as_object_mut() {
                obj.insert("use".into(), "sig".into());
            }
            public.push(jwk);
            if k.kid == s.current {
                signer = Some((key, alg));
            }
        }
        let Some((key, alg)) = signer.filter(|_| problems.is_empty()) else {
            return Err(problems);
        };
        let jwks = serde_json::to_vec(&json!({ "keys": public })).expect("JSON values serialize");
        Ok(Minter {
            issuer: s.issuer.clone(),
            kid: s.current.clone(),
            alg,
            key,
            jwks: Arc::new(jwks),
            cache: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        })
    }

    /// The header value for the upstream: a token for `spec`'s audience carrying the
    /// caller's `sub` and listed claims, and `act` naming the token it was derived from.
    /// Reused while less than half its lifetime has passed.
    pub fn token_for(
        &self,
        spec: &UpstreamToken,
        caller: &Claims,
    ) -> Option<(HeaderValue, Issued)> {
        let mut claims = Map::new();
        for name in &spec.claims {
            if let Some(v) = caller.get(name) {
                claims.insert(name.clone(), v.clone());
            }
        }
        // RFC 8693 §4.1: `act` is the party the token was issued through; here, the
        // verified token's issuer and subject, so a backend sees both who the caller is
        // (`sub`) and who vouched for it first.
        let mut act = Map::new();
        for name in ["iss", "sub"] {
            if let Some(v) = caller.get(name) {
                act.insert(name.into(), v.clone());
            }
        }
        claims.insert("act".into(), Value::Object(act));
        let key = format!(
            "{}\n{}\n{}\n{}",
            spec.audience,
            spec.ttl.as_millis(),
            spec.header,
            Value::Object(claims.clone())
        );
        let shard = &self.cache[shard_of(&key)];
        let now = Instant::now();
        if let Some(m) = lock(shard).get(&key).filter(|m| m.fresh_until > now) {
            return Some((m.value.clone(), Issued::Cached));
        }
        let value = self.mint(spec, claims)?;
        let mut entries = lock(shard);
        if entries.len() >= CACHE_ENTRIES / SHARDS {
            entries.retain(|_, m| m.fresh_until > now);
            if entries.len() >= CACHE_ENTRIES / SHARDS {
                entries.clear();
            }
        }
        entries.insert(
            key,
            Minted {
                value: value.clone(),
                fresh_until: now + spec.ttl / 2,
            },
        );
        Some((value, Issued::Minted))
    }

    fn mint(&self, spec: &UpstreamToken, mut claims: Map<String, Value>) -> Option<HeaderValue> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let mut jti = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jti).ok()?;
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), spec.audience.clone().into());
        claims.insert("iat".into(), iat.into());
        claims.insert("exp".into(), (iat + spec.ttl.as_secs().max(1)).into());
        claims.insert(
            "jti".into(),
            tollgate_jwt::codec::b64url_encode(&jti).into(),
        );
        let token =
            tollgate_jwt::sign(self.alg, Some(&self.kid), &Value::Object(claims), &self.key)
                .map_err(|e| tracing::error!(error = %e, "minting an upstream token failed"))
                .ok()?;
        let text = if spec.header == http::header::AUTHORIZATION {
            format!("Bearer {token}")
        } else {
            token
        };
        HeaderValue::from_str(&text).ok()
    }
}

fn shard_of(key: &str) -> usize {
    use std::hash::{BuildHasher, RandomState};
    static STATE: once_cell::sync::Lazy<RandomState> = once_cell::sync::Lazy::new(RandomState::new);
    (STATE.hash_one(key) as usize) % SHARDS
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
