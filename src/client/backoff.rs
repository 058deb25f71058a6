//! [`Backoff`]: how long to wait before each retry, and when to stop; `Retry-After`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::HeaderValue;

/// How long [`Retry`](super::Retry) waits before each retry, and when it stops.
///
/// Exponential backoff with full jitter: before retry *n* (0 for the first), the wait is drawn
/// uniformly from zero to `min(cap, base × 2ⁿ)`. When the response carries `Retry-After`, the
/// wait is never shorter than it asks, even when that is longer than `cap`. Retrying stops
/// after `max_retries` retries, or when the next wait would end more than `max_elapsed` after
/// the first attempt started: then the last response is returned as it came, without waiting.
///
/// `max_elapsed` is a deadline once a retry is planned: a retry still unanswered
/// `max_elapsed` after the first attempt started is dropped, and the response before it is
/// returned. The first attempt itself is not cut short (there is no response to return in
/// its place): bound it with the HTTP client's own timeout.
///
/// Defaults: `base` 500 ms, `cap` 8 s, `max_retries` 3, `max_elapsed` 30 s.
///
/// ```
/// use std::time::Duration;
/// use apitoken::client::Backoff;
///
/// let backoff = Backoff::new()
///     .with_base(Duration::from_millis(100))
///     .with_max_retries(5);
/// assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
/// assert_eq!(backoff.ceiling(3), Duration::from_millis(800));
/// assert_eq!(backoff.ceiling(20), Duration::from_secs(8)); // the cap
/// assert_eq!(backoff.max_elapsed(), Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    max_retries: u32,
    max_elapsed: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// The defaults: `base` 500 ms, `cap` 8 s, `max_retries` 3, `max_elapsed` 30 s.
    pub fn new() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(8),
            max_retries: 3,
            max_elapsed: Duration::from_secs(30),
        }
    }

    /// The ceiling of the first wait, doubled for each later retry.
    #[must_use]
    pub fn with_base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The largest ceiling (a `Retry-After` may still ask for longer).
    #[must_use]
    pub fn with_cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// How many times a request is retried at most (0: never), so it is sent at most
    /// `max_retries + 1` times.
    #[must_use]
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// The deadline for retries, counted from the start of the first attempt: no wait may end
    /// past it, and a retry still in flight at that moment is dropped for the response before
    /// it. The first attempt is not cut short.
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::client::Backoff;
    ///
    /// let backoff = Backoff::new().with_max_elapsed(Duration::from_secs(5));
    /// assert_eq!(backoff.max_elapsed(), Duration::from_secs(5));
    /// ```
    #[must_use]
    pub fn with_max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.max_elapsed = max_elapsed;
        self
    }

    /// See [`with_base`](Self::with_base).
    pub fn base(&self) -> Duration {
        self.base
    }

    /// See [`with_cap`](Self::with_cap).
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// See [`with_max_retries`](Self::with_max_retries).
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// See [`with_max_elapsed`](Self::with_max_elapsed).
    pub fn max_elapsed(&self) -> Duration {
        self.max_elapsed
    }

    /// The longest jittered wait before retry `retry` (0 for the first): `min(cap, base × 2^retry)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry `retry`, or `None` to stop and return the response: after
    /// `max_retries` retries, or when the wait would end past `max_elapsed`.
    ///
    /// `random` draws the jitter: the wait is `random / 2⁶⁴` of the ceiling, and never shorter
    /// than `retry_after`.
    pub(crate) fn wait(
        &self,
        retry: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        random: u64,
    ) -> Option<Duration> {
        if retry >= self.max_retries {
            return None;
        }
        let jittered = fraction_of(self.ceiling(retry), random);
        let wait = retry_after.map_or(jittered, |asked| asked.max(jittered));
        let ends = elapsed.checked_add(wait)?;
        (ends <= self.max_elapsed).then_some(wait)
    }
}

/// `random / 2⁶⁴` of `ceiling`: full jitter without floating point.
fn fraction_of(ceiling: Duration, random: u64) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    let scaled = (u128::from(nanos) * u128::from(random)) >> 64;
    Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
}

/// The wait a `Retry-After` value asks for (RFC 9110 §10.2.3): delta-seconds, or an HTTP-date
/// (any of the three forms of §5.6.7) measured from `now`; a date in the past asks for no
/// wait. `None` for anything else, which is then ignored.
pub(crate) fn parse_retry_after(value: &HeaderValue, now: DateTime<Utc>) -> Option<Duration> {
    let text = value.to_str().ok()?.trim_matches([' ', '\t']);
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still a number of seconds: far longer than any budget.
        return Some(text.parse().map_or(Duration::MAX, Duration::from_secs));
    }
    let date = DateTime::<Utc>::from(httpdate::parse_http_date(text).ok()?);
    Some((date - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(1994, 11, 6, 8, 49, 30).unwrap()
    }

    #[test]
    fn ceilings_double_from_the_base_up_to_the_cap() {
        let backoff = Backoff::new();
        let ceilings: Vec<_> = (0..6).map(|n| backoff.ceiling(n)).collect();
        assert_eq!(ceilings, [MS(500), S(1), S(2), S(4), S(8), S(8)]);
        // No overflow for absurd retry numbers.
        assert_eq!(backoff.ceiling(u32::MAX), S(8));
        assert_eq!(
            Backoff::new().with_cap(Duration::MAX).ceiling(64),
            MS(500) * u32::MAX
        );
    }

    #[test]
    fn jitter_spans_zero_to_the_ceiling() {
        let backoff = Backoff::new();
        assert_eq!(backoff.wait(2, S(0), None, 0), Some(S(0)));
        assert_eq!(backoff.wait(2, S(0), None, 1 << 63), Some(S(1)));
        let top = backoff.wait(2, S(0), None, u64::MAX).unwrap();
        assert!(top < S(2) && top > S(2) - MS(1), "{top:?}");
    }

    #[test]
    fn retry_after_is_a_floor_even_past_the_cap() {
        let backoff = Backoff::new();
        assert_eq!(backoff.wait(0, S(0), Some(S(1)), u64::MAX), Some(S(1)));
        assert_eq!(backoff.wait(0, S(0), Some(S(20)), 0), Some(S(20)));
        // A longer jittered wait wins over a short Retry-After.
        assert_eq!(backoff.wait(2, S(0), Some(MS(500)), 1 << 63), Some(S(1)));
    }

    #[test]
    fn stops_after_max_retries() {
        let backoff = Backoff::new().with_max_retries(2);
        assert!(backoff.wait(1, S(0), None, 0).is_some());
        assert_eq!(backoff.wait(2, S(0), None, 0), None);
        assert_eq!(
            Backoff::new().with_max_retries(0).wait(0, S(0), None, 0),
            None
        );
    }

    #[test]
    fn stops_when_the_wait_would_end_past_the_budget() {
        let backoff = Backoff::new().with_max_elapsed(S(10));
        assert_eq!(backoff.wait(0, S(4), Some(S(6)), 0), Some(S(6)));
        assert_eq!(backoff.wait(0, S(4), Some(S(7)), 0), None);
        assert_eq!(backoff.wait(0, S(11), None, 0), None);
        assert_eq!(backoff.wait(0, S(0), Some(Duration::MAX), 0), None);
    }

    #[test]
    fn retry_after_in_seconds() {
        let parse = |text: &'static str| parse_retry_after(&HeaderValue::from_static(text), now());
        assert_eq!(parse("120"), Some(S(120)));
        assert_eq!(parse("0"), Some(S(0)));
        assert_eq!(parse(" 3 "), Some(S(3)));
        assert_eq!(parse("99999999999999999999999"), Some(Duration::MAX));
        for junk in ["", "-1", "1.5", "+1", "1s", "soon", "0x10"] {
            assert_eq!(parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn retry_after_as_an_http_date_in_every_form() {
        let parse = |text: &'static str| parse_retry_after(&HeaderValue::from_static(text), now());
        // RFC 9110 §5.6.7's three forms of 1994-11-06 08:49:37 UTC, 7 s after `now`.
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), Some(S(7)));
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), Some(S(7)));
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), Some(S(7)));
        // In the past: no wait asked for.
        assert_eq!(parse("Sun, 06 Nov 1994 08:00:00 GMT"), Some(S(0)));
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 CET"), None);
        assert_eq!(
            parse_retry_after(&HeaderValue::from_bytes(b"\xff").unwrap(), now()),
            None
        );
    }
}
