//! The edge of the request: before anything decides, the client's request is checked against
//! the size limits, rewritten in place into its canonical form (`tollgate-canonical`), and
//! cleaned of headers a client must not set. Routing, auth, RBAC, limits and the upstream all
//! read this one rewritten request, so the gateway decides on exactly what the upstream gets.

use crate::request::respond::Refusal;
use http::header::{HeaderName, HeaderValue, HOST};
use ipnet::IpNet;
use pingora_http::RequestHeader;
use std::collections::HashSet;
use std::net::IpAddr;
use tollgate_config::{HttpSettings, Underscores};

/// Forwarding headers: a client's copies are never believed unless it is a trusted proxy,
/// and the gateway sets its own.
pub const FORWARDING_HEADERS: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "forwarded",
    "x-real-ip",
];

/// `X-Forwarded-For`, read from trusted proxies and written upstream.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`, likewise.
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// A refusal at the edge: status, reason label (metrics, JSON `reason`) and fixed message.
const fn malformed(status: u16, reason: &'static str, message: &'static str) -> Refusal {
    Refusal::Malformed {
        status,
        reason,
        message,
    }
}

/// Header names removed from every request, compared after lower-casing and reading `_` as
/// `-` (the spellings a CGI/WSGI server folds together).
#[derive(Debug, Default)]
pub struct StripSet {
    names: HashSet<String>,
}

/// `X_Auth_Roles` → `x-auth-roles`.
fn folded(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' => '-',
            b => b.to_ascii_lowercase() as char,
        })
        .collect()
}

impl StripSet {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> StripSet {
        StripSet {
            names: names.into_iter().map(folded).collect(),
        }
    }

    fn contains(&self, name: &str) -> bool {
        if name.contains('_') {
            self.names.contains(&folded(name))
        } else {
            // Header names from the http crate are already lower case.
            self.names.contains(name)
        }
    }
}

/// What the edge learned about the request, for the later phases.
#[derive(Debug, Default)]
pub struct EdgeFacts {
    /// The client: the peer, or behind trusted proxies the first untrusted hop of
    /// `X-Forwarded-For` read right to left. Rate limits, logs and hashing use it.
    pub client_ip: Option<IpAddr>,
    /// The `X-Forwarded-For` chain received from a trusted proxy, to extend upstream.
    pub forwarded_for: Option<String>,
    /// `X-Forwarded-Proto` received from a trusted proxy.
    pub forwarded_proto: Option<String>,
    /// The host the route is chosen on (normalised, without port).
    pub host: Option<String>,
}

/// Checks the header limits (414/431).
fn check_limits(req: &RequestHeader, http: &HttpSettings) -> Result<(), Refusal> {
    // method SP target SP HTTP/1.1
    if req.method.as_str().len() + req.raw_path().len() + 10 > http.max_request_line {
        return Err(malformed(
            414,
            "request_line_too_long",
            "the request line is too long",
        ));
    }
    if req.headers.len() > http.max_headers {
        return Err(malformed(
            431,
            "too_many_headers",
            "the request has too many header fields",
        ));
    }
    let mut total = 0;
    for (name, value) in req.headers.iter() {
        let field = name.as_str().len() + value.len();
        if field > http.max_header_value {
            return Err(malformed(
                431,
                "header_too_large",
                "a request header field is too large",
            ));
        }
        total += field + 4;
    }
    if total > http.max_header_bytes {
        return Err(malformed(
            431,
            "header_too_large",
            "the request header block is too large",
        ));
    }
    Ok(())
}

/// The client behind trusted proxies: `X-Forwarded-For` read right to left, skipping
/// trusted hops; the first other address is the client. An unreadable entry stops the walk
/// at the last trusted hop (it cannot be believed, and neither can anything left of it).
pub fn client_behind(peer: IpAddr, xff: &[&str], trusted: &[IpNet]) -> IpAddr {
    let mut client = peer;
    for value in xff.iter().rev() {
        for hop in value.rsplit(',') {
            if !trusted.iter().any(|n| n.contains(&client)) {
                return client;
            }
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => client = ip.to_canonical(),
                Err(_) => return client,
            }
        }
    }
    client
}

/// Rewrites `req` into the canonical request and removes the headers a client must not set.
/// After this the request is what routing decides on and what the upstream receives.
pub fn prepare(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    http: &HttpSettings,
    strip: &StripSet,
) -> Result<EdgeFacts, Refusal> {
    join_cookie_crumbs(req)?;
    check_limits(req, http)?;
    // HTTP/2 carries the host in `:authority` (RFC 9113 §8.3.1), which is the request's
    // host; a `Host` field beside it must name the same one, or the two readings differ.
    let authority = match (req.version, req.uri.authority()) {
        (http::Version::HTTP_2, Some(a)) => {
            let a = a.as_str();
            let differs = req
                .headers
                .get_all(HOST)
                .iter()
                .any(|h| !h.as_bytes().eq_ignore_ascii_case(a.as_bytes()));
            if differs {
                return Err(malformed(
                    400,
                    "conflicting_host",
                    "the Host header and :authority name different hosts",
                ));
            }
            Some(a.to_owned())
        }
        _ => None,
    };
    let canonical = {
        // Zero, one or (refused) more `Host` fields, without allocating for the usual one.
        let mut fields = req.headers.get_all(HOST).iter().map(HeaderValue::as_bytes);
        let pair = match &authority {
            Some(a) => [Some(a.as_bytes()), None],
            None => [fields.next(), fields.next()],
        };
        let hosts: &[&[u8]] = match pair {
            [None, _] => &[],
            [Some(a), None] => &[a][..],
            [Some(a), Some(b)] => &[a, b][..],
        };
        // A host is required of HTTP/1.0 too: the upstream request is HTTP/1.1, which must
        // carry one, and a vhost-based upstream must not pick its default host for it.
        tollgate_canonical::canonicalize(
            req.method.as_str().as_bytes(),
            req.raw_path(),
            hosts,
            true,
            &http.path,
        )
        .map_err(Refusal::from_canonical)?
    };
    // Most requests are canonical already: rewrite only what differs.
    if !canonical.target_matches(req.raw_path()) || req.uri.scheme().is_some() {
        let uri: http::Uri = canonical
            .target()
            .parse()
            .map_err(|_| malformed(400, "invalid_target", "the request target is malformed"))?;
        req.set_uri(uri);
    }
    let same_host = {
        let mut hosts = req.headers.get_all(HOST).iter();
        hosts
            .next()
            .is_some_and(|v| canonical.host_header_matches(v.as_bytes()))
            && hosts.next().is_none()
    };
    if !same_host {
        match canonical.host_header() {
            Some(h) => {
                let value = HeaderValue::from_str(&h)
                    .map_err(|_| malformed(400, "invalid_host", "the host is malformed"))?;
                req.insert_header(HOST, value)
                    .map_err(|_| malformed(400, "invalid_host", "the host is malformed"))?;
            }
            None => {
                req.remove_header(&HOST);
            }
        }
    }

    single_content_length(req)?;

    let mut facts = EdgeFacts {
        client_ip: peer,
        host: canonical.host,
        ..EdgeFacts::default()
    };
    if let Some(peer) = peer.filter(|p| http.trusted_proxies.iter().any(|n| n.contains(p))) {
        let xff: Vec<&str> = req
            .headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        facts.client_ip = Some(client_behind(peer, &xff, &http.trusted_proxies));
        if !xff.is_empty() {
            facts.forwarded_for = Some(xff.join(", "));
        }
        facts.forwarded_proto = req
            .headers
            .get(&X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .filter(|v| matches!(*v, "http" | "https"))
            .map(str::to_owned);
    }

    let doomed: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            (n.contains('_') && http.underscores_in_headers == Underscores::Drop)
                || strip.contains(n)
        })
        .cloned()
        .collect();
    for name in doomed {
        req.remove_header(&name);
    }
    Ok(facts)
}

/// HTTP/2 may split `Cookie` into one field per cookie ("crumbs"), which must be joined
/// with `"; "` before the request goes on as HTTP/1.1 (RFC 9113 §8.2.3); an HTTP/1.1 client
/// should send one field (RFC 6265 §5.4) and gets the same treatment. Joined first, so
/// that routing (`when: {cookie}`), the token reader, the forwarded request and the header
/// count all see one `Cookie` field with the same value.
fn join_cookie_crumbs(req: &mut RequestHeader) -> Result<(), Refusal> {
    let mut crumbs = req.headers.get_all(http::header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return Ok(());
    }
    let joined: Vec<&[u8]> = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let joined = joined.join(&b"; "[..]);
    const BAD: Refusal = malformed(400, "invalid_cookie", "the Cookie header is malformed");
    let value = HeaderValue::from_bytes(&joined).map_err(|_| BAD)?;
    req.insert_header(http::header::COOKIE, value)
        .map_err(|_| BAD)?;
    Ok(())
}

/// `Content-Length: 5, 5` (or two identical fields) is one length (RFC 9110 §8.6), but an
/// upstream that reads only the first digits, or the first field, could frame the body
/// differently: the upstream gets a single plain value. Differing values → 400.
fn single_content_length(req: &mut RequestHeader) -> Result<(), Refusal> {
    let values: Vec<&[u8]> = req
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if values.is_empty() || (values.len() == 1 && values[0].iter().all(u8::is_ascii_digit)) {
        return Ok(());
    }
    const BAD: Refusal = malformed(
        400,
        "invalid_content_length",
        "the Content-Length is invalid",
    );
    let mut length: Option<u64> = None;
    for part in values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|p| p.trim_ascii())
    {
        let n = std::str::from_utf8(part)
            .ok()
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or(BAD)?;
        if length.is_some_and(|l| l != n) {
            return Err(BAD);
        }
        length = Some(n);
    }
    let length = length.ok_or(BAD)?;
    req.insert_header(http::header::CONTENT_LENGTH, length)
        .map_err(|_| BAD)?;
    Ok(())
}

static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Where the forwarding headers of an upstream request come from.
pub struct ForwardFrom<'a> {
    pub facts: &'a EdgeFacts,
    /// The connection's peer (the last hop of `X-Forwarded-For`).
    pub peer: Option<IpAddr>,
    /// The port of the listener the request came in on.
    pub listen_port: Option<&'a HeaderValue>,
    /// The request came in on the HTTPS listener.
    pub tls: bool,
}

/// Writes the gateway's forwarding headers on the upstream request: `X-Forwarded-For`
/// (a trusted proxy's chain extended by the peer, else the client), `X-Real-IP`,
/// `X-Forwarded-Proto`, `-Host` and `-Port`. The client's own copies were removed by
/// [`prepare`].
pub fn forward(upstream: &mut RequestHeader, from: &ForwardFrom<'_>) -> pingora_core::Result<()> {
    let facts = from.facts;
    let invalid = |_| {
        pingora_core::Error::explain(
            pingora_core::ErrorType::InternalError,
            "address as a header value",
        )
    };
    if let Some(ip) = facts.client_ip {
        let client = HeaderValue::from_str(&ip.to_string()).map_err(invalid)?;
        let xff = match (&facts.forwarded_for, from.peer) {
            (Some(chain), Some(peer)) => {
                HeaderValue::from_str(&format!("{chain}, {peer}")).map_err(invalid)?
            }
            _ => client.clone(),
        };
        upstream.insert_header(X_FORWARDED_FOR.clone(), xff)?;
        upstream.insert_header(X_REAL_IP.clone(), client)?;
    }
    let proto = match facts.forwarded_proto.as_deref() {
        _ if from.tls => HeaderValue::from_static("https"),
        Some("https") => HeaderValue::from_static("https"),
        _ => HeaderValue::from_static("http"),
    };
    upstream.insert_header(X_FORWARDED_PROTO.clone(), proto)?;
    if let Some(host) = upstream.headers.get(HOST).cloned() {
        upstream.insert_header(X_FORWARDED_HOST.clone(), host)?;
    }
    if let Some(port) = from.listen_port {
        upstream.insert_header(X_FORWARDED_PORT.clone(), port.clone())?;
    }
    Ok(())
}

/// The set removed from every request: identity headers, forwarding headers and the
/// configured override headers.
pub fn strip_set(identity: &[HeaderName], http: &HttpSettings) -> StripSet {
    StripSet::new(
        identity
            .iter()
            .map(HeaderName::as_str)
            .chain(FORWARDING_HEADERS.iter().copied())
            .chain(http.override_headers.iter().map(String::as_str)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::client_bucket;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn underscore_and_case_spellings_of_identity_headers_are_one_name() {
        let set = StripSet::new(["x-auth-roles"]);
        assert!(set.contains("x-auth-roles"));
        assert!(set.contains("x_auth_roles"));
        assert!(set.contains("x-auth_roles"));
        assert!(!set.contains("x-auth-role"));
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        // client_behind is only called for trusted peers; an untrusted one stops at once.
        assert_eq!(client_behind(peer, &["1.2.3.4"], &trusted), peer);
    }

    #[test]
    fn forwarded_for_is_read_right_to_left_skipping_trusted_hops() {
        let trusted = nets(&["10.0.0.0/8", "192.168.1.1/32"]);
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let xff = ["6.6.6.6, 198.51.100.7", "192.168.1.1"];
        assert_eq!(
            client_behind(peer, &xff, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn an_unreadable_forwarded_for_entry_stops_at_the_last_trusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(client_behind(peer, &["1.1.1.1, junk"], &trusted), peer);
    }

    #[test]
    fn a_mapped_hop_is_its_ipv4_address() {
        let trusted = nets(&["127.0.0.1/32"]);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            client_behind(peer, &["203.0.113.7, ::ffff:127.0.0.1"], &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap(),
            "a proxy that writes the mapped form is still the trusted proxy"
        );
        assert_eq!(
            client_behind(peer, &["::ffff:10.1.2.3"], &trusted),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_chain_of_only_trusted_hops_ends_at_its_leftmost_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(
            client_behind(peer, &["10.2.2.2"], &trusted),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_bucket(a), client_bucket(b));
        assert_ne!(client_bucket(a), client_bucket(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_bucket(v4), v4);
    }
}
