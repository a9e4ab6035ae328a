//! GCRA arithmetic: from a key's stored theoretical arrival time (TAT) and `now`, the verdict and
//! the TAT to store. One `u64` of state per key and no timer; the same steps, with the same
//! variable names, are in the Redis script (`redis.rs`) so the two can be compared line by line.
//!
//! The model: every admitted request pushes the key's TAT one emission interval `T` further
//! into the future (starting from `now` if the TAT is in the past). A request is admitted if,
//! after that push, the TAT is at most `burst × T` ahead of `now`. So an idle key (TAT ≤ now)
//! admits exactly `burst` requests at one instant, then one per `T`.

use std::time::Duration;

use crate::{Rate, RateLimitError};

const NANOS_PER_MICRO: u64 = 1_000;

/// The longest burst window (`burst` × emission interval) accepted: 2^52 µs, about 142 years.
/// It keeps the Redis script exact: Lua numbers are doubles, exact up to 2^53, and `now` in
/// microseconds since 1970 stays below 2^52 until the year 2112, so `now + window` stays exact.
/// Locally, nanosecond sums then stay far below `u64::MAX` for any clock counting from 1970 or
/// from boot.
const MAX_BURST_WINDOW_US: u64 = 1 << 52;

/// A limit: a [`Rate`] and a burst. Cheap to copy; build it once at config load and share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gcra {
    rate: Rate,
    burst: u32,
    /// `T`: nanoseconds between two requests at the sustained rate.
    emission_interval: u64,
    /// `burst × T`: how far ahead of `now` a TAT may be after an admitted request.
    burst_window: u64,
}

/// What the gateway needs to answer: admit or 429, and the IETF `RateLimit` header fields.
///
/// All durations are measured from the `now` of the check, assuming no other request for the
/// key arrives in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The request may pass.
    pub allowed: bool,
    /// The burst: how many requests an idle key may make at once. The `limit` of the
    /// `RateLimit` header (its window is `limit` × emission interval).
    pub limit: u32,
    /// How many more requests the key could make at this same instant, this one already
    /// counted: `burst − 1` after the first request of an idle key, `0` on the last admitted
    /// one of a burst, and always `0` when denied. Formally `⌊(burst_window − reset_after) / T⌋`
    /// when allowed.
    pub remaining: u32,
    /// Time until the key's bucket is full again (every one of `limit` requests available at
    /// once), i.e. the TAT after this check minus `now`. At least `T` after an admitted request;
    /// when denied it is the stored TAT minus `now`.
    pub reset_after: Duration,
    /// When denied: time until the next request would be admitted, exactly — a request at
    /// `now + retry_after` passes, one a nanosecond earlier does not. It equals
    /// `TAT + T − burst_window − now`. Zero when allowed. The gateway rounds it up to whole
    /// seconds for `Retry-After` ([`Verdict::retry_after_secs`]).
    pub retry_after: Duration,
}

impl Verdict {
    /// [`Verdict::retry_after`] rounded up to whole seconds, for `Retry-After` (rounding down
    /// would send a client back too early, to be denied again). 0 when allowed.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after)
    }

    /// [`Verdict::reset_after`] rounded up to whole seconds, for the `RateLimit` header's
    /// `reset` parameter.
    pub fn reset_after_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The result of [`Gcra::check`]: the verdict and the TAT to store for the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Nanoseconds on the caller's clock. When denied it is the stored TAT unchanged, so the
    /// caller may skip the write.
    pub tat_ns: u64,
}

impl Gcra {
    /// A limit of `rate` sustained, with bursts of up to `burst` requests (`burst ≥ 1`; 1 means
    /// strictly one request per emission interval). Errors when `burst` is 0 or when
    /// `burst × emission interval` exceeds 2^52 µs (about 142 years).
    pub fn new(rate: Rate, burst: u32) -> Result<Gcra, RateLimitError> {
        if burst == 0 {
            return Err(RateLimitError::ZeroBurst);
        }
        let emission_interval = rate.emission_interval_ns();
        // Both the nanosecond window here and the microsecond one in Redis must fit.
        let max = (MAX_BURST_WINDOW_US * NANOS_PER_MICRO / emission_interval)
            .min(MAX_BURST_WINDOW_US / emission_interval_us(emission_interval));
        if u64::from(burst) > max {
            return Err(RateLimitError::BurstTooLarge {
                burst,
                rate: rate.to_string(),
                max,
            });
        }
        Ok(Gcra {
            rate,
            burst,
            emission_interval,
            burst_window: emission_interval * u64::from(burst),
        })
    }

    /// The sustained rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Requests an idle key may make at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// `T` in nanoseconds: see [`Rate::emission_interval`].
    pub fn emission_interval_ns(&self) -> u64 {
        self.emission_interval
    }

    /// Decides one request. `tat_ns` is the key's stored TAT (`None` for a key never seen or
    /// forgotten), `now_ns` the current time; both in nanoseconds on the caller's clock, which
    /// should be monotonic. Store the returned [`Decision::tat_ns`].
    ///
    /// Never panics or overflows: a stored TAT ahead of `now` (a clock that stepped back, or
    /// state written by an instance whose clock runs ahead) is honoured as is, so the key waits
    /// for `now` to catch up; sums saturate at `u64::MAX`.
    pub fn check(&self, tat_ns: Option<u64>, now_ns: u64) -> Decision {
        let emission_interval = self.emission_interval;
        let burst_window = self.burst_window;
        let now = now_ns;
        // A TAT in the past means a full bucket: the bucket holds no more than `burst`, so the
        // idle time beyond that is not credit.
        let tat = tat_ns.map_or(now, |stored| stored.max(now));
        let new_tat = tat.saturating_add(emission_interval);
        if new_tat - now <= burst_window {
            let reset_after = new_tat - now;
            let remaining = (burst_window - reset_after) / emission_interval;
            return Decision {
                verdict: Verdict {
                    allowed: true,
                    limit: self.burst,
                    // At most burst (burst − 1 unless the clock saturated), so it fits.
                    remaining: remaining as u32,
                    reset_after: Duration::from_nanos(reset_after),
                    retry_after: Duration::ZERO,
                },
                tat_ns: new_tat,
            };
        }
        let reset_after = tat - now;
        let retry_after = new_tat - now - burst_window;
        Decision {
            verdict: Verdict {
                allowed: false,
                limit: self.burst,
                remaining: 0,
                reset_after: Duration::from_nanos(reset_after),
                retry_after: Duration::from_nanos(retry_after),
            },
            // Denied requests do not move the TAT (a new key is never denied, as burst ≥ 1).
            tat_ns: tat_ns.unwrap_or(tat),
        }
    }

    /// `ARGV` for [`crate::REDIS_GCRA_SCRIPT`]: emission interval in microseconds (rounded to
    /// the nearest, at least 1, so exact for any interval that is a whole number of
    /// microseconds), burst, and the key TTL margin in milliseconds (rounded up).
    pub fn redis_argv(&self, ttl_margin: Duration) -> [u64; 3] {
        let margin_ms =
            u64::try_from(ttl_margin.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        [
            emission_interval_us(self.emission_interval),
            u64::from(self.burst),
            margin_ms,
        ]
    }

    /// The script's reply `{allowed, remaining, reset_after_us, retry_after_us}` as a
    /// [`Verdict`] with this limit's burst. Out-of-range numbers are clamped, not trusted.
    pub fn verdict_from_redis(&self, reply: [i64; 4]) -> Verdict {
        let [allowed, remaining, reset_after_us, retry_after_us] = reply;
        let micros = |us: i64| Duration::from_micros(us.max(0).unsigned_abs());
        Verdict {
            allowed: allowed == 1,
            limit: self.burst,
            remaining: remaining.clamp(0, i64::from(self.burst)) as u32,
            reset_after: micros(reset_after_us),
            retry_after: micros(retry_after_us),
        }
    }
}

fn emission_interval_us(emission_interval_ns: u64) -> u64 {
    ((emission_interval_ns + NANOS_PER_MICRO / 2) / NANOS_PER_MICRO).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::testing::{gcra, MS, SEC, T0};

    /// Runs `n` checks at `now`, storing the TAT like a store would; returns the verdicts.
    fn run(g: &Gcra, tat: &mut Option<u64>, now: u64, n: usize) -> Vec<Verdict> {
        (0..n)
            .map(|_| {
                let d = g.check(*tat, now);
                *tat = Some(d.tat_ns);
                d.verdict
            })
            .collect()
    }

    #[test]
    fn idle_key_admits_exactly_burst_at_one_instant_then_denies() {
        let g = gcra("10/s", 5); // T = 100 ms
        let mut tat = None;
        let verdicts = run(&g, &mut tat, T0, 7);
        let allowed: Vec<_> = verdicts.iter().map(|v| v.allowed).collect();
        assert_eq!(allowed, [true, true, true, true, true, false, false]);
        let remaining: Vec<_> = verdicts.iter().map(|v| v.remaining).collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0, 0, 0]);
        let reset: Vec<_> = verdicts.iter().map(|v| v.reset_after).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            reset,
            [
                ms(100),
                ms(200),
                ms(300),
                ms(400),
                ms(500),
                ms(500),
                ms(500)
            ]
        );
        assert!(verdicts.iter().all(|v| v.limit == 5));
        assert_eq!(tat, Some(T0 + 500 * MS));
    }

    #[test]
    fn after_the_burst_admits_one_per_emission_interval() {
        let g = gcra("10/s", 3);
        let mut tat = None;
        run(&g, &mut tat, T0, 3);
        for k in 1..=20 {
            let due = T0 + k * 100 * MS;
            assert!(!g.check(tat, due - 1).verdict.allowed, "k={k} early");
            let v = run(&g, &mut tat, due, 2);
            assert!(v[0].allowed, "k={k}");
            assert_eq!(v[0].remaining, 0);
            assert_eq!(v[0].reset_after, Duration::from_millis(300));
            assert!(!v[1].allowed, "k={k} second at the same instant");
        }
    }

    #[test]
    fn retry_after_is_exact() {
        let g = gcra("10/s", 3);
        let mut tat = None;
        run(&g, &mut tat, T0, 3);
        let denied = g.check(tat, T0).verdict;
        assert_eq!(denied.retry_after, Duration::from_millis(100));
        assert_eq!(denied.reset_after, Duration::from_millis(300));
        assert_eq!(denied.retry_after_secs(), 1);
        let later = g.check(tat, T0 + 30 * MS).verdict;
        assert_eq!(later.retry_after, Duration::from_millis(70));
        assert_eq!(later.reset_after, Duration::from_millis(270));
        // The boundary, to the nanosecond.
        let at = T0 + 30 * MS + 70 * MS;
        assert!(!g.check(tat, at - 1).verdict.allowed);
        assert_eq!(
            g.check(tat, at - 1).verdict.retry_after,
            Duration::from_nanos(1)
        );
        assert!(g.check(tat, at).verdict.allowed);
        // Allowed verdicts carry no retry_after.
        assert_eq!(g.check(tat, at).verdict.retry_after, Duration::ZERO);

        // Slow rates: retry_after in whole seconds rounds up.
        let g = gcra("1/min", 1);
        let tat = Some(g.check(None, T0).tat_ns);
        let v = g.check(tat, T0 + 500 * MS).verdict;
        assert_eq!(v.retry_after, Duration::from_millis(59_500));
        assert_eq!(v.retry_after_secs(), 60);
        assert_eq!(v.reset_after_secs(), 60);
    }

    #[test]
    fn remaining_counts_partial_refills_down() {
        let g = gcra("10/s", 5);
        let mut tat = None;
        run(&g, &mut tat, T0, 5);
        // 250 ms later two and a half tokens are back: two requests pass.
        let v = run(&g, &mut tat, T0 + 250 * MS, 3);
        assert_eq!(
            v.iter()
                .map(|v| (v.allowed, v.remaining))
                .collect::<Vec<_>>(),
            [(true, 1), (true, 0), (false, 0)]
        );
        assert_eq!(v[2].retry_after, Duration::from_millis(50));
    }

    #[test]
    fn long_idle_refills_to_exactly_burst() {
        let g = gcra("10/s", 4);
        for idle in [400 * MS, 401 * MS, 3_600 * SEC, 10_000_000 * SEC] {
            let mut tat = None;
            run(&g, &mut tat, T0, 4);
            let v = run(&g, &mut tat, T0 + idle, 6);
            let admitted = v.iter().filter(|v| v.allowed).count();
            assert_eq!(admitted, 4, "idle {idle} ns");
            assert_eq!(v[0].remaining, 3);
        }
        // Just short of a full refill: one token short.
        let mut tat = None;
        run(&g, &mut tat, T0, 4);
        let v = run(&g, &mut tat, T0 + 399 * MS, 6);
        assert_eq!(v.iter().filter(|v| v.allowed).count(), 3);
    }

    #[test]
    fn a_stored_tat_in_the_past_is_the_same_as_a_new_key() {
        // The local store forgets such keys; this is why that changes no verdict.
        let g = gcra("10/s", 3);
        for tat in [0, T0 - 1, T0] {
            assert_eq!(g.check(Some(tat), T0), g.check(None, T0));
        }
    }

    #[test]
    fn denied_requests_leave_the_tat_unchanged() {
        let g = gcra("10/s", 2);
        let stored = T0 + 200 * MS;
        let d = g.check(Some(stored), T0);
        assert!(!d.verdict.allowed);
        assert_eq!(d.tat_ns, stored);
    }

    #[test]
    fn now_before_the_stored_tat_never_panics_or_overflows() {
        let g = gcra("100/s", 10); // T = 10 ms, window 100 ms
                                   // Another instance's clock ran 5 s ahead: this one waits until its clock catches up.
        let ahead = T0 + 5 * SEC;
        let d = g.check(Some(ahead), T0);
        assert!(!d.verdict.allowed);
        assert_eq!(d.tat_ns, ahead);
        assert_eq!(d.verdict.reset_after, Duration::from_secs(5));
        assert_eq!(d.verdict.retry_after, Duration::from_millis(4_910));
        // Extremes.
        for (tat, now) in [
            (Some(u64::MAX), 0),
            (Some(u64::MAX), u64::MAX),
            (Some(u64::MAX - 1), u64::MAX - 1),
            (Some(0), u64::MAX),
            (None, u64::MAX),
            (None, 0),
            (Some(u64::MAX / 2), 1),
        ] {
            let d = g.check(tat, now);
            if d.verdict.allowed {
                assert!(d.tat_ns >= now);
            } else {
                assert_eq!(Some(d.tat_ns), tat);
            }
        }
        let d = g.check(Some(u64::MAX), 0);
        assert!(!d.verdict.allowed);
        assert_eq!(d.verdict.reset_after, Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn burst_must_be_at_least_one_and_fit() {
        let rate = Rate::parse("1/d").unwrap();
        assert_eq!(Gcra::new(rate, 0), Err(RateLimitError::ZeroBurst));
        // 2^52 µs / 86400 s = 52124.99 days.
        assert!(Gcra::new(rate, 52_124).is_ok());
        let err = Gcra::new(rate, 52_125).unwrap_err();
        assert_eq!(
            err.to_string(),
            "burst 52125 is too large for rate 1/d: at most 52124"
        );
        // The fastest rate takes any u32 burst.
        assert!(Gcra::new(Rate::parse("1000000/s").unwrap(), u32::MAX).is_ok());
    }

    #[test]
    fn burst_of_one_is_strict_spacing() {
        let g = gcra("2/s", 1);
        let mut tat = None;
        let v = run(&g, &mut tat, T0, 2);
        assert!(v[0].allowed && !v[1].allowed);
        assert_eq!(v[0].remaining, 0);
        assert_eq!(v[1].retry_after, Duration::from_millis(500));
    }

    #[test]
    fn redis_arguments_and_reply() {
        let g = gcra("6000/min", 20);
        assert_eq!(g.redis_argv(Duration::from_secs(1)), [10_000, 20, 1_000]);
        assert_eq!(g.redis_argv(Duration::from_micros(1)), [10_000, 20, 1]);
        // 3/s: 333333.333 µs rounds to the nearest microsecond.
        assert_eq!(gcra("3/s", 1).redis_argv(Duration::ZERO)[0], 333_333);
        assert_eq!(gcra("2/3us", 1).redis_argv(Duration::ZERO)[0], 2);
        let v = g.verdict_from_redis([0, 0, 200_000, 10_000]);
        assert_eq!(
            v,
            Verdict {
                allowed: false,
                limit: 20,
                remaining: 0,
                reset_after: Duration::from_millis(200),
                retry_after: Duration::from_millis(10),
            }
        );
        let v = g.verdict_from_redis([1, 99, -5, 0]);
        assert!(v.allowed);
        assert_eq!(v.remaining, 20);
        assert_eq!(v.reset_after, Duration::ZERO);
    }

    proptest! {
        /// Over any stretch of time, at most `burst + elapsed / T` requests pass, and a
        /// client that waits `retry_after` is admitted.
        #[test]
        fn never_admits_more_than_burst_plus_the_rate(
            burst in 1u32..8,
            interval_ms in 1u64..50,
            gaps in proptest::collection::vec(0u64..40 * MS, 1..200),
        ) {
            let g = Gcra::new(Rate::new(1, Duration::from_millis(interval_ms)).unwrap(), burst).unwrap();
            let t = interval_ms * MS;
            let mut now = T0;
            let mut tat = None;
            let mut admitted_at = Vec::new();
            for gap in gaps {
                now += gap;
                let d = g.check(tat, now);
                if d.verdict.allowed {
                    admitted_at.push(now);
                    prop_assert!(d.verdict.remaining < burst);
                } else {
                    let retry = d.verdict.retry_after.as_nanos() as u64;
                    prop_assert!(retry > 0);
                    prop_assert!(g.check(tat, now + retry).verdict.allowed);
                    prop_assert!(!g.check(tat, now + retry - 1).verdict.allowed);
                }
                tat = Some(d.tat_ns);
            }
            for (i, &start) in admitted_at.iter().enumerate() {
                for (j, &end) in admitted_at.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as u64;
                    prop_assert!(count <= u64::from(burst) + (end - start) / t);
                }
            }
        }

        /// `remaining` is exactly how many more requests pass at the same instant.
        #[test]
        fn remaining_is_what_passes_next(
            burst in 1u32..10,
            prior in 0usize..12,
            wait_ms in 0u64..2_000,
        ) {
            let g = Gcra::new(Rate::parse("5/s").unwrap(), burst).unwrap();
            let mut tat = None;
            run(&g, &mut tat, T0, prior);
            let now = T0 + wait_ms * MS;
            let first = g.check(tat, now);
            if first.verdict.allowed {
                let mut tat = Some(first.tat_ns);
                let rest = run(&g, &mut tat, now, burst as usize + 1);
                let passed = rest.iter().take_while(|v| v.allowed).count();
                prop_assert_eq!(passed, first.verdict.remaining as usize);
            }
        }
    }
}
