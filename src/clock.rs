//! Where the verifier gets the time, so tests can control it.

use std::fmt;
use std::sync::Mutex;

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, Utc};

/// A source of the current time.
///
/// The [`Verifier`](crate::Verifier) and [`Issuer`](crate::Issuer) read the time only through
/// this trait. [`SystemClock`] is the default; [`ManualClock`] is for tests.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
///
/// ```
/// use apitoken::{Clock, SystemClock};
/// assert!(SystemClock.now().timestamp() > 1_700_000_000);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(since) => from_unix(since.as_secs(), since.subsec_nanos()),
            Err(_) => Utc::now(), // before 1970: not worth a fast path
        }
    }
}

thread_local! {
    /// The last day converted, with its date: the calendar arithmetic of a day number is most
    /// of chrono's cost to make a `DateTime` from the system time, and the day rarely changes.
    static LAST_DAY: std::cell::Cell<(u64, NaiveDate)> =
        const { std::cell::Cell::new((0, NaiveDate::MIN)) };
}

/// The UTC time `secs` seconds and `nanos` nanoseconds after the Unix epoch: the same value
/// as `DateTime::from_timestamp`, cheaper when the day is the one converted last.
fn from_unix(secs: u64, nanos: u32) -> DateTime<Utc> {
    const DAY: u64 = 86_400;
    let (day, second) = (secs / DAY, (secs % DAY) as u32);
    let date = LAST_DAY.with(|last| match last.get() {
        (cached, date) if cached == day && date != NaiveDate::MIN => Some(date),
        _ => {
            let date = i64::try_from(secs)
                .ok()
                .and_then(|s| DateTime::from_timestamp(s, 0))
                .map(|t| t.date_naive())?;
            last.set((day, date));
            Some(date)
        }
    });
    date.and_then(|date| {
        NaiveTime::from_num_seconds_from_midnight_opt(second, nanos)
            .map(|time| date.and_time(time).and_utc())
    })
    .unwrap_or_else(Utc::now)
}

/// A clock that moves only when told to, for tests.
///
/// ```
/// use apitoken::{Clock, ManualClock};
/// use chrono::{TimeDelta, TimeZone, Utc};
///
/// let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
/// clock.advance(TimeDelta::hours(1));
/// assert_eq!(clock.now(), Utc.with_ymd_and_hms(2026, 1, 1, 1, 0, 0).unwrap());
/// ```
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock that reads `start` until moved.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Mutex::new(start))
    }

    /// Sets the time.
    pub fn set(&self, now: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// Moves the time by `delta` (which may be negative).
    pub fn advance(&self, delta: TimeDelta) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += delta;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_unix_agrees_with_chrono_across_days_and_seconds() {
        // Around the epoch, a leap day, a year's end and now, in an order that changes day
        // both ways, so the cached day is hit and replaced.
        let starts = [
            0u64,
            951_782_400,
            1_704_067_199,
            1_795_000_000,
            86_399,
            4_102_444_800,
        ];
        for start in starts {
            for offset in [0u64, 1, 59, 3_599, 86_399, 86_400, 86_401] {
                for nanos in [0u32, 1, 999_999_999] {
                    let secs = start + offset;
                    let expected = DateTime::from_timestamp(secs as i64, nanos).unwrap();
                    assert_eq!(from_unix(secs, nanos), expected, "{secs}.{nanos}");
                }
            }
        }
    }

    #[test]
    fn system_clock_reads_the_system_time() {
        let before = Utc::now();
        let read = SystemClock.now();
        let after = Utc::now();
        assert!(before <= read && read <= after);
    }
}
