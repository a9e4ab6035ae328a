//! The authentication hot path: a token already in the verified-token cache (hash, cache
//! lookup, claim checks, identity headers) next to a full verification of the same token.

#![allow(clippy::disallowed_methods, reason = "a benchmark, not the gateway")]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tollgate::identity::auth::Authenticator;

const CONFIG: &str = r#"
auth:
  providers:
    - name: bench
      issuer: https://issuer.bench
      audiences: [api]
      jwks: { keys: [] }
  forward_claims:
    - { claim: sub, header: X-Auth-Subject }
    - { claim: roles, header: X-Auth-Roles }
upstreams:
  u: { backends: [{ addr: "127.0.0.1:1" }] }
routes:
  - { name: r, path: /, upstream: u }
"#;

fn setup() -> (Authenticator, String, tollgate_jwt::KeySet) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let key = tollgate_jwt::SigningKey::from_pkcs8_der(pkcs8.as_ref()).unwrap();
    let jwk = key
        .public_jwk(Some("k"), Some(tollgate_jwt::Algorithm::ES256))
        .unwrap();
    let jwks = serde_json::json!({ "keys": [jwk] });
    let yaml = CONFIG.replace("jwks: { keys: [] }", &format!("jwks: {jwks}"));
    let config = tollgate_config::parse(&yaml).unwrap();
    let auth = Authenticator::build(&config.auth).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://issuer.bench", "aud": "api", "sub": "user-1",
        "roles": ["reader", "writer"], "exp": now + 3600, "iat": now,
    });
    let token =
        tollgate_jwt::sign(tollgate_jwt::Algorithm::ES256, Some("k"), &claims, &key).unwrap();
    let set = tollgate_jwt::KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap();
    (auth, token, set)
}

fn auth_paths(c: &mut Criterion) {
    let (auth, token, set) = setup();
    let providers: Vec<Arc<_>> = auth.providers.clone();
    // The hit path never awaits; a minimal executor runs it.
    let verify = |t: &str| {
        futures::executor::block_on(auth.verify(t, &providers, SystemTime::now(), None))
            .ok()
            .unwrap()
    };
    verify(&token); // fill the cache
    c.bench_function("auth/cache_hit_es256", |b| {
        b.iter(|| {
            let id = verify(black_box(&token));
            black_box(auth.identity_headers(&id.token.claims))
        })
    });
    c.bench_function("auth/full_verify_es256", |b| {
        b.iter(|| tollgate_jwt::verify_signature(black_box(&token), &set).unwrap())
    });
}

/// `upstream_token`: minting (a new caller: claims copied, EdDSA signature, cache insert)
/// next to reusing the token minted for a caller seen within half the TTL.
fn upstream_tokens(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.pem");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(&file, key.serialize_pem()).unwrap();
    let keys = tollgate_config::SigningKeys {
        issuer: "https://gateway.bench".into(),
        current: "gw".into(),
        keys: vec![tollgate_config::SigningKeyFile {
            kid: "gw".into(),
            file: file.to_str().unwrap().into(),
        }],
    };
    let minter = tollgate::identity::mint::Minter::build(&keys).unwrap();
    let spec = tollgate_config::UpstreamToken {
        header: http::header::AUTHORIZATION,
        audience: "billing".into(),
        ttl: std::time::Duration::from_secs(3600),
        claims: vec!["sub".into(), "roles".into()],
    };
    let caller = |sub: u64| {
        serde_json::json!({ "iss": "https://issuer.bench", "sub": format!("user-{sub}"),
            "roles": ["reader", "writer"] })
        .as_object()
        .unwrap()
        .clone()
    };
    let hot = caller(0);
    minter.token_for(&spec, &hot).unwrap();
    c.bench_function("mint/cache_hit", |b| {
        b.iter(|| black_box(minter.token_for(&spec, black_box(&hot))))
    });
    let mut n = 1;
    c.bench_function("mint/sign_eddsa", |b| {
        b.iter_batched(
            || {
                n += 1;
                caller(n)
            },
            |claims| black_box(minter.token_for(&spec, &claims)),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, auth_paths, upstream_tokens);
criterion_main!(benches);
