//! Certificates and what a TLS handshake leaves: the HTTPS listener's [`material`], the
//! [`facts`] a request reads of its connection, and the [`pem`] files of outbound
//! connections. The handshake itself runs in `listener::handshake`. Imports only
//! `telemetry` and `util`.

pub mod facts;
pub mod material;
pub mod pem;
