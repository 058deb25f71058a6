//! [`RequireScopesLayer`]: per-route scope requirements, checked against the `Principal` that
//! [`AuthLayer`](super::AuthLayer) put in the request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::response::{JsonResponder, Responder};
use crate::error::AuthError;
use crate::scope::{InvalidScope, ScopeRequirement};
use crate::store::TokenStore;
use crate::verifier::{Principal, Receipts, RequestInfo};

/// Requires scopes for the routes it wraps; answers 403 (`insufficient_scope`) otherwise.
///
/// Put it *inside* an [`AuthLayer`](super::AuthLayer) (in axum: `route_layer` on a router
/// that is itself under the `AuthLayer`). A request that reaches it with no `Principal` (the
/// layer is missing, or anonymous access was allowed) is refused as unauthenticated: it fails
/// closed.
///
/// ```
/// use apitoken::middleware::RequireScopesLayer;
///
/// let read = RequireScopesLayer::all(["vps:read"])?;
/// // GET/HEAD/OPTIONS/TRACE need `vps:read`, every other method `vps:write`.
/// let by_method = RequireScopesLayer::by_method("vps")?;
/// # let _ = (read, by_method);
/// # Ok::<(), apitoken::InvalidScope>(())
/// ```
pub struct RequireScopesLayer<R = JsonResponder> {
    needs: Arc<Needs>,
    responder: R,
}

#[derive(Debug)]
enum Needs {
    Always(ScopeRequirement),
    ByMethod {
        read: ScopeRequirement,
        write: ScopeRequirement,
    },
}

impl RequireScopesLayer {
    /// Requires `required` on every request.
    pub fn new(required: ScopeRequirement) -> Self {
        Self {
            needs: Arc::new(Needs::Always(required)),
            responder: JsonResponder::new(),
        }
    }

    /// Requires all of `scopes`.
    pub fn all<I, T>(scopes: I) -> Result<Self, InvalidScope>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        Ok(Self::new(ScopeRequirement::all(scopes)?))
    }

    /// Requires one of `scopes`.
    pub fn any<I, T>(scopes: I) -> Result<Self, InvalidScope>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        Ok(Self::new(ScopeRequirement::any(scopes)?))
    }

    /// Requires `read` for safe methods (GET, HEAD, OPTIONS, TRACE) and `write` for all
    /// others.
    pub fn per_method(read: ScopeRequirement, write: ScopeRequirement) -> Self {
        Self {
            needs: Arc::new(Needs::ByMethod { read, write }),
            responder: JsonResponder::new(),
        }
    }

    /// The `resource:read` / `resource:write` convention of the DanubeData seed:
    /// `by_method("vps")` requires `vps:read` for safe methods and `vps:write` for the rest.
    /// For the `read:resource` order, use [`per_method`](Self::per_method).
    pub fn by_method(resource: &str) -> Result<Self, InvalidScope> {
        Ok(Self::per_method(
            ScopeRequirement::all([format!("{resource}:read")])?,
            ScopeRequirement::all([format!("{resource}:write")])?,
        ))
    }
}

impl<R> RequireScopesLayer<R> {
    /// Answers refused requests with `responder`.
    pub fn responder<R2>(self, responder: R2) -> RequireScopesLayer<R2> {
        RequireScopesLayer {
            needs: self.needs,
            responder,
        }
    }
}

impl<R: Clone> Clone for RequireScopesLayer<R> {
    fn clone(&self) -> Self {
        Self {
            needs: Arc::clone(&self.needs),
            responder: self.responder.clone(),
        }
    }
}

impl<R> fmt::Debug for RequireScopesLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScopesLayer")
            .field("needs", &self.needs)
            .finish_non_exhaustive()
    }
}

impl<I, R: Clone> Layer<I> for RequireScopesLayer<R> {
    type Service = RequireScopes<I, R>;

    fn layer(&self, inner: I) -> Self::Service {
        RequireScopes {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`RequireScopesLayer`].
pub struct RequireScopes<I, R> {
    inner: I,
    layer: RequireScopesLayer<R>,
}

impl<I, R> RequireScopes<I, R> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> I {
        self.inner
    }
}

impl<I: Clone, R: Clone> Clone for RequireScopes<I, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<I: fmt::Debug, R> fmt::Debug for RequireScopes<I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScopes")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<I, R, ReqBody, ResBody> Service<Request<ReqBody>> for RequireScopes<I, R>
where
    I: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: Responder<ResBody>,
{
    type Response = Response<ResBody>;
    type Error = I::Error;
    type Future = RequireScopesFuture<I::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let required = match &*self.layer.needs {
            Needs::Always(required) => required,
            Needs::ByMethod { read, write } => {
                if is_safe(request.method()) {
                    read
                } else {
                    write
                }
            }
        };
        let verdict = match request.extensions().get::<Principal>() {
            Some(principal) => principal.require(required).inspect_err(|_| {
                if let Some(refusal) = request.extensions().get::<RouteRefusal>() {
                    refusal.claim();
                }
            }),
            None => {
                tracing::warn!("RequireScopesLayer reached without a Principal; refusing");
                Err(AuthError::missing_credentials())
            }
        };
        match verdict {
            Ok(()) => RequireScopesFuture::Calling {
                future: self.inner.call(request),
            },
            Err(error) => RequireScopesFuture::Refused {
                response: Some(self.layer.responder.respond(&error)),
            },
        }
    }
}

/// What [`AuthLayer`](super::AuthLayer) leaves in the extensions of a request whose admit
/// steps spent something (a rate limit's budget, a quota): a route's scope check that refuses
/// the request claims it, and the layer then gives back what was spent, so a request refused
/// for scopes, by the layer or by a route, spends nothing in the end. Between the spend and
/// the refund, for the time a route takes to refuse, each such request holds what it spent:
/// a burst of requests that their routes will refuse holds as many units as it has requests
/// in flight, and a concurrent request of the same key (the same owner, with `per_owner`)
/// can be refused for a budget that is given back moments later.
#[derive(Clone)]
pub(crate) struct RouteRefusal(Arc<Offer>);

struct Offer {
    claimed: AtomicBool,
    refund: Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>,
}

impl RouteRefusal {
    /// An offer to give back what `layer`'s admit steps spent for `principal`.
    pub(crate) fn offer<S, R>(
        layer: Arc<super::AuthLayer<S, R>>,
        principal: Principal,
        info: RequestInfo,
        receipts: Receipts,
    ) -> Self
    where
        S: TokenStore + 'static,
        R: Send + Sync + 'static,
    {
        let held = Arc::new((principal, info, receipts));
        Self(Arc::new(Offer {
            claimed: AtomicBool::new(false),
            refund: Box::new(move || {
                let layer = Arc::clone(&layer);
                let held = Arc::clone(&held);
                Box::pin(async move {
                    let (principal, info, receipts) = &*held;
                    layer
                        .verifier
                        .refund(&layer.policies, principal, info, receipts)
                        .await;
                })
            }),
        }))
    }

    /// A route refused the request for its scopes.
    fn claim(&self) {
        self.0.claimed.store(true, Ordering::Release);
    }

    /// The refund to run, once, if a route claimed the offer.
    pub(crate) fn claimed(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        self.0
            .claimed
            .swap(false, Ordering::AcqRel)
            .then(|| (self.0.refund)())
    }
}

impl fmt::Debug for RouteRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteRefusal")
            .field("claimed", &self.0.claimed.load(Ordering::Relaxed))
            .finish()
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

pin_project! {
    /// The response future of [`RequireScopes`].
    #[project = RequireScopesProj]
    #[allow(missing_docs)]
    pub enum RequireScopesFuture<F, B> {
        /// The scopes were sufficient; the inner service is answering.
        Calling { #[pin] future: F },
        /// The request was refused.
        Refused { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for RequireScopesFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RequireScopesProj::Calling { future } => future.poll(cx),
            RequireScopesProj::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("RequireScopesFuture polled after completion"))),
        }
    }
}

impl<F, B> fmt::Debug for RequireScopesFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScopesFuture")
            .finish_non_exhaustive()
    }
}
