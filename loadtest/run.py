#!/usr/bin/env python3
"""tollgate's comparative load test (standard library only; the `dpop` scenario has its proofs
signed by loadtest/dpop_proofs.py under Debian's Python, which has python3-cryptography).

`make loadtest` (or `QUICK=1 make loadtest`) runs this. Everything listens on 127.0.0.1 only;
every load loop is a time-bounded `wrk` run. See loadtest/README.md for the design.

Steps: generate an ES256 key pair and tokens for this run; start the upstream (nginx, CPU 1);
for each scenario, run the targets in interleaved rounds (each proxy pinned to CPU 0 with one
worker, restarted for every run so no run inherits another's caches or limiter state; wrk
pinned to CPU 1), after checking each target's verdicts; write loadtest/results/RESULTS.md,
loadtest/results/chart.svg and the block between the loadtest markers of docs/performance.md.

Exit status: 0 when it measured (goals are reported, never asserted), 1 when it could not run.
"""

import argparse
import base64
import datetime
import glob
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time

LT = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(LT)
WORK = os.path.join(LT, "work")
RESULTS_DIR = os.path.join(LT, "results")
TEMPLATES = os.path.join(LT, "templates")
BIN = os.path.join(ROOT, "target", "release", "tollgate")
LUA = os.path.join(LT, "tokens.lua")
DPOP_PROOFS = os.path.join(LT, "dpop_proofs.py")
# Debian's Python, where `make deps-loadtest` installs python3-cryptography (the `python3`
# that runs this file may be another one, without it).
DEBIAN_PYTHON = "/usr/bin/python3"
README = os.path.join(ROOT, "docs", "performance.md")

ISSUER = "https://issuer.loadtest"
AUDIENCE = "loadtest"
KID = "lt-1"

PROXY_CPU = "0"  # every proxy under test
LOAD_CPU = "1"  # wrk and the upstream nginx
CONNECTIONS = 50

N_REPEAT = 1_000
N_UNIQUE = 200_000
N_FORGED_LINES = 200_000  # 90 % forged, 10 % valid (valid ones from the repeat set)
N_COLD = 20_000
HIGH_RATE = ("100000/s", 100_000, 100_000_000)  # tollgate rate, burst; haproxy per 10 s
LOW_RATE = ("5/s", 10, 50)  # limited: a few requests per second per subject
ROTATE_EVERY_S = 2.0
# The `upstream-token` scenario: the gateway's own issuer and Ed25519 key (kid gw1).
GATEWAY_ISSUER = "https://tollgate.loadtest"
UPSTREAM_TOKEN = "{ audience: billing, ttl: 60s, header: Authorization, claims: [sub] }"
# The `dpop` scenario signs one proof per request it may send before each run: run length ×
# this ceiling on the rate. Each request costs at least an ES256 verification of its proof on
# top of tollgate-open's proxying (~14,000 req/s on the reference machine's core), so 20,000/s
# is out of reach there; a faster machine that runs out fails the run (never replays a proof)
# and says to raise it.
DPOP_MAX_RPS = 20_000
DPOP_MAX_AGE_S = 60  # auth.dpop.max_age, at least; see Lab.start

# The `connections` scenario: 10,000 idle connections, or fewer where the open-file hard
# limit cannot be raised (HAProxy reserves two descriptors per connection it may accept).
import resource as _resource
IDLE_CONNECTIONS = min(10_000, (_resource.getrlimit(_resource.RLIMIT_NOFILE)[1] - 400) // 2)
AUTH_TARGETS = {"haproxy", "tollgate", "tollgate-10k", "tollgate-trace1", "tollgate-trace100"}
# tollgate with `logging.tracing` at this sample ratio, its collector stopped (a loopback port
# nothing listens on): what tracing costs next to `tollgate`, and that it loses no request.
TRACE_TARGETS = {"tollgate-trace1": 0.01, "tollgate-trace100": 1.0}

SCENARIOS = [
    {
        "name": "repeat",
        "title": "repeat: 1,000 subjects, tokens reused",
        # tollgate-trace1/-trace100: tollgate with tracing on, interleaved with it in every
        # round so that their ratio to it is of the same moments.
        "targets": ["direct", "nginx", "haproxy", "tollgate-open", "tollgate", "tollgate-trace1",
                    "tollgate-trace100"],
        "tokens": "repeat.txt",
    },
    {
        "name": "unique",
        "title": "unique: 200,000 pre-minted tokens, each used once per run where the run is short enough",
        "targets": ["direct", "nginx", "haproxy", "tollgate-open", "tollgate"],
        "tokens": "unique.txt",
    },
    {
        "name": "forged",
        "title": "forged: 90 % structurally valid tokens with a bad signature, 10 % valid",
        "targets": ["haproxy", "tollgate"],
        "tokens": "forged.txt",
        "count": True,
        # Valid and forged requests from different client addresses (X-Forwarded-For from
        # the trusted loopback proxy), so tollgate's per-client failed-auth brake applies.
        "split_clients": True,
    },
    {
        "name": "limited",
        "title": "limited: 5/s per subject (burst 10; HAProxy 50 per 10 s); half the requests from 2 hot subjects, half from 20,000 cold ones",
        "targets": ["haproxy", "tollgate"],
        "tokens": "limited.txt",
        "count": True,
        "low_limit": True,
    },
    {
        "name": "rotate",
        "title": "rotate: repeat tokens while the JWKS file is rewritten every 2 s (HAProxy: n/a, its keys are fixed at start)",
        "targets": ["tollgate"],
        "tokens": "repeat.txt",
        "count": True,
        "rotate": True,
    },
    {
        "name": "https",
        "title": "https: repeat tokens over TLS 1.3 (HTTP/1.1 keep-alive), each proxy terminating TLS with one ECDSA P-256 certificate",
        "targets": ["nginx", "haproxy", "tollgate"],
        "tokens": "repeat.txt",
        "tls": True,
    },
    {
        "name": "connections",
        "title": f"connections: {IDLE_CONNECTIONS:,} idle keep-alive connections, one request each; RSS per connection",
        "targets": ["nginx", "haproxy", "tollgate"],
        "idle": IDLE_CONNECTIONS,
    },
    {
        "name": "routes10k",
        "title": "routes10k: repeat tokens, tollgate with 1 route vs 10,000 routes (requests hit /svc-5000/item)",
        "targets": ["tollgate", "tollgate-10k"],
        "tokens": "repeat.txt",
    },
    {
        "name": "apikey",
        "title": "apikey: 1,000 API keys (type: api_key, X-API-Key) reused, the repeat scenario's route: "
                 "the same policy, per-subject limit and forwarded claim",
        "targets": ["tollgate"],
        "tokens": "apikeys.txt",
        "apikey": True,
    },
    {
        "name": "upstream-token",
        "title": "upstream-token: the repeat scenario's 1,000 caller tokens, the route minting an Ed25519 token for "
                 "the upstream (ttl 60 s, kept per caller for half of it: one signature per caller, then cache hits)",
        "targets": ["tollgate"],
        "tokens": "repeat.txt",
        "upstream_token": True,
    },
    {
        "name": "dpop",
        "title": "dpop: one DPoP-bound access token (RFC 9449), a fresh ES256 proof on every request",
        "targets": ["tollgate"],
        "tokens": "dpop-token.txt",
        "dpop": True,
    },
    {
        "name": "failover",
        "title": "failover: load balancing over three `tollgate echo` backends (no auth); b1 killed (SIGKILL) at 25 % "
                 "of each run and restarted on its port at 60 %, b2 answering 200 ms late from 30 % to 70 %",
        "targets": ["nginx", "haproxy", "tollgate"],
        # Plain requests (no token): this scenario measures balancing, not auth; statuses counted.
        "count": True,
        "failover": True,
    },
]

# The `failover` scenario: runs last at least this long (also in quick mode), so that the
# faults, the proxies' detection (1 s health checks, 5 s ejections) and the recovery fit.
FAILOVER_MIN_S = 20
FAILOVER_SLOW_MS = 200
BACKEND_NAMES = ("b1", "b2", "b3")


def log(msg):
    print(f"[loadtest {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Failure(Exception):
    pass


# --------------------------------------------------------------------------- processes

class Procs:
    """Every process the harness starts, each in its own process group, killed at exit."""

    def __init__(self):
        self.procs = []

    def start(self, name, cmd, env=None, stdout=None, stderr=None, stop_signal=signal.SIGTERM):
        out = open(os.path.join(WORK, "logs", f"{name}.log"), "ab") if stdout is None else stdout
        err = subprocess.STDOUT if stderr is None else stderr
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True,
                             stdin=subprocess.DEVNULL)
        if stdout is None:
            out.close()
        p.lt_name = name
        p.lt_stop_signal = stop_signal
        self.procs.append(p)
        return p

    def stop(self, p, timeout=5.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, getattr(p, "lt_stop_signal", signal.SIGTERM))
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (nginx workers, stragglers).
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(2)
        except subprocess.TimeoutExpired:
            pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p, timeout=3.0)


PROCS = Procs()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_port(used=()):
    """A free port of 127.0.0.1 below the kernel's ephemeral range (ip_local_port_range), picked
    at random for this run. The failover scenario restarts a killed backend on its port; a port
    from the ephemeral range could meanwhile be taken as the source port of some outgoing
    connection (the proxies open many to the other backends) and the restart would fail."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    if low > 4096:
        for _ in range(500):
            port = random.randint(max(1024, low - 16384), low - 1)
            if port in used:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    port = free_port()
    while port in used:
        port = free_port()
    return port


def wait_tcp(port, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Failure(f"{proc.lt_name} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise Failure(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def wait_http_200(port, path, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(f"{proc.lt_name} exited with {proc.returncode} before ready")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise Failure(f"http://127.0.0.1:{port}{path} not 200 after {timeout:.0f} s")


def run_cmd(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def proc_status(pid):
    """VmRSS and VmHWM in KiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if m:
            out[key] = int(m.group(1))
    return out


def tree_rss_kb(pid):
    """VmRSS in KiB of pid and its descendants (nginx's master and workers), or None."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, todo, seen = 0, [pid], False
    while todo:
        p = todo.pop()
        st = proc_status(p)
        if st and "VmRSS" in st:
            total += st["VmRSS"]
            seen = True
        todo += children.get(p, [])
    return total if seen else None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_busy_ticks():
    """user + nice + system ticks of all CPUs (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2]


def own_cpu_ticks(pgids):
    """CPU ticks of the harness (with its reaped children: wrk, openssl) and of every live
    process in the given process groups (the proxy, the upstream)."""
    total = 0
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pgid = int(fields[2])
        if int(d) == me:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        elif pgid in pgids:
            total += int(fields[11]) + int(fields[12])
    return total


class CpuWatch:
    """CPU time used during a run by processes the harness did not start (other builds,
    other tests): large values mean the run's numbers are disturbed."""

    def __init__(self, pgids):
        self.pgids = set(pgids)
        self.t0 = time.monotonic()
        self.busy0 = cpu_busy_ticks()
        self.own0 = own_cpu_ticks(self.pgids)

    def foreign_pct(self):
        secs = time.monotonic() - self.t0
        busy = cpu_busy_ticks() - self.busy0
        own = own_cpu_ticks(self.pgids) - self.own0
        return max(0.0, (busy - own) / CLK_TCK / secs * 100)


QUIET_PCT = 25.0  # other processes' CPU use (% of a core) under which a run may start
DISTURBED_PCT = 10.0  # a run during which they used more is flagged in the report


class QuietGate:
    """Other sessions share this machine (builds, profilers): before each run, wait until
    processes outside the harness use less than QUIET_PCT of a core, at most `per_run`
    seconds per run and `total` seconds overall, so the harness stays within its time."""

    def __init__(self, per_run, total):
        self.per_run, self.total, self.spent = per_run, total, 0.0

    def wait(self, pgids, label):
        t0 = time.monotonic()
        said = False
        while True:
            w = CpuWatch(pgids)
            time.sleep(0.4)
            pct = w.foreign_pct()
            waited = time.monotonic() - t0
            if pct < QUIET_PCT:
                break
            if waited >= self.per_run or self.spent + waited >= self.total:
                log(f"{label}: other processes still use {pct:.0f}% of a core; measuring anyway")
                break
            if not said:
                log(f"{label}: waiting for other processes to go quiet ({pct:.0f}% of a core busy)")
                said = True
        self.spent += time.monotonic() - t0
        return pct


# --------------------------------------------------------------------------- keys, tokens

def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def gen_key(name):
    """An ES256 key pair: PKCS#8 private PEM, SPKI public PEM, and the JWK."""
    priv = os.path.join(WORK, "keys", f"{name}.pem")
    pub = os.path.join(WORK, "keys", f"{name}.pub.pem")
    ec = run_cmd(["openssl", "ecparam", "-name", "prime256v1", "-genkey"]).stdout
    pk8 = run_cmd(["openssl", "pkcs8", "-topk8", "-nocrypt"], input=ec).stdout
    with open(priv, "wb") as f:
        f.write(pk8)
    os.chmod(priv, 0o600)
    pem = run_cmd(["openssl", "ec", "-pubout"], input=pk8).stdout
    with open(pub, "wb") as f:
        f.write(pem)
    body = b"".join(l for l in pem.splitlines() if l and not l.startswith(b"-----"))
    der = base64.b64decode(body)
    point = der[-65:]  # SPKI of P-256: the BIT STRING ends with 0x04 || x || y
    if point[0] != 4:
        raise Failure("unexpected SPKI layout from openssl")
    jwk = {"kty": "EC", "crv": "P-256", "x": b64url(point[1:33]), "y": b64url(point[33:65]),
           "kid": name, "alg": "ES256", "use": "sig"}
    return priv, pub, jwk


def jwk_thumbprint(jwk):
    """RFC 7638: base64url SHA-256 of the key's required members, names in lexicographic
    order, no whitespace (a DPoP token's `cnf.jkt`)."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    members = {k: jwk[k] for k in required[jwk["kty"]]}
    return b64url(hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest())


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def mint(key, sub, count, scope="api:read", claims=None):
    cmd = [BIN, "token", "mint", "--key", key, "--kid", KID, "--iss", ISSUER, "--aud", AUDIENCE,
           "--scope", scope, "--sub", sub, "--count", str(count), "--expires-in", "2h"]
    if claims:
        cmd += ["--claims", json.dumps(claims)]
    out = run_cmd(cmd).stdout.decode().split()
    if len(out) != count or not all(t.count(".") == 2 for t in out):
        raise Failure(f"tollgate token mint printed {len(out)} tokens, wanted {count}")
    return out


def forge(token, other):
    """token's header and payload with other's signature: well-formed, wrong signature."""
    h, p, _ = token.split(".")
    return f"{h}.{p}.{other.split('.')[2]}"


def write_lines(name, lines):
    path = os.path.join(WORK, "tokens", name)
    with open(path, "w") as f:
        f.write("\n".join(lines))
        f.write("\n")
    return path


def prepare_tokens():
    t0 = time.monotonic()
    priv, pub, jwk = gen_key(KID)
    jwks_path = os.path.join(WORK, "keys", "jwks.json")
    write_atomic(jwks_path, json.dumps({"keys": [jwk]}))
    repeat = mint(priv, "user-{n}", N_REPEAT)
    unique = mint(priv, "uniq-{n}", N_UNIQUE)
    hot = mint(priv, "hot-{n}", 2)
    cold = mint(priv, "cold-{n}", N_COLD)
    check = mint(priv, "check-{n}", 3)
    noscope = mint(priv, "check-noscope", 1, scope="api:write")[0]
    write_lines("repeat.txt", repeat)
    write_lines("unique.txt", unique)
    # upstream-token: the gateway's signing key. dpop: the client's proof key (P-256) and an
    # access token bound to it (`cnf.jkt`, its RFC 7638 thumbprint).
    gw_key = os.path.join(WORK, "keys", "gw1.pem")
    run_cmd(["openssl", "genpkey", "-algorithm", "ed25519", "-out", gw_key])
    os.chmod(gw_key, 0o600)
    dpop_key, _, dpop_jwk = gen_key("lt-dpop")
    dpop_token = mint(priv, "dpop-user", 1, claims={"cnf": {"jkt": jwk_thumbprint(dpop_jwk)}})[0]
    write_lines("dpop-token.txt", [dpop_token])
    # apikey: 1,000 keys for 1,000 subjects with the scope the route's policy asks for; the
    # key file holds their digests (`tollgate apikey create`).
    apikey_file = os.path.join(WORK, "keys", "apikeys.jsonl")
    if os.path.exists(apikey_file):
        os.remove(apikey_file)
    made = subprocess.run([BIN, "apikey", "create", "--sub", "key-user-{n}", "--scope", "api:read",
                           "--count", str(N_REPEAT), "--file", apikey_file],
                          capture_output=True, text=True, check=True)
    apikeys = made.stdout.split()
    write_lines("apikeys.txt", apikeys)
    forged = []
    n_valid = n_forged = 0
    for i in range(N_FORGED_LINES):
        if i % 10 == 0:
            forged.append(repeat[n_valid % N_REPEAT])
            n_valid += 1
        else:
            forged.append("!" + forge(unique[n_forged % N_UNIQUE], unique[(n_forged + 1) % N_UNIQUE]))
            n_forged += 1
    write_lines("forged.txt", forged)
    limited = []
    for i in range(2 * N_COLD):
        limited.append(hot[(i // 2) % 2] if i % 2 == 0 else cold[i // 2])
    write_lines("limited.txt", limited)
    # The `https` scenario's certificate: self-signed ECDSA P-256 for 127.0.0.1 (one file each
    # for nginx and tollgate; HAProxy wants certificate and key in one).
    tls_cert = os.path.join(WORK, "keys", "tls.crt")
    tls_key = os.path.join(WORK, "keys", "tls.key")
    run_cmd(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
             "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", tls_key, "-out", tls_cert])
    tls_pem = os.path.join(WORK, "keys", "tls.pem")
    with open(tls_pem, "wb") as f, open(tls_cert, "rb") as c, open(tls_key, "rb") as k:
        f.write(c.read() + k.read())
    log(f"keys and {N_REPEAT + N_UNIQUE + 2 + N_COLD + 5:,} tokens minted in {time.monotonic() - t0:.1f} s")
    return {
        "tls_cert": tls_cert, "tls_key": tls_key, "tls_pem": tls_pem,
        "priv": priv, "pub": pub, "jwk": jwk, "jwks": jwks_path,
        "check": check[0], "check_ratelimit": check[1], "check_other": check[2],
        "tampered": forge(check[0], check[2]), "noscope": noscope,
        "gw_key": gw_key, "dpop_key": dpop_key, "dpop_token": dpop_token,
        "dpop_token_file": os.path.join(WORK, "tokens", "dpop-token.txt"),
        "apikey_file": apikey_file, "apikey": apikeys[0],
    }


# --------------------------------------------------------------------------- configs

def render(template, out_name, **values):
    with open(os.path.join(TEMPLATES, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace(f"@@{k}@@", str(v))
    left = [m for line in text.splitlines() if not line.lstrip().startswith("#")
            for m in re.findall(r"@@[A-Z_]+@@", line)]
    if left:
        raise Failure(f"{template}: unfilled placeholders {sorted(set(left))}")
    path = os.path.join(WORK, "conf", out_name)
    with open(path, "w") as f:
        f.write(text)
    return path


def tollgate_routes(n_routes, rate, burst, extra=""):
    """`extra`: more fields of the route, e.g. `, upstream_token: {...}` (one route only)."""
    limit = f'rate_limits: [{{ name: per-sub, key: "claim:sub", rate: "{rate}", burst: {burst} }}]'
    if n_routes == 1:
        return f"  - {{ name: api, path: /, upstream: up, policy: read, {limit}{extra} }}"
    return "\n".join(
        f"  - {{ name: r{i}, path: /svc-{i}, upstream: up, policy: read, {limit} }}"
        for i in range(n_routes))


class Target:
    def __init__(self, name, port, path, proc=None, metrics_port=None, tls=False, log_path=None):
        self.name, self.port, self.path, self.proc, self.metrics_port = name, port, path, proc, metrics_port
        self.tls = tls
        # The proxy's own log (failover: read for what it said during the run).
        self.log_path = log_path
        # dpop: this run's proof file (for wrk) and whole proofs for the verdict check.
        self.proofs, self.dpop_checks = None, None

    def stop(self):
        if self.proc is not None:
            PROCS.stop(self.proc)
            self.proc = None


class Lab:
    """Starts the upstream once and each target per run."""

    def __init__(self, keys, duration):
        self.keys = keys
        self.duration = duration
        self.upstream_port = None
        self.checked_configs = set()
        self.run_id = 0

    def start_upstream(self):
        port = free_port()
        os.makedirs(os.path.join(WORK, "run", "nginx-upstream-tmp"), exist_ok=True)
        conf = render("nginx-upstream.conf", "nginx-upstream.conf", WORK=WORK, PORT=port)
        run_cmd(["nginx", "-t", "-q", "-p", os.path.join(WORK, "run"), "-c", conf,
                 "-e", os.path.join(WORK, "logs", "nginx-upstream.error.log")])
        p = PROCS.start("nginx-upstream", ["taskset", "-c", LOAD_CPU, "nginx", "-p",
                                           os.path.join(WORK, "run"), "-c", conf, "-e",
                                           os.path.join(WORK, "logs", "nginx-upstream.error.log")])
        wait_tcp(port, p)
        self.upstream_port = port
        self.upstream_proc = p
        log(f"upstream nginx on 127.0.0.1:{port} (CPU {LOAD_CPU})")

    def start(self, name, scenario, backends=None):
        self.run_id += 1
        tag = f"{scenario['name']}-{name}-{self.run_id}"
        path = "/svc-5000/item" if name == "tollgate-10k" else "/api/item"
        if scenario.get("failover"):
            return self.start_failover(name, tag, path, backends)
        rate, burst, per10s = LOW_RATE if scenario.get("low_limit") else HIGH_RATE
        if name == "direct":
            return Target(name, self.upstream_port, path)
        tls = bool(scenario.get("tls"))
        suffix = "-tls" if tls else ""
        port = free_port()
        if name == "nginx":
            os.makedirs(os.path.join(WORK, "run", "nginx-proxy-tmp"), exist_ok=True)
            tls_lines = (f"ssl_certificate {self.keys['tls_cert']};\n        "
                         f"ssl_certificate_key {self.keys['tls_key']};\n        "
                         "ssl_protocols TLSv1.2 TLSv1.3;" if tls else "")
            conf = render("nginx-proxy.conf", f"nginx-proxy{suffix}.conf", WORK=WORK, PORT=port,
                          UPSTREAM_PORT=self.upstream_port, LISTEN_TLS=" ssl" if tls else "",
                          TLS_LINES=tls_lines)
            err = os.path.join(WORK, "logs", "nginx-proxy.error.log")
            if ("nginx", tls) not in self.checked_configs:
                run_cmd(["nginx", "-t", "-q", "-p", os.path.join(WORK, "run"), "-c", conf, "-e", err])
                self.checked_configs.add(("nginx", tls))
            p = PROCS.start(tag, ["taskset", "-c", PROXY_CPU, "nginx", "-p",
                                  os.path.join(WORK, "run"), "-c", conf, "-e", err])
            wait_tcp(port, p)
            return Target(name, port, path, p, tls=tls)
        if name == "haproxy":
            bind_tls = f" ssl crt {self.keys['tls_pem']} alpn http/1.1" if tls else ""
            conf = render("haproxy.cfg", f"haproxy-{scenario['name']}.cfg", WORK=WORK, PORT=port,
                          UPSTREAM_PORT=self.upstream_port, PUBLIC_PEM=self.keys["pub"],
                          RATE_PER_10S=per10s, MAXCONN=IDLE_CONNECTIONS + 100, BIND_TLS=bind_tls)
            key = ("haproxy", per10s, tls)
            if key not in self.checked_configs:
                r = subprocess.run(["haproxy", "-c", "-f", conf], capture_output=True, text=True)
                if r.returncode != 0:
                    raise Failure(f"haproxy -c -f {conf} failed:\n{r.stdout}{r.stderr}")
                self.checked_configs.add(key)
            p = PROCS.start(tag, ["taskset", "-c", PROXY_CPU, "haproxy", "-db", "-f", conf])
            wait_tcp(port, p)
            return Target(name, port, path, p, tls=tls)
        # tollgate, tollgate-open, tollgate-10k
        mport = free_port()
        while mport == port:
            mport = free_port()
        if tls:
            # The HTTPS listener on `port`; the plain one (required) on another.
            plain = free_port()
            while plain in (port, mport):
                plain = free_port()
            listen = (f"listen:\n  http: 127.0.0.1:{plain}\n  https: 127.0.0.1:{port}\n  tls:\n"
                      f"    certificates: [{{ cert: {self.keys['tls_cert']}, key: {self.keys['tls_key']} }}]\n")
        else:
            listen = f"listen:\n  http: 127.0.0.1:{port}\n"
        common = dict(WORK=WORK, TAG=name, PORT=port, METRICS_PORT=mport,
                      UPSTREAM_PORT=self.upstream_port, LISTEN=listen)
        if name == "tollgate-open":
            conf = render("tollgate-open.yaml", "tollgate-open.yaml", **common)
        else:
            n_routes = 10_000 if name == "tollgate-10k" else 1
            auth_extra = provider_extra = route_extra = logging_extra = ""
            if name in TRACE_TARGETS:
                # A collector that is stopped: a loopback port nothing listens on.
                logging_extra = (f"  tracing: {{ endpoint: \"http://127.0.0.1:{free_port()}/v1/traces\", "
                                 f"sample_ratio: {TRACE_TARGETS[name]} }}")
            if scenario.get("upstream_token"):
                auth_extra = (f"  signing_keys:\n    issuer: {GATEWAY_ISSUER}\n    current: gw1\n    keys:\n"
                              f"      - {{ kid: gw1, file: {self.keys['gw_key']} }}")
                route_extra = f", upstream_token: {UPSTREAM_TOKEN}"
            more_providers = ""
            if scenario.get("apikey"):
                more_providers = (f"    - name: keys\n      type: api_key\n      issuer: https://keys.loadtest\n"
                                  f"      api_keys: {{ file: {self.keys['apikey_file']} }}")
            if scenario.get("dpop"):
                # Proofs are signed before the run (1.2-1.9 s per run second on the reference
                # machine, idle to busy), the quiet wait may take up to 20 s, then the run: a
                # proof may be sent up to about 3 × duration + 20 s after its iat.
                max_age = max(DPOP_MAX_AGE_S, 3 * self.duration + 30)
                auth_extra = f"  dpop: {{ max_age: {max_age}s }}"
                provider_extra = "      dpop: required"
            conf = render("tollgate.yaml", f"{name}-{scenario['name']}.yaml", JWKS=self.keys["jwks"],
                          ROUTES=tollgate_routes(n_routes, rate, burst, route_extra), AUTH_EXTRA=auth_extra,
                          PROVIDER_EXTRA=provider_extra, MORE_PROVIDERS=more_providers,
                          LOGGING_EXTRA=logging_extra, **common)
        key = (name, rate, tls, conf)
        if key not in self.checked_configs:
            r = subprocess.run([BIN, "check", "-c", conf], capture_output=True, text=True)
            if r.returncode != 0:
                raise Failure(f"tollgate check -c {conf} failed:\n{r.stdout}{r.stderr}")
            self.checked_configs.add(key)
        # SIGINT: Pingora's fast shutdown (SIGTERM would wait out grace_period).
        p = PROCS.start(tag, ["taskset", "-c", PROXY_CPU, BIN, "run", "-c", conf], stop_signal=signal.SIGINT)
        wait_http_200(mport, "/readyz", p)
        return Target(name, port, path, p, mport, tls=tls)

    def start_failover(self, name, tag, path, backends):
        """The failover scenario's targets: each balances over the run's three echo backends
        (templates/*-failover.*; same timeouts and retry conditions everywhere)."""
        ports = {f"{b.upper()}_PORT": backends.ports[b] for b in BACKEND_NAMES}
        port = free_port()
        if name == "nginx":
            os.makedirs(os.path.join(WORK, "run", "nginx-failover-tmp"), exist_ok=True)
            conf = render("nginx-failover.conf", "nginx-failover.conf", WORK=WORK, PORT=port, **ports)
            err = os.path.join(WORK, "logs", "nginx-failover.error.log")
            if ("nginx", "failover") not in self.checked_configs:
                run_cmd(["nginx", "-t", "-q", "-p", os.path.join(WORK, "run"), "-c", conf, "-e", err])
                self.checked_configs.add(("nginx", "failover"))
            p = PROCS.start(tag, ["taskset", "-c", PROXY_CPU, "nginx", "-p",
                                  os.path.join(WORK, "run"), "-c", conf, "-e", err])
            wait_tcp(port, p)
            return Target(name, port, path, p, log_path=err)
        if name == "haproxy":
            conf = render("haproxy-failover.cfg", "haproxy-failover.cfg", WORK=WORK, PORT=port, **ports)
            if ("haproxy", "failover") not in self.checked_configs:
                r = subprocess.run(["haproxy", "-c", "-f", conf], capture_output=True, text=True)
                if r.returncode != 0:
                    raise Failure(f"haproxy -c -f {conf} failed:\n{r.stdout}{r.stderr}")
                self.checked_configs.add(("haproxy", "failover"))
            p = PROCS.start(tag, ["taskset", "-c", PROXY_CPU, "haproxy", "-db", "-f", conf])
            wait_tcp(port, p)
            return Target(name, port, path, p, log_path=os.path.join(WORK, "logs", f"{tag}.log"))
        if name != "tollgate":
            raise Failure(f"no failover configuration for target {name}")
        mport = free_port()
        while mport == port:
            mport = free_port()
        conf = render("tollgate-failover.yaml", "tollgate-failover.yaml", WORK=WORK, TAG="failover",
                      PORT=port, METRICS_PORT=mport, **ports)
        if ("tollgate", "failover") not in self.checked_configs:
            r = subprocess.run([BIN, "check", "-c", conf], capture_output=True, text=True)
            if r.returncode != 0:
                raise Failure(f"tollgate check -c {conf} failed:\n{r.stdout}{r.stderr}")
            self.checked_configs.add(("tollgate", "failover"))
        p = PROCS.start(tag, ["taskset", "-c", PROXY_CPU, BIN, "run", "-c", conf], stop_signal=signal.SIGINT)
        wait_http_200(mport, "/readyz", p)
        return Target(name, port, path, p, mport, log_path=os.path.join(WORK, "logs", f"{tag}.log"))


# --------------------------------------------------------------------------- checks

def http_get(port, path, token=None, headers=None, tls=False):
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if tls:
        # The load test's own self-signed certificate: the check is of answers, not of trust.
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=5,
                                        context=ssl._create_unverified_context())
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path, headers=h)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def check_verdicts(t, scenario, keys):
    """Problems with the target's answers (empty list: fine)."""
    problems = []

    def get(path, token=None, headers=None):
        return http_get(t.port, path, token, headers, tls=t.tls)

    def expect(label, want, got):
        if got != want:
            problems.append(f"{label}: expected {want}, got {got}")

    if scenario.get("failover"):
        return check_balancing(t)
    if scenario.get("dpop"):
        return check_dpop(t, keys)
    s, body = get(t.path, keys["check"])
    expect("valid token", 200, s)
    if t.name not in AUTH_TARGETS:
        return problems
    expect("tampered signature", 401, get(t.path, keys["tampered"])[0])
    expect("no token", 401, get(t.path)[0])
    expect("token without api:read", 403, get(t.path, keys["noscope"])[0])
    whoami = t.path.rsplit("/", 1)[0] + "/whoami"
    s, body = get(whoami, keys["check"], {"X-Auth-Subject": "forged-by-client"})
    expect("X-Auth-Subject forwarded (status)", 200, s)
    expect("X-Auth-Subject forwarded (value)", "check-0", body.strip())
    if scenario.get("apikey"):
        s, body = get(whoami, None, {"X-API-Key": keys["apikey"], "X-Auth-Subject": "forged-by-client"})
        expect("API key: X-Auth-Subject forwarded (status)", 200, s)
        expect("API key: X-Auth-Subject forwarded (value)", "key-user-0", body.strip())
        forged = keys["apikey"][:-4] + ("AAAA" if not keys["apikey"].endswith("AAAA") else "BBBB")
        expect("API key with a wrong secret", 401, get(t.path, None, {"X-API-Key": forged})[0])
    if scenario.get("low_limit"):
        statuses = [get(t.path, keys["check_ratelimit"])[0] for _ in range(80)]
        if 429 not in statuses:
            problems.append(f"80 quick requests of one subject under a 5/s limit: no 429 ({sorted(set(statuses))})")
    return problems


def sign_proofs(t, keys, duration):
    """dpop: signs this run's proofs, for the target's port (htu), with Debian's Python
    (loadtest/dpop_proofs.py): duration × DPOP_MAX_RPS for wrk, a few whole ones for the check."""
    count = duration * DPOP_MAX_RPS
    # Only the latest run's proofs are kept (tens of MB each), for `dpop_proofs.py verify`.
    for old in glob.glob(os.path.join(WORK, "tokens", "dpop-proofs-*.txt")):
        os.remove(old)
    t.proofs = os.path.join(WORK, "tokens", f"dpop-proofs-{t.port}.txt")
    checks = os.path.join(WORK, "tokens", f"dpop-checks-{t.port}.json")
    t0 = time.monotonic()
    try:
        run_cmd([DEBIAN_PYTHON, DPOP_PROOFS, "sign", "--key", keys["dpop_key"], "--token", keys["dpop_token_file"],
                 "--htu", f"http://127.0.0.1:{t.port}{t.path}", "--count", str(count), "--out", t.proofs,
                 "--checks", checks])
    except (subprocess.CalledProcessError, OSError) as e:
        detail = e.stderr.decode(errors="replace").strip().splitlines()[-1:] if getattr(e, "stderr", None) else []
        raise Failure(f"{DEBIAN_PYTHON} {os.path.relpath(DPOP_PROOFS, ROOT)} sign failed (python3-cryptography: "
                      f"make deps-loadtest): {e} {' '.join(detail)}")
    with open(checks) as f:
        t.dpop_checks = json.load(f)
    log(f"dpop: {count:,} proofs for 127.0.0.1:{t.port} signed in {time.monotonic() - t0:.1f} s")


def check_dpop(t, keys):
    """dpop: the bound token with a fresh proof → 200; the same proof again (replayed jti),
    no proof, a proof for another token (ath) or another path (htu), and the token as a
    Bearer token → 401; the subject forwarded in X-Auth-Subject."""
    problems = []
    proofs = t.dpop_checks

    def get(path, proof=None, scheme="DPoP", headers=None):
        h = dict(headers or {}, Authorization=f"{scheme} {keys['dpop_token']}")
        if proof is not None:
            h["DPoP"] = proof
        return http_get(t.port, path, headers=h)[0]

    def expect(label, want, got):
        if got != want:
            problems.append(f"{label}: expected {want}, got {got}")

    expect("token with a fresh proof", 200, get(t.path, proofs["item"]))
    expect("the same proof again", 401, get(t.path, proofs["item"]))
    expect("no proof", 401, get(t.path))
    expect("proof for another token (ath)", 401, get(t.path, proofs["wrong_ath"]))
    expect("proof for another path (htu)", 401, get(t.path, proofs["wrong_htu"]))
    expect("the bound token as a Bearer token", 401, get(t.path, scheme="Bearer"))
    whoami = t.path.rsplit("/", 1)[0] + "/whoami"
    h = {"Authorization": f"DPoP {keys['dpop_token']}", "DPoP": proofs["whoami"],
         "X-Auth-Subject": "forged-by-client"}
    s, body = http_get(t.port, whoami, headers=h)
    expect("X-Auth-Subject forwarded (status)", 200, s)
    expect("X-Auth-Subject forwarded (value)", "dpop-user", body.strip())
    return problems


def check_balancing(t, timeout=10.0):
    """failover: plain requests through the target answer 200 and, within `timeout`, every
    backend has answered some (the echo names itself in `server`)."""
    seen, statuses = set(), {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and seen != set(BACKEND_NAMES):
        try:
            s, body = http_get(t.port, t.path)
        except OSError as e:
            s, body = f"error {e.__class__.__name__}", ""
        statuses[s] = statuses.get(s, 0) + 1
        if s == 200:
            try:
                seen.add(json.loads(body)["server"])
            except (ValueError, KeyError, TypeError):
                pass
        else:
            time.sleep(0.05)
    problems = []
    if set(statuses) != {200}:
        problems.append(f"plain requests: expected only 200, got {statuses}")
    if seen != set(BACKEND_NAMES):
        problems.append(f"backends answering within {timeout:.0f} s: {sorted(seen)}, expected {list(BACKEND_NAMES)}")
    return problems


# --------------------------------------------------------------------------- failover

class EchoBackends:
    """The failover scenario's three `tollgate echo` backends (CPU LOAD_CPU, as the upstream of
    the other scenarios), started fresh for every run so every target sees the same faults."""

    def __init__(self, tag):
        self.tag = tag
        self.ports, self.procs = {}, {}
        for n in BACKEND_NAMES:
            self.ports[n] = backend_port(self.ports.values())
        for n in BACKEND_NAMES:
            self.start(n)

    def start(self, n, timeout=10.0):
        cmd = ["taskset", "-c", LOAD_CPU, BIN, "echo", "--listen", f"127.0.0.1:{self.ports[n]}", "--name", n]
        p = PROCS.start(f"echo-{self.tag}-{n}", cmd, stop_signal=signal.SIGKILL)
        self.procs[n] = p
        wait_tcp(self.ports[n], p, timeout)

    def kill(self, n):
        """SIGKILL (its stop signal): no goodbye to the proxies' pooled connections."""
        PROCS.stop(self.procs.pop(n))

    def set(self, n, **values):
        q = "&".join(f"{k}={v}" for k, v in values.items())
        s, body = http_get(self.ports[n], f"/__echo/set?{q}")
        if s != 200:
            raise Failure(f"{n} /__echo/set?{q}: {s} {body[:100]}")

    def counts(self):
        """Requests each live backend served (b1: since its restart)."""
        out = {}
        for n in BACKEND_NAMES:
            p = self.procs.get(n)
            if p is None or p.poll() is not None:
                out[n] = None
                continue
            try:
                out[n] = json.loads(http_get(self.ports[n], "/__echo/count")[1])["count"]
            except (OSError, ValueError, KeyError):
                out[n] = None
        return out

    def pids(self):
        return [p.pid for p in self.procs.values()]

    def stop(self):
        for p in list(self.procs.values()):
            PROCS.stop(p)
        self.procs.clear()


# (fraction of the run, what, action): the same script for every target and run.
FAILOVER_PLAN = [
    (0.25, "SIGKILL b1", lambda b: b.kill("b1")),
    (0.30, f"b2 delay_ms={FAILOVER_SLOW_MS}", lambda b: b.set("b2", delay_ms=FAILOVER_SLOW_MS)),
    (0.60, "b1 restarted on its port", lambda b: b.start("b1")),
    (0.70, "b2 delay_ms=0", lambda b: b.set("b2", delay_ms=0)),
]


class FaultScript(threading.Thread):
    """Applies FAILOVER_PLAN while wrk runs; its clock starts when wrk is started."""

    def __init__(self, backends, duration):
        super().__init__(daemon=True)
        self.backends, self.duration = backends, duration
        self.stop_event = threading.Event()
        self.events = []
        self.t0 = None

    def begin(self):
        self.t0 = time.monotonic()
        self.start()

    def run(self):
        for frac, what, action in FAILOVER_PLAN:
            at = frac * self.duration
            if self.stop_event.wait(max(0.0, self.t0 + at - time.monotonic())):
                return
            err = None
            try:
                action(self.backends)
            except (Failure, OSError, ValueError, KeyError) as e:
                err = str(e).splitlines()[0][:200]
            self.events.append({"what": what, "planned_s": round(at, 2),
                                "done_s": round(time.monotonic() - self.t0, 2), "error": err})

    def finish(self):
        self.stop_event.set()
        if self.t0 is not None:
            self.join(20)


def log_offset(path):
    try:
        return os.path.getsize(path) if path else None
    except OSError:
        return 0


def log_since(path, offset, top=4):
    """Lines a proxy logged since `offset`: their number and the most frequent ones, with
    timestamps, numbers and addresses masked so that repeats group together."""
    if not path or offset is None:
        return None, []
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return None, []
    # Backtrace frames (RUST_BACKTRACE set in the environment) are not lines of their own.
    frame = re.compile(r"^\s+(at |\d+: )|^stack backtrace:|^note: .*RUST_BACKTRACE")
    lines = [l for l in text.splitlines() if l.strip() and not frame.search(l)]
    groups = {}
    for l in lines:
        k = re.sub(r"\x1b\[[0-9;]*m", "", l)
        if k.startswith("{"):  # tollgate's JSON lines: level and message
            try:
                j = json.loads(k)
                k = f"{j.get('level', '')} {j.get('message', '')}"
            except ValueError:
                pass
        k = re.sub(r"^\S*\d{4}[-/]\d\d[-/]\d\d[T ]\S+\s*", "", k)
        k = re.sub(r", request_id: \w+|\(\d+\)", "", k)
        k = re.sub(r"context: .*cause: ", "… ", k)  # Pingora's nested contexts: the last cause
        k = re.sub(r"\d+", "N", k)[:200]
        groups[k] = groups.get(k, 0) + 1
    return len(lines), sorted(groups.items(), key=lambda kv: -kv[1])[:top]


def upstream_metrics(port):
    """tollgate's retry, outlier and circuit-breaker counters (non-zero samples)."""
    try:
        body = http_get(port, "/metrics")[1]
    except OSError:
        return None
    out = {}
    for line in body.splitlines():
        if line.startswith(("tollgate_upstream_retries_total", "tollgate_upstream_outlier_events_total",
                            "tollgate_upstream_circuit_open_total")):
            name, _, v = line.rpartition(" ")
            try:
                if float(v):
                    out[re.sub(r'upstream="[^"]*",?', "", name).replace("{}", "")] = float(v)
            except ValueError:
                pass
    return out


# --------------------------------------------------------------------------- idle connections

def read_response(sock):
    """Reads one HTTP/1.1 response with a Content-Length body; its status, or None."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    need = int(m.group(1)) if m else 0
    while len(body) < need:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        body += chunk
    return int(head.split(b" ", 2)[1])


def run_idle(t, n, token):
    """Opens n keep-alive connections to the target, one request each, leaves them idle, and
    measures the target's RSS (its whole process tree) before and after."""
    before = tree_rss_kb(t.proc.pid)
    req = (f"GET {t.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
    socks, statuses = [], {}
    t0 = time.monotonic()
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", t.port), timeout=10)
            s.sendall(req)
            st = read_response(s)
            statuses[st] = statuses.get(st, 0) + 1
            socks.append(s)
        time.sleep(1.0)  # let the target settle (freed request state, allocator)
        after = tree_rss_kb(t.proc.pid)
        # Still open: a closed connection reads as EOF at once.
        alive = 0
        for s in socks:
            s.setblocking(False)
            try:
                alive += 0 if s.recv(1) == b"" else 1
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
    finally:
        for s in socks:
            s.close()
    if before is None or after is None:
        raise Failure("could not read the target's RSS")
    return {"rss_before_kb": before, "rss_after_kb": after, "idle": n, "alive": alive,
            "per_conn_kib": (after - before) / n, "open_seconds": time.monotonic() - t0,
            "statuses": {str(k): v for k, v in statuses.items()}}


# --------------------------------------------------------------------------- wrk

def run_wrk(t, scenario, duration, on_start=None):
    env = dict(os.environ)
    # No token file (failover): plain requests without Authorization.
    env["LT_TOKENS"] = os.path.join(WORK, "tokens", scenario["tokens"]) if scenario.get("tokens") else ""
    env["LT_PATH"] = t.path
    env["LT_HOST"] = f"127.0.0.1:{t.port}"
    env["LT_COUNT"] = "1" if scenario.get("count") else "0"
    env["LT_SPLIT"] = "1" if scenario.get("split_clients") else "0"
    env["LT_PROOFS"] = t.proofs if scenario.get("dpop") else ""
    env["LT_CREDENTIAL"] = "X-API-Key: " if scenario.get("apikey") else ""
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s",
           "--timeout", "5s", "-s", LUA, f"{'https' if t.tls else 'http'}://127.0.0.1:{t.port}{t.path}"]
    p = PROCS.start(f"wrk-{scenario['name']}-{t.name}", cmd, env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if on_start is not None:
        on_start()
    try:
        out, err = p.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        PROCS.stop(p)
        raise Failure("wrk did not finish in time")
    if p in PROCS.procs:
        PROCS.procs.remove(p)
    out = out.decode(errors="replace")
    with open(os.path.join(WORK, "logs", f"wrk-{scenario['name']}-{t.name}.log"), "a") as f:
        f.write(out + err.decode(errors="replace"))
    m = re.search(r"^LTJSON (\{.*\})$", out, re.M)
    if p.returncode != 0 or not m:
        raise Failure(f"wrk failed (exit {p.returncode}): {err.decode(errors='replace')[-500:]}")
    d = json.loads(m.group(1))
    if d["proofs_short"]:
        raise Failure(f"the {d['nproofs']:,} DPoP proofs ran out before the end of the run (wrk stopped; no proof "
                      f"is replayed): raise DPOP_MAX_RPS ({DPOP_MAX_RPS:,}/s) in loadtest/run.py")
    secs = d["duration_us"] / 1e6
    run = {
        "requests": d["requests"], "seconds": secs, "rps": d["requests"] / secs,
        "p50_ms": d["p50"] / 1000, "p99_ms": d["p99"] / 1000, "p999_ms": d["p99.9"] / 1000,
        "non2xx": d["err_status"], "socket_errors": d["err_connect"] + d["err_read"] + d["err_write"] + d["err_timeout"],
        "wraps": d["wraps"], "ntokens": d["ntokens"], "sent": d["sent"],
        "err_connect": d["err_connect"], "err_read": d["err_read"], "err_write": d["err_write"],
        "err_timeout": d["err_timeout"], "lat_max_ms": d["lat_max_us"] / 1000,
    }
    if scenario.get("dpop"):
        run["proofs"] = d["nproofs"]
    if d["counting"]:
        run["non2xx"] = d["st401"] + d["st403"] + d["st429"] + d["st4xx"] + d["st5xx"] + d["stother"]
        for k in ("st2xx", "st401", "st403", "st429", "st4xx", "st5xx", "stother", "sent_valid", "sent_forged",
                  "v2xx", "v401", "vother", "f2xx", "f401", "fother", "unmarked"):
            run[k] = d[k]
    return run


# --------------------------------------------------------------------------- rotation

class Rotator(threading.Thread):
    """Rewrites the JWKS file every ROTATE_EVERY_S: the signing key lt-1 stays, a freshly
    generated second key replaces the previous one (so the key set changes each time)."""

    def __init__(self, keys):
        super().__init__(daemon=True)
        self.keys = keys
        self.stop_event = threading.Event()
        self.rotations = 0
        self.errors = []

    def run(self):
        wait = ROTATE_EVERY_S / 2
        while not self.stop_event.wait(wait):
            wait = ROTATE_EVERY_S
            try:
                _, _, jwk = gen_key(f"lt-rot-{self.rotations + 1}")
                write_atomic(self.keys["jwks"], json.dumps({"keys": [self.keys["jwk"], jwk]}))
                self.rotations += 1
            except Exception as e:  # reported, never fatal
                self.errors.append(str(e))

    def stop(self):
        self.stop_event.set()
        self.join(10)
        write_atomic(self.keys["jwks"], json.dumps({"keys": [self.keys["jwk"]]}))


def metric_sum(port, name, label_filter=""):
    try:
        s, body = http_get(port, "/metrics")
    except OSError:
        return None
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and label_filter in line:
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return total


# --------------------------------------------------------------------------- the runs

def run_all(lab, keys, duration, rounds, only, gate):
    results = {}  # scenario -> target -> [run]
    failures = {}  # scenario -> target -> reason
    extra = {}  # scenario -> notes
    for sc in SCENARIOS:
        if only and sc["name"] not in only:
            continue
        res = results.setdefault(sc["name"], {t: [] for t in sc["targets"]})
        fails = failures.setdefault(sc["name"], {})
        notes = extra.setdefault(sc["name"], {"rotations": 0, "reloads": 0.0, "rotate_errors": []})
        for r in range(rounds):
            for name in sc["targets"]:
                if name in fails:
                    continue
                label = f"{sc['name']} round {r + 1}/{rounds}: {name}"
                t = None
                backends = faults = None
                run_s = max(duration, FAILOVER_MIN_S) if sc.get("failover") else duration
                try:
                    if sc.get("failover"):
                        backends = EchoBackends(f"{sc['name']}-{name}-r{r + 1}")
                    t = lab.start(name, sc, backends)
                    if sc.get("dpop"):
                        sign_proofs(t, keys, run_s)
                    problems = check_verdicts(t, sc, keys)
                    if problems:
                        fails[name] = "verdict check failed: " + "; ".join(problems)
                        log(f"{label}: NOT MEASURED, {fails[name]}")
                        continue
                    before = proc_status(t.proc.pid) if t.proc else None
                    reloads0 = metric_sum(t.metrics_port, "tollgate_jwks_fetch_total", 'result="success"') if t.metrics_port else None
                    if name in TRACE_TARGETS:
                        spans0 = {k: metric_sum(t.metrics_port, "tollgate_trace_spans_total", f'result="{k}"')
                                  for k in ("exported", "failed", "dropped")}
                    if sc.get("upstream_token"):
                        minted0 = {r: metric_sum(t.metrics_port, "tollgate_upstream_tokens_total", f'result="{r}"')
                                   for r in ("minted", "cached")}
                    pgids = [lab.upstream_proc.pid] + ([t.proc.pid] if t.proc else [])
                    if backends:
                        pgids += backends.pids()
                    gate.wait(pgids, label)
                    watch = CpuWatch(pgids)
                    rot = None
                    if sc.get("rotate"):
                        rot = Rotator(keys)
                        rot.start()
                    if sc.get("idle"):
                        run = run_idle(t, sc["idle"], keys["check"])
                        res[name].append(run)
                        log(f"{label}: RSS {run['rss_before_kb'] / 1024:.1f} → {run['rss_after_kb'] / 1024:.1f} MiB, "
                            f"{run['per_conn_kib']:.1f} KiB per idle connection, {run['alive']:,} of {run['idle']:,} "
                            f"still open, answers {run['statuses']}")
                        continue
                    if backends:
                        faults = FaultScript(backends, run_s)
                        log_at = log_offset(t.log_path)
                    try:
                        run = run_wrk(t, sc, run_s, on_start=faults.begin if faults else None)
                    finally:
                        if rot:
                            rot.stop()
                        if faults:
                            faults.finish()
                    run["foreign_cpu_pct"] = watch.foreign_pct()
                    after = proc_status(t.proc.pid) if t.proc else None
                    if before and after:
                        run["rss_before_kb"] = before.get("VmRSS")
                        run["rss_after_kb"] = after.get("VmRSS")
                        run["hwm_kb"] = after.get("VmHWM")
                    if rot:
                        reloads1 = metric_sum(t.metrics_port, "tollgate_jwks_fetch_total", 'result="success"')
                        notes["rotations"] += rot.rotations
                        if reloads0 is not None and reloads1 is not None:
                            notes["reloads"] += reloads1 - reloads0
                        notes["rotate_errors"] += rot.errors
                        run["rotations"] = rot.rotations
                    if name in TRACE_TARGETS:
                        # What became of the run's spans (tollgate_trace_spans_total).
                        for result, n0 in spans0.items():
                            n1 = metric_sum(t.metrics_port, "tollgate_trace_spans_total", f'result="{result}"')
                            run[f"spans_{result}"] = n1 - n0 if n0 is not None and n1 is not None else None
                    if sc.get("upstream_token"):
                        # What the run cost in signatures (tollgate_upstream_tokens_total).
                        for kind, n0 in minted0.items():
                            n1 = metric_sum(t.metrics_port, "tollgate_upstream_tokens_total", f'result="{kind}"')
                            run[f"tokens_{kind}"] = n1 - n0 if n0 is not None and n1 is not None else None
                        if run["tokens_minted"] == 0 and run["tokens_cached"] == 0:
                            raise Failure("no upstream token minted or taken from the cache during the run "
                                          "(tollgate_upstream_tokens_total)")
                    if faults:
                        run["faults"] = faults.events
                        for b, n in backends.counts().items():
                            run[f"served_{b}"] = n
                        run["client_errors"] = run["non2xx"] + run["socket_errors"]
                        run["log_lines"], run["log_top"] = log_since(t.log_path, log_at)
                        if t.metrics_port:
                            run["metrics"] = upstream_metrics(t.metrics_port)
                        late = [e for e in faults.events if e["error"] or e["done_s"] - e["planned_s"] > 1.0]
                        if len(faults.events) < len(FAILOVER_PLAN) or late:
                            log(f"{label}: fault script: {faults.events}")
                    res[name].append(run)
                    if faults:
                        log(f"{label}: {run['requests']:,} requests, {run['rps']:,.0f} req/s, p50 {run['p50_ms']:.2f} ms, "
                            f"p99 {run['p99_ms']:.2f} ms, non-2xx {run['non2xx']:,} (5xx {run['st5xx']:,}), socket errors "
                            f"connect/read/write/timeout {run['err_connect']}/{run['err_read']}/{run['err_write']}/"
                            f"{run['err_timeout']}, errors seen by clients {run['client_errors']:,}; served "
                            + "/".join(str(run[f'served_{b}']) for b in BACKEND_NAMES)
                            + f" (b1 since its restart); proxy log lines {run['log_lines']}"
                            + f", other CPU use {run['foreign_cpu_pct']:.0f}% of a core")
                        continue
                    log(f"{label}: {run['rps']:,.0f} req/s, p50 {run['p50_ms']:.2f} ms, "
                        f"p99 {run['p99_ms']:.2f} ms, non-2xx {run['non2xx']:,}"
                        + (f", 429 {run['st429']:,}" if 'st429' in run and run['st429'] else "")
                        + (f", 2xx {run['st2xx']:,}" if 'st2xx' in run else "")
                        + (f", valid refused {run['v401'] + run['vother']:,}, forged 2xx {run['f2xx']:,}"
                           if 'v2xx' in run and not sc.get("low_limit") else "")
                        + f", other CPU use {run['foreign_cpu_pct']:.0f}% of a core")
                except Failure as e:
                    # All its lines, joined: `tollgate check` says what is wrong on the third.
                    fails[name] = " ".join(l.strip() for l in str(e).splitlines() if l.strip())[:300]
                    log(f"{label}: FAILED: {e}")
                finally:
                    if faults:
                        faults.finish()
                    if t is not None:
                        t.stop()
                    if backends:
                        backends.stop()
    return results, failures, extra


# --------------------------------------------------------------------------- report

def med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summary(runs):
    if not runs:
        return None
    s = {k: med(runs, k) for k in ("rps", "p50_ms", "p99_ms", "non2xx", "requests", "socket_errors",
                                    "st2xx", "st401", "st429", "st5xx", "sent_valid", "sent_forged",
                                    "rss_before_kb", "rss_after_kb", "hwm_kb", "wraps", "seconds",
                                    "v2xx", "v401", "vother", "f2xx", "f401", "fother", "unmarked",
                                    "foreign_cpu_pct", "per_conn_kib", "alive", "idle",
                                    "p999_ms", "st4xx", "err_connect", "err_read", "err_write", "err_timeout",
                                    "client_errors", "log_lines", "served_b1", "served_b2", "served_b3",
                                    "tokens_minted", "tokens_cached", "proofs",
                                    "spans_exported", "spans_failed", "spans_dropped")}
    s["foreign_cpu_max"] = max((r.get("foreign_cpu_pct") or 0) for r in runs)
    # Where the goal is zero, every run counts, not the median one.
    s["total"] = {k: sum(r.get(k) or 0 for r in runs)
                  for k in ("st5xx", "v2xx", "v401", "vother", "f2xx", "socket_errors", "non2xx", "unmarked",
                            "client_errors", "requests", "err_connect", "err_read", "err_write", "err_timeout")}
    s["rounds"] = [r.get("rps") for r in runs]
    s["n"] = len(runs)
    return s


def fmt_int(v):
    return "–" if v is None else f"{v:,.0f}"


def fmt_ms(v):
    return "–" if v is None else (f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms")


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def fmt_ratio(v):
    return "–" if v is None else f"{v:.2f}×"


def machine_info():
    def out(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception:
            return "?"
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
            model = m.group(1).strip() if m else "?"
    except OSError:
        pass
    commit = out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "gateway", "crates", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": os.uname().release,
        "nginx": out(["nginx", "-v"]).replace("nginx version: ", ""),
        "haproxy": out(["haproxy", "-v"]),
        "wrk": out(["wrk", "-v"]).split(" Copyright")[0],
        "tollgate": out([BIN, "--version"]) + f", git {commit}" + (" + uncommitted changes in gateway/ or crates/" if dirty else ""),
    }


def scenario_table(sc, res, fails):
    lines = ["| target | req/s (median) | p50 | p99 | non-2xx | other CPU | req/s per round |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name in sc["targets"]:
        s = summary(res.get(name, []))
        if name in fails and not s:
            lines.append(f"| {name} | **failed** | | | | | {fails[name]} |")
            continue
        if not s:
            lines.append(f"| {name} | not run | | | | | |")
            continue
        rounds = " / ".join(f"{v:,.0f}" for v in s["rounds"])
        note = f" (failed later: {fails[name]})" if name in fails else ""
        lines.append(f"| {name} | {fmt_int(s['rps'])} | {fmt_ms(s['p50_ms'])} | {fmt_ms(s['p99_ms'])} | "
                     f"{fmt_int(s['non2xx'])} | {s['foreign_cpu_pct']:.0f}% | {rounds}{note} |")
    if sc["name"] == "rotate":
        lines.append("| haproxy | n/a | | | | | keys are loaded at start; no live rotation |")
    return lines


def failover_table(sc, res, fails, S):
    """failover: errors seen by clients and latency per target, the backends' shares, the
    faults as applied and what the proxies logged."""
    secs = [s["seconds"] for s in S.values() if s and s.get("seconds")]
    d = f"D = {statistics.median(secs):.0f} s" if secs else f"D ≥ {FAILOVER_MIN_S} s"
    lines = [f"Fault script, the same for every target and run ({d}; three backends started fresh for each run): "
             + "; ".join(f"{frac:.2f}·D {what}" for frac, what, _ in FAILOVER_PLAN)
             + ". Plain `GET /api/item` without a token, `wrk -t1 -c50`; each target balances by least "
             "connections / least requests with 1 s connect and read timeouts and one retry on another backend "
             "(nginx: `proxy_next_upstream error timeout http_502 http_503`, `max_fails=3 fail_timeout=5s`, "
             "no active checks; HAProxy: `httpchk` every 1 s, fall 2 / rise 2, `observe layer7 error-limit 3 "
             "on-error mark-down`, `retry-on conn-failure empty-response response-timeout 502 503` with "
             "`redispatch`; tollgate: `peak_ewma`, `retry_budget` 50 %, HTTP health check every 1 s, thresholds 2 / 2, "
             "`outlier_detection` 3 failures / 5 s, `retry_on: [reset, 502, 503]`). Errors seen by clients = "
             "non-2xx answers + wrk's socket errors. Median run; \"served\" counts the requests each backend "
             "answered (b1 only since its restart).", "",
             "| target | requests | req/s | non-2xx (5xx) | socket errors conn / read / write / timeout | "
             "**errors seen by clients** | p50 | **p99** | p99.9 | served b1 / b2 / b3 | other CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in sc["targets"]:
        s = S.get(name)
        if not s:
            lines.append(f"| {name} | **failed**: {fails.get(name, 'not run')} | | | | | | | | | |")
            continue
        lines.append(
            f"| {name} | {fmt_int(s['requests'])} | {fmt_int(s['rps'])} | {fmt_int(s['non2xx'])} ({fmt_int(s['st5xx'])}) | "
            f"{fmt_int(s['err_connect'])} / {fmt_int(s['err_read'])} / {fmt_int(s['err_write'])} / {fmt_int(s['err_timeout'])} | "
            f"**{fmt_int(s['client_errors'])}** | {fmt_ms(s['p50_ms'])} | **{fmt_ms(s['p99_ms'])}** | {fmt_ms(s['p999_ms'])} | "
            f"{fmt_int(s['served_b1'])} / {fmt_int(s['served_b2'])} / {fmt_int(s['served_b3'])} | {s['foreign_cpu_pct']:.0f}% |")
    tot = [f"{t} {S[t]['total']['client_errors']:,.0f} in {S[t]['total']['requests']:,.0f} answers"
           for t in sc["targets"] if S.get(t)]
    if tot:
        n = max(S[t]["n"] for t in sc["targets"] if S.get(t))
        lines += ["", f"Errors seen by clients, all {n} run(s) added up: " + "; ".join(tot) + "."]
    lag, errs = 0.0, []
    for name in sc["targets"]:
        for run in res.get(name, []):
            for e in run.get("faults", []):
                lag = max(lag, e["done_s"] - e["planned_s"])
                if e["error"]:
                    errs.append(f"{name}: {e['what']}: {e['error']}")
            if len(run.get("faults", [])) < len(FAILOVER_PLAN):
                errs.append(f"{name}: only {len(run.get('faults', []))} of {len(FAILOVER_PLAN)} faults applied")
    lines += ["", f"Faults applied at most {lag:.2f} s after their planned time (b1's restart: once it listens)"
              + (". Problems: " + "; ".join(errs[:5]) if errs else "") + "."]
    logs = []
    for name in sc["targets"]:
        runs = res.get(name, [])
        if not runs or runs[0].get("log_lines") is None:
            continue
        r0 = runs[len(runs) // 2]
        top = "; ".join(f"{n} × `{k.strip()[:200]}`" for k, n in (r0.get("log_top") or [])[:3])
        logs.append(f"- {name}: {r0['log_lines']:,} line(s)" + (f", most frequent: {top}" if top else ""))
    if logs:
        lines += ["", "What the proxies logged during a run (median run; nginx: error log at `warn`; HAProxy: its "
                  "stderr, no log section; tollgate: `level: warn`, no access log, backtrace frames not counted; "
                  "numbers masked as N):", ""] + logs
    runs = res.get("tollgate", [])
    if runs and runs[len(runs) // 2].get("metrics") is not None:
        m = runs[len(runs) // 2]["metrics"]
        lines += ["", "tollgate's counters after the median run: "
                  + (", ".join(f"`{k}` {v:,.0f}" for k, v in sorted(m.items())) if m else "no retries, outlier events "
                     "or open circuits") + "."]
    return lines


def ratio_line(sc_name, S):
    tg = S.get("tollgate")
    if not tg:
        return []
    parts = []
    for other in ("haproxy", "nginx", "tollgate-open", "direct"):
        o = S.get(other)
        if o:
            parts.append(f"tollgate/{other}: req/s **{fmt_ratio(ratio(tg['rps'], o['rps']))}**, "
                         f"p99 {fmt_ratio(ratio(tg['p99_ms'], o['p99_ms']))}")
    if S.get("tollgate-10k"):
        o = S["tollgate-10k"]
        parts.append(f"tollgate-10k/tollgate: req/s **{fmt_ratio(ratio(o['rps'], tg['rps']))}**, "
                     f"p99 {fmt_ratio(ratio(o['p99_ms'], tg['p99_ms']))}")
    return ["", "Ratios (medians): " + "; ".join(parts) + "."] if parts else []


IDENTITY_SCENARIOS = ("apikey", "upstream-token", "dpop")


def identity_table(SS, failures):
    """apikey, upstream-token and dpop next to tollgate's repeat: what each feature costs
    (tollgate only: HAProxy and nginx do none of them)."""
    base = (SS.get("repeat") or {}).get("tollgate")
    lines = ["## Identity features and tracing: cost next to repeat", "",
             "tollgate only (HAProxy and nginx take no API keys, mint no tokens and check no DPoP proofs); same "
             "setup as `repeat`. `repeat` and `upstream-token` cycle through the same 1,000 callers' tokens, `apikey` "
             "through 1,000 callers' API keys (`X-API-Key`) on the same route; `dpop` sends one caller's "
             "DPoP-bound token with a new proof each time; `tollgate-trace1` and `tollgate-trace100` are targets "
             "of the `repeat` scenario itself (interleaved with `tollgate` in its rounds): `logging.tracing` on "
             "at 1 % and 100 % sampling, its collector stopped. "
             "Errors: non-2xx answers + socket errors (median run). \"vs repeat\": req/s ÷ tollgate's `repeat` "
             "req/s in this run.", "",
             "| scenario | req/s | p50 | p99 | errors | vs repeat |", "|---|---:|---:|---:|---:|---:|"]
    rows = [("repeat", "repeat", "tollgate")] + [(n, n, "tollgate") for n in IDENTITY_SCENARIOS] + \
           [(f"repeat, {t}", "repeat", t) for t in TRACE_TARGETS]
    for name, scenario, target in rows:
        s = (SS.get(scenario) or {}).get(target)
        why = (failures.get(scenario) or {}).get(target)
        if not s:
            lines.append(f"| {name} | **failed**: {why} | | | | |" if why else
                         f"| {name} | not run | | | | |")
            continue
        vs = fmt_ratio(ratio(s["rps"], base["rps"])) if base else "– (repeat not run)"
        note = f" (failed later: {why})" if why else ""
        lines.append(f"| {name}{note} | {fmt_int(s['rps'])} | {fmt_ms(s['p50_ms'])} | {fmt_ms(s['p99_ms'])} | "
                     f"{fmt_int(s['non2xx'] + s['socket_errors'])} | {vs} |")
    return lines + [""]


def goal(text, value, want, higher_is_better=True, fmt=lambda v: f"{v:.3f}×"):
    if value is None:
        return (text, "not measured", "NOT MEASURED")
    ok = value >= want if higher_is_better else value <= want
    if ok:
        by = (value / want - 1) * 100 if higher_is_better else (1 - value / want) * 100 if want else 0
        return (text, fmt(value), f"met (by {by:.1f}%)" if by >= 0.05 else "met")
    short = (1 - value / want) * 100 if higher_is_better else (value / want - 1) * 100
    return (text, fmt(value), f"**NOT MET** ({short:.1f}% short)" if higher_is_better else f"**NOT MET** ({short:.1f}% over)")


def goals(SS):
    g = []
    rep = SS.get("repeat", {})
    uni = SS.get("unique", {})
    frg = SS.get("forged", {})
    rot = SS.get("rotate", {})
    r10 = SS.get("routes10k", {})

    def get(S, t, k):
        return (S.get(t) or {}).get(k)

    g.append(goal("repeat: tollgate ≥ 2.0× haproxy req/s",
                  ratio(get(rep, "tollgate", "rps"), get(rep, "haproxy", "rps")), 2.0))
    g.append(goal("repeat: tollgate ≥ 0.85× tollgate-open req/s",
                  ratio(get(rep, "tollgate", "rps"), get(rep, "tollgate-open", "rps")), 0.85))
    g.append(goal("repeat: tollgate ≥ 0.95× tollgate-open req/s (reused tokens cost next to nothing)",
                  ratio(get(rep, "tollgate", "rps"), get(rep, "tollgate-open", "rps")), 0.95))
    # The cold path against its limit: a request with a new token costs at least one ES256
    # verification (criterion median, `make bench`) plus the plain proxying of tollgate-open in
    # the same scenario; tollgate should reach 0.92 of 1 / (t_verify + 1 / open req/s).
    t_verify = criterion_median_s("ES256/tollgate_verify_signature")
    open_rps = get(uni, "tollgate-open", "rps")
    limit = 1 / (t_verify + 1 / open_rps) if t_verify and open_rps else None
    g.append(goal("unique: tollgate req/s ≥ 0.92 × 1 / (t_verify + 1 / tollgate-open req/s)"
                  + (f" (t_verify {t_verify * 1e6:.1f} µs, open {open_rps:,.0f} req/s: limit {limit:,.0f} req/s)"
                     if limit else " (t_verify from `make bench` missing)"),
                  ratio(get(uni, "tollgate", "rps"), limit), 0.92))
    g.append(goal("repeat: tollgate p99 ≤ haproxy p99 (ratio ≤ 1.0)",
                  ratio(get(rep, "tollgate", "p99_ms"), get(rep, "haproxy", "p99_ms")), 1.0,
                  higher_is_better=False))
    g.append(goal("unique: tollgate ≥ 1.2× haproxy req/s",
                  ratio(get(uni, "tollgate", "rps"), get(uni, "haproxy", "rps")), 1.2))
    # forged: the valid tenth's goodput against what the same tenth gets in repeat.
    ft = frg.get("tollgate")
    valid_rate = None
    if ft and ft.get("v2xx") is not None and ft.get("seconds"):
        valid_rate = ft["v2xx"] / ft["seconds"]
    g.append(goal("forged: tollgate's valid requests served at ≥ 0.8× their repeat rate "
                  "(2xx/s in forged ÷ (10% × tollgate repeat req/s))",
                  ratio(valid_rate, 0.1 * get(rep, "tollgate", "rps") if get(rep, "tollgate", "rps") else None), 0.8))
    if ft and ft.get("v2xx") is not None and ft["total"]["v2xx"] + ft["total"]["v401"] + ft["total"]["vother"] > 0:
        tot = ft["total"]
        answered = tot["v2xx"] + tot["v401"] + tot["vother"]
        g.append(goal(f"forged: every valid request succeeds and no forged one does (tollgate, all {ft['n']} run(s): "
                      f"valid 2xx ÷ valid answered; {tot['v401']:,.0f} valid refused 401, {tot['vother']:,.0f} other, "
                      f"{tot['f2xx']:,.0f} forged accepted)",
                      tot["v2xx"] / answered if tot["f2xx"] == 0 else 0.0, 1.0, fmt=lambda v: f"{v * 100:.2f}%"))
    else:
        g.append(goal("forged: every valid request succeeds", None, 1.0))
    if ft and ft.get("rss_after_kb") is not None:
        growth = (ft["rss_after_kb"] - ft["rss_before_kb"]) / 1024
        g.append(goal(f"forged: tollgate RSS bounded (growth during the run ≤ 64 MiB; "
                      f"{ft['rss_before_kb'] / 1024:.1f} → {ft['rss_after_kb'] / 1024:.1f} MiB, peak {ft['hwm_kb'] / 1024:.1f} MiB)",
                      growth, 64, higher_is_better=False, fmt=lambda v: f"+{v:.1f} MiB"))
    else:
        g.append(goal("forged: tollgate RSS bounded", None, 64))
    con = SS.get("connections", {})
    g.append(goal(f"connections: tollgate ≤ 8 KiB of RSS per idle keep-alive connection "
                  f"({IDLE_CONNECTIONS:,} connections)", get(con, "tollgate", "per_conn_kib"), 8.0,
                  higher_is_better=False, fmt=lambda v: f"{v:.1f} KiB"))
    ten = ratio(get(r10, "tollgate-10k", "rps"), get(r10, "tollgate", "rps"))
    g.append(goal("routes10k: 10,000 routes within 5% of 1 route (req/s ratio ≥ 0.95, same rounds)", ten, 0.95))
    rt = rot.get("tollgate")
    if rt and rt.get("st5xx") is not None:
        tot = rt["total"]
        bad5, bad401 = tot["st5xx"], tot["v401"]
        others = tot["non2xx"] - bad5 - bad401
        status = "met" if bad5 == 0 and bad401 == 0 and tot["socket_errors"] == 0 else "**NOT MET**"
        g.append(("rotate: zero 5xx and zero false 401 while the JWKS rotates every 2 s",
                  f"{bad5:,.0f} 5xx, {bad401:,.0f} 401, {others:,.0f} other non-2xx, {tot['socket_errors']:,.0f} "
                  f"socket errors in {tot['v2xx'] + tot['non2xx']:,.0f} answers ({rt['n']} run(s))",
                  status))
    else:
        g.append(("rotate: zero 5xx and zero false 401", "not measured", "NOT MEASURED"))
    # Tracing: what 1 % and 100 % sampling cost next to repeat (same rounds), with the
    # collector stopped; and that no request is lost for it.
    for name, want in (("tollgate-trace1", 0.95), ("tollgate-trace100", None)):
        tr = rep.get(name)
        vs = ratio(tr["rps"], get(rep, "tollgate", "rps")) if tr else None
        if want is not None:
            g.append(goal(f"repeat: {name} (tracing at 1 % sampling, collector stopped) ≥ 0.95× tollgate req/s",
                          vs, want))
        if tr:
            lost = tr["total"]["non2xx"] + tr["total"]["socket_errors"]
            g.append((f"repeat: {name} loses no request with the collector stopped (all {tr['n']} run(s); "
                      f"{fmt_ratio(vs)} of tollgate's req/s)",
                      f"{lost:,.0f} non-2xx or socket errors in {tr['total']['requests']:,.0f} requests",
                      "met" if lost == 0 else "**NOT MET**"))
        else:
            g.append((f"repeat: {name} loses no request with the collector stopped", "not measured",
                      "NOT MEASURED"))
    g.append(goal("repeat: tollgate-open ≥ 0.8× nginx req/s",
                  ratio(get(rep, "tollgate-open", "rps"), get(rep, "nginx", "rps")), 0.8))
    fo = SS.get("failover", {})
    peers = ("haproxy", "nginx")
    if all(fo.get(t) for t in ("tollgate",) + peers):
        errs = {t: fo[t]["total"]["client_errors"] for t in ("tollgate",) + peers}
        ok = errs["tollgate"] == 0 or errs["tollgate"] < min(errs[t] for t in peers)
        g.append(("failover: tollgate has fewer errors seen by clients than haproxy and nginx (or none; all runs added up)",
                  ", ".join(f"{t} {v:,.0f}" for t, v in errs.items()), "met" if ok else "**NOT MET**"))
        p99 = {t: fo[t]["p99_ms"] for t in ("tollgate",) + peers}
        best = min(p99[t] for t in peers)
        g.append(goal("failover: tollgate p99 lower than haproxy's and nginx's (ratio to the lower of the two < 1.0; "
                      + ", ".join(f"{t} {fmt_ms(v)}" for t, v in p99.items()) + ")",
                      ratio(p99["tollgate"], best), 1.0, higher_is_better=False))
    else:
        g.append(("failover: tollgate has fewer errors seen by clients and a lower p99 than haproxy and nginx",
                  "not measured", "NOT MEASURED"))
    return g


def criterion_median_s(name):
    """The median of a criterion benchmark from the last `make bench`, in seconds (None if absent)."""
    f = os.path.join(ROOT, "target", "criterion", name, "new", "estimates.json")
    try:
        with open(f) as fh:
            return json.load(fh)["median"]["point_estimate"] / 1e9
    except (OSError, KeyError, ValueError):
        return None


def criterion_table():
    files = sorted(glob.glob(os.path.join(ROOT, "target", "criterion", "**", "new", "estimates.json"), recursive=True))
    rows = []
    for f in files:
        try:
            with open(f) as fh:
                est = json.load(fh)
            ns = est["median"]["point_estimate"]
        except (OSError, KeyError, ValueError):
            continue
        name = os.path.relpath(os.path.dirname(os.path.dirname(f)), os.path.join(ROOT, "target", "criterion"))
        val = f"{ns:.0f} ns" if ns < 1000 else (f"{ns / 1000:.2f} µs" if ns < 1e6 else f"{ns / 1e6:.2f} ms")
        rows.append(f"| {name} | {val} |")
    if not rows:
        return []
    return ["## Criterion medians", "",
            "From `target/criterion/*/new/estimates.json` (the last `make bench`; not run by the load test).", "",
            "| benchmark | median |", "|---|---:|"] + rows + [""]


def svg_chart(SS, path):
    """Horizontal bars, one row per scenario: req/s on the left, p99 on the right."""
    colors = {"direct": "#8c8c8c", "nginx": "#2e7d32", "haproxy": "#1565c0",
              "tollgate-open": "#f9a825", "tollgate": "#c62828", "tollgate-10k": "#6a1b9a",
              "tollgate-trace1": "#ef6c00", "tollgate-trace100": "#8d6e63"}
    bar_h, gap, label_w, panel_w, top = 16, 4, 110, 330, 50
    width = label_w + 2 * (panel_w + 90) + 20
    y = top
    parts = []
    for sc in SCENARIOS:
        S = SS.get(sc["name"])
        rows = [(t, S[t]) for t in sc["targets"] if S and S.get(t)]
        if not rows or sc.get("idle"):
            continue
        max_rps = max(s["rps"] for _, s in rows) or 1
        max_p99 = max(s["p99_ms"] for _, s in rows) or 1
        parts.append(f'<text x="10" y="{y + 12}" font-weight="bold">{sc["name"]}</text>')
        y += 20
        for t, s in rows:
            c = colors.get(t, "#444")
            w1 = max(1.0, panel_w * s["rps"] / max_rps)
            w2 = max(1.0, panel_w * s["p99_ms"] / max_p99)
            x2 = label_w + panel_w + 90
            parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{t}</text>')
            parts.append(f'<rect x="{label_w}" y="{y}" width="{w1:.1f}" height="{bar_h}" fill="{c}"/>')
            parts.append(f'<text x="{label_w + w1 + 4:.1f}" y="{y + 12}">{s["rps"]:,.0f}</text>')
            parts.append(f'<rect x="{x2}" y="{y}" width="{w2:.1f}" height="{bar_h}" fill="{c}" opacity="0.75"/>')
            parts.append(f'<text x="{x2 + w2 + 4:.1f}" y="{y + 12}">{s["p99_ms"]:.2f} ms</text>')
            y += bar_h + gap
        y += 14
    height = y + 10
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="10" y="20" font-size="15" font-weight="bold">tollgate load test: medians over rounds</text>',
            f'<text x="{width - 10}" y="20" text-anchor="end" fill="#555">each scenario scaled to its own maximum</text>',
            f'<text x="{label_w}" y="40" font-weight="bold">requests/s (longer is better)</text>',
            f'<text x="{label_w + panel_w + 90}" y="40" font-weight="bold">p99 latency (shorter is better)</text>']
    with open(path, "w") as f:
        f.write("\n".join(head + parts + ["</svg>"]) + "\n")


def write_report(SS, results, failures, extra, info, mode, duration, rounds, started, wall, gate):
    gate_desc = f"{gate.per_run} s (at most {gate.total} s in all; {gate.spent:.0f} s were spent waiting)"
    out = ["# tollgate load test results", "",
           f"Generated by `{'QUICK=1 ' if mode == 'quick' else ''}make loadtest` ({mode} mode: {rounds} round(s) of "
           f"{duration} s per target and scenario, targets interleaved within each round; tables give the median "
           f"over rounds). Started {started} UTC; the harness took {wall:.0f} s.", "",
           "## Machine", "",
           f"- {info['nproc']} CPUs: {info['cpu']}; kernel {info['kernel']}",
           f"- nginx {info['nginx']}; {info['haproxy']}; {info['wrk']}",
           f"- tollgate: {info['tollgate']}", "",
           "## Setup", "",
           f"- Everything on 127.0.0.1. Upstream: nginx, 1 worker, `return 200 \"ok\"`, pinned to CPU {LOAD_CPU}. "
           f"Load: `wrk -t1 -c{CONNECTIONS}` pinned to CPU {LOAD_CPU}, `loadtest/tokens.lua` rotating "
           "`Authorization: Bearer` through a token file, one token per request.",
           f"- Each proxy pinned to CPU {PROXY_CPU} with one worker (nginx `worker_processes 1`, HAProxy `nbthread 1`, "
           "tollgate `server.threads: 1`), restarted for every run (cold token cache, empty limiter), logging off. "
           "`direct` is wrk straight at the upstream.",
           "- tollgate: ES256 provider from a `jwks_file`, issuer + audience, policy `scopes: [api:read]`, a per-`sub` "
           "limit (100000/s: never reached, except `limited`: 5/s, burst 10), `forward_claims` sub → X-Auth-Subject, "
           "metrics listener on. HAProxy 2.6: `http_auth_bearer`, `jwt_header_query('$.alg')` = ES256, "
           "`jwt_verify` = 1, iss/aud equality, `exp` > `date()` − 30 s, scope regex, `track-sc0` on sub with "
           "`http_req_rate(10s)`, X-Auth-Subject set after deleting the client's. Before measuring, each run checks "
           "valid → 200, tampered → 401, none → 401, no api:read → 403 and the forwarded X-Auth-Subject (the auth "
           "targets), valid → 200 (the others).",
           "- non-2xx: responses with status ≥ 400 as wrk counts them (`forged`, `limited`, `rotate` count every status "
           "in the Lua script). Socket errors are listed where any occurred.",
           f"- other CPU: CPU time used during the run by processes the harness did not start (other sessions share "
           f"this machine), in % of one core, median over rounds (from /proc/stat minus the harness's, the upstream's "
           f"and the proxy's own time). Each run waits up to {gate_desc} for that to fall under {QUIET_PCT:.0f}%.", ""]
    for sc in SCENARIOS:
        if sc["name"] not in results:
            continue
        S = SS.get(sc["name"], {})
        out += [f"## {sc['title']}", ""]
        if sc.get("idle"):
            out += ["Each target gets the same valid token on every connection, one request, then the "
                    "connection stays open and idle; RSS is the target's whole process tree (nginx: master "
                    "and worker), 1 s after the last answer. Median over rounds.", "",
                    "| target | RSS before | RSS after | per idle connection | still open |",
                    "|---|---:|---:|---:|---:|"]
            for t in sc["targets"]:
                st = S.get(t)
                why = failures.get(sc["name"], {}).get(t)
                if st:
                    out.append(f"| {t} | {st['rss_before_kb'] / 1024:.1f} MiB | {st['rss_after_kb'] / 1024:.1f} MiB | "
                               f"**{st['per_conn_kib']:.1f} KiB** | {fmt_int(st['alive'])} of {fmt_int(st['idle'])} |")
                else:
                    out.append(f"| {t} | failed: {why or 'not run'} | | | |")
            out.append("")
            continue
        if sc.get("failover"):
            out += failover_table(sc, results[sc["name"]], failures.get(sc["name"], {}), S)
        else:
            out += scenario_table(sc, results[sc["name"]], failures.get(sc["name"], {}))
            out += ratio_line(sc["name"], S)
        errs = [f"{t}: {s['socket_errors']:,.0f}" for t, s in S.items() if s and s.get("socket_errors")]
        if errs and not sc.get("failover"):
            out += ["", "Socket errors (median run): " + ", ".join(errs) + "."]
        busy = [f"{t} {s['foreign_cpu_max']:.0f}%" for t, s in S.items() if s and s.get("foreign_cpu_max", 0) > DISTURBED_PCT]
        if busy:
            out += ["", f"**Disturbed:** processes outside the harness used more than {DISTURBED_PCT:.0f}% of a core during some runs "
                    "(max per target: " + ", ".join(busy) + "); those numbers are less reliable."]
        if sc["name"] == "unique":
            notes = []
            for t, s in S.items():
                if s and s.get("wraps") is not None and s["requests"]:
                    used = s["requests"] / N_UNIQUE
                    notes.append(f"{t} {s['requests']:,.0f} requests = {used:.2f}× the token list"
                                 + (" (wrapped: tokens reused)" if s["wraps"] else " (no token reused)"))
            out += ["", "Token use per run (median): " + "; ".join(notes) + ". Only haproxy and tollgate "
                    "verify tokens, so a wrap matters only for them."]
        if sc["name"] == "forged":
            rows = []
            for t in sc["targets"]:
                s = S.get(t)
                if not s or s.get("v2xx") is None:
                    continue
                vr = s["v2xx"] / s["seconds"]
                rep = SS.get("repeat", {}).get(t)
                rel = f"{vr / (0.1 * rep['rps']):.2f}×" if rep else "–"
                answered = s["v2xx"] + s["v401"] + s["vother"]
                pct = f"{s['v2xx'] / answered * 100:.2f}%" if answered else "–"
                rows.append(f"| {t} | {fmt_int(answered)} | {fmt_int(s['v2xx'])} ({pct}) | {fmt_int(s['v401'])} / "
                            f"{fmt_int(s['vother'])} | {vr:,.0f} | {rel} | {fmt_int(s['f401'])} / {fmt_int(s['fother'])} / "
                            f"**{fmt_int(s['f2xx'])}** |")
            if rows:
                out += ["", "Valid requests under attack (median run; requests told apart by the `X-Request-Id` the "
                        "script sends and the target returns). \"vs repeat\": valid 2xx/s ÷ 10% of the same "
                        "target's `repeat` req/s.", "",
                        "| target | valid answered | valid 2xx | valid 401 / other | valid 2xx/s | vs repeat | "
                        "forged 401 / other / **2xx** |", "|---|---:|---:|---:|---:|---:|---:|"] + rows
        if sc["name"] == "limited":
            rows = []
            for t in sc["targets"]:
                s = S.get(t)
                if s and s.get("st429") is not None:
                    rows.append(f"{t}: {fmt_int(s['st429'])} × 429 of {fmt_int(s['requests'])} "
                                f"({s['st429'] / s['requests'] * 100:.1f}%; half the requests are the 2 hot subjects')"
                                f", {fmt_int(s['st2xx'])} × 2xx")
            if rows:
                out += ["", "429s (median run): " + "; ".join(rows) + "."]
        if sc["name"] == "rotate":
            e = extra.get("rotate", {})
            s = S.get("tollgate")
            if s:
                out += ["", f"Rotations written: {e.get('rotations', 0)} over {s['n']} run(s); reloads tollgate "
                        f"reported (`tollgate_jwks_fetch_total{{result=\"success\"}}`): {e.get('reloads', 0):.0f}. "
                        f"Median run: {fmt_int(s['st5xx'])} × 5xx, {fmt_int(s['v401'])} × 401 (every token is valid), {fmt_int(s['st2xx'])} × 2xx."
                        + (f" Rotation errors: {'; '.join(e['rotate_errors'][:3])}" if e.get("rotate_errors") else "")]
        if sc["name"] == "upstream-token" and S.get("tollgate"):
            s = S["tollgate"]
            out += ["", f"Route: `upstream_token: {UPSTREAM_TOKEN}`, signed with an Ed25519 key (`auth.signing_keys`). "
                    f"Upstream tokens in the median run (`tollgate_upstream_tokens_total`): "
                    f"{fmt_int(s['tokens_minted'])} minted, {fmt_int(s['tokens_cached'])} from the per-caller cache: "
                    "after one signature per caller, this measures the cache-hit path."]
        if sc["name"] == "repeat":
            for t, r in TRACE_TARGETS.items():
                s = S.get(t)
                if s:
                    out += ["", f"`{t}`: `logging.tracing: {{ sample_ratio: {r} }}`, `endpoint` a loopback port "
                            "nothing listens on. Spans in the median run (`tollgate_trace_spans_total`): "
                            f"{fmt_int(s['spans_exported'])} exported, {fmt_int(s['spans_failed'])} failed (the "
                            f"export could not connect), {fmt_int(s['spans_dropped'])} dropped (queue full); "
                            f"requests lost in all runs: {fmt_int(s['total']['non2xx'] + s['total']['socket_errors'])}."]
        if sc["name"] == "dpop" and S.get("tollgate"):
            s = S["tollgate"]
            out += ["", f"Provider `dpop: required`. Each run's proofs are signed just before it by "
                    f"`loadtest/dpop_proofs.py` ({fmt_int(s['proofs'])} per run: the run's seconds × {DPOP_MAX_RPS:,}/s, "
                    "a ceiling; a run that needs more fails rather than replay one) and sent once each, in order, "
                    "by `tokens.lua` (`Authorization: DPoP`, `DPoP: <proof>`). Every request carries a new `jti`, so "
                    "every proof's ES256 signature is verified and its `jti` recorded."]
        out.append("")
    if any(n in results for n in IDENTITY_SCENARIOS):
        out += identity_table(SS, failures)
    # Memory
    mem = []
    for sc in SCENARIOS:
        if sc.get("idle"):
            continue
        for t, s in (SS.get(sc["name"]) or {}).items():
            if s and s.get("rss_after_kb") is not None and t in ("haproxy", "tollgate", "tollgate-10k", "tollgate-open"):
                mem.append(f"| {sc['name']} | {t} | {s['rss_before_kb'] / 1024:.1f} MiB | "
                           f"{s['rss_after_kb'] / 1024:.1f} MiB | {s['hwm_kb'] / 1024:.1f} MiB |")
    if mem:
        out += ["## Memory (VmRSS of the proxy process before and after wrk, peak VmHWM; median run)", "",
                "| scenario | target | before | after | peak |", "|---|---|---:|---:|---:|"] + mem + [""]
    out += ["## Goals", "", "Ratios of medians from this run; reported, never asserted.", "",
            "| goal | measured | verdict |", "|---|---|---|"]
    for text, val, verdict in goals(SS):
        out.append(f"| {text} | {val} | {verdict} |")
    out.append("")
    out += ["Where a goal is not met, the reason from perf profiles of these scenarios, and what each "
            "optimisation gained (measured A/B), is in [loadtest/PROFILE.md](../PROFILE.md).", ""]
    fails = [(sc, t, why) for sc, d in failures.items() for t, why in d.items()]
    if fails:
        out += ["## Targets that failed", ""] + [f"- {sc} / {t}: {why}" for sc, t, why in fails] + [""]
    out += ["## Peer configuration: what HAProxy 2.6 does not do that tollgate does", "",
            "- Keys: one PEM public key file named in `jwt_verify`, read at start; no JWKS, no `kid` selection, "
            "no rotation without a reload (hence `rotate` n/a).",
            "- No verified-token cache: every request verifies the signature (tollgate caches verdicts by SHA-256 of "
            "the token, which is what `repeat` rewards and `unique` defeats).",
            "- `aud` compared as a single string (json_query cannot search an array); scope by regex on the "
            "space-separated claim; `nbf`/`iat` not checked; no `alg` allow-list per key beyond the fixed ES256.",
            "- The limit is a 10 s sliding request rate from a stick table (counts refused requests too), not a GCRA "
            "with burst; no `RateLimit-*` headers.",
            "- Refusals are short fixed JSON bodies with `WWW-Authenticate`; it echoes a client's X-Request-Id "
            "(added so the script can attribute answers) but never generates one; no metrics.",
            ""]
    out += criterion_table()
    out += ["![requests/s and p99 per target](chart.svg)", ""]
    with open(os.path.join(RESULTS_DIR, "RESULTS.md"), "w") as f:
        f.write("\n".join(out))


def readme_block(SS, info, mode, rounds, duration, started):
    lines = ["<!-- loadtest:begin -->",
             f"End-to-end load test (`make loadtest`, {mode} mode, {started} UTC, tollgate {info['tollgate'].split(', ', 1)[-1]}): "
             f"every proxy on one pinned core with one worker, `wrk -t1 -c{CONNECTIONS}` and the upstream nginx on the "
             f"other core; medians of {rounds} interleaved round(s) of {duration} s. Full report with the other "
             "scenarios, the goals and the HAProxy compromises: "
             "[loadtest/results/RESULTS.md](../loadtest/results/RESULTS.md).", ""]
    for name in ("repeat", "unique"):
        S = SS.get(name)
        if not S:
            continue
        sc = next(s for s in SCENARIOS if s["name"] == name)
        lines += [f"`{name}`: {sc['title'].split(': ', 1)[1]}", "",
                  "| target | req/s | p50 | p99 | non-2xx |", "|---|---:|---:|---:|---:|"]
        for t in sc["targets"]:
            s = S.get(t)
            if s:
                lines.append(f"| {t} | {fmt_int(s['rps'])} | {fmt_ms(s['p50_ms'])} | {fmt_ms(s['p99_ms'])} | {fmt_int(s['non2xx'])} |")
            else:
                lines.append(f"| {t} | failed | | | |")
        lines += ratio_line(name, S)
        lines.append("")
    lines.append("<!-- loadtest:end -->")
    block = "\n".join(lines)
    with open(README) as f:
        text = f.read()
    begin, end = "<!-- loadtest:begin -->", "<!-- loadtest:end -->"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        sentence = re.search(r"^The end-to-end load test[^\n]*not built yet\.[ \t]*$", text, re.M)
        if sentence:
            text = text[:sentence.start()] + block + text[sentence.end():]
        else:
            m = re.search(r"^## Figures\n", text, re.M)
            if not m:
                log("docs/performance.md has no Figures section: its loadtest block was not written")
                return
            nxt = re.search(r"^## ", text[m.end():], re.M)
            at = m.end() + (nxt.start() if nxt else len(text) - m.end())
            text = text[:at].rstrip("\n") + "\n\n" + block + "\n\n" + text[at:]
    with open(README, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------- main

def ensure_binary():
    def newest_source():
        newest = 0.0
        for base in ("gateway", "crates"):
            for dirpath, dirnames, files in os.walk(os.path.join(ROOT, base)):
                dirnames[:] = [d for d in dirnames if d not in ("target", "fuzz")]
                for fn in files:
                    if fn.endswith(".rs") or fn == "Cargo.toml":
                        newest = max(newest, os.path.getmtime(os.path.join(dirpath, fn)))
        for fn in ("Cargo.toml", "Cargo.lock"):
            p = os.path.join(ROOT, fn)
            if os.path.exists(p):
                newest = max(newest, os.path.getmtime(p))
        return newest

    if os.path.exists(BIN) and os.path.getmtime(BIN) >= newest_source():
        return
    log("target/release/tollgate is absent or older than the sources: cargo build --release -p tollgate")
    r = subprocess.run(["cargo", "build", "--release", "-p", "tollgate"], cwd=ROOT)
    if r.returncode != 0:
        if os.path.exists(BIN):
            log("the build failed; measuring the existing (older) binary")
        else:
            raise Failure("cargo build --release -p tollgate failed and there is no binary")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~2 s runs, 1 round (also QUICK=1)")
    ap.add_argument("--duration", type=int, help="seconds per run (default 8, quick 2)")
    ap.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    ap.add_argument("--only", help="comma-separated scenarios (for debugging; the report then lists only those)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite docs/performance.md's loadtest block")
    ap.add_argument("--report-from", metavar="RUNS_JSON",
                    help="measure nothing: re-render the report from a saved results/runs.json")
    ap.add_argument("--no-build", action="store_true",
                    help="use target/release/tollgate as it is (make's `build` prerequisite just built it)")
    ap.add_argument("--results-dir", metavar="DIR",
                    help="write RESULTS.md, chart.svg and runs.json (also with --only) into DIR instead of "
                         "loadtest/results")
    a = ap.parse_args()
    global RESULTS_DIR
    if a.results_dir:
        RESULTS_DIR = os.path.abspath(a.results_dir)
    quick = a.quick or os.environ.get("QUICK", "") not in ("", "0")
    mode = "quick" if quick else "full"
    duration = a.duration or (2 if quick else 8)
    rounds = a.rounds or (1 if quick else 3)
    only = set(a.only.split(",")) if a.only else None
    if a.report_from:
        with open(a.report_from) as f:
            render_all(json.load(f), write_readme=not a.no_readme)
        return 0

    def on_term(signum, frame):
        raise KeyboardInterrupt
    # Explicitly, also for SIGINT: a shell starting us in the background would have it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)

    # The connections scenario holds 10,000 sockets here and in each target.
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, 65536)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        # Without CAP_SYS_RESOURCE the hard limit stays; the soft one can still rise to it.
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if IDLE_CONNECTIONS < 10_000:
        log(f"open-file hard limit {hard}: the connections scenario holds {IDLE_CONNECTIONS:,} connections, not 10,000")
    t0 = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    try:
        for tool in ("nginx", "haproxy", "wrk", "taskset", "openssl"):
            if not shutil.which(tool):
                raise Failure(f"{tool} is missing (make deps-loadtest installs it)")
        if (os.cpu_count() or 1) < 2:
            raise Failure("needs 2 CPUs (proxy on CPU 0, wrk and upstream on CPU 1)")
        if a.no_build and os.path.exists(BIN):
            log("using target/release/tollgate as built by make")
        else:
            ensure_binary()
        shutil.rmtree(WORK, ignore_errors=True)
        for d in ("keys", "tokens", "conf", "logs", "run"):
            os.makedirs(os.path.join(WORK, d), exist_ok=True)
        os.makedirs(RESULTS_DIR, exist_ok=True)
        log(f"{mode} mode: {rounds} round(s) x {duration} s per target; work files in {WORK}")
        keys = prepare_tokens()
        lab = Lab(keys, duration)
        lab.start_upstream()
        gate = QuietGate(per_run=3 if quick else 20, total=20 if quick else 150)
        results, failures, extra = run_all(lab, keys, duration, rounds, only, gate)
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        PROCS.stop_all()
        return 130
    except (Failure, subprocess.CalledProcessError, OSError) as e:
        detail = e.stderr.decode(errors="replace") if isinstance(e, subprocess.CalledProcessError) and e.stderr else ""
        log(f"could not run: {e} {detail}")
        PROCS.stop_all()
        return 1
    finally:
        PROCS.stop_all()

    measured = sum(len(runs) for d in results.values() for runs in d.values())
    if measured == 0:
        log("nothing was measured")
        return 1
    data = {"mode": mode, "duration": duration, "rounds": rounds, "started": started,
            "wall": time.monotonic() - t0, "gate": {"per_run": gate.per_run, "total": gate.total, "spent": gate.spent},
            "info": machine_info(), "results": results, "failures": failures, "extra": extra}
    if not only or a.results_dir:
        with open(os.path.join(RESULTS_DIR, "runs.json"), "w") as f:
            json.dump(data, f, indent=1)
    render_all(data, write_readme=not a.no_readme and not only)
    return 0


def render_all(data, write_readme):
    """RESULTS.md, chart.svg and (optionally) docs/performance.md's block from the measured runs."""
    results, mode = data["results"], data["mode"]
    SS = {sc: {t: summary(runs) for t, runs in d.items() if runs} for sc, d in results.items()}
    gate = QuietGate(data["gate"]["per_run"], data["gate"]["total"])
    gate.spent = data["gate"]["spent"]
    write_report(SS, results, data["failures"], data["extra"], data["info"], mode, data["duration"],
                 data["rounds"], data["started"], data["wall"], gate)
    svg_chart(SS, os.path.join(RESULTS_DIR, "chart.svg"))
    if write_readme:
        readme_block(SS, data["info"], mode, data["rounds"], data["duration"], data["started"])
    log(f"done in {data['wall']:.0f} s: {os.path.relpath(os.path.join(RESULTS_DIR, 'RESULTS.md'), ROOT)}, "
        f"{os.path.relpath(os.path.join(RESULTS_DIR, 'chart.svg'), ROOT)}")
    for text, val, verdict in goals(SS):
        log(f"goal: {text}: {val}: {verdict}")


if __name__ == "__main__":
    sys.exit(main())
