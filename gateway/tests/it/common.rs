//! Test harness: starts the real `tollgate` binary and real upstreams (`tollgate echo`) on
//! 127.0.0.1 with ephemeral ports, waits for readiness by polling, and stops them on drop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// How long anything may take to become ready before the test fails.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A port that was free a moment ago and that this test process has not handed out before:
/// the OS may give the same ephemeral port to two `bind(0)` calls in a row once the first
/// socket is closed, so the ports already returned are remembered.
/// A listener on a port from [`free_port`]: test servers must not take ports with
/// `bind(0)`, or the OS may hand one to a server that [`free_port`] just promised to a gateway
/// (which then, retrying its bind, leaves its clients talking to the wrong server).
pub fn listen_on_free_port() -> TcpListener {
    loop {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", free_port())) {
            return l;
        }
    }
}

pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Polls `f` every 10 ms until it returns `Some`, or panics with `what` after `within`.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The harness's shutdown settings: quick, so that dropped gateways go fast.
const SHUTDOWN: &str = "grace_period: 1s, graceful_shutdown_timeout: 1s";

/// A child process killed on drop.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
    /// With [`Gateway::start_with_stalled_stdout`]: the read end of its stdout, never read.
    _stalled_stdout: Option<std::process::ChildStdout>,
}

impl Proc {
    pub fn spawn(args: &[&str], log: PathBuf, env: &[(&str, &str)]) -> Proc {
        Self::spawn_with(args, log, env, false)
    }

    fn spawn_with(args: &[&str], log: PathBuf, env: &[(&str, &str)], stalled: bool) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(if stalled {
                Stdio::piped()
            } else {
                Stdio::from(out.try_clone().unwrap())
            })
            .stderr(out)
            .spawn()
            .unwrap();
        let stalled_stdout = child.stdout.take();
        Proc {
            child,
            log,
            _stalled_stdout: stalled_stdout,
        }
    }

    /// Waits up to `within` for the process to exit.
    pub fn exits_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.exited() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.exited()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `tollgate echo` upstream.
pub struct Echo {
    pub port: u16,
    pub name: String,
    proc: Option<Proc>,
    dir: tempfile::TempDir,
}

impl Echo {
    pub fn start(name: &str) -> Echo {
        Self::start_on(name, free_port())
    }

    pub fn start_on(name: &str, port: u16) -> Echo {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Echo {
            port,
            name: name.to_owned(),
            proc: None,
            dir,
        };
        e.restart();
        e
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Changes how it answers every request from now on (`delay_ms=N&status=N`).
    pub fn set(&self, query: &str) {
        let r = request(
            &format!("http://{}/__echo/set?{query}", self.addr()),
            "GET",
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// Requests it has served (its control requests excepted).
    pub fn count(&self) -> u64 {
        let r = request(&format!("http://{}/__echo/count", self.addr()), "GET", &[]);
        r.json()["count"].as_u64().unwrap()
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        let addr = self.addr();
        let log = self.dir.path().join("echo.log");
        let mut p = Proc::spawn(&["echo", "--listen", &addr, "--name", &self.name], log, &[]);
        wait_for(
            &format!("echo {} on {addr}", self.name),
            READY_WITHIN,
            || {
                assert!(!p.exited(), "echo exited: {}", p.log_text());
                TcpStream::connect(&addr).ok()
            },
        );
        self.proc = Some(p);
    }
}

/// The gateway, started from a YAML config whose `listen` and `metrics` sections the
/// harness adds (with fresh ports).
pub struct Gateway {
    pub port: u16,
    /// The HTTPS listener's port (0 without one).
    pub https_port: u16,
    pub metrics_port: u16,
    pub proc: Proc,
    conf: PathBuf,
    listeners: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn start(yaml_without_listeners: &str) -> Gateway {
        Self::start_with_http("{}", yaml_without_listeners)
    }

    /// Like `start`, with `server.http` set to `http` (a YAML flow mapping).
    pub fn start_with_http(http: &str, yaml_without_listeners: &str) -> Gateway {
        Self::launch(http, SHUTDOWN, yaml_without_listeners, &[])
    }

    /// Like `start_with_server`, with an HTTPS listener whose `listen.tls` is `tls`.
    pub fn start_with_server_and_tls(
        server_fields: &str,
        tls: &str,
        yaml_without_listeners: &str,
    ) -> Gateway {
        Self::launch_with("{}", server_fields, Some(tls), yaml_without_listeners, &[])
    }

    /// Like `start`, with `server.http` fields and an HTTPS listener.
    pub fn start_with_http_and_tls(http: &str, tls: &str, yaml_without_listeners: &str) -> Gateway {
        Self::launch_with(http, SHUTDOWN, Some(tls), yaml_without_listeners, &[])
    }

    /// Like `start`, with an HTTPS listener whose `listen.tls` is `tls` (a YAML flow mapping).
    pub fn start_with_tls(tls: &str, yaml_without_listeners: &str) -> Gateway {
        Self::launch_with("{}", SHUTDOWN, Some(tls), yaml_without_listeners, &[])
    }

    /// Like `start`, with these variables in the gateway's environment.
    pub fn start_with_env(env: &[(&str, &str)], yaml_without_listeners: &str) -> Gateway {
        Self::launch("{}", SHUTDOWN, yaml_without_listeners, env)
    }

    /// Like `start`, with `server.grace_period` and `graceful_shutdown_timeout` set.
    pub fn start_with_shutdown(
        grace: &str,
        timeout: &str,
        yaml_without_listeners: &str,
    ) -> Gateway {
        let shutdown = format!("grace_period: {grace}, graceful_shutdown_timeout: {timeout}");
        Self::launch("{}", &shutdown, yaml_without_listeners, &[])
    }

    /// Like `start`, with more `server` fields (a YAML flow mapping's entries).
    pub fn start_with_server(server_fields: &str, yaml_without_listeners: &str) -> Gateway {
        Self::launch("{}", server_fields, yaml_without_listeners, &[])
    }

    /// Starts `tollgate run -u` on this gateway's config: a new process that takes over the
    /// listeners once this one gets `SIGQUIT` (Pingora's graceful upgrade).
    pub fn start_upgrade(&self) -> Proc {
        Proc::spawn(
            &["run", "-u", "-c", self.conf.to_str().unwrap()],
            self._dir.path().join("gateway-upgraded.log"),
            &[],
        )
    }

    /// Like `start`, with stdout a pipe that nobody reads (a stalled log collector): once
    /// the pipe's buffer is full, every write to it blocks. Stderr still goes to the log.
    pub fn start_with_stalled_stdout(yaml_without_listeners: &str) -> Gateway {
        Self::launch_full(
            "{}",
            SHUTDOWN,
            None,
            yaml_without_listeners,
            &[],
            true,
            None,
        )
    }

    /// Like `start`, with the proxy listener on `port` (from [`free_port`]), for a config
    /// that must name the gateway's own URL (a protected resource's identifier).
    pub fn start_at(port: u16, env: &[(&str, &str)], yaml_without_listeners: &str) -> Gateway {
        Self::launch_full(
            "{}",
            SHUTDOWN,
            None,
            yaml_without_listeners,
            env,
            false,
            Some(port),
        )
    }

    fn launch(
        http: &str,
        shutdown: &str,
        yaml_without_listeners: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        Self::launch_with(http, shutdown, None, yaml_without_listeners, env)
    }

    fn launch_with(
        http: &str,
        shutdown: &str,
        tls: Option<&str>,
        yaml_without_listeners: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        Self::launch_full(
            http,
            shutdown,
            tls,
            yaml_without_listeners,
            env,
            false,
            None,
        )
    }

    fn launch_full(
        http: &str,
        shutdown: &str,
        tls: Option<&str>,
        yaml_without_listeners: &str,
        env: &[(&str, &str)],
        stalled_stdout: bool,
        port: Option<u16>,
    ) -> Gateway {
        let port = port.unwrap_or_else(free_port);
        let metrics_port = free_port();
        let https_port = if tls.is_some() { free_port() } else { 0 };
        let https = match tls {
            Some(tls) => format!(", https: \"127.0.0.1:{https_port}\", tls: {tls}"),
            None => String::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let listeners = format!(
            "listen: {{ http: \"127.0.0.1:{port}\"{https} }}\nmetrics: {{ listen: \"127.0.0.1:{metrics_port}\" }}\n\
             server: {{ threads: 2, {shutdown}, http: {http} }}\n"
        );
        let conf = dir.path().join("gateway.yaml");
        std::fs::write(&conf, format!("{listeners}{yaml_without_listeners}")).unwrap();
        let mut proc = Proc::spawn_with(
            &["run", "-c", conf.to_str().unwrap()],
            dir.path().join("gateway.log"),
            env,
            stalled_stdout,
        );
        wait_for("gateway /readyz", READY_WITHIN, || {
            assert!(!proc.exited(), "gateway exited: {}", proc.log_text());
            let r = raw_request(
                metrics_port,
                "GET /readyz HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
            )
            .ok()?;
            (r.status == 200).then_some(())
        });
        Gateway {
            port,
            https_port,
            metrics_port,
            proc,
            conf,
            listeners,
            _dir: dir,
        }
    }

    /// Replaces the config file (same listeners) and sends SIGHUP.
    pub fn reload(&self, yaml_without_listeners: &str) {
        std::fs::write(
            &self.conf,
            format!("{}{yaml_without_listeners}", self.listeners),
        )
        .unwrap();
        let status = Command::new("kill")
            .args(["-HUP", &self.proc.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Replaces the config file with `listen.tls` set to `tls` (same ports) and sends SIGHUP.
    pub fn reload_with_tls(&self, tls: &str, yaml_without_listeners: &str) {
        let start = self.listeners.find(", tls: ").expect("started with TLS") + ", tls: ".len();
        let end = self.listeners.find(" }\nmetrics:").unwrap();
        let listeners = format!(
            "{}{tls}{}",
            &self.listeners[..start],
            &self.listeners[end..]
        );
        self.reload_file(&format!("{listeners}{yaml_without_listeners}"));
    }

    /// Replaces the config file (same listeners) without signalling the gateway.
    pub fn rewrite(&self, yaml_without_listeners: &str) {
        std::fs::write(
            &self.conf,
            format!("{}{yaml_without_listeners}", self.listeners),
        )
        .unwrap();
    }

    /// The config file the gateway was started with (listeners included).
    pub fn conf_path(&self) -> &std::path::Path {
        &self.conf
    }

    /// Writes `full_yaml` (listeners included) to the config file and sends SIGHUP.
    pub fn reload_file(&self, full_yaml: &str) {
        std::fs::write(&self.conf, full_yaml).unwrap();
        let status = Command::new("kill")
            .args(["-HUP", &self.proc.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        request(&self.url(path), "GET", headers)
    }

    pub fn scrape(&self) -> String {
        let r = request(
            &format!("http://127.0.0.1:{}/metrics", self.metrics_port),
            "GET",
            &[],
        );
        assert_eq!(r.status, 200);
        r.body
    }

    /// The value of one sample in a scrape, e.g. `tollgate_requests_total{method="GET",...}`
    /// with labels in any order; 0 when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.scrape(), name, labels)
    }
}

pub fn metric_value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some(x) => x,
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let all = labels
            .iter()
            .all(|(k, v)| label_part.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if all {
            return value.trim().parse().unwrap();
        }
    }
    0.0
}

/// A response: status, lower-cased headers, body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// For answers from `tollgate echo`: the name of the backend that served it.
    pub fn server(&self) -> String {
        self.json()["server"].as_str().unwrap().to_owned()
    }

    /// For answers from `tollgate echo`: a request header as the upstream received it.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }
}

thread_local! {
    static AGENT: ureq::Agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build();
}

pub fn request(url: &str, method: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = AGENT.with(|a| a.request(method, url));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = resp.header(&n).unwrap_or("").to_owned();
            (n.to_ascii_lowercase(), v)
        })
        .collect();
    let body = resp.into_string().unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

/// Sends bytes as they are (no client-side normalisation) and reads a `Connection: close` answer.
pub fn raw_request(port: u16, request: &str) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(request.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    parse_reply(&out)
}

/// An HTTP/1.1 answer, read whole.
pub fn parse_reply(out: &str) -> std::io::Result<Reply> {
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Reads a request head up to its blank line, byte by byte (so nothing of the body is
/// taken), with a 5 s read timeout; `None` if the connection ends or stalls first.
pub fn read_head(conn: &mut TcpStream) -> Option<String> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A JWKS endpoint on 127.0.0.1: serves whatever document it is given (or, for a path
/// given its own with `set_path`, that one), counts fetches, and can be made to fail (500)
/// to stand for an identity provider that is down.
pub struct JwksServer {
    pub port: u16,
    state: std::sync::Arc<JwksState>,
}

struct JwksState {
    body: std::sync::Mutex<String>,
    paths: std::sync::Mutex<std::collections::HashMap<String, String>>,
    fetches: std::sync::atomic::AtomicUsize,
    down: std::sync::atomic::AtomicBool,
    delay_ms: std::sync::atomic::AtomicU64,
    stop: std::sync::atomic::AtomicBool,
}

impl JwksServer {
    pub fn start(body: &str) -> JwksServer {
        use std::sync::atomic::Ordering;
        let listener = listen_on_free_port();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(JwksState {
            body: std::sync::Mutex::new(body.to_owned()),
            paths: Default::default(),
            fetches: Default::default(),
            down: Default::default(),
            delay_ms: Default::default(),
            stop: Default::default(),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                // The body of a GET is empty.
                let head = read_head(&mut conn).unwrap_or_default();
                s.fetches.fetch_add(1, Ordering::AcqRel);
                std::thread::sleep(Duration::from_millis(s.delay_ms.load(Ordering::Acquire)));
                let path = head.split(' ').nth(1).unwrap_or("");
                let own = s.paths.lock().unwrap().get(path).cloned();
                let (status, body) = if s.down.load(Ordering::Acquire) {
                    ("500 Internal Server Error", "down".to_owned())
                } else {
                    (
                        "200 OK",
                        own.unwrap_or_else(|| s.body.lock().unwrap().clone()),
                    )
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        JwksServer { port, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/.well-known/jwks.json", self.port)
    }

    pub fn set(&self, body: &str) {
        *self.state.body.lock().unwrap() = body.to_owned();
    }

    /// Serves `body` at `path` (exactly, query included) from now on.
    pub fn set_path(&self, path: &str, body: &str) {
        self.state
            .paths
            .lock()
            .unwrap()
            .insert(path.to_owned(), body.to_owned());
    }

    pub fn fetches(&self) -> usize {
        self.state
            .fetches
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Answers every request this much later from now on (one at a time).
    pub fn set_delay(&self, ms: u64) {
        self.state
            .delay_ms
            .store(ms, std::sync::atomic::Ordering::Release);
    }

    pub fn set_down(&self, down: bool) {
        self.state
            .down
            .store(down, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// An ES256 key pair for tests: signs tokens, and gives its public JWK.
pub struct TestKey {
    pub kid: String,
    key: tollgate_jwt::SigningKey,
}

impl TestKey {
    pub fn es256(kid: &str) -> TestKey {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        TestKey {
            kid: kid.to_owned(),
            key: tollgate_jwt::SigningKey::from_pkcs8_der(pkcs8.as_ref()).unwrap(),
        }
    }

    pub fn jwk(&self) -> serde_json::Value {
        self.key
            .public_jwk(Some(&self.kid), Some(tollgate_jwt::Algorithm::ES256))
            .unwrap()
    }

    /// Signs `claims`, adding `exp` one hour ahead and `iat` now unless given.
    pub fn sign(&self, claims: serde_json::Value) -> String {
        let mut claims = claims.as_object().unwrap().clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        claims.entry("exp").or_insert((now + 3600).into());
        claims.entry("iat").or_insert(now.into());
        tollgate_jwt::sign(
            tollgate_jwt::Algorithm::ES256,
            Some(&self.kid),
            &serde_json::Value::Object(claims),
            &self.key,
        )
        .unwrap()
    }
}

impl TestKey {
    /// Signs `claims` as they are, with `typ` in the header (a Security Event Token's
    /// `secevent+jwt`, say).
    pub fn sign_typed(&self, typ: &str, claims: serde_json::Value) -> String {
        let mut header = serde_json::Map::new();
        header.insert("typ".into(), typ.into());
        header.insert("kid".into(), self.kid.clone().into());
        tollgate_jwt::sign_with_header(tollgate_jwt::Algorithm::ES256, header, &claims, &self.key)
            .unwrap()
    }
}

/// A JWKS document holding the public keys of `keys`.
/// A JWKS file of `keys` in a fresh directory (kept while the returned guard lives).
pub fn jwks_file(keys: &[&TestKey]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(keys)).unwrap();
    (dir, path)
}

pub fn jwks(keys: &[&TestKey]) -> String {
    serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

/// A real `redis-server` on a loopback port, without persistence; stopped on drop.
pub struct RedisServer {
    pub port: u16,
    proc: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            proc: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.path().to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (make test installs it)");
        self.proc = Some(child);
        let port = self.port;
        wait_for("redis-server", READY_WITHIN, || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.write_all(b"PING\r\n").ok()?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).ok()?;
            (&buf == b"+PONG\r\n").then_some(())
        });
    }

    /// How many keys the server holds (`DBSIZE`): a store-side view of what gateways wrote.
    pub fn keys(&self) -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(b"DBSIZE\r\n").unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            s.read_exact(&mut byte).unwrap();
            reply.push(byte[0]);
        }
        let text = String::from_utf8(reply).unwrap();
        text.trim()
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("DBSIZE answered {text:?}"))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.proc.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A blocking connection to `127.0.0.1:port` from the loopback address `from` (another
/// client, as far as the gateway's per-client brakes can tell).
pub fn connect_from(from: &str, port: u16) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap()
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// `tollgate check` on `yaml` (written to a file of its own): exit code, stdout, stderr.
pub fn tollgate_check(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Starts `cmd`, a helper that prints `READY` on its first line once it serves; stderr is
/// the test's. The caller stops it.
pub fn spawn_ready(cmd: &mut Command) -> Child {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "READY", "{cmd:?} did not start");
    child
}

/// Runs `cmd` to its end and returns its output; a failure shows its stderr.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
