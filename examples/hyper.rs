//! The auth layer on a plain hyper 1 server, without axum.
//!
//! ```sh
//! cargo run --example hyper                  # prints a token, listens on 127.0.0.1:3001
//! curl -H "Authorization: Bearer <token>" http://127.0.0.1:3001/
//! ```

#[path = "quickstart.rs"]
#[allow(dead_code)]
mod quickstart;

use std::convert::Infallible;

use apitoken::middleware::AuthLayer;
use apitoken::{MemoryStore, NewToken, Owner, Principal, Verifier};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;

async fn hello(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // The layer guarantees a Principal on every request that reaches this function.
    let principal = request
        .extensions()
        .get::<Principal>()
        .expect("AuthLayer inserts the principal");
    let text = format!("hello, {} ({})\n", principal.name(), principal.owner());
    Ok(Response::new(Full::new(Bytes::from(text))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    quickstart::init_logging();
    let verifier = Verifier::builder(MemoryStore::new()).build();
    // Writes last-use times once a minute; `shutdown` below writes what remains.
    let flusher = verifier.spawn_last_used_flusher();
    let issued = verifier
        .issuer()
        .issue(NewToken::new("hyper example", Owner::new("team-1")?))
        .await?;
    println!("token: {}", issued.token.expose_secret());

    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(verifier))
        .service_fn(hello);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    // Ctrl-C or SIGTERM stops accepting; the handler is the quickstart's.
    let shutdown = quickstart::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {err}");
            }
        });
    }
    // Connections still open are not drained here (hyper-util's `GracefulShutdown` does
    // that); the last-use times are written either way.
    flusher.shutdown().await?;
    Ok(())
}
