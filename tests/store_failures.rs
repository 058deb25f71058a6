//! A database that is down yields "store unavailable" (the middleware's 503), never a
//! verdict on the token, and the store recovers by itself when the database returns.
//!
//! The outage is real: the store talks to PostgreSQL through a TCP relay on loopback that the
//! test stops (closing every connection and refusing new ones) and starts again on the same
//! port. Needs `APITOKEN_TEST_POSTGRES_URL`.

#[path = "support/stores.rs"]
mod stores;

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use apitoken::{
    AuthErrorKind, NewToken, Owner, PostgresStore, ScopeRequirement, StoreErrorKind, TokenStore,
    Verifier,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Relays loopback TCP connections to PostgreSQL until stopped.
struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    tasks: Option<JoinSet<()>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut relay = Self {
            addr,
            target,
            tasks: None,
        };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
            // `connections` is dropped with this task: aborting it closes every relayed socket.
        });
        self.tasks = Some(tasks);
    }

    /// Closes every relayed connection and refuses new ones.
    async fn stop(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Listens again on the same port.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the relay port");
        self.serve(listener);
    }
}

fn target_of(url: &str) -> (PgConnectOptions, SocketAddr) {
    let options = PgConnectOptions::from_str(url).expect("a PostgreSQL URL");
    let host = match options.get_host() {
        "localhost" => "127.0.0.1".to_owned(),
        host => host.to_owned(),
    };
    let addr = format!("{host}:{}", options.get_port())
        .parse()
        .expect("the test database on an IP address");
    (options, addr)
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_not_a_verdict() {
    // Nothing listens on port 1.
    let store = PostgresStore::connect("postgres://postgres@127.0.0.1:1/none").unwrap();
    let err = store
        .get(&apitoken::TokenId::from_u64(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    let verifier = Verifier::builder(store)
        .format(apitoken::TokenFormat::dct())
        .build();
    let err = verifier
        .authenticate("1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable);
}

#[tokio::test]
async fn the_store_fails_closed_while_the_database_is_down_and_recovers_after() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (options, target) = target_of(&url);
    let mut relay = Relay::start(target).await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(options.host("127.0.0.1").port(relay.addr.port()));
    let store = PostgresStore::builder(pool)
        .schema(&stores::unique_name("outage"))
        .unwrap()
        .query_timeout(Duration::from_secs(1))
        .build();
    store.migrate().await.unwrap();
    let verifier = Verifier::builder(store).build();
    let issued = verifier
        .issuer()
        .issue(
            NewToken::new("svc", Owner::new("team-1").unwrap())
                .scopes(["vps:read"])
                .unwrap(),
        )
        .await
        .unwrap();
    let token = issued.token.expose_secret();
    let need = ScopeRequirement::all(["vps:read"]).unwrap();
    verifier.verify(token, &need).await.expect("up: verified");

    relay.stop().await;
    let started = Instant::now();
    let err = verifier.verify(token, &need).await.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    relay.restart().await;
    // The pool finds its connections dead and opens new ones; no restart of the store.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match verifier.verify(token, &need).await {
            Ok(_) => break,
            Err(err) => {
                assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable, "{err:?}");
                assert!(
                    Instant::now() < deadline,
                    "no recovery within 10 s: {err:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
