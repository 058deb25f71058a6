//! The authorization endpoint (RFC 6749 §4.1.1, RFC 7636 §4.3): `GET /authorize`.
//!
//! Until the client and its redirect URI are known good, errors are shown to the user agent
//! (400 JSON) and never redirected, so the endpoint cannot send anyone to an unregistered
//! address (RFC 6749 §4.1.2.1). After that, errors go back to the client's redirect URI with
//! `error` and `state`.

use std::sync::Arc;

use ::axum::extract::{Request, State};
use ::axum::http::{HeaderValue, StatusCode, header};
use ::axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Shared;
use super::access::GrantType;
use super::client::{ClientRegistration, is_oauth_token};
use super::code::{self, CodeGrant, is_s256_challenge};
use super::consent::{ConsentDecision, ConsentRequest};
use super::endpoint::Form;
use super::grants::GrantStore;
use super::response::no_store;
use crate::id::TokenId;
use crate::store::TokenStore;

/// An error shown to the user agent, not redirected.
fn page(status: StatusCode, description: &'static str) -> Response {
    no_store(
        status,
        json!({ "error": "invalid_request", "error_description": description }),
    )
}

/// A redirect to the client's registered `redirect_uri` with `params` (and `state`) added.
fn redirect(redirect_uri: &str, params: &[(&str, &str)], state: Option<&str>) -> Response {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (key, value) in params {
        query.append_pair(key, value);
    }
    if let Some(state) = state {
        query.append_pair("state", state);
    }
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!("{redirect_uri}{separator}{}", query.finish());
    match HeaderValue::from_str(&location) {
        Ok(location) => {
            let mut response = StatusCode::FOUND.into_response();
            let headers = response.headers_mut();
            headers.insert(header::LOCATION, location);
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(_) => page(StatusCode::BAD_REQUEST, "the redirect URI is not usable"),
    }
}

pub(crate) async fn authorize<S: TokenStore + 'static, G: GrantStore + 'static>(
    State(shared): State<Arc<Shared<S, G>>>,
    request: Request,
) -> Response {
    let (parts, _body) = request.into_parts();
    let Some(form) = Form::parse(parts.uri.query().unwrap_or_default().as_bytes()) else {
        return page(StatusCode::BAD_REQUEST, "a parameter is repeated");
    };
    let Some(client_id) = form
        .get("client_id")
        .and_then(|id| id.parse::<TokenId>().ok())
    else {
        return page(StatusCode::BAD_REQUEST, "unknown client");
    };
    let client = match shared.verifier.store().get(&client_id).await {
        Ok(Some(stored))
            if shared.verifier.is_active(&stored.record)
                && !is_oauth_token(&stored.record.metadata) =>
        {
            stored.record
        }
        Ok(_) => return page(StatusCode::BAD_REQUEST, "unknown client"),
        Err(_) => {
            return no_store(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "temporarily_unavailable" }),
            );
        }
    };
    let registration = ClientRegistration::from_metadata(&client.metadata);
    // Exact string comparison with a registered URI (RFC 9700 §4.1.3); a fragment is never
    // allowed (RFC 6749 §3.1.2).
    let Some(redirect_uri) = form
        .get("redirect_uri")
        .filter(|uri| !uri.contains('#') && registration.redirect_uris.iter().any(|r| r == uri))
    else {
        return page(
            StatusCode::BAD_REQUEST,
            "the redirect URI is missing or not registered",
        );
    };
    let state = form.get("state");
    let fail = |error: &str| redirect(redirect_uri, &[("error", error)], state);

    match form.get("response_type") {
        Some("code") => {}
        Some(_) => return fail("unsupported_response_type"),
        None => return fail("invalid_request"),
    }
    if !registration.allows(GrantType::AuthorizationCode) {
        return fail("unauthorized_client");
    }
    // PKCE is required, and only S256: `plain` (or no method, which means plain) is refused
    // (RFC 9700 §2.1.1).
    let challenge = match (
        form.get("code_challenge"),
        form.get("code_challenge_method"),
    ) {
        (Some(challenge), Some("S256")) if is_s256_challenge(challenge) => challenge,
        _ => return fail("invalid_request"),
    };
    let policy = shared.verifier.scope_policy();
    let Ok(requested) = super::endpoint::requested_scopes(form.get("scope"), &client.scopes, |s| {
        policy.can_delegate(&client.scopes, s)
    }) else {
        return fail("invalid_scope");
    };
    let Some(consent) = &shared.consent else {
        return fail("unsupported_response_type");
    };
    let ask = ConsentRequest {
        client_id,
        client: Arc::clone(&client),
        scopes: requested,
        redirect_uri: redirect_uri.to_owned(),
    };
    let (user, scopes) = match consent.decide(&parts, &ask).await {
        ConsentDecision::Approve { user, scopes } => (user, scopes),
        ConsentDecision::Deny => return fail("access_denied"),
        ConsentDecision::Respond(response) => return response,
    };
    // The application may approve less than asked, never more.
    if !scopes
        .iter()
        .all(|s| policy.can_delegate(&ask.scopes, s.as_str()))
    {
        return fail("invalid_scope");
    }
    let grant = CodeGrant {
        client_id,
        redirect_uri: redirect_uri.to_owned(),
        code_challenge: challenge.to_owned(),
        owner: user,
        scopes,
    };
    match code::issue(&shared, grant).await {
        Ok(code) => redirect(redirect_uri, &[("code", code.expose_secret())], state),
        Err(_) => fail("temporarily_unavailable"),
    }
}
