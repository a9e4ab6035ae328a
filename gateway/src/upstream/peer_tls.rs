//! TLS toward a cluster's backends: the CA and client certificate read once per build, the
//! SNI and verification each connection gets, and a fingerprint of the files so that a
//! health check knows when its TLS changed.

use pingora_core::protocols::tls::CaType;
use pingora_core::utils::tls::CertKey;
use std::sync::Arc;
use tollgate_config::{Problem, UpstreamTls};

/// TLS toward a cluster's backends, its files read once per build.
#[derive(Clone)]
pub(crate) struct PeerTls {
    pub(crate) config: UpstreamTls,
    pub(crate) ca: Option<Arc<CaType>>,
    pub(crate) client: Option<Arc<CertKey>>,
    /// SHA-256 over the CA and client files' bytes: health state is kept across a reload
    /// only while these are the same.
    pub(crate) fingerprint: [u8; 32],
}

impl PeerTls {
    #[allow(
        clippy::disallowed_methods,
        reason = "snapshot compilation, off the workers"
    )]
    pub(crate) fn load(upstream: &str, config: &UpstreamTls) -> Result<PeerTls, Problem> {
        let base = format!("upstreams.{upstream}.tls");
        let mut files: Vec<Vec<u8>> = Vec::new();
        let mut read = |path: &str| {
            if let Ok(bytes) = std::fs::read(path) {
                files.push(bytes);
            }
        };
        let ca = match &config.ca_file {
            Some(path) => {
                read(path);
                Some(crate::tls::pem::load_ca(path).map_err(|message| Problem {
                    path: format!("{base}.ca_file"),
                    message,
                })?)
            }
            None => None,
        };
        let client = match &config.client_cert {
            Some((cert, key)) => {
                read(cert);
                read(key);
                Some(
                    crate::tls::pem::load_client_cert(cert, key).map_err(|message| Problem {
                        path: format!("{base}.client_cert"),
                        message,
                    })?,
                )
            }
            None => None,
        };
        let parts: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        let fingerprint = crate::util::digest::sha256(&parts);
        Ok(PeerTls {
            config: config.clone(),
            ca,
            client,
            fingerprint,
        })
    }

    /// The SNI for a backend configured as `addr` (`host:port`): `tls.sni`, else its host
    /// when that is a name (an IP backend without `sni` was refused by validation unless
    /// `verify: false`).
    pub(crate) fn sni_for(&self, addr: &str) -> String {
        if let Some(sni) = &self.config.sni {
            return sni.clone();
        }
        if addr.starts_with("srv:") {
            // Validation asked for `sni` unless `verify: false`.
            return String::new();
        }
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            String::new()
        } else {
            host.to_owned()
        }
    }
}
