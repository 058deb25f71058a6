//! A fixed workload for profilers: `valgrind --tool=callgrind` counts instructions, which do
//! not move with the machine's noise, so two builds compare exactly.
//!
//! ```sh
//! cargo build --release --example profile
//! valgrind --tool=callgrind target/release/examples/profile valid 100000
//! ```
//!
//! The first argument picks what each iteration verifies (`valid`, cycling through the
//! 10,000 tokens in the store; `unknown`, 10,000 ids no record has; `wrong`, the known ids
//! with another secret; `badsum`, a wrong checksum; `layer`, a request through an axum route
//! behind `AuthLayer`, and `no_auth`, the same route without it), the second how many times. It also prints
//! the size of the verification future, which every caller holds or boxes.

use std::hint::black_box;

use apitoken::middleware::AuthLayer;
use apitoken::{MemoryStore, ScopeRequirement, TokenFormat, Verifier};
use axum::Router;
use axum::routing::get;
use tower::ServiceExt;

// The benchmarks' own helpers: the same tokens, the same no-executor poll, the same request.
#[path = "../benches/common/mod.rs"]
mod common;
use common::{hello, issue, now, request};

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "valid".to_owned());
    let n: usize = args.next().map_or(100_000, |n| n.parse().expect("a count"));
    let verifier = Verifier::builder(MemoryStore::with_capacity(10_000)).build();
    let tokens: Vec<String> = issue(&verifier, 10_000)
        .iter()
        .map(|t| t.expose_secret().to_owned())
        .collect();
    let need = ScopeRequirement::all(["vps:read"]).expect("a requirement");
    // Refusals cycle through as many distinct inputs as the valid tokens, so each meets a
    // record as cold in the CPU's cache as a valid token's (with a cache model:
    // `valgrind --tool=callgrind --cache-sim=yes`).
    let canonical = TokenFormat::canonical();
    let unknown: Vec<String> = (0..tokens.len())
        .map(|i| {
            let id = format!("zz{i:010}").parse().expect("an id");
            let token = canonical.generate(Some(&id)).expect("a token");
            token.expose_secret().to_owned()
        })
        .collect();
    let wrong: Vec<String> = tokens
        .iter()
        .map(|token| {
            let (id, _) = token.split_once('.').expect("a canonical token");
            let token = canonical.generate(Some(&id.parse().expect("an id")));
            token.expect("a token").expose_secret().to_owned()
        })
        .collect();
    println!(
        "future bytes: {}",
        std::mem::size_of_val(&verifier.verify(&tokens[0], &need))
    );
    let badsum = {
        let mut bad = tokens[7].clone();
        let last = bad.pop().expect("a character");
        bad.push(if last == 'A' { 'B' } else { 'A' });
        bad
    };
    if what == "layer" || what == "no_auth" {
        let routes = || Router::new().route("/api/v1/vps", get(hello));
        let router = if what == "layer" {
            routes()
                .layer(AuthLayer::new(verifier.clone()).require(need.clone()))
                .with_state(())
        } else {
            routes().with_state(())
        };
        let mut ok = 0usize;
        for i in 0..n {
            let request = request(&tokens[i % tokens.len()]);
            let response = now(router.clone().oneshot(black_box(request))).expect("a response");
            ok += usize::from(response.status().is_success());
        }
        println!("{what}: {ok} of {n} answered 200");
        return;
    }
    let mut accepted = 0usize;
    for i in 0..n {
        let token: &str = match what.as_str() {
            "valid" => &tokens[i % tokens.len()],
            "unknown" => &unknown[i % unknown.len()],
            "wrong" => &wrong[i % wrong.len()],
            "badsum" => &badsum,
            other => panic!("unknown workload {other}"),
        };
        accepted += usize::from(now(verifier.verify(black_box(token), &need)).is_ok());
    }
    println!("{what}: {accepted} of {n} accepted");
}
