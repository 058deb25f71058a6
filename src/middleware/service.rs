//! [`Auth`]: the service that authenticates each request before the inner service sees it.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::AuthLayer;
use super::require::RouteRefusal;
use super::response::Responder;
use crate::error::AuthError;
use crate::rate_limit::RateLimitDecision;
use crate::store::TokenStore;
use crate::verifier::RequestInfo;

/// The authenticating service made by [`AuthLayer`].
pub struct Auth<I, S, R> {
    pub(crate) inner: I,
    /// Shared: routers clone the service for every request (axum does), and one reference
    /// count is cheaper than one for each part of the configuration.
    pub(crate) layer: Arc<AuthLayer<S, R>>,
}

impl<I, S, R> Auth<I, S, R> {
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

impl<I: Clone, S, R> Clone for Auth<I, S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: Arc::clone(&self.layer),
        }
    }
}

impl<I: fmt::Debug, S, R> fmt::Debug for Auth<I, S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<I, S, R, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<I, S, R>
where
    I: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S: TokenStore + 'static,
    R: Responder<ResBody>,
    ReqBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = I::Error;
    type Future = ResponseFuture<I, ReqBody, ResBody, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let credentials = &self.layer.credentials;
        mark_sensitive(&mut request, credentials);
        let client_ip = self.layer.proxies.client_ip(&request);
        if let Some(ip) = client_ip {
            request.extensions_mut().insert(super::ClientIp(ip));
        }
        let verifier = &self.layer.verifier;
        let policies = &self.layer.policies[..];

        // The policies' first point: an address that failed too often is turned away before
        // anything else is done, so a burst is judged before any of it reaches the store.
        let info = RequestInfo::new().client_ip(client_ip);
        let verification = match verifier.begin(info, policies) {
            Ok(verification) => verification,
            Err(error) => return ResponseFuture::refused(self.layer.responder.respond(&error)),
        };

        // Header problems are answered here, without a store and without allocating a future.
        let span = match credentials.locate(request.headers(), &|t| verifier.max_len_of(t)) {
            Err(error) => {
                let error = verifier.refuse(verification, policies, error);
                return ResponseFuture::refused(self.layer.responder.respond(&error));
            }
            Ok(None) if self.layer.allow_anonymous => {
                verifier.pass(verification, policies);
                return ResponseFuture::calling(self.inner.call(request));
            }
            Ok(None) => {
                let error =
                    verifier.refuse(verification, policies, AuthError::missing_credentials());
                return ResponseFuture::refused(self.layer.responder.respond(&error));
            }
            Ok(Some(span)) => span,
        };

        // Use the service that `poll_ready` readied; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = Arc::clone(&self.layer);
        let verify = Box::pin(async move {
            // Read from the request this future owns: the borrow ends with the verification.
            let token = span.token(request.headers(), &layer.credentials);
            let verified = layer
                .verifier
                .finish(verification, &layer.policies, token, &layer.required)
                .await;
            let mut refusal = None;
            let (outcome, decision) = match verified {
                Ok(verified) => {
                    let decision = verified.detail::<RateLimitDecision>().copied();
                    let (principal, receipts) = verified.into_parts();
                    if !receipts.is_empty() {
                        // A route's own scope requirement is met only further in: what the
                        // admit steps spent is given back if that refuses the request.
                        let offer = RouteRefusal::offer(
                            Arc::clone(&layer),
                            principal.clone(),
                            info,
                            receipts,
                        );
                        request.extensions_mut().insert(offer.clone());
                        refusal = Some(offer);
                    }
                    (Ok(principal), decision)
                }
                Err(error) => (Err(error), None),
            };
            (request, outcome, decision, refusal)
        });
        ResponseFuture::verifying(verify, inner, self.layer.responder.clone())
    }
}

/// Marks the credential headers sensitive, so that HTTP/2 HPACK never indexes them and
/// loggers that honour the flag (tower-http's trace layer) redact them.
fn mark_sensitive<B>(request: &mut Request<B>, credentials: &super::Credentials) {
    let headers = request.headers_mut();
    if let http::header::Entry::Occupied(mut entry) = headers.entry(http::header::AUTHORIZATION) {
        entry.iter_mut().for_each(|v| v.set_sensitive(true));
    }
    if let Some(name) = credentials.custom_header()
        && let http::header::Entry::Occupied(mut entry) = headers.entry(name)
    {
        entry.iter_mut().for_each(|v| v.set_sensitive(true));
    }
}
