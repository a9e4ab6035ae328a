//! What a request learns of its connection's TLS: the version, ALPN and the verified client
//! certificate the handshake left (see `listener::handshake`), and the headers that forward
//! that certificate upstream.

use pingora_core::protocols::tls::SslDigest;
use std::sync::Arc;
use tollgate_config::ClientCertHeaders;

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

/// The handshake's outcome for client certificates, kept in the connection's TLS digest.
#[derive(Debug)]
pub enum ClientCertificate {
    /// Verified now: what requests see.
    Verified(PeerCertificate),
    /// Presented but refused now (resumed with a CA since removed, or expired), or presented
    /// while the listener no longer asks for certificates.
    Refused,
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
            ClientCertificate::Verified(peer)
                if crate::util::clock::unix_seconds() < peer.not_after =>
            {
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
