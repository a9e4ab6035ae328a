#!/usr/bin/env python3
"""tollgate's soak test with injected faults.

`make soak` (release binary, 600 s, figures into loadtest/results/) and `make soak-short`
(debug binary, 60 s, into target/soak) run this with the venv that holds httpx[http2] and
cryptography (loadtest/soak-requirements.txt). Everything listens on 127.0.0.1 (ephemeral
ports); the forged-token flood comes from 127.0.0.2.

A steady load of valid, expired, forged and over-quota tokens goes through the gateway's
HTTPS listener on HTTP/1.1 and HTTP/2, every request named `X-Request-Id: soak-<n>`, while
a fault script kills and restarts one of the two `tollgate echo` backends, rotates the JWKS
(served by a small HTTP server here, which also goes down once), reloads the config with
SIGHUP, stops and restarts Redis (the limits use `on_store_error: local`), floods forged
tokens in bursts from 127.0.0.2, and puts one backend behind a delaying TCP proxy (slower
than the upstream's `read_timeout`) for a while. Every answer is then judged against what
its token kind must get and what the faults explain, with the gateway's own JSON log line
for the request; RSS, open descriptors, tokio tasks and upstream connections are sampled
from /proc and /metrics. Writes soak.json, soak.svg and SOAK.md into --out.

Exit status: 0 when every check passed, 1 when one failed (the summary says which), 2 when
the soak could not run.
"""

import argparse
import base64
import collections
import datetime
import http.server
import ipaddress
import itertools
import json
import os
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

try:
    import httpx
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as missing:
    sys.exit(
        f"soak.py needs httpx[http2] and cryptography ({missing}); run it through "
        "`make soak-short` or `make soak`, which install them into target/soak-venv"
    )

ROOT = Path(__file__).resolve().parent.parent
ISSUER = "https://issuer.soak.test"
AUDIENCE = "soak"
VALID_SUBJECTS = 40
HOG_SUBJECTS = 2
# What the load sends, by share of the main load (the flood comes on top, in bursts).
KIND_WEIGHTS = {"valid": 0.60, "over_quota": 0.15, "expired": 0.125, "forged": 0.125}
KINDS = ["valid", "expired", "forged", "over_quota", "flood"]
READ_TIMEOUT_S = 1.0  # the upstream's read_timeout
SLOW_DELAY_S = 1.5  # what the delaying proxy adds to every answer of the slow backend
JWKS_INTERVAL_S = 2.0  # refresh.interval of the provider
CLIENT_TIMEOUT_S = 10.0
# A backend is counted disrupted from its kill until it accepts connections again plus
# this long: the gateway's pool and health state need a moment to see the new process.
SETTLE_S = 1.0
H1_THREADS = 8
H2_OWN_THREADS = 4  # HTTP/2, one connection each
H2_SHARED_THREADS = 4  # HTTP/2, one connection multiplexed by all four
FLOOD_THREADS = 4
# Flatness after warm-up: the last window's median may exceed the first's by this share
# (plus the absolute slack, for counts that move by a few with connections opening).
FLAT_SHARE = 0.10
FLAT_SLACK = {"rss_kib": 0, "fds": 8, "tasks": 16}


LOG_LOCK = threading.Lock()


def log(msg):
    with LOG_LOCK:  # fault threads log at once
        print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class SoakError(Exception):
    """The soak could not run (as opposed to: it ran and a check failed)."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, timeout, check, interval=0.05):
    """Polls `check` until it returns something truthy; SoakError after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= end:
            raise SoakError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def accepts(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def fmt_t(t, t0):
    return f"{t - t0:7.2f}s"


# ---------------------------------------------------------------------------------------
# Processes: each in its own session (process group), all killed on exit, error or signal.


class Procs:
    def __init__(self, work):
        self.work = work
        self.lock = threading.Lock()
        self.live = {}

    def start(self, name, argv, stdout=None, stderr=None):
        out = open(stdout or self.work / f"{name}.log", "ab")
        err = open(stderr, "ab") if stderr else subprocess.STDOUT
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        out.close()
        if stderr:
            err.close()
        with self.lock:
            self.live[p.pid] = (name, p)
        return p

    def kill(self, p, sig=signal.SIGKILL, wait=10.0):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
        with self.lock:
            self.live.pop(p.pid, None)

    def kill_all(self):
        with self.lock:
            live = list(self.live.values())
        for _, p in live:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for _, p in live:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        with self.lock:
            self.live.clear()


# ---------------------------------------------------------------------------------------
# Keys, tokens and certificates.


def es256_key():
    return ec.generate_private_key(ec.SECP256R1())


def jwk(kid, key):
    n = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(n.x.to_bytes(32, "big")),
        "y": b64url(n.y.to_bytes(32, "big")),
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
    }


def sign(key, kid, claims):
    header = b64url(json.dumps({"alg": "ES256", "typ": "JWT", "kid": kid}).encode())
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return f"{header}.{payload}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class Tokens:
    """The issuer's side: the key the load signs with now, and fresh tokens per subject.

    A valid token is re-minted when it is half its lifetime old or when the signing key has
    changed, and is never sent within two seconds of its `exp`."""

    def __init__(self, ttl):
        self.ttl = ttl
        self.lock = threading.Lock()
        self.kid = None
        self.key = None
        self.cache = {}
        self.attacker = es256_key()  # forged tokens: the right kid, another key's signature

    def use(self, kid, key):
        with self.lock:
            self.kid, self.key = kid, key

    def claims(self, sub, exp_in):
        now = int(time.time())
        return {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "scope": "read",
            "iat": now + min(0, exp_in) - 1,
            "exp": now + exp_in,
        }

    def valid(self, sub):
        now = time.time()
        with self.lock:
            kid, key = self.kid, self.key
            hit = self.cache.get(sub)
            if hit and hit[1] == kid and now - hit[2] < self.ttl / 2 and hit[3] - now > 2:
                return hit[0]
        token = sign(key, kid, self.claims(sub, int(self.ttl)))
        with self.lock:
            self.cache[sub] = (token, kid, now, now + int(self.ttl))
        return token

    def expired(self, sub):
        with self.lock:
            kid, key = self.kid, self.key
        return sign(key, kid, self.claims(sub, -120))  # well past the 5 s leeway

    def forged(self, sub):
        with self.lock:
            kid = self.kid
        return sign(self.attacker, kid, self.claims(sub, int(self.ttl)))


def make_pki(work):
    """A CA and a server certificate for 127.0.0.1 and localhost, as PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = es256_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tollgate soak CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = es256_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (work / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (work / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (work / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return work / "ca.pem"


# ---------------------------------------------------------------------------------------
# The JWKS server, the delaying proxy, Redis, the backends and the gateway.


class JwksServer:
    """Serves the current JWKS document at any path; can go down (connections refused) and
    come back on the same port. Remembers which document version each fetch got."""

    def __init__(self):
        self.port = free_port()
        self.lock = threading.Lock()
        self.keys = {}  # kid -> jwk, in order of addition
        self.version = 0
        self.body = b""
        self.served = []  # (time, version)
        self.server = None
        self.thread = None
        self.up_since = None
        self.publish()

    def publish(self):
        with self.lock:
            self.version += 1
            self.body = json.dumps({"keys": list(self.keys.values())}).encode()
            return self.version

    def add(self, kid, key):
        with self.lock:
            self.keys[kid] = jwk(kid, key)
        return self.publish()

    def remove(self, kid):
        with self.lock:
            self.keys.pop(kid, None)
        return self.publish()

    def start(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with owner.lock:
                    body, version = owner.body, owner.version
                    owner.served.append((time.time(), version))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.up_since = time.time()

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
            self.server = None
            self.up_since = None

    def served_since(self, t):
        """The highest document version fetched at or after time `t`."""
        with self.lock:
            return max((v for at, v in self.served if at >= t), default=0)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/jwks.json"


class DelayProxy:
    """A TCP proxy that holds every chunk coming back from the upstream for `delay`
    seconds: the backend behind it answers, but later than the gateway's read_timeout."""

    def __init__(self, port, upstream_port, delay):
        self.port, self.upstream_port, self.delay = port, upstream_port, delay
        self.stopping = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.conns = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.accept_loop, daemon=True)
        self.thread.start()

    def accept_loop(self):
        while not self.stopping.is_set():
            try:
                client, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for src, dst, delay in ((client, upstream, 0.0), (upstream, client, self.delay)):
                threading.Thread(target=self.pump, args=(src, dst, delay), daemon=True).start()

    def pump(self, src, dst, delay):
        src.settimeout(0.2)
        try:
            while not self.stopping.is_set():
                try:
                    chunk = src.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    break
                if delay and self.stopping.wait(delay):
                    break
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass


class Redis:
    def __init__(self, procs, work):
        self.procs, self.work = procs, work
        self.port = free_port()
        self.proc = None

    def start(self):
        self.proc = self.procs.start(
            "redis",
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.work)],
        )
        wait_until("redis-server to answer PING", 15, self.ping)

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        if self.proc:
            self.procs.kill(self.proc, signal.SIGTERM)
            self.proc = None


class Backend:
    def __init__(self, procs, binary, name):
        self.procs, self.binary, self.name = procs, binary, name
        self.port = free_port()
        self.proc = None

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def start(self, port=None):
        port = port or self.port
        self.proc = self.procs.start(
            self.name, [self.binary, "echo", "--listen", f"127.0.0.1:{port}", "--name", self.name]
        )
        wait_until(f"backend {self.name} on port {port}", 15, lambda: accepts(port))

    def kill(self):
        if self.proc:
            self.procs.kill(self.proc, signal.SIGKILL)
            self.proc = None


CONFIG = """\
# Written by loadtest/soak.py for one soak run.
server:
  threads: 2
  grace_period: 1s
  graceful_shutdown_timeout: 2s
listen:
  http: 127.0.0.1:{http_port}
  https: 127.0.0.1:{https_port}
  tls:
    certificates: [{{ cert: server.pem, key: server.key }}]
metrics:
  listen: 127.0.0.1:{metrics_port}
logging:
  level: info
  access_log: true
auth:
  realm: soak
  # Small enough to fill during warm-up, so that growth after it is not a cache filling.
  cache_size: 2000
  # The main load's own refusals (expired and forged, about {bad_rate}/s from 127.0.0.1)
  # stay under it; the flood from 127.0.0.2 goes past it.
  failed_auth_limit: {{ rate: 100/s, burst: 200 }}
  providers:
    - name: soak
      issuer: {issuer}
      audiences: [{audience}]
      leeway: 5s
      jwks_uri: {jwks_uri}
      refresh: {{ interval: {jwks_interval}s, min_interval: 1s, unknown_kid_cooldown: 5s, timeout: 1s }}
  forward_claims:
    - {{ claim: sub, header: X-Auth-Subject }}
policies:
  readers:
    allow:
      - {{ scopes: [read] }}
rate_limiting:
  max_local_keys: 10000
  redis: {{ url: "redis://127.0.0.1:{redis_port}/", timeout: 100ms, on_store_error: local }}
upstreams:
  echo:
    backends:
      - {{ addr: "{backend_a}" }}
      - {{ addr: "{backend_b}" }}
    health_check: {{ type: http, path: /healthz, interval: 1s, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 2 }}
    connect_timeout: 500ms
    read_timeout: {read_timeout}s
    retries: 1
routes:
  - name: api
    path: /api
    upstream: echo
    strip_prefix: true
    policy: readers
    rate_limits:
      - {{ name: per-user, key: "claim:sub", rate: 200/s, burst: 400, store: redis }}
  - name: quota
    path: /quota
    upstream: echo
    strip_prefix: true
    rate_limits:
      - {{ name: tight, key: "claim:sub", rate: 2/s, burst: 4, store: redis }}
  # Changed by every reload (the "harmless change"); nothing requests it.
  - {{ name: reload-{generation}, path: /reload-marker, upstream: echo, auth: none }}
"""


class Gateway:
    def __init__(self, procs, binary, work, values):
        self.procs, self.binary, self.work = procs, binary, work
        self.values = values
        self.http_port, self.https_port, self.metrics_port = free_port(), free_port(), free_port()
        self.config = work / "soak.yaml"
        self.out = work / "gateway.out"
        self.err = work / "gateway.err"
        self.proc = None
        self.generation = 0

    def write_config(self):
        text = CONFIG.format(
            http_port=self.http_port,
            https_port=self.https_port,
            metrics_port=self.metrics_port,
            generation=self.generation,
            **self.values,
        )
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config)

    def check(self):
        r = subprocess.run(
            [self.binary, "check", "-c", str(self.config)], capture_output=True, text=True,
            timeout=30,
        )
        if r.returncode != 0:
            raise SoakError(f"tollgate check refused the soak config:\n{r.stdout}{r.stderr}")

    def start(self):
        self.write_config()
        self.check()
        self.proc = self.procs.start(
            "gateway", [self.binary, "run", "-c", str(self.config)], self.out, self.err
        )
        wait_until("the gateway's /readyz", 30, self.ready, interval=0.1)

    def ready(self):
        if self.proc.poll() is not None:
            raise SoakError(f"the gateway exited with {self.proc.returncode}; see {self.err}")
        try:
            with urllib.request.urlopen(self.url("/readyz"), timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def url(self, path):
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def reload(self):
        self.generation += 1
        self.write_config()
        os.kill(self.proc.pid, signal.SIGHUP)
        return self.generation

    def metrics(self):
        """{(name, ((label, value), ...)): value} from /metrics; {} when it cannot be read."""
        try:
            with urllib.request.urlopen(self.url("/metrics"), timeout=2) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            return {}
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            name, _, labels = head.partition("{")
            pairs = []
            for part in labels.rstrip("}").split(","):
                if "=" in part:
                    k, _, v = part.partition("=")
                    pairs.append((k.strip(), v.strip().strip('"')))
            try:
                out[(name, tuple(pairs))] = float(value)
            except ValueError:
                pass
        return out


def metric_sum(metrics, name, **labels):
    """The sum of `name` over the series whose labels include `labels`; None if absent."""
    found = None
    for (n, pairs), v in metrics.items():
        if n == name and all(dict(pairs).get(k) == want for k, want in labels.items()):
            found = (found or 0.0) + v
    return found


# ---------------------------------------------------------------------------------------
# /proc figures of the gateway process.


def proc_figures(pid, backend_ports):
    """RSS (KiB), open descriptors, threads, and ESTABLISHED sockets to a backend port."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    inodes = set()
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    upstream = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != "01" or cols[9] not in inodes:  # 01: ESTABLISHED
                continue
            if int(cols[2].rsplit(":", 1)[1], 16) in backend_ports:
                upstream += 1
    return {
        "rss_kib": int(fields["VmRSS"].split()[0]),
        "fds": len(fds),
        "threads": int(fields["Threads"].split()[0]),
        "upstream_conns": upstream,
    }


# ---------------------------------------------------------------------------------------
# The schedule.


def schedule(duration):
    """Fault periods and windows for a run of `duration` seconds. The issue's periods hold
    from 600 s up; shorter runs scale them by duration/600, each with a floor under which
    the fault would no longer show what it is for (a key rotation needs two JWKS refresh
    intervals, a backend kill needs a health-check round)."""
    s = min(1.0, duration / 600.0)

    def per(nominal, floor):
        return round(max(floor, nominal * s), 2)

    kill_every = per(30, 6)
    rotate_every = per(30, 8)
    return {
        "scale": round(s, 3),
        "kill_every": kill_every,
        "kill_down": round(max(1.5, min(5.0, kill_every / 4)), 2),
        "rotate_every": rotate_every,
        "token_ttl": round(max(10.0, rotate_every), 2),
        "reload_every": per(20, 4),
        "jwks_down": (round(0.42 * duration, 2), per(20, 5)),
        "redis_down": (round(0.52 * duration, 2), per(15, 4)),
        "slow": (round(0.62 * duration, 2), per(30, 8)),
        "flood_every": per(30, 10),
        "flood_burst": per(5, 2),
        "warmup": round(max(10.0, min(120.0, 0.2 * duration)), 2),
        "compare": round(min(60.0, 0.2 * duration), 2),
        "sample_every": 5.0 if duration >= 300 else round(max(1.0, duration / 30), 2),
    }


# ---------------------------------------------------------------------------------------
# The load.

# One request: `error`/`reason` come from the gateway's JSON body, or name the exception
# when no answer came; `server` is the echo backend that answered; `problem` is set when a
# 200 is not what the upstream should have received (another request's id, another subject,
# the token forwarded); `conn` names the client (one HTTP/1.1 connection at a time, or one
# HTTP/2 connection) and `closes` says whether the answer announced `Connection: close`.
Rec = collections.namedtuple(
    "Rec", "n kind proto t0 t1 status error reason server problem conn closes"
)


class Load:
    def __init__(self, args, ca, gateway, tokens, deadline, seed):
        self.args, self.ca, self.gateway, self.tokens = args, ca, gateway, tokens
        self.deadline = deadline
        self.seed = seed
        self.counter = itertools.count(1)
        self.records = []
        self.stop = threading.Event()
        self.flood_on = threading.Event()
        self.threads = []
        self.base = f"https://127.0.0.1:{gateway.https_port}"

    def client(self, proto, local_address=None):
        ctx = ssl.create_default_context(cafile=str(self.ca))
        transport = httpx.HTTPTransport(
            verify=ctx,
            http1=proto == "h1",
            http2=proto == "h2",
            local_address=local_address,
            retries=0,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
        )
        return httpx.Client(transport=transport, timeout=CLIENT_TIMEOUT_S, base_url=self.base)

    def prepare(self, kind, rng):
        """One request of `kind`: (n, sub, method, path, headers, body)."""
        n = next(self.counter)
        rid = f"soak-{n}"
        method, body = "GET", None
        if kind == "valid":
            sub = f"user-{rng.randrange(VALID_SUBJECTS)}"
            token = self.tokens.valid(sub)
            path = f"/api/items/{n}"
            if rng.random() < 0.1:
                method, body = "POST", os.urandom(512)
        elif kind == "over_quota":
            sub = f"hog-{rng.randrange(HOG_SUBJECTS)}"
            token = self.tokens.valid(sub)
            path = f"/quota/items/{n}"
        elif kind == "expired":
            sub = f"late-{rng.randrange(VALID_SUBJECTS)}"
            token = self.tokens.expired(sub)
            path = f"/api/items/{n}"
        else:  # forged, flood
            sub = f"mallory-{n}"
            token = self.tokens.forged(sub)
            path = f"/api/items/{n}"
        headers = {"authorization": f"Bearer {token}", "x-request-id": rid}
        return n, sub, method, path, headers, body

    def record(self, n, kind, proto, conn, sub, path, t0, r, exc):
        """Judges what came back for the upstream's view and keeps it as a Rec."""
        status = error = reason = server = problem = None
        closes = False
        if exc is not None:
            error = f"{type(exc).__name__}: {str(exc)[:160]}"
        else:
            status = r.status_code
            closes = "close" in r.headers.get("connection", "").lower()
            if proto == "h2" and r.http_version != "HTTP/2":
                problem = f"asked for HTTP/2, answered over {r.http_version}"
            try:
                doc = r.json()
            except ValueError:
                doc = {}
            if status == 200 and kind in ("valid", "over_quota"):
                server = doc.get("server")
                seen = doc.get("headers", {})
                rid = f"soak-{n}"
                if seen.get("x-request-id") != rid:
                    problem = f"upstream saw request id {seen.get('x-request-id')!r}"
                elif seen.get("x-auth-subject") != sub:
                    problem = f"upstream saw subject {seen.get('x-auth-subject')!r} for {sub}"
                elif "authorization" in seen:
                    problem = "the token was forwarded upstream"
                elif doc.get("path") != "/" + path.split("/", 2)[2]:
                    problem = f"upstream saw path {doc.get('path')!r}"
            elif isinstance(doc, dict):
                error, reason = doc.get("error"), doc.get("reason")
        self.records.append(
            Rec(n, kind, proto, t0, time.time(), status, error, reason, server, problem, conn,
                closes)
        )

    def request(self, client, kind, proto, rng, conn):
        n, sub, method, path, headers, body = self.prepare(kind, rng)
        t0 = time.time()
        r = exc = None
        try:
            r = client.request(method, path, headers=headers, content=body)
        except Exception as e:  # noqa: BLE001 - every failure is a result here
            exc = e
        self.record(n, kind, proto, conn, sub, path, t0, r, exc)

    def multiplexed(self):
        """HTTP/2 streams multiplexed on one connection: H2_SHARED_THREADS concurrent tasks
        on one AsyncClient in an event loop of its own. (httpx's synchronous client is not
        safe to share between threads on HTTP/2: two threads can take the same stream id.)"""
        import asyncio

        async def main():
            ctx = ssl.create_default_context(cafile=str(self.ca))
            transport = httpx.AsyncHTTPTransport(verify=ctx, http1=False, http2=True, retries=0)
            async with httpx.AsyncClient(
                transport=transport, timeout=CLIENT_TIMEOUT_S, base_url=self.base
            ) as client:
                await asyncio.gather(*(task(client, i) for i in range(H2_SHARED_THREADS)))

        async def task(client, i):
            rng = random.Random(self.seed * 1000 + 900 + i)
            total = H1_THREADS + H2_OWN_THREADS + H2_SHARED_THREADS
            interval = total / self.args.rate
            kinds = list(KIND_WEIGHTS)
            weights = [KIND_WEIGHTS[k] for k in kinds]
            next_t = time.monotonic() + rng.random() * interval
            while not self.stop.is_set() and time.time() < self.deadline:
                wait = next_t - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(min(wait, 0.2))
                    continue
                next_t = max(next_t + interval, time.monotonic())
                kind = rng.choices(kinds, weights)[0]
                n, sub, method, path, headers, body = self.prepare(kind, rng)
                t0 = time.time()
                r = exc = None
                try:
                    r = await client.request(method, path, headers=headers, content=body)
                except Exception as e:  # noqa: BLE001 - every failure is a result here
                    exc = e
                self.record(n, kind, "h2", "shared-h2", sub, path, t0, r, exc)

        asyncio.run(main())

    def worker(self, index, proto):
        rng = random.Random(self.seed * 1000 + index)
        total = H1_THREADS + H2_OWN_THREADS + H2_SHARED_THREADS
        interval = total / self.args.rate
        kinds = list(KIND_WEIGHTS)
        weights = [KIND_WEIGHTS[k] for k in kinds]
        client, used, limit = None, 0, rng.randint(100, 400)
        generation = 0
        next_t = time.monotonic() + rng.random() * interval
        try:
            while not self.stop.is_set() and time.time() < self.deadline:
                wait = next_t - time.monotonic()
                if wait > 0:
                    self.stop.wait(min(wait, max(0.0, self.deadline - time.time())))
                    continue
                next_t = max(next_t + interval, time.monotonic())  # no catch-up bursts
                if client is None or used >= limit:
                    # Connections come and go (new TLS handshakes), as real clients' do.
                    if client:
                        client.close()
                    client, used, limit = self.client(proto), 0, rng.randint(100, 400)
                    generation += 1
                self.request(client, rng.choices(kinds, weights)[0], proto, rng, f"w{index}.{generation}")
                used += 1
        finally:
            if client:
                client.close()

    def flooder(self, index):
        rng = random.Random(self.seed * 1000 + 500 + index)
        generation = 0
        while not self.stop.is_set() and time.time() < self.deadline:
            if not self.flood_on.wait(0.2):
                continue
            # A fresh connection per burst: idle ones may have been closed in between.
            generation += 1
            with self.client("h1", local_address="127.0.0.2") as client:
                while self.flood_on.is_set() and not self.stop.is_set() and time.time() < self.deadline:
                    self.request(client, "flood", "h1", rng, f"f{index}.{generation}")

    def start(self):
        specs = ["h1"] * H1_THREADS + ["h2"] * H2_OWN_THREADS
        for i, proto in enumerate(specs):
            t = threading.Thread(target=self.worker, args=(i, proto), daemon=True)
            t.start()
            self.threads.append(t)
        t = threading.Thread(target=self.multiplexed, daemon=True)
        t.start()
        self.threads.append(t)
        for i in range(FLOOD_THREADS):
            t = threading.Thread(target=self.flooder, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self):
        self.stop.set()
        self.flood_on.clear()
        for t in self.threads:
            t.join(timeout=CLIENT_TIMEOUT_S + 5)


# ---------------------------------------------------------------------------------------
# The fault script. Each fault runs in its own thread until the deadline and records what
# it did in `events`: (time, fault, what, detail).


class Faults:
    def __init__(self, sched, t_start, deadline, procs, binary, gateway, backends, jwks, redis,
                 tokens, load):
        self.s = sched
        self.t_start, self.deadline = t_start, deadline
        self.procs, self.binary = procs, binary
        self.gateway, self.backends, self.jwks, self.redis = gateway, backends, jwks, redis
        self.tokens, self.load = tokens, load
        self.events = []
        self.errors = []
        self.stop = threading.Event()
        self.backend_lock = threading.Lock()  # kills and the slow swap never overlap
        self.threads = []
        self.key_no = itertools.count(1)

    def event(self, fault, what, **detail):
        t = time.time()
        self.events.append((t, fault, what, detail))
        extra = " ".join(f"{k}={v}" for k, v in detail.items())
        log(f"{fmt_t(t, self.t_start)} {fault}: {what} {extra}".rstrip())
        return t

    def sleep_until(self, t):
        """False when the run ends first."""
        t = min(t, self.deadline)
        while not self.stop.is_set():
            left = t - time.time()
            if left <= 0:
                return time.time() < self.deadline
            self.stop.wait(min(left, 0.5))
        return False

    def at(self, offset):
        return self.t_start + offset

    def slow_window(self):
        start, length = self.s["slow"]
        return self.t_start + start, self.t_start + start + length

    def run(self, name, fn):
        def guarded():
            try:
                fn()
            except Exception as e:  # a fault that cannot be applied fails the soak
                self.errors.append(f"{name}: {type(e).__name__}: {e}")
                log(f"fault {name} failed: {e}")

        t = threading.Thread(target=guarded, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def start(self):
        self.run("backend_kill", self.kill_loop)
        self.run("jwks_rotation", self.rotation_loop)
        self.run("jwks_outage", self.jwks_outage)
        self.run("reload", self.reload_loop)
        self.run("redis_outage", self.redis_outage)
        self.run("flood", self.flood_loop)
        self.run("slow_backend", self.slow_backend)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def kill_loop(self):
        every, down = self.s["kill_every"], self.s["kill_down"]
        slow_from, slow_to = self.slow_window()
        t = self.t_start + every / 2
        victims = itertools.cycle(self.backends)
        while self.sleep_until(t):
            b = next(victims)
            # Both backends compromised at once would leave no healthy one: skip a kill that
            # would overlap the slow window (plus a health-check round either side).
            if t + down + 2 >= slow_from - 2 and t <= slow_to + 2:
                self.event("backend_kill", "skipped (slow window)", backend=b.name)
            else:
                with self.backend_lock:
                    b.kill()
                    self.event("backend_kill", "killed", backend=b.name, addr=b.addr)
                    self.sleep_until(time.time() + down)
                    b.start()
                    self.event("backend_kill", "restarted", backend=b.name, addr=b.addr)
            t += every

    def rotation_loop(self):
        """Adds a key every `rotate_every`; the load signs with it once every provider
        instance in the gateway must have fetched it (the server was up, and served the new
        document, for a refresh interval and a second since publishing); the previous key
        leaves the document when the last token signed with it has expired."""
        every, ttl = self.s["rotate_every"], self.s["token_ttl"]
        t_next = self.t_start + every * 0.75
        pending = None  # (kid, key, version, published_at)
        removals = []  # (time, kid)
        current = self.tokens.kid
        while self.sleep_until(min([t_next] + [r[0] for r in removals] + [time.time() + 0.1])):
            now = time.time()
            for due, kid in [r for r in removals if r[0] <= now]:
                removals.remove((due, kid))
                v = self.jwks.remove(kid)
                self.event("jwks_rotation", "old key removed", kid=kid, version=v)
            if pending:
                kid, key, version, published = pending
                up_since = self.jwks.up_since
                if (
                    up_since is not None
                    and self.jwks.served_since(published) >= version
                    and now >= max(published, up_since) + JWKS_INTERVAL_S + 1.0
                ):
                    self.tokens.use(kid, key)
                    self.event("jwks_rotation", "load switched to the new key", kid=kid)
                    removals.append((now + ttl + 2.0, current))
                    current, pending = kid, None
            if now >= t_next:
                t_next += every
                if pending:
                    self.event("jwks_rotation", "skipped (previous key not yet fetched)")
                else:
                    kid = f"soak-{next(self.key_no)}"
                    key = es256_key()
                    v = self.jwks.add(kid, key)
                    pending = (kid, key, v, time.time())
                    self.event("jwks_rotation", "new key published", kid=kid, version=v)

    def jwks_outage(self):
        start, length = self.s["jwks_down"]
        if not self.sleep_until(self.at(start)):
            return
        self.jwks.stop()
        self.event("jwks_outage", "down")
        self.sleep_until(time.time() + length)
        self.jwks.start()
        self.event("jwks_outage", "up")

    def reload_loop(self):
        every = self.s["reload_every"]
        t = self.t_start + every
        while self.sleep_until(t):
            g = self.gateway.reload()
            self.event("reload", "SIGHUP", generation=g)
            t += every

    def redis_outage(self):
        start, length = self.s["redis_down"]
        if not self.sleep_until(self.at(start)):
            return
        self.redis.stop()
        self.event("redis_outage", "stopped", port=self.redis.port)
        self.sleep_until(time.time() + length)
        self.redis.start()
        self.event("redis_outage", "started", port=self.redis.port)

    def flood_loop(self):
        every, burst = self.s["flood_every"], self.s["flood_burst"]
        t = self.t_start + every * 0.3
        while self.sleep_until(t):
            self.load.flood_on.set()
            self.event("flood", "burst on", source="127.0.0.2")
            self.sleep_until(time.time() + burst)
            self.load.flood_on.clear()
            self.event("flood", "burst off")
            t += every

    def slow_backend(self):
        slow_from, slow_to = self.slow_window()
        if not self.sleep_until(slow_from):
            return
        b = self.backends[1]
        with self.backend_lock:
            inner = Backend(self.procs, self.binary, f"{b.name}")
            inner.start()  # the same echo, on a port of its own
            b.kill()
            self.event("slow_backend", "backend swapped for the delaying proxy", backend=b.name,
                       addr=b.addr)
            proxy = wait_until(
                "the delaying proxy's port", 10, lambda: self.try_proxy(b.port, inner.port)
            )
            self.event("slow_backend", "slow", backend=b.name, delay_s=SLOW_DELAY_S)
            self.sleep_until(slow_to)
            self.event("slow_backend", "proxy stopped", backend=b.name)
            proxy.stop()
            inner.kill()
            b.start()
            self.event("slow_backend", "backend restarted", backend=b.name, addr=b.addr)

    @staticmethod
    def try_proxy(port, upstream):
        try:
            return DelayProxy(port, upstream, SLOW_DELAY_S)
        except OSError:
            return None


class Sampler:
    def __init__(self, gateway, backends, every, t_start):
        self.gateway, self.backends, self.every, self.t_start = gateway, backends, every, t_start
        self.samples = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.gone = None

    def sample(self):
        t = time.time()
        fig = proc_figures(self.gateway.proc.pid, {b.port for b in self.backends})
        if fig is None:
            self.gone = self.gone or t
            return
        m = self.gateway.metrics()
        tasks = metric_sum(m, "tollgate_runtime_alive_tasks")
        fig.update(t=round(t - self.t_start, 2), tasks=None if tasks is None else int(tasks))
        self.samples.append(fig)

    def loop(self):
        next_t = time.time()
        while not self.stop.is_set():
            self.sample()
            next_t += self.every
            self.stop.wait(max(0.0, next_t - time.time()))

    def start(self):
        self.thread.start()

    def finish(self):
        self.stop.set()
        self.thread.join(timeout=10)
        self.sample()


# ---------------------------------------------------------------------------------------
# Judging the answers.


def parse_ts(text):
    """RFC 3339 with any number of fraction digits (fromisoformat takes at most six)."""
    head, dot, frac = text.replace("Z", "+00:00").partition(".")
    if dot:
        digits = "".join(itertools.takewhile(str.isdigit, frac))
        frac = digits[:6] + frac[len(digits):]
        head = f"{head}.{frac}"
    return datetime.datetime.fromisoformat(head).timestamp()


def read_gateway_log(path):
    """(lines as dicts with `_t` and `_raw`, lines that are not JSON)."""
    lines, other = [], []
    with open(path, errors="replace") as f:
        for raw in f:
            raw = raw.rstrip("\n")
            if not raw:
                continue
            try:
                d = json.loads(raw)
                d["_t"] = parse_ts(d["timestamp"]) if "timestamp" in d else None
                d["_raw"] = raw
                lines.append(d)
            except (ValueError, TypeError):
                other.append(raw)
    return lines, other


class Windows:
    """When each fault was in effect, from the events."""

    def __init__(self, events, backends, deadline):
        self.backend = collections.defaultdict(list)  # addr -> [(from, to, cause)]
        self.slow = []  # (from, to, addr)
        self.jwks_down, self.redis_down, self.flood, self.reloads = [], [], [], []
        open_ = {}
        addr = {b.name: b.addr for b in backends}
        for t, fault, what, d in sorted(events, key=lambda e: e[0]):
            if fault == "backend_kill" and what == "killed":
                open_[("kill", d["backend"])] = t
            elif fault == "backend_kill" and what == "restarted":
                start = open_.pop(("kill", d["backend"]))
                self.backend[addr[d["backend"]]].append((start, t + SETTLE_S, "backend killed"))
            elif fault == "slow_backend" and what.startswith("backend swapped"):
                open_[("swap", d["backend"])] = t
            elif fault == "slow_backend" and what == "slow":
                start = open_.pop(("swap", d["backend"]))
                self.backend[addr[d["backend"]]].append(
                    (start, t + SETTLE_S, "backend swapped for the slow window")
                )
                open_[("slow", d["backend"])] = t
            elif fault == "slow_backend" and what == "proxy stopped":
                start = open_.pop(("slow", d["backend"]))
                self.slow.append((start, t, addr[d["backend"]]))
                open_[("unswap", d["backend"])] = t
            elif fault == "slow_backend" and what == "backend restarted":
                start = open_.pop(("unswap", d["backend"]))
                self.backend[addr[d["backend"]]].append(
                    (start, t + SETTLE_S, "backend swapped back after the slow window")
                )
            elif fault == "jwks_outage":
                if what == "down":
                    open_["jwks"] = t
                else:
                    self.jwks_down.append((open_.pop("jwks"), t))
            elif fault == "redis_outage":
                if what == "stopped":
                    open_["redis"] = t
                else:
                    self.redis_down.append((open_.pop("redis"), t))
            elif fault == "flood":
                if what == "burst on":
                    open_["flood"] = t
                else:
                    self.flood.append((open_.pop("flood"), t))
            elif fault == "reload":
                self.reloads.append(t)
        # Whatever was still open at the end lasts to the end.
        for key, start in open_.items():
            if key in ("jwks",):
                self.jwks_down.append((start, deadline + 60))
            elif key == "redis":
                self.redis_down.append((start, deadline + 60))
            elif key == "flood":
                self.flood.append((start, deadline + 60))
            elif isinstance(key, tuple):
                kind, name = key
                if kind == "slow":
                    self.slow.append((start, deadline + 60, addr[name]))
                else:
                    self.backend[addr[name]].append((start, deadline + 60, f"backend {kind}"))

    def backend_cause(self, addr, t0, t1):
        for start, end, cause in self.backend.get(addr, []):
            if start - 0.05 <= t1 and t0 <= end:
                return cause
        return None

    def slow_cause(self, addr, t0, t1):
        for start, end, a in self.slow:
            if a == addr and start - 0.05 <= t1 and t0 <= end + READ_TIMEOUT_S + 0.5:
                return "slow backend: no answer within read_timeout"
        return None

    def any_backend(self, t, addrs=None):
        for addr, spans in self.backend.items():
            if addrs is None or addr in addrs:
                for start, end, cause in spans:
                    if start - 0.5 <= t <= end + 1.0:
                        return cause
        for start, end, addr in self.slow:
            if (addrs is None or addr in addrs) and start - 0.5 <= t <= end + READ_TIMEOUT_S + 1.0:
                return "slow backend"
        return None


def in_spans(t, spans, before=0.5, after=1.0):
    return any(s - before <= t <= e + after for s, e in spans)


def judge(rec, access, windows, previous):
    """('ok', None) | ('explained', cause) | ('unexplained', why) for one answer; `previous`
    is the request before it on the same client connection, if any."""
    k, s = rec.kind, rec.status
    if rec.problem:
        return "unexplained", rec.problem
    if s is None:
        why = f"no answer ({rec.error})"
        if (
            previous is not None
            and rec.proto == "h1"
            and previous.status is not None
            and previous.status >= 500
            and not previous.closes
            and "disconnected without sending a response" in (rec.error or "")
        ):
            # The gateway closed the kept-alive connection after an error answer that had
            # not said `Connection: close`: the client, as RFC 9112 allows, sent this
            # request on it. Not a consequence of the fault: the gateway's framing.
            why += (
                f"; the connection was closed after the previous answer on it, soak-{previous.n} "
                f"{previous.status}, which did not say Connection: close (gateway bug)"
            )
        return "unexplained", why
    if k in ("valid", "over_quota"):
        if s == 200:
            return "ok", None
        if k == "over_quota" and s == 429 and rec.error == "rate_limited":
            return "ok", None
        if s in (502, 504):
            line = access.get(rec.n)
            if line is None:
                return "unexplained", f"{s} with no access log line"
            addr = line.get("backend") or ""
            if s == 502:
                cause = windows.backend_cause(addr, rec.t0, rec.t1)
                if cause is None and windows.slow_cause(addr, rec.t0, rec.t1):
                    cause = "slow backend: connection closed while slow"
            else:
                cause = windows.slow_cause(addr, rec.t0, rec.t1)
            if cause:
                return "explained", f"{s} {cause}"
            return "unexplained", f"{s} {rec.error} from backend {addr or '(none)'} outside any fault window"
        what = "valid token refused" if s in (401, 403, 429) else "unexpected answer"
        return "unexplained", f"{what}: {s} {rec.error}/{rec.reason}"
    if k == "expired":
        if s == 401 and rec.reason == "expired":
            return "ok", None
        return "unexplained", f"expired token answered {s} {rec.error}/{rec.reason}"
    if k == "forged":
        if s == 401 and rec.reason == "signature":
            return "ok", None
        return "unexplained", f"forged token answered {s} {rec.error}/{rec.reason}"
    if k == "flood":
        if s == 401 and rec.reason == "signature":
            return "ok", None
        if s == 429 and rec.error == "too_many_failed_attempts":
            return "ok", None
        return "unexplained", f"flood answered {s} {rec.error}/{rec.reason}"
    return "unexplained", f"unknown kind {k}"


# ERROR lines a fault explains: (what the message says, which fault's window it must fall
# in). Anything else is listed as unattributed and fails the soak.
ERROR_RULES = [
    # Pingora's line for a request it could not proxy: the request's own verdict decides
    # (below); without a request id, a backend must have been disrupted.
    ("Fail to proxy: Upstream", "backend"),
    ("becomes unhealthy", "backend"),
    ("jwks", "jwks"),
    ("config reload refused", "jwks"),
    ("redis", "redis"),
]


# What is known about ERROR lines that no fault explains: shown next to them in the report,
# they still fail the soak.
ERROR_NOTES = {
    "failed to acquire reusable stream": (
        "pingora-core 0.9.1 connectors/mod.rs:293: `reused_stream` waits for the idle watcher's "
        "lock, then `Arc::try_unwrap`; tokio's OwnedMutexGuard releases the lock before it drops "
        "its Arc, so on a multi-threaded runtime the unwrap can lose that race. The request goes "
        "on over a new connection; the line is logged at ERROR all the same."
    ),
}


def error_note(raw):
    return next((note for pattern, note in ERROR_NOTES.items() if pattern in raw), None)


def attribute_error_line(line, windows, verdicts, backends):
    """The fault an ERROR line is a consequence of, or None."""
    message = line.get("message", "")
    t = line["_t"]
    if "soak-" in message:
        digits = "".join(itertools.takewhile(str.isdigit, message.split("soak-", 1)[1]))
        verdict = verdicts.get(int(digits)) if digits else None
        # A request's line goes with the request: explained with it, or listed with it.
        return verdict[1] if verdict and verdict[0] == "explained" else None
    if t is None:
        return None
    addrs = {b.addr for b in backends if b.addr in message} or None
    for pattern, fault in ERROR_RULES:
        if pattern.lower() not in message.lower():
            continue
        if fault == "backend":
            cause = windows.any_backend(t, addrs)
            if cause:
                return cause
        elif fault == "jwks" and in_spans(t, windows.jwks_down, after=35):
            # A reload that starts while the JWKS server is down waits up to 30 s for keys.
            return "JWKS server down"
        elif fault == "redis" and in_spans(t, windows.redis_down, after=5):
            return "Redis stopped"
    return None


# ---------------------------------------------------------------------------------------
# Figures and reports.


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def flatness(samples, field, first, last, share, slack):
    a = [x[field] for x in samples if first[0] <= x["t"] <= first[1] and x[field] is not None]
    b = [x[field] for x in samples if last[0] <= x["t"] <= last[1] and x[field] is not None]
    if not a or not b:
        return {"field": field, "first": None, "last": None, "limit": None, "ok": None,
                "note": "no samples (metric absent)" if field == "tasks" else "no samples"}
    m1, m2 = statistics.median(a), statistics.median(b)
    limit = m1 * (1 + share) + slack
    return {
        "field": field,
        "first": m1,
        "last": m2,
        "limit": round(limit, 1),
        "growth_pct": round((m2 / m1 - 1) * 100, 1) if m1 else None,
        "ok": m2 <= limit,
        "first_window": first,
        "last_window": last,
        "samples": [len(a), len(b)],
    }


def svg_plot(series, windows_rel, duration, path):
    """Throughput, p99 latency, RSS and FDs over time, fault windows shaded: plain SVG."""
    W, left, right, ph, gap, top = 960, 70, 20, 150, 42, 72
    panels = [
        ("answers/s: main load (line), flood from 127.0.0.2 (dashed)",
         [(series["throughput"], "#1f77b4", ""), (series["flood_throughput"], "#1f77b4", "4 3")]),
        ("p99 latency of the main load (ms)", [(series["p99_ms"], "#d62728", "")]),
        ("gateway RSS (MiB)", [(series["rss_mib"], "#2ca02c", "")]),
        ("gateway open FDs", [(series["fds"], "#9467bd", "")]),
    ]
    H = top + len(panels) * (ph + gap) + 20
    pw = W - left - right
    colors = {
        "backend killed": "#ff7f0e",
        "slow backend": "#8c564b",
        "JWKS down": "#e377c2",
        "Redis down": "#7f7f7f",
        "flood": "#bcbd22",
    }
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">tollgate soak: {duration:.0f} s; '
        "fault windows shaded, reloads ticked</text>",
    ]
    lx = left
    for name, c in colors.items():
        out.append(f'<rect x="{lx}" y="32" width="12" height="10" fill="{c}" opacity="0.35"/>')
        out.append(f'<text x="{lx + 16}" y="41">{name}</text>')
        lx += 30 + 7 * len(name)
    out.append(f'<line x1="{lx}" y1="32" x2="{lx}" y2="42" stroke="#17becf" stroke-width="2"/>')
    out.append(f'<text x="{lx + 6}" y="41">reload (SIGHUP)</text>')

    def x(t):
        return left + pw * max(0.0, min(t, duration)) / duration

    for i, (label, lines) in enumerate(panels):
        y0 = top + i * (ph + gap)
        vals = [v for pts, _, _ in lines for _, v in pts if v is not None]
        vmax = max(vals) * 1.1 if vals and max(vals) > 0 else 1.0
        for name, spans in windows_rel.items():
            if name == "reload":
                for t in spans:
                    out.append(f'<line x1="{x(t):.1f}" y1="{y0}" x2="{x(t):.1f}" y2="{y0 + 8}" '
                               'stroke="#17becf" stroke-width="2"/>')
                continue
            for s, e in spans:
                out.append(
                    f'<rect x="{x(s):.1f}" y="{y0}" width="{max(1.0, x(e) - x(s)):.1f}" '
                    f'height="{ph}" fill="{colors[name]}" opacity="0.25"/>'
                )
        out.append(f'<rect x="{left}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        for frac in (0, 0.5, 1):
            yy = y0 + ph - ph * frac
            out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{vmax * frac:.4g}</text>')
        out.append(f'<text x="{left}" y="{y0 - 6}" font-size="12">{label}</text>')
        for pts, color, dash in lines:
            line = " ".join(
                f"{x(t):.1f},{y0 + ph - ph * v / vmax:.1f}" for t, v in pts if v is not None
            )
            if line:
                extra = f' stroke-dasharray="{dash}"' if dash else ""
                out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5"{extra} '
                           f'points="{line}"/>')
    ybase = top + len(panels) * (ph + gap) - gap + 16
    for frac in (0, 0.25, 0.5, 0.75, 1):
        t = duration * frac
        out.append(f'<text x="{x(t):.1f}" y="{ybase}" text-anchor="middle">{t:.0f} s</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def run(args):
    out = Path(args.out).resolve()
    work = Path(args.work).resolve()
    binary = str(Path(args.bin).resolve())
    if not os.access(binary, os.X_OK):
        raise SoakError(f"{binary} is not an executable (build it first)")
    if not shutil.which("redis-server"):
        raise SoakError("redis-server is not installed (make deps-test installs it)")
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
    except OSError as e:
        raise SoakError(f"cannot bind 127.0.0.2 for the flood: {e}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    seed = args.seed if args.seed is not None else int(time.time())
    sched = schedule(args.duration)
    log(f"schedule: {json.dumps(sched)}")

    procs = Procs(work)
    jwks = None
    try:
        ca = make_pki(work)
        tokens = Tokens(sched["token_ttl"])
        key = es256_key()
        jwks = JwksServer()
        jwks.add("soak-0", key)
        tokens.use("soak-0", key)
        jwks.start()
        redis = Redis(procs, work)
        redis.start()
        backends = [Backend(procs, binary, "echo-a"), Backend(procs, binary, "echo-b")]
        for b in backends:
            b.start()
        bad_rate = int(args.rate * (KIND_WEIGHTS["expired"] + KIND_WEIGHTS["forged"]))
        gateway = Gateway(procs, binary, work, {
            "issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": jwks.url,
            "jwks_interval": int(JWKS_INTERVAL_S), "redis_port": redis.port,
            "backend_a": backends[0].addr, "backend_b": backends[1].addr,
            "read_timeout": int(READ_TIMEOUT_S), "bad_rate": bad_rate,
        })
        gateway.start()
        log(f"gateway pid {gateway.proc.pid} ready: https 127.0.0.1:{gateway.https_port}, "
            f"metrics :{gateway.metrics_port}; backends {backends[0].addr} {backends[1].addr}; "
            f"JWKS :{jwks.port}; Redis :{redis.port}")
        # Both backends healthy before the load starts.
        wait_until("both backends healthy", 20, lambda: metric_sum(
            gateway.metrics(), "tollgate_upstream_backend_healthy") == 2.0, interval=0.2)

        t_start = time.time()
        deadline = t_start + args.duration
        load = Load(args, ca, gateway, tokens, deadline, seed)
        sampler = Sampler(gateway, backends, sched["sample_every"], t_start)
        faults = Faults(sched, t_start, deadline, procs, binary, gateway, backends, jwks, redis,
                        tokens, load)
        sampler.start()
        load.start()
        faults.start()
        log(f"load and faults started for {args.duration:.0f} s (seed {seed})")
        while time.time() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.time())))
            if gateway.proc.poll() is not None:
                log(f"the gateway exited with {gateway.proc.returncode} during the soak")
                break
        load.finish()
        faults.finish()
        sampler.finish()
        end_metrics = gateway.metrics()
        gateway_exit = gateway.proc.poll()
        if gateway_exit is None:
            procs.kill(gateway.proc, signal.SIGINT)
        log(f"load done: {len(load.records)} requests; judging")
    finally:
        procs.kill_all()
        if jwks:
            jwks.stop()

    return report(args, out, work, sched, seed, t_start, deadline, load, faults, sampler,
                  backends, gateway, end_metrics, gateway_exit)


def report(args, out, work, sched, seed, t_start, deadline, load, faults, sampler, backends,
           gateway, end_metrics, gateway_exit):
    windows = Windows(faults.events, backends, deadline)
    lines, non_json = read_gateway_log(gateway.out)
    stderr_text = gateway.err.read_text(errors="replace") if gateway.err.exists() else ""
    access = {}
    by_rid = collections.defaultdict(list)
    for d in lines:
        rid = d.get("request_id") or ""
        if rid.startswith("soak-") and rid[5:].isdigit():
            n = int(rid[5:])
            if d.get("target") == "access":
                access[n] = d
            by_rid[n].append(d["_raw"])
        elif "soak-" in d.get("message", ""):
            tail = d["message"].split("soak-", 1)[1]
            digits = "".join(itertools.takewhile(str.isdigit, tail))
            if digits:
                by_rid[int(digits)].append(d["_raw"])

    records = sorted(load.records, key=lambda r: r.n)
    with open(work / "requests.jsonl", "w") as f:  # every request, for a closer look
        for r in records:
            f.write(json.dumps(r._asdict()) + "\n")
    verdicts = {}
    counts = collections.defaultdict(collections.Counter)  # (kind, proto) -> status
    explained = collections.Counter()
    explained_by_kind = collections.Counter()
    explained_ids = collections.defaultdict(list)
    unexplained = []
    last_on_conn = {}
    for r in records:
        previous = last_on_conn.get(r.conn)
        verdict, cause = judge(r, access, windows, previous)
        last_on_conn[r.conn] = r
        verdicts[r.n] = (verdict, cause)
        status = str(r.status) if r.status is not None else "no answer"
        counts[(r.kind, r.proto)][status] += 1
        if verdict == "explained":
            explained[cause] += 1
            explained_by_kind[(r.kind, cause)] += 1
            explained_ids[cause].append(r.n)
        elif verdict == "unexplained":
            unexplained.append({
                "id": f"soak-{r.n}", "kind": r.kind, "proto": r.proto, "conn": r.conn,
                "t": round(r.t0 - t_start, 3), "latency_ms": round((r.t1 - r.t0) * 1e3, 1),
                "status": r.status, "error": r.error, "reason": r.reason, "cause": cause,
                "log": by_rid.get(r.n, [])[:4],
            })
            if r.status is None and previous is not None:
                # No answer: what came before on the same connection is the first clue.
                unexplained[-1]["previous"] = {
                    "id": f"soak-{previous.n}", "status": previous.status,
                    "said_connection_close": previous.closes,
                    "log": by_rid.get(previous.n, [])[:4],
                }

    # ERROR lines, each attributed to a fault or listed.
    error_lines, attributed, unattributed = [], collections.Counter(), []
    unattributed_context = []
    for d in lines:
        if d.get("level") != "ERROR":
            continue
        error_lines.append(d)
        cause = attribute_error_line(d, windows, verdicts, backends)
        if cause:
            attributed[cause] += 1
        else:
            unattributed.append(d["_raw"])
            t = d["_t"]
            near = [
                f"{e_t - t_start:.2f}s {f} {what}" for e_t, f, what, _ in sorted(faults.events, key=lambda e: e[0])
                if t is not None and abs(e_t - t) <= 3.0
            ]
            unattributed_context.append(
                {"t": None if t is None else round(t - t_start, 3), "events_within_3s": near}
            )
    warn_messages = collections.Counter(
        d.get("message", "")[:120] for d in lines if d.get("level") == "WARN"
    )
    error_messages = collections.Counter(d.get("message", "")[:120] for d in error_lines)
    panic_lines = [
        x for x in itertools.chain((d["_raw"] for d in lines), non_json, stderr_text.splitlines())
        if "panicked" in x or "panic" in x.lower() and "RUST_BACKTRACE" in x
    ]

    # Time series, per sampling interval.
    every = sched["sample_every"]
    nb = int(args.duration // every)  # whole intervals only
    buckets = [[] for _ in range(nb)]
    flood = [0] * nb
    for r in records:
        if r.status is not None:
            i = int((r.t1 - t_start) // every)
            if 0 <= i < nb:
                if r.kind == "flood":
                    flood[i] += 1
                else:
                    buckets[i].append((r.t1 - r.t0) * 1e3)
    series = {
        "throughput": [(i * every + every / 2, len(b) / every) for i, b in enumerate(buckets)],
        "flood_throughput": [(i * every + every / 2, f / every) for i, f in enumerate(flood)],
        "p99_ms": [(i * every + every / 2, percentile(b, 99)) for i, b in enumerate(buckets)],
        "rss_mib": [(x["t"], x["rss_kib"] / 1024) for x in sampler.samples],
        "fds": [(x["t"], x["fds"]) for x in sampler.samples],
    }
    def rel(spans):
        return [(s - t_start, e - t_start) for s, e in spans]

    windows_rel = {
        "backend killed": [
            (s - t_start, e - t_start)
            for spans in windows.backend.values() for s, e, c in spans if c == "backend killed"
        ],
        "slow backend": [(s - t_start, e - t_start) for s, e, _ in windows.slow],
        "JWKS down": rel(windows.jwks_down),
        "Redis down": rel(windows.redis_down),
        "flood": rel(windows.flood),
        "reload": [t - t_start for t in windows.reloads],
    }
    svg_plot(series, windows_rel, args.duration, out / "soak.svg")

    # Flatness after warm-up.
    w, c = sched["warmup"], sched["compare"]
    # The final sample, taken after the load stopped, is left out: idle figures would hide growth.
    first, last = (w, w + c), (args.duration - c, args.duration)
    flat = {
        f: flatness(sampler.samples, f, first, last, FLAT_SHARE, FLAT_SLACK[f])
        for f in ("rss_kib", "fds", "tasks")
    }
    tasks_present = any(x["tasks"] is not None for x in sampler.samples)

    # Every fault must have happened, and shown in the gateway.
    ev = collections.Counter((f, what) for _, f, what, _ in faults.events)
    m = end_metrics
    evidence = {
        "backend kills": ev[("backend_kill", "killed")],
        "backend restarts": ev[("backend_kill", "restarted")],
        "keys published": ev[("jwks_rotation", "new key published")],
        "load switched to a new key": ev[("jwks_rotation", "load switched to the new key")],
        "old keys removed": ev[("jwks_rotation", "old key removed")],
        "JWKS outages": ev[("jwks_outage", "down")],
        "JWKS fetches failed (gateway)": metric_sum(m, "tollgate_jwks_fetch_total", result="error"),
        "JWKS fetches succeeded (gateway)": metric_sum(m, "tollgate_jwks_fetch_total", result="success"),
        "SIGHUPs sent": ev[("reload", "SIGHUP")],
        "reloads succeeded (gateway)": metric_sum(m, "tollgate_config_reloads_total", result="success"),
        "reloads refused (gateway)": metric_sum(m, "tollgate_config_reloads_total", result="error"),
        "Redis outages": ev[("redis_outage", "stopped")],
        "rate-limit store errors (gateway)": metric_sum(m, "tollgate_ratelimit_store_errors_total"),
        "flood bursts": ev[("flood", "burst on")],
        "flood answers 429 too_many_failed_attempts": sum(
            1 for r in records if r.kind == "flood" and r.error == "too_many_failed_attempts"),
        "slow windows": ev[("slow_backend", "slow")],
        "health checks failed (gateway)": metric_sum(
            m, "tollgate_upstream_health_checks_total", result="fail"),
        "backend connect errors (gateway)": metric_sum(
            m, "tollgate_upstream_requests_total", outcome="connect_error"),
        "backend timeouts (gateway)": metric_sum(
            m, "tollgate_upstream_requests_total", outcome="timeout"),
    }
    not_exercised = [
        name for name, v in (
            ("backend kill", evidence["backend kills"] and evidence["backend restarts"]),
            ("JWKS rotation (switch and removal)",
             evidence["load switched to a new key"] and evidence["old keys removed"]),
            ("JWKS outage seen by the gateway",
             evidence["JWKS outages"] and evidence["JWKS fetches failed (gateway)"]),
            ("config reload", evidence["reloads succeeded (gateway)"]),
            ("Redis outage seen by the gateway",
             evidence["Redis outages"] and evidence["rate-limit store errors (gateway)"]),
            ("forged-token flood", evidence["flood bursts"]),
            ("slow backend", evidence["slow windows"]),
        ) if not v
    ]

    valid_refused = sum(
        1 for r in records if r.kind == "valid" and r.status in (401, 403, 429)
    )
    latency = {}
    for proto in ("h1", "h2"):
        lat = [(r.t1 - r.t0) * 1e3 for r in records if r.proto == proto and r.status is not None
               and r.kind != "flood"]
        latency[proto] = {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
                          "max_ms": max(lat) if lat else None}

    checks = {
        "no unexplained answer": not unexplained,
        "no valid token refused": valid_refused == 0,
        "RSS flat after warm-up": flat["rss_kib"]["ok"] is not False,
        "FDs flat after warm-up": flat["fds"]["ok"] is not False,
        "tasks flat after warm-up": flat["tasks"]["ok"] is not False,
        "no panic": not panic_lines,
        "no unattributed ERROR line": not unattributed,
        "gateway ran to the end": gateway_exit is None and sampler.gone is None,
        "every fault exercised": not not_exercised,
        "every fault could be applied": not faults.errors,
    }
    passed = all(checks.values())

    summary = {
        "passed": passed,
        "checks": checks,
        "duration_s": args.duration,
        "rate_target": args.rate,
        "seed": seed,
        "binary": args.bin,
        "t_start_unix": round(t_start, 3),
        "schedule": sched,
        "requests": {
            "sent": len(records),
            "answered": sum(1 for r in records if r.status is not None),
            "by_kind_proto_status": {
                f"{k}/{p}": dict(sorted(v.items())) for (k, p), v in sorted(counts.items())
            },
        },
        "latency": latency,
        "explained": dict(explained),
        "explained_by_kind": {f"{k}: {c}": v for (k, c), v in explained_by_kind.items()},
        "explained_ids": {c: [f"soak-{n}" for n in ids] for c, ids in explained_ids.items()},
        "unexplained": unexplained,
        "valid_refused": valid_refused,
        "error_lines": {"total": len(error_lines), "attributed": dict(attributed),
                        "unattributed": unattributed, "unattributed_context": unattributed_context,
                        "by_message": dict(error_messages)},
        "warn_lines_by_message": dict(warn_messages),
        "panics": panic_lines[:20],
        "flatness": flat,
        "tasks_metric_present": tasks_present,
        "fault_evidence": evidence,
        "not_exercised": not_exercised,
        "fault_errors": faults.errors,
        "events": [
            {"t": round(t - t_start, 3), "fault": f, "what": w, **d}
            for t, f, w, d in sorted(faults.events, key=lambda e: e[0])
        ],
        "samples": sampler.samples,
        "series": {k: [[round(t, 2), None if v is None else round(v, 3)] for t, v in pts]
                   for k, pts in series.items()},
    }
    (out / "soak.json").write_text(json.dumps(summary, indent=1) + "\n")
    md = soak_md(summary, by_rid, explained_ids)
    (out / "SOAK.md").write_text(md)

    print()
    print(f"soak {'PASSED' if passed else 'FAILED'} ({args.duration:.0f} s, "
          f"{len(records)} requests; {out / 'SOAK.md'})")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    for name in ("rss_kib", "fds", "tasks"):
        f = flat[name]
        if f["first"] is None:
            print(f"       {name}: {f['note']}")
        else:
            print(f"       {name}: median {f['first']:.0f} (t {first[0]:.0f}-{first[1]:.0f} s) -> "
                  f"{f['last']:.0f} (t {last[0]:.0f}-{args.duration:.0f} s), limit {f['limit']:.0f}")
    for cause, n in sorted(explained.items()):
        print(f"       explained: {n} x {cause}")
    for u in unexplained[:20]:
        print(f"  unexplained {u['id']} ({u['kind']}/{u['proto']} on {u['conn']} at {u['t']} s): "
              f"{u['cause']}")
        for raw in u["log"][:2]:
            print(f"      {raw[:400]}")
    if len(unexplained) > 20:
        print(f"  ... {len(unexplained) - 20} more in SOAK.md")
    for raw, ctx in list(zip(unattributed, unattributed_context))[:20]:
        print(f"  unattributed ERROR at {ctx['t']} s (faults within 3 s: "
              f"{', '.join(ctx['events_within_3s']) or 'none'}): {raw[:400]}")
        if error_note(raw):
            print(f"      known: {error_note(raw)}")
    for p in panic_lines[:5]:
        print(f"  panic: {p[:400]}")
    for name in not_exercised:
        print(f"  not exercised: {name}")
    for e in faults.errors:
        print(f"  fault error: {e}")
    return 0 if passed else 1


def soak_md(s, by_rid, explained_ids):
    L = []
    sched = s["schedule"]
    L.append("# Soak test with injected faults\n")
    L.append(f"**{'PASSED' if s['passed'] else 'FAILED'}**: {s['duration_s']:.0f} s against "
             f"`{s['binary']}`, target {s['rate_target']:.0f} requests/s plus flood bursts, "
             f"seed {s['seed']}. Written by `loadtest/soak.py`; every figure is in `soak.json`, "
             "the plot in `soak.svg`.\n")
    L.append("| check | result |\n|---|---|")
    for name, ok in s["checks"].items():
        L.append(f"| {name} | {'pass' if ok else '**FAIL**'} |")
    L.append("")
    L.append("## Schedule\n")
    if sched["scale"] < 1:
        L.append(f"A short run: the issue's periods (for 600 s) are scaled by {sched['scale']}, "
                 "each with a floor under which the fault would no longer show what it is for.\n")
    L.append(
        f"- backend kill (SIGKILL, alternately echo-a and echo-b): every {sched['kill_every']} s, "
        f"down {sched['kill_down']} s, then restarted on the same port; a kill that would overlap "
        "the slow window is skipped\n"
        f"- JWKS rotation: a key added every {sched['rotate_every']} s; the load signs with it once "
        f"the gateway has fetched it; the old key leaves {sched['token_ttl']} s + 2 s later "
        f"(token lifetime {sched['token_ttl']} s)\n"
        f"- JWKS server down: at {sched['jwks_down'][0]} s for {sched['jwks_down'][1]} s\n"
        f"- config reload (SIGHUP, a marker route renamed): every {sched['reload_every']} s\n"
        f"- Redis stopped: at {sched['redis_down'][0]} s for {sched['redis_down'][1]} s, restarted "
        "on the same port (`on_store_error: local`)\n"
        f"- forged-token flood from 127.0.0.2: {sched['flood_burst']} s bursts every "
        f"{sched['flood_every']} s\n"
        f"- slow backend (echo-b behind a proxy adding {SLOW_DELAY_S} s to each answer; "
        f"read_timeout {READ_TIMEOUT_S:.0f} s): at {sched['slow'][0]} s for {sched['slow'][1]} s\n"
        f"- samples every {sched['sample_every']} s; warm-up {sched['warmup']} s\n"
    )
    L.append("## Requests\n")
    req = s["requests"]
    L.append(f"{req['sent']} sent, {req['answered']} answered. Latency (all but the flood): "
             + "; ".join(
                 f"{p} p50 {v['p50_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms, max {v['max_ms']:.0f} ms"
                 for p, v in s["latency"].items() if v["p50_ms"] is not None) + ".\n")
    statuses = sorted({st for v in req["by_kind_proto_status"].values() for st in v})
    L.append("| kind/protocol | " + " | ".join(statuses) + " |")
    L.append("|---|" + "---|" * len(statuses))
    for kp, v in req["by_kind_proto_status"].items():
        L.append(f"| {kp} | " + " | ".join(str(v.get(st, "")) for st in statuses) + " |")
    L.append("\nExpected: valid → 200; expired → 401 `expired`; forged → 401 `signature`; "
             "over_quota → 200 or 429 `rate_limited`; flood (127.0.0.2) → 401 `signature` or 429 "
             "`too_many_failed_attempts`. A 502 or 504 is explained only when the backend the "
             "gateway's log names was down, being swapped or slow while the request ran.\n")
    L.append("## Explained failures\n")
    if not s["explained"]:
        L.append("None.\n")
    else:
        L.append("| cause | count |\n|---|---|")
        for cause, n in sorted(s["explained_by_kind"].items()):
            L.append(f"| {cause} | {n} |")
        L.append("")
        for cause, ids in sorted(explained_ids.items()):
            n = ids[0]
            L.append(f"Example of `{cause}`: soak-{n}")
            for raw in by_rid.get(n, [])[:2]:
                L.append(f"\n```\n{raw}\n```")
            L.append("")
    L.append("## Unexplained answers\n")
    if not s["unexplained"]:
        L.append("None.")
    for u in s["unexplained"]:
        L.append(f"- `{u['id']}` {u['kind']}/{u['proto']} on connection {u['conn']} at {u['t']} s, "
                 f"{u['latency_ms']} ms: {u['cause']}")
        for raw in u["log"]:
            L.append(f"\n  ```\n  {raw}\n  ```")
        prev = u.get("previous")
        if prev:
            L.append(f"\n  The request before it on the same connection, `{prev['id']}`: "
                     f"{prev['status']}, `Connection: close` "
                     f"{'announced' if prev['said_connection_close'] else 'not announced'}.")
            for raw in prev["log"]:
                L.append(f"\n  ```\n  {raw}\n  ```")
    L.append("")
    L.append("## Gateway process\n")
    L.append("Medians of the first window after warm-up and of the last window; the last may "
             f"exceed the first by {FLAT_SHARE:.0%} (plus {FLAT_SLACK['fds']} descriptors, "
             f"{FLAT_SLACK['tasks']} tasks).\n")
    L.append("| figure | first window | last window | limit | growth | result |\n|---|---|---|---|---|---|")
    for name, f in s["flatness"].items():
        if f["first"] is None:
            L.append(f"| {name} | - | - | - | - | {f['note']} |")
        else:
            L.append(f"| {name} | {f['first']:.0f} | {f['last']:.0f} | {f['limit']:.0f} | "
                     f"{f['growth_pct']} % | {'pass' if f['ok'] else '**FAIL**'} |")
    smp = s["samples"]
    if smp:
        a, b = smp[0], smp[-1]
        L.append(f"\nBefore the load → after it: RSS {a['rss_kib'] / 1024:.1f} → {b['rss_kib'] / 1024:.1f} MiB, "
                 f"FDs {a['fds']} → {b['fds']}, tasks {a['tasks']} → {b['tasks']}, threads "
                 f"{a['threads']} → {b['threads']}, upstream connections {a['upstream_conns']} → "
                 f"{b['upstream_conns']} (max {max(x['upstream_conns'] for x in smp)}).")
    if not s["tasks_metric_present"]:
        L.append("\n`tollgate_runtime_alive_tasks` is absent from this binary: tasks recorded as null.")
    L.append("")
    L.append("## Faults as the gateway saw them\n")
    L.append("| what | count |\n|---|---|")
    for k, v in s["fault_evidence"].items():
        L.append(f"| {k} | {'-' if v is None else int(v)} |")
    L.append("")
    e = s["error_lines"]
    L.append("## ERROR lines\n")
    L.append(f"{e['total']} in all. Attributed to a fault:\n")
    for cause, n in sorted(e["attributed"].items()):
        L.append(f"- {n} x {cause}")
    if e["by_message"]:
        L.append("\nBy message:\n")
        for msg, n in sorted(e["by_message"].items(), key=lambda x: -x[1]):
            L.append(f"- {n} x `{msg}`")
    L.append("\nUnattributed:" + (" none." if not e["unattributed"] else ""))
    for raw, ctx in zip(e["unattributed"], e["unattributed_context"]):
        L.append(f"\nAt {ctx['t']} s; faults within 3 s: "
                 f"{', '.join(ctx['events_within_3s']) or 'none'}.\n\n```\n{raw}\n```")
        if error_note(raw):
            L.append(f"\nKnown: {error_note(raw)}")
    if s["warn_lines_by_message"]:
        L.append("\n## WARN lines\n")
        L.append("| count | message (first 120 characters) |\n|---|---|")
        for msg, n in sorted(s["warn_lines_by_message"].items(), key=lambda x: -x[1])[:15]:
            L.append(f"| {n} | `{msg}` |")
    if s["panics"]:
        L.append("\n## Panics\n")
        for p in s["panics"]:
            L.append(f"```\n{p}\n```")
    L.append("\n![soak](soak.svg)\n")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(ROOT / "target/debug/tollgate"))
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--rate", type=float, default=200.0,
                    help="main load, requests/s over all workers (default 200); the flood comes on top")
    ap.add_argument("--out", default=str(ROOT / "target/soak"))
    ap.add_argument("--work", default=str(ROOT / "target/soak-work"),
                    help="config, certificates and process logs (recreated each run)")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    if args.duration < 60:
        ap.error("--duration must be at least 60 s: shorter runs cannot fit every fault")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        sys.exit(run(args))
    except SoakError as e:
        print(f"soak could not run: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("soak interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
