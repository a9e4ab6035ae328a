//! Hostile HTTP through the real gateway, checked at both ends: each test asserts the answer
//! the client got **and** what a raw-socket upstream received — nothing, or exactly the
//! normalised request the route was chosen on. Named after the attacks of the first release.

use crate::common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ISS: &str = "https://issuer.test";

/// One request as the upstream read it off the socket.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// Request line and header lines, exactly as sent by the gateway (without the blank line).
    pub(crate) head: String,
    /// Body bytes (the first MiB) and the total length.
    body: Vec<u8>,
    body_len: usize,
}

impl Received {
    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// Every value of a header, matched on the name case-insensitively and as written
    /// (`x_auth_roles` is a different name from `x-auth-roles` here, as it is on the wire).
    pub(crate) fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }

    fn header_names(&self) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, _)| k.trim().to_ascii_lowercase())
            .collect()
    }
}

/// An HTTP/1.1 upstream on a raw socket that records the bytes of every request it gets and
/// answers `200 ok` (or `101` and an echo, for a WebSocket upgrade; or, for `GET /big`, a
/// body of [`BIG`] bytes, counting the answers it could not finish).
pub(crate) struct RecordingUpstream {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    cut: Arc<AtomicUsize>,
}

/// The body of `GET /big`: more than every socket buffer on the way can hold.
const BIG: usize = 256 << 20;

impl RecordingUpstream {
    pub(crate) fn start() -> RecordingUpstream {
        let listener = listen_on_free_port();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicUsize::new(0));
        let (r, s, c) = (received.clone(), stop.clone(), cut.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Acquire) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (r, c) = (r.clone(), c.clone());
                std::thread::spawn(move || serve(conn, r, c));
            }
        });
        RecordingUpstream {
            port,
            received,
            stop,
            cut,
        }
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub(crate) fn clear(&self) {
        self.received.lock().unwrap().clear();
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, log: Arc<Mutex<Vec<Received>>>, cut: Arc<AtomicUsize>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut head = String::new();
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line == "\r\n" || line == "\n" {
                break;
            }
            head.push_str(&line);
        }
        let head = head.trim_end().to_owned();
        let lower = head.to_ascii_lowercase();
        let mut body = Vec::new();
        let mut body_len = 0;
        let mut keep = |chunk: &[u8], body: &mut Vec<u8>| {
            body_len += chunk.len();
            let room = (1usize << 20).saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        };
        if lower.contains("transfer-encoding: chunked") {
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let n =
                    usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap_or(0);
                if n == 0 {
                    let mut crlf = String::new();
                    let _ = reader.read_line(&mut crlf);
                    break;
                }
                let mut buf = vec![0; n + 2];
                if reader.read_exact(&mut buf).is_err() {
                    return;
                }
                keep(&buf[..n], &mut body);
            }
        } else if let Some(len) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            let mut left = len;
            let mut buf = vec![0; 64 << 10];
            while left > 0 {
                let n = match reader.read(&mut buf[..left.min(64 << 10)]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                keep(&buf[..n], &mut body);
                left -= n;
            }
        }
        let upgrade = lower.contains("upgrade: websocket");
        let big = head.starts_with("GET /big ");
        log.lock().unwrap().push(Received {
            head,
            body,
            body_len,
        });
        if upgrade {
            let _ = out.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            );
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if out.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if big {
            let chunk = vec![b'x'; 64 << 10];
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
            let finished = out.write_all(head.as_bytes()).is_ok()
                && (0..BIG / chunk.len()).all(|_| out.write_all(&chunk).is_ok());
            if !finished {
                cut.fetch_add(1, Ordering::AcqRel);
                return;
            }
            continue;
        }
        if out
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
            )
            .is_err()
        {
            return;
        }
    }
}

/// A response read off a raw client socket.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    head: String,
    body: String,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Reads one response (body by Content-Length; none for HEAD or 1xx/204/304).
pub(crate) fn read_answer(reader: &mut BufReader<TcpStream>, head_only: bool) -> Option<Answer> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; if head_only || status == 101 { 0 } else { len }];
    reader.read_exact(&mut body).ok()?;
    Some(Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub(crate) fn connect(gw: &Gateway) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

/// Sends raw bytes on a fresh connection and reads one answer.
fn send(gw: &Gateway, bytes: &[u8]) -> Answer {
    let (mut s, mut r) = connect(gw);
    s.write_all(bytes).unwrap();
    read_answer(&mut r, bytes.starts_with(b"HEAD "))
        .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(bytes)))
}

/// Writes one header byte every 200 ms for up to 30 s (never a complete header block), until
/// the gateway closes the connection.
fn trickle(s: &TcpStream) -> std::thread::JoinHandle<()> {
    let mut s = s.try_clone().unwrap();
    std::thread::spawn(move || {
        for _ in 0..150 {
            if s.write_all(b"X").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

struct Setup {
    gw: Gateway,
    up: RecordingUpstream,
    key: TestKey,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.key
            .sign(json!({ "iss": ISS, "aud": "api", "sub": sub, "roles": roles }))
    }

    /// Asserts that the upstream got nothing since the last clear.
    fn upstream_got_nothing(&self, what: &str) {
        let got = self.up.received();
        assert!(got.is_empty(), "{what}: the upstream received {got:?}");
    }

    fn only_request(&self) -> Received {
        let got = self.up.received();
        assert_eq!(got.len(), 1, "expected one request upstream, got {got:?}");
        self.up.clear();
        got.into_iter().next().unwrap()
    }
}

/// `/admin` needs the admin role; `secure.example.com` needs any token; `/` is public.
fn start(http: &str) -> Setup {
    start_with(http, "")
}

/// Like `start`, with more keys in the `auth` section (two-space indented lines).
fn start_with(http: &str, auth_extra: &str) -> Setup {
    let up = RecordingUpstream::start();
    let key = TestKey::es256("k1");
    let (dir, jwks_path) = jwks_file(&[&key]);
    let yaml = format!(
        "auth:
  providers:
    - {{ name: main, issuer: \"{ISS}\", audiences: [api], jwks_file: \"{}\", token_sources: [bearer, \"query:access_token\"] }}
  forward_claims:
    - {{ claim: sub, header: X-Auth-Subject }}
    - {{ claim: roles, header: X-Auth-Roles }}
{auth_extra}policies:
  admins:
    allow:
      - {{ roles: [admin] }}
upstreams:
  app: {{ backends: [{{ addr: \"{}\" }}] }}
  iis: {{ backends: [{{ addr: \"{}\" }}] }}
  dead: {{ backends: [{{ addr: \"127.0.0.1:{}\" }}], retries: 0 }}
routes:
  - {{ name: admin, path: /admin, methods: [GET, POST], upstream: app, policy: admins }}
  - {{ name: secure, host: secure.example.com, path: /, upstream: app }}
  - {{ name: dead, path: /dead, upstream: dead }}
  - {{ name: upload, path: /upload, upstream: app, auth: none, max_body: 1GiB }}
  - {{ name: legacy, path: /legacy/admin, upstream: iis, policy: admins, path_case: insensitive, strip_prefix: true }}
  - name: rewrite
    path: /rewrite
    upstream: app
    headers:
      request:
        set: {{ X-Tenant: \"${{claim.tenant}}\", X-Who: \"${{claim.sub}}@${{route}}\", X-Client: \"${{client_ip}}\" }}
        add: {{ X-Trace: gw }}
        remove: [X-Debug]
      response:
        set: {{ X-Frame-Options: DENY }}
  - {{ name: spa, path: /spa, methods: [GET, POST], upstream: app, cors: {{ allow_origins: [\"https://app.example.com\", \"https://*.example.net\"], expose_headers: [x-request-id], allow_credentials: true }} }}
  - {{ name: office, path: /office, upstream: app, auth: none, ip_rules: {{ allow: [10.0.0.0/8], deny: [10.9.0.0/16] }} }}
  - {{ name: office-admin, path: /office-admin, upstream: app, policy: admins, ip_rules: {{ allow: [10.0.0.0/8] }} }}
  - {{ name: public, path: /, upstream: app, auth: none }}
",
        jwks_path.display(),
        up.addr(),
        up.addr(),
        free_port(),
    );
    let gw = Gateway::start_with_http(http, &yaml);
    Setup {
        gw,
        up,
        key,
        _dir: dir,
    }
}

#[test]
fn percent_encoded_and_doubled_slashes_reach_the_protected_route_and_go_upstream_normalised() {
    let t = start("{}");
    for target in [
        "/%61dmin",
        "//admin",
        "/%61%64%6D%69%6E",
        "/admin/",
        "///admin//x",
    ] {
        let a = send(
            &t.gw,
            format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.status, 401, "{target} must be decided as /admin: {a:?}");
        t.upstream_got_nothing(target);
    }
    let admin = t.token("root", &["admin"]);
    let a = send(
        &t.gw,
        format!("GET /%61dmin//x?q=%61 HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {admin}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(a.status, 200);
    let got = t.only_request();
    assert_eq!(got.request_line(), "GET /admin/x?q=%61 HTTP/1.1");
    assert_eq!(got.header("host"), ["app.test"]);
}

#[test]
fn targets_that_are_not_origin_form_are_refused() {
    let t = start("{}");
    for target in [
        "x:/admin",
        "admin",
        "ftp://app.test/admin",
        "*",
        "http://u@app.test/admin",
    ] {
        let a = send(
            &t.gw,
            format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.status, 400, "{target}: {a:?}");
        t.upstream_got_nothing(target);
    }
}

#[test]
fn absolute_form_authority_is_the_host_the_route_is_chosen_on() {
    let t = start("{}");
    let a = send(&t.gw, b"GET http://secure.example.com/x HTTP/1.1\r\n\r\n");
    assert_eq!(a.status, 401, "no Host header: the authority is the host");
    let a = send(
        &t.gw,
        b"GET http://secure.example.com/x HTTP/1.1\r\nHost: public.test\r\n\r\n",
    );
    // Pingora refuses an authority that disagrees with the Host header outright; either way
    // the public route is not chosen.
    assert_eq!(
        a.status, 400,
        "an authority and a Host that disagree: {a:?}"
    );
    t.upstream_got_nothing("absolute-form without a token");

    let tok = t.token("u", &["user"]);
    let a = send(
        &t.gw,
        format!("GET http://SECURE.example.com:8080/x?y HTTP/1.1\r\nAuthorization: Bearer {tok}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(a.status, 200);
    let got = t.only_request();
    assert_eq!(
        got.request_line(),
        "GET /x?y HTTP/1.1",
        "origin-form upstream"
    );
    assert_eq!(got.header("host"), ["secure.example.com:8080"]);
}

#[test]
fn host_case_trailing_dot_and_port_match_the_host_scoped_route() {
    let t = start("{}");
    for host in [
        "secure.example.com.",
        "SECURE.Example.COM",
        "secure.example.com.:80",
    ] {
        let a = send(
            &t.gw,
            format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.status, 401, "{host}: {a:?}");
    }
    t.upstream_got_nothing("host spellings");
    for host in ["a b", "a@b", "secure.example.com..", "[::1", "a/b", ""] {
        let a = send(
            &t.gw,
            format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.status, 400, "host {host:?}: {a:?}");
    }
    let a = send(&t.gw, b"GET /x HTTP/1.1\r\n\r\n");
    assert_eq!(a.status, 400, "HTTP/1.1 without a host");
    let a = send(
        &t.gw,
        b"GET /x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    );
    assert_eq!(a.status, 400, "two Host headers");
    t.upstream_got_nothing("bad hosts");
}

#[test]
fn methods_in_other_letter_case_are_refused() {
    let t = start("{}");
    for method in ["get", "Post", "gEt"] {
        let a = send(
            &t.gw,
            format!("{method} /admin HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.status, 400, "{method}: {a:?}");
        assert_eq!(a.json()["reason"], "method_case");
    }
    t.upstream_got_nothing("lower-case methods");
}

#[test]
fn a_method_the_most_specific_route_does_not_list_is_405_not_the_catch_all() {
    let t = start("{}");
    let tok = t.token("u", &["user"]);
    for method in ["PATCH", "HEAD", "DELETE", "PROPFIND"] {
        let a = send(
            &t.gw,
            format!(
                "{method} /admin HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {tok}\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(a.status, 405, "{method}: {a:?}");
        assert_eq!(a.header("allow").as_deref(), Some("GET, POST"));
    }
    t.upstream_got_nothing("methods the admin route does not list");
}

#[test]
fn dot_segments_encoded_slashes_backslashes_and_controls_are_refused() {
    let t = start("{}");
    for target in [
        "/api/..;/admin",
        "/%2e%2e/admin",
        "/x/%2E/admin",
        "/x/../admin",
        "/a%2Fadmin",
        "/a%5cadmin",
        "/a\\admin",
        "/a%00b",
        "/a%0d%0ab",
        "/admin;x=1",
        "/a%zz",
    ] {
        let a = send(
            &t.gw,
            format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.status, 400, "{target}: {a:?}");
        assert_eq!(a.json()["error"], "bad_request", "{target}");
    }
    t.upstream_got_nothing("refused paths");
}

#[test]
fn underscore_and_case_spellings_of_identity_headers_never_reach_the_upstream() {
    let t = start("{}");
    let tok = t.token("alice", &["user"]);
    let a = send(
        &t.gw,
        format!(
            "GET /x HTTP/1.1\r\nHost: secure.example.com\r\nAuthorization: Bearer {tok}\r\n\
             X_Auth_Roles: admin\r\nX-AUTH-ROLES: admin\r\nx-auth_subject: root\r\nX_Custom: 1\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(a.status, 200);
    let got = t.only_request();
    // Arrays travel as RFC 8941 lists of strings.
    assert_eq!(got.header("x-auth-roles"), ["\"user\""]);
    assert_eq!(got.header("x-auth-subject"), ["alice"]);
    let names = got.header_names();
    assert!(
        !names.iter().any(|n| n.contains('_')),
        "no underscore header passes by default: {names:?}"
    );
}

#[test]
fn client_forwarding_and_override_headers_are_replaced_by_the_gateways_own() {
    let t = start("{}");
    let a = send(
        &t.gw,
        b"GET /x HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
          Forwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Proto: https\r\n\
          X-Forwarded-Port: 1\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n\
          X-HTTP-Method-Override: DELETE\r\n\r\n",
    );
    assert_eq!(a.status, 200);
    let got = t.only_request();
    assert_eq!(got.header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(got.header("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(got.header("x-forwarded-host"), ["app.test"]);
    assert_eq!(got.header("x-forwarded-proto"), ["http"]);
    assert_eq!(got.header("x-forwarded-port"), [t.gw.port.to_string()]);
    for gone in [
        "forwarded",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
    ] {
        assert!(got.header(gone).is_empty(), "{gone} passed: {got:?}");
    }
}

#[test]
fn behind_a_trusted_proxy_the_client_is_the_first_untrusted_forwarded_hop() {
    let t = start("{ trusted_proxies: [127.0.0.0/8] }");
    let a = send(
        &t.gw,
        b"GET /x HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 6.6.6.6, 198.51.100.7, 127.0.0.9\r\nX-Forwarded-Proto: https\r\n\r\n",
    );
    assert_eq!(a.status, 200);
    let got = t.only_request();
    assert_eq!(got.header("x-real-ip"), ["198.51.100.7"]);
    assert_eq!(
        got.header("x-forwarded-for"),
        ["6.6.6.6, 198.51.100.7, 127.0.0.9, 127.0.0.1"]
    );
    assert_eq!(got.header("x-forwarded-proto"), ["https"]);
}

#[test]
fn pipelined_requests_with_different_tokens_are_each_decided_on_their_own() {
    let t = start("{}");
    let admin = t.token("root", &["admin"]);
    let user = t.token("bob", &["user"]);
    let (mut s, mut r) = connect(&t.gw);
    s.write_all(
        format!(
            "GET /admin HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {admin}\r\n\r\n\
             GET /admin HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {user}\r\n\r\n\
             GET /admin HTTP/1.1\r\nHost: app.test\r\n\r\n\
             GET /%61dmin HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let statuses: Vec<u16> = (0..4)
        .map(|_| read_answer(&mut r, false).map(|a| a.status).unwrap_or(0))
        .collect();
    assert_eq!(statuses, [200, 403, 401, 401]);
    let got = t.only_request();
    assert_eq!(got.header("x-auth-subject"), ["root"]);
}

/// Attack review: a pipelined request whose header block ended in the next read was taken
/// for a new request's leading empty line; the request after it was never answered, and an
/// upload pipelined the same way was refused 431 as if its body were header bytes.
#[test]
fn pipelined_requests_split_across_reads_are_all_answered_in_order() {
    let t = start("{}");
    let (mut s, mut r) = connect(&t.gw);
    s.write_all(
        b"GET /r1 HTTP/1.1\r\nHost: app.test\r\n\r\nGET /r2 HTTP/1.1\r\nHost: app.test\r\n",
    )
    .unwrap();
    assert_eq!(read_answer(&mut r, false).map(|a| a.status), Some(200));
    s.write_all(b"\r\nGET /r3 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    for _ in 0..2 {
        assert_eq!(read_answer(&mut r, false).map(|a| a.status), Some(200));
    }
    let lines: Vec<String> =
        t.up.received()
            .iter()
            .map(|g| g.request_line().to_owned())
            .collect();
    assert_eq!(
        lines,
        ["GET /r1 HTTP/1.1", "GET /r2 HTTP/1.1", "GET /r3 HTTP/1.1"]
    );
    t.up.clear();

    let (mut s, mut r) = connect(&t.gw);
    s.write_all(
        b"GET /r1 HTTP/1.1\r\nHost: app.test\r\n\r\n\
          POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000\r\n",
    )
    .unwrap();
    assert_eq!(read_answer(&mut r, false).map(|a| a.status), Some(200));
    s.write_all(b"\r\n").unwrap();
    s.write_all(&vec![b'a'; 100_000]).unwrap();
    let a = read_answer(&mut r, false).expect("an answer to the upload");
    assert_eq!(a.status, 200, "{a:?}");
    let got = t.up.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1].request_line(), "POST /upload HTTP/1.1");
    assert_eq!(got[1].body_len, 100_000);
}

/// Attack review: a request Pingora refuses itself, pipelined behind a good one, got
/// Pingora's bodyless answer (`Server: Pingora`) instead of the JSON refusal.
#[test]
fn a_pipelined_request_pingora_refuses_still_gets_a_json_answer() {
    let t = start("{}");
    for bad in [
        &b"GET /g4 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx"
            [..],
        b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n",
    ] {
        let (mut s, mut r) = connect(&t.gw);
        let mut bytes = b"GET /g3 HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec();
        bytes.extend_from_slice(bad);
        s.write_all(&bytes).unwrap();
        assert_eq!(read_answer(&mut r, false).map(|a| a.status), Some(200));
        let a = read_answer(&mut r, false).expect("an answer to the refused request");
        assert!(a.status == 400 || a.status == 405, "{a:?}");
        assert_eq!(a.header("server"), None, "{a:?}");
        assert!(a.json()["error"].is_string(), "{a:?}");
        assert!(
            read_answer(&mut r, false).is_none(),
            "the connection is closed"
        );
        assert_eq!(t.only_request().request_line(), "GET /g3 HTTP/1.1");
    }
}

#[test]
fn request_framing_attacks_are_refused_or_forwarded_unambiguously() {
    let t = start("{}");
    // Content-Length with Transfer-Encoding: the body is read as chunked (RFC 9112 §6.3),
    // and the upstream gets chunked framing alone.
    let a = send(
        &t.gw,
        b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    if a.status == 200 {
        let got = t.only_request();
        assert!(got.header("content-length").is_empty(), "{got:?}");
        assert_eq!(got.body, b"hello");
    } else {
        assert_eq!(a.status, 400, "{a:?}");
        t.upstream_got_nothing("CL+TE");
    }
    let a = send(
        &t.gw,
        b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    );
    assert_eq!(a.status, 400, "duplicate Content-Length: {a:?}");
    assert_eq!(a.json()["error"], "bad_request", "{a:?}");
    t.upstream_got_nothing("duplicate Content-Length");
    let a = send(
        &t.gw,
        b"GET /x HTTP/1.1\r\nHost: app.test\r\nX-A: 1\r\n folded\r\n\r\n",
    );
    assert_eq!(a.status, 400, "obs-fold: {a:?}");
    assert_eq!(a.json()["error"], "bad_request", "{a:?}");
    t.upstream_got_nothing("obs-fold");
}

/// Requests Pingora refuses before tollgate sees them (it cannot parse them) still get a JSON
/// body, like every other refusal, and the connection is closed.
#[test]
fn requests_that_cannot_be_parsed_get_a_json_400() {
    let t = start("{}");
    for raw in [
        &b"GET /x HTTP/1.1\r\nHost: app.test\r\nBad Header\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nHost: app.test\r\nX-A: a\x01b\r\n\r\n",
        b"GET /x HTTP/1.1 trailing\r\nHost: app.test\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let (mut s, mut r) = connect(&t.gw);
        s.write_all(raw).unwrap();
        let a = read_answer(&mut r, false)
            .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(raw)));
        assert_eq!(a.status, 400, "{a:?}");
        assert_eq!(
            a.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(a.json()["error"], "bad_request", "{a:?}");
        assert!(
            read_answer(&mut r, false).is_none(),
            "the connection is closed"
        );
    }
    t.upstream_got_nothing("unparseable requests");
    let (mut s, mut r) = connect(&t.gw);
    s.write_all(b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n")
        .unwrap();
    let a = read_answer(&mut r, false).expect("an answer to CONNECT");
    assert!(a.status == 400 || a.status == 405, "{a:?}");
    assert!(a.json()["error"].is_string(), "{a:?}");
    t.upstream_got_nothing("CONNECT");
}

#[test]
fn an_oversized_header_block_is_431_and_never_forwarded() {
    let t = start("{}");
    let big = "a".repeat(200 << 10);
    let a = send(
        &t.gw,
        format!("GET /x HTTP/1.1\r\nHost: app.test\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    assert_eq!(a.status, 431, "{:?}", a.head);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let a = send(
        &t.gw,
        format!("GET /x HTTP/1.1\r\nHost: app.test\r\n{many}\r\n").as_bytes(),
    );
    assert_eq!(a.status, 431);
    assert_eq!(a.json()["reason"], "too_many_headers");
    let long = "/a".repeat(5000);
    let a = send(
        &t.gw,
        format!("GET {long} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
    );
    assert_eq!(a.status, 414);
    t.upstream_got_nothing("oversized requests");
    assert!(
        t.gw.metric(
            "tollgate_header_refusals_total",
            &[("reason", "header_too_large")]
        ) >= 1.0
    );
    assert!(
        t.gw.metric(
            "tollgate_bad_requests_total",
            &[("reason", "too_many_headers")]
        ) >= 1.0
    );
}

#[test]
fn a_body_over_the_routes_max_body_is_413() {
    let t = start("{ max_body: 1KiB }");
    let body = "x".repeat(2000);
    let a = send(
        &t.gw,
        format!("POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2000\r\n\r\n{body}")
            .as_bytes(),
    );
    assert_eq!(a.status, 413);
    t.upstream_got_nothing("declared body over the limit");
    let a = send(
        &t.gw,
        format!("POST /x HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{body}\r\n0\r\n\r\n").as_bytes(),
    );
    assert_eq!(a.status, 413, "chunked body over the limit");
    assert!(t.up.received().iter().all(|r| r.body_len <= 1024));
}

#[test]
fn a_trickled_header_is_closed_by_the_header_deadline() {
    let t = start("{ header_timeout: 1s }");
    let (mut s, mut r) = connect(&t.gw);
    s.write_all(b"GET /x HTTP/1.1\r\nHost: app.test\r\n")
        .unwrap();
    let started = Instant::now();
    let trickler = trickle(&s);
    let a = read_answer(&mut r, false).expect("an answer before the close");
    assert_eq!(a.status, 408);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the deadline, not the trickle, ended it"
    );
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    let _ = s.shutdown(Shutdown::Both);
    trickler.join().unwrap();
    t.upstream_got_nothing("trickled header");
    assert!(
        t.gw.metric(
            "tollgate_header_refusals_total",
            &[("reason", "header_timeout")]
        ) >= 1.0
    );
}

#[test]
fn the_connection_past_the_per_client_cap_is_refused() {
    let t = start("{ max_connections_per_client: 3 }");
    let mut held = Vec::new();
    for _ in 0..3 {
        let (mut s, mut r) = connect(&t.gw);
        s.write_all(b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .unwrap();
        assert_eq!(read_answer(&mut r, false).unwrap().status, 200);
        held.push((s, r));
    }
    let (_s, mut r) = connect(&t.gw);
    let a = read_answer(&mut r, false).expect("a 503 before the close");
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["error"], "overloaded");
    assert!(a.header("retry-after").is_some());
    drop(held);
    // A place frees up when a connection closes.
    wait_for("a freed connection place", Duration::from_secs(10), || {
        let (mut s, mut r) = connect(&t.gw);
        s.write_all(b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            .ok()?;
        (read_answer(&mut r, false)?.status == 200).then_some(())
    });
    assert!(t.gw.metric("tollgate_connections_refused_total", &[("limit", "client")]) >= 1.0);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn memory_stays_bounded_under_200_connections_holding_unfinished_headers() {
    let t = start("{}");
    let before = rss_kib(t.gw.proc.pid());
    let chunk = format!("X-Pad: {}\r\n", "p".repeat(16 << 10));
    let mut conns = Vec::new();
    for _ in 0..200 {
        let (mut s, r) = connect(&t.gw);
        s.write_all(b"GET /x HTTP/1.1\r\nHost: app.test\r\n")
            .unwrap();
        // Up to 1 MiB each, never finished; the guard cuts each at the header limit.
        for _ in 0..64 {
            if s.write_all(chunk.as_bytes()).is_err() {
                break;
            }
        }
        conns.push((s, r));
    }
    let mut refused = 0;
    for (_, r) in &mut conns {
        if let Some(a) = read_answer(r, false) {
            assert_eq!(a.status, 431);
            refused += 1;
        }
    }
    let after = rss_kib(t.gw.proc.pid());
    let growth_mib = after.saturating_sub(before) as f64 / 1024.0;
    eprintln!(
        "RSS before {before} KiB, after {after} KiB, growth {growth_mib:.1} MiB, 431s {refused}"
    );
    assert_eq!(refused, 200, "every unfinished 1 MiB header is refused");
    assert!(
        growth_mib < 64.0,
        "RSS grew {growth_mib:.1} MiB under 200 unfinished headers"
    );
    t.upstream_got_nothing("unfinished headers");
}

#[test]
fn a_token_in_the_query_never_appears_in_the_log() {
    let t = start("{}");
    let tok = t.token("alice", &["user"]);
    let a = send(
        &t.gw,
        format!("GET /dead?access_token={tok}&x=1 HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
    );
    assert_eq!(a.status, 502);
    let log = wait_for("the failure's log lines", Duration::from_secs(10), || {
        let log = t.gw.proc.log_text();
        log.contains("\"status\":502").then_some(log)
    });
    let signature = tok.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "the token leaked into the log");
    assert!(
        !log.contains("access_token"),
        "the query leaked into the log"
    );
}

#[test]
fn websocket_upgrades_pass_through_a_route() {
    let t = start("{ header_timeout: 1s }");
    let (mut s, mut r) = connect(&t.gw);
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let a = read_answer(&mut r, false).unwrap();
    assert_eq!(a.status, 101);
    // Longer than the header deadline: a tunnel is not a header block.
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(b"frame-bytes").unwrap();
    let mut echoed = [0u8; 11];
    r.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"frame-bytes");
    let got = t.only_request();
    assert_eq!(got.request_line(), "GET /chat HTTP/1.1");
    assert_eq!(got.header("upgrade"), ["websocket"]);
}

#[test]
fn a_large_upload_streams_through_without_buffering() {
    let t = start("{}");
    let before = rss_kib(t.gw.proc.pid());
    let total: usize = 200 << 20;
    let (mut s, mut r) = connect(&t.gw);
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: {total}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let block = vec![b'u'; 1 << 20];
    let mut peak = before;
    for i in 0..200 {
        s.write_all(&block).unwrap();
        if i % 20 == 0 {
            peak = peak.max(rss_kib(t.gw.proc.pid()));
        }
    }
    let a = read_answer(&mut r, false).unwrap();
    assert_eq!(a.status, 200);
    let got = t.only_request();
    assert_eq!(got.body_len, total);
    let growth_mib = peak.saturating_sub(before) as f64 / 1024.0;
    eprintln!("upload of 200 MiB: RSS before {before} KiB, peak {peak} KiB");
    assert!(
        growth_mib < 64.0,
        "RSS grew {growth_mib:.1} MiB during a 200 MiB upload"
    );
}

#[test]
fn a_client_over_its_failed_auth_limit_is_refused_before_any_signature_check() {
    let t = start_with("{}", "  failed_auth_limit: { rate: 1/min, burst: 3 }\n");
    let early = t.token("early", &["user"]);
    let get = |tok: &str| {
        send(
            &t.gw,
            format!("GET /x HTTP/1.1\r\nHost: secure.example.com\r\nAuthorization: Bearer {tok}\r\n\r\n")
                .as_bytes(),
        )
    };
    assert_eq!(get(&early).status, 200, "verified before the flood");
    t.up.clear();
    // Forged tokens, each different: a new signature check every time until the brake.
    let forged = |i: usize| {
        let tok = t.token(&format!("mallory-{i}"), &["admin"]);
        let (head, _) = tok.rsplit_once('.').unwrap();
        let other = t.token(&format!("x-{i}"), &[]);
        format!("{head}.{}", other.rsplit('.').next().unwrap())
    };
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(get(&forged(i)).status);
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 401],
        "the burst of failures is answered 401"
    );
    let misses =
        t.gw.metric("tollgate_token_cache_total", &[("result", "miss")]);
    let a = get(&forged(10));
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.json()["reason"], "failed_auth_limit");
    assert!(a.header("retry-after").is_some());
    let fresh = t.token("fresh", &["user"]);
    assert_eq!(get(&fresh).status, 429, "an uncached valid token waits too");
    assert_eq!(
        t.gw.metric("tollgate_token_cache_total", &[("result", "miss")]),
        misses,
        "no signature was checked for the refused tokens"
    );
    t.upstream_got_nothing("refused before verification");
    assert_eq!(
        get(&early).status,
        200,
        "a token verified before still passes"
    );
    assert!(
        t.gw.metric(
            "tollgate_preauth_refusals_total",
            &[("reason", "failed_auth_limit")]
        ) >= 2.0
    );
}

#[test]
fn ten_reloads_under_load_answer_every_request() {
    let t = start("{}");
    let yaml = std::fs::read_to_string(t.gw.conf_path()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let url = t.gw.url("/x");
            std::thread::spawn(move || {
                let (mut ok, mut bad) = (0u32, Vec::new());
                // Bounded: at most 60 s or 200,000 requests, whichever comes first.
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Acquire) && Instant::now() < deadline && ok < 200_000 {
                    let r = request(&url, "GET", &[("host", "app.test")]);
                    if r.status == 200 {
                        ok += 1;
                    } else {
                        bad.push(r.status);
                    }
                }
                (ok, bad)
            })
        })
        .collect();
    for i in 1..=10 {
        t.gw.reload_file(&yaml);
        wait_for(&format!("reload {i}"), Duration::from_secs(20), || {
            let n =
                t.gw.metric("tollgate_config_reloads_total", &[("result", "success")]);
            (n >= i as f64).then_some(())
        });
    }
    stop.store(true, Ordering::Release);
    let mut total = 0;
    for c in clients {
        let (ok, bad) = c.join().unwrap();
        assert!(bad.is_empty(), "requests failed during reloads: {bad:?}");
        total += ok;
    }
    assert!(total > 0);
    eprintln!("{total} requests through 10 reloads, 0 errors");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let t = start("{ keepalive_timeout: 1s }");
    let (mut s, mut r) = connect(&t.gw);
    s.write_all(b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut r, false).unwrap().status, 200);
    // A second request on the same connection is served: it is kept alive...
    s.write_all(b"GET /y HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut r, false).unwrap().status, 200);
    // ...until it has been idle for the timeout: then the gateway closes it (EOF).
    let started = Instant::now();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "no stray bytes: {rest:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "closed by the idle timeout"
    );
    assert_eq!(t.up.received().len(), 2);
}

/// Attack review: `\r\n\r\n` before the request line read as the end of a header block and
/// switched the header deadline off (the HTTP parser skips such empty lines).
#[test]
fn empty_lines_before_the_request_line_do_not_switch_off_the_header_deadline() {
    let t = start("{ header_timeout: 1s }");
    let (mut s, mut r) = connect(&t.gw);
    s.write_all(b"\r\n\r\n\n\nGET /x HTTP/1.1\r\nHost: app.test\r\n")
        .unwrap();
    let trickler = trickle(&s);
    let started = Instant::now();
    let a = read_answer(&mut r, false).expect("an answer before the close");
    assert_eq!(a.status, 408);
    assert!(started.elapsed() < Duration::from_secs(20));
    let _ = s.shutdown(Shutdown::Both);
    trickler.join().unwrap();
    t.upstream_got_nothing("trickled header after empty lines");
}

/// Attack review: with `merge_slashes: false` `//admin` went upstream unmerged through the
/// catch-all, with `escaped_slashes: keep` `/admin%2Fusers` did, and with
/// `path_params: allow` `/admin;x` did; upstreams served each as an admin path. The options
/// now refuse, decode or strip, so the route is chosen on what the upstream receives.
#[test]
fn non_default_path_options_still_route_what_the_upstream_receives() {
    let t = start("{ merge_slashes: false, escaped_slashes: decode, path_params: strip }");
    for target in ["//admin", "/%2Fadmin"] {
        let a = send(
            &t.gw,
            format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.status, 400, "{target}");
        assert_eq!(a.json()["reason"], "empty_segment", "{target}");
    }
    for target in ["/admin%2Fusers", "/admin;x=1", "/admin;x/users"] {
        let a = send(
            &t.gw,
            format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.status, 401, "{target} is the admin route: {a:?}");
    }
    t.upstream_got_nothing("admin paths without a token");
    let admin = t.token("root", &["admin"]);
    let a = send(
        &t.gw,
        format!("GET /admin%2Fusers;v=2 HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {admin}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(a.status, 200);
    assert_eq!(t.only_request().request_line(), "GET /admin/users HTTP/1.1");
}

/// Attack review: a request body trickled one byte every 20 s held an upstream connection
/// for minutes.
#[test]
fn a_trickled_request_body_is_cut_by_the_body_timeout() {
    let t = start("{ body_timeout: 1s }");
    let (mut s, mut r) = connect(&t.gw);
    s.write_all(b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\nsome")
        .unwrap();
    let started = Instant::now();
    let a = read_answer(&mut r, false);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the body timeout ended it"
    );
    if let Some(a) = a {
        assert!(a.status == 408 || a.status == 502, "{a:?}");
    }
    // Whatever the upstream got, it was never a complete body.
    assert!(t.up.received().is_empty());
}

/// `path_case: insensitive`, for an upstream that ignores case (IIS, say): every spelling of
/// the path is the protected route, never the public catch-all, and `strip_prefix` removes
/// the prefix in whatever case the request wrote it.
#[test]
fn a_case_insensitive_route_protects_every_spelling_of_its_path() {
    let t = start("{}");
    for target in ["/LEGACY/Admin/x", "/legacy/ADMIN/x", "/Legacy/admin"] {
        let a = send(
            &t.gw,
            format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.status, 401, "{target}: {a:?}");
    }
    t.upstream_got_nothing("unauthenticated spellings of a case-insensitive route");
    let a = send(
        &t.gw,
        format!(
            "GET /LEGACY/Admin/x?y=1 HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {}\r\n\r\n",
            t.token("root", &["admin"])
        )
        .as_bytes(),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(t.only_request().request_line(), "GET /x?y=1 HTTP/1.1");
}

/// A client that stops reading a large answer is cut off once a write to it has waited
/// `send_timeout`, and the upstream connection behind it is closed too.
#[test]
fn a_client_that_stops_reading_is_cut_off_by_the_send_timeout() {
    let t = start("{ send_timeout: 1s }");
    let (mut s, mut r) = connect(&t.gw);
    s.write_all(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    // Read nothing until the gateway has given up on this client: the upstream sees its
    // answer cut (the default send_timeout, 30 s, would miss this deadline).
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.up.cut.load(Ordering::Acquire) == 0 {
        assert!(
            Instant::now() < deadline,
            "the gateway still waits on a client that does not read"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = read_answer(&mut r, true).expect("the answer's head was sent");
    assert_eq!(a.status, 200);
    let mut got = 0usize;
    let mut buf = vec![0; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < BIG, "the body was cut short ({got} of {BIG} bytes)");
}

/// Attack review: HTTP/1.0 without Host went upstream as HTTP/1.1 without Host.
#[test]
fn http10_without_a_host_is_refused() {
    let t = start("{}");
    let a = send(&t.gw, b"GET /x HTTP/1.0\r\n\r\n");
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["reason"], "missing_host");
    let a = send(&t.gw, b"GET /x HTTP/1.0\r\nHost: app.test\r\n\r\n");
    assert_eq!(a.status, 200);
    assert_eq!(t.only_request().header("host"), ["app.test"]);
}

/// Attack review: `Content-Length: 5, 5` was forwarded as written.
#[test]
fn a_content_length_list_goes_upstream_as_one_value() {
    let t = start("{}");
    let a = send(
        &t.gw,
        b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5, 5\r\n\r\nhello",
    );
    if a.status == 200 {
        let got = t.only_request();
        assert_eq!(got.header("content-length"), ["5"]);
        assert_eq!(got.body, b"hello");
    } else {
        assert_eq!(a.status, 400, "{a:?}");
        t.upstream_got_nothing("a Content-Length list");
    }
}

/// Attack review: headers that upstream frameworks read as a client address, host or path
/// prefix passed through.
#[test]
fn client_address_and_prefix_headers_are_removed() {
    let t = start("{}");
    let a = send(
        &t.gw,
        b"GET /x HTTP/1.1\r\nHost: app.test\r\nTrue-Client-IP: 6.6.6.6\r\nCF-Connecting-IP: 6.6.6.6\r\n\
          X-Client-IP: 6.6.6.6\r\nX-Forwarded-Prefix: /admin\r\nX-Original-Host: admin.test\r\n\
          X-Envoy-Original-Path: /admin\r\n\r\n",
    );
    assert_eq!(a.status, 200);
    let got = t.only_request();
    for gone in [
        "true-client-ip",
        "cf-connecting-ip",
        "x-client-ip",
        "x-forwarded-prefix",
        "x-original-host",
        "x-envoy-original-path",
    ] {
        assert!(got.header(gone).is_empty(), "{gone} passed: {got:?}");
    }
}

/// A route mirrored to a raw-socket shadow, with a minted upstream token and identity
/// headers, and an `auth: none` route mirrored too; `billing_extra` and `open_extra` go
/// into their `mirror` mappings.
fn mirrored(
    billing_extra: &str,
    open_extra: &str,
) -> (
    Gateway,
    RecordingUpstream,
    RecordingUpstream,
    TestKey,
    tempfile::TempDir,
) {
    let primary = RecordingUpstream::start();
    let shadow = RecordingUpstream::start();
    let key = TestKey::es256("k1");
    let (dir, jwks_path) = jwks_file(&[&key]);
    let signing = dir.path().join("gateway.pem");
    std::fs::write(
        &signing,
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    let gw = Gateway::start(&format!(
        "auth:
  providers:
    - {{ name: main, issuer: \"{ISS}\", audiences: [api], jwks_file: \"{}\",
         token_sources: [bearer, \"cookie:at\", \"header:X-Token\", \"query:access_token\"] }}
  forward_claims: [{{ claim: sub, header: X-Auth-Subject }}]
  signing_keys: {{ issuer: \"https://gateway.test\", current: g1, keys: [{{ kid: g1, file: \"{}\" }}] }}
upstreams:
  app: {{ backends: [{{ addr: \"{}\" }}] }}
  shadow: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: billing, path: /billing, upstream: app, upstream_token: {{ audience: billing, header: X-Upstream-Token }},
       mirror: {{ upstream: shadow{billing_extra} }} }}
  - {{ name: open, path: /open, upstream: app, auth: none, mirror: {{ upstream: shadow{open_extra} }} }}
",
        jwks_path.display(),
        signing.display(),
        primary.addr(),
        shadow.addr(),
    ));
    (gw, primary, shadow, key, dir)
}

pub(crate) fn one_received(up: &RecordingUpstream, what: &str) -> Received {
    let got = wait_for(what, Duration::from_secs(10), || {
        let got = up.received();
        (!got.is_empty()).then_some(got)
    });
    assert_eq!(got.len(), 1, "{what}: {got:?}");
    up.clear();
    got.into_iter().next().unwrap()
}

#[test]
fn a_mirrored_copy_never_carries_a_credential_or_unasked_identity() {
    // Issue 22 (2): the shadow received what production received: the minted token for
    // production's audience, the identity headers, the client's cookies and, from a cookie
    // token source, the caller's own JWT.
    let (gw, primary, shadow, key, _dir) = mirrored("", "");
    let token = key.sign(json!({ "iss": ISS, "aud": "api", "sub": "alice" }));
    for presented in [
        ("authorization", format!("Bearer {token}")),
        ("cookie", format!("session=s3cr3t; at={token}")),
        ("x-token", token.clone()),
    ] {
        let r = raw_request(
            gw.port,
            &format!(
                "GET /billing/x?q=1 HTTP/1.1\r\nHost: api.test\r\n{}: {}\r\nCookie: theme=dark\r\nConnection: close\r\n\r\n",
                presented.0, presented.1
            ),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{presented:?}: {}", r.body);
        let production = one_received(&primary, "the primary's request");
        let copy = one_received(&shadow, "the shadow's copy");
        // Production gets what it needs, and never the caller's token.
        assert_eq!(production.header("x-auth-subject"), ["alice"]);
        assert_eq!(production.header("x-upstream-token").len(), 1);
        assert!(
            !production.head.contains(&token),
            "{presented:?}: {}",
            production.head
        );
        // The shadow: the same request, without any credential or identity.
        assert_eq!(copy.request_line(), production.request_line());
        for name in [
            "authorization",
            "x-upstream-token",
            "x-auth-subject",
            "x-token",
            "cookie",
            "dpop",
        ] {
            assert!(
                copy.header(name).is_empty(),
                "{presented:?}: the shadow got {name}: {}",
                copy.head
            );
        }
        assert!(!copy.head.contains(&token), "{presented:?}: {}", copy.head);
        assert!(
            !copy.head.contains("s3cr3t"),
            "{presented:?}: {}",
            copy.head
        );
        assert_eq!(copy.header("host"), ["api.test"]);
    }
    // An `auth: none` route forwards the client's Authorization to production, never to
    // the shadow.
    let r = raw_request(
        gw.port,
        "GET /open/y HTTP/1.1\r\nHost: api.test\r\nAuthorization: Basic dXNlcjpwYXNz\r\nProxy-Authorization: Basic eA==\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let production = one_received(&primary, "the primary's request");
    assert_eq!(production.header("authorization"), ["Basic dXNlcjpwYXNz"]);
    let copy = one_received(&shadow, "the shadow's copy");
    assert!(copy.header("authorization").is_empty(), "{}", copy.head);
    assert!(
        copy.header("proxy-authorization").is_empty(),
        "{}",
        copy.head
    );
}

#[test]
fn identity_and_cookies_reach_the_shadow_only_when_named_and_tokens_never() {
    let both = ", identity: true, cookies: true";
    let (gw, primary, shadow, key, _dir) = mirrored(both, both);
    let token = key.sign(json!({ "iss": ISS, "aud": "api", "sub": "alice" }));
    let r = raw_request(
        gw.port,
        &format!(
            "GET /billing/z HTTP/1.1\r\nHost: api.test\r\nCookie: theme=dark; at={token}; lang=en\r\nConnection: close\r\n\r\n"
        ),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let production = one_received(&primary, "the primary's request");
    assert_eq!(production.header("cookie"), ["theme=dark; lang=en"]);
    let copy = one_received(&shadow, "the shadow's copy");
    assert_eq!(copy.header("x-auth-subject"), ["alice"]);
    assert_eq!(copy.header("cookie"), ["theme=dark; lang=en"]);
    assert!(copy.header("x-upstream-token").is_empty(), "{}", copy.head);
    assert!(!copy.head.contains(&token), "{}", copy.head);
}

/// The claims of a JWT, unverified (the test only reads what the gateway minted).
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn a_shadow_that_needs_a_token_gets_one_minted_for_its_own_audience() {
    let (gw, primary, shadow, key, _dir) = mirrored(
        ", upstream_token: { audience: billing-shadow, header: X-Upstream-Token }",
        "",
    );
    let token = key.sign(json!({ "iss": ISS, "aud": "api", "sub": "alice" }));
    let r = raw_request(
        gw.port,
        &format!("GET /billing/t HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let production = one_received(&primary, "the primary's request");
    let copy = one_received(&shadow, "the shadow's copy");
    let minted = |r: &Received| jwt_claims(&r.header("x-upstream-token")[0]);
    assert_eq!(minted(&production)["aud"], "billing");
    assert_eq!(minted(&copy)["aud"], "billing-shadow");
    assert_eq!(minted(&copy)["sub"], "alice");
    assert_ne!(
        production.header("x-upstream-token"),
        copy.header("x-upstream-token")
    );
    assert!(!copy.head.contains(&token), "{}", copy.head);
    // Not minted on the `auth: none` route, which has no verified caller.
    let r = raw_request(
        gw.port,
        "GET /open/t HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    one_received(&primary, "the primary's request");
    assert!(one_received(&shadow, "the shadow's copy")
        .header("x-upstream-token")
        .is_empty());
}

/// `ip_rules` are checked on the client address before any token is looked at: a forged
/// token from a refused address costs no signature check and counts no failed
/// authentication, and the upstream receives nothing.
#[test]
fn ip_rules_refuse_before_authentication_and_nothing_reaches_the_upstream() {
    let t = start("{}");
    let forged = TestKey::es256("k1")
        .sign(json!({ "iss": ISS, "aud": "api", "sub": "x", "roles": ["admin"] }));
    let auth = format!("Authorization: Bearer {forged}\r\n");
    let a = send(
        &t.gw,
        format!("GET /office-admin HTTP/1.1\r\nHost: app.test\r\n{auth}\r\n").as_bytes(),
    );
    assert_eq!(a.status, 403, "{a:?}");
    let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(
        (body["error"].as_str(), body["reason"].as_str()),
        (Some("forbidden"), Some("ip"))
    );
    t.upstream_got_nothing("a refused address");
    assert_eq!(
        t.gw.metric(
            "tollgate_ip_refusals_total",
            &[("scope", "route"), ("route", "office-admin")]
        ),
        1.0
    );
    assert_eq!(
        t.gw.metric(
            "tollgate_auth_decisions_total",
            &[("provider", "main"), ("reason", "signature")]
        ),
        0.0,
        "no token was looked at"
    );
    // The route without rules is not affected.
    let admin = t.token("root", &["admin"]);
    let a = send(
        &t.gw,
        format!("GET /admin HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {admin}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(a.status, 200);
    assert_eq!(t.only_request().header("x-auth-subject"), ["root"]);
}

/// Behind a trusted proxy the rules see the real client; without one, a client's
/// `X-Forwarded-For` is not believed, so it cannot name an allowed address.
#[test]
fn ip_rules_see_the_real_client_behind_trusted_proxies_and_never_a_spoofed_one() {
    let behind = start("{ trusted_proxies: [127.0.0.0/8] }");
    let get = |gw: &Gateway, xff: &str| {
        send(
            gw,
            format!("GET /office/x HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: {xff}\r\n\r\n")
                .as_bytes(),
        )
        .status
    };
    assert_eq!(get(&behind.gw, "10.1.2.3"), 200);
    assert_eq!(behind.only_request().header("x-real-ip"), ["10.1.2.3"]);
    assert_eq!(get(&behind.gw, "10.9.1.1"), 403, "deny wins over allow");
    assert_eq!(
        get(&behind.gw, "10.1.2.3, 192.0.2.7"),
        403,
        "the first untrusted hop is the client"
    );
    behind.upstream_got_nothing("refused addresses");

    let edge = start("{}");
    assert_eq!(
        get(&edge.gw, "10.1.2.3"),
        403,
        "a client's own X-Forwarded-For is not believed"
    );
    edge.upstream_got_nothing("a spoofed forwarded address");
}

/// `server.http.ip_rules` apply to every request, before routing.
#[test]
fn global_ip_rules_refuse_before_routing() {
    let t = start("{ ip_rules: { deny: [127.0.0.0/8] } }");
    for target in ["/", "/nowhere", "/admin"] {
        let a = send(
            &t.gw,
            format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.status, 403, "{target}");
        let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(body["reason"], "ip", "{target}");
    }
    t.upstream_got_nothing("a globally refused address");
    assert_eq!(
        t.gw.metric(
            "tollgate_ip_refusals_total",
            &[("scope", "global"), ("route", "unmatched")]
        ),
        3.0
    );
}

fn preflight(gw: &Gateway, origin: &str, method: &str, headers: &str) -> Answer {
    send(
        gw,
        format!(
            "OPTIONS /spa/orders HTTP/1.1\r\nHost: app.test\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: {headers}\r\n\r\n"
        )
        .as_bytes(),
    )
}

/// A preflight carries no token: the gateway answers it before authentication, and it
/// never reaches the upstream, allowed or not.
#[test]
fn a_cors_preflight_is_answered_by_the_gateway_and_never_forwarded() {
    let t = start("{}");
    let a = preflight(
        &t.gw,
        "https://app.example.com",
        "POST",
        "authorization, content-type",
    );
    assert_eq!(a.status, 204, "{a:?}");
    assert_eq!(
        a.header("access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        a.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        a.header("access-control-allow-methods").as_deref(),
        Some("POST")
    );
    assert_eq!(
        a.header("access-control-allow-headers").as_deref(),
        Some("authorization, content-type")
    );
    assert!(a.header("vary").is_some_and(|v| v.contains("Origin")));
    let sub = preflight(&t.gw, "https://shop.example.net", "GET", "authorization");
    assert_eq!(sub.status, 204);
    assert_eq!(
        sub.header("access-control-allow-origin").as_deref(),
        Some("https://shop.example.net")
    );

    for (origin, method, headers, why) in [
        (
            "https://evil.example.com",
            "POST",
            "authorization",
            "an origin not listed",
        ),
        (
            "https://example.net",
            "GET",
            "authorization",
            "the bare suffix is not a subdomain",
        ),
        ("null", "GET", "authorization", "the null origin"),
        (
            "https://app.example.com",
            "POST",
            "x-evil",
            "a header not allowed",
        ),
    ] {
        let a = preflight(&t.gw, origin, method, headers);
        assert_eq!(a.status, 403, "{why}: {a:?}");
        assert_eq!(a.json()["reason"], "cors", "{why}");
        assert_eq!(
            a.header("access-control-allow-origin"),
            None,
            "{why}: no grant"
        );
    }
    // A method the route does not take: no route for it, so no grant either.
    let a = preflight(&t.gw, "https://app.example.com", "DELETE", "authorization");
    assert_eq!(a.header("access-control-allow-origin"), None, "{a:?}");
    t.upstream_got_nothing("preflights");
    assert_eq!(
        t.gw.metric(
            "tollgate_cors_requests_total",
            &[
                ("route", "spa"),
                ("kind", "preflight"),
                ("result", "allowed")
            ]
        ),
        2.0
    );
}

/// The page can read the gateway's own refusals (a 401 here) from an allowed origin, and
/// an origin not listed gets no grant on them nor on the upstream's answer.
#[test]
fn answers_and_refusals_carry_the_cors_grant_for_an_allowed_origin_only() {
    let t = start("{}");
    let get = |origin: &str, token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        send(
            &t.gw,
            format!("GET /spa/orders HTTP/1.1\r\nHost: app.test\r\nOrigin: {origin}\r\n{auth}\r\n")
                .as_bytes(),
        )
    };
    let refused = get("https://app.example.com", None);
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"], "unauthorized");
    assert_eq!(
        refused.header("access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        refused.header("access-control-expose-headers").as_deref(),
        Some("x-request-id")
    );
    assert_eq!(refused.header("vary").as_deref(), Some("Origin"));
    let no_origin = send(&t.gw, b"GET /spa/orders HTTP/1.1\r\nHost: app.test\r\n\r\n");
    assert_eq!(
        no_origin.header("vary").as_deref(),
        Some("Origin"),
        "the answer depends on it"
    );
    assert_eq!(no_origin.header("access-control-allow-origin"), None);
    let stranger = get("https://evil.example.com", None);
    assert_eq!(stranger.status, 401);
    assert_eq!(stranger.header("access-control-allow-origin"), None);
    assert_eq!(stranger.header("vary").as_deref(), Some("Origin"));
    t.upstream_got_nothing("refused requests");

    let token = t.token("alice", &["user"]);
    let ok = get("https://app.example.com", Some(&token));
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        ok.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let got = t.only_request();
    assert_eq!(got.header("x-auth-subject"), ["alice"]);
    let ok = get("https://evil.example.com", Some(&token));
    assert_eq!(
        ok.status, 200,
        "CORS is the browser's check: the request itself is served"
    );
    assert_eq!(ok.header("access-control-allow-origin"), None);
    t.only_request();
}

/// A route's header rules: values from the verified token's claims, the client and the
/// route reach the upstream; a claim with CR/LF is never written, and a `set` whose value
/// cannot be written takes away what the client sent under that name.
#[test]
fn header_rules_write_verified_values_and_never_a_forged_or_injected_one() {
    let t = start("{}");
    let get = |token: &str| {
        send(
            &t.gw,
            format!(
                "GET /rewrite HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n\
                 X-Tenant: forged\r\nX-Debug: 1\r\nX-Trace: client\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    let good = t
        .key
        .sign(json!({ "iss": ISS, "aud": "api", "sub": "alice", "tenant": "acme" }));
    let a = get(&good);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-frame-options").as_deref(), Some("DENY"));
    let got = t.only_request();
    assert_eq!(got.header("x-tenant"), ["acme"]);
    assert_eq!(got.header("x-who"), ["alice@rewrite"]);
    assert_eq!(got.header("x-client"), ["127.0.0.1"]);
    assert_eq!(
        got.header("x-trace"),
        ["client", "gw"],
        "add keeps the client's"
    );
    assert!(got.header("x-debug").is_empty());

    let injected = t
        .key
        .sign(json!({ "iss": ISS, "aud": "api", "sub": "bob", "tenant": "acme\r\nX-Injected: 1" }));
    assert_eq!(get(&injected).status, 200);
    let got = t.only_request();
    assert!(
        got.header("x-tenant").is_empty(),
        "neither the claim nor the client's: {got:?}"
    );
    assert!(got.header("x-injected").is_empty());
    assert_eq!(got.header("x-who"), ["bob@rewrite"]);

    let no_tenant = t
        .key
        .sign(json!({ "iss": ISS, "aud": "api", "sub": "carol" }));
    assert_eq!(get(&no_tenant).status, 200);
    assert!(
        t.only_request().header("x-tenant").is_empty(),
        "a client's X-Tenant never passes"
    );
    assert_eq!(
        t.gw.metric(
            "tollgate_header_rewrites_skipped_total",
            &[("route", "rewrite"), ("header", "x-tenant")]
        ),
        2.0
    );
}

/// Header rules run after the mirror took its copy: a header made from the caller's claims
/// reaches production and never a shadow.
#[test]
fn a_rewritten_header_never_reaches_a_shadow() {
    let primary = RecordingUpstream::start();
    let shadow = RecordingUpstream::start();
    let key = TestKey::es256("k1");
    let (_dir, jwks_path) = jwks_file(&[&key]);
    let gw = Gateway::start(&format!(
        "auth:
  providers:
    - {{ name: main, issuer: \"{ISS}\", audiences: [api], jwks_file: \"{}\" }}
upstreams:
  app: {{ backends: [{{ addr: \"{}\" }}] }}
  shadow: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - name: billing
    path: /billing
    upstream: app
    mirror: {{ upstream: shadow }}
    headers: {{ request: {{ set: {{ X-Tenant: \"${{claim.tenant}}\" }} }} }}
",
        jwks_path.display(),
        primary.addr(),
        shadow.addr(),
    ));
    let token = key.sign(json!({ "iss": ISS, "aud": "api", "sub": "alice", "tenant": "acme" }));
    let r = raw_request(
        gw.port,
        &format!("GET /billing HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        one_received(&primary, "production").header("x-tenant"),
        ["acme"]
    );
    let copy = one_received(&shadow, "the shadow's copy");
    assert!(copy.header("x-tenant").is_empty(), "{}", copy.head);
}
