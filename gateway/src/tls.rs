//! The HTTPS listener: certificates chosen by SNI, client certificates, and what a request
//! learns of its connection's TLS.
//!
//! The rustls server config is built once, at start ([`CertStore::acceptor`]); what it
//! resolves and verifies with lives in a [`Material`] behind an `ArcSwap`, so a reload or a
//! changed certificate file swaps certificates, keys and client CAs for new handshakes
//! while open connections keep the ones they were made with. rustls's own resolvers match
//! exact names only; [`Material`] adds wildcard certificates (`*.example.com`) and a
//! default, so it is written here.
//!
//! tollgate runs the handshake itself ([`crate::conn`]), after the connection caps and under
//! `handshake_timeout`, and counts each failure by a bounded reason.

use crate::metrics::METRICS;
use arc_swap::ArcSwap;
use pingora_core::listeners::tls::{Acceptor, TlsSettings};
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tollgate_config::{ClientAuth, ClientCertHeaders, Problem, Tls};
use x509_cert::der::Decode;

/// One certificate with its key, ready for handshakes.
struct Certificate {
    key: Arc<CertifiedKey>,
    /// Its DNS names, lower case (`*.example.com` for a wildcard).
    names: Vec<String>,
    /// `notAfter`, seconds since the epoch.
    not_after: u64,
}

/// What the HTTPS listener serves and checks with: one config's certificates and client CAs.
pub struct Material {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the name a wildcard stands for the first label of (`example.com` for `*.example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    client: Option<(ClientAuth, Arc<dyn ClientCertVerifier>)>,
    /// The first DNS name of each certificate (its label in metrics) and its `notAfter`.
    expiry: Vec<(String, u64)>,
    /// Every file read, to notice a change.
    pub files: Vec<PathBuf>,
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("names", &self.expiry)
            .finish()
    }
}

fn problem(path: String, message: impl Into<String>) -> Problem {
    Problem {
        path,
        message: message.into(),
    }
}

impl Material {
    /// Reads and checks every file `tls` names; every problem is reported with its path.
    pub fn load(tls: &Tls) -> Result<Material, Vec<Problem>> {
        pingora_rustls::install_default_crypto_provider();
        let mut problems = Vec::new();
        let mut certificates = Vec::new();
        let mut files = Vec::new();
        for (i, files_of) in tls.certificates.iter().enumerate() {
            let base = format!("listen.tls.certificates[{i}]");
            files.push(PathBuf::from(&files_of.cert));
            files.push(PathBuf::from(&files_of.key));
            match certificate(&files_of.cert, &files_of.key, true) {
                Ok(c) => certificates.push(c),
                Err((field, message)) => problems.push(problem(format!("{base}.{field}"), message)),
            }
        }
        let client = match (&tls.client_ca, tls.client_auth) {
            (Some(ca), mode @ (ClientAuth::Optional | ClientAuth::Required)) => {
                files.push(PathBuf::from(ca));
                match client_verifier(ca, mode) {
                    Ok(v) => Some((mode, v)),
                    Err(message) => {
                        problems.push(problem("listen.tls.client_ca".into(), message));
                        None
                    }
                }
            }
            _ => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let Some(first) = certificates.first() else {
            return Err(vec![problem(
                "listen.tls.certificates".into(),
                "no certificate",
            )]);
        };
        let mut material = Material {
            default: first.key.clone(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            client,
            expiry: Vec::new(),
            files,
            handshake_timeout: tls.handshake_timeout,
        };
        // The first certificate listing a name serves it.
        for c in &certificates {
            for name in &c.names {
                match name.strip_prefix("*.") {
                    Some(parent) => material.wildcard.entry(parent.to_owned()),
                    None => material.exact.entry(name.clone()),
                }
                .or_insert_with(|| c.key.clone());
            }
            let label = c.names.first().cloned().unwrap_or_else(|| "unnamed".into());
            material.expiry.push((label, c.not_after));
        }
        Ok(material)
    }

    /// `client_auth: required`.
    pub fn client_auth_required(&self) -> bool {
        matches!(self.client, Some((ClientAuth::Required, _)))
    }

    fn resolve(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(key) = self.wildcard.get(parent) {
                return key.clone();
            }
        }
        self.default.clone()
    }

    /// Sets `tollgate_tls_certificate_expiry_timestamp_seconds` to these certificates.
    pub fn export_expiry(&self) {
        METRICS.tls_certificate_expiry.reset();
        for (name, not_after) in &self.expiry {
            METRICS
                .tls_certificate_expiry
                .with_label_values(&[name])
                .set(*not_after as i64);
        }
    }
}

/// Reads a certificate chain and its key: `Err((field, message))` names the bad file.
fn certificate(
    cert: &str,
    key: &str,
    needs_names: bool,
) -> Result<Certificate, (&'static str, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ("cert", format!("cannot read {cert}: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| ("cert", format!("{cert}: not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(("cert", format!("{cert}: no certificate in the file")));
    };
    let parsed = x509_cert::Certificate::from_der(leaf)
        .map_err(|e| ("cert", format!("{cert}: not an X.509 certificate: {e}")))?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ("key", format!("{key}: no readable private key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| ("key", format!("{key}: unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    certified.keys_match().map_err(|_| {
        (
            "key",
            format!("{key} is not the private key of the certificate in {cert}"),
        )
    })?;
    let names = dns_names(&parsed);
    if needs_names && names.is_empty() {
        return Err((
            "cert",
            format!("{cert}: the certificate has no DNS name (subjectAltName), which SNI needs"),
        ));
    }
    let not_after = parsed
        .tbs_certificate
        .validity
        .not_after
        .to_unix_duration()
        .as_secs();
    Ok(Certificate {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// The DNS names of a certificate's subjectAltName, lower case.
fn dns_names(cert: &x509_cert::Certificate) -> Vec<String> {
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let Some(extensions) = &cert.tbs_certificate.extensions else {
        return Vec::new();
    };
    let san_oid = x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.29.17");
    extensions
        .iter()
        .filter(|e| e.extn_id == san_oid)
        .filter_map(|e| SubjectAltName::from_der(e.extn_value.as_bytes()).ok())
        .flat_map(|san| san.0)
        .filter_map(|n| match n {
            GeneralName::DnsName(d) => Some(d.as_str().to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn client_verifier(ca: &str, mode: ClientAuth) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("cannot read {ca}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{ca}: not a PEM certificate bundle: {e}"))?;
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("{ca}: not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{ca}: no certificate in the file"));
    }
    let builder = WebPkiClientVerifier::builder(Arc::new(roots));
    let builder = match mode {
        ClientAuth::Optional => builder.allow_unauthenticated(),
        _ => builder,
    };
    builder.build().map_err(|e| format!("{ca}: {e}"))
}

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

/// A verified client certificate, as requests on its connection see it.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// RFC 4514.
    pub subject: String,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256_hex: String,
    /// The same hash, base64url without padding: RFC 8705's `x5t#S256`.
    pub thumbprint: String,
    /// `notAfter`, seconds since the epoch: past it, requests no longer see the certificate
    /// (a kept-alive connection outlives no certificate).
    pub not_after: u64,
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

/// The handshake's outcome for client certificates, kept in the connection's TLS digest.
#[derive(Debug)]
pub enum ClientCertificate {
    /// Verified now: what requests see.
    Verified(PeerCertificate),
    /// Presented but refused now (resumed with a CA since removed, or expired), or presented
    /// while the listener no longer asks for certificates.
    Refused,
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
        let hash = ring::digest::digest(&ring::digest::SHA256, leaf);
        let sha256_hex = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let thumbprint = tollgate_jwt::codec::b64url_encode(hash.as_ref());
        Some(Arc::new(ClientCertificate::Verified(PeerCertificate {
            subject,
            sha256_hex,
            thumbprint,
            not_after,
        })))
    }
}

/// What a request knows of its connection's TLS.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    pub tls: Option<Arc<SslDigest>>,
    /// `h2` or `http/1.1` on TLS.
    pub alpn: Option<&'static str>,
}

impl Transport {
    pub fn version(&self) -> Option<&str> {
        self.tls.as_deref().map(|d| &*d.version)
    }

    /// The verified client certificate, if the client presented one.
    pub fn peer_certificate(&self) -> Option<&PeerCertificate> {
        match self.tls.as_deref()?.extension.get::<ClientCertificate>()? {
            ClientCertificate::Verified(peer) if crate::clock::unix_seconds() < peer.not_after => {
                Some(peer)
            }
            _ => None,
        }
    }
}

/// The identity headers of a client certificate, set on the upstream request.
pub fn forward_peer_certificate(
    names: &ClientCertHeaders,
    transport: &Transport,
    upstream: &mut pingora_http::RequestHeader,
) -> pingora_core::Result<()> {
    let Some(peer) = transport.peer_certificate() else {
        return Ok(());
    };
    if let Some(h) = &names.subject {
        // RFC 4514 text may hold non-ASCII (UTF8String attributes): such bytes are escaped.
        let value: String = peer
            .subject
            .chars()
            .flat_map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    vec![c]
                } else {
                    let mut buf = [0u8; 4];
                    c.encode_utf8(&mut buf)
                        .bytes()
                        .flat_map(|b| format!("\\{b:02x}").chars().collect::<Vec<_>>())
                        .collect()
                }
            })
            .collect();
        upstream.insert_header(h.clone(), value)?;
    }
    if let Some(h) = &names.sha256 {
        upstream.insert_header(h.clone(), peer.sha256_hex.as_str())?;
    }
    Ok(())
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

/// A CA bundle in the form Pingora's connector takes (`PeerOptions::ca`), for upstreams
/// and `jwks_uri` fetches.
pub fn load_ca(path: &str) -> Result<Arc<pingora_core::protocols::tls::CaType>, String> {
    use pingora_core::utils::tls::{parse_x509, WrappedX509};
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate in the file"));
    }
    let mut wrapped = Vec::with_capacity(certs.len());
    for c in certs {
        // Pingora's wrapper panics on what its parser refuses: that parser checks first.
        if x509_parser::parse_x509_certificate(c.as_ref()).is_err() {
            return Err(format!("{path}: not an X.509 certificate"));
        }
        wrapped.push(WrappedX509::new(c.to_vec(), parse_x509));
    }
    Ok(Arc::from(wrapped.into_boxed_slice()))
}

/// A client certificate chain and key for connections to upstreams.
pub fn load_client_cert(
    cert: &str,
    key: &str,
) -> Result<Arc<pingora_core::utils::tls::CertKey>, String> {
    // Readable, and the key is the certificate's.
    certificate(cert, key, false).map_err(|(_, message)| message)?;
    let chain: Vec<Vec<u8>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read {cert}: {e}"))?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert}: {e}"))?;
    for der in &chain {
        if x509_parser::parse_x509_certificate(der).is_err() {
            return Err(format!("{cert}: not an X.509 certificate"));
        }
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{key}: no readable private key: {e}"))?;
    Ok(Arc::new(pingora_core::utils::tls::CertKey::new(
        chain,
        private.secret_der().to_vec(),
    )))
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
