//! Loading the config and starting Pingora: the proxy service, the metrics listener, and
//! the background work (health checks, readiness).

use crate::echo::EchoApp;
use crate::metrics::{MetricsApp, READY};
use crate::proxy::Gateway;
use crate::runtime::RuntimeSnapshot;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tollgate_config::Config;

/// Why a config could not be loaded: the file, or every problem in it.
pub struct LoadError {
    file: String,
    problems: Vec<String>,
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
pub fn load(path: &Path) -> Result<(Config, RuntimeSnapshot), LoadError> {
    let file = path.display().to_string();
    let fail = |problems: Vec<String>| LoadError {
        file: file.clone(),
        problems,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| fail(vec![format!("cannot read: {e}")]))?;
    let mut config = tollgate_config::parse(&text)
        .map_err(|e| fail(e.problems.iter().map(|p| p.to_string()).collect()))?;
    config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
    let snapshot = RuntimeSnapshot::compile(&config)
        .map_err(|e| fail(e.problems.iter().map(|p| p.to_string()).collect()))?;
    Ok((config, snapshot))
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}

fn server_conf(c: &Config) -> ServerConf {
    let s = &c.server;
    let mut conf = ServerConf {
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
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
/// listener accepts connections, reports ready.
struct Startup {
    snapshot: Arc<ArcSwap<RuntimeSnapshot>>,
    proxy_addr: SocketAddr,
}

#[async_trait]
impl BackgroundService for Startup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.snapshot.load().spawn_background();
        // Keys from jwks_uri must be in place before traffic is invited.
        while !self.snapshot.load().auth.ready() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.changed() => return,
            }
        }
        // A wildcard listen address is reached through loopback.
        let mut probe = self.proxy_addr;
        match probe.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => probe.set_ip(Ipv4Addr::LOCALHOST.into()),
            IpAddr::V6(ip) if ip.is_unspecified() => probe.set_ip(Ipv6Addr::LOCALHOST.into()),
            _ => {}
        }
        loop {
            if tokio::net::TcpStream::connect(probe).await.is_ok() {
                READY.store(true, Ordering::Release);
                tracing::info!(listen = %self.proxy_addr, "tollgate ready");
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.changed() => return,
            }
        }
        let _ = shutdown.changed().await;
        READY.store(false, Ordering::Release);
    }
}

pub fn run_gateway(
    config: Config,
    snapshot: RuntimeSnapshot,
    daemon: bool,
    upgrade: bool,
) -> ExitCode {
    init_logging(&config.logging.level);
    let opt = Opt {
        daemon,
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config));
    server.bootstrap();

    let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway {
            snapshot: snapshot.clone(),
        },
        "tollgate proxy",
    );
    proxy.add_tcp(&config.listen.http.to_string());

    let mut metrics = Service::new("tollgate metrics".to_owned(), MetricsApp);
    metrics.add_tcp(&config.metrics.listen.to_string());
    metrics.threads = Some(1);

    let startup = background_service(
        "tollgate startup",
        Startup {
            snapshot,
            proxy_addr: config.listen.http,
        },
    );

    tracing::info!(
        listen = %config.listen.http,
        metrics = %config.metrics.listen,
        routes = config.routes.len(),
        upstreams = config.upstreams.len(),
        "tollgate starting"
    );
    server.add_service(proxy);
    server.add_service(metrics);
    server.add_service(startup);
    server.run_forever()
}

pub fn run_echo(listen: &str, name: Option<String>) -> ExitCode {
    init_logging("warn");
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut echo = Service::new(
        "tollgate echo".to_owned(),
        EchoApp {
            name: name.unwrap_or_else(|| listen.to_owned()),
        },
    );
    echo.add_tcp(listen);
    server.add_service(echo);
    server.run_forever()
}
