//! axum extractors for [`Principal`].

use std::convert::Infallible;

use ::axum::body::Body;
use ::axum::extract::{FromRequestParts, OptionalFromRequestParts};
use ::axum::response::{IntoResponse, Response};
use http::request::Parts;

use super::response::{JsonResponder, Responder};
use crate::error::AuthError;
use crate::verifier::Principal;

/// Extracts the [`Principal`] that [`AuthLayer`](super::AuthLayer) authenticated.
///
/// Take `Principal` in a handler under the layer; take `Option<Principal>` where the layer
/// [allows anonymous requests](super::AuthLayer::allow_anonymous). A handler that takes
/// `Principal` on a route *without* the layer answers 401 (the layer's own response): it fails
/// closed rather than running unauthenticated.
///
/// ```
/// use apitoken::Principal;
/// use axum::{Router, routing::get};
///
/// async fn whoami(principal: Principal) -> String {
///     format!("{} ({})", principal.name(), principal.owner())
/// }
///
/// async fn maybe(principal: Option<Principal>) -> &'static str {
///     if principal.is_some() { "signed in" } else { "anonymous" }
/// }
///
/// let app: Router = Router::new()
///     .route("/whoami", get(whoami))
///     .route("/maybe", get(maybe));
/// ```
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Unauthenticated;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(Unauthenticated)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}

/// The rejection of the [`Principal`] extractor: the same 401 as [`JsonResponder`] gives for
/// missing credentials.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Unauthenticated;

impl IntoResponse for Unauthenticated {
    fn into_response(self) -> Response {
        let response: http::Response<Body> =
            JsonResponder::new().respond(&AuthError::missing_credentials());
        response
    }
}
