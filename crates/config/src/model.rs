//! The typed, validated config: what `parse` gives and what the gateway compiles.

use std::net::SocketAddr;
use std::time::Duration;

pub use crate::http::{Cors, HttpSettings, IpRules, OriginPattern, Underscores};
pub use crate::problems::{ConfigError, Problem};
pub use crate::rewrite::{HeaderOps, HeaderRules, Part, Template};
pub use ipnet::IpNet;
pub use tollgate_canonical::{EscapedSlashes, PathOptions, PathParams};
pub use tollgate_router::PathMatch;

/// A validated configuration: every reference resolved, every default applied.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub listen: Listen,
    pub metrics: Metrics,
    pub logging: Logging,
    pub auth: Auth,
    /// Compiled RBAC policies, by name.
    pub policies: std::collections::BTreeMap<String, std::sync::Arc<tollgate_policy::Policy>>,
    pub rate_limiting: RateLimiting,
    /// Sorted by name.
    pub upstreams: Vec<Upstream>,
    /// In file order.
    pub routes: Vec<Route>,
    /// What is allowed but probably not meant: `check` prints these, `run` logs them.
    pub warnings: Vec<crate::Problem>,
}

impl Config {
    /// Makes relative file paths (key files, secrets) relative to `base`, the directory of
    /// the config file, so the config means the same whatever directory it is run from.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let resolve = |p: &mut String| {
            if std::path::Path::new(p.as_str()).is_relative() {
                *p = base.join(p.as_str()).to_string_lossy().into_owned();
            }
        };
        if let Some(f) = &mut self.metrics.admin.bearer_file {
            resolve(f);
        }
        if let Some(tls) = &mut self.listen.tls {
            for c in &mut tls.certificates {
                resolve(&mut c.cert);
                resolve(&mut c.key);
            }
            if let Some(ca) = &mut tls.client_ca {
                resolve(ca);
            }
        }
        for u in &mut self.upstreams {
            if let Some(tls) = &mut u.tls {
                if let Some(ca) = &mut tls.ca_file {
                    resolve(ca);
                }
                if let Some((cert, key)) = &mut tls.client_cert {
                    resolve(cert);
                    resolve(key);
                }
            }
        }
        for key in self.auth.signing_keys.iter_mut().flat_map(|s| &mut s.keys) {
            resolve(&mut key.file);
        }
        if let Some(Revocation {
            source: RevocationSource::File(path),
            ..
        }) = &mut self.auth.revocation
        {
            resolve(path);
        }
        for service in self.auth.ext_authz.values_mut() {
            if let Some(ca) = &mut service.ca_file {
                resolve(ca);
            }
        }
        for provider in &mut self.auth.providers {
            if let Some(ca) = &mut provider.ca_file {
                resolve(ca);
            }
            match &mut provider.keys {
                KeySource::File(path)
                | KeySource::HmacFile { path, .. }
                | KeySource::ApiKeys(ApiKeyFile { path, .. }) => resolve(path),
                KeySource::Introspection(Introspection {
                    client_secret: SecretSource::File(path),
                    ..
                }) => resolve(path),
                KeySource::Introspection(_)
                | KeySource::Inline(_)
                | KeySource::Uri(_)
                | KeySource::Discovery(_)
                | KeySource::HmacEnv { .. } => {}
            }
        }
    }
}

/// Process settings handed to Pingora's `ServerConf`.
#[derive(Debug, Clone)]
pub struct Server {
    /// Worker threads of the proxy service. Default: the number of CPUs.
    pub threads: usize,
    /// Let idle worker threads steal tasks from busy ones (one multi-threaded tokio runtime).
    /// `false` gives each thread its own single-threaded runtime: cheaper wake-ups, no
    /// balancing. Default true (Pingora's default).
    pub work_stealing: bool,
    /// After SIGTERM, how long listeners stay open before shutdown starts (lets a load
    /// balancer in front notice). Default 5 s; Pingora's own default is 300 s.
    pub grace_period: Duration,
    /// How long in-flight requests get to finish after the grace period. Default 10 s.
    pub graceful_shutdown_timeout: Duration,
    /// Idle upstream connections kept per process. Default 128.
    pub upstream_keepalive_pool_size: usize,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    /// Reload when the config file changes, polling it this often (a change is taken once
    /// two polls in a row see the same file). Absent: reload on SIGHUP only. Fixed at start.
    pub watch_config: Option<Duration>,
    pub error_log: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// `server.http`: request normalisation, header hygiene and client limits.
    pub http: HttpSettings,
}

#[derive(Debug, Clone)]
pub struct Listen {
    /// Plain-HTTP listener. Default `0.0.0.0:8080`.
    pub http: SocketAddr,
    /// HTTPS listener (HTTP/2 and HTTP/1.1 by ALPN); set together with `tls`.
    pub https: Option<SocketAddr>,
    pub tls: Option<Tls>,
}

/// `listen.tls`: the HTTPS listener. TLS 1.2 and 1.3 only.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// Chosen by SNI among the DNS names of each certificate; the first is the default (for
    /// clients that send no SNI or a name no certificate has). Never empty.
    pub certificates: Vec<CertificateFiles>,
    pub client_auth: ClientAuth,
    /// PEM bundle of the CAs client certificates must chain to (required unless
    /// `client_auth: none`).
    pub client_ca: Option<String>,
    /// Request headers that carry the verified client certificate to the upstream (removed
    /// from every client request, like every identity header).
    pub client_cert_headers: ClientCertHeaders,
    /// The plain listener answers `308` to the same URL on https (default false).
    pub redirect_http: bool,
    /// The `Strict-Transport-Security` value added to answers on the HTTPS listener.
    pub hsts: Option<String>,
    /// Certificate, key and CA files are re-read when they change, polled this often.
    /// Default 10 s.
    pub watch: Duration,
    /// The whole TLS handshake must finish within this. Default 10 s.
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM: the leaf first, then its intermediates.
    pub cert: String,
    /// PEM: PKCS#8, PKCS#1 or SEC1.
    pub key: String,
}

/// Whether the HTTPS listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    /// Asked for; a client without one is served, one with an invalid one is refused.
    Optional,
    /// A handshake without a valid client certificate fails.
    Required,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCertHeaders {
    /// The certificate's subject (RFC 4514).
    pub subject: Option<http::HeaderName>,
    /// Lowercase hex SHA-256 of the certificate (DER).
    pub sha256: Option<http::HeaderName>,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Prometheus, `/healthz` and `/readyz`. Default `127.0.0.1:9091`.
    pub listen: SocketAddr,
    /// `metrics.admin`: the read-only admin view. Default: on, loopback clients only.
    pub admin: Admin,
}

/// Who may read the admin view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub enabled: bool,
    /// Every request needs this file's token; unset: loopback clients only.
    pub bearer_file: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Logging {
    /// A `tracing` filter such as `info` or `tollgate=debug`. Default `info`.
    pub level: String,
    /// One JSON line per request. Default true.
    pub access_log: bool,
    /// The share of successful (below 400) requests logged, 0 to 1; refusals and errors are
    /// always logged. Default 1.
    pub access_log_sample: f64,
    /// How the caller's `sub` appears in access lines. Default omitted.
    pub subject: SubjectInLog,
    /// Log lines held for the writer thread at most; past it (stdout stalled or slower
    /// than the traffic) lines are dropped and counted, never waited for. Default 16384.
    pub buffer_lines: usize,
    /// OpenTelemetry tracing, when configured.
    pub tracing: Option<Tracing>,
}

/// `logging.tracing`: OTLP/HTTP export of one server span per request and its children.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The collector's OTLP/HTTP traces URL.
    pub endpoint: String,
    /// Share of new traces recorded, by trace id. Default 0.01.
    pub sample_ratio: f64,
    /// Whose `traceparent` is continued. Default: trusted proxies only.
    pub continue_from: ContinueFrom,
    /// Default `tollgate`.
    pub service_name: String,
    /// Requests' spans waiting for export at most. Default 4096.
    pub queue_size: usize,
    /// Spans per export at most. Default 512.
    pub batch_size: usize,
    /// Default 1 s.
    pub batch_delay: Duration,
    /// One export. Default 2 s.
    pub timeout: Duration,
}

/// Whose `traceparent` a request continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContinueFrom {
    /// Clients in `server.http.trusted_proxies` (the default): a client on the internet
    /// can neither pick trace ids nor force its requests to be recorded.
    TrustedProxies,
    Any,
    None,
}

/// `logging.buffer_lines` when not set.
pub const DEFAULT_LOG_BUFFER_LINES: usize = 16_384;

/// The caller's subject in access lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectInLog {
    Omit,
    Plain,
    /// The first 16 hex digits of SHA-256(salt ‖ sub): the same caller has the same value
    /// across the fleet (one salt per deployment), without naming them.
    Hashed {
        salt: String,
    },
}

/// A named cluster of backends.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub backends: Vec<Backend>,
    pub lb: LoadBalancing,
    pub health_check: Option<HealthCheck>,
    /// TCP connect. Default 1 s.
    pub connect_timeout: Duration,
    /// Each read from the backend, response header included. Default 30 s.
    pub read_timeout: Duration,
    /// Each write to the backend. Default 30 s.
    pub write_timeout: Duration,
    /// How long an unused upstream connection stays pooled. Default 60 s.
    pub idle_timeout: Duration,
    /// Further backends tried after a connect failure. Default 1.
    pub retries: u32,
    /// `http1` (default) or `h2` (HTTP/2: over TLS by ALPN, else h2c with prior knowledge;
    /// gRPC's trailers pass through).
    pub protocol: UpstreamProtocol,
    /// With `h2`: concurrent streams on one upstream connection. Default 100.
    pub h2_streams: usize,
    /// TLS to the backends (and their health checks).
    pub tls: Option<UpstreamTls>,
    /// A backend that joins (a reload adds it) or returns (from an ejection or a failed
    /// health check) gets a share of traffic that grows linearly over this window, from
    /// 10 %. Round robin and least request only. Default: none.
    pub slow_start: Option<Duration>,
    /// Passive ejection of failing backends. Default: none.
    pub outlier_detection: Option<OutlierDetection>,
    /// Limits past which requests are answered 503 at once. Always on.
    pub circuit_breaker: CircuitBreaker,
    /// How many retries may be in flight, against the requests in flight. Always on.
    pub retry_budget: RetryBudget,
    /// Backends given by name are re-resolved on their TTL. Default: none (names are
    /// resolved once, when the config is loaded).
    pub dns: Option<Dns>,
}

/// `upstreams.NAME.dns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// The DNS server to ask (UDP, then TCP). Default: the system's (`/etc/resolv.conf`).
    pub resolver: Option<std::net::SocketAddr>,
    /// Re-resolved no more often than this, whatever the TTL. Default 1 s.
    pub min_ttl: Duration,
    /// And at least this often. Default 300 s.
    pub max_ttl: Duration,
}

/// `upstreams.NAME.outlier_detection`: backends ejected on what real requests see.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// Ejected after this many failures in a row (5xx answers, connect failures,
    /// timeouts, resets). Default 5.
    pub consecutive_failures: u32,
    /// Also ejected when its success rate over an `interval` falls below a threshold.
    pub success_rate: Option<SuccessRate>,
    /// The success-rate window, and how often ejection multipliers decay. Default 10 s.
    pub interval: Duration,
    /// The first ejection's length; the n-th in a row lasts n times this. Default 30 s.
    pub base_ejection_time: Duration,
    /// No ejection lasts longer. Default 300 s.
    pub max_ejection_time: Duration,
    /// Never more than this share of the cluster's backends ejected at once (at least one
    /// may be). Default 50.
    pub max_ejected_percent: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SuccessRate {
    /// Requests a backend must have had in the window to be judged. Default 20.
    pub min_requests: u32,
    /// Ejected below this share of successes (0 to 1). Default 0.8.
    pub threshold: f64,
}

/// `upstreams.NAME.circuit_breaker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Requests in flight to the cluster. Default 1024.
    pub max_requests: usize,
    /// Attempts waiting for a connection (connecting). Default 1024.
    pub max_pending: usize,
    /// Connections busy with a request. Default 1024.
    pub max_connections: usize,
    /// The `Retry-After` of the 503. Default 1 s.
    pub retry_after: Duration,
}

/// `upstreams.NAME.retry_budget`: retries in flight may be at most `percent` of the
/// requests in flight, or `min_retries`, whichever is more.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    /// Default 20.
    pub percent: f64,
    /// Default 3.
    pub min_retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    H2,
}

/// `upstreams.NAME.tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name sent as SNI and checked against the backend's certificate. Default: the
    /// backend's host when it is a name, else none (then the certificate is not checked
    /// for a name: give `sni` for IP backends).
    pub sni: Option<String>,
    /// PEM bundle the backend's certificate must chain to. Default: the system roots.
    pub ca_file: Option<String>,
    /// Check the backend's certificate. Default true.
    pub verify: bool,
    /// A client certificate and key presented to backends that ask (mTLS).
    pub client_cert: Option<(String, String)>,
}

/// Largest backend weight (an SRV record's weight is capped at it too): weighted round
/// robin expands weights into a table.
pub const MAX_BACKEND_WEIGHT: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `host:port`; names are resolved when the config is loaded (and re-resolved under
    /// `dns`). Or `srv:NAME`: the targets of NAME's SRV records, re-resolved under `dns`.
    pub addr: String,
    /// Relative share of requests. Default 1. An SRV backend takes its targets' weights.
    pub weight: u32,
}

impl Backend {
    /// The name of an `srv:NAME` backend.
    pub fn srv(&self) -> Option<&str> {
        self.addr.strip_prefix("srv:")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadBalancing {
    /// Weighted round robin.
    RoundRobin,
    /// Ketama consistent hashing of the key.
    ConsistentHash(HashOn),
    /// Power of two choices over requests in flight, weighted.
    LeastRequest,
    /// Power of two choices over requests in flight times the backend's peak-EWMA
    /// response time, weighted.
    PeakEwma,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    ClientIp,
    /// A request header, by lower-case name; requests without it hash on the client IP.
    Header(String),
    /// A claim of the verified token (its string form); requests without a verified
    /// token or without the claim hash on the client IP.
    Claim(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    Tcp,
    Http {
        path: String,
        /// The `Host` header of the check. Default `localhost`.
        host: String,
        expected_status: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    /// Default 5 s.
    pub interval: Duration,
    /// Default 1 s.
    pub timeout: Duration,
    /// Consecutive passes that bring a backend back. Default 2.
    pub healthy_threshold: usize,
    /// Consecutive failures that take a backend out. Default 3.
    pub unhealthy_threshold: usize,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Unique; the `route` label of metrics.
    pub name: String,
    pub host: Option<String>,
    pub path: String,
    pub path_match: PathMatch,
    /// `path_case: insensitive`: the path is matched ignoring ASCII letter case, for an
    /// upstream that does so itself (default: `sensitive`).
    pub case_insensitive: bool,
    /// Upper case; empty means every method.
    pub methods: Vec<String>,
    /// Where requests go: one entry for `upstream: NAME`, or the `upstreams` list. Entries
    /// with `when` are tried in order (the first that matches takes the request); else a
    /// weighted choice among those without.
    pub targets: Vec<RouteTarget>,
    /// A sampled share of requests also sent to a shadow upstream; its answers are dropped.
    pub mirror: Option<Mirror>,
    /// Idempotent requests are retried on another backend after these (connect failures
    /// always are, up to the upstream's `retries`). Default: none.
    pub retry_on: RetryOn,
    /// Remove the matched prefix from the path sent upstream.
    pub strip_prefix: bool,
    /// Default: `required` when any provider is configured, else `none`.
    pub auth: AuthMode,
    /// Names of the providers whose tokens this route accepts (default: all).
    pub providers: Vec<String>,
    /// Forward the `Authorization` header upstream (default: removed on routes with auth).
    pub keep_authorization: bool,
    /// The RBAC policy (a name in `policies`). None: any authenticated caller may pass.
    pub policy: Option<String>,
    /// The external authorization service (a name in `auth.ext_authz`), asked after RBAC.
    pub ext_authz: Option<String>,
    /// All must admit a request.
    pub rate_limits: Vec<Limit>,
    /// Request body size in bytes; larger → 413. Default `server.http.max_body`.
    pub max_body: u64,
    /// Client addresses let in, checked after the global rules, before authentication.
    pub ip_rules: IpRules,
    /// The route's own `cors` (else `server.http.cors` applies).
    pub cors: Option<std::sync::Arc<Cors>>,
    /// `headers`: set, add and remove, on the upstream request and on its answer.
    pub headers: HeaderRules,
    /// `client_certificate: required`: only requests on a TLS connection with a verified
    /// client certificate reach this route (others get 403). Default `any`.
    pub require_client_certificate: bool,
    /// Tokens on this route must be bound to the connection's client certificate
    /// (RFC 8705 §3): `cnf.x5t#S256` required and equal to its thumbprint.
    pub require_certificate_binding: bool,
    /// DPoP on this route, at least as strict as its provider's. Default off.
    pub dpop: DpopMode,
    /// Mint a token for the upstream instead of forwarding the caller's. Default: none.
    pub upstream_token: Option<UpstreamToken>,
    /// The protected resource (RFC 9728) this route serves; its tokens' `aud` must hold it.
    pub resource: Option<Resource>,
    /// RFC 9470: the login the route needs (`acr`, `auth_time`).
    pub step_up: Option<StepUp>,
}

/// A protected resource's identifier and where its metadata is served (RFC 9728 §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The identifier, as configured (`https://api.example.com/mcp`).
    pub id: String,
    /// The identifier's authority (`api.example.com`, with a port when it has one),
    /// lower case.
    pub authority: String,
    /// Its host, without the port: the `Host` its metadata is answered for.
    pub host: String,
    /// The path of the metadata document: `/.well-known/oauth-protected-resource` followed
    /// by the identifier's path (nothing for `/`).
    pub metadata_path: String,
    /// The metadata document's URL, the `resource_metadata` of challenges.
    pub metadata_url: String,
}

/// `routes[].step_up` (RFC 9470).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    /// The `acr` values accepted; empty: not checked.
    pub acr: Vec<String>,
    /// The longest time since `auth_time`; none: not checked.
    pub max_age: Option<Duration>,
}

impl Route {
    /// The upstreams this route may send to (mirror excluded).
    pub fn upstream_names(&self) -> impl Iterator<Item = &str> {
        self.targets.iter().map(|t| t.upstream.as_str())
    }
}

/// One entry of a route's `upstreams`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTarget {
    pub upstream: String,
    /// Share among the entries without `when`. Default 1.
    pub weight: u32,
    /// All must hold for the entry to take a request; empty: it takes part in the split.
    pub when: Vec<Condition>,
}

/// A condition of `when`: on the canonical request, or on the verified token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// A request header (lower-case name) with exactly this value.
    Header(String, String),
    /// A cookie with exactly this value.
    Cookie(String, String),
    /// A claim of the verified token equal to this (a string, or the string form of a
    /// number or boolean), or an array claim holding it. Never true without a verified token.
    Claim(String, String),
}

/// `mirror: { upstream, percent, identity, cookies }`. A mirrored copy never carries a
/// credential: no `Authorization`, `Proxy-Authorization` or `DPoP`, no token header, query
/// parameter or cookie, no minted `upstream_token`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub upstream: String,
    /// 0 to 100. Default 100.
    pub percent: f64,
    /// The identity headers (`forward_claims`, client certificate) go to the shadow too.
    /// Default false.
    pub identity: bool,
    /// The client's other cookies (a session cookie is a credential too) go to the shadow.
    /// Default false.
    pub cookies: bool,
    /// A token minted for the shadow's own audience (never the primary's), for a verified
    /// caller, as `routes[].upstream_token`. Default none.
    pub upstream_token: Option<UpstreamToken>,
}

/// `retry_on`: `reset` and HTTP statuses (500 to 599).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub reset: bool,
    pub statuses: Vec<u16>,
}

/// The `rate_limiting` section: where limits keep their state.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimiting {
    /// Keys the in-process store holds at most; idle keys go first. Default 1,000,000.
    pub max_local_keys: usize,
    /// The shared store for `store: redis` limits.
    pub redis: Option<Redis>,
    /// IPv6 client addresses share a bucket per prefix of this length (limits may set their
    /// own). Default 64: one end site's LAN, which a client can rotate through freely.
    pub ipv6_prefix: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Redis {
    pub server: RedisServer,
    /// One check, round trip included. Default 5 ms.
    pub timeout: Duration,
    pub on_store_error: OnStoreError,
}

/// Where a shared store lives: one Redis server, a Redis Cluster, or the master of a
/// service that Redis Sentinel watches. Every URL is `redis://` (or `rediss://`); its
/// credentials and database apply to the connections made from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisServer {
    /// One server.
    Node(String),
    /// A Redis Cluster, found from these seed nodes; each key goes to its slot's master.
    Cluster(Vec<String>),
    /// The master of `master`, asked of these Sentinels and asked again when it fails over.
    /// The first Sentinel URL's credentials and database are also used for the master.
    Sentinel { master: String, nodes: Vec<String> },
}

/// What a limit does when Redis does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    Allow,
    Deny,
    /// Check the in-process store instead (the default): limits hold per instance.
    Local,
}

/// One rate limit of a route (GCRA).
#[derive(Debug, Clone)]
pub struct Limit {
    /// Unique on its route; the `limit` label of metrics and the policy name in headers.
    pub name: String,
    /// The parts of the bucket key, in order.
    pub keys: Vec<LimitKey>,
    /// The rate and the burst (requests an idle key may make at once; default: the rate's
    /// count), checked together: every `Gcra` here can be used as it is.
    pub gcra: tollgate_ratelimit::Gcra,
    pub tiers: Option<Tiers>,
    pub store: LimitStore,
    /// Send `RateLimit` headers on admitted responses too (429s always carry them).
    pub headers: bool,
    /// Prefix length IPv6 client addresses are keyed by. Default `rate_limiting.ipv6_prefix`.
    pub ipv6_prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// A claim by dotted path (requests without it fall back to the client IP).
    Claim(tollgate_policy::ClaimPath),
    ClientIp,
    /// A request header, lower-case (requests without it fall back to the client IP).
    Header(http::HeaderName),
    /// The route itself: one bucket for everyone.
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitStore {
    Local,
    Redis,
}

/// Rates chosen by a claim's value; callers with other values get the limit's own rate.
#[derive(Debug, Clone)]
pub struct Tiers {
    pub claim: tollgate_policy::ClaimPath,
    pub values: Vec<Tier>,
}

#[derive(Debug, Clone)]
pub struct Tier {
    pub value: String,
    pub gcra: tollgate_ratelimit::Gcra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// A valid token is needed; none or an invalid one is answered 401.
    Required,
    /// No token passes anonymously; an invalid token is still answered 401.
    Optional,
    /// Tokens are not looked at.
    None,
}

/// The `auth` section.
#[derive(Debug, Clone)]
pub struct Auth {
    pub providers: Vec<Provider>,
    /// Claims copied into upstream request headers. Incoming headers with these names are
    /// removed on every route, so a client can never supply them.
    pub forward_claims: Vec<ClaimHeader>,
    /// Verified tokens remembered. Default 100,000.
    pub cache_size: u64,
    /// The `realm` of `WWW-Authenticate`. Default `tollgate`.
    pub realm: String,
    /// Failed authentications allowed per client address (IPv6 by /64). Once a client is
    /// over it, a token not already in the verified-token cache is refused with 429 before
    /// any signature check. Default 5/s with a burst of 50; `failed_auth_limit: off` is not
    /// offered, set a high rate instead.
    pub failed_auth_limit: tollgate_ratelimit::Gcra,
    /// Signature checks running at once (including those waiting for an unknown-kid key
    /// refetch); past it, uncached tokens get 503 with `Retry-After`. Default 256.
    pub max_verifications_in_flight: usize,
    /// Introspection calls in flight at once for one provider (requests joining a call in
    /// flight for the same token add none). Apart from `max_verifications_in_flight`, so
    /// that a slow identity provider never starves local signature checks; past it, 503
    /// `network_budget`. Default 64.
    pub max_network_waits_in_flight: usize,
    /// Of those, started for one client address (IPv6 by /64), counted when admitted; past
    /// it, 429 `client_network_budget`. Default 4.
    pub max_network_waits_per_client: usize,
    /// The deny list of revoked tokens, checked after verification (cache hits included).
    pub revocation: Option<Revocation>,
    /// The gateway's own signing keys, for routes with `upstream_token`.
    pub signing_keys: Option<SigningKeys>,
    pub dpop: DpopSettings,
    /// `auth.ext_authz`: external authorization services by name.
    pub ext_authz: std::collections::BTreeMap<String, ExtAuthz>,
    /// `auth.shared_signals`: the receiver of pushed security events.
    pub shared_signals: Option<SharedSignals>,
}

/// `auth.shared_signals`: pushed Security Event Tokens (RFC 8417, RFC 8935) that revoke.
#[derive(Debug, Clone)]
pub struct SharedSignals {
    /// On the metrics listener. Default `/ssf/events`.
    pub path: String,
    /// The bearer token transmitters must send.
    pub bearer: SecretSource,
    /// The `aud` events must carry.
    pub audience: String,
    /// Each transmitter as a provider of keys: `issuer`, the receiver's `audience`, `typ`
    /// `secevent+jwt`, no `exp` required. Never used for access tokens.
    pub transmitters: Vec<Provider>,
    /// For each transmitter (same order): the token issuers whose subjects it may revoke.
    pub subjects_of: Vec<Vec<String>>,
    /// Event `jti`s remembered. Default 100,000.
    pub jti_cache_size: u64,
}

/// `auth.ext_authz.NAME`: an authorization service in Envoy ext_authz's HTTP protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthz {
    /// https, or http on a loopback host or with `insecure_http`; the request's path and
    /// query are appended to its path.
    pub url: String,
    pub ca_file: Option<String>,
    /// One check, connect to last byte. Default 500 ms.
    pub timeout: Duration,
    /// Let requests through when the service cannot be asked. Default false (503).
    pub failure_mode_allow: bool,
    /// Client headers sent with the check (lower case).
    pub send_headers: Vec<http::HeaderName>,
    /// The header carrying the claims (base64url JSON). Default `x-tollgate-claims`.
    pub claims_header: http::HeaderName,
    /// Headers of an allowing answer set upstream.
    pub upstream_headers: Vec<http::HeaderName>,
    /// Headers of a denying answer passed to the client (beside `content-type`).
    pub client_headers: Vec<http::HeaderName>,
    /// Decisions reused per caller, route and method; None: not cached.
    pub cache_ttl: Option<Duration>,
    pub cache_size: u64,
    pub failure_threshold: u32,
    pub open_for: Duration,
    /// Checks in flight at once. Default 64.
    pub max_in_flight: usize,
}

/// `auth.signing_keys`: every key is published at `/.well-known/jwks.json` on the metrics
/// listener; `current` signs. Rotation: add the next key (published, so backends learn
/// it), then make it `current`, then remove the old one after the longest `ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeys {
    /// `iss` of the tokens the gateway mints.
    pub issuer: String,
    /// The `kid` that signs.
    pub current: String,
    pub keys: Vec<SigningKeyFile>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyFile {
    pub kid: String,
    /// A PKCS#8 PEM private key: Ed25519 (EdDSA) or P-256 (ES256).
    pub file: String,
}

/// `routes[].upstream_token`: the upstream gets a short-lived token minted by the gateway
/// for the verified caller instead of the caller's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamToken {
    /// Where it goes: `Authorization` (as `Bearer TOKEN`, the default) or another header
    /// (the token alone).
    pub header: http::HeaderName,
    /// The token's `aud`.
    pub audience: String,
    /// From `iat` to `exp`. Default 60 s.
    pub ttl: Duration,
    /// Claims of the caller's token copied into it, by top-level name (`sub` always is).
    pub claims: Vec<String>,
}

/// `auth.revocation`: a deny list of `jti` values and subjects (`tollgate_jwt::DenyList`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub source: RevocationSource,
    /// How often the file's stamp, or the Redis list's version, is looked at. Default 1 s.
    pub poll: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationSource {
    /// JSON Lines, re-read when it changes.
    File(String),
    /// A Redis set of JSON entries at `key`, with its version counter at `key:version`
    /// (default key `tollgate:revoked`).
    Redis { server: RedisServer, key: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    /// A dotted path into the claims (`realm_access.roles`).
    pub claim: tollgate_policy::ClaimPath,
    pub header: http::HeaderName,
}

/// An issuer of tokens and where its keys come from.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    /// Tokens are routed to a provider by their `iss`, which must equal this exactly.
    pub issuer: String,
    /// Which `aud` values are accepted. Required in the file: a provider accepting every
    /// audience must say `audiences: any`.
    pub audiences: Audiences,
    /// When non-empty, the JOSE header `typ` must be one of these (e.g. `at+jwt`, RFC 9068),
    /// compared case-insensitively with an `application/` prefix ignored. Default: not checked.
    pub token_types: Vec<String>,
    /// Clock skew allowed for `exp`, `nbf`, `iat`. Default 30 s.
    pub leeway: Duration,
    /// Refuse tokens without `exp`. Default true.
    pub require_exp: bool,
    pub keys: KeySource,
    /// With `jwks_uri` or `discovery`: a PEM bundle the identity provider's certificate
    /// must chain to, instead of the system roots.
    pub ca_file: Option<String>,
    /// Plain-http key URLs allowed off loopback (a configured `jwks_uri`, the discovery URL
    /// and the `jwks_uri` a discovery document names). Default false.
    pub insecure_http: bool,
    pub refresh: Refresh,
    /// Where tokens are read from, in order. Default: `Authorization: Bearer`.
    pub token_sources: Vec<TokenSource>,
    /// Refuse tokens not bound to the client certificate (RFC 8705 §3: `cnf.x5t#S256`).
    /// A token that is bound is held to its binding whatever this says. Default false.
    pub require_certificate_binding: bool,
    /// DPoP (RFC 9449) for this provider's tokens. Default off.
    pub dpop: DpopMode,
}

/// `type: introspection`: tokens are sent to the provider's introspection endpoint
/// (RFC 7662), and an `active` answer's members are the token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introspection {
    /// https, or http on a loopback host or with `insecure_http: true`.
    pub endpoint: String,
    /// HTTP Basic client authentication (RFC 7662 §2.1, RFC 6749 §2.3.1).
    pub client_id: String,
    pub client_secret: SecretSource,
    /// Only tokens that are not JWTs (the default), or every token of the routes using it.
    pub all_tokens: bool,
    /// One call, connect to last byte. Default 2 s.
    pub timeout: Duration,
    /// An active answer is reused until the token's `exp`, and no longer than this.
    /// Default 5 min.
    pub cache_max_ttl: Duration,
    /// An inactive answer is reused this long. Default 10 s.
    pub negative_cache_ttl: Duration,
    /// Answers remembered. Default 100,000.
    pub cache_size: u64,
    /// Consecutive failed calls that open the circuit. Default 5.
    pub failure_threshold: u32,
    /// How long an open circuit refuses uncached tokens before one call tries again.
    /// Default 10 s.
    pub open_for: Duration,
}

/// `type: api_key`: the key file, JSON Lines, re-read when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyFile {
    pub path: String,
    /// How often the file's stamp is looked at. Default 2 s.
    pub poll: Duration,
}

/// Where a secret is read from when the gateway starts or reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(String),
    Env(String),
}

/// Whether requests carry DPoP proofs (RFC 9449).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum DpopMode {
    /// `Authorization: DPoP` is not accepted; `cnf.jkt` is not looked at.
    #[default]
    Off,
    /// `Authorization: DPoP` with a proof is accepted beside `Bearer`; a token bound to a
    /// key (`cnf.jkt`) must come with a proof by that key.
    Optional,
    /// Every token must be bound to a key and come with a proof by it.
    Required,
}

/// `auth.dpop`: proof checking for providers and routes with `dpop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopSettings {
    /// How long after its `iat` a proof is accepted (and its `jti` remembered). Default 60 s.
    pub max_age: Duration,
    /// How far in the future a proof's `iat` may be. Default 5 s.
    pub leeway: Duration,
    /// Proof `jti`s remembered in this process (Redis, when rate limits use it, holds them
    /// for the fleet). When full of unexpired entries, proofs are refused with 503. Default
    /// 1,000,000.
    pub replay_cache_size: usize,
    /// The origins a proof's `htu` may name (`https://api.example.com`, normalised); empty:
    /// the request's own scheme and `Host`.
    pub public_origins: Vec<String>,
    /// Server-issued nonces (RFC 9449 §9), when on.
    pub nonce: Option<DpopNonce>,
}

/// `auth.dpop.nonce: on`: stateless nonces, an HMAC of the time window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopNonce {
    /// The key, shared by the fleet.
    pub secret: SecretSource,
    /// How often the nonce changes. Default 5 min.
    pub lifetime: Duration,
}

impl Default for DpopSettings {
    fn default() -> Self {
        DpopSettings {
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
            replay_cache_size: 1_000_000,
            public_origins: Vec::new(),
            nonce: None,
        }
    }
}

/// The audiences a provider accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audiences {
    /// `audiences: any`: `aud` is not checked.
    Any,
    /// A token's `aud` must contain one of these (never empty).
    List(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS document given in the config (as JSON text).
    Inline(String),
    /// A JWKS (or PEM) file, re-read when it changes.
    File(String),
    /// A JWKS URL, fetched before ready and refreshed: https, or http on a loopback host or
    /// with `insecure_http: true`. Symmetric (`oct`) keys in it are never used.
    Uri(String),
    /// An OpenID Connect discovery document's URL (OIDC Discovery 1.0 §4): fetched before
    /// ready and on every refresh; its `issuer` must equal the provider's exactly, and its
    /// `jwks_uri` (held to the same rule as a configured one) is then fetched like
    /// [`KeySource::Uri`]; its `id_token_signing_alg_values_supported` limits the algorithms.
    Discovery(String),
    /// No keys: tokens are checked by asking the provider (RFC 7662 token introspection).
    Introspection(Introspection),
    /// No keys: the credentials are API keys, looked up by their hash in a file.
    ApiKeys(ApiKeyFile),
    /// An HMAC secret read from a file.
    HmacFile { path: String, alg: String },
    /// An HMAC secret read from an environment variable.
    HmacEnv { var: String, alg: String },
}

/// Key refresh timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refresh {
    /// `jwks_uri` refresh when the response names no `max-age`. Default 5 min.
    pub interval: Duration,
    /// Bounds on a `Cache-Control: max-age`. Defaults 1 min and 1 h.
    pub min_interval: Duration,
    pub max_interval: Duration,
    /// Least time between refetches caused by an unknown `kid`. Default 30 s.
    pub unknown_kid_cooldown: Duration,
    /// How long the last good keys stay in use while fetches fail. Default 24 h.
    pub max_stale: Duration,
    /// One fetch, connect to last byte. Default 5 s.
    pub timeout: Duration,
    /// How often a `jwks_file` is checked for changes. Default 2 s.
    pub file_poll: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`, scheme case-insensitive.
    Bearer,
    /// The whole value of a header (lower-case name).
    Header(String),
    Cookie(String),
    Query(String),
}
