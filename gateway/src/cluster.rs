//! An upstream cluster ready for requests: its backends behind a Pingora load balancer,
//! the peer options every connection gets, and its health-check loop.

use crate::metrics::METRICS;
use async_trait::async_trait;
use pingora_core::upstreams::peer::{HttpPeer, PeerOptions};
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::health_check::{
    HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck,
};
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use prometheus::IntCounter;
use std::collections::BTreeSet;
use std::net::ToSocketAddrs;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tollgate_config::{HashOn, HealthCheckKind, LoadBalancing, Problem, Upstream};

/// A backend's configured `host:port` (for labels and logs) and its
/// `tollgate_upstream_requests_total` counters, resolved once.
///
/// Kept beside the load balancer rather than in `Backend::ext`: Pingora clones a `Backend`
/// for every candidate it looks at, and a non-empty `ext` made each clone allocate.
pub struct BackendInfo {
    pub addr: Arc<str>,
    outcomes: [IntCounter; 4],
}

/// The `outcome` label of `tollgate_upstream_requests_total`.
#[derive(Clone, Copy)]
pub enum Outcome {
    Response = 0,
    ConnectError = 1,
    Timeout = 2,
    Error = 3,
}

const OUTCOMES: [&str; 4] = ["response", "connect_error", "timeout", "error"];

impl BackendInfo {
    /// Counts one attempt on this backend.
    pub fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].inc();
    }
}

/// Backends by address (clusters are small: a scan beats hashing).
#[derive(Clone, Default)]
struct BackendInfos(Vec<(std::net::SocketAddr, Arc<BackendInfo>)>);

impl BackendInfos {
    fn get(&self, b: &Backend) -> Option<&Arc<BackendInfo>> {
        let addr = b.addr.as_inet()?;
        self.0.iter().find(|(a, _)| a == addr).map(|(_, i)| i)
    }

    fn label<'a>(&'a self, b: &Backend) -> &'a str {
        self.get(b).map(|i| &*i.addr).unwrap_or("unknown")
    }
}

/// How many backends a selection may look at before giving up; bounds Ketama's ring walk.
const MAX_SELECT_ITERATIONS: usize = 256;

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Consistent(LoadBalancer<Consistent>),
}

pub struct Cluster {
    pub name: Arc<str>,
    selector: Selector,
    /// For consistent hashing: what the key is.
    pub hash_on: Option<HashOn>,
    pub retries: u32,
    peer_options: PeerOptions,
    health_interval: Option<Duration>,
    infos: BackendInfos,
    /// `tollgate_upstream_connect_duration_seconds{upstream}`, resolved once.
    pub connect_time: prometheus::Histogram,
    /// `tollgate_upstream_response_duration_seconds{upstream}`, resolved once.
    pub response_time: prometheus::Histogram,
}

impl Cluster {
    /// Builds a cluster from validated config, resolving backend names once, now.
    /// Errors carry the YAML path of the backend that failed to resolve.
    pub fn build(u: &Upstream) -> Result<Cluster, Problem> {
        let mut backends = BTreeSet::new();
        let mut infos = BackendInfos::default();
        for (i, b) in u.backends.iter().enumerate() {
            let resolved = b
                .addr
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| Problem {
                    path: format!("upstreams.{}.backends[{i}].addr", u.name),
                    message: format!("cannot resolve {:?}", b.addr),
                })?;
            let backend = Backend::new_with_weight(&resolved.to_string(), b.weight as usize)
                .expect("a resolved socket address parses");
            infos.0.push((
                resolved,
                Arc::new(BackendInfo {
                    addr: b.addr.as_str().into(),
                    outcomes: OUTCOMES.map(|o| {
                        METRICS
                            .upstream_requests
                            .with_label_values(&[&u.name, &b.addr, o])
                    }),
                }),
            ));
            backends.insert(backend);
        }
        let mut view = Backends::new(Static::new(backends));
        if let Some(hc) = &u.health_check {
            view.set_health_check(Box::new(Counted {
                inner: health_check(&u.name, hc, infos.clone()),
                upstream: u.name.clone(),
                infos: infos.clone(),
            }));
        }
        let selector = match &u.lb {
            LoadBalancing::RoundRobin => Selector::RoundRobin(static_lb(view)),
            LoadBalancing::ConsistentHash(_) => Selector::Consistent(static_lb(view)),
        };
        let hash_on = match &u.lb {
            LoadBalancing::ConsistentHash(on) => Some(on.clone()),
            LoadBalancing::RoundRobin => None,
        };
        let mut peer_options = PeerOptions::new();
        peer_options.connection_timeout = Some(u.connect_timeout);
        peer_options.read_timeout = Some(u.read_timeout);
        peer_options.write_timeout = Some(u.write_timeout);
        peer_options.idle_timeout = Some(u.idle_timeout);
        let cluster = Cluster {
            name: u.name.as_str().into(),
            selector,
            hash_on,
            retries: u.retries,
            peer_options,
            health_interval: u.health_check.as_ref().map(|h| h.interval),
            infos,
            connect_time: METRICS.upstream_connect.with_label_values(&[&u.name]),
            response_time: METRICS.upstream_response.with_label_values(&[&u.name]),
        };
        for b in cluster.backends().get_backend().iter() {
            METRICS
                .backend_healthy
                .with_label_values(&[&cluster.name, cluster.infos.label(b)])
                .set(1);
        }
        Ok(cluster)
    }

    fn backends(&self) -> &Backends {
        match &self.selector {
            Selector::RoundRobin(lb) => lb.backends(),
            Selector::Consistent(lb) => lb.backends(),
        }
    }

    /// Picks a healthy backend not in `tried`; `key` matters only for consistent hashing.
    pub fn select(&self, key: &[u8], tried: &[Backend]) -> Option<Backend> {
        let accept = |b: &Backend, healthy: bool| healthy && !tried.contains(b);
        match &self.selector {
            Selector::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Selector::Consistent(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
        }
    }

    /// Picks a healthy backend not in `tried` for a request: with consistent hashing, by
    /// the configured header when the request has it, else by the client's address.
    pub fn select_for(
        &self,
        req: &pingora_http::RequestHeader,
        client_ip: Option<std::net::IpAddr>,
        tried: &[Backend],
    ) -> Option<Backend> {
        let ip_key;
        let key: &[u8] = match &self.hash_on {
            None => b"",
            Some(HashOn::Header(name)) if req.headers.contains_key(name.as_str()) => req
                .headers
                .get(name.as_str())
                .map_or(&b""[..], |v| v.as_bytes()),
            Some(_) => {
                ip_key = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
                ip_key.as_bytes()
            }
        };
        self.select(key, tried)
    }

    /// The configured address and counters of one of this cluster's backends.
    pub fn info(&self, b: &Backend) -> Option<&Arc<BackendInfo>> {
        self.infos.get(b)
    }

    /// Whether any backend is currently healthy (tells 503 from 502 when selection fails).
    pub fn any_healthy(&self) -> bool {
        let view = self.backends();
        view.get_backend().iter().any(|b| view.ready(b))
    }

    /// The peer to connect to for `backend`, with this cluster's timeouts.
    pub fn peer(&self, backend: &Backend) -> Box<HttpPeer> {
        let mut peer = HttpPeer::new(backend.clone(), false, String::new());
        peer.options = self.peer_options.clone();
        Box::new(peer)
    }

    /// Runs health checks every interval until the cluster is dropped (a reload replaced it).
    pub fn spawn_health_checks(self: &Arc<Self>) {
        let Some(interval) = self.health_interval else {
            return;
        };
        let weak: Weak<Cluster> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                cluster.backends().run_health_check(true).await;
            }
        });
    }
}

fn static_lb<S>(view: Backends) -> LoadBalancer<S>
where
    S: pingora_load_balancing::selection::BackendSelection + 'static,
    S::Iter: pingora_load_balancing::selection::BackendIter,
{
    use futures::FutureExt;
    let lb = LoadBalancer::from_backends(view);
    // Static discovery completes at once; this fills the selector before the first request.
    lb.update()
        .now_or_never()
        .expect("static discovery does not wait")
        .expect("static discovery does not fail");
    lb
}

/// Keeps `tollgate_upstream_backend_healthy` in step with health-check verdicts.
struct HealthGauge {
    upstream: String,
    infos: BackendInfos,
}

#[async_trait]
impl HealthObserve for HealthGauge {
    async fn observe(&self, target: &Backend, healthy: bool) {
        METRICS
            .backend_healthy
            .with_label_values(&[&self.upstream, self.infos.label(target)])
            .set(healthy as i64);
        tracing::warn!(
            upstream = %self.upstream,
            backend = self.infos.label(target),
            healthy,
            "backend health changed"
        );
    }
}

/// A health check whose every verdict is counted in `tollgate_upstream_health_checks_total`.
struct Counted {
    inner: Box<dyn HealthCheck + Send + Sync>,
    upstream: String,
    infos: BackendInfos,
}

#[async_trait]
impl HealthCheck for Counted {
    async fn check(&self, target: &Backend) -> pingora_core::Result<()> {
        let verdict = self.inner.check(target).await;
        METRICS
            .health_checks
            .with_label_values(&[
                self.upstream.as_str(),
                self.infos.label(target),
                if verdict.is_ok() { "pass" } else { "fail" },
            ])
            .inc();
        verdict
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.inner.health_status_change(target, healthy).await
    }

    fn backend_summary(&self, target: &Backend) -> String {
        self.inner.backend_summary(target)
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

fn health_check(
    upstream: &str,
    hc: &tollgate_config::HealthCheck,
    infos: BackendInfos,
) -> Box<dyn HealthCheck + Send + Sync> {
    let observer = Box::new(HealthGauge {
        upstream: upstream.to_owned(),
        infos,
    });
    match &hc.kind {
        HealthCheckKind::Tcp => {
            let mut check = TcpHealthCheck::new();
            check.consecutive_success = hc.healthy_threshold;
            check.consecutive_failure = hc.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.health_changed_callback = Some(observer);
            check
        }
        HealthCheckKind::Http {
            path,
            host,
            expected_status,
        } => {
            let mut check = HttpHealthCheck::new(host, false);
            check.consecutive_success = hc.healthy_threshold;
            check.consecutive_failure = hc.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.peer_template.options.read_timeout = Some(hc.timeout);
            check.peer_template.options.total_connection_timeout = Some(hc.timeout);
            check
                .req
                .set_uri(path.parse().expect("validated as an absolute path"));
            let expected = *expected_status;
            check.validator = Some(Box::new(move |resp| {
                if resp.status.as_u16() == expected {
                    Ok(())
                } else {
                    pingora_core::Error::e_explain(
                        pingora_core::ErrorType::CustomCode(
                            "unexpected health-check status",
                            resp.status.as_u16(),
                        ),
                        "during http health check",
                    )
                }
            }));
            check.health_changed_callback = Some(observer);
            Box::new(check)
        }
    }
}
