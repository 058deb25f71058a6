//! [`ResponseFuture`]: verifying, then calling the inner service, or a ready refusal.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::require::RouteRefusal;
use super::response::{Responder, append_rate_limit_fields};
use crate::error::AuthError;
use crate::rate_limit::RateLimitDecision;
use crate::verifier::Principal;

/// The request back, the outcome, the rate limiter's decision for an admitted request (for
/// the RateLimit fields of the inner service's response), and the refund offered to a route's
/// scope check.
pub(crate) type Verified<B> = (
    Request<B>,
    Result<crate::Principal, AuthError>,
    Option<RateLimitDecision>,
    Option<RouteRefusal>,
);

type Verification<B> = Pin<Box<dyn Future<Output = Verified<B>> + Send>>;

pin_project! {
    /// The response future of [`Auth`](super::Auth).
    pub struct ResponseFuture<I, ReqBody, ResBody, R>
    where
        I: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<I, I::Future, ReqBody, ResBody, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<I, F, ReqBody, ResBody, R> {
        Verifying {
            verify: Verification<ReqBody>,
            inner: Option<I>,
            responder: R,
        },
        Calling {
            #[pin]
            future: F,
            // Added to the inner service's response: clients slow down before a 429.
            decision: Option<RateLimitDecision>,
            // Claimed by a route's scope check that refused the request.
            refusal: Option<RouteRefusal>,
        },
        Refunding {
            refund: Pin<Box<dyn Future<Output = ()> + Send>>,
            response: Option<Response<ResBody>>,
        },
        Refused {
            response: Option<Response<ResBody>>,
        },
    }
}

impl<I, ReqBody, ResBody, R> ResponseFuture<I, ReqBody, ResBody, R>
where
    I: Service<Request<ReqBody>>,
{
    pub(crate) fn verifying(verify: Verification<ReqBody>, inner: I, responder: R) -> Self {
        Self {
            state: State::Verifying {
                verify,
                inner: Some(inner),
                responder,
            },
        }
    }

    pub(crate) fn calling(future: I::Future) -> Self {
        Self {
            state: State::Calling {
                future,
                decision: None,
                refusal: None,
            },
        }
    }

    pub(crate) fn refused(response: Response<ResBody>) -> Self {
        Self {
            state: State::Refused {
                response: Some(response),
            },
        }
    }
}

impl<I, ReqBody, ResBody, R> Future for ResponseFuture<I, ReqBody, ResBody, R>
where
    I: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: Responder<ResBody>,
{
    type Output = Result<Response<ResBody>, I::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Verifying {
                    verify,
                    inner,
                    responder,
                } => {
                    let (mut request, outcome, decision, refusal) =
                        ready!(verify.as_mut().poll(cx));
                    let principal: Principal = match outcome {
                        Ok(principal) => principal,
                        Err(error) => {
                            let response = responder.respond(&error);
                            this.state.set(State::Refused { response: None });
                            return Poll::Ready(Ok(response));
                        }
                    };
                    request.extensions_mut().insert(principal);
                    let mut service = inner
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let future = service.call(request);
                    this.state.set(State::Calling {
                        future,
                        decision,
                        refusal,
                    });
                }
                StateProj::Calling {
                    future,
                    decision,
                    refusal,
                } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(refund) = refusal.as_ref().and_then(RouteRefusal::claimed) {
                        // Refused for the route's scopes: the budget it spent is given back
                        // before the answer goes out, and the answer carries no fields of a
                        // budget it did not, in the end, spend.
                        this.state.set(State::Refunding {
                            refund,
                            response: Some(response),
                        });
                        continue;
                    }
                    if let Some(decision) = decision {
                        append_rate_limit_fields(response.headers_mut(), decision);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Refunding { refund, response } => {
                    ready!(refund.as_mut().poll(cx));
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response));
                }
                StateProj::Refused { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

impl<I, ReqBody, ResBody, R> fmt::Debug for ResponseFuture<I, ReqBody, ResBody, R>
where
    I: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
