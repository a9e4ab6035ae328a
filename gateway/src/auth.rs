//! Authentication in `request_filter`: read the token from the route's sources, pick the
//! provider by `iss`, verify against the provider's key set (lock-free through `ArcSwap`),
//! remember verified tokens, and turn claims into identity headers for the upstream.

use crate::jwks;
use crate::metrics::METRICS;
use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue};
use pingora_core::connectors::http::Connector;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tollgate_config::{Audiences, KeySource, Problem, Refresh, TokenSource};
use tollgate_jwt::{KeySet, Reason, Rejection, Validation, VerifiedToken};
use tollgate_policy::ClaimPath;

/// A provider's keys at one moment. Replaced whole; never changed in place.
pub struct KeyState {
    pub set: Arc<KeySet>,
    /// Bumped whenever the keys change; cache entries of older generations are re-verified.
    pub generation: u64,
    /// When the keys were last loaded or fetched successfully.
    pub last_success: Option<SystemTime>,
    /// SHA-256 of the document the keys came from, to tell a real change from a refresh.
    digest: [u8; 32],
}

/// An issuer and its keys.
pub struct Provider {
    pub index: usize,
    pub name: Arc<str>,
    pub issuer: String,
    validation: Validation,
    require_exp: bool,
    source: KeySource,
    refresh: Refresh,
    pub token_sources: Vec<TokenSource>,
    keys: ArcSwap<KeyState>,
    /// Initial keys are in place (always true but for `jwks_uri` before its first fetch).
    ready: AtomicBool,
    /// `tollgate_auth_decisions_total{provider, result="allow", reason="ok"}`, resolved once.
    pub allowed: prometheus::IntCounter,
    /// When the last refetch for an unknown `kid` started. The async mutex makes that refetch
    /// single-flight: requests that wait on it then see the new generation and do not fetch.
    unknown_kid_refetch: tokio::sync::Mutex<Option<Instant>>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

impl Provider {
    /// Builds a provider; local key sources are read now (errors are config problems).
    pub fn build(index: usize, p: &tollgate_config::Provider) -> Result<Provider, String> {
        let local = jwks::load_local(&p.keys)?;
        let ready = local.is_some();
        let provider = Provider {
            index,
            name: p.name.as_str().into(),
            issuer: p.issuer.clone(),
            validation: Validation {
                leeway_s: p.leeway.as_secs(),
                issuer: Some(p.issuer.clone()),
                // The verifier skips the check for an empty list; validation never leaves
                // a `List` empty, so only an explicit `any` gets here with nothing to check.
                audiences: match &p.audiences {
                    Audiences::Any => Vec::new(),
                    Audiences::List(list) => list.clone(),
                },
                token_types: p.token_types.clone(),
            },
            require_exp: p.require_exp,
            source: p.keys.clone(),
            refresh: p.refresh.clone(),
            token_sources: p.token_sources.clone(),
            keys: ArcSwap::from_pointee(KeyState {
                set: Arc::new(local.unwrap_or_default()),
                generation: 0,
                last_success: ready.then(SystemTime::now),
                digest: [0; 32],
            }),
            ready: AtomicBool::new(ready),
            allowed: METRICS
                .auth_decisions
                .with_label_values(&[&p.name, "allow", "ok"]),
            unknown_kid_refetch: tokio::sync::Mutex::new(None),
        };
        provider.publish_key_metrics();
        Ok(provider)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<KeyState>> {
        self.keys.load()
    }

    fn publish_key_metrics(&self) {
        let state = self.keys.load();
        METRICS
            .jwks_keys
            .with_label_values(&[&self.name])
            .set(state.set.len() as i64);
        if let Some(t) = state.last_success {
            METRICS
                .jwks_last_success
                .with_label_values(&[&self.name])
                .set(unix_seconds(t));
        }
    }

    /// Installs keys parsed from `body` unless they are the ones already in use.
    /// Returns whether the keys changed.
    fn install(&self, body: &[u8]) -> Result<bool, String> {
        let d = digest(body);
        let current = self.keys.load();
        if current.digest == d && self.is_ready() {
            self.keys.store(Arc::new(KeyState {
                set: current.set.clone(),
                generation: current.generation,
                last_success: Some(SystemTime::now()),
                digest: d,
            }));
            self.publish_key_metrics();
            return Ok(false);
        }
        let set = match self.source {
            // A document from a URL never contributes secrets (see `KeySet::from_remote_jwks`).
            KeySource::Uri(_) => jwks::parse_remote_jwks(body)?,
            _ => jwks::parse_key_file(body)?,
        };
        if set.skipped_symmetric() > 0 {
            tracing::warn!(
                provider = %self.name,
                keys = set.skipped_symmetric(),
                "symmetric (oct) keys in a jwks_uri document are never used"
            );
        }
        if set.skipped() > 0 {
            tracing::info!(provider = %self.name, skipped = set.skipped(), "jwks entries skipped as unusable for verification");
        }
        self.keys.store(Arc::new(KeyState {
            set: Arc::new(set),
            generation: current.generation + 1,
            last_success: Some(SystemTime::now()),
            digest: d,
        }));
        self.ready.store(true, Ordering::Release);
        self.publish_key_metrics();
        Ok(true)
    }

    fn count_fetch(&self, ok: bool) {
        METRICS
            .jwks_fetch
            .with_label_values(&[&*self.name, if ok { "success" } else { "error" }])
            .inc();
    }

    /// One fetch of a `jwks_uri`; returns the `max-age` the server asked for.
    async fn fetch_once(&self, connector: &Connector) -> Result<(bool, Option<Duration>), String> {
        let KeySource::Uri(uri) = &self.source else {
            return Err("not a jwks_uri provider".into());
        };
        let result = match jwks::fetch(connector, uri, self.refresh.timeout).await {
            Ok(fetched) => self
                .install(&fetched.body)
                .map(|changed| (changed, fetched.max_age)),
            Err(e) => Err(e),
        };
        self.count_fetch(result.is_ok());
        if let Err(e) = &result {
            tracing::warn!(provider = %self.name, error = %e, "jwks fetch failed; keeping the last good keys");
            self.expire_stale_keys();
        }
        result
    }

    /// Drops keys older than `max_stale`: past that, refusing tokens is safer than trusting
    /// keys that the issuer may have revoked.
    fn expire_stale_keys(&self) {
        let state = self.keys.load();
        let stale = state
            .last_success
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > self.refresh.max_stale);
        if stale && !state.set.is_empty() {
            tracing::error!(provider = %self.name, "keys older than max_stale dropped");
            self.keys.store(Arc::new(KeyState {
                set: Arc::new(KeySet::new()),
                generation: state.generation + 1,
                last_success: state.last_success,
                digest: [0; 32],
            }));
            self.publish_key_metrics();
        }
    }

    /// Re-reads a `jwks_file`; returns whether the keys changed.
    fn reload_file(&self) -> Result<bool, String> {
        let KeySource::File(path) = &self.source else {
            return Ok(false);
        };
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        self.install(&bytes)
    }

    /// Keeps the keys fresh until the provider is dropped (a reload replaced it):
    /// `jwks_uri` is fetched (first until it succeeds, then every interval or `max-age`),
    /// `jwks_file` is re-read when it changes.
    pub fn spawn_refresh(self: &Arc<Self>, connector: Arc<Connector>) {
        let weak: Weak<Provider> = Arc::downgrade(self);
        match &self.source {
            KeySource::Uri(_) => {
                tokio::spawn(async move {
                    let mut failures = 0u32;
                    loop {
                        let Some(p) = weak.upgrade() else { return };
                        let wait = match p.fetch_once(&connector).await {
                            Ok((_, max_age)) => {
                                failures = 0;
                                max_age
                                    .map(|a| {
                                        a.clamp(p.refresh.min_interval, p.refresh.max_interval)
                                    })
                                    .unwrap_or(p.refresh.interval)
                            }
                            Err(_) => {
                                // Retry soon, backing off up to the normal interval.
                                failures = failures.saturating_add(1);
                                let backoff = Duration::from_millis(250)
                                    * 2u32.saturating_pow(failures.min(10));
                                backoff.min(p.refresh.interval)
                            }
                        };
                        drop(p);
                        tokio::time::sleep(wait).await;
                    }
                });
            }
            KeySource::File(path) => {
                let path = path.clone();
                let poll = self.refresh.file_poll;
                tokio::spawn(async move {
                    let stamp = |path: &str| {
                        std::fs::metadata(path)
                            .ok()
                            .map(|m| (m.modified().ok(), m.len()))
                    };
                    let mut last = stamp(&path);
                    loop {
                        tokio::time::sleep(poll).await;
                        let Some(p) = weak.upgrade() else { return };
                        let now = stamp(&path);
                        if now == last {
                            continue;
                        }
                        last = now;
                        match p.reload_file() {
                            Ok(changed) => {
                                p.count_fetch(true);
                                if changed {
                                    tracing::info!(provider = %p.name, "jwks_file reloaded");
                                }
                            }
                            Err(e) => {
                                p.count_fetch(false);
                                tracing::warn!(provider = %p.name, error = %e, "jwks_file reload failed; keeping the last good keys");
                            }
                        }
                    }
                });
            }
            _ => {}
        }
    }

    /// A token named a `kid` this provider does not know: refetch, at most once per cooldown
    /// and once however many requests ask at the same time. Returns whether the keys changed
    /// since `seen_generation` (so verifying again may succeed).
    async fn refetch_for_unknown_kid(&self, connector: &Connector, seen_generation: u64) -> bool {
        if !matches!(self.source, KeySource::Uri(_)) {
            return false;
        }
        let mut last = self.unknown_kid_refetch.lock().await;
        if self.keys.load().generation != seen_generation {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < self.refresh.unknown_kid_cooldown) {
            return false;
        }
        *last = Some(Instant::now());
        matches!(self.fetch_once(connector).await, Ok((true, _)))
    }
}

/// A cached verification: which provider and key generation verified the signature.
struct CacheEntry {
    provider: usize,
    generation: u64,
    token: Arc<VerifiedToken>,
    /// The identity headers of this token, computed once.
    headers: IdentityHeaders,
}

/// Headers that carry a verified identity upstream.
pub type IdentityHeaders = Arc<[(HeaderName, HeaderValue)]>;

/// Entries live until their token's `exp` (tokens without one: `NO_EXP_TTL`).
struct ExpireAtTokenExp;

const NO_EXP_TTL: Duration = Duration::from_secs(300);
/// Forged tokens remembered, and for how long.
const FORGED_CACHE_SIZE: u64 = 10_000;
const FORGED_CACHE_TTL: Duration = Duration::from_secs(60);
const FORGED: Rejection = Rejection {
    reason: Reason::Signature,
    detail: "signature does not verify",
};
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

/// The gateway's authentication state for one snapshot.
pub struct Authenticator {
    pub providers: Vec<Arc<Provider>>,
    /// Claim path → upstream header.
    forward: Vec<(ClaimPath, HeaderName)>,
    /// Every forwarded header name: removed from every incoming request.
    pub identity_headers: Vec<HeaderName>,
    cache: moka::sync::Cache<[u8; 32], Arc<CacheEntry>>,
    /// Tokens whose signature failed, with the provider and key generation that refused
    /// them: a replayed forgery costs a hash and a lookup instead of a signature check.
    /// Small and short-lived; forgeries that never repeat still cost a verification each.
    forged: moka::sync::Cache<[u8; 32], (usize, u64)>,
    pub realm: String,
    connector: Arc<Connector>,
    /// `auth.failed_auth_limit` and `auth.max_verifications_in_flight`.
    pub brakes: crate::preauth::Brakes,
}

/// Why `verify` gave no identity.
pub enum VerifyError {
    /// The token was checked and refused (401), by this provider when one was chosen.
    Rejected(Option<Arc<Provider>>, Rejection),
    /// The token was not in the cache and was not checked (429/503): see [`crate::preauth`].
    Refused(crate::preauth::PreAuthRefusal),
}

impl From<(Option<Arc<Provider>>, Rejection)> for VerifyError {
    fn from((p, r): (Option<Arc<Provider>>, Rejection)) -> Self {
        VerifyError::Rejected(p, r)
    }
}

/// A verified caller.
pub struct Identity {
    pub provider: Arc<Provider>,
    pub token: Arc<VerifiedToken>,
    pub headers: IdentityHeaders,
}

impl Authenticator {
    /// Builds the providers (reading key files and secrets: the I/O validation leaves).
    pub fn build(auth: &tollgate_config::Auth) -> Result<Authenticator, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut providers = Vec::new();
        for (i, p) in auth.providers.iter().enumerate() {
            match Provider::build(i, p) {
                Ok(p) => providers.push(Arc::new(p)),
                Err(message) => problems.push(Problem {
                    path: format!("auth.providers[{i}]"),
                    message,
                }),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let forward: Vec<(ClaimPath, HeaderName)> = auth
            .forward_claims
            .iter()
            .map(|c| (c.claim.clone(), c.header.clone()))
            .collect();
        Ok(Authenticator {
            identity_headers: forward.iter().map(|(_, h)| h.clone()).collect(),
            forward,
            providers,
            cache: moka::sync::Cache::builder()
                .max_capacity(auth.cache_size)
                .expire_after(ExpireAtTokenExp)
                .build(),
            forged: moka::sync::Cache::builder()
                .max_capacity(FORGED_CACHE_SIZE)
                .time_to_live(FORGED_CACHE_TTL)
                .build(),
            realm: auth.realm.clone(),
            connector: Arc::new(Connector::new(None)),
            brakes: crate::preauth::Brakes {
                failed_auth_limit: auth.failed_auth_limit,
                max_in_flight: auth.max_verifications_in_flight,
            },
        })
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| &*p.name == name)
    }

    pub fn spawn_refresh(&self) {
        for p in &self.providers {
            p.spawn_refresh(self.connector.clone());
        }
    }

    /// Initial keys of every provider are in place.
    pub fn ready(&self) -> bool {
        self.providers.iter().all(|p| p.is_ready())
    }

    /// Verifies `token` for one of `providers` (chosen by the token's `iss`) at `now`, for a
    /// caller at `client`. A token not in the verified-token cache passes the pre-auth
    /// brakes first ([`crate::preauth`]).
    pub async fn verify(
        &self,
        token: &str,
        providers: &[Arc<Provider>],
        now: SystemTime,
        client: Option<std::net::IpAddr>,
    ) -> Result<Identity, VerifyError> {
        let now_s = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let key = digest(token.as_bytes());
        // A hit names the provider that verified these exact bytes (chosen by their `iss`, so
        // the same choice as below); it counts only while that provider's keys are unchanged.
        let hit = self.cache.get(&key).and_then(|entry| {
            let provider = providers.iter().find(|p| p.index == entry.provider)?;
            (provider.keys().generation == entry.generation).then(|| (provider.clone(), entry))
        });
        let (provider, verified, headers) = match hit {
            Some((provider, entry)) => {
                METRICS.token_cache_hit.inc();
                (provider, entry.token.clone(), entry.headers.clone())
            }
            None => {
                let _permit = crate::preauth::PREAUTH
                    .admit(client, &self.brakes, crate::clock::now_ns())
                    .map_err(VerifyError::Refused)?;
                let seen_forged = self.forged.get(&key).and_then(|(index, generation)| {
                    let p = providers.iter().find(|p| p.index == index)?;
                    (p.keys().generation == generation).then(|| p.clone())
                });
                if let Some(provider) = seen_forged {
                    METRICS.token_cache_forged.inc();
                    return Err((Some(provider), FORGED).into());
                }
                METRICS.token_cache_miss.inc();
                let provider = choose_provider(token, providers)?;
                let keys = provider.keys();
                let mut generation = keys.generation;
                let mut result = tollgate_jwt::verify_signature(token, &keys.set);
                drop(keys);
                // Boxed: the fetch's future is several KiB, and every call of `verify`
                // (cache hits included) would otherwise carry and move it.
                if matches!(result, Err(r) if r.reason == Reason::UnknownKid)
                    && Box::pin(provider.refetch_for_unknown_kid(&self.connector, generation)).await
                {
                    let keys = provider.keys();
                    generation = keys.generation;
                    result = tollgate_jwt::verify_signature(token, &keys.set);
                }
                if matches!(result, Err(r) if r.reason == Reason::Signature) {
                    self.forged.insert(key, (provider.index, generation));
                }
                let token_v = Arc::new(result.map_err(|r| (Some(provider.clone()), r))?);
                let headers: IdentityHeaders = self.identity_headers(&token_v.claims).into();
                self.cache.insert(
                    key,
                    Arc::new(CacheEntry {
                        provider: provider.index,
                        generation,
                        token: token_v.clone(),
                        headers: headers.clone(),
                    }),
                );
                (provider, token_v, headers)
            }
        };
        if let Err(r) = provider.validation.check_claims(&verified, now_s) {
            return Err((Some(provider), r).into());
        }
        if provider.require_exp && verified.exp.is_none() {
            return Err((
                Some(provider),
                Rejection {
                    reason: Reason::Malformed,
                    detail: "token has no exp and the provider requires one",
                },
            )
                .into());
        }
        Ok(Identity {
            provider,
            token: verified,
            headers,
        })
    }

    /// The identity headers for a verified token: each configured claim that is present and
    /// can be written unambiguously (see [`claim_header_value`]).
    pub fn identity_headers(
        &self,
        claims: &serde_json::Map<String, Value>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(self.forward.len());
        for (path, header) in &self.forward {
            if let Some(v) = path.lookup(claims).and_then(claim_header_value) {
                out.push((header.clone(), v));
            }
        }
        out
    }
}

/// A claim as an identity header value. One rule per JSON type, never depending on content:
///
/// - a string, number or boolean is its text (`alice`, `42`, `true`);
/// - an array is an RFC 8941 List of sf-strings, every element quoted (`"reader", "a,b"`),
///   numbers and booleans as their text; elements that are objects, arrays or null are left
///   out. Joining with bare commas would let a role `a,admin` read as two roles upstream;
///   quoting every element, not only the ones that need it, keeps the format one thing to
///   parse;
/// - anything else (object, null), an array with no element left, or text that cannot be a
///   header value or an sf-string (control characters, non-ASCII) gives no header: upstreams
///   see the claim as absent rather than see a different value.
pub fn claim_header_value(value: &Value) -> Option<HeaderValue> {
    fn scalar_text(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    let text = match value {
        Value::Array(items) => {
            let mut list = String::new();
            for item in items.iter().filter_map(scalar_text) {
                if !list.is_empty() {
                    list.push_str(", ");
                }
                list.push('"');
                for c in item.chars() {
                    match c {
                        '"' | '\\' => {
                            list.push('\\');
                            list.push(c);
                        }
                        ' '..='~' => list.push(c),
                        _ => return None,
                    }
                }
                list.push('"');
            }
            if list.is_empty() {
                return None;
            }
            list
        }
        other => scalar_text(other)?,
    };
    HeaderValue::from_str(&text).ok()
}

/// The provider whose keys verify `token`: the one whose issuer is the token's `iss`.
///
/// The issuer is read unverified only to choose whose keys to verify with; the verifier
/// then checks `iss` against that provider's issuer. A token without a readable `iss`
/// (malformed, or none set) goes to the route's only provider when it has one, whose
/// verifier then gives the precise reason.
fn choose_provider(
    token: &str,
    providers: &[Arc<Provider>],
) -> Result<Arc<Provider>, (Option<Arc<Provider>>, Rejection)> {
    let iss = tollgate_jwt::peek_issuer(token);
    let by_issuer = providers
        .iter()
        .find(|p| iss.as_deref() == Some(p.issuer.as_str()));
    let chosen = by_issuer.or(match (iss.as_deref(), providers) {
        (None, [only]) => Some(only),
        _ => None,
    });
    chosen.cloned().ok_or((
        None,
        Rejection {
            reason: Reason::Issuer,
            detail: "no accepted provider has this token's issuer",
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> serde_json::Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    fn header(path: &str, claims: &serde_json::Map<String, Value>) -> Option<String> {
        let v = ClaimPath::parse(path)
            .unwrap()
            .lookup(claims)
            .and_then(claim_header_value)?;
        Some(v.to_str().unwrap().to_owned())
    }

    #[test]
    fn claims_by_dotted_path_and_by_literal_dotted_name() {
        let c = claims(
            r#"{"sub":"a","realm_access":{"roles":["x","y"]},"https://example.com/roles":["z"]}"#,
        );
        assert_eq!(
            header("realm_access.roles", &c).as_deref(),
            Some(r#""x", "y""#)
        );
        assert_eq!(
            header("https://example.com/roles", &c).as_deref(),
            Some(r#""z""#)
        );
        assert_eq!(header("sub", &c).as_deref(), Some("a"));
        assert_eq!(header("nope", &c), None);
    }

    #[test]
    fn array_claims_are_rfc8941_lists_of_strings() {
        let c = claims(
            r#"{"comma":["a,admin","b"],"quote":["say \"hi\"","back\\slash"],
                "mixed":[1,true,null,{"x":1},["y"],"s"],"empty":[],"objects":[{}],
                "utf8":["café"],"control":["a\u0001"],"scalar":"a,b","n":4.5,"obj":{}}"#,
        );
        // A comma inside an element stays inside one quoted string.
        assert_eq!(header("comma", &c).as_deref(), Some(r#""a,admin", "b""#));
        assert_eq!(
            header("quote", &c).as_deref(),
            Some(r#""say \"hi\"", "back\\slash""#)
        );
        assert_eq!(header("mixed", &c).as_deref(), Some(r#""1", "true", "s""#));
        // Scalars are their text; nothing that cannot be written exactly is forwarded.
        assert_eq!(header("scalar", &c).as_deref(), Some("a,b"));
        assert_eq!(header("n", &c).as_deref(), Some("4.5"));
        for absent in ["empty", "objects", "utf8", "control", "obj"] {
            assert_eq!(header(absent, &c), None, "{absent}");
        }
    }
}
