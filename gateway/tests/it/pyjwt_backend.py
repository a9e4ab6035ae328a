"""A backend that trusts only tokens minted by the gateway, checked with PyJWT.

Usage: pyjwt_backend.py ISSUER AUDIENCE HEADER
Prints its port on the first line of stdout, then serves on 127.0.0.1 until killed.
`GET /__jwks?url=URL` sets where the gateway's keys are (before the first request).
Every other request: the token from HEADER (Authorization: "Bearer T", or the bare value of
another header) is verified against the gateway's JWKS (fetched again on an unknown kid),
for ISSUER and AUDIENCE, with EdDSA or ES256 only. 200 with the verified claims as JSON, or
401 with {"error": "..."}; both with the token as received.
"""

import json
import sys
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

ISSUER, AUDIENCE, HEADER = sys.argv[1:4]
jwks_url = None
keys = {}
keys_lock = threading.Lock()


def key_for(kid):
    with keys_lock:
        if kid not in keys:
            with urllib.request.urlopen(jwks_url, timeout=5) as r:
                document = json.load(r)
            keys.clear()
            for jwk in document["keys"]:
                keys[jwk["kid"]] = jwt.PyJWK(jwk)
        return keys[kid]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global jwks_url
        if self.path.startswith("/__jwks?"):
            jwks_url = urllib.parse.parse_qs(self.path.split("?", 1)[1])["url"][0]
            return self.answer(200, {"jwks_url": jwks_url})
        value = self.headers.get(HEADER, "")
        token = value[7:] if HEADER.lower() == "authorization" and value.startswith("Bearer ") else value
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            claims = jwt.decode(
                token,
                key_for(kid).key,
                algorithms=["EdDSA", "ES256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "iss", "aud", "jti"]},
            )
            self.answer(200, {"claims": claims, "kid": kid, "token": token})
        except Exception as e:  # every refusal is the test's business
            self.answer(401, {"error": f"{type(e).__name__}: {e}", "token": token})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
