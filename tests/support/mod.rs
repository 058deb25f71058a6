//! Shared helpers for the end-to-end tests: a loopback server, an HTTP client, `curl`, and a
//! token store that can be switched off.
//!
//! Every helper is bounded in time: requests time out after [`TIMEOUT`], `curl` gets
//! `--max-time`.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::future::Future;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use apitoken::{
    MemoryStore, Owner, SecretHash, StoreError, StoredToken, TokenFormat, TokenId, TokenRecord,
    TokenStore,
};
use chrono::{DateTime, Utc};
use http::header::{HeaderMap, HeaderName};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The longest any single request may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub const UNAUTHENTICATED: &str = r#"{"message":"Unauthenticated."}"#;
pub const UNAUTHORIZED: &str = r#"{"message":"This action is unauthorized."}"#;
pub const BAD_REQUEST: &str = r#"{"message":"Bad request."}"#;
pub const UNAVAILABLE: &str = r#"{"message":"Service unavailable."}"#;

pub const BARE_CHALLENGE: &str = r#"Bearer realm="api""#;
pub const INVALID_TOKEN: &str = r#"Bearer realm="api", error="invalid_token""#;
pub const INVALID_REQUEST: &str = r#"Bearer realm="api", error="invalid_request""#;

/// A server on an ephemeral loopback port, stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Serves `app` on `127.0.0.1:0`.
    pub async fn start(app: axum::Router) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind an ephemeral loopback port");
        let addr = listener.local_addr().expect("local address");
        assert!(addr.ip().is_loopback());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("server runs");
        });
        Self { addr, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The only value of `name`; fails if the header is missing or repeated.
    pub fn header(&self, name: &str) -> &str {
        let mut values = self.headers.get_all(name).iter();
        let value = values
            .next()
            .unwrap_or_else(|| panic!("no {name} header in {self:#?}"));
        assert!(values.next().is_none(), "{name} repeated in {self:#?}");
        value.to_str().expect("visible ASCII header")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The headers without `date`, which changes from second to second.
    pub fn stable_headers(&self) -> HeaderMap {
        let mut headers = self.headers.clone();
        headers.remove(http::header::DATE);
        headers
    }

    /// Asserts an auth refusal from the middleware: status, exact body, JSON content type,
    /// `no-store`, and the challenge (`None`: no `WWW-Authenticate` at all).
    #[track_caller]
    pub fn assert_refusal(&self, status: u16, body: &str, challenge: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "{self:#?}");
        assert_eq!(self.body, body, "{self:#?}");
        assert_eq!(self.header("content-type"), "application/json");
        assert_eq!(self.header("cache-control"), "no-store");
        match challenge {
            Some(challenge) => assert_eq!(self.header("www-authenticate"), challenge),
            None => assert!(
                self.headers.get("www-authenticate").is_none(),
                "unexpected challenge in {self:#?}"
            ),
        }
    }
}

/// An HTTP/1.1 client over real TCP.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Client {
    pub fn new(server: &Server) -> Self {
        Self {
            inner: HyperClient::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{}", server.addr),
        }
    }

    /// A request builder for `path` on the server.
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
    }

    /// Sends `builder` with `body` (JSON when given) and reads the whole response.
    pub async fn send(&self, builder: http::request::Builder, body: Option<&str>) -> Reply {
        let builder = match body {
            Some(_) => builder.header("content-type", "application/json"),
            None => builder,
        };
        self.send_raw(builder, body.unwrap_or("")).await
    }

    /// Sends `builder` with `body` as it is (no content type added) and reads the whole
    /// response.
    pub async fn send_raw(&self, builder: http::request::Builder, body: &str) -> Reply {
        let request = builder
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("a valid request");
        let exchange = async {
            let response = self.inner.request(request).await.expect("response");
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("whole body").to_bytes();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
            }
        };
        within(exchange).await
    }

    /// `method path` with `Authorization: <authorization>` when given.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut builder = self.request(method, path);
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        self.send(builder, body).await
    }

    /// `POST path` with a form body (`application/x-www-form-urlencoded`) and
    /// `Authorization: <authorization>` when given.
    pub async fn post_form(&self, path: &str, authorization: Option<&str>, body: &str) -> Reply {
        let mut builder = self
            .request(Method::POST, path)
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        self.send_raw(builder, body).await
    }

    /// `method path` with `Authorization: Bearer <token>`.
    pub async fn bearer(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> Reply {
        self.call(method, path, Some(&format!("Bearer {token}")), body)
            .await
    }
}

/// Runs `future`, failing the test if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .expect("finished within the timeout")
}

/// The part of `token` that is hashed and must never leak.
pub fn secret_part(format: &TokenFormat, token: &str) -> String {
    format
        .parse(token)
        .expect("a token of this format")
        .secret()
        .to_owned()
}

/// The id that `token` carries.
pub fn token_id(format: &TokenFormat, token: &str) -> TokenId {
    *format
        .parse(token)
        .expect("a token of this format")
        .id()
        .expect("the format carries ids")
}

/// `token` with one character of its secret changed: same length and alphabet, wrong
/// checksum.
pub fn with_one_char_changed(format: &TokenFormat, token: &str) -> String {
    let secret = secret_part(format, token);
    let at = token.find(&secret).expect("secret inside token") + secret.len() / 2;
    let mut bytes = token.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ASCII")
}

/// A response parsed from `curl -i` output.
#[derive(Debug)]
pub struct CurlReply {
    pub status: u16,
    /// Lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl CurlReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        let first = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "{name} repeated in {self:#?}");
        first
    }
}

pub const CURL: &str = "/usr/bin/curl";

/// Whether `curl` can be used; prints the skip notice when not.
pub fn curl_available() -> bool {
    let found = std::path::Path::new(CURL).exists();
    if !found {
        println!("skipped: curl not found");
    }
    found
}

/// Runs `curl -i` against `url` with `extra` arguments, on a blocking thread, bounded in time.
/// Never uses a proxy, whatever the environment says.
pub async fn curl(url: String, extra: Vec<String>) -> CurlReply {
    let run = tokio::task::spawn_blocking(move || {
        let output = Command::new(CURL)
            .args([
                "-sS",
                "-i",
                "--noproxy",
                "*",
                "--max-time",
                "10",
                "--http1.1",
            ])
            .args(&extra)
            .arg(&url)
            .env_remove("CURL_HOME")
            .output()
            .expect("run curl");
        assert!(
            output.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        parse_curl(&String::from_utf8(output.stdout).expect("UTF-8 output"))
    });
    within(run).await.expect("curl thread")
}

fn parse_curl(output: &str) -> CurlReply {
    let (head, body) = output
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header/body split in {output:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    CurlReply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A [`MemoryStore`] whose lookups fail while [`fail`](Self::fail) is set, as a database that
/// went away would.
#[derive(Debug, Default)]
pub struct FlakyStore {
    inner: MemoryStore,
    fail: Arc<AtomicBool>,
}

impl FlakyStore {
    /// The store and the switch that breaks it.
    pub fn new() -> (Self, Arc<AtomicBool>) {
        let store = Self::default();
        let switch = Arc::clone(&store.fail);
        (store, switch)
    }

    fn down(&self) -> bool {
        self.fail.load(Ordering::SeqCst)
    }
}

fn outage() -> StoreError {
    StoreError::unavailable("injected outage")
}

impl TokenStore for FlakyStore {
    fn insert(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.insert(record, hash)
    }

    fn next_id(&self) -> impl Future<Output = Result<TokenId, StoreError>> + Send {
        self.inner.next_id()
    }

    fn get(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        let down = self.down();
        let lookup = self.inner.get(id);
        async move { if down { Err(outage()) } else { lookup.await } }
    }

    fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        let down = self.down();
        let lookup = self.inner.find_by_hash(hash);
        async move { if down { Err(outage()) } else { lookup.await } }
    }

    fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
        self.inner.list_by_owner(owner)
    }

    fn revoke(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.inner.revoke(id, at)
    }

    fn revoke_owner(
        &self,
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        self.inner.revoke_owner(owner, at)
    }

    fn record_last_used(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.record_last_used(id, at)
    }
}

/// A [`MemoryStore`] whose next insert, once [`Gate::arm`]ed, stops at a gate: the test
/// learns it arrived ([`Gate::arrived`]), does what it wants meanwhile, and lets it through
/// ([`Gate::release`]). For interleavings that sleeps would only make likely.
#[derive(Debug, Default)]
pub struct GatedStore {
    inner: MemoryStore,
    gate: Arc<Gate>,
}

/// The gate of a [`GatedStore`].
#[derive(Debug)]
pub struct Gate {
    armed: AtomicBool,
    fail_rotate: AtomicBool,
    arrived: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            armed: AtomicBool::new(false),
            fail_rotate: AtomicBool::new(false),
            arrived: tokio::sync::Notify::new(),
            release: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Gate {
    /// Makes the next rotation fail as a store outage would.
    pub fn fail_next_rotate(&self) {
        self.fail_rotate.store(true, Ordering::SeqCst);
    }

    /// Stops the next insert.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Waits until an armed insert has stopped at the gate (at most [`TIMEOUT`]).
    pub async fn arrived(&self) {
        tokio::time::timeout(TIMEOUT, self.arrived.notified())
            .await
            .expect("an insert reached the gate");
    }

    /// Lets the stopped insert through.
    pub fn release(&self) {
        self.release.add_permits(1);
    }
}

impl GatedStore {
    /// The gate, to arm and release from the test.
    pub fn gate(&self) -> Arc<Gate> {
        Arc::clone(&self.gate)
    }
}

impl Gate {
    /// Stops here if armed, until released.
    async fn pass(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.arrived.notify_one();
            let permit = tokio::time::timeout(TIMEOUT, self.release.acquire())
                .await
                .expect("the test released the gate")
                .expect("the gate is open");
            permit.forget();
        }
    }
}

impl TokenStore for GatedStore {
    async fn insert(&self, record: TokenRecord, hash: SecretHash) -> Result<(), StoreError> {
        self.gate.pass().await;
        self.inner.insert(record, hash).await
    }

    /// Stops at the gate too, before the new token is stored.
    fn rotate(
        &self,
        old: &TokenId,
        retire: apitoken::Retire,
        new: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let old = *old;
        async move {
            self.gate.pass().await;
            if self.gate.fail_rotate.swap(false, Ordering::SeqCst) {
                return Err(StoreError::unavailable("injected outage"));
            }
            self.inner.rotate(&old, retire, new, hash).await
        }
    }

    fn next_id(&self) -> impl Future<Output = Result<TokenId, StoreError>> + Send {
        self.inner.next_id()
    }

    fn get(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        self.inner.get(id)
    }

    fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        self.inner.find_by_hash(hash)
    }

    fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
        self.inner.list_by_owner(owner)
    }

    fn revoke(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.inner.revoke(id, at)
    }

    fn revoke_owner(
        &self,
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        self.inner.revoke_owner(owner, at)
    }

    fn record_last_used(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.record_last_used(id, at)
    }
}

/// Names that must never appear in captured output for `token`: the whole text and its secret.
pub fn forbidden_strings(format: &TokenFormat, token: &str) -> [String; 2] {
    [token.to_owned(), secret_part(format, token)]
}

/// `HeaderName` from a static lower-case string.
pub fn name(text: &'static str) -> HeaderName {
    HeaderName::from_static(text)
}
