//! What a cluster knows of its backends' load and failures, beyond Pingora's health view:
//! requests in flight (least request), passive outlier ejection, slow start, the circuit
//! breaker's counts and the retry budget. All of it is atomics read and written on the
//! request path without a lock; an ejection, which is rare, takes the cluster's lock.
//!
//! This state outlives a reload: a backend's [`BackendState`] and a cluster's
//! [`ClusterLoad`] are shared by every cluster built for the same upstream (and address),
//! so a reload neither forgets an ejection nor resets the counts the breaker compares.

use crate::telemetry::metrics::METRICS;
use crate::util::clock::now_ns;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tollgate_config::{CircuitBreaker, OutlierDetection, RetryBudget};

const MS: u64 = 1_000_000;

/// Milliseconds since the process started, from 1 (0 means "never" in the fields below).
pub(crate) fn now_ms() -> u64 {
    now_ns() / MS + 1
}

/// One backend's passive state, shared across reloads (keyed by upstream and address).
#[derive(Default)]
pub struct BackendState {
    /// Requests on this backend now: chosen and not yet finished.
    pub in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Milliseconds on [`now_ms`]'s clock until which it is ejected; 0: not ejected.
    ejected_until: AtomicU64,
    /// Ejections without a clean interval between them: the next lasts this many + 1 times
    /// the base time.
    ejections: AtomicU32,
    /// When it joined or returned (ms, 0: long ago): slow start ramps from here.
    ramp_from: AtomicU64,
    window_total: AtomicU32,
    window_failed: AtomicU32,
    /// Peak-EWMA response time in microseconds (`f64` bits), and when it was last set (ms).
    ewma_us: AtomicU64,
    ewma_at: AtomicU64,
}

/// How fast an unrefreshed response-time estimate fades: a backend avoided for being slow
/// is tried again once its estimate has decayed to its peers' (about 10 s from 200 ms to 1 ms).
const EWMA_DECAY_MS: f64 = 2_000.0;
/// Share of a faster sample taken in at once (a slower one is taken whole: the peak).
const EWMA_GAIN: f64 = 0.3;
/// What a failure counts as: a response this slow.
const FAILURE_US: f64 = 1_000_000.0;
/// No estimate is below this (and a backend not yet measured starts here).
const EWMA_FLOOR_US: f64 = 100.0;

impl BackendState {
    /// The response-time estimate now (µs): the last one, faded by the time since.
    pub fn ewma_us(&self, now_ms: u64) -> f64 {
        let at = self.ewma_at.load(Ordering::Relaxed);
        let v = f64::from_bits(self.ewma_us.load(Ordering::Relaxed));
        let faded = v * (-(now_ms.saturating_sub(at) as f64) / EWMA_DECAY_MS).exp();
        faded.max(EWMA_FLOOR_US)
    }

    /// Takes in one response time: a slower one at once, a faster one by `EWMA_GAIN`.
    pub fn observe_latency(&self, sample_us: f64) {
        let now = now_ms();
        let cur = self.ewma_us(now);
        let new = if sample_us > cur {
            sample_us
        } else {
            cur + (sample_us - cur) * EWMA_GAIN
        };
        self.ewma_us.store(new.to_bits(), Ordering::Relaxed);
        self.ewma_at.store(now, Ordering::Relaxed);
    }

    /// A failed attempt weighs as a very slow answer.
    pub fn observe_failure(&self) {
        self.observe_latency(FAILURE_US);
    }

    /// What the admin view shows of it.
    pub fn view(&self, now_ms: u64) -> serde_json::Value {
        let until = self.ejected_until.load(Ordering::Relaxed);
        serde_json::json!({
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "consecutive_failures": self.consecutive_failures.load(Ordering::Relaxed),
            "ejected": self.ejected(now_ms),
            "ejected_for_ms": until.saturating_sub(now_ms),
            "ejections": self.ejections.load(Ordering::Relaxed),
            "ewma_ms": self.ewma_us(now_ms) / 1e3,
        })
    }

    pub fn ejected(&self, now_ms: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > now_ms
    }

    /// Starts its slow-start ramp now.
    pub fn start_ramp(&self) {
        self.ramp_from.store(now_ms(), Ordering::Relaxed);
    }

    /// The share of its weight it gets under slow start: from 0.1 when it joined to 1
    /// after `window`.
    pub fn ramp(&self, window: Option<Duration>, now_ms: u64) -> f64 {
        let (Some(window), from) = (window, self.ramp_from.load(Ordering::Relaxed)) else {
            return 1.0;
        };
        if from == 0 {
            return 1.0;
        }
        let elapsed = now_ms.saturating_sub(from) as f64;
        let window = window.as_millis().max(1) as f64;
        (elapsed / window).clamp(0.1, 1.0)
    }
}

/// Requests, pending attempts, busy connections and retries of one upstream, shared by
/// every cluster built for it.
#[derive(Default)]
pub struct ClusterLoad {
    requests: AtomicUsize,
    pending: AtomicUsize,
    connections: AtomicUsize,
    retries: AtomicUsize,
}

type StateKey = (String, SocketAddr);

static STATES: once_cell::sync::Lazy<Mutex<HashMap<StateKey, Weak<BackendState>>>> =
    once_cell::sync::Lazy::new(Default::default);
static LOADS: once_cell::sync::Lazy<Mutex<HashMap<String, Weak<ClusterLoad>>>> =
    once_cell::sync::Lazy::new(Default::default);

/// The load of `upstream`, and whether it existed already (a reload rather than a start).
pub fn shared_load(upstream: &str) -> (Arc<ClusterLoad>, bool) {
    let mut all = LOADS.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|_, w| w.strong_count() > 0);
    if let Some(load) = all.get(upstream).and_then(Weak::upgrade) {
        return (load, true);
    }
    let load = Arc::new(ClusterLoad::default());
    all.insert(upstream.to_owned(), Arc::downgrade(&load));
    (load, false)
}

/// The state of `upstream`'s backend at `addr`; a backend new to a running upstream (a
/// reload added it) starts its slow-start ramp.
pub fn shared_state(upstream: &str, addr: SocketAddr, joins_running: bool) -> Arc<BackendState> {
    let mut all = STATES.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|_, w| w.strong_count() > 0);
    let key = (upstream.to_owned(), addr);
    if let Some(state) = all.get(&key).and_then(Weak::upgrade) {
        return state;
    }
    let state = Arc::new(BackendState::default());
    if joins_running {
        state.start_ramp();
    }
    all.insert(key, Arc::downgrade(&state));
    state
}

/// The addresses one configured backend stands for now, each with its weight (the
/// configured one, or an SRV record's).
pub type Resolved = Vec<(SocketAddr, u32)>;

/// The last addresses a backend's name resolved to, by upstream and configured address:
/// a cluster built by a reload starts from them instead of from nothing.
type ResolvedByName = HashMap<(String, String), Resolved>;
static RESOLVED: once_cell::sync::Lazy<Mutex<ResolvedByName>> =
    once_cell::sync::Lazy::new(Default::default);

pub fn last_resolved(upstream: &str, addr: &str) -> Resolved {
    let all = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    all.get(&(upstream.to_owned(), addr.to_owned()))
        .cloned()
        .unwrap_or_default()
}

pub fn remember_resolved(upstream: &str, addr: &str, resolved: &[(SocketAddr, u32)]) {
    let mut all = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    all.insert((upstream.to_owned(), addr.to_owned()), resolved.to_vec());
}

/// Why a request was refused by the circuit breaker (the `limit` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    Requests,
    Pending,
    Connections,
}

impl Tripped {
    pub fn as_str(self) -> &'static str {
        match self {
            Tripped::Requests => "max_requests",
            Tripped::Pending => "max_pending",
            Tripped::Connections => "max_connections",
        }
    }
}

impl ClusterLoad {
    /// Takes a request slot unless a limit is reached.
    pub fn admit(self: &Arc<Self>, limits: &CircuitBreaker) -> Result<RequestSlot, Tripped> {
        if self.pending.load(Ordering::Relaxed) >= limits.max_pending {
            return Err(Tripped::Pending);
        }
        if self.connections.load(Ordering::Relaxed) >= limits.max_connections {
            return Err(Tripped::Connections);
        }
        if self.requests.fetch_add(1, Ordering::AcqRel) >= limits.max_requests {
            self.requests.fetch_sub(1, Ordering::AcqRel);
            return Err(Tripped::Requests);
        }
        Ok(RequestSlot {
            load: self.clone(),
            retries: 0,
        })
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

/// One request counted in its cluster's load, and the retries it was granted; both are
/// given back when the request ends.
pub struct RequestSlot {
    load: Arc<ClusterLoad>,
    retries: usize,
}

impl RequestSlot {
    /// Takes a retry from the budget: allowed while retries in flight stay under `percent`
    /// of the requests in flight, or under `min_retries`.
    pub fn try_retry(&mut self, budget: &RetryBudget) -> bool {
        let requests = self.load.requests.load(Ordering::Relaxed) as f64;
        let allowed =
            ((requests * budget.percent / 100.0) as usize).max(budget.min_retries as usize);
        if self.load.retries.fetch_add(1, Ordering::AcqRel) >= allowed {
            self.load.retries.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.retries += 1;
        true
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.load.requests.fetch_sub(1, Ordering::AcqRel);
        self.load.retries.fetch_sub(self.retries, Ordering::AcqRel);
    }
}

/// One attempt on one backend: counted in its requests in flight, and in the cluster's
/// pending attempts until it connects, then in its busy connections until it ends.
pub struct Attempt {
    state: Arc<BackendState>,
    load: Arc<ClusterLoad>,
    phase: Phase,
}

#[derive(PartialEq)]
enum Phase {
    Pending,
    Connected,
    Done,
}

impl Attempt {
    pub fn start(state: Arc<BackendState>, load: Arc<ClusterLoad>) -> Attempt {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        load.pending.fetch_add(1, Ordering::AcqRel);
        Attempt {
            state,
            load,
            phase: Phase::Pending,
        }
    }

    pub fn connected(&mut self) {
        if self.phase == Phase::Pending {
            self.load.pending.fetch_sub(1, Ordering::AcqRel);
            self.load.connections.fetch_add(1, Ordering::AcqRel);
            self.phase = Phase::Connected;
        }
    }

    /// The attempt failed to connect: no longer pending, never connected.
    pub fn failed_to_connect(&mut self) {
        if self.phase == Phase::Pending {
            self.load.pending.fetch_sub(1, Ordering::AcqRel);
            self.phase = Phase::Done;
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        match self.phase {
            Phase::Pending => {
                self.load.pending.fetch_sub(1, Ordering::AcqRel);
            }
            Phase::Connected => {
                self.load.connections.fetch_sub(1, Ordering::AcqRel);
            }
            Phase::Done => {}
        }
    }
}

/// A backend as the detector sees it: its label and state.
pub struct Watched {
    pub label: Arc<str>,
    pub state: Arc<BackendState>,
}

/// Passive outlier detection over a cluster's backends.
pub struct Detector {
    pub config: OutlierDetection,
    upstream: Arc<str>,
    /// Held while deciding an ejection, so two at once cannot pass the share limit.
    ejecting: Mutex<()>,
}

/// Why a backend was ejected (the `event` label).
#[derive(Clone, Copy)]
pub enum Cause {
    ConsecutiveFailures,
    SuccessRate,
}

impl Detector {
    pub fn new(config: OutlierDetection, upstream: Arc<str>) -> Detector {
        Detector {
            config,
            upstream,
            ejecting: Mutex::new(()),
        }
    }

    /// Records one attempt's outcome on `b`; `all` is the cluster, for the share limit.
    pub fn record(&self, b: &Watched, ok: bool, all: &[Watched]) {
        let st = &b.state;
        st.window_total.fetch_add(1, Ordering::Relaxed);
        if ok {
            st.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        st.window_failed.fetch_add(1, Ordering::Relaxed);
        let n = st.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.config.consecutive_failures {
            self.eject(b, Cause::ConsecutiveFailures, all);
        }
    }

    /// Ejects `b` unless it is already out or the share limit is reached.
    fn eject(&self, b: &Watched, cause: Cause, all: &[Watched]) {
        let _held = self.ejecting.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        if b.state.ejected(now) {
            return;
        }
        let out = all.iter().filter(|w| w.state.ejected(now)).count();
        let pct = usize::from(self.config.max_ejected_percent);
        let max = if pct == 0 {
            0
        } else {
            (all.len() * pct / 100).max(1)
        };
        if out >= max {
            METRICS
                .outlier_events
                .with_label_values(&[&self.upstream, &b.label, "ejection_skipped"])
                .inc();
            return;
        }
        let k = b.state.ejections.fetch_add(1, Ordering::AcqRel) + 1;
        let base = self.config.base_ejection_time;
        let length = base
            .saturating_mul(k)
            .min(self.config.max_ejection_time.max(base));
        b.state
            .ejected_until
            .store(now + length.as_millis() as u64, Ordering::Release);
        b.state.consecutive_failures.store(0, Ordering::Relaxed);
        let event = match cause {
            Cause::ConsecutiveFailures => "ejected_consecutive_failures",
            Cause::SuccessRate => "ejected_success_rate",
        };
        METRICS
            .outlier_events
            .with_label_values(&[&self.upstream, &b.label, event])
            .inc();
        METRICS
            .backend_ejected
            .with_label_values(&[&self.upstream, &b.label])
            .set(1);
        tracing::warn!(
            upstream = %self.upstream,
            backend = %b.label,
            cause = event,
            ejection = k,
            for_ms = length.as_millis() as u64,
            "backend ejected"
        );
    }

    /// Every second: returns backends whose ejection ended (starting their slow start).
    /// Every `interval`: judges success rates and lets clean backends' multipliers decay.
    pub fn tick(&self, all: &[Watched], judge: bool) {
        let now = now_ms();
        for b in all {
            let until = b.state.ejected_until.load(Ordering::Acquire);
            if until != 0
                && until <= now
                && b.state
                    .ejected_until
                    .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                b.state.start_ramp();
                METRICS
                    .outlier_events
                    .with_label_values(&[&self.upstream, &b.label, "returned"])
                    .inc();
                METRICS
                    .backend_ejected
                    .with_label_values(&[&self.upstream, &b.label])
                    .set(0);
                tracing::warn!(upstream = %self.upstream, backend = %b.label, "backend returned");
            }
        }
        if !judge {
            return;
        }
        for b in all {
            let total = b.state.window_total.swap(0, Ordering::AcqRel);
            let failed = b.state.window_failed.swap(0, Ordering::AcqRel);
            if let Some(sr) = &self.config.success_rate {
                let rate = f64::from(total - failed.min(total)) / f64::from(total.max(1));
                if total >= sr.min_requests && rate < sr.threshold {
                    self.eject(b, Cause::SuccessRate, all);
                    continue;
                }
            }
            if failed == 0 && !b.state.ejected(now) {
                let _ = b
                    .state
                    .ejections
                    .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |k| k.checked_sub(1));
            }
        }
    }
}

/// Power of two choices: of two distinct candidates drawn at random, the one with fewer
/// requests in flight per unit of (ramped) weight; `candidates` yields (index, weight,
/// in flight).
pub fn least_request(candidates: &[(usize, f64, usize)]) -> Option<usize> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0].0),
        n => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let score = |(_, w, f): (usize, f64, usize)| (f as f64 + 1.0) / w;
            let (sa, sb) = (score(candidates[a]), score(candidates[b]));
            Some(if sa < sb || (sa == sb && fastrand::bool()) {
                candidates[a].0
            } else {
                candidates[b].0
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_choices_prefer_the_less_loaded_per_weight() {
        // Backend 0 is busy: it wins only when drawn against itself, which two distinct
        // draws never do, so with two candidates the idle one always wins.
        for _ in 0..100 {
            assert_eq!(least_request(&[(0, 1.0, 10), (1, 1.0, 0)]), Some(1));
        }
        // Equal load, weight 3 against 1: the heavier one wins every comparison.
        for _ in 0..100 {
            assert_eq!(least_request(&[(0, 1.0, 2), (1, 3.0, 2)]), Some(1));
        }
        assert_eq!(least_request(&[]), None);
        assert_eq!(least_request(&[(7, 1.0, 100)]), Some(7));
    }

    #[test]
    fn peak_ewma_takes_a_slow_answer_at_once_and_fades_when_not_refreshed() {
        let st = BackendState::default();
        assert_eq!(st.ewma_us(now_ms()), EWMA_FLOOR_US, "not yet measured");
        st.observe_latency(200_000.0);
        assert!(
            (st.ewma_us(now_ms()) - 200_000.0).abs() < 2_000.0,
            "the peak at once"
        );
        st.observe_latency(1_000.0);
        let after = st.ewma_us(now_ms());
        assert!(
            after > 100_000.0 && after < 150_000.0,
            "a fast answer pulls it down by 30 %: {after}"
        );
        // Ten seconds without an answer: faded to nearly nothing.
        let later = st.ewma_us(now_ms() + 10_000);
        assert!(later < 1_000.0, "{later}");
        st.observe_failure();
        assert!(st.ewma_us(now_ms()) >= 999_000.0);
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_full() {
        let st = BackendState::default();
        assert_eq!(
            st.ramp(Some(Duration::from_secs(10)), 5_000),
            1.0,
            "not ramping"
        );
        st.ramp_from.store(1_000, Ordering::Relaxed);
        let w = Some(Duration::from_secs(10));
        assert_eq!(st.ramp(w, 1_000), 0.1);
        assert!((st.ramp(w, 6_000) - 0.5).abs() < 1e-9);
        assert_eq!(st.ramp(w, 11_000), 1.0);
        assert_eq!(st.ramp(None, 1_000), 1.0, "no slow start configured");
    }

    fn detector(consecutive: u32, pct: u8) -> Detector {
        Detector::new(
            OutlierDetection {
                consecutive_failures: consecutive,
                success_rate: Some(tollgate_config::SuccessRate {
                    min_requests: 10,
                    threshold: 0.5,
                }),
                interval: Duration::from_secs(10),
                base_ejection_time: Duration::from_secs(30),
                max_ejection_time: Duration::from_secs(300),
                max_ejected_percent: pct,
            },
            "t".into(),
        )
    }

    fn watched(n: usize) -> Vec<Watched> {
        (0..n)
            .map(|i| Watched {
                label: format!("b{i}").into(),
                state: Arc::default(),
            })
            .collect()
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let d = detector(3, 50);
        let all = watched(2);
        d.record(&all[0], false, &all);
        d.record(&all[0], false, &all);
        d.record(&all[0], true, &all);
        d.record(&all[0], false, &all);
        d.record(&all[0], false, &all);
        assert!(
            !all[0].state.ejected(now_ms()),
            "a success in between resets"
        );
        d.record(&all[0], false, &all);
        assert!(all[0].state.ejected(now_ms()));
        let until = all[0].state.ejected_until.load(Ordering::Relaxed);
        assert!(until >= now_ms() + 29_000 && until <= now_ms() + 30_000);
    }

    #[test]
    fn never_more_than_the_share_is_ejected_but_at_least_one_may_be() {
        let d = detector(1, 50);
        let all = watched(3);
        for b in &all {
            d.record(b, false, &all);
        }
        let out = all.iter().filter(|b| b.state.ejected(now_ms())).count();
        assert_eq!(out, 1, "50 % of 3 is 1");
        let d = detector(1, 10);
        let all = watched(2);
        d.record(&all[0], false, &all);
        assert!(
            all[0].state.ejected(now_ms()),
            "at least one may be ejected"
        );
        let d = detector(1, 0);
        let all = watched(2);
        d.record(&all[0], false, &all);
        assert!(!all[0].state.ejected(now_ms()), "0 % ejects none");
    }

    #[test]
    fn repeated_ejections_grow_to_the_maximum_and_an_ended_one_returns() {
        let d = detector(1, 100);
        let all = watched(1);
        for k in 1..=12u64 {
            d.record(&all[0], false, &all);
            let until = all[0].state.ejected_until.load(Ordering::Relaxed);
            let length = until - now_ms();
            let expected = (30_000 * k).min(300_000);
            assert!(
                length <= expected && length + 1_000 >= expected,
                "{k}: {length}"
            );
            // End it now, as if its time had passed.
            all[0].state.ejected_until.store(1, Ordering::Relaxed);
            d.tick(&all, false);
            assert_eq!(all[0].state.ejected_until.load(Ordering::Relaxed), 0);
            assert!(
                all[0].state.ramp_from.load(Ordering::Relaxed) > 0,
                "returns ramping"
            );
        }
    }

    #[test]
    fn a_low_success_rate_ejects_at_the_interval() {
        let d = detector(100, 100);
        let all = watched(2);
        for i in 0..20 {
            d.record(&all[0], i % 3 == 0, &all);
            d.record(&all[1], i % 10 != 0, &all);
        }
        d.tick(&all, true);
        assert!(all[0].state.ejected(now_ms()), "1 in 3 succeeded");
        assert!(!all[1].state.ejected(now_ms()), "9 in 10 succeeded");
    }

    #[test]
    fn the_breaker_and_the_retry_budget_count_and_give_back() {
        let load = Arc::new(ClusterLoad::default());
        let limits = CircuitBreaker {
            max_requests: 2,
            max_pending: 10,
            max_connections: 10,
            retry_after: Duration::from_secs(1),
        };
        let mut a = load.admit(&limits).unwrap();
        let b = load.admit(&limits).unwrap();
        assert_eq!(load.admit(&limits).err(), Some(Tripped::Requests));
        let budget = RetryBudget {
            percent: 50.0,
            min_retries: 1,
        };
        assert!(a.try_retry(&budget), "50 % of 2 is 1");
        assert!(!a.try_retry(&budget), "the budget is spent");
        drop(a);
        drop(b);
        assert_eq!(load.requests(), 0);
        assert_eq!(load.retries.load(Ordering::Relaxed), 0);
        let st = Arc::new(BackendState::default());
        let mut at = Attempt::start(st.clone(), load.clone());
        assert_eq!(load.pending.load(Ordering::Relaxed), 1);
        at.connected();
        assert_eq!(
            (
                load.pending.load(Ordering::Relaxed),
                load.connections.load(Ordering::Relaxed)
            ),
            (0, 1)
        );
        assert_eq!(st.in_flight.load(Ordering::Relaxed), 1);
        drop(at);
        assert_eq!(load.connections.load(Ordering::Relaxed), 0);
        assert_eq!(st.in_flight.load(Ordering::Relaxed), 0);
    }
}
