//! The wall clock in the unit every record carries its times in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch from the wall clock: the `time_unix_nano` of a record
/// made now. 0 if the clock is set before 1970; `i64::MAX` past the year 2262.
///
/// # Examples
///
/// ```
/// let before = jetscale_model::now_unix_nanos();
/// let after = jetscale_model::now_unix_nanos();
/// assert!(before > 1_600_000_000_000_000_000 && after >= before);
/// ```
pub fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
