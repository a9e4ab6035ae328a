//! Active health checks: one registry per upstream and check, shared by the clusters of
//! every snapshot so a reload keeps each backend's state; checks counted and observed into
//! `tollgate_upstream_backend_healthy`.

use crate::telemetry::metrics::METRICS;
use crate::upstream::backends::BackendInfos;
use crate::upstream::peer_tls::PeerTls;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_load_balancing::health_check::{
    HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck,
};
use pingora_load_balancing::{Backend, HealthRegistry};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tollgate_config::{HealthCheckKind, Upstream, UpstreamProtocol, UpstreamTls};

/// Backend health that outlives a reload: one registry per upstream and health check,
/// shared by every cluster built for them, so that a backend present before and after a
/// reload keeps its state (one found down stays down until its checks pass) instead of
/// starting healthy. A changed health check starts a new registry.
pub(crate) struct SharedHealth {
    pub(crate) check: HealthKey,
    pub(crate) registry: Arc<HealthRegistry>,
    /// The labels the registry's check and observer use: those of the latest build.
    pub(crate) infos: Arc<ArcSwap<BackendInfos>>,
}

/// What a health check is: its settings and how it connects.
#[derive(Clone, PartialEq)]
pub(crate) struct HealthKey {
    pub(crate) check: tollgate_config::HealthCheck,
    pub(crate) protocol: UpstreamProtocol,
    pub(crate) tls: Option<(UpstreamTls, [u8; 32])>,
}

pub(crate) static SHARED_HEALTH: once_cell::sync::Lazy<Mutex<HashMap<String, SharedHealth>>> =
    once_cell::sync::Lazy::new(Default::default);

/// The health registry of `upstream` with check `hc`, holding `infos`' labels from now on.
pub(crate) fn shared_health(
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

/// Keeps `tollgate_upstream_backend_healthy` in step with health-check verdicts.
pub(crate) struct HealthGauge {
    pub(crate) upstream: String,
    pub(crate) infos: Arc<ArcSwap<BackendInfos>>,
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
pub(crate) struct Counted {
    pub(crate) inner: Box<dyn HealthCheck + Send + Sync>,
    pub(crate) upstream: String,
    pub(crate) infos: Arc<ArcSwap<BackendInfos>>,
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

pub(crate) fn health_check(
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
