//! End-to-end tests of the verification rules: every algorithm, every reason, and the rule order
//! that decides which reason wins when a token has several defects.

use serde_json::{json, Value};

use crate::codec::b64url_encode;
use crate::*;

const RSA_KEY: &[u8] = include_bytes!("../tests/data/rsa2048-test-key.pem");
const P256_KEY: &[u8] = include_bytes!("../tests/data/p256-test-key.pem");
const P384_KEY: &[u8] = include_bytes!("../tests/data/p384-test-key.pem");
const P521_KEY: &[u8] = include_bytes!("../tests/data/p521-test-key.pem");
const ED_KEY: &[u8] = include_bytes!("../tests/data/ed25519-test-key.pem");
const RSA_PUB_PEM: &[u8] = include_bytes!("../tests/data/rsa2048-test-pub.pem");
const RSA_WEAK_PUB: &[u8] = include_bytes!("../tests/data/rsa1024-weak-test-pub.pem");
const SECRET: &[u8; 64] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_700_000_000;

fn key(pem: &[u8]) -> SigningKey {
    SigningKey::from_pem(pem).unwrap()
}

/// A key set holding the public half of `k`, with the given kid and alg.
fn public_set(k: &SigningKey, kid: Option<&str>, alg: Option<Algorithm>) -> KeySet {
    let jwk = k.public_jwk(kid, alg).unwrap();
    KeySet::from_jwks(jwk.to_string().as_bytes()).unwrap()
}

fn claims() -> Value {
    json!({"iss": "https://issuer.example", "sub": "alice", "aud": "api", "exp": NOW + 600, "iat": NOW - 10})
}

/// A token from raw header/payload JSON text, signed by `k` for `alg` (or `sig` if given).
fn raw(header: &str, payload: &str, k: Option<(&SigningKey, Algorithm)>) -> String {
    let input = format!(
        "{}.{}",
        b64url_encode(header.as_bytes()),
        b64url_encode(payload.as_bytes())
    );
    let sig = match k {
        Some((k, alg)) => k.sign_bytes(alg, input.as_bytes()).unwrap(),
        None => b"not a signature".to_vec(),
    };
    format!("{input}.{}", b64url_encode(&sig))
}

fn reason(r: Result<VerifiedToken, Rejection>) -> &'static str {
    r.err().map_or("ok", |e| e.reason.as_str())
}

fn check(token: &str, keys: &KeySet) -> &'static str {
    reason(verify(token, keys, &Validation::default(), NOW))
}

fn hmac_set(alg: Option<Algorithm>) -> KeySet {
    KeySet::from_hmac_secret(SECRET, None, alg)
}

fn hmac_key(alg: Algorithm) -> SigningKey {
    SigningKey::hmac(SECRET, alg).unwrap()
}

// ---- every algorithm ----

#[test]
fn every_algorithm_round_trips_and_detects_tampering() {
    let rsa = key(RSA_KEY);
    let cases: Vec<(Algorithm, SigningKey, KeySet)> = vec![
        (Algorithm::HS256, hmac_key(Algorithm::HS256), hmac_set(None)),
        (Algorithm::HS384, hmac_key(Algorithm::HS384), hmac_set(None)),
        (Algorithm::HS512, hmac_key(Algorithm::HS512), hmac_set(None)),
        (Algorithm::RS256, key(RSA_KEY), public_set(&rsa, None, None)),
        (Algorithm::RS384, key(RSA_KEY), public_set(&rsa, None, None)),
        (Algorithm::RS512, key(RSA_KEY), public_set(&rsa, None, None)),
        (Algorithm::PS256, key(RSA_KEY), public_set(&rsa, None, None)),
        (Algorithm::PS384, key(RSA_KEY), public_set(&rsa, None, None)),
        (Algorithm::PS512, key(RSA_KEY), public_set(&rsa, None, None)),
        (
            Algorithm::ES256,
            key(P256_KEY),
            public_set(&key(P256_KEY), None, None),
        ),
        (
            Algorithm::ES384,
            key(P384_KEY),
            public_set(&key(P384_KEY), None, None),
        ),
        (
            Algorithm::ES512,
            key(P521_KEY),
            public_set(&key(P521_KEY), None, None),
        ),
        (
            Algorithm::EdDSA,
            key(ED_KEY),
            public_set(&key(ED_KEY), None, None),
        ),
    ];
    for (alg, sk, set) in cases {
        let token = sign(alg, Some("k1"), &claims(), &sk).unwrap();
        let t = verify(&token, &set, &Validation::default(), NOW)
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(t.alg, Some(alg));
        assert_eq!(t.kid.as_deref(), Some("k1"));
        assert_eq!(t.iss.as_deref(), Some("https://issuer.example"));
        assert_eq!(t.sub.as_deref(), Some("alice"));
        assert_eq!(t.aud, vec!["api".to_string()]);
        assert_eq!(t.exp, Some((NOW + 600) as f64));

        // A changed payload keeps the old signature.
        let (input, sig) = token.rsplit_once('.').unwrap();
        let (h, _) = input.split_once('.').unwrap();
        let other = b64url_encode(json!({"sub": "mallory"}).to_string().as_bytes());
        assert_eq!(
            check(&format!("{h}.{other}.{sig}"), &set),
            "signature",
            "{alg}"
        );

        // A flipped bit in the signature.
        let mut sig_bytes = codec::b64url_decode(sig).unwrap();
        sig_bytes[0] ^= 1;
        let flipped = format!("{input}.{}", b64url_encode(&sig_bytes));
        assert_eq!(check(&flipped, &set), "signature", "{alg}");

        // Truncated and empty signatures are signature failures, not parse errors.
        let short = format!(
            "{input}.{}",
            b64url_encode(&sig_bytes[..sig_bytes.len() - 1])
        );
        assert_eq!(check(&short, &set), "signature", "{alg}");
        assert_eq!(check(&format!("{input}."), &set), "signature", "{alg}");
    }
}

#[test]
fn ecdsa_der_signatures_are_refused() {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    let pem = ::pem::parse(P256_KEY).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let der_key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pem.contents(), &rng).unwrap();
    let set = public_set(&key(P256_KEY), None, None);
    let input = format!(
        "{}.{}",
        b64url_encode(br#"{"alg":"ES256"}"#),
        b64url_encode(br#"{"sub":"x"}"#)
    );
    let der_sig = der_key.sign(&rng, input.as_bytes()).unwrap();
    assert_eq!(
        check(
            &format!("{input}.{}", b64url_encode(der_sig.as_ref())),
            &set
        ),
        "signature"
    );
    // The same key signing raw r||s verifies, so only the encoding was refused.
    let ok = raw(
        r#"{"alg":"ES256"}"#,
        r#"{"sub":"x"}"#,
        Some((&key(P256_KEY), Algorithm::ES256)),
    );
    assert_eq!(check(&ok, &set), "ok");
}

#[test]
fn es512_with_der_or_wrong_length_is_refused() {
    let sk = key(P521_KEY);
    let set = public_set(&sk, None, None);
    let token = sign(Algorithm::ES512, None, &claims(), &sk).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = codec::b64url_decode(sig).unwrap();
    assert_eq!(sig.len(), 132);
    let mut longer = sig.clone();
    longer.push(0);
    for bad in [&sig[..131], &longer[..], &[0u8; 132][..]] {
        assert_eq!(
            check(&format!("{input}.{}", b64url_encode(bad)), &set),
            "signature"
        );
    }
}

// ---- rules 1-3: size and structure ----

#[test]
fn too_large_comes_first() {
    let big = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(check(&big, &hmac_set(None)), "too_large");
    let just = "a".repeat(MAX_TOKEN_BYTES);
    assert_eq!(check(&just, &hmac_set(None)), "malformed");
}

#[test]
fn structure_errors_are_malformed() {
    let good = sign(
        Algorithm::HS256,
        None,
        &claims(),
        &hmac_key(Algorithm::HS256),
    )
    .unwrap();
    let set = hmac_set(None);
    assert_eq!(check(&good, &set), "ok");
    let (h, rest) = good.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    for bad in [
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        h.to_string(),
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}."),
        format!("{h}.{p}.{s}.{s}"),
        format!(".{p}.{s}"),
        format!("{h}..{s}"),
        format!("{h}=.{p}.{s}"),
        format!("{h}.{p}=.{s}"),
        format!("{h}.{p}.{s}="),
        format!("{h}.{p}.{s}=="),
        format!("{h}.{p}.+{s}"),
        format!("{h}.{p}.{s}/"),
        format!(" {h}.{p}.{s}"),
        format!("{h}.{p}.{s}\n"),
        format!("{h}.{p}.é{s}"),
        // Non-canonical trailing bits in the last character.
        format!("{h}.{p}.{}B", &s[..s.len() - 1]),
    ] {
        assert_eq!(check(&bad, &set), "malformed", "{bad:?}");
    }
}

#[test]
fn header_must_be_an_object_without_duplicates() {
    let set = hmac_set(None);
    let k = hmac_key(Algorithm::HS256);
    for h in [
        "not json",
        "[]",
        "\"HS256\"",
        "null",
        r#"{"alg":"HS256""#,
        r#"{"alg":"HS256","alg":"HS256"}"#,
        r#"{"alg":"HS256","kid":"a","kid":"b"}"#,
        r#"{"alg":"HS256"} x"#,
    ] {
        let t = raw(h, r#"{"sub":"x"}"#, Some((&k, Algorithm::HS256)));
        assert_eq!(check(&t, &set), "malformed", "{h}");
    }
    // Invalid UTF-8 in the header.
    let t = format!(
        "{}.{}.AA",
        b64url_encode(b"{\"alg\":\"\xff\"}"),
        b64url_encode(b"{}")
    );
    assert_eq!(check(&t, &set), "malformed");
}

// ---- rules 4-6: alg, kid, crit ----

#[test]
fn alg_must_be_a_supported_string_and_none_is_refused_in_any_case() {
    let set = hmac_set(None);
    for h in [
        r#"{}"#,
        r#"{"alg":null}"#,
        r#"{"alg":256}"#,
        r#"{"alg":["HS256"]}"#,
        r#"{"alg":"none"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"NONE"}"#,
        r#"{"alg":"nOnE"}"#,
        r#"{"alg":"hs256"}"#,
        r#"{"alg":"HS256 "}"#,
        r#"{"alg":"RS1"}"#,
        r#"{"alg":"ES256K"}"#,
        r#"{"alg":"Ed25519"}"#,
        r#"{"alg":""}"#,
    ] {
        let t = raw(h, r#"{"sub":"x"}"#, None);
        assert_eq!(check(&t, &set), "alg", "{h}");
    }
    // An unsigned token (empty signature) with alg none.
    let t = format!(
        "{}.{}.",
        b64url_encode(br#"{"alg":"none"}"#),
        b64url_encode(b"{}")
    );
    assert_eq!(check(&t, &set), "alg");
}

#[test]
fn kid_must_be_a_string() {
    let set = hmac_set(None);
    let k = hmac_key(Algorithm::HS256);
    for h in [
        r#"{"alg":"HS256","kid":1}"#,
        r#"{"alg":"HS256","kid":null}"#,
        r#"{"alg":"HS256","kid":["a"]}"#,
    ] {
        let t = raw(h, r#"{"sub":"x"}"#, Some((&k, Algorithm::HS256)));
        assert_eq!(check(&t, &set), "malformed", "{h}");
    }
}

#[test]
fn any_crit_header_is_unsupported() {
    let set = hmac_set(None);
    let k = hmac_key(Algorithm::HS256);
    for h in [
        r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
        r#"{"alg":"HS256","crit":[]}"#,
        r#"{"alg":"HS256","crit":null}"#,
    ] {
        let t = raw(h, r#"{"sub":"x"}"#, Some((&k, Algorithm::HS256)));
        assert_eq!(check(&t, &set), "unsupported", "{h}");
    }
}

#[test]
fn keys_carried_in_the_token_are_ignored() {
    // An attacker-supplied jwk/jku/x5u/x5c must not be used: the token is signed by a key that is
    // not in the set, so it fails even though it embeds its own public key.
    let attacker = key(P256_KEY);
    let jwk = attacker.public_jwk(None, None).unwrap();
    let header = json!({"alg": "ES256", "jwk": jwk, "jku": "https://evil.example/jwks", "x5u": "https://evil.example/c", "x5c": ["AAAA"]});
    let t = raw(
        &header.to_string(),
        r#"{"sub":"x"}"#,
        Some((&attacker, Algorithm::ES256)),
    );
    let real = public_set(&key(P384_KEY), None, None);
    assert_eq!(check(&t, &real), "alg");
    let other_p256 = KeySet::from_pem(
        include_bytes!("../tests/data/p256-test-pub.pem"),
        None,
        None,
    )
    .unwrap();
    let other = SigningKey::from_pkcs8_der(
        ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap()
        .as_ref(),
    )
    .unwrap();
    let t = raw(
        &header.to_string(),
        r#"{"sub":"x"}"#,
        Some((&other, Algorithm::ES256)),
    );
    assert_eq!(check(&t, &other_p256), "signature");
}

// ---- rule 7: payload and claim types ----

#[test]
fn payload_must_be_an_object_with_well_typed_claims() {
    let set = hmac_set(None);
    let k = hmac_key(Algorithm::HS256);
    let h = r#"{"alg":"HS256"}"#;
    for p in [
        "Payload",
        "[]",
        "1",
        r#"{"sub":"a","sub":"b"}"#,
        r#"{"x":{"y":1,"y":2}}"#,
        r#"{"iss":1}"#,
        r#"{"sub":null}"#,
        r#"{"jti":7}"#,
        r#"{"aud":1}"#,
        r#"{"aud":[1]}"#,
        r#"{"aud":["a",null]}"#,
        r#"{"aud":{"a":1}}"#,
        r#"{"exp":"123"}"#,
        r#"{"exp":-1}"#,
        r#"{"nbf":-0.5}"#,
        r#"{"iat":2.001e206}"#,
        r#"{"exp":9223372036854775808}"#,
        r#"{"exp":true}"#,
        r#"{"exp":null}"#,
        r#"{"exp":1e400}"#,
    ] {
        let t = raw(h, p, Some((&k, Algorithm::HS256)));
        assert_eq!(check(&t, &set), "malformed", "{p}");
    }
    for p in [
        r#"{}"#,
        r#"{"aud":[]}"#,
        r#"{"aud":["a","b"]}"#,
        r#"{"iat":1234.5678,"nbf":0,"exp":9223372036854775807}"#,
        r#"{"custom":{"nested":[1,2,{"k":"v"}]},"sub":"x"}"#,
    ] {
        let t = raw(h, p, Some((&k, Algorithm::HS256)));
        assert_eq!(check(&t, &set), "ok", "{p}");
    }
}

// ---- rules 8-11: key selection, algorithm confusion, weak keys, signature ----

#[test]
fn kid_selection() {
    let a = hmac_key(Algorithm::HS256);
    let other_secret = [9u8; 32];
    let b = SigningKey::hmac(&other_secret, Algorithm::HS256).unwrap();
    let set = KeySet::merge([
        KeySet::from_hmac_secret(SECRET, Some("a"), None),
        KeySet::from_hmac_secret(&other_secret, Some("b"), None),
    ]);
    let with =
        |kid: Option<&str>, k: &SigningKey| sign(Algorithm::HS256, kid, &claims(), k).unwrap();
    assert_eq!(check(&with(Some("a"), &a), &set), "ok");
    assert_eq!(check(&with(Some("b"), &b), &set), "ok");
    // The kid names the other key: only that key is tried.
    assert_eq!(check(&with(Some("a"), &b), &set), "signature");
    assert_eq!(check(&with(Some("nope"), &a), &set), "unknown_kid");
    // No kid in the token: every key is a candidate.
    assert_eq!(check(&with(None, &b), &set), "ok");
    // A key without kid is a candidate for any token kid.
    let kidless = KeySet::from_hmac_secret(SECRET, None, None);
    assert_eq!(check(&with(Some("anything"), &a), &kidless), "ok");
    assert_eq!(check(&with(Some("a"), &a), &KeySet::new()), "unknown_kid");
    assert_eq!(check(&with(None, &a), &KeySet::new()), "unknown_kid");
}

#[test]
fn rsa_public_key_cannot_be_used_as_an_hmac_secret() {
    // Classic algorithm confusion: HS256 "signed" with the RSA public key's bytes.
    let set = KeySet::from_pem(RSA_PUB_PEM, None, None).unwrap();
    for secret in [
        RSA_PUB_PEM.to_vec(),
        ::pem::parse(RSA_PUB_PEM).unwrap().into_contents(),
    ] {
        let k = SigningKey::hmac(&secret, Algorithm::HS256).unwrap();
        let t = sign(Algorithm::HS256, None, &claims(), &k).unwrap();
        assert_eq!(check(&t, &set), "alg");
    }
    let jwks = public_set(&key(RSA_KEY), None, None);
    let n_bytes = {
        let jwk = key(RSA_KEY).public_jwk(None, None).unwrap();
        codec::b64url_decode(jwk["n"].as_str().unwrap()).unwrap()
    };
    let k = SigningKey::hmac(&n_bytes, Algorithm::HS256).unwrap();
    assert_eq!(
        check(&sign(Algorithm::HS256, None, &claims(), &k).unwrap(), &jwks),
        "alg"
    );
}

#[test]
fn key_alg_and_curve_restrict_token_alg() {
    let rsa = key(RSA_KEY);
    let rs256_only = public_set(&rsa, None, Some(Algorithm::RS256));
    let ps = sign(Algorithm::PS256, None, &claims(), &rsa).unwrap();
    assert_eq!(check(&ps, &rs256_only), "alg");
    let rs = sign(Algorithm::RS256, None, &claims(), &rsa).unwrap();
    assert_eq!(check(&rs, &rs256_only), "ok");

    // An oct key declared HS256 does not verify HS512, even with the right secret.
    let hs512 = sign(
        Algorithm::HS512,
        None,
        &claims(),
        &hmac_key(Algorithm::HS512),
    )
    .unwrap();
    assert_eq!(check(&hs512, &hmac_set(Some(Algorithm::HS256))), "alg");
    assert_eq!(check(&hs512, &hmac_set(None)), "ok");

    // Curves: a P-256 key never verifies ES384/ES512, an Ed25519 key never ES256.
    let p256 = public_set(&key(P256_KEY), None, None);
    let es384 = sign(Algorithm::ES384, None, &claims(), &key(P384_KEY)).unwrap();
    assert_eq!(check(&es384, &p256), "alg");
    let ed = public_set(&key(ED_KEY), None, None);
    let es256 = sign(Algorithm::ES256, None, &claims(), &key(P256_KEY)).unwrap();
    assert_eq!(check(&es256, &ed), "alg");
    // A key whose own alg contradicts its type fits nothing.
    let odd = public_set(&key(ED_KEY), None, Some(Algorithm::RS256));
    let eddsa = sign(Algorithm::EdDSA, None, &claims(), &key(ED_KEY)).unwrap();
    assert_eq!(check(&eddsa, &odd), "alg");
}

#[test]
fn weak_keys_answer_weak_key_after_alg_and_before_signature() {
    let short = [1u8; 31];
    let set = KeySet::from_hmac_secret(&short, None, None);
    // Signed with the weak secret itself: still refused.
    let input = format!(
        "{}.{}",
        b64url_encode(br#"{"alg":"HS256"}"#),
        b64url_encode(b"{}")
    );
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &short),
        input.as_bytes(),
    );
    let t = format!("{input}.{}", b64url_encode(tag.as_ref()));
    assert_eq!(check(&t, &set), "weak_key");
    // 32 bytes is enough for HS256 but not for HS384.
    let set32 = KeySet::from_hmac_secret(&[1u8; 32], None, None);
    let k32 = SigningKey::hmac(&[1u8; 32], Algorithm::HS256).unwrap();
    assert_eq!(
        check(
            &sign(Algorithm::HS256, None, &claims(), &k32).unwrap(),
            &set32
        ),
        "ok"
    );
    assert_eq!(
        check(&raw(r#"{"alg":"HS384"}"#, "{}", None), &set32),
        "weak_key"
    );
    // Weak RSA: any RS/PS token, whatever its signature.
    let weak = KeySet::from_pem(RSA_WEAK_PUB, None, None).unwrap();
    for h in [r#"{"alg":"RS256"}"#, r#"{"alg":"PS512"}"#] {
        assert_eq!(check(&raw(h, "{}", None), &weak), "weak_key");
    }
    // alg mismatch wins over weakness.
    assert_eq!(check(&raw(r#"{"alg":"HS256"}"#, "{}", None), &weak), "alg");
    // A strong candidate next to a weak one is used.
    let mixed = KeySet::merge([KeySet::from_hmac_secret(&short, None, None), hmac_set(None)]);
    let good = sign(
        Algorithm::HS256,
        None,
        &claims(),
        &hmac_key(Algorithm::HS256),
    )
    .unwrap();
    assert_eq!(check(&good, &mixed), "ok");
    assert_eq!(
        check(&raw(r#"{"alg":"HS256"}"#, "{}", None), &mixed),
        "signature"
    );
}

#[test]
fn any_fitting_candidate_may_verify() {
    let p256 = key(P256_KEY);
    let other = SigningKey::from_pkcs8_der(
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let set = KeySet::merge([
        public_set(&other, None, None),
        KeySet::from_hmac_secret(SECRET, None, None),
        public_set(&p256, None, None),
    ]);
    let t = sign(Algorithm::ES256, Some("whatever"), &claims(), &p256).unwrap();
    assert_eq!(check(&t, &set), "ok");
}

// ---- rules 12-14: time, issuer, audience ----

fn timed(c: Value) -> VerifiedToken {
    let t = sign(Algorithm::HS256, None, &c, &hmac_key(Algorithm::HS256)).unwrap();
    verify_signature(&t, &hmac_set(None)).unwrap()
}

fn at(v: &Validation, t: &VerifiedToken, now: u64) -> &'static str {
    v.check_claims(t, now)
        .err()
        .map_or("ok", |e| e.reason.as_str())
}

#[test]
fn exp_nbf_iat_with_leeway() {
    let t = timed(json!({"exp": 1000, "nbf": 500, "iat": 500}));
    let strict = Validation::default();
    assert_eq!(at(&strict, &t, 999), "ok");
    assert_eq!(at(&strict, &t, 1000), "expired");
    assert_eq!(at(&strict, &t, 500), "ok");
    assert_eq!(at(&strict, &t, 499), "not_yet_valid");
    let lenient = Validation {
        leeway_s: 60,
        ..Validation::default()
    };
    assert_eq!(at(&lenient, &t, 1059), "ok");
    assert_eq!(at(&lenient, &t, 1060), "expired");
    assert_eq!(at(&lenient, &t, 440), "ok");
    assert_eq!(at(&lenient, &t, 439), "not_yet_valid");

    let future_iat = timed(json!({"iat": 2000}));
    assert_eq!(at(&strict, &future_iat, 1999), "not_yet_valid");
    assert_eq!(at(&strict, &future_iat, 2000), "ok");
    assert_eq!(at(&lenient, &future_iat, 1940), "ok");

    let fractional = timed(json!({"exp": 1000.5}));
    assert_eq!(at(&strict, &fractional, 1000), "ok");
    assert_eq!(at(&strict, &fractional, 1001), "expired");

    // No time claims at all: accepted (requiring exp is gateway policy).
    assert_eq!(at(&strict, &timed(json!({})), u64::MAX), "ok");
}

#[test]
fn issuer_and_audience() {
    let t = timed(json!({"iss": "https://a.example", "aud": ["x", "y"]}));
    let v = |iss: Option<&str>, auds: &[&str]| Validation {
        leeway_s: 0,
        issuer: iss.map(str::to_owned),
        audiences: auds.iter().map(|s| s.to_string()).collect(),
        ..Validation::default()
    };
    assert_eq!(at(&v(Some("https://a.example"), &["y"]), &t, NOW), "ok");
    assert_eq!(at(&v(Some("https://a.example/"), &[]), &t, NOW), "issuer");
    assert_eq!(at(&v(Some("HTTPS://a.example"), &[]), &t, NOW), "issuer");
    assert_eq!(at(&v(None, &["z"]), &t, NOW), "audience");
    assert_eq!(at(&v(None, &["z", "x"]), &t, NOW), "ok");
    assert_eq!(at(&v(None, &["X"]), &t, NOW), "audience");
    assert_eq!(at(&v(None, &[]), &t, NOW), "ok");

    let bare = timed(json!({"aud": "x"}));
    assert_eq!(at(&v(None, &["x"]), &bare, NOW), "ok");
    assert_eq!(at(&v(Some("i"), &[]), &bare, NOW), "issuer");
    let none = timed(json!({}));
    assert_eq!(at(&v(None, &["x"]), &none, NOW), "audience");
}

#[test]
fn claim_rules_follow_their_order() {
    let t = timed(json!({"exp": 10, "nbf": 5000, "iss": "wrong", "aud": "wrong"}));
    let v = Validation {
        leeway_s: 0,
        issuer: Some("right".into()),
        audiences: vec!["right".into()],
        ..Validation::default()
    };
    assert_eq!(at(&v, &t, 20), "expired");
    assert_eq!(at(&v, &t, 5), "not_yet_valid");
    let t = timed(json!({"iss": "wrong", "aud": "wrong"}));
    assert_eq!(at(&v, &t, 20), "issuer");
}

#[test]
fn token_types_are_checked_only_when_asked() {
    let k = hmac_key(Algorithm::HS256);
    let set = hmac_set(None);
    let typed = |header: &str| {
        verify_signature(&raw(header, "{}", Some((&k, Algorithm::HS256))), &set).unwrap()
    };
    let at_jwt = Validation {
        token_types: vec!["at+jwt".into()],
        ..Validation::default()
    };
    // Case-insensitive, and `application/` may be written on either side (RFC 7515 §4.1.9).
    for typ in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/AT+jwt",
    ] {
        let t = typed(&format!(r#"{{"alg":"HS256","typ":"{typ}"}}"#));
        assert_eq!(at(&at_jwt, &t, NOW), "ok", "{typ}");
    }
    let prefixed = Validation {
        token_types: vec!["application/at+jwt".into(), "JWT".into()],
        ..Validation::default()
    };
    assert_eq!(
        at(&prefixed, &typed(r#"{"alg":"HS256","typ":"at+jwt"}"#), NOW),
        "ok"
    );
    assert_eq!(
        at(&prefixed, &typed(r#"{"alg":"HS256","typ":"jwt"}"#), NOW),
        "ok"
    );
    // Missing, another type, a non-string, or a different prefix: refused with `typ`.
    for header in [
        r#"{"alg":"HS256"}"#,
        r#"{"alg":"HS256","typ":"JWT"}"#,
        r#"{"alg":"HS256","typ":"id+jwt"}"#,
        r#"{"alg":"HS256","typ":5}"#,
        r#"{"alg":"HS256","typ":"text/at+jwt"}"#,
        r#"{"alg":"HS256","typ":"application/"}"#,
    ] {
        let t = typed(header);
        assert_eq!(at(&at_jwt, &t, NOW), "typ", "{header}");
        // Without the option `typ` is not looked at.
        assert_eq!(at(&Validation::default(), &t, NOW), "ok", "{header}");
    }
    assert_eq!(
        at_jwt
            .check_claims(&typed(r#"{"alg":"HS256"}"#), NOW)
            .unwrap_err()
            .reason,
        Reason::Type
    );
}

// ---- the order of rules 1-11 when several defects meet ----

#[test]
fn structural_rule_order() {
    let set = KeySet::from_hmac_secret(SECRET, Some("only"), None);
    let k = hmac_key(Algorithm::HS256);
    let cases = [
        // alg before kid type, crit, payload.
        (r#"{"alg":"none","kid":1,"crit":[]}"#, "[]", "alg"),
        // kid type before crit and payload.
        (r#"{"alg":"HS256","kid":1,"crit":[]}"#, "[]", "malformed"),
        // crit before payload.
        (r#"{"alg":"HS256","crit":[]}"#, "[]", "unsupported"),
        // payload before unknown kid.
        (
            r#"{"alg":"HS256","kid":"x"}"#,
            r#"{"exp":"soon"}"#,
            "malformed",
        ),
        // unknown kid before alg fit.
        (r#"{"alg":"RS256","kid":"x"}"#, "{}", "unknown_kid"),
        // alg fit before signature.
        (r#"{"alg":"RS256","kid":"only"}"#, "{}", "alg"),
        // duplicate header member before a bad alg.
        (r#"{"alg":"none","alg":"none"}"#, "{}", "malformed"),
    ];
    for (h, p, want) in cases {
        let t = raw(h, p, Some((&k, Algorithm::HS256)));
        assert_eq!(check(&t, &set), want, "{h} {p}");
    }
    // A bad signature segment is malformed even when the header alg is also bad (rule 2 first).
    let t = format!(
        "{}.{}.***",
        b64url_encode(br#"{"alg":"none"}"#),
        b64url_encode(b"{}")
    );
    assert_eq!(check(&t, &set), "malformed");
    // A signature that verifies does not rescue an expired token.
    let t = sign(Algorithm::HS256, Some("only"), &json!({"exp": 1}), &k).unwrap();
    assert_eq!(check(&t, &set), "expired");
}

// ---- the public helpers ----

#[test]
fn two_step_equals_verify() {
    let k = hmac_key(Algorithm::HS256);
    let set = hmac_set(None);
    let t = sign(Algorithm::HS256, None, &json!({"exp": NOW + 1}), &k).unwrap();
    let v = Validation::default();
    let cached = verify_signature(&t, &set).unwrap();
    assert_eq!(v.check_claims(&cached, NOW), Ok(()));
    assert_eq!(verify(&t, &set, &v, NOW).unwrap(), cached);
    assert_eq!(
        v.check_claims(&cached, NOW + 1).unwrap_err().reason,
        Reason::Expired
    );
    assert_eq!(reason(verify(&t, &set, &v, NOW + 1)), "expired");
}

#[test]
fn peek_and_decode_do_not_verify() {
    let t = raw(
        r#"{"alg":"RS256","kid":"k"}"#,
        r#"{"iss":"https://idp.example","n":1}"#,
        None,
    );
    assert_eq!(peek_issuer(&t).as_deref(), Some("https://idp.example"));
    let (h, p) = decode_unverified(&t).unwrap();
    assert_eq!(h, json!({"alg":"RS256","kid":"k"}));
    assert_eq!(p, json!({"iss":"https://idp.example","n":1}));

    assert_eq!(
        peek_issuer(&raw(r#"{"alg":"x"}"#, r#"{"iss":5}"#, None)),
        None
    );
    assert_eq!(
        peek_issuer(&raw(r#"{"alg":"x"}"#, r#"{"iss":"a","iss":"b"}"#, None)),
        None
    );
    assert_eq!(peek_issuer("garbage"), None);
    let text = raw(r#"{"alg":"x"}"#, r#""just text""#, None);
    assert_eq!(decode_unverified(&text).unwrap().1, json!("just text"));
    assert_eq!(
        decode_unverified(&raw("[]", "{}", None))
            .unwrap_err()
            .reason,
        Reason::Malformed
    );
    assert_eq!(
        decode_unverified(&raw("{}", "not json", None))
            .unwrap_err()
            .reason,
        Reason::Malformed
    );
}

#[test]
fn verdict_json_shapes() {
    let k = hmac_key(Algorithm::HS256);
    let t = sign(Algorithm::HS256, Some("a"), &json!({"sub": "x"}), &k).unwrap();
    let ok = verify(&t, &hmac_set(None), &Validation::default(), NOW);
    assert_eq!(
        verdict_json(&ok),
        json!({"valid": true, "alg": "HS256", "kid": "a", "claims": {"sub": "x"}})
    );
    let t = sign(Algorithm::HS256, None, &json!({}), &k).unwrap();
    assert_eq!(
        verdict_json(&verify(&t, &hmac_set(None), &Validation::default(), NOW))["kid"],
        Value::Null
    );
    let bad = verify("x", &hmac_set(None), &Validation::default(), NOW);
    assert_eq!(
        verdict_json(&bad),
        json!({"valid": false, "reason": "malformed", "detail": "token does not have exactly three segments"})
    );
}

#[test]
fn rejections_and_debug_never_echo_token_content() {
    let set = hmac_set(None);
    let marker = "SECRETMARKER";
    let tokens = [
        raw(&format!(r#"{{"alg":"{marker}"}}"#), "{}", None),
        raw(
            &format!(r#"{{"alg":"HS256","kid":"{marker}"}}"#),
            "{}",
            None,
        ),
        raw(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"iss":"{marker}","exp":1}}"#),
            None,
        ),
        format!("{marker}.{marker}.{marker}"),
    ];
    for t in tokens {
        let r = verify(&t, &set, &Validation::default(), NOW).unwrap_err();
        let shown = format!("{r} {r:?} {}", verdict_json(&Err(r)));
        assert!(!shown.contains(marker), "{shown}");
    }
    let t = sign(
        Algorithm::HS256,
        None,
        &json!({"email": "alice@example.com"}),
        &hmac_key(Algorithm::HS256),
    )
    .unwrap();
    let v = verify_signature(&t, &set).unwrap();
    assert!(!format!("{v:?}").contains("alice"));
    assert!(!format!("{:?}", hmac_key(Algorithm::HS256)).contains("0123"));
}

// ---- signing ----

#[test]
fn signing_refuses_what_verification_would_refuse() {
    let k = hmac_key(Algorithm::HS256);
    assert_eq!(
        sign(Algorithm::HS384, None, &json!({}), &k).unwrap_err(),
        KeyError::AlgorithmMismatch {
            alg: Algorithm::HS384
        }
    );
    assert_eq!(
        sign(Algorithm::HS256, None, &json!([1]), &k).unwrap_err(),
        KeyError::ClaimsNotObject
    );
    assert_eq!(
        SigningKey::hmac(&[0u8; 47], Algorithm::HS384).unwrap_err(),
        KeyError::WeakSecret(Algorithm::HS384)
    );
    assert!(SigningKey::hmac(SECRET, Algorithm::RS256).is_err());
    let ec = key(P256_KEY);
    assert!(sign(Algorithm::ES384, None, &json!({}), &ec).is_err());
    assert!(sign(Algorithm::HS256, None, &json!({}), &ec).is_err());
    assert!(SigningKey::from_pem(RSA_PUB_PEM).is_err());
    assert!(SigningKey::from_pem(b"nope").is_err());
}

#[test]
fn signing_keys_know_their_algorithms() {
    let rsa = key(RSA_KEY);
    assert_eq!(rsa.default_algorithm(), Algorithm::RS256);
    assert!(rsa.supports(Algorithm::PS512) && !rsa.supports(Algorithm::ES256));
    assert_eq!(key(P384_KEY).default_algorithm(), Algorithm::ES384);
    assert_eq!(key(P521_KEY).default_algorithm(), Algorithm::ES512);
    assert_eq!(key(ED_KEY).default_algorithm(), Algorithm::EdDSA);
    assert!(hmac_key(Algorithm::HS512).public_jwk(None, None).is_none());
    let jwk = key(P256_KEY)
        .public_jwk(Some("dev"), Some(Algorithm::ES256))
        .unwrap();
    assert_eq!(jwk["kid"], "dev");
    assert_eq!(jwk["alg"], "ES256");
    assert_eq!(jwk["crv"], "P-256");
    assert!(jwk.get("d").is_none());
}

#[test]
fn minted_header_is_compact_json() {
    let t = sign(
        Algorithm::HS256,
        Some("k"),
        &json!({"a": 1}),
        &hmac_key(Algorithm::HS256),
    )
    .unwrap();
    let (h, p) = decode_unverified(&t).unwrap();
    assert_eq!(h, json!({"alg": "HS256", "kid": "k", "typ": "JWT"}));
    assert_eq!(p, json!({"a": 1}));
}

#[test]
fn parsing_once_decides_as_verify_signature_does() {
    let k = hmac_key(Algorithm::HS256);
    let set = hmac_set(None);
    let other = KeySet::from_hmac_secret(&[9u8; 64], None, None);
    let good = raw(
        r#"{"alg":"HS256"}"#,
        &claims().to_string(),
        Some((&k, Algorithm::HS256)),
    );
    let tokens = [
        good.clone(),
        raw(r#"{"alg":"HS256"}"#, &claims().to_string(), None),
        raw(r#"{"alg":"none"}"#, &claims().to_string(), None),
        raw(
            r#"{"alg":"HS256","kid":"x"}"#,
            r#"{"iss":1}"#,
            Some((&k, Algorithm::HS256)),
        ),
        format!("{good}x"),
        "a.b".to_owned(),
    ];
    for token in &tokens {
        for keys in [&set, &other] {
            let once = parse_token(token).and_then(|p| {
                p.verify_signature(keys)?;
                Ok(p.into_verified())
            });
            let whole = verify_signature(token, keys);
            assert_eq!(reason(once.clone()), reason(whole.clone()), "{token}");
            assert_eq!(
                once.ok().map(|t| t.claims),
                whole.ok().map(|t| t.claims),
                "{token}"
            );
        }
    }
    assert_eq!(
        parse_token(&good).unwrap().issuer(),
        Some("https://issuer.example")
    );
}

#[test]
fn a_set_limited_to_some_algorithms_refuses_the_others_even_when_the_key_fits() {
    let rsa = key(RSA_KEY);
    let mut set = public_set(&rsa, None, None);
    let rs256 = sign(Algorithm::RS256, None, &claims(), &rsa).unwrap();
    let ps256 = sign(Algorithm::PS256, None, &claims(), &rsa).unwrap();
    assert_eq!((check(&rs256, &set), check(&ps256, &set)), ("ok", "ok"));
    set.limit_algorithms(vec![Algorithm::RS256]);
    assert_eq!(check(&rs256, &set), "ok");
    assert_eq!(check(&ps256, &set), "alg");
    // A listed algorithm the key does not fit stays refused: the list only narrows.
    set.limit_algorithms(vec![Algorithm::ES256, Algorithm::RS256]);
    let es256 = sign(Algorithm::ES256, None, &claims(), &key(P256_KEY)).unwrap();
    assert_ne!(check(&es256, &set), "ok");
}
