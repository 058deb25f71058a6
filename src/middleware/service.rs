//! [`Auth`]: the service that authenticates each request before the inner service sees it.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::AuthLayer;
use super::response::Responder;
use crate::error::{AuthError, AuthErrorKind};
use crate::store::TokenStore;

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

        // An address that failed too often is turned away before anything else is done; an
        // attempt is counted from here, so a burst is judged before any of it reaches the
        // store.
        let throttle = self.layer.throttle.as_deref();
        let mut attempt = None;
        if let Some(throttle) = throttle {
            match client_ip {
                Some(ip) => match throttle.admit(ip) {
                    Ok(admitted) => attempt = Some(admitted),
                    Err(wait) => {
                        tracing::debug!(client_ip = %ip, "failed-authentication throttle");
                        let error = AuthError::rate_limited(wait, None, None);
                        self.layer.verifier.audit_refusal(&error, client_ip);
                        return ResponseFuture::refused(self.layer.responder.respond(&error));
                    }
                },
                None => throttle.note_unknown_client(),
            }
        }

        // Header problems are answered here, without a store and without allocating a future.
        let span = match credentials.locate(request.headers()) {
            Err(error) => {
                self.layer.verifier.audit_refusal(&error, client_ip);
                settle(attempt, &error);
                return ResponseFuture::refused(self.layer.responder.respond(&error));
            }
            Ok(None) if self.layer.allow_anonymous => {
                if let Some(attempt) = attempt {
                    attempt.neither();
                }
                return ResponseFuture::calling(self.inner.call(request));
            }
            Ok(None) => {
                let error = AuthError::missing_credentials();
                self.layer.verifier.audit_refusal(&error, client_ip);
                settle(attempt, &error);
                return ResponseFuture::refused(self.layer.responder.respond(&error));
            }
            Ok(Some(span)) => span,
        };

        // Use the service that `poll_ready` readied; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = Arc::clone(&self.layer);
        let verify = Box::pin(async move {
            let info = crate::verifier::RequestInfo::new().client_ip(client_ip);
            let mut verified = layer
                .verifier
                .verify_unaudited(span.token(), &layer.required, &info)
                .await;
            let mut decision = None;
            let mut attempt = attempt;
            if let Some(principal) = verified.principal() {
                if let Some(attempt) = attempt.take() {
                    attempt.succeeded();
                }
                // Last, as in Unkey's order: a request refused for any other reason spends
                // no budget. Audited after it, so a 429 is audited as a refusal.
                if let Some(step) = &layer.rate_limit {
                    match step.check(principal).await {
                        Ok(admitted) => decision = admitted,
                        Err(error) => verified.refuse(error),
                    }
                }
            }
            let outcome = layer.verifier.audit(verified);
            if let Err(error) = &outcome {
                // `None` when the token was verified: a rate-limit refusal is no guess.
                settle(attempt, error);
            }
            (request, outcome, decision)
        });
        ResponseFuture::verifying(verify, inner, self.layer.responder.clone())
    }
}

/// Settles a failed attempt: invalid tokens and malformed credentials count against the
/// address. Missing credentials, missing scopes and outages are not an attacker guessing, and
/// count as neither failure nor success. (An attempt dropped unsettled, with the request
/// future, counts as a failure.)
fn settle(attempt: Option<crate::rate_limit::Attempt>, error: &AuthError) {
    let Some(attempt) = attempt else {
        return;
    };
    if matches!(
        error.kind(),
        AuthErrorKind::InvalidToken | AuthErrorKind::MalformedRequest
    ) {
        attempt.failed();
    } else {
        attempt.neither();
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
