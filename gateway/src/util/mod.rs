//! Small tools with no knowledge of the gateway: the clock, SHA-256 digests, the one file
//! watcher, the one cookie parser, the one outbound HTTP call, secrets taken out of what is
//! shown (`redact`), the one connection to a shared Redis store (`store`), the steps a
//! traced request records (`span`). Imports nothing of the crate outside `util`.

pub mod clock;
pub mod cookie;
pub mod digest;
pub mod outbound;
pub mod redact;
pub mod span;
pub mod store;
pub mod watch;
