//! Rate limiting in `request_filter`: bucket keys built from the request, the GCRA check in
//! the in-process store or in Redis (one atomic script per check, on Redis time), and the
//! `RateLimit`/`RateLimit-Policy`/`Retry-After` headers.
//!
//! The stores outlive config reloads (they live in [`Stores`], not in the snapshot), so a
//! reload neither resets nor doubles anyone's allowance.

use crate::metrics::METRICS;
use arc_swap::ArcSwapOption;
use once_cell::sync::Lazy;
use prometheus::IntCounter;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_config::{Limit, LimitKey, LimitStore, OnStoreError};
use tollgate_jwt::VerifiedToken;
use tollgate_ratelimit::{Gcra, LocalStore, Verdict, REDIS_GCRA_SCRIPT};

/// The local store's clock: nanoseconds since the process started (monotonic).
static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

fn now_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}

/// Redis keys expire this long after the bucket is full again (margin for clock jitter).
const REDIS_TTL_MARGIN: Duration = Duration::from_secs(1);

/// The Redis store: a multiplexed connection that reconnects by itself, and the GCRA
/// script (sent once, then called by its SHA).
pub struct RedisStore {
    client: redis::Client,
    conn: ArcSwapOption<redis::aio::ConnectionManager>,
    script: redis::Script,
    timeout: Duration,
    on_error: OnStoreError,
    errors: IntCounter,
}

impl RedisStore {
    pub fn new(settings: &tollgate_config::Redis) -> Result<RedisStore, String> {
        Ok(RedisStore {
            client: redis::Client::open(settings.url.as_str()).map_err(|e| e.to_string())?,
            conn: ArcSwapOption::empty(),
            script: redis::Script::new(REDIS_GCRA_SCRIPT),
            timeout: settings.timeout,
            on_error: settings.on_store_error,
            errors: METRICS.ratelimit_store_errors.with_label_values(&["redis"]),
        })
    }

    /// Connects in the background until it succeeds (the connection then reconnects by
    /// itself); checks made before then count as store errors and follow `on_store_error`.
    pub fn connect_in_background(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let client = self.client.clone();
        tokio::spawn(async move {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(1)));
            let mut wait = Duration::from_millis(100);
            loop {
                if weak.strong_count() == 0 {
                    return;
                }
                match redis::aio::ConnectionManager::new_with_config(client.clone(), config.clone())
                    .await
                {
                    Ok(conn) => {
                        if let Some(s) = weak.upgrade() {
                            s.conn.store(Some(Arc::new(conn)));
                            tracing::info!("connected to redis");
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot connect to redis yet");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }

    async fn check(&self, key: &[u8], gcra: &Gcra) -> Result<Verdict, String> {
        let conn = self.conn.load_full().ok_or("not connected")?;
        let mut conn = (*conn).clone();
        let [interval_us, burst, margin] = gcra.redis_argv(REDIS_TTL_MARGIN);
        let mut invocation = self.script.key(key);
        invocation.arg(interval_us).arg(burst).arg(margin);
        let reply: Vec<i64> =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| format!("no answer within {:?}", self.timeout))?
                .map_err(|e| e.to_string())?;
        let reply: [i64; 4] = reply.try_into().map_err(|_| "unexpected script reply")?;
        Ok(gcra.verdict_from_redis(reply))
    }
}

/// Where limits keep their state, for the life of the process.
pub struct Stores {
    pub local: LocalStore,
    pub redis: Option<Arc<RedisStore>>,
    /// The settings they were made from: a reload may not change them.
    pub settings: tollgate_config::RateLimiting,
}

impl Stores {
    pub fn new(settings: &tollgate_config::RateLimiting) -> Result<Stores, String> {
        Ok(Stores {
            settings: settings.clone(),
            local: LocalStore::new(settings.max_local_keys),
            redis: settings
                .redis
                .as_ref()
                .map(|r| RedisStore::new(r).map(Arc::new))
                .transpose()?,
        })
    }
}

/// A limit of a route, ready for requests.
pub struct LimitRuntime {
    pub name: Arc<str>,
    route: Arc<str>,
    keys: Vec<LimitKey>,
    /// The limit's own GCRA and its `RateLimit-Policy` value.
    gcra: (Gcra, Arc<str>),
    tier_claim: Vec<String>,
    tiers: Vec<(String, (Gcra, Arc<str>))>,
    store: LimitStore,
    /// Send `RateLimit` headers on admitted responses too.
    pub headers: bool,
    allowed: IntCounter,
    denied: IntCounter,
}

/// What the request needs to know about one limit's verdict.
pub struct Outcome {
    pub verdict: Verdict,
    /// `"name";q=burst;w=window`: the policy the verdict is about.
    pub policy_header: Arc<str>,
}

impl Outcome {
    /// The `RateLimit` header value (draft-ietf-httpapi-ratelimit-headers).
    pub fn ratelimit_header(&self, name: &str) -> String {
        format!(
            "\"{name}\";r={};t={}",
            self.verdict.remaining,
            self.verdict.reset_after_secs()
        )
    }
}

impl LimitRuntime {
    pub fn build(route: &str, l: &Limit) -> Result<LimitRuntime, String> {
        let with_header = |rate, burst| -> Result<(Gcra, Arc<str>), String> {
            let gcra = Gcra::new(rate, burst).map_err(|e| e.to_string())?;
            // The window is the time a drained bucket takes to fill again.
            let window = (gcra.emission_interval_ns() as u128 * gcra.burst() as u128)
                .div_ceil(1_000_000_000)
                .max(1);
            let header = format!("\"{}\";q={};w={window}", l.name, gcra.burst());
            Ok((gcra, header.into()))
        };
        let gcra = with_header(l.rate, l.burst)?;
        let mut tiers = Vec::new();
        let mut tier_claim = Vec::new();
        if let Some(t) = &l.tiers {
            tier_claim = t.claim.clone();
            for tier in &t.values {
                tiers.push((tier.value.clone(), with_header(tier.rate, tier.burst)?));
            }
        }
        let labels = |decision| {
            METRICS
                .ratelimit_decisions
                .with_label_values(&[route, &l.name, decision])
        };
        Ok(LimitRuntime {
            name: l.name.as_str().into(),
            route: route.into(),
            keys: l.keys.clone(),
            gcra,
            tier_claim,
            tiers,
            store: l.store,
            headers: l.headers,
            allowed: labels("allow"),
            denied: labels("deny"),
        })
    }

    /// The GCRA for this caller: its tier's, else the limit's own.
    fn gcra_for(&self, token: Option<&VerifiedToken>) -> &(Gcra, Arc<str>) {
        if self.tiers.is_empty() {
            return &self.gcra;
        }
        let value = token.and_then(|t| crate::auth::claim_at(&t.claims, &self.tier_claim));
        let value = match value {
            Some(serde_json::Value::String(s)) => s.as_str(),
            _ => return &self.gcra,
        };
        self.tiers
            .iter()
            .find(|(v, _)| v == value)
            .map(|(_, g)| g)
            .unwrap_or(&self.gcra)
    }

    /// The bucket key: route, limit and each key part, separated by a byte that cannot
    /// appear in header values or claim text. Absent parts (a claim the caller lacks, an
    /// anonymous caller) fall back to the client IP so strangers do not share one bucket.
    fn bucket_key(
        &self,
        req: &pingora_http::RequestHeader,
        client_ip: Option<IpAddr>,
        token: Option<&VerifiedToken>,
    ) -> Vec<u8> {
        let mut key = Vec::with_capacity(64);
        key.extend_from_slice(self.route.as_bytes());
        key.push(0);
        key.extend_from_slice(self.name.as_bytes());
        let ip = |key: &mut Vec<u8>| match client_ip {
            Some(ip) => key.extend_from_slice(ip.to_string().as_bytes()),
            None => key.extend_from_slice(b"?"),
        };
        for part in &self.keys {
            key.push(0);
            match part {
                LimitKey::ClientIp => ip(&mut key),
                LimitKey::Route => {}
                LimitKey::Header(h) => {
                    if let Some(v) = req.headers.get(h.as_str()) {
                        key.extend_from_slice(v.as_bytes());
                    }
                }
                LimitKey::Claim(path) => {
                    match token.and_then(|t| crate::auth::claim_at(&t.claims, path)) {
                        Some(serde_json::Value::String(s)) => key.extend_from_slice(s.as_bytes()),
                        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                            key.extend_from_slice(v.to_string().as_bytes())
                        }
                        _ => {
                            key.extend_from_slice(b"ip:");
                            ip(&mut key)
                        }
                    }
                }
            }
        }
        key
    }

    /// Checks the request against this limit.
    pub async fn check(
        &self,
        stores: &Stores,
        req: &pingora_http::RequestHeader,
        client_ip: Option<IpAddr>,
        token: Option<&VerifiedToken>,
    ) -> Outcome {
        let (gcra, policy_header) = self.gcra_for(token);
        let key = self.bucket_key(req, client_ip, token);
        let verdict = match (self.store, &stores.redis) {
            (LimitStore::Redis, Some(redis)) => {
                // Redis keys are a digest: bounded length, and no user data stored in Redis.
                let digest = ring::digest::digest(&ring::digest::SHA256, &key);
                let mut rkey = b"tollgate:rl:".to_vec();
                rkey.extend_from_slice(digest.as_ref());
                match redis.check(&rkey, gcra).await {
                    Ok(v) => v,
                    Err(e) => {
                        redis.errors.inc();
                        tracing::debug!(limit = %self.name, error = %e, "redis rate-limit check failed");
                        match redis.on_error {
                            OnStoreError::Local => stores.local.check(&key, gcra, now_ns()),
                            OnStoreError::Allow => synthetic(gcra, true),
                            OnStoreError::Deny => synthetic(gcra, false),
                        }
                    }
                }
            }
            _ => stores.local.check(&key, gcra, now_ns()),
        };
        if verdict.allowed {
            self.allowed.inc();
        } else {
            self.denied.inc();
        }
        Outcome {
            verdict,
            policy_header: policy_header.clone(),
        }
    }
}

/// A verdict made without a store (Redis unreachable and `on_store_error: allow | deny`).
fn synthetic(gcra: &Gcra, allowed: bool) -> Verdict {
    Verdict {
        allowed,
        limit: gcra.burst(),
        remaining: if allowed {
            gcra.burst().saturating_sub(1)
        } else {
            0
        },
        reset_after: Duration::ZERO,
        retry_after: if allowed {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        },
    }
}
