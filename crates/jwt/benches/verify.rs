//! Per algorithm: tollgate's `verify_signature` (parse, key selection, signature) next to the bare
//! `ring` (or `p521`) verification of the same signing input and signature, so the benchmark shows
//! what the JWT layer costs on top of the cryptography.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use serde_json::json;
use tollgate_jwt::{codec, sign, verify_signature, Algorithm, KeySet, SigningKey};

/// Test-only keys committed under tests/data (see the README there); ring cannot generate RSA keys
/// and the P-521 key is read by the `p521` crate.
const RSA_KEY: &[u8] = include_bytes!("../tests/data/rsa2048-test-key.pem");
const P521_KEY: &[u8] = include_bytes!("../tests/data/p521-test-key.pem");

type RawVerify = Box<dyn Fn(&[u8], &[u8]) -> bool>;

struct Case {
    alg: Algorithm,
    token: String,
    keys: KeySet,
    raw: RawVerify,
}

fn pkcs8_of(pem: &[u8]) -> Vec<u8> {
    pem::parse(pem).expect("test key").into_contents()
}

fn case(alg: Algorithm, pkcs8: &[u8], raw: RawVerify) -> Case {
    let key = SigningKey::from_pkcs8_der(pkcs8).expect("signing key");
    finish(alg, &key, raw)
}

fn finish(alg: Algorithm, key: &SigningKey, raw: RawVerify) -> Case {
    let claims = json!({"iss": "https://issuer.example", "sub": "bench", "aud": "api", "exp": 4_000_000_000u64});
    let token = sign(alg, Some("k1"), &claims, key).expect("sign");
    let keys = match key.public_jwk(Some("k1"), Some(alg)) {
        Some(jwk) => KeySet::from_jwks(jwk.to_string().as_bytes()).expect("jwks"),
        None => KeySet::from_hmac_secret(&[42u8; 32], Some("k1"), Some(alg)),
    };
    Case {
        alg,
        token,
        keys,
        raw,
    }
}

fn cases() -> Vec<Case> {
    let rng = SystemRandom::new();
    let mut out = Vec::new();

    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[42u8; 32]);
    let hs = SigningKey::hmac(&[42u8; 32], Algorithm::HS256).expect("hmac");
    out.push(finish(
        Algorithm::HS256,
        &hs,
        Box::new(move |m, s| ring::hmac::verify(&hmac, m, s).is_ok()),
    ));

    let rsa_der = pkcs8_of(RSA_KEY);
    let rsa = RsaKeyPair::from_pkcs8(&rsa_der).expect("rsa");
    for (alg, params) in [
        (Algorithm::RS256, &signature::RSA_PKCS1_2048_8192_SHA256),
        (Algorithm::PS256, &signature::RSA_PSS_2048_8192_SHA256),
    ] {
        let pk: signature::RsaPublicKeyComponents<Vec<u8>> = rsa.public().into();
        out.push(case(
            alg,
            &rsa_der,
            Box::new(move |m, s| pk.verify(params, m, s).is_ok()),
        ));
    }

    for (alg, signing, verifying) in [
        (
            Algorithm::ES256,
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signature::ECDSA_P256_SHA256_FIXED,
        ),
        (
            Algorithm::ES384,
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &signature::ECDSA_P384_SHA384_FIXED,
        ),
    ] {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).expect("ec keygen");
        let kp = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).expect("ec key");
        let pk = signature::UnparsedPublicKey::new(verifying, kp.public_key().as_ref().to_vec());
        out.push(case(
            alg,
            pkcs8.as_ref(),
            Box::new(move |m, s| pk.verify(m, s).is_ok()),
        ));
    }

    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed keygen");
    let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ed key");
    let pk =
        signature::UnparsedPublicKey::new(&signature::ED25519, kp.public_key().as_ref().to_vec());
    out.push(case(
        Algorithm::EdDSA,
        pkcs8.as_ref(),
        Box::new(move |m, s| pk.verify(m, s).is_ok()),
    ));

    let p521_der = pkcs8_of(P521_KEY);
    let es512 = SigningKey::from_pkcs8_der(&p521_der).expect("p521");
    let jwk = es512.public_jwk(None, None).expect("jwk");
    let point: Vec<u8> = [&[4u8][..], &b64(&jwk["x"]), &b64(&jwk["y"])].concat();
    let vk = p521::ecdsa::VerifyingKey::from_sec1_bytes(&point).expect("p521 point");
    out.push(finish(
        Algorithm::ES512,
        &es512,
        Box::new(move |m, s| {
            use p521::ecdsa::signature::Verifier;
            p521::ecdsa::Signature::from_slice(s).is_ok_and(|s| vk.verify(m, &s).is_ok())
        }),
    ));
    out
}

fn b64(v: &serde_json::Value) -> Vec<u8> {
    codec::b64url_decode(v.as_str().expect("string")).expect("base64url")
}

fn bench(c: &mut Criterion) {
    for case in cases() {
        let (input, sig) = case.token.rsplit_once('.').expect("token");
        let sig = codec::b64url_decode(sig).expect("sig");
        assert!(
            (case.raw)(input.as_bytes(), &sig),
            "{}: raw verify",
            case.alg
        );
        assert!(
            verify_signature(&case.token, &case.keys).is_ok(),
            "{}: verify",
            case.alg
        );

        let mut g = c.benchmark_group(case.alg.as_str());
        g.bench_function("tollgate_verify_signature", |b| {
            b.iter(|| verify_signature(black_box(&case.token), black_box(&case.keys)))
        });
        g.bench_function("raw_verify", |b| {
            b.iter(|| (case.raw)(black_box(input.as_bytes()), black_box(&sig)))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
