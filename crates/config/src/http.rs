//! Validation of `server.http`: how the gateway reads a client's request (path
//! normalisation, header hygiene, trusted proxies) and the limits that make hostile input
//! cheap to refuse. Every default here is the safe one; docs/SECURITY.md ("Security defaults") lists them.

use crate::problems::{duration, header_name, Problems};
use crate::raw::{ByteSize, RawCors, RawHttp, RawIpRules};
use ipnet::IpNet;
use std::time::Duration;
use tollgate_canonical::{EscapedSlashes, PathOptions, PathParams};

/// Parses `65536`, `64KiB`, `1MiB`, `2GiB` (also `KB`/`MB`/`GB` as powers of 1024, as nginx does).
pub(crate) fn parse_byte_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" | "k" => 1 << 10,
        "M" | "MB" | "MiB" | "m" => 1 << 20,
        "G" | "GB" | "GiB" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

pub(crate) fn byte_size(
    value: &Option<ByteSize>,
    path: &str,
    default: u64,
    problems: &mut Problems,
) -> u64 {
    let Some(ByteSize(text)) = value else {
        return default;
    };
    match parse_byte_size(text) {
        Some(0) => {
            problems.add(path, "must be greater than zero");
            default
        }
        Some(n) => n,
        None => {
            problems.add(
                path,
                format!("expected a size such as 65536 or \"64KiB\", found {text:?}"),
            );
            default
        }
    }
}

/// `ip_rules`: which client addresses are let in. Empty: everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRules {
    /// When not empty, only these are let in.
    pub allow: Vec<IpNet>,
    /// Never let in, whatever `allow` says.
    pub deny: Vec<IpNet>,
}

impl IpRules {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `client` is let in. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is its
    /// IPv4 address, so that a rule for `10.0.0.0/8` holds on a dual-stack listener. An
    /// unknown client (no peer address) is refused wherever there are rules.
    pub fn admits(&self, client: Option<std::net::IpAddr>) -> bool {
        let Some(ip) = client.map(|ip| ip.to_canonical()) else {
            return self.allow.is_empty() && self.deny.is_empty();
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// What to do with client header names that contain `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underscores {
    /// Remove them before anything reads the request (nginx's default): a server that maps
    /// `X_Auth_Roles` and `X-Auth-Roles` to the same variable cannot be fooled.
    Drop,
    /// Keep them; identity and forwarding headers are still removed in every spelling.
    Allow,
}

/// `server.http`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// Client addresses let in on every route, before routing (`server.http.ip_rules`).
    pub ip_rules: IpRules,
    /// CORS for routes without their own (`server.http.cors`).
    pub cors: Option<std::sync::Arc<Cors>>,
    /// Path normalisation; the route is chosen on, and the upstream receives, its result.
    pub path: PathOptions,
    /// Default `Drop`.
    pub underscores_in_headers: Underscores,
    /// Proxies whose `X-Forwarded-For` is believed. Default empty: tollgate is the edge,
    /// and the client's forwarding headers are replaced by its own.
    pub trusted_proxies: Vec<IpNet>,
    /// Headers that some frameworks or upstreams read as a new URL, method, host, scheme or
    /// client address; removed from every request. Lower case. Default: the list in
    /// `DEFAULT_OVERRIDE_HEADERS` (docs/SECURITY.md, "Headers a client may not set").
    pub override_headers: Vec<String>,
    /// Request line (method, target, version) in bytes; longer → 414. Default 8 KiB.
    pub max_request_line: usize,
    /// The whole header block in bytes; larger → 431. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Header fields per request; more → 431. Default 100.
    pub max_headers: usize,
    /// One header field (name and value) in bytes; larger → 431. Default 16 KiB.
    pub max_header_value: usize,
    /// From a connection's first byte of a request to the end of its header block; past it
    /// the connection is closed (slowloris). Default 10 s.
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this. Default 60 s.
    pub keepalive_timeout: Duration,
    /// Requests served on one connection before it is closed. Default 1000.
    pub max_requests_per_connection: u32,
    /// Open client connections on the listener; more are closed at once. Default 10,000.
    pub max_connections: usize,
    /// Open connections from one client address. Default 256.
    pub max_connections_per_client: usize,
    /// Request body size in bytes for routes that do not set `max_body`; larger → 413.
    /// Default 64 MiB.
    pub max_body: u64,
    /// h2c (HTTP/2 with prior knowledge) on the plain listener. Default false; fixed at start.
    pub h2c: bool,
    /// Read buffer of each client connection, in bytes; `0` reads straight from the socket.
    /// Pingora's default is 64 KiB, held for the connection's whole life, idle or not.
    /// Default 2 KiB: a typical request header with a token arrives in one read, and an idle
    /// keep-alive connection costs about 7 KiB in all (measured, docs/SECURITY.md "Limits").
    /// Set when the listener starts (a reload cannot change it).
    pub read_buffer: usize,
    /// Longest wait for the next bytes of a request body; past it 408 and the connection
    /// closes (a slow POST would otherwise hold an upstream connection). Default 10 s.
    pub body_timeout: Duration,
    /// Longest wait for a client to accept the next bytes of a response. Default 30 s.
    pub send_timeout: Duration,
}

pub(crate) const DEFAULT_OVERRIDE_HEADERS: &[&str] = &[
    // A new URL or method.
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-envoy-original-path",
    "x-forwarded-prefix",
    "x-forwarded-uri",
    "x-forwarded-path",
    // A new host, scheme or client address.
    "x-original-host",
    "x-host",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
];

impl Default for HttpSettings {
    fn default() -> Self {
        http(&RawHttp::default(), &mut Problems::default())
    }
}

/// One of two words for `server.http.KEY`; the first is the default (and the safe one).
fn choice<T: Copy>(
    value: &Option<String>,
    key: &str,
    options: [(&str, T); 2],
    problems: &mut Problems,
) -> T {
    let Some(word) = value.as_deref() else {
        return options[0].1;
    };
    match options.iter().find(|(w, _)| *w == word) {
        Some((_, v)) => *v,
        None => {
            problems.add(
                format!("server.http.{key}"),
                format!(
                    "expected {} or {}, found {word:?}",
                    options[0].0, options[1].0
                ),
            );
            options[0].1
        }
    }
}

/// Addresses or CIDRs (`10.0.0.0/8`, `2001:db8::1`), host bits cleared. With `canonical`
/// (`ip_rules`, `trusted_proxies`) an IPv4-mapped address is its IPv4 address, as peers and
/// forwarded hops are compared, and a mapped range is refused (it could never match):
/// write the IPv4 range.
pub(crate) fn networks(
    list: Option<&[String]>,
    path: &str,
    canonical: bool,
    problems: &mut Problems,
) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, text) in list.into_iter().flatten().enumerate() {
        let parsed = text.parse::<IpNet>().or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| IpNet::from(if canonical { ip.to_canonical() } else { ip }))
                .map_err(|_| ())
        });
        let mapped_range =
            |net: &IpNet| matches!(net, IpNet::V6(v6) if v6.network().to_ipv4_mapped().is_some());
        match parsed {
            Ok(net) if canonical && mapped_range(&net) => problems.add(
                format!("{path}[{i}]"),
                format!(
                    "{text:?} is an IPv4-mapped range: clients are compared by their IPv4 \
                     address, so write the IPv4 range"
                ),
            ),
            Ok(net) => out.push(net.trunc()),
            Err(()) => problems.add(
                format!("{path}[{i}]"),
                format!("expected an address or CIDR such as 10.0.0.0/8, found {text:?}"),
            ),
        }
    }
    out
}

/// A browser origin `cors.allow_origins` lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `*`: every origin.
    Any,
    /// `https://app.example.com`, lower case.
    Exact(String),
    /// `https://*.example.com[:port]`: `prefix` `https://`, `suffix` `.example.com[:port]`.
    Subdomains { prefix: String, suffix: String },
}

impl OriginPattern {
    /// Whether `origin` (an `Origin` header's value, as sent) is let in. `null` never is.
    pub fn matches(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        match self {
            OriginPattern::Any => origin != "null",
            OriginPattern::Exact(o) => *o == origin,
            OriginPattern::Subdomains { prefix, suffix } => origin
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .is_some_and(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                        && !label.starts_with('.')
                        && !label.ends_with('.')
                }),
        }
    }
}

/// `cors`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Cors {
    pub origins: Vec<OriginPattern>,
    /// Upper case; empty: the route's methods.
    pub methods: Vec<String>,
    /// Lower case.
    pub headers: Vec<String>,
    pub expose: Vec<String>,
    pub credentials: bool,
    pub max_age: Duration,
}

/// `scheme://host[:port]`, as browsers serialise an origin: no path, no user info, no
/// default port (`https://x:443` is never what a browser sends). The host is a name
/// (letters, digits, `-`, `.`, a leading `*.`), or an IPv6 literal in brackets.
fn origin_ok(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return false;
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(p) => (None, Some(p)),
                None => return false,
            },
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(rest), None),
        }
    };
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let host_ok = host.is_none_or(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'*')
    });
    let port_ok = port.is_none_or(|p| {
        p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|p| p > 0 && p != default_port)
    });
    host_ok && port_ok
}

pub(crate) fn cors(raw: &RawCors, path: &str, problems: &mut Problems) -> Cors {
    let credentials = raw.allow_credentials.unwrap_or(false);
    let mut origins = Vec::new();
    if raw.allow_origins.is_empty() {
        problems.add(
            format!("{path}.allow_origins"),
            "list at least one origin, or `*`",
        );
    }
    for (i, o) in raw.allow_origins.iter().enumerate() {
        let at = format!("{path}.allow_origins[{i}]");
        let lower = o.to_ascii_lowercase();
        if lower == "*" {
            if credentials {
                problems.add(
                    at,
                    "`*` cannot go with allow_credentials: true (browsers refuse it, and \
                     reflecting any origin with credentials lets every site act as the user)",
                );
            }
            origins.push(OriginPattern::Any);
        } else if !origin_ok(&lower) || lower.ends_with('/') {
            problems.add(
                at,
                format!(
                    "expected an origin such as https://app.example.com or \
                     https://*.example.com, found {o:?}"
                ),
            );
        } else if let Some((scheme, rest)) = lower.split_once("://*.") {
            let host = rest.split(':').next().unwrap_or(rest);
            if rest.contains('*') {
                problems.add(at, "only the first label may be `*`");
            } else if host.split('.').filter(|l| !l.is_empty()).count() < 2 {
                problems.add(
                    at,
                    "`*.` must stand before a registrable name of at least two labels \
                     (`https://*.example.com`, not `https://*.com`)",
                );
            } else {
                origins.push(OriginPattern::Subdomains {
                    prefix: format!("{scheme}://"),
                    suffix: format!(".{rest}"),
                });
            }
        } else if lower.contains('*') {
            problems.add(at, "`*` may only be the whole origin or its first label");
        } else {
            origins.push(OriginPattern::Exact(lower));
        }
    }
    let mut methods = Vec::new();
    if raw.allow_methods.as_ref().is_some_and(Vec::is_empty) {
        problems.add(
            format!("{path}.allow_methods"),
            "an empty list allows no method: list methods, or remove it for the route's",
        );
    }
    for (i, m) in raw.allow_methods.iter().flatten().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            problems.add(
                format!("{path}.allow_methods[{i}]"),
                format!("{m:?} is not a method"),
            );
        } else {
            methods.push(m.to_ascii_uppercase());
        }
    }
    let names =
        |list: &Option<Vec<String>>, key: &str, default: &[&str], problems: &mut Problems| {
            let Some(list) = list else {
                return default.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            };
            let mut out = Vec::new();
            for (i, h) in list.iter().enumerate() {
                match header_name(h) {
                    Some(h) => out.push(h),
                    None => problems.add(
                        format!("{path}.{key}[{i}]"),
                        format!("{h:?} is not a header name"),
                    ),
                }
            }
            out
        };
    Cors {
        origins,
        methods,
        headers: names(
            &raw.allow_headers,
            "allow_headers",
            &["authorization", "content-type"],
            problems,
        ),
        expose: names(&raw.expose_headers, "expose_headers", &[], problems),
        credentials,
        max_age: duration(
            &raw.max_age,
            &format!("{path}.max_age"),
            Duration::from_secs(300),
            problems,
        ),
    }
}

/// `ip_rules: { allow, deny }`.
pub(crate) fn ip_rules(raw: Option<&RawIpRules>, path: &str, problems: &mut Problems) -> IpRules {
    let Some(raw) = raw else {
        return IpRules::default();
    };
    if raw.allow.as_ref().is_some_and(Vec::is_empty) {
        problems.add(
            format!("{path}.allow"),
            "an empty allow list lets no one in: list addresses, or remove it to let everyone in",
        );
    }
    IpRules {
        allow: networks(
            raw.allow.as_deref(),
            &format!("{path}.allow"),
            true,
            problems,
        ),
        deny: networks(raw.deny.as_deref(), &format!("{path}.deny"), true, problems),
    }
}

pub(crate) fn http(raw: &RawHttp, problems: &mut Problems) -> HttpSettings {
    const BASE: &str = "server.http";
    let escaped_slashes = choice(
        &raw.escaped_slashes,
        "escaped_slashes",
        [
            ("reject", EscapedSlashes::Reject),
            ("decode", EscapedSlashes::Decode),
        ],
        problems,
    );
    let path_params = choice(
        &raw.path_params,
        "path_params",
        [("reject", PathParams::Reject), ("strip", PathParams::Strip)],
        problems,
    );
    let underscores_in_headers = choice(
        &raw.underscores_in_headers,
        "underscores_in_headers",
        [("drop", Underscores::Drop), ("allow", Underscores::Allow)],
        problems,
    );
    let trusted_proxies = networks(
        raw.trusted_proxies.as_deref(),
        &format!("{BASE}.trusted_proxies"),
        true,
        problems,
    );
    let ip_rules = ip_rules(raw.ip_rules.as_ref(), &format!("{BASE}.ip_rules"), problems);
    let override_headers = match &raw.override_headers {
        None => DEFAULT_OVERRIDE_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(list) => {
            let mut out = Vec::new();
            for (i, h) in list.iter().enumerate() {
                match header_name(h) {
                    Some(h) => out.push(h),
                    None => problems.add(
                        format!("{BASE}.override_headers[{i}]"),
                        format!("{h:?} is not a header name"),
                    ),
                }
            }
            out
        }
    };
    let size = |v: &Option<ByteSize>, key: &str, default: u64, p: &mut Problems| {
        byte_size(v, &format!("{BASE}.{key}"), default, p)
    };
    let max_request_line = size(&raw.max_request_line, "max_request_line", 8 << 10, problems);
    let max_header_bytes = size(
        &raw.max_header_bytes,
        "max_header_bytes",
        64 << 10,
        problems,
    );
    // Pingora refuses a header block over 1 MiB by itself; a larger limit would never apply.
    if max_header_bytes > (1 << 20) - 1 {
        problems.add(
            format!("{BASE}.max_header_bytes"),
            "must be less than 1MiB (Pingora's own ceiling)",
        );
    }
    let max_header_value = size(
        &raw.max_header_value,
        "max_header_value",
        16 << 10,
        problems,
    );
    let max_headers = raw.max_headers.unwrap_or(100);
    if max_headers == 0 || max_headers > 256 {
        problems.add(
            format!("{BASE}.max_headers"),
            "must be between 1 and 256 (Pingora parses at most 256 header fields)",
        );
    }
    let max_body = size(&raw.max_body, "max_body", 64 << 20, problems);
    // Zero is meaningful here (unbuffered), so it is not read through `byte_size`.
    let read_buffer = match &raw.read_buffer {
        None => 2 << 10,
        Some(ByteSize(text)) => match parse_byte_size(text) {
            Some(n) if n <= 1 << 20 => n as usize,
            _ => {
                problems.add(
                    format!("{BASE}.read_buffer"),
                    format!("expected a size from 0 to 1MiB such as \"2KiB\", found {text:?}"),
                );
                2 << 10
            }
        },
    };
    let max_connections = raw.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        problems.add(format!("{BASE}.max_connections"), "must be at least 1");
    }
    let max_connections_per_client = raw.max_connections_per_client.unwrap_or(256);
    if max_connections_per_client == 0 {
        problems.add(
            format!("{BASE}.max_connections_per_client"),
            "must be at least 1",
        );
    }
    let max_requests_per_connection = raw.max_requests_per_connection.unwrap_or(1000);
    if max_requests_per_connection == 0 {
        problems.add(
            format!("{BASE}.max_requests_per_connection"),
            "must be at least 1",
        );
    }
    let header_timeout = duration(
        &raw.header_timeout,
        &format!("{BASE}.header_timeout"),
        Duration::from_secs(10),
        problems,
    );
    if header_timeout.is_zero() {
        problems.add(
            format!("{BASE}.header_timeout"),
            "must be greater than zero",
        );
    }
    let keepalive_timeout = duration(
        &raw.keepalive_timeout,
        &format!("{BASE}.keepalive_timeout"),
        Duration::from_secs(60),
        problems,
    );
    if keepalive_timeout < Duration::from_secs(1) {
        problems.add(
            format!("{BASE}.keepalive_timeout"),
            "must be at least 1s (Pingora counts it in whole seconds)",
        );
    }
    let body_timeout = duration(
        &raw.body_timeout,
        &format!("{BASE}.body_timeout"),
        Duration::from_secs(10),
        problems,
    );
    let send_timeout = duration(
        &raw.send_timeout,
        &format!("{BASE}.send_timeout"),
        Duration::from_secs(30),
        problems,
    );
    for (key, d) in [
        ("body_timeout", body_timeout),
        ("send_timeout", send_timeout),
    ] {
        if d.is_zero() {
            problems.add(format!("{BASE}.{key}"), "must be greater than zero");
        }
    }
    HttpSettings {
        ip_rules,
        cors: raw
            .cors
            .as_ref()
            .map(|c| std::sync::Arc::new(cors(c, &format!("{BASE}.cors"), problems))),
        body_timeout,
        send_timeout,
        path: PathOptions {
            merge_slashes: raw.merge_slashes.unwrap_or(true),
            escaped_slashes,
            path_params,
        },
        underscores_in_headers,
        trusted_proxies,
        override_headers,
        max_request_line: max_request_line as usize,
        max_header_bytes: max_header_bytes as usize,
        max_headers,
        max_header_value: max_header_value as usize,
        header_timeout,
        keepalive_timeout,
        max_requests_per_connection,
        max_connections,
        max_connections_per_client,
        max_body,
        h2c: raw.h2c.unwrap_or(false),
        read_buffer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_binary_units() {
        assert_eq!(parse_byte_size("65536"), Some(65536));
        assert_eq!(parse_byte_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_byte_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_byte_size("2GB"), Some(2 << 30));
        assert_eq!(parse_byte_size("lots"), None);
        assert_eq!(parse_byte_size("12XB"), None);
    }

    #[test]
    fn ip_rules_deny_wins_allow_narrows_and_a_mapped_address_is_its_ipv4() {
        let mut problems = Problems::default();
        let raw = RawIpRules {
            allow: Some(vec!["10.0.0.0/8".into(), "2001:db8::/32".into()]),
            deny: Some(vec!["10.9.0.0/16".into(), "::ffff:10.1.1.1".into()]),
        };
        let rules = ip_rules(Some(&raw), "r", &mut problems);
        assert!(problems.0.is_empty());
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        assert!(rules.admits(ip("10.1.2.3")));
        assert!(
            rules.admits(ip("::ffff:10.1.2.3")),
            "mapped: its IPv4 address"
        );
        assert!(rules.admits(ip("2001:db8::7")));
        assert!(!rules.admits(ip("10.9.1.1")), "deny wins over allow");
        assert!(!rules.admits(ip("::ffff:10.9.1.1")));
        assert!(
            !rules.admits(ip("10.1.1.1")),
            "a mapped rule is its IPv4 address"
        );
        assert!(!rules.admits(ip("192.0.2.1")), "not allowed");
        assert!(
            !rules.admits(None),
            "an unknown client is refused where there are rules"
        );
        assert!(IpRules::default().admits(None));
        let deny_only = ip_rules(
            Some(&RawIpRules {
                allow: None,
                deny: Some(vec!["192.0.2.0/24".into()]),
            }),
            "r",
            &mut problems,
        );
        assert!(deny_only.admits(ip("10.1.2.3")) && !deny_only.admits(ip("192.0.2.9")));
    }

    #[test]
    fn defaults_are_the_safe_ones() {
        let s = HttpSettings::default();
        assert!(s.path.merge_slashes);
        assert_eq!(s.path.escaped_slashes, EscapedSlashes::Reject);
        assert_eq!(s.path.path_params, PathParams::Reject);
        assert_eq!(s.underscores_in_headers, Underscores::Drop);
        assert!(s.trusted_proxies.is_empty());
        assert!(s.max_header_bytes <= 64 << 10);
        assert!(s.header_timeout <= Duration::from_secs(30));
    }
}
