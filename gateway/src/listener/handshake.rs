//! The TLS handshake the listener runs: the rustls server config built once at start
//! ([`CertStore::acceptor`]), resolving and verifying with the [`Material`] behind an
//! `ArcSwap`, so a reload or a changed certificate file swaps certificates, keys and client
//! CAs for new handshakes while open connections keep the ones they were made with.
//!
//! tollgate runs the handshake itself ([`crate::listener::conn`]), after the connection caps
//! and under `handshake_timeout`, and counts each failure by a bounded reason
//! ([`FAILURE_REASONS`], registered at zero by [`register_failure_reasons`]).

use crate::telemetry::metrics::METRICS;
use crate::tls::facts::{ClientCertificate, PeerCertificate};
use crate::tls::material::Material;
use arc_swap::ArcSwap;
use pingora_core::listeners::tls::{Acceptor, TlsSettings};
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;
use x509_cert::der::Decode;

/// The HTTPS listener's certificates and client-certificate policy, swapped whole on reload.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<Material>,
}

impl CertStore {
    pub fn new(material: Arc<Material>) -> Arc<CertStore> {
        material.export_expiry();
        Arc::new(CertStore {
            current: ArcSwap::new(material),
        })
    }

    /// New handshakes use `material`; open connections keep what they were made with.
    pub fn swap(&self, material: Arc<Material>) {
        material.export_expiry();
        self.current.store(material);
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Material>> {
        self.current.load()
    }

    /// The acceptor of the HTTPS listener: TLS 1.2 and 1.3, h2 then http/1.1 by ALPN,
    /// certificates and client verification from this store.
    pub fn acceptor(self: &Arc<Self>) -> Acceptor {
        let mut settings = TlsSettings::with_callbacks(Box::new(Capture {
            store: Arc::downgrade(self),
        }))
        .expect("TLS settings with callbacks are infallible");
        settings.set_cert_resolver(self.clone());
        settings.set_client_cert_verifier(self.clone());
        settings.enable_h2();
        settings.build()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().resolve(hello.server_name()))
    }
}

fn no_client_auth() -> rustls::Error {
    rustls::Error::General("client certificates are not asked for".into())
}

impl ClientCertVerifier for CertStore {
    fn offer_client_auth(&self) -> bool {
        self.current.load().client.is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current.load().client_auth_required()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints are optional (RFC 8446 §4.2.4) and a borrowed slice cannot outlive a swap.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.current.load().client {
            Some((_, v)) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(no_client_auth()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.current.load().client {
            Some((_, v)) => v.verify_tls12_signature(message, cert, dss),
            None => Err(no_client_auth()),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.current.load().client {
            Some((_, v)) => v.verify_tls13_signature(message, cert, dss),
            None => Err(no_client_auth()),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match &self.current.load().client {
            Some((_, v)) => v.supported_verify_schemes(),
            // Only asked for after `offer_client_auth`: here a reload swapped in between.
            None => rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes(),
        }
    }
}

/// The post-handshake callback: the connection's client certificate, checked against the
/// listener's settings *now* and read once.
///
/// rustls resumes a session (TLS 1.2 session IDs, TLS 1.3 tickets) with the certificate the
/// session was made with, without asking the verifier again. So the chain is verified here
/// on every handshake, with the current client CAs and the current time: a certificate
/// whose CA was removed by a reload, or which expired since, does not come back through a
/// saved session, and with `client_auth: none` no certificate is exposed at all.
struct Capture {
    store: std::sync::Weak<CertStore>,
}

#[async_trait::async_trait]
impl TlsAccept for Capture {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let chain = tls.peer_cert_chain_der()?;
        let (leaf, intermediates) = chain.split_first()?;
        let store = self.store.upgrade()?;
        let material = store.load();
        let verified = match &material.client {
            Some((_, verifier)) => verifier
                .verify_client_cert(leaf, intermediates, UnixTime::now())
                .is_ok(),
            None => false,
        };
        if !verified {
            return Some(Arc::new(ClientCertificate::Refused));
        }
        let parsed = x509_cert::Certificate::from_der(leaf).ok();
        let subject = parsed
            .as_ref()
            .map(|c| c.tbs_certificate.subject.to_string())
            .unwrap_or_default();
        let not_after = parsed.as_ref().map_or(0, |c| {
            c.tbs_certificate
                .validity
                .not_after
                .to_unix_duration()
                .as_secs()
        });
        let hash = crate::util::digest::sha256(&[leaf]);
        let sha256_hex = crate::util::digest::hex(&hash);
        let thumbprint = tollgate_jwt::codec::b64url_encode(&hash);
        Some(Arc::new(ClientCertificate::Verified(PeerCertificate {
            subject,
            sha256_hex,
            thumbprint,
            not_after,
        })))
    }
}

/// Why a handshake failed, as a bounded metric label.
pub fn failure_reason(e: &pingora_core::Error) -> &'static str {
    // Pingora 0.9 keeps only the text of rustls's error (`explain_err` drops the cause), so
    // the reason is read from it, against rustls's own Display of each kind: a rustls
    // upgrade that rewords one changes a label to `other`, not a request's outcome.
    let text = e.context.as_ref().map(|c| c.as_str()).unwrap_or("");
    reason_in_text(text)
}

fn reason_in_text(text: &str) -> &'static str {
    use rustls::{
        AlertDescription, CertificateError, Error as E, PeerIncompatible, PeerMisbehaved,
    };
    // The part of a Display before its variable detail (`invalid peer certificate: ...`).
    let stem = |e: E| {
        let t = e.to_string();
        t.split(':').next().unwrap_or_default().to_owned()
    };
    let kinds: [(String, &'static str); 8] = [
        (stem(E::NoCertificatesPresented), "no_client_certificate"),
        (
            stem(E::InvalidCertificate(CertificateError::UnknownIssuer)),
            "bad_client_certificate",
        ),
        (
            stem(E::PeerIncompatible(PeerIncompatible::Tls12NotOffered)),
            "incompatible",
        ),
        (
            stem(E::AlertReceived(AlertDescription::HandshakeFailure)),
            "alert_received",
        ),
        (
            stem(E::PeerMisbehaved(PeerMisbehaved::MissingKeyShare)),
            "protocol",
        ),
        (
            stem(E::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType,
            )),
            "protocol",
        ),
        (
            stem(E::InappropriateMessage {
                expect_types: Vec::new(),
                got_type: rustls::ContentType::Alert,
            }),
            "protocol",
        ),
        (stem(E::DecryptError), "protocol"),
    ];
    if let Some((_, reason)) = kinds
        .iter()
        .find(|(needle, _)| !needle.is_empty() && text.contains(needle.as_str()))
    {
        return reason;
    }
    let closed = [
        "unexpected end of file",
        "eof",
        "reset by peer",
        "broken pipe",
    ];
    let lower = text.to_ascii_lowercase();
    if closed.iter().any(|c| lower.contains(c)) {
        return "closed";
    }
    "other"
}

/// Every reason [`failure_reason`] gives, for metrics that start at zero.
pub const FAILURE_REASONS: &[&str] = &[
    "timeout",
    "closed",
    "no_client_certificate",
    "bad_client_certificate",
    "incompatible",
    "alert_received",
    "protocol",
    "other",
];

/// Starts `tollgate_tls_handshake_failures_total` at zero for every reason, so that alerts
/// and rates see each series before its first failure.
pub fn register_failure_reasons() {
    for reason in FAILURE_REASONS {
        METRICS.tls_handshake_failures.with_label_values(&[reason]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts Pingora 0.9 reports for failed handshakes (as seen in its errors) map to
    /// their reasons.
    #[test]
    fn handshake_failures_are_labelled_by_what_rustls_reported() {
        let cases = [
            (
                "tls connect error: peer sent no certificates",
                "no_client_certificate",
            ),
            (
                "tls connect error: invalid peer certificate: UnknownIssuer",
                "bad_client_certificate",
            ),
            (
                "tls connect error: peer is incompatible: NoCipherSuitesInCommon",
                "incompatible",
            ),
            (
                "tls connect error: received fatal alert: BadCertificate",
                "alert_received",
            ),
            (
                "tls connect error: received corrupt message of type InvalidContentType",
                "protocol",
            ),
            ("tls connect error: unexpected end of file", "closed"),
            ("tls connect error: something new", "other"),
        ];
        for (text, reason) in cases {
            assert_eq!(reason_in_text(text), reason, "{text}");
            assert!(FAILURE_REASONS.contains(&reason));
        }
    }
}
