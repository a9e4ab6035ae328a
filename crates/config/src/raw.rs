//! The YAML file as written: serde types that refuse unknown keys, and nothing more.
//!
//! Defaults and cross-references are not settled here; `validate` does that, so that every
//! problem can be reported with its path at once.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
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

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit (ms, s, m, h, d), e.g. `250ms`, `5s`, `1m 30s`.",
            "pattern": "^ *([0-9]+ *[a-zµ]+ *)+$",
        })
    }
}

/// The schema of one `routes[].retry_on` entry. The entries are read as YAML values and
/// checked by `routes`, so that a wrong one is reported with the others.
pub struct RetryOnEntry;

impl JsonSchema for RetryOnEntry {
    fn schema_name() -> Cow<'static, str> {
        "RetryOn".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`reset`, or an HTTP status from 500 to 599.",
            "anyOf": [
                { "type": "integer", "minimum": 500, "maximum": 599 },
                { "type": "string", "pattern": "^(reset|5[0-9][0-9])$" },
            ],
        })
    }
}

/// The schema of a `when` value: a string, number or boolean, compared as text.
pub struct Scalar;

impl JsonSchema for Scalar {
    fn schema_name() -> Cow<'static, str> {
        "Scalar".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

/// `server`: the process, its workers and its shutdown.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Worker threads of the proxy service. Default: the number of CPUs.
    #[schemars(range(min = 1))]
    pub threads: Option<usize>,
    /// One multi-threaded runtime whose threads steal work; `false` gives each thread its own
    /// single-threaded runtime (no balancing between them).
    #[schemars(extend("default" = true))]
    pub work_stealing: Option<bool>,
    /// After `SIGTERM`: not ready, still accepting and serving, so that load balancers take
    /// the instance out first (Pingora's own default is 300 s).
    #[schemars(extend("default" = "5s"))]
    pub grace_period: Option<DurationText>,
    /// After the grace period (or an upgrade): open connections get this long to finish.
    #[schemars(extend("default" = "10s"))]
    pub graceful_shutdown_timeout: Option<DurationText>,
    /// Idle upstream connections kept for reuse.
    #[schemars(extend("default" = 128))]
    pub upstream_keepalive_pool_size: Option<usize>,
    /// Pingora's PID file (daemon mode and upgrades). Default: Pingora's.
    pub pid_file: Option<String>,
    /// The Unix socket a new instance takes the listeners over from (`tollgate run -u`).
    /// Default: Pingora's.
    pub upgrade_sock: Option<String>,
    /// Poll the config file this often (e.g. `1s`) and reload when it changes, as on
    /// `SIGHUP` (a change counts once two polls in a row see the same file). Off when unset;
    /// fixed at start.
    pub watch_config: Option<DurationText>,
    /// Pingora's error log file, in daemon mode. Default: standard error.
    pub error_log: Option<String>,
    /// The user a daemon drops to. Default: Pingora's.
    pub user: Option<String>,
    /// The group a daemon drops to. Default: Pingora's.
    pub group: Option<String>,
    /// Request normalisation, header hygiene, trusted proxies and client limits: the safe
    /// defaults of [Security](SECURITY.md).
    pub http: Option<RawHttp>,
}

/// `listen`: the proxy's listeners.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// The plain-HTTP proxy listener, `IP:port`.
    #[schemars(extend("default" = "0.0.0.0:8080"))]
    pub http: Option<String>,
    /// The HTTPS listener, `IP:port` (with `listen.tls`): the same routes and pipeline.
    pub https: Option<String>,
    /// The HTTPS listener's certificates and client-certificate policy. Required with `https`.
    pub tls: Option<RawTls>,
}

/// `listen.tls`: the HTTPS listener's certificates and client-certificate policy.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate (chain after the leaf) and key files, relative to the config file. A
    /// client's SNI picks the certificate whose subjectAltName lists it; the first is served
    /// to clients that send no name or an unknown one.
    pub certificates: Option<Vec<RawCertificate>>,
    /// `optional`: clients are asked for a certificate and served without one; `required`: a
    /// handshake without a valid one fails. Either needs `client_ca`.
    #[schemars(extend("default" = "none", "enum" = ["none", "optional", "required"]))]
    pub client_auth: Option<String>,
    /// PEM bundle client certificates must chain to.
    pub client_ca: Option<String>,
    /// Header names for the verified client certificate's subject and SHA-256, sent
    /// upstream; these names are removed from every client request.
    pub client_cert_headers: Option<RawClientCertHeaders>,
    /// The plain listener answers `308` to the same URL on the HTTPS port.
    #[schemars(extend("default" = false))]
    pub redirect_http: Option<bool>,
    /// `Strict-Transport-Security` on proxied answers over HTTPS. None when unset.
    pub hsts: Option<RawHsts>,
    /// How often certificate, key and CA files are checked for changes (they are re-read on
    /// `SIGHUP` too); new handshakes use the new files, open connections keep theirs.
    #[schemars(extend("default" = "10s"))]
    pub watch: Option<DurationText>,
    /// The whole TLS handshake, after the connection caps of `server.http`.
    #[schemars(extend("default" = "10s"))]
    pub handshake_timeout: Option<DurationText>,
}

/// One certificate of `listen.tls.certificates`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf.
    pub key: String,
}

/// `listen.tls.client_cert_headers`: the verified client certificate, for the upstream.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawClientCertHeaders {
    /// Header for the certificate's subject (RFC 4514), e.g. `X-Client-Subject`.
    pub subject: Option<String>,
    /// Header for the certificate's SHA-256 (hex), e.g. `X-Client-Sha256`.
    pub sha256: Option<String>,
}

/// `listen.tls.hsts`: the `Strict-Transport-Security` header.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHsts {
    /// `max-age`, e.g. `365d`.
    pub max_age: DurationText,
    /// Adds `includeSubDomains`.
    #[schemars(extend("default" = false))]
    pub include_subdomains: Option<bool>,
    /// Adds `preload`; requires a `max_age` of a year and `include_subdomains`.
    #[schemars(extend("default" = false))]
    pub preload: Option<bool>,
}

/// `metrics`: the operations listener.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Serves `/metrics`, `/healthz`, `/readyz` (and the gateway's JWKS when it mints
    /// tokens); must differ from `listen.http` and `listen.https`.
    #[schemars(extend("default" = "127.0.0.1:9091"))]
    pub listen: Option<String>,
    /// The read-only admin view (`/admin/…`) on this listener. See
    /// [the admin view](operations.md#admin-view).
    pub admin: Option<RawAdmin>,
}

/// `metrics.admin`: who may read the admin view.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `false` answers 404 under `/admin/`.
    #[schemars(extend("default" = true))]
    pub enabled: Option<bool>,
    /// A file holding a token (at least 32 bytes) that every admin request must carry as
    /// `Authorization: Bearer`, from any address. Unset: only clients on a loopback
    /// address are answered.
    pub bearer_file: Option<String>,
}

/// `logging`: JSON logs on standard output.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    /// A `tracing` filter (`info`, `warn,tollgate=debug`); the `TOLLGATE_LOG` environment
    /// variable overrides it. Pingora's own debug output, which prints whole request headers,
    /// stays off at every level.
    #[schemars(extend("default" = "info"))]
    pub level: Option<String>,
    /// One JSON line per request (path without query string; never a token).
    #[schemars(extend("default" = true))]
    pub access_log: Option<bool>,
    /// Share of successful (below 400) requests logged; refusals and errors always are.
    #[schemars(extend("default" = 1.0), range(min = 0.0, max = 1.0))]
    pub access_log_sample: Option<f64>,
    /// The caller's `sub` in access lines: `omit`, `plain`, or `hashed` (the first 16 hex
    /// digits of SHA-256(`subject_salt` ‖ sub)).
    #[schemars(extend("default" = "omit", "enum" = ["omit", "plain", "hashed"]))]
    pub subject: Option<String>,
    /// With `subject: hashed`: at least 16 characters, one per deployment.
    #[schemars(length(min = 16))]
    pub subject_salt: Option<String>,
    /// Log lines waiting for the log writer thread; past it lines are dropped and counted
    /// (`tollgate_log_lines_dropped_total`), so no request ever waits for standard output.
    #[schemars(extend("default" = 16384), range(min = 1))]
    pub buffer_lines: Option<usize>,
    /// OpenTelemetry tracing: spans exported over OTLP/HTTP (protobuf); off when absent.
    pub tracing: Option<RawTracing>,
}

/// `logging.tracing`: one server span per request, with its steps as children, exported
/// off the request path.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    /// Share of new traces recorded, 0 to 1 (by trace id, so a fleet agrees). A continued
    /// trace follows its parent's sampled flag.
    #[schemars(extend("default" = 0.01), range(min = 0.0, max = 1.0))]
    pub sample_ratio: Option<f64>,
    /// Whose `traceparent` is continued: `trusted_proxies` (clients in
    /// `server.http.trusted_proxies`), `any` (every client: it then picks trace ids and
    /// whether they are sampled), or `none`. Others get a new trace.
    #[schemars(extend("default" = "trusted_proxies", "enum" = ["trusted_proxies", "any", "none"]))]
    pub continue_from: Option<String>,
    /// `service.name` of the spans.
    #[schemars(extend("default" = "tollgate"))]
    pub service_name: Option<String>,
    /// Requests' spans waiting for export at most; past it they are dropped and counted.
    #[schemars(extend("default" = 4096), range(min = 1))]
    pub queue_size: Option<usize>,
    /// Spans sent in one export at most.
    #[schemars(extend("default" = 512), range(min = 1))]
    pub batch_size: Option<usize>,
    /// How long spans may wait for a batch to fill.
    #[schemars(extend("default" = "1s"))]
    pub batch_delay: Option<DurationText>,
    /// One export, from connecting to the collector's answer.
    #[schemars(extend("default" = "2s"))]
    pub timeout: Option<DurationText>,
}

/// One backend of `upstreams.NAME.backends`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// `host:port` (IPv6 in brackets; names resolved at load, or in the background with
    /// `dns`), or `srv:NAME` (needs `dns`): the targets of NAME's SRV records.
    pub addr: String,
    /// Relative share of the traffic, 1 to 1000. SRV backends take the records' weights.
    #[schemars(extend("default" = 1), range(min = 1, max = 1000))]
    pub weight: Option<u32>,
}

/// `upstreams.NAME.health_check`: active checks of every backend.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// `http` (a GET answered with `expected_status`) or `tcp` (a connect).
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["http", "tcp"]))]
    pub kind: String,
    /// With `type: http`: the path requested.
    #[schemars(extend("default" = "/"))]
    pub path: Option<String>,
    /// With `type: http`: the `Host` header sent.
    #[schemars(extend("default" = "localhost"))]
    pub host: Option<String>,
    /// With `type: http`: the status a healthy backend answers.
    #[schemars(extend("default" = 200), range(min = 100, max = 599))]
    pub expected_status: Option<u16>,
    /// Time between checks.
    #[schemars(extend("default" = "5s"))]
    pub interval: Option<DurationText>,
    /// One check's time limit.
    #[schemars(extend("default" = "1s"))]
    pub timeout: Option<DurationText>,
    /// Passes in a row that bring a backend back.
    #[schemars(extend("default" = 2), range(min = 1))]
    pub healthy_threshold: Option<usize>,
    /// Failures in a row that take a backend out.
    #[schemars(extend("default" = 3), range(min = 1))]
    pub unhealthy_threshold: Option<usize>,
}

/// `upstreams.NAME`: a set of backends and how requests reach them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// At least one; each address once.
    #[schemars(length(min = 1))]
    pub backends: Vec<RawBackend>,
    /// `round_robin` (weighted), `least_request` (two random choices, fewer requests in
    /// flight per weight wins), `peak_ewma` (the same, weighed by response time) or
    /// `consistent_hash` (Ketama, on `hash_on`).
    #[schemars(extend(
        "default" = "round_robin",
        "enum" = ["round_robin", "least_request", "peak_ewma", "consistent_hash"]
    ))]
    pub lb: Option<String>,
    /// With `consistent_hash`: `client_ip`, `header:NAME` or `claim:NAME` (a verified
    /// token's claim); the client address when absent.
    #[schemars(extend("default" = "client_ip"), regex(pattern = r"^(client_ip|header:.+|claim:.+)$"))]
    pub hash_on: Option<String>,
    /// Active health checks. None when unset: every backend is used unless
    /// `outlier_detection` ejects it (a failed connect is retried on another backend).
    pub health_check: Option<RawHealthCheck>,
    /// TCP (and TLS) connect.
    #[schemars(extend("default" = "1s"))]
    pub connect_timeout: Option<DurationText>,
    /// Each read from the backend; a timeout answers 504.
    #[schemars(extend("default" = "30s"))]
    pub read_timeout: Option<DurationText>,
    /// Each write to the backend.
    #[schemars(extend("default" = "30s"))]
    pub write_timeout: Option<DurationText>,
    /// How long an idle pooled connection is kept.
    #[schemars(extend("default" = "60s"))]
    pub idle_timeout: Option<DurationText>,
    /// Further backends tried after a failed attempt: a connect failure always; a reset or a
    /// status when the route's `retry_on` lists it. Within `retry_budget`.
    #[schemars(extend("default" = 1))]
    pub retries: Option<u32>,
    /// `http1`, or `h2`: HTTP/2 by ALPN over `tls`, else h2c with prior knowledge; carries
    /// gRPC.
    #[schemars(extend("default" = "http1", "enum" = ["http1", "h2"]))]
    pub protocol: Option<String>,
    /// With `h2`: concurrent requests on one backend connection.
    #[schemars(extend("default" = 100), range(min = 1))]
    pub h2_streams: Option<usize>,
    /// TLS to the backends. Plain TCP when unset.
    pub tls: Option<RawUpstreamTls>,
    /// A backend that joins or returns gets a share of its weight growing from 10 % to
    /// 100 % over this window (every `lb` but `consistent_hash`). Off when unset.
    pub slow_start: Option<DurationText>,
    /// Passive ejection of backends that fail real requests. Off when unset.
    pub outlier_detection: Option<RawOutlierDetection>,
    /// Limits past which requests are answered 503 at once instead of queued. Its defaults
    /// apply when unset.
    pub circuit_breaker: Option<RawCircuitBreaker>,
    /// Bounds retries to a share of the requests in flight. Its defaults apply when unset.
    pub retry_budget: Option<RawRetryBudget>,
    /// Backends given by name are re-resolved in the background on their TTL, without a
    /// reload (`dns: {}` uses the system's resolver). Resolved once at load when unset.
    pub dns: Option<RawDns>,
}

/// `upstreams.NAME.dns`: backends re-resolved in the background.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// `IP[:port]` of the DNS server. Default: the system's `/etc/resolv.conf`.
    pub resolver: Option<String>,
    /// Shortest time an answer is kept (and the retry time after a failed lookup).
    #[schemars(extend("default" = "1s"))]
    pub min_ttl: Option<DurationText>,
    /// Longest time an answer is kept.
    #[schemars(extend("default" = "300s"))]
    pub max_ttl: Option<DurationText>,
}

/// `upstreams.NAME.outlier_detection`: passive ejection on what real requests see. A
/// failure is a 5xx answer, a connect failure, a timeout or a reset.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    /// Failures in a row that eject a backend.
    #[schemars(extend("default" = 5), range(min = 1))]
    pub consecutive_failures: Option<u32>,
    /// Also eject a backend whose share of successes over an `interval` is too low. Off
    /// when unset.
    pub success_rate: Option<RawSuccessRate>,
    /// The window of `success_rate`, and how often an interval without failure takes one
    /// ejection off a backend's count.
    #[schemars(extend("default" = "10s"))]
    pub interval: Option<DurationText>,
    /// An ejection lasts this × the number of ejections in a row.
    #[schemars(extend("default" = "30s"))]
    pub base_ejection_time: Option<DurationText>,
    /// The longest ejection.
    #[schemars(extend("default" = "300s"))]
    pub max_ejection_time: Option<DurationText>,
    /// Never more than this share of backends out at once (at least one may be).
    #[schemars(extend("default" = 50), range(min = 0, max = 100))]
    pub max_ejected_percent: Option<u8>,
}

/// `upstreams.NAME.outlier_detection.success_rate`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSuccessRate {
    /// Requests a backend needs in an interval to be judged.
    #[schemars(extend("default" = 20), range(min = 1))]
    pub min_requests: Option<u32>,
    /// Share of successes below which it is ejected.
    #[schemars(extend("default" = 0.8), range(min = 0.0, max = 1.0))]
    pub threshold: Option<f64>,
}

/// `upstreams.NAME.circuit_breaker`: past any limit, 503 `overloaded` with `Retry-After`, never
/// a queue. Shared across reloads.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// Requests in flight to the upstream.
    #[schemars(extend("default" = 1024), range(min = 1))]
    pub max_requests: Option<usize>,
    /// Attempts still connecting.
    #[schemars(extend("default" = 1024), range(min = 1))]
    pub max_pending: Option<usize>,
    /// Backend connections busy with a request (idle pooled ones do not count).
    #[schemars(extend("default" = 1024), range(min = 1))]
    pub max_connections: Option<usize>,
    /// The `Retry-After` of its refusals.
    #[schemars(extend("default" = "1s"))]
    pub retry_after: Option<DurationText>,
}

/// `upstreams.NAME.retry_budget`: retries in flight may be at most `percent` of the requests in
/// flight, or `min_retries`, whichever is more.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetryBudget {
    /// Retries as a share of requests in flight.
    #[schemars(extend("default" = 20.0), range(min = 0.0, max = 100.0))]
    pub percent: Option<f64>,
    /// Retries allowed whatever the share.
    #[schemars(extend("default" = 3))]
    pub min_retries: Option<u32>,
}

/// `upstreams.NAME.tls`: TLS to the backends.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// The server name sent and verified. Default: the backend's host name (backends given
    /// by IP address need it, or `verify: false`).
    pub sni: Option<String>,
    /// PEM bundle that replaces the system roots.
    pub ca_file: Option<String>,
    /// Verify the backend's certificate.
    #[schemars(extend("default" = true))]
    pub verify: Option<bool>,
    /// PEM certificate presented to backends that ask (mTLS), with `client_key`.
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<String>,
}

/// `auth`: token verification, for every provider and route.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// The token issuers: a token goes to the provider whose `issuer` equals its `iss`.
    #[serde(default)]
    #[schemars(with = "Vec<RawProvider>")]
    pub providers: Vec<serde_yaml::Value>,
    /// Claims sent upstream as headers (`{ claim: sub, header: X-Auth-Subject }`); these
    /// header names are removed from every client request. See
    /// [forwarded claims](authentication.md#forwarded-claims).
    pub forward_claims: Option<Vec<RawClaimHeader>>,
    /// Verified tokens remembered (by SHA-256 of the token); a hit re-checks the times,
    /// issuer and audience.
    #[schemars(extend("default" = 100000), range(min = 1))]
    pub cache_size: Option<u64>,
    /// The realm of `WWW-Authenticate`.
    #[schemars(extend("default" = "tollgate"))]
    pub realm: Option<String>,
    /// Failed authentications allowed per client address; past it, 429 before any signature
    /// check. Default: `{ rate: 5/s, burst: 50 }`.
    pub failed_auth_limit: Option<RawFailedAuthLimit>,
    /// Signature checks running at once; past it, uncached tokens get 503
    /// `verification_budget`.
    #[schemars(extend("default" = 256), range(min = 1))]
    pub max_verifications_in_flight: Option<usize>,
    /// Per provider: network waits (introspection calls) in flight at once; past it, 503
    /// `network_budget`.
    #[schemars(extend("default" = 64), range(min = 1))]
    pub max_network_waits_in_flight: Option<usize>,
    /// Of those, started for one client address; past it, 429 `client_network_budget`.
    #[schemars(extend("default" = 4), range(min = 1))]
    pub max_network_waits_per_client: Option<usize>,
    /// The deny list of revoked tokens. None when unset.
    pub revocation: Option<RawRevocation>,
    /// The gateway's own keys, for `routes[].upstream_token`.
    pub signing_keys: Option<RawSigningKeys>,
    /// How DPoP proofs are checked, for providers and routes that take them.
    pub dpop: Option<RawDpop>,
    /// External authorization services (Envoy ext_authz's HTTP protocol), by name; routes
    /// name one in `ext_authz`. See
    /// [external authorization](authorization-and-limits.md#external-authorization).
    pub ext_authz: Option<BTreeMap<String, RawExtAuthz>>,
    /// A receiver of pushed security events (OpenID Shared Signals, CAEP) that revoke
    /// sessions. Off when unset.
    pub shared_signals: Option<RawSharedSignals>,
}

/// `auth.ext_authz.NAME`: a service asked about each request of the routes naming it, after
/// authentication and RBAC, in Envoy ext_authz's HTTP protocol: a 2xx answer allows, any
/// other denies with its status and body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawExtAuthz {
    /// The service: `https://`, or `http://` on a loopback host or with `insecure_http`. The
    /// request's path and query are appended to its path (Envoy's `path_prefix`).
    pub url: String,
    /// `true` allows an `http://` URL off loopback (the claims travel in clear).
    #[schemars(extend("default" = false))]
    pub insecure_http: Option<bool>,
    /// With an `https://` URL: the PEM bundle the service's certificate must chain to.
    /// Default: the system roots.
    pub ca_file: Option<String>,
    /// One check, connect to last byte.
    #[schemars(extend("default" = "500ms"))]
    pub timeout: Option<DurationText>,
    /// `true`: when the service cannot be asked (down, timeout, open circuit; any answer,
    /// 5xx included, is a decision), the request goes on. Default: refused with 503 (fail
    /// closed).
    #[schemars(extend("default" = false))]
    pub failure_mode_allow: Option<bool>,
    /// Headers of the request as the upstream receives it sent with the check, beside the
    /// method and path, the claims, `X-Request-Id` and `X-Forwarded-For` (the token only on
    /// routes with `keep_authorization`).
    #[schemars(extend("default" = []))]
    pub send_headers: Option<Vec<String>>,
    /// The header carrying the verified claims, as base64url of their JSON.
    #[schemars(extend("default" = "x-tollgate-claims"))]
    pub claims_header: Option<String>,
    /// Headers of an allowing answer set on the upstream request (replacing the client's).
    #[schemars(extend("default" = []))]
    pub upstream_headers: Option<Vec<String>>,
    /// Headers of a denying answer passed to the client, beside `content-type` (not framing
    /// headers, `grpc-*`, `date` or `x-request-id`).
    #[schemars(extend("default" = []))]
    pub client_headers: Option<Vec<String>>,
    /// Decisions (2xx and 4xx answers) reused per caller, route and method this long. Off
    /// when unset.
    pub cache_ttl: Option<DurationText>,
    /// Decisions remembered.
    #[schemars(extend("default" = 10000), range(min = 1))]
    pub cache_size: Option<u64>,
    /// Consecutive failed checks (error, timeout) that open the circuit.
    #[schemars(extend("default" = 5), range(min = 1))]
    pub failure_threshold: Option<u32>,
    /// How long an open circuit answers without asking before one check tries again.
    #[schemars(extend("default" = "10s"))]
    pub open_for: Option<DurationText>,
    /// Checks in flight at once; past it, 503 `network_budget`.
    #[schemars(extend("default" = 64), range(min = 1))]
    pub max_in_flight: Option<usize>,
}

/// `auth.dpop`: how DPoP proofs are checked, for providers and routes that take them.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDpop {
    /// A proof is accepted up to this long after its `iat`, and its `jti` remembered that
    /// long.
    #[schemars(extend("default" = "60s"))]
    pub max_age: Option<DurationText>,
    /// A proof's `iat` may be this far ahead of the gateway's clock.
    #[schemars(extend("default" = "5s"))]
    pub leeway: Option<DurationText>,
    /// Proof `jti`s remembered against replay.
    #[schemars(extend("default" = 1000000), range(min = 1))]
    pub replay_cache_size: Option<usize>,
    /// The origins clients reach the gateway at (`https://api.example.com`): a proof's `htu`
    /// must name one of them and the request's path. Unset: the request's own scheme and
    /// `Host`, which a client chooses (`check` warns about DPoP routes without `host`).
    pub public_origins: Option<Vec<String>>,
    /// `on`: proofs must carry a nonce the gateway issued (RFC 9449 §9). A proof without
    /// one, or with an old one, is answered 401 `use_dpop_nonce` with a fresh nonce in
    /// `DPoP-Nonce`; answers to DPoP requests carry the current nonce. Nonces are an HMAC
    /// of the time window under `nonce_secret_env`, so every instance of a fleet issues and
    /// accepts the same ones.
    #[schemars(extend("default" = "off", "enum" = ["off", "on"]))]
    pub nonce: Option<String>,
    /// With `nonce: on`: the environment variable holding the nonce key (at least 32
    /// bytes), the same for every instance.
    pub nonce_secret_env: Option<String>,
    /// With `nonce: on`: how often the nonce changes; the current and the previous one
    /// are accepted.
    #[schemars(extend("default" = "5m"))]
    pub nonce_lifetime: Option<DurationText>,
}

/// `auth.shared_signals`: a receiver of Security Event Tokens (RFC 8417) pushed by
/// transmitters (RFC 8935), on the metrics listener. CAEP `session-revoked` and
/// `credential-change` and RISC `account-disabled` revoke the subject's tokens issued
/// before the event. See [Shared Signals](authentication.md#shared-signals-caep).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSharedSignals {
    /// The path events are pushed to, on the metrics listener.
    #[schemars(extend("default" = "/ssf/events"))]
    pub path: Option<String>,
    /// The environment variable holding the token transmitters send in `Authorization:
    /// Bearer` (at least 32 bytes). Required: the endpoint never takes unauthenticated
    /// pushes.
    pub bearer_env: String,
    /// The `aud` every event must carry: this receiver's identifier at its transmitters.
    pub audience: String,
    /// Who may push, each with its keys.
    #[schemars(length(min = 1))]
    pub transmitters: Vec<RawTransmitter>,
    /// Event `jti`s remembered, so a replayed event is answered without effect.
    #[schemars(extend("default" = 100000), range(min = 1))]
    pub jti_cache_size: Option<u64>,
}

/// One of `auth.shared_signals.transmitters`: an event issuer and its keys (one source).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTransmitter {
    /// The `iss` of its events (exact match).
    pub issuer: String,
    /// Key source: an inline JWKS document, written as YAML.
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub jwks: Option<serde_yaml::Value>,
    /// Key source: a JWKS file, relative to the config file; re-read when it changes.
    pub jwks_file: Option<String>,
    /// Key source: a JWKS URL, `https://` except on loopback or with `insecure_http`.
    pub jwks_uri: Option<String>,
    /// `true` allows an `http://` `jwks_uri` off loopback.
    pub insecure_http: Option<bool>,
    /// With `jwks_uri`: the PEM bundle its server's certificate must chain to.
    pub ca_file: Option<String>,
    /// The token issuers whose subjects its events may revoke (an `iss_sub` subject of
    /// another issuer is ignored; an `opaque` one applies to these). Default: its own
    /// `issuer`.
    pub subjects_of: Option<Vec<String>>,
}

/// `auth.signing_keys`: the gateway's own keys, for `routes[].upstream_token`. Every key's
/// public half is served as a JWKS at `/.well-known/jwks.json` on the metrics listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSigningKeys {
    /// The `iss` of minted tokens.
    pub issuer: String,
    /// The `kid` that signs.
    pub current: String,
    /// Every key served (the next and the previous one too, for rotation).
    #[schemars(length(min = 1))]
    pub keys: Vec<RawSigningKey>,
}

/// One of `auth.signing_keys.keys`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSigningKey {
    /// The key's id.
    pub kid: String,
    /// A PKCS#8 PEM private key, Ed25519 (EdDSA) or P-256 (ES256), relative to the config
    /// file (`openssl genpkey -algorithm ed25519`).
    pub file: String,
}

/// `routes[].upstream_token` (and a mirror's): the upstream gets a token minted by the gateway
/// for the verified caller instead of the caller's own.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamToken {
    /// The header it is sent in (as `Bearer` in `Authorization`, else the token alone).
    #[schemars(extend("default" = "Authorization"))]
    pub header: Option<String>,
    /// The minted token's `aud`.
    pub audience: String,
    /// Its lifetime, 1s to 24h.
    #[schemars(extend("default" = "60s"))]
    pub ttl: Option<DurationText>,
    /// Top-level claims copied from the caller's token when present; `sub` always is.
    /// `iss`, `aud`, `exp`, `iat`, `nbf`, `jti` and `act` are the gateway's.
    #[schemars(extend("default" = ["sub"]))]
    pub claims: Option<Vec<String>>,
}

/// `auth.revocation`: where the deny list of revoked tokens comes from; exactly one of `file`
/// and `redis`. See [revocation](authentication.md#revocation).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRevocation {
    /// A JSON Lines file, relative to the config file; re-read when it changes.
    pub file: Option<String>,
    /// A Redis set, with a version counter.
    pub redis: Option<RawRevocationRedis>,
    /// How often the source is checked for changes.
    #[schemars(extend("default" = "1s"))]
    pub poll: Option<DurationText>,
}

/// `auth.revocation.redis`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRevocationRedis {
    /// One server: `redis://host:port/` (or `rediss://`). Exactly one of `url`, `cluster`
    /// and `sentinel`.
    pub url: Option<String>,
    /// A Redis Cluster: seed nodes, `redis://host:port/` each.
    pub cluster: Option<Vec<String>>,
    /// The master of a service watched by Redis Sentinel.
    pub sentinel: Option<RawSentinel>,
    /// The set's key; the counter is at `KEY:version`.
    #[schemars(extend("default" = "tollgate:revoked"))]
    pub key: Option<String>,
}

/// `auth.failed_auth_limit`: failed authentications allowed per client address (IPv6 by /64).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFailedAuthLimit {
    /// `N/s`, `N/min`, `N/h` or `N/10s`.
    pub rate: String,
    /// Failures an address may make at once.
    #[schemars(extend("default" = 50), range(min = 1))]
    pub burst: Option<u32>,
}

/// One of `auth.forward_claims`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawClaimHeader {
    /// A claim name or dotted path (`realm_access.roles`).
    pub claim: String,
    /// The header it is written to.
    pub header: String,
}
/// `audiences: [a, b]` or `audiences: any`. Any other word is kept so that validation can
/// name it; other shapes get one clear message instead of serde's "no variant matched".
#[derive(Debug, Clone)]
pub enum RawAudiences {
    List(Vec<String>),
    Word(String),
}

impl JsonSchema for RawAudiences {
    fn schema_name() -> Cow<'static, str> {
        "Audiences".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                { "type": "array", "items": { "type": "string" }, "minItems": 1 },
                { "const": "any" },
            ],
        })
    }
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

/// `auth.providers[]`: one token issuer and how its tokens are checked.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
// `audiences` is required but for API keys, which name no audience.
#[schemars(extend(
    "if" = { "properties": { "type": { "const": "api_key" } }, "required": ["type"] },
    "else" = { "required": ["audiences"] }
))]
pub struct RawProvider {
    /// Unique among providers; routes name it in `providers`.
    pub name: String,
    /// `jwt`; `introspection`: the tokens are opaque and checked at the provider's
    /// introspection endpoint (RFC 7662), which is then its key source; or `api_key`: the
    /// credentials are API keys (`tollgate apikey create`) looked up in `api_keys.file`.
    #[serde(rename = "type")]
    #[schemars(extend("default" = "jwt", "enum" = ["jwt", "introspection", "api_key"]))]
    pub kind: Option<String>,
    /// With `type: introspection`: the endpoint and the gateway's credentials.
    pub introspection: Option<RawIntrospection>,
    /// With `type: api_key`: where the keys' hashes and claims are kept.
    pub api_keys: Option<RawApiKeys>,
    /// The `iss` of its tokens (exact match).
    pub issuer: String,
    /// `aud` must contain one of these; or `any`, which must be written out (RFC 8725 §3.9).
    /// Required but for `type: api_key` (default `any` there).
    // Optional here so that its absence is reported by validation with what to write.
    pub audiences: Option<RawAudiences>,
    /// The header `typ` must be one of these (e.g. `[at+jwt]`, RFC 9068), case-insensitively
    /// and with `application/` optional; a token without `typ` is refused (`typ`). Not looked
    /// at when unset.
    pub token_types: Option<Vec<String>>,
    /// Clock skew allowed for `exp`, `nbf` and `iat` (`0s` for none).
    #[schemars(extend("default" = "30s"))]
    pub leeway: Option<DurationText>,
    /// Refuse tokens without `exp` (for `type: api_key`, keys without one: default false).
    #[schemars(extend("default" = true))]
    pub require_exp: Option<bool>,
    /// Key source: an inline JWKS document, written as YAML.
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub jwks: Option<serde_yaml::Value>,
    /// Key source: a JWKS file, relative to the config file; re-read when it changes.
    pub jwks_file: Option<String>,
    /// Key source: a JWKS URL, `https://` except on loopback or with `insecure_http`;
    /// symmetric keys in it are never used.
    pub jwks_uri: Option<String>,
    /// Key source: `true` (OpenID Connect discovery at the issuer) or the discovery URL.
    pub discovery: Option<RawDiscovery>,
    /// `true` allows an `http://` `jwks_uri`, discovery URL or introspection endpoint off
    /// loopback (`localhost`, 127.0.0.0/8, `[::1]`). Off when unset.
    pub insecure_http: Option<bool>,
    /// With `jwks_uri`, `discovery` or introspection: the PEM bundle the identity provider's
    /// certificate must chain to. Default: the system roots.
    pub ca_file: Option<String>,
    /// Key source: a file holding an HMAC secret.
    pub hmac_secret_file: Option<String>,
    /// Key source: an environment variable holding an HMAC secret.
    pub hmac_secret_env: Option<String>,
    /// The algorithm of an HMAC secret.
    #[schemars(extend("default" = "HS256", "enum" = ["HS256", "HS384", "HS512"]))]
    pub hmac_alg: Option<String>,
    /// When keys are fetched again.
    pub refresh: Option<RawRefresh>,
    /// Where tokens are read: `bearer`, `header:NAME`, `cookie:NAME` or `query:NAME`. A
    /// request carrying more than one token is answered 400. For `type: api_key` the
    /// default is `[header:x-api-key]`.
    #[schemars(extend("default" = ["bearer"]))]
    pub token_sources: Option<Vec<String>>,
    /// Tokens must carry `cnf.x5t#S256` (RFC 8705); one that carries it is held to it
    /// whatever this says.
    #[schemars(extend("default" = false))]
    pub require_certificate_binding: Option<bool>,
    /// `off` (`Authorization: DPoP` not read; a `cnf.jkt`-bound token passes as a bearer
    /// token), `optional` (`Authorization: DPoP` taken beside Bearer; key-bound tokens must
    /// come that way) or `required` (every token bound, with a proof). Needs `bearer` among
    /// `token_sources`. See [DPoP](authentication.md#dpop-rfc-9449).
    #[schemars(extend("default" = "off", "enum" = ["off", "optional", "required"]))]
    pub dpop: Option<String>,
}

/// `auth.providers[].api_keys` of a provider with `type: api_key`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApiKeys {
    /// A JSON Lines file of keys (one `tollgate apikey create` line each: the key's id, the
    /// SHA-256 of the key, `sub`, optional `exp` and `claims`), relative to the config file;
    /// re-read when it changes. Keys are never stored in clear.
    pub file: String,
    /// How often the file is checked for changes.
    #[schemars(extend("default" = "2s"))]
    pub poll: Option<DurationText>,
}

/// `auth.providers[].introspection` of a provider with `type: introspection` (RFC 7662).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    /// The introspection endpoint URL.
    pub endpoint: String,
    /// The gateway's client id at the endpoint.
    pub client_id: String,
    /// A file holding the client secret (one of this and `client_secret_env`).
    pub client_secret_file: Option<String>,
    /// An environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// `opaque`: only tokens that are not JWTs are sent; `all`: every token.
    #[schemars(extend("default" = "opaque", "enum" = ["opaque", "all"]))]
    pub tokens: Option<String>,
    /// One call's time limit.
    #[schemars(extend("default" = "2s"))]
    pub timeout: Option<DurationText>,
    /// An active answer is cached at most this long (never past the token's `exp`).
    #[schemars(extend("default" = "5m"))]
    pub cache_max_ttl: Option<DurationText>,
    /// An inactive answer is cached this long.
    #[schemars(extend("default" = "10s"))]
    pub negative_cache_ttl: Option<DurationText>,
    /// Answers cached.
    #[schemars(extend("default" = 100000), range(min = 1))]
    pub cache_size: Option<u64>,
    /// Failed calls in a row that open the breaker.
    #[schemars(extend("default" = 5), range(min = 1))]
    pub failure_threshold: Option<u32>,
    /// How long an open breaker refuses calls before trying one.
    #[schemars(extend("default" = "10s"))]
    pub open_for: Option<DurationText>,
}

/// `discovery: true` (at the issuer) or `discovery: URL`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawDiscovery {
    On(bool),
    Url(String),
}

/// `auth.providers[].refresh`: when keys are fetched again.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRefresh {
    /// A `jwks_uri` is fetched again this often, or per the response's `Cache-Control:
    /// max-age`, clamped to the bounds below.
    #[schemars(extend("default" = "5m"))]
    pub interval: Option<DurationText>,
    /// The shortest refresh interval.
    #[schemars(extend("default" = "1m"))]
    pub min_interval: Option<DurationText>,
    /// The longest refresh interval.
    #[schemars(extend("default" = "1h"))]
    pub max_interval: Option<DurationText>,
    /// A token naming an unknown `kid` triggers a fetch at most this often.
    #[schemars(extend("default" = "30s"))]
    pub unknown_kid_cooldown: Option<DurationText>,
    /// A failed fetch keeps the last good keys up to this long.
    #[schemars(extend("default" = "24h"))]
    pub max_stale: Option<DurationText>,
    /// One fetch's time limit.
    #[schemars(extend("default" = "5s"))]
    pub timeout: Option<DurationText>,
    /// A `jwks_file` is checked for changes this often.
    #[schemars(extend("default" = "2s"))]
    pub file_poll: Option<DurationText>,
}

/// `routes[]`: what a request matches and what happens to it. The most specific route wins,
/// on host and path alone. See [routing](routing.md).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique; the `route` label of metrics.
    pub name: String,
    /// An exact host or `*.example.com`; the port is ignored. Any host when unset.
    pub host: Option<String>,
    /// Starts with `/`, normalised (`tollgate check` says what to write instead).
    #[schemars(regex(pattern = "^/"))]
    pub path: String,
    /// `prefix` (on segment boundaries: `/api` matches `/api/x`, not `/apix`) or `exact`.
    #[schemars(extend("default" = "prefix", "enum" = ["prefix", "exact"]))]
    pub path_match: Option<String>,
    /// `insensitive` matches ignoring ASCII letter case, for an upstream that does so itself;
    /// every route to one upstream must say the same. The path goes upstream as written. See
    /// [routing](routing.md#how-a-route-is-chosen).
    #[schemars(extend("default" = "sensitive", "enum" = ["sensitive", "insensitive"]))]
    pub path_case: Option<String>,
    /// e.g. `[GET, POST]`; another method answers 405 with `Allow`. `HEAD` is not implied by
    /// `GET`. All methods when unset.
    pub methods: Option<Vec<String>>,
    /// The upstream's name (one of this and `upstreams`).
    pub upstream: Option<String>,
    /// Weighted or conditional targets instead of `upstream`; at least one without `when`.
    pub upstreams: Option<Vec<RawRouteTarget>>,
    /// A share of requests also sent, less every credential, to a shadow upstream.
    pub mirror: Option<RawMirror>,
    /// `reset` and 5xx statuses after which an idempotent request goes to another backend.
    #[schemars(with = "Option<Vec<RetryOnEntry>>")]
    pub retry_on: Option<Vec<serde_yaml::Value>>,
    /// Remove the matched prefix from the upstream path.
    #[schemars(extend("default" = false))]
    pub strip_prefix: Option<bool>,
    /// `required`, `optional` (anonymous allowed, bad tokens refused) or `none`. Default:
    /// `required` if any provider exists, else `none`.
    #[schemars(extend("enum" = ["required", "optional", "none"]))]
    pub auth: Option<String>,
    /// Names of the providers whose tokens the route accepts. All when unset.
    pub providers: Option<Vec<String>>,
    /// Forward the token upstream. By default, on routes with auth, the token's header,
    /// query parameter and cookie (and `DPoP`) are removed; on `auth: none` routes nothing
    /// is read, so nothing is removed.
    #[schemars(extend("default" = false))]
    pub keep_authorization: Option<bool>,
    /// A name in `policies`. Every authenticated caller is admitted when unset.
    pub policy: Option<String>,
    /// A name in `auth.ext_authz`: the service asked about each request, after RBAC.
    pub ext_authz: Option<String>,
    /// Limits that must all admit a request.
    pub rate_limits: Option<Vec<RawLimit>>,
    /// Request body size (`1MiB`, `64KiB`, bytes); larger answers 413. Default:
    /// `server.http.max_body`.
    pub max_body: Option<ByteSize>,
    /// Client addresses let in on this route, after the global `server.http.ip_rules`.
    /// Everyone when unset.
    pub ip_rules: Option<RawIpRules>,
    /// CORS for this route, instead of `server.http.cors`.
    pub cors: Option<RawCors>,
    /// Headers set, added or removed on the request to the upstream and on its answer.
    pub headers: Option<RawHeaderRules>,
    /// `required`: only requests on a TLS connection with a verified client certificate
    /// reach the route; others get 403.
    #[schemars(extend("default" = "any", "enum" = ["any", "required"]))]
    pub client_certificate: Option<String>,
    /// As the provider option, for this route.
    #[schemars(extend("default" = false))]
    pub require_certificate_binding: Option<bool>,
    /// As the provider option, for this route; the stricter of the two applies.
    #[schemars(extend("default" = "off", "enum" = ["off", "optional", "required"]))]
    pub dpop: Option<String>,
    /// The upstream gets a token minted by the gateway for the verified caller instead of
    /// the caller's own (needs `auth.signing_keys`; not with `auth: none`). See
    /// [tokens for upstreams](authentication.md#tokens-for-upstreams).
    pub upstream_token: Option<RawUpstreamToken>,
    /// The OAuth protected resource this route serves (RFC 9728): its identifier, the URL
    /// clients use for it (`https://`, `http://` only on a loopback host), without query or
    /// fragment. Routes naming the same identifier are one resource. The gateway then
    /// answers its metadata at `/.well-known/oauth-protected-resource` followed by the
    /// identifier's path, points to it from every challenge of the route
    /// (`resource_metadata`), and accepts only tokens whose `aud` holds the identifier
    /// (RFC 8707). See [protected resource metadata](authentication.md#protected-resource-metadata-rfc-9728).
    pub resource: Option<String>,
    /// How recent and how strong the user's login must be (RFC 9470): a token without an
    /// `acr` in the list, or whose `auth_time` is older than `max_age`, is answered 401
    /// `insufficient_user_authentication`, telling the client what to ask for. See
    /// [step-up](authentication.md#step-up-authentication-rfc-9470).
    pub step_up: Option<RawStepUp>,
}

/// `routes[].step_up`: at least one of `acr` and `max_age`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStepUp {
    /// The `acr` values accepted (any one of them), sent back as `acr_values` when the
    /// token's is missing or another.
    pub acr: Option<Vec<String>>,
    /// The longest time since the user's login (`auth_time`); a token without `auth_time`
    /// does not meet it.
    pub max_age: Option<DurationText>,
}

/// One of `routes[].upstreams`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRouteTarget {
    /// The upstream's name.
    pub name: String,
    /// Its share of the requests no `when` took, 1 to 10000.
    #[schemars(extend("default" = 1), range(min = 1, max = 10000))]
    pub weight: Option<u32>,
    /// Conditions that must all hold; entries with `when` are tried in order, before the
    /// weighted ones.
    pub when: Option<RawWhen>,
}

/// `when: { header: {NAME: VALUE}, cookie: {NAME: VALUE}, claim: {NAME: VALUE} }`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    /// Headers with exactly these values.
    #[schemars(with = "Option<BTreeMap<String, Scalar>>")]
    pub header: Option<BTreeMap<String, serde_yaml::Value>>,
    /// Cookies with exactly these values.
    #[schemars(with = "Option<BTreeMap<String, Scalar>>")]
    pub cookie: Option<BTreeMap<String, serde_yaml::Value>>,
    /// Claims of the verified token equal to these (or arrays holding them).
    #[schemars(with = "Option<BTreeMap<String, Scalar>>")]
    pub claim: Option<BTreeMap<String, serde_yaml::Value>>,
}

/// `routes[].mirror`: a share of requests also sent to a shadow upstream, less every credential;
/// its answers are dropped.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    /// The shadow upstream's name.
    pub upstream: String,
    /// Share of requests mirrored.
    #[schemars(extend("default" = 100.0), range(min = 0.0, max = 100.0))]
    pub percent: Option<f64>,
    /// Send the identity headers (`forward_claims`, client certificate) too.
    #[schemars(extend("default" = false))]
    pub identity: Option<bool>,
    /// Send the client's cookies (never a token cookie) too.
    #[schemars(extend("default" = false))]
    pub cookies: Option<bool>,
    /// A token minted for the shadow's own audience.
    pub upstream_token: Option<RawUpstreamToken>,
}

/// `key: client_ip` or `key: [claim:tenant, route]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawLimitKey {
    One(String),
    Many(Vec<String>),
}

/// `routes[].rate_limits[]`: a GCRA limit. See [limits](authorization-and-limits.md#rate-limits).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    /// Unique on the route; named in `RateLimit-Policy` and metrics.
    pub name: String,
    /// `claim:PATH`, `client_ip`, `header:NAME`, `route`, or a list of them. Default:
    /// `claim:sub` on routes with auth, else `client_ip`.
    pub key: Option<RawLimitKey>,
    /// `N/s`, `N/min`, `N/h` or `N/10s`.
    #[schemars(regex(pattern = r"^[0-9]+/([0-9]*)(s|min|h)$"))]
    pub rate: String,
    /// Requests an idle key may make at once. Default: the rate's count.
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
    /// The rate picked by a claim's value.
    pub tiers: Option<RawTiers>,
    /// `local` (this process) or `redis` (the fleet, through `rate_limiting.redis`).
    #[schemars(extend("default" = "local", "enum" = ["local", "redis"]))]
    pub store: Option<String>,
    /// Admitted answers carry the `RateLimit` headers of the tightest limit too.
    #[schemars(extend("default" = false))]
    pub headers: Option<bool>,
    /// IPv6 clients keyed by their network of this many bits. Default:
    /// `rate_limiting.ipv6_prefix`.
    #[schemars(range(min = 1, max = 128))]
    pub ipv6_prefix: Option<u8>,
}

/// `routes[].rate_limits[].tiers`: the rate picked by a claim's value.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTiers {
    /// The claim read.
    pub claim: String,
    /// Its values and their rates; other values keep the limit's own.
    pub values: BTreeMap<String, RawTier>,
}

/// One of `tiers.values`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    /// `N/s`, `N/min`, `N/h` or `N/10s`.
    pub rate: String,
    /// Default: the rate's count.
    pub burst: Option<u32>,
}

/// `rate_limiting`: the stores of every limit.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimiting {
    /// Keys the in-process store holds (about 25-36 bytes each); idle keys go first.
    #[schemars(extend("default" = 1000000), range(min = 1))]
    pub max_local_keys: Option<usize>,
    /// IPv6 clients are keyed by their network of this many bits, in `client_ip` keys and
    /// every fallback to the client address. IPv4-mapped addresses count as IPv4.
    #[schemars(extend("default" = 64), range(min = 1, max = 128))]
    pub ipv6_prefix: Option<u8>,
    /// The store of `store: redis` limits.
    pub redis: Option<RawRedis>,
}

/// `rate_limiting.redis`: one atomic Lua script per check, on Redis's clock.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// One server: `redis://host:port/` (or `rediss://`). Exactly one of `url`, `cluster`
    /// and `sentinel`.
    pub url: Option<String>,
    /// A Redis Cluster: seed nodes, `redis://host:port/` each. A bucket is one key, so
    /// each check goes to one slot's master.
    pub cluster: Option<Vec<String>>,
    /// The master of a service watched by Redis Sentinel.
    pub sentinel: Option<RawSentinel>,
    /// How long a check waits for Redis.
    #[schemars(extend("default" = "5ms"))]
    pub timeout: Option<DurationText>,
    /// When Redis does not answer in time: `allow`, `deny`, or `local` (the in-process store).
    #[schemars(extend("default" = "local", "enum" = ["allow", "deny", "local"]))]
    pub on_store_error: Option<String>,
}

/// `redis.sentinel`: a service's master, asked of the Sentinels and followed when they fail
/// it over.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSentinel {
    /// The service name the Sentinels monitor (`sentinel monitor NAME ...`).
    pub master: String,
    /// Sentinels, `redis://host:port/` each (usually port 26379). The first one's
    /// credentials and database are also used for the master.
    pub nodes: Vec<String>,
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

/// `server.http`: request normalisation, header hygiene, trusted proxies and client limits.
/// Every default is the safe one; see [Security](SECURITY.md). A reload that changes
/// `max_requests_per_connection` or `read_buffer` is refused. HTTP/2 connections take
/// `keepalive_timeout` and `max_header_bytes` at start, and `header_timeout` and
/// `max_requests_per_connection` apply to HTTP/1.1 only.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// `//a` is `/a`; `false` refuses `//` with 400 rather than forwarding it.
    #[schemars(extend("default" = true))]
    pub merge_slashes: Option<bool>,
    /// `reject`: `%2F` answers 400; `decode` turns it into `/` before routing, so the router
    /// and the upstream both see the separator.
    #[schemars(extend("default" = "reject", "enum" = ["reject", "decode"]))]
    pub escaped_slashes: Option<String>,
    /// `reject`: `;` in a path segment answers 400; `strip` removes `;…` from each segment
    /// before routing, as Java servers do.
    #[schemars(extend("default" = "reject", "enum" = ["reject", "strip"]))]
    pub path_params: Option<String>,
    /// `drop`: header names with `_` are removed (as nginx does); `allow` keeps them.
    #[schemars(extend("default" = "drop", "enum" = ["drop", "allow"]))]
    pub underscores_in_headers: Option<String>,
    /// Addresses or CIDRs whose `X-Forwarded-For` is believed; empty: tollgate is the edge.
    #[schemars(extend("default" = []))]
    pub trusted_proxies: Option<Vec<String>>,
    /// Headers removed from every request (`X-Original-URL`, `X-HTTP-Method-Override`, …).
    /// Default: the list in [Security](SECURITY.md#headers-a-client-may-not-set).
    pub override_headers: Option<Vec<String>>,
    /// The request line; longer answers 414.
    #[schemars(extend("default" = "8KiB"))]
    pub max_request_line: Option<ByteSize>,
    /// The header block, less than 1 MiB; larger answers 431, cut off as it arrives.
    #[schemars(extend("default" = "64KiB"))]
    pub max_header_bytes: Option<ByteSize>,
    /// Header fields, 1 to 256; more answers 431.
    #[schemars(extend("default" = 100), range(min = 1, max = 256))]
    pub max_headers: Option<usize>,
    /// One header field; larger answers 431.
    #[schemars(extend("default" = "16KiB"))]
    pub max_header_value: Option<ByteSize>,
    /// From a request's first byte (from accept, for a connection's first request) to the end
    /// of its header block; past it 408 and the connection closes (slowloris).
    #[schemars(extend("default" = "10s"))]
    pub header_timeout: Option<DurationText>,
    /// An idle keep-alive connection is closed after this; at least `1s`.
    #[schemars(extend("default" = "60s"))]
    pub keepalive_timeout: Option<DurationText>,
    /// Then the connection closes after its response.
    #[schemars(extend("default" = 1000), range(min = 1))]
    pub max_requests_per_connection: Option<u32>,
    /// Open client connections, the HTTP and HTTPS listeners together; past it 503 and
    /// close.
    #[schemars(extend("default" = 10000), range(min = 1))]
    pub max_connections: Option<usize>,
    /// From one address (IPv6 by /64; trusted proxies exempt); past it 503 and close.
    #[schemars(extend("default" = 256), range(min = 1))]
    pub max_connections_per_client: Option<usize>,
    /// Request body; larger answers 413 (per route: `routes[].max_body`).
    #[schemars(extend("default" = "64MiB"))]
    pub max_body: Option<ByteSize>,
    /// HTTP/2 without TLS (h2c with prior knowledge, as gRPC clients speak it) on the plain
    /// listener, beside HTTP/1.1: a connection opening with the HTTP/2 preface is served as
    /// HTTP/2. Fixed at start.
    #[schemars(extend("default" = false))]
    pub h2c: Option<bool>,
    /// Read buffer per client connection, up to 1 MiB (`0`: none). Pingora's default is
    /// 64 KiB per connection, idle or not. Fixed at start.
    #[schemars(extend("default" = "2KiB"))]
    pub read_buffer: Option<ByteSize>,
    /// Longest wait for the next bytes of a request body; then 408 and close (slow POST).
    #[schemars(extend("default" = "10s"))]
    pub body_timeout: Option<DurationText>,
    /// Longest wait for a client to take the next bytes of a response.
    #[schemars(extend("default" = "30s"))]
    pub send_timeout: Option<DurationText>,
    /// Client addresses let in on every route, checked before routing. Everyone when unset.
    pub ip_rules: Option<RawIpRules>,
    /// CORS for every route that does not set its own `cors`. Off when unset.
    pub cors: Option<RawCors>,
}

/// `routes[].headers`: headers the route rewrites. Values may hold `${claim.PATH}` (the
/// verified token's claim, written as `forward_claims` writes it), `${client_ip}`,
/// `${request_id}` and `${route}`. See [header rules](routing.md#header-rules).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderRules {
    /// On the request the upstream receives (after the gateway's own headers).
    pub request: Option<RawHeaderOps>,
    /// On the upstream's answer (the gateway's own answers are not rewritten).
    pub response: Option<RawHeaderOps>,
}

/// `set`, `add` and `remove` on one side of `routes[].headers`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    /// Header → value, replacing any the message has. A value that cannot be written (a
    /// missing claim, a claim with control characters) removes the header instead.
    pub set: Option<BTreeMap<String, String>>,
    /// Header → value, added beside any the message has; left out when it cannot be
    /// written.
    pub add: Option<BTreeMap<String, String>>,
    /// Headers removed.
    pub remove: Option<Vec<String>>,
}

/// `server.http.cors` and `routes[].cors`: which browser origins may call the route. A
/// preflight is answered by the gateway before authentication and never forwarded; answers
/// (the gateway's refusals too) carry the grant for an allowed origin. See
/// [CORS](authorization-and-limits.md#cors).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// `https://app.example.com` (exact), `https://*.example.com` (any subdomain, on that
    /// scheme and port), or `*` (any origin; not with `allow_credentials`).
    #[schemars(length(min = 1))]
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for. Default: the route's `methods` (every method when
    /// the route lists none).
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for, compared without case.
    #[schemars(extend("default" = ["authorization", "content-type"]))]
    pub allow_headers: Option<Vec<String>>,
    /// Response headers a page may read besides the CORS-safelisted ones.
    #[schemars(extend("default" = []))]
    pub expose_headers: Option<Vec<String>>,
    /// Let pages send cookies and read answers to credentialed requests.
    #[schemars(extend("default" = false))]
    pub allow_credentials: Option<bool>,
    /// How long a browser may cache a preflight's answer.
    #[schemars(extend("default" = "5m"))]
    pub max_age: Option<DurationText>,
}

/// `server.http.ip_rules` and `routes[].ip_rules`: client addresses let in, checked before
/// authentication on the client address (behind `trusted_proxies`, the real client's);
/// others get 403 `ip`. See [authorization](authorization-and-limits.md#ip-rules).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIpRules {
    /// Addresses or CIDRs let in; when given, every other address is refused.
    #[schemars(length(min = 1))]
    pub allow: Option<Vec<String>>,
    /// Addresses or CIDRs refused; a match wins over `allow`.
    pub deny: Option<Vec<String>>,
}

/// The file's shape, for its JSON Schema (`tollgate schema`). `parse` reads the same types
/// one section at a time (`SECTIONS`, checked equal to these fields by a test).
#[derive(JsonSchema)]
#[schemars(title = "tollgate gateway.yaml", deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "a shape for the schema: parse reads the sections one by one"
)]
pub struct ConfigFile {
    /// The process, its workers and its shutdown.
    server: Option<RawServer>,
    /// The proxy's listeners.
    listen: Option<RawListen>,
    /// The operations listener: metrics, health, readiness.
    metrics: Option<RawMetrics>,
    /// JSON logs on standard output.
    logging: Option<RawLogging>,
    /// Token verification: providers, forwarded claims, budgets, revocation, DPoP, the
    /// gateway's own signing keys.
    auth: Option<RawAuth>,
    /// RBAC policies over verified claims, by name; routes name them in `policy`.
    policies: Option<BTreeMap<String, tollgate_policy::RawPolicy>>,
    /// The stores of rate limits.
    rate_limiting: Option<RawRateLimiting>,
    /// Backends and how requests reach them, by name.
    upstreams: Option<BTreeMap<String, RawUpstream>>,
    /// What a request matches and what happens to it.
    routes: Option<Vec<RawRoute>>,
}

/// A size as written: a number of bytes, or a number with `KiB`/`MiB`/`GiB` (`64KiB`).
#[derive(Debug, Clone)]
pub struct ByteSize(pub String);

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: a number of bytes, or a number with `KiB`, `MiB` or `GiB` (`64KiB`).",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^ *[0-9]+ *(B|K|KB|KiB|k|M|MB|MiB|m|G|GB|GiB|g)? *$" },
            ],
        })
    }
}

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
