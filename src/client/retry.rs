//! [`RetryLayer`], [`Retry`] and [`RetryFuture`]: resend a request the server answered 429 or
//! 503, after a wait, within a deadline and a retry budget.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use rand::TryRng;
use rand::rngs::SysRng;
use tokio::time::{Instant, Sleep};
use tower::retry::budget::{Budget, TpsBudget};
use tower_layer::Layer;
use tower_service::Service;

use super::backoff::{Backoff, parse_retry_after};
use crate::clock::{Clock, SystemClock};

/// The header a client sends so that the server carries out a non-idempotent request once
/// however often it arrives (IETF draft `draft-ietf-httpapi-idempotency-key-header`).
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Retries requests answered `429 Too Many Requests` or `503 Service Unavailable`, with
/// [`Backoff`], within a deadline and a retry budget; see the [module documentation](super).
///
/// **Which requests.** A `429` says the server refused the request before acting on it
/// (RFC 6585 §4), so it is retried whatever the method. A `503` says only that the server
/// cannot answer now: a handler may have acted and then answered it (or a proxy may have
/// given up waiting for one). So it is retried only for the idempotent methods of RFC 9110
/// §9.2.2, `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT` and `DELETE`, which may be repeated
/// without changing the outcome. `POST`, `PATCH`, `CONNECT` and extension methods are
/// retried on `429` only, unless the request carries an `Idempotency-Key` header: the server
/// then carries it out once however often it arrives, and it is retried on every status in
/// the set. [`retry_statuses`] changes the set (for idempotent methods, and for requests with
/// the key); other statuses, and transport errors (the request may have reached the server),
/// are returned at once.
///
/// **How long.** At most [`Backoff::max_retries`] retries. Once a retry is planned, the call
/// returns by [`Backoff::max_elapsed`] after it started: a wait that would end past it is not
/// started, and a retry still unanswered at that moment is dropped and the last response
/// received is returned instead. The first attempt is never cut short (there is nothing to
/// return in its place): bound it with the client's own timeout. A request answered at once
/// sets no timer.
///
/// **How many.** Every request the layer is given deposits into a retry budget and every
/// retry withdraws from it ([`tower::retry::budget`]); when it is empty the response is
/// returned as it came. The budget is shared by every clone of the layer and of the services
/// it made, so an outage costs a fraction more traffic instead of `max_retries + 1` times as
/// much. The default is `TpsBudget::new(10 s, 1, 0.1)`: retries up to 10 % of the requests of
/// the last 10 s, plus a reserve of 10 retries per 10 s for clients that send few requests.
/// [`budget`] replaces it, [`unbudgeted`] removes it.
///
/// The request is cloned for each attempt, so its body must be `Clone`
/// (`http_body_util::Full<Bytes>`, `Empty<Bytes>`, `String`); a streaming body is not, and
/// such a request cannot go through this layer: send it without the layer, once. The waits use Tokio's
/// timer, so the future must run inside a Tokio runtime. Cheap to clone.
///
/// [`retry_statuses`]: Self::retry_statuses
/// [`budget`]: Self::budget
/// [`unbudgeted`]: Self::unbudgeted
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// use apitoken::client::{Backoff, RetryLayer};
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// // A server that is unavailable once, then answers.
/// let calls = Arc::new(AtomicUsize::new(0));
/// let server = service_fn({
///     let calls = Arc::clone(&calls);
///     move |_: Request<String>| {
///         let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
///         let status = if first { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
///         let response = Response::builder().status(status).body(String::new());
///         async move { response }
///     }
/// });
///
/// let backoff = Backoff::new().with_base(Duration::from_millis(10));
/// let client = ServiceBuilder::new().layer(RetryLayer::new().backoff(backoff)).service(server);
///
/// // A GET is retried on 503.
/// let response = client.clone().oneshot(Request::new(String::new())).await?;
/// assert_eq!(response.status(), StatusCode::OK);
/// assert_eq!(calls.load(Ordering::SeqCst), 2);
///
/// // A POST is not: the server may have acted before it answered 503.
/// calls.store(0, Ordering::SeqCst);
/// let post = Request::post("/v1/databases").body(String::new())?;
/// let response = client.clone().oneshot(post).await?;
/// assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(calls.load(Ordering::SeqCst), 1);
///
/// // Unless it carries an Idempotency-Key.
/// calls.store(0, Ordering::SeqCst);
/// let post = Request::post("/v1/databases")
///     .header("idempotency-key", "8e03978e-40d5-43e8-bc93-6894a57f9324")
///     .body(String::new())?;
/// let response = client.oneshot(post).await?;
/// assert_eq!(response.status(), StatusCode::OK);
/// assert_eq!(calls.load(Ordering::SeqCst), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct RetryLayer {
    policy: Arc<Policy>,
}

// Our own service rather than `tower::retry::Retry` with a `tower::retry::Policy`: tower's
// awaits every attempt to its end and drops the response that led to a retry, so it cannot
// return the last response when the deadline passes during a retry. The budget is tower's.
#[derive(Clone)]
struct Policy {
    backoff: Backoff,
    statuses: Vec<StatusCode>,
    clock: Arc<dyn Clock>,
    budget: Option<Arc<dyn Budget + Send + Sync>>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// Retries 429 and 503 with [`Backoff::new`]'s defaults, within a retry budget of its own:
    /// `TpsBudget::new(Duration::from_secs(10), 1, 0.1)`, 10 % of the last 10 s of requests
    /// plus 10 retries.
    ///
    /// Each call makes a new budget; clone the layer to share one.
    ///
    /// ```
    /// use apitoken::client::RetryLayer;
    /// use http::StatusCode;
    ///
    /// let layer = RetryLayer::new();
    /// assert_eq!(layer.statuses(), [StatusCode::TOO_MANY_REQUESTS, StatusCode::SERVICE_UNAVAILABLE]);
    /// assert!(layer.is_budgeted());
    /// ```
    pub fn new() -> Self {
        Self {
            policy: Arc::new(Policy {
                backoff: Backoff::new(),
                statuses: vec![
                    StatusCode::TOO_MANY_REQUESTS,
                    StatusCode::SERVICE_UNAVAILABLE,
                ],
                clock: Arc::new(SystemClock),
                // Google's SRE book ("Handling Overload") caps retries at 10 % of requests;
                // a reserve of one retry a second (10 per 10 s window) lets a quiet client,
                // a CLI or a job, still retry its few requests. Tower's default reserve,
                // 10 a second, would let any client sending under 33 requests per 10 s
                // quadruple them.
                budget: Some(Arc::new(TpsBudget::new(Duration::from_secs(10), 1, 0.1))),
            }),
        }
    }

    /// The waits and bounds.
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::client::{Backoff, RetryLayer};
    ///
    /// let layer = RetryLayer::new().backoff(Backoff::new().with_max_elapsed(Duration::from_secs(5)));
    /// assert_eq!(layer.backoff_policy().max_elapsed(), Duration::from_secs(5));
    /// ```
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        Arc::make_mut(&mut self.policy).backoff = backoff;
        self
    }

    /// Retries responses with these statuses instead of 429 and 503.
    ///
    /// Add a status only if the server answers it *without acting on the request* (a proxy's
    /// `502` before it forwards, say). A request with a non-idempotent method (`POST`,
    /// `PATCH`) and no `Idempotency-Key` is still retried on `429` only (if it is in the set).
    ///
    /// ```
    /// use apitoken::client::RetryLayer;
    /// use http::StatusCode;
    ///
    /// // Only 429: a server whose 503 may come after it acted, even for a GET.
    /// let layer = RetryLayer::new().retry_statuses([StatusCode::TOO_MANY_REQUESTS]);
    /// assert_eq!(layer.statuses(), [StatusCode::TOO_MANY_REQUESTS]);
    /// ```
    #[must_use]
    pub fn retry_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        Arc::make_mut(&mut self.policy).statuses = statuses.into_iter().collect();
        self
    }

    /// Where a `Retry-After` date is measured from. Default: [`SystemClock`]. The waits
    /// themselves, and `max_elapsed`, use Tokio's monotonic clock.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apitoken::SystemClock;
    /// use apitoken::client::RetryLayer;
    ///
    /// let layer = RetryLayer::new().clock(Arc::new(SystemClock));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        Arc::make_mut(&mut self.policy).clock = clock;
        self
    }

    /// Replaces the retry budget: every request given to the layer deposits into it, every
    /// retry withdraws, and a retry it refuses is not made (the response is returned).
    ///
    /// Pass the same `Arc` to several layers to make them share one budget: all the clients
    /// of one upstream, say. [`TpsBudget::new(ttl, min_per_sec, retry_percent)`][TpsBudget::new]
    /// allows `retry_percent` retries per request of the last `ttl` (1 to 60 s), plus
    /// `min_per_sec × ttl` retries whatever the traffic. Any [`Budget`] will do.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use apitoken::client::{RetryLayer, TpsBudget};
    ///
    /// // Retries up to 20 % of the last minute's requests, and 60 more.
    /// let shared = Arc::new(TpsBudget::new(Duration::from_secs(60), 1, 0.2));
    /// let reads = RetryLayer::new().budget(shared.clone());
    /// let writes = RetryLayer::new().retry_statuses([http::StatusCode::TOO_MANY_REQUESTS]).budget(shared);
    /// assert!(reads.is_budgeted() && writes.is_budgeted());
    /// ```
    #[must_use]
    pub fn budget(mut self, budget: Arc<dyn Budget + Send + Sync>) -> Self {
        Arc::make_mut(&mut self.policy).budget = Some(budget);
        self
    }

    /// No retry budget: every request may take all of `max_retries`. Under an outage that
    /// multiplies the traffic by up to `max_retries + 1`; use it where something else bounds
    /// the load (a test, a single-request tool).
    ///
    /// ```
    /// use apitoken::client::RetryLayer;
    ///
    /// assert!(!RetryLayer::new().unbudgeted().is_budgeted());
    /// ```
    #[must_use]
    pub fn unbudgeted(mut self) -> Self {
        Arc::make_mut(&mut self.policy).budget = None;
        self
    }

    /// Whether retries spend a budget (see [`budget`](Self::budget)).
    ///
    /// ```
    /// assert!(apitoken::client::RetryLayer::new().is_budgeted());
    /// ```
    pub fn is_budgeted(&self) -> bool {
        self.policy.budget.is_some()
    }

    /// The statuses that are retried.
    ///
    /// ```
    /// assert_eq!(apitoken::client::RetryLayer::new().statuses().len(), 2);
    /// ```
    pub fn statuses(&self) -> &[StatusCode] {
        &self.policy.statuses
    }

    /// The waits and bounds.
    ///
    /// ```
    /// assert_eq!(apitoken::client::RetryLayer::new().backoff_policy().max_retries(), 3);
    /// ```
    pub fn backoff_policy(&self) -> &Backoff {
        &self.policy.backoff
    }
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("backoff", &self.policy.backoff)
            .field("statuses", &self.policy.statuses)
            .field("clock", &self.policy.clock)
            .field("budgeted", &self.policy.budget.is_some())
            .finish()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// RFC 9110 §9.2.2's idempotent methods. Not `Method::is_idempotent`, which also counts the
/// draft `QUERY`: every extension method is treated as unsafe to repeat.
fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

impl Policy {
    /// How long to wait before resending after `response`, or `None` to return it.
    /// `repeatable`: the request may be carried out more than once (an idempotent method, or
    /// an `Idempotency-Key`). A `Some` has withdrawn the retry from the budget.
    fn wait<B>(
        &self,
        response: &Response<B>,
        retry: u32,
        started: Instant,
        repeatable: bool,
    ) -> Option<Duration> {
        let status = response.status();
        if !self.statuses.contains(&status) {
            return None;
        }
        if !repeatable && status != StatusCode::TOO_MANY_REQUESTS {
            tracing::debug!(
                status = status.as_u16(),
                "not retrying: the method is not idempotent and there is no Idempotency-Key"
            );
            return None;
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| parse_retry_after(value, self.clock.now()));
        // The OS generator, as for secrets: a retry is rare, and one fewer generator to seed.
        // If it fails, wait the whole ceiling.
        let random = SysRng.try_next_u64().unwrap_or(u64::MAX);
        let wait = self
            .backoff
            .wait(retry, started.elapsed(), retry_after, random);
        let Some(wait) = wait else {
            tracing::debug!(
                status = status.as_u16(),
                retries = retry,
                "not retrying: out of attempts or time"
            );
            return None;
        };
        // Withdrawn last, so that only a retry that is made spends the budget.
        if let Some(budget) = &self.budget
            && !budget.withdraw()
        {
            tracing::debug!(
                status = status.as_u16(),
                retries = retry,
                "not retrying: the retry budget is spent"
            );
            return None;
        }
        tracing::debug!(
            status = status.as_u16(),
            retry = retry + 1,
            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "retrying"
        );
        Some(wait)
    }
}

/// The service made by [`RetryLayer`].
///
/// ```
/// use std::convert::Infallible;
/// use apitoken::client::RetryLayer;
/// use http::{Request, Response};
/// use tower::{Layer, service_fn};
///
/// let transport = service_fn(|_: Request<String>| async {
///     Ok::<_, Infallible>(Response::new(String::new()))
/// });
/// let retry = RetryLayer::new().layer(transport);
/// let _transport = retry.into_inner();
/// ```
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S> Retry<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("backoff", &self.policy.backoff)
            .field("statuses", &self.policy.statuses)
            .field("budgeted", &self.policy.budget.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for Retry<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    B: Clone,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RetryFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let started = Instant::now();
        if let Some(budget) = &self.policy.budget {
            budget.deposit();
        }
        // The first attempt uses the service `poll_ready` readied; a fresh clone stays here.
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let copy = (self.policy.backoff.max_retries() > 0).then(|| request.clone());
        let repeatable =
            is_idempotent(request.method()) || request.headers().contains_key(IDEMPOTENCY_KEY);
        let future = service.call(request);
        RetryFuture {
            state: State::Calling { future },
            deadline: None,
            service,
            request: copy,
            last: None,
            policy: Arc::clone(&self.policy),
            retries: 0,
            started,
            repeatable,
        }
    }
}

pin_project! {
    /// The response future of [`Retry`].
    pub struct RetryFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        // `started + max_elapsed`, set when the first retry is planned: no timer before.
        #[pin]
        deadline: Option<Sleep>,
        service: S,
        // What is resent; `None` once no retry is left.
        request: Option<Request<B>>,
        // The response that led to the retry under way: returned if the deadline passes first.
        last: Option<S::Response>,
        policy: Arc<Policy>,
        retries: u32,
        started: Instant,
        // An idempotent method, or an `Idempotency-Key`: may be resent after any retried status.
        repeatable: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            future: F,
        },
        Waiting {
            #[pin]
            sleep: Sleep,
        },
        Readying,
        // The deadline passed; the attempt in flight is dropped.
        Done,
    }
}

impl<S, B, ResBody> Future for RetryFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: Clone,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // `true` when the deadline has passed before the next attempt is sent.
        let expired = loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let Poll::Ready(result) = future.poll(cx) else {
                        break false;
                    };
                    // Transport errors are not retried: the request may have been carried out.
                    let response = result?;
                    // `None` once the retries are spent, which is also when the copy is gone.
                    let wait =
                        this.policy
                            .wait(&response, *this.retries, *this.started, *this.repeatable);
                    let Some(wait) = wait else {
                        return Poll::Ready(Ok(response));
                    };
                    // Kept unread: returned if the deadline passes before a retry answers.
                    *this.last = Some(response);
                    *this.retries += 1;
                    if this.deadline.is_none() {
                        // No deadline at all past `Instant`'s range: the wait bounds still hold.
                        let max_elapsed = this.policy.backoff.max_elapsed();
                        if let Some(at) = this.started.checked_add(max_elapsed) {
                            this.deadline.set(Some(tokio::time::sleep_until(at)));
                        }
                    }
                    this.state.set(State::Waiting {
                        sleep: tokio::time::sleep(wait),
                    });
                }
                StateProj::Waiting { sleep } => {
                    if sleep.poll(cx).is_pending() {
                        break false;
                    }
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    // A retry sent at the deadline could not answer in time: not sent.
                    let deadline = this.deadline.as_ref().get_ref().as_ref();
                    if deadline.is_some_and(|sleep| Instant::now() >= sleep.deadline()) {
                        break true;
                    }
                    match this.service.poll_ready(cx) {
                        Poll::Pending => break false,
                        Poll::Ready(ready) => ready?,
                    }
                    // The last attempt takes the copy instead of cloning it again.
                    let request = if *this.retries < this.policy.backoff.max_retries() {
                        this.request.clone()
                    } else {
                        this.request.take()
                    }
                    .expect("a retry is planned only while a copy of the request is kept");
                    let future = this.service.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Done => panic!("RetryFuture polled after it completed"),
            }
        };
        // Waiting on an attempt, a wait or the service: the deadline, once set, cuts it short.
        let expired = expired
            || this
                .deadline
                .as_mut()
                .as_pin_mut()
                .is_some_and(|deadline| deadline.poll(cx).is_ready());
        if !expired {
            return Poll::Pending;
        }
        this.state.set(State::Done);
        let response = this
            .last
            .take()
            .expect("the deadline is set with the response it returns");
        tracing::debug!(
            status = response.status().as_u16(),
            retries = *this.retries,
            "deadline passed: returning the last response"
        );
        Poll::Ready(Ok(response))
    }
}

impl<S, B> fmt::Debug for RetryFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryFuture")
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}
