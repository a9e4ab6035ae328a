//! Shared Signals (OpenID SSF 1.0, CAEP 1.0, RISC 1.0): Security Event Tokens (RFC 8417)
//! pushed by their transmitters (RFC 8935) to `auth.shared_signals.path` on the metrics
//! listener. A CAEP `session-revoked` or `credential-change`, or a RISC `account-disabled`,
//! revokes the subject's tokens issued at or before the event: at once in this process
//! (the next request with such a token gets 401 `revoked`, cached or not) and, when the
//! deny list lives in Redis, in the fleet's list too.
//!
//! A push must carry the receiver's bearer token; the event must be a JWT signed by a
//! configured transmitter's key (chosen by `iss`), with `typ` `secevent+jwt`, the
//! receiver's `aud` and a `jti` never seen before (a replay is acknowledged and does
//! nothing). Other event types are acknowledged and ignored, as RFC 8417 §2.2 asks.
//!
//! The revocations pushed here are held in [`PUSHED`], beside the configured deny list and
//! apart from it: a reload, or a re-read of the list's file, does not lift them. They live
//! until the process ends; with Redis they are in the fleet's list as well.

use crate::identity::keys::Provider;
use crate::telemetry::metrics::METRICS;
use crate::util::store::Store;
use arc_swap::ArcSwap;
use once_cell::sync::{Lazy, OnceCell};
use pingora_core::connectors::http::Connector;
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_config::{Problem, RevocationSource, SecretSource, SharedSignals};
use tollgate_jwt::{DenyEntry as Entry, DenyList, Reason};

const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";
const ACCOUNT_DISABLED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/account-disabled";

/// The largest event accepted.
const MAX_BODY: usize = 64 * 1024;

/// The longest subject taken (a longer one is ignored): the list is held in memory.
const MAX_SUBJECT: usize = 1024;

/// Subjects held at most; past it, events are answered 503 and logged rather than dropped
/// silently.
const MAX_PUSHED: usize = 1_000_000;

/// Subjects revoked by pushed events, process-wide.
pub struct Pushed {
    list: ArcSwap<DenyList>,
    any: AtomicBool,
    write: Mutex<()>,
}

pub static PUSHED: Lazy<Pushed> = Lazy::new(|| Pushed {
    list: ArcSwap::from_pointee(DenyList::default()),
    any: AtomicBool::new(false),
    write: Mutex::new(()),
});

impl Pushed {
    /// Whether verified claims are revoked by a pushed event: one atomic load when none was
    /// pushed.
    pub fn revoked(&self, claims: &Map<String, Value>) -> bool {
        self.any.load(Ordering::Acquire) && self.list.load().revoked(claims).is_some()
    }

    /// Adds `entries`; `false` when the list is full.
    /// Subjects held.
    pub fn subjects(&self) -> usize {
        self.list.load().len().1
    }

    fn add(&self, entries: &[Entry]) -> bool {
        let _one_writer = self.write.lock().unwrap_or_else(|e| e.into_inner());
        if self.list.load().len().1 + entries.len() > MAX_PUSHED {
            return false;
        }
        let mut list = DenyList::clone(&self.list.load());
        for e in entries {
            // Built by `entry` below, which never makes an invalid one.
            let _ = list.add_line(&e.to_line());
        }
        METRICS.pushed_revocations.set(list.len().1 as i64);
        self.list.store(Arc::new(list));
        self.any.store(true, Ordering::Release);
        true
    }
}

/// Event `jti`s seen (by SHA-256 of issuer and jti), process-wide.
static SEEN: OnceCell<moka::sync::Cache<[u8; 32], ()>> = OnceCell::new();

/// The receiver of one snapshot.
pub struct Receiver {
    pub path: String,
    bearer: Vec<u8>,
    transmitters: Vec<Arc<Provider>>,
    /// For each transmitter: the token issuers whose subjects it may revoke.
    subjects_of: Vec<Vec<String>>,
    connector: Arc<Connector>,
    /// The deny list's Redis set, when there is one: pushed revocations go to the fleet.
    /// The store, the set's key and its version counter's key.
    fleet: Option<(Arc<Store>, String, String)>,
}

/// What the receiver answers (RFC 8935 §2.2–2.3): 202, or an error with its `err` code.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    fn accepted() -> Reply {
        Reply {
            status: 202,
            body: Vec::new(),
        }
    }

    fn error(status: u16, err: &str, description: &str) -> Reply {
        let body = serde_json::json!({"err": err, "description": description});
        Reply {
            status,
            body: serde_json::to_vec(&body).expect("JSON of strings"),
        }
    }
}

impl Receiver {
    /// The receiver for `config`: the bearer token read, each transmitter's local keys.
    pub fn build(
        config: &SharedSignals,
        revocation: Option<&tollgate_config::Revocation>,
    ) -> Result<Receiver, Vec<Problem>> {
        let mut problems = Vec::new();
        let SecretSource::Env(var) = &config.bearer else {
            unreachable!("validation takes the bearer token from an environment variable");
        };
        let bearer = match std::env::var(var) {
            Ok(v) if v.len() >= 32 => v.into_bytes(),
            Ok(_) => {
                problems.push(Problem {
                    path: "auth.shared_signals.bearer_env".into(),
                    message: format!("{var} must hold at least 32 bytes"),
                });
                Vec::new()
            }
            Err(_) => {
                problems.push(Problem {
                    path: "auth.shared_signals.bearer_env".into(),
                    message: format!("environment variable {var} is not set"),
                });
                Vec::new()
            }
        };
        let mut transmitters = Vec::new();
        for (i, t) in config.transmitters.iter().enumerate() {
            match Provider::build(usize::MAX - i, t) {
                Ok(p) => transmitters.push(Arc::new(p)),
                Err(message) => problems.push(Problem {
                    path: format!("auth.shared_signals.transmitters[{i}]"),
                    message,
                }),
            }
        }
        let fleet = match revocation.map(|r| &r.source) {
            Some(RevocationSource::Redis { server, key }) => match Store::new(server) {
                Ok(s) => Some((
                    Arc::new(s),
                    key.clone(),
                    crate::identity::revocation::version_key(server, key),
                )),
                Err(message) => {
                    problems.push(Problem {
                        path: "auth.revocation.redis".into(),
                        message,
                    });
                    None
                }
            },
            _ => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        SEEN.get_or_init(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.jti_cache_size)
                .time_to_live(Duration::from_secs(7 * 24 * 3600))
                .build()
        });
        Ok(Receiver {
            path: config.path.clone(),
            bearer,
            transmitters,
            subjects_of: config.subjects_of.clone(),
            connector: Arc::new(Connector::new(None)),
            fleet,
        })
    }

    /// Keeps the transmitters' keys fresh (as providers' are).
    pub fn spawn_refresh(&self) {
        for t in &self.transmitters {
            t.spawn_refresh(self.connector.clone());
        }
    }

    /// Whether the push carries the receiver's bearer token.
    pub fn authentic(&self, req: &pingora_http::RequestHeader) -> bool {
        crate::identity::credentials::carries_bearer(req, &self.bearer)
    }

    /// One push: `req` its header, `body` the event.
    pub async fn receive(&self, req: &pingora_http::RequestHeader, body: &[u8]) -> Reply {
        let count = |event: &str, result: &str| {
            METRICS
                .security_events
                .with_label_values(&[event, result])
                .inc();
        };
        if !self.authentic(req) {
            return unauthenticated();
        }
        let content_type = req.headers.get(http::header::CONTENT_TYPE);
        let typed = content_type.is_some_and(|ct| {
            let ct = String::from_utf8_lossy(ct.as_bytes());
            let base = ct.split(';').next().unwrap_or("").trim();
            base.eq_ignore_ascii_case("application/secevent+jwt")
        });
        if !typed {
            count("none", "invalid");
            return Reply::error(
                400,
                "invalid_request",
                "the body must be application/secevent+jwt",
            );
        }
        let now = crate::util::clock::unix_seconds();
        let (set, transmitter) = match self.verify(body, now).await {
            Ok(verified) => verified,
            Err((err, description)) => {
                count("none", "invalid");
                return Reply::error(400, err, description);
            }
        };
        let Some(Value::String(jti)) = set.get("jti") else {
            count("none", "invalid");
            return Reply::error(400, "invalid_request", "the event has no jti");
        };
        let Some(Value::Object(events)) = set.get("events") else {
            count("none", "invalid");
            return Reply::error(400, "invalid_request", "the event has no events claim");
        };
        let iss = set.get("iss").and_then(Value::as_str).unwrap_or("");
        let seen_key = crate::util::digest::sha256(&[iss.as_bytes(), b"\0", jti.as_bytes()]);
        let seen = SEEN.get().expect("set when the receiver was built");
        if seen.contains_key(&seen_key) {
            count(event_label(events), "duplicate");
            return Reply::accepted();
        }
        let mut entries = Vec::new();
        for (event_type, payload) in events {
            let label = event_label_of(event_type);
            if label == "other" {
                count(label, "ignored");
                continue;
            }
            match self::entries(&set, payload, now, &self.subjects_of[transmitter]) {
                Some(mine) => {
                    count(label, "revoked");
                    entries.extend(mine);
                }
                // A subject the deny list cannot name (an email address, a phone number), or
                // one of an issuer this transmitter does not speak for.
                None => count(label, "ignored"),
            }
        }
        if !entries.is_empty() {
            if !PUSHED.add(&entries) {
                tracing::error!(
                    held = MAX_PUSHED,
                    "security event not applied: the pushed revocations are full"
                );
                count(event_label(events), "unavailable");
                return Reply::error(
                    503,
                    "temporarily_unavailable",
                    "the receiver holds too many revocations; retry later",
                );
            }
            tracing::info!(
                transmitter = iss,
                subjects = entries.len(),
                "security event: subject tokens revoked"
            );
            if let Err(e) = self.to_fleet(&entries).await {
                // Revoked here already; the transmitter retries, and the fleet gets it then.
                tracing::warn!(error = %e, "security event not written to the fleet's deny list");
                count(event_label(events), "unavailable");
                return Reply::error(
                    503,
                    "temporarily_unavailable",
                    "the fleet's deny list could not be written; retry",
                );
            }
        }
        seen.insert(seen_key, ());
        Reply::accepted()
    }

    /// The event's claims and its transmitter's index, once its signature, issuer,
    /// audience and type hold.
    async fn verify(
        &self,
        body: &[u8],
        now: u64,
    ) -> Result<(Map<String, Value>, usize), (&'static str, &'static str)> {
        if body.len() > MAX_BODY {
            return Err(("invalid_request", "the event is larger than 64 KiB"));
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| ("invalid_request", "the event is not text"))?
            .trim();
        let parsed = tollgate_jwt::parse_token(text)
            .map_err(|_| ("invalid_request", "the event is not a signed JWT"))?;
        let index = self
            .transmitters
            .iter()
            .position(|t| Some(t.issuer.as_str()) == parsed.issuer())
            .ok_or((
                "invalid_issuer",
                "the event's issuer is not a configured transmitter",
            ))?;
        let transmitter = &self.transmitters[index];
        let keys = transmitter.keys();
        let generation = keys.generation;
        let mut result = parsed.verify_signature(&keys.set);
        drop(keys);
        let unknown_kid = matches!(result, Err(r) if r.reason == Reason::UnknownKid);
        if unknown_kid
            && transmitter.refetches_keys()
            && Box::pin(transmitter.refetch_for_unknown_kid(&self.connector, generation)).await
        {
            result = parsed.verify_signature(&transmitter.keys().set);
        }
        result.map_err(|_| ("invalid_key", "the event's signature does not verify"))?;
        let verified = parsed.into_verified();
        transmitter
            .validation
            .check_claims(&verified, now)
            .map_err(|r| match r.reason {
                Reason::Audience => ("invalid_audience", "the event is not for this receiver"),
                Reason::Issuer => (
                    "invalid_issuer",
                    "the event's issuer is not this transmitter",
                ),
                Reason::Type => ("invalid_request", "the event's typ is not secevent+jwt"),
                _ => ("invalid_request", "the event's times do not hold"),
            })?;
        Ok((Map::clone(&verified.claims), index))
    }

    /// The entries, in the fleet's deny list (a Redis set and its version counter). The
    /// set is written first, then the counter: a poller that reads between the two sees the
    /// entries at the next bump. Two commands, not a transaction; in a cluster both keys are
    /// in one slot ([`crate::identity::revocation::version_key`]), so a failover keeps them
    /// in order.
    async fn to_fleet(&self, entries: &[Entry]) -> Result<(), String> {
        let Some((store, key, version_key)) = &self.fleet else {
            return Ok(());
        };
        let write = async {
            store.connect_in_background();
            let mut c = match store.connection() {
                Some(c) => c,
                None if store.wait_connected(Duration::from_secs(2)).await => {
                    store.connection().ok_or("not connected")?
                }
                None => return Err("cannot connect to redis".to_owned()),
            };
            let mut add = redis::cmd("SADD");
            add.arg(key);
            for e in entries {
                add.arg(e.to_line());
            }
            add.query_async::<()>(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            redis::cmd("INCR")
                .arg(version_key)
                .query_async::<()>(&mut c)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(3), write).await {
            Ok(result) => result,
            Err(_) => Err("redis did not answer within 3 s".into()),
        }
    }
}

fn event_label_of(event_type: &str) -> &'static str {
    match event_type {
        SESSION_REVOKED => "session_revoked",
        CREDENTIAL_CHANGE => "credential_change",
        ACCOUNT_DISABLED => "account_disabled",
        _ => "other",
    }
}

/// The label of a SET's first event (for counting refusals of the whole SET).
fn event_label(events: &Map<String, Value>) -> &'static str {
    events.keys().next().map_or("none", |t| event_label_of(t))
}

/// The push's answer without the bearer token (counted).
pub fn unauthenticated() -> Reply {
    METRICS
        .security_events
        .with_label_values(&["none", "unauthenticated"])
        .inc();
    Reply::error(
        401,
        "authentication_failed",
        "the push must carry the receiver's bearer token",
    )
}

/// The deny-list entries for an event: its subject (the SET's `sub_id`, SSF 1.0, else the
/// event's `subject`, CAEP's earlier form) under each issuer of `allowed` it names (an
/// `iss_sub` subject: its issuer, if allowed; an `opaque` one: every allowed issuer),
/// revoked before the event's time (its `event_timestamp`, else the SET's `iat`; never
/// later than now). `None` when there is nothing this transmitter may revoke.
fn entries(
    set: &Map<String, Value>,
    payload: &Value,
    now: u64,
    allowed: &[String],
) -> Option<Vec<Entry>> {
    let id = set.get("sub_id").or_else(|| payload.get("subject"))?;
    let (iss, sub) = subject(id)?;
    if sub.len() > MAX_SUBJECT {
        return None;
    }
    let issuers: Vec<&String> = match &iss {
        Some(i) => vec![allowed.iter().find(|a| *a == i)?],
        None => allowed.iter().collect(),
    };
    let at = payload
        .get("event_timestamp")
        .or_else(|| set.get("iat"))
        .and_then(Value::as_f64)
        .map_or(now, |t| t.max(0.0) as u64);
    let entries = issuers
        .into_iter()
        .map(|i| Entry {
            jti: None,
            sub: Some(sub.clone()),
            revoked_before: Some(at.min(now)),
            iss: Some(i.clone()),
        })
        .collect();
    Some(entries)
}

/// A subject identifier (RFC 9493) as the `sub` (and issuer) of the tokens it names:
/// `iss_sub`, `opaque` (every issuer's), or the `user` of a `complex` one.
fn subject(id: &Value) -> Option<(Option<String>, String)> {
    let text = |k: &str| id.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    match text("format")? {
        "iss_sub" => Some((Some(text("iss")?.to_owned()), text("sub")?.to_owned())),
        "opaque" => Some((None, text("id")?.to_owned())),
        "complex" => subject(id.get("user")?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn subjects_are_read_from_sub_id_or_the_event_within_the_transmitters_issuers() {
        let allowed = ["https://idp".to_owned(), "https://idp2".to_owned()];
        let one = |set: &Map<String, Value>, payload: Value| {
            entries(set, &payload, 1_000, &allowed[..1]).map(|mut e| {
                assert_eq!(e.len(), 1);
                e.remove(0)
            })
        };
        let set = map(
            json!({"iat": 100, "sub_id": {"format": "iss_sub", "iss": "https://idp", "sub": "alice"}}),
        );
        let e = one(&set, json!({"event_timestamp": 90})).unwrap();
        assert_eq!(
            (e.sub.as_deref(), e.iss.as_deref(), e.revoked_before),
            (Some("alice"), Some("https://idp"), Some(90))
        );
        // Another issuer's subject: not this transmitter's to revoke.
        let other = map(
            json!({"iat": 100, "sub_id": {"format": "iss_sub", "iss": "https://elsewhere", "sub": "alice"}}),
        );
        assert!(entries(&other, &json!({}), 1_000, &allowed).is_none());
        // An opaque subject: under each issuer the transmitter speaks for.
        let set = map(json!({"iat": 100}));
        let opaque = json!({"subject": {"format": "opaque", "id": "bob"}});
        let all = entries(&set, &opaque, 1_000, &allowed).unwrap();
        let issuers: Vec<_> = all.iter().map(|e| e.iss.as_deref().unwrap()).collect();
        assert_eq!(issuers, ["https://idp", "https://idp2"]);
        assert_eq!(all[0].revoked_before, Some(100));
        let complex =
            json!({"subject": {"format": "complex", "user": {"format": "opaque", "id": "carol"}}});
        assert_eq!(one(&set, complex).unwrap().sub.as_deref(), Some("carol"));
        let email = json!({"subject": {"format": "email", "email": "a@example.com"}});
        assert!(one(&set, email).is_none());
        let long = json!({"subject": {"format": "opaque", "id": "x".repeat(MAX_SUBJECT + 1)}});
        assert!(one(&set, long).is_none());
        // An event stamped in the future revokes no token issued after now.
        let future = json!({"subject": {"format": "opaque", "id": "d"}, "event_timestamp": 5_000});
        assert_eq!(one(&set, future).unwrap().revoked_before, Some(1_000));
    }
}
