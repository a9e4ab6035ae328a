//! The commands beside `run`: `explain` (what the gateway would decide for a request),
//! `token` (mint and verify tokens, the conformance runner's entry), `apikey` (new API keys), `probe` (the container
//! health check) and `echo` (a test upstream). The top room: it may import every other.

pub mod apikey;
pub mod echo;
pub mod explain;
pub mod probe;
pub mod token;
