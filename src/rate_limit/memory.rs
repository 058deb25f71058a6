//! [`MemoryRateLimiter`]: GCRA in process.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use super::{RateLimit, RateLimitDecision, RateLimitError, RateLimiter, gcra};
use crate::clock::{Clock, SystemClock};

const SHARDS: usize = 16;
/// A shard sweeps out idle keys when it grows past this many.
const SWEEP_AT: usize = 4096;

/// GCRA budgets in this process's memory: one timestamp per key, sharded 16 ways.
///
/// Each replica keeps its own budgets, so with `n` replicas behind a load balancer a token
/// gets up to `n` times its limit; use `RedisRateLimiter` (feature `redis`) to share one.
/// A key whose bucket is full again is the same as a key never seen, so idle keys are swept
/// out as a shard grows: memory is bounded by the keys active within one period.
///
/// `governor` was considered: its keyed limiter holds one quota for all keys, while a token's
/// metadata may set its own, and its clock is not the crate's [`Clock`]. GCRA is a few lines
/// (`gcra` in the module), shared with the Redis script's arithmetic.
///
/// ```
/// use std::sync::Arc;
/// use apitoken::rate_limit::{MemoryRateLimiter, RateLimit, RateLimiter};
/// use apitoken::ManualClock;
/// use chrono::{TimeDelta, Utc};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let clock = Arc::new(ManualClock::new(Utc::now()));
/// let limiter = MemoryRateLimiter::with_clock(clock.clone());
/// let limit = RateLimit::per_minute(1);
/// assert!(limiter.acquire("k", &limit).await?.is_allowed());
/// let refused = limiter.acquire("k", &limit).await?;
/// assert_eq!(refused.retry_after().as_secs(), 60);
/// clock.advance(TimeDelta::seconds(60));
/// assert!(limiter.acquire("k", &limit).await?.is_allowed());
/// # Ok::<(), apitoken::rate_limit::RateLimitError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct MemoryRateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Vec<Mutex<HashMap<String, i128>>>,
    clock: Arc<dyn Clock>,
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRateLimiter {
    /// An empty limiter on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty limiter on `clock` (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                clock,
            }),
        }
    }

    /// How many keys are held (idle ones not yet swept included).
    ///
    /// ```
    /// use apitoken::rate_limit::MemoryRateLimiter;
    /// assert_eq!(MemoryRateLimiter::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether no key is held.
    ///
    /// ```
    /// use apitoken::rate_limit::MemoryRateLimiter;
    /// assert!(MemoryRateLimiter::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The decision for one request, synchronously.
    ///
    /// ```
    /// use apitoken::rate_limit::{MemoryRateLimiter, RateLimit};
    ///
    /// let limiter = MemoryRateLimiter::new();
    /// assert!(limiter.acquire_now("k", &RateLimit::per_second(1)).is_allowed());
    /// assert!(!limiter.acquire_now("k", &RateLimit::per_second(1)).is_allowed());
    /// ```
    pub fn acquire_now(&self, key: &str, limit: &RateLimit) -> RateLimitDecision {
        let now = nanos(&*self.inner.clock);
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let shard = &self.inner.shards[(hasher.finish() as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let (decision, tat) = gcra(map.get(key).copied(), now, limit);
        if decision.is_allowed() {
            if map.len() >= SWEEP_AT && !map.contains_key(key) {
                // A bucket whose TAT has passed is full: forgetting it changes nothing.
                map.retain(|_, tat| *tat > now);
            }
            map.insert(key.to_owned(), tat);
        }
        decision
    }
}

pub(crate) fn nanos(clock: &dyn Clock) -> i128 {
    let now = clock.now();
    i128::from(now.timestamp()) * 1_000_000_000 + i128::from(now.timestamp_subsec_nanos())
}

impl fmt::Debug for MemoryRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateLimiter")
            .field("keys", &self.len())
            .field("clock", &self.inner.clock)
            .finish()
    }
}

impl RateLimiter for MemoryRateLimiter {
    fn acquire(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<RateLimitDecision, RateLimitError>> + Send {
        std::future::ready(Ok(self.acquire_now(key, limit)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use chrono::{TimeDelta, Utc};

    #[test]
    fn idle_keys_are_swept() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let limiter = MemoryRateLimiter::with_clock(clock.clone());
        let limit = RateLimit::per_second(10);
        for i in 0..SHARDS * SWEEP_AT {
            limiter.acquire_now(&format!("k{i}"), &limit);
        }
        let before = limiter.len();
        assert!(before >= SHARDS * (SWEEP_AT - 1));
        clock.advance(TimeDelta::seconds(1));
        for i in 0..SHARDS * 4 {
            limiter.acquire_now(&format!("new{i}"), &limit);
        }
        assert!(limiter.len() < before / 2, "{} keys left", limiter.len());
    }
}
