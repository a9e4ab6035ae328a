"""A policy service for it::ext_authz, speaking Envoy ext_authz's HTTP protocol, with a real
rule: a caller may reach /tenants/T/... only when its verified `tenant` claim is T, and may
write (any method but GET and HEAD) only with the role `writer`. An allowed request gets
`x-authz-tenant: T` and `x-authz-decision: allow` for the upstream; a denied one a 403 with
a JSON body and `x-authz-reason`. Paths outside /tenants/ are denied with 404.

    policy_service.py PORT      prints READY, serves until killed

Control endpoints (not part of the protocol), under /__control/:
    count           how many checks were answered
    last            the last check's method, path and headers, as JSON
    set?delay_ms=N  answer checks after N ms
    set?status=N    answer every check with status N (0: back to the rule)
    set?big=N       deny every check with 403 and an N-byte text body (0: back to the rule)
"""

import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

STATE = {"count": 0, "last": None, "delay_ms": 0, "status": 0, "big": 0}
LOCK = threading.Lock()


def claims_of(headers):
    raw = headers.get("x-tollgate-claims", "")
    try:
        return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except ValueError:
        return None


def decide(method, path, claims):
    parts = urlsplit(path).path.split("/")
    if len(parts) < 3 or parts[1] != "tenants" or not parts[2]:
        return 404, {"error": "unknown_resource"}, {}
    tenant = parts[2]
    if claims is None or claims.get("tenant") != tenant:
        return 403, {"error": "tenant_mismatch"}, {"x-authz-reason": "tenant"}
    roles = claims.get("roles") or []
    if method not in ("GET", "HEAD") and "writer" not in roles:
        return 403, {"error": "read_only"}, {"x-authz-reason": "role"}
    return 200, None, {"x-authz-tenant": tenant, "x-authz-decision": "allow"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, headers):
        data = b"" if body is None or self.command == "HEAD" else json.dumps(body).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if data:
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def control(self):
        url = urlsplit(self.path)
        what = url.path[len("/__control/"):]
        with LOCK:
            if what == "count":
                return self.answer(200, {"count": STATE["count"]}, {})
            if what == "last":
                return self.answer(200, STATE["last"], {})
            if what == "set":
                for k, v in parse_qs(url.query).items():
                    STATE[k] = int(v[0])
                return self.answer(200, {"ok": True}, {})
        return self.answer(404, {"error": "no such control"}, {})

    def check(self):
        if self.path.startswith("/__control/"):
            return self.control()
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        with LOCK:
            delay, forced, big = STATE["delay_ms"], STATE["status"], STATE["big"]
        if delay:
            time.sleep(delay / 1000)
        claims = claims_of(self.headers)
        if big:
            with LOCK:
                STATE["count"] += 1
            data = b"x" * big
            self.send_response(403)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if forced:
            status, body, headers = forced, {"error": "forced"}, {}
        else:
            status, body, headers = decide(self.command, self.path, claims)
        with LOCK:
            STATE["count"] += 1
            STATE["last"] = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "claims": claims,
            }
        self.answer(status, body, headers)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = check


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("READY", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
