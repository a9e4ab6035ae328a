//! Rate limiting in `request_filter`: bucket keys built from the request, the GCRA check in
//! the in-process store or in Redis (one atomic script per check, on Redis time), and the
//! `RateLimit`/`RateLimit-Policy`/`Retry-After` headers.
//!
//! The stores outlive config reloads (they live in [`Stores`], not in the snapshot), so a
//! reload neither resets nor doubles anyone's allowance.

use crate::telemetry::metrics::METRICS;
use crate::util::store::{Conn, Store};
use prometheus::IntCounter;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tollgate_config::{Limit, LimitKey, LimitStore, OnStoreError};
use tollgate_policy::ClaimPath;

/// A token's claims.
pub type Claims = serde_json::Map<String, serde_json::Value>;
use tollgate_ratelimit::{Gcra, LocalStore, Verdict, REDIS_GCRA_SCRIPT};

/// Redis keys expire this long after the bucket is full again (margin for clock jitter).
const REDIS_TTL_MARGIN: Duration = Duration::from_secs(1);

/// The key a client address is counted under: itself, or its /64 for IPv6 (one host
/// usually holds a whole /64).
pub fn client_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// The Redis store of limits (and of the DPoP replay cache): its connection (one server,
/// a cluster or a Sentinel-watched master) and the GCRA script (sent once, then called by
/// its SHA).
pub struct RedisStore {
    store: Arc<Store>,
    script: redis::Script,
    timeout: Duration,
    on_error: OnStoreError,
    errors: IntCounter,
}

impl RedisStore {
    pub fn new(settings: &tollgate_config::Redis) -> Result<RedisStore, String> {
        Ok(RedisStore {
            store: Arc::new(Store::new(&settings.server)?),
            script: redis::Script::new(REDIS_GCRA_SCRIPT),
            timeout: settings.timeout,
            on_error: settings.on_store_error,
            errors: METRICS.ratelimit_store_errors.with_label_values(&["redis"]),
        })
    }

    /// Connects in the background until it succeeds (the connection then reconnects by
    /// itself); checks made before then count as store errors and follow `on_store_error`.
    pub fn connect_in_background(&self) {
        self.store.connect_in_background();
    }

    /// Waits until the background connection is up, at most `within`; whether it is.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        self.store.wait_connected(within).await
    }

    pub(crate) fn connection(&self) -> Option<Conn> {
        self.store.connection()
    }

    /// Where the store is, for the admin view.
    pub fn view(&self) -> serde_json::Value {
        self.store.view()
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn on_error(&self) -> OnStoreError {
        self.on_error
    }

    pub(crate) fn count_error(&self) {
        self.errors.inc();
    }

    async fn check(&self, key: &[u8], gcra: &Gcra, consume: bool) -> Result<Verdict, String> {
        let mut conn = self.connection().ok_or("not connected")?;
        let [interval_us, burst, margin] = gcra.redis_argv(REDIS_TTL_MARGIN);
        let mut invocation = self.script.key(key);
        invocation
            .arg(interval_us)
            .arg(burst)
            .arg(margin)
            .arg(if consume { "0" } else { "1" });
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

/// One part of a bucket key, ready for requests.
#[derive(Debug, Clone)]
pub(crate) enum KeyPart {
    ClientIp,
    Route,
    Header(http::HeaderName),
    Claim(ClaimPath),
}

/// A caller whose token was verified: the provider that verified it, and its claims.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub provider: &'a str,
    pub claims: &'a Claims,
}

/// A limit of a route, ready for requests.
pub struct LimitRuntime {
    pub name: Arc<str>,
    route: Arc<str>,
    keys: Vec<KeyPart>,
    /// IPv6 client addresses are keyed by their prefix of this length.
    ipv6_prefix: u8,
    /// The limit's own GCRA and its `RateLimit-Policy` value.
    gcra: (Gcra, Arc<str>),
    tier_claim: Option<ClaimPath>,
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
    /// A limit of `route`, from validated config (which made its GCRAs).
    pub fn build(route: &str, l: &Limit) -> LimitRuntime {
        let with_header = |gcra: Gcra| -> (Gcra, Arc<str>) {
            // The window is the time a drained bucket takes to fill again.
            let window = (gcra.emission_interval_ns() as u128 * gcra.burst() as u128)
                .div_ceil(1_000_000_000)
                .max(1);
            let header = format!("\"{}\";q={};w={window}", l.name, gcra.burst());
            (gcra, header.into())
        };
        let labels = |decision| {
            METRICS
                .ratelimit_decisions
                .with_label_values(&[route, &l.name, decision])
        };
        LimitRuntime {
            name: l.name.as_str().into(),
            route: route.into(),
            keys: l
                .keys
                .iter()
                .map(|k| match k {
                    LimitKey::ClientIp => KeyPart::ClientIp,
                    LimitKey::Route => KeyPart::Route,
                    LimitKey::Header(h) => KeyPart::Header(h.clone()),
                    LimitKey::Claim(path) => KeyPart::Claim(path.clone()),
                })
                .collect(),
            ipv6_prefix: l.ipv6_prefix,
            gcra: with_header(l.gcra),
            tier_claim: l.tiers.as_ref().map(|t| t.claim.clone()),
            tiers: l
                .tiers
                .iter()
                .flat_map(|t| &t.values)
                .map(|tier| (tier.value.clone(), with_header(tier.gcra)))
                .collect(),
            store: l.store,
            headers: l.headers,
            allowed: labels("allow"),
            denied: labels("deny"),
        }
    }

    /// The GCRA for this caller: its tier's, else the limit's own.
    fn gcra_for(&self, claims: Option<&Claims>) -> &(Gcra, Arc<str>) {
        let (Some(claim), Some(claims)) = (&self.tier_claim, claims) else {
            return &self.gcra;
        };
        let value = match claim.lookup(claims) {
            Some(serde_json::Value::String(s)) => s.as_str(),
            _ => return &self.gcra,
        };
        self.tiers
            .iter()
            .find(|(v, _)| v == value)
            .map(|(_, g)| g)
            .unwrap_or(&self.gcra)
    }

    /// Checks the request against this limit; unless `consume`, only says what a check
    /// would decide (a dry run: nothing is recorded or counted).
    pub async fn check(
        &self,
        stores: &Stores,
        req: &pingora_http::RequestHeader,
        client_ip: Option<IpAddr>,
        caller: Option<Caller<'_>>,
        consume: bool,
    ) -> Outcome {
        let local = |key: &[u8], gcra| {
            if consume {
                stores.local.check(key, gcra, crate::util::clock::now_ns())
            } else {
                stores.local.peek(key, gcra, crate::util::clock::now_ns())
            }
        };
        let (gcra, policy_header) = self.gcra_for(caller.map(|c| c.claims));
        let key = bucket_key(
            &self.route,
            &self.name,
            &self.keys,
            self.ipv6_prefix,
            req,
            client_ip,
            caller,
        );
        let verdict = match (self.store, &stores.redis) {
            (LimitStore::Redis, Some(redis)) => {
                // Redis keys are a digest: bounded length, and no user data stored in Redis.
                let digest = crate::util::digest::sha256(&[&key]);
                let mut rkey = b"tollgate:rl:".to_vec();
                rkey.extend_from_slice(&digest);
                match redis.check(&rkey, gcra, consume).await {
                    Ok(v) => v,
                    Err(e) => {
                        if consume {
                            redis.errors.inc();
                        }
                        tracing::debug!(limit = %self.name, error = %e, "redis rate-limit check failed");
                        match redis.on_error {
                            OnStoreError::Local => local(&key, gcra),
                            OnStoreError::Allow => synthetic(gcra, true),
                            OnStoreError::Deny => synthetic(gcra, false),
                        }
                    }
                }
            }
            _ => local(&key, gcra),
        };
        match (consume, verdict.allowed) {
            (false, _) => {}
            (true, true) => self.allowed.inc(),
            (true, false) => self.denied.inc(),
        }
        Outcome {
            verdict,
            policy_header: policy_header.clone(),
        }
    }
}

/// The bucket key of a request for one limit: route and limit name, then each key part.
///
/// Every part starts with its kind, so values of different kinds never meet in one bucket
/// (a claim equal to an address text is not that address):
/// - `ip:<address>`: IPv4 whole, IPv6 as its network (`2001:db8::/64`; an IPv4-mapped address
///   counts as IPv4), `ip:?` when the address is unknown;
/// - `route:` (one bucket for everyone on the route);
/// - `hdr:<name>:` then the value, length-prefixed;
/// - `claim:<provider>:<path>:` then the value, length-prefixed (strings as they are, numbers
///   and booleans as JSON text).
///
/// A request without the header or claim, or without a caller, gets the `ip:` part instead:
/// strangers never share one bucket. Parts are separated by a 0 byte; values that the caller
/// controls are length-prefixed, so no value can forge a separator.
pub(crate) fn bucket_key(
    route: &str,
    limit: &str,
    parts: &[KeyPart],
    ipv6_prefix: u8,
    req: &pingora_http::RequestHeader,
    client_ip: Option<IpAddr>,
    caller: Option<Caller<'_>>,
) -> Vec<u8> {
    use std::io::Write;
    fn value(key: &mut Vec<u8>, bytes: &[u8]) {
        key.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        key.extend_from_slice(bytes);
    }
    let mut key = Vec::with_capacity(64);
    key.extend_from_slice(route.as_bytes());
    key.push(0);
    key.extend_from_slice(limit.as_bytes());
    let ip = |key: &mut Vec<u8>| {
        key.extend_from_slice(b"ip:");
        // Writing into a Vec cannot fail.
        let _ = match client_ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => write!(key, "{v4}"),
            Some(IpAddr::V6(v6)) => {
                let bits = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                let network = std::net::Ipv6Addr::from(u128::from(v6) & mask);
                write!(key, "{network}/{bits}")
            }
            None => write!(key, "?"),
        };
    };
    for part in parts {
        key.push(0);
        match part {
            KeyPart::ClientIp => ip(&mut key),
            KeyPart::Route => key.extend_from_slice(b"route:"),
            KeyPart::Header(name) => match req.headers.get(name) {
                Some(v) => {
                    let _ = write!(key, "hdr:{}:", name.as_str());
                    value(&mut key, v.as_bytes());
                }
                None => ip(&mut key),
            },
            KeyPart::Claim(path) => {
                let found = caller.and_then(|c| Some((c.provider, path.lookup(c.claims)?)));
                let mut claim = |provider: &str, text: &[u8]| {
                    let _ = write!(key, "claim:{provider}:{}:", path.as_str());
                    value(&mut key, text);
                };
                match found {
                    Some((provider, serde_json::Value::String(s))) => claim(provider, s.as_bytes()),
                    Some((
                        provider,
                        v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)),
                    )) => claim(provider, v.to_string().as_bytes()),
                    _ => ip(&mut key),
                }
            }
        }
    }
    key
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(headers: &[(&str, &str)]) -> pingora_http::RequestHeader {
        let mut r = pingora_http::RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn token(claims: serde_json::Value) -> Claims {
        claims.as_object().expect("claims are an object").clone()
    }

    fn claim(path: &str) -> KeyPart {
        KeyPart::Claim(ClaimPath::parse(path).unwrap())
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    /// The key for one part, with the default /64.
    fn key(
        part: KeyPart,
        req: &pingora_http::RequestHeader,
        addr: Option<IpAddr>,
        caller: Option<Caller<'_>>,
    ) -> Vec<u8> {
        bucket_key("r", "l", &[part], 64, req, addr, caller)
    }

    #[test]
    fn a_missing_header_falls_back_to_the_client_address() {
        let part = || KeyPart::Header(http::HeaderName::from_static("x-api-key"));
        let none = req(&[]);
        let a = key(part(), &none, ip("192.0.2.1"), None);
        let b = key(part(), &none, ip("192.0.2.2"), None);
        assert_ne!(a, b, "no shared bucket for everyone without the header");
        assert_eq!(a, key(KeyPart::ClientIp, &none, ip("192.0.2.1"), None));
        // With the header, its value decides, whatever the address.
        let with = req(&[("x-api-key", "k1")]);
        assert_eq!(
            key(part(), &with, ip("192.0.2.1"), None),
            key(part(), &with, ip("192.0.2.2"), None)
        );
        assert_ne!(key(part(), &with, ip("192.0.2.1"), None), a);
        assert!(key(part(), &with, None, None).ends_with(b"hdr:x-api-key:\0\0\0\x02k1"));
    }

    #[test]
    fn kinds_are_namespaced_so_values_never_collide_with_addresses() {
        let r = req(&[("x-client", "192.0.2.1"), ("x-other", "192.0.2.1")]);
        let t = token(json!({"sub": "192.0.2.1", "ip": "ip:192.0.2.1"}));
        let caller = Some(Caller {
            provider: "main",
            claims: &t,
        });
        let addr = ip("192.0.2.1");
        let keys = [
            key(KeyPart::ClientIp, &r, addr, caller),
            key(KeyPart::Route, &r, addr, caller),
            key(
                KeyPart::Header(http::HeaderName::from_static("x-client")),
                &r,
                addr,
                caller,
            ),
            key(
                KeyPart::Header(http::HeaderName::from_static("x-other")),
                &r,
                addr,
                caller,
            ),
            key(claim("sub"), &r, addr, caller),
            key(claim("ip"), &r, addr, caller),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert!(keys[0].ends_with(b"\0ip:192.0.2.1"));
        assert!(keys[1].ends_with(b"\0route:"));
    }

    #[test]
    fn claim_keys_name_the_provider_and_fall_back_to_the_address() {
        let r = req(&[]);
        let t = token(json!({"sub": "alice", "https://example.com/tenant": "acme", "n": 7}));
        let by = |provider| {
            Some(Caller {
                provider,
                claims: &t,
            })
        };
        let addr = ip("192.0.2.1");
        assert_ne!(
            key(claim("sub"), &r, addr, by("a")),
            key(claim("sub"), &r, addr, by("b")),
            "the same sub from two issuers is two callers"
        );
        assert_eq!(
            key(claim("sub"), &r, addr, by("a")),
            key(claim("sub"), &r, ip("198.51.100.7"), by("a"))
        );
        assert!(key(claim("sub"), &r, addr, by("a")).ends_with(b"claim:a:sub:\0\0\0\x05alice"));
        // A literal dotted claim name is found, as RBAC and identity headers find it.
        assert!(key(claim("https://example.com/tenant"), &r, addr, by("a")).ends_with(b"\x04acme"));
        assert!(key(claim("n"), &r, addr, by("a")).ends_with(b"\x017"));
        // Absent claim, non-scalar claim or anonymous caller: the address.
        let fallback = key(KeyPart::ClientIp, &r, addr, None);
        assert_eq!(key(claim("tenant"), &r, addr, by("a")), fallback);
        assert_eq!(key(claim("sub"), &r, addr, None), fallback);
    }

    #[test]
    fn values_cannot_forge_the_separator() {
        let r = req(&[]);
        let parts = [claim("a"), claim("b")];
        let t1 = token(json!({"a": "x\u{0}", "b": "y"}));
        let t2 = token(json!({"a": "x", "b": "\u{0}y"}));
        let k = |t| {
            bucket_key(
                "r",
                "l",
                &parts,
                64,
                &r,
                None,
                Some(Caller {
                    provider: "p",
                    claims: t,
                }),
            )
        };
        assert_ne!(k(&t1), k(&t2));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_prefix() {
        let r = req(&[]);
        let k = |addr: &str, prefix| {
            bucket_key("r", "l", &[KeyPart::ClientIp], prefix, &r, ip(addr), None)
        };
        assert_eq!(k("2001:db8:1:2:aaaa::1", 64), k("2001:db8:1:2:bbbb::9", 64));
        assert_ne!(k("2001:db8:1:2::1", 64), k("2001:db8:1:3::1", 64));
        assert!(k("2001:db8:1:2:aaaa::1", 64).ends_with(b"ip:2001:db8:1:2::/64"));
        assert_eq!(k("2001:db8:1:2::1", 48), k("2001:db8:1:ffff::1", 48));
        assert_ne!(k("2001:db8::1", 128), k("2001:db8::2", 128));
        // An IPv4-mapped address is the IPv4 client it stands for.
        assert_eq!(k("::ffff:192.0.2.1", 64), k("192.0.2.1", 64));
        assert!(k("192.0.2.1", 64).ends_with(b"ip:192.0.2.1"));
        // A missing header falls back to the prefix too.
        let h = |addr: &str| {
            bucket_key(
                "r",
                "l",
                &[KeyPart::Header(http::HeaderName::from_static("x-k"))],
                64,
                &r,
                ip(addr),
                None,
            )
        };
        assert_eq!(h("2001:db8::1"), h("2001:db8::2"));
    }
}
