//! The quickstart API on PostgreSQL, as a production replica runs: migrations at start-up, a
//! verification cache kept in step with every other replica by `LISTEN/NOTIFY`, and
//! last-use times written in batches, flushed on shutdown.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example postgres
//! DATABASE_URL=… cargo run --example postgres -- --addr 127.0.0.1:3001   # a second replica
//! ```
//!
//! Every replica prints a bootstrap token; tokens issued through one work on all, and a
//! revoke through one is refused by all within milliseconds.

#[path = "quickstart.rs"]
#[allow(dead_code)]
mod quickstart;

use std::net::SocketAddr;

use apitoken::{CachedStore, PostgresStore, Verifier};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    quickstart::init_logging();
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL, for example postgres://postgres@127.0.0.1:5432/test")?;
    let addr = parse_addr(std::env::args().skip(1))?;

    let store = PostgresStore::connect(&url).await?;
    store.migrate().await?;
    let store = CachedStore::new(store);
    let listener_task = store.spawn_change_listener();
    let verifier = Verifier::builder(store)
        .format(quickstart::token_format())
        .build();

    // Last use is noted in memory and written once a minute, in one statement.
    let flusher = verifier.spawn_last_used_flusher();

    let bootstrap = quickstart::issue_bootstrap_token(&verifier).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("bootstrap token: {}", bootstrap.expose_secret());
    println!("listening on http://{}", listener.local_addr()?);

    axum::serve(listener, quickstart::app(verifier.clone()))
        .with_graceful_shutdown(quickstart::shutdown_signal())
        .await?;

    // Write what is still buffered before exiting.
    flusher.shutdown().await?;
    listener_task.abort();
    Ok(())
}

fn parse_addr(mut args: impl Iterator<Item = String>) -> Result<SocketAddr, String> {
    match (args.next().as_deref(), args.next()) {
        (None, _) => Ok("127.0.0.1:3000".parse().expect("valid default")),
        (Some("--addr"), Some(value)) => value
            .parse()
            .map_err(|_| format!("--addr: {value:?} is not HOST:PORT")),
        _ => Err("usage: postgres [--addr HOST:PORT]".to_owned()),
    }
}
