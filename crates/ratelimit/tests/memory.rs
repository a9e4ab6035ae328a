//! Memory bound of `LocalStore` under a flood of distinct keys: 1,000,000 keys into a store
//! bounded at 100,000 must leave at most 100,000 keys, and the bytes per key must stay small.
//!
//! Bytes are measured two ways, since a counting global allocator needs `unsafe` and the
//! workspace forbids it: the store's own estimate of its table allocations
//! (`approx_memory_bytes`), and the growth of this process's resident set (`VmRSS` on Linux),
//! which includes allocator overhead and the freed tables of earlier growth steps, so it is an
//! upper bound. This file holds one test so nothing else allocates meanwhile.
//! Run with `--nocapture` to see the numbers.

use tollgate_ratelimit::{Gcra, LocalStore, Rate};

const MAX_KEYS: usize = 100_000;
const KEYS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

/// Resident set size in bytes, where the platform tells it.
fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn a_million_distinct_keys_stay_within_the_bound() {
    let gcra = Gcra::new(Rate::parse("10/s").unwrap(), 20).unwrap();
    let store = LocalStore::new(MAX_KEYS);
    let rss_before = rss_bytes();
    let estimate_before = store.approx_memory_bytes();

    // A realistic key (route prefix + 8 bytes of client id), built in place: no allocation
    // per key, so the resident set grows by the store alone.
    let mut key = *b"route-a:client:\0\0\0\0\0\0\0\0";
    let started = std::time::Instant::now();
    for i in 0..KEYS {
        key[15..].copy_from_slice(&i.to_le_bytes());
        // First half at one instant: every key busy, each insert past the bound evicts by
        // sampling. Second half 10 ms apart per 1,000 keys: older keys turn idle and are swept.
        let now = if i < KEYS / 2 {
            1_000 * SEC
        } else {
            1_000 * SEC + (i / 1_000) * 10_000_000
        };
        assert!(store.check(&key, &gcra, now).allowed);
        if i % 50_000 == 0 {
            assert!(store.len() <= MAX_KEYS, "after {i} keys: {}", store.len());
        }
    }
    let elapsed = started.elapsed();
    let len = store.len();
    assert!(len <= MAX_KEYS, "len {len}");
    assert!(len > MAX_KEYS / 10, "len {len}: the store should be in use");

    let estimate = store.approx_memory_bytes() - estimate_before;
    let per_key = estimate as f64 / store.capacity() as f64;
    println!(
        "{KEYS} keys into a store bounded at {MAX_KEYS} (capacity {}): len {len}, \
         {:.0} ns per check",
        store.capacity(),
        elapsed.as_nanos() as f64 / KEYS as f64
    );
    println!(
        "table estimate: {estimate} bytes, {per_key:.1} bytes per key at capacity \
         (+ {estimate_before} bytes fixed)"
    );
    assert!(per_key < 32.0, "{per_key} bytes per key");

    if let (Some(before), Some(after)) = (rss_before, rss_bytes()) {
        let grown = after.saturating_sub(before);
        let per_key = grown as f64 / store.capacity() as f64;
        println!("resident set growth: {grown} bytes, {per_key:.1} bytes per key at capacity");
        // Loose: the allocator may keep the freed tables of earlier growth steps resident.
        assert!(per_key < 64.0, "{per_key} bytes per key resident");
    }
}
