//! `routes[].headers`: the route's header rules, applied to the request the upstream
//! receives (after the gateway's own headers, and after the mirror took its copy, so a
//! rewritten header never reaches a shadow) and to the upstream's answer.

use crate::identity::auth::claim_header_value;
use crate::telemetry::metrics::METRICS;
use http::header::{HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;
use tollgate_config::{HeaderOps, Part, Template};

/// What `${…}` variables read.
pub struct Vars<'a> {
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a HeaderValue,
    pub route: &'a str,
}

/// The value, or `None` when a part cannot be written: a claim that is missing or that
/// `forward_claims` would not write (control characters, objects, …).
fn render(t: &Template, vars: &Vars<'_>) -> Option<HeaderValue> {
    let mut out = String::new();
    for part in &t.0 {
        match part {
            Part::Text(s) => out.push_str(s),
            Part::Claim(path) => {
                let value = path.lookup(vars.claims?)?;
                out.push_str(claim_header_value(value)?.to_str().ok()?);
            }
            Part::ClientIp => out.push_str(&vars.client_ip?.to_string()),
            Part::RequestId => out.push_str(vars.request_id.to_str().ok()?),
            Part::Route => out.push_str(vars.route),
        }
    }
    HeaderValue::from_str(&out).ok()
}

/// The message a side's rules apply to.
pub enum Message<'a> {
    Request(&'a mut RequestHeader),
    Response(&'a mut ResponseHeader),
}

impl Message<'_> {
    fn remove(&mut self, name: &HeaderName) {
        match self {
            Message::Request(r) => {
                r.remove_header(name);
            }
            Message::Response(r) => {
                r.remove_header(name);
            }
        }
    }

    fn put(&mut self, name: HeaderName, value: HeaderValue, append: bool) -> Result<()> {
        match (self, append) {
            (Message::Request(r), false) => r.insert_header(name, value),
            (Message::Request(r), true) => r.append_header(name, value).map(|_| ()),
            (Message::Response(r), false) => r.insert_header(name, value),
            (Message::Response(r), true) => r.append_header(name, value).map(|_| ()),
        }
    }
}

/// One side's rules: `remove`, then `set` (replacing), then `add` (beside).
pub fn apply(ops: &HeaderOps, vars: &Vars<'_>, mut message: Message<'_>) -> Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    for name in ops
        .remove
        .iter()
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
    {
        message.remove(&name);
    }
    for (append, list) in [(false, &ops.set), (true, &ops.add)] {
        for (name, template) in list {
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            if !append {
                // A CGI or WSGI upstream reads `X_Tenant` as `X-Tenant`: a client's copy in
                // that spelling must not survive a `set` either.
                let folded = name.as_str().replace('-', "_");
                if let Ok(other) = HeaderName::from_bytes(folded.as_bytes()) {
                    message.remove(&other);
                }
            }
            match render(template, vars) {
                Some(value) => message.put(name, value, append)?,
                None => {
                    // A value that cannot be written is never half-written; a `set` also
                    // takes away what the client sent under that name.
                    if !append {
                        message.remove(&name);
                    }
                    METRICS
                        .header_rewrites_skipped
                        .with_label_values(&[vars.route, name.as_str()])
                        .inc();
                }
            }
        }
    }
    Ok(())
}
