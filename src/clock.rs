//! Where the verifier gets the time, so tests can control it.

use std::fmt;
use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};

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
        Utc::now()
    }
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
