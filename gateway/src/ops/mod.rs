//! Running the gateway: loading and reloading the config (one snapshot, swapped whole),
//! signals, graceful upgrade and shutdown, the log writer, and the admin listener (metrics,
//! health, readiness, the gateway's public keys, the Shared Signals push, and the read-only
//! admin view: [`view`]). Imports the listener and everything below.

pub mod admin;
pub mod serve;
pub mod view;
