//! One canonical request from a raw HTTP/1.x request line and its `Host` headers, so that the
//! gateway decides (route, auth, RBAC) on exactly the request the upstream receives.
//!
//! # Why
//!
//! A gateway that routes on one reading of a request and forwards another lets a client pick
//! the route: `GET /%61dmin` or `GET //admin` is routed as something other than `/admin` and
//! served as `/admin`; so are `/api/..;/admin` (Java servers drop `;...`), `%2F`, `\` and
//! `%00` tricks, a lower-case `get` that a route for `GET` does not see, an absolute-form
//! target whose authority differs from the `Host` header, and `secure.example.com.` with its
//! trailing dot. [`canonicalize`] turns the request into one [`CanonicalRequest`] or a
//! [`Refusal`] (HTTP 400); the gateway then routes on it and forwards exactly
//! [`CanonicalRequest::target`] and [`CanonicalRequest::host_header`] upstream.
//!
//! The crate is pure: no I/O, no async, no Pingora types; it takes bytes.
//!
//! # Rules, in short
//!
//! - The method is an RFC 9110 token; standard methods must be upper-case.
//! - The target is origin-form, absolute-form (`http`/`https`, whose authority replaces the
//!   `Host` header, RFC 9112 §3.2.2) or `*` for `OPTIONS`; `CONNECT` is refused.
//! - The host is lower-cased, loses one trailing dot and its port (kept apart).
//! - The path is normalised ([`normalize_path`]): unreserved escapes decoded, other escapes
//!   upper-cased, slash runs merged; dot segments, encoded slashes, backslashes, controls and
//!   (by default) path parameters refused. The query is kept verbatim.
//!
//! # Example
//!
//! ```
//! use tollgate_canonical::{canonicalize, PathOptions, Refusal, TargetForm};
//!
//! let opts = PathOptions::default();
//! let req = canonicalize(b"GET", b"//%61dmin/users?id=7", &[b"Example.COM.:8080"], true, &opts)
//!     .unwrap();
//! assert_eq!(req.path, "/admin/users");
//! assert_eq!(req.host.as_deref(), Some("example.com"));
//! assert_eq!(req.target(), "/admin/users?id=7");
//! assert_eq!(req.host_header().as_deref(), Some("example.com:8080"));
//! assert_eq!(req.form, TargetForm::Origin);
//!
//! // The authority of an absolute-form target wins over the Host header.
//! let req = canonicalize(b"GET", b"http://secure.example.com/x", &[], true, &opts).unwrap();
//! assert_eq!(req.host.as_deref(), Some("secure.example.com"));
//! assert_eq!(req.target(), "/x");
//!
//! let refused = canonicalize(b"GET", b"/api/..;/admin", &[b"a.com"], true, &opts);
//! assert_eq!(refused, Err(Refusal::DotSegment));
//! assert_eq!(Refusal::DotSegment.reason(), "dot_segment");
//! ```

mod host;
mod path;
mod refusal;

pub use host::normalize_host;
pub use path::{normalize_path, EscapedSlashes, PathOptions, PathParams};
pub use refusal::Refusal;

/// Which form the request target had (RFC 9112 §3.2). The canonical request is always
/// forwarded in origin-form (or `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`.
    Origin,
    /// `http://authority/path?query`; the authority gave the host.
    Absolute,
    /// `*`, for `OPTIONS` only.
    Asterisk,
}

/// The request the gateway decides on and the upstream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalRequest {
    /// As received; an RFC 9110 token, standard methods upper-case.
    pub method: String,
    /// Lower-cased, one trailing dot removed, no port; an IPv6 literal in brackets (`[::1]`).
    /// `None` only for HTTP/1.0 without a host.
    pub host: Option<String>,
    /// The port given with the host, if any.
    pub port: Option<u16>,
    /// Normalised, always starts with `/` (for `OPTIONS *` it is `*`).
    pub path: String,
    /// The bytes after the first `?`, verbatim (printable ASCII without space or `#`).
    /// `Some("")` for a target ending in `?`, so the upstream receives it as sent.
    pub query: Option<String>,
    /// The form of the received target.
    pub form: TargetForm,
}

impl CanonicalRequest {
    /// The origin-form target the upstream receives: path + ("?" + query if Some).
    pub fn target(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }

    /// The Host header value the upstream receives: host, plus ":port" when a port was given.
    pub fn host_header(&self) -> Option<String> {
        let host = self.host.as_deref()?;
        Some(match self.port {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        })
    }

    /// Whether `raw` is exactly [`Self::target`], so the request needs no rewrite (most
    /// requests: this saves building the target).
    pub fn target_matches(&self, raw: &[u8]) -> bool {
        let path = self.path.as_bytes();
        match &self.query {
            None => raw == path,
            Some(query) => {
                raw.len() == path.len() + 1 + query.len()
                    && raw.starts_with(path)
                    && raw[path.len()] == b'?'
                    && raw.ends_with(query.as_bytes())
            }
        }
    }

    /// Whether `value` is exactly [`Self::host_header`] (false when there is no host).
    pub fn host_header_matches(&self, value: &[u8]) -> bool {
        let Some(host) = &self.host else {
            return false;
        };
        match self.port {
            None => value == host.as_bytes(),
            Some(port) => value
                .strip_prefix(host.as_bytes())
                .and_then(|rest| rest.strip_prefix(b":"))
                .is_some_and(|digits| {
                    // The port as `u16` prints it: no sign, no leading zero.
                    (digits.first() != Some(&b'0') || digits == b"0")
                        && std::str::from_utf8(digits)
                            .ok()
                            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
                            .and_then(|d| d.parse::<u16>().ok())
                            == Some(port)
                }),
        }
    }
}

/// Methods that must be written upper-case (RFC 9110 §9 and RFC 5789).
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Turns a raw request line and its `Host` headers into the one canonical request.
///
/// `host_headers`: every Host header value received (0, 1 or more). `http11`: true for
/// HTTP/1.1 (and HTTP/2), false for HTTP/1.0.
///
/// Two or more `Host` headers are refused even when an absolute-form target makes them
/// irrelevant. A `#` before the query is [`Refusal::InvalidTarget`]; in the query it is
/// [`Refusal::InvalidQuery`]. `CONNECT` is refused whatever its target: it takes
/// authority-form (RFC 9112 §3.2.3) and the gateway does not tunnel.
pub fn canonicalize(
    method: &[u8],
    target: &[u8],
    host_headers: &[&[u8]],
    http11: bool,
    opts: &PathOptions,
) -> Result<CanonicalRequest, Refusal> {
    let method = canonical_method(method)?;
    if host_headers.len() > 1 {
        return Err(Refusal::ConflictingHost);
    }
    if method == "CONNECT" {
        return Err(Refusal::InvalidTarget);
    }
    let (before_query, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], Some(&target[q + 1..])),
        None => (target, None),
    };
    if before_query.contains(&b'#') {
        return Err(Refusal::InvalidTarget);
    }
    let query = query.map(path::validate_query).transpose()?;
    let (form, authority, path) = match before_query {
        [b'/', ..] => (
            TargetForm::Origin,
            None,
            normalize_path(before_query, opts)?,
        ),
        b"*" if method == "OPTIONS" && query.is_none() => {
            (TargetForm::Asterisk, None, "*".to_owned())
        }
        _ => {
            let (authority, path) = split_absolute(before_query)?;
            let path = normalize_path(path, opts)?;
            (TargetForm::Absolute, Some(authority), path)
        }
    };
    let (host, port) = match authority {
        Some(authority) => {
            let (host, port) = normalize_host(authority)?;
            (Some(host), port)
        }
        None => match host_headers.first().map(|h| trim_ows(h)) {
            Some(value) if !value.is_empty() => {
                let (host, port) = normalize_host(value)?;
                (Some(host), port)
            }
            // An empty Host header means "no authority" (RFC 9112 §3.2).
            _ if http11 => return Err(Refusal::MissingHost),
            _ => (None, None),
        },
    };
    Ok(CanonicalRequest {
        method,
        host,
        port,
        path,
        query,
        form,
    })
}

/// Validates the method (RFC 9110 §9.1 token; standard methods upper-case).
fn canonical_method(method: &[u8]) -> Result<String, Refusal> {
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Refusal::InvalidMethod);
    }
    // Only tchar bytes remain, all ASCII.
    let method = String::from_utf8(method.to_vec()).map_err(|_| Refusal::InvalidMethod)?;
    let miscased = STANDARD_METHODS
        .iter()
        .any(|m| m.eq_ignore_ascii_case(&method) && *m != method);
    if miscased {
        return Err(Refusal::MethodCase);
    }
    Ok(method)
}

/// RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `scheme://authority/path` (no query) → (authority, path). Only `http` and `https`.
fn split_absolute(target: &[u8]) -> Result<(&[u8], &[u8]), Refusal> {
    let colon = target
        .iter()
        .position(|&b| b == b':')
        .ok_or(Refusal::InvalidTarget)?;
    let (scheme, rest) = target.split_at(colon);
    let valid_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    // `x:/admin` and `host:443` (authority-form) have no `//`: not absolute-form.
    let hier = match rest.strip_prefix(b"://") {
        Some(hier) if valid_scheme => hier,
        _ => return Err(Refusal::InvalidTarget),
    };
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return Err(Refusal::UnsupportedScheme);
    }
    let end = hier.iter().position(|&b| b == b'/').unwrap_or(hier.len());
    let (authority, path) = hier.split_at(end);
    // An http URI with an empty host is invalid (RFC 9110 §4.2.1); user information is
    // deprecated there and only serves to disguise the host.
    if authority.is_empty() || authority.contains(&b'@') {
        return Err(Refusal::InvalidTarget);
    }
    Ok((authority, path))
}

/// A field value without surrounding spaces and tabs (RFC 9110 §5.5).
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |e| e + 1);
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(method: &str, target: &str, hosts: &[&str]) -> Result<CanonicalRequest, Refusal> {
        let hosts: Vec<&[u8]> = hosts.iter().map(|h| h.as_bytes()).collect();
        canonicalize(
            method.as_bytes(),
            target.as_bytes(),
            &hosts,
            true,
            &PathOptions::default(),
        )
    }

    fn path_of(target: &str) -> Result<String, Refusal> {
        canon("GET", target, &["a.com"]).map(|r| r.path)
    }

    // --- The attacks this crate exists for. ---

    #[test]
    fn attack_percent_encoded_admin_is_routed_as_admin() {
        assert_eq!(path_of("/%61dmin").as_deref(), Ok("/admin"));
        assert_eq!(path_of("/ADM%49N").as_deref(), Ok("/ADMIN"));
    }

    #[test]
    fn attack_double_slash_admin_is_routed_as_admin() {
        assert_eq!(path_of("//admin").as_deref(), Ok("/admin"));
        assert_eq!(path_of("///admin//x").as_deref(), Ok("/admin/x"));
    }

    #[test]
    fn attack_targets_not_in_origin_form_are_refused() {
        for bad in [
            "x:/admin",
            "admin",
            "",
            "host.example.com:443",
            "http:/admin",
            "?a",
        ] {
            assert_eq!(path_of(bad), Err(Refusal::InvalidTarget), "{bad}");
        }
    }

    #[test]
    fn attack_lower_case_method_is_refused() {
        assert_eq!(canon("get", "/admin", &["a.com"]), Err(Refusal::MethodCase));
    }

    #[test]
    fn attack_absolute_form_without_host_header_takes_its_authority() {
        let req = canon("GET", "http://secure.example.com/x", &[]).unwrap();
        assert_eq!(req.host.as_deref(), Some("secure.example.com"));
        assert_eq!(req.form, TargetForm::Absolute);
        assert_eq!(req.target(), "/x");
        assert_eq!(req.host_header().as_deref(), Some("secure.example.com"));
    }

    #[test]
    fn attack_host_with_trailing_dot_is_the_same_host() {
        let req = canon("GET", "/x", &["secure.example.com."]).unwrap();
        assert_eq!(req.host.as_deref(), Some("secure.example.com"));
    }

    #[test]
    fn attack_semicolon_dot_dot_is_refused() {
        assert_eq!(path_of("/api/..;/admin"), Err(Refusal::DotSegment));
    }

    #[test]
    fn attack_encoded_slash_is_refused() {
        assert_eq!(path_of("/api%2F..%2Fadmin"), Err(Refusal::EncodedSlash));
        assert_eq!(path_of("/%2fadmin"), Err(Refusal::EncodedSlash));
    }

    #[test]
    fn attack_backslash_is_refused() {
        assert_eq!(path_of("/api\\..\\admin"), Err(Refusal::Backslash));
        assert_eq!(path_of("/api%5C..%5Cadmin"), Err(Refusal::EncodedSlash));
    }

    #[test]
    fn attack_encoded_nul_is_refused() {
        assert_eq!(path_of("/admin%00.json"), Err(Refusal::ControlCharacter));
    }

    #[test]
    fn attack_dot_segments_are_refused() {
        for bad in [
            "/api/../admin",
            "/api/%2e%2e/admin",
            "/./admin",
            "/api/.%2E",
        ] {
            assert_eq!(path_of(bad), Err(Refusal::DotSegment), "{bad}");
        }
    }

    // --- Method. ---

    #[test]
    fn method_must_be_a_token() {
        for bad in ["", "GE T", "GET\0", "(GET)", "GET/", "G\u{e9}T", "GET:"] {
            assert_eq!(
                canon(bad, "/", &["a.com"]),
                Err(Refusal::InvalidMethod),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn standard_methods_in_another_case_are_refused() {
        for bad in ["get", "Get", "pOST", "delete", "Options", "patch", "head"] {
            assert_eq!(
                canon(bad, "/", &["a.com"]),
                Err(Refusal::MethodCase),
                "{bad}"
            );
        }
    }

    #[test]
    fn extension_methods_are_kept_as_written() {
        for m in ["PROPFIND", "Propfind", "M-SEARCH", "PURGE"] {
            assert_eq!(canon(m, "/", &["a.com"]).unwrap().method, m);
        }
    }

    // --- Target forms. ---

    #[test]
    fn absolute_form_authority_replaces_host_header() {
        let req = canon("GET", "http://Host.Example.com.:8080/p?q", &["other.com"]).unwrap();
        assert_eq!(req.host.as_deref(), Some("host.example.com"));
        assert_eq!(req.port, Some(8080));
        assert_eq!(req.path, "/p");
        assert_eq!(req.query.as_deref(), Some("q"));
        assert_eq!(req.host_header().as_deref(), Some("host.example.com:8080"));
    }

    #[test]
    fn absolute_form_ignores_an_invalid_host_header() {
        let req = canon("GET", "https://a.com/", &["bad host"]).unwrap();
        assert_eq!(req.host.as_deref(), Some("a.com"));
    }

    #[test]
    fn absolute_form_scheme_is_case_insensitive() {
        assert!(canon("GET", "HTTPS://a.com/x", &[]).is_ok());
        assert!(canon("GET", "Http://a.com/x", &[]).is_ok());
    }

    #[test]
    fn absolute_form_with_empty_path_is_root() {
        let req = canon("GET", "http://a.com", &[]).unwrap();
        assert_eq!(req.target(), "/");
        let req = canon("GET", "http://a.com?x=1", &[]).unwrap();
        assert_eq!(req.target(), "/?x=1");
    }

    #[test]
    fn absolute_form_path_is_normalised() {
        let req = canon("GET", "http://a.com//%61dmin", &[]).unwrap();
        assert_eq!(req.path, "/admin");
        assert_eq!(
            canon("GET", "http://a.com/a/../admin", &[]),
            Err(Refusal::DotSegment)
        );
    }

    #[test]
    fn absolute_form_with_userinfo_or_empty_authority_is_refused() {
        for bad in [
            "http://user@a.com/",
            "http://a.com@evil.com/",
            "http:///admin",
            "http://",
        ] {
            assert_eq!(canon("GET", bad, &[]), Err(Refusal::InvalidTarget), "{bad}");
        }
    }

    #[test]
    fn absolute_form_with_invalid_authority_is_invalid_host() {
        for bad in [
            "http://a b/",
            "http://a.com:0/",
            "http://a.com../",
            "http://[::1/",
        ] {
            assert_eq!(canon("GET", bad, &[]), Err(Refusal::InvalidHost), "{bad}");
        }
    }

    #[test]
    fn absolute_form_still_refuses_two_host_headers() {
        assert_eq!(
            canon("GET", "http://a.com/", &["a.com", "b.com"]),
            Err(Refusal::ConflictingHost)
        );
    }

    #[test]
    fn schemes_other_than_http_are_refused() {
        for bad in [
            "ftp://a.com/x",
            "ws://a.com/",
            "file:///etc/passwd",
            "h2c://a.com/",
        ] {
            assert_eq!(
                canon("GET", bad, &[]),
                Err(Refusal::UnsupportedScheme),
                "{bad}"
            );
        }
    }

    #[test]
    fn asterisk_form_only_for_options() {
        let req = canon("OPTIONS", "*", &["a.com"]).unwrap();
        assert_eq!(req.form, TargetForm::Asterisk);
        assert_eq!(req.path, "*");
        assert_eq!(req.target(), "*");
        for (m, t) in [
            ("GET", "*"),
            ("OPTIONS", "*?x"),
            ("OPTIONS", "**"),
            ("OPTIONS", "*/a"),
        ] {
            assert_eq!(
                canon(m, t, &["a.com"]),
                Err(Refusal::InvalidTarget),
                "{m} {t}"
            );
        }
    }

    #[test]
    fn asterisk_form_still_needs_a_host() {
        assert_eq!(canon("OPTIONS", "*", &[]), Err(Refusal::MissingHost));
    }

    #[test]
    fn connect_is_refused_in_every_form() {
        for t in ["a.com:443", "/", "http://a.com/"] {
            assert_eq!(
                canon("CONNECT", t, &["a.com"]),
                Err(Refusal::InvalidTarget),
                "{t}"
            );
        }
    }

    #[test]
    fn fragment_in_target_is_refused() {
        assert_eq!(path_of("/a#b"), Err(Refusal::InvalidTarget));
        assert_eq!(path_of("#"), Err(Refusal::InvalidTarget));
        assert_eq!(
            canon("GET", "http://a.com#x", &[]),
            Err(Refusal::InvalidTarget)
        );
        // After the `?` it is the query that is invalid.
        assert_eq!(path_of("/a?b#c"), Err(Refusal::InvalidQuery));
    }

    // --- Host. ---

    #[test]
    fn http11_without_host_is_refused() {
        assert_eq!(canon("GET", "/", &[]), Err(Refusal::MissingHost));
    }

    #[test]
    fn empty_host_header_on_http11_is_missing_host() {
        assert_eq!(canon("GET", "/", &[""]), Err(Refusal::MissingHost));
        assert_eq!(canon("GET", "/", &[" \t"]), Err(Refusal::MissingHost));
    }

    #[test]
    fn http10_without_host_has_no_host() {
        let opts = PathOptions::default();
        for hosts in [&[][..], &[&b""[..]]] {
            let req = canonicalize(b"GET", b"/a", hosts, false, &opts).unwrap();
            assert_eq!(req.host, None);
            assert_eq!(req.host_header(), None);
        }
        let req = canonicalize(b"GET", b"/a", &[b"A.com"], false, &opts).unwrap();
        assert_eq!(req.host.as_deref(), Some("a.com"));
    }

    #[test]
    fn two_host_headers_conflict() {
        assert_eq!(
            canon("GET", "/", &["a.com", "a.com"]),
            Err(Refusal::ConflictingHost)
        );
        let opts = PathOptions::default();
        assert_eq!(
            canonicalize(b"GET", b"/", &[b"a.com", b"b.com"], false, &opts),
            Err(Refusal::ConflictingHost)
        );
    }

    #[test]
    fn host_header_is_normalised_and_keeps_its_port() {
        let req = canon("GET", "/", &[" Secure.Example.COM.:8443 "]).unwrap();
        assert_eq!(req.host.as_deref(), Some("secure.example.com"));
        assert_eq!(req.port, Some(8443));
        assert_eq!(
            req.host_header().as_deref(),
            Some("secure.example.com:8443")
        );
        let req = canon("GET", "/", &["[::1]:80"]).unwrap();
        assert_eq!(req.host_header().as_deref(), Some("[::1]:80"));
    }

    #[test]
    fn invalid_host_header_is_refused() {
        for bad in [
            "a b",
            "a.com..",
            "a.com:99999",
            "user@a.com",
            "a.com/x",
            "a%2ecom",
        ] {
            assert_eq!(
                canon("GET", "/", &[bad]),
                Err(Refusal::InvalidHost),
                "{bad}"
            );
        }
    }

    // --- Query. ---

    #[test]
    fn query_is_kept_verbatim_in_the_target() {
        let req = canon("GET", "/%61?b=%2F..%2f&c=%61;d", &["a.com"]).unwrap();
        assert_eq!(req.path, "/a");
        assert_eq!(req.query.as_deref(), Some("b=%2F..%2f&c=%61;d"));
        assert_eq!(req.target(), "/a?b=%2F..%2f&c=%61;d");
        // Only the first `?` separates; an empty query is kept.
        assert_eq!(
            canon("GET", "/a?b?c", &["a.com"]).unwrap().target(),
            "/a?b?c"
        );
        assert_eq!(canon("GET", "/a?", &["a.com"]).unwrap().target(), "/a?");
        assert_eq!(canon("GET", "/a", &["a.com"]).unwrap().query, None);
    }

    #[test]
    fn query_with_space_or_control_is_refused() {
        for bad in ["/a?b c", "/a?\0", "/a?\u{e9}", "/a?\x7f"] {
            assert_eq!(
                canon("GET", bad, &["a.com"]),
                Err(Refusal::InvalidQuery),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn canonical_request_is_a_fixed_point() {
        for (m, t, h) in [
            ("GET", "//%61dmin/x/?q=%2f", "A.com.:81"),
            ("PROPFIND", "http://B.com/%7euser/", "ignored"),
            ("OPTIONS", "*", "[0::1]"),
        ] {
            let first = canon(m, t, &[h]).unwrap();
            let header = first.host_header().unwrap();
            let again = canon(&first.method, &first.target(), &[&header]).unwrap();
            assert_eq!(again.host, first.host);
            assert_eq!(again.port, first.port);
            assert_eq!(again.path, first.path);
            assert_eq!(again.query, first.query);
            assert_eq!(again.target(), first.target());
        }
    }
}
