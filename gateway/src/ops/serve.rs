//! Loading the config and starting Pingora: the proxy service, the metrics listener, and
//! the background work (health checks, readiness).

use crate::limits::Stores;
use crate::listener::conn::{ConnectionTable, Guarded, TlsListener};
use crate::listener::handshake::CertStore;
use crate::ops::admin::MetricsApp;
use crate::request::proxy::Gateway;
use crate::request::runtime::RuntimeSnapshot;
use crate::telemetry::metrics::{DRAINING, METRICS, READY};
use crate::util::watch::Watched;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tollgate_config::{Config, Problem};

/// Why a config could not be loaded: the file, or every problem in it.
pub struct LoadError {
    file: String,
    problems: Vec<Problem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} problem(s)", self.file, self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// Reads, validates and compiles a config file: after this, nothing about it can fail.
#[allow(clippy::disallowed_methods, reason = "config load, off the workers")]
pub fn load(path: &Path) -> Result<(Config, RuntimeSnapshot), LoadError> {
    let file = path.display().to_string();
    let fail = |problems: Vec<Problem>| LoadError {
        file: file.clone(),
        problems,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(vec![Problem {
            path: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    let mut config = tollgate_config::parse(&text).map_err(|e| fail(e.problems))?;
    config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
    let mut snapshot = RuntimeSnapshot::compile(&config).map_err(|e| fail(e.problems))?;
    let admin_bearer = match &config.metrics.admin.bearer_file {
        None => None,
        Some(f) => Some(crate::ops::view::read_bearer(f).map_err(|message| {
            fail(vec![Problem {
                path: "metrics.admin.bearer_file".into(),
                message,
            }])
        })?),
    };
    snapshot.source = Some(Arc::new(crate::ops::view::source(
        &file,
        &text,
        config.clone(),
        admin_bearer,
    )));
    Ok((config, snapshot))
}

/// Pingora's log lines that report nothing wrong with the gateway, dropped:
/// - ERROR `Fail to proxy: Downstream...`: the client closed or stalled mid-header, or
///   tollgate's guard refused its header; counted in `tollgate_header_refusals_total` and
///   friends instead;
/// - ERROR `failed to acquire reusable stream`: a pooled upstream connection was lost to a
///   race inside Pingora's connection pool (pingora-core `connectors/mod.rs`); the request
///   goes out on a new connection, and nothing failed;
/// - WARN `Upstream body is already finished. Nothing to write`: an HTTP/2 client's empty
///   final DATA frame (END_STREAM) after a body that was already forwarded whole; one per
///   HTTP/2 request with a body.
const KNOWN_NOISE: &[(tracing::Level, &str)] = &[
    (tracing::Level::ERROR, "Fail to proxy: Downstream"),
    (tracing::Level::ERROR, "failed to acquire reusable stream"),
    (
        tracing::Level::WARN,
        "Upstream body is already finished. Nothing to write",
    ),
];

struct KnownNoise {
    /// The level filter's hint, passed on: without it `log` records (Pingora's `debug!`s)
    /// would all be built and dispatched before being dropped, on every request.
    hint: Option<tracing_subscriber::filter::LevelFilter>,
}

impl<S> tracing_subscriber::layer::Filter<S> for KnownNoise {
    fn enabled(
        &self,
        _meta: &tracing::Metadata<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<tracing_subscriber::filter::LevelFilter> {
        self.hint
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        struct Message<'a>(&'a [&'static str], bool);
        impl tracing::field::Visit for Message<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
                if field.name() == "message" {
                    let text = format!("{value:?}");
                    self.1 = self.0.iter().any(|p| text.starts_with(p));
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.1 = self.0.iter().any(|p| value.starts_with(p));
                }
            }
        }
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return true;
        }
        let prefixes: Vec<&'static str> = KNOWN_NOISE
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, p)| *p)
            .collect();
        if prefixes.is_empty() {
            return true;
        }
        let mut m = Message(&prefixes, false);
        event.record(&mut m);
        !m.1
    }
}

/// Sets up JSON logging to stdout through a writer thread of its own: no log line is ever
/// written on a request's worker, so a stalled or slow log reader (a collector that stops
/// reading the pipe) cannot hold a request, readiness or shutdown. At most `buffer_lines`
/// lines wait for the writer; past that a line is dropped and counted
/// (`tollgate_log_lines_dropped_total`), the traffic never waits. Dropping the returned
/// guard flushes what is buffered, for 2 s at most (see [`LogFlush`]).
///
/// `level` (or `TOLLGATE_LOG`) is a ceiling for every target; Pingora's own targets are
/// further held at info at most, because their debug lines print whole request headers
/// (`Authorization`, `DPoP`, minted tokens).
pub fn init_logging(level: &str, buffer_lines: usize) -> LogFlush {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = std::env::var("TOLLGATE_LOG")
        .map_err(|_| ())
        .and_then(|l| tracing_subscriber::EnvFilter::try_new(l).map_err(|_| ()))
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let hint = <tracing_subscriber::EnvFilter as tracing_subscriber::layer::Filter<
        tracing_subscriber::Registry,
    >>::max_level_hint(&filter);
    let pingora_at_most_info = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target().starts_with("pingora") && *meta.level() > tracing::Level::INFO)
    });
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(buffer_lines.max(1))
        .thread_name("tollgate-log")
        .finish(std::io::stdout());
    crate::telemetry::metrics::count_dropped_log_lines(writer.error_counter());
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_writer(writer)
        .with_filter(filter)
        .with_filter(pingora_at_most_info)
        .with_filter(KnownNoise { hint });
    let _ = tracing_subscriber::registry().with(layer).try_init();
    LogFlush(Some(guard))
}

/// Flushes the log writer when dropped (at exit), waiting 2 s at most. The writer's own
/// guard waits about a second and then, when the writer is stuck on a stalled stdout,
/// prints a complaint to that same stdout, which blocks for good: it is dropped on a
/// thread of its own, and the process exits without it past the deadline.
pub struct LogFlush(Option<tracing_appender::non_blocking::WorkerGuard>);

impl Drop for LogFlush {
    fn drop(&mut self) {
        let Some(guard) = self.0.take() else { return };
        let (done, flushed) = std::sync::mpsc::channel();
        let dropper = std::thread::Builder::new()
            .name("tollgate-log-flush".into())
            .spawn(move || {
                drop(guard);
                let _ = done.send(());
            });
        if dropper.is_ok() {
            let _ = flushed.recv_timeout(Duration::from_secs(2));
        }
    }
}

fn server_conf(c: &Config) -> ServerConf {
    let s = &c.server;
    let mut conf = ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        // Pingora's grace period starts when its listeners close: connections then get
        // `graceful_shutdown_timeout` to finish (tollgate's own `grace_period`, listeners
        // still open, comes before it: see `Signals`). Runtimes then get a second to exit.
        grace_period_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        error_log: s.error_log.clone(),
        user: s.user.clone(),
        group: s.group.clone(),
        ..ServerConf::default()
    };
    if let Some(p) = &s.pid_file {
        conf.pid_file = p.clone();
    }
    if let Some(p) = &s.upgrade_sock {
        conf.upgrade_sock = p.clone();
    }
    conf
}

/// Starts health checks and key refresh and, once initial keys are loaded and the proxy
/// listener accepts connections, reports ready; then reloads the config on SIGHUP.
struct Startup {
    snapshot: Arc<ArcSwap<RuntimeSnapshot>>,
    stores: Arc<Stores>,
    config_path: PathBuf,
    /// The listeners cannot change without new sockets: a reload that changes them is
    /// refused (use a graceful upgrade, `run -u`, instead).
    listen: (SocketAddr, SocketAddr, Option<SocketAddr>),
    /// The HTTPS listener's certificates: swapped on reload, and re-read when their files
    /// change (polled every `listen.tls.watch`), with the `listen.tls` they were read for.
    certs: Option<(Arc<CertStore>, std::sync::Mutex<tollgate_config::Tls>)>,
    /// `server.http.max_requests_per_connection`, `read_buffer` and `h2c`: set on Pingora's
    /// HTTP options and listener at start; a reload cannot change them.
    fixed_http: (u32, usize, bool),
    /// `server.watch_config`: poll the config file this often and reload on a change.
    watch: Option<Duration>,
}

/// Waits until the snapshot's initial keys are loaded; false if shutdown came first or
/// `limit` passed.
async fn keys_ready(
    snapshot: &RuntimeSnapshot,
    shutdown: &mut ShutdownWatch,
    limit: Option<Duration>,
) -> bool {
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    while !snapshot.auth.ready() {
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = shutdown.changed() => return false,
        }
    }
    true
}

/// How long a reload may wait for the new snapshot's `jwks_uri` keys.
const RELOAD_KEYS_WITHIN: Duration = Duration::from_secs(30);

impl Startup {
    async fn reload(&self, shutdown: &mut ShutdownWatch) -> Result<(), String> {
        // Reading the files and resolving backend names block: off the async workers.
        let path = self.config_path.clone();
        let (config, snapshot) = tokio::task::spawn_blocking(move || load(&path))
            .await
            .map_err(|e| format!("loading the config failed: {e}"))?
            .map_err(|e| e.to_string())?;
        for w in &config.warnings {
            tracing::warn!(path = %w.path, "config: {}", w.message);
        }
        if (
            config.listen.http,
            config.metrics.listen,
            config.listen.https,
        ) != self.listen
        {
            return Err("listen.http, listen.https and metrics.listen cannot change on reload; use a graceful upgrade (run -u)".into());
        }
        if (
            config.server.http.max_requests_per_connection,
            config.server.http.read_buffer,
            config.server.http.h2c,
        ) != self.fixed_http
        {
            return Err("server.http.max_requests_per_connection, read_buffer and h2c cannot change on reload; use a graceful upgrade (run -u)".into());
        }
        if config.rate_limiting != self.stores.settings {
            return Err(
                "rate_limiting cannot change on reload; use a graceful upgrade (run -u)".into(),
            );
        }
        let snapshot = Arc::new(snapshot);
        snapshot.spawn_background();
        if !keys_ready(&snapshot, shutdown, Some(RELOAD_KEYS_WITHIN)).await {
            return Err("the new config's key sets or revocation list could not be loaded".into());
        }
        // Requests in flight keep the snapshot they loaded; new ones see this one.
        if let (Some((store, tls_config)), Some(tls), Some(new_config)) =
            (&self.certs, &snapshot.tls, &config.listen.tls)
        {
            store.swap(tls.material.clone());
            *tls_config.lock().unwrap_or_else(|e| e.into_inner()) = new_config.clone();
        }
        crate::identity::mint::publish(snapshot.minter.as_deref());
        crate::identity::dpop::REPLAY.set_capacity(snapshot.auth.dpop.replay_cache_size);
        crate::telemetry::trace::configure(config.logging.tracing.as_ref());
        self.snapshot.store(snapshot);
        METRICS.config_loaded();
        Ok(())
    }
}

#[async_trait]
impl BackgroundService for Startup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        crate::telemetry::metrics::watch_runtime("background");
        crate::telemetry::trace::start_exporter();
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; config reload disabled");
                None
            }
        };
        if let Some(redis) = &self.stores.redis {
            redis.connect_in_background();
        }
        let stores = Arc::downgrade(&self.stores);
        tokio::spawn(async move {
            while let Some(s) = stores.upgrade() {
                METRICS.ratelimit_keys.set(s.local.len() as i64);
                drop(s);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let current = self.snapshot.load_full();
        current.spawn_background();
        // Keys from jwks_uri must be in place before traffic is invited.
        if !keys_ready(&current, &mut shutdown, None).await {
            return;
        }
        drop(current);
        // A wildcard listen address is reached through loopback.
        let mut probe = self.listen.0;
        match probe.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => probe.set_ip(Ipv4Addr::LOCALHOST.into()),
            IpAddr::V6(ip) if ip.is_unspecified() => probe.set_ip(Ipv6Addr::LOCALHOST.into()),
            _ => {}
        }
        loop {
            if tokio::net::TcpStream::connect(probe).await.is_ok() {
                READY.store(true, Ordering::Release);
                tracing::info!(listen = %self.listen.0, "tollgate ready");
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.changed() => return,
            }
        }
        let config_file = [self.config_path.clone()];
        let mut config_watch = Watched::now(&config_file).await;
        let mut cert_watch = Watched::now(&self.cert_files()).await;
        loop {
            let signal = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let edited = async {
                match self.watch {
                    Some(every) => config_watch.changed(&config_file, every, || true).await,
                    None => std::future::pending().await,
                }
            };
            let certs_edited = async {
                match &self.certs {
                    Some((_, tls)) => {
                        let every = tls.lock().unwrap_or_else(|e| e.into_inner()).watch;
                        cert_watch.changed(&self.cert_files(), every, || true).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = certs_edited => {
                    // The stamps were taken before this read: a file that changes while it
                    // is read differs at the next poll and is read again.
                    let before = self.cert_files();
                    self.reload_certificates().await;
                    let after = self.cert_files();
                    if after != before {
                        cert_watch.rebase(&after).await;
                    }
                }
                _ = signal => {
                    self.reload_and_count(&mut shutdown).await;
                    // The file as this reload read it: the watcher does not reload it again.
                    config_watch.rebase(&config_file).await;
                }
                _ = edited => self.reload_and_count(&mut shutdown).await,
                _ = shutdown.changed() => break,
            }
        }
        READY.store(false, Ordering::Release);
    }
}

impl Startup {
    /// The certificate, key and CA files in use.
    fn cert_files(&self) -> Vec<PathBuf> {
        match &self.certs {
            Some((store, _)) => store.load().files.clone(),
            None => Vec::new(),
        }
    }

    /// Re-reads the HTTPS listener's files after one changed: new handshakes use them; a
    /// file that does not load (half written, a key that does not match) leaves the old ones.
    async fn reload_certificates(&self) {
        let Some((store, tls)) = &self.certs else {
            return;
        };
        let tls = tls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let loaded =
            tokio::task::spawn_blocking(move || crate::tls::material::Material::load(&tls)).await;
        match loaded {
            Ok(Ok(material)) => {
                store.swap(Arc::new(material));
                METRICS
                    .tls_certificate_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!("TLS certificates reloaded");
            }
            Ok(Err(problems)) => {
                METRICS
                    .tls_certificate_reloads
                    .with_label_values(&["error"])
                    .inc();
                let problems: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                tracing::error!(problems = ?problems, "TLS certificates changed but do not load; the previous ones stay");
            }
            Err(e) => tracing::error!(error = %e, "reloading TLS certificates failed"),
        }
    }

    /// A reload (on SIGHUP or a file change), counted and logged.
    async fn reload_and_count(&self, shutdown: &mut ShutdownWatch) {
        let result = self.reload(shutdown).await;
        let label = if result.is_ok() { "success" } else { "error" };
        METRICS.config_reloads.with_label_values(&[label]).inc();
        match result {
            Ok(()) => tracing::info!(config = %self.config_path.display(), "config reloaded"),
            Err(e) => {
                tracing::error!(config = %self.config_path.display(), error = %e, "config reload refused; the running config stays")
            }
        }
    }
}

pub fn run_gateway(
    config_path: &Path,
    config: Config,
    snapshot: RuntimeSnapshot,
    daemon: bool,
    upgrade: bool,
) -> ExitCode {
    let _log_writer = init_logging(&config.logging.level, config.logging.buffer_lines);
    METRICS.config_loaded();
    for w in &config.warnings {
        tracing::warn!(path = %w.path, "config: {}", w.message);
    }
    crate::listener::handshake::register_failure_reasons();
    let opt = Opt {
        daemon,
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config));
    server.bootstrap();

    crate::identity::mint::publish(snapshot.minter.as_deref());
    crate::identity::dpop::REPLAY.set_capacity(snapshot.auth.dpop.replay_cache_size);
    crate::telemetry::trace::configure(config.logging.tracing.as_ref());
    let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
    let stores = match Stores::new(&config.rate_limiting) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("rate_limiting.redis.url: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut app = pingora_proxy::http_proxy(
        &server.configuration,
        Gateway {
            snapshot: snapshot.clone(),
            stores: stores.clone(),
            listen_port: Some(config.listen.http.port().into()),
            https_port: config.listen.https.map(|a| a.port().into()),
        },
    );
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.keepalive_request_limit = Some(config.server.http.max_requests_per_connection);
    // HTTP/2 (on the HTTPS listener): the header cap of HTTP/1.1 as the decoded header-list
    // limit, and idle connections closed like kept-alive HTTP/1.1 ones. Fixed at start.
    options.h2_idle_timeout = Some(config.server.http.keepalive_timeout);
    // h2c on the plain listener: `listener/conn.rs` finds the preface itself and serves
    // every other connection as HTTP/1.1; this lets Pingora take the ones it found.
    options.h2c = config.server.http.h2c;
    app.server_options = Some(options);
    let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(u32::try_from(config.server.http.max_header_bytes).unwrap_or(u32::MAX));
    app.h2_options = Some(h2);
    let certs = snapshot
        .load()
        .tls
        .as_ref()
        .map(|t| CertStore::new(t.material.clone()));
    let tls_listener = match (&certs, config.listen.https) {
        (Some(store), Some(https)) => Some(TlsListener {
            port: https.port(),
            acceptor: store.acceptor(),
            store: store.clone(),
        }),
        _ => None,
    };
    // Every connection passes the connection caps, the TLS handshake (on the HTTPS
    // listener) and the header guard before Pingora.
    let guarded = Guarded {
        inner: Arc::new(app),
        snapshot: snapshot.clone(),
        table: Arc::new(ConnectionTable::default()),
        tls: tls_listener,
    };
    let mut proxy = Service::new("tollgate proxy".to_owned(), guarded);
    proxy.add_listener(
        pingora_core::listeners::ListenerConfig::tcp(config.listen.http.to_string()).l4_buffer(
            pingora_core::protocols::l4::stream::L4BufferSettings::default()
                .read(config.server.http.read_buffer),
        ),
    );
    if let Some(https) = config.listen.https {
        // A plain TCP listener: tollgate runs the handshake itself (see `conn`).
        proxy.add_listener(
            pingora_core::listeners::ListenerConfig::tcp(https.to_string()).l4_buffer(
                pingora_core::protocols::l4::stream::L4BufferSettings::default()
                    .read(config.server.http.read_buffer),
            ),
        );
    }

    let mut metrics = Service::new(
        "tollgate metrics".to_owned(),
        MetricsApp {
            snapshot: snapshot.clone(),
        },
    );
    metrics.add_tcp(&config.metrics.listen.to_string());
    metrics.threads = Some(1);

    let startup = background_service(
        "tollgate startup",
        Startup {
            snapshot,
            stores,
            config_path: config_path.to_owned(),
            listen: (
                config.listen.http,
                config.metrics.listen,
                config.listen.https,
            ),
            certs: certs.zip(config.listen.tls.clone().map(std::sync::Mutex::new)),
            fixed_http: (
                config.server.http.max_requests_per_connection,
                config.server.http.read_buffer,
                config.server.http.h2c,
            ),
            watch: config.server.watch_config,
        },
    );

    tracing::info!(
        listen = %config.listen.http,
        https = ?config.listen.https,
        metrics = %config.metrics.listen,
        routes = config.routes.len(),
        upstreams = config.upstreams.len(),
        "tollgate starting"
    );
    server.add_service(proxy);
    server.add_service(metrics);
    server.add_service(startup);
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            grace_period: config.server.grace_period,
        }),
    });
    ExitCode::SUCCESS
}

/// The signals that end the process, as Pingora's own watcher reads them but for `SIGTERM`:
/// readiness fails at once while the listeners stay open and serve for `server.grace_period`
/// (so that a load balancer stops sending before connections are refused); only then does
/// Pingora close the listeners and give open connections `graceful_shutdown_timeout`. A
/// `SIGINT` during the grace period ends it at once.
///
/// - `SIGTERM`: graceful terminate, after the grace period;
/// - `SIGQUIT`: graceful upgrade (the listeners go to a new process started with `-u`);
/// - `SIGINT`: fast shutdown.
struct Signals {
    grace_period: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for signals; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = quit.recv() => {
                DRAINING.store(true, Ordering::Release);
                ShutdownSignal::GracefulUpgrade
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                READY.store(false, Ordering::Release);
                DRAINING.store(true, Ordering::Release);
                tracing::info!(
                    grace_period_ms = self.grace_period.as_millis() as u64,
                    "SIGTERM: not ready; serving until the grace period ends"
                );
                tokio::select! {
                    _ = tokio::time::sleep(self.grace_period) => ShutdownSignal::GracefulTerminate,
                    _ = int.recv() => ShutdownSignal::FastShutdown,
                }
            }
        }
    }
}
