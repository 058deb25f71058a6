//! attack14 probes of the `apitoken` binary: unwritable output, no migration on list/revoke,
//! TLS, and no secrets in errors.
#![cfg(feature = "cli")]

#[path = "support/stores.rs"]
mod stores;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apitoken::{Owner, PostgresStore, TokenStore};
use sqlx::AssertSqlSafe;
use stores::{postgres_url, unique_name};

const BIN: &str = env!("CARGO_BIN_EXE_apitoken");

struct Out {
    code: Option<i32>,
    stderr: String,
    stdout: String,
}

fn run(args: &[&str], stdout: Stdio, stderr: Stdio) -> Out {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("hung: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

fn dev_full() -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap(),
    )
}

fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Stdio::from(writer)
}

async fn all_revoked(url: &str, schema: &str, owner: &str) -> (usize, bool) {
    let store = PostgresStore::builder(sqlx::PgPool::connect(url).await.unwrap())
        .schema(schema)
        .unwrap()
        .build();
    let records = store
        .list_by_owner(&Owner::new(owner).unwrap())
        .await
        .unwrap();
    (records.len(), records.iter().all(|r| r.is_revoked()))
}

async fn drop_schema(url: &str, schema: &str) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&pool)
    .await
    .unwrap();
}

/// Claim 3: create and bootstrap to /dev/full and to a pipe whose reader is gone: exit 1,
/// no panic, the token revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_cli_unwritable_stdout_revokes_the_unseen_token() {
    let Some(url) = postgres_url() else { return };
    for (i, sink) in [dev_full as fn() -> Stdio, closed_pipe]
        .into_iter()
        .enumerate()
    {
        let schema = unique_name("p14cli");
        let owner = format!("team-{i}");
        let create = run(
            &[
                "create",
                "--database",
                &url,
                "--schema",
                &schema,
                "--owner",
                &owner,
                "--name",
                "ci",
            ],
            sink(),
            Stdio::piped(),
        );
        assert_eq!(create.code, Some(1), "{}", create.stderr);
        assert!(!create.stderr.contains("panicked"), "{}", create.stderr);
        assert_eq!(all_revoked(&url, &schema, &owner).await, (1, true));
        let boot = run(
            &[
                "bootstrap",
                "--database",
                &url,
                "--schema",
                &schema,
                "--owner",
                "admin",
            ],
            sink(),
            Stdio::piped(),
        );
        assert_eq!(boot.code, Some(1), "{}", boot.stderr);
        assert!(!boot.stderr.contains("panicked"), "{}", boot.stderr);
        assert_eq!(all_revoked(&url, &schema, "admin").await, (1, true));
        // list into /dev/full: exit 1, no panic.
        let list = run(
            &[
                "list",
                "--database",
                &url,
                "--schema",
                &schema,
                "--owner",
                &owner,
            ],
            sink(),
            Stdio::piped(),
        );
        assert_eq!(list.code, Some(1), "{}", list.stderr);
        assert!(!list.stderr.contains("panicked"), "{}", list.stderr);
        drop_schema(&url, &schema).await;
    }
}

/// Beyond the claim's letter ("without panic"): stdout AND stderr both unwritable (a
/// detached service with a full log disk), and stderr alone unwritable after a token was
/// shown. `eprintln!` panics when stderr cannot be written: main.rs:50 (`error: …`) and the
/// notes at main.rs:278 / main.rs:324 after a successful create/bootstrap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_cli_unwritable_stdout_and_stderr_does_not_panic() {
    let Some(url) = postgres_url() else { return };
    let schema = unique_name("p14cle");
    let create = run(
        &[
            "create",
            "--database",
            &url,
            "--schema",
            &schema,
            "--owner",
            "t",
            "--name",
            "ci",
        ],
        dev_full(),
        dev_full(),
    );
    let revoked = all_revoked(&url, &schema, "t").await;
    // A create whose token was printed, with only stderr unwritable.
    let shown = run(
        &[
            "create",
            "--database",
            &url,
            "--schema",
            &schema,
            "--owner",
            "u",
            "--name",
            "ci",
        ],
        Stdio::piped(),
        dev_full(),
    );
    let u = all_revoked(&url, &schema, "u").await;
    drop_schema(&url, &schema).await;
    eprintln!(
        "both unwritable: exit {:?}, token (count, revoked) {revoked:?}; \
         stderr unwritable: exit {:?}, stdout {:?}, token {u:?}",
        create.code, shown.code, shown.stdout
    );
    assert_eq!(revoked, (1, true), "the unseen token is revoked");
    assert_eq!(
        create.code,
        Some(1),
        "both unwritable: exit 1, not a panic (101)"
    );
    assert!(
        matches!(shown.code, Some(0) | Some(1)),
        "stderr unwritable after a shown token: exit {:?} (101 = panic)",
        shown.code
    );
}

/// Claim 3: `list` and `revoke` on a first-release (unversioned) schema fail and create
/// nothing: no versions table appears, no column is added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_cli_list_and_revoke_never_migrate() {
    let Some(url) = postgres_url() else { return };
    let schema = unique_name("p14nm");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.apitoken_tokens (\
         id TEXT COLLATE \"C\" PRIMARY KEY, secret_hash BYTEA NOT NULL UNIQUE, \
         name TEXT NOT NULL, owner TEXT COLLATE \"C\" NOT NULL, scopes TEXT NOT NULL DEFAULT '', \
         metadata JSONB NOT NULL DEFAULT '{{}}', created_at TIMESTAMPTZ NOT NULL, \
         last_used_at TIMESTAMPTZ, expires_at TIMESTAMPTZ, revoked_at TIMESTAMPTZ); \
         CREATE SEQUENCE {schema}.apitoken_token_ids;"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let other = unique_name("p14nx");
    for args in [
        vec!["list", "--owner", "a"],
        vec!["revoke", "--owner", "a"],
        vec!["revoke", "abcdefghijkl"],
    ] {
        for s in [schema.as_str(), other.as_str()] {
            let mut full = args.clone();
            full.extend(["--database", &url, "--schema", s]);
            let out = run(&full, Stdio::piped(), Stdio::piped());
            assert_ne!(out.code, Some(0), "{full:?}: {}", out.stdout);
            assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        }
    }
    let versions: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{schema}.apitoken_schema_versions"))
        .fetch_one(&pool)
        .await
        .unwrap();
    let allowed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 \
         AND column_name = 'allowed_ips'",
    )
    .bind(&schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    let made_other: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&other)
            .fetch_one(&pool)
            .await
            .unwrap();
    drop_schema(&url, &schema).await;
    drop_schema(&url, &other).await;
    assert!(!versions && allowed == 0 && !made_other);
}

/// Claim 3: TLS. `sslmode=require` connects (the server has ssl=on); `verify-full` refuses
/// the self-signed certificate; no password from the URL in any error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_cli_tls_modes_and_no_password_in_errors() {
    let Some(url) = postgres_url() else { return };
    let schema = unique_name("p14tls");
    let with_password = url.replacen("postgres@", "postgres:pw_SEKRIT_99@", 1);
    let sep = if url.contains('?') { '&' } else { '?' };
    let require = format!("{with_password}{sep}sslmode=require");
    let out = run(
        &["bootstrap", "--database", &require, "--schema", &schema],
        Stdio::piped(),
        Stdio::piped(),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let verify = format!("{with_password}{sep}sslmode=verify-full");
    let out = run(
        &[
            "list",
            "--database",
            &verify,
            "--schema",
            &schema,
            "--owner",
            "admin",
        ],
        Stdio::piped(),
        Stdio::piped(),
    );
    assert_eq!(out.code, Some(1), "{} {}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("SEKRIT"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    // An unreachable host and a malformed URL with a password: not echoed either.
    for bad in [
        "postgres://postgres:pw_SEKRIT_99@127.0.0.1:1/test".to_owned(),
        "postgres://postgres:pw_SEKRIT_99@127.0.0.1:5432/test?sslmode=bogus".to_owned(),
        "postgres://postgres:pw_SEKRIT_99@[::1/test".to_owned(),
    ] {
        let out = run(
            &["list", "--database", &bad, "--owner", "admin"],
            Stdio::piped(),
            Stdio::piped(),
        );
        assert_ne!(out.code, Some(0));
        assert!(!out.stderr.contains("SEKRIT"), "{bad}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{bad}: {}", out.stderr);
    }
    drop_schema(&url, &schema).await;
}
