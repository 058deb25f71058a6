//! [`FailureThrottle`]: failed authentications counted per client address.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quick_cache::sync::Cache;

use super::memory::nanos;
use crate::clock::{Clock, SystemClock};

/// Counts failed authentications per client address and turns an address away with 429
/// once it has failed `max_failures` times within `window` (OWASP API2, API4).
///
/// Wired in with [`AuthLayer::throttle_failures`](crate::middleware::AuthLayer::throttle_failures),
/// the layer [admits](Self::admit) each request first thing, before it parses a header,
/// hashes a secret or asks the store: a flood of bad tokens from one address costs a map
/// lookup per request once the address is turned away. An attempt counts from its start, so
/// a burst sent at once cannot overtake the count: until an address has authenticated once,
/// its failures plus its lookups in flight never pass `max_failures`. Invalid tokens and
/// malformed credentials count as failures; missing credentials, missing scopes, store
/// outages and rate-limit refusals do not.
///
/// - **Per address, never per token id.** Counting failures per token id would let anyone who
///   knows an id (ids are public: they are in logs and URLs) lock its owner out by sending
///   wrong secrets. The owner, from their own address, is unaffected.
/// - **Windows** are fixed and start at an address's first failure; after `window` the count
///   starts again from zero. While turned away an address cannot fail, so it is let in again
///   exactly when its window ends.
/// - **IPv6** addresses are counted per /64 by default ([`ipv6_prefix`](Self::ipv6_prefix)):
///   one subscriber usually holds a whole /64, and counting single addresses would give an
///   attacker 2^64 fresh budgets.
/// - **Unknown client** (no peer address, or a trusted proxy that forwarded none): not
///   counted and never turned away, with one warning logged. One shared bucket for every such
///   request would let a single attacker lock out all of them; a server that gives the layer no
///   peer address (axum without `into_make_service_with_connect_info`) gets no throttling.
/// - **Memory** is bounded: at most [`capacity`](Self::capacity) addresses (100,000 by
///   default, about 10 MB), evicted by `quick_cache`'s CLOCK-Pro policy when full.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use apitoken::rate_limit::FailureThrottle;
/// use apitoken::ManualClock;
/// use chrono::{TimeDelta, Utc};
///
/// let clock = Arc::new(ManualClock::new(Utc::now()));
/// let throttle = FailureThrottle::new(3, Duration::from_secs(60)).clock(clock.clone());
/// let attacker = "203.0.113.9".parse().unwrap();
/// for _ in 0..3 {
///     assert_eq!(throttle.retry_after(attacker), None);
///     throttle.record_failure(attacker);
/// }
/// assert_eq!(throttle.retry_after(attacker), Some(Duration::from_secs(60)));
/// assert_eq!(throttle.retry_after("198.51.100.1".parse().unwrap()), None);
/// clock.advance(TimeDelta::seconds(60));
/// assert_eq!(throttle.retry_after(attacker), None);
/// ```
#[derive(Clone)]
pub struct FailureThrottle {
    max_failures: u32,
    window: Duration,
    ipv6_prefix: u8,
    capacity: usize,
    clock: Arc<dyn Clock>,
    entries: Arc<Cache<IpAddr, Arc<Mutex<Window>>>>,
    warned_unknown: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    failures: u32,
    /// When the window ends, in nanoseconds since the epoch.
    ends: i128,
    /// Attempts admitted whose outcome is not known yet (their lookups are in flight).
    in_flight: u32,
    /// Until when the address counts as proven (it authenticated successfully), in
    /// nanoseconds since the epoch; before its first success, `i128::MIN`.
    proven_until: i128,
}

impl Window {
    fn fresh(now: i128, window: Duration) -> Self {
        Self {
            failures: 0,
            ends: now + window.as_nanos() as i128,
            in_flight: 0,
            proven_until: i128::MIN,
        }
    }

    /// Starts a new window at `now` if this one has ended; attempts in flight carry over.
    fn roll(&mut self, now: i128, window: Duration) {
        if now >= self.ends {
            self.failures = 0;
            self.ends = now + window.as_nanos() as i128;
        }
    }
}

/// How long an address waits when it has as many attempts in flight as it may still fail:
/// about as long as a lookup takes, after which it may well be let in.
const IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);

const DEFAULT_CAPACITY: usize = 100_000;

impl FailureThrottle {
    /// Turns an address away after `max_failures` (at least 1) failures within `window`.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            ipv6_prefix: 64,
            capacity: DEFAULT_CAPACITY,
            clock: Arc::new(SystemClock),
            entries: Arc::new(Cache::new(DEFAULT_CAPACITY)),
            warned_unknown: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The clock. Default: [`SystemClock`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use apitoken::{rate_limit::FailureThrottle, SystemClock};
    /// let throttle = FailureThrottle::new(10, Duration::from_secs(60)).clock(Arc::new(SystemClock));
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How many leading bits of an IPv6 address identify a client (1 to 128). Default: 64.
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::rate_limit::FailureThrottle;
    ///
    /// let throttle = FailureThrottle::new(1, Duration::from_secs(60)).ipv6_prefix(128);
    /// throttle.record_failure("2001:db8::1".parse().unwrap());
    /// assert!(throttle.retry_after("2001:db8::1".parse().unwrap()).is_some());
    /// assert!(throttle.retry_after("2001:db8::2".parse().unwrap()).is_none());
    /// ```
    #[must_use]
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.clamp(1, 128);
        self
    }

    /// The most addresses tracked at once. Default: 100,000.
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::rate_limit::FailureThrottle;
    /// let throttle = FailureThrottle::new(10, Duration::from_secs(60)).capacity(1_000_000);
    /// ```
    #[must_use]
    pub fn capacity(mut self, addresses: usize) -> Self {
        self.capacity = addresses.max(1);
        self.entries = Arc::new(Cache::new(self.capacity));
        self
    }

    /// Failures allowed within a window.
    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    fn bucket(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mask = u128::MAX
                        .checked_shl(128 - u32::from(self.ipv6_prefix))
                        .unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
                }
            },
            v4 => v4,
        }
    }

    /// Admits one authentication attempt from `ip`, counted from this moment: the answer to
    /// a burst does not depend on how fast the store answers. Refused (with how long to wait)
    /// when the address has failed `max_failures` times in its window, or, until it has
    /// authenticated once, when its failures plus its attempts still in flight reach
    /// `max_failures`. Settle the [`Attempt`] with [`failed`](Attempt::failed) or
    /// [`succeeded`](Attempt::succeeded); dropped unsettled, it counts as neither.
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::rate_limit::FailureThrottle;
    ///
    /// let throttle = FailureThrottle::new(2, Duration::from_secs(60));
    /// let ip = "203.0.113.9".parse().unwrap();
    /// // Two lookups in flight at once are all a new address may have.
    /// let first = throttle.admit(ip).unwrap();
    /// let second = throttle.admit(ip).unwrap();
    /// assert!(throttle.admit(ip).is_err());
    /// first.succeeded();
    /// // Proven now: its concurrency is no longer capped; failures still are.
    /// let third = throttle.admit(ip).unwrap();
    /// let fourth = throttle.admit(ip).unwrap();
    /// second.failed();
    /// third.failed();
    /// drop(fourth);
    /// assert!(throttle.admit(ip).is_err());
    /// ```
    pub fn admit(&self, ip: IpAddr) -> Result<Attempt, Duration> {
        let now = nanos(&*self.clock);
        let entry = self.entry(ip, now);
        let mut window = entry.lock().unwrap_or_else(|e| e.into_inner());
        window.roll(now, self.window);
        if window.failures >= self.max_failures {
            return Err(wait_until(window.ends, now));
        }
        let proven = now < window.proven_until;
        if !proven && window.failures.saturating_add(window.in_flight) >= self.max_failures {
            return Err(IN_FLIGHT_RETRY);
        }
        window.in_flight = window.in_flight.saturating_add(1);
        drop(window);
        Ok(Attempt {
            entry: Some(entry),
            clock: Arc::clone(&self.clock),
            window: self.window,
        })
    }

    fn entry(&self, ip: IpAddr, now: i128) -> Arc<Mutex<Window>> {
        self.entries
            .get_or_insert_with(&self.bucket(ip), || {
                Ok::<_, std::convert::Infallible>(Arc::new(Mutex::new(Window::fresh(
                    now,
                    self.window,
                ))))
            })
            .unwrap_or_else(|never| match never {})
    }

    /// How long `ip` is still turned away, or `None` if it may try.
    pub fn retry_after(&self, ip: IpAddr) -> Option<Duration> {
        let entry = self.entries.get(&self.bucket(ip))?;
        let window = *entry.lock().unwrap_or_else(|e| e.into_inner());
        let now = nanos(&*self.clock);
        if window.failures < self.max_failures || now >= window.ends {
            return None;
        }
        Some(wait_until(window.ends, now))
    }

    /// Counts one failed authentication from `ip` (one that was never admitted, such as a
    /// malformed header).
    pub fn record_failure(&self, ip: IpAddr) {
        let now = nanos(&*self.clock);
        let entry = self.entry(ip, now);
        let mut window = entry.lock().unwrap_or_else(|e| e.into_inner());
        window.roll(now, self.window);
        window.failures = window.failures.saturating_add(1);
    }

    /// How many failures `ip` has in its current window.
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::rate_limit::FailureThrottle;
    /// let throttle = FailureThrottle::new(10, Duration::from_secs(60));
    /// throttle.record_failure("192.0.2.1".parse().unwrap());
    /// assert_eq!(throttle.failures("192.0.2.1".parse().unwrap()), 1);
    /// ```
    pub fn failures(&self, ip: IpAddr) -> u32 {
        let Some(entry) = self.entries.get(&self.bucket(ip)) else {
            return 0;
        };
        let window = *entry.lock().unwrap_or_else(|e| e.into_inner());
        if nanos(&*self.clock) >= window.ends {
            0
        } else {
            window.failures
        }
    }

    /// Logs, once, that a request had no known client address.
    pub(crate) fn note_unknown_client(&self) {
        if !self.warned_unknown.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "failed-authentication throttling skipped a request with no known client \
                 address (no peer address, or a trusted proxy forwarded none); such requests \
                 are never throttled"
            );
        }
    }
}

fn wait_until(ends: i128, now: i128) -> Duration {
    Duration::from_nanos(u64::try_from(ends - now).unwrap_or(u64::MAX))
}

/// One admitted authentication attempt ([`FailureThrottle::admit`]), in flight until it is
/// settled or dropped.
///
/// Dropping it unsettled counts as a failure: a request given up half-way (the client hung
/// up, or reset its HTTP/2 stream, after the lookup started) still cost a lookup, and an
/// attacker who cancels every forged request must not be spared. Settle with
/// [`neither`](Self::neither) what is neither a guess nor a success (an outage, a missing
/// scope).
#[must_use = "an attempt counts as in flight until it is settled, and as a failure if dropped"]
pub struct Attempt {
    entry: Option<Arc<Mutex<Window>>>,
    clock: Arc<dyn Clock>,
    window: Duration,
}

impl Attempt {
    /// The attempt failed (an invalid token, a malformed credential): one failure counts.
    pub fn failed(mut self) {
        self.settle(|window, _, _| window.failures = window.failures.saturating_add(1));
    }

    /// The attempt authenticated: the address is proven for a window, and its concurrency
    /// is no longer capped (failures still are).
    pub fn succeeded(mut self) {
        self.settle(|window, now, length| {
            window.proven_until = now.saturating_add(length.as_nanos() as i128);
        });
    }

    /// The attempt ended with neither verdict (the store was down, the token lacked a scope,
    /// no credentials were sent): nothing counts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::rate_limit::FailureThrottle;
    ///
    /// let throttle = FailureThrottle::new(1, Duration::from_secs(60));
    /// let ip = "203.0.113.9".parse().unwrap();
    /// throttle.admit(ip).unwrap().neither();
    /// assert_eq!(throttle.failures(ip), 0);
    /// drop(throttle.admit(ip).unwrap()); // given up half-way: a failure
    /// assert_eq!(throttle.failures(ip), 1);
    /// ```
    pub fn neither(mut self) {
        self.settle(|_, _, _| {});
    }

    fn settle(&mut self, outcome: impl FnOnce(&mut Window, i128, Duration)) {
        if let Some(entry) = self.entry.take() {
            let now = nanos(&*self.clock);
            let mut window = entry.lock().unwrap_or_else(|e| e.into_inner());
            window.in_flight = window.in_flight.saturating_sub(1);
            window.roll(now, self.window);
            outcome(&mut window, now, self.window);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        // Unsettled: given up half-way, after its lookup may have started. Counted, so that
        // cancelling every forged request does not escape the throttle.
        self.settle(|window, _, _| window.failures = window.failures.saturating_add(1));
    }
}

impl fmt::Debug for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attempt")
            .field("settled", &self.entry.is_none())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for FailureThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureThrottle")
            .field("max_failures", &self.max_failures)
            .field("window", &self.window)
            .field("ipv6_prefix", &self.ipv6_prefix)
            .field("capacity", &self.capacity)
            .field("tracked", &self.entries.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use chrono::{TimeDelta, Utc};

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_v4_as_v4() {
        let t = FailureThrottle::new(1, Duration::from_secs(60));
        t.record_failure("2001:db8:1:2:aaaa::1".parse().unwrap());
        assert!(
            t.retry_after("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_some()
        );
        assert!(t.retry_after("2001:db8:1:3::1".parse().unwrap()).is_none());
        t.record_failure("::ffff:192.0.2.1".parse().unwrap());
        assert!(t.retry_after("192.0.2.1".parse().unwrap()).is_some());
    }

    #[test]
    fn a_proven_address_is_proven_for_exactly_one_window() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let t = FailureThrottle::new(1, Duration::from_secs(10)).clock(clock.clone());
        assert_eq!((t.max_failures(), t.window()), (1, Duration::from_secs(10)));
        let ip = "192.0.2.1".parse().unwrap();
        t.admit(ip).unwrap().succeeded();
        // Proven: concurrency is not capped.
        clock.advance(TimeDelta::seconds(10) - TimeDelta::nanoseconds(1));
        let first = t.admit(ip).unwrap();
        let second = t
            .admit(ip)
            .expect("proven until the window's last nanosecond");
        drop((first, second));
        // At the window's end it is a stranger again: one lookup in flight at most.
        clock.advance(TimeDelta::nanoseconds(1));
        let first = t.admit(ip).unwrap();
        assert_eq!(t.admit(ip).unwrap_err(), IN_FLIGHT_RETRY);
        drop(first);
    }

    #[test]
    fn a_new_window_starts_from_zero() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let t = FailureThrottle::new(2, Duration::from_secs(10)).clock(clock.clone());
        let ip = "192.0.2.1".parse().unwrap();
        t.record_failure(ip);
        clock.advance(TimeDelta::seconds(10));
        t.record_failure(ip);
        assert_eq!(t.failures(ip), 1);
        assert!(t.retry_after(ip).is_none());
        t.record_failure(ip);
        assert_eq!(t.retry_after(ip), Some(Duration::from_secs(10)));
    }
}
