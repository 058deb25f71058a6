//! The `apitoken` binary, run as a user runs it: output, exit status, and what lands in the
//! store (checked through the library). PostgreSQL runs when `APITOKEN_TEST_POSTGRES_URL` is
//! set, each test in a schema of its own.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apitoken::{
    AuthErrorKind, PostgresStore, ScopeRequirement, SecretHasher, SqliteStore, TokenFormat,
    TokenStore, Verifier,
};

#[path = "support/stores.rs"]
mod stores;

use stores::{postgres_url, unique_name};

const BIN: &str = env!("CARGO_BIN_EXE_apitoken");
/// No command should come near this; a hung one fails the test instead of the run.
const DEADLINE: Duration = Duration::from_secs(60);

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Output {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Runs the binary with `args` and `env`, no inherited `DATABASE_URL`, and a deadline.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("run the apitoken binary");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait for apitoken").is_some() {
            break;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("apitoken {args:?} ran longer than {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect apitoken's output");
    Output {
        code: out.status.code().expect("exited, not killed by a signal"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert_eq!(out.code, 0, "apitoken {args:?} failed: {}", out.stderr);
    out
}

/// Asserts a failure with this exit status, nothing on stdout, and `needle` in stderr.
fn fails(out: &Output, code: i32, needle: &str) {
    assert_eq!(
        out.code, code,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert_eq!(out.stdout, "", "a failed command printed to stdout");
    assert!(
        out.stderr.contains(needle),
        "stderr does not mention {needle:?}: {}",
        out.stderr
    );
}

/// A SQLite file in the temp directory, deleted (with its WAL files) on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("{}.db", unique_name("apitoken_cli"))))
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// generate

#[test]
fn generate_prints_a_token_that_parses_and_the_hash_the_verifier_computes() {
    let cases: [(&[&str], TokenFormat); 5] = [
        (&[], TokenFormat::canonical()),
        (
            &["--prefix", "acme_live_"],
            TokenFormat::builder().prefix("acme_live_").build().unwrap(),
        ),
        (&["--format", "dct", "--id", "42"], TokenFormat::dct()),
        (
            &["--format", "sanctum", "--id", "7"],
            TokenFormat::sanctum(),
        ),
        (
            &["--format", "sanctum", "--id", "7", "--prefix", "acme_"],
            TokenFormat::sanctum_with_prefix("acme_").unwrap(),
        ),
    ];
    for (extra, format) in cases {
        let mut args = vec!["generate"];
        args.extend_from_slice(extra);
        let out = ok(&args);
        let lines = out.lines();
        assert_eq!(lines.len(), 2, "{args:?}: {}", out.stdout);
        let parsed = format
            .parse(lines[0])
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_eq!(
            lines[1],
            SecretHasher::sha256()
                .hash(parsed.secret().as_bytes())
                .to_hex(),
            "{args:?}"
        );
        if let Some(at) = extra.iter().position(|a| *a == "--id") {
            assert_eq!(parsed.id().unwrap().as_str(), extra[at + 1]);
        }
    }
    // Two runs never print the same token.
    assert_ne!(ok(&["generate"]).stdout, ok(&["generate"]).stdout);
}

#[test]
fn generate_hashes_with_the_pepper_from_the_environment() {
    let pepper: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37)).collect();
    let hex: String = pepper.iter().map(|b| format!("{b:02x}")).collect();
    let base64 = "ACVKb5S53gMoTXKXvOEGK1B1mr/kCS5TeJ3C5wwxVns=";
    let peppered = SecretHasher::hmac_sha256(&pepper).unwrap();
    for value in [hex.as_str(), base64] {
        let out = run_env(
            &["generate", "--pepper-env", "APITOKEN_PEPPER"],
            &[("APITOKEN_PEPPER", value)],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        let lines = out.lines();
        let parsed = TokenFormat::canonical().parse(lines[0]).unwrap();
        assert_eq!(lines[1], peppered.hash(parsed.secret().as_bytes()).to_hex());
        assert_ne!(
            lines[1],
            SecretHasher::sha256()
                .hash(parsed.secret().as_bytes())
                .to_hex()
        );
    }

    let out = run(&["generate", "--pepper-env", "APITOKEN_TEST_UNSET_PEPPER"]);
    fails(&out, 1, "APITOKEN_TEST_UNSET_PEPPER is not set");
    let short = "00112233445566778899aabbccddeeff";
    let out = run_env(&["generate", "--pepper-env", "P"], &[("P", short)]);
    fails(&out, 1, "at least 32");
    assert!(
        !out.stderr.contains(short),
        "the pepper leaked: {}",
        out.stderr
    );
    let out = run_env(
        &["generate", "--pepper-env", "P"],
        &[("P", "not a pepper!")],
    );
    fails(&out, 1, "hex or base64");
    assert!(!out.stderr.contains("not a pepper"));
}

#[test]
fn generate_refuses_ids_that_do_not_fit() {
    fails(
        &run(&["generate", "--format", "dct"]),
        2,
        "--id is required",
    );
    fails(
        &run(&["generate", "--format", "dct", "--id", "01"]),
        2,
        "--id does not fit",
    );
    fails(&run(&["generate", "--id", "short"]), 2, "--id does not fit");
    // A whole token pasted as an id is refused without being repeated.
    let token = "1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3";
    let out = run(&["generate", "--format", "dct", "--id", token]);
    fails(&out, 2, "not the whole token");
    assert!(!out.stderr.contains("0p9PMkZO4Hgy"));
}

// ---------------------------------------------------------------------------------------------
// create → list → revoke → list

/// Verifies `token` through the library, on the store the CLI wrote.
async fn verify<S: TokenStore>(
    store: S,
    format: TokenFormat,
    token: &str,
    scope: &str,
) -> Result<(), AuthErrorKind> {
    let verifier = Verifier::builder(store)
        .format(format)
        .disable_last_used()
        .build();
    verifier
        .verify(token, &ScopeRequirement::all([scope]).unwrap())
        .await
        .map(drop)
        .map_err(|e| e.kind())
}

async fn round_trip<S: TokenStore + Clone>(db: &[&str], store: S) {
    let owner = unique_name("team");
    let with_db = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(db.iter().map(|s| s.to_string()));
        all
    };
    let call = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&refs)
    };

    // Two tokens: canonical with scopes and an expiry, DCT with a numeric id.
    let out = call(with_db(&[
        "create",
        "--owner",
        &owner,
        "--name",
        "CI pipeline",
        "--scope",
        "vps:read",
        "--scope",
        "vps:write",
        "--expires-in",
        "90d",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    let (ci_token, ci_id) = (lines[0].to_owned(), lines[1].to_owned());
    assert_eq!(
        TokenFormat::canonical()
            .parse(&ci_token)
            .unwrap()
            .id()
            .unwrap()
            .as_str(),
        ci_id
    );
    let out = call(with_db(&[
        "create", "--owner", &owner, "--name", "monitor", "--format", "dct", "--scope", "vps:read",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines = out.lines();
    let (dct_token, dct_id) = (lines[0].to_owned(), lines[1].to_owned());
    assert!(dct_id.parse::<u64>().is_ok(), "{dct_id}");
    assert!(dct_token.starts_with(&format!("{dct_id}.")));

    // What the CLI stored verifies through the library, with the scopes asked for.
    let canonical = TokenFormat::canonical();
    assert_eq!(
        verify(store.clone(), canonical.clone(), &ci_token, "vps:write").await,
        Ok(())
    );
    assert_eq!(
        verify(store.clone(), TokenFormat::dct(), &dct_token, "vps:write").await,
        Err(AuthErrorKind::InsufficientScope)
    );
    let expires = store
        .get(&ci_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap()
        .record
        .expires_at;
    let days = (expires.unwrap() - chrono::Utc::now()).num_hours();
    assert!((89 * 24..=90 * 24).contains(&days), "{days} hours");

    // The list shows both, and never a secret nor a hash.
    let secrets = [&ci_token, &dct_token].map(|t| {
        let secret = if t == &ci_token {
            canonical.parse(t).unwrap().secret().to_owned()
        } else {
            TokenFormat::dct().parse(t).unwrap().secret().to_owned()
        };
        let hash = SecretHasher::sha256().hash(secret.as_bytes()).to_hex();
        (secret, hash)
    });
    let table = call(with_db(&["list", "--owner", &owner]));
    assert_eq!(table.code, 0, "{}", table.stderr);
    let json = call(with_db(&["list", "--owner", &owner, "--json"]));
    assert_eq!(json.code, 0, "{}", json.stderr);
    for out in [&table, &json] {
        for (secret, hash) in &secrets {
            assert!(
                !out.stdout.contains(&secret[..16]),
                "a secret in: {}",
                out.stdout
            );
            assert!(
                !out.stdout.contains(&hash[..16]),
                "a hash in: {}",
                out.stdout
            );
        }
    }
    let table_lines = table.lines();
    assert_eq!(table_lines.len(), 3, "{}", table.stdout);
    assert!(table_lines[0].starts_with("ID"));
    assert!(table.stdout.contains("CI pipeline") && table.stdout.contains("vps:read,vps:write"));
    let rows: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], ci_id.as_str());
    assert_eq!(rows[0]["name"], "CI pipeline");
    assert_eq!(
        rows[0]["scopes"],
        serde_json::json!(["vps:read", "vps:write"])
    );
    assert!(rows[0]["expires_at"].is_string());
    assert!(rows[0]["revoked_at"].is_null());
    assert_eq!(rows[1]["id"], dct_id.as_str());
    assert!(rows[1]["expires_at"].is_null());

    // Revoke one: it stops verifying, the other still works, the list shows when.
    let out = call(with_db(&["revoke", &ci_id]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&format!("revoked {ci_id}")));
    assert_eq!(
        verify(store.clone(), canonical.clone(), &ci_token, "vps:read").await,
        Err(AuthErrorKind::InvalidToken)
    );
    assert_eq!(
        verify(store.clone(), TokenFormat::dct(), &dct_token, "vps:read").await,
        Ok(())
    );
    let json = call(with_db(&["list", "--owner", &owner, "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert!(rows[0]["revoked_at"].is_string());
    assert!(rows[1]["revoked_at"].is_null());
    // Again: already revoked, not an error. An unknown id is.
    let out = call(with_db(&["revoke", &ci_id]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("already revoked"));
    fails(
        &call(with_db(&["revoke", "NoSuchToken1"])),
        1,
        "no token with id NoSuchToken1",
    );

    // Revoke the rest of the owner's tokens.
    let out = call(with_db(&["revoke", "--owner", &owner]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("revoked 1 token(s)"), "{}", out.stdout);
    assert_eq!(
        verify(store.clone(), TokenFormat::dct(), &dct_token, "vps:read").await,
        Err(AuthErrorKind::InvalidToken)
    );
    let json = call(with_db(&["list", "--owner", &owner, "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["revoked_at"].is_string())
    );
}

async fn sqlite_store(db: &TempDb) -> SqliteStore {
    SqliteStore::connect(&db.url()).await.unwrap()
}

async fn postgres_store(url: &str, schema: &str) -> PostgresStore {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    PostgresStore::builder(pool).schema(schema).unwrap().build()
}

#[tokio::test(flavor = "multi_thread")]
async fn create_list_revoke_on_sqlite() {
    let db = TempDb::new();
    let url = db.url();
    // `create` makes the file and its table.
    let out = ok(&[
        "create",
        "--database",
        &url,
        "--owner",
        "x",
        "--name",
        "first",
    ]);
    assert_eq!(out.lines().len(), 2);
    round_trip(&["--database", &url], sqlite_store(&db).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_list_revoke_on_postgres() {
    let Some(url) = postgres_url() else { return };
    let schema = unique_name("cli");
    let out = ok(&[
        "create",
        "--database",
        &url,
        "--schema",
        &schema,
        "--owner",
        "x",
        "--name",
        "first",
    ]);
    assert_eq!(out.lines().len(), 2);
    round_trip(
        &["--database", &url, "--schema", &schema],
        postgres_store(&url, &schema).await,
    )
    .await;
}

#[test]
fn the_database_url_can_come_from_the_environment() {
    let db = TempDb::new();
    let url = db.url();
    let out = run_env(
        &["create", "--owner", "x", "--name", "n"],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.lines()[1].to_owned();
    let out = run_env(&["list", "--owner", "x"], &[("DATABASE_URL", &url)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&id));
}

// ---------------------------------------------------------------------------------------------
// bootstrap

/// `store` is awaited after the first bootstrap, which must find no database file yet.
async fn bootstrap_once<S, F>(db: &[&str], store: F)
where
    S: TokenStore + Clone,
    F: std::future::Future<Output = S>,
{
    let mut args = vec!["bootstrap"];
    args.extend_from_slice(db);
    let first = ok(&args);
    let lines = first.lines();
    assert_eq!(lines.len(), 2, "{}", first.stdout);
    assert!(first.stderr.contains("cannot be shown again"));
    let store = store.await;
    // The default owner is `admin` and the default scope `admin`.
    assert_eq!(
        verify(store.clone(), TokenFormat::canonical(), lines[0], "admin").await,
        Ok(())
    );
    let admin = apitoken::Owner::new("admin").unwrap();
    assert_eq!(store.list_by_owner(&admin).await.unwrap().len(), 1);

    let second = run(&args);
    fails(&second, 1, "refusing to bootstrap");
    // Still refused once the bootstrap token is revoked: no new admin key from a rerun.
    let mut revoke = vec!["revoke", lines[1]];
    revoke.extend_from_slice(db);
    ok(&revoke);
    fails(&run(&args), 1, "refusing to bootstrap");
    assert_eq!(store.list_by_owner(&admin).await.unwrap().len(), 1);

    // Another owner, with its own scopes and format, bootstraps once too.
    let mut args = vec![
        "bootstrap",
        "--owner",
        "ops",
        "--scope",
        "tokens:write",
        "--scope",
        "vps:read",
        "--format",
        "dct",
    ];
    args.extend_from_slice(db);
    let out = ok(&args);
    let token = out.lines()[0].to_owned();
    assert_eq!(
        verify(store.clone(), TokenFormat::dct(), &token, "tokens:write").await,
        Ok(())
    );
    assert_eq!(
        verify(store.clone(), TokenFormat::dct(), &token, "admin").await,
        Err(AuthErrorKind::InsufficientScope)
    );
    fails(&run(&args), 1, "refusing to bootstrap");
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_runs_once_on_sqlite() {
    let db = TempDb::new();
    let url = db.url();
    // The file does not exist yet: bootstrap creates it.
    bootstrap_once(&["--database", &url], sqlite_store(&db)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_runs_once_on_postgres() {
    let Some(url) = postgres_url() else { return };
    let schema = unique_name("cli");
    bootstrap_once(
        &["--database", &url, "--schema", &schema],
        postgres_store(&url, &schema),
    )
    .await;
}

/// Bootstraps started together: exactly one prints a token; the others make none and say
/// why.
fn concurrent_bootstraps(db: &[&str]) -> Vec<Output> {
    let mut args = vec!["bootstrap".to_owned()];
    args.extend(db.iter().map(|s| s.to_string()));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let args = args.clone();
            std::thread::spawn(move || {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                run(&refs)
            })
        })
        .collect();
    let outs: Vec<Output> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<&Output> = outs.iter().filter(|o| o.code == 0).collect();
    assert_eq!(winners.len(), 1, "bootstraps that printed a token");
    for loser in outs.iter().filter(|o| o.code != 0) {
        assert_eq!(loser.stdout, "", "a refused bootstrap printed a token");
        assert!(
            loser.stderr.contains("refusing to bootstrap"),
            "{}",
            loser.stderr
        );
    }
    outs
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_bootstraps_make_exactly_one_token_on_sqlite() {
    for _ in 0..5 {
        let db = TempDb::new();
        let url = db.url();
        // Create the file first, so the racers meet at the token check, not at file creation.
        ok(&[
            "create",
            "--database",
            &url,
            "--owner",
            "someone-else",
            "--name",
            "n",
        ]);
        concurrent_bootstraps(&["--database", &url]);
        let store = sqlite_store(&db).await;
        let admin = apitoken::Owner::new("admin").unwrap();
        let made = store.list_by_owner(&admin).await.unwrap();
        assert_eq!(made.len(), 1, "no loser leaves a token behind");
        assert!(!made[0].is_revoked());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_bootstraps_make_exactly_one_token_on_postgres() {
    let Some(url) = postgres_url() else { return };
    for _ in 0..5 {
        let schema = unique_name("cli");
        let store = postgres_store(&url, &schema).await;
        store.migrate().await.unwrap();
        concurrent_bootstraps(&["--database", &url, "--schema", &schema]);
        let admin = apitoken::Owner::new("admin").unwrap();
        let made = store.list_by_owner(&admin).await.unwrap();
        assert_eq!(made.len(), 1, "no loser leaves a token behind");
        assert!(!made[0].is_revoked());
    }
}

/// Names written to the table directly (by an older version, another tool, or SQL) may hold
/// characters `create` refuses: `list` must show them escaped, never raw, so a name cannot
/// reorder or hide what the terminal shows.
async fn hostile_names_are_listed_escaped<S: TokenStore>(db: &[&str], store: S) {
    let owner = unique_name("team");
    let names = [
        "deploy\u{202e}gnp.exe",
        "two\u{2028}lines",
        "in\u{200b}visible\u{feff}",
        "\u{1b}[31mred\u{1b}[0m",
    ];
    for (i, name) in names.iter().enumerate() {
        let id = apitoken::TokenId::from_u64(9_000 + i as u64);
        let record = apitoken::TokenRecord::new(
            id,
            apitoken::Owner::new(&owner).unwrap(),
            *name,
            chrono::Utc::now(),
        );
        let hash = SecretHasher::sha256().hash(format!("secret {i}").as_bytes());
        store.insert(record, hash).await.unwrap();
    }
    let with_db = |extra: &[&str]| {
        let mut args = vec!["list", "--owner", owner.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(db);
        ok(&args)
    };
    let table = with_db(&[]);
    let json = with_db(&["--json"]);
    for out in [&table, &json] {
        for c in ['\u{202e}', '\u{2028}', '\u{200b}', '\u{feff}', '\u{1b}'] {
            assert!(
                !out.stdout.contains(c),
                "{c:?} printed raw: {:?}",
                out.stdout
            );
        }
    }
    for shown in [
        "deploy\\u{202e}gnp.exe",
        "two\\u{2028}lines",
        "in\\u{200b}visible\\u{feff}",
        "\\u{1b}[31mred\\u{1b}[0m",
    ] {
        assert!(
            table.stdout.contains(shown),
            "{shown} not in {}",
            table.stdout
        );
    }
    // One line per token: a separator in a name does not break the table.
    assert_eq!(table.lines().len(), 1 + names.len(), "{}", table.stdout);
    // The JSON escapes them too, and still holds the names exactly.
    assert!(
        json.stdout.contains("deploy\\u202egnp.exe"),
        "{}",
        json.stdout
    );
    let rows: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let listed: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, names);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_are_listed_escaped_on_sqlite() {
    let db = TempDb::new();
    let url = db.url();
    ok(&[
        "create",
        "--database",
        &url,
        "--owner",
        "x",
        "--name",
        "first",
    ]);
    hostile_names_are_listed_escaped(&["--database", &url], sqlite_store(&db).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_are_listed_escaped_on_postgres() {
    let Some(url) = postgres_url() else { return };
    let schema = unique_name("cli");
    ok(&[
        "create",
        "--database",
        &url,
        "--schema",
        &schema,
        "--owner",
        "x",
        "--name",
        "first",
    ]);
    hostile_names_are_listed_escaped(
        &["--database", &url, "--schema", &schema],
        postgres_store(&url, &schema).await,
    )
    .await;
}

#[test]
fn create_refuses_a_name_with_a_bidi_override_without_printing_it() {
    let db = TempDb::new();
    let url = db.url();
    for c in ['\u{202e}', '\u{2028}', '\u{200b}', '\u{ad}'] {
        let name = format!("deploy{c}gnp.exe");
        let out = run(&[
            "create",
            "--database",
            &url,
            "--owner",
            "o",
            "--name",
            &name,
        ]);
        fails(&out, 2, "--name");
        assert!(!out.stderr.contains(c), "{c:?} echoed: {:?}", out.stderr);
        assert!(
            !out.stderr.contains("gnp"),
            "the name echoed: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!("U+{:04X}", c as u32)),
            "{}",
            out.stderr
        );
    }
    assert!(!db.0.exists(), "refused before touching the database");
}

// ---------------------------------------------------------------------------------------------
// bad input

#[test]
fn bad_input_exits_2_with_the_problem_on_stderr() {
    let db = TempDb::new();
    let url = db.url();
    let create = |extra: &[&str]| {
        let mut args = vec!["create", "--database", &url, "--owner", "o", "--name", "n"];
        args.extend_from_slice(extra);
        run(&args)
    };
    fails(&create(&["--format", "jwt"]), 2, "--format");
    fails(&create(&["--scope", "has space"]), 2, "invalid scope");
    fails(&create(&["--scope", ""]), 2, "invalid scope");
    fails(&create(&["--expires-in", "5y"]), 2, "unknown unit");
    fails(&create(&["--expires-in", "90"]), 2, "missing unit");
    fails(&create(&["--expires-in", "0d"]), 2, "more than zero");
    fails(&create(&["--prefix", "bad prefix!"]), 2, "prefix");
    fails(&run(&["generate", "--format", "jwt"]), 2, "possible values");
    fails(&run(&["revoke", "--database", &url]), 2, "required");
    fails(
        &run(&["revoke", "--database", &url, "1", "--owner", "o"]),
        2,
        "cannot be used with",
    );
    fails(&run(&["list", "--owner", "o"]), 2, "--database");
    // Nothing was created by the refused commands.
    assert!(!db.0.exists());

    // A bad scheme or a malformed URL: the URL, which may hold a password, is not repeated.
    let out = run(&[
        "list",
        "--database",
        "mysql://root:hunter2@db/app",
        "--owner",
        "o",
    ]);
    fails(&out, 2, "unsupported database URL scheme");
    assert!(!out.stderr.contains("hunter2"));
    let out = run(&[
        "list",
        "--database",
        "postgres://root:hunter2@db:99999/app",
        "--owner",
        "o",
    ]);
    fails(&out, 2, "database URL is not valid");
    assert!(!out.stderr.contains("hunter2"));
    let out = run(&["list", "--database", &url, "--schema", "s", "--owner", "o"]);
    fails(&out, 2, "--schema is for PostgreSQL");
    let out = run(&[
        "list",
        "--database",
        "postgres://u@127.0.0.1:1/x",
        "--schema",
        "Bad",
        "--owner",
        "o",
    ]);
    fails(&out, 2, "--schema");

    // A token pasted where its id belongs is refused, not echoed.
    let token = "1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3";
    let out = run(&["revoke", "--database", &url, token]);
    fails(&out, 2, "not the whole token");
    assert!(!out.stderr.contains("0p9PMkZO4Hgy"));
}

#[test]
fn unreachable_databases_exit_1() {
    // Nothing listens on port 1.
    let started = Instant::now();
    let out = run(&[
        "list",
        "--database",
        "postgres://postgres:hunter2@127.0.0.1:1/x",
        "--owner",
        "o",
    ]);
    fails(&out, 1, "could not reach the database");
    assert!(!out.stderr.contains("hunter2"));
    assert!(started.elapsed() < Duration::from_secs(30));
    let out = run(&[
        "create",
        "--database",
        "postgres://postgres@127.0.0.1:1/x",
        "--owner",
        "o",
        "--name",
        "n",
    ]);
    fails(&out, 1, "could not reach the database");

    // list and revoke do not create a SQLite file at a mistyped path.
    let db = TempDb::new();
    let out = run(&["list", "--database", &db.url(), "--owner", "o"]);
    fails(&out, 1, "could not open the SQLite database");
    let out = run(&["revoke", "--database", &db.url(), "--owner", "o"]);
    fails(&out, 1, "does the file exist");
    assert!(!db.0.exists());
    // A directory that does not exist cannot be created into.
    let out = run(&[
        "create",
        "--database",
        "sqlite:///nonexistent-dir-apitoken/x.db",
        "--owner",
        "o",
        "--name",
        "n",
    ]);
    fails(&out, 1, "could not open the SQLite database");
}

// ---------------------------------------------------------------------------------------------
// list and revoke never migrate

/// A role with only `SELECT`, `INSERT` and `UPDATE` lists and revokes (no DDL is attempted);
/// a schema with no tables is refused with what to do, not created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_revoke_never_migrate_and_need_no_ddl_rights() {
    let Some(url) = postgres_url() else { return };
    let schema = unique_name("cli");
    ok(&[
        "create",
        "--database",
        &url,
        "--schema",
        &schema,
        "--owner",
        "o",
        "--name",
        "n",
    ]);
    let role = unique_name("ro");
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {schema} TO {role}; \
         GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO {role}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let as_role = url.replacen("postgres@", &format!("{role}@"), 1);
    let out = ok(&[
        "list",
        "--database",
        &as_role,
        "--schema",
        &schema,
        "--owner",
        "o",
    ]);
    assert!(out.stdout.contains('n'), "{}", out.stdout);
    let out = ok(&[
        "revoke",
        "--database",
        &as_role,
        "--schema",
        &schema,
        "--owner",
        "o",
    ]);
    assert!(out.stdout.contains("revoked 1"), "{}", out.stdout);

    // Nothing there: refused with the reason, and nothing is created.
    let empty = unique_name("cli");
    let out = run(&[
        "list",
        "--database",
        &url,
        "--schema",
        &empty,
        "--owner",
        "o",
    ]);
    fails(&out, 1, "`list` and `revoke` never do");
    let created: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&empty)
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(!created, "list made the schema");

    // create as the role, in a schema it may not create tables in: a permission error.
    let denied = unique_name("cli");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {denied}")))
        .execute(&admin)
        .await
        .unwrap();
    let out = run(&[
        "create",
        "--database",
        &as_role,
        "--schema",
        &denied,
        "--owner",
        "o",
        "--name",
        "n",
    ]);
    fails(&out, 1, "permission denied");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP OWNED BY {role}; DROP ROLE {role}"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// standard output that cannot be written

/// Runs the binary with standard output on `/dev/full` (every write fails with ENOSPC).
fn run_into_full_stdout(args: &[&str]) -> (i32, String) {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = Command::new(BIN)
        .args(args)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::from(full))
        .stderr(Stdio::piped())
        .output()
        .expect("run the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `create` and `bootstrap` whose token cannot be printed exit 1 (no panic, no backtrace)
/// and revoke the token no one saw; `list` and `generate` exit 1 too.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_cannot_be_printed_is_revoked_and_the_run_fails_cleanly() {
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full on this system");
        return;
    }
    let db = TempDb::new();
    let url = db.url();
    for (args, then) in [
        (
            vec!["create", "--database", &url, "--owner", "o", "--name", "n"],
            "apitoken create",
        ),
        (
            vec!["bootstrap", "--database", &url],
            "apitoken create --scope admin",
        ),
    ] {
        let (code, stderr) = run_into_full_stdout(&args);
        assert_eq!(code, 1, "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains("could not write to standard output"),
            "{stderr}"
        );
        assert!(
            stderr.contains("was revoked, since no one saw it"),
            "{stderr}"
        );
        assert!(stderr.contains(then), "{stderr}");
    }
    let store = sqlite_store(&db).await;
    for owner in ["o", "admin"] {
        let made = store
            .list_by_owner(&apitoken::Owner::new(owner).unwrap())
            .await
            .unwrap();
        assert_eq!(made.len(), 1, "{owner}");
        assert!(made[0].is_revoked(), "{owner}'s unseen token is revoked");
    }
    let (code, stderr) = run_into_full_stdout(&["list", "--database", &url, "--owner", "o"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (code, stderr) = run_into_full_stdout(&["generate"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// TLS to PostgreSQL

/// `sslmode=require` connects over TLS (it refuses plaintext, so success means TLS), and
/// `verify-full` checks the server's certificate rather than falling back to plaintext.
/// Skipped when the server has no TLS.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_speaks_tls_to_postgres() {
    let Some(url) = postgres_url() else { return };
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&pool)
        .await
        .unwrap();
    if ssl != "on" {
        eprintln!("skipped: the PostgreSQL server has ssl = {ssl}");
        return;
    }
    let schema = unique_name("cli");
    let sep = if url.contains('?') { '&' } else { '?' };
    let require = format!("{url}{sep}sslmode=require");
    let out = ok(&[
        "create",
        "--database",
        &require,
        "--schema",
        &schema,
        "--owner",
        "o",
        "--name",
        "tls",
    ]);
    let id = out.lines()[1].to_owned();
    let listed = ok(&[
        "list",
        "--database",
        &require,
        "--schema",
        &schema,
        "--owner",
        "o",
    ]);
    assert!(listed.stdout.contains(&id));
    // The server's certificate is not one the system trusts (a test server's own): verify-full
    // must refuse it, not connect in plaintext.
    let full = format!("{url}{sep}sslmode=verify-full");
    let out = run(&[
        "list",
        "--database",
        &full,
        "--schema",
        &schema,
        "--owner",
        "o",
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        !out.stderr.contains("without TLS support"),
        "{}",
        out.stderr
    );
}
