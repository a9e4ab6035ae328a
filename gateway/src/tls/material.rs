//! The HTTPS listener's certificate material: certificates chosen by SNI (exact names,
//! `*.example.com` wildcards, a default) and the client-certificate policy, loaded from files
//! and swapped whole on reload by `listener::handshake::CertStore`.
//!
//! rustls's own resolvers match exact names only; [`Material`] adds wildcard certificates and
//! a default, so it is written here.

use crate::telemetry::metrics::METRICS;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tollgate_config::{ClientAuth, Problem, Tls};
use x509_cert::der::Decode;

/// One certificate with its key, ready for handshakes.
pub(crate) struct Certificate {
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
    pub(crate) client: Option<(ClientAuth, Arc<dyn ClientCertVerifier>)>,
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

    pub(crate) fn resolve(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
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
#[allow(
    clippy::disallowed_methods,
    reason = "snapshot compilation, off the workers"
)]
pub(crate) fn certificate(
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

#[allow(
    clippy::disallowed_methods,
    reason = "snapshot compilation, off the workers"
)]
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
