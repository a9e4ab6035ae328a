//! An upstream cluster ready for requests: its backends behind a Pingora load balancer,
//! the peer options every connection gets, and its health-check loop.

use crate::balance::{
    shared_load, shared_state, Attempt, BackendState, ClusterLoad, Detector, RequestSlot, Resolved,
    Tripped, Watched,
};
use crate::limits::Claims;
use crate::metrics::METRICS;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::{HttpPeer, PeerOptions};
use pingora_core::utils::tls::CertKey;
use pingora_load_balancing::health_check::{
    HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck,
};
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend, Backends, HealthRegistry, LoadBalancer};
use prometheus::IntCounter;
use std::collections::{BTreeSet, HashMap};
use std::net::ToSocketAddrs;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tollgate_config::{
    CircuitBreaker, HashOn, HealthCheckKind, LoadBalancing, Problem, RetryBudget, Upstream,
    UpstreamProtocol, UpstreamTls,
};

/// TLS toward a cluster's backends, its files read once per build.
#[derive(Clone)]
struct PeerTls {
    config: UpstreamTls,
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
    /// SHA-256 over the CA and client files' bytes: health state is kept across a reload
    /// only while these are the same.
    fingerprint: [u8; 32],
}

impl PeerTls {
    fn load(upstream: &str, config: &UpstreamTls) -> Result<PeerTls, Problem> {
        let base = format!("upstreams.{upstream}.tls");
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut read = |path: &str| {
            if let Ok(bytes) = std::fs::read(path) {
                digest.update(&bytes);
            }
        };
        let ca = match &config.ca_file {
            Some(path) => {
                read(path);
                Some(crate::tls::load_ca(path).map_err(|message| Problem {
                    path: format!("{base}.ca_file"),
                    message,
                })?)
            }
            None => None,
        };
        let client = match &config.client_cert {
            Some((cert, key)) => {
                read(cert);
                read(key);
                Some(
                    crate::tls::load_client_cert(cert, key).map_err(|message| Problem {
                        path: format!("{base}.client_cert"),
                        message,
                    })?,
                )
            }
            None => None,
        };
        let fingerprint = digest
            .finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        Ok(PeerTls {
            config: config.clone(),
            ca,
            client,
            fingerprint,
        })
    }

    /// The SNI for a backend configured as `addr` (`host:port`): `tls.sni`, else its host
    /// when that is a name (an IP backend without `sni` was refused by validation unless
    /// `verify: false`).
    fn sni_for(&self, addr: &str) -> String {
        if let Some(sni) = &self.config.sni {
            return sni.clone();
        }
        if addr.starts_with("srv:") {
            // Validation asked for `sni` unless `verify: false`.
            return String::new();
        }
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            String::new()
        } else {
            host.to_owned()
        }
    }
}

/// A backend's configured `host:port` (for labels and logs) and its
/// `tollgate_upstream_requests_total` counters, resolved once.
///
/// Kept beside the load balancer rather than in `Backend::ext`: Pingora clones a `Backend`
/// for every candidate it looks at, and a non-empty `ext` made each clone allocate.
pub struct BackendInfo {
    pub addr: Arc<str>,
    outcomes: [IntCounter; 4],
    weight: u32,
    /// Load, ejection and slow start, shared with the clusters of other snapshots.
    pub state: Arc<BackendState>,
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

/// Backends by address, in their configured order, with an index: a lookup costs the same
/// for a cluster of three backends as for one of hundreds from DNS or SRV (a linear search
/// per candidate was O(n) per request).
#[derive(Clone, Default)]
struct BackendInfos {
    list: Vec<(std::net::SocketAddr, Arc<BackendInfo>)>,
    index: HashMap<std::net::SocketAddr, usize>,
}

impl BackendInfos {
    fn position(&self, addr: &std::net::SocketAddr) -> Option<usize> {
        self.index.get(addr).copied()
    }

    fn get(&self, b: &Backend) -> Option<&Arc<BackendInfo>> {
        let i = self.position(b.addr.as_inet()?)?;
        Some(&self.list[i].1)
    }

    /// Adds a backend; an address already present is kept as it was.
    fn push(&mut self, addr: std::net::SocketAddr, info: Arc<BackendInfo>) -> bool {
        if self.index.contains_key(&addr) {
            return false;
        }
        self.index.insert(addr, self.list.len());
        self.list.push((addr, info));
        true
    }

    fn label<'a>(&'a self, b: &Backend) -> &'a str {
        self.get(b).map(|i| &*i.addr).unwrap_or("unknown")
    }
}

/// Backend health that outlives a reload: one registry per upstream and health check,
/// shared by every cluster built for them, so that a backend present before and after a
/// reload keeps its state (one found down stays down until its checks pass) instead of
/// starting healthy. A changed health check starts a new registry.
struct SharedHealth {
    check: HealthKey,
    registry: Arc<HealthRegistry>,
    /// The labels the registry's check and observer use: those of the latest build.
    infos: Arc<ArcSwap<BackendInfos>>,
}

/// What a health check is: its settings and how it connects.
#[derive(Clone, PartialEq)]
struct HealthKey {
    check: tollgate_config::HealthCheck,
    protocol: UpstreamProtocol,
    tls: Option<(UpstreamTls, [u8; 32])>,
}

static SHARED_HEALTH: once_cell::sync::Lazy<Mutex<HashMap<String, SharedHealth>>> =
    once_cell::sync::Lazy::new(Default::default);

/// The health registry of `upstream` with check `hc`, holding `infos`' labels from now on.
fn shared_health(
    u: &Upstream,
    hc: &tollgate_config::HealthCheck,
    tls: Option<&PeerTls>,
    infos: &BackendInfos,
) -> (Arc<HealthRegistry>, Arc<ArcSwap<BackendInfos>>) {
    let upstream = u.name.as_str();
    let key = HealthKey {
        check: hc.clone(),
        protocol: u.protocol,
        tls: tls.map(|t| (t.config.clone(), t.fingerprint)),
    };
    let mut all = SHARED_HEALTH.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(shared) = all.get(upstream).filter(|s| s.check == key) {
        shared.infos.store(Arc::new(infos.clone()));
        return (shared.registry.clone(), shared.infos.clone());
    }
    // Health is kept per address: a changed weight is the same backend.
    let registry = Arc::new(HealthRegistry::with_equivalence(|b: &Backend| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        b.addr.hash(&mut h);
        h.finish()
    }));
    let labels = Arc::new(ArcSwap::from_pointee(infos.clone()));
    let first_backend = u.backends.first().map_or("", |b| b.addr.as_str());
    registry.set_health_check(Box::new(Counted {
        inner: health_check(upstream, hc, labels.clone(), tls, u.protocol, first_backend),
        upstream: upstream.to_owned(),
        infos: labels.clone(),
    }));
    all.insert(
        upstream.to_owned(),
        SharedHealth {
            check: key,
            registry: registry.clone(),
            infos: labels.clone(),
        },
    );
    (registry, labels)
}

/// How many backends a selection may look at before giving up; bounds Ketama's ring walk.
const MAX_SELECT_ITERATIONS: usize = 256;

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Consistent(LoadBalancer<Consistent>),
    /// Pingora's balancer keeps the health view; the choice is [`crate::balance::least_request`].
    LeastRequest(LoadBalancer<RoundRobin>),
    /// The same, with each backend's weight divided by its peak-EWMA response time.
    PeakEwma(LoadBalancer<RoundRobin>),
}

pub struct Cluster {
    pub name: Arc<str>,
    selector: Selector,
    /// For consistent hashing: what the key is.
    pub hash_on: Option<HashOn>,
    pub retries: u32,
    peer_options: PeerOptions,
    tls: Option<PeerTls>,
    health_interval: Option<Duration>,
    /// The backends now: fixed, or re-resolved by [`Cluster::spawn_background`] (`dns`).
    members: ArcSwap<Members>,
    /// Backends re-resolved under `dns`: (index in `upstreams.NAME.backends`, what to ask).
    dynamic: Vec<(usize, Lookup)>,
    dns: Option<tollgate_config::Dns>,
    /// What Pingora's balancer discovers: the current backends.
    discovered: Arc<ArcSwap<BTreeSet<Backend>>>,
    /// The health checks' labels, kept in step with `members`.
    health_labels: Option<Arc<ArcSwap<BackendInfos>>>,
    /// The configured backends (address text and weight), for rebuilding `members`.
    configured: Vec<tollgate_config::Backend>,
    /// `tollgate_upstream_connect_duration_seconds{upstream}`, resolved once.
    pub connect_time: prometheus::Histogram,
    /// `tollgate_upstream_response_duration_seconds{upstream}`, resolved once.
    pub response_time: prometheus::Histogram,
    slow_start: Option<Duration>,
    detector: Option<Detector>,
    load: Arc<ClusterLoad>,
    breaker: CircuitBreaker,
    pub retry_budget: RetryBudget,
}

impl Cluster {
    /// Builds a cluster from validated config, resolving backend names once, now.
    /// Errors carry the YAML path of the backend that failed to resolve.
    pub fn build(u: &Upstream) -> Result<Cluster, Problem> {
        let (load, running) = shared_load(&u.name);
        let mut dynamic = Vec::new();
        let mut addrs: Vec<Resolved> = Vec::with_capacity(u.backends.len());
        for (i, b) in u.backends.iter().enumerate() {
            let lookup = match b.srv() {
                Some(name) => Some(Lookup::Srv(name.to_owned())),
                None => {
                    let (host, port) = b.addr.rsplit_once(':').expect("validated host:port");
                    let by_name =
                        host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('[');
                    by_name.then(|| Lookup::Name {
                        host: host.to_owned(),
                        port: port.parse().expect("validated port"),
                    })
                }
            };
            if let (Some(lookup), Some(_)) = (&lookup, &u.dns) {
                // Resolved in the background; a reload starts from the last answer.
                dynamic.push((i, lookup.clone()));
                addrs.push(crate::balance::last_resolved(&u.name, &b.addr));
                continue;
            }
            if let Some(Lookup::Srv(_)) = lookup {
                return Err(Problem {
                    path: format!("upstreams.{}.backends[{i}].addr", u.name),
                    message: "an SRV backend needs upstreams.NAME.dns".into(),
                });
            }
            let resolved = b
                .addr
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| Problem {
                    path: format!("upstreams.{}.backends[{i}].addr", u.name),
                    message: format!("cannot resolve {:?}", b.addr),
                })?;
            addrs.push(vec![(resolved, b.weight)]);
        }
        let members = Members::build(&u.name, &u.backends, &addrs, running);
        let infos = members.infos.clone();
        let discovered = Arc::new(ArcSwap::from_pointee(members.backend_set()));
        let tls = u
            .tls
            .as_ref()
            .map(|t| PeerTls::load(&u.name, t))
            .transpose()?;
        let discovery = Box::new(Discovered(discovered.clone()));
        let mut health_labels = None;
        let view = match &u.health_check {
            Some(hc) => {
                let (registry, labels) = shared_health(u, hc, tls.as_ref(), &infos);
                health_labels = Some(labels);
                Backends::new_with_health_registry(discovery, registry)
            }
            None => Backends::new(discovery),
        };
        let selector = match &u.lb {
            LoadBalancing::RoundRobin => Selector::RoundRobin(static_lb(view)),
            LoadBalancing::ConsistentHash(_) => Selector::Consistent(static_lb(view)),
            LoadBalancing::LeastRequest => Selector::LeastRequest(static_lb(view)),
            LoadBalancing::PeakEwma => Selector::PeakEwma(static_lb(view)),
        };
        let hash_on = match &u.lb {
            LoadBalancing::ConsistentHash(on) => Some(on.clone()),
            _ => None,
        };
        let mut peer_options = PeerOptions::new();
        peer_options.connection_timeout = Some(u.connect_timeout);
        peer_options.read_timeout = Some(u.read_timeout);
        peer_options.write_timeout = Some(u.write_timeout);
        peer_options.idle_timeout = Some(u.idle_timeout);
        if u.protocol == UpstreamProtocol::H2 {
            peer_options.set_http_version(2, 2);
            peer_options.max_h2_streams = u.h2_streams;
        }
        if let Some(tls) = &tls {
            peer_options.ca = tls.ca.clone();
            peer_options.verify_cert = tls.config.verify;
            peer_options.verify_hostname = tls.config.verify;
        }
        let cluster = Cluster {
            tls,
            name: u.name.as_str().into(),
            selector,
            hash_on,
            retries: u.retries,
            peer_options,
            health_interval: u.health_check.as_ref().map(|h| h.interval),
            members: ArcSwap::from_pointee(members),
            dynamic,
            dns: u.dns.clone(),
            discovered,
            health_labels,
            configured: u.backends.clone(),
            connect_time: METRICS.upstream_connect.with_label_values(&[&u.name]),
            response_time: METRICS.upstream_response.with_label_values(&[&u.name]),
            slow_start: u.slow_start,
            detector: u
                .outlier_detection
                .clone()
                .map(|o| Detector::new(o, u.name.as_str().into())),
            load,
            breaker: u.circuit_breaker.clone(),
            retry_budget: u.retry_budget.clone(),
        };
        let view = cluster.backends();
        for b in view.get_backend().iter() {
            METRICS
                .backend_healthy
                .with_label_values(&[&cluster.name, cluster.members.load().infos.label(b)])
                .set(view.ready(b) as i64);
        }
        Ok(cluster)
    }

    fn backends(&self) -> &Backends {
        match &self.selector {
            Selector::RoundRobin(lb) | Selector::LeastRequest(lb) | Selector::PeakEwma(lb) => {
                lb.backends()
            }
            Selector::Consistent(lb) => lb.backends(),
        }
    }

    /// Picks a healthy backend that is neither ejected nor in `tried`; `key` matters only
    /// for consistent hashing. Under slow start, round robin passes over a ramping backend
    /// with the probability it is not yet due; least request scales its weight.
    pub fn select(&self, key: &[u8], tried: &[Backend]) -> Option<Backend> {
        let now = crate::balance::now_ms();
        let members = self.members.load();
        let state = |b: &Backend| members.infos.get(b).map(|i| &i.state);
        let eligible = |b: &Backend, healthy: bool| {
            healthy && !tried.contains(b) && !state(b).is_some_and(|s| s.ejected(now))
        };
        match &self.selector {
            Selector::RoundRobin(lb) if !tried.is_empty() => {
                // A retry takes the next eligible backend after the one that failed, in list
                // order, without drawing from the shared counter: drawing twice per retried
                // request gave every first attempt the same parity (with two backends, one
                // of them down, every request started on the one that was down).
                let view = lb.backends();
                let n = members.list.len();
                let after = members
                    .list
                    .iter()
                    .position(|(b, _)| tried.last() == Some(b))
                    .map_or(0, |i| i + 1);
                (0..n)
                    .map(|k| &members.list[(after + k) % n].0)
                    .find(|b| eligible(b, view.ready(b)))
                    .cloned()
            }
            Selector::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, |b, healthy| {
                if !healthy || tried.contains(b) {
                    return false;
                }
                state(b).is_none_or(|s| {
                    let share = s.ramp(self.slow_start, now);
                    !s.ejected(now) && (share >= 1.0 || fastrand::f64() < share)
                })
            }),
            Selector::Consistent(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, eligible),
            Selector::LeastRequest(lb) | Selector::PeakEwma(lb) => {
                let ewma = matches!(self.selector, Selector::PeakEwma(_));
                let view = lb.backends();
                let candidates: Vec<(usize, f64, usize)> = members
                    .list
                    .iter()
                    .enumerate()
                    .filter(|(_, (b, _))| eligible(b, view.ready(b)))
                    .map(|(i, (_, info))| {
                        let mut weight =
                            f64::from(info.weight) * info.state.ramp(self.slow_start, now);
                        if ewma {
                            weight /= info.state.ewma_us(now);
                        }
                        let in_flight = info
                            .state
                            .in_flight
                            .load(std::sync::atomic::Ordering::Relaxed);
                        (i, weight, in_flight)
                    })
                    .collect();
                crate::balance::least_request(&candidates).map(|i| members.list[i].0.clone())
            }
        }
    }

    /// Picks a backend for a request (see [`Cluster::select`]): with consistent hashing, by
    /// the configured header or verified claim when the request has it, else by the
    /// client's address.
    pub fn select_for(
        &self,
        req: &pingora_http::RequestHeader,
        client_ip: Option<std::net::IpAddr>,
        claims: Option<&Claims>,
        tried: &[Backend],
    ) -> Option<Backend> {
        let owned;
        let claim = match &self.hash_on {
            Some(HashOn::Claim(name)) => claims.and_then(|c| c.get(name)),
            _ => None,
        };
        let key: &[u8] = match (&self.hash_on, claim) {
            (None, _) => b"",
            (Some(HashOn::Header(name)), _) if req.headers.contains_key(name.as_str()) => req
                .headers
                .get(name.as_str())
                .map_or(&b""[..], |v| v.as_bytes()),
            (_, Some(serde_json::Value::String(s))) => s.as_bytes(),
            (_, Some(other)) => {
                owned = other.to_string();
                owned.as_bytes()
            }
            (Some(_), None) => {
                owned = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
                owned.as_bytes()
            }
        };
        self.select(key, tried)
    }

    /// A slot for one more request, unless the circuit breaker is open (counted).
    pub fn admit(&self) -> Result<RequestSlot, Tripped> {
        self.load.admit(&self.breaker).inspect_err(|t| {
            METRICS
                .circuit_open
                .with_label_values(&[&self.name, t.as_str()])
                .inc();
        })
    }

    /// The circuit breaker's `Retry-After`, in whole seconds (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.breaker.retry_after.as_secs().max(1)
    }

    /// Counts an attempt on `backend` until the returned guard is dropped.
    pub fn start_attempt(&self, backend: &Backend) -> Option<Attempt> {
        let members = self.members.load();
        let info = members.infos.get(backend)?;
        Some(Attempt::start(info.state.clone(), self.load.clone()))
    }

    /// How an attempt on `backend` ended: answered (not 5xx) after `took` from choosing it,
    /// or failed (`None`). Outlier detection counts it; `peak_ewma` takes in the time, and a
    /// failure as a very slow answer.
    pub fn record(&self, backend: &Backend, answered: Option<Duration>) {
        let ewma = matches!(self.selector, Selector::PeakEwma(_));
        if self.detector.is_none() && !ewma {
            return;
        }
        let Some(addr) = backend.addr.as_inet() else {
            return;
        };
        let members = self.members.load();
        let Some(i) = members.infos.position(addr) else {
            return;
        };
        if let Some(detector) = &self.detector {
            detector.record(&members.watched[i], answered.is_some(), &members.watched);
        }
        if ewma {
            let state = &members.infos.list[i].1.state;
            match answered {
                Some(t) => state.observe_latency(t.as_secs_f64() * 1e6),
                None => state.observe_failure(),
            }
        }
    }

    /// The configured address and counters of one of this cluster's backends.
    pub fn info(&self, b: &Backend) -> Option<Arc<BackendInfo>> {
        self.members.load().infos.get(b).cloned()
    }

    /// Whether any backend is currently healthy (tells 503 from 502 when selection fails).
    pub fn any_healthy(&self) -> bool {
        let view = self.backends();
        view.get_backend().iter().any(|b| view.ready(b))
    }

    /// The peer to connect to for `backend`, with this cluster's timeouts.
    pub fn peer(&self, backend: &Backend) -> Box<HttpPeer> {
        let mut peer = match &self.tls {
            None => HttpPeer::new(backend.clone(), false, String::new()),
            Some(tls) => {
                let members = self.members.load();
                let addr = members.infos.get(backend).map_or("", |i| &*i.addr);
                let mut peer = HttpPeer::new(backend.clone(), true, tls.sni_for(addr));
                peer.client_cert_key = tls.client.clone();
                peer
            }
        };
        peer.options = self.peer_options.clone();
        Box::new(peer)
    }

    /// Runs health checks every interval, and outlier detection's returns and judgements,
    /// until the cluster is dropped (a reload replaced it).
    pub fn spawn_background(self: &Arc<Self>) {
        if let Some(detector) = &self.detector {
            let interval = detector.config.interval;
            let weak: Weak<Cluster> = Arc::downgrade(self);
            tokio::spawn(async move {
                let tick = Duration::from_millis(100);
                let mut ticker = tokio::time::interval(tick);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut since_judged = Duration::ZERO;
                loop {
                    ticker.tick().await;
                    let Some(cluster) = weak.upgrade() else {
                        return;
                    };
                    since_judged += tick;
                    let judge = since_judged >= interval;
                    if judge {
                        since_judged = Duration::ZERO;
                    }
                    if let Some(d) = &cluster.detector {
                        d.tick(&cluster.members.load().watched, judge);
                    }
                }
            });
        }
        if !self.dynamic.is_empty() {
            let weak: Weak<Cluster> = Arc::downgrade(self);
            tokio::spawn(async move {
                let Some(resolver) = weak.upgrade().and_then(|c| c.resolver()) else {
                    return;
                };
                loop {
                    let Some(cluster) = weak.upgrade() else {
                        return;
                    };
                    let next = cluster.resolve_once(&resolver).await;
                    drop(cluster);
                    tokio::time::sleep(next).await;
                }
            });
        }
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

impl Cluster {
    /// The resolver of `dns`: its server, else the system's.
    fn resolver(&self) -> Option<hickory_resolver::TokioResolver> {
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let dns = self.dns.as_ref()?;
        let builder = match dns.resolver {
            Some(server) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
                let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
                hickory_resolver::TokioResolver::builder_with_config(
                    config,
                    TokioRuntimeProvider::default(),
                )
            }
            None => match hickory_resolver::TokioResolver::builder_tokio() {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(upstream = %self.name, error = %e, "no system DNS configuration");
                    return None;
                }
            },
        };
        let mut builder = builder;
        // Answers are re-asked on their TTL here; the resolver's cache would only delay that.
        builder.options_mut().cache_size = 0;
        match builder.build() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(upstream = %self.name, error = %e, "cannot build the DNS resolver");
                None
            }
        }
    }

    /// Resolves every backend given by name once; swaps in the new addresses when they
    /// changed (an address that went away drains: requests on it finish, none are sent).
    /// Returns when to ask again: the shortest TTL, within `min_ttl` and `max_ttl`.
    async fn resolve_once(&self, resolver: &hickory_resolver::TokioResolver) -> Duration {
        let dns = self.dns.as_ref().expect("only clusters with dns resolve");
        let mut next = dns.max_ttl;
        let current = self.members.load();
        let mut addrs: Vec<Resolved> = current.addrs.clone();
        for (i, lookup) in &self.dynamic {
            let weight = self.configured[*i].weight;
            let result =
                tokio::time::timeout(Duration::from_secs(5), lookup.run(resolver, weight)).await;
            let error = match result {
                Ok(Ok((mut found, valid_until))) => {
                    let ttl = valid_until.saturating_duration_since(std::time::Instant::now());
                    next = next.min(ttl);
                    found.sort();
                    found.dedup_by_key(|(addr, _)| *addr);
                    METRICS
                        .dns_resolutions
                        .with_label_values(&[&self.name, "success"])
                        .inc();
                    addrs[*i] = found;
                    continue;
                }
                Ok(Err(e)) => e,
                Err(_) => "timed out after 5 s".to_owned(),
            };
            next = dns.min_ttl;
            METRICS
                .dns_resolutions
                .with_label_values(&[&self.name, "error"])
                .inc();
            tracing::warn!(upstream = %self.name, backend = %self.configured[*i].addr, error = %error, "DNS resolution failed; keeping the last addresses");
        }
        if addrs != current.addrs {
            for (i, _) in &self.dynamic {
                crate::balance::remember_resolved(
                    &self.name,
                    &self.configured[*i].addr,
                    &addrs[*i],
                );
            }
            let members = Members::build(&self.name, &self.configured, &addrs, true);
            tracing::warn!(
                upstream = %self.name,
                backends = %members.infos.list.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>().join(","),
                "backends re-resolved"
            );
            if let Some(labels) = &self.health_labels {
                labels.store(Arc::new(members.infos.clone()));
            }
            self.discovered.store(Arc::new(members.backend_set()));
            self.members.store(Arc::new(members));
            let updated = match &self.selector {
                Selector::RoundRobin(lb) | Selector::LeastRequest(lb) | Selector::PeakEwma(lb) => {
                    lb.update().await
                }
                Selector::Consistent(lb) => lb.update().await,
            };
            if let Err(e) = updated {
                tracing::warn!(upstream = %self.name, error = %e, "backend update failed");
            }
        }
        next.max(dns.min_ttl)
    }
}

/// What the DNS task asks for one configured backend.
#[derive(Debug, Clone)]
enum Lookup {
    /// `host:port`: the host's A and AAAA records, on the configured port and weight.
    Name { host: String, port: u16 },
    /// `srv:NAME`: NAME's SRV records of the lowest priority whose targets resolve
    /// (RFC 2782: higher priorities are fallbacks), each target's addresses on the
    /// record's port with the record's weight.
    Srv(String),
}

/// An SRV weight as a backend weight: 0 ("no preference") counts as 1, and weights are
/// capped at a configured backend's maximum.
fn srv_weight(weight: u16) -> u32 {
    u32::from(weight).clamp(1, tollgate_config::MAX_BACKEND_WEIGHT)
}

impl Lookup {
    /// The addresses now, and until when the answer holds (the shortest TTL met).
    async fn run(
        &self,
        resolver: &hickory_resolver::TokioResolver,
        weight: u32,
    ) -> Result<(Resolved, std::time::Instant), String> {
        match self {
            Lookup::Name { host, port } => {
                let answer = resolver
                    .lookup_ip(host.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let found = answer
                    .iter()
                    .map(|ip| (std::net::SocketAddr::new(ip, *port), weight))
                    .collect();
                Ok((found, answer.valid_until()))
            }
            Lookup::Srv(name) => {
                use hickory_resolver::proto::rr::RData;
                let answer = resolver
                    .srv_lookup(name.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut valid_until = answer.valid_until();
                let mut records: Vec<_> = answer
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(srv) => Some(srv),
                        _ => None,
                    })
                    .collect();
                records.sort_by_key(|srv| srv.priority);
                let mut found = Vec::new();
                let mut failures = Vec::new();
                for (n, srv) in records.iter().enumerate() {
                    let lower_priority_done =
                        n > 0 && records[n - 1].priority != srv.priority && !found.is_empty();
                    if lower_priority_done {
                        break;
                    }
                    // A target of "." says the service is not offered at this name; port 0
                    // cannot be connected to.
                    if srv.target.is_root() || srv.port == 0 {
                        continue;
                    }
                    match resolver.lookup_ip(srv.target.clone()).await {
                        Ok(ips) => {
                            valid_until = valid_until.min(ips.valid_until());
                            found.extend(ips.iter().map(|ip| {
                                (
                                    std::net::SocketAddr::new(ip, srv.port),
                                    srv_weight(srv.weight),
                                )
                            }));
                        }
                        Err(e) => failures.push(format!("{}: {e}", srv.target)),
                    }
                }
                if found.is_empty() {
                    return Err(if failures.is_empty() {
                        "no SRV record names a target".to_owned()
                    } else {
                        format!("no SRV target resolved ({})", failures.join("; "))
                    });
                }
                Ok((found, valid_until))
            }
        }
    }
}

/// A cluster's backends at one time: each configured entry's addresses (one, or what its
/// name resolved to), with their counters and state.
struct Members {
    /// Per configured backend, its addresses now.
    addrs: Vec<Resolved>,
    infos: BackendInfos,
    /// Every address, for least request.
    list: Vec<(Backend, Arc<BackendInfo>)>,
    /// The same, as outlier detection sees them.
    watched: Vec<Watched>,
}

impl Members {
    fn build(
        upstream: &str,
        configured: &[tollgate_config::Backend],
        addrs: &[Resolved],
        running: bool,
    ) -> Members {
        let mut infos = BackendInfos::default();
        let mut list = Vec::new();
        for (b, resolved) in configured.iter().zip(addrs) {
            for &(addr, weight) in resolved {
                if infos.position(&addr).is_some() {
                    continue;
                }
                let backend = Backend::new_with_weight(&addr.to_string(), weight as usize)
                    .expect("a resolved socket address parses");
                let info = Arc::new(BackendInfo {
                    addr: b.addr.as_str().into(),
                    outcomes: OUTCOMES.map(|o| {
                        METRICS
                            .upstream_requests
                            .with_label_values(&[upstream, &b.addr, o])
                    }),
                    weight,
                    state: shared_state(upstream, addr, running),
                });
                infos.push(addr, info.clone());
                list.push((backend, info));
            }
        }
        let watched = list
            .iter()
            .map(|(_, i)| Watched {
                label: i.addr.clone(),
                state: i.state.clone(),
            })
            .collect();
        Members {
            addrs: addrs.to_vec(),
            infos,
            list,
            watched,
        }
    }

    fn backend_set(&self) -> BTreeSet<Backend> {
        self.list.iter().map(|(b, _)| b.clone()).collect()
    }
}

/// Pingora's discovery of a cluster's backends: whatever [`Members`] holds now.
struct Discovered(Arc<ArcSwap<BTreeSet<Backend>>>);

#[async_trait]
impl pingora_load_balancing::discovery::ServiceDiscovery for Discovered {
    async fn discover(&self) -> pingora_core::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok(((**self.0.load()).clone(), HashMap::new()))
    }
}

fn static_lb<S>(view: Backends) -> LoadBalancer<S>
where
    S: pingora_load_balancing::selection::BackendSelection + 'static,
    S::Iter: pingora_load_balancing::selection::BackendIter,
{
    use futures::FutureExt;
    let lb = LoadBalancer::from_backends(view);
    // Discovery reads what is held and completes at once; this fills the selector before
    // the first request.
    lb.update()
        .now_or_never()
        .expect("discovery does not wait")
        .expect("discovery does not fail");
    lb
}

/// Keeps `tollgate_upstream_backend_healthy` in step with health-check verdicts.
struct HealthGauge {
    upstream: String,
    infos: Arc<ArcSwap<BackendInfos>>,
}

#[async_trait]
impl HealthObserve for HealthGauge {
    async fn observe(&self, target: &Backend, healthy: bool) {
        METRICS
            .backend_healthy
            .with_label_values(&[&self.upstream, self.infos.load().label(target)])
            .set(healthy as i64);
        if healthy {
            // Back from a failed check: it ramps up under slow start.
            if let Some(info) = self.infos.load().get(target) {
                info.state.start_ramp();
            }
        }
        tracing::warn!(
            upstream = %self.upstream,
            backend = self.infos.load().label(target),
            healthy,
            "backend health changed"
        );
    }
}

/// A health check whose every verdict is counted in `tollgate_upstream_health_checks_total`.
struct Counted {
    inner: Box<dyn HealthCheck + Send + Sync>,
    upstream: String,
    infos: Arc<ArcSwap<BackendInfos>>,
}

#[async_trait]
impl HealthCheck for Counted {
    async fn check(&self, target: &Backend) -> pingora_core::Result<()> {
        let verdict = self.inner.check(target).await;
        METRICS
            .health_checks
            .with_label_values(&[
                self.upstream.as_str(),
                self.infos.load().label(target),
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
    infos: Arc<ArcSwap<BackendInfos>>,
    tls: Option<&PeerTls>,
    protocol: UpstreamProtocol,
    first_backend: &str,
) -> Box<dyn HealthCheck + Send + Sync> {
    // One check serves every backend: its SNI is `tls.sni`, else the first backend's host.
    let sni = tls.map(|t| t.sni_for(first_backend));
    let observer = Box::new(HealthGauge {
        upstream: upstream.to_owned(),
        infos,
    });
    match &hc.kind {
        HealthCheckKind::Tcp => {
            let mut check = match &sni {
                Some(sni) => TcpHealthCheck::new_tls(sni),
                None => TcpHealthCheck::new(),
            };
            if let Some(tls) = tls {
                check.peer_template.options.ca = tls.ca.clone();
                check.peer_template.options.verify_cert = tls.config.verify;
                check.peer_template.options.verify_hostname = tls.config.verify;
            }
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
            let mut check = HttpHealthCheck::new(host, tls.is_some());
            if let (Some(tls), Some(sni)) = (tls, &sni) {
                check.peer_template.sni = sni.clone();
                check.peer_template.client_cert_key = tls.client.clone();
                check.peer_template.options.ca = tls.ca.clone();
                check.peer_template.options.verify_cert = tls.config.verify;
                check.peer_template.options.verify_hostname = tls.config.verify;
            }
            if protocol == UpstreamProtocol::H2 {
                check.peer_template.options.set_http_version(2, 2);
            }
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
