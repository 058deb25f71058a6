//! The checks behind `docs/scaling.md`, each a small simulation on this machine:
//!
//! ```sh
//! cargo run --release --example scaling -- hit-rate                 # the cache model, no I/O
//! cargo run --release --example scaling -- cache-weight 100000      # bytes a cached entry weighs
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release --example scaling -- revocations 20 1000    # 20 replicas, 1,000 revoked
//! DATABASE_URL=… cargo run --release --example scaling -- flush 1000000   # a million notes
//! ```
//!
//! `revocations R N`: R replicas' change listeners in this process, each on its own
//! connection (`LISTEN`), all on one PostgreSQL, as `CachedStore::spawn_change_listener`
//! runs them; one revoke alone, then N revokes one after another through another store (a
//! storm). Prints when each replica heard of each revoke, after the revoke's reply.
//!
//! `flush N`: N rows in a fresh table, then N last-use notes written as the flusher writes
//! them (`TokenStore::record_last_used_batch`, `FLUSH_CHUNK` notes a statement). Prints the
//! time per statement and in all, and checks that every row got its time.
//!
//! The PostgreSQL runs use a schema of their own (`apitoken_scaling_<pid>`), dropped at the end.

use std::time::{Duration, Instant};

use apitoken::last_used::FLUSH_CHUNK;
use apitoken::{
    CachedStore, MemoryStore, NewToken, Owner, PostgresStore, TokenId, TokenStore, Verifier,
};
use chrono::Utc;

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| -> Result<usize, Error> {
        Ok(args
            .get(i)
            .map(|a| a.parse())
            .transpose()?
            .unwrap_or(default))
    };
    match args.first().map(String::as_str) {
        Some("hit-rate") => hit_rate(),
        Some("cache-weight") => cache_weight(arg(1, 100_000)?).await,
        Some("revocations") => revocations(&database_url()?, arg(1, 20)?, arg(2, 1_000)?).await,
        Some("flush") => flush(&database_url()?, arg(1, 1_000_000)?).await,
        _ => Err("usage: scaling hit-rate | cache-weight N | revocations R N | flush N".into()),
    }
}

fn database_url() -> Result<String, Error> {
    std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL, for example postgres://postgres@127.0.0.1:5432/test".into())
}

/// The cache's hit rate and size under Zipf-distributed token popularity, from the renewal
/// argument: a token requested as a Poisson process of rate λ is fetched once per TTL
/// window in which it is requested at all, so a fraction 1 / (1 + λ·TTL) of its requests
/// miss (the cache's capacity assumed large enough), and it is in the cache for a fraction
/// λ·TTL / (1 + λ·TTL) of the time. It is noted for last use in a flush interval of 60 s
/// with probability 1 − e^(−60λ).
fn hit_rate() -> Result<(), Error> {
    let tokens = 10_000_000usize;
    let ttl = 10.0;
    println!(
        "| Zipf s | requests/s a replica | hit rate | entries cached | misses/s (queries) | \
         distinct tokens a minute (last-use notes a flush) |"
    );
    println!("|---|---|---|---|---|---|");
    for s in [0.8f64, 1.0, 1.2] {
        let norm: f64 = (1..=tokens).map(|k| (k as f64).powf(-s)).sum();
        for rate in [2_000.0f64, 20_000.0] {
            let (mut hits, mut cached, mut distinct) = (0.0, 0.0, 0.0);
            for k in 1..=tokens {
                let lambda = rate * (k as f64).powf(-s) / norm;
                let x = lambda * ttl;
                hits += lambda * x / (1.0 + x);
                cached += x / (1.0 + x);
                // Requested at least once in a 60-second flush interval.
                distinct += 1.0 - (-lambda * 60.0).exp();
            }
            println!(
                "| {s} | {rate:.0} | {:.1} % | {cached:.0} | {:.0} | {distinct:.0} |",
                100.0 * hits / rate,
                rate - hits
            );
        }
    }
    Ok(())
}

/// What the cache's own accounting says an entry of a typical record weighs.
async fn cache_weight(n: usize) -> Result<(), Error> {
    let store = std::sync::Arc::new(MemoryStore::with_capacity(n));
    let verifier = Verifier::builder(std::sync::Arc::clone(&store)).build();
    let owner = Owner::new("team-000123")?;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let new = NewToken::new(format!("deploy key {i:07}"), owner.clone())
            .scopes(["vps:read", "vps:write"])?;
        ids.push(verifier.issuer().issue(new).await?.record.id);
    }
    let cached = CachedStore::builder(store)
        .max_bytes(u64::MAX / 4)
        .ttl(Duration::from_secs(600))
        .build();
    for id in &ids {
        cached.get(id).await?;
    }
    println!(
        "cache-weight: {n} entries weigh {} bytes by the cache's account, {:.0} an entry",
        cached.weight(),
        cached.weight() as f64 / n as f64
    );
    Ok(())
}

async fn schema_store(url: &str, connections: u32) -> Result<PostgresStore, Error> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await?;
    let store = PostgresStore::builder(pool)
        .schema(&format!("apitoken_scaling_{}", std::process::id()))?
        .build();
    store.migrate().await?;
    Ok(store)
}

async fn drop_schema(store: &PostgresStore) -> Result<(), Error> {
    let sql = format!(
        "DROP SCHEMA IF EXISTS apitoken_scaling_{} CASCADE",
        std::process::id()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(store.pool())
        .await?;
    Ok(())
}

async fn revocations(url: &str, replicas: usize, n: usize) -> Result<(), Error> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    let origin = schema_store(url, 4).await?;
    let issuing = Verifier::builder(origin.clone())
        .disable_last_used()
        .build();
    let owner = Owner::new("team-1")?;
    let mut ids = Vec::with_capacity(n + 1);
    for i in 0..=n {
        let new = NewToken::new(format!("token {i}"), owner.clone()).scopes(["vps:read"])?;
        ids.push(issuing.issuer().issue(new).await?.record.id);
    }
    // When each replica heard of each token's change: one listener per replica, each on its
    // own connection, as `CachedStore::spawn_change_listener` runs it (which then drops the
    // entry: microseconds in memory).
    let heard: Arc<Mutex<HashMap<TokenId, Vec<Instant>>>> = Arc::default();
    let mut listeners = Vec::with_capacity(replicas);
    for _ in 0..replicas {
        let store = schema_store(url, 1).await?;
        let heard = Arc::clone(&heard);
        listeners.push(store.spawn_change_listener(move |change| {
            if let apitoken::StoreChange::Token(id) = change {
                let mut heard = heard.lock().unwrap();
                heard.entry(id).or_default().push(Instant::now());
            }
        }));
    }
    // Let every listener reach its LISTEN before the first revoke.
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    // One revoke alone, then a storm of `n` one after another.
    let lone = ids.pop().expect("n + 1 ids");
    let lone_at = Instant::now();
    origin.revoke(&lone, Utc::now()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut revoked_at = Vec::with_capacity(n);
    for id in &ids {
        origin.revoke(id, Utc::now()).await?;
        revoked_at.push(Instant::now());
    }
    let storm = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let done = {
            let heard = heard.lock().unwrap();
            ids.iter()
                .all(|id| heard.get(id).is_some_and(|h| h.len() >= replicas))
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (lone_lags, mut lags, missing) = {
        let heard = heard.lock().unwrap();
        let lone_lags: Vec<Duration> = heard
            .get(&lone)
            .map(|h| {
                h.iter()
                    .map(|at| at.saturating_duration_since(lone_at))
                    .collect()
            })
            .unwrap_or_default();
        let mut lags = Vec::with_capacity(n * replicas);
        let mut missing = 0;
        for (id, at) in ids.iter().zip(&revoked_at) {
            let got = heard.get(id).map_or(&[][..], Vec::as_slice);
            missing += replicas.saturating_sub(got.len());
            // From the revoke's reply; a notification can arrive just before the reply does.
            lags.extend(got.iter().map(|h| h.saturating_duration_since(*at)));
        }
        (lone_lags, lags, missing)
    };
    lags.sort_unstable();
    let at = |q: f64| {
        lags.get(((lags.len().max(1) - 1) as f64 * q) as usize)
            .copied()
    };
    println!(
        "revocations: {replicas} listening replicas; one revoke heard by {} of them, the last \
         {:?} after the revoke began",
        lone_lags.len(),
        lone_lags.iter().max()
    );
    println!(
        "revocations: a storm of {n} revokes through one store in {storm:?} ({:.0} a second); \
         heard after each revoke's reply: p50 {:?}, p99 {:?}, max {:?}; not heard within 30 s: \
         {missing} of {}",
        n as f64 / storm.as_secs_f64(),
        at(0.5),
        at(0.99),
        at(1.0),
        n * replicas,
    );
    for listener in listeners {
        listener.abort();
    }
    drop_schema(&origin).await
}

async fn flush(url: &str, n: usize) -> Result<(), Error> {
    let store = schema_store(url, 2).await?;
    let schema = format!("apitoken_scaling_{}", std::process::id());
    let started = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.apitoken_tokens (id, secret_hash, name, owner, created_at) \
         SELECT 'n' || g, sha256(g::text::bytea), 'token ' || g, 'team-' || (g % 1000), now() \
         FROM generate_series(1, {n}) AS g"
    )))
    .execute(store.pool())
    .await?;
    println!("flush: {n} rows inserted in {:?}", started.elapsed());
    let at = Utc::now();
    let notes: Vec<(TokenId, chrono::DateTime<Utc>)> = (1..=n)
        .map(|g| Ok((format!("n{g}").parse::<TokenId>()?, at)))
        .collect::<Result<_, Error>>()?;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for chunk in notes.chunks(FLUSH_CHUNK) {
        let one = Instant::now();
        store.record_last_used_batch(chunk).await?;
        slowest = slowest.max(one.elapsed());
    }
    let took = started.elapsed();
    let statements = n.div_ceil(FLUSH_CHUNK);
    let (written,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.apitoken_tokens WHERE last_used_at IS NOT NULL"
    )))
    .fetch_one(store.pool())
    .await?;
    println!(
        "flush: {n} notes in {statements} statements of {FLUSH_CHUNK}: {took:?} in all, \
         {:?} a statement on average, {slowest:?} the slowest; {:.0} notes a second; \
         rows with a last use: {written}",
        took / statements as u32,
        n as f64 / took.as_secs_f64(),
    );
    drop_schema(&store).await?;
    if written as usize != n {
        return Err(format!("{written} of {n} rows got their last use").into());
    }
    Ok(())
}
