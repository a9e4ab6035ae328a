//! The proxy path through the real binary: routing, load balancing, health checks,
//! retries, error answers, forwarding headers and metrics.

use crate::common::*;
use std::collections::HashMap;
use std::time::Duration;

fn upstream(name: &str, backends: &[(&Echo, u32)], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(e, w)| format!("{{ addr: \"{}\", weight: {w} }}", e.addr()))
        .collect();
    format!("  {name}:\n    backends: [{}]\n{extra}", list.join(", "))
}

#[test]
fn routes_by_host_path_and_method() {
    let a = Echo::start("A");
    let b = Echo::start("B");
    let gw = Gateway::start(&format!(
        "upstreams:\n{}{}routes:
  - {{ name: host-a, host: a.test, path: /, upstream: a }}
  - {{ name: api, path: /api, upstream: b, strip_prefix: true }}
  - {{ name: api-write, path: /api/items, methods: [POST], upstream: a }}
  - {{ name: exact, path: /exact, path_match: exact, methods: [GET], upstream: a }}
",
        upstream("a", &[(&a, 1)], ""),
        upstream("b", &[(&b, 1)], ""),
    ));

    let r = gw.get("/anything", &[("host", "a.test")]);
    assert_eq!((r.status, r.server()), (200, "A".to_owned()));

    let r = gw.get("/api/users/7?q=1", &[]);
    assert_eq!((r.status, r.server()), (200, "B".to_owned()));
    assert_eq!(r.json()["path"], "/users/7", "strip_prefix removes /api");
    assert_eq!(r.json()["query"], "q=1");

    // The most specific path decides: /api/items lists only POST, so a GET there is 405
    // and never falls through to the less specific /api.
    let r = gw.get("/api/items/7", &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));

    let r = request(&gw.url("/api/items"), "POST", &[]);
    assert_eq!(
        (r.status, r.server()),
        (200, "A".to_owned()),
        "method picks the route"
    );

    let r = gw.get("/exact", &[]);
    assert_eq!(r.server(), "A");
    let r = gw.get("/exact/more", &[]);
    assert_eq!(r.status, 404, "exact does not match a longer path");
    assert_eq!(r.json()["error"], "not_found");

    let r = request(&gw.url("/exact"), "DELETE", &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    assert_eq!(r.json()["error"], "method_not_allowed");

    let r = raw_request(
        gw.port,
        "GET /api/../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 400, "dot segments are refused, not forwarded");
}

#[test]
fn weighted_round_robin_follows_weights() {
    let e: Vec<Echo> = ["w1", "w2", "w3"].iter().map(|n| Echo::start(n)).collect();
    let gw = Gateway::start(&format!(
        "upstreams:\n{}routes:\n  - {{ name: all, path: /, upstream: pool }}\n",
        upstream("pool", &[(&e[0], 1), (&e[1], 2), (&e[2], 5)], ""),
    ));
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..1000 {
        let r = gw.get("/", &[]);
        assert_eq!(r.status, 200);
        *counts.entry(r.server()).or_default() += 1;
    }
    for (name, weight) in [("w1", 1.0), ("w2", 2.0), ("w3", 5.0)] {
        let expected = 1000.0 * weight / 8.0;
        let got = f64::from(counts[name]);
        assert!(
            (got - expected).abs() <= expected * 0.10,
            "{name}: {got} requests, expected {expected} ± 10% ({counts:?})"
        );
    }
}

#[test]
fn consistent_hashing_keeps_a_key_on_one_backend() {
    let e: Vec<Echo> = ["h1", "h2", "h3"].iter().map(|n| Echo::start(n)).collect();
    let gw = Gateway::start(&format!(
        "upstreams:\n{}routes:\n  - {{ name: all, path: /, upstream: pool }}\n",
        upstream(
            "pool",
            &[(&e[0], 1), (&e[1], 1), (&e[2], 1)],
            "    lb: consistent_hash\n    hash_on: \"header:x-user\"\n"
        ),
    ));
    let mut used = std::collections::HashSet::new();
    for user in 0..30 {
        let user = format!("user-{user}");
        let first = gw.get("/", &[("x-user", &user)]).server();
        for _ in 0..5 {
            assert_eq!(
                gw.get("/", &[("x-user", &user)]).server(),
                first,
                "{user} moved"
            );
        }
        used.insert(first);
    }
    assert!(used.len() >= 2, "30 keys all hashed to {used:?}");
}

#[test]
fn killed_backend_is_ejected_then_recovers() {
    let a = Echo::start("A");
    let mut b = Echo::start("B");
    // No retries: only the health check can keep requests away from the dead backend.
    let gw = Gateway::start(&format!(
        "upstreams:\n{}routes:\n  - {{ name: all, path: /, upstream: pool }}\n",
        upstream(
            "pool",
            &[(&a, 1), (&b, 1)],
            "    retries: 0\n    health_check: { type: http, path: /healthz, interval: 200ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 2 }\n"
        ),
    ));
    let b_addr = b.addr();
    let healthy = |gw: &Gateway| {
        gw.metric(
            "tollgate_upstream_backend_healthy",
            &[("upstream", "pool"), ("backend", &b_addr)],
        )
    };
    let seen: std::collections::HashSet<String> =
        (0..10).map(|_| gw.get("/", &[]).server()).collect();
    assert_eq!(seen.len(), 2, "both backends serve while healthy");

    let fail_labels = [
        ("upstream", "pool"),
        ("backend", b_addr.as_str()),
        ("result", "fail"),
    ];
    assert_eq!(
        gw.metric("tollgate_upstream_health_checks_total", &fail_labels),
        0.0,
        "B passed its checks while it ran"
    );
    b.stop();
    // The failed checks counted in the first scrape that shows B unhealthy.
    let failures = wait_for("B marked unhealthy", Duration::from_secs(10), || {
        let scrape = gw.scrape();
        let healthy = metric_value(
            &scrape,
            "tollgate_upstream_backend_healthy",
            &[("upstream", "pool"), ("backend", &b_addr)],
        );
        (healthy == 0.0).then(|| {
            metric_value(
                &scrape,
                "tollgate_upstream_health_checks_total",
                &fail_labels,
            )
        })
    });
    // Ejected on the unhealthy_threshold-th failed check (2); one more may have run before
    // the scrape saw the verdict. Counted in checks, not seconds: a late ejection fails it
    // however fast the machine.
    assert!(
        (2.0..=3.0).contains(&failures),
        "ejected after {failures} failed checks (unhealthy_threshold: 2)"
    );
    for _ in 0..100 {
        let r = gw.get("/", &[]);
        assert_eq!(
            (r.status, r.server()),
            (200, "A".to_owned()),
            "no 5xx after ejection"
        );
    }

    b.restart();
    wait_for("B healthy again", Duration::from_secs(10), || {
        (healthy(&gw) == 1.0).then_some(())
    });
    wait_for("B serving again", Duration::from_secs(5), || {
        (gw.get("/", &[]).server() == "B").then_some(())
    });
}

#[test]
fn connect_failure_is_retried_on_another_backend() {
    let live = Echo::start("live");
    let dead = format!("127.0.0.1:{}", free_port());
    let config = |retries: u32| {
        format!(
            "upstreams:\n  pool:\n    backends: [{{ addr: \"{dead}\" }}, {{ addr: \"{}\" }}]\n    retries: {retries}\n\
             routes:\n  - {{ name: all, path: /, upstream: pool }}\n",
            live.addr()
        )
    };
    let gw = Gateway::start(&config(1));
    for _ in 0..20 {
        let r = gw.get("/", &[]);
        assert_eq!((r.status, r.server()), (200, "live".to_owned()));
    }
    assert!(
        gw.metric(
            "tollgate_upstream_requests_total",
            &[("backend", &dead), ("outcome", "connect_error")]
        ) >= 1.0
    );

    // The same cluster without retries lets the connect failures through as 502s.
    let gw = Gateway::start(&config(0));
    let statuses: Vec<u16> = (0..20).map(|_| gw.get("/", &[]).status).collect();
    assert!(statuses.contains(&502), "{statuses:?}");
}

#[test]
fn error_answers_have_status_and_json_body() {
    let slow = Echo::start("slow");
    let dead = format!("127.0.0.1:{}", free_port());
    let dead2 = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&format!(
        "upstreams:
  down: {{ backends: [{{ addr: \"{dead}\" }}], retries: 0 }}
  unhealthy:
    backends: [{{ addr: \"{dead2}\" }}]
    health_check: {{ type: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1 }}
  slow: {{ backends: [{{ addr: \"{}\" }}], read_timeout: 300ms }}
routes:
  - {{ name: down, path: /down, upstream: down }}
  - {{ name: unhealthy, path: /unhealthy, upstream: unhealthy }}
  - {{ name: slow, path: /slow, upstream: slow }}
",
        slow.addr()
    ));
    let check = |r: &Reply, status: u16, error: &str| {
        assert_eq!(r.status, status, "{r:?}");
        let body = r.json();
        assert_eq!(body["error"], error, "{r:?}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(
            Some(body["request_id"].as_str().unwrap()),
            r.header("x-request-id")
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    };
    check(&gw.get("/nowhere", &[]), 404, "not_found");
    check(&gw.get("/down", &[]), 502, "upstream_error");
    wait_for("unhealthy backend ejected", Duration::from_secs(10), || {
        (gw.metric("tollgate_upstream_backend_healthy", &[("backend", &dead2)]) == 0.0)
            .then_some(())
    });
    check(&gw.get("/unhealthy", &[]), 503, "no_healthy_backend");
    check(
        &gw.get("/slow", &[("x-echo-delay-ms", "3000")]),
        504,
        "upstream_timeout",
    );
    // The same route answers when the backend is fast enough.
    assert_eq!(gw.get("/slow", &[("x-echo-delay-ms", "10")]).status, 200);
    // A failed proxy does not reuse the client connection, and its answer says so: a
    // keep-alive client must not send its next request into a closing connection (found by
    // the soak: 504 with `Connection: keep-alive`, then a close). `raw_request` reads until
    // the gateway closes.
    for (path, status) in [("/slow", 504), ("/down", 502)] {
        let r = raw_request(
            gw.port,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nx-echo-delay-ms: 3000\r\n\r\n"),
        )
        .unwrap();
        assert_eq!(r.status, status, "{r:?}");
        assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    }
}

#[test]
fn request_id_and_forwarded_headers() {
    let e = Echo::start("E");
    let gw = Gateway::start(&format!(
        "upstreams:\n{}routes:\n  - {{ name: all, path: /, upstream: e }}\n",
        upstream("e", &[(&e, 1)], ""),
    ));
    let r = gw.get("/", &[("x-request-id", "client-id_1.2:3")]);
    assert_eq!(r.header("x-request-id"), Some("client-id_1.2:3"));
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some("client-id_1.2:3")
    );

    let r = gw.get("/", &[("x-request-id", "not ok!")]);
    let id = r.header("x-request-id").unwrap().to_owned();
    assert_eq!(
        id.len(),
        32,
        "a generated id replaces a malformed one: {id}"
    );
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(r.upstream_header("x-request-id"), Some(id.clone()));
    let other = gw.get("/", &[]).header("x-request-id").unwrap().to_owned();
    assert_ne!(other, id, "each request gets its own id");

    // No trusted proxy is configured: the client's X-Forwarded-For is replaced.
    let r = gw.get("/", &[("x-forwarded-for", "203.0.113.9")]);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    let r = gw.get("/", &[]);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        r.header("server"),
        None,
        "the upstream Server header is removed"
    );
}

#[test]
fn metrics_move_and_pass_promtool() {
    let e = Echo::start("E");
    let gw = Gateway::start(&format!(
        "upstreams:\n{}routes:\n  - {{ name: main, path: /, upstream: e }}\n",
        upstream("e", &[(&e, 1)], ""),
    ));
    let ok = [("route", "main"), ("method", "GET"), ("status", "200")];
    let before = gw.metric("tollgate_requests_total", &ok);
    for _ in 0..7 {
        assert_eq!(gw.get("/x", &[]).status, 200);
    }
    assert_eq!(request(&gw.url("/x"), "PATCH", &[]).status, 200);
    // Requests are counted in the logging phase, after the answer went out: poll the scrape
    // until they show up, then check the exact values.
    let count = |scrape: &str| {
        (
            metric_value(scrape, "tollgate_requests_total", &ok) - before,
            metric_value(
                scrape,
                "tollgate_requests_total",
                &[("route", "main"), ("method", "PATCH")],
            ),
            metric_value(
                scrape,
                "tollgate_upstream_requests_total",
                &[("upstream", "e"), ("outcome", "response")],
            ),
            metric_value(
                scrape,
                "tollgate_request_duration_seconds_count",
                &[("route", "main")],
            ),
        )
    };
    // A scrape reads the metrics one after another while another worker thread may still be
    // in a request's logging phase, so poll until every count has caught up (or is past it).
    let scrape = wait_for("8 requests counted", Duration::from_secs(10), || {
        let scrape = gw.scrape();
        let (get, patch, upstream, duration) = count(&scrape);
        (get >= 7.0 && patch >= 1.0 && upstream >= 8.0 && duration >= 8.0).then_some(scrape)
    });
    assert_eq!(count(&scrape), (7.0, 1.0, 8.0, 8.0));
    assert_eq!(metric_value(&scrape, "tollgate_build_info", &[]), 1.0);
    // What an operator expects beside the gateway's own series.
    let upstream = [("upstream", "e")];
    assert_eq!(
        metric_value(
            &scrape,
            "tollgate_upstream_response_duration_seconds_count",
            &upstream
        ),
        8.0
    );
    // Keep-alive to the upstream: at least one new connection, at most one per request.
    let connects = metric_value(
        &scrape,
        "tollgate_upstream_connect_duration_seconds_count",
        &upstream,
    );
    assert!((1.0..=8.0).contains(&connects), "{connects}");
    assert_eq!(
        metric_value(&scrape, "tollgate_config_generation", &[]),
        1.0
    );
    for series in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(metric_value(&scrape, series, &[]) > 0.0, "{series}");
    }
    assert!(
        scrape.contains("\nprocess_cpu_seconds_total "),
        "process_cpu_seconds_total"
    );
    // A slow request is in flight while the upstream holds it, and only then.
    let in_flight = || gw.metric("tollgate_requests_in_flight", &[]);
    let url = gw.url("/slow");
    let slow = std::thread::spawn(move || request(&url, "GET", &[("x-echo-delay-ms", "1500")]));
    wait_for("the slow request in flight", Duration::from_secs(5), || {
        (in_flight() == 1.0).then_some(())
    });
    assert_eq!(slow.join().unwrap().status, 200);
    wait_for("no request in flight", Duration::from_secs(5), || {
        (in_flight() == 0.0).then_some(())
    });
    let health = request(
        &format!("http://127.0.0.1:{}/healthz", gw.metrics_port),
        "GET",
        &[],
    );
    assert_eq!(health.status, 200);

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(scrape.as_bytes());
    let out = promtool
        .take()
        .expect("promtool runs (make test installs it)");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `Command` with input on stdin and collected output.
trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> Option<std::process::Output>;
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> Option<std::process::Output> {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(input).ok()?;
        child.wait_with_output().ok()
    }
}

#[test]
fn sighup_reloads_the_config_without_dropping_requests() {
    let a = Echo::start("A");
    let b = Echo::start("B");
    let config = |x_to: &str, extra: &str| {
        format!(
            "upstreams:\n{}{}routes:\n  - {{ name: x, path: /x, upstream: {x_to} }}\n{extra}",
            upstream("a", &[(&a, 1)], ""),
            upstream("b", &[(&b, 1)], ""),
        )
    };
    let gw = Gateway::start(&config("a", ""));
    assert_eq!(gw.get("/x", &[]).server(), "A");

    // Requests keep flowing, on kept-alive connections, while the config changes under them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = gw.url("/x");
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) && statuses.len() < 100_000 {
                statuses.push(request(&url, "GET", &[]).status);
            }
            statuses
        })
    };
    gw.reload(&config("b", "  - { name: new, path: /new, upstream: a }\n"));
    wait_for("the new route", Duration::from_secs(10), || {
        (gw.get("/new", &[]).status == 200).then_some(())
    });
    assert_eq!(
        gw.get("/x", &[]).server(),
        "B",
        "the changed route took effect"
    );

    // A bad config is refused; the running one stays.
    gw.reload("routes: [{ name: broken, path: /, upstream: nowhere }]\n");
    wait_for("the refused reload", Duration::from_secs(10), || {
        (gw.metric("tollgate_config_reloads_total", &[("result", "error")]) == 1.0).then_some(())
    });
    assert_eq!(gw.get("/new", &[]).status, 200);
    assert_eq!(
        gw.metric("tollgate_config_reloads_total", &[("result", "success")]),
        1.0
    );
    // The config in use is the second one: the refused reload changed neither the generation
    // nor the time of the last successful load.
    let scrape = gw.scrape();
    assert_eq!(
        metric_value(&scrape, "tollgate_config_generation", &[]),
        2.0
    );
    let loaded = metric_value(
        &scrape,
        "tollgate_config_last_reload_success_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        loaded > now - 60.0 && loaded <= now + 1.0,
        "{loaded} vs {now}"
    );

    stop.store(true, std::sync::atomic::Ordering::Release);
    let statuses = load.join().unwrap();
    assert!(statuses.len() > 10, "the load loop ran: {}", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "a request failed during reload: {statuses:?}"
    );
}
