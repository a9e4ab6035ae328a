//! An upstream cluster ready for requests: its backends behind a Pingora load balancer,
//! the peer options every connection gets, and its health-check loop.

use crate::limits::Claims;
use crate::telemetry::metrics::METRICS;
use crate::upstream::backends::{static_lb, BackendInfo, BackendInfos, Discovered, Members};
use crate::upstream::balance::{
    shared_load, Attempt, ClusterLoad, Detector, RequestSlot, Resolved, Tripped,
};
use crate::upstream::dns::{self, Lookup};
use crate::upstream::health::shared_health;
use crate::upstream::peer_tls::PeerTls;
use arc_swap::ArcSwap;
use pingora_core::upstreams::peer::{HttpPeer, PeerOptions};
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use std::collections::BTreeSet;
use std::net::ToSocketAddrs;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tollgate_config::{
    CircuitBreaker, HashOn, LoadBalancing, Problem, RetryBudget, Upstream, UpstreamProtocol,
};

/// How many backends a selection may look at before giving up; bounds Ketama's ring walk.
const MAX_SELECT_ITERATIONS: usize = 256;

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Consistent(LoadBalancer<Consistent>),
    /// Pingora's balancer keeps the health view; the choice is [`crate::upstream::balance::least_request`].
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
    #[allow(
        clippy::disallowed_methods,
        reason = "snapshot compilation, off the workers"
    )]
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
                addrs.push(crate::upstream::balance::last_resolved(&u.name, &b.addr));
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
        let now = crate::upstream::balance::now_ms();
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
                crate::upstream::balance::least_request(&candidates)
                    .map(|i| members.list[i].0.clone())
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
    /// What the admin view shows of this cluster: each backend now, with its health,
    /// ejection and load.
    pub fn view(&self) -> serde_json::Value {
        let now = crate::upstream::balance::now_ms();
        let health = self.backends();
        let members = self.members.load();
        let backends: Vec<serde_json::Value> = members
            .list
            .iter()
            .map(|(b, info)| {
                let mut v = info.state.view(now);
                let o = v.as_object_mut().expect("an object");
                o.insert("addr".into(), (*info.addr).into());
                o.insert("resolved".into(), b.addr.to_string().into());
                o.insert("weight".into(), info.weight.into());
                o.insert("healthy".into(), health.ready(b).into());
                v
            })
            .collect();
        serde_json::json!({
            "name": &*self.name,
            "retries": self.retries,
            "health_checks": self.health_interval.is_some(),
            "requests_in_flight": self.load.requests(),
            "backends": backends,
        })
    }

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
                let Some(resolver) = weak
                    .upgrade()
                    .and_then(|c| dns::resolver(&c.name, c.dns.as_ref()?))
                else {
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
                crate::upstream::balance::remember_resolved(
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
