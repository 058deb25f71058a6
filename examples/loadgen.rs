//! HTTP load test: the quickstart application's `GET /api/v1/vps` with `AuthLayer`, against
//! the same route and handler without it, both on loopback.
//!
//! ```sh
//! cargo run --release --example loadgen -- --requests 50000 --seconds 10
//! cargo run --release --example loadgen -- --serve --seconds 60   # for wrk; prints URLs, token
//! ```
//!
//! Options: `--requests N` (per run, default 50,000), `--seconds S` (per run, a hard stop,
//! default 10; in `--serve` mode, how long to serve), `--connections C` (concurrent keep-alive
//! HTTP/1.1 connections, default 16), `--runs R` (default 3), `--warmup N` (requests per
//! server before the first run, default 2,000), `--serve`.
//!
//! Both servers listen on `127.0.0.1:0` only. Both get `Authorization: Bearer <token>` (the one
//! without auth ignores it), so requests are the same size. Every response must be 200 with
//! the body `[]`; anything else counts as an error.
//!
//! Threads: the servers run on one OS thread with a current-thread Tokio runtime, the client
//! on another with its own, so each side has one core of this 2-core machine and neither
//! runtime's scheduler steals the other's work. One runtime with two workers would let the
//! client and the server share and contend for both cores, and measure the client as much as
//! the server.
//!
//! Runs alternate (auth, no auth, auth, ...) `--runs` times; the report is the median of the
//! runs for each figure, and the ratio of the median throughputs.

#[path = "quickstart.rs"]
#[allow(dead_code)]
mod quickstart;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apitoken::{MemoryStore, NewToken, Owner, Verifier};
use axum::extract::State;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::oneshot;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Options {
    requests: usize,
    seconds: u64,
    connections: usize,
    runs: usize,
    warmup: usize,
    serve: bool,
}

fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        requests: 50_000,
        seconds: 10,
        connections: 16,
        runs: 3,
        warmup: 2_000,
        serve: false,
    };
    fn number<T: std::str::FromStr>(name: &str, value: Option<String>) -> Result<T, String> {
        let value = value.ok_or(format!("{name} needs a number"))?;
        value
            .replace('_', "")
            .parse()
            .map_err(|_| format!("{name}: {value:?} is not a number"))
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--requests" => options.requests = number(&arg, args.next())?,
            "--seconds" => options.seconds = number(&arg, args.next())?,
            "--connections" => options.connections = number(&arg, args.next())?,
            "--runs" => options.runs = number(&arg, args.next())?,
            "--warmup" => options.warmup = number(&arg, args.next())?,
            "--serve" => options.serve = true,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: loadgen [--requests N] [--seconds S] \
                     [--connections C] [--runs R] [--warmup N] [--serve]"
                ));
            }
        }
    }
    if options.connections == 0 || options.runs == 0 || options.seconds == 0 {
        return Err("--connections, --runs and --seconds must be at least 1".into());
    }
    Ok(options)
}

// ---------------------------------------------------------------------------------------------
// Servers

/// What the server thread hands the client: two loopback URLs, a token, connection counters.
struct Servers {
    auth_url: String,
    plain_url: String,
    token: String,
    auth_accepted: Arc<AtomicUsize>,
    plain_accepted: Arc<AtomicUsize>,
}

/// The quickstart handler's shape without a `Principal`: the same lock, filter and JSON.
#[derive(Clone, Serialize)]
struct Vps {
    id: u64,
    name: String,
    owner: String,
}

#[derive(Clone, Default)]
struct PlainState {
    servers: Arc<Mutex<BTreeMap<u64, Vps>>>,
}

async fn list_vps_plain(State(state): State<PlainState>) -> Json<Vec<Vps>> {
    let servers = state.servers.lock().expect("not poisoned");
    let mine = servers
        .values()
        .filter(|vps| vps.owner == "team-1")
        .cloned()
        .collect();
    Json(mine)
}

/// `GET /api/v1/vps` as quickstart nests it, with no auth layer.
fn plain_app() -> Router {
    let vps = Router::new()
        .route("/vps", get(list_vps_plain))
        .with_state(PlainState::default());
    Router::new().nest("/api/v1", vps)
}

async fn bind(
    app: Router,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(String, Arc<AtomicUsize>), BoxError> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let listener = listener.tap_io(move |tcp| {
        counter.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let mut shutdown = shutdown;
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await;
    });
    Ok((format!("http://{addr}/api/v1/vps"), accepted))
}

/// Starts both servers on their own thread and runtime; stops them when `stop` is sent.
fn start_servers(
    stop: oneshot::Receiver<()>,
) -> Result<(std::thread::JoinHandle<()>, Servers), BoxError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Servers, String>>();
    let thread = std::thread::Builder::new()
        .name("servers".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let started = async {
                    let verifier = Verifier::builder(MemoryStore::new())
                        .format(quickstart::token_format())
                        .build();
                    let new =
                        NewToken::new("loadgen", Owner::new("team-1")?).scopes(["vps:read"])?;
                    let token = verifier.issuer().issue(new).await?.token;
                    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
                    let (auth_url, auth_accepted) =
                        bind(quickstart::app(verifier), shutdown_rx.clone()).await?;
                    let (plain_url, plain_accepted) = bind(plain_app(), shutdown_rx).await?;
                    let servers = Servers {
                        auth_url,
                        plain_url,
                        token: token.expose_secret().to_owned(),
                        auth_accepted,
                        plain_accepted,
                    };
                    Ok::<_, BoxError>((servers, shutdown_tx))
                };
                match started.await {
                    Ok((servers, shutdown_tx)) => {
                        let _ = ready_tx.send(Ok(servers));
                        let _ = stop.await;
                        let _ = shutdown_tx.send(true);
                        // Lets the serve tasks see the signal before the runtime drops them.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.to_string()));
                    }
                }
            });
        })?;
    let servers = ready_rx.recv()??;
    Ok((thread, servers))
}

// ---------------------------------------------------------------------------------------------
// Client

struct RunResult {
    completed: usize,
    errors: usize,
    elapsed: Duration,
    /// Sorted, nanoseconds, successful requests only.
    latencies: Vec<u64>,
    connections: usize,
}

impl RunResult {
    fn rps(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }

    /// The exact percentile: the smallest latency with at least `p` % of them at or below it.
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        Duration::from_nanos(self.latencies[rank.clamp(1, self.latencies.len()) - 1])
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client(connections: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build(connector)
}

/// `requests` GETs over `connections` concurrent workers, stopping at `limit` in any case.
async fn run(
    client: &HttpClient,
    url: &str,
    token: &HeaderValue,
    requests: usize,
    connections: usize,
    limit: Duration,
    accepted: &AtomicUsize,
) -> RunResult {
    let uri: hyper::Uri = url.parse().expect("a valid URL");
    let issued = Arc::new(AtomicUsize::new(0));
    let accepted_before = accepted.load(Ordering::Relaxed);
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let client = client.clone();
        let uri = uri.clone();
        let token = token.clone();
        let issued = Arc::clone(&issued);
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(requests / connections + 1);
            let mut errors = 0usize;
            while issued.fetch_add(1, Ordering::Relaxed) < requests {
                let request = Request::get(uri.clone())
                    .header(AUTHORIZATION, token.clone())
                    .body(Empty::<Bytes>::new())
                    .expect("a valid request");
                let sent = Instant::now();
                let exchange = async {
                    let response = client.request(request).await?;
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok::<_, BoxError>(status == hyper::StatusCode::OK && &body[..] == b"[]")
                };
                match tokio::time::timeout_at(deadline, exchange).await {
                    Ok(Ok(true)) => latencies.push(sent.elapsed().as_nanos() as u64),
                    Ok(Ok(false)) | Ok(Err(_)) => errors += 1,
                    // The hard stop: a request cut off at the deadline is not counted.
                    Err(_) => break,
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::with_capacity(requests);
    let mut errors = 0;
    while let Some(joined) = workers.join_next().await {
        let (mine, my_errors) = joined.expect("a worker does not panic");
        latencies.extend(mine);
        errors += my_errors;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    RunResult {
        completed: latencies.len(),
        errors,
        elapsed,
        latencies,
        connections: accepted.load(Ordering::Relaxed) - accepted_before,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn micros(d: f64) -> String {
    format!("{:.0} µs", d * 1e6)
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn report(name: &str, run: usize, r: &RunResult) {
    println!(
        "run {run} {name:<7} {:>7} ok {:>3} errors {:>6.2} s {:>9} req/s  p50 {:>7}  p99 {:>7}  ({} new connections)",
        r.completed,
        r.errors,
        r.elapsed.as_secs_f64(),
        thousands(r.rps()),
        micros(r.percentile(50.0).as_secs_f64()),
        micros(r.percentile(99.0).as_secs_f64()),
        r.connections,
    );
}

fn main() -> Result<(), BoxError> {
    let options = parse_options(std::env::args().skip(1))?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let (server_thread, servers) = start_servers(stop_rx)?;

    if options.serve {
        println!("auth:    {}", servers.auth_url);
        println!("no auth: {}", servers.plain_url);
        println!("token:   {}", servers.token);
        println!("serving for {} s", options.seconds);
        std::thread::sleep(Duration::from_secs(options.seconds));
    } else {
        measure(&options, &servers)?;
    }

    let _ = stop_tx.send(());
    server_thread
        .join()
        .expect("the server thread does not panic");
    Ok(())
}

fn measure(options: &Options, servers: &Servers) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = HeaderValue::from_str(&format!("Bearer {}", servers.token))?;
    let limit = Duration::from_secs(options.seconds);
    let c = options.connections;
    let (results_auth, results_plain) = std::thread::Builder::new()
        .name("client".into())
        .spawn({
            let (auth_url, plain_url) = (servers.auth_url.clone(), servers.plain_url.clone());
            let (auth_acc, plain_acc) = (
                Arc::clone(&servers.auth_accepted),
                Arc::clone(&servers.plain_accepted),
            );
            let (requests, runs, warmup) = (options.requests, options.runs, options.warmup);
            move || {
                runtime.block_on(async move {
                    let client = client(c);
                    if warmup > 0 {
                        for (url, acc) in [(&auth_url, &auth_acc), (&plain_url, &plain_acc)] {
                            let w = run(&client, url, &token, warmup, c, limit, acc).await;
                            assert_eq!(w.errors, 0, "warm-up against {url} had errors");
                        }
                    }
                    let (mut auth, mut plain) = (Vec::new(), Vec::new());
                    for i in 1..=runs {
                        let a = run(&client, &auth_url, &token, requests, c, limit, &auth_acc);
                        let a = a.await;
                        report("auth", i, &a);
                        auth.push(a);
                        let p = run(&client, &plain_url, &token, requests, c, limit, &plain_acc);
                        let p = p.await;
                        report("no auth", i, &p);
                        plain.push(p);
                    }
                    (auth, plain)
                })
            }
        })?
        .join()
        .expect("the client thread does not panic");

    let summary = |results: &[RunResult]| {
        (
            median(results.iter().map(RunResult::rps).collect()),
            median(
                results
                    .iter()
                    .map(|r| r.percentile(50.0).as_secs_f64())
                    .collect(),
            ),
            median(
                results
                    .iter()
                    .map(|r| r.percentile(99.0).as_secs_f64())
                    .collect(),
            ),
            results.iter().map(|r| r.errors).sum::<usize>(),
        )
    };
    let (a_rps, a_p50, a_p99, a_err) = summary(&results_auth);
    let (p_rps, p_p50, p_p99, p_err) = summary(&results_plain);
    let ratio = a_rps / p_rps;
    let per_run: Vec<String> = results_auth
        .iter()
        .zip(&results_plain)
        .map(|(a, p)| format!("{:.2}", a.rps() / p.rps()))
        .collect();
    println!();
    println!(
        "median of {} runs, {c} connections: auth {} req/s (p50 {}, p99 {}), no auth {} req/s \
         (p50 {}, p99 {}); ratio {ratio:.3}; per-run ratios {}; errors {}",
        options.runs,
        thousands(a_rps),
        micros(a_p50),
        micros(a_p99),
        thousands(p_rps),
        micros(p_p50),
        micros(p_p99),
        per_run.join(", "),
        a_err + p_err,
    );
    println!();
    println!("| target | benchmark | median | ratio | result |");
    println!("|---|---|---|---|---|");
    println!(
        "| HTTP throughput with auth ≥ 90 % | examples/loadgen ({c} connections, median of {}) \
         | {} vs {} req/s; p50 {} vs {}, p99 {} vs {} | {:.1} % | {} |",
        options.runs,
        thousands(a_rps),
        thousands(p_rps),
        micros(a_p50),
        micros(p_p50),
        micros(a_p99),
        micros(p_p99),
        ratio * 100.0,
        if a_err + p_err > 0 {
            "ERRORS"
        } else if ratio >= 0.9 {
            "met"
        } else {
            "MISSED"
        },
    );
    if a_err + p_err > 0 {
        return Err(format!("{} requests failed", a_err + p_err).into());
    }
    Ok(())
}
