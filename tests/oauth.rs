//! The OAuth 2.0 endpoints over real HTTP: every grant, every RFC 6749 §5.2 error, refresh
//! rotation and reuse detection, PKCE, revocation (RFC 7009) and introspection (RFC 7662),
//! with access tokens accepted by the same `AuthLayer` as API keys.

#[cfg(all(feature = "postgres", feature = "sqlite"))]
#[path = "support/stores.rs"]
mod stores;
mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use apitoken::middleware::AuthLayer;
use apitoken::oauth::{
    AuthorizationCodeRecord, AuthorizationServer, BoxFuture, ClientRegistration, Consent,
    ConsentDecision, ConsentRequest, GrantFamily, GrantStore, GrantType, MemoryGrantStore,
    RefreshTokenRecord, access_token_format, s256_challenge,
};
use apitoken::{
    ManualClock, MemoryStore, NewToken, Owner, Principal, ScopeSet, StoreError, TokenId,
    TokenStore, Verifier,
};
use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use http::Method;
use http::request::Parts;
use serde_json::{Value, json};

use support::{Client, FlakyStore, Reply, Server};

const API: &str = "/api/databases";
const REDIRECT: &str = "https://app.example/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const BASIC_CHALLENGE: &str = r#"Basic realm="oauth""#;

/// Signs in the user named by `x-user`; approves the scopes in `x-approve` (or all asked);
/// `x-deny` declines; no user gets a login page.
#[derive(Debug)]
struct HeaderConsent;

impl Consent for HeaderConsent {
    fn decide<'a>(
        &'a self,
        request: &'a Parts,
        ask: &'a ConsentRequest,
    ) -> BoxFuture<'a, ConsentDecision> {
        Box::pin(async move {
            let header = |name: &str| {
                request
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            if header("x-deny").is_some() {
                return ConsentDecision::Deny;
            }
            let Some(user) = header("x-user") else {
                return ConsentDecision::Respond(axum::response::IntoResponse::into_response(
                    "please sign in",
                ));
            };
            let scopes = match header("x-approve") {
                Some(text) => ScopeSet::parse(&text).expect("test scopes"),
                None => ask.scopes.clone(),
            };
            ConsentDecision::Approve {
                user: Owner::new(&user).expect("test user"),
                scopes,
            }
        })
    }
}

/// A [`MemoryGrantStore`] that fails every call while its switch is on.
#[derive(Debug, Default)]
struct FlakyGrants {
    inner: MemoryGrantStore,
    down: Arc<AtomicBool>,
}

impl FlakyGrants {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::unavailable("injected outage"))
        } else {
            Ok(())
        }
    }
}

impl GrantStore for FlakyGrants {
    fn insert_family(
        &self,
        family: GrantFamily,
        first: RefreshTokenRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let down = self.check();
        let call = self.inner.insert_family(family, first);
        async move { down.and(call.await) }
    }

    fn family(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<GrantFamily>, StoreError>> + Send {
        let down = self.check();
        let call = self.inner.family(id);
        async move { down.and(call.await) }
    }

    fn refresh_token(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<RefreshTokenRecord>, StoreError>> + Send {
        let down = self.check();
        let call = self.inner.refresh_token(id);
        async move { down.and(call.await) }
    }

    fn rotate_refresh(
        &self,
        old: &TokenId,
        new: RefreshTokenRecord,
        access: (TokenId, DateTime<Utc>),
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let down = self.check();
        // Only touch the inner store when up: a failed call must change nothing.
        let call = self.inner.rotate_refresh(old, new, access, now);
        async move {
            down?;
            call.await
        }
    }

    fn revoke_family(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<GrantFamily>, StoreError>> + Send {
        let down = self.check();
        let call = self.inner.revoke_family(id, at);
        async move { down.and(call.await) }
    }

    fn insert_code(
        &self,
        code: AuthorizationCodeRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let down = self.check();
        let call = self.inner.insert_code(code);
        async move { down.and(call.await) }
    }

    fn code(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<AuthorizationCodeRecord>, StoreError>> + Send {
        let down = self.check();
        let call = self.inner.code(id);
        async move { down.and(call.await) }
    }

    fn redeem_code(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
        family: GrantFamily,
        first: Option<RefreshTokenRecord>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let down = self.check();
        // Only touch the inner store when up: a failed call must change nothing.
        let call = self.inner.redeem_code(id, at, family, first);
        async move {
            down?;
            call.await
        }
    }
}

/// A protected route answering with the principal's shape, and the OAuth endpoints, served
/// on a loopback port.
struct Fixture<S> {
    verifier: Verifier<S>,
    clock: Arc<ManualClock>,
    client: Client,
    _server: Server,
}

async fn whoami(principal: Principal) -> axum::Json<Value> {
    axum::Json(json!({
        "owner": principal.owner().as_str(),
        "scopes": principal.scopes().to_string(),
        "token_id": principal.token_id().as_str(),
    }))
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap()
}

async fn fixture_with<S: TokenStore + 'static, G: GrantStore + 'static>(
    store: S,
    grants: G,
) -> Fixture<S> {
    fixture_configured(store, grants, |b, _| b).await.0
}

type Builder<S, G> = apitoken::oauth::AuthorizationServerBuilder<S, G>;

/// A fixture whose server `configure` adjusts (given the fixture's clock); the server too.
async fn fixture_configured<S: TokenStore + 'static, G: GrantStore + 'static>(
    store: S,
    grants: G,
    configure: impl FnOnce(Builder<S, G>, Arc<ManualClock>) -> Builder<S, G>,
) -> (Fixture<S>, AuthorizationServer<S, G>) {
    let clock = Arc::new(ManualClock::new(start()));
    let verifier = Verifier::builder(store)
        .also_accept(access_token_format())
        .clock(clock.clone())
        .build();
    let oauth = configure(
        AuthorizationServer::builder(verifier.clone(), grants).consent(HeaderConsent),
        clock.clone(),
    )
    .build()
    .expect("the verifier accepts access tokens");
    let app = Router::new()
        .route(API, get(whoami))
        .layer(AuthLayer::new(verifier.clone()))
        .nest("/oauth", oauth.router());
    let server = Server::start(app).await;
    let fixture = Fixture {
        client: Client::new(&server),
        verifier,
        clock,
        _server: server,
    };
    (fixture, oauth)
}

async fn fixture() -> Fixture<MemoryStore> {
    fixture_with(MemoryStore::new(), MemoryGrantStore::new()).await
}

/// An API key used as a client: its id and its text.
#[derive(Clone)]
struct OAuthClient {
    id: String,
    secret: String,
}

impl OAuthClient {
    /// Form fields authenticating this client (`client_secret_post`).
    fn post(&self) -> Vec<(&'static str, String)> {
        vec![
            ("client_id", self.id.clone()),
            ("client_secret", self.secret.clone()),
        ]
    }

    /// `Authorization: Basic …` for this client (`client_secret_basic`, form-urlencoded
    /// parts).
    fn basic(&self) -> String {
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let raw = format!("{}:{}", encode(&self.id), encode(&self.secret));
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

fn form(fields: &[(&str, String)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (key, value) in fields {
        out.append_pair(key, value);
    }
    out.finish()
}

/// Fields plus more.
fn with(
    mut base: Vec<(&'static str, String)>,
    more: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    base.extend(more.iter().map(|(k, v)| (*k, (*v).to_owned())));
    base
}

impl<S: TokenStore + 'static> Fixture<S> {
    async fn oauth_client(
        &self,
        owner: &str,
        scopes: &[&str],
        registration: ClientRegistration,
    ) -> OAuthClient {
        let issued = self
            .verifier
            .issuer()
            .issue(
                NewToken::new("reporting app", Owner::new(owner).unwrap())
                    .scopes(scopes)
                    .unwrap()
                    .metadata(registration.to_metadata()),
            )
            .await
            .expect("client key");
        OAuthClient {
            id: issued.record.id.as_str().to_owned(),
            secret: issued.token.expose_secret().to_owned(),
        }
    }

    /// A client registered for every grant with [`REDIRECT`], holding `db:read db:write`.
    async fn app_client(&self) -> OAuthClient {
        self.oauth_client(
            "acct-1",
            &["db:read", "db:write", "oauth:introspect"],
            ClientRegistration::new().redirect_uri(REDIRECT),
        )
        .await
    }

    /// POSTs a form to an OAuth endpoint and checks what every such response carries.
    async fn post(
        &self,
        path: &str,
        authorization: Option<&str>,
        fields: &[(&str, String)],
    ) -> Reply {
        let reply = self
            .client
            .post_form(&format!("/oauth{path}"), authorization, &form(fields))
            .await;
        assert_eq!(reply.header("cache-control"), "no-store", "{reply:#?}");
        assert_eq!(reply.header("pragma"), "no-cache", "{reply:#?}");
        reply
    }

    async fn token(&self, fields: &[(&str, String)]) -> Reply {
        self.post("/token", None, fields).await
    }

    async fn api(&self, token: &str) -> Reply {
        self.client.bearer(Method::GET, API, token, None).await
    }

    /// Client credentials for `client`; the reply must be 200.
    async fn client_token(&self, client: &OAuthClient, scope: Option<&str>) -> Value {
        let mut fields = with(client.post(), &[("grant_type", "client_credentials")]);
        if let Some(scope) = scope {
            fields.push(("scope", scope.to_owned()));
        }
        let reply = self.token(&fields).await;
        assert_eq!(reply.status, 200, "{reply:#?}");
        reply.json()
    }

    /// `GET /oauth/authorize` with `params`, signed in as `user` (if any).
    async fn authorize(
        &self,
        params: &[(&str, String)],
        user: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut builder = self
            .client
            .request(Method::GET, &format!("/oauth/authorize?{}", form(params)));
        if let Some(user) = user {
            builder = builder.header("x-user", user);
        }
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        self.client.send(builder, None).await
    }

    /// A valid authorization request's parameters for `client`.
    fn auth_params(
        &self,
        client: &OAuthClient,
        scope: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let mut params = vec![
            ("response_type", "code".to_owned()),
            ("client_id", client.id.clone()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("code_challenge", s256_challenge(VERIFIER)),
            ("code_challenge_method", "S256".to_owned()),
            ("state", "xyz 1".to_owned()),
        ];
        if let Some(scope) = scope {
            params.push(("scope", scope.to_owned()));
        }
        params
    }

    /// Runs the authorization request as `user` and returns the code from the redirect.
    async fn code(&self, client: &OAuthClient, user: &str, scope: Option<&str>) -> String {
        let reply = self
            .authorize(&self.auth_params(client, scope), Some(user), &[])
            .await;
        let query = redirect_query(&reply);
        assert_eq!(
            query.get("state").map(String::as_str),
            Some("xyz 1"),
            "{reply:#?}"
        );
        query
            .get("code")
            .cloned()
            .unwrap_or_else(|| panic!("no code in {reply:#?}"))
    }

    /// Redeems `code` for `client` with `verifier`.
    async fn redeem(&self, client: &OAuthClient, code: &str, verifier: &str) -> Reply {
        self.token(&with(
            client.post(),
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier),
            ],
        ))
        .await
    }

    /// An authorization code flow for `user`, through to tokens.
    async fn user_tokens(&self, client: &OAuthClient, user: &str, scope: Option<&str>) -> Value {
        let code = self.code(client, user, scope).await;
        let reply = self.redeem(client, &code, VERIFIER).await;
        assert_eq!(reply.status, 200, "{reply:#?}");
        reply.json()
    }

    async fn refresh(
        &self,
        client: &OAuthClient,
        refresh_token: &str,
        scope: Option<&str>,
    ) -> Reply {
        let mut fields = with(
            client.post(),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        );
        if let Some(scope) = scope {
            fields.push(("scope", scope.to_owned()));
        }
        self.token(&fields).await
    }

    async fn introspect(&self, caller: &OAuthClient, token: &str) -> Reply {
        self.post(
            "/introspect",
            Some(&caller.basic()),
            &[("token", token.to_owned())],
        )
        .await
    }

    async fn revoke(&self, caller: &OAuthClient, token: &str) -> Reply {
        self.post("/revoke", None, &with(caller.post(), &[("token", token)]))
            .await
    }
}

/// The query of a 302's `Location`, which must point at the registered redirect URI.
fn redirect_query(reply: &Reply) -> std::collections::HashMap<String, String> {
    assert_eq!(reply.status, 302, "{reply:#?}");
    let location = reply.header("location");
    let query = location
        .strip_prefix(&format!("{REDIRECT}?"))
        .unwrap_or_else(|| panic!("redirect elsewhere: {location}"));
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn str_field<'a>(json: &'a Value, key: &str) -> &'a str {
    json[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {json}"))
}

/// Asserts an RFC 6749 §5.2 error: status, `error`, only `error` and `error_description`.
#[track_caller]
fn assert_error(reply: &Reply, status: u16, error: &str) {
    assert_eq!(reply.status.as_u16(), status, "{reply:#?}");
    assert_eq!(reply.header("content-type"), "application/json");
    let body = reply.json();
    assert_eq!(body["error"], error, "{reply:#?}");
    let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
    assert!(
        keys.iter()
            .all(|k| *k == "error" || *k == "error_description"),
        "{body}"
    );
    if status == 401 {
        assert_eq!(reply.header("www-authenticate"), BASIC_CHALLENGE);
    } else {
        assert!(
            reply.headers.get("www-authenticate").is_none(),
            "{reply:#?}"
        );
    }
}

// ---- client credentials ----

#[tokio::test]
async fn client_credentials_token_is_accepted_by_the_same_auth_layer_as_api_keys() {
    let f = fixture().await;
    let client = f.app_client().await;
    let reply = f
        .token(&with(
            client.post(),
            &[("grant_type", "client_credentials")],
        ))
        .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.header("content-type"), "application/json");
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "db:read db:write oauth:introspect");
    // RFC 6749 §4.4.3: no refresh token for client credentials.
    assert!(body.get("refresh_token").is_none(), "{body}");
    let access = str_field(&body, "access_token");
    assert!(access.starts_with("at_"));

    // One route, both methods, the same principal shape.
    let by_token = f.api(access).await;
    let by_key = f.api(&client.secret).await;
    assert_eq!(by_token.status, 200, "{by_token:#?}");
    assert_eq!(by_key.status, 200, "{by_key:#?}");
    let (by_token, by_key) = (by_token.json(), by_key.json());
    assert_eq!(by_token["owner"], "acct-1");
    assert_eq!(by_token["owner"], by_key["owner"]);
    assert_eq!(by_token["scopes"], by_key["scopes"]);
    assert_ne!(by_token["token_id"], by_key["token_id"]);
}

#[tokio::test]
async fn basic_authentication_with_form_encoded_credentials_works() {
    let f = fixture().await;
    let client = f.app_client().await;
    let reply = f
        .post(
            "/token",
            Some(&client.basic()),
            &[
                ("grant_type", "client_credentials".to_owned()),
                ("scope", "db:read".to_owned()),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.json()["scope"], "db:read");
    // Sending client_id in the body as well is allowed when it is the same client.
    let reply = f
        .post(
            "/token",
            Some(&client.basic()),
            &[
                ("grant_type", "client_credentials".to_owned()),
                ("client_id", client.id.clone()),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
}

#[tokio::test]
async fn narrowed_scope_is_all_the_access_token_carries() {
    let f = fixture().await;
    let client = f.app_client().await;
    let body = f.client_token(&client, Some("db:read")).await;
    assert_eq!(body["scope"], "db:read");
    let who = f.api(str_field(&body, "access_token")).await.json();
    assert_eq!(who["scopes"], "db:read");
}

#[tokio::test]
async fn every_token_endpoint_error_of_rfc_6749_section_5_2() {
    let f = fixture().await;
    let client = f.app_client().await;
    let cc = || with(client.post(), &[("grant_type", "client_credentials")]);

    // invalid_request: no grant type, a repeated parameter, two authentication methods,
    // a body that is not a form.
    assert_error(&f.token(&client.post()).await, 400, "invalid_request");
    let mut repeated = cc();
    repeated.push(("grant_type", "client_credentials".to_owned()));
    assert_error(&f.token(&repeated).await, 400, "invalid_request");
    let both = f.post("/token", Some(&client.basic()), &cc()).await;
    assert_error(&both, 400, "invalid_request");
    let json_body = f
        .client
        .send(
            f.client.request(Method::POST, "/oauth/token"),
            Some(r#"{"grant_type":"client_credentials"}"#),
        )
        .await;
    assert_error(&json_body, 400, "invalid_request");

    // invalid_client: 401 with a Basic challenge when the Authorization header was used (or
    // nothing at all), 400 when the credentials were in the body.
    let wrong = OAuthClient {
        id: client.id.clone(),
        secret: f.app_client().await.secret,
    };
    let reply = f
        .post(
            "/token",
            Some(&wrong.basic()),
            &[("grant_type", "client_credentials".to_owned())],
        )
        .await;
    assert_error(&reply, 401, "invalid_client");
    let reply = f
        .token(&with(wrong.post(), &[("grant_type", "client_credentials")]))
        .await;
    assert_error(&reply, 400, "invalid_client");
    let reply = f
        .token(&[("grant_type", "client_credentials".to_owned())])
        .await;
    assert_error(&reply, 401, "invalid_client");
    let bearer = f
        .post(
            "/token",
            Some(&format!("Bearer {}", client.secret)),
            &[("grant_type", "client_credentials".to_owned())],
        )
        .await;
    assert_error(&bearer, 401, "invalid_client");

    // invalid_grant: a code or refresh token that is not one.
    let reply = f
        .token(&with(
            client.post(),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "rt_nonsense"),
            ],
        ))
        .await;
    assert_error(&reply, 400, "invalid_grant");
    assert_error(
        &f.redeem(&client, "ac_nonsense", VERIFIER).await,
        400,
        "invalid_grant",
    );

    // unauthorized_client: a client registered for other grants only.
    let web_only = f
        .oauth_client(
            "acct-1",
            &["db:read"],
            ClientRegistration::new()
                .redirect_uri(REDIRECT)
                .grant_types([GrantType::AuthorizationCode]),
        )
        .await;
    let reply = f
        .token(&with(
            web_only.post(),
            &[("grant_type", "client_credentials")],
        ))
        .await;
    assert_error(&reply, 400, "unauthorized_client");

    // unsupported_grant_type.
    let reply = f
        .token(&with(client.post(), &[("grant_type", "password")]))
        .await;
    assert_error(&reply, 400, "unsupported_grant_type");

    // invalid_scope: more than the client holds, or not a scope at all.
    let mut wider = cc();
    wider.push(("scope", "db:read db:admin".to_owned()));
    assert_error(&f.token(&wider).await, 400, "invalid_scope");
    let mut bad = cc();
    bad.push(("scope", "db:\"read\"".to_owned()));
    assert_error(&f.token(&bad).await, 400, "invalid_scope");
}

#[tokio::test]
async fn errors_never_echo_request_data() {
    let f = fixture().await;
    let client = f.app_client().await;
    let wrong_secret = f.app_client().await.secret;
    let replies = [
        f.token(&[
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", client.id.clone()),
            ("client_secret", wrong_secret.clone()),
        ])
        .await,
        f.token(&with(client.post(), &[("grant_type", "<script>")]))
            .await,
        f.token(&with(
            client.post(),
            &[
                ("grant_type", "client_credentials"),
                ("scope", "evil:<script>"),
            ],
        ))
        .await,
    ];
    for reply in replies {
        assert!(reply.status.is_client_error(), "{reply:#?}");
        for leaked in [
            &client.id,
            &client.secret,
            &wrong_secret,
            &"<script>".to_owned(),
        ] {
            assert!(!reply.body.contains(leaked.as_str()), "{reply:#?}");
        }
    }
}

#[tokio::test]
async fn revoked_keys_and_access_tokens_are_not_client_secrets() {
    let f = fixture().await;
    let client = f.app_client().await;
    let access = f.client_token(&client, None).await;
    let access = str_field(&access, "access_token");
    // An access token presented as the client's secret (under its own id) is refused: it
    // could otherwise mint its own successors forever.
    let as_client = OAuthClient {
        id: access.split('_').nth(1).expect("id part").to_owned(),
        secret: access.to_owned(),
    };
    let reply = f
        .token(&with(
            as_client.post(),
            &[("grant_type", "client_credentials")],
        ))
        .await;
    assert_error(&reply, 400, "invalid_client");

    let id: TokenId = client.id.parse().unwrap();
    f.verifier
        .store()
        .revoke(&id, f.verifier.now())
        .await
        .unwrap();
    let reply = f
        .token(&with(
            client.post(),
            &[("grant_type", "client_credentials")],
        ))
        .await;
    assert_error(&reply, 400, "invalid_client");
}

#[tokio::test]
async fn access_tokens_keep_the_client_keys_rate_limit() {
    use apitoken::rate_limit::{RateLimit, RateLimitPolicy};

    let f = fixture().await;
    let mut metadata = ClientRegistration::new()
        .redirect_uri(REDIRECT)
        .to_metadata();
    metadata.insert(
        "rate_limit".into(),
        json!({"requests": 1, "period_secs": 3600}),
    );
    let issued = f
        .verifier
        .issuer()
        .issue(
            NewToken::new("limited app", Owner::new("acct-1").unwrap())
                .scopes(["db:read"])
                .unwrap()
                .metadata(metadata),
        )
        .await
        .unwrap();
    let client = OAuthClient {
        id: issued.record.id.as_str().to_owned(),
        secret: issued.token.expose_secret().to_owned(),
    };
    let by_credentials = f.client_token(&client, None).await;
    let by_code = f.user_tokens(&client, "user-7", None).await;
    let refreshed = f
        .refresh(&client, str_field(&by_code, "refresh_token"), None)
        .await
        .json();
    // The layer's default is a hundred a minute; the client key may make one an hour, and so
    // may every token it obtains, whatever the grant.
    let policy = RateLimitPolicy::new(RateLimit::per_minute(100));
    for grant in [&by_credentials, &by_code, &refreshed] {
        let access = str_field(grant, "access_token");
        let principal = f.verifier.authenticate(access).await.unwrap();
        assert_eq!(
            policy.resolve(&principal).1,
            RateLimit::per_hour(1),
            "{grant}"
        );
    }
}

#[tokio::test]
async fn access_tokens_expire_after_an_hour_and_never_outlive_the_client_key() {
    let f = fixture().await;
    let client = f.app_client().await;
    let body = f.client_token(&client, None).await;
    let access = str_field(&body, "access_token");
    f.clock.advance(TimeDelta::minutes(59));
    assert_eq!(f.api(access).await.status, 200);
    f.clock.advance(TimeDelta::minutes(1));
    assert_eq!(f.api(access).await.status, 401);

    // A key that expires in ten minutes gets ten-minute tokens.
    let issued = f
        .verifier
        .issuer()
        .issue(
            NewToken::new("short", Owner::new("acct-2").unwrap())
                .scopes(["db:read"])
                .unwrap()
                .expires_in(TimeDelta::minutes(10)),
        )
        .await
        .unwrap();
    let short = OAuthClient {
        id: issued.record.id.as_str().to_owned(),
        secret: issued.token.expose_secret().to_owned(),
    };
    assert_eq!(f.client_token(&short, None).await["expires_in"], 600);
}

#[tokio::test]
async fn revoking_a_client_key_ends_its_grants_at_once_and_its_access_tokens_by_their_expiry() {
    let f = fixture().await;
    let client = f.app_client().await;
    let by_credentials = f.client_token(&client, None).await;
    let by_code = f.user_tokens(&client, "user-7", None).await;
    let key: TokenId = client.id.parse().unwrap();
    assert!(
        f.verifier
            .store()
            .revoke(&key, f.verifier.now())
            .await
            .unwrap()
    );

    // No new token, by any grant.
    let reply = f
        .token(&with(
            client.post(),
            &[("grant_type", "client_credentials")],
        ))
        .await;
    assert_error(&reply, 400, "invalid_client");
    let reply = f
        .refresh(&client, str_field(&by_code, "refresh_token"), None)
        .await;
    assert_error(&reply, 400, "invalid_client");
    // The access tokens it already obtained are records of their own: they keep working
    // until they expire, at most the access-token lifetime (an hour) after issue. This is
    // the bound docs/oauth.md states.
    f.clock.advance(TimeDelta::minutes(59));
    for grant in [&by_credentials, &by_code] {
        assert_eq!(f.api(str_field(grant, "access_token")).await.status, 200);
    }
    f.clock.advance(TimeDelta::minutes(1));
    for grant in [&by_credentials, &by_code] {
        assert_eq!(f.api(str_field(grant, "access_token")).await.status, 401);
    }
}

#[tokio::test]
async fn token_requests_are_limited_per_client() {
    use apitoken::rate_limit::{MemoryRateLimiter, RateLimit};

    let (f, _) = fixture_configured(MemoryStore::new(), MemoryGrantStore::new(), |b, clock| {
        b.token_rate_limit(MemoryRateLimiter::with_clock(clock), RateLimit::per_hour(3))
    })
    .await;
    let client = f.app_client().await;
    let other = f
        .oauth_client("acct-2", &["db:read"], ClientRegistration::new())
        .await;
    for _ in 0..3 {
        f.client_token(&client, None).await;
    }
    let reply = f
        .token(&with(
            client.post(),
            &[("grant_type", "client_credentials")],
        ))
        .await;
    assert_error(&reply, 429, "slow_down");
    assert_eq!(reply.header("retry-after"), "1200", "{reply:#?}");
    // Another client has its own budget; a failed authentication spends none.
    f.client_token(&other, None).await;
    // The default: 60 a minute in bursts of 20, on by default.
    let d = apitoken::oauth::DEFAULT_TOKEN_REQUEST_LIMIT;
    assert_eq!(
        (d.requests(), d.period(), d.burst()),
        (60, std::time::Duration::from_secs(60), 20)
    );
    let f = fixture().await;
    let client = f.app_client().await;
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..21 {
            let reply = f
                .token(&with(
                    client.post(),
                    &[("grant_type", "client_credentials")],
                ))
                .await;
            out.push(reply.status.as_u16());
        }
        out
    };
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(statuses[20], 429, "{statuses:?}");
}

#[tokio::test]
async fn purge_removes_expired_access_tokens_and_nothing_else() {
    let (f, server) = fixture_configured(MemoryStore::new(), MemoryGrantStore::new(), |b, _| {
        b.unlimited_token_requests()
    })
    .await;
    let client = f.app_client().await;
    for _ in 0..50 {
        f.client_token(&client, None).await;
    }
    let live = f.client_token(&client, None).await;
    assert_eq!(f.verifier.store().len(), 52, "the key and 51 access tokens");
    f.clock.advance(TimeDelta::minutes(30));
    let fresh = f.client_token(&client, None).await;
    f.clock.advance(TimeDelta::minutes(30));
    // The first 51 expired just now; the one issued half an hour later has not.
    assert_eq!(server.purge().await.unwrap(), 51);
    assert_eq!(
        f.verifier.store().len(),
        2,
        "the client key and the fresh token"
    );
    assert_eq!(f.api(str_field(&fresh, "access_token")).await.status, 200);
    assert_eq!(f.api(str_field(&live, "access_token")).await.status, 401);
    assert_eq!(server.purge().await.unwrap(), 0);
}

#[tokio::test]
async fn a_token_store_outage_answers_503_and_issues_nothing() {
    let (store, down) = FlakyStore::new();
    let f = fixture_with(store, MemoryGrantStore::new()).await;
    let client = f.app_client().await;
    down.store(true, Ordering::SeqCst);
    let reply = f
        .token(&with(
            client.post(),
            &[("grant_type", "client_credentials")],
        ))
        .await;
    assert_error(&reply, 503, "temporarily_unavailable");
    assert!(!reply.body.contains("at_"));
}

#[tokio::test]
async fn a_grant_store_outage_answers_503_and_keeps_the_refresh_token_usable() {
    let grants = FlakyGrants::default();
    let down = Arc::clone(&grants.down);
    let f = fixture_with(MemoryStore::new(), grants).await;
    let client = f.app_client().await;
    let tokens = f.user_tokens(&client, "user-7", None).await;
    let refresh = str_field(&tokens, "refresh_token");
    down.store(true, Ordering::SeqCst);
    assert_error(
        &f.refresh(&client, refresh, None).await,
        503,
        "temporarily_unavailable",
    );
    down.store(false, Ordering::SeqCst);
    // Nothing was rotated: the same refresh token still works, and is not taken for reuse.
    let reply = f.refresh(&client, refresh, None).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
}

// ---- authorization code + PKCE ----

#[tokio::test]
async fn authorization_code_with_the_right_verifier_yields_user_tokens() {
    let f = fixture().await;
    let client = f.app_client().await;
    let code = f.code(&client, "user-7", Some("db:read")).await;
    assert!(code.starts_with("ac_"));
    let reply = f.redeem(&client, &code, VERIFIER).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "db:read");
    assert_eq!(body["expires_in"], 3600);
    assert!(str_field(&body, "refresh_token").starts_with("rt_"));
    let who = f.api(str_field(&body, "access_token")).await;
    assert_eq!(who.status, 200, "{who:#?}");
    assert_eq!(who.json()["owner"], "user-7");
    assert_eq!(who.json()["scopes"], "db:read");
}

#[tokio::test]
async fn a_wrong_pkce_verifier_is_refused_and_spends_the_code() {
    let f = fixture().await;
    let client = f.app_client().await;
    let code = f.code(&client, "user-7", None).await;
    let other = "a".repeat(43);
    assert_error(
        &f.redeem(&client, &code, &other).await,
        400,
        "invalid_grant",
    );
    // Single use: the right verifier is too late now.
    assert_error(
        &f.redeem(&client, &code, VERIFIER).await,
        400,
        "invalid_grant",
    );
    // A verifier that is not RFC 7636 syntax is a malformed request.
    let code = f.code(&client, "user-7", None).await;
    assert_error(
        &f.redeem(&client, &code, "short").await,
        400,
        "invalid_request",
    );
}

#[tokio::test]
async fn a_code_used_twice_is_refused_and_revokes_what_it_gave() {
    let f = fixture().await;
    let client = f.app_client().await;
    let code = f.code(&client, "user-7", None).await;
    let first = f.redeem(&client, &code, VERIFIER).await;
    assert_eq!(first.status, 200, "{first:#?}");
    let first = first.json();
    let access = str_field(&first, "access_token");
    assert_eq!(f.api(access).await.status, 200);

    assert_error(
        &f.redeem(&client, &code, VERIFIER).await,
        400,
        "invalid_grant",
    );
    assert_eq!(f.api(access).await.status, 401);
    let reply = f
        .refresh(&client, str_field(&first, "refresh_token"), None)
        .await;
    assert_error(&reply, 400, "invalid_grant");
}

#[tokio::test]
async fn a_replayed_code_revokes_the_access_token_of_a_client_without_refresh_tokens() {
    let f = fixture().await;
    let client = f
        .oauth_client(
            "acct-1",
            &["db:read"],
            ClientRegistration::new()
                .redirect_uri(REDIRECT)
                .grant_types([GrantType::AuthorizationCode]),
        )
        .await;
    let code = f.code(&client, "user-7", None).await;
    let first = f.redeem(&client, &code, VERIFIER).await;
    assert_eq!(first.status, 200, "{first:#?}");
    let first = first.json();
    assert!(first.get("refresh_token").is_none(), "{first}");
    let access = str_field(&first, "access_token");
    assert_eq!(f.api(access).await.status, 200);

    assert_error(
        &f.redeem(&client, &code, VERIFIER).await,
        400,
        "invalid_grant",
    );
    assert_eq!(f.api(access).await.status, 401, "RFC 6749 §4.1.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_while_the_first_redemption_mints_leaves_no_usable_token() {
    let store = support::GatedStore::default();
    let gate = store.gate();
    let f = fixture_with(store, MemoryGrantStore::new()).await;
    let client = f.app_client().await;
    let code = f.code(&client, "user-7", None).await;
    // The first redemption stops while its access token is being stored; the replay comes
    // in then, and the first goes on only after the replay has been answered.
    gate.arm();
    let (first, replay) = tokio::join!(f.redeem(&client, &code, VERIFIER), async {
        gate.arrived().await;
        let replay = f.redeem(&client, &code, VERIFIER).await;
        gate.release();
        replay
    });
    assert_error(&replay, 400, "invalid_grant");
    assert_error(&first, 400, "invalid_grant");
    let records = f
        .verifier
        .store()
        .list_by_owner(&Owner::new("user-7").unwrap())
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "the access token was stored: {records:?}");
    assert!(
        records.iter().all(|r| r.revoked_at.is_some()),
        "{records:?}"
    );
}

#[tokio::test]
async fn a_code_is_bound_to_redirect_uri_client_and_lifetime() {
    let f = fixture().await;
    let client = f.app_client().await;

    let code = f.code(&client, "user-7", None).await;
    let reply = f
        .token(&with(
            client.post(),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "https://app.example/other"),
                ("code_verifier", VERIFIER),
            ],
        ))
        .await;
    assert_error(&reply, 400, "invalid_grant");

    let code = f.code(&client, "user-7", None).await;
    let thief = f.app_client().await;
    assert_error(
        &f.redeem(&thief, &code, VERIFIER).await,
        400,
        "invalid_grant",
    );
    // The thief's attempt did not spend it.
    assert_eq!(f.redeem(&client, &code, VERIFIER).await.status, 200);

    let code = f.code(&client, "user-7", None).await;
    f.clock.advance(TimeDelta::seconds(60));
    assert_error(
        &f.redeem(&client, &code, VERIFIER).await,
        400,
        "invalid_grant",
    );

    let missing = f
        .token(&with(
            client.post(),
            &[("grant_type", "authorization_code"), ("code", &code)],
        ))
        .await;
    assert_error(&missing, 400, "invalid_request");
}

#[tokio::test]
async fn authorize_never_redirects_to_an_unregistered_uri_or_for_an_unknown_client() {
    let f = fixture().await;
    let client = f.app_client().await;
    let mut params = f.auth_params(&client, None);
    params[2].1 = "https://evil.example/callback".to_owned();
    let reply = f.authorize(&params, Some("user-7"), &[]).await;
    assert_eq!(reply.status, 400, "{reply:#?}");
    assert!(reply.headers.get("location").is_none());

    let mut params = f.auth_params(&client, None);
    params[1].1 = "unknownclnt1".to_owned();
    let reply = f.authorize(&params, Some("user-7"), &[]).await;
    assert_eq!(reply.status, 400, "{reply:#?}");
    assert!(reply.headers.get("location").is_none());

    // A redirect URI that only starts like the registered one is another URI.
    let mut params = f.auth_params(&client, None);
    params[2].1 = format!("{REDIRECT}/../x");
    assert_eq!(f.authorize(&params, Some("user-7"), &[]).await.status, 400);
}

#[tokio::test]
async fn authorize_errors_go_back_to_the_client_with_state() {
    let f = fixture().await;
    let client = f.app_client().await;
    let cases: Vec<(Vec<(&'static str, String)>, &str)> = vec![
        // PKCE with `plain`, or none at all, is refused.
        (
            f.auth_params(&client, None)
                .into_iter()
                .map(|(k, v)| match k {
                    "code_challenge_method" => (k, "plain".to_owned()),
                    "code_challenge" => (k, VERIFIER.to_owned()),
                    _ => (k, v),
                })
                .collect(),
            "invalid_request",
        ),
        (
            f.auth_params(&client, None)
                .into_iter()
                .filter(|(k, _)| !k.starts_with("code_challenge"))
                .collect(),
            "invalid_request",
        ),
        (
            f.auth_params(&client, None)
                .into_iter()
                .map(|(k, v)| {
                    if k == "response_type" {
                        (k, "token".to_owned())
                    } else {
                        (k, v)
                    }
                })
                .collect(),
            "unsupported_response_type",
        ),
        (f.auth_params(&client, Some("db:admin")), "invalid_scope"),
    ];
    for (params, error) in cases {
        let reply = f.authorize(&params, Some("user-7"), &[]).await;
        let query = redirect_query(&reply);
        assert_eq!(
            query.get("error").map(String::as_str),
            Some(error),
            "{reply:#?}"
        );
        assert_eq!(query.get("state").map(String::as_str), Some("xyz 1"));
        assert!(!query.contains_key("code"));
    }
    let denied = f
        .authorize(
            &f.auth_params(&client, None),
            Some("user-7"),
            &[("x-deny", "1")],
        )
        .await;
    assert_eq!(redirect_query(&denied)["error"], "access_denied");
    // Approving more than was asked is refused, never issued.
    let over = f
        .authorize(
            &f.auth_params(&client, Some("db:read")),
            Some("user-7"),
            &[("x-approve", "db:read db:write")],
        )
        .await;
    assert_eq!(redirect_query(&over)["error"], "invalid_scope");
    // No user yet: the application's login page, no redirect.
    let login = f.authorize(&f.auth_params(&client, None), None, &[]).await;
    assert_eq!(login.status, 200);
    assert_eq!(login.body, "please sign in");
}

// ---- refresh tokens ----

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let f = fixture().await;
    let client = f.app_client().await;
    let first = f
        .user_tokens(&client, "user-7", Some("db:read db:write"))
        .await;
    let rt1 = str_field(&first, "refresh_token");

    let second = f.refresh(&client, rt1, None).await;
    assert_eq!(second.status, 200, "{second:#?}");
    let second = second.json();
    let rt2 = str_field(&second, "refresh_token");
    assert_ne!(rt1, rt2);
    assert_eq!(second["scope"], "db:read db:write");
    let at2 = str_field(&second, "access_token");
    assert_eq!(f.api(at2).await.json()["owner"], "user-7");

    // rt1 again: someone else holds a copy. Everything the grant produced is revoked.
    assert_error(&f.refresh(&client, rt1, None).await, 400, "invalid_grant");
    assert_error(&f.refresh(&client, rt2, None).await, 400, "invalid_grant");
    assert_eq!(f.api(str_field(&first, "access_token")).await.status, 401);
    assert_eq!(f.api(at2).await.status, 401);
}

#[tokio::test]
async fn refresh_scope_may_narrow_but_never_widen() {
    let f = fixture().await;
    let client = f.app_client().await;
    let tokens = f.user_tokens(&client, "user-7", Some("db:read")).await;
    let rt = str_field(&tokens, "refresh_token");
    // The client holds db:write, but this grant does not.
    assert_error(
        &f.refresh(&client, rt, Some("db:read db:write")).await,
        400,
        "invalid_scope",
    );
    let narrow = f.refresh(&client, rt, Some("db:read")).await;
    assert_eq!(narrow.status, 200, "{narrow:#?}");
    assert_eq!(narrow.json()["scope"], "db:read");
}

#[tokio::test]
async fn refresh_tokens_expire_after_inactivity_only() {
    let f = fixture().await;
    let client = f.app_client().await;
    let tokens = f.user_tokens(&client, "user-7", None).await;
    let mut rt = str_field(&tokens, "refresh_token").to_owned();
    // Used every 29 days, it lives on.
    for _ in 0..3 {
        f.clock.advance(TimeDelta::days(29));
        let reply = f.refresh(&client, &rt, None).await;
        assert_eq!(reply.status, 200, "{reply:#?}");
        rt = str_field(&reply.json(), "refresh_token").to_owned();
    }
    f.clock.advance(TimeDelta::days(30));
    assert_error(&f.refresh(&client, &rt, None).await, 400, "invalid_grant");
}

#[tokio::test]
async fn refresh_tokens_stop_at_the_maximum_lifetime_counted_from_the_authorization() {
    let max = TimeDelta::days(10);
    let (f, _) = fixture_configured(MemoryStore::new(), MemoryGrantStore::new(), |builder, _| {
        builder.refresh_token_max_lifetime(max)
    })
    .await;
    let client = f.app_client().await;
    // Authorized, and the code redeemed, at `start()`.
    let tokens = f.user_tokens(&client, "user-7", None).await;
    let mut rt = str_field(&tokens, "refresh_token").to_owned();
    // Every refresh mints a new refresh token, well inside its 30-day inactivity limit...
    for at in [
        TimeDelta::days(3),
        TimeDelta::days(6),
        TimeDelta::days(9),
        max - TimeDelta::seconds(1),
    ] {
        f.clock.set(start() + at);
        let reply = f.refresh(&client, &rt, None).await;
        assert_eq!(reply.status, 200, "after {at}: {reply:#?}");
        rt = str_field(&reply.json(), "refresh_token").to_owned();
    }
    // ...but none outlives the grant: the newest, one second old, stops at the limit.
    f.clock.set(start() + max);
    assert_error(&f.refresh(&client, &rt, None).await, 400, "invalid_grant");
    f.clock.set(start() + max + TimeDelta::days(1));
    assert_error(&f.refresh(&client, &rt, None).await, 400, "invalid_grant");
}

#[tokio::test]
async fn refresh_tokens_belong_to_their_client_and_are_not_access_tokens() {
    let f = fixture().await;
    let client = f.app_client().await;
    let tokens = f.user_tokens(&client, "user-7", None).await;
    let rt = str_field(&tokens, "refresh_token");
    let access = str_field(&tokens, "access_token");

    // A refresh token at the protected route: 401.
    let reply = f.api(rt).await;
    assert_eq!(reply.status, 401, "{reply:#?}");
    // An access token as a refresh token: invalid_grant.
    assert_error(
        &f.refresh(&client, access, None).await,
        400,
        "invalid_grant",
    );
    // Another client cannot use it, and trying does not revoke it.
    let other = f.app_client().await;
    assert_error(&f.refresh(&other, rt, None).await, 400, "invalid_grant");
    assert_eq!(f.refresh(&client, rt, None).await.status, 200);
}

// ---- revocation (RFC 7009) ----

#[tokio::test]
async fn revocation_revokes_access_tokens_and_refresh_families() {
    let f = fixture().await;
    let client = f.app_client().await;

    let cc = f.client_token(&client, None).await;
    let access = str_field(&cc, "access_token");
    let reply = f.revoke(&client, access).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(f.api(access).await.status, 401);
    // Already revoked: 200 again.
    assert_eq!(f.revoke(&client, access).await.status, 200);

    let user = f.user_tokens(&client, "user-7", None).await;
    let reply = f.revoke(&client, str_field(&user, "refresh_token")).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(f.api(str_field(&user, "access_token")).await.status, 401);
    assert_error(
        &f.refresh(&client, str_field(&user, "refresh_token"), None)
            .await,
        400,
        "invalid_grant",
    );
}

#[tokio::test]
async fn revocation_answers_200_for_unknown_and_foreign_tokens_and_touches_neither() {
    let f = fixture().await;
    let client = f.app_client().await;
    let other = f.app_client().await;
    for junk in ["nonsense", "at_AAAAAAAAAAAA_x", "rt_AAAAAAAAAAAA_x"] {
        assert_eq!(f.revoke(&client, junk).await.status, 200);
    }
    let theirs = f.client_token(&other, None).await;
    let theirs_access = str_field(&theirs, "access_token");
    let theirs_user = f.user_tokens(&other, "user-9", None).await;
    assert_eq!(f.revoke(&client, theirs_access).await.status, 200);
    assert_eq!(
        f.revoke(&client, str_field(&theirs_user, "refresh_token"))
            .await
            .status,
        200
    );
    assert_eq!(f.api(theirs_access).await.status, 200);
    assert_eq!(
        f.refresh(&other, str_field(&theirs_user, "refresh_token"), None)
            .await
            .status,
        200
    );
    // An API key is not an OAuth token: revoking it here does nothing.
    assert_eq!(f.revoke(&client, &other.secret).await.status, 200);
    assert_eq!(f.api(&other.secret).await.status, 200);

    assert_error(
        &f.post("/revoke", None, &client.post()).await,
        400,
        "invalid_request",
    );
    let reply = f
        .post("/revoke", None, &[("token", theirs_access.to_owned())])
        .await;
    assert_error(&reply, 401, "invalid_client");
}

// ---- introspection (RFC 7662) ----

#[tokio::test]
async fn introspection_describes_active_tokens() {
    let f = fixture().await;
    let client = f.app_client().await;
    let cc = f.client_token(&client, Some("db:read")).await;
    let reply = f.introspect(&client, str_field(&cc, "access_token")).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    let body = reply.json();
    assert_eq!(body["active"], true);
    assert_eq!(body["scope"], "db:read");
    assert_eq!(body["client_id"], client.id.as_str());
    assert_eq!(body["sub"], "acct-1");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["iat"], start().timestamp());
    assert_eq!(body["exp"], (start() + TimeDelta::hours(1)).timestamp());

    let user = f.user_tokens(&client, "user-7", Some("db:write")).await;
    let body = f
        .introspect(&client, str_field(&user, "refresh_token"))
        .await
        .json();
    assert_eq!(body["active"], true);
    assert_eq!(body["token_type"], "refresh_token");
    assert_eq!(body["sub"], "user-7");
    assert_eq!(body["scope"], "db:write");
}

#[tokio::test]
async fn introspection_says_only_active_false_for_anything_inactive() {
    let f = fixture().await;
    let client = f.app_client().await;
    let revoked = f.client_token(&client, None).await;
    let revoked = str_field(&revoked, "access_token");
    f.revoke(&client, revoked).await;
    let user = f.user_tokens(&client, "user-7", None).await;
    let used_rt = str_field(&user, "refresh_token");
    assert_eq!(f.refresh(&client, used_rt, None).await.status, 200);
    let expiring = f.client_token(&client, None).await;
    let expiring = str_field(&expiring, "access_token").to_owned();
    let code = f.code(&client, "user-7", None).await;

    let mut inactive = vec![
        revoked.to_owned(),
        used_rt.to_owned(),
        "nonsense".to_owned(),
        "at_AAAAAAAAAAAA_x".to_owned(),
        code,
        // An API key is not an OAuth token.
        client.secret.clone(),
    ];
    f.clock.advance(TimeDelta::hours(1));
    inactive.push(expiring);
    for token in inactive {
        let reply = f.introspect(&client, &token).await;
        assert_eq!(reply.status, 200, "{reply:#?}");
        assert_eq!(reply.body, r#"{"active":false}"#, "{token}");
    }
}

#[tokio::test]
async fn introspection_requires_an_authorized_caller() {
    let f = fixture().await;
    let client = f.app_client().await;
    let token = f.client_token(&client, None).await;
    let token = str_field(&token, "access_token");
    let plain = f
        .oauth_client("acct-1", &["db:read"], ClientRegistration::new())
        .await;
    assert_error(
        &f.introspect(&plain, token).await,
        403,
        "insufficient_scope",
    );
    let reply = f
        .post("/introspect", None, &[("token", token.to_owned())])
        .await;
    assert_error(&reply, 401, "invalid_client");
    // An access token holding the scope is still not a client.
    let reply = f
        .post(
            "/introspect",
            Some(&format!("Bearer {token}")),
            &[("token", token.to_owned())],
        )
        .await;
    assert_error(&reply, 401, "invalid_client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uses_of_one_refresh_token_yield_at_most_one_successor() {
    let f = fixture().await;
    let client = f.app_client().await;
    let tokens = f.user_tokens(&client, "user-7", None).await;
    let body = form(&with(
        client.post(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", str_field(&tokens, "refresh_token")),
        ],
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, body) = (f.client.clone(), body.clone());
        tasks.spawn(async move { http.post_form("/oauth/token", None, &body).await });
    }
    let replies = tasks.join_all().await;
    let winners: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    assert!(winners.len() <= 1, "{replies:#?}");
    for loser in replies.iter().filter(|r| r.status != 200) {
        assert_error(loser, 400, "invalid_grant");
    }
    // The others were reuse: the family is revoked, the winner's successor with it.
    if let Some(winner) = winners.first() {
        let successor = str_field(&winner.json(), "refresh_token").to_owned();
        assert_error(
            &f.refresh(&client, &successor, None).await,
            400,
            "invalid_grant",
        );
    }
}

/// The flows that depend on the grant store, with tokens and grants both in PostgreSQL.
#[cfg(all(feature = "postgres", feature = "sqlite"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotation_reuse_and_code_replay_over_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let tokens = stores::postgres(&url).await;
    let grants = apitoken::oauth::PostgresGrantStore::with_schema(
        tokens.pool().clone(),
        &stores::unique_name("g"),
    )
    .expect("schema name");
    grants.migrate().await.expect("migrate");
    let f = fixture_with(tokens, grants).await;
    let client = f.app_client().await;

    let first = f.user_tokens(&client, "user-7", Some("db:read")).await;
    let rt1 = str_field(&first, "refresh_token");
    let second = f.refresh(&client, rt1, None).await;
    assert_eq!(second.status, 200, "{second:#?}");
    let second = second.json();
    let at2 = str_field(&second, "access_token");
    assert_eq!(f.api(at2).await.json()["owner"], "user-7");
    assert_error(&f.refresh(&client, rt1, None).await, 400, "invalid_grant");
    assert_error(
        &f.refresh(&client, str_field(&second, "refresh_token"), None)
            .await,
        400,
        "invalid_grant",
    );
    assert_eq!(f.api(at2).await.status, 401);
    assert_eq!(f.api(str_field(&first, "access_token")).await.status, 401);

    let code = f.code(&client, "user-8", None).await;
    let given = f.redeem(&client, &code, VERIFIER).await;
    assert_eq!(given.status, 200, "{given:#?}");
    assert_error(
        &f.redeem(&client, &code, VERIFIER).await,
        400,
        "invalid_grant",
    );
    assert_eq!(
        f.api(str_field(&given.json(), "access_token")).await.status,
        401
    );
}

#[tokio::test]
async fn the_maximum_refresh_lifetime_counts_from_the_authorization_not_the_redemption() {
    let max = TimeDelta::days(10);
    let (f, _) = fixture_configured(MemoryStore::new(), MemoryGrantStore::new(), |builder, _| {
        builder.refresh_token_max_lifetime(max)
    })
    .await;
    let client = f.app_client().await;
    // The user authorizes at start(); the client redeems the code 50 s later.
    let code = f.code(&client, "user-7", None).await;
    f.clock.set(start() + TimeDelta::seconds(50));
    let reply = f.redeem(&client, &code, VERIFIER).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    let rt = str_field(&reply.json(), "refresh_token").to_owned();
    // Ten days and ten seconds after the authorization: past the documented limit.
    f.clock.set(start() + max + TimeDelta::seconds(10));
    assert_error(&f.refresh(&client, &rt, None).await, 400, "invalid_grant");
}

// ---- bounded refresh families (a generation per family) ----

/// The id a refresh token's text carries.
fn refresh_id(text: &str) -> TokenId {
    *apitoken::oauth::refresh_token_format()
        .parse(text)
        .expect("a refresh token")
        .id()
        .expect("with an id")
}

/// A well-formed refresh token (valid checksum, random secret) of `family`'s generation
/// `generation`, as anyone who knows the family's id can write.
fn forged_refresh(family: &str, generation: &str) -> String {
    let id: TokenId = format!("{family}{generation}").parse().unwrap();
    apitoken::oauth::refresh_token_format()
        .generate(Some(&id))
        .unwrap()
        .expose_secret()
        .to_owned()
}

async fn families_stay_bounded_and_old_generations_still_revoke<G: GrantStore + 'static>(
    grants: Arc<G>,
) {
    let f = fixture_with(MemoryStore::new(), Arc::clone(&grants)).await;
    let client = f.app_client().await;
    let first = f.user_tokens(&client, "user-7", None).await;
    let mut refresh = vec![str_field(&first, "refresh_token").to_owned()];
    let mut access = vec![str_field(&first, "access_token").to_owned()];
    for _ in 0..5 {
        let reply = f.refresh(&client, refresh.last().unwrap(), None).await;
        assert_eq!(reply.status, 200, "{reply:#?}");
        let reply = reply.json();
        refresh.push(str_field(&reply, "refresh_token").to_owned());
        access.push(str_field(&reply, "access_token").to_owned());
    }
    // Ids: the family's 12 characters, then the generation in 8 base62 digits.
    let family = &refresh_id(&refresh[0]).as_str()[..12].to_owned();
    for (n, text) in refresh.iter().enumerate() {
        assert_eq!(
            refresh_id(text).as_str(),
            format!("{family}{n:08}"),
            "generation {n}"
        );
    }
    // Six generations issued; the store holds the first and the last two only.
    for (n, text) in refresh.iter().enumerate() {
        let held = grants.refresh_token(&refresh_id(text)).await.unwrap();
        assert_eq!(held.is_some(), n == 0 || n >= 4, "generation {n}");
    }
    let family_id: TokenId = family.parse().unwrap();
    assert_eq!(
        grants.family(&family_id).await.unwrap().unwrap().generation,
        5
    );

    // Another client presenting a forgotten generation changes nothing.
    let other = f.app_client().await;
    assert_error(
        &f.refresh(&other, &refresh[1], None).await,
        400,
        "invalid_grant",
    );
    // Nor does a generation the family never reached, written with a valid checksum.
    for generation in ["00000006", "00000009", "zzzzzzzz"] {
        let forged = forged_refresh(family, generation);
        assert_error(
            &f.refresh(&client, &forged, None).await,
            400,
            "invalid_grant",
        );
    }
    // Nor a wrong secret for the current id (held, so checked by hash).
    let wrong = forged_refresh(family, "00000005");
    assert_error(
        &f.refresh(&client, &wrong, None).await,
        400,
        "invalid_grant",
    );
    assert!(
        grants
            .family(&family_id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    assert_eq!(f.api(access.last().unwrap()).await.status, 200);

    // Generation 1, long forgotten, from its own client: a rotated token came back. The
    // grant is revoked with every access token it issued that still works.
    assert_error(
        &f.refresh(&client, &refresh[1], None).await,
        400,
        "invalid_grant",
    );
    assert_error(
        &f.refresh(&client, refresh.last().unwrap(), None).await,
        400,
        "invalid_grant",
    );
    assert_eq!(f.api(access.last().unwrap()).await.status, 401);
}

#[tokio::test]
async fn a_family_holds_three_refresh_tokens_and_an_old_generation_still_revokes_it() {
    families_stay_bounded_and_old_generations_still_revoke(Arc::new(MemoryGrantStore::new())).await;
}

#[cfg(all(feature = "postgres", feature = "sqlite"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_postgres_a_family_holds_three_refresh_tokens_and_an_old_generation_revokes_it() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let tokens = stores::postgres(&url).await;
    let grants = apitoken::oauth::PostgresGrantStore::with_schema(
        tokens.pool().clone(),
        &stores::unique_name("g"),
    )
    .expect("schema name");
    grants.migrate().await.expect("migrate");
    families_stay_bounded_and_old_generations_still_revoke(Arc::new(grants)).await;
}

#[tokio::test]
async fn a_forgotten_generation_is_inactive_at_introspection_and_revocable() {
    let f = fixture().await;
    let client = f.app_client().await;
    let first = f.user_tokens(&client, "user-7", None).await;
    let rt0 = str_field(&first, "refresh_token").to_owned();
    let rt1 = str_field(
        &f.refresh(&client, &rt0, None).await.json(),
        "refresh_token",
    )
    .to_owned();
    let second = f.refresh(&client, &rt1, None).await.json();
    let rt2 = str_field(&second, "refresh_token").to_owned();
    let third = f.refresh(&client, &rt2, None).await.json();
    let rt3 = str_field(&third, "refresh_token").to_owned();
    // rt1 is forgotten now (generation 0 and the last two are kept): inactive, and
    // introspecting it revokes nothing.
    let reply = f.introspect(&client, &rt1).await;
    assert_eq!(reply.json(), json!({ "active": false }));
    assert_eq!(f.introspect(&client, &rt3).await.json()["active"], true);
    // Revoking it (RFC 7009) revokes its grant, as revoking any rotated token does.
    assert_eq!(f.revoke(&client, &rt1).await.status, 200);
    assert_eq!(f.introspect(&client, &rt3).await.json()["active"], false);
    assert_eq!(f.api(str_field(&third, "access_token")).await.status, 401);
    let _ = second;
}

#[tokio::test]
async fn refresh_tokens_issued_before_generations_keep_working() {
    let grants = Arc::new(MemoryGrantStore::new());
    let f = fixture_with(MemoryStore::new(), Arc::clone(&grants)).await;
    let client = f.app_client().await;
    // A token of the earlier format: `rt_`, a random 12-character id, no generation.
    let legacy = apitoken::TokenFormat::builder()
        .prefix("rt_")
        .separator(apitoken::Separator::Underscore)
        .build()
        .unwrap();
    let id: TokenId = "LegacyTok123".parse().unwrap();
    let text = legacy.generate(Some(&id)).unwrap();
    let parsed = legacy.parse(text.expose_secret()).unwrap();
    let hash = apitoken::SecretHasher::sha256().hash(parsed.secret().as_bytes());
    let family_id: TokenId = "LegacyFam123".parse().unwrap();
    let family = GrantFamily::new(
        family_id,
        client.id.parse().unwrap(),
        Owner::new("user-7").unwrap(),
        ScopeSet::parse("db:read").unwrap(),
        start(),
    );
    grants
        .insert_family(
            family,
            RefreshTokenRecord::new(id, family_id, hash, start()),
        )
        .await
        .unwrap();

    let reply = f.refresh(&client, text.expose_secret(), None).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    let next = str_field(&reply.json(), "refresh_token").to_owned();
    assert_eq!(refresh_id(&next).as_str(), "LegacyFam12300000001");
    // The legacy token is the rotated one now, held by hash: its reuse revokes the grant.
    assert_error(
        &f.refresh(&client, text.expose_secret(), None).await,
        400,
        "invalid_grant",
    );
    assert_error(&f.refresh(&client, &next, None).await, 400, "invalid_grant");
}
