//! Key sets: each provider's keys, loaded from config or fetched from its `jwks_uri`,
//! swapped whole through `ArcSwap` (readers never lock), and kept fresh in the background:
//! `jwks_uri` refetched on its interval or `max-age` and, single-flight, on an unknown
//! `kid`; `jwks_file` re-read when it changes (through tokio's file API, off the workers).

use crate::identity::jwks;
use crate::telemetry::metrics::METRICS;
use crate::util::digest::sha256;
use crate::util::watch::Watched;
use arc_swap::ArcSwap;
use pingora_core::connectors::http::Connector;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tollgate_config::{Audiences, KeySource, Refresh, TokenSource};
use tollgate_jwt::{KeySet, Validation};

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
    pub(crate) index: usize,
    pub name: Arc<str>,
    pub issuer: String,
    pub(crate) validation: Validation,
    pub(crate) require_exp: bool,
    source: KeySource,
    refresh: Refresh,
    pub token_sources: Vec<TokenSource>,
    /// Tokens must be bound to the client certificate (RFC 8705 §3).
    pub require_certificate_binding: bool,
    /// DPoP (RFC 9449) for this provider's tokens.
    pub dpop: tollgate_config::DpopMode,
    /// `type: introspection`: tokens are checked by asking the provider.
    pub introspector: Option<Arc<crate::identity::introspect::Introspector>>,
    /// `type: api_key`: the credentials are API keys looked up in a file.
    pub api_keys: Option<Arc<crate::identity::apikeys::ApiKeys>>,
    /// `ca_file`: what the `jwks_uri` (and discovery) server's certificate must chain to.
    ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
    /// A discovered `jwks_uri` may be plain http off loopback.
    insecure_http: bool,
    keys: ArcSwap<KeyState>,
    /// Initial keys are in place (always true but for `jwks_uri` before its first fetch).
    ready: AtomicBool,
    /// `tollgate_auth_decisions_total{provider, result="allow", reason="ok"}`, resolved once.
    pub allowed: prometheus::IntCounter,
    /// When the last refetch for an unknown `kid` started. The async mutex makes that refetch
    /// single-flight: requests that wait on it then see the new generation and do not fetch.
    unknown_kid_refetch: tokio::sync::Mutex<Option<Instant>>,
    /// When a `jwks_uri` or discovery provider fetches its keys next (Unix seconds; 0: not
    /// scheduled yet), for the admin view.
    next_refresh: AtomicU64,
    /// Requests waiting on this provider's network now (see `preauth::admit_network`).
    pub(crate) network_waits: std::sync::atomic::AtomicUsize,
}

/// Generations of every provider's key sets, process-wide: unique and increasing, whichever
/// task installs a set and however installs race.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::AcqRel)
}

/// One info line per change of a provider's keys, naming the kids added and retired (an
/// operator otherwise sees a rotation only in metrics). Keys without a `kid` are `-`.
fn log_key_change(provider: &str, before: &KeySet, after: &KeySet, generation: u64) {
    use std::collections::BTreeSet;
    let kids = |s: &KeySet| -> BTreeSet<String> {
        s.kids().map(|k| k.unwrap_or("-").to_owned()).collect()
    };
    let (before, after) = (kids(before), kids(after));
    let added: Vec<&str> = after.difference(&before).map(String::as_str).collect();
    let removed: Vec<&str> = before.difference(&after).map(String::as_str).collect();
    tracing::info!(
        provider,
        generation,
        keys = after.len(),
        added = %added.join(" "),
        removed = %removed.join(" "),
        "provider keys changed"
    );
}

pub(crate) fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

impl Provider {
    /// Builds a provider; local key sources are read now (errors are config problems).
    pub fn build(index: usize, p: &tollgate_config::Provider) -> Result<Provider, String> {
        let (local, digest) = match &p.keys {
            KeySource::File(path) => {
                let (set, digest) = jwks::read_key_file(path)?;
                (Some(set), digest)
            }
            other => (jwks::load_local(other)?, [0; 32]),
        };
        let ca = p
            .ca_file
            .as_deref()
            .map(crate::tls::pem::load_ca)
            .transpose()?;
        let ready = local.is_some();
        let introspector = match &p.keys {
            KeySource::Introspection(c) => Some(Arc::new(
                crate::identity::introspect::Introspector::build(&p.name, c, ca.clone())?,
            )),
            _ => None,
        };
        let name: Arc<str> = p.name.as_str().into();
        let api_keys = match &p.keys {
            KeySource::ApiKeys(file) => Some(Arc::new(crate::identity::apikeys::ApiKeys::load(
                &name, &p.issuer, file,
            )?)),
            _ => None,
        };
        let provider = Provider {
            api_keys,
            // RFC 7662 §2.2: `iss` is optional in an introspection answer; the claims
            // stage then checks it only when present (see `auth`).
            introspector,
            index,
            name,
            issuer: p.issuer.clone(),
            validation: Validation {
                leeway_s: p.leeway.as_secs(),
                issuer: (!matches!(p.keys, KeySource::Introspection(_))).then(|| p.issuer.clone()),
                // The verifier skips the check for an empty list; validation never leaves
                // a `List` empty, so only an explicit `any` gets here with nothing to check.
                audiences: match &p.audiences {
                    Audiences::Any => Vec::new(),
                    Audiences::List(list) => list.clone(),
                },
                token_types: p.token_types.clone(),
            },
            require_exp: p.require_exp,
            require_certificate_binding: p.require_certificate_binding,
            dpop: p.dpop,
            ca,
            insecure_http: p.insecure_http,
            source: p.keys.clone(),
            refresh: p.refresh.clone(),
            token_sources: p.token_sources.clone(),
            keys: ArcSwap::from_pointee(KeyState {
                set: Arc::new(local.unwrap_or_default()),
                generation: next_generation(),
                last_success: ready.then(SystemTime::now),
                digest,
            }),
            ready: AtomicBool::new(ready),
            allowed: METRICS
                .auth_decisions
                .with_label_values(&[&p.name, "allow", "ok"]),
            unknown_kid_refetch: tokio::sync::Mutex::new(None),
            next_refresh: AtomicU64::new(0),
            network_waits: std::sync::atomic::AtomicUsize::new(0),
        };
        provider.publish_key_metrics();
        Ok(provider)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// What the admin view shows of this provider: where its keys come from (never a
    /// secret: an HMAC key is named by its file or variable), each key's `kid`, `alg` and
    /// `kty`, and how fresh they are.
    pub fn view(&self) -> serde_json::Value {
        use serde_json::json;
        let (kind, source) = match &self.source {
            KeySource::Inline(_) => ("jwt", json!({"inline": true})),
            KeySource::File(path) => (
                "jwt",
                json!({"jwks_file": path, "poll_s": self.refresh.file_poll.as_secs_f64()}),
            ),
            KeySource::Uri(url) => (
                "jwt",
                json!({"jwks_uri": url, "interval_s": self.refresh.interval.as_secs()}),
            ),
            KeySource::Discovery(url) => (
                "jwt",
                json!({"discovery": url, "interval_s": self.refresh.interval.as_secs()}),
            ),
            KeySource::Introspection(c) => ("introspection", json!({"endpoint": c.endpoint})),
            KeySource::ApiKeys(f) => ("api_key", json!({"file": f.path})),
            KeySource::HmacFile { path, alg } => {
                ("jwt", json!({"hmac_secret_file": path, "alg": alg}))
            }
            KeySource::HmacEnv { var, alg } => ("jwt", json!({"hmac_secret_env": var, "alg": alg})),
        };
        let state = self.keys.load();
        let keys: Vec<serde_json::Value> = state
            .set
            .describe()
            .map(|(kid, alg, kty)| json!({"kid": kid, "alg": alg.map(|a| a.as_str()), "kty": kty}))
            .collect();
        let age = state
            .last_success
            .and_then(|t| t.elapsed().ok())
            .map(|d| d.as_secs());
        json!({
            "name": &*self.name,
            "issuer": self.issuer,
            "type": kind,
            "source": source,
            "ready": self.is_ready(),
            "keys": keys,
            "generation": state.generation,
            "last_success_unix": state.last_success.map(unix_seconds),
            "age_s": age,
            "next_refresh_unix": match self.next_refresh.load(Ordering::Relaxed) {
                0 => None,
                t => Some(t),
            },
        })
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

    /// Installs keys parsed from `body` (limited to `algorithms` when given) unless they are
    /// the ones already in use. Returns whether the keys changed.
    ///
    /// Whoever calls it (the periodic refresh, an unknown-`kid` refetch, a file watch), the
    /// swap is one compare-and-swap (`ArcSwap::rcu`) and every new key set takes a fresh
    /// generation from [`next_generation`]: two sets never share a generation, so a verdict
    /// cached under one is never taken for a verdict under another.
    fn install(
        &self,
        body: &[u8],
        algorithms: Option<Vec<tollgate_jwt::Algorithm>>,
    ) -> Result<bool, String> {
        let d = match &algorithms {
            None => sha256(&[body]),
            Some(list) => sha256(&[body, format!("\0{list:?}").as_bytes()]),
        };
        if self.keys.load().digest == d && self.is_ready() {
            // The same document: only its freshness changes, under the same generation.
            self.keys.rcu(|current| KeyState {
                set: current.set.clone(),
                generation: current.generation,
                last_success: Some(SystemTime::now()),
                digest: current.digest,
            });
            self.publish_key_metrics();
            return Ok(false);
        }
        let mut set = match self.source {
            // A document from a URL never contributes secrets (see `KeySet::from_remote_jwks`).
            KeySource::Uri(_) | KeySource::Discovery(_) => jwks::parse_remote_jwks(body)?,
            _ => jwks::parse_key_file(body)?,
        };
        if let Some(list) = algorithms {
            set.limit_algorithms(list);
        }
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
        let set = Arc::new(set);
        let generation = next_generation();
        let previous = self.keys.rcu(|_| KeyState {
            set: set.clone(),
            generation,
            last_success: Some(SystemTime::now()),
            digest: d,
        });
        self.ready.store(true, Ordering::Release);
        self.publish_key_metrics();
        log_key_change(&self.name, &previous.set, &set, generation);
        Ok(true)
    }

    fn count_fetch(&self, ok: bool) {
        METRICS
            .jwks_fetch
            .with_label_values(&[&*self.name, if ok { "success" } else { "error" }])
            .inc();
    }

    /// One fetch of a `jwks_uri` (for `discovery`: of the document, then of the `jwks_uri`
    /// it names); returns whether the keys changed and the `max-age` the servers asked for.
    async fn fetch_once(&self, connector: &Connector) -> Result<(bool, Option<Duration>), String> {
        let result = match &self.source {
            KeySource::Uri(uri) => self.fetch_keys(connector, uri, None).await,
            KeySource::Discovery(url) => self.fetch_discovered(connector, url).await,
            _ => return Err("not a fetched key source".into()),
        };
        self.count_fetch(result.is_ok());
        if let Err(e) = &result {
            tracing::warn!(provider = %self.name, error = %e, "jwks fetch failed; keeping the last good keys");
            self.expire_stale_keys();
        }
        result
    }

    async fn fetch_keys(
        &self,
        connector: &Connector,
        uri: &str,
        algorithms: Option<Vec<tollgate_jwt::Algorithm>>,
    ) -> Result<(bool, Option<Duration>), String> {
        let fetched = jwks::fetch(connector, uri, self.refresh.timeout, self.ca.as_ref()).await?;
        let changed = self.install(&fetched.body, algorithms)?;
        Ok((changed, fetched.max_age))
    }

    /// The discovery document, checked, then the key set it names. The document is read
    /// again on every refresh, so a provider that moves its `jwks_uri` is followed.
    async fn fetch_discovered(
        &self,
        connector: &Connector,
        url: &str,
    ) -> Result<(bool, Option<Duration>), String> {
        let doc = jwks::fetch(connector, url, self.refresh.timeout, self.ca.as_ref())
            .await
            .map_err(|e| format!("discovery document {url}: {e}"))
            .and_then(|fetched| {
                let found = jwks::parse_discovery(&fetched.body, &self.issuer, self.insecure_http)?;
                Ok((found, fetched.max_age))
            });
        METRICS
            .oidc_discovery
            .with_label_values(&[&*self.name, if doc.is_ok() { "success" } else { "error" }])
            .inc();
        let (found, doc_max_age) = doc?;
        let (changed, keys_max_age) = self
            .fetch_keys(connector, &found.jwks_uri, found.algorithms)
            .await
            .map_err(|e| format!("jwks_uri {} (from discovery): {e}", found.jwks_uri))?;
        let max_age = match (doc_max_age, keys_max_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok((changed, max_age))
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
            let generation = next_generation();
            let previous = self.keys.rcu(|current| KeyState {
                set: Arc::new(KeySet::new()),
                generation,
                last_success: current.last_success,
                digest: [0; 32],
            });
            self.publish_key_metrics();
            log_key_change(&self.name, &previous.set, &KeySet::new(), generation);
        }
    }

    /// Re-reads a `jwks_file`; returns whether the keys changed.
    async fn reload_file(&self) -> Result<bool, String> {
        let KeySource::File(path) = &self.source else {
            return Ok(false);
        };
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| format!("cannot read {path}: {e}"))?;
        self.install(&bytes, None)
    }

    /// Keeps the keys fresh until the provider is dropped (a reload replaced it):
    /// `jwks_uri` is fetched (first until it succeeds, then every interval or `max-age`),
    /// `jwks_file` is re-read when it changes.
    pub fn spawn_refresh(self: &Arc<Self>, connector: Arc<Connector>) {
        let weak: Weak<Provider> = Arc::downgrade(self);
        match &self.source {
            KeySource::Uri(_) | KeySource::Discovery(_) => {
                tokio::spawn(async move {
                    let mut failures = 0u32;
                    loop {
                        let Some(p) = weak.upgrade() else { return };
                        // One fetch at a time with the unknown-`kid` refetch, so that the two
                        // cannot install out of order.
                        let fetched = {
                            let _one_at_a_time = p.unknown_kid_refetch.lock().await;
                            p.fetch_once(&connector).await
                        };
                        let wait = match fetched {
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
                        p.next_refresh.store(
                            unix_seconds(SystemTime::now() + wait).ceil() as u64,
                            Ordering::Relaxed,
                        );
                        drop(p);
                        tokio::time::sleep(wait).await;
                    }
                });
            }
            KeySource::File(path) => {
                let path = path.clone();
                let poll = self.refresh.file_poll;
                tokio::spawn(async move {
                    let files = [path];
                    let mut watched = Watched::now(&files).await;
                    // The file was read when the snapshot was compiled, before this first
                    // stamp: a change between the two would never be seen. Read it once more
                    // now (no change: nothing is installed).
                    if let Some(p) = weak.upgrade() {
                        if let Ok(true) = p.reload_file().await {
                            p.count_fetch(true);
                            tracing::info!(provider = %p.name, "jwks_file reloaded");
                        }
                    }
                    while watched
                        .changed(&files, poll, || weak.strong_count() > 0)
                        .await
                    {
                        let Some(p) = weak.upgrade() else { return };
                        match p.reload_file().await {
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
            KeySource::ApiKeys(_) => {
                if let Some(keys) = &self.api_keys {
                    keys.spawn_watch();
                }
            }
            _ => {}
        }
    }

    /// Whether an unknown `kid` makes this provider fetch its keys again (a `jwks_uri` or
    /// discovery); local keys are what they are.
    pub(crate) fn refetches_keys(&self) -> bool {
        matches!(self.source, KeySource::Uri(_) | KeySource::Discovery(_))
    }

    /// A token named a `kid` this provider does not know: refetch, at most once per cooldown
    /// and once however many requests ask at the same time. Returns whether the keys changed
    /// since `seen_generation` (so verifying again may succeed).
    pub(crate) async fn refetch_for_unknown_kid(
        &self,
        connector: &Connector,
        seen_generation: u64,
    ) -> bool {
        if !matches!(self.source, KeySource::Uri(_) | KeySource::Discovery(_)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = r#""kty":"EC","crv":"P-256","alg":"ES256","x":"mcViQ6qskFUJI0NOHlIXvx83C9CLvbQhG30mBQx1GD4","y":"__7xcJZLc2vXBUmBRPoTBCYrQJ__KQJHpQsGbu8gXjk""#;

    /// A key set of 40 keys named `kid-0`…: parsing it takes long enough for installs to
    /// overlap.
    fn document(kid: &str) -> String {
        let keys: Vec<String> = (0..40)
            .map(|i| format!(r#"{{"kid":"{kid}-{i}",{KEY}}}"#))
            .collect();
        format!(r#"{{"keys":[{}]}}"#, keys.join(","))
    }

    fn provider() -> Provider {
        let yaml = format!(
            "listen: {{ http: \"127.0.0.1:8080\" }}\n\
             auth: {{ providers: [{{ name: p, issuer: \"https://issuer.test\", audiences: any, jwks: {} }}] }}\n\
             upstreams: {{ u: {{ backends: [{{ addr: \"127.0.0.1:9\" }}] }} }}\n\
             routes: [{{ name: r, path: /, upstream: u }}]\n",
            document("start")
        );
        let config = tollgate_config::parse(&yaml).expect("valid config");
        Provider::build(0, &config.auth.providers[0]).expect("provider")
    }

    #[test]
    fn racing_installs_never_give_two_key_sets_one_generation() {
        // Issue 22 (8): the periodic refresh and an unknown-kid refetch installed with a load
        // then a store, so two different key sets could both become generation n+1, and a
        // verdict cached under one was served under the other (a removed key's verdicts
        // outliving it). Four writers install two documents (one retiring the other's kid)
        // while a reader checks that each generation it sees always holds the same kid.
        let p = provider();
        let (a, b) = (document("kid-a"), document("kid-b"));
        let stop = AtomicBool::new(false);
        let first = p.keys().generation;
        let changes = std::sync::atomic::AtomicU64::new(0);
        let seen = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut seen: std::collections::HashMap<u64, String> = Default::default();
                while !stop.load(Ordering::Acquire) {
                    let state = p.keys();
                    let kid = state.set.kids().next().flatten().unwrap_or("").to_owned();
                    let first = seen.entry(state.generation).or_insert_with(|| kid.clone());
                    assert_eq!(
                        *first, kid,
                        "generation {} held two key sets",
                        state.generation
                    );
                }
                seen.len()
            });
            let writers: Vec<_> = (0..4)
                .map(|w| {
                    let (p, a, b, changes) = (&p, &a, &b, &changes);
                    scope.spawn(move || {
                        for i in 0..2000 {
                            let doc = if (i + w) % 2 == 0 { a } else { b };
                            if p.install(doc.as_bytes(), None).expect("valid document") {
                                changes.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().expect("writer");
            }
            stop.store(true, Ordering::Release);
            reader.join().expect("reader")
        });
        assert!(seen > 1, "the reader saw the keys change");
        // Every change took a generation of its own (two racing installs that both changed
        // the keys used to share one).
        let changes = changes.load(Ordering::Relaxed);
        assert!(
            p.keys().generation - first >= changes,
            "{changes} changes, generations {first} to {}",
            p.keys().generation
        );
        // Generations only grow: a later install never reuses an earlier one.
        let before = p.keys().generation;
        p.install(a.as_bytes(), None).unwrap();
        p.install(b.as_bytes(), None).unwrap();
        assert!(p.keys().generation > before);
    }
}
