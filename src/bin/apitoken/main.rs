//! `apitoken`: issue, list and revoke API tokens from the command line.
//!
//! Built with the `cli` feature. See `docs/cli.md` for every command with an example session.

mod args;
mod db;
mod list;
mod pepper;

use std::process::ExitCode;

use apitoken::{
    Checksum, IdKind, NewToken, Owner, ScopeSet, TokenFormat, TokenId, TokenStore, Verifier,
};
use chrono::Utc;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use crate::args::{
    BootstrapArgs, Cli, Command, CreateArgs, FormatArgs, FormatName, GenerateArgs, IssueArgs,
    ListArgs, RevokeArgs,
};
use crate::db::{Database, chain};

/// Why a command failed. Messages never hold a secret, a hash, a pepper or a database URL.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad input: exit status 2, as clap's own usage errors.
    Usage(String),
    /// The work could not be done: exit status 1.
    Runtime(String),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = cli.command.name();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            // clap's own format and exit status (2), with the subcommand's usage line.
            let mut cli = Cli::command();
            cli.build();
            let command = cli
                .find_subcommand_mut(name)
                .unwrap_or_else(|| unreachable!());
            command.error(ErrorKind::ValueValidation, message).exit()
        }
        Err(Failure::Runtime(message)) => {
            note(&format!("error: {message}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    if let Command::Generate(args) = &command {
        return generate(args);
    }
    let (db_args, create) = match &command {
        Command::Generate(_) => unreachable!("handled above"),
        Command::Create(args) => (&args.db, true),
        Command::Bootstrap(args) => (&args.db, true),
        Command::List(args) => (&args.db, false),
        Command::Revoke(args) => (&args.db, false),
    };
    // Check what needs no database before connecting to one.
    match &command {
        Command::Create(CreateArgs { name, .. })
        | Command::Bootstrap(BootstrapArgs { name, .. }) => {
            args::check_name(name).map_err(Failure::Usage)?;
        }
        _ => {}
    }
    let prepared = match &command {
        Command::Create(args) => Some(prepare(&args.issue)?),
        Command::Bootstrap(args) => Some(prepare(&args.issue)?),
        _ => None,
    };
    let revoke_id = match &command {
        Command::Revoke(args) => args.id.as_deref().map(token_id).transpose()?,
        _ => None,
    };
    let database = db::open(db_args, create).await?;
    let result = match &database {
        Database::Postgres(store) => {
            run_on(store.clone(), &command, prepared.as_ref(), revoke_id).await
        }
        Database::Sqlite(store) => {
            run_on(store.clone(), &command, prepared.as_ref(), revoke_id).await
        }
    };
    database.close().await;
    result
}

async fn run_on<S: TokenStore>(
    store: S,
    command: &Command,
    prepared: Option<&Prepared>,
    revoke_id: Option<TokenId>,
) -> Result<(), Failure> {
    match (command, prepared) {
        (Command::Create(args), Some(prepared)) => create(store, args, prepared).await,
        (Command::Bootstrap(args), Some(prepared)) => bootstrap(store, args, prepared).await,
        (Command::List(args), _) => list(&store, args).await,
        (Command::Revoke(args), _) => revoke(&store, args, revoke_id).await,
        _ => unreachable!("every command is matched with what it needs"),
    }
}

/// The token format the options ask for.
fn format(args: &FormatArgs) -> Result<TokenFormat, Failure> {
    let built = match (args.format, args.prefix.as_deref()) {
        (FormatName::Canonical, None) => Ok(TokenFormat::canonical()),
        (FormatName::Canonical, Some(prefix)) => TokenFormat::builder().prefix(prefix).build(),
        (FormatName::Dct, None) => Ok(TokenFormat::dct()),
        // `TokenFormat::dct()` with a prefix: the same settings through the builder.
        (FormatName::Dct, Some(prefix)) => TokenFormat::builder()
            .prefix(prefix)
            .id(IdKind::Numeric)
            .checksum(Checksum::None)
            .secret_chars(64)
            .accept_secret_lengths(16..=256)
            .build(),
        (FormatName::Sanctum, None) => Ok(TokenFormat::sanctum()),
        (FormatName::Sanctum, Some(prefix)) => TokenFormat::sanctum_with_prefix(prefix),
    };
    built.map_err(|e| Failure::Usage(format!("--prefix: {e}")))
}

/// A token id from the command line. The text is not repeated in the error: it may be a whole
/// token pasted where its id belongs.
fn token_id(text: &str) -> Result<TokenId, Failure> {
    TokenId::new(text).map_err(|_| {
        Failure::Usage(
            "the id is not valid: expected the id `list` shows (up to 40 letters, digits, '-' \
             or '_'), not the whole token"
                .into(),
        )
    })
}

/// A random id of `len` base62 characters, drawn by the crate's own generator: the secret of
/// an id-less format, made for the purpose, is `len` or more uniform characters from the OS
/// CSPRNG.
fn random_id(len: usize) -> Result<TokenId, Failure> {
    let source = TokenFormat::builder()
        .id(IdKind::None)
        .prefix("x")
        .checksum(Checksum::None)
        .secret_chars(len.max(22))
        .build()
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    let text = source
        .generate(None)
        .map_err(|e| Failure::Runtime(chain(&e)))?;
    let chars = &text.expose_secret()[1..=len];
    TokenId::new(chars).map_err(|e| Failure::Runtime(e.to_string()))
}

fn generate(args: &GenerateArgs) -> Result<(), Failure> {
    let format = format(&args.format)?;
    let hasher = pepper::hasher(args.format.pepper_env.as_deref()).map_err(Failure::Runtime)?;
    let id = match (&args.id, format.id_kind()) {
        (Some(text), _) => Some(token_id(text)?),
        (None, IdKind::Random { len }) => Some(random_id(len)?),
        (None, IdKind::Numeric) => {
            return Err(Failure::Usage(
                "--id is required for the dct and sanctum formats: use the id of the row the \
                 hash goes into"
                    .into(),
            ));
        }
        (None, _) => None,
    };
    let token = format.generate(id.as_ref()).map_err(|e| match e {
        apitoken::GenerateError::Format(_) => Failure::Usage(format!(
            "--id does not fit the {} format (canonical: 12 letters and digits; dct and \
             sanctum: a decimal number without leading zeros)",
            args.format.format.name()
        )),
        other => Failure::Runtime(chain(&other)),
    })?;
    // Hash exactly what the verifier hashes: the secret part of the text as parsed.
    let parsed = format
        .parse(token.expose_secret())
        .map_err(|e| Failure::Runtime(format!("a generated token did not parse: {e}")))?;
    let hash = hasher.hash(parsed.secret().as_bytes());
    emit(&[token.expose_secret(), &hash.to_hex()])?;
    Ok(())
}

/// What `create` and `bootstrap` check before connecting.
struct Prepared {
    format: TokenFormat,
    hasher: apitoken::SecretHasher,
}

fn prepare(args: &IssueArgs) -> Result<Prepared, Failure> {
    Ok(Prepared {
        format: format(&args.format)?,
        hasher: pepper::hasher(args.format.pepper_env.as_deref()).map_err(Failure::Runtime)?,
    })
}

fn new_token(name: &str, owner: &Owner, scopes: ScopeSet, args: &IssueArgs) -> NewToken {
    let token = NewToken::new(name, owner.clone()).scope_set(scopes);
    match args.expires_in {
        Some(delta) => token.expires_in(delta),
        None => token,
    }
}

fn verifier<S: TokenStore>(store: S, prepared: &Prepared) -> Verifier<S> {
    Verifier::builder(store)
        .format(prepared.format.clone())
        .hasher(prepared.hasher.clone())
        .disable_last_used()
        .build()
}

/// Writes a message to standard error, ignoring a failure to: the outcome is in the exit
/// status, and `eprintln!` would panic instead (exit 101) when standard error is closed or
/// full, after a token may have been printed.
fn note(message: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{message}");
}

/// Writes `lines` to standard output and flushes, reporting a failure (a full disk, a closed
/// pipe) as one instead of panicking as `println!` does.
fn emit(lines: &[&str]) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    lines
        .iter()
        .try_for_each(|line| writeln!(out, "{line}"))
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Runtime(format!("could not write to standard output: {e}")))
}

/// Prints a newly issued token and its id. If standard output cannot take them, no one has
/// seen the token: it is revoked, and the failure says so (and what to do, `then`).
async fn shown_or_revoked<S: TokenStore>(
    store: &S,
    issued: &apitoken::IssuedToken,
    then: &str,
) -> Result<(), Failure> {
    let id = issued.record.id;
    let Err(Failure::Runtime(why)) = emit(&[issued.token.expose_secret(), id.as_str()]) else {
        return Ok(());
    };
    let outcome = match store.revoke(&id, Utc::now()).await {
        Ok(_) => format!("token {id} was revoked, since no one saw it. {then}"),
        Err(e) => format!(
            "token {id} could not be revoked ({}): revoke it with `apitoken revoke {id}`",
            db::chain(&e)
        ),
    };
    Err(Failure::Runtime(format!("{why}; {outcome}")))
}

fn store_failure(what: &str, err: &dyn std::error::Error) -> Failure {
    Failure::Runtime(format!("{what}: {}", chain(err)))
}

async fn create<S: TokenStore>(
    store: S,
    args: &CreateArgs,
    prepared: &Prepared,
) -> Result<(), Failure> {
    let scopes: ScopeSet = args.issue.scopes.iter().cloned().collect();
    let verifier = verifier(store, prepared);
    let issued = verifier
        .issuer()
        .issue(new_token(&args.name, &args.owner, scopes, &args.issue))
        .await
        .map_err(|e| store_failure("could not issue the token", &e))?;
    shown_or_revoked(
        verifier.store(),
        &issued,
        "Issue one again with `apitoken create`",
    )
    .await?;
    note(&format!(
        "Issued token {} for {}. Copy it now: it is stored only as a hash and cannot be shown \
         again.",
        issued.record.id, issued.record.owner
    ));
    Ok(())
}

async fn bootstrap<S: TokenStore>(
    store: S,
    args: &BootstrapArgs,
    prepared: &Prepared,
) -> Result<(), Failure> {
    let owner = &args.owner;
    let verifier = verifier(store, prepared);
    let scopes: ScopeSet = if args.issue.scopes.is_empty() {
        ScopeSet::parse("admin").map_err(|e| Failure::Runtime(e.to_string()))?
    } else {
        args.issue.scopes.iter().cloned().collect()
    };
    // Check and insert are one step in the store (an advisory lock on PostgreSQL, a write
    // transaction on SQLite): of runs started together, exactly one makes the token.
    let issued = verifier
        .issuer()
        .issue_first(new_token(&args.name, owner, scopes, &args.issue))
        .await
        .map_err(|e| store_failure("could not issue the token", &e))?;
    let Some(issued) = issued else {
        let existing = verifier
            .store()
            .list_by_owner(owner)
            .await
            .map_or_else(|_| "some".to_owned(), |records| records.len().to_string());
        return Err(Failure::Runtime(format!(
            "refusing to bootstrap: {owner} already has {existing} token(s), revoked and expired \
             ones included. Bootstrap makes only the first admin token; issue more with \
             `apitoken create` or through your API"
        )));
    };
    shown_or_revoked(
        verifier.store(),
        &issued,
        "Bootstrap now refuses for this owner: make the first admin token with `apitoken \
         create --scope admin` instead",
    )
    .await?;
    note(&format!(
        "Bootstrap token {} for {} (scopes: {}). Copy it now: it cannot be shown again. Issue \
         a new admin token with it, then revoke this one (`apitoken revoke {}`).",
        issued.record.id, owner, issued.record.scopes, issued.record.id
    ));
    Ok(())
}

async fn list<S: TokenStore>(store: &S, args: &ListArgs) -> Result<(), Failure> {
    let records = store
        .list_by_owner(&args.owner)
        .await
        .map_err(|e| store_failure("could not list tokens", &e))?;
    let out = if args.json {
        list::json(&records)
    } else {
        list::table(&records)
    };
    emit(&[out.trim_end_matches('\n')])?;
    Ok(())
}

async fn revoke<S: TokenStore>(
    store: &S,
    args: &RevokeArgs,
    id: Option<TokenId>,
) -> Result<(), Failure> {
    let now = Utc::now();
    if let Some(owner) = &args.owner {
        let n = store
            .revoke_owner(owner, now)
            .await
            .map_err(|e| store_failure("could not revoke", &e))?;
        emit(&[&format!("revoked {n} token(s) of {owner}")])?;
        return Ok(());
    }
    let Some(id) = id else {
        return Err(Failure::Usage("give a token id or --owner".into()));
    };
    let revoked = store
        .revoke(&id, now)
        .await
        .map_err(|e| store_failure("could not revoke", &e))?;
    if revoked {
        emit(&[&format!("revoked {id}")])?;
        return Ok(());
    }
    match store.get(&id).await {
        Ok(Some(stored)) if stored.record.is_revoked() => {
            emit(&[&format!("{id} was already revoked")])?;
            Ok(())
        }
        Ok(Some(_)) => Err(Failure::Runtime(format!(
            "token {id} was not revoked: it changed meanwhile; try again"
        ))),
        Ok(None) => Err(Failure::Runtime(format!("no token with id {id}"))),
        Err(e) => Err(store_failure("could not look the token up", &e)),
    }
}
