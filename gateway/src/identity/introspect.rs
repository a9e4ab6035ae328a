//! Opaque tokens checked by asking their issuer (RFC 7662 token introspection), for providers
//! with `type: introspection`.
//!
//! An `active` answer's members become the token's claims, and from there on the token is
//! treated like a verified JWT (claims stage, revocation, DPoP binding, RBAC, limits, identity
//! headers). Answers are cached by the token's SHA-256: active ones until the token's `exp`
//! (at most `cache_max_ttl`), inactive ones for `negative_cache_ttl`. One call is in flight
//! per token however many requests carry it. When the endpoint cannot answer (timeout,
//! non-200, not JSON, or a circuit opened by consecutive failures), the token is refused with
//! 503: the gateway cannot tell, so it does not let the request through.

use crate::telemetry::metrics::METRICS;
use crate::util::digest::sha256;
use base64::Engine as _;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::tls::CaType;
use serde_json::{Map, Value};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_config::{Introspection, SecretSource};
use tollgate_jwt::VerifiedToken;

/// What answers are cached and calls shared under: the token's SHA-256 (the token itself
/// is never kept).
pub fn token_key(token: &str) -> [u8; 32] {
    sha256(&[token.as_bytes()])
}

/// Why introspection gave no claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The provider says the token is not active (401).
    Inactive,
    /// The answer's claims break the claim type rules (401 `malformed`).
    Malformed(&'static str),
    /// The endpoint answered 400 for this token (401 `malformed`).
    BadRequest,
    /// The endpoint could not answer, or the circuit is open (503, fail closed).
    Unavailable,
    /// No call was started: the provider's or the client's network budget is full (the
    /// request that would have started it, and any that joined it, get this refusal).
    Budget(crate::identity::preauth::PreAuthRefusal),
}

#[derive(Clone)]
enum Answer {
    Active(Arc<VerifiedToken>),
    Inactive,
}

struct Entry {
    answer: Answer,
    /// Unix seconds after which the answer is not used.
    until: u64,
}

/// No answer is kept longer than a day, whatever `cache_max_ttl` says.
const MAX_TTL_S: u64 = 24 * 3600;

/// Entries live until their `until`.
struct ExpireAtUntil;

impl moka::Expiry<[u8; 32], Arc<Entry>> for ExpireAtUntil {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Entry>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        // Capped: moka adds this to an `Instant`, which must not overflow.
        let left = value
            .until
            .saturating_sub(crate::util::clock::unix_seconds());
        Some(Duration::from_secs(left.min(MAX_TTL_S)))
    }
}

/// What a call (shared by every request waiting on it) came to.
type Outcome = Result<Answer, Refused>;

/// Consecutive failures, and when an open circuit may try again.
#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// One provider's introspection client, cache and circuit breaker.
pub struct Introspector {
    provider: Arc<str>,
    endpoint: String,
    /// `Basic base64(client_id:secret)`: a secret, never logged (see the Debug impl).
    authorization: String,
    pub all_tokens: bool,
    timeout: Duration,
    cache_max_ttl: u64,
    negative_cache_ttl: u64,
    /// Answers by the token's SHA-256 (the token itself is never kept).
    answers: moka::future::Cache<[u8; 32], Arc<Entry>>,
    breaker: Mutex<Breaker>,
    failure_threshold: u32,
    open_for: Duration,
    ca: Option<Arc<CaType>>,
}

impl fmt::Debug for Introspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspector")
            .field("provider", &self.provider)
            .field("endpoint", &self.endpoint)
            .field("authorization", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// RFC 6749 §2.3.1 (which RFC 7662 §2.1 points to): client id and secret are
/// form-urlencoded before they are joined for HTTP Basic.
fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Introspector {
    /// Reads the client secret (a config problem when it cannot be read).
    #[allow(
        clippy::disallowed_methods,
        reason = "snapshot compilation, off the workers"
    )]
    pub fn build(
        provider: &str,
        c: &Introspection,
        ca: Option<Arc<CaType>>,
    ) -> Result<Introspector, String> {
        let secret = match &c.client_secret {
            SecretSource::File(path) => {
                let mut s = std::fs::read_to_string(path).map_err(|e| {
                    format!("introspection.client_secret_file: cannot read {path}: {e}")
                })?;
                while s.ends_with(['\n', '\r']) {
                    s.pop();
                }
                s
            }
            SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                format!("introspection.client_secret_env: environment variable {var} is not set")
            })?,
        };
        if secret.is_empty() {
            return Err("introspection: the client secret is empty".into());
        }
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form_encode(&c.client_id),
            form_encode(&secret)
        ));
        Ok(Introspector {
            provider: provider.into(),
            endpoint: c.endpoint.clone(),
            authorization: format!("Basic {basic}"),
            all_tokens: c.all_tokens,
            timeout: c.timeout,
            cache_max_ttl: c.cache_max_ttl.as_secs().max(1),
            negative_cache_ttl: c.negative_cache_ttl.as_secs().max(1),
            answers: moka::future::Cache::builder()
                .max_capacity(c.cache_size)
                .expire_after(ExpireAtUntil)
                .build(),
            breaker: Mutex::new(Breaker::default()),
            failure_threshold: c.failure_threshold,
            open_for: c.open_for,
            ca,
        })
    }

    fn count(&self, metric: &prometheus::IntCounterVec, result: &str) {
        metric.with_label_values(&[&self.provider, result]).inc();
    }

    /// The cached answer for `token`, if one is fresh at `now`.
    /// `key`: the token's SHA-256 ([`token_key`]).
    pub async fn cached(
        &self,
        key: &[u8; 32],
        now: u64,
    ) -> Option<Result<Arc<VerifiedToken>, Refused>> {
        let entry = self.answers.get(key).await.filter(|e| e.until > now)?;
        self.count(&METRICS.introspection_cache, "hit");
        Some(match &entry.answer {
            Answer::Active(t) => Ok(t.clone()),
            Answer::Inactive => Err(Refused::Inactive),
        })
    }

    /// Asks the endpoint about `token` (one call however many requests wait for it) and
    /// caches the answer. Only the request that starts the call asks `admit` for a place in
    /// the network budget, and holds it for the call; requests that join a call in flight
    /// add no call and take no place.
    pub async fn introspect<P>(
        &self,
        connector: &Connector,
        token: &str,
        key: [u8; 32],
        now: u64,
        admit: impl FnOnce() -> Result<P, crate::identity::preauth::PreAuthRefusal>,
    ) -> Result<Arc<VerifiedToken>, Refused> {
        // An answer past its `until` by the caller's clock is not used, nor waited on.
        if self.answers.get(&key).await.is_some_and(|e| e.until <= now) {
            self.answers.invalidate(&key).await;
        }
        // One call per token however many requests wait: moka runs one `init` per key and
        // hands its value to every waiter; an error is shared with the waiters of that call
        // and not kept.
        let entry = self
            .answers
            .try_get_with(key, async {
                self.count(&METRICS.introspection_cache, "miss");
                let _place = admit().map_err(Refused::Budget)?;
                // The proxy looks at the client during this turn: a client already gone
                // starts no call.
                crate::identity::preauth::before_network_wait().await;
                let answer = self.call(connector, token).await?;
                let until = self.until(&answer, now);
                Ok(Arc::new(Entry { answer, until }))
            })
            .await
            .map_err(|e: Arc<Refused>| *e)?;
        match &entry.answer {
            Answer::Active(t) => Ok(t.clone()),
            Answer::Inactive => Err(Refused::Inactive),
        }
    }

    /// Until when an answer is used: an active token's `exp` within `cache_max_ttl`, an
    /// inactive one's for `negative_cache_ttl`.
    fn until(&self, answer: &Answer, now: u64) -> u64 {
        match answer {
            Answer::Active(t) => {
                let exp = t.exp.map_or(u64::MAX, |e| e as u64);
                exp.min(now.saturating_add(self.cache_max_ttl))
            }
            Answer::Inactive => now.saturating_add(self.negative_cache_ttl),
        }
    }

    /// One call through the circuit breaker.
    async fn call(&self, connector: &Connector, token: &str) -> Outcome {
        {
            let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
            match b.open_until {
                Some(t) if Instant::now() < t => {
                    drop(b);
                    self.count(&METRICS.introspection_calls, "circuit_open");
                    return Err(Refused::Unavailable);
                }
                // Half open: this call tries; another failure opens it again.
                Some(_) => b.open_until = None,
                None => {}
            }
        }
        let form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let answer = crate::identity::jwks::post_form(
            connector,
            &self.endpoint,
            &self.authorization,
            form,
            self.timeout,
            self.ca.as_ref(),
        )
        .await
        .and_then(|(status, body)| match status {
            200 => parse_answer(&body),
            // The endpoint refused this request (RFC 6749 §5.2 `invalid_request`): about
            // this token, which the client chose, so it must not count against the
            // endpoint's health, or one client could open the circuit for everyone.
            400 => Ok(Err(Refused::BadRequest)),
            s => Err(format!("status {s}")),
        });
        let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Ok(outcome) => {
                b.failures = 0;
                drop(b);
                let result = match &outcome {
                    Ok(Answer::Active(_)) => "active",
                    Ok(Answer::Inactive) => "inactive",
                    Err(Refused::BadRequest) => "bad_request",
                    Err(_) => "malformed",
                };
                self.count(&METRICS.introspection_calls, result);
                outcome
            }
            Err(e) => {
                b.failures += 1;
                if b.failures >= self.failure_threshold {
                    b.open_until = Some(Instant::now() + self.open_for);
                    b.failures = 0;
                }
                drop(b);
                self.count(&METRICS.introspection_calls, "error");
                // The error names the endpoint's failure, never the token or the secret.
                tracing::warn!(provider = %self.provider, error = %e, "token introspection failed");
                Err(Refused::Unavailable)
            }
        }
    }
}

/// An introspection answer (RFC 7662 §2.2): `active` must be `true` for a usable token,
/// and then the other members are its claims.
fn parse_answer(body: &[u8]) -> Result<Outcome, String> {
    // Strict: `{"active": false, "active": true}` is refused, not read by its last member.
    let doc: Map<String, Value> = tollgate_jwt::codec::parse_json_object(body)
        .map_err(|_| "the answer is not a JSON object without duplicate members")?;
    match doc.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Ok(Ok(Answer::Inactive)),
        _ => return Err("the answer has no boolean active".into()),
    }
    let mut claims = doc;
    claims.remove("active");
    Ok(tollgate_jwt::claims_token(claims)
        .map(|t| Answer::Active(Arc::new(t)))
        .map_err(|r| Refused::Malformed(r.detail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_are_form_encoded_before_basic() {
        assert_eq!(form_encode("a b:c/é"), "a+b%3Ac%2F%C3%A9");
        assert!(matches!(
            parse_answer(br#"{"active":false}"#),
            Ok(Ok(Answer::Inactive))
        ));
        assert!(matches!(
            parse_answer(br#"{"active":true,"sub":7}"#),
            Ok(Err(Refused::Malformed(_)))
        ));
        assert!(parse_answer(br#"{"active":"yes"}"#).is_err());
        assert!(parse_answer(br#"{"active":false,"active":true}"#).is_err());
        let Ok(Ok(Answer::Active(t))) =
            parse_answer(br#"{"active":true,"sub":"alice","exp":2000,"scope":"a b"}"#)
        else {
            panic!("an active answer")
        };
        assert_eq!(t.sub.as_deref(), Some("alice"));
        assert_eq!(t.alg, None);
        assert!(!t.claims.contains_key("active"));
    }
}
