//! A cluster's backends at one time: each configured entry's addresses with their labels,
//! counters and shared state ([`Members`]), indexed by address ([`BackendInfos`]), and
//! Pingora's discovery of them.

use crate::telemetry::metrics::METRICS;
use crate::upstream::balance::{shared_state, BackendState, Resolved, Watched};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use prometheus::IntCounter;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// A backend's configured `host:port` (for labels and logs) and its
/// `tollgate_upstream_requests_total` counters, resolved once.
///
/// Kept beside the load balancer rather than in `Backend::ext`: Pingora clones a `Backend`
/// for every candidate it looks at, and a non-empty `ext` made each clone allocate.
pub struct BackendInfo {
    pub addr: Arc<str>,
    pub(crate) outcomes: [IntCounter; 4],
    pub(crate) weight: u32,
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

pub(crate) const OUTCOMES: [&str; 4] = ["response", "connect_error", "timeout", "error"];

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
pub(crate) struct BackendInfos {
    pub(crate) list: Vec<(std::net::SocketAddr, Arc<BackendInfo>)>,
    pub(crate) index: HashMap<std::net::SocketAddr, usize>,
}

impl BackendInfos {
    pub(crate) fn position(&self, addr: &std::net::SocketAddr) -> Option<usize> {
        self.index.get(addr).copied()
    }

    pub(crate) fn get(&self, b: &Backend) -> Option<&Arc<BackendInfo>> {
        let i = self.position(b.addr.as_inet()?)?;
        Some(&self.list[i].1)
    }

    /// Adds a backend; an address already present is kept as it was.
    pub(crate) fn push(&mut self, addr: std::net::SocketAddr, info: Arc<BackendInfo>) -> bool {
        if self.index.contains_key(&addr) {
            return false;
        }
        self.index.insert(addr, self.list.len());
        self.list.push((addr, info));
        true
    }

    pub(crate) fn label<'a>(&'a self, b: &Backend) -> &'a str {
        self.get(b).map(|i| &*i.addr).unwrap_or("unknown")
    }
}

/// A cluster's backends at one time: each configured entry's addresses (one, or what its
/// name resolved to), with their counters and state.
pub(crate) struct Members {
    /// Per configured backend, its addresses now.
    pub(crate) addrs: Vec<Resolved>,
    pub(crate) infos: BackendInfos,
    /// Every address, for least request.
    pub(crate) list: Vec<(Backend, Arc<BackendInfo>)>,
    /// The same, as outlier detection sees them.
    pub(crate) watched: Vec<Watched>,
}

impl Members {
    pub(crate) fn build(
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

    pub(crate) fn backend_set(&self) -> BTreeSet<Backend> {
        self.list.iter().map(|(b, _)| b.clone()).collect()
    }
}

/// Pingora's discovery of a cluster's backends: whatever [`Members`] holds now.
pub(crate) struct Discovered(pub(crate) Arc<ArcSwap<BTreeSet<Backend>>>);

#[async_trait]
impl pingora_load_balancing::discovery::ServiceDiscovery for Discovered {
    async fn discover(&self) -> pingora_core::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok(((**self.0.load()).clone(), HashMap::new()))
    }
}

pub(crate) fn static_lb<S>(view: Backends) -> LoadBalancer<S>
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
