//! Shared helpers of validation: the problem list and the checks every section uses. A
//! leaf: it imports no section, so sections never import each other through it.

use crate::raw::DurationText;
use std::fmt;
use std::time::Duration;

/// One thing wrong with a config, at a YAML path such as `routes[2].upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config, in file order where it has one. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems as validation walks the file.
#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(crate) fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError { problems: self.0 })
        }
    }
}

/// A message's framing: no configuration sets these.
pub(crate) const FRAMING: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

/// What the gateway writes on every request it forwards: the target host, the request id
/// and the forwarding headers.
pub(crate) const FORWARDING: &[&str] = &[
    "host",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
];

/// Whether header `name` (lower case) is in one of `lists`, compared as a CGI or WSGI
/// server folds names (`X_Forwarded_For` is `x-forwarded-for`).
pub(crate) fn reserved_in(name: &str, lists: &[&[&str]]) -> bool {
    let folded = name.replace('_', "-");
    lists.iter().any(|l| l.contains(&folded.as_str()))
}

/// A duration such as `5s`, `250ms` or `1m 30s`.
pub(crate) fn duration(
    value: &Option<DurationText>,
    path: &str,
    default: Duration,
    problems: &mut Problems,
) -> Duration {
    let Some(DurationText(text)) = value else {
        return default;
    };
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            problems.add(path, "must be greater than zero");
            default
        }
        Ok(d) => d,
        Err(e) => {
            problems.add(
                path,
                format!("invalid duration {text:?} ({e}); write e.g. \"5s\" or \"250ms\""),
            );
            default
        }
    }
}

/// A header name as RFC 9110 allows it (a token), lower-cased.
pub(crate) fn header_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then(|| name.to_ascii_lowercase())
}

/// What is wrong with a URL keys (or a discovery document) would be fetched from, if
/// anything. Keys fetched over plain http can be swapped in transit by anyone on the path,
/// and with them every token: only https is accepted, but for a loopback host (a sidecar or
/// a test) or when the provider says `insecure_http: true`. The gateway holds the
/// `jwks_uri` a discovery document names to the same rule.
pub fn fetch_url_problem(uri: &str, insecure_http: bool) -> Option<&'static str> {
    let authority = uri.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or("")
    });
    if authority.contains('@') {
        // Credentials in a URL would be silently ignored (or logged): refuse them.
        return Some("must not carry credentials (user@host)");
    }
    if let Some(rest) = uri.strip_prefix("https://") {
        host_of(rest).is_empty().then_some("has no host")
    } else if let Some(rest) = uri.strip_prefix("http://") {
        let host = host_of(rest);
        if host.is_empty() {
            Some("has no host")
        } else if !insecure_http && !is_loopback(host) {
            Some("must be an https:// URL (http:// only on a loopback host, or with insecure_http: true)")
        } else {
            None
        }
    } else {
        Some("must be an https:// URL")
    }
}

/// The host of a URL after its scheme: userinfo and port removed, IPv6 brackets kept off.
fn host_of(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    }
}

/// `localhost`, 127.0.0.0/8 or ::1.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
