//! Validation of rate limits: the `rate_limiting` section (stores) and each route's
//! `rate_limits` list.

use crate::model::{
    Limit, LimitKey, LimitStore, OnStoreError, RateLimiting, Redis, RedisServer, Tier, Tiers,
};
use crate::problems::{duration, header_name, Problems};
use crate::raw::{RawLimit, RawLimitKey, RawRateLimiting};
use std::time::Duration;
use tollgate_ratelimit::{Gcra, Rate};

pub(crate) fn rate_limiting(raw: &RawRateLimiting, problems: &mut Problems) -> RateLimiting {
    let max_local_keys = raw.max_local_keys.unwrap_or(1_000_000);
    if max_local_keys == 0 {
        problems.add("rate_limiting.max_local_keys", "must be at least 1");
    }
    let redis = raw.redis.as_ref().map(|r| {
        // Refused anyway when it is `None`; the placeholder keeps the other checks going.
        let server = crate::stores::server(
            "rate_limiting.redis",
            &r.url,
            &r.cluster,
            &r.sentinel,
            problems,
        )
        .unwrap_or(RedisServer::Node(String::new()));
        let on_store_error = match r.on_store_error.as_deref() {
            None | Some("local") => OnStoreError::Local,
            Some("allow") => OnStoreError::Allow,
            Some("deny") => OnStoreError::Deny,
            Some(other) => {
                problems.add(
                    "rate_limiting.redis.on_store_error",
                    format!("expected allow, deny or local, found {other:?}"),
                );
                OnStoreError::Local
            }
        };
        Redis {
            server,
            timeout: duration(
                &r.timeout,
                "rate_limiting.redis.timeout",
                Duration::from_millis(5),
                problems,
            ),
            on_store_error,
        }
    });
    RateLimiting {
        max_local_keys: max_local_keys.max(1),
        redis,
        ipv6_prefix: ipv6_prefix(
            raw.ipv6_prefix,
            DEFAULT_IPV6_PREFIX,
            "rate_limiting.ipv6_prefix",
            problems,
        ),
    }
}

/// A /64 is what one end site is given: a client that owns one can use 2^64 addresses.
const DEFAULT_IPV6_PREFIX: u8 = 64;

fn ipv6_prefix(value: Option<u8>, default: u8, path: &str, problems: &mut Problems) -> u8 {
    match value {
        None => default,
        Some(p @ 1..=128) => p,
        Some(p) => {
            problems.add(path, format!("must be between 1 and 128, found {p}"));
            default
        }
    }
}

fn rate(text: &str, path: &str, problems: &mut Problems) -> Option<Rate> {
    match Rate::parse(text) {
        Ok(r) => Some(r),
        Err(e) => {
            problems.add(path, format!("{e}; write e.g. \"100/s\" or \"6000/min\""));
            None
        }
    }
}

fn burst(value: Option<u32>, rate: Option<&Rate>, path: &str, problems: &mut Problems) -> u32 {
    match value {
        Some(0) => {
            problems.add(path, "must be at least 1");
            1
        }
        Some(b) => b,
        // One period's worth: `100/s` admits 100 at once after an idle second.
        None => rate.map(|r| r.count()).unwrap_or(1).max(1),
    }
}

/// The GCRA of a rate and a burst, or the problem with the pair (a burst whose window
/// is too long to count in); `path` is the burst's.
fn gcra(rate: Rate, burst: u32, path: &str, problems: &mut Problems) -> Option<Gcra> {
    Gcra::new(rate, burst)
        .map_err(|e| problems.add(path, e.to_string()))
        .ok()
}

fn key_part(text: &str, path: &str, problems: &mut Problems) -> Option<LimitKey> {
    match text.split_once(':') {
        None if text == "client_ip" => Some(LimitKey::ClientIp),
        None if text == "route" => Some(LimitKey::Route),
        Some(("claim", c)) if tollgate_policy::ClaimPath::parse(c).is_some() => {
            tollgate_policy::ClaimPath::parse(c).map(LimitKey::Claim)
        }
        Some(("header", h)) if header_name(h).is_some() => header_name(h)
            .and_then(|h| http::HeaderName::try_from(h).ok())
            .map(LimitKey::Header),
        _ => {
            problems.add(
                path,
                format!("expected client_ip, route, claim:PATH or header:NAME, found {text:?}"),
            );
            None
        }
    }
}

/// A route's limits. `authenticated` picks the default key: `claim:sub` when the route
/// verifies tokens, else `client_ip`.
pub(crate) fn route_limits(
    base: &str,
    raw: &[RawLimit],
    authenticated: bool,
    settings: &RateLimiting,
    problems: &mut Problems,
) -> Vec<Limit> {
    let mut out = Vec::with_capacity(raw.len());
    let mut names: Vec<&str> = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let path = format!("{base}.rate_limits[{i}]");
        if l.name.is_empty()
            || !l
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            problems.add(
                format!("{path}.name"),
                "must be non-empty letters, digits, '-', '_' or '.'",
            );
        }
        if names.contains(&l.name.as_str()) {
            problems.add(
                format!("{path}.name"),
                format!("{:?} is used twice on this route", l.name),
            );
        }
        names.push(&l.name);
        let keys: Vec<LimitKey> = match &l.key {
            None if authenticated => vec![LimitKey::Claim(
                tollgate_policy::ClaimPath::parse("sub").expect("a valid claim path"),
            )],
            None => vec![LimitKey::ClientIp],
            Some(RawLimitKey::One(k)) => key_part(k, &format!("{path}.key"), problems)
                .into_iter()
                .collect(),
            Some(RawLimitKey::Many(ks)) => {
                if ks.is_empty() {
                    problems.add(format!("{path}.key"), "must name at least one part");
                }
                ks.iter()
                    .enumerate()
                    .filter_map(|(j, k)| key_part(k, &format!("{path}.key[{j}]"), problems))
                    .collect()
            }
        };
        let base_rate = rate(&l.rate, &format!("{path}.rate"), problems);
        let burst = burst(
            l.burst,
            base_rate.as_ref(),
            &format!("{path}.burst"),
            problems,
        );
        let tiers = l.tiers.as_ref().and_then(|t| {
            let claim = tollgate_policy::ClaimPath::parse(&t.claim);
            if claim.is_none() {
                problems.add(format!("{path}.tiers.claim"), "must be a dotted claim path");
            }
            if t.values.is_empty() {
                problems.add(
                    format!("{path}.tiers.values"),
                    "must list at least one tier",
                );
            }
            Some(Tiers {
                claim: claim?,
                values: t
                    .values
                    .iter()
                    .filter_map(|(value, tier)| {
                        let tpath = format!("{path}.tiers.values.{value}");
                        let r = rate(&tier.rate, &format!("{tpath}.rate"), problems)?;
                        let b =
                            self::burst(tier.burst, Some(&r), &format!("{tpath}.burst"), problems);
                        Some(Tier {
                            value: value.clone(),
                            gcra: gcra(r, b, &format!("{tpath}.burst"), problems)?,
                        })
                    })
                    .collect(),
            })
        });
        let store = match l.store.as_deref() {
            None | Some("local") => LimitStore::Local,
            Some("redis") => {
                if settings.redis.is_none() {
                    problems.add(format!("{path}.store"), "redis needs rate_limiting.redis");
                }
                LimitStore::Redis
            }
            Some(other) => {
                problems.add(
                    format!("{path}.store"),
                    format!("expected local or redis, found {other:?}"),
                );
                LimitStore::Local
            }
        };
        let limit_gcra = base_rate.and_then(|r| gcra(r, burst, &format!("{path}.burst"), problems));
        if let Some(gcra) = limit_gcra {
            out.push(Limit {
                name: l.name.clone(),
                keys,
                gcra,
                tiers,
                store,
                headers: l.headers.unwrap_or(false),
                ipv6_prefix: ipv6_prefix(
                    l.ipv6_prefix,
                    settings.ipv6_prefix,
                    &format!("{path}.ipv6_prefix"),
                    problems,
                ),
            });
        }
    }
    out
}
