//! [`RetryLayer`], [`Retry`] and [`RetryFuture`]: resend a request the server answered 429 or
//! 503, after a wait.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use rand::TryRng;
use rand::rngs::SysRng;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::backoff::{Backoff, parse_retry_after};
use crate::clock::{Clock, SystemClock};

/// Retries requests answered `429 Too Many Requests` or `503 Service Unavailable`, with
/// [`Backoff`]; see the [module documentation](super).
///
/// Only those two statuses by default: both say the server did not act on the request, so
/// sending it again is safe even for a `POST`. Other statuses, and transport errors (the
/// request may have reached the server), are returned at once; [`retry_statuses`] changes the
/// set for servers known to answer other statuses without acting.
///
/// The request is cloned for each attempt, so its body must be `Clone`
/// (`http_body_util::Full<Bytes>`, `Empty<Bytes>`, `String`); a streaming body is not, and
/// such a request cannot go through this layer: send it without the layer, once. The waits use Tokio's
/// timer, so the future must run inside a Tokio runtime. Cheap to clone.
///
/// [`retry_statuses`]: Self::retry_statuses
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
/// let response = client.oneshot(Request::new(String::new())).await?;
/// assert_eq!(response.status(), StatusCode::OK);
/// assert_eq!(calls.load(Ordering::SeqCst), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct RetryLayer {
    policy: Arc<Policy>,
}

#[derive(Clone)]
struct Policy {
    backoff: Backoff,
    statuses: Vec<StatusCode>,
    clock: Arc<dyn Clock>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// Retries 429 and 503 with [`Backoff::new`]'s defaults.
    pub fn new() -> Self {
        Self {
            policy: Arc::new(Policy {
                backoff: Backoff::new(),
                statuses: vec![
                    StatusCode::TOO_MANY_REQUESTS,
                    StatusCode::SERVICE_UNAVAILABLE,
                ],
                clock: Arc::new(SystemClock),
            }),
        }
    }

    /// The waits and bounds.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        Arc::make_mut(&mut self.policy).backoff = backoff;
        self
    }

    /// Retries responses with these statuses instead of 429 and 503.
    ///
    /// Add a status only if the server answers it *without acting on the request* (a proxy's
    /// `502` before it forwards, say): a retried `POST` that the server did carry out is
    /// carried out twice.
    ///
    /// ```
    /// use apitoken::client::RetryLayer;
    /// use http::StatusCode;
    ///
    /// // Only 429: a server whose 503 may come after it acted.
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
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        Arc::make_mut(&mut self.policy).clock = clock;
        self
    }

    /// The statuses that are retried.
    pub fn statuses(&self) -> &[StatusCode] {
        &self.policy.statuses
    }

    /// The waits and bounds.
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

impl Policy {
    /// How long to wait before resending after `response`, or `None` to return it.
    fn wait<B>(&self, response: &Response<B>, retry: u32, started: Instant) -> Option<Duration> {
        let status = response.status();
        if !self.statuses.contains(&status) {
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
        match wait {
            Some(wait) => tracing::debug!(
                status = status.as_u16(),
                retry = retry + 1,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "retrying"
            ),
            None => tracing::debug!(
                status = status.as_u16(),
                retries = retry,
                "not retrying: out of attempts or time"
            ),
        }
        wait
    }
}

/// The service made by [`RetryLayer`].
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
        // The first attempt uses the service `poll_ready` readied; a fresh clone stays here.
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let copy = (self.policy.backoff.max_retries() > 0).then(|| request.clone());
        let future = service.call(request);
        RetryFuture {
            state: State::Calling { future },
            service,
            request: copy,
            policy: Arc::clone(&self.policy),
            retries: 0,
            started: Instant::now(),
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
        service: S,
        // What is resent; `None` once no retry is left.
        request: Option<Request<B>>,
        policy: Arc<Policy>,
        retries: u32,
        started: Instant,
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
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    // Transport errors are not retried: the request may have been carried out.
                    let response = ready!(future.poll(cx))?;
                    // `None` once the retries are spent, which is also when the copy is gone.
                    let wait = this.policy.wait(&response, *this.retries, *this.started);
                    let Some(wait) = wait else {
                        return Poll::Ready(Ok(response));
                    };
                    // Dropped unread: the next attempt's response is the one returned.
                    drop(response);
                    *this.retries += 1;
                    this.state.set(State::Waiting {
                        sleep: tokio::time::sleep(wait),
                    });
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    ready!(this.service.poll_ready(cx))?;
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
            }
        }
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
