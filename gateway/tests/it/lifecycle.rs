//! The process's life under traffic: `SIGTERM` fails readiness first, keeps serving through
//! the grace period, then closes the listener and ends every kept-alive connection after
//! its next answer (`Connection: close`), and lets in-flight requests finish.

use crate::common::*;
use crate::edge::{connect, read_answer};
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn readiness(gw: &Gateway) -> u16 {
    raw_request(
        gw.metrics_port,
        "GET /readyz HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    )
    .map_or(0, |r| r.status)
}

#[test]
fn sigterm_fails_readiness_first_serves_through_the_grace_period_then_drains() {
    let echo = Echo::start("E");
    let mut gw = Gateway::start_with_shutdown(
        "2s",
        "3s",
        &format!(
            "upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: all, path: /, upstream: e }}\n",
            echo.addr()
        ),
    );
    assert_eq!(readiness(&gw), 200);
    // A kept-alive connection, used once before SIGTERM.
    let (mut kept, mut kept_reader) = connect(&gw);
    let get = format!("GET /kept HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", gw.port);
    kept.write_all(get.as_bytes()).unwrap();
    let first = read_answer(&mut kept_reader, false).unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("connection").as_deref(), Some("keep-alive"));
    // A slow request in flight when the signal comes, and still after the listener closes.
    let url = gw.url("/slow");
    let slow = std::thread::spawn(move || request(&url, "GET", &[("x-echo-delay-ms", "3000")]));
    wait_for("the slow request in flight", Duration::from_secs(5), || {
        (gw.metric("tollgate_requests_in_flight", &[]) == 1.0).then_some(())
    });

    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &gw.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_for("readiness to fail", Duration::from_secs(2), || {
        (readiness(&gw) == 503).then_some(())
    });
    // Not ready, still serving: a new connection gets its answer.
    let during = raw_request(
        gw.port,
        &format!(
            "GET /new HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            gw.port
        ),
    )
    .unwrap();
    assert_eq!(during.status, 200);
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "the new connection was served within the grace period"
    );

    // After the grace period the listener closes...
    wait_for("the listener to close", Duration::from_secs(5), || {
        TcpStream::connect(("127.0.0.1", gw.port))
            .is_err()
            .then_some(())
    });
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "closed before the grace period ended"
    );
    // ...and the kept-alive connection gets one more answer, which ends it cleanly.
    kept.write_all(get.as_bytes()).unwrap();
    let last = read_answer(&mut kept_reader, false).expect("an answer, not a reset");
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection").as_deref(), Some("close"));
    assert!(
        read_answer(&mut kept_reader, false).is_none(),
        "closed after it"
    );
    // The request in flight finished.
    let slow = slow.join();
    assert!(slow.is_ok(), "{}", gw.proc.log_text());
    assert_eq!(slow.unwrap().status, 200);
    // And the process exits: grace period + graceful_shutdown_timeout + 1 s for runtimes.
    wait_for("the process to exit", Duration::from_secs(10), || {
        gw.proc.exited().then_some(())
    });
}

/// Keep-alive clients that send requests back to back, reconnecting only when an answer
/// says `Connection: close`; every other end of a connection, and every non-200, is an error.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    fn start(gw: &Gateway, clients: usize) -> Load {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let port = gw.port;
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let get = format!("GET /load HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
                    let (mut ok, mut errors) = (0u64, Vec::new());
                    let mut conn: Option<(TcpStream, std::io::BufReader<TcpStream>)> = None;
                    while !stop.load(Ordering::Acquire) {
                        let (s, r) = match conn.as_mut() {
                            Some(c) => c,
                            None => match TcpStream::connect(("127.0.0.1", port)) {
                                Ok(s) => {
                                    let r = std::io::BufReader::new(s.try_clone().unwrap());
                                    conn.insert((s, r))
                                }
                                Err(e) => {
                                    errors.push(format!("connect: {e}"));
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                            },
                        };
                        if let Err(e) = s.write_all(get.as_bytes()) {
                            errors.push(format!("write: {e}"));
                            conn = None;
                            continue;
                        }
                        match read_answer(r, false) {
                            Some(a) if a.status == 200 => {
                                ok += 1;
                                if a.header("connection").as_deref() == Some("close") {
                                    conn = None;
                                }
                            }
                            Some(a) => {
                                errors.push(format!("status {}", a.status));
                                conn = None;
                            }
                            None => {
                                errors.push("connection ended without an answer".into());
                                conn = None;
                            }
                        }
                    }
                    (ok, errors)
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let (mut ok, mut errors) = (0, Vec::new());
        for t in self.threads {
            let (o, e) = t.join().unwrap();
            ok += o;
            errors.extend(e);
        }
        (ok, errors)
    }
}

#[test]
fn a_graceful_upgrade_under_keep_alive_load_fails_no_request() {
    let echo = Echo::start("E");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let pid = dir.path().join("tollgate.pid");
    let mut old = Gateway::start_with_server(
        &format!(
            "grace_period: 1s, graceful_shutdown_timeout: 2s, upgrade_sock: \"{}\", pid_file: \"{}\"",
            sock.display(),
            pid.display()
        ),
        &format!(
            "upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: all, path: /, upstream: e }}\n",
            echo.addr()
        ),
    );
    let load = Load::start(&old, 8);
    wait_for("load on the old process", Duration::from_secs(5), || {
        (old.metric("tollgate_requests_total", &[("route", "all")]) > 200.0).then_some(())
    });
    // The new process waits for the listeners; SIGQUIT makes the old one hand them over.
    let mut new = old.start_upgrade();
    wait_for(
        "the new process to wait for the listeners",
        Duration::from_secs(10),
        || sock.exists().then_some(()),
    );
    let quit = Command::new("kill")
        .args(["-QUIT", &old.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(quit.success());
    wait_for("the old process to exit", Duration::from_secs(15), || {
        old.proc.exited().then_some(())
    });
    assert!(!new.exited(), "the new process runs: {}", new.log_text());
    // The new process alone serves now: its counters start from zero and grow.
    let served_by_new = || old.metric("tollgate_requests_total", &[("route", "all")]);
    let before = served_by_new();
    wait_for(
        "the new process serving the load",
        Duration::from_secs(5),
        || (served_by_new() > before + 200.0).then_some(()),
    );
    let (ok, errors) = load.finish();
    assert!(ok > 1000, "{ok} requests answered");
    assert!(
        errors.is_empty(),
        "{} failed of {}: {:?}\nold: {}\nnew: {}",
        errors.len(),
        ok + errors.len() as u64,
        &errors[..errors.len().min(10)],
        old.proc.log_text(),
        new.log_text()
    );
    new.kill();
}

/// The access lines of a gateway's log, parsed.
fn access_lines(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.proc
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect()
}

#[test]
fn access_lines_carry_the_decision_and_the_hashed_subject_and_never_the_token() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k");
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&key])).unwrap();
    let config = |sample: &str| {
        format!(
            "logging: {{ subject: hashed, subject_salt: \"0123456789abcdef\", access_log_sample: {sample} }}\n\
             auth:\n  providers:\n    - {{ name: main, issuer: \"https://i.test\", audiences: any, jwks_file: \"{}\" }}\n\
             policies:\n  admins:\n    allow: [{{ roles: [admin] }}]\n\
             upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\n\
             routes:\n  - name: api\n    path: /\n    upstream: e\n    policy: admins\n    rate_limits:\n      - {{ name: roomy, key: client_ip, rate: 100/s }}\n",
            jwks_path.display(),
            echo.addr()
        )
    };
    let admin = key
        .sign(serde_json::json!({ "iss": "https://i.test", "sub": "alice", "roles": ["admin"] }));
    let reader = key.sign(serde_json::json!({ "iss": "https://i.test", "sub": "bob" }));

    let gw = Gateway::start(&config("1"));
    let ok = gw.get("/x?y=1", &[("authorization", &format!("Bearer {admin}"))]);
    assert_eq!(ok.status, 200);
    assert_eq!(
        gw.get("/x", &[("authorization", &format!("Bearer {reader}"))])
            .status,
        403
    );
    let lines = wait_for("two access lines", Duration::from_secs(10), || {
        let lines = access_lines(&gw);
        (lines.len() >= 2).then_some(lines)
    });
    let allowed = lines.iter().find(|l| l["status"] == 200).unwrap();
    let expected_subject: String = {
        let mut c = ring::digest::Context::new(&ring::digest::SHA256);
        c.update(b"0123456789abcdef");
        c.update(b"alice");
        c.finish().as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    for (field, value) in [
        ("route", "api"),
        ("path", "/x"),
        ("host", "127.0.0.1"),
        ("upstream", "e"),
        ("auth", "allow"),
        ("auth_reason", "ok"),
        ("provider", "main"),
        ("rbac", "allow"),
        ("rbac_rule", "allow[0]"),
        ("limit", "allow"),
    ] {
        assert_eq!(allowed[field], value, "{field} in {allowed}");
    }
    assert_eq!(allowed["subject"], expected_subject.as_str(), "{allowed}");
    assert!(allowed["bytes_out"].as_u64().unwrap() > 0, "{allowed}");
    assert!(allowed["upstream_ms"].as_f64().unwrap() > 0.0, "{allowed}");
    assert!(allowed["timestamp"].is_string(), "{allowed}");
    let denied = lines.iter().find(|l| l["status"] == 403).unwrap();
    assert_eq!(denied["rbac"], "deny", "{denied}");
    assert_eq!(denied["rbac_rule"], "default", "{denied}");
    let log = gw.proc.log_text();
    for token in [&admin, &reader] {
        assert!(
            !log.contains(token.rsplit('.').next().unwrap()),
            "a token leaked into the log"
        );
    }
    assert!(
        !log.contains("alice") && !log.contains("bob"),
        "a subject in clear"
    );
    assert!(!log.contains("y=1"), "the query string in the log");

    // Sampling: with 0, only the refusal is logged.
    let sampled = Gateway::start(&config("0"));
    assert_eq!(
        sampled
            .get("/", &[("authorization", &format!("Bearer {admin}"))])
            .status,
        200
    );
    assert_eq!(
        sampled
            .get("/", &[("authorization", &format!("Bearer {reader}"))])
            .status,
        403
    );
    let lines = wait_for("the refusal's line", Duration::from_secs(10), || {
        let lines = access_lines(&sampled);
        (!lines.is_empty()).then_some(lines)
    });
    assert!(lines.iter().all(|l| l["status"] == 403), "{lines:?}");
}

#[test]
fn with_watch_config_an_edited_file_is_reloaded_without_a_signal() {
    let echo = Echo::start("E");
    let routes = |extra: &str| {
        format!(
            "upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: all, path: /a, upstream: e }}\n{extra}",
            echo.addr()
        )
    };
    let gw = Gateway::start_with_server(
        "grace_period: 1s, graceful_shutdown_timeout: 1s, watch_config: 100ms",
        &routes(""),
    );
    assert_eq!(gw.get("/b", &[]).status, 404);
    gw.rewrite(&routes("  - { name: new, path: /b, upstream: e }\n"));
    wait_for("the edited config in use", Duration::from_secs(10), || {
        (gw.get("/b", &[]).status == 200).then_some(())
    });
    assert_eq!(gw.metric("tollgate_config_generation", &[]), 2.0);
    // A broken edit is refused like a broken SIGHUP reload; the running config stays.
    gw.rewrite("routes: [{ name: broken, path: /, upstream: nowhere }]\n");
    wait_for("the refused reload", Duration::from_secs(10), || {
        (gw.metric("tollgate_config_reloads_total", &[("result", "error")]) == 1.0).then_some(())
    });
    assert_eq!(gw.get("/b", &[]).status, 200);
    assert_eq!(gw.metric("tollgate_config_generation", &[]), 2.0);
    assert_eq!(
        gw.metric("tollgate_config_reloads_total", &[("result", "success")]),
        1.0,
        "one edit, one reload"
    );
}

#[test]
fn a_backend_found_down_stays_down_across_a_reload() {
    let a = Echo::start("A");
    // B accepts connections and never answers: its HTTP health check fails by timeout
    // (slowly), and a request sent to it times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let config = |route: &str| {
        format!(
            "upstreams:\n  e:\n    backends: [{{ addr: \"{}\" }}, {{ addr: \"{b}\" }}]\n    \
             retries: 0\n    read_timeout: 300ms\n    \
             health_check: {{ type: http, path: /, interval: 300ms, timeout: 1s, unhealthy_threshold: 1 }}\n\
             routes:\n  - {{ name: {route}, path: /, upstream: e, auth: none }}\n",
            a.addr()
        )
    };
    let gw = Gateway::start(&config("first"));
    let b_label = b.to_string();
    wait_for("B found down", Duration::from_secs(10), || {
        let up = gw.metric(
            "tollgate_upstream_backend_healthy",
            &[("backend", b_label.as_str())],
        );
        (up == 0.0).then_some(())
    });
    gw.reload(&config("second"));
    wait_for("the reload", Duration::from_secs(10), || {
        (gw.metric("tollgate_config_generation", &[]) >= 2.0).then_some(())
    });
    // The new config's cluster knows B is down: every request goes to A at once (a fresh
    // health state would send every other one to B, to time out).
    for i in 0..10 {
        let r = gw.get(&format!("/{i}"), &[]);
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.server(), "A");
    }
    assert_eq!(
        gw.metric(
            "tollgate_upstream_backend_healthy",
            &[("backend", b_label.as_str())]
        ),
        0.0
    );
}

fn open_route(echo: &Echo, logging: &str) -> String {
    format!(
        "logging: {logging}\nupstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: all, path: /, upstream: e, auth: none }}\n",
        echo.addr()
    )
}

fn sigterm(gw: &Gateway) {
    let kill = Command::new("kill")
        .args(["-TERM", &gw.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

#[test]
fn a_stalled_log_reader_never_holds_a_request_readiness_or_shutdown() {
    // Issue 22 (1): with stdout a pipe nobody read, the gateway answered about 120 requests
    // (a 64 KiB pipe of access lines), then none; readiness stayed 200 and SIGTERM did not
    // end the process. Log lines are now written by a thread of their own and dropped,
    // counted, when it cannot keep up.
    let echo = Echo::start("E");
    let mut gw = Gateway::start_with_stalled_stdout(&open_route(&echo, "{ buffer_lines: 64 }"));
    // Twelve times what the pipe and the buffer can hold.
    for i in 0..1500 {
        let r = gw.get(&format!("/item/{i}"), &[]);
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    assert_eq!(readiness(&gw), 200);
    let dropped = gw.metric("tollgate_log_lines_dropped_total", &[]);
    assert!(
        dropped >= 1000.0,
        "{dropped} lines dropped of 1,500 that could not be written"
    );
    // Shutdown logs too, and must not wait for the pipe either: grace period (1 s),
    // connections (1 s), runtimes (1 s) and the log writer's bounded flush.
    sigterm(&gw);
    assert!(
        gw.proc.exits_within(Duration::from_secs(20)),
        "the gateway did not exit after SIGTERM with its stdout stalled"
    );
}

#[test]
fn the_configured_level_is_a_ceiling_for_every_target_pingoras_included() {
    // Issue 22 (10): `level: warn` still printed Pingora's INFO lines (start, requests,
    // shutdown), because Pingora's targets were held at info as a floor.
    let echo = Echo::start("E");
    let mut gw = Gateway::start(&format!(
        "logging: {{ level: warn }}
upstreams:
  e: {{ backends: [{{ addr: \"{}\" }}] }}
  dead: {{ backends: [{{ addr: \"127.0.0.1:{}\" }}], retries: 0 }}
routes:
  - {{ name: dead, path: /dead, upstream: dead, auth: none }}
  - {{ name: all, path: /, upstream: e, auth: none }}
",
        echo.addr(),
        free_port()
    ));
    for i in 0..20 {
        assert_eq!(gw.get(&format!("/item/{i}"), &[]).status, 200);
    }
    // An upstream that refuses: an error line, so the log is known to work at this level.
    assert_eq!(gw.get("/dead", &[]).status, 502);
    sigterm(&gw);
    assert!(gw.proc.exits_within(Duration::from_secs(20)));
    let log = gw.proc.log_text();
    let below_warn: Vec<&str> = log
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| matches!(v["level"].as_str(), Some("INFO" | "DEBUG" | "TRACE")))
        })
        .collect();
    assert!(
        below_warn.is_empty(),
        "logged under level warn: {below_warn:#?}"
    );
    assert!(
        log.contains("\"level\":\"ERROR\""),
        "the refused upstream was logged: {log}"
    );
}
