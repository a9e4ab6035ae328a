//! The YAML file as written: serde types that refuse unknown keys, and nothing more.
//!
//! Defaults and cross-references are not settled here; `validate` does that, so that every
//! problem can be reported with its path at once.

use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, BTreeSet};

/// A duration as written. Numbers are accepted here so that `interval: 5` gets the
/// helpful "write 5s" message from validation rather than a type error.
#[derive(Debug, Clone)]
pub struct DurationText(pub String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Int(i64),
            Float(f64),
        }
        match Scalar::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration such as \"5s\" or \"250ms\"")
        })? {
            Scalar::Text(s) => Ok(DurationText(s)),
            Scalar::Int(i) => Ok(DurationText(i.to_string())),
            Scalar::Float(f) => Ok(DurationText(f.to_string())),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub threads: Option<usize>,
    pub work_stealing: Option<bool>,
    pub grace_period: Option<DurationText>,
    pub graceful_shutdown_timeout: Option<DurationText>,
    pub upstream_keepalive_pool_size: Option<usize>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub watch_config: Option<DurationText>,
    pub error_log: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub http: Option<RawHttp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub http: Option<String>,
    pub https: Option<String>,
    pub tls: Option<RawTls>,
}

/// `listen.tls`: the HTTPS listener's certificates and client-certificate policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certificates: Option<Vec<RawCertificate>>,
    pub client_auth: Option<String>,
    pub client_ca: Option<String>,
    pub client_cert_headers: Option<RawClientCertHeaders>,
    pub redirect_http: Option<bool>,
    pub hsts: Option<RawHsts>,
    pub watch: Option<DurationText>,
    pub handshake_timeout: Option<DurationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCertHeaders {
    pub subject: Option<String>,
    pub sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHsts {
    pub max_age: DurationText,
    pub include_subdomains: Option<bool>,
    pub preload: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub level: Option<String>,
    pub access_log: Option<bool>,
    pub access_log_sample: Option<f64>,
    pub subject: Option<String>,
    pub subject_salt: Option<String>,
    pub buffer_lines: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub addr: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expected_status: Option<u16>,
    pub interval: Option<DurationText>,
    pub timeout: Option<DurationText>,
    pub healthy_threshold: Option<usize>,
    pub unhealthy_threshold: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub backends: Vec<RawBackend>,
    pub lb: Option<String>,
    pub hash_on: Option<String>,
    pub health_check: Option<RawHealthCheck>,
    pub connect_timeout: Option<DurationText>,
    pub read_timeout: Option<DurationText>,
    pub write_timeout: Option<DurationText>,
    pub idle_timeout: Option<DurationText>,
    pub retries: Option<u32>,
    pub protocol: Option<String>,
    pub h2_streams: Option<usize>,
    pub tls: Option<RawUpstreamTls>,
    pub slow_start: Option<DurationText>,
    pub outlier_detection: Option<RawOutlierDetection>,
    pub circuit_breaker: Option<RawCircuitBreaker>,
    pub retry_budget: Option<RawRetryBudget>,
    pub dns: Option<RawDns>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub resolver: Option<String>,
    pub min_ttl: Option<DurationText>,
    pub max_ttl: Option<DurationText>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    pub consecutive_failures: Option<u32>,
    pub success_rate: Option<RawSuccessRate>,
    pub interval: Option<DurationText>,
    pub base_ejection_time: Option<DurationText>,
    pub max_ejection_time: Option<DurationText>,
    pub max_ejected_percent: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSuccessRate {
    pub min_requests: Option<u32>,
    pub threshold: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    pub max_requests: Option<usize>,
    pub max_pending: Option<usize>,
    pub max_connections: Option<usize>,
    pub retry_after: Option<DurationText>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetryBudget {
    pub percent: Option<f64>,
    pub min_retries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub sni: Option<String>,
    pub ca_file: Option<String>,
    pub verify: Option<bool>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub providers: Vec<serde_yaml::Value>,
    pub forward_claims: Option<Vec<RawClaimHeader>>,
    pub cache_size: Option<u64>,
    pub realm: Option<String>,
    pub failed_auth_limit: Option<RawFailedAuthLimit>,
    pub max_verifications_in_flight: Option<usize>,
    pub max_network_waits_in_flight: Option<usize>,
    pub max_network_waits_per_client: Option<usize>,
    pub revocation: Option<RawRevocation>,
    pub signing_keys: Option<RawSigningKeys>,
    pub dpop: Option<RawDpop>,
}

/// `auth.dpop`: how DPoP proofs are checked, for providers and routes that take them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDpop {
    pub max_age: Option<DurationText>,
    pub leeway: Option<DurationText>,
    pub replay_cache_size: Option<usize>,
}

/// `auth.signing_keys`: the gateway's own keys, for `routes[].upstream_token`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigningKeys {
    pub issuer: String,
    pub current: String,
    pub keys: Vec<RawSigningKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigningKey {
    pub kid: String,
    pub file: String,
}

/// `routes[].upstream_token`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamToken {
    pub header: Option<String>,
    pub audience: String,
    pub ttl: Option<DurationText>,
    pub claims: Option<Vec<String>>,
}

/// `auth.revocation`: where the deny list of revoked tokens comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRevocation {
    pub file: Option<String>,
    pub redis: Option<RawRevocationRedis>,
    pub poll: Option<DurationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRevocationRedis {
    pub url: String,
    pub key: Option<String>,
}

/// `auth.failed_auth_limit`: failed authentications allowed per client address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailedAuthLimit {
    pub rate: String,
    pub burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaimHeader {
    pub claim: String,
    pub header: String,
}

/// `audiences: [a, b]` or `audiences: any`. Any other word is kept so that validation can
/// name it; other shapes get one clear message instead of serde's "no variant matched".
#[derive(Debug, Clone)]
pub enum RawAudiences {
    List(Vec<String>),
    Word(String),
}

impl<'de> Deserialize<'de> for RawAudiences {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            List(Vec<String>),
            Word(String),
        }
        match Shape::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a list of audiences, or the word any")
        })? {
            Shape::List(l) => Ok(RawAudiences::List(l)),
            Shape::Word(w) => Ok(RawAudiences::Word(w)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: String,
    /// `jwt` (the default) or `introspection`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub introspection: Option<RawIntrospection>,
    pub issuer: String,
    pub audiences: Option<RawAudiences>,
    pub token_types: Option<Vec<String>>,
    pub leeway: Option<DurationText>,
    pub require_exp: Option<bool>,
    /// An inline JWKS document, written as YAML.
    pub jwks: Option<serde_yaml::Value>,
    pub jwks_file: Option<String>,
    pub jwks_uri: Option<String>,
    pub discovery: Option<RawDiscovery>,
    pub insecure_http: Option<bool>,
    pub ca_file: Option<String>,
    pub hmac_secret_file: Option<String>,
    pub hmac_secret_env: Option<String>,
    pub hmac_alg: Option<String>,
    pub refresh: Option<RawRefresh>,
    pub token_sources: Option<Vec<String>>,
    pub require_certificate_binding: Option<bool>,
    pub dpop: Option<String>,
}

/// `introspection:` of a provider with `type: introspection` (RFC 7662).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    pub endpoint: String,
    pub client_id: String,
    pub client_secret_file: Option<String>,
    pub client_secret_env: Option<String>,
    pub tokens: Option<String>,
    pub timeout: Option<DurationText>,
    pub cache_max_ttl: Option<DurationText>,
    pub negative_cache_ttl: Option<DurationText>,
    pub cache_size: Option<u64>,
    pub failure_threshold: Option<u32>,
    pub open_for: Option<DurationText>,
}

/// `discovery: true` (at the issuer) or `discovery: URL`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawDiscovery {
    On(bool),
    Url(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRefresh {
    pub interval: Option<DurationText>,
    pub min_interval: Option<DurationText>,
    pub max_interval: Option<DurationText>,
    pub unknown_kid_cooldown: Option<DurationText>,
    pub max_stale: Option<DurationText>,
    pub timeout: Option<DurationText>,
    pub file_poll: Option<DurationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub host: Option<String>,
    pub path: String,
    pub path_match: Option<String>,
    pub path_case: Option<String>,
    pub methods: Option<Vec<String>>,
    pub upstream: Option<String>,
    pub upstreams: Option<Vec<RawRouteTarget>>,
    pub mirror: Option<RawMirror>,
    pub retry_on: Option<Vec<serde_yaml::Value>>,
    pub strip_prefix: Option<bool>,
    pub auth: Option<String>,
    pub providers: Option<Vec<String>>,
    pub keep_authorization: Option<bool>,
    pub policy: Option<String>,
    pub rate_limits: Option<Vec<RawLimit>>,
    pub max_body: Option<ByteSize>,
    pub client_certificate: Option<String>,
    pub require_certificate_binding: Option<bool>,
    pub dpop: Option<String>,
    pub upstream_token: Option<RawUpstreamToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteTarget {
    pub name: String,
    pub weight: Option<u32>,
    pub when: Option<RawWhen>,
}

/// `when: { header: {NAME: VALUE}, cookie: {NAME: VALUE}, claim: {NAME: VALUE} }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    pub header: Option<BTreeMap<String, serde_yaml::Value>>,
    pub cookie: Option<BTreeMap<String, serde_yaml::Value>>,
    pub claim: Option<BTreeMap<String, serde_yaml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    pub upstream: String,
    pub percent: Option<f64>,
    pub identity: Option<bool>,
    pub cookies: Option<bool>,
    pub upstream_token: Option<RawUpstreamToken>,
}

/// `key: client_ip` or `key: [claim:tenant, route]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawLimitKey {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    pub name: String,
    pub key: Option<RawLimitKey>,
    pub rate: String,
    pub burst: Option<u32>,
    pub tiers: Option<RawTiers>,
    pub store: Option<String>,
    pub headers: Option<bool>,
    pub ipv6_prefix: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTiers {
    pub claim: String,
    pub values: BTreeMap<String, RawTier>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub rate: String,
    pub burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimiting {
    pub max_local_keys: Option<usize>,
    pub ipv6_prefix: Option<u8>,
    pub redis: Option<RawRedis>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: String,
    pub timeout: Option<DurationText>,
    pub on_store_error: Option<String>,
}

/// Top-level sections, each parsed on its own so that an error in one does not hide the others.
pub const SECTIONS: &[&str] = &[
    "server",
    "listen",
    "metrics",
    "logging",
    "auth",
    "policies",
    "rate_limiting",
    "upstreams",
    "routes",
];

/// The whole file, assembled section by section (see `parse`).
#[derive(Debug, Default)]
pub struct RawConfig {
    pub server: RawServer,
    pub listen: RawListen,
    pub metrics: RawMetrics,
    pub logging: RawLogging,
    pub auth: RawAuth,
    /// Providers in file order with their index; entries that failed to parse are missing.
    pub providers: Vec<(usize, RawProvider)>,
    pub broken_providers: BTreeSet<String>,
    pub policies: BTreeMap<String, tollgate_policy::RawPolicy>,
    pub broken_policies: BTreeSet<String>,
    pub rate_limiting: RawRateLimiting,
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Upstreams present in the file that failed to parse: routes naming them are not
    /// reported again as naming an unknown upstream.
    pub broken_upstreams: BTreeSet<String>,
    /// Routes in file order, with their index in the file (entries that failed to parse are
    /// missing, so indexes may skip).
    pub routes: Vec<(usize, RawRoute)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub merge_slashes: Option<bool>,
    pub escaped_slashes: Option<String>,
    pub path_params: Option<String>,
    pub underscores_in_headers: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub override_headers: Option<Vec<String>>,
    pub max_request_line: Option<ByteSize>,
    pub max_header_bytes: Option<ByteSize>,
    pub max_headers: Option<usize>,
    pub max_header_value: Option<ByteSize>,
    pub header_timeout: Option<DurationText>,
    pub keepalive_timeout: Option<DurationText>,
    pub max_requests_per_connection: Option<u32>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub max_body: Option<ByteSize>,
    pub read_buffer: Option<ByteSize>,
    pub body_timeout: Option<DurationText>,
    pub send_timeout: Option<DurationText>,
}

/// A size as written: a number of bytes, or a number with `KiB`/`MiB`/`GiB` (`64KiB`).
#[derive(Debug, Clone)]
pub struct ByteSize(pub String);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Int(u64),
        }
        match Scalar::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a size such as 65536 or \"64KiB\""))?
        {
            Scalar::Text(s) => Ok(ByteSize(s)),
            Scalar::Int(i) => Ok(ByteSize(i.to_string())),
        }
    }
}
