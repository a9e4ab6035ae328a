#!/usr/bin/env python3
"""Instructions per request of the `repeat` path, counted by callgrind (not timed).

    python3 loadtest/callgrind.py --bin target/release/tollgate [--bin OTHER ...]

For each binary: a `tollgate echo` upstream (natively), then the gateway under
`valgrind --tool=callgrind` twice, answering N1 and then N2 requests of the `repeat` kind
(the load test's route: a verified ES256 token from the cache, RBAC, a per-subject limit,
`forward_claims`, access log off) on one kept-alive connection. The difference of the two
runs' instruction totals over N2 - N1 requests is the cost of one request, start-up and
shutdown cancelled out. Everything runs on 127.0.0.1; each run stops by itself.
Instruction counts are user-space only (the kernel's share is not in them): use them to
compare two builds, not as a throughput figure.
"""
import argparse
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = os.path.join(ROOT, "conf", "dev", "es256-private.pem")
JWKS = os.path.join(ROOT, "conf", "dev", "jwks.json")
ISS, AUD, KID = "https://issuer.callgrind", "callgrind", "dev-es256"
N_TOKENS = 100


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, path, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"process exited early (status {proc.returncode})")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"127.0.0.1:{port}{path} not ready in {timeout} s")


CONFIG = """\
server: {{ threads: 1, work_stealing: false, grace_period: 1s, graceful_shutdown_timeout: 1s }}
listen: {{ http: "127.0.0.1:{port}" }}
metrics: {{ listen: "127.0.0.1:{metrics}" }}
logging: {{ level: warn, access_log: false{tracing} }}
auth:
  providers:
    - {{ name: cg, issuer: "{iss}", audiences: [{aud}], jwks_file: "{jwks}", refresh: {{ file_poll: 1h }} }}
  forward_claims: [{{ claim: sub, header: X-Auth-Subject }}]
policies:
  read: {{ allow: [{{ scopes: [api:read] }}] }}
upstreams:
  up: {{ backends: [{{ addr: "127.0.0.1:{upstream}" }}] }}
routes:
  - {{ name: api, path: /, upstream: up, policy: read, rate_limits: [{{ name: per-sub, key: "claim:sub", rate: "100000/s", burst: 100000 }}] }}
"""


def instructions(binary, tokens, upstream, n, work, tracing=None):
    port, metrics = free_port(), free_port()
    conf = os.path.join(work, "gateway.yaml")
    with open(conf, "w") as f:
        # --tracing R: tracing on at sample ratio R, its collector a port nothing listens on.
        extra = ("" if tracing is None else
                 f', tracing: {{ endpoint: "http://127.0.0.1:{free_port()}/v1/traces", sample_ratio: {tracing} }}')
        f.write(CONFIG.format(port=port, metrics=metrics, iss=ISS, aud=AUD, jwks=JWKS,
                              upstream=upstream, tracing=extra))
    out = os.path.join(work, f"callgrind.{n}.out")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, "run", "-c", conf],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(metrics, "/readyz", proc, 180)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(n):
            c.request("GET", f"/item/{i % 10}",
                      headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                sys.exit(f"request {i}: {r.status}")
        c.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    with open(out) as f:
        text = f.read()
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if not m:
        sys.exit(f"no instruction total in {out}")
    return int(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", action="append", required=True, help="a tollgate binary (repeatable)")
    ap.add_argument("--n1", type=int, default=200)
    ap.add_argument("--n2", type=int, default=1200)
    ap.add_argument("--tracing", type=float, action="append",
                    help="also measure each binary with logging.tracing at this sample ratio (repeatable)")
    args = ap.parse_args()
    first = os.path.abspath(args.bin[0])
    tokens = subprocess.run(
        [first, "token", "mint", "--key", KEY, "--kid", KID, "--iss", ISS, "--aud", AUD,
         "--scope", "api:read", "--sub", "user-{n}", "--count", str(N_TOKENS),
         "--expires-in", "2h"], check=True, capture_output=True, text=True).stdout.split()
    upstream = free_port()
    echo = subprocess.Popen([first, "echo", "--listen", f"127.0.0.1:{upstream}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(upstream, "/__echo/count", echo, 20)
        for binary in args.bin:
            for tracing in [None] + (args.tracing or []):
                with tempfile.TemporaryDirectory() as work:
                    a = instructions(os.path.abspath(binary), tokens, upstream, args.n1, work, tracing)
                    b = instructions(os.path.abspath(binary), tokens, upstream, args.n2, work, tracing)
                per = (b - a) / (args.n2 - args.n1)
                how = "" if tracing is None else f" with tracing at sample ratio {tracing}"
                print(f"{binary}{how}: {per:,.0f} instructions per request "
                      f"({a:,} for {args.n1}, {b:,} for {args.n2})", flush=True)
    finally:
        echo.kill()


if __name__ == "__main__":
    main()
