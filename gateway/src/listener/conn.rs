//! Client connections before Pingora sees them: a cap on open connections per listener and
//! per client address, and a deadline and size cap on each request's header block.
//!
//! Pingora 0.9 times out each header *read* (60 s) but not the whole header block, and lets
//! a header block grow to a compile-time 1 MiB. Rather than patch pingora-core, tollgate wraps
//! every accepted stream ([`GuardedStream`]) and watches the bytes Pingora reads: from the
//! first byte of a request until the blank line that ends its header block, reads must finish
//! within `server.http.header_timeout` and total at most `server.http.max_header_bytes`.
//! Past either, the guard writes a small canned answer (408 or 431, `Connection: close`) and
//! fails the read, so Pingora closes the connection. Together with the connection caps this
//! bounds what slow or oversized headers can hold.

use crate::limits::client_bucket;
use crate::request::respond::Refusal;
use crate::request::runtime::RuntimeSnapshot;
use crate::telemetry::metrics::METRICS;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

/// The limits one connection is held to, read from the snapshot when it is accepted.
#[derive(Debug, Clone, Copy)]
struct HeaderLimits {
    timeout: Duration,
    max_bytes: usize,
}

/// Open connections: in total and per client address (IPv6 by /64).
#[derive(Debug, Default)]
pub struct ConnectionTable {
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds a connection's place in the [`ConnectionTable`] until dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    table: Arc<ConnectionTable>,
    client: Option<IpAddr>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.table.total.fetch_sub(1, Ordering::Relaxed);
        METRICS.open_connections.dec();
        if let Some(ip) = self.client {
            let mut map = self
                .table
                .per_client
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    Listener,
    Client,
}

impl ConnectionTable {
    /// Takes a place for a connection from `client` (None when the address is unknown or is a
    /// trusted proxy, which carries many clients).
    pub fn admit(
        self: &Arc<Self>,
        client: Option<IpAddr>,
        max_total: usize,
        max_per_client: usize,
    ) -> Result<ConnectionPermit, ConnectionRefusal> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(ConnectionRefusal::Listener);
        }
        let client = client.map(client_bucket);
        if let Some(ip) = client {
            let mut map = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= max_per_client {
                drop(map);
                self.total.fetch_sub(1, Ordering::Relaxed);
                return Err(ConnectionRefusal::Client);
            }
            *n += 1;
        }
        METRICS.open_connections.inc();
        Ok(ConnectionPermit {
            table: self.clone(),
            client,
        })
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// Wraps the proxy application: admits or refuses each connection, runs the TLS handshake
/// of the HTTPS listener, and guards its stream.
pub struct Guarded<A> {
    pub inner: Arc<A>,
    pub snapshot: Arc<ArcSwap<RuntimeSnapshot>>,
    pub table: Arc<ConnectionTable>,
    pub tls: Option<TlsListener>,
}

/// The HTTPS listener, known by its port (both listeners feed one service).
pub struct TlsListener {
    pub port: u16,
    pub acceptor: pingora_core::listeners::tls::Acceptor,
    pub store: Arc<crate::listener::handshake::CertStore>,
}

impl TlsListener {
    /// The TLS handshake, within `handshake_timeout`; each outcome counted.
    async fn handshake(&self, stream: Stream) -> Option<Stream> {
        // Pingora's listener hands over the TCP stream boxed; the handshake needs its type.
        let Ok(tcp) = stream
            .into_any()
            .downcast::<pingora_core::protocols::l4::stream::Stream>()
        else {
            debug_assert!(false, "the HTTPS listener accepted something else than TCP");
            return None;
        };
        let timeout = self.store.load().handshake_timeout;
        match tokio::time::timeout(timeout, self.acceptor.tls_handshake(*tcp)).await {
            Ok(Ok(tls)) => {
                // `client_auth: required` holds for resumed sessions too: one that carries no
                // certificate valid now (see `tls::Capture`) ends here.
                if self.store.load().client_auth_required() {
                    let valid = tls.get_ssl_digest().is_some_and(|d| {
                        matches!(
                            d.extension.get::<crate::tls::facts::ClientCertificate>(),
                            Some(crate::tls::facts::ClientCertificate::Verified(_))
                        )
                    });
                    if !valid {
                        METRICS
                            .tls_handshake_failures
                            .with_label_values(&["no_client_certificate"])
                            .inc();
                        return None;
                    }
                }
                let version = tls
                    .get_ssl_digest()
                    .map_or_else(|| "unknown".into(), |d| d.version.to_string());
                let alpn = alpn_label(tls.selected_alpn_proto());
                METRICS
                    .tls_handshakes
                    .with_label_values(&[&version, alpn])
                    .inc();
                Some(Box::new(tls))
            }
            Ok(Err(e)) => {
                let reason = crate::listener::handshake::failure_reason(&e);
                METRICS
                    .tls_handshake_failures
                    .with_label_values(&[reason])
                    .inc();
                tracing::debug!(reason, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                METRICS
                    .tls_handshake_failures
                    .with_label_values(&["timeout"])
                    .inc();
                None
            }
        }
    }
}

/// The ALPN protocol as a metric label and log field.
pub fn alpn_label(alpn: Option<pingora_core::protocols::ALPN>) -> &'static str {
    use pingora_core::protocols::ALPN;
    match alpn {
        Some(ALPN::H2) => "h2",
        Some(ALPN::H1) => "http/1.1",
        Some(_) => "other",
        None => "none",
    }
}

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection opens with the HTTP/2 preface (h2c with prior knowledge, RFC
/// 9113 §3.3). Reads only while the bytes still match the preface (an HTTP/1.1 request
/// shorter than the preface is not waited on), within `within`, and puts back what it read.
/// Pingora's own h2c check waits for 24 bytes, which a short HTTP/1.1 request never sends.
async fn opens_with_h2_preface(stream: Stream, within: Duration) -> (Stream, bool) {
    use pingora_core::protocols::l4::stream::Stream as L4;
    use tokio::io::AsyncReadExt;
    if !stream.as_any().is::<L4>() {
        return (stream, false);
    }
    let mut l4: Box<L4> = stream.into_any().downcast().expect("checked above");
    let mut buf = [0u8; 24];
    let mut n = 0;
    let _ = tokio::time::timeout(within, async {
        while n < buf.len() && buf[..n] == H2_PREFACE[..n] {
            match l4.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    })
    .await;
    let h2 = n == buf.len() && buf == *H2_PREFACE;
    l4.rewind(&buf[..n]);
    (l4, h2)
}

/// A refusal written straight to the socket, before Pingora has parsed a request (so there
/// is no realm to challenge with and no request id).
fn canned(refusal: Refusal) -> Vec<u8> {
    refusal.answer("").to_http1()
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        static COUNTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !COUNTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            crate::telemetry::metrics::watch_runtime("proxy");
        }
        let snapshot = self.snapshot.load();
        let http = &snapshot.http;
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        // A trusted proxy multiplexes many clients: it is held only to the listener's cap.
        let counted = peer.filter(|ip| !http.trusted_proxies.iter().any(|n| n.contains(ip)));
        let local_port = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port()));
        let on_tls = self
            .tls
            .as_ref()
            .is_some_and(|t| local_port == Some(t.port));
        let permit = match self.table.admit(
            counted,
            http.max_connections,
            http.max_connections_per_client,
        ) {
            Ok(p) => p,
            Err(refusal) => {
                let (reason, message) = match refusal {
                    ConnectionRefusal::Listener => {
                        ("listener", "too many open connections; retry later")
                    }
                    ConnectionRefusal::Client => (
                        "client",
                        "too many open connections from this address; retry later",
                    ),
                };
                METRICS
                    .connections_refused
                    .with_label_values(&[reason])
                    .inc();
                // Before a handshake there is no way to answer a TLS client in HTTP: close.
                if on_tls {
                    return None;
                }
                let answer = canned(Refusal::Overloaded {
                    reason,
                    message,
                    retry_after_secs: 1,
                });
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = stream.write_all(&answer).await;
                    let _ = stream.flush().await;
                })
                .await;
                return None;
            }
        };
        let limits = HeaderLimits {
            timeout: http.header_timeout,
            max_bytes: http.max_header_bytes,
        };
        let idle = http.keepalive_timeout;
        drop(snapshot);
        let options = self.inner.server_options();
        let accepted = tokio::time::Instant::now();
        let (stream, h2) = match &self.tls {
            Some(tls) if on_tls => {
                let stream = tls.handshake(stream).await?;
                let h2 = matches!(
                    stream.selected_alpn_proto(),
                    Some(pingora_core::protocols::ALPN::H2)
                );
                (stream, h2)
            }
            _ if options.is_some_and(|o| o.h2c) => {
                opens_with_h2_preface(stream, limits.timeout).await
            }
            _ => (stream, false),
        };
        let mut guard = Box::new(GuardedStream::new(stream, limits, permit));
        // On the plain listener the first request's header deadline counts from accept, the
        // h2c preface wait included. On the HTTPS listener it counts from the end of the
        // handshake, which `handshake_timeout` bounds on its own.
        if !on_tls {
            guard.deadline.as_mut().reset(accepted + limits.timeout);
        }
        if h2 {
            // HTTP/2 frames are not an HTTP/1 header block: the h2 server's own limits apply
            // (header list size, streams), and the guard only counts the connection. On the
            // plain listener the preface was found above: the guard tells Pingora it cannot
            // peek, so Pingora (with `h2c` on) takes the connection as HTTP/2.
            guard.phase = Phase::Tunnel;
            guard.armed = false;
            guard.h2c = !on_tls;
            return ServerApp::process_new(&self.inner, guard, shutdown).await;
        }
        // HTTP/1.1 is served by a task of our own, so that the task Pingora spawned for the
        // accept (sized for a TLS handshake state, about 8.6 KiB) ends now instead of living as
        // long as the connection.
        tokio::spawn(serve_h1(
            self.inner.clone(),
            guard,
            idle,
            options.and_then(|o| o.keepalive_request_limit),
            shutdown.clone(),
        ));
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// An HTTP/1.1 connection, served as Pingora's own loop serves it, except for the wait
/// between requests: a kept-alive connection waits for its next request's first byte here,
/// in this small future, instead of inside Pingora's per-request state (tens of KiB).
async fn serve_h1<A: HttpServerApp + Send + Sync + 'static>(
    app: Arc<A>,
    guard: Box<GuardedStream>,
    idle: Duration,
    request_limit: Option<u32>,
    shutdown: ShutdownWatch,
) {
    let mut session = ServerSession::new_http1(guard);
    session.set_keepalive(if *shutdown.borrow() {
        None
    } else {
        Some(idle.as_secs())
    });
    session.set_keepalive_reuses_remaining(request_limit);
    let mut stop = shutdown.clone();
    let mut result = app.process_new_http(session, &shutdown).await;
    while let Some(reused) = result {
        let (stream, settings) = reused.consume();
        // Pingora hands back the stream it was given; the box is reused as it is.
        let Ok(mut guard) = stream.into_any().downcast::<GuardedStream>() else {
            debug_assert!(false, "Pingora returned a stream tollgate did not give it");
            return;
        };
        // Pingora keeps bytes read past the last request (a pipelined one) in the settings
        // and offers no accessor; with such bytes the next request is (partly) here already,
        // and the guard must see them as the start of its header block. Only a request whose
        // reads went past its header block can have left any.
        let kept = match &settings {
            Some(settings) if guard.read_past_header => pipelined_prefix(settings),
            _ => Kept::Nothing,
        };
        match kept {
            Kept::Bytes(prefix) => guard.begin_with(&prefix),
            // Unreadable: go on at once (Pingora then waits inside its own state), so that a
            // pipelined request is never left waiting for bytes that will not come.
            Kept::Unknown => {}
            Kept::Nothing => {
                if !guard.next_request(idle, &mut stop).await {
                    return;
                }
            }
        }
        let mut session = ServerSession::new_http1(guard);
        if let Some(settings) = settings {
            settings.apply_to_session(&mut session);
        }
        result = app.process_new_http(session, &shutdown).await;
    }
}

/// What Pingora kept of the bytes read past the last request.
#[derive(Debug, PartialEq, Eq)]
enum Kept {
    Nothing,
    /// The start of the next request (a pipelined one), which Pingora parses first.
    Bytes(Vec<u8>),
    /// The settings' text was not what this reads.
    Unknown,
}

/// The bytes Pingora kept for the next request. `HttpPersistentSettings` has no accessor for
/// them, so this reads its `Debug` text (`pipelined_prefix: Some(b"GET / HTTP/1.1\r\n")`, the
/// escapes of `bytes`' `Debug`); a unit test below pins that text, so a Pingora upgrade that
/// changes it fails the tests, not production. Called only when a request read past its
/// header block.
fn pipelined_prefix(settings: &pingora_core::apps::HttpPersistentSettings) -> Kept {
    let text = format!("{settings:?}");
    let Some(at) = text.find("pipelined_prefix: ") else {
        return Kept::Unknown;
    };
    let rest = &text.as_bytes()[at + "pipelined_prefix: ".len()..];
    if rest.starts_with(b"None") {
        return Kept::Nothing;
    }
    let Some(mut rest) = rest.strip_prefix(b"Some(b\"") else {
        return Kept::Unknown;
    };
    let mut bytes = Vec::with_capacity(rest.len());
    loop {
        match rest {
            [b'"', ..] => return Kept::Bytes(bytes),
            [b'\\', b'n', tail @ ..] => {
                bytes.push(b'\n');
                rest = tail;
            }
            [b'\\', b'r', tail @ ..] => {
                bytes.push(b'\r');
                rest = tail;
            }
            [b'\\', b't', tail @ ..] => {
                bytes.push(b'\t');
                rest = tail;
            }
            [b'\\', b'0', tail @ ..] => {
                bytes.push(0);
                rest = tail;
            }
            [b'\\', b @ (b'\\' | b'"'), tail @ ..] => {
                bytes.push(*b);
                rest = tail;
            }
            [b'\\', b'x', hi, lo, tail @ ..] => {
                let hex = |c: &u8| char::from(*c).to_digit(16);
                let (Some(hi), Some(lo)) = (hex(hi), hex(lo)) else {
                    return Kept::Unknown;
                };
                bytes.push((hi * 16 + lo) as u8);
                rest = tail;
            }
            [b'\\', ..] | [] => return Kept::Unknown,
            [b, tail @ ..] => {
                bytes.push(*b);
                rest = tail;
            }
        }
    }
}

/// The JSON answer for one of Pingora's own error answers, which have no body: Pingora
/// answers a request it cannot parse (obs-fold, conflicting `Content-Length`, a malformed
/// request line or header) with 400, and `CONNECT` with 405, before tollgate sees the request.
/// They are recognised by what only they carry together: `Server: Pingora`,
/// `Content-Length: 0` and `Cache-Control: private, no-store` (tollgate's own refusals always
/// have a JSON body, and upstream answers do not name Pingora as their server).
fn pingora_canned_error(data: &[u8]) -> Option<Vec<u8>> {
    let head = data
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| data.strip_prefix(b"HTTP/1.0 "))?;
    let status = head.get(..3)?;
    let has = |line: &[u8]| {
        data.windows(line.len())
            .any(|w| w.eq_ignore_ascii_case(line))
    };
    if !(status[0] == b'4' || status[0] == b'5')
        || !has(b"\r\nServer: Pingora\r\n")
        || !has(b"\r\nContent-Length: 0\r\n")
        || !has(b"\r\nCache-Control: private, no-store\r\n")
    {
        return None;
    }
    let refusal = match status {
        b"400" => Refusal::Malformed {
            status: 400,
            reason: "unparseable",
            message: "the request could not be parsed",
        },
        b"405" => Refusal::MethodNotSupported,
        _ => return None,
    };
    let reason = match &refusal {
        Refusal::Malformed { reason, .. } => reason,
        _ => "method_connect",
    };
    METRICS.bad_requests.with_label_values(&[reason]).inc();
    Some(canned(refusal))
}

/// Writes what is left of a queued answer (its bytes and how many are written); Ready(Ok)
/// once all are.
fn write_queued(
    inner: &mut Stream,
    (answer, written): &mut (Vec<u8>, usize),
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while *written < answer.len() {
        match std::task::ready!(Pin::new(&mut *inner).poll_write(cx, &answer[*written..])) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => *written += n,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

/// Where a connection is in its request/response cycle, as far as the guard can tell from
/// the bytes: it needs no HTTP parsing beyond finding the end of a header block and the
/// status line of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a header block (or waiting for the first byte of one).
    Header,
    /// The header block is complete; body bytes and the response follow.
    Request,
    /// A final response has begun; the next read starts a new request.
    Responded,
    /// `101 Switching Protocols`: no more HTTP on this connection.
    Tunnel,
}

/// A client stream under the header deadline and size cap (see the module docs).
pub struct GuardedStream {
    inner: Stream,
    limits: HeaderLimits,
    phase: Phase,
    /// The header deadline; allocated once and reset for each request, counted only while
    /// `armed` (from the first byte of a header block; from accept for the first request).
    deadline: Pin<Box<Sleep>>,
    armed: bool,
    header_bytes: usize,
    /// The last bytes seen, to find a blank line split across reads.
    tail: [u8; 3],
    /// Whether the request line has begun: empty lines before it are skipped by the HTTP
    /// parser (RFC 9112 §2.2), so they must not read as the end of a header block.
    started: bool,
    /// A byte read by `try_peek` or `next_request`, returned by the next read.
    held: Option<u8>,
    /// An h2c connection (the preface found by `opens_with_h2_preface`): `try_peek` says it
    /// cannot peek, so that Pingora serves it as HTTP/2 without looking again.
    h2c: bool,
    /// Whether this request's reads went past the end of its header block (a body, or a
    /// pipelined request read along with it).
    read_past_header: bool,
    /// Set once a canned refusal was queued; every later read fails.
    refusal: Option<(Vec<u8>, usize)>,
    /// A JSON answer written in place of one of Pingora's bodyless error answers (see
    /// [`pingora_canned_error`]), and how much of it is written; later writes are dropped.
    replaced: Option<(Vec<u8>, usize)>,
    _permit: ConnectionPermit,
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("phase", &self.phase)
            .field("header_bytes", &self.header_bytes)
            .finish()
    }
}

impl GuardedStream {
    fn new(inner: Stream, limits: HeaderLimits, permit: ConnectionPermit) -> Self {
        GuardedStream {
            inner,
            limits,
            phase: Phase::Header,
            deadline: Box::pin(tokio::time::sleep(limits.timeout)),
            armed: true,
            header_bytes: 0,
            tail: [0; 3],
            started: false,
            held: None,
            h2c: false,
            read_past_header: false,
            refusal: None,
            replaced: None,
            _permit: permit,
        }
    }

    /// Scans newly read header bytes. Once the blank line ending the block is seen
    /// (`\r\n\r\n`, or `\n\n` which httparse also accepts), returns how many of `read`'s
    /// bytes belong to the header block.
    fn scan(&mut self, read: &[u8]) -> Option<usize> {
        let mut bytes = read;
        let mut skip = 0;
        if !self.started {
            skip = bytes
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(bytes.len());
            bytes = &bytes[skip..];
            if bytes.is_empty() {
                return None;
            }
            self.started = true;
        }
        // The byte `back` places before `i`, looking into the previous read's tail.
        let before = |i: usize, back: usize| -> u8 {
            if i >= back {
                bytes[i - back]
            } else {
                self.tail[3 - (back - i)]
            }
        };
        for i in memchr::memchr_iter(b'\n', bytes) {
            if before(i, 1) == b'\n' || (before(i, 1) == b'\r' && before(i, 2) == b'\n') {
                return Some(skip + i + 1);
            }
        }
        let n = bytes.len();
        self.tail = [before(n, 3), before(n, 2), before(n, 1)];
        None
    }

    /// Forgets the last request: the next bytes begin a new header block.
    fn start_request(&mut self) {
        self.phase = Phase::Header;
        self.header_bytes = 0;
        self.tail = [0; 3];
        self.started = false;
        self.read_past_header = false;
    }

    /// Starts the next request's cycle with `prefix`, the bytes of it Pingora already read
    /// (and parses before reading the socket again): the header deadline runs from now, and
    /// the rest of the header block is scanned as its continuation.
    fn begin_with(&mut self, prefix: &[u8]) {
        self.start_request();
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + self.limits.timeout);
        self.armed = true;
        match self.scan(prefix) {
            Some(header) => {
                self.phase = Phase::Request;
                self.armed = false;
                self.read_past_header = header < prefix.len();
            }
            None => self.header_bytes = prefix.len(),
        }
    }

    /// Writes what is left of a replacement answer; Ready(Ok) when nothing is left.
    fn drain_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.replaced {
            Some(queued) => write_queued(&mut self.inner, queued, cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Waits between requests for the next one's first byte (held for the next read).
    /// False when the connection closed or `idle` passed (also while shutting down).
    /// The wait reuses the connection's deadline timer and allocates nothing.
    async fn next_request(&mut self, idle: Duration, stop: &mut ShutdownWatch) -> bool {
        if self.held.is_some() {
            return true;
        }
        // Between requests nothing is armed: the header deadline starts with the first byte.
        self.armed = false;
        let deadline = tokio::time::Instant::now() + idle;
        self.deadline.as_mut().reset(deadline);
        // Shutdown does not end an idle connection: closing it could meet a request the
        // client is sending at that moment. The connection waits for that request as usual,
        // and Pingora answers it with `Connection: close` (it does so once shutting down).
        let mut stopping = *stop.borrow();
        let changed = stop.changed();
        tokio::pin!(changed);
        std::future::poll_fn(|cx| {
            if !stopping && changed.as_mut().poll(cx).is_ready() {
                stopping = true;
            }
            let mut one = [0u8; 1];
            let mut buf = ReadBuf::new(&mut one);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.held = Some(one[0]);
                    return Poll::Ready(true);
                }
                Poll::Ready(_) => return Poll::Ready(false),
                Poll::Pending => {}
            }
            if self.deadline.as_mut().poll(cx).is_ready() {
                Poll::Ready(false)
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Queues a canned answer and fails this and every later read.
    fn refuse(&mut self, cx: &mut Context<'_>, reason: &'static str) -> Poll<io::Result<()>> {
        if self.refusal.is_none() {
            METRICS.header_refusals.with_label_values(&[reason]).inc();
            let answer = canned(match reason {
                "header_timeout" => Refusal::RequestTimeout { reason },
                _ => Refusal::Malformed {
                    status: 431,
                    reason,
                    message: "the request header block is too large",
                },
            });
            self.refusal = Some((answer, 0));
        }
        // Best effort: the answer is small and the socket's send buffer is empty here.
        if let Some(queued) = &mut self.refusal {
            let _ = write_queued(&mut self.inner, queued, cx);
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        let kind = if reason == "header_timeout" {
            io::ErrorKind::TimedOut
        } else {
            io::ErrorKind::InvalidData
        };
        Poll::Ready(Err(io::Error::new(kind, reason)))
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some((_, _)) = &this.refusal {
            return Poll::Ready(Err(io::Error::other("request refused")));
        }
        if this.phase == Phase::Responded {
            // A new request: its deadline starts with its first byte (idle time between
            // requests is the keep-alive timeout's business).
            this.start_request();
            this.armed = false;
        }
        let before = buf.filled().len();
        let result = match this.held.take() {
            // Hand back the held byte with whatever is ready behind it, so the parser sees
            // the request in one read; nothing ready yet is fine, the byte alone is data.
            Some(b) if buf.remaining() > 0 => {
                buf.put_slice(&[b]);
                match Pin::new(&mut this.inner).poll_read(cx, buf) {
                    Poll::Pending => Poll::Ready(Ok(())),
                    other => other,
                }
            }
            held => {
                this.held = held;
                Pin::new(&mut this.inner).poll_read(cx, buf)
            }
        };
        match result {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled().len() - before;
                if this.phase != Phase::Header {
                    this.read_past_header |= filled > 0;
                    return Poll::Ready(Ok(()));
                }
                if filled == 0 {
                    return Poll::Ready(Ok(()));
                }
                if !this.armed {
                    let at = tokio::time::Instant::now() + this.limits.timeout;
                    this.deadline.as_mut().reset(at);
                    this.armed = true;
                }
                if let Some(header) = this.scan(&buf.filled()[before..]) {
                    this.phase = Phase::Request;
                    this.armed = false;
                    this.read_past_header = header < filled;
                    return Poll::Ready(Ok(()));
                }
                this.header_bytes += filled;
                if this.header_bytes > this.limits.max_bytes {
                    return this.refuse(cx, "header_too_large");
                }
                if this.armed && this.deadline.as_mut().poll(cx).is_ready() {
                    return this.refuse(cx, "header_timeout");
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.phase == Phase::Header
                    && this.armed
                    && this.deadline.as_mut().poll(cx).is_ready()
                {
                    return this.refuse(cx, "header_timeout");
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replaced.is_some() {
            // The connection ends with the replacement; what Pingora writes after it (an
            // empty body) is dropped.
            return match this.drain_replacement(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(data.len())),
            };
        }
        if matches!(this.phase, Phase::Header | Phase::Request) {
            if let Some(answer) = pingora_canned_error(data) {
                this.replaced = Some((answer, 0));
                this.phase = Phase::Responded;
                return match this.drain_replacement(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    _ => Poll::Ready(Ok(data.len())),
                };
            }
        }
        if matches!(this.phase, Phase::Header | Phase::Request) && data.starts_with(b"HTTP/1.") {
            // "HTTP/1.1 101", "HTTP/1.1 100": the status digits are at 9..12.
            match data.get(9..12) {
                Some(b"101") => this.phase = Phase::Tunnel,
                Some([b'1', _, _]) => {}
                _ => {
                    this.phase = Phase::Responded;
                    this.armed = false;
                }
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain_replacement(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            // Route through poll_write's phase tracking for the first non-empty slice.
            let first: &[u8] = first;
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(self.inner.as_mut()).await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for GuardedStream {
    /// Waits for the next byte and holds it (the next read returns it first, followed by
    /// whatever else the socket or its buffer has ready), at the cost of no extra read by the
    /// HTTP parser. (`serve_h1` waits with `next_request`, which does not allocate.)
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        if self.h2c {
            return Ok(false);
        }
        if self.held.is_none() {
            let mut one = [0u8; 1];
            if self.inner.read(&mut one).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.held = Some(one[0]);
        }
        if let (Some(first), Some(b)) = (buf.first_mut(), self.held) {
            *first = b;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pingoras_bodyless_error_answers_are_replaced() {
        let pingora = b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\nDate: Wed, 02 Dec 2026 10:00:00 GMT\r\nContent-Length: 0\r\nCache-Control: private, no-store\r\n\r\n";
        let answer = pingora_canned_error(pingora).expect("Pingora's 400 is replaced");
        let text = String::from_utf8(answer).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "bad_request");
        let connect =
            String::from_utf8_lossy(pingora).replace("400 Bad Request", "405 Method Not Allowed");
        assert!(pingora_canned_error(connect.as_bytes()).is_some());
        // An upstream's own answers pass unchanged: another server, a body, or a success.
        let nginx = String::from_utf8_lossy(pingora).replace("Pingora", "nginx");
        assert!(pingora_canned_error(nginx.as_bytes()).is_none());
        let with_body =
            String::from_utf8_lossy(pingora).replace("Content-Length: 0", "Content-Length: 5");
        assert!(pingora_canned_error(with_body.as_bytes()).is_none());
        let ok = String::from_utf8_lossy(pingora).replace("400 Bad Request", "200 OK");
        assert!(pingora_canned_error(ok.as_bytes()).is_none());
    }

    #[test]
    fn the_connection_past_the_per_client_cap_is_refused_and_a_closed_one_frees_its_place() {
        let table = Arc::new(ConnectionTable::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = table.admit(Some(ip), 10, 2).unwrap();
        let _second = table.admit(Some(ip), 10, 2).unwrap();
        assert_eq!(
            table.admit(Some(ip), 10, 2).unwrap_err(),
            ConnectionRefusal::Client
        );
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let _third = table.admit(Some(other), 10, 2).unwrap();
        drop(first);
        assert!(table.admit(Some(ip), 10, 2).is_ok());
    }

    #[test]
    fn the_listener_cap_counts_every_client() {
        let table = Arc::new(ConnectionTable::default());
        let _a = table.admit(None, 2, 1).unwrap();
        let _b = table.admit(None, 2, 1).unwrap();
        assert_eq!(
            table.admit(None, 2, 1).unwrap_err(),
            ConnectionRefusal::Listener
        );
        assert_eq!(table.open(), 2);
    }
}

#[cfg(test)]
mod pingora_assumptions {
    use pingora_core::apps::HttpPersistentSettings;
    use pingora_core::protocols::http::ServerSession;

    /// `serve_h1` reads the bytes Pingora kept for a pipelined request from the settings'
    /// `Debug` text (there is no accessor); this fails if a Pingora upgrade changes that text.
    #[test]
    fn persistent_settings_show_the_pipelined_bytes_they_keep() {
        use super::{pipelined_prefix, Kept};
        let (a, _b) = tokio::io::duplex(64);
        let session = ServerSession::new_http1(Box::new(a));
        let mut settings = HttpPersistentSettings::for_session(&session);
        assert_eq!(pipelined_prefix(&settings), Kept::Nothing);
        let every_byte: Vec<u8> = (0..=255u8).collect();
        settings.set_pipelined_prefix(bytes::BytesMut::from(&every_byte[..]));
        assert_eq!(pipelined_prefix(&settings), Kept::Bytes(every_byte));
        let mut settings = HttpPersistentSettings::for_session(&session);
        let request = b"GET /a?b=\"c\\d\" HTTP/1.1\r\nHost: x\r\n\tfolded\r\n";
        settings.set_pipelined_prefix(bytes::BytesMut::from(&request[..]));
        assert_eq!(pipelined_prefix(&settings), Kept::Bytes(request.to_vec()));
    }
}
