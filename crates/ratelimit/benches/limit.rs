//! Cost of one rate-limit decision on the gateway's hot path: the pure GCRA step, a local-store
//! check on one hot key, on 100,000 distinct keys that all fit, and on a flood of new keys that
//! forces eviction in a store bounded at 100,000.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate_ratelimit::{Gcra, LocalStore, Rate};

const SEC: u64 = 1_000_000_000;

/// Keys shaped like the gateway's: a route prefix and a client id.
fn key(i: u64) -> [u8; 23] {
    let mut key = *b"route-a:client:\0\0\0\0\0\0\0\0";
    key[15..].copy_from_slice(&i.to_le_bytes());
    key
}

fn limit(c: &mut Criterion) {
    let mut g = c.benchmark_group("limit");
    // Fast enough that the clock below (1 µs per check) keeps every request admitted, so each
    // check also writes its TAT back.
    let gcra = Gcra::new(Rate::parse("1000000/s").unwrap(), 100).unwrap();

    g.bench_function("gcra_check", |b| {
        let mut now = 1_000 * SEC;
        let mut tat = None;
        b.iter(|| {
            now += 1_000;
            let d = gcra.check(black_box(tat), black_box(now));
            tat = Some(d.tat_ns);
            d.verdict
        })
    });

    g.bench_function("local_hot_key", |b| {
        let store = LocalStore::new(100_000);
        let key = key(42);
        let mut now = 1_000 * SEC;
        b.iter(|| {
            now += 1_000;
            store.check(black_box(&key), &gcra, now)
        })
    });

    g.bench_function("local_100k_keys", |b| {
        const N: u64 = 100_000;
        let store = LocalStore::new(200_000);
        let keys: Vec<_> = (0..N).map(key).collect();
        let mut now = 1_000 * SEC;
        for k in &keys {
            store.check(k, &gcra, now);
        }
        // A stride co-prime with N, so consecutive checks touch unrelated keys (no help from
        // the cache of the previous lookup).
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7_919) % N;
            now += 1_000;
            store.check(black_box(&keys[i as usize]), &gcra, now)
        })
    });

    g.bench_function("local_new_key_flood_bounded_100k", |b| {
        let store = LocalStore::new(100_000);
        let slow = Gcra::new(Rate::parse("1/h").unwrap(), 1).unwrap();
        let now = 1_000 * SEC;
        // Fill to the bound first: every further check is a new, busy key that evicts.
        let mut i = 0u64;
        while i < 200_000 {
            store.check(&key(i), &slow, now);
            i += 1;
        }
        b.iter(|| {
            i += 1;
            store.check(black_box(&key(i)), &slow, now)
        })
    });
    g.finish();
}

criterion_group!(benches, limit);
criterion_main!(benches);
