//! The last step of authentication: a verified token held to what carried it. After the
//! cache as before it, every time: a token bound to a client certificate (RFC 8705 §3,
//! `cnf.x5t#S256`) is good only on a connection that verified that certificate, and a
//! DPoP-bound token (RFC 9449, `cnf.jkt`) only with a fresh proof of its key for this
//! request ([`dpop::check`]).

use crate::identity::dpop::{self, DpopRefusal, Scheme};
use crate::identity::keys::Provider;
use crate::limits::{Claims, Stores};
use crate::tls::facts::PeerCertificate;
use pingora_http::RequestHeader;
use tollgate_config::{DpopMode, DpopSettings};

/// How a token arrived: the request, the token and its scheme, the connection's verified
/// client certificate, and whether the request came over HTTPS (for the proof's `htu`).
#[derive(Clone, Copy)]
pub struct Carrier<'r> {
    pub req: &'r RequestHeader,
    pub token: &'r str,
    pub scheme: Scheme,
    pub peer: Option<&'r PeerCertificate>,
    pub https: bool,
}

/// What the route asks beyond the provider: a certificate-bound token, and DPoP (`None`
/// when the route reads no `Authorization: DPoP`).
#[derive(Clone, Copy)]
pub struct Demands {
    pub certificate: bool,
    pub dpop: Option<DpopMode>,
}

/// Whether the token `claims` (verified for `provider`) may be used the way it came.
/// A certificate-binding failure is a [`DpopRefusal::Token`]: both are 401 `invalid_token`
/// with reason `binding`.
pub async fn check(
    carrier: Carrier<'_>,
    claims: &Claims,
    provider: &Provider,
    demands: Demands,
    (settings, nonces): (&DpopSettings, Option<&dpop::Nonces>),
    stores: &Stores,
    record: bool,
) -> Result<(), DpopRefusal> {
    let must_bind = provider.require_certificate_binding || demands.certificate;
    certificate_binding(claims, must_bind, carrier.peer).map_err(DpopRefusal::Token)?;
    let Some(route_dpop) = demands.dpop else {
        return Ok(());
    };
    // Boxed: its Redis round trip's future would otherwise enlarge every request's, DPoP
    // or not.
    Box::pin(dpop::check(
        carrier.req,
        carrier.token,
        claims,
        carrier.scheme,
        provider.dpop.max(route_dpop),
        &dpop::request_htus(carrier.req, carrier.https, &settings.public_origins),
        settings,
        nonces,
        stores,
        record,
        crate::util::clock::unix_seconds(),
    ))
    .await
}

/// RFC 8705 §3: a token whose `cnf` claim names a certificate thumbprint (`x5t#S256`) is
/// good only on a connection whose verified client certificate has that thumbprint; with
/// `required`, a token without one is refused too.
fn certificate_binding(
    claims: &Claims,
    required: bool,
    peer: Option<&PeerCertificate>,
) -> Result<(), &'static str> {
    let bound = claims
        .get("cnf")
        .and_then(|c| c.as_object())
        .and_then(|c| c.get("x5t#S256"));
    match (bound, peer) {
        (None, _) if !required => Ok(()),
        (None, _) => Err("the token must be bound to the client certificate (cnf.x5t#S256)"),
        (Some(serde_json::Value::String(t)), Some(peer)) if *t == peer.thumbprint => Ok(()),
        (Some(_), Some(_)) => Err("the token is bound to another client certificate"),
        (Some(_), None) => {
            Err("the token is bound to a client certificate the connection did not present")
        }
    }
}
