//! A small API in the shape of the DanubeData seed, on the in-memory store.
//!
//! ```sh
//! cargo run --example quickstart                    # listens on 127.0.0.1:3000
//! cargo run --example quickstart -- --addr 127.0.0.1:8080
//! ```
//!
//! It prints a bootstrap token (an admin token, shown once, as Delphix DCT's bootstrap flow
//! has) and serves:
//!
//! | route | scope |
//! |---|---|
//! | `GET /api/v1/vps`, `GET /api/v1/vps/{id}` | `vps:read` |
//! | `POST /api/v1/vps`, `DELETE /api/v1/vps/{id}` | `vps:write` |
//! | `GET /api/v1/tokens` | `tokens:read` |
//! | `POST /api/v1/tokens`, `POST /api/v1/tokens/{id}/rotate`, `DELETE /api/v1/tokens/{id}`, `DELETE /api/v1/tokens` | `tokens:write` |
//!
//! The token routes are the crate's own [`TokenApi`](apitoken::management::TokenApi).
//!
//! Both `Authorization: Bearer <token>` and `Authorization: apk <token>` work. Each VPS belongs
//! to the owner of the token that created it; another owner's token gets 403 for it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apitoken::management::TokenApi;
use apitoken::middleware::{AuthLayer, Credentials, RequireScopesLayer};
use apitoken::{IssueError, NewToken, Owner, Principal, TokenFormat, TokenStore, Verifier};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[allow(dead_code)] // `main` is unused when the tests include this file as a module.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logging();
    let addr = parse_addr(std::env::args().skip(1))?;
    let verifier = Verifier::builder(apitoken::MemoryStore::new())
        .format(token_format())
        // Short, so the token list shows a use a second later; the default is 60 s.
        .last_used_flush_interval(Duration::from_secs(1))
        .build();

    let bootstrap = issue_bootstrap_token(&verifier).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("bootstrap token: {}", bootstrap.expose_secret());
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener, verifier, shutdown_signal())
        .await
        .map_err(|e| e as _)
}

/// Serves [`app`] until `shutdown` resolves, with last use written in the background, and
/// writes what is still buffered before returning.
pub async fn serve<S: TokenStore + 'static>(
    listener: tokio::net::TcpListener,
    verifier: Verifier<S>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Writes last-use times in the background, off the request path.
    let flusher = verifier.spawn_last_used_flusher();
    axum::serve(listener, app(verifier))
        .with_graceful_shutdown(shutdown)
        .await?;
    // Stops the flusher and writes what is still buffered.
    flusher.shutdown().await?;
    Ok(())
}

/// Logs to stderr. Refusals are logged at `debug` with their reason (never the token), so
/// this shows why each request was refused; `RUST_LOG=apitoken=info` quietens it.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,apitoken=debug"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

/// Resolves on Ctrl-C or on SIGTERM, which `docker stop`, Kubernetes and systemd send: either
/// way the server drains and the last-use flush runs. Waiting on Ctrl-C alone, a SIGTERM
/// would kill the process and lose the times buffered since the last flush.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// Tokens look like `demo_<12-char id>.<43-char secret><6-char checksum>`.
pub fn token_format() -> TokenFormat {
    TokenFormat::builder()
        .prefix("demo_")
        .build()
        .expect("a valid format")
}

/// The admin token for `team-1` that can create all other tokens.
pub async fn issue_bootstrap_token<S: TokenStore>(
    verifier: &Verifier<S>,
) -> Result<apitoken::Secret, IssueError> {
    let new = NewToken::new("bootstrap", Owner::new("team-1").expect("valid owner"))
        .scopes(["tokens:read", "tokens:write", "vps:read", "vps:write"])
        .expect("valid scopes");
    Ok(verifier.issuer().issue(new).await?.token)
}

/// The application: every `/api/v1` route behind the auth layer, each with its scopes.
pub fn app<S: TokenStore + 'static>(verifier: Verifier<S>) -> Router {
    let state = AppState {
        verifier: verifier.clone(),
        servers: Arc::new(Mutex::new(Servers::default())),
    };
    let credentials = Credentials::bearer()
        .scheme("apk")
        .expect("`apk` is a valid scheme");

    let vps = Router::new()
        .route("/vps", get(list_vps).post(create_vps))
        .route("/vps/{id}", get(show_vps).delete(delete_vps))
        .route_layer(RequireScopesLayer::by_method("vps").expect("valid scope"));
    // The crate's token-management API: create, list, rotate, revoke, revoke all.
    let tokens = TokenApi::new(verifier.clone()).router();

    Router::new()
        .nest("/api/v1", vps.with_state(state))
        .nest("/api/v1/tokens", tokens)
        .layer(AuthLayer::new(verifier).credentials(credentials))
}

struct AppState<S> {
    verifier: Verifier<S>,
    servers: Arc<Mutex<Servers>>,
}

impl<S> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self {
            verifier: self.verifier.clone(),
            servers: Arc::clone(&self.servers),
        }
    }
}

#[derive(Default)]
struct Servers {
    next_id: u64,
    by_id: BTreeMap<u64, Vps>,
}

#[derive(Clone, Serialize)]
struct Vps {
    id: u64,
    name: String,
    owner: String,
}

#[derive(Deserialize)]
struct CreateVps {
    name: String,
}

fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "message": text }))).into_response()
}

/// The seed's answer for "trying to access resources from another team".
fn forbidden() -> Response {
    message(StatusCode::FORBIDDEN, "This action is unauthorized.")
}

async fn list_vps<S: TokenStore>(
    State(state): State<AppState<S>>,
    principal: Principal,
) -> Json<Vec<Vps>> {
    let servers = state.servers.lock().expect("not poisoned");
    let mine = servers
        .by_id
        .values()
        .filter(|vps| vps.owner == principal.owner().as_str())
        .cloned()
        .collect();
    Json(mine)
}

async fn create_vps<S: TokenStore>(
    State(state): State<AppState<S>>,
    principal: Principal,
    Json(body): Json<CreateVps>,
) -> Response {
    let mut servers = state.servers.lock().expect("not poisoned");
    servers.next_id += 1;
    let vps = Vps {
        id: servers.next_id,
        name: body.name,
        owner: principal.owner().to_string(),
    };
    servers.by_id.insert(vps.id, vps.clone());
    (StatusCode::CREATED, Json(vps)).into_response()
}

async fn show_vps<S: TokenStore>(
    State(state): State<AppState<S>>,
    principal: Principal,
    Path(id): Path<u64>,
) -> Response {
    let servers = state.servers.lock().expect("not poisoned");
    match servers.by_id.get(&id) {
        None => message(StatusCode::NOT_FOUND, "Not found."),
        Some(vps) if vps.owner != principal.owner().as_str() => forbidden(),
        Some(vps) => Json(vps.clone()).into_response(),
    }
}

async fn delete_vps<S: TokenStore>(
    State(state): State<AppState<S>>,
    principal: Principal,
    Path(id): Path<u64>,
) -> Response {
    let mut servers = state.servers.lock().expect("not poisoned");
    match servers.by_id.get(&id) {
        None => message(StatusCode::NOT_FOUND, "Not found."),
        Some(vps) if vps.owner != principal.owner().as_str() => forbidden(),
        Some(_) => {
            servers.by_id.remove(&id);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

fn parse_addr(mut args: impl Iterator<Item = String>) -> Result<SocketAddr, String> {
    let mut addr: SocketAddr = "127.0.0.1:3000".parse().expect("valid default");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                let value = args.next().ok_or("--addr needs HOST:PORT")?;
                addr = value
                    .parse()
                    .map_err(|_| format!("--addr: {value:?} is not HOST:PORT"))?;
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: quickstart [--addr HOST:PORT]"
                ));
            }
        }
    }
    Ok(addr)
}
