//! `routes[].headers`: headers a route sets, adds or removes, on the request to the upstream
//! and on the upstream's answer, with values that may name the verified token's claims, the
//! client address, the request id and the route.

use crate::problems::{header_name, reserved_in, Problems, FORWARDING, FRAMING};
use crate::raw::{RawHeaderOps, RawHeaderRules};
use tollgate_policy::ClaimPath;

/// One piece of a header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// `${claim.PATH}`: the verified token's claim, written as `forward_claims` writes it.
    Claim(ClaimPath),
    /// `${client_ip}`: the client address (behind trusted proxies, the real client's).
    ClientIp,
    /// `${request_id}`.
    RequestId,
    /// `${route}`: the route's name.
    Route,
}

/// A header value with `${…}` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Part>);

/// `set`, `add` and `remove` on one side (request or response); names lower case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub set: Vec<(String, Template)>,
    pub add: Vec<(String, Template)>,
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A route's header rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

/// Headers no rule may touch on the request beside [`FRAMING`] and [`FORWARDING`]: the
/// credentials.
const CREDENTIALS: &[&str] = &["authorization", "proxy-authorization", "dpop", "cookie"];

/// Headers no rule may touch on the answer beside [`FRAMING`]: what the gateway writes (the
/// CORS grant among them, and the request id).
const RESPONSE_RESERVED: &[&str] = &[
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
    "vary",
    "x-request-id",
];

fn template(text: &str, path: &str, problems: &mut Problems) -> Option<Template> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_owned()));
        }
        let Some(end) = rest[start..].find('}') else {
            problems.add(path, "a `${` without its `}`");
            return None;
        };
        let var = &rest[start + 2..start + end];
        parts.push(match var {
            "client_ip" => Part::ClientIp,
            "request_id" => Part::RequestId,
            "route" => Part::Route,
            v => match v.strip_prefix("claim.").and_then(ClaimPath::parse) {
                Some(p) => Part::Claim(p),
                None => {
                    problems.add(
                        path,
                        format!(
                            "unknown variable ${{{var}}}: expected ${{claim.PATH}}, \
                             ${{client_ip}}, ${{request_id}} or ${{route}}"
                        ),
                    );
                    return None;
                }
            },
        });
        rest = &rest[start + end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    let bad_text = parts.iter().any(
        |p| matches!(p, Part::Text(t) if t.bytes().any(|b| b != b'\t' && (b < b' ' || b == 0x7f))),
    );
    if bad_text {
        problems.add(
            path,
            "a header value cannot hold control characters (CR, LF, NUL, …)",
        );
        return None;
    }
    Some(Template(parts))
}

fn ops(
    raw: Option<&RawHeaderOps>,
    path: &str,
    reserved: &[&[&str]],
    identity: &[&str],
    problems: &mut Problems,
) -> HeaderOps {
    let mut out = HeaderOps::default();
    let Some(raw) = raw else {
        return out;
    };
    let name = |h: &str, at: String, problems: &mut Problems| -> Option<String> {
        let Some(n) = header_name(h) else {
            problems.add(at, format!("{h:?} is not a header name"));
            return None;
        };
        // Compared as a CGI or WSGI server folds names: `X_Auth_Subject` is `x-auth-subject`.
        let folded = n.replace('_', "-");
        if reserved_in(&n, reserved) || identity.iter().any(|i| i.replace('_', "-") == folded) {
            problems.add(
                at,
                format!("{n} is the gateway's: it carries framing, a credential or identity"),
            );
            return None;
        }
        Some(n)
    };
    for (key, list) in [("set", &raw.set), ("add", &raw.add)] {
        for (h, value) in list.iter().flatten() {
            let at = format!("{path}.{key}.{h}");
            let (Some(n), Some(t)) = (
                name(h, at.clone(), problems),
                template(value, &at, problems),
            ) else {
                continue;
            };
            let from_caller =
                t.0.iter()
                    .any(|p| matches!(p, Part::Claim(_) | Part::ClientIp));
            match key {
                "set" => out.set.push((n, t)),
                _ if from_caller => problems.add(
                    at,
                    "a value from a claim or the client address must be `set`: an `add` \
                     would sit beside a copy the client sent",
                ),
                _ => out.add.push((n, t)),
            }
        }
    }
    for (i, h) in raw.remove.iter().flatten().enumerate() {
        if let Some(n) = name(h, format!("{path}.remove[{i}]"), problems) {
            out.remove.push(n);
        }
    }
    out
}

/// `routes[].headers`. `identity`: the headers the gateway writes from the caller's identity
/// (`forward_claims`, client certificate, the minted token's), which no rule may touch.
pub(crate) fn header_rules(
    raw: Option<&RawHeaderRules>,
    path: &str,
    identity: &[&str],
    problems: &mut Problems,
) -> HeaderRules {
    let Some(raw) = raw else {
        return HeaderRules::default();
    };
    HeaderRules {
        request: ops(
            raw.request.as_ref(),
            &format!("{path}.request"),
            &[CREDENTIALS, FRAMING, FORWARDING],
            identity,
            problems,
        ),
        response: ops(
            raw.response.as_ref(),
            &format!("{path}.response"),
            &[RESPONSE_RESERVED, FRAMING],
            &[],
            problems,
        ),
    }
}
