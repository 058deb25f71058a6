//! An OAuth 2.0 server in the shape of the DB Audit seed: API keys, client credentials,
//! authorization code with PKCE, and refresh tokens, all accepted on one protected route.
//!
//! ```sh
//! cargo run --example oauth                    # listens on 127.0.0.1:3001
//! cargo run --example oauth -- --addr 127.0.0.1:8080
//! ```
//!
//! It prints a client (an API key registered as an OAuth client, shown once) and serves:
//!
//! | route | does |
//! |---|---|
//! | `GET /api/v1/databases` | needs `read:databases`; an API key or an access token |
//! | `POST /oauth/token` | client credentials, authorization code, refresh token |
//! | `POST /oauth/revoke`, `POST /oauth/introspect` | RFC 7009, RFC 7662 |
//! | `GET /oauth/authorize` | signs in the user named in an `X-Demo-User` header (a demo stand-in for a login page) |
//!
//! `docs/oauth.md` walks through every flow with `curl`. Stop it with Ctrl-C or SIGTERM.

#[path = "quickstart.rs"]
#[allow(dead_code)]
mod quickstart;

use std::net::SocketAddr;

use apitoken::middleware::{AuthLayer, RequireScopesLayer};
use apitoken::oauth::{
    AuthorizationServer, BoxFuture, ClientRegistration, Consent, ConsentDecision, ConsentRequest,
    MemoryGrantStore, access_token_format,
};
use apitoken::{
    MemoryStore, NewToken, Owner, Principal, ScopeRequirement, Separator, TokenFormat, Verifier,
};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use http::request::Parts;
use serde_json::json;

/// Where the demo client says it receives codes.
const REDIRECT_URI: &str = "http://127.0.0.1:8080/callback";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    quickstart::init_logging();
    let addr = parse_addr(std::env::args().skip(1))?;
    // API keys look like DB Audit's `dbaudit_live_…`; access tokens like `at_…`.
    let verifier = Verifier::builder(MemoryStore::new())
        .format(
            TokenFormat::builder()
                .prefix("dbaudit_live_")
                .separator(Separator::Underscore)
                .build()?,
        )
        .also_accept(access_token_format())
        .build();
    let oauth = AuthorizationServer::builder(verifier.clone(), MemoryGrantStore::new())
        .consent(DemoLogin)
        .build()?;

    // The client: an API key with the scopes any token issued to it may carry at most, and its
    // registration (redirect URI) in its metadata.
    let client = verifier
        .issuer()
        .issue(
            NewToken::new("reporting app", Owner::new("acct-1")?)
                .scopes(["read:databases", "write:databases", "oauth:introspect"])?
                .metadata(
                    ClientRegistration::new()
                        .redirect_uri(REDIRECT_URI)
                        .to_metadata(),
                ),
        )
        .await?;

    let api = Router::new()
        .route("/api/v1/databases", get(databases))
        .route_layer(RequireScopesLayer::new(ScopeRequirement::all([
            "read:databases",
        ])?))
        .layer(AuthLayer::new(verifier));
    let app = api.nest("/oauth", oauth.router());

    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("client_id:     {}", client.record.id);
    println!("client_secret: {}", client.token.expose_secret());
    println!("redirect_uri:  {REDIRECT_URI}");
    println!(
        "listening on http://{} (Ctrl-C or SIGTERM to stop)",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(quickstart::shutdown_signal())
        .await?;
    Ok(())
}

/// The same answer whichever method the client used: a `Principal`.
async fn databases(principal: Principal) -> impl IntoResponse {
    Json(json!({
        "owner": principal.owner().as_str(),
        "scopes": principal.scopes(),
        "databases": ["orders", "billing"],
    }))
}

/// Stands in for a login page and a consent screen: the user named in `X-Demo-User` approves
/// every scope asked. A real application reads its login session here and asks the user.
#[derive(Debug)]
struct DemoLogin;

impl Consent for DemoLogin {
    fn decide<'a>(
        &'a self,
        request: &'a Parts,
        ask: &'a ConsentRequest,
    ) -> BoxFuture<'a, ConsentDecision> {
        Box::pin(async move {
            let user = request
                .headers
                .get("x-demo-user")
                .and_then(|v| v.to_str().ok())
                .and_then(|name| Owner::new(name).ok());
            match user {
                Some(user) => ConsentDecision::Approve {
                    user,
                    scopes: ask.scopes.clone(),
                },
                None => ConsentDecision::Respond(
                    (
                        http::StatusCode::UNAUTHORIZED,
                        format!("sign in to let {} use {}\n", ask.client.name, ask.scopes),
                    )
                        .into_response(),
                ),
            }
        })
    }
}

fn parse_addr(mut args: impl Iterator<Item = String>) -> Result<SocketAddr, String> {
    let mut addr: SocketAddr = ([127, 0, 0, 1], 3001).into();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                let value = args.next().ok_or("--addr needs a value")?;
                addr = value
                    .parse()
                    .map_err(|_| format!("not an address: {value}"))?;
            }
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: oauth [--addr IP:PORT]"
                ));
            }
        }
    }
    Ok(addr)
}
