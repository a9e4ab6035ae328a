//! The load-balancing front door through the real binary, with several real backends on
//! 127.0.0.1 (`tollgate echo`, slowed or failing through its `/__echo/set` control):
//! least request, passive outlier ejection, the circuit breaker, retries and their budget,
//! slow start, weighted and claim-matched splits, mirroring, and hashing on a claim.

use crate::common::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn backends(list: &[&Echo]) -> String {
    let addrs: Vec<String> = list
        .iter()
        .map(|e| format!("{{ addr: \"{}\" }}", e.addr()))
        .collect();
    format!("[{}]", addrs.join(", "))
}

/// Sends `per_thread` GETs from each of `threads` threads at once; answers by backend name
/// (the status is `status`: anything else fails the test).
fn spread(gw: &Gateway, path: &str, threads: usize, per_thread: usize) -> HashMap<String, u32> {
    let start = Arc::new(Barrier::new(threads));
    let url = gw.url(path);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (start, url) = (start.clone(), url.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut seen: HashMap<String, u32> = HashMap::new();
                for _ in 0..per_thread {
                    let r = request(&url, "GET", &[]);
                    assert_eq!(r.status, 200, "{}", r.body);
                    *seen.entry(r.server()).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    let mut all: HashMap<String, u32> = HashMap::new();
    for h in handles {
        for (k, v) in h.join().unwrap() {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

fn share(counts: &HashMap<String, u32>, name: &str) -> f64 {
    let total: u32 = counts.values().sum();
    f64::from(counts.get(name).copied().unwrap_or(0)) / f64::from(total)
}

#[test]
fn least_request_and_peak_ewma_send_less_to_a_slow_backend_than_round_robin() {
    let fast = Echo::start("fast");
    let slow = Echo::start("slow");
    slow.set("delay_ms=60");
    let config = |lb: &str| {
        format!(
            "upstreams:\n  pool: {{ lb: {lb}, backends: {} }}\nroutes:\n  - {{ name: all, path: /, upstream: pool }}\n",
            backends(&[&fast, &slow])
        )
    };
    let rr = Gateway::start(&config("round_robin"));
    let rr_counts = spread(&rr, "/", 8, 25);
    drop(rr);
    let lr = Gateway::start(&config("least_request"));
    let lr_counts = spread(&lr, "/", 8, 25);
    let (rr_slow, lr_slow) = (share(&rr_counts, "slow"), share(&lr_counts, "slow"));
    assert!(
        (rr_slow - 0.5).abs() < 0.1,
        "round robin alternates: {rr_counts:?}"
    );
    assert!(
        lr_slow < rr_slow - 0.2,
        "least request sent {lr_slow:.2} to the slow backend, round robin {rr_slow:.2} \
         ({lr_counts:?} against {rr_counts:?})"
    );
    drop(lr);
    // Peak EWMA also weighs each backend's response time: the slow one is all but avoided.
    let ewma = Gateway::start(&config("peak_ewma"));
    let ewma_counts = spread(&ewma, "/", 8, 50);
    let ewma_slow = share(&ewma_counts, "slow");
    println!("slow backend's share: round robin {rr_slow:.3}, least request {lr_slow:.3}, peak EWMA {ewma_slow:.3}");
    assert!(
        ewma_slow < 0.08,
        "peak EWMA sent {ewma_slow:.3} to the slow backend ({ewma_counts:?}), least request {lr_slow:.3}"
    );
}

#[test]
fn a_backend_answering_5xx_is_ejected_before_its_next_active_check_and_returns_after_the_base_time()
{
    let e: Vec<Echo> = ["o1", "o2", "o3"].iter().map(|n| Echo::start(n)).collect();
    let gw = Gateway::start(&format!(
        "upstreams:
  pool:
    backends: {}
    health_check: {{ type: http, path: /health, interval: 120s }}
    outlier_detection: {{ consecutive_failures: 3, base_ejection_time: 1s, max_ejected_percent: 50 }}
routes:
  - {{ name: all, path: /, upstream: pool }}
",
        backends(&[&e[0], &e[1], &e[2]])
    ));
    let checks = |b: &Echo| {
        gw.metric(
            "tollgate_upstream_health_checks_total",
            &[("backend", &b.addr()), ("result", "pass")],
        )
    };
    wait_for("the first active checks", Duration::from_secs(10), || {
        (checks(&e[1]) >= 1.0).then_some(())
    });
    let checks_before = checks(&e[1]);
    e[1].set("status=503");
    // Round robin reaches o2 every third request: three 503s in a row eject it.
    let mut failures = 0;
    for _ in 0..9 {
        if gw.get("/", &[]).status == 503 {
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "o2 answered 503 until it was ejected");
    let ejected = [("backend", e[1].addr()), ("upstream", "pool".to_owned())];
    let ejected: Vec<(&str, &str)> = ejected.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        gw.metric("tollgate_upstream_backend_ejected", &ejected),
        1.0
    );
    assert_eq!(
        gw.metric(
            "tollgate_upstream_outlier_events_total",
            &[
                ("backend", &e[1].addr()),
                ("event", "ejected_consecutive_failures")
            ]
        ),
        1.0
    );
    let served_before = e[1].count();
    for _ in 0..30 {
        let r = gw.get("/", &[]);
        assert_eq!(r.status, 200, "an ejected backend gets nothing");
        assert_ne!(r.server(), "o2");
    }
    assert_eq!(e[1].count(), served_before);
    assert_eq!(
        checks(&e[1]),
        checks_before,
        "passive detection acted before any further active check"
    );
    // It comes back on its own after the base time (and answers 200 again by then).
    e[1].set("status=200");
    wait_for("o2's return", Duration::from_secs(10), || {
        (gw.metric("tollgate_upstream_backend_ejected", &ejected) == 0.0).then_some(())
    });
    assert_eq!(
        gw.metric(
            "tollgate_upstream_outlier_events_total",
            &[("backend", &e[1].addr()), ("event", "returned")]
        ),
        1.0
    );
    let back = (0..9).filter(|_| gw.get("/", &[]).server() == "o2").count();
    assert_eq!(back, 3, "o2 takes its turn again");
    let log = gw.proc.log_text();
    assert!(
        log.contains("backend ejected") && log.contains("backend returned"),
        "{log}"
    );
}

#[test]
fn at_most_the_configured_share_of_the_cluster_is_ejected() {
    let e: Vec<Echo> = ["s1", "s2"].iter().map(|n| Echo::start(n)).collect();
    let gw = Gateway::start(&format!(
        "upstreams:
  pool:
    backends: {}
    outlier_detection: {{ consecutive_failures: 1, base_ejection_time: 60s, max_ejected_percent: 50 }}
routes:
  - {{ name: all, path: /, upstream: pool }}
",
        backends(&[&e[0], &e[1]])
    ));
    e[0].set("status=500");
    e[1].set("status=500");
    for _ in 0..10 {
        assert_eq!(gw.get("/", &[]).status, 500);
    }
    let ejected: f64 = e
        .iter()
        .map(|b| {
            gw.metric(
                "tollgate_upstream_backend_ejected",
                &[("backend", &b.addr())],
            )
        })
        .sum();
    assert_eq!(ejected, 1.0, "50 % of two backends is one");
    assert!(
        gw.metric(
            "tollgate_upstream_outlier_events_total",
            &[("event", "ejection_skipped")]
        ) >= 1.0
    );
}

#[test]
fn the_circuit_breaker_answers_503_without_queueing_when_requests_are_at_the_limit() {
    let e = Echo::start("busy");
    let gw = Gateway::start(&format!(
        "upstreams:
  pool: {{ backends: {}, circuit_breaker: {{ max_requests: 2, retry_after: 3s }} }}
routes:
  - {{ name: all, path: /, upstream: pool }}
",
        backends(&[&e])
    ));
    let url = gw.url("/");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || request(&url, "GET", &[("x-echo-delay-ms", "4000")]))
        })
        .collect();
    wait_for(
        "two requests at the backend",
        Duration::from_secs(10),
        || (e.count() == 2).then_some(()),
    );
    let started = Instant::now();
    let r = gw.get("/", &[]);
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "overloaded");
    assert_eq!(r.json()["reason"], "circuit_breaker");
    assert_eq!(r.header("retry-after"), Some("3"));
    assert!(
        slow.iter().all(|h| !h.is_finished()),
        "answered while the two requests were still in flight, not after them"
    );
    println!("circuit breaker answered in {took:?}");
    assert!(took < Duration::from_secs(4), "it did not wait for a slot");
    assert_eq!(
        e.count(),
        2,
        "the refused request never reached the backend"
    );
    for h in slow {
        assert_eq!(h.join().unwrap().status, 200);
    }
    assert_eq!(gw.get("/", &[]).status, 200, "slots are given back");
    assert_eq!(
        gw.metric(
            "tollgate_upstream_circuit_open_total",
            &[("upstream", "pool"), ("limit", "max_requests")]
        ),
        1.0
    );
}

#[test]
fn a_listed_status_is_retried_on_another_backend_for_idempotent_requests_only() {
    let bad = Echo::start("bad");
    let good = Echo::start("good");
    bad.set("status=503");
    let gw = Gateway::start(&format!(
        "upstreams:
  pool: {{ backends: {}, retries: 1 }}
routes:
  - {{ name: all, path: /, upstream: pool, retry_on: [503, reset] }}
",
        backends(&[&bad, &good])
    ));
    for _ in 0..6 {
        let r = gw.get("/", &[]);
        assert_eq!((r.status, r.server()), (200, "good".to_owned()));
    }
    let posts: Vec<u16> = (0..6)
        .map(|_| request(&gw.url("/"), "POST", &[]).status)
        .collect();
    assert!(
        posts.contains(&503),
        "a POST is never retried, so it sees bad's 503: {posts:?}"
    );
    let retried = gw.metric(
        "tollgate_upstream_retries_total",
        &[("reason", "status"), ("result", "retried")],
    );
    let posts_refused = posts.iter().filter(|s| **s == 503).count() as f64;
    assert!(retried >= 3.0, "{retried}");
    assert_eq!(
        retried + posts_refused,
        bad.count() as f64,
        "every GET that reached bad was retried, no POST was"
    );
}

#[test]
fn the_retry_budget_caps_retries_during_a_full_outage() {
    let e: Vec<Echo> = ["d1", "d2", "d3"].iter().map(|n| Echo::start(n)).collect();
    for b in &e {
        b.set("status=503&delay_ms=30");
    }
    let gw = Gateway::start(&format!(
        "upstreams:
  pool:
    backends: {}
    retries: 2
    retry_budget: {{ percent: 20, min_retries: 1 }}
routes:
  - {{ name: all, path: /, upstream: pool, retry_on: [503] }}
",
        backends(&[&e[0], &e[1], &e[2]])
    ));
    let (threads, each) = (10, 10);
    let url = gw.url("/");
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                for _ in 0..each {
                    assert_eq!(request(&url, "GET", &[]).status, 503);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let requests = (threads * each) as f64;
    let attempts: u64 = e.iter().map(Echo::count).sum();
    let retried = gw.metric(
        "tollgate_upstream_retries_total",
        &[("reason", "status"), ("result", "retried")],
    );
    let refused = gw.metric(
        "tollgate_upstream_retries_total",
        &[("reason", "status"), ("result", "budget_exhausted")],
    );
    assert_eq!(
        attempts as f64,
        requests + retried,
        "every retry is counted"
    );
    assert!(refused > 0.0, "the budget refused retries");
    assert!(
        (attempts as f64) < requests * 2.0,
        "without a budget {requests} requests would make {} attempts; they made {attempts}",
        requests * 3.0
    );
}

#[test]
fn a_backend_added_by_a_reload_ramps_up_under_slow_start() {
    let a = Echo::start("old");
    let b = Echo::start("new");
    let config = |list: &[&Echo]| {
        format!(
            "upstreams:\n  pool: {{ backends: {}, slow_start: 6s }}\nroutes:\n  - {{ name: all, path: /, upstream: pool }}\n",
            backends(list)
        )
    };
    let gw = Gateway::start(&config(&[&a]));
    gw.reload(&config(&[&a, &b]));
    wait_for("the reload", Duration::from_secs(10), || {
        (gw.metric("tollgate_config_reloads_total", &[("result", "success")]) == 1.0).then_some(())
    });
    let first = spread(&gw, "/", 2, 100);
    let early = share(&first, "new");
    assert!(
        early < 0.3,
        "a backend that just joined gets a small share at first: {first:?}"
    );
    let later = wait_for(
        "the new backend's full share",
        Duration::from_secs(20),
        || {
            let counts = spread(&gw, "/", 2, 100);
            (share(&counts, "new") > 0.4).then_some(counts)
        },
    );
    println!("slow start: {first:?} at first, {later:?} later");
}

#[test]
fn a_90_10_split_lands_within_3_percent_over_10000_requests() {
    let v1 = Echo::start("v1");
    let v2 = Echo::start("v2");
    let gw = Gateway::start(&format!(
        "upstreams:
  v1: {{ backends: {} }}
  v2: {{ backends: {} }}
routes:
  - {{ name: all, path: /, upstreams: [{{ name: v1, weight: 90 }}, {{ name: v2, weight: 10 }}] }}
",
        backends(&[&v1]),
        backends(&[&v2])
    ));
    let counts = spread(&gw, "/", 4, 2500);
    let v2_share = share(&counts, "v2");
    assert!(
        (v2_share - 0.10).abs() <= 0.03,
        "v2 got {v2_share:.4} of 10,000: {counts:?}"
    );
}

const ISS: &str = "https://issuer.test";

fn auth_config(key_file: &std::path::Path, upstreams: &str, routes: &str) -> String {
    format!(
        "auth:
  providers:
    - {{ name: main, issuer: \"{ISS}\", audiences: any, jwks_file: \"{}\" }}
upstreams:
{upstreams}routes:
{routes}",
        key_file.display()
    )
}

#[test]
fn a_claim_matched_canary_reaches_only_its_cluster_and_never_on_an_unverified_token() {
    let beta = Echo::start("beta");
    let stable = Echo::start("stable");
    let key = TestKey::es256("k1");
    let (_dir, path) = jwks_file(&[&key]);
    let gw = Gateway::start(&auth_config(
        &path,
        &format!(
            "  beta: {{ backends: {} }}\n  stable: {{ backends: {} }}\n",
            backends(&[&beta]),
            backends(&[&stable])
        ),
        "  - name: api
    path: /
    auth: optional
    upstreams:
      - { name: beta, when: { claim: { plan: beta } } }
      - { name: stable }
",
    ));
    let token = |plan: &str| key.sign(json!({ "iss": ISS, "sub": "u1", "plan": plan }));
    let bearer = |t: &str| format!("Bearer {t}");
    let beta_token = token("beta");
    for _ in 0..10 {
        let r = gw.get("/", &[("authorization", &bearer(&beta_token))]);
        assert_eq!((r.status, r.server()), (200, "beta".to_owned()));
        let r = gw.get("/", &[("authorization", &bearer(&token("free")))]);
        assert_eq!((r.status, r.server()), (200, "stable".to_owned()));
        let r = gw.get("/", &[("x-plan", "beta"), ("cookie", "plan=beta")]);
        assert_eq!(
            (r.status, r.server()),
            (200, "stable".to_owned()),
            "anonymous"
        );
    }
    // The same claims under another key's signature: refused, and beta never sees it.
    let forged = TestKey::es256("k1").sign(json!({ "iss": ISS, "sub": "u1", "plan": "beta" }));
    let before = beta.count();
    assert_eq!(
        gw.get("/", &[("authorization", &bearer(&forged))]).status,
        401
    );
    assert_eq!(beta.count(), before);
    assert_eq!(beta.count(), 10);
}

#[test]
fn hashing_on_a_verified_claim_keeps_a_subject_on_one_backend() {
    let e: Vec<Echo> = ["c1", "c2", "c3"].iter().map(|n| Echo::start(n)).collect();
    let key = TestKey::es256("k1");
    let (_dir, path) = jwks_file(&[&key]);
    let gw = Gateway::start(&auth_config(
        &path,
        &format!(
            "  pool: {{ lb: consistent_hash, hash_on: \"claim:sub\", backends: {} }}\n",
            backends(&[&e[0], &e[1], &e[2]])
        ),
        "  - { name: api, path: /, upstream: pool }\n",
    ));
    let mut used = std::collections::HashSet::new();
    for user in 0..20 {
        let sub = format!("user-{user}");
        let auth = |n: u32| {
            format!(
                "Bearer {}",
                key.sign(json!({ "iss": ISS, "sub": sub, "n": n }))
            )
        };
        let first = gw.get("/", &[("authorization", &auth(0))]).server();
        for n in 1..4 {
            // A different token (and a different client port) for the same subject.
            assert_eq!(
                gw.get("/", &[("authorization", &auth(n))]).server(),
                first,
                "{sub} moved"
            );
        }
        used.insert(first);
    }
    assert!(used.len() >= 2, "20 subjects all hashed to {used:?}");
}

#[test]
fn mirrored_requests_reach_the_shadow_and_never_change_the_clients_answer() {
    let main = Echo::start("main");
    let shadow = Echo::start("shadow");
    shadow.set("status=500&delay_ms=1500");
    let gw = Gateway::start(&format!(
        "upstreams:
  main: {{ backends: {} }}
  shadow: {{ backends: {} }}
routes:
  - {{ name: all, path: /, upstream: main, mirror: {{ upstream: shadow, percent: 100 }} }}
",
        backends(&[&main]),
        backends(&[&shadow])
    ));
    for i in 0..20 {
        let started = Instant::now();
        let r = gw.get(&format!("/item/{i}"), &[]);
        assert_eq!((r.status, r.server()), (200, "main".to_owned()));
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "the answer did not wait for the shadow"
        );
    }
    wait_for("20 copies at the shadow", Duration::from_secs(10), || {
        (shadow.count() == 20).then_some(())
    });
    let r = request(&gw.url("/no-body"), "POST", &[]);
    assert_eq!(r.status, 200);
    wait_for("every copy answered", Duration::from_secs(10), || {
        (gw.metric(
            "tollgate_mirror_requests_total",
            &[("route", "all"), ("result", "answered")],
        ) == 21.0)
            .then_some(())
    });
    assert_eq!(main.count(), 21);
}

#[test]
fn a_request_retried_after_a_failed_connect_is_mirrored_once_and_the_next_starts_elsewhere() {
    let live = Echo::start("live");
    let shadow = Echo::start("shadow");
    let dead = free_port();
    let gw = Gateway::start(&format!(
        "upstreams:
  main: {{ retries: 1, backends: [{{ addr: \"127.0.0.1:{dead}\" }}, {{ addr: \"{}\" }}] }}
  shadow: {{ backends: {} }}
routes:
  - {{ name: all, path: /, upstream: main, mirror: {{ upstream: shadow, percent: 100 }} }}
",
        live.addr(),
        backends(&[&shadow])
    ));
    for i in 0..20 {
        let r = gw.get(&format!("/item/{i}"), &[]);
        assert_eq!((r.status, r.server()), (200, "live".to_owned()));
    }
    wait_for(
        "a copy of each request at the shadow",
        Duration::from_secs(10),
        || (shadow.count() == 20).then_some(()),
    );
    // Round robin alternates first attempts: the dead backend is tried first by half of
    // the requests, not by all of them.
    let retried = gw.metric(
        "tollgate_upstream_retries_total",
        &[("upstream", "main"), ("reason", "connect")],
    );
    assert!((9.0..=11.0).contains(&retried), "{retried} connect retries");
    assert_eq!(live.count(), 20);
    assert_eq!(shadow.count(), 20, "one copy per request");
}

/// An SRV record: priority, weight, port, target name.
type Srv = (u16, u16, u16, &'static str);

/// What the test's DNS server answers now: A records (for any name) and SRV records.
#[derive(Default)]
struct Zone {
    a: Vec<std::net::Ipv4Addr>,
    srv: Vec<Srv>,
}

/// A DNS server on 127.0.0.1 (UDP) that answers A queries for any name with the
/// addresses it holds now and SRV queries with its SRV records, TTL 1 s; other types get
/// an empty answer.
struct DnsServer {
    port: u16,
    zone: Arc<std::sync::Mutex<Zone>>,
    queries: Arc<std::sync::atomic::AtomicUsize>,
}

impl DnsServer {
    fn start(first: std::net::Ipv4Addr) -> DnsServer {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let zone = Arc::new(std::sync::Mutex::new(Zone {
            a: vec![first],
            srv: Vec::new(),
        }));
        let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (z, q) = (zone.clone(), queries.clone());
        // The thread ends with the test process; the socket is only ever read here.
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                if let Some(reply) = dns_reply(&buf[..n], &z.lock().unwrap()) {
                    q.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        DnsServer {
            port,
            zone,
            queries,
        }
    }

    fn set(&self, ip: std::net::Ipv4Addr) {
        self.zone.lock().unwrap().a = vec![ip];
    }

    fn set_srv(&self, records: &[Srv]) {
        self.zone.lock().unwrap().srv = records.to_vec();
    }
}

/// The answer to one query (RFC 1035 §4.1): the question echoed, and its records, each
/// named by a pointer to the question's name. SRV data as in RFC 2782.
fn dns_reply(query: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question's name: length-prefixed labels up to a zero byte, then type and class.
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += 1 + usize::from(query[i]);
    }
    let end = i + 5;
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    let rdatas: Vec<Vec<u8>> = match qtype {
        1 => zone.a.iter().map(|ip| ip.octets().to_vec()).collect(),
        33 => zone
            .srv
            .iter()
            .map(|&(priority, weight, port, target)| {
                let mut d = Vec::new();
                for field in [priority, weight, port] {
                    d.extend_from_slice(&field.to_be_bytes());
                }
                for label in target.split('.') {
                    d.push(label.len() as u8);
                    d.extend_from_slice(label.as_bytes());
                }
                d.push(0);
                d
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut r = Vec::with_capacity(end + 64 * rdatas.len());
    r.extend_from_slice(&query[..2]); // id
    r.extend_from_slice(&[0x81, 0x80]); // response, recursion desired and available, NOERROR
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(rdatas.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(query.get(12..end)?);
    for data in rdatas {
        r.extend_from_slice(&[0xc0, 0x0c]);
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 1]); // class IN, TTL 1 s
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(&data);
    }
    Some(r)
}

/// A gateway whose one upstream is `backend`, re-resolved through `dns`, once the name's
/// first answer arrived.
fn dns_gateway(dns: &DnsServer, backend: &str) -> Gateway {
    let gw = Gateway::start(&format!(
        "upstreams:
  pool:
    backends: [{{ addr: \"{backend}\" }}]
    dns: {{ resolver: \"127.0.0.1:{}\", min_ttl: 100ms }}
routes:
  - {{ name: all, path: /, upstream: pool }}
",
        dns.port
    ));
    wait_for("the first answer from DNS", Duration::from_secs(10), || {
        (gw.get("/", &[]).status == 200).then_some(())
    });
    gw
}

#[test]
fn an_srv_backend_follows_its_records_ports_weights_and_priorities_without_a_reload() {
    let (heavy, light, fallback) = (
        Echo::start("heavy"),
        Echo::start("light"),
        Echo::start("fallback"),
    );
    let dns = DnsServer::start("127.0.0.1".parse().unwrap());
    dns.set_srv(&[
        (10, 3, heavy.port, "heavy.svc.test"),
        (10, 1, light.port, "light.svc.test"),
        (20, 1, fallback.port, "fallback.svc.test"),
    ]);
    let gw = dns_gateway(&dns, "srv:_http._tcp.svc.test");
    let seen = spread(&gw, "/", 2, 100);
    let heavy_share = f64::from(seen.get("heavy").copied().unwrap_or(0)) / 200.0;
    assert_eq!(seen.get("fallback"), None, "priority 20 is only a fallback");
    assert!(
        (0.65..=0.85).contains(&heavy_share),
        "SRV weights 3:1 give heavy about 0.75, got {seen:?}"
    );
    // The records change: only the fallback is left, on its own port.
    dns.set_srv(&[(20, 1, fallback.port, "fallback.svc.test")]);
    wait_for(
        "the SRV records' new target",
        Duration::from_secs(10),
        || {
            let r = gw.get("/", &[]);
            assert_eq!(r.status, 200, "no request is lost while the records change");
            (r.server() == "fallback").then_some(())
        },
    );
    for _ in 0..10 {
        assert_eq!(
            gw.get("/", &[]).server(),
            "fallback",
            "the old targets drained"
        );
    }
    assert_eq!(
        gw.metric("tollgate_config_reloads_total", &[]),
        0.0,
        "no reload"
    );
    assert!(dns.queries.load(std::sync::atomic::Ordering::Relaxed) >= 4);
}

#[test]
fn a_backend_name_moves_to_its_new_address_without_a_reload() {
    let port = free_port();
    let first = Echo::start_on("first", port);
    // The second backend listens on the same port of another loopback address.
    let dir = tempfile::tempdir().unwrap();
    let second_addr = format!("127.0.0.2:{port}");
    let mut second = Proc::spawn(
        &["echo", "--listen", &second_addr, "--name", "second"],
        dir.path().join("second.log"),
        &[],
    );
    wait_for("echo on 127.0.0.2", Duration::from_secs(10), || {
        assert!(!second.exited(), "{}", second.log_text());
        std::net::TcpStream::connect(&second_addr).ok()
    });
    let dns = DnsServer::start("127.0.0.1".parse().unwrap());
    let gw = dns_gateway(&dns, &format!("svc.test:{port}"));
    assert_eq!(gw.get("/", &[]).server(), "first");
    dns.set("127.0.0.2".parse().unwrap());
    let mut answers = 0;
    wait_for("the name's new address", Duration::from_secs(10), || {
        let r = gw.get("/", &[]);
        assert_eq!(r.status, 200, "no request is lost while the address moves");
        answers += 1;
        (r.server() == "second").then_some(())
    });
    for _ in 0..10 {
        assert_eq!(
            gw.get("/", &[]).server(),
            "second",
            "the old address drained"
        );
    }
    assert!(first.count() > 0);
    assert_eq!(
        gw.metric("tollgate_config_reloads_total", &[]),
        0.0,
        "no reload"
    );
    assert!(
        gw.metric(
            "tollgate_upstream_dns_resolutions_total",
            &[("upstream", "pool"), ("result", "success")]
        ) >= 2.0
    );
    assert!(dns.queries.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    println!("moved after {answers} requests");
    second.kill();
}
