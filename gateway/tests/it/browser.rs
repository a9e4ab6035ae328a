//! CORS in a real browser: headless Chromium, driven through chromedriver's W3C WebDriver
//! API (what Selenium speaks), loads a page from one origin on 127.0.0.1 whose script calls a
//! protected route of a gateway on another port. What the page can read, and what the
//! upstream received, are the assertions: curl cannot say what a browser allows.

use crate::common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ISS: &str = "https://issuer.test";

/// chromedriver on a free loopback port, with one headless Chromium session.
struct Browser {
    base: String,
    session: String,
    // Declared last, dropped last: the session is deleted before the driver is stopped.
    _driver: Driver,
}

/// The chromedriver process, stopped on drop, even when the test fails before a session.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Driver(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver runs (make test installs chromium-driver)"),
        );
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver", Duration::from_secs(20), || {
            let status: Value = ureq::get(&format!("{base}/status"))
                .call()
                .ok()?
                .into_json()
                .ok()?;
            (status["value"]["ready"] == true).then_some(())
        });
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
            }
        }}});
        let created = post(&format!("{base}/session"), &caps);
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        let browser = Browser {
            base,
            session,
            _driver: driver,
        };
        browser.command("timeouts", &json!({ "script": 15000, "pageLoad": 15000 }));
        browser
    }

    fn command(&self, what: &str, body: &Value) -> Value {
        post(
            &format!("{}/session/{}/{what}", self.base, self.session),
            body,
        )
    }

    fn open(&self, url: &str) {
        self.command("url", &json!({ "url": url }));
    }

    /// Runs `fetch(url)` in the page, with an `Authorization` header when `token` is given,
    /// and returns what the page could read: `{status, body}` or `{error}`.
    fn fetch(&self, url: &str, token: Option<&str>) -> Value {
        let script = "const [url, token, done] = arguments;
            const headers = token ? { Authorization: 'Bearer ' + token } : {};
            fetch(url, { headers })
              .then(r => r.text().then(body => done({ status: r.status, body })))
              .catch(e => done({ error: String(e) }));";
        self.command(
            "execute/async",
            &json!({ "script": script, "args": [url, token] }),
        )["value"]
            .clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
    }
}

fn post(url: &str, body: &Value) -> Value {
    match ureq::post(url)
        .timeout(Duration::from_secs(60))
        .send_json(body.clone())
    {
        Ok(r) => r.into_json().expect("WebDriver answers JSON"),
        Err(ureq::Error::Status(_, r)) => r.into_json().expect("WebDriver answers JSON"),
        Err(e) => panic!("WebDriver {url}: {e}"),
    }
}

/// A static page server: every GET gets the same empty HTML page.
fn page_server() -> u16 {
    let listener = listen_on_free_port();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let page = "<!doctype html><title>spa</title><p>spa</p>";
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
            });
        }
    });
    port
}

#[test]
fn a_page_from_an_allowed_origin_calls_a_protected_route_and_reads_the_401_and_another_origin_is_blocked(
) {
    let echo = Echo::start("api");
    let key = TestKey::es256("k1");
    let (_dir, jwks_path) = jwks_file(&[&key]);
    let page = page_server();
    let gw = Gateway::start(&format!(
        "auth:
  providers:
    - {{ name: main, issuer: \"{ISS}\", audiences: [api], jwks_file: \"{}\" }}
  forward_claims:
    - {{ claim: sub, header: X-Auth-Subject }}
upstreams:
  api: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - name: api
    path: /api
    methods: [GET]
    upstream: api
    cors: {{ allow_origins: [\"http://127.0.0.1:{page}\"], allow_headers: [authorization] }}
",
        jwks_path.display(),
        echo.addr()
    ));
    let token = key.sign(json!({ "iss": ISS, "aud": "api", "sub": "alice" }));
    let api = gw.url("/api/orders");
    let browser = Browser::start();

    browser.open(&format!("http://127.0.0.1:{page}/"));
    // With the token: the browser sends a preflight (Authorization is not a safelisted
    // header), the gateway grants it, and the page reads the upstream's answer.
    let ok = browser.fetch(&api, Some(&token));
    assert_eq!(ok["status"], 200, "{ok}");
    let body: Value = serde_json::from_str(ok["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["headers"]["x-auth-subject"], "alice", "{body}");
    assert_eq!(body["method"], "GET");
    assert_eq!(
        echo.count(),
        1,
        "the upstream got the GET and never the preflight"
    );
    assert_eq!(
        gw.metric(
            "tollgate_cors_requests_total",
            &[
                ("route", "api"),
                ("kind", "preflight"),
                ("result", "allowed")
            ]
        ),
        1.0
    );
    // Without a token: the page reads the gateway's own 401 and its JSON.
    let refused = browser.fetch(&api, None);
    assert_eq!(refused["status"], 401, "{refused}");
    let body: Value = serde_json::from_str(refused["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["reason"], "missing");

    // The same page from another origin (`localhost` is not `127.0.0.1` to a browser): the
    // preflight gets no grant, so the browser never sends the request.
    browser.open(&format!("http://localhost:{page}/"));
    let blocked = browser.fetch(&api, Some(&token));
    assert!(
        blocked["error"]
            .as_str()
            .is_some_and(|e| e.contains("Failed to fetch")),
        "the browser let the page read it: {blocked}"
    );
    let unread = browser.fetch(&api, None);
    assert!(
        unread["error"].is_string(),
        "no grant, no reading: {unread}"
    );
    assert_eq!(echo.count(), 1, "nothing more reached the upstream");
    assert_eq!(
        gw.metric(
            "tollgate_cors_requests_total",
            &[
                ("route", "api"),
                ("kind", "preflight"),
                ("result", "denied")
            ]
        ),
        1.0
    );
}
