//! The `listen` section: the plain and HTTPS listeners and the HTTPS listener's TLS settings.
//!
//! Certificate, key and CA files are only named here (this crate does no I/O); the gateway
//! reads and checks them when it compiles the config, so `check` still refuses a bad file.

use crate::model::*;
use crate::problems::{duration, header_name, Problems};
use crate::raw::{RawHsts, RawListen, RawTls};
use std::net::SocketAddr;
use std::time::Duration;

/// Headers a client certificate cannot be forwarded in: those identity claims cannot use.
use crate::auth::RESERVED_HEADERS as RESERVED;

pub(crate) fn listen(
    raw: &RawListen,
    parse_addr: impl Fn(&Option<String>, &str, &str, &mut Problems) -> SocketAddr,
    problems: &mut Problems,
) -> Listen {
    let http = parse_addr(&raw.http, "listen.http", "0.0.0.0:8080", problems);
    let https = raw
        .https
        .as_ref()
        .map(|_| parse_addr(&raw.https, "listen.https", "0.0.0.0:8443", problems));
    let tls = raw.tls.as_ref().map(|t| tls(t, problems));
    match (&https, &tls) {
        (Some(_), None) => problems.add(
            "listen.tls",
            "listen.https needs listen.tls (at least one certificate)",
        ),
        (None, Some(_)) => {
            problems.add("listen.https", "listen.tls is set: give the HTTPS address")
        }
        _ => {}
    }
    if https.is_some_and(|a| a.port() == http.port()) {
        problems.add("listen.https", "must use another port than listen.http");
    }
    Listen { http, https, tls }
}

fn tls(raw: &RawTls, problems: &mut Problems) -> Tls {
    let base = "listen.tls";
    let certificates: Vec<CertificateFiles> = raw
        .certificates
        .iter()
        .flatten()
        .map(|c| CertificateFiles {
            cert: c.cert.clone(),
            key: c.key.clone(),
        })
        .collect();
    if certificates.is_empty() {
        problems.add(
            format!("{base}.certificates"),
            "list at least one { cert, key } pair; the first is the default",
        );
    }
    let client_auth = match raw.client_auth.as_deref() {
        None | Some("none") => ClientAuth::None,
        Some("optional") => ClientAuth::Optional,
        Some("required") => ClientAuth::Required,
        Some(other) => {
            problems.add(
                format!("{base}.client_auth"),
                format!("expected none, optional or required, found {other:?}"),
            );
            ClientAuth::None
        }
    };
    match (client_auth, &raw.client_ca) {
        (ClientAuth::None, Some(_)) => problems.add(
            format!("{base}.client_ca"),
            "only applies with client_auth: optional or required",
        ),
        (ClientAuth::Optional | ClientAuth::Required, None) => problems.add(
            format!("{base}.client_ca"),
            "client_auth needs the CA bundle client certificates must chain to",
        ),
        _ => {}
    }
    let mut client_cert_headers = ClientCertHeaders::default();
    if let Some(h) = &raw.client_cert_headers {
        let mut one = |name: &Option<String>, field: &str| -> Option<http::HeaderName> {
            let name = name.as_deref()?;
            let path = format!("{base}.client_cert_headers.{field}");
            match header_name(name) {
                Some(n) if RESERVED.contains(&n.as_str()) => {
                    problems.add(path, format!("{name} is reserved"));
                    None
                }
                Some(n) => http::HeaderName::try_from(n).ok(),
                None => {
                    problems.add(path, format!("{name:?} is not a valid header name"));
                    None
                }
            }
        };
        client_cert_headers.subject = one(&h.subject, "subject");
        client_cert_headers.sha256 = one(&h.sha256, "sha256");
        if client_cert_headers.subject.is_some()
            && client_cert_headers.subject == client_cert_headers.sha256
        {
            problems.add(
                format!("{base}.client_cert_headers"),
                "subject and sha256 need different headers",
            );
        }
    }
    Tls {
        certificates,
        client_auth,
        client_ca: raw.client_ca.clone(),
        client_cert_headers,
        redirect_http: raw.redirect_http.unwrap_or(false),
        hsts: raw.hsts.as_ref().map(|h| hsts(h, problems)),
        watch: duration(
            &raw.watch,
            &format!("{base}.watch"),
            Duration::from_secs(10),
            problems,
        ),
        handshake_timeout: duration(
            &raw.handshake_timeout,
            &format!("{base}.handshake_timeout"),
            Duration::from_secs(10),
            problems,
        ),
    }
}

/// `Strict-Transport-Security` (RFC 6797 §6.1) from its parts.
fn hsts(raw: &RawHsts, problems: &mut Problems) -> String {
    let path = "listen.tls.hsts.max_age";
    let max_age = duration(&Some(raw.max_age.clone()), path, Duration::ZERO, problems);
    let mut value = format!("max-age={}", max_age.as_secs());
    if raw.include_subdomains.unwrap_or(false) {
        value.push_str("; includeSubDomains");
    }
    if raw.preload.unwrap_or(false) {
        if max_age < Duration::from_secs(31_536_000) || raw.include_subdomains != Some(true) {
            problems.add(
                "listen.tls.hsts.preload",
                "preload lists require max_age of at least 365d and include_subdomains: true",
            );
        }
        value.push_str("; preload");
    }
    value
}
