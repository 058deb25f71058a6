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
/// A shard first sweeps out idle keys when it grows past this many; after each sweep, when it
/// has doubled again, so sweeping costs O(1) a new key however many are live.
const SWEEP_AT: usize = 4096;
/// The most keys held by default (about 64 MB): past it, a new key pushes out an old one.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// How many entries an eviction looks at to find the one whose bucket refills soonest.
const EVICTION_SAMPLE: usize = 8;

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
    shards: Vec<Mutex<Shard>>,
    clock: Arc<dyn Clock>,
    /// The most keys one shard holds.
    shard_cap: usize,
}

/// One shard's budgets: key → theoretical arrival time (nanoseconds since the epoch).
#[derive(Default)]
struct Shard {
    tats: HashMap<String, i128>,
    /// The size at which the next new key sweeps idle keys out.
    sweep_at: usize,
}

impl Shard {
    /// Makes room for one new key at `now`: sweeps idle keys when the shard has grown enough
    /// since the last sweep, and, at the cap, evicts the sampled key that refills soonest.
    fn make_room(&mut self, now: i128, cap: usize) {
        // Not capped at `cap`: a full shard of busy keys would then sweep on every new key.
        if self.tats.len() >= self.sweep_at.max(SWEEP_AT) {
            // A bucket whose TAT has passed is full: forgetting it changes nothing.
            self.tats.retain(|_, tat| *tat > now);
            self.sweep_at = self.tats.len().saturating_mul(2);
        }
        if self.tats.len() >= cap {
            // At the cap. Forgetting a key hands it a full bucket early: take the one closest
            // to full (an idle one, if the sample has any), among a few (hash order is as good
            // as random).
            let victim = self
                .tats
                .iter()
                .take(EVICTION_SAMPLE)
                .min_by_key(|(_, tat)| **tat)
                .map(|(key, _)| key.clone());
            if let Some(key) = victim {
                self.tats.remove(&key);
            }
        }
    }
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
        Self::build(clock, DEFAULT_MAX_KEYS)
    }

    /// Holds at most about `keys` keys (at least one a shard). Default:
    /// [`DEFAULT_MAX_KEYS`]. Idle keys (full buckets) go first; past the cap, a new key
    /// pushes out the sampled key whose bucket refills soonest, which then starts afresh.
    ///
    /// ```
    /// use apitoken::rate_limit::{MemoryRateLimiter, RateLimit};
    ///
    /// let limiter = MemoryRateLimiter::new().max_keys(1_000);
    /// for i in 0..5_000 {
    ///     assert!(limiter.acquire_now(&format!("token:{i}"), &RateLimit::per_hour(1)).is_allowed());
    /// }
    /// assert!(limiter.len() <= 1_008);
    /// ```
    #[must_use]
    pub fn max_keys(self, keys: usize) -> Self {
        Self::build(Arc::clone(&self.inner.clock), keys)
    }

    fn build(clock: Arc<dyn Clock>, keys: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                clock,
                shard_cap: keys.div_ceil(SHARDS).max(1),
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
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).tats.len())
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
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let (decision, tat) = gcra(shard.tats.get(key).copied(), now, limit);
        if decision.is_allowed() {
            match shard.tats.get_mut(key) {
                Some(known) => *known = tat,
                None => {
                    shard.make_room(now, self.inner.shard_cap);
                    shard.tats.insert(key.to_owned(), tat);
                }
            }
        }
        decision
    }
}

impl MemoryRateLimiter {
    /// Gives back one request of `key`'s budget (see [`RateLimiter::refund`]), at once.
    ///
    /// ```
    /// use apitoken::rate_limit::{MemoryRateLimiter, RateLimit};
    ///
    /// let limiter = MemoryRateLimiter::new();
    /// let limit = RateLimit::per_minute(1);
    /// assert!(limiter.acquire_now("k", &limit).is_allowed());
    /// assert!(!limiter.acquire_now("k", &limit).is_allowed());
    /// limiter.refund_now("k", &limit);
    /// assert!(limiter.acquire_now("k", &limit).is_allowed());
    /// ```
    pub fn refund_now(&self, key: &str, limit: &RateLimit) {
        let now = nanos(&*self.inner.clock);
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let shard = &self.inner.shards[(hasher.finish() as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&tat) = shard.tats.get(key) {
            match super::gcra_refund(tat, now, limit) {
                Some(back) => {
                    shard.tats.insert(key.to_owned(), back);
                }
                None => {
                    shard.tats.remove(key);
                }
            }
        }
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
            .field("max_keys", &(self.inner.shard_cap * SHARDS))
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

    fn refund(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<(), RateLimitError>> + Send {
        self.refund_now(key, limit);
        std::future::ready(Ok(()))
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
        // Every old key is idle now (its bucket refilled); they go at the next sweep, when a
        // shard has doubled since the last one.
        for i in 0..SHARDS * SWEEP_AT {
            limiter.acquire_now(&format!("new{i}"), &limit);
        }
        assert!(
            limiter.len() < before + before / 2,
            "{} keys left of {before} idle and {before} new",
            limiter.len()
        );
    }

    #[test]
    fn sweeps_are_amortised_while_every_key_is_busy() {
        // Every key stays busy (a limit of one an hour), so no sweep frees anything: the old
        // code swept the whole shard on every new key past 4,096 (quadratic); now each shard
        // sweeps only when it has doubled.
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let limiter = MemoryRateLimiter::with_clock(clock);
        let limit = RateLimit::per_hour(1);
        for i in 0..200_000 {
            assert!(limiter.acquire_now(&format!("k{i}"), &limit).is_allowed());
        }
        assert_eq!(
            limiter.len(),
            200_000,
            "busy keys are never forgotten below the cap"
        );
        for shard in &limiter.inner.shards {
            let shard = shard.lock().unwrap();
            // The threshold moved past the shard's size each time it swept.
            assert!(shard.sweep_at > SWEEP_AT, "{}", shard.sweep_at);
        }
    }

    #[test]
    fn at_the_cap_a_new_key_evicts_one_that_refills_soonest() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let limiter = MemoryRateLimiter::with_clock(clock.clone()).max_keys(SHARDS * 4);
        // One hourly request each: every key's bucket refills an hour from its request.
        for i in 0..SHARDS * 4 {
            limiter.acquire_now(&format!("old{i}"), &RateLimit::per_hour(1));
            clock.advance(TimeDelta::seconds(1));
        }
        assert!(limiter.len() <= SHARDS * 4);
        for i in 0..1_000 {
            assert!(
                limiter
                    .acquire_now(&format!("new{i}"), &RateLimit::per_hour(1))
                    .is_allowed()
            );
        }
        assert!(limiter.len() <= SHARDS * 4, "{}", limiter.len());
        // Keys kept keep their budget: whichever old key is still held is still spent.
        for i in 0..SHARDS * 4 {
            let key = format!("old{i}");
            let held = limiter
                .inner
                .shards
                .iter()
                .any(|s| s.lock().unwrap().tats.contains_key(&key));
            if held {
                assert!(
                    !limiter
                        .acquire_now(&key, &RateLimit::per_hour(1))
                        .is_allowed()
                );
            }
        }
    }
}
