//! Connections before they are requests: the connection guard (per-listener and per-client
//! caps, header and idle timeouts, canned refusals for what never becomes a request) and the
//! TLS handshake (certificate resolution by SNI, client-certificate capture, failure reasons).
//! Imports `request` (the runtime snapshot, the one refusal mapping) and the rooms below it.

pub mod conn;
pub mod handshake;
