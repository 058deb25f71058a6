//! Sanctum's time columns as other writers and other settings leave them: SQLite text with an
//! offset, `T` or fractions; PostgreSQL `timestamptz` columns (`timestampsTz()`); and a
//! Laravel `app.timezone` that is not UTC, across daylight-saving changes.

#[path = "support/stores.rs"]
mod stores;

use std::sync::Arc;

use apitoken::store::NaiveTimeZone;
use apitoken::{
    AuthErrorKind, ManualClock, RejectReason, SanctumStore, ScopePolicy, ScopeRequirement,
    SecretHasher, StoreErrorKind, TokenFormat, TokenId, TokenStore, Verifier,
};
use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use sqlx::AssertSqlSafe;

fn verifier(store: SanctumStore, clock: Option<Arc<ManualClock>>) -> Verifier<SanctumStore> {
    let builder = Verifier::builder(store)
        .format(TokenFormat::sanctum())
        .hasher(SecretHasher::sha256())
        .scope_policy(ScopePolicy::sanctum());
    match clock {
        Some(clock) => builder.clock(clock).build(),
        None => builder.build(),
    }
}

fn any() -> ScopeRequirement {
    ScopeRequirement::all(["vps:read"]).unwrap()
}

fn utc(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

fn id_of(token: &str) -> TokenId {
    TokenId::from_u64(token.split_once('|').unwrap().0.parse().unwrap())
}

/// Inserts a row on SQLite with `expires_at` stored as exactly `expires_at` (text, as some
/// writer left it) and returns the token.
async fn sqlite_row(pool: &sqlx::SqlitePool, expires_at: Option<&str>) -> String {
    let (plain, hash) = stores::sanctum_plain_text("");
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO personal_access_tokens (tokenable_type, tokenable_id, name, token, \
         abilities, expires_at, created_at, updated_at) \
         VALUES ('App\\Models\\User', 1, 'api', $1, '[\"*\"]', $2, $3, $3) RETURNING id",
    )
    .bind(hash)
    .bind(expires_at.map(str::to_owned))
    .bind(stores::laravel_time(Utc::now()))
    .fetch_one(pool)
    .await
    .unwrap();
    format!("{id}|{plain}")
}

#[tokio::test]
async fn sqlite_text_with_an_offset_keeps_it() {
    let s = stores::sanctum_sqlite().await;
    let v = verifier(s.store.clone(), None);
    // An hour ago in UTC, written at +02:00: the wall clock there reads an hour ahead of UTC
    // now, so a reader that drops the offset sees a time in the future.
    let plus_two = FixedOffset::east_opt(2 * 3600).unwrap();
    let an_hour_ago = (Utc::now() - TimeDelta::hours(1)).with_timezone(&plus_two);
    let text = an_hour_ago.format("%Y-%m-%d %H:%M:%S%:z").to_string();
    let expired = sqlite_row(&s.pool, Some(&text)).await;
    let err = v.verify(&expired, &any()).await.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Expired), "{text}");

    // And the other way round: an hour ahead in UTC, written at -05:00, still verifies.
    let minus_five = FixedOffset::west_opt(5 * 3600).unwrap();
    let ahead = (Utc::now() + TimeDelta::hours(1)).with_timezone(&minus_five);
    let text = ahead.format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string();
    let live = sqlite_row(&s.pool, Some(&text)).await;
    assert!(v.verify(&live, &any()).await.is_ok(), "{text}");
}

#[tokio::test]
async fn sqlite_text_forms_read_as_the_instant_they_name() {
    let s = stores::sanctum_sqlite().await;
    let expected = utc("2031-05-06T07:08:09Z");
    for text in [
        "2031-05-06 07:08:09",
        "2031-05-06T07:08:09",
        "2031-05-06T07:08:09Z",
        "2031-05-06 07:08:09Z",
        "2031-05-06 07:08:09.000000",
        "2031-05-06T07:08:09.000Z",
        "2031-05-06 09:08:09+02:00",
        "2031-05-06T09:08:09.000+02:00",
        "2031-05-06 09:08:09+0200",
        "2031-05-06 02:08:09-05:00",
        "2031-05-06 12:38:09+05:30",
    ] {
        let token = sqlite_row(&s.pool, Some(text)).await;
        let stored = s.store.get(&id_of(&token)).await.unwrap().unwrap();
        assert_eq!(stored.record.expires_at, Some(expected), "{text}");
    }
    let token = sqlite_row(&s.pool, Some("2031-05-06 07:08:09.250")).await;
    let stored = s.store.get(&id_of(&token)).await.unwrap().unwrap();
    assert_eq!(
        stored.record.expires_at,
        Some(expected + TimeDelta::milliseconds(250))
    );
}

#[tokio::test]
async fn sqlite_unreadable_time_fails_closed_naming_the_column() {
    let s = stores::sanctum_sqlite().await;
    let v = verifier(s.store.clone(), None);
    for text in ["next tuesday", "2031-05-06 07:08:09 PST8PDT", "2031-05-06"] {
        let token = sqlite_row(&s.pool, Some(text)).await;
        let err = s.store.get(&id_of(&token)).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{text}");
        let chain = stores::error_chain(&err);
        assert!(chain.contains("`expires_at`"), "{chain}");
        // The stored text is the other application's data: not echoed into logs.
        assert!(!chain.contains(text), "{chain}");
        let err = v.verify(&token, &any()).await.unwrap_err();
        assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable, "{text}");
    }
}

/// The tokens of `Europe/Berlin`: at each `now`, tokens whose local `expires_at` is 30 minutes
/// behind are refused and 30 minutes ahead accepted; across both changes of 2026.
async fn berlin_expiry<F, Fut>(store: SanctumStore, mut create: F)
where
    F: FnMut(&'static str) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let clock = Arc::new(ManualClock::new(utc("2026-01-01T00:00:00Z")));
    let v = verifier(store, Some(clock.clone()));
    // (now in UTC, local expires_at 30 minutes before, local expires_at 30 minutes after)
    let cases = [
        // Winter, +01:00.
        (
            "2026-01-15T10:00:00Z",
            "2026-01-15 10:30:00",
            "2026-01-15 11:30:00",
        ),
        // Summer, +02:00: a fixed +01:00 would read both an hour late.
        (
            "2026-07-15T10:00:00Z",
            "2026-07-15 11:30:00",
            "2026-07-15 12:30:00",
        ),
        // 29 March: clocks jump from 02:00 CET to 03:00 CEST at 01:00 UTC, so the hour before
        // and the hour after are each 30 minutes away.
        (
            "2026-03-29T00:45:00Z",
            "2026-03-29 01:15:00",
            "2026-03-29 03:15:00",
        ),
        (
            "2026-03-29T01:15:00Z",
            "2026-03-29 01:45:00",
            "2026-03-29 03:45:00",
        ),
        // 25 October: clocks go back from 03:00 CEST to 02:00 CET at 01:00 UTC. Before it
        // (01:45 CEST) and after it (03:30 CET).
        (
            "2026-10-24T23:45:00Z",
            "2026-10-25 01:15:00",
            "2026-10-25 02:15:00",
        ),
        (
            "2026-10-25T02:30:00Z",
            "2026-10-25 03:00:00",
            "2026-10-25 04:00:00",
        ),
    ];
    for (now, before, after) in cases {
        clock.set(utc(now));
        let expired = create(before).await;
        let live = create(after).await;
        let err = v.verify(&expired, &any()).await.unwrap_err();
        assert_eq!(
            err.reason(),
            Some(RejectReason::Expired),
            "at {now}, {before}"
        );
        assert!(
            v.verify(&live, &any()).await.is_ok(),
            "at {now}, {after} should be live"
        );
    }
    // 02:30 happens twice on 25 October: read as the earlier (00:30 UTC), so at 00:45 UTC it
    // has expired, as PHP reads it, and never lives an extra hour.
    clock.set(utc("2026-10-25T00:45:00Z"));
    let twice = create("2026-10-25 02:30:00").await;
    let err = v.verify(&twice, &any()).await.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Expired));
}

fn berlin() -> NaiveTimeZone {
    NaiveTimeZone::iana("Europe/Berlin").unwrap()
}

#[tokio::test]
async fn sqlite_naive_times_are_in_the_app_timezone() {
    let s = stores::sanctum_sqlite().await;
    let store = SanctumStore::sqlite(s.pool.clone())
        .timezone(berlin())
        .build();
    let pool = s.pool.clone();
    berlin_expiry(store.clone(), |text| {
        let pool = pool.clone();
        async move { sqlite_row(&pool, Some(text)).await }
    })
    .await;

    // Last use is written as Laravel would write it: local wall time, to the second.
    let token = sqlite_row(&s.pool, None).await;
    let id = id_of(&token);
    for (at, local) in [
        ("2026-01-15T10:00:00.700Z", "2026-01-15 11:00:00"),
        ("2026-07-15T10:00:00Z", "2026-07-15 12:00:00"),
    ] {
        store
            .record_last_used_batch(&[(id, utc(at))])
            .await
            .unwrap();
        let raw: (String, String) = sqlx::query_as(
            "SELECT last_used_at, updated_at FROM personal_access_tokens WHERE id = $1",
        )
        .bind(i64::try_from(id.as_u64().unwrap()).unwrap())
        .fetch_one(&s.pool)
        .await
        .unwrap();
        assert_eq!(raw, (local.to_owned(), local.to_owned()));
        // Read back as the instant, to the second Laravel keeps.
        let read = store.get(&id).await.unwrap().unwrap();
        assert_eq!(
            read.record.last_used_at,
            DateTime::from_timestamp(utc(at).timestamp(), 0)
        );
    }
    // A row this store issues is written in local time too.
    let v = verifier(store.clone(), None);
    let issued = v
        .issuer()
        .issue(
            apitoken::NewToken::new(
                "from rust",
                apitoken::Owner::new("App\\Models\\User:4").unwrap(),
            )
            .scopes(["vps:read"])
            .unwrap()
            .expires_in(TimeDelta::hours(1)),
        )
        .await
        .unwrap();
    let text = issued.token.expose_secret().to_owned();
    let (created, expires): (String, String) =
        sqlx::query_as("SELECT created_at, expires_at FROM personal_access_tokens WHERE id = $1")
            .bind(i64::try_from(id_of(&text).as_u64().unwrap()).unwrap())
            .fetch_one(&s.pool)
            .await
            .unwrap();
    let local = |at: DateTime<Utc>| {
        at.with_timezone(&chrono_tz_free_berlin(at))
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    assert_eq!(created, local(issued.record.created_at));
    assert_eq!(expires, local(issued.record.expires_at.unwrap()));
    assert!(v.verify(&text, &any()).await.is_ok());
}

/// Berlin's offset at `at`, from the EU rule (last Sunday of March and of October, 01:00 UTC),
/// so the test does not check the crate's zone data against itself.
fn chrono_tz_free_berlin(at: DateTime<Utc>) -> FixedOffset {
    use chrono::{Datelike, NaiveDate, Weekday};
    let last_sunday = |month: u32| {
        let mut day = NaiveDate::from_ymd_opt(at.year(), month, 31).unwrap();
        while day.weekday() != Weekday::Sun {
            day = day.pred_opt().unwrap();
        }
        day.and_hms_opt(1, 0, 0).unwrap().and_utc()
    };
    let summer = at >= last_sunday(3) && at < last_sunday(10);
    FixedOffset::east_opt(if summer { 7200 } else { 3600 }).unwrap()
}

// ---- PostgreSQL ----

/// A pool whose sessions run in a zone that is neither UTC nor Berlin, so nothing here is
/// right by way of the session's `TimeZone`.
async fn pg_pool(url: &str) -> sqlx::PgPool {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .unwrap()
        .options([("timezone", "Asia/Kolkata")]);
    sqlx::PgPool::connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL unreachable: {e}"))
}

async fn pg_table(pool: &sqlx::PgPool, tz: bool) -> String {
    let table = stores::unique_name("pat");
    sqlx::raw_sql(AssertSqlSafe(stores::laravel_postgres_ddl(&table)))
        .execute(pool)
        .await
        .unwrap();
    if tz {
        // What a migration to `timestampsTz()` runs.
        let alter = format!(
            "alter table \"{table}\" alter column \"last_used_at\" type timestamp(0) with time zone, \
             alter column \"expires_at\" type timestamp(0) with time zone, \
             alter column \"created_at\" type timestamp(0) with time zone, \
             alter column \"updated_at\" type timestamp(0) with time zone"
        );
        sqlx::raw_sql(AssertSqlSafe(alter))
            .execute(pool)
            .await
            .unwrap();
    }
    table
}

/// Inserts a row the way Laravel does for the column type: `timestamptz` gets
/// `Y-m-d H:i:sO` text (an instant), `timestamp` the naive local text.
async fn pg_row(pool: &sqlx::PgPool, table: &str, tz: bool, expires_at: Option<&str>) -> String {
    let (plain, hash) = stores::sanctum_plain_text("");
    let kind = if tz { "timestamptz" } else { "timestamp" };
    let sql = format!(
        "INSERT INTO {table} (tokenable_type, tokenable_id, name, token, abilities, expires_at, \
         created_at, updated_at) VALUES ('App\\Models\\User', 1, 'api', $1, '[\"*\"]', \
         CAST($2 AS {kind}), now(), now()) RETURNING id"
    );
    let (id,): (i64,) = sqlx::query_as(AssertSqlSafe(sql))
        .bind(hash)
        .bind(expires_at.map(str::to_owned))
        .fetch_one(pool)
        .await
        .unwrap();
    format!("{id}|{plain}")
}

#[tokio::test]
async fn postgres_timestamptz_and_timestamp_columns() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let pool = pg_pool(&url).await;
    for tz in [true, false] {
        let table = pg_table(&pool, tz).await;
        let store = SanctumStore::postgres(pool.clone())
            .table(&table)
            .unwrap()
            .build();
        let v = verifier(store.clone(), None);
        let text = |at: DateTime<Utc>| {
            if tz {
                at.format("%Y-%m-%d %H:%M:%S+0000").to_string()
            } else {
                stores::laravel_time(at)
            }
        };
        let live = pg_row(&pool, &table, tz, None).await;
        assert!(v.verify(&live, &any()).await.is_ok(), "tz {tz}");
        let soon = pg_row(
            &pool,
            &table,
            tz,
            Some(&text(Utc::now() + TimeDelta::minutes(5))),
        )
        .await;
        assert!(v.verify(&soon, &any()).await.is_ok(), "tz {tz}");
        let past = pg_row(
            &pool,
            &table,
            tz,
            Some(&text(Utc::now() - TimeDelta::minutes(5))),
        )
        .await;
        let err = v.verify(&past, &any()).await.unwrap_err();
        assert_eq!(err.reason(), Some(RejectReason::Expired), "tz {tz}");

        // Last use, forward-only, read back as the same instant.
        let id = id_of(&live);
        let when = utc("2026-07-15T10:00:00Z");
        store.record_last_used_batch(&[(id, when)]).await.unwrap();
        store
            .record_last_used_batch(&[(id, when - TimeDelta::hours(1))])
            .await
            .unwrap();
        let read = store.get(&id).await.unwrap().unwrap();
        assert_eq!(read.record.last_used_at, Some(when), "tz {tz}");
        let sql = format!(
            "SELECT to_char(last_used_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
             to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM {table} \
             WHERE id = $1"
        );
        // For a `timestamp` column, `AT TIME ZONE 'UTC'` gives a timestamptz and to_char
        // shows it in the session's zone; for `timestamptz`, the UTC wall time.
        let sql = if tz {
            sql
        } else {
            format!(
                "SELECT to_char(last_used_at, 'YYYY-MM-DD HH24:MI:SS'), \
                 to_char(updated_at, 'YYYY-MM-DD HH24:MI:SS') FROM {table} WHERE id = $1"
            )
        };
        let raw: (String, String) = sqlx::query_as(AssertSqlSafe(sql))
            .bind(i64::try_from(id.as_u64().unwrap()).unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
        let expected = "2026-07-15 10:00:00".to_owned();
        assert_eq!(raw, (expected.clone(), expected), "tz {tz}");

        // Issued from Rust: created_at and expires_at land as the right instants.
        let issued = v
            .issuer()
            .issue(
                apitoken::NewToken::new(
                    "from rust",
                    apitoken::Owner::new("App\\Models\\User:4").unwrap(),
                )
                .scopes(["vps:read"])
                .unwrap()
                .expires_in(TimeDelta::hours(1)),
            )
            .await
            .unwrap();
        let token = issued.token.expose_secret().to_owned();
        let read = store.get(&id_of(&token)).await.unwrap().unwrap();
        assert_eq!(
            read.record.expires_at.map(|t| t.timestamp()),
            issued.record.expires_at.map(|t| t.timestamp()),
            "tz {tz}"
        );
        assert_eq!(
            read.record.created_at.timestamp(),
            issued.record.created_at.timestamp(),
            "tz {tz}"
        );
        assert!(v.verify(&token, &any()).await.is_ok(), "tz {tz}");
    }
}

#[tokio::test]
async fn postgres_naive_times_are_in_the_app_timezone() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let pool = pg_pool(&url).await;
    let table = pg_table(&pool, false).await;
    let store = SanctumStore::postgres(pool.clone())
        .table(&table)
        .unwrap()
        .timezone(berlin())
        .build();
    berlin_expiry(store.clone(), |text| {
        let (pool, table) = (pool.clone(), table.clone());
        async move { pg_row(&pool, &table, false, Some(text)).await }
    })
    .await;

    let token = pg_row(&pool, &table, false, None).await;
    let id = id_of(&token);
    store
        .record_last_used_batch(&[(id, utc("2026-07-15T10:00:00Z"))])
        .await
        .unwrap();
    let sql =
        format!("SELECT to_char(last_used_at, 'YYYY-MM-DD HH24:MI:SS') FROM {table} WHERE id = $1");
    let (raw,): (String,) = sqlx::query_as(AssertSqlSafe(sql))
        .bind(i64::try_from(id.as_u64().unwrap()).unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(raw, "2026-07-15 12:00:00");

    // A `timestamptz` column ignores the zone setting: it is an instant already.
    let tz_table = pg_table(&pool, true).await;
    let tz_store = SanctumStore::postgres(pool.clone())
        .table(&tz_table)
        .unwrap()
        .timezone(berlin())
        .build();
    let v = verifier(tz_store, None);
    let ahead = (Utc::now() + TimeDelta::minutes(30))
        .format("%Y-%m-%d %H:%M:%S+0000")
        .to_string();
    let live = pg_row(&pool, &tz_table, true, Some(&ahead)).await;
    assert!(v.verify(&live, &any()).await.is_ok());
}
