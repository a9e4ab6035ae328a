//! The gateway's Prometheus metrics, in a registry it owns, and the listener that serves
//! them with `/healthz` and `/readyz`, apart from the proxy port.
//!
//! Label values come from the config (route, upstream and backend names) or from small
//! fixed sets (method, status, outcome), never from request paths or user input, so the
//! number of series stays bounded.

use async_trait::async_trait;
use http::{Response, StatusCode};
use once_cell::sync::Lazy;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Every metric of the gateway.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub backend_healthy: IntGaugeVec,
    pub health_checks: IntCounterVec,
    pub outlier_events: IntCounterVec,
    pub backend_ejected: IntGaugeVec,
    pub circuit_open: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub mirror_requests: IntCounterVec,
    pub dns_resolutions: IntCounterVec,
    pub auth_decisions: IntCounterVec,
    pub jwks_fetch: IntCounterVec,
    pub oidc_discovery: IntCounterVec,
    pub dpop_proofs: IntCounterVec,
    pub introspection_calls: IntCounterVec,
    pub introspection_cache: IntCounterVec,
    pub upstream_tokens: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub jwks_last_success: GaugeVec,
    pub token_cache_hit: IntCounter,
    pub token_cache_miss: IntCounter,
    pub token_cache_forged: IntCounter,
    pub config_reloads: IntCounterVec,
    pub rbac_decisions: IntCounterVec,
    pub ratelimit_decisions: IntCounterVec,
    pub ratelimit_store_errors: IntCounterVec,
    pub ratelimit_keys: IntGauge,
    pub open_connections: IntGauge,
    pub connections_refused: IntCounterVec,
    pub header_refusals: IntCounterVec,
    pub bad_requests: IntCounterVec,
    pub preauth_refusals: IntCounterVec,
    pub verifications_in_flight: IntGauge,
    pub network_waits_in_flight: IntGauge,
    pub clients_gone: IntCounter,
    pub requests_in_flight: IntGauge,
    pub config_generation: IntGauge,
    pub config_last_success: prometheus::Gauge,
    pub upstream_connect: HistogramVec,
    pub upstream_response: HistogramVec,
    pub tls_handshakes: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    pub tls_certificate_expiry: IntGaugeVec,
    pub tls_certificate_reloads: IntCounterVec,
    pub revocation_entries: IntGaugeVec,
    pub revocation_hits_jti: IntCounter,
    pub revocation_hits_sub: IntCounter,
    pub revocation_reloads: IntCounterVec,
    pub revocation_last_success: prometheus::Gauge,
    runtime_alive_tasks: IntGaugeVec,
    /// Brought up to the log writer's own count at every scrape.
    log_lines_dropped: IntCounter,
    pub claims_not_forwarded: IntCounterVec,
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
        let requests = IntCounterVec::new(
            Opts::new(
                "tollgate_requests_total",
                "Requests answered, by route, method and response status.",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_request_duration_seconds",
                "Time from request header to the end of the response, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_requests_total",
                "Attempts to reach a backend, by upstream, backend and outcome \
                 (response, connect_error, timeout, error).",
            ),
            &["upstream", "backend", "outcome"],
        )
        .expect("valid metric");
        let backend_healthy = IntGaugeVec::new(
            Opts::new(
                "tollgate_upstream_backend_healthy",
                "1 when the backend passes its health checks, else 0.",
            ),
            &["upstream", "backend"],
        )
        .expect("valid metric");
        let health_checks = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_health_checks_total",
                "Active health checks by verdict (pass or fail).",
            ),
            &["upstream", "backend", "result"],
        )
        .expect("valid metric");
        let outlier_events = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_outlier_events_total",
                "Passive outlier detection: ejected_consecutive_failures, ejected_success_rate, \
                 returned, and ejection_skipped (the max_ejected_percent share was reached).",
            ),
            &["upstream", "backend", "event"],
        )
        .expect("valid metric");
        let backend_ejected = IntGaugeVec::new(
            Opts::new(
                "tollgate_upstream_backend_ejected",
                "1 while outlier detection keeps the backend out, else 0.",
            ),
            &["upstream", "backend"],
        )
        .expect("valid metric");
        let circuit_open = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_circuit_open_total",
                "Requests answered 503 by the cluster's circuit breaker, by the limit reached.",
            ),
            &["upstream", "limit"],
        )
        .expect("valid metric");
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_retries_total",
                "Retries on another backend by reason (connect, reset, status) and result \
                 (retried, or budget_exhausted when the retry budget refused one).",
            ),
            &["upstream", "reason", "result"],
        )
        .expect("valid metric");
        let mirror_requests = IntCounterVec::new(
            Opts::new(
                "tollgate_mirror_requests_total",
                "Mirrored copies by result: answered, failed, skipped_body (requests with a \
                 body are not mirrored) or dropped (too many mirrors in flight).",
            ),
            &["route", "upstream", "result"],
        )
        .expect("valid metric");
        let dns_resolutions = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_dns_resolutions_total",
                "Resolutions of backends given by name under dns, by result (success, error).",
            ),
            &["upstream", "result"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("tollgate_build_info", "Always 1; the version as a label."),
            &["version"],
        )
        .expect("valid metric");
        let auth_decisions = IntCounterVec::new(
            Opts::new(
                "tollgate_auth_decisions_total",
                "Authentication outcomes, by provider (none when no provider was chosen), \
                 result (allow, anonymous, deny) and reason (ok or the refusal reason).",
            ),
            &["provider", "result", "reason"],
        )
        .expect("valid metric");
        let jwks_fetch = IntCounterVec::new(
            Opts::new(
                "tollgate_jwks_fetch_total",
                "Key set loads (jwks_uri fetches, jwks_file reloads), by provider and result.",
            ),
            &["provider", "result"],
        )
        .expect("valid metric");
        let oidc_discovery = IntCounterVec::new(
            Opts::new(
                "tollgate_oidc_discovery_fetch_total",
                "OpenID discovery document fetches, by provider and result (success, error: \
                 unreachable, not JSON, an issuer other than the provider's, a refused jwks_uri).",
            ),
            &["provider", "result"],
        )
        .expect("valid metric");
        let dpop_proofs = IntCounterVec::new(
            Opts::new(
                "tollgate_dpop_proofs_total",
                "DPoP proofs checked, by result: accepted, invalid (refused by the proof's own \
                 checks or its key not the token's), replayed (jti already used), unavailable \
                 (the replay cache was full or its Redis store failed with on_store_error: deny).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let introspection_calls = IntCounterVec::new(
            Opts::new(
                "tollgate_introspection_requests_total",
                "Token introspection calls (RFC 7662), by provider and result: active, inactive, \
                 malformed (claims of the wrong type), bad_request (a 400 for this token: refused, \
                 not counted against the endpoint), error (timeout, unreachable, other non-200, \
                 not JSON: the token is refused with 503), circuit_open (not called: the \
                 circuit is open after consecutive errors; refused with 503).",
            ),
            &["provider", "result"],
        )
        .expect("valid metric");
        let introspection_cache = IntCounterVec::new(
            Opts::new(
                "tollgate_introspection_cache_total",
                "Introspection answers looked up, by provider and result (hit, miss).",
            ),
            &["provider", "result"],
        )
        .expect("valid metric");
        let upstream_tokens = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_tokens_total",
                "Tokens for upstreams (upstream_token), by route and result: minted (signed \
                 now), cached (reused within half its lifetime) or error.",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let jwks_keys = IntGaugeVec::new(
            Opts::new(
                "tollgate_jwks_keys",
                "Keys in the provider's current key set.",
            ),
            &["provider"],
        )
        .expect("valid metric");
        let jwks_last_success = GaugeVec::new(
            Opts::new(
                "tollgate_jwks_last_success_timestamp_seconds",
                "Unix time of the provider's last successful key load.",
            ),
            &["provider"],
        )
        .expect("valid metric");
        let token_cache = IntCounterVec::new(
            Opts::new(
                "tollgate_token_cache_total",
                "Token cache lookups, by result: hit (verified before), forged (its signature \
                 failed before), miss.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "tollgate_config_reloads_total",
                "Config reloads on SIGHUP, by result (success, error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let rbac_decisions = IntCounterVec::new(
            Opts::new(
                "tollgate_rbac_decisions_total",
                "RBAC policy decisions, by route, policy and decision (allow, deny, shadow_deny).",
            ),
            &["route", "policy", "decision"],
        )
        .expect("valid metric");
        let ratelimit_decisions = IntCounterVec::new(
            Opts::new(
                "tollgate_ratelimit_decisions_total",
                "Rate-limit checks, by route, limit and decision (allow, deny).",
            ),
            &["route", "limit", "decision"],
        )
        .expect("valid metric");
        let ratelimit_store_errors = IntCounterVec::new(
            Opts::new(
                "tollgate_ratelimit_store_errors_total",
                "Rate-limit checks whose store failed or timed out, by store.",
            ),
            &["store"],
        )
        .expect("valid metric");
        let ratelimit_keys = IntGauge::new(
            "tollgate_ratelimit_keys",
            "Keys held by the in-process rate-limit store.",
        )
        .expect("valid metric");
        let open_connections = IntGauge::new(
            "tollgate_open_connections",
            "Client connections open on the proxy listener.",
        )
        .expect("valid metric");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "tollgate_connections_refused_total",
                "Client connections refused at accept, by limit (listener: \
                 server.http.max_connections, client: server.http.max_connections_per_client).",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let header_refusals = IntCounterVec::new(
            Opts::new(
                "tollgate_header_refusals_total",
                "Connections closed while reading a request header block, by reason \
                 (header_timeout, header_too_large).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let bad_requests = IntCounterVec::new(
            Opts::new(
                "tollgate_bad_requests_total",
                "Requests refused before routing (400, 413, 414, 431), by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let preauth_refusals = IntCounterVec::new(
            Opts::new(
                "tollgate_preauth_refusals_total",
                "Uncached tokens refused before any signature check, by reason \
                 (failed_auth_limit: the client address failed too often; \
                 verification_budget: too many signature checks in flight).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let verifications_in_flight = IntGauge::new(
            "tollgate_signature_verifications_in_flight",
            "Token signature checks running now.",
        )
        .expect("valid metric");
        let network_waits_in_flight = IntGauge::new(
            "tollgate_auth_network_waits_in_flight",
            "Introspection calls in flight now, each holding a place in its provider's and \
             its client's network budget.",
        )
        .expect("valid metric");
        let clients_gone = IntCounter::new(
            "tollgate_clients_gone_total",
            "Requests whose client closed the connection (or reset the HTTP/2 stream) while \
             the gateway was still deciding on them; their work stopped there.",
        )
        .expect("valid metric");
        let requests_in_flight = IntGauge::new(
            "tollgate_requests_in_flight",
            "Requests between their header and the end of their answer.",
        )
        .expect("valid metric");
        let config_generation = IntGauge::new(
            "tollgate_config_generation",
            "The config in use: 1 for the one loaded at start, one more for each successful reload.",
        )
        .expect("valid metric");
        let config_last_success = prometheus::Gauge::new(
            "tollgate_config_last_reload_success_timestamp_seconds",
            "Unix time at which the config in use was loaded (at start or by a reload).",
        )
        .expect("valid metric");
        let upstream_connect = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_connect_duration_seconds",
                "Time to open a new connection to a backend (reused connections not counted), \
                 by upstream.",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
            &["upstream"],
        )
        .expect("valid metric");
        let upstream_response = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_response_duration_seconds",
                "Time from choosing a backend to its response header, by upstream.",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
            &["upstream"],
        )
        .expect("valid metric");
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "tollgate_tls_handshakes_total",
                "TLS handshakes completed on the HTTPS listener, by version and ALPN protocol.",
            ),
            &["version", "alpn"],
        )
        .expect("valid metric");
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "tollgate_tls_handshake_failures_total",
                "TLS handshakes that failed on the HTTPS listener, by reason (timeout, closed, \
                 no_client_certificate, bad_client_certificate, incompatible, alert_received, \
                 protocol, other).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let tls_certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "tollgate_tls_certificate_expiry_timestamp_seconds",
                "notAfter of each certificate the HTTPS listener serves, by its first DNS name.",
            ),
            &["name"],
        )
        .expect("valid metric");
        let tls_certificate_reloads = IntCounterVec::new(
            Opts::new(
                "tollgate_tls_certificate_reloads_total",
                "Re-reads of changed certificate, key or CA files, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let revocation_entries = IntGaugeVec::new(
            Opts::new(
                "tollgate_revocation_entries",
                "Entries in the deny list of revoked tokens, by kind (jti, sub).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let revocation_hits = IntCounterVec::new(
            Opts::new(
                "tollgate_revocation_hits_total",
                "Verified tokens refused as revoked, by the kind of entry that matched (jti, sub).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let revocation_reloads = IntCounterVec::new(
            Opts::new(
                "tollgate_revocation_reloads_total",
                "Reads of the deny list's source (file or Redis), by result (ok, error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let revocation_last_success = prometheus::Gauge::new(
            "tollgate_revocation_last_success_timestamp_seconds",
            "Unix time of the deny list's last successful read.",
        )
        .expect("valid metric");
        let runtime_alive_tasks = IntGaugeVec::new(
            Opts::new(
                "tollgate_runtime_alive_tasks",
                "Tasks alive in each tokio runtime of the process (proxy, background, metrics), \
                 read at scrape time.",
            ),
            &["runtime"],
        )
        .expect("valid metric");
        for result in ["ok", "error"] {
            revocation_reloads.with_label_values(&[result]);
        }
        for reason in crate::tls::FAILURE_REASONS {
            tls_handshake_failures.with_label_values(&[reason]);
        }
        // The standard process_* series: resident memory, open file descriptors, CPU seconds,
        // start time (Linux).
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("one process collector");
        let log_lines_dropped = IntCounter::new(
            "tollgate_log_lines_dropped_total",
            "Log lines dropped because the log writer (stdout) could not keep up or was \
             stalled; requests never wait for the log.",
        )
        .expect("valid metric");
        let claims_not_forwarded = IntCounterVec::new(
            Opts::new(
                "tollgate_claims_not_forwarded_total",
                "forward_claims headers left out because the claim's value would not read \
                 back the same upstream (control characters, non-ASCII, surrounding \
                 whitespace, objects), by header.",
            ),
            &["header"],
        )
        .expect("valid metric");
        for c in [
            Box::new(log_lines_dropped.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(network_waits_in_flight.clone()),
            Box::new(clients_gone.clone()),
            Box::new(claims_not_forwarded.clone()),
            Box::new(open_connections.clone()),
            Box::new(requests_in_flight.clone()),
            Box::new(config_generation.clone()),
            Box::new(config_last_success.clone()),
            Box::new(upstream_connect.clone()),
            Box::new(upstream_response.clone()),
            Box::new(tls_handshakes.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(tls_certificate_expiry.clone()),
            Box::new(tls_certificate_reloads.clone()),
            Box::new(revocation_entries.clone()),
            Box::new(revocation_hits.clone()),
            Box::new(revocation_reloads.clone()),
            Box::new(revocation_last_success.clone()),
            Box::new(runtime_alive_tasks.clone()),
            Box::new(connections_refused.clone()),
            Box::new(header_refusals.clone()),
            Box::new(bad_requests.clone()),
            Box::new(preauth_refusals.clone()),
            Box::new(verifications_in_flight.clone()),
            Box::new(config_reloads.clone()),
            Box::new(rbac_decisions.clone()),
            Box::new(ratelimit_decisions.clone()),
            Box::new(ratelimit_store_errors.clone()),
            Box::new(ratelimit_keys.clone()),
            Box::new(auth_decisions.clone()),
            Box::new(jwks_fetch.clone()),
            Box::new(oidc_discovery.clone()),
            Box::new(dpop_proofs.clone()),
            Box::new(introspection_calls.clone()),
            Box::new(introspection_cache.clone()),
            Box::new(upstream_tokens.clone()),
            Box::new(jwks_keys.clone()),
            Box::new(jwks_last_success.clone()),
            Box::new(token_cache.clone()),
            Box::new(requests.clone()),
            Box::new(request_duration.clone()),
            Box::new(upstream_requests.clone()),
            Box::new(backend_healthy.clone()),
            Box::new(health_checks.clone()),
            Box::new(outlier_events.clone()),
            Box::new(backend_ejected.clone()),
            Box::new(circuit_open.clone()),
            Box::new(upstream_retries.clone()),
            Box::new(mirror_requests.clone()),
            Box::new(dns_resolutions.clone()),
            Box::new(build_info.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_requests,
            backend_healthy,
            health_checks,
            outlier_events,
            backend_ejected,
            circuit_open,
            upstream_retries,
            mirror_requests,
            dns_resolutions,
            auth_decisions,
            jwks_fetch,
            oidc_discovery,
            dpop_proofs,
            introspection_calls,
            introspection_cache,
            upstream_tokens,
            jwks_keys,
            jwks_last_success,
            token_cache_hit: token_cache.with_label_values(&["hit"]),
            token_cache_miss: token_cache.with_label_values(&["miss"]),
            token_cache_forged: token_cache.with_label_values(&["forged"]),
            config_reloads,
            rbac_decisions,
            ratelimit_decisions,
            ratelimit_store_errors,
            ratelimit_keys,
            open_connections,
            connections_refused,
            header_refusals,
            bad_requests,
            preauth_refusals,
            verifications_in_flight,
            network_waits_in_flight,
            clients_gone,
            requests_in_flight,
            config_generation,
            config_last_success,
            upstream_connect,
            upstream_response,
            tls_handshakes,
            tls_handshake_failures,
            tls_certificate_expiry,
            tls_certificate_reloads,
            revocation_entries,
            revocation_hits_jti: revocation_hits.with_label_values(&["jti"]),
            revocation_hits_sub: revocation_hits.with_label_values(&["sub"]),
            revocation_reloads,
            revocation_last_success,
            runtime_alive_tasks,
            log_lines_dropped,
            claims_not_forwarded,
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

/// Serves `/metrics`, `/healthz`, `/readyz` and the gateway's public keys
/// (`/.well-known/jwks.json`) on the metrics listener.
pub struct MetricsApp;

fn text(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static headers are valid")
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                METRICS.render(),
            ),
            "/healthz" => text(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/.well-known/jwks.json" => match crate::mint::published() {
                Some(jwks) => text(StatusCode::OK, "application/jwk-set+json", jwks.to_vec()),
                None => text(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    b"no auth.signing_keys\n".to_vec(),
                ),
            },
            "/readyz" if READY.load(Ordering::Acquire) => {
                text(StatusCode::OK, "text/plain", b"ready\n".to_vec())
            }
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                b"not ready\n".to_vec(),
            ),
            _ => text(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}

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
