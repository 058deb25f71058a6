//! The application's login and consent step of the authorization-code grant.

use std::fmt;
use std::sync::Arc;

use ::axum::response::Response;
use http::request::Parts;

use super::BoxFuture;
use crate::id::TokenId;
use crate::record::{Owner, TokenRecord};
use crate::scope::ScopeSet;

/// What the user is asked to approve at `GET /authorize`, once the request itself is valid
/// (known client, registered redirect URI, S256 challenge, scopes the client holds).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsentRequest {
    /// The client's id (its API key's id).
    pub client_id: TokenId,
    /// The client's API key record: its name (to show the user) and owner.
    pub client: Arc<TokenRecord>,
    /// The scopes requested, or the client's scopes when the request named none.
    pub scopes: ScopeSet,
    /// The redirect URI the code will be sent to.
    pub redirect_uri: String,
}

/// The application's answer to a [`ConsentRequest`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ConsentDecision {
    /// The signed-in `user` approves `scopes`, which must be within the requested scopes
    /// (fewer is fine). A code is issued and the user agent redirected to the client.
    Approve {
        /// Whom the tokens will act for.
        user: Owner,
        /// What they may do.
        scopes: ScopeSet,
    },
    /// The user declined: the client gets `error=access_denied`.
    Deny,
    /// Not decided yet: send this response instead (a login page, a consent form, a redirect
    /// to either). The application brings the user back to the same `/authorize` URL when
    /// done.
    Respond(Response),
}

/// Decides who the user is and what they approve, for the authorization-code grant.
///
/// The application reads its own session from the request (a cookie, say). Called only for
/// valid authorization requests; the endpoint checks the returned scopes again.
///
/// ```
/// use apitoken::oauth::{BoxFuture, Consent, ConsentDecision, ConsentRequest};
/// use apitoken::Owner;
/// use http::request::Parts;
///
/// /// Approves everything for the user named in an `x-demo-user` header (a demo only: a real
/// /// application reads its login session).
/// #[derive(Debug)]
/// struct HeaderUser;
///
/// impl Consent for HeaderUser {
///     fn decide<'a>(&'a self, request: &'a Parts, ask: &'a ConsentRequest) -> BoxFuture<'a, ConsentDecision> {
///         Box::pin(async move {
///             match request.headers.get("x-demo-user").and_then(|v| v.to_str().ok()) {
///                 Some(user) => match Owner::new(user) {
///                     Ok(user) => ConsentDecision::Approve { user, scopes: ask.scopes.clone() },
///                     Err(_) => ConsentDecision::Deny,
///                 },
///                 None => ConsentDecision::Deny,
///             }
///         })
///     }
/// }
/// ```
pub trait Consent: Send + Sync + fmt::Debug + 'static {
    /// Decides on `ask`, for the user agent's `request`.
    fn decide<'a>(
        &'a self,
        request: &'a Parts,
        ask: &'a ConsentRequest,
    ) -> BoxFuture<'a, ConsentDecision>;
}
