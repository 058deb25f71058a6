//! The benchmark suite: every figure next to a hand-written floor measured in the same run.
//!
//! The floor is the least any verifier must do for a canonical token: split the text, SHA-256
//! the secret, look the id up in a hash map, compare 32 bytes in constant time.
//!
//! ```sh
//! cargo bench --bench verify            # everything (a few minutes)
//! cargo bench --bench verify -- verify/  # one group
//! benches/report.sh                      # the same, then the table of docs/performance.md
//! ```
//!
//! The PostgreSQL group runs only when `APITOKEN_TEST_POSTGRES_URL` is set.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use apitoken::middleware::AuthLayer;
use apitoken::{
    CachedStore, MemoryStore, NewToken, Owner, Principal, ScopeRequirement, SecretHasher,
    TokenFormat, TokenStore, Verifier,
};
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, StatusCode};
use tower::ServiceExt;

mod common;
use common::{Floor, config, hello, issue, now, request};

fn with_last_char_changed(token: &str) -> String {
    let mut bad = token.to_owned();
    let last = bad.pop().unwrap();
    bad.push(if last == 'A' { 'B' } else { 'A' });
    bad
}

fn bench_formats(c: &mut Criterion) {
    let formats = [
        ("canonical", TokenFormat::canonical(), Some("q7Xa0LmB2pZe")),
        ("dct", TokenFormat::dct(), Some("12345")),
        ("sanctum", TokenFormat::sanctum(), Some("12345")),
    ];
    for (name, format, id) in &formats {
        let id = id.map(|id| id.parse().unwrap());
        c.bench_function(&format!("format/generate/{name}"), |b| {
            b.iter(|| format.generate(black_box(id.as_ref())).unwrap())
        });
        let token = format.generate(id.as_ref()).unwrap();
        let text = token.expose_secret();
        c.bench_function(&format!("format/parse/{name}"), |b| {
            b.iter(|| format.parse(black_box(text)).unwrap().id().copied())
        });
    }
    // The checksum check: a canonical token whose last checksum character is wrong is
    // rejected once the CRC is computed and compared.
    let canonical = TokenFormat::canonical();
    let token = canonical
        .generate(Some(&"q7Xa0LmB2pZe".parse().unwrap()))
        .unwrap();
    let bad = with_last_char_changed(token.expose_secret());
    c.bench_function("format/checksum_reject/canonical", |b| {
        b.iter(|| canonical.parse(black_box(&bad)).unwrap_err())
    });
    let hasher = SecretHasher::sha256();
    c.bench_function("hash/sha256_43", |b| {
        b.iter(|| hasher.hash(black_box(&token.expose_secret().as_bytes()[13..56])))
    });
}

fn bench_verify(c: &mut Criterion) {
    let store = Arc::new(MemoryStore::with_capacity(10_000));
    let verifier = Verifier::builder(Arc::clone(&store)).build();
    // The same tokens, without the in-memory last-use note: the note's cost is the difference.
    let no_last_used = Verifier::builder(Arc::clone(&store))
        .disable_last_used()
        .build();
    let tokens = issue(&verifier, 10_000);
    let token = tokens[4_321].expose_secret().to_owned();
    let need = ScopeRequirement::all(["vps:read"]).unwrap();
    let floor = Floor::new(&tokens);
    floor.bench(c, &token);

    let revoked = tokens[1_234].expose_secret().to_owned();
    let revoked_id = TokenFormat::canonical()
        .parse(&revoked)
        .unwrap()
        .id()
        .copied();
    now(store.revoke(&revoked_id.unwrap(), verifier.now())).unwrap();
    let unknown = TokenFormat::canonical()
        .generate(Some(&"ZZZZZZZZZZZZ".parse().unwrap()))
        .unwrap();
    // Right id, right checksum, wrong secret.
    let (id, _) = token.split_once('.').unwrap();
    let wrong_secret = TokenFormat::canonical()
        .generate(Some(&id.parse().unwrap()))
        .unwrap();
    let bad_checksum = with_last_char_changed(&token);

    let mut group = c.benchmark_group("verify");
    group.bench_function("valid_with_scope", |b| {
        b.iter(|| now(verifier.verify(black_box(&token), &need)).unwrap())
    });
    group.bench_function("valid_without_last_used", |b| {
        b.iter(|| now(no_last_used.verify(black_box(&token), &need)).unwrap())
    });
    group.bench_function("unknown_id", |b| {
        b.iter(|| now(verifier.verify(black_box(unknown.expose_secret()), &need)).unwrap_err())
    });
    group.bench_function("wrong_secret", |b| {
        b.iter(|| now(verifier.verify(black_box(wrong_secret.expose_secret()), &need)).unwrap_err())
    });
    group.bench_function("revoked", |b| {
        b.iter(|| now(verifier.verify(black_box(&revoked), &need)).unwrap_err())
    });
    group.bench_function("bad_checksum", |b| {
        b.iter(|| now(verifier.verify(black_box(&bad_checksum), &need)).unwrap_err())
    });
    group.finish();
}

/// Verifications per thread in one timed round of the concurrency benchmark.
fn verify_many(
    verifier: &Verifier<Arc<MemoryStore>>,
    tokens: &[String],
    need: &ScopeRequirement,
    n: u64,
) {
    for i in 0..n as usize {
        let token = &tokens[i % tokens.len()];
        black_box(now(verifier.verify(black_box(token), need)).unwrap());
    }
}

fn bench_threads(c: &mut Criterion) {
    let store = Arc::new(MemoryStore::with_capacity(10_000));
    let verifier = Verifier::builder(Arc::clone(&store)).build();
    let tokens: Vec<String> = issue(&verifier, 10_000)
        .iter()
        .map(|t| t.expose_secret().to_owned())
        .collect();
    let need = ScopeRequirement::all(["vps:read"]).unwrap();
    // Each thread verifies its own 64 tokens, round robin, last-use tracking on.
    let sets: Vec<Vec<String>> = vec![tokens[..64].to_vec(), tokens[64..128].to_vec()];

    let mut group = c.benchmark_group("threads");
    // Time per verification, wall clock: with two threads, the time for 2n verifications
    // divided by 2n, so throughput(2) / throughput(1) = time(1) / time(2).
    group.bench_function("one", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            verify_many(&verifier, &sets[0], &need, iters);
            start.elapsed()
        })
    });
    group.bench_function("two", |b| {
        b.iter_custom(|iters| {
            let half = iters.div_ceil(2);
            let barrier = Barrier::new(3);
            std::thread::scope(|scope| {
                for set in &sets {
                    let (verifier, need, barrier) = (&verifier, &need, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        verify_many(verifier, set, need, half);
                        barrier.wait();
                    });
                }
                barrier.wait();
                let start = Instant::now();
                barrier.wait();
                start.elapsed()
            })
        })
    });
    group.finish();
}

/// A layer that compares the `Authorization` header with one static value in constant time:
/// the least a bearer check can do, as tower-http's deprecated `ValidateRequestHeaderLayer`.
#[allow(deprecated)]
fn static_bearer(
    token: &str,
) -> tower_http::validate_request::ValidateRequestHeaderLayer<
    tower_http::auth::require_authorization::Bearer<Body>,
> {
    tower_http::validate_request::ValidateRequestHeaderLayer::bearer(token)
}

fn bench_middleware(c: &mut Criterion) {
    let store = Arc::new(MemoryStore::with_capacity(10_000));
    let verifier = Verifier::builder(Arc::clone(&store)).build();
    let tokens = issue(&verifier, 10_000);
    let token = tokens[4_321].expose_secret().to_owned();
    let floor = Floor::new(&tokens);
    floor.bench(c, &token);

    // `with_state` finishes each router as `axum::serve` does (`into_make_service`); a router
    // called without it rebuilds its layered routes on every request, which would be counted
    // against whichever layer is under test.
    let routes = || Router::new().route("/api/v1/vps", get(hello));
    let plain = routes().with_state(());
    let auth = routes()
        .layer(
            AuthLayer::new(verifier.clone()).require(ScopeRequirement::all(["vps:read"]).unwrap()),
        )
        .with_state(());
    let bearer = routes().layer(static_bearer(&token)).with_state(());
    // Each request is built inside the timed loop, for all three alike.
    let mut group = c.benchmark_group("middleware");
    for (name, router) in [
        ("no_auth", &plain),
        ("auth_layer", &auth),
        ("static_bearer", &bearer),
    ] {
        let response = now(router.clone().oneshot(request(&token))).unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| {
                let response = now(router.clone().oneshot(request(black_box(&token)))).unwrap();
                debug_assert!(response.extensions().get::<Principal>().is_none());
                response.status()
            })
        });
    }
    group.finish();
}

fn bench_postgres(c: &mut Criterion) {
    let Ok(url) = std::env::var("APITOKEN_TEST_POSTGRES_URL") else {
        eprintln!("postgres: skipped (APITOKEN_TEST_POSTGRES_URL is not set)");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = runtime.block_on(async {
        let pool = apitoken::PostgresStore::connect(&url)
            .await
            .unwrap()
            .pool()
            .clone();
        let store = apitoken::PostgresStore::builder(pool)
            .schema("apitoken_bench")
            .unwrap()
            .build();
        store.migrate().await.unwrap();
        Arc::new(store)
    });
    let uncached = Verifier::builder(Arc::clone(&pg)).build();
    let cached = Verifier::builder(CachedStore::new(pg)).build();
    let memory = Verifier::builder(MemoryStore::new()).build();
    let need = ScopeRequirement::all(["vps:read"]).unwrap();
    let issue_one = |token: NewToken| {
        runtime
            .block_on(uncached.issuer().issue(token))
            .unwrap()
            .token
    };
    let new = || {
        NewToken::new("bench-token-0001", Owner::new("bench").unwrap())
            .scopes(["vps:read", "vps:write"])
            .unwrap()
    };
    let pg_token = issue_one(new());
    let mem_token = now(memory.issuer().issue(new())).unwrap().token;
    let floor = Floor::new(std::slice::from_ref(&mem_token));
    floor.bench(c, mem_token.expose_secret());

    let mut group = c.benchmark_group("postgres");
    group.bench_function("memory_store", |b| {
        b.iter(|| now(memory.verify(black_box(mem_token.expose_secret()), &need)).unwrap())
    });
    group.bench_function("cached", |b| {
        b.iter(|| {
            runtime
                .block_on(cached.verify(black_box(pg_token.expose_secret()), &need))
                .unwrap()
        })
    });
    group.bench_function("uncached", |b| {
        b.iter(|| {
            runtime
                .block_on(uncached.verify(black_box(pg_token.expose_secret()), &need))
                .unwrap()
        })
    });
    group.finish();
}

/// What hostile input costs before the throttle can answer: the client address behind a
/// trusted proxy, with 64 KB of commas a client wrote into `X-Forwarded-For`.
fn bench_hostile(c: &mut Criterion) {
    use apitoken::middleware::{PeerAddr, TrustedProxies};

    let proxies = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
    let header = format!("{}198.51.100.7, 10.0.0.5", ",".repeat(65_536));
    let mut request = Request::get("/")
        .header("x-forwarded-for", header)
        .body(())
        .unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr("10.0.0.2:5000".parse().unwrap()));
    let mut group = c.benchmark_group("hostile");
    group.bench_function("client_ip_xff_64k_commas", |b| {
        b.iter(|| proxies.client_ip(black_box(&request)).unwrap())
    });
    // What a forged credential costs the server: an API key with a valid checksum and an
    // unknown id, against JWTs with a valid shape and a wrong signature (HS256 and EdDSA).
    {
        use apitoken::jwt::{AccessGrant, JwtIssuer, JwtKey, JwtValidator};
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                   -----END PRIVATE KEY-----\n";
        let grant = AccessGrant::new(Owner::new("team-1").unwrap(), "ci").unwrap();
        for (name, key) in [
            ("hs256", JwtKey::hs256(&[7u8; 32]).unwrap()),
            ("eddsa", JwtKey::ed25519_private_pem(pem).unwrap()),
        ] {
            let issuer = JwtIssuer::builder(key.clone(), "iss", "aud")
                .build()
                .unwrap();
            let validator = JwtValidator::builder("iss", "aud")
                .key(key)
                .build()
                .unwrap();
            let verifier = Verifier::builder(MemoryStore::new()).jwt(validator).build();
            let mut forged = issuer
                .issue(&grant)
                .unwrap()
                .token
                .expose_secret()
                .to_owned();
            // A wrong signature of the right length: the last character changed.
            let last = forged.pop().unwrap();
            forged.push(if last == 'A' { 'B' } else { 'A' });
            assert!(now(verifier.authenticate(&forged)).is_err());
            group.bench_function(format!("forged_jwt_{name}"), |b| {
                b.iter(|| now(verifier.authenticate(black_box(&forged))).is_err())
            });
        }
        let verifier = Verifier::builder(MemoryStore::new()).build();
        let real = issue(&verifier, 1).pop().unwrap();
        let forged = TokenFormat::canonical()
            .generate(Some(&"unknownid123".parse().unwrap()))
            .unwrap();
        assert!(now(verifier.authenticate(forged.expose_secret())).is_err());
        assert!(now(verifier.authenticate(real.expose_secret())).is_ok());
        group.bench_function("forged_api_key_unknown_id", |b| {
            b.iter(|| now(verifier.authenticate(black_box(forged.expose_secret()))).is_err())
        });
    }
    // A new key in the in-process rate limiter while every held key is busy (an hour's
    // limit): no sweep can free anything.
    for held in [100_000usize, 1_000_000] {
        use apitoken::rate_limit::{MemoryRateLimiter, RateLimit};
        let limiter = MemoryRateLimiter::new().max_keys(2_000_000);
        let limit = RateLimit::per_hour(1);
        for i in 0..held {
            limiter.acquire_now(&format!("token:held{i}"), &limit);
        }
        let mut next = 0u64;
        group.bench_function(format!("rate_limit_new_key_at_{}k", held / 1000), |b| {
            b.iter(|| {
                next += 1;
                limiter.acquire_now(&format!("token:new{next}"), &limit)
            })
        });
    }
    group.finish();
}

/// The cache's hit path over a `MemoryStore` (no I/O): a hit by id, a hit by hash (two
/// entries), and a whole verification served from the cache. A hit takes a shard read lock,
/// clones the entry (an `Arc` count) and checks its age and that nothing it depends on was
/// invalidated since (one atomic load, five after an invalidation); it allocates nothing and
/// takes no global lock.
fn bench_cache(c: &mut Criterion) {
    let verifier = Verifier::builder(CachedStore::new(MemoryStore::new())).build();
    let tokens = issue(&verifier, 1);
    let need = ScopeRequirement::all(["vps:read"]).unwrap();
    let token = tokens[0].expose_secret();
    let principal = now(verifier.verify(token, &need)).unwrap();
    let id = *principal.token_id();
    let hash = now(verifier.store().get(&id)).unwrap().unwrap().hash;
    now(verifier.store().find_by_hash(&hash)).unwrap().unwrap();

    let mut group = c.benchmark_group("cache");
    group.bench_function("hit_get", |b| {
        b.iter(|| now(verifier.store().get(black_box(&id))).unwrap())
    });
    group.bench_function("hit_find_by_hash", |b| {
        b.iter(|| now(verifier.store().find_by_hash(black_box(&hash))).unwrap())
    });
    group.bench_function("verify_hit", |b| {
        b.iter(|| now(verifier.verify(black_box(token), &need)).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_formats, bench_verify, bench_threads, bench_middleware, bench_postgres, bench_hostile, bench_cache
}
criterion_main!(benches);
