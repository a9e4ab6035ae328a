//! PEM files for connections the gateway makes: CA bundles and client certificates for
//! upstreams and for identity providers' endpoints.

use crate::tls::material::certificate;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// A CA bundle in the form Pingora's connector takes (`PeerOptions::ca`), for upstreams
/// and `jwks_uri` fetches.
#[allow(
    clippy::disallowed_methods,
    reason = "snapshot compilation, off the workers"
)]
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
#[allow(
    clippy::disallowed_methods,
    reason = "snapshot compilation, off the workers"
)]
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
