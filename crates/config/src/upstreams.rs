//! `upstreams`: backends, load balancing and health checks.

use crate::model::*;
use crate::problems::{duration, header_name, Problems};
use crate::raw::*;
use std::collections::HashMap;
use std::time::Duration;

/// A DNS name: letters, digits, dots, hyphens and underscores (SRV labels start with one).
fn dns_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// `host:port` with a non-empty host and a port in 1..=65535 (IPv6 in brackets), or
/// `srv:NAME`.
fn backend_addr_ok(addr: &str) -> bool {
    if let Some(name) = addr.strip_prefix("srv:") {
        return dns_name_ok(name);
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let port_ok = matches!(port.parse::<u16>(), Ok(p) if p > 0);
    let host_ok = if let Some(v6) = host.strip_prefix('[') {
        v6.strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        dns_name_ok(host)
    };
    port_ok && host_ok
}

pub(crate) fn upstream(name: &str, raw: &RawUpstream, problems: &mut Problems) -> Upstream {
    let base = format!("upstreams.{name}");
    let backends = backends(&base, raw, problems);
    let lb = load_balancing(&base, raw, problems);
    let hashing = matches!(lb, LoadBalancing::ConsistentHash(_));
    let slow_start = raw.slow_start.as_ref().map(|_| {
        duration(
            &raw.slow_start,
            &format!("{base}.slow_start"),
            Duration::from_secs(30),
            problems,
        )
    });
    if slow_start.is_some() && hashing {
        problems.add(
            format!("{base}.slow_start"),
            "applies to round_robin and least_request: consistent hashing keeps a key on \
             its backend, so it cannot send a returning backend less",
        );
    }
    let outlier_detection = raw
        .outlier_detection
        .as_ref()
        .map(|o| outlier_detection(&format!("{base}.outlier_detection"), o, problems));
    let circuit_breaker = circuit_breaker(&base, raw, problems);
    let retry_budget = retry_budget(&base, raw, problems);
    let health_check = raw
        .health_check
        .as_ref()
        .map(|hc| health_check(&format!("{base}.health_check"), hc, problems));
    let (protocol, h2_streams) = protocol(&base, raw, problems);
    let tls = raw
        .tls
        .as_ref()
        .map(|t| upstream_tls(&base, raw, t, problems));
    Upstream {
        name: name.to_owned(),
        backends,
        lb,
        health_check,
        protocol,
        h2_streams,
        tls,
        connect_timeout: duration(
            &raw.connect_timeout,
            &format!("{base}.connect_timeout"),
            Duration::from_secs(1),
            problems,
        ),
        read_timeout: duration(
            &raw.read_timeout,
            &format!("{base}.read_timeout"),
            Duration::from_secs(30),
            problems,
        ),
        write_timeout: duration(
            &raw.write_timeout,
            &format!("{base}.write_timeout"),
            Duration::from_secs(30),
            problems,
        ),
        idle_timeout: duration(
            &raw.idle_timeout,
            &format!("{base}.idle_timeout"),
            Duration::from_secs(60),
            problems,
        ),
        retries: raw.retries.unwrap_or(1),
        slow_start,
        outlier_detection,
        circuit_breaker,
        retry_budget,
        dns: raw.dns.as_ref().map(|d| dns(&base, d, problems)),
    }
}

/// The backends: addresses (`host:port` or `srv:NAME`), each once, weights in range.
fn backends(base: &str, raw: &RawUpstream, problems: &mut Problems) -> Vec<Backend> {
    if raw.backends.is_empty() {
        problems.add(
            format!("{base}.backends"),
            "at least one backend is required",
        );
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut backends = Vec::with_capacity(raw.backends.len());
    for (i, b) in raw.backends.iter().enumerate() {
        let path = format!("{base}.backends[{i}]");
        if !backend_addr_ok(&b.addr) {
            problems.add(
                format!("{path}.addr"),
                format!(
                    "invalid backend address {:?}, expected host:port or srv:NAME",
                    b.addr
                ),
            );
        } else if b.addr.starts_with("srv:") {
            if raw.dns.is_none() {
                problems.add(
                    format!("{path}.addr"),
                    format!(
                        "an SRV backend is looked up and re-resolved in the background: \
                         add {base}.dns (dns: {{}} asks the system's resolver)"
                    ),
                );
            }
            if b.weight.is_some() {
                problems.add(
                    format!("{path}.weight"),
                    "an SRV backend takes its weights from its SRV records",
                );
            }
        }
        if let Some(first) = seen.insert(&b.addr, i) {
            problems.add(
                format!("{path}.addr"),
                format!("duplicate of {base}.backends[{first}]"),
            );
        }
        let weight = b.weight.unwrap_or(1);
        if !(1..=MAX_BACKEND_WEIGHT).contains(&weight) {
            problems.add(
                format!("{path}.weight"),
                format!("must be between 1 and {MAX_BACKEND_WEIGHT}"),
            );
        }
        backends.push(Backend {
            addr: b.addr.clone(),
            weight,
        });
    }
    backends
}

/// `lb`, and `hash_on` for `consistent_hash`.
fn load_balancing(base: &str, raw: &RawUpstream, problems: &mut Problems) -> LoadBalancing {
    let hash_on = match raw.hash_on.as_deref() {
        None | Some("client_ip") => HashOn::ClientIp,
        Some(other) => {
            if let Some(h) = other.strip_prefix("header:").and_then(header_name) {
                HashOn::Header(h)
            } else if let Some(c) = other.strip_prefix("claim:").filter(|c| !c.is_empty()) {
                HashOn::Claim(c.to_owned())
            } else {
                problems.add(
                    format!("{base}.hash_on"),
                    format!("expected client_ip, header:NAME or claim:NAME, found {other:?}"),
                );
                HashOn::ClientIp
            }
        }
    };
    let lb = match raw.lb.as_deref() {
        None | Some("round_robin") => LoadBalancing::RoundRobin,
        Some("least_request") => LoadBalancing::LeastRequest,
        Some("peak_ewma") => LoadBalancing::PeakEwma,
        Some("consistent_hash") => LoadBalancing::ConsistentHash(hash_on),
        Some(other) => {
            problems.add(
                format!("{base}.lb"),
                format!(
                    "expected round_robin, least_request, peak_ewma or consistent_hash, found {other:?}"
                ),
            );
            LoadBalancing::RoundRobin
        }
    };
    let hashing = matches!(lb, LoadBalancing::ConsistentHash(_));
    let known_lb = matches!(
        raw.lb.as_deref(),
        None | Some("round_robin" | "least_request" | "peak_ewma")
    );
    if raw.hash_on.is_some() && !hashing && known_lb {
        problems.add(
            format!("{base}.hash_on"),
            "only applies with lb: consistent_hash",
        );
    }
    lb
}

/// `circuit_breaker`: each limit Envoy's default unless set.
fn circuit_breaker(base: &str, raw: &RawUpstream, problems: &mut Problems) -> CircuitBreaker {
    let path = format!("{base}.circuit_breaker");
    let cb = raw.circuit_breaker.as_ref();
    let mut limit = |v: Option<usize>, key: &str| {
        let v = v.unwrap_or(DEFAULT_CIRCUIT_LIMIT);
        if v == 0 {
            problems.add(format!("{path}.{key}"), "must be at least 1");
        }
        v.max(1)
    };
    CircuitBreaker {
        max_requests: limit(cb.and_then(|c| c.max_requests), "max_requests"),
        max_pending: limit(cb.and_then(|c| c.max_pending), "max_pending"),
        max_connections: limit(cb.and_then(|c| c.max_connections), "max_connections"),
        retry_after: duration(
            &cb.and_then(|c| c.retry_after.clone()),
            &format!("{path}.retry_after"),
            Duration::from_secs(1),
            problems,
        ),
    }
}

/// `retry_budget`: a share of requests, with a floor.
fn retry_budget(base: &str, raw: &RawUpstream, problems: &mut Problems) -> RetryBudget {
    let rb = raw.retry_budget.as_ref();
    let percent = rb.and_then(|r| r.percent).unwrap_or(20.0);
    if !(0.0..=100.0).contains(&percent) {
        problems.add(
            format!("{base}.retry_budget.percent"),
            "must be between 0 and 100",
        );
    }
    RetryBudget {
        percent: percent.clamp(0.0, 100.0),
        min_retries: rb.and_then(|r| r.min_retries).unwrap_or(3),
    }
}

/// `protocol`, and `h2_streams` for `h2`.
fn protocol(base: &str, raw: &RawUpstream, problems: &mut Problems) -> (UpstreamProtocol, usize) {
    let protocol = match raw.protocol.as_deref() {
        None | Some("http1") => UpstreamProtocol::Http1,
        Some("h2") => UpstreamProtocol::H2,
        Some(other) => {
            problems.add(
                format!("{base}.protocol"),
                format!("expected http1 or h2, found {other:?}"),
            );
            UpstreamProtocol::Http1
        }
    };
    let h2_streams = raw.h2_streams.unwrap_or(100);
    if h2_streams == 0 || (raw.h2_streams.is_some() && protocol != UpstreamProtocol::H2) {
        problems.add(
            format!("{base}.h2_streams"),
            "applies to protocol: h2, and must be at least 1",
        );
    }
    (protocol, h2_streams)
}

/// `tls` toward the backends: a name to verify their certificates against, and a client
/// certificate with its key.
fn upstream_tls(
    base: &str,
    raw: &RawUpstream,
    t: &RawUpstreamTls,
    problems: &mut Problems,
) -> UpstreamTls {
    let client_cert = match (&t.client_cert, &t.client_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            problems.add(
                format!("{base}.tls"),
                "client_cert and client_key go together",
            );
            None
        }
    };
    if t.sni.as_deref() == Some("") {
        problems.add(format!("{base}.tls.sni"), "must not be empty");
    }
    let by_ip = raw.backends.iter().any(|b| {
        let host = b.addr.rsplit_once(':').map_or(b.addr.as_str(), |(h, _)| h);
        host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok()
    });
    let by_srv = raw.backends.iter().any(|b| b.addr.starts_with("srv:"));
    if t.sni.is_none() && t.verify != Some(false) && (by_ip || by_srv) {
        let which = if by_ip {
            "backends given by IP address have"
        } else {
            "SRV backends have"
        };
        problems.add(
            format!("{base}.tls.sni"),
            format!(
                "{which} no name to check their certificate against: give the name \
                 their certificate carries (or verify: false)"
            ),
        );
    }
    UpstreamTls {
        sni: t.sni.clone(),
        ca_file: t.ca_file.clone(),
        verify: t.verify.unwrap_or(true),
        client_cert,
    }
}

/// `dns`: the resolver (or the system's) and the bounds on how long an answer is kept.
fn dns(base: &str, d: &RawDns, problems: &mut Problems) -> Dns {
    let path = format!("{base}.dns");
    let resolver = d.resolver.as_ref().and_then(|r| {
        let parsed = r.parse::<std::net::SocketAddr>().ok().or_else(|| {
            r.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| std::net::SocketAddr::new(ip, 53))
        });
        if parsed.is_none() {
            problems.add(
                format!("{path}.resolver"),
                format!("expected an IP address with an optional port, found {r:?}"),
            );
        }
        parsed
    });
    let min_ttl = duration(
        &d.min_ttl,
        &format!("{path}.min_ttl"),
        Duration::from_secs(1),
        problems,
    );
    let max_ttl = duration(
        &d.max_ttl,
        &format!("{path}.max_ttl"),
        Duration::from_secs(300).max(min_ttl),
        problems,
    );
    if max_ttl < min_ttl {
        problems.add(
            format!("{path}.max_ttl"),
            "must not be shorter than min_ttl",
        );
    }
    Dns {
        resolver,
        min_ttl,
        max_ttl,
    }
}

/// Envoy's default for each circuit-breaker limit.
const DEFAULT_CIRCUIT_LIMIT: usize = 1024;

fn outlier_detection(
    base: &str,
    raw: &RawOutlierDetection,
    problems: &mut Problems,
) -> OutlierDetection {
    let consecutive_failures = raw.consecutive_failures.unwrap_or(5);
    if consecutive_failures == 0 {
        problems.add(format!("{base}.consecutive_failures"), "must be at least 1");
    }
    let success_rate = raw.success_rate.as_ref().map(|s| {
        let threshold = s.threshold.unwrap_or(0.8);
        if !(threshold > 0.0 && threshold <= 1.0) {
            problems.add(
                format!("{base}.success_rate.threshold"),
                "must be a share of successes above 0 and at most 1",
            );
        }
        let min_requests = s.min_requests.unwrap_or(20);
        if min_requests == 0 {
            problems.add(
                format!("{base}.success_rate.min_requests"),
                "must be at least 1",
            );
        }
        SuccessRate {
            min_requests: min_requests.max(1),
            threshold,
        }
    });
    let max_ejected_percent = raw.max_ejected_percent.unwrap_or(50);
    if max_ejected_percent > 100 {
        problems.add(
            format!("{base}.max_ejected_percent"),
            "must be between 0 and 100",
        );
    }
    let base_ejection_time = duration(
        &raw.base_ejection_time,
        &format!("{base}.base_ejection_time"),
        Duration::from_secs(30),
        problems,
    );
    let max_ejection_time = duration(
        &raw.max_ejection_time,
        &format!("{base}.max_ejection_time"),
        Duration::from_secs(300).max(base_ejection_time),
        problems,
    );
    if max_ejection_time < base_ejection_time {
        problems.add(
            format!("{base}.max_ejection_time"),
            "must not be shorter than base_ejection_time",
        );
    }
    OutlierDetection {
        consecutive_failures: consecutive_failures.max(1),
        success_rate,
        interval: duration(
            &raw.interval,
            &format!("{base}.interval"),
            Duration::from_secs(10),
            problems,
        ),
        base_ejection_time,
        max_ejection_time,
        max_ejected_percent: max_ejected_percent.min(100),
    }
}

fn health_check(base: &str, raw: &RawHealthCheck, problems: &mut Problems) -> HealthCheck {
    let kind = match raw.kind.as_str() {
        "tcp" => {
            for (set, key) in [
                (raw.path.is_some(), "path"),
                (raw.host.is_some(), "host"),
                (raw.expected_status.is_some(), "expected_status"),
            ] {
                if set {
                    problems.add(format!("{base}.{key}"), "only applies with type: http");
                }
            }
            HealthCheckKind::Tcp
        }
        "http" => {
            let path = raw.path.clone().unwrap_or_else(|| "/".to_owned());
            // Parsed as the health checker will parse it.
            if !path.starts_with('/') || path.parse::<::http::uri::PathAndQuery>().is_err() {
                problems.add(
                    format!("{base}.path"),
                    "must be an absolute path (and query) without spaces or control characters",
                );
            }
            let host = raw.host.clone().unwrap_or_else(|| "localhost".to_owned());
            if tollgate_canonical::normalize_host(host.as_bytes()).is_err() {
                problems.add(
                    format!("{base}.host"),
                    "must be a host name or IP literal, with an optional port",
                );
            }
            let expected_status = raw.expected_status.unwrap_or(200);
            if !(100..=599).contains(&expected_status) {
                problems.add(
                    format!("{base}.expected_status"),
                    "must be an HTTP status between 100 and 599",
                );
            }
            HealthCheckKind::Http {
                path,
                host,
                expected_status,
            }
        }
        other => {
            problems.add(
                format!("{base}.type"),
                format!("expected http or tcp, found {other:?}"),
            );
            HealthCheckKind::Tcp
        }
    };
    let mut threshold = |v: Option<usize>, key: &str, default: usize| {
        let v = v.unwrap_or(default);
        if v == 0 {
            problems.add(format!("{base}.{key}"), "must be at least 1");
        }
        v.max(1)
    };
    let healthy_threshold = threshold(raw.healthy_threshold, "healthy_threshold", 2);
    let unhealthy_threshold = threshold(raw.unhealthy_threshold, "unhealthy_threshold", 3);
    HealthCheck {
        kind,
        interval: duration(
            &raw.interval,
            &format!("{base}.interval"),
            Duration::from_secs(5),
            problems,
        ),
        timeout: duration(
            &raw.timeout,
            &format!("{base}.timeout"),
            Duration::from_secs(1),
            problems,
        ),
        healthy_threshold,
        unhealthy_threshold,
    }
}
