//! [`LocalStore`]: GCRA state for one gateway process, in memory: sharded, concurrent and
//! bounded in key count, so a flood of distinct client keys costs a fixed amount of memory.
//!
//! Why our own store rather than a crate. Measured on this 2-core machine with a scratch crate
//! (not kept) checking the same 23-byte keys; medians from criterion, memory as resident-set
//! growth after inserting the keys:
//! - `governor` 0.10 (keyed GCRA on `DashMap`) is the closest fit, but: one `Quota` per
//!   limiter, so per-route and per-tier limits need one limiter (and one map) each; no bound on
//!   the key count (`retain_recent` must be called from a timer, and in between a flood of
//!   distinct keys grows the map without limit: 1,000,000 keys stayed 1,000,000); it keeps the
//!   key itself (`[u8; 23]` keys: 70 bytes per key; `Vec<u8>` keys, one heap allocation each:
//!   101 bytes per key); its own clock abstraction rather than a `now` argument; and no
//!   `remaining`/`reset_after` without its middleware layer. Speed (medians, same run): 51 ns
//!   per check on a hot key and 160 ns across 100,000 keys, against 34 ns and 104 ns here.
//! - `pingora-limits` 0.9 (`rate::Rate`) counts events in a count-min sketch over two fixed
//!   windows: fixed memory (~130 KB whatever the key count), but approximate (a heavy key
//!   inflates the counts of the keys it collides with, so innocent clients can be denied), no
//!   burst, no retry time, it reads `Instant::now()` itself against this crate's injected clock,
//!   and at 92 ns per hot-key observation it is not faster.
//!
//! This store: 25 bytes per key resident at a bound of 100,000 (22.3 by table size), bounded,
//! any number of limits in one store, the clock passed in.
//!
//! What this store is: 64 shards (fewer for small stores), each a `std::sync::Mutex` around a
//! `HashMap<u64, u64>` from key hash to TAT. Keys are hashed once with SipHash-1-3 under a
//! random per-store key (`std`'s `RandomState`), so clients cannot craft collisions or aim at
//! one shard; the key bytes are not kept (16 bytes of entry per key). Two distinct keys with
//! the same 64-bit hash would share a bucket: at 1,000,000 live keys the odds that any pair does
//! are about 3 in 10^8.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{Gcra, Verdict};

const MAX_SHARDS: usize = 64;
/// Stores smaller than this many keys per shard get fewer shards: sharding a tiny store buys
/// no concurrency worth the uneven fill (and keeps small stores' eviction exact in tests).
const MIN_KEYS_PER_SHARD: usize = 64;
/// Entries looked at when a full shard has no idle entry to drop.
const EVICTION_SAMPLE: usize = 8;
/// Bits of the key hash that pick the shard. Not the low bits (the shard's table indexes its
/// buckets with them) nor the top 7 (the table's tag byte): within a shard both stay random.
const SHARD_SHIFT: u32 = 32;

/// In-process GCRA state: one TAT per key, at most `max_keys` keys.
///
/// Contract: [`LocalStore::check`] gives the verdict [`Gcra::check`] would give with the key's
/// TAT, and stores the new one, atomically per key — concurrent checks on one key at one
/// instant admit exactly `burst` between them. The one departure is eviction: when a shard is
/// full, the store first forgets keys whose TAT ≤ now (idle keys with full buckets, which
/// changes no verdict), and if none are idle it forgets one busy key, chosen as the one with
/// the earliest TAT among a sample of 8 entries: the key closest to a full
/// bucket, so forgetting it (it starts again with a full bucket) grants the fewest extra
/// requests. Heavy users have TATs far ahead and are kept; one-shot keys of a flood go first.
///
/// One store may hold keys of several limits ([`Gcra`] values); a key must always be checked
/// with the same one, so prefix keys with the limit's name (`b"route:tier:client"`).
///
/// Memory: the tables grow with use up to the bound, 16 bytes per entry plus one control byte
/// per bucket, buckets a power of two: 19.4 to 39 bytes per key at the bound depending on where
/// `max_keys / 64` falls between powers of two (22.3 at 100,000; 35.6 at 1,000,000), see
/// [`LocalStore::approx_memory_bytes`]. They are rebuilt smaller only as keys are replaced.
pub struct LocalStore {
    hasher: RandomState,
    shards: Box<[Shard]>,
    shard_mask: u64,
    shard_capacity: usize,
}

/// A shard on its own cache lines, so that threads locking neighbouring shards do not bounce
/// each other's line (128 covers the adjacent-line prefetcher on x86).
#[repr(align(128))]
struct Shard(Mutex<Tats>);

struct Tats {
    by_hash: HashMap<u64, u64, BuildHasherDefault<KeyHash>>,
    /// Lower bound on every TAT in `by_hash` (`u64::MAX` when empty). While `now` is below it no
    /// entry can be idle, so a full shard skips the sweep and goes straight to sampling: under a
    /// flood of new keys each insert costs O(1), not a scan.
    earliest_tat: u64,
    /// `by_hash.capacity()` right after the table was last built: its room without tombstones,
    /// which gives its bucket count (`capacity()` itself shrinks as tombstones accumulate).
    built_capacity: usize,
}

/// The map's keys are already keyed SipHash outputs: hashing them again would be wasted work.
#[derive(Default)]
struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; this is here because `Hasher` requires it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

impl LocalStore {
    /// A store that remembers at most `max_keys` keys (0 is taken as 1: a store that forgot
    /// every key at once would admit every request). The bound is split evenly across shards,
    /// so a shard may evict while the store as a whole holds a little under `max_keys`.
    /// Allocates nothing per key until keys arrive.
    pub fn new(max_keys: usize) -> LocalStore {
        let max_keys = max_keys.max(1);
        let wanted = (max_keys / MIN_KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        // A power of two, so the shard is picked with a mask.
        let shard_count = 1usize << wanted.ilog2();
        let shard_capacity = max_keys / shard_count;
        let shards = (0..shard_count)
            .map(|_| {
                Shard(Mutex::new(Tats {
                    by_hash: HashMap::default(),
                    earliest_tat: u64::MAX,
                    built_capacity: 0,
                }))
            })
            .collect();
        LocalStore {
            hasher: RandomState::new(),
            shards,
            shard_mask: shard_count as u64 - 1,
            shard_capacity,
        }
    }

    /// Checks one request for `key` under `gcra` at `now_ns` (nanoseconds on the caller's
    /// monotonic clock; every caller of one store must use the same clock) and records it.
    /// Locks one shard for the duration of a hash-map lookup; allocates only when a shard's
    /// table grows, which stops at the bound.
    pub fn check(&self, key: &[u8], gcra: &Gcra, now_ns: u64) -> Verdict {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[((hash >> SHARD_SHIFT) & self.shard_mask) as usize];
        shard.lock().check(hash, gcra, now_ns, self.shard_capacity)
    }

    /// What [`LocalStore::check`] would decide for `key` at `now_ns`, without recording
    /// anything (a dry run: `tollgate explain`).
    pub fn peek(&self, key: &[u8], gcra: &Gcra, now_ns: u64) -> Verdict {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[((hash >> SHARD_SHIFT) & self.shard_mask) as usize];
        let tat = shard.lock().by_hash.get(&hash).copied();
        gcra.check(tat, now_ns).verdict
    }

    /// Keys currently remembered (for the `tollgate_ratelimit_keys` gauge). Locks each shard in
    /// turn, so it is a snapshot only when nothing else runs; meant for scrapes, not hot paths.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().by_hash.len()).sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys this store will hold: `max_keys` rounded down to a multiple of the shard
    /// count.
    pub fn capacity(&self) -> usize {
        self.shard_capacity * self.shards.len()
    }

    /// An estimate of the memory the store holds, in bytes: its shards plus each table's
    /// allocation (16-byte entries and one control byte per bucket, buckets a power of two at
    /// most 7/8 full, as `std`'s SwissTable lays them out today). Allocator overhead excluded.
    pub fn approx_memory_bytes(&self) -> usize {
        let tables: usize = self
            .shards
            .iter()
            .map(|s| {
                let capacity = s.lock().built_capacity;
                if capacity == 0 {
                    return 0;
                }
                let buckets = (capacity * 8 / 7).next_power_of_two();
                buckets * (std::mem::size_of::<(u64, u64)>() + 1) + 16
            })
            .sum();
        std::mem::size_of::<Self>() + std::mem::size_of_val(&*self.shards) + tables
    }
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Tats> {
        // The table holds plain integers and is never left half-updated, so a panic elsewhere
        // while the lock was held cannot have corrupted it: poisoning carries no information.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Tats {
    fn check(&mut self, hash: u64, gcra: &Gcra, now: u64, capacity: usize) -> Verdict {
        if let Some(tat) = self.by_hash.get_mut(&hash) {
            let decision = gcra.check(Some(*tat), now);
            // TATs only grow, so `earliest_tat` stays a lower bound.
            *tat = decision.tat_ns;
            return decision.verdict;
        }
        // A new key is always admitted (burst ≥ 1), so it is always stored.
        let decision = gcra.check(None, now);
        if self.by_hash.len() >= capacity {
            self.make_room(now, capacity);
        }
        if self.by_hash.len() == self.by_hash.capacity() {
            // The insert would make `std` reallocate. Its rule grows a table whose room is
            // used up by tombstones (entries removed by eviction) to twice the buckets once it
            // is over half full: measured, a shard bounded at 1,562 keys settled at 4,096
            // buckets (44.6 bytes per key) instead of 2,048 (22.3). Rebuilding ourselves, at
            // double the live keys but never above the bound, drops the tombstones and keeps
            // the table at the smallest size for the bound. At the bound this runs once per
            // ~230 inserts into a 1,562-key shard, moving its entries: ~7 moves per insert.
            self.rebuild((self.by_hash.len() * 2).max(4).min(capacity));
        }
        self.by_hash.insert(hash, decision.tat_ns);
        self.earliest_tat = self.earliest_tat.min(decision.tat_ns);
        decision.verdict
    }

    /// Moves the entries into a fresh table with room for `capacity` keys (≥ the live ones).
    fn rebuild(&mut self, capacity: usize) {
        let mut fresh = HashMap::with_capacity_and_hasher(capacity, Default::default());
        fresh.extend(self.by_hash.drain());
        self.by_hash = fresh;
        self.built_capacity = self.by_hash.capacity();
    }

    /// Frees at least one slot in a full table.
    fn make_room(&mut self, now: u64, capacity: usize) {
        if now >= self.earliest_tat {
            let mut earliest = u64::MAX;
            self.by_hash.retain(|_, &mut tat| {
                let busy = tat > now;
                if busy {
                    earliest = earliest.min(tat);
                }
                busy
            });
            self.earliest_tat = earliest;
            if self.by_hash.len() < capacity {
                return;
            }
        }
        // The sample is the first entries in bucket order. Which keys those are follows the
        // store's random hash key, so no client can aim to be (or to avoid being) sampled.
        let victim = self
            .by_hash
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|&(_, &tat)| tat)
            .map(|(&hash, _)| hash);
        if let Some(hash) = victim {
            self.by_hash.remove(&hash);
        }
    }
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("shards", &self.shards.len())
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::{gcra, MS, SEC, T0};

    #[test]
    fn store_gives_the_gcra_verdicts_per_key() {
        let g = gcra("10/s", 3);
        let store = LocalStore::new(1_000);
        let a: Vec<_> = (0..4).map(|_| store.check(b"a", &g, T0)).collect();
        assert_eq!(
            a.iter()
                .map(|v| (v.allowed, v.remaining))
                .collect::<Vec<_>>(),
            [(true, 2), (true, 1), (true, 0), (false, 0)]
        );
        assert_eq!(a[3].retry_after, std::time::Duration::from_millis(100));
        assert!(store.check(b"b", &g, T0).allowed);
        assert!(!store.check(b"a", &g, T0 + 100 * MS - 1).allowed);
        assert!(store.check(b"a", &g, T0 + 100 * MS).allowed);
        assert_eq!(store.len(), 2);
        assert!(!store.is_empty());
    }

    #[test]
    fn a_peek_decides_as_a_check_would_and_records_nothing() {
        let g = gcra("10/s", 2);
        let store = LocalStore::new(1_000);
        assert_eq!(store.peek(b"a", &g, T0), store.check(b"a", &g, T0));
        // One request was recorded by the check; peeking again and again spends nothing.
        for _ in 0..5 {
            let v = store.peek(b"a", &g, T0);
            assert!(v.allowed);
            assert_eq!(v.remaining, 0);
        }
        assert!(store.check(b"a", &g, T0).allowed);
        assert!(!store.peek(b"a", &g, T0).allowed);
        assert!(store.peek(b"new", &g, T0).allowed);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn tiers_are_independent_limits_on_their_own_keys() {
        let free = gcra("2/s", 2);
        let paid = gcra("100/s", 50);
        let store = LocalStore::new(10_000);
        let admitted = |key: &[u8], g: &Gcra, now| {
            (0..1_000)
                .filter(|_| store.check(key, g, now).allowed)
                .count()
        };
        assert_eq!(admitted(b"free:alice", &free, T0), 2);
        assert_eq!(admitted(b"paid:bob", &paid, T0), 50);
        // One second later: free refilled 2 (its full burst), paid 100 capped at its burst 50.
        assert_eq!(admitted(b"free:alice", &free, T0 + SEC), 2);
        assert_eq!(admitted(b"paid:bob", &paid, T0 + SEC), 50);
        // 100 ms later: free has 0.2 of a token, paid 10.
        assert_eq!(admitted(b"free:alice", &free, T0 + SEC + 100 * MS), 0);
        assert_eq!(admitted(b"paid:bob", &paid, T0 + SEC + 100 * MS), 10);
    }

    #[test]
    fn concurrent_checks_on_one_key_admit_exactly_burst() {
        let g = gcra("1/h", 37);
        let store = LocalStore::new(100_000);
        let admitted: usize = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..1_000)
                            .filter(|_| store.check(b"hot", &g, T0).allowed)
                            .count()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(admitted, 37);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn concurrent_checks_on_many_keys_keep_each_exact() {
        let g = gcra("1/h", 5);
        let store = LocalStore::new(100_000);
        let admitted: Vec<usize> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut per_key = vec![0; 500];
                        for _ in 0..10 {
                            for (k, count) in per_key.iter_mut().enumerate() {
                                if store.check(&(k as u32).to_le_bytes(), &g, T0).allowed {
                                    *count += 1;
                                }
                            }
                        }
                        per_key
                    })
                })
                .collect();
            let results: Vec<Vec<usize>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            (0..500)
                .map(|k| results.iter().map(|r| r[k]).sum())
                .collect()
        });
        assert!(admitted.iter().all(|&n| n == 5), "{admitted:?}");
    }

    #[test]
    fn eviction_keeps_len_within_max_keys() {
        let g = gcra("1/s", 10);
        for max_keys in [1, 2, 63, 64, 127, 1_000, 4_096, 5_000] {
            let store = LocalStore::new(max_keys);
            assert!(store.capacity() <= max_keys);
            assert!(
                store.capacity() > max_keys - max_keys / 16 - 1,
                "{max_keys}"
            );
            for i in 0u64..20_000 {
                // Half the keys busy (same instant), half idle by the time they are evicted.
                let now = T0 + (i / 2) * 10 * MS;
                store.check(&i.to_le_bytes(), &g, now);
                if i % 997 == 0 {
                    assert!(store.len() <= max_keys, "{max_keys}: {}", store.len());
                }
            }
            assert!(store.len() <= max_keys);
        }
        assert_eq!(LocalStore::new(0).capacity(), 1);
    }

    #[test]
    fn idle_keys_are_evicted_before_busy_ones() {
        let g = gcra("1/s", 1);
        let store = LocalStore::new(3); // one shard of 3
        store.check(b"a", &g, T0); // TAT T0 + 1 s
        store.check(b"b", &g, T0);
        store.check(b"c", &g, T0 + 500 * MS); // TAT T0 + 1.5 s
        assert_eq!(store.len(), 3);
        // At T0 + 1 s, a and b are idle, c is not: inserting d drops a and b only.
        assert!(store.check(b"d", &g, T0 + SEC).allowed);
        assert_eq!(store.len(), 2);
        assert!(!store.check(b"c", &g, T0 + SEC).allowed, "c was forgotten");
    }

    #[test]
    fn a_full_store_of_busy_keys_forgets_the_one_closest_to_full() {
        let g = gcra("1/s", 10);
        let store = LocalStore::new(3);
        for (key, requests) in [(&b"heavy"[..], 5), (b"light", 1), (b"medium", 3)] {
            for _ in 0..requests {
                store.check(key, &g, T0);
            }
        }
        // Nothing idle: `light` (TAT T0 + 1 s, the earliest) goes.
        assert!(store.check(b"new", &g, T0).allowed);
        assert_eq!(store.len(), 3);
        // The effect, documented: the forgotten key starts again with a full bucket.
        assert_eq!(store.check(b"light", &g, T0).remaining, 9);
        // Re-inserting `light` evicted `new` (T0 + 1 s, the earliest); `heavy` was kept.
        assert_eq!(store.check(b"heavy", &g, T0).remaining, 4);
    }

    #[test]
    fn memory_estimate_grows_with_keys_and_stops_at_the_bound() {
        let g = gcra("1/s", 1);
        let store = LocalStore::new(10_000);
        let empty = store.approx_memory_bytes();
        for i in 0u32..100_000 {
            store.check(&i.to_le_bytes(), &g, T0);
        }
        let full = store.approx_memory_bytes();
        assert!(full > empty);
        let per_key = (full - empty) as f64 / store.len() as f64;
        assert!((17.0..=40.0).contains(&per_key), "{per_key}");
    }

    #[test]
    fn hash_collisions_cannot_be_aimed_across_stores() {
        // Each store has its own hash key: the same key lands on unrelated hashes.
        let a = LocalStore::new(10);
        let b = LocalStore::new(10);
        assert_ne!(a.hasher.hash_one(b"k"), b.hasher.hash_one(b"k"));
    }
}
