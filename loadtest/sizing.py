#!/usr/bin/env python3
"""Figures for the sizing section of docs/operations.md that `make loadtest` does not give:
the CPU a TLS handshake costs, and the Redis commands a request makes per shared limit.

Everything runs on 127.0.0.1: the release `tollgate` with one worker pinned to CPU 0, a
`tollgate echo` upstream and wrk pinned to CPU 1, a real `redis-server`. CPU time is the
gateway's own (utime + stime of its process, all threads, from /proc), so the figures are per
core-second of the gateway whatever the client could push. Writes
loadtest/results/SIZING.md. Run by `make sizing` (after `make build`).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "tollgate")
OUT = os.path.join(ROOT, "loadtest", "results", "SIZING.md")
SECONDS = int(os.environ.get("SIZING_SECONDS", "6"))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, within=20):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing listens on {port}")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def metric(port, name, labels=""):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line and not line.startswith("#"):
            rest = line[len(name):]
            if rest[:1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
    return total


def redis_calls(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    calls = {}
    for m in re.finditer(r"cmdstat_(\w+):calls=(\d+),usec=(\d+)", out):
        calls[m.group(1)] = int(m.group(2))
        calls[m.group(1) + ":usec"] = int(m.group(3))
    return calls


def redis_memory(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "memory"],
                         capture_output=True, text=True, check=True).stdout
    return int(re.search(r"used_memory:(\d+)", out).group(1))


def wrk(url, connections, extra=()):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{SECONDS}s",
           "--timeout", "5s", *extra, url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return int(m.group(1)), (errors.group(1) if errors else ""), int(non2xx.group(1)) if non2xx else 0


def measure(pid, metrics_port, url, connections, extra=()):
    """(requests the gateway answered, its CPU seconds, wrk's request count, wrk's errors)"""
    before_cpu = cpu_seconds(pid)
    before = metric(metrics_port, "tollgate_requests_total")
    n, errors, non2xx = wrk(url, connections, extra)
    cpu = cpu_seconds(pid) - before_cpu
    answered = metric(metrics_port, "tollgate_requests_total") - before
    return answered, cpu, n, errors, non2xx


def main():
    for tool in ("wrk", "redis-server", "redis-cli", "openssl", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (make deps-loadtest installs it)")
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run make build")
    work = tempfile.mkdtemp(prefix="tollgate-sizing-")
    procs = []
    try:
        key, cert = os.path.join(work, "key.pem"), os.path.join(work, "cert.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost"], check=True,
                       capture_output=True)
        upstream, redis, http, https, metrics = (free_port() for _ in range(5))
        procs.append(subprocess.Popen(["taskset", "-c", "1", BIN, "echo", "--listen",
                                       f"127.0.0.1:{upstream}"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["taskset", "-c", "1", "redis-server", "--port",
                                       str(redis), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", work],
                                      stdout=subprocess.DEVNULL))
        limit = "{ name: %s, key: %s, rate: 1000000/s, burst: 1000000, store: redis }"
        config = f"""
server: {{ threads: 1, work_stealing: false, grace_period: 1s, graceful_shutdown_timeout: 1s,
          http: {{ max_requests_per_connection: 100000000 }} }}
listen:
  http: 127.0.0.1:{http}
  https: 127.0.0.1:{https}
  tls: {{ certificates: [{{ cert: {cert}, key: {key} }}] }}
metrics: {{ listen: 127.0.0.1:{metrics} }}
logging: {{ level: warn, access_log: false }}
rate_limiting:
  redis: {{ url: "redis://127.0.0.1:{redis}/", timeout: 100ms, on_store_error: deny }}
upstreams:
  e: {{ backends: [{{ addr: "127.0.0.1:{upstream}" }}] }}
routes:
  - {{ name: open, path: /open, upstream: e, auth: none }}
  - name: one
    path: /one
    upstream: e
    auth: none
    rate_limits: [{limit % ("a", "route")}]
  - name: two
    path: /two
    upstream: e
    auth: none
    rate_limits: [{limit % ("a", "route")}, {limit % ("b", "client_ip")}]
"""
        conf = os.path.join(work, "gateway.yaml")
        with open(conf, "w") as f:
            f.write(config)
        checked = subprocess.run([BIN, "check", "--config", conf], capture_output=True, text=True)
        if checked.returncode != 0:
            sys.exit(checked.stdout + checked.stderr)
        gw = subprocess.Popen(["taskset", "-c", "0", BIN, "run", "--config", conf],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gw)
        for port in (upstream, redis, http, https, metrics):
            wait_port(port)
        # Warm up: connections to the upstream and to Redis, the script loaded.
        for path in ("/open", "/one", "/two"):
            for _ in range(20):
                urllib.request.urlopen(f"http://127.0.0.1:{http}{path}", timeout=5).read()

        rows = []
        results = {}
        for name, url, conns, extra in [
            ("plain HTTP/1.1, keep-alive", f"http://127.0.0.1:{http}/open", 50, ()),
            ("HTTPS/1.1 (TLS 1.3), keep-alive", f"https://127.0.0.1:{https}/open", 50, ()),
            ("HTTPS/1.1 (TLS 1.3), a new connection per request",
             f"https://127.0.0.1:{https}/open", 50, ("-H", "Connection: close")),
        ]:
            before_hs = metric(metrics, "tollgate_tls_handshakes_total")
            answered, cpu, n, errors, non2xx = measure(gw.pid, metrics, url, conns, extra)
            handshakes = metric(metrics, "tollgate_tls_handshakes_total") - before_hs
            results[name] = (answered, cpu, handshakes)
            rows.append(f"| {name} | {answered:,.0f} | {handshakes:,.0f} | {cpu:.2f} s | "
                        f"{answered / cpu:,.0f} | {1e6 * cpu / answered:.1f} µs | "
                        f"{non2xx} | {errors or 'none'} |")
        ka = results["HTTPS/1.1 (TLS 1.3), keep-alive"]
        close = results["HTTPS/1.1 (TLS 1.3), a new connection per request"]
        per_request = ka[1] / ka[0]
        per_handshake = (close[1] - per_request * close[0]) / max(close[2], 1)

        redis_rows = []
        evalsha_usec = []
        for path, limits in (("/open", 0), ("/one", 1), ("/two", 2)):
            before = redis_calls(redis)
            answered, cpu, n, errors, non2xx = measure(
                gw.pid, metrics, f"http://127.0.0.1:{http}{path}", 50)
            after = redis_calls(redis)
            delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            # A script's own calls (TIME, GET, SET) are counted too, but ride its round trip.
            trips = sum(v for k, v in delta.items() if k in ("evalsha", "eval", "script"))
            if delta.get("evalsha"):
                evalsha_usec.append(delta["evalsha:usec"] / delta["evalsha"])
            names = ", ".join(f"{k} {v:,}" for k, v in sorted(delta.items())
                              if v and k != "info" and not k.endswith(":usec"))
            redis_rows.append(f"| {limits} | {answered:,.0f} | {trips / answered:.3f} | "
                              f"{names or 'none'} | {answered / cpu:,.0f} | "
                              f"{1e6 * cpu / answered:.1f} µs | {non2xx} | {errors or 'none'} |")

        # What a DPoP proof's replay entry costs Redis: 100,000 keys as the gateway writes them
        # (`SET tollgate:dpop:<32 hex> 1 NX EX 60`), piped in.
        before_mem = redis_memory(redis)
        n_keys = 100_000
        lines = "".join(f"SET tollgate:dpop:{i:032x} 1 NX EX 60\r\n" for i in range(n_keys))
        subprocess.run(["redis-cli", "-p", str(redis), "--pipe"], input=lines, text=True,
                       capture_output=True, check=True)
        per_key = (redis_memory(redis) - before_mem) / n_keys
        usec = sorted(evalsha_usec)[len(evalsha_usec) // 2] if evalsha_usec else None

        git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                          if l.startswith("model name")), "?")
        text = f"""# Sizing figures

Generated by `make sizing` (`loadtest/sizing.py`) at git {git}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, on {os.cpu_count()} CPUs ({cpu_model}). One run of {SECONDS} s per row.

Setup: the release `tollgate`, `server.threads: 1`, pinned to CPU 0, access log off; a
`tollgate echo` upstream, `redis-server` and `wrk -t1 -c50` share CPU 1. CPU is the gateway
process's own time (utime + stime, all threads) over the row, so "per core-second" does not
depend on how hard the client could push. TLS: 1.3, an ECDSA P-256 certificate, wrk's
OpenSSL client; "a new connection per request" sends `Connection: close`, so each request is
one full handshake (no resumption).

## TLS

| traffic | requests | TLS handshakes | gateway CPU | requests per core-second | CPU per request | non-2xx | socket errors |
|---|---:|---:|---:|---:|---:|---:|---|
{chr(10).join(rows)}

A full TLS 1.3 handshake (and the connection's setup and teardown) costs the gateway
**{1e6 * per_handshake:,.0f} µs** of CPU beyond a keep-alive request's {1e6 * per_request:.1f} µs:
about **{1 / per_handshake:,.0f} handshakes per core-second**.

## Redis commands per request

Routes without auth, each with 0, 1 or 2 `store: redis` limits (never reached), plain
HTTP/1.1 keep-alive, one Redis server. Commands counted by the server over the row (`INFO
commandstats`, `info` itself left out); a round trip is one `EVALSHA` (the GCRA script),
whose own `TIME`, `GET` and `SET` run inside it on the server.

| limits | requests | round trips per request | commands the server counted | requests per core-second | CPU per request | non-2xx | socket errors |
|---:|---:|---:|---|---:|---:|---:|---|
{chr(10).join(redis_rows)}

The Redis server spent **{usec:.2f} µs** of CPU per `EVALSHA` (the GCRA script; `usec_per_call`
of `INFO commandstats`, median of the rows): about **{1e6 / usec:,.0f} limit checks per
Redis core-second** before network and protocol overhead. A DPoP proof's replay entry
(`SET tollgate:dpop:<32 hex> 1 NX EX 60`) costs Redis **{per_key:.0f} bytes** (`used_memory`
over {n_keys:,} keys written as the gateway writes them).
"""
        with open(OUT, "w") as f:
            f.write(text)
        print(text)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
