//! [`RedisRateLimiter`]: GCRA in one Lua script, shared by every replica.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{RateLimit, RateLimitDecision, RateLimitError, RateLimiter};

/// GCRA in microseconds. The script reads the time from Redis (`TIME`), so replicas with
/// skewed clocks still share one schedule, and runs atomically: no other command runs between
/// its `GET` and its `SET`, so two replicas never both take the last request.
///
/// KEYS[1]: the bucket. ARGV[1]: the interval (period / requests), ARGV[2]: the capacity
/// (interval × burst), both in µs. Returns {allowed, remaining, retry_after µs, reset_after µs}.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - capacity
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', ttl_ms)
return {1, math.floor((capacity - (new_tat - now)) / interval), 0, new_tat - now}
";

/// One request back (a refund): the key's arrival time less one interval, or no key when
/// that is already past (a full budget needs no state). A missing key has nothing to give.
const REFUND_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil then return 0 end
local back = tat - interval
if back <= now then
  redis.call('DEL', KEYS[1])
  return 0
end
local ttl_ms = math.ceil((back - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%d', back), 'PX', ttl_ms)
return 1
";

/// GCRA budgets in Redis, shared by every replica: two limiters on one Redis (and one
/// [`prefix`](Self::prefix)) spend one budget per key.
///
/// Each decision is one `EVALSHA` of a Lua script (loaded on first use, and again after a
/// `SCRIPT FLUSH`): it reads Redis's clock, updates one key holding the bucket's theoretical
/// arrival time in microseconds, and sets the key to expire when the bucket is full again, so
/// idle tokens cost no memory. Connections go through redis-rs's `ConnectionManager`, which
/// reconnects on its own.
///
/// **Outages**: a call that fails or takes longer than [`timeout`](Self::timeout) (default
/// 250 ms) is an error; the middleware then lets the request through and logs a warning (fail
/// open: a limiter outage must not take the API down, and authentication itself still fails
/// closed).
///
/// ```no_run
/// use apitoken::middleware::AuthLayer;
/// use apitoken::rate_limit::{RateLimit, RateLimitPolicy, RedisRateLimiter};
/// use apitoken::{MemoryStore, Verifier};
///
/// # async fn run() -> Result<(), apitoken::rate_limit::RateLimitError> {
/// let limiter = RedisRateLimiter::connect("redis://127.0.0.1:6379").await?.prefix("myapi:rl:");
/// let verifier = Verifier::builder(MemoryStore::new()).build();
/// let layer = AuthLayer::new(verifier)
///     .rate_limit(limiter, RateLimitPolicy::new(RateLimit::per_minute(100)));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisRateLimiter {
    connection: ConnectionManager,
    script: Arc<Script>,
    refund_script: Arc<Script>,
    prefix: Arc<str>,
    timeout: Duration,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

impl RedisRateLimiter {
    /// Connects to the Redis at `url` (`redis://host:port/db`). Fails if it cannot be reached
    /// now; once made, the connection is re-established on its own after an outage.
    pub async fn connect(url: &str) -> Result<Self, RateLimitError> {
        let client = redis::Client::open(url).map_err(RateLimitError::new)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(DEFAULT_TIMEOUT))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(RateLimitError::new)?;
        Ok(Self::from_connection(connection))
    }

    /// Uses an existing connection manager.
    pub fn from_connection(connection: ConnectionManager) -> Self {
        Self {
            connection,
            script: Arc::new(Script::new(GCRA_SCRIPT)),
            refund_script: Arc::new(Script::new(REFUND_SCRIPT)),
            prefix: Arc::from("apitoken:ratelimit:"),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Prepended to every key. Default: `apitoken:ratelimit:`. Limiters share budgets exactly
    /// when they share a Redis and a prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    /// The longest a decision may take before it counts as an outage. Default: 250 ms.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn run(&self, key: &str, limit: &RateLimit) -> Result<RateLimitDecision, RateLimitError> {
        let interval = u64::try_from(limit.interval().as_micros()).unwrap_or(u64::MAX);
        let capacity = interval.saturating_mul(u64::from(limit.burst()));
        let mut connection = self.connection.clone();
        let mut invocation = self.script.key(format!("{}{key}", self.prefix));
        invocation.arg(interval).arg(capacity);
        let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut connection);
        let (allowed, remaining, retry, reset) = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(RateLimitError::new)?
            .map_err(RateLimitError::new)?;
        let micros = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
        Ok(if allowed == 1 {
            let remaining = u32::try_from(remaining).unwrap_or(0);
            RateLimitDecision::allowed_gcra(*limit, remaining, micros(reset))
        } else {
            RateLimitDecision::denied(*limit, micros(retry), micros(reset))
        })
    }
}

impl RedisRateLimiter {
    async fn give_back(&self, key: &str, limit: &RateLimit) -> Result<(), RateLimitError> {
        let interval = u64::try_from(limit.interval().as_micros()).unwrap_or(u64::MAX);
        let mut connection = self.connection.clone();
        let mut invocation = self.refund_script.key(format!("{}{key}", self.prefix));
        invocation.arg(interval);
        let call = invocation.invoke_async::<i64>(&mut connection);
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(RateLimitError::new)?
            .map_err(RateLimitError::new)?;
        Ok(())
    }
}

impl fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RateLimiter for RedisRateLimiter {
    fn acquire(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<RateLimitDecision, RateLimitError>> + Send {
        self.run(key, limit)
    }

    fn refund(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<(), RateLimitError>> + Send {
        self.give_back(key, limit)
    }
}
