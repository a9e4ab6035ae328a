//! tollgate's configuration: one YAML file, read in two steps.
//!
//! [`parse`] reads the YAML into raw serde types that refuse unknown keys (`raw`), one
//! section and one list entry at a time so that a mistake in one place does not hide the
//! others; `validate` then resolves defaults, durations and references into a typed, ready
//! [`Config`]. Every problem carries its YAML path, and all of them are reported together.
//! This crate does no I/O: it takes the file's text.
//!
//! ```
//! let yaml = r#"
//! upstreams:
//!   echo: { backends: [{ addr: "127.0.0.1:9000" }] }
//! routes:
//!   - { name: all, path: /, upstream: billing }
//! "#;
//! let err = tollgate_config::parse(yaml).unwrap_err();
//! assert_eq!(err.to_string(), "routes[0].upstream: unknown upstream \"billing\"");
//! ```

mod auth;
mod ext_authz;
mod http;
mod limits;
mod model;
mod problems;
mod raw;
mod rewrite;
mod routes;
mod schema;
mod stores;
mod tls;
mod upstreams;
mod validate;

pub use model::*;
pub use problems::fetch_url_problem;
pub use raw::SECTIONS;
pub use schema::schema;

/// Parses and validates a config file's text.
pub fn parse(yaml: &str) -> Result<Config, ConfigError> {
    validate::parse(yaml)
}
