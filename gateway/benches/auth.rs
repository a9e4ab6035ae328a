//! The authentication hot path: a token already in the verified-token cache (hash, cache
//! lookup, claim checks, identity headers) next to a full verification of the same token.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tollgate::auth::Authenticator;

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

criterion_group!(benches, auth_paths);
criterion_main!(benches);
