//! CORS (the Fetch standard's CORS protocol): a preflight is answered here, before
//! authentication, and never forwarded; an answer to an allowed origin carries the grant,
//! the gateway's own refusals included, so that a page can read a 401's JSON.

use http::header::{self, HeaderName};
use pingora_http::RequestHeader;
use tollgate_config::Cors;

/// The method a preflight asks for: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. Anything else is an ordinary request.
pub fn preflight_method(req: &RequestHeader) -> Option<&str> {
    if req.method != http::Method::OPTIONS || !req.headers.contains_key(header::ORIGIN) {
        return None;
    }
    req.headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()))
}

fn origin(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
}

fn allowed<'r>(cors: &Cors, req: &'r RequestHeader) -> Option<&'r str> {
    origin(req).filter(|o| cors.origins.iter().any(|p| p.matches(o)))
}

/// `Access-Control-Allow-Origin` (and `-Credentials`) for an allowed `origin`.
fn allow_origin(cors: &Cors, origin: &str, out: &mut Vec<(HeaderName, String)>) {
    let any = cors.origins.contains(&tollgate_config::OriginPattern::Any);
    // `*` is never sent with credentials (refused at load); a listed origin is named.
    let value = if any && !cors.credentials {
        "*"
    } else {
        origin
    };
    out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, value.to_owned()));
    if cors.credentials {
        out.push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".into()));
    }
}

/// A preflight's answer headers, or `None` when the origin, the method or a requested
/// header is not allowed (then no grant is given).
pub fn preflight(
    cors: &Cors,
    req: &RequestHeader,
    method: &str,
) -> Option<Vec<(HeaderName, String)>> {
    let origin = allowed(cors, req)?;
    if !cors.methods.is_empty() && !cors.methods.iter().any(|m| m == method) {
        return None;
    }
    let mut asked = Vec::new();
    for value in req.headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        for name in value.to_str().ok()?.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            if !cors.headers.contains(&name) {
                return None;
            }
            asked.push(name);
        }
    }
    let mut out = Vec::with_capacity(6);
    allow_origin(cors, origin, &mut out);
    out.push((header::ACCESS_CONTROL_ALLOW_METHODS, method.to_owned()));
    if !asked.is_empty() {
        out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, asked.join(", ")));
    }
    out.push((
        header::ACCESS_CONTROL_MAX_AGE,
        cors.max_age.as_secs().to_string(),
    ));
    out.push((
        header::VARY,
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".into(),
    ));
    Some(out)
}

/// The grant on an actual answer: for an allowed origin, `Access-Control-Allow-Origin` and
/// the rest; `Vary: Origin` always, since on a route with `cors` every answer depends on
/// the origin. The first value says whether the request named an origin, and whether it
/// was allowed (`None`: no `Origin`).
pub fn grant(cors: &Cors, req: &RequestHeader) -> (Option<bool>, Vec<(HeaderName, String)>) {
    let mut out = Vec::with_capacity(4);
    let allowed = allowed(cors, req);
    if let Some(origin) = allowed {
        allow_origin(cors, origin, &mut out);
        if !cors.expose.is_empty() {
            out.push((
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                cors.expose.join(", "),
            ));
        }
    }
    out.push((header::VARY, "Origin".into()));
    (origin(req).map(|_| allowed.is_some()), out)
}

/// The `Access-Control-*` headers an upstream may have set: the gateway's grant replaces
/// them on routes with `cors`.
pub const UPSTREAM_GRANTS: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];
