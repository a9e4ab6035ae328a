#!/usr/bin/python3
"""DPoP proofs (RFC 9449) for the load test's `dpop` scenario, and a check of them.

wrk cannot sign, so loadtest/run.py has this file sign, just before each run, one proof per
request the run may send. It runs under Debian's Python (/usr/bin/python3, where `make
deps-loadtest` installs python3-cryptography), so run.py itself stays standard library only.

    dpop_proofs.py sign --key PEM --token FILE --htu URL --count N --out FILE [--checks FILE]
    dpop_proofs.py verify --proofs FILE --token FILE [--htu URL]      (also needs python3-jwt)

`sign`: every proof is ES256 (raw r||s, not DER) by the P-256 key in PEM (PKCS#8), header
`{"typ":"dpop+jwt","alg":"ES256","jwk":<its public key>}`, claims `jti` (unique), `htm` GET,
`htu` URL, `iat` (the second it was signed) and `ath` (base64url SHA-256 of the access token,
the first line of --token). OUT holds the header, base64url, on its first line (the same for
every proof), then one `payload.signature` per line: the proof is `header.payload.signature`,
and the file wrk loads is about half as big. --checks writes whole proofs for run.py's verdict
check as a JSON object: `item` (valid for URL), `whoami` (valid for URL's directory +
/whoami), `wrong_ath` (`ath` of another token), `wrong_htu` (another path).

`verify`: checks OUT with PyJWT rather than with this file's signing code: each proof's
signature under the jwk of its header, `typ`, `alg`, no private member in the jwk, `htm`,
`htu`, `ath`, distinct `jti`s, and the jwk's RFC 7638 thumbprint against the access token's
`cnf.jkt` (the thumbprint code is first checked on RFC 7638's own example). Exit 0 when every
proof passes.
"""

import argparse
import base64
import hashlib
import json
import os
import secrets
import sys
import time


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def compact_json(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def read_token(path):
    with open(path) as f:
        return f.readline().strip()


def sign(a):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    with open(a.key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        sys.exit(f"{a.key}: not a P-256 private key")
    pub = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "x": b64url(pub.x.to_bytes(32, "big")),
           "y": b64url(pub.y.to_bytes(32, "big"))}
    header = b64url(compact_json({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}))
    ath = b64url(hashlib.sha256(read_token(a.token).encode("ascii")).digest())
    # jti: this invocation's random prefix and a counter, unique across runs and rounds.
    run = secrets.token_hex(8)
    ecdsa = ec.ECDSA(hashes.SHA256())

    def parts(jti, htu, ath):
        payload = b64url(compact_json({"jti": f"{run}-{jti}", "htm": "GET", "htu": htu,
                                       "iat": int(time.time()), "ath": ath}))
        r, s = decode_dss_signature(key.sign(f"{header}.{payload}".encode(), ecdsa))
        return f"{payload}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        f.write(header + "\n")
        for n in range(a.count):
            f.write(parts(n, a.htu, ath) + "\n")
    os.replace(tmp, a.out)
    if a.checks:
        base = a.htu.rsplit("/", 1)[0]
        other_ath = b64url(hashlib.sha256(b"another access token").digest())
        checks = {"item": parts("check-item", a.htu, ath),
                  "whoami": parts("check-whoami", base + "/whoami", ath),
                  "wrong_ath": parts("check-ath", a.htu, other_ath),
                  "wrong_htu": parts("check-htu", base + "/other", ath)}
        with open(a.checks, "w") as f:
            json.dump({k: f"{header}.{v}" for k, v in checks.items()}, f)


def thumbprint(jwk):
    """RFC 7638: SHA-256 of the required members, names in lexicographic order, no whitespace."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    members = {k: jwk[k] for k in required[jwk["kty"]]}
    return b64url(hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest())


# RFC 7638, section 3.1.
RFC7638_N = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
             "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
             "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4"
             "lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def verify(a):
    import jwt

    got = thumbprint({"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"})
    if got != RFC7638_THUMBPRINT:
        sys.exit(f"thumbprint of RFC 7638's example: {got}, expected {RFC7638_THUMBPRINT}")
    token = read_token(a.token)
    jkt = json.loads(b64url_decode(token.split(".")[1]))["cnf"]["jkt"]
    ath = b64url(hashlib.sha256(token.encode("ascii")).digest())
    with open(a.proofs) as f:
        header = f.readline().strip()
        proofs = [f"{header}.{line.strip()}" for line in f if line.strip()]
    jtis = set()
    for i, proof in enumerate(proofs):
        h = jwt.get_unverified_header(proof)
        if h.get("typ") != "dpop+jwt" or h.get("alg") != "ES256":
            sys.exit(f"proof {i}: header {h}")
        if "d" in h["jwk"]:
            sys.exit(f"proof {i}: the jwk has its private member")
        if thumbprint(h["jwk"]) != jkt:
            sys.exit(f"proof {i}: jwk thumbprint {thumbprint(h['jwk'])} is not the token's cnf.jkt {jkt}")
        claims = jwt.decode(proof, key=jwt.PyJWK(h["jwk"]).key, algorithms=["ES256"])
        if claims["htm"] != "GET" or (a.htu and claims["htu"] != a.htu) or claims["ath"] != ath:
            sys.exit(f"proof {i}: claims {claims}")
        if not isinstance(claims["iat"], int) or claims["jti"] in jtis:
            sys.exit(f"proof {i}: iat {claims['iat']!r} or a repeated jti {claims['jti']}")
        jtis.add(claims["jti"])
    print(f"{len(proofs)} proofs verified with PyJWT {jwt.__version__}: signatures under the header's jwk, "
          f"htm, htu, ath, distinct jtis; jwk thumbprint = cnf.jkt {jkt} (RFC 7638 example: {got})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sign")
    s.add_argument("--key", required=True)
    s.add_argument("--token", required=True)
    s.add_argument("--htu", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--checks")
    v = sub.add_parser("verify")
    v.add_argument("--proofs", required=True)
    v.add_argument("--token", required=True)
    v.add_argument("--htu")
    a = ap.parse_args()
    if a.cmd == "sign":
        sign(a)
    else:
        verify(a)


if __name__ == "__main__":
    main()
