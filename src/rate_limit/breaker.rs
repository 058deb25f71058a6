//! [`CircuitBreaker`]: a shared limiter that is skipped for a cool-off once it fails, with an
//! in-process limiter counting meanwhile.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use super::memory::nanos;
use super::{MemoryRateLimiter, RateLimit, RateLimitDecision, RateLimitError, RateLimiter};
use crate::clock::{Clock, SystemClock};

/// Consecutive failures of the shared limiter after which it is skipped, by default.
pub const DEFAULT_FAILURES_TO_OPEN: u32 = 3;
/// How long the shared limiter is skipped once it has failed, by default.
pub const DEFAULT_COOL_OFF: Duration = Duration::from_secs(5);

/// Wraps a shared limiter (a `RedisRateLimiter`, feature `redis`) so that an outage
/// costs neither latency nor the limit itself.
///
/// - **Closed** (normal): every request asks the shared limiter. A failure (an error or the
///   backend's own timeout) is answered by the fallback limiter, in process, for that request.
/// - **Open**: after `failures_to_open` consecutive failures the shared limiter is not asked
///   for `cool_off`; the fallback answers every request at once, so a black-holed Redis no
///   longer costs each request its timeout. Budgets are then per replica (with *n* replicas a
///   token gets up to *n* times its limit), which is still a limit.
/// - **Half-open**: after the cool-off one request probes the shared limiter (the others keep
///   using the fallback); success closes the breaker, failure opens it for another cool-off.
///
/// One warning is logged when the breaker opens and one line when it closes, never one per
/// request. The fallback is a [`MemoryRateLimiter`] by default; to refuse requests while the
/// shared limiter is out instead, see [`RateLimitPolicy::fail_closed`](super::RateLimitPolicy::fail_closed)
/// with a limiter that reports its errors (the bare `RedisRateLimiter`).
///
/// ```
/// use std::time::Duration;
/// use apitoken::rate_limit::{CircuitBreaker, MemoryRateLimiter, RateLimit, RateLimiter};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// // Any limiter works as the shared one; here another in-process one stands in for Redis.
/// let breaker = CircuitBreaker::new(MemoryRateLimiter::new())
///     .failures_to_open(3)
///     .cool_off(Duration::from_secs(5));
/// assert!(breaker.acquire("token:abc", &RateLimit::per_minute(10)).await?.is_allowed());
/// assert!(!breaker.is_open());
/// # Ok::<(), apitoken::rate_limit::RateLimitError>(())
/// # }).unwrap();
/// ```
pub struct CircuitBreaker<P, F = MemoryRateLimiter> {
    primary: P,
    fallback: F,
    state: Arc<State>,
}

struct State {
    clock: Arc<dyn Clock>,
    failures_to_open: u32,
    cool_off: Duration,
    /// Consecutive failures while closed.
    failures: AtomicU32,
    /// When the cool-off ends (nanoseconds since the epoch); `None` while closed.
    open_until: Mutex<Option<i128>>,
    /// Whether a half-open probe is in flight.
    probing: AtomicBool,
}

impl<P: RateLimiter> CircuitBreaker<P> {
    /// Wraps `primary`, with an in-process [`MemoryRateLimiter`] as the fallback.
    pub fn new(primary: P) -> Self {
        Self::with_fallback(primary, MemoryRateLimiter::new())
    }
}

impl<P: RateLimiter, F: RateLimiter> CircuitBreaker<P, F> {
    /// Wraps `primary`, answering with `fallback` while it is out.
    pub fn with_fallback(primary: P, fallback: F) -> Self {
        Self {
            primary,
            fallback,
            state: Arc::new(State {
                clock: Arc::new(SystemClock),
                failures_to_open: DEFAULT_FAILURES_TO_OPEN,
                cool_off: DEFAULT_COOL_OFF,
                failures: AtomicU32::new(0),
                open_until: Mutex::new(None),
                probing: AtomicBool::new(false),
            }),
        }
    }

    /// Consecutive failures that open the breaker (at least 1). Default:
    /// [`DEFAULT_FAILURES_TO_OPEN`].
    #[must_use]
    pub fn failures_to_open(mut self, failures: u32) -> Self {
        self.configure(|s| s.failures_to_open = failures.max(1));
        self
    }

    /// How long an open breaker skips the shared limiter. Default: [`DEFAULT_COOL_OFF`].
    #[must_use]
    pub fn cool_off(mut self, cool_off: Duration) -> Self {
        self.configure(|s| s.cool_off = cool_off);
        self
    }

    /// The clock the cool-off is measured on. Default: [`SystemClock`].
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.configure(|s| s.clock = clock);
        self
    }

    fn configure(&mut self, change: impl FnOnce(&mut State)) {
        let state = Arc::get_mut(&mut self.state)
            .unwrap_or_else(|| unreachable!("configured before it is shared"));
        change(state);
    }

    /// Whether the shared limiter is being skipped now.
    pub fn is_open(&self) -> bool {
        let now = nanos(&*self.state.clock);
        self.state.open_until().is_some_and(|until| now < until)
    }

    /// The shared limiter.
    pub fn primary(&self) -> &P {
        &self.primary
    }
}

impl State {
    fn open_until(&self) -> Option<i128> {
        *self.open_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self, now: i128, cause: &RateLimitError) {
        let mut until = self.open_until.lock().unwrap_or_else(|e| e.into_inner());
        let was_closed = until.is_none();
        *until = Some(now.saturating_add(self.cool_off.as_nanos() as i128));
        drop(until);
        self.failures.store(0, Ordering::Relaxed);
        if was_closed {
            tracing::warn!(
                error = ?cause,
                cool_off_ms = u64::try_from(self.cool_off.as_millis()).unwrap_or(u64::MAX),
                "shared rate limiter unavailable: counting in process until it answers again"
            );
        }
    }

    fn close(&self) {
        let mut until = self.open_until.lock().unwrap_or_else(|e| e.into_inner());
        if until.take().is_some() {
            tracing::info!("shared rate limiter answers again");
        }
        self.failures.store(0, Ordering::Relaxed);
    }
}

impl<P: RateLimiter, F: RateLimiter> RateLimiter for CircuitBreaker<P, F> {
    fn acquire(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<RateLimitDecision, RateLimitError>> + Send {
        let key = key.to_owned();
        let limit = *limit;
        async move {
            let state = &*self.state;
            let now = nanos(&*state.clock);
            let half_open = match state.open_until() {
                Some(until) if now < until => return self.fallback.acquire(&key, &limit).await,
                Some(_) => true,
                None => false,
            };
            // Half-open: one probe at a time; the rest keep to the fallback.
            if half_open && state.probing.swap(true, Ordering::AcqRel) {
                return self.fallback.acquire(&key, &limit).await;
            }
            // A probe dropped before it answers (the request timed out, the client went away)
            // must not leave `probing` set, or no probe would ever run again: the guard
            // clears it and, since the limiter did not answer, starts a new cool-off.
            let probe = half_open.then(|| Probe {
                state,
                answered: false,
            });
            let answer = self.primary.acquire(&key, &limit).await;
            if let Some(mut probe) = probe {
                probe.answered = true;
            }
            match answer {
                Ok(decision) => {
                    if half_open || state.failures.load(Ordering::Relaxed) > 0 {
                        state.close();
                    }
                    Ok(decision)
                }
                Err(error) => {
                    let failures = state.failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if half_open || failures >= state.failures_to_open {
                        state.open(nanos(&*state.clock), &error);
                    }
                    self.fallback.acquire(&key, &limit).await
                }
            }
        }
    }

    /// To the backend the breaker uses now: the fallback while open, else the primary. The
    /// spend was almost always made there (the breaker changes state at most once per
    /// failure or cool-off); when it changed in between, the backend that did not spend gets
    /// the unit, and neither backend's budget ever goes past full. A primary that fails to
    /// answer the refund is not counted as a failure: a refund is never retried elsewhere.
    fn refund(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<(), RateLimitError>> + Send {
        let key = key.to_owned();
        let limit = *limit;
        async move {
            let now = nanos(&*self.state.clock);
            match self.state.open_until() {
                Some(until) if now < until => self.fallback.refund(&key, &limit).await,
                _ => self.primary.refund(&key, &limit).await,
            }
        }
    }
}

/// The half-open probe in flight; see [`CircuitBreaker`]'s `acquire`.
struct Probe<'a> {
    state: &'a State,
    answered: bool,
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.state.probing.store(false, Ordering::Release);
        if !self.answered {
            let now = nanos(&*self.state.clock);
            let mut until = self
                .state
                .open_until
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *until = Some(now.saturating_add(self.state.cool_off.as_nanos() as i128));
        }
    }
}

impl<P: fmt::Debug, F: fmt::Debug> fmt::Debug for CircuitBreaker<P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("primary", &self.primary)
            .field("fallback", &self.fallback)
            .field("failures_to_open", &self.state.failures_to_open)
            .field("cool_off", &self.state.cool_off)
            .field("open_until", &self.state.open_until())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use chrono::{TimeDelta, Utc};

    use super::*;
    use crate::clock::ManualClock;

    /// A shared limiter that fails while `down` is set, counting the calls it gets.
    #[derive(Default)]
    struct Flaky {
        down: AtomicBool,
        calls: AtomicUsize,
        inner: MemoryRateLimiter,
    }

    impl RateLimiter for Arc<Flaky> {
        fn acquire(
            &self,
            key: &str,
            limit: &RateLimit,
        ) -> impl Future<Output = Result<RateLimitDecision, RateLimitError>> + Send {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = if self.down.load(Ordering::SeqCst) {
                Err(RateLimitError::new(std::io::Error::other("black-holed")))
            } else {
                Ok(self.inner.acquire_now(key, limit))
            };
            std::future::ready(answer)
        }
    }

    #[tokio::test]
    async fn an_outage_opens_the_breaker_the_fallback_limits_and_a_probe_closes_it() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let flaky = Arc::new(Flaky::default());
        let breaker = CircuitBreaker::with_fallback(
            Arc::clone(&flaky),
            MemoryRateLimiter::with_clock(clock.clone()),
        )
        .failures_to_open(3)
        .cool_off(Duration::from_secs(5))
        .clock(clock.clone());
        let limit = RateLimit::per_minute(2);
        flaky.down.store(true, Ordering::SeqCst);
        // Three failures: each answered by the fallback, which still limits.
        let mut allowed = 0;
        for _ in 0..3 {
            allowed += usize::from(breaker.acquire("k", &limit).await.unwrap().is_allowed());
        }
        assert_eq!(allowed, 2, "the fallback keeps the limit");
        assert!(breaker.is_open());
        // Open: the shared limiter is not asked at all.
        for _ in 0..100 {
            breaker.acquire("other", &limit).await.unwrap();
        }
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
        // Open for exactly the cool-off.
        clock.advance(TimeDelta::seconds(5) - TimeDelta::nanoseconds(1));
        assert!(breaker.is_open());
        clock.advance(TimeDelta::nanoseconds(1));
        assert!(!breaker.is_open(), "half-open at the cool-off's end");
        // After the cool-off one probe goes through; it fails: open again.
        breaker.acquire("k", &limit).await.unwrap();
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);
        assert!(breaker.is_open());
        // Back up: the next probe closes it, and the shared limiter answers everything.
        flaky.down.store(false, Ordering::SeqCst);
        clock.advance(TimeDelta::seconds(5));
        breaker.acquire("fresh", &limit).await.unwrap();
        assert!(!breaker.is_open());
        for _ in 0..10 {
            breaker.acquire("fresh2", &limit).await.unwrap();
        }
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 15);
    }

    #[tokio::test]
    async fn failures_below_the_threshold_do_not_open_it_and_a_success_resets_them() {
        let flaky = Arc::new(Flaky::default());
        let breaker = CircuitBreaker::new(Arc::clone(&flaky)).failures_to_open(3);
        let limit = RateLimit::per_minute(100);
        for _ in 0..5 {
            flaky.down.store(true, Ordering::SeqCst);
            breaker.acquire("k", &limit).await.unwrap();
            breaker.acquire("k", &limit).await.unwrap();
            flaky.down.store(false, Ordering::SeqCst);
            breaker.acquire("k", &limit).await.unwrap();
        }
        assert!(!breaker.is_open());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 15);
    }
}
