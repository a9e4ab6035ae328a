//! Tokens the gateway mints for upstreams (`routes[].upstream_token`): after the caller's
//! token passed, the upstream gets a short-lived token signed with the gateway's own key
//! (`auth.signing_keys`), so a backend trusts one issuer whatever the callers' providers
//! are. Minted tokens are reused per (caller claims, route) until half their lifetime, so a
//! hot caller costs one signature per half-TTL, not one per request. The public keys are
//! served as a JWKS at `/.well-known/jwks.json` on the metrics listener.

use crate::limits::Claims;
use crate::telemetry::metrics::METRICS;
use arc_swap::ArcSwapOption;
use http::HeaderValue;
use prometheus::IntCounter;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tollgate_config::{Problem, SigningKeys, UpstreamToken};
use tollgate_jwt::{Algorithm, SigningKey};

/// Minted tokens kept at most. The cache (moka) evicts by its admission policy past it and
/// drops each entry when it stops being fresh: O(1) amortised per request whatever the
/// flood, where a full map used to be scanned and then cleared.
const CACHE_ENTRIES: u64 = 100_000;

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
    cache: moka::sync::Cache<String, Minted>,
}

#[derive(Clone)]
struct Minted {
    value: HeaderValue,
    /// Reused until then: half the token's lifetime.
    fresh_until: Instant,
}

impl Minter {
    /// Reads every key of `auth.signing_keys`: Ed25519 (EdDSA) or P-256 (ES256) PKCS#8 PEM.
    /// Errors carry the YAML path of the key that failed.
    #[allow(
        clippy::disallowed_methods,
        reason = "snapshot compilation, off the workers"
    )]
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
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .expire_after(FreshFor)
                .build(),
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
        let now = Instant::now();
        if let Some(m) = self.cache.get(&key).filter(|m| m.fresh_until > now) {
            return Some((m.value.clone(), Issued::Cached));
        }
        let caller_exp = caller
            .get("exp")
            .and_then(Value::as_f64)
            .filter(|e| e.is_finite() && *e >= 0.0)
            .map(|e| e as u64);
        let (value, lifetime) = self.mint(spec, claims, caller_exp)?;
        self.cache.insert(
            key,
            Minted {
                value: value.clone(),
                fresh_until: now + lifetime / 2,
            },
        );
        Some((value, Issued::Minted))
    }

    /// Signs a token for `claims`, expiring after `spec.ttl` but never after the caller's
    /// own token (`caller_exp`; at least 1 s, for a caller accepted within the leeway).
    /// Returns the header value and the token's lifetime.
    fn mint(
        &self,
        spec: &UpstreamToken,
        mut claims: Map<String, Value>,
        caller_exp: Option<u64>,
    ) -> Option<(HeaderValue, Duration)> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let exp = caller_exp
            .map_or(u64::MAX, |e| e)
            .min(iat + spec.ttl.as_secs().max(1))
            .max(iat + 1);
        let mut jti = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jti).ok()?;
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), spec.audience.clone().into());
        claims.insert("iat".into(), iat.into());
        claims.insert("exp".into(), exp.into());
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
        let value = HeaderValue::from_str(&text).ok()?;
        Some((value, Duration::from_secs(exp - iat)))
    }
}

/// A minted token leaves the cache once it is no longer reused (half its lifetime).
struct FreshFor;

impl moka::Expiry<String, Minted> for FreshFor {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Minted,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.fresh_until.saturating_duration_since(created_at))
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "tests set up files")]
mod tests {
    use super::*;

    fn minter(dir: &std::path::Path) -> Minter {
        let file = dir.join("gw.pem");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(&file, key.serialize_pem()).unwrap();
        Minter::build(&SigningKeys {
            issuer: "https://gw.test".into(),
            current: "gw".into(),
            keys: vec![tollgate_config::SigningKeyFile {
                kid: "gw".into(),
                file: file.to_str().unwrap().into(),
            }],
        })
        .unwrap()
    }

    fn claims_of(value: &HeaderValue) -> Map<String, Value> {
        let token = value.to_str().unwrap().strip_prefix("Bearer ").unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let bytes = tollgate_jwt::codec::b64url_decode(payload).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn a_minted_token_never_outlives_the_callers_and_is_reused_only_while_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let m = minter(dir.path());
        let spec = UpstreamToken {
            header: http::header::AUTHORIZATION,
            audience: "billing".into(),
            ttl: Duration::from_secs(600),
            claims: vec!["sub".into()],
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let caller = |sub: &str, exp: u64| {
            json!({ "iss": "https://idp.test", "sub": sub, "exp": exp })
                .as_object()
                .unwrap()
                .clone()
        };
        // The caller's token ends in 30 s: so does the minted one, not in 600 s.
        let (short, issued) = m.token_for(&spec, &caller("alice", now + 30)).unwrap();
        assert_eq!(issued, Issued::Minted);
        let exp = claims_of(&short)["exp"].as_u64().unwrap();
        assert!(
            exp <= now + 30 && exp + 5 >= now + 30,
            "exp {exp}, now {now}"
        );
        // A caller with a long-lived token gets the route's TTL.
        let (long, _) = m.token_for(&spec, &caller("bob", now + 86_400)).unwrap();
        let c = claims_of(&long);
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 600);
        assert_eq!(c["act"], json!({ "iss": "https://idp.test", "sub": "bob" }));
        // A caller accepted within the leeway (exp just passed) still gets a token of 1 s.
        let (late, _) = m.token_for(&spec, &caller("carol", now - 5)).unwrap();
        let c = claims_of(&late);
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 1);
        // Reused while fresh: the same caller claims get the same token.
        let (again, issued) = m.token_for(&spec, &caller("bob", now + 86_400)).unwrap();
        assert_eq!((again, issued), (long, Issued::Cached));
    }
}
