//! [`Rate`]: how many requests per period, parsed from config text such as `100/s` or `5/10s`,
//! and the emission interval (period / count) that GCRA works with.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::RateLimitError;

const NANOS_PER_MICRO: u64 = 1_000;

/// Units a period may be written in, longest spelling first where one is a prefix of another
/// (`ms` before `m`, `min` before `m`). `m` means minute, as in the config's durations.
const UNITS: [(&str, u64); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("min", 60_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

/// `count` requests per `period`. Invariant: `count >= 1`, `period > 0`, and the emission
/// interval (`period / count`) is at least one microsecond, so at most 1,000,000 requests per
/// second per key (the Redis script counts in microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    count: u32,
    period_ns: u64,
}

impl Rate {
    /// `count` requests per `period`. Errors when `count` is 0, `period` is zero or longer than
    /// 64-bit nanoseconds hold (about 584 years), or the rate is faster than one per microsecond.
    pub fn new(count: u32, period: Duration) -> Result<Rate, RateLimitError> {
        let text = || format!("{count}/{period:?}");
        if count == 0 {
            return Err(RateLimitError::Count { input: text() });
        }
        let period_ns = u64::try_from(period.as_nanos())
            .ok()
            .filter(|&ns| ns > 0)
            .ok_or_else(|| RateLimitError::Period { input: text() })?;
        Rate::checked(count, period_ns)
    }

    /// Parses `COUNT/PERIOD`: `COUNT` a whole number ≥ 1, `PERIOD` a unit (`ns`, `us`, `ms`,
    /// `s`, `m` or `min`, `h`, `d`) optionally preceded by a whole number: `100/s`, `6000/min`,
    /// `10/h`, `5/10s`. Surrounding whitespace is ignored; nothing else is accepted (no
    /// fractions, signs or inner spaces), so a typo is an error rather than a different limit.
    pub fn parse(input: &str) -> Result<Rate, RateLimitError> {
        let text = input.trim();
        let syntax = || RateLimitError::Syntax {
            input: input.to_owned(),
        };
        let (count, period) = text.split_once('/').ok_or_else(syntax)?;
        if count.is_empty() || period.is_empty() {
            return Err(syntax());
        }
        // `u32::from_str` accepts a leading `+`; a rate should be digits only.
        let count = Some(count)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u32>().ok())
            .filter(|&c| c > 0)
            .ok_or_else(|| RateLimitError::Count {
                input: input.to_owned(),
            })?;
        let digits = period.bytes().take_while(u8::is_ascii_digit).count();
        let (multiplier, unit) = period.split_at(digits);
        let unit_ns = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|&(_, ns)| ns)
            .ok_or_else(|| {
                if unit.is_empty() {
                    syntax()
                } else {
                    RateLimitError::Unit {
                        input: input.to_owned(),
                        unit: unit.to_owned(),
                    }
                }
            })?;
        let multiplier = if multiplier.is_empty() {
            Some(1)
        } else {
            multiplier.parse::<u64>().ok()
        };
        let period_ns = multiplier
            .and_then(|m| m.checked_mul(unit_ns))
            .filter(|&ns| ns > 0)
            .ok_or_else(|| RateLimitError::Period {
                input: input.to_owned(),
            })?;
        Rate::checked(count, period_ns)
    }

    fn checked(count: u32, period_ns: u64) -> Result<Rate, RateLimitError> {
        let rate = Rate { count, period_ns };
        if rate.emission_interval_ns() < NANOS_PER_MICRO {
            return Err(RateLimitError::TooFast {
                rate: rate.to_string(),
            });
        }
        Ok(rate)
    }

    /// Requests allowed per period (≥ 1).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period the count applies to.
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.period_ns)
    }

    /// Period / count, rounded down to whole nanoseconds, at least one microsecond. GCRA admits
    /// one request per emission interval once a burst is spent. Rounding down makes a rate that
    /// does not divide evenly (`7/s`) a hair faster than nominal: by less than 1 ns per
    /// interval, a relative error under 10^-3 at the fastest rate and under 10^-6 from one
    /// request per millisecond down.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.emission_interval_ns())
    }

    /// [`Rate::emission_interval`] in nanoseconds.
    pub fn emission_interval_ns(&self) -> u64 {
        self.period_ns / u64::from(self.count)
    }
}

impl FromStr for Rate {
    type Err = RateLimitError;

    fn from_str(s: &str) -> Result<Rate, RateLimitError> {
        Rate::parse(s)
    }
}

/// Canonical text that [`Rate::parse`] reads back to the same value: the largest unit that
/// divides the period, with a multiplier only when it is not 1 (`100/s`, `6000/min`, `5/10s`).
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, unit_ns) = [
            ("d", 86_400_000_000_000),
            ("h", 3_600_000_000_000),
            ("min", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
        ]
        .into_iter()
        .find(|(_, ns)| self.period_ns % ns == 0)
        .unwrap_or(("ns", 1));
        match self.period_ns / unit_ns {
            1 => write!(f, "{}/{name}", self.count),
            n => write!(f, "{}/{n}{name}", self.count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            (
                "100/s",
                100,
                Duration::from_secs(1),
                Duration::from_millis(10),
            ),
            (
                "6000/min",
                6000,
                Duration::from_secs(60),
                Duration::from_millis(10),
            ),
            (
                "6000/m",
                6000,
                Duration::from_secs(60),
                Duration::from_millis(10),
            ),
            (
                "10/h",
                10,
                Duration::from_secs(3600),
                Duration::from_secs(360),
            ),
            ("5/10s", 5, Duration::from_secs(10), Duration::from_secs(2)),
            (
                "1/250ms",
                1,
                Duration::from_millis(250),
                Duration::from_millis(250),
            ),
            (
                "1000/d",
                1000,
                Duration::from_secs(86_400),
                Duration::from_millis(86_400),
            ),
            (
                " 3/s\n",
                3,
                Duration::from_secs(1),
                Duration::from_nanos(333_333_333),
            ),
        ];
        for (text, count, period, interval) in cases {
            let rate = Rate::parse(text).unwrap();
            assert_eq!(rate.count(), count, "{text}");
            assert_eq!(rate.period(), period, "{text}");
            assert_eq!(rate.emission_interval(), interval, "{text}");
        }
        assert_eq!("100/s".parse::<Rate>(), Rate::parse("100/s"));
        assert_eq!(Rate::new(100, Duration::from_secs(1)), Rate::parse("100/s"));
    }

    #[test]
    fn refuses_malformed_rates_with_the_reason() {
        let syntax = ["", "100", "/s", "100/", "100s", "1/10", "10/ 5s"];
        for text in syntax {
            let err = Rate::parse(text).unwrap_err();
            assert!(
                matches!(
                    err,
                    RateLimitError::Syntax { .. } | RateLimitError::Unit { .. }
                ),
                "{text:?}: {err:?}"
            );
        }
        for text in ["0/s", "-1/s", "+5/s", "1.5/s", "4294967296/s", "x/s"] {
            assert!(
                matches!(Rate::parse(text), Err(RateLimitError::Count { .. })),
                "{text:?}"
            );
        }
        for text in ["1/sec", "1/S", "1/5 s", "1/1.5s"] {
            assert!(
                matches!(Rate::parse(text), Err(RateLimitError::Unit { .. })),
                "{text:?}"
            );
        }
        for text in ["1/0s", "1/99999999999999999999s", "1/300000d"] {
            assert!(
                matches!(Rate::parse(text), Err(RateLimitError::Period { .. })),
                "{text:?}"
            );
        }
        assert!(matches!(
            Rate::parse("1000001/s"),
            Err(RateLimitError::TooFast { .. })
        ));
        assert!(Rate::parse("1000000/s").is_ok());
        assert!(matches!(
            Rate::new(0, Duration::from_secs(1)),
            Err(RateLimitError::Count { .. })
        ));
        assert!(matches!(
            Rate::new(1, Duration::ZERO),
            Err(RateLimitError::Period { .. })
        ));
    }

    #[test]
    fn error_messages_are_lowercase_and_quote_the_input() {
        let err = Rate::parse("10/fortnight").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid rate \"10/fortnight\": unknown period unit \"fortnight\"; \
             use ns, us, ms, s, m, min, h or d"
        );
        assert_eq!(
            Rate::parse("2000000/s").unwrap_err().to_string(),
            "rate 2000000/s is too fast: at most 1000000/s (one request per microsecond)"
        );
    }

    #[test]
    fn displays_canonically() {
        for (text, shown) in [
            ("100/s", "100/s"),
            ("6000/m", "6000/min"),
            ("5/10s", "5/10s"),
            ("1/60s", "1/min"),
            ("7/1500ms", "7/1500ms"),
            ("2/24h", "2/d"),
        ] {
            assert_eq!(Rate::parse(text).unwrap().to_string(), shown);
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,16}") {
            let _ = Rate::parse(&text);
        }

        #[test]
        fn display_round_trips(count in 1u32..=1_000_000, period_us in 1_000_000u64..1_000_000_000_000) {
            let rate = Rate::new(count, Duration::from_micros(period_us)).unwrap();
            prop_assert_eq!(Rate::parse(&rate.to_string()), Ok(rate));
        }
    }
}
