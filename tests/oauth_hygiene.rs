//! No OAuth secret reaches the logs: client secrets, access and refresh tokens, codes and
//! PKCE verifiers, through every grant, a reuse, a replay, revocation and introspection, with
//! every `tracing` event captured at TRACE level.

mod support;

use std::io;
use std::sync::{Arc, Mutex};

use apitoken::middleware::AuthLayer;
use apitoken::oauth::{
    AuthorizationServer, BoxFuture, ClientRegistration, Consent, ConsentDecision, ConsentRequest,
    MemoryGrantStore, access_token_format, s256_challenge,
};
use apitoken::{MemoryStore, NewToken, Owner, Principal, Verifier};
use axum::Router;
use axum::routing::get;
use http::Method;
use http::request::Parts;
use tracing_subscriber::fmt::MakeWriter;

use support::{Client, Reply, Server};

const REDIRECT: &str = "https://app.example/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[derive(Debug)]
struct Alice;

impl Consent for Alice {
    fn decide<'a>(
        &'a self,
        _: &'a Parts,
        ask: &'a ConsentRequest,
    ) -> BoxFuture<'a, ConsentDecision> {
        Box::pin(async move {
            ConsentDecision::Approve {
                user: Owner::new("alice").expect("owner"),
                scopes: ask.scopes.clone(),
            }
        })
    }
}

fn form(fields: &[(&str, &str)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (key, value) in fields {
        out.append_pair(key, value);
    }
    out.finish()
}

fn field(reply: &Reply, key: &str) -> String {
    reply.json()[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {reply:#?}"))
        .to_owned()
}

/// Every grant and endpoint; returns every secret text that was in play.
async fn run_flows() -> Vec<String> {
    let verifier = Verifier::builder(MemoryStore::new())
        .also_accept(access_token_format())
        .build();
    let oauth = AuthorizationServer::builder(verifier.clone(), MemoryGrantStore::new())
        .consent(Alice)
        .build()
        .expect("server");
    let app = Router::new()
        .route(
            "/api",
            get(|p: Principal| async move { p.owner().to_string() }),
        )
        .layer(AuthLayer::new(verifier.clone()))
        .nest("/oauth", oauth.router());
    let server = Server::start(app).await;
    let http = Client::new(&server);

    let key = verifier
        .issuer()
        .issue(
            NewToken::new("app", Owner::new("acct-1").expect("owner"))
                .scopes(["db:read", "oauth:introspect"])
                .expect("scopes")
                .metadata(
                    ClientRegistration::new()
                        .redirect_uri(REDIRECT)
                        .to_metadata(),
                ),
        )
        .await
        .expect("client key");
    let id = key.record.id.as_str().to_owned();
    let secret = key.token.expose_secret().to_owned();
    let auth = [
        ("client_id", id.as_str()),
        ("client_secret", secret.as_str()),
    ];
    // Picks the endpoint from the fields: a grant, a revocation (with a hint) or an
    // introspection.
    let post = |fields: Vec<(&str, &str)>| {
        let http = http.clone();
        let body = form(&fields);
        let path = if fields.iter().any(|(k, _)| *k == "grant_type") {
            "/oauth/token"
        } else if fields.iter().any(|(k, _)| *k == "token_type_hint") {
            "/oauth/revoke"
        } else {
            "/oauth/introspect"
        };
        async move { http.post_form(path, None, &body).await }
    };
    let mut secrets = vec![secret.clone(), VERIFIER.to_owned()];

    let cc = post([&auth[..], &[("grant_type", "client_credentials")]].concat()).await;
    let access = field(&cc, "access_token");
    secrets.push(access.clone());
    assert_eq!(
        http.bearer(Method::GET, "/api", &access, None).await.status,
        200
    );
    // A wrong secret and a mangled token are refused (and logged as refusals).
    let wrong = format!("{}x", &secret[..secret.len() - 1]);
    post(vec![
        ("grant_type", "client_credentials"),
        ("client_id", &id),
        ("client_secret", &wrong),
    ])
    .await;
    secrets.push(wrong.clone());
    assert_eq!(
        http.bearer(Method::GET, "/api", &format!("{access}x"), None)
            .await
            .status,
        401
    );

    let challenge = s256_challenge(VERIFIER);
    let query = form(&[
        ("response_type", "code"),
        ("client_id", &id),
        ("redirect_uri", REDIRECT),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    let redirect = http
        .send(
            http.request(Method::GET, &format!("/oauth/authorize?{query}")),
            None,
        )
        .await;
    let location = redirect.header("location").to_owned();
    let code = location.split("code=").nth(1).expect("code").to_owned();
    secrets.push(code.clone());
    let grant = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let tokens = post([&auth[..], &grant[..]].concat()).await;
    let (user_access, refresh) = (
        field(&tokens, "access_token"),
        field(&tokens, "refresh_token"),
    );
    secrets.extend([user_access.clone(), refresh.clone()]);
    // Replay of the code, introspection, rotation, reuse, revocation.
    post([&auth[..], &grant[..]].concat()).await;
    let code2 = {
        let redirect = http
            .send(
                http.request(Method::GET, &format!("/oauth/authorize?{query}")),
                None,
            )
            .await;
        redirect
            .header("location")
            .split("code=")
            .nth(1)
            .expect("code")
            .to_owned()
    };
    secrets.push(code2.clone());
    let grant2 = [
        ("grant_type", "authorization_code"),
        ("code", code2.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let tokens2 = post([&auth[..], &grant2[..]].concat()).await;
    let refresh2 = field(&tokens2, "refresh_token");
    secrets.push(field(&tokens2, "access_token"));
    secrets.push(refresh2.clone());
    post([&auth[..], &[("token", refresh2.as_str())]].concat()).await;
    let rotated = post(
        [
            &auth[..],
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh2.as_str()),
            ],
        ]
        .concat(),
    )
    .await;
    secrets.push(field(&rotated, "access_token"));
    secrets.push(field(&rotated, "refresh_token"));
    post(
        [
            &auth[..],
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh2.as_str()),
            ],
        ]
        .concat(),
    )
    .await;
    post(
        [
            &auth[..],
            &[
                ("token", access.as_str()),
                ("token_type_hint", "access_token"),
            ],
        ]
        .concat(),
    )
    .await;
    secrets
}

#[test]
fn no_oauth_secret_reaches_the_logs() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish();
    // One thread: server, client and verifier all log through this subscriber.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let secrets = {
        let _guard = tracing::subscriber::set_default(subscriber);
        runtime.block_on(run_flows())
    };
    drop(runtime);
    let logs = String::from_utf8_lossy(&capture.0.lock().expect("not poisoned")).into_owned();
    // The capture saw the interesting events, so its silence about secrets means something.
    for expected in [
        "refresh token reuse",
        "authorization code replayed",
        "token refused",
    ] {
        assert!(logs.contains(expected), "no {expected:?} event:\n{logs}");
    }
    for secret in &secrets {
        // Whole texts, and the secret half of each (everything after the last `_`).
        let tail = secret.rsplit('_').next().unwrap_or(secret);
        for needle in [secret.as_str(), tail] {
            assert!(
                needle.len() < 20 || !logs.contains(needle),
                "the logs contain a secret ({} chars):\n{logs}",
                needle.len()
            );
        }
    }
}
