//! OpenTelemetry tracing, read by a real OTLP/HTTP collector: `otlp_receiver.py` decodes what
//! the gateway exports with the official `opentelemetry-proto` messages (PyPI) and writes one
//! JSON line per span. The tests check the spans' links, what the upstream received, that a
//! sampled-out request exports nothing, that an untrusted client can neither pick the trace
//! nor force recording, and that a stalled or stopped collector never holds a request.

use crate::common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The collector: a real OTLP/HTTP receiver on a loopback port.
struct Collector {
    port: u16,
    out: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Collector {
    fn start() -> Collector {
        let python = repo().join("target/otel-venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: `make unit` (or `make target/otel-venv/.installed`) installs opentelemetry-proto",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("spans.jsonl");
        let mut child = Command::new(python)
            .arg(repo().join("gateway/tests/it/otlp_receiver.py"))
            .arg("0")
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the receiver prints its port");
        Collector {
            port,
            out,
            child,
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn raw(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits for the spans of `trace`, up to `count` of them.
    fn trace(&self, trace: &str, count: usize) -> Vec<Value> {
        wait_for("the trace's spans", Duration::from_secs(20), || {
            let spans: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace)
                .collect();
            (spans.len() >= count).then_some(spans)
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The parts of a `traceparent`: trace id, parent id, flags.
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    assert_eq!(p[0], "00");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

struct Setup {
    collector: Collector,
    echo: Echo,
    _authz: Echo,
    key: TestKey,
    gw: Gateway,
    _keys: (tempfile::TempDir, PathBuf),
}

fn setup(tracing: &str, trusted: &str) -> Setup {
    let collector = Collector::start();
    let echo = Echo::start("E");
    let authz = Echo::start("AUTHZ");
    let key = TestKey::es256("k1");
    let keys = jwks_file(&[&key]);
    let gw = Gateway::start_with_http(
        &format!("{{ trusted_proxies: [{trusted}] }}"),
        &format!(
            "logging:
  subject: plain
  tracing: {{ endpoint: \"{}\", batch_delay: 50ms, {tracing} }}
auth:
  providers:
    - {{ name: idp, issuer: \"https://idp.example\", audiences: [api], jwks_file: \"{}\" }}
  ext_authz:
    allow: {{ url: \"http://{}/check\", timeout: 2s }}
upstreams:
  e: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - name: api
    path: /api/
    upstream: e
    ext_authz: allow
    rate_limits: [{{ name: per-user, rate: 100/s }}]
",
            collector.endpoint(),
            keys.1.display(),
            authz.addr(),
            echo.addr(),
        ),
    );
    Setup {
        collector,
        echo,
        _authz: authz,
        key,
        gw,
        _keys: keys,
    }
}

impl Setup {
    fn token(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.key.sign(serde_json::json!({
            "iss": "https://idp.example", "aud": "api", "sub": "alice",
            "iat": now, "exp": now + 300,
        }))
    }

    fn get(&self, traceparent: Option<&str>, tracestate: Option<&str>) -> Reply {
        let bearer = format!("Bearer {}", self.token());
        let mut headers = vec![("authorization", bearer.as_str())];
        if let Some(t) = traceparent {
            headers.push(("traceparent", t));
        }
        if let Some(t) = tracestate {
            headers.push(("tracestate", t));
        }
        let reply = self.gw.get("/api/item", &headers);
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply
    }
}

#[test]
fn a_trace_crosses_the_gateway_with_its_verification_authz_and_upstream_spans() {
    let s = setup("sample_ratio: 0", "\"127.0.0.1/32\"");
    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let token = s.token();
    let reply = s.get(Some(&parent), Some("vendor=opaque"));

    // The upstream continues the client's trace, from the gateway's upstream span.
    let sent = reply
        .upstream_header("traceparent")
        .expect("traceparent upstream");
    let (trace, upstream_parent, flags) = parts(&sent);
    assert_eq!(trace, CLIENT_TRACE);
    assert_ne!(upstream_parent, CLIENT_SPAN);
    assert_eq!(flags, "01");
    assert_eq!(
        reply.upstream_header("tracestate").as_deref(),
        Some("vendor=opaque")
    );

    let spans = s.collector.trace(CLIENT_TRACE, 5);
    assert_eq!(spans.len(), 5, "{spans:#?}");
    let server = named(&spans, "GET api");
    assert_eq!(server["kind_name"], "SPAN_KIND_SERVER");
    assert_eq!(server["parent_span_id"], CLIENT_SPAN);
    assert_eq!(server["trace_state"], "vendor=opaque");
    let attrs = &server["attributes"];
    assert_eq!(attrs["tollgate.route"], "api");
    assert_eq!(attrs["http.request.method"], "GET");
    assert_eq!(attrs["url.path"], "/api/item");
    assert_eq!(attrs["http.response.status_code"], 200);
    assert_eq!(attrs["enduser.id"], "alice", "logging.subject: plain");
    assert!(attrs["tollgate.auth"].is_string(), "{attrs}");
    assert_eq!(
        attrs["tollgate.request_id"],
        reply.header("x-request-id").unwrap()
    );
    assert_eq!(server["resource"]["service.name"], "tollgate");
    let server_id = server["span_id"].as_str().unwrap();

    let verify = named(&spans, "verify token");
    let authz = named(&spans, "GET");
    let limits = named(&spans, "rate limits");
    let upstream = named(&spans, "upstream");
    for child in [verify, authz, limits, upstream] {
        assert_eq!(child["parent_span_id"], server_id, "{child}");
        assert_eq!(child["trace_id"], CLIENT_TRACE);
        assert!(child["start_unix_nano"].as_u64() >= server["start_unix_nano"].as_u64());
        assert!(child["end_unix_nano"].as_u64() <= server["end_unix_nano"].as_u64());
        assert!(child["start_unix_nano"].as_u64() <= child["end_unix_nano"].as_u64());
    }
    assert_eq!(verify["kind_name"], "SPAN_KIND_INTERNAL");
    assert_eq!(authz["kind_name"], "SPAN_KIND_CLIENT");
    assert!(
        authz["attributes"]["url.full"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://{}/check", s._authz.addr())),
        "{authz}"
    );
    assert_eq!(authz["attributes"]["http.response.status_code"], 200);
    assert_eq!(limits["attributes"]["tollgate.limit"], "allow");
    // The upstream span is the parent the upstream was told of.
    assert_eq!(upstream["kind_name"], "SPAN_KIND_CLIENT");
    assert_eq!(upstream["span_id"], upstream_parent);
    assert_eq!(upstream["attributes"]["server.address"], s.echo.addr());
    assert_eq!(upstream["attributes"]["tollgate.attempt"], 1);
    // Verification comes before the authorization call, which comes before the upstream.
    assert!(verify["end_unix_nano"].as_u64() <= authz["start_unix_nano"].as_u64());
    assert!(authz["end_unix_nano"].as_u64() <= upstream["start_unix_nano"].as_u64());

    // Not sampled: the parent's flag 00 is kept upstream and nothing is exported; nor is a
    // new trace at sample_ratio 0. A sampled request after them shows the queue was read.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    let sent = s
        .get(Some(unsampled), None)
        .upstream_header("traceparent")
        .unwrap();
    let (trace, _, flags) = parts(&sent);
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        ("11111111111111111111111111111111", "00")
    );
    let sent = s.get(None, None).upstream_header("traceparent").unwrap();
    let (fresh, _, flags) = parts(&sent);
    assert_eq!(flags, "00");
    let marker = "00-33333333333333333333333333333333-4444444444444444-01";
    s.get(Some(marker), None);
    s.collector.trace("33333333333333333333333333333333", 5);
    let traces: Vec<String> = s
        .collector
        .spans()
        .iter()
        .map(|s| s["trace_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!traces.contains(&"11111111111111111111111111111111".to_owned()));
    assert!(!traces.contains(&fresh));
    assert_eq!(traces.len(), 10, "two sampled requests, five spans each");

    // No token, signature or authorization header in anything exported.
    let raw = s.collector.raw();
    let signature = token.rsplit('.').next().unwrap();
    assert!(!raw.contains(signature));
    assert!(!raw.to_lowercase().contains("bearer"));
    // The access line carries the request id and the trace id.
    let log = wait_for("the access line", Duration::from_secs(10), || {
        let log = s.gw.proc.log_text();
        log.contains("33333333333333333333333333333333")
            .then_some(log)
    });
    assert!(
        log.contains(&format!("\"trace_id\":\"{CLIENT_TRACE}\"")),
        "{log}"
    );
    // Counted once the collector's answer is read, just after it wrote the spans.
    wait_for(
        "the exported spans counted",
        Duration::from_secs(10),
        || {
            let exported =
                s.gw.metric("tollgate_trace_spans_total", &[("result", "exported")]);
            assert!(exported <= 10.0);
            (exported == 10.0).then_some(())
        },
    );
}

#[test]
fn an_untrusted_client_neither_picks_the_trace_nor_forces_recording() {
    // The default `continue_from: trusted_proxies`; 127.0.0.2 is the trusted proxy, and
    // clients on 127.0.0.1 are not.
    let s = setup("sample_ratio: 0", "\"127.0.0.2/32\"");
    let forced = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply = s.get(Some(&forced), Some("vendor=forged"));
    let sent = reply.upstream_header("traceparent").unwrap();
    let (untrusted, _, flags) = parts(&sent);
    assert_ne!(untrusted, CLIENT_TRACE, "a new trace");
    assert_eq!(
        flags, "00",
        "sample_ratio 0: the client's flag forces nothing"
    );
    assert_eq!(
        reply.upstream_header("tracestate"),
        None,
        "the client's is dropped"
    );

    // The same headers from the trusted proxy are continued, and recorded.
    let marker = "00-55555555555555555555555555555555-6666666666666666-01";
    let mut conn = connect_from("127.0.0.2", s.gw.port);
    std::io::Write::write_all(
        &mut conn,
        format!(
            "GET /api/item HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             traceparent: {marker}\r\ntracestate: vendor=kept\r\nConnection: close\r\n\r\n",
            s.token()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut conn, &mut out).unwrap();
    let reply = parse_reply(&out).unwrap();
    assert_eq!(reply.status, 200, "{out}");
    let (trace, _, flags) = parts(&reply.upstream_header("traceparent").unwrap());
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        ("55555555555555555555555555555555", "01")
    );
    assert_eq!(
        reply.upstream_header("tracestate").as_deref(),
        Some("vendor=kept")
    );
    let spans = s.collector.trace("55555555555555555555555555555555", 5);
    assert_eq!(
        named(&spans, "GET api")["parent_span_id"],
        "6666666666666666"
    );
    // Exported in order through one queue: the untrusted request's spans would be here.
    let all = s.collector.spans();
    assert_eq!(all.len(), 5, "{all:#?}");
    assert!(!s.collector.raw().contains(CLIENT_TRACE));
    assert!(!s.collector.raw().contains(&untrusted));
}

#[test]
fn a_stalled_or_stopped_collector_never_holds_a_request() {
    // A collector that accepts connections and never answers: every export waits out its
    // timeout, the queue (two requests' spans) fills, and the rest are dropped and counted.
    let stalled = listen_on_free_port();
    let echo = Echo::start("E");
    let gw = Gateway::start(&format!(
        "logging:
  tracing: {{ endpoint: \"http://127.0.0.1:{}/v1/traces\", sample_ratio: 1, queue_size: 2, batch_size: 1, batch_delay: 1ms, timeout: 1s }}
upstreams:
  e: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: open, path: /, upstream: e, auth: none }}
",
        stalled.local_addr().unwrap().port(),
        echo.addr()
    ));
    let url = gw.url("/x");
    let started = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|_| {
                        let t = Instant::now();
                        let status = request(&url, "GET", &[]).status;
                        (status, t.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert_eq!(answers.len(), 200);
    assert!(answers.iter().all(|(s, _)| *s == 200));
    let slowest = answers.iter().map(|(_, t)| *t).max().unwrap();
    eprintln!(
        "200 requests with the collector stalled: {:?} in all, slowest {slowest:?}",
        started.elapsed()
    );
    // A request waiting on the 1 s export would take over a second.
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    let dropped = gw.metric("tollgate_trace_spans_total", &[("result", "dropped")]);
    assert!(dropped >= 190.0, "{dropped} of 400 spans dropped");
    wait_for("a failed export", Duration::from_secs(10), || {
        (gw.metric("tollgate_trace_spans_total", &[("result", "failed")]) > 0.0).then_some(())
    });

    // Stopped: nothing listens. Requests are unaffected; exports fail and are counted.
    drop(stalled);
    let failed = gw.metric("tollgate_trace_spans_total", &[("result", "failed")]);
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(gw.get("/y", &[]).status, 200);
        assert!(t.elapsed() < Duration::from_secs(1));
    }
    wait_for(
        "exports to a stopped collector fail",
        Duration::from_secs(20),
        || {
            (gw.metric("tollgate_trace_spans_total", &[("result", "failed")]) > failed)
                .then_some(())
        },
    );
    assert!(gw.proc.log_text().contains("trace export failed"));
}
