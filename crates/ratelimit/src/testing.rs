//! Shared by the unit tests: nanosecond units, a start time, and a GCRA from text.

use crate::{Gcra, Rate};

pub(crate) const MS: u64 = 1_000_000;
pub(crate) const SEC: u64 = 1_000_000_000;
/// An arbitrary start, far from 0 so that "before start" is representable.
pub(crate) const T0: u64 = 1_000 * SEC;

pub(crate) fn gcra(rate: &str, burst: u32) -> Gcra {
    Gcra::new(Rate::parse(rate).unwrap(), burst).unwrap()
}
