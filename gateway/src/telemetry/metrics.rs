//! The gateway's Prometheus metrics, in a registry it owns, and the listener that serves
//! them with `/healthz` and `/readyz`, apart from the proxy port.
//!
//! Label values come from the config (route, upstream and backend names) or from small
//! fixed sets (method, status, outcome), never from request paths or user input, so the
//! number of series stays bounded.

use once_cell::sync::Lazy;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A metric type that can be made and registered from its name, help, labels and buckets.
trait Make: prometheus::core::Collector + Clone + Sized + 'static {
    fn make(name: &str, help: &str, labels: &[&str], buckets: Option<&[f64]>) -> Self;

    fn registered(
        registry: &Registry,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Option<&[f64]>,
    ) -> Self {
        let metric = Self::make(name, help, labels, buckets);
        registry
            .register(Box::new(metric.clone()))
            .expect("metric names are unique");
        metric
    }
}

macro_rules! make_plain {
    ($($ty:ty),*) => {$(
        impl Make for $ty {
            fn make(name: &str, help: &str, _: &[&str], _: Option<&[f64]>) -> Self {
                <$ty>::new(name, help).expect("valid metric")
            }
        }
    )*};
}
macro_rules! make_vec {
    ($($ty:ty),*) => {$(
        impl Make for $ty {
            fn make(name: &str, help: &str, labels: &[&str], _: Option<&[f64]>) -> Self {
                <$ty>::new(Opts::new(name, help), labels).expect("valid metric")
            }
        }
    )*};
}
make_plain!(IntCounter, IntGauge, Gauge);
make_vec!(IntCounterVec, IntGaugeVec, GaugeVec);

impl Make for HistogramVec {
    fn make(name: &str, help: &str, labels: &[&str], buckets: Option<&[f64]>) -> Self {
        let mut opts = HistogramOpts::new(name, help);
        if let Some(b) = buckets {
            opts = opts.buckets(b.to_vec());
        }
        HistogramVec::new(opts, labels).expect("valid metric")
    }
}

/// The table of metrics: each entry a field, its type, name, help, labels and buckets;
/// [`Registered::new`] makes and registers every one.
macro_rules! metrics_table {
    ($(
        $field:ident: $ty:ident = $name:literal, $help:literal
        $(, labels [$($label:literal),* $(,)?])?
        $(, buckets $buckets:expr)?;
    )*) => {
        /// Every metric registered from the table (reached through [`Metrics`]).
        pub struct Registered {
            $(pub $field: $ty,)*
        }

        impl Registered {
            fn new(registry: &Registry) -> Registered {
                Registered {$(
                    $field: <$ty as Make>::registered(
                        registry,
                        $name,
                        $help,
                        &[$($($label),*)?],
                        None$(.or(Some($buckets)))?,
                    ),
                )*}
            }
        }
    };
}

metrics_table! {
    requests: IntCounterVec = "tollgate_requests_total",
        "Requests answered, by route, method and response status.",
        labels ["route", "method", "status"];
    request_duration: HistogramVec = "tollgate_request_duration_seconds",
        "Time from request header to the end of the response, by route.",
        labels ["route"],
        buckets &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    upstream_requests: IntCounterVec = "tollgate_upstream_requests_total",
        "Attempts to reach a backend, by upstream, backend and outcome \
         (response, connect_error, timeout, error).",
        labels ["upstream", "backend", "outcome"];
    backend_healthy: IntGaugeVec = "tollgate_upstream_backend_healthy",
        "1 when the backend passes its health checks, else 0.",
        labels ["upstream", "backend"];
    health_checks: IntCounterVec = "tollgate_upstream_health_checks_total",
        "Active health checks by verdict (pass or fail).",
        labels ["upstream", "backend", "result"];
    outlier_events: IntCounterVec = "tollgate_upstream_outlier_events_total",
        "Passive outlier detection: ejected_consecutive_failures, ejected_success_rate, \
         returned, and ejection_skipped (the max_ejected_percent share was reached).",
        labels ["upstream", "backend", "event"];
    backend_ejected: IntGaugeVec = "tollgate_upstream_backend_ejected",
        "1 while outlier detection keeps the backend out, else 0.",
        labels ["upstream", "backend"];
    circuit_open: IntCounterVec = "tollgate_upstream_circuit_open_total",
        "Requests answered 503 by the cluster's circuit breaker, by the limit reached.",
        labels ["upstream", "limit"];
    upstream_retries: IntCounterVec = "tollgate_upstream_retries_total",
        "Retries on another backend by reason (connect, reset, status) and result \
         (retried, or budget_exhausted when the retry budget refused one).",
        labels ["upstream", "reason", "result"];
    mirror_requests: IntCounterVec = "tollgate_mirror_requests_total",
        "Mirrored copies by result: answered, failed, skipped_body (requests with a \
         body are not mirrored) or dropped (too many mirrors in flight).",
        labels ["route", "upstream", "result"];
    dns_resolutions: IntCounterVec = "tollgate_upstream_dns_resolutions_total",
        "Resolutions of backends given by name under dns, by result (success, error).",
        labels ["upstream", "result"];
    build_info: IntGaugeVec = "tollgate_build_info",
        "Always 1; the version as a label.",
        labels ["version"];
    auth_decisions: IntCounterVec = "tollgate_auth_decisions_total",
        "Authentication outcomes, by provider (none when no provider was chosen), \
         result (allow, anonymous, deny) and reason (ok or the refusal reason).",
        labels ["provider", "result", "reason"];
    jwks_fetch: IntCounterVec = "tollgate_jwks_fetch_total",
        "Key set loads (jwks_uri fetches, jwks_file reloads), by provider and result.",
        labels ["provider", "result"];
    oidc_discovery: IntCounterVec = "tollgate_oidc_discovery_fetch_total",
        "OpenID discovery document fetches, by provider and result (success, error: \
         unreachable, not JSON, an issuer other than the provider's, a refused jwks_uri).",
        labels ["provider", "result"];
    dpop_proofs: IntCounterVec = "tollgate_dpop_proofs_total",
        "DPoP proofs checked, by result: accepted, invalid (refused by the proof's own \
         checks or its key not the token's), replayed (jti already used), nonce (no nonce or \
         an old one: answered use_dpop_nonce), unavailable (the replay cache was full or its Redis store failed with on_store_error: deny).",
        labels ["result"];
    introspection_calls: IntCounterVec = "tollgate_introspection_requests_total",
        "Token introspection calls (RFC 7662), by provider and result: active, inactive, \
         malformed (claims of the wrong type), bad_request (a 400 for this token: refused, \
         not counted against the endpoint), error (timeout, unreachable, other non-200, \
         not JSON: the token is refused with 503), circuit_open (not called: the \
         circuit is open after consecutive errors; refused with 503).",
        labels ["provider", "result"];
    introspection_cache: IntCounterVec = "tollgate_introspection_cache_total",
        "Introspection answers looked up, by provider and result (hit, miss).",
        labels ["provider", "result"];
    upstream_tokens: IntCounterVec = "tollgate_upstream_tokens_total",
        "Tokens for upstreams (upstream_token), by route and result: minted (signed \
         now), cached (reused within half its lifetime) or error.",
        labels ["route", "result"];
    jwks_keys: IntGaugeVec = "tollgate_jwks_keys",
        "Keys in the provider's current key set.",
        labels ["provider"];
    jwks_last_success: GaugeVec = "tollgate_jwks_last_success_timestamp_seconds",
        "Unix time of the provider's last successful key load.",
        labels ["provider"];
    token_cache: IntCounterVec = "tollgate_token_cache_total",
        "Token cache lookups, by result: hit (verified before), forged (its signature \
         failed before), miss.",
        labels ["result"];
    config_reloads: IntCounterVec = "tollgate_config_reloads_total",
        "Config reloads on SIGHUP, by result (success, error).",
        labels ["result"];
    cors_requests: IntCounterVec = "tollgate_cors_requests_total",
        "Requests with an Origin on routes with cors, by route, kind (preflight, actual) and \
         result (allowed, denied).",
        labels ["route", "kind", "result"];
    header_rewrites_skipped: IntCounterVec = "tollgate_header_rewrites_skipped_total",
        "Header rules (routes[].headers) whose value could not be written (a missing claim, \
         control characters), by route and header: the header was left out.",
        labels ["route", "header"];
    ip_refusals: IntCounterVec = "tollgate_ip_refusals_total",
        "Requests refused on their client address by ip_rules, by scope (global, route) and \
         route (unmatched for global rules, which apply before routing).",
        labels ["scope", "route"];
    rbac_decisions: IntCounterVec = "tollgate_rbac_decisions_total",
        "RBAC policy decisions, by route, policy and decision (allow, deny, shadow_deny).",
        labels ["route", "policy", "decision"];
    ratelimit_decisions: IntCounterVec = "tollgate_ratelimit_decisions_total",
        "Rate-limit checks, by route, limit and decision (allow, deny).",
        labels ["route", "limit", "decision"];
    ratelimit_store_errors: IntCounterVec = "tollgate_ratelimit_store_errors_total",
        "Rate-limit checks whose store failed or timed out, by store.",
        labels ["store"];
    ratelimit_keys: IntGauge = "tollgate_ratelimit_keys",
        "Keys held by the in-process rate-limit store.";
    open_connections: IntGauge = "tollgate_open_connections",
        "Client connections open on the proxy listener.";
    connections_refused: IntCounterVec = "tollgate_connections_refused_total",
        "Client connections refused at accept, by limit (listener: \
         server.http.max_connections, client: server.http.max_connections_per_client).",
        labels ["limit"];
    header_refusals: IntCounterVec = "tollgate_header_refusals_total",
        "Connections closed while reading a request header block, by reason \
         (header_timeout, header_too_large).",
        labels ["reason"];
    bad_requests: IntCounterVec = "tollgate_bad_requests_total",
        "Requests refused before routing (400, 413, 414, 431), by reason.",
        labels ["reason"];
    preauth_refusals: IntCounterVec = "tollgate_preauth_refusals_total",
        "Uncached tokens refused before any signature check, by reason \
         (failed_auth_limit: the client address failed too often; \
         verification_budget: too many signature checks in flight).",
        labels ["reason"];
    verifications_in_flight: IntGauge = "tollgate_signature_verifications_in_flight",
        "Token signature checks running now.";
    network_waits_in_flight: IntGauge = "tollgate_auth_network_waits_in_flight",
        "Introspection calls in flight now, each holding a place in its provider's and \
         its client's network budget.";
    clients_gone: IntCounter = "tollgate_clients_gone_total",
        "Requests whose client closed the connection (or reset the HTTP/2 stream) while \
         the gateway was still deciding on them; their work stopped there.";
    requests_in_flight: IntGauge = "tollgate_requests_in_flight",
        "Requests between their header and the end of their answer.";
    config_generation: IntGauge = "tollgate_config_generation",
        "The config in use: 1 for the one loaded at start, one more for each successful reload.";
    config_last_success: Gauge = "tollgate_config_last_reload_success_timestamp_seconds",
        "Unix time at which the config in use was loaded (at start or by a reload).";
    upstream_connect: HistogramVec = "tollgate_upstream_connect_duration_seconds",
        "Time to open a new connection to a backend (reused connections not counted), \
         by upstream.",
        labels ["upstream"],
        buckets UPSTREAM_BUCKETS;
    upstream_response: HistogramVec = "tollgate_upstream_response_duration_seconds",
        "Time from choosing a backend to its response header, by upstream.",
        labels ["upstream"],
        buckets UPSTREAM_BUCKETS;
    tls_handshakes: IntCounterVec = "tollgate_tls_handshakes_total",
        "TLS handshakes completed on the HTTPS listener, by version and ALPN protocol.",
        labels ["version", "alpn"];
    tls_handshake_failures: IntCounterVec = "tollgate_tls_handshake_failures_total",
        "TLS handshakes that failed on the HTTPS listener, by reason (timeout, closed, \
         no_client_certificate, bad_client_certificate, incompatible, alert_received, \
         protocol, other).",
        labels ["reason"];
    tls_certificate_expiry: IntGaugeVec = "tollgate_tls_certificate_expiry_timestamp_seconds",
        "notAfter of each certificate the HTTPS listener serves, by its first DNS name.",
        labels ["name"];
    tls_certificate_reloads: IntCounterVec = "tollgate_tls_certificate_reloads_total",
        "Re-reads of changed certificate, key or CA files, by result.",
        labels ["result"];
    revocation_entries: IntGaugeVec = "tollgate_revocation_entries",
        "Entries in the deny list of revoked tokens, by kind (jti, sub).",
        labels ["kind"];
    revocation_hits: IntCounterVec = "tollgate_revocation_hits_total",
        "Verified tokens refused as revoked, by the kind of entry that matched (jti, sub).",
        labels ["kind"];
    revocation_reloads: IntCounterVec = "tollgate_revocation_reloads_total",
        "Reads of the deny list's source (file or Redis), by result (ok, error).",
        labels ["result"];
    ext_authz_checks: IntCounterVec = "tollgate_ext_authz_checks_total",
        "External authorization checks, by service and result (allow, deny, deny_5xx, \
         cached, error, circuit_open).",
        labels ["service", "result"];
    ext_authz_duration: HistogramVec = "tollgate_ext_authz_duration_seconds",
        "External authorization calls, from the request's start to the service's answer.",
        labels ["service"];
    api_keys: IntGaugeVec = "tollgate_api_keys",
        "API keys on file, by provider (type: api_key).",
        labels ["provider"];
    api_key_reloads: IntCounterVec = "tollgate_api_key_reloads_total",
        "Re-reads of a changed API key file, by provider and result (ok, error).",
        labels ["provider", "result"];
    security_events: IntCounterVec = "tollgate_security_events_total",
        "Security Event Tokens pushed to auth.shared_signals, by event (session_revoked, \
         credential_change, account_disabled, other, none) and result (revoked, ignored, \
         duplicate, unauthenticated, invalid, unavailable).",
        labels ["event", "result"];
    pushed_revocations: IntGauge = "tollgate_pushed_revocations",
        "Subjects revoked by pushed security events, held in this process.";
    revocation_last_success: Gauge = "tollgate_revocation_last_success_timestamp_seconds",
        "Unix time of the deny list's last successful read.";
    runtime_alive_tasks: IntGaugeVec = "tollgate_runtime_alive_tasks",
        "Tasks alive in each tokio runtime of the process (proxy, background, metrics), \
         read at scrape time.",
        labels ["runtime"];
    trace_spans: IntCounterVec = "tollgate_trace_spans_total",
        "Spans of sampled requests by what became of them: exported (the collector took \
         them), failed (the export failed or timed out), dropped (the export queue was full; \
         requests never wait for it).",
        labels ["result"];
    log_lines_dropped: IntCounter = "tollgate_log_lines_dropped_total",
        "Log lines dropped because the log writer (stdout) could not keep up or was \
         stalled; requests never wait for the log.";
    claims_not_forwarded: IntCounterVec = "tollgate_claims_not_forwarded_total",
        "forward_claims headers left out because the claim's value would not read \
         back the same upstream (control characters, non-ASCII, surrounding \
         whitespace, objects), by header.",
        labels ["header"];
}

/// Every metric of the gateway: the table's, and the counters resolved once for the hot
/// path.
pub struct Metrics {
    pub registry: Registry,
    all: Registered,
    pub token_cache_hit: IntCounter,
    pub token_cache_miss: IntCounter,
    pub token_cache_forged: IntCounter,
    pub revocation_hits_jti: IntCounter,
    pub revocation_hits_sub: IntCounter,
}

impl std::ops::Deref for Metrics {
    type Target = Registered;
    fn deref(&self) -> &Registered {
        &self.all
    }
}

/// Buckets for upstream times: 100 µs to 10 s.
const UPSTREAM_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Process-wide metrics; one registry, created on first use.
pub static METRICS: Lazy<Metrics> = Lazy::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let all = Registered::new(&registry);
        // The standard process_* series: resident memory, open file descriptors, CPU seconds,
        // start time (Linux).
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("one process collector");
        for result in ["ok", "error"] {
            all.revocation_reloads.with_label_values(&[result]);
        }
        all.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            registry,
            token_cache_hit: all.token_cache.with_label_values(&["hit"]),
            token_cache_miss: all.token_cache.with_label_values(&["miss"]),
            token_cache_forged: all.token_cache.with_label_values(&["forged"]),
            revocation_hits_jti: all.revocation_hits.with_label_values(&["jti"]),
            revocation_hits_sub: all.revocation_hits.with_label_values(&["sub"]),
            all,
        }
    }

    /// A config was put in use now (at start or by a reload).
    pub fn config_loaded(&self) {
        self.config_generation.inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.config_last_success.set(now);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        watch_runtime("metrics");
        for (name, handle) in RUNTIMES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            self.runtime_alive_tasks
                .with_label_values(&[name])
                .set(handle.metrics().num_alive_tasks() as i64);
        }
        if let Some(counter) = DROPPED_LOG_LINES.get() {
            let dropped = counter.dropped_lines() as u64;
            let seen = self.log_lines_dropped.get();
            if dropped > seen {
                self.log_lines_dropped.inc_by(dropped - seen);
            }
        }
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}

/// The log writer's count of dropped lines (see `serve::init_logging`).
static DROPPED_LOG_LINES: once_cell::sync::OnceCell<tracing_appender::non_blocking::ErrorCounter> =
    once_cell::sync::OnceCell::new();

/// Reports `counter` as `tollgate_log_lines_dropped_total` (the first writer set up wins).
pub fn count_dropped_log_lines(counter: tracing_appender::non_blocking::ErrorCounter) {
    let _ = DROPPED_LOG_LINES.set(counter);
}

/// The tokio runtimes whose tasks `tollgate_runtime_alive_tasks` counts: Pingora gives each
/// service its own, so each registers itself from inside (`watch_runtime`).
static RUNTIMES: Lazy<std::sync::Mutex<Vec<(&'static str, tokio::runtime::Handle)>>> =
    Lazy::new(Default::default);

/// Counts the tasks of the runtime this is called on, as `name` (the first call per name
/// wins; later ones are a lock and a comparison).
pub fn watch_runtime(name: &'static str) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut runtimes = RUNTIMES.lock().unwrap_or_else(|e| e.into_inner());
    if !runtimes.iter().any(|(n, _)| *n == name) {
        runtimes.push((name, handle));
    }
}

/// Set once the config is loaded and the proxy listener accepts connections.
pub static READY: AtomicBool = AtomicBool::new(false);

/// Set when a shutdown or upgrade signal arrives (`serve::Signals`): every answer from then
/// on closes its connection.
pub static DRAINING: AtomicBool = AtomicBool::new(false);

/// The method labels, in the order of [`method_index`].
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// Statuses whose counters are kept resolved; others are looked up by label each time.
const STATUSES: [u16; 18] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 405, 429, 500, 502, 503, 504, 206, 409,
];

/// Index of a method in [`METHODS`] (`OTHER` for non-standard ones).
pub fn method_index(m: &http::Method) -> usize {
    use http::Method as M;
    match *m {
        M::GET => 0,
        M::HEAD => 1,
        M::POST => 2,
        M::PUT => 3,
        M::DELETE => 4,
        M::PATCH => 5,
        M::OPTIONS => 6,
        M::CONNECT => 7,
        M::TRACE => 8,
        _ => 9,
    }
}

type CounterGrid = [std::sync::OnceLock<prometheus::IntCounter>; METHODS.len() * STATUSES.len()];

/// `tollgate_requests_total` for one route, with each (method, status) counter resolved
/// once: `with_label_values` hashes the labels and takes a read lock on every call, which
/// showed in the request path's profile. The grid is allocated on first use, so the 10,000
/// routes of a large config that see no traffic cost a pointer each.
pub struct RequestCounters {
    route: Arc<str>,
    grid: std::sync::OnceLock<Box<CounterGrid>>,
}

impl RequestCounters {
    pub fn new(route: Arc<str>) -> RequestCounters {
        RequestCounters {
            route,
            grid: std::sync::OnceLock::new(),
        }
    }

    pub fn inc(&self, method: &http::Method, status: u16) {
        let m = method_index(method);
        let Some(s) = STATUSES.iter().position(|s| *s == status) else {
            let status = status.to_string();
            METRICS
                .requests
                .with_label_values(&[&*self.route, METHODS[m], &status])
                .inc();
            return;
        };
        let grid = self
            .grid
            .get_or_init(|| Box::new(std::array::from_fn(|_| std::sync::OnceLock::new())));
        grid[m * STATUSES.len() + s]
            .get_or_init(|| {
                METRICS.requests.with_label_values(&[
                    &*self.route,
                    METHODS[m],
                    &STATUSES[s].to_string(),
                ])
            })
            .inc();
    }
}
