//! The command line: subcommands, options, and the parsers that check each value.

use apitoken::{Owner, Scope, TokenFormat};
use chrono::TimeDelta;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// Issue, list and revoke API tokens in a PostgreSQL or SQLite token store.
///
/// Exit status: 0 on success, 2 for a usage error (bad option or value), 1 for anything
/// that failed at run time (database unreachable, bootstrap refused, unknown id, bad pepper).
#[derive(Debug, Parser)]
#[command(name = "apitoken", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print a new token and, on the second line, its stored hash (hex). Touches no database.
    Generate(GenerateArgs),
    /// Issue a token into a store and print it, once, with its id.
    Create(CreateArgs),
    /// List an owner's tokens: never a secret nor a hash.
    List(ListArgs),
    /// Revoke one token by id, or every token of an owner.
    Revoke(RevokeArgs),
    /// Create the first admin token, only if the owner has no token yet (Delphix DCT's flow).
    Bootstrap(BootstrapArgs),
}

impl Command {
    /// The subcommand's name, as typed.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Command::Generate(_) => "generate",
            Command::Create(_) => "create",
            Command::List(_) => "list",
            Command::Revoke(_) => "revoke",
            Command::Bootstrap(_) => "bootstrap",
        }
    }
}

/// The token format and the hasher's pepper.
#[derive(Debug, Args)]
pub(crate) struct FormatArgs {
    /// The token format.
    #[arg(long, value_enum, default_value_t = FormatName::Canonical)]
    pub(crate) format: FormatName,
    /// A type prefix such as `acme_live_` (1 to 32 ASCII letters, digits, `_` or `-`).
    #[arg(long, value_name = "PREFIX", value_parser = parse_prefix)]
    pub(crate) prefix: Option<String>,
    /// Read the HMAC pepper (hex or base64, at least 32 bytes) from this environment
    /// variable. Without it, secrets are hashed with plain SHA-256.
    #[arg(long, value_name = "VAR")]
    pub(crate) pepper_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FormatName {
    /// `{12 random base62}.{43 base62}{6 base62 checksum}`.
    Canonical,
    /// Delphix DCT: `{decimal id}.{64 base62}`.
    Dct,
    /// Laravel Sanctum: `{decimal id}|{40 base62}{crc32b hex}`.
    Sanctum,
}

impl FormatName {
    pub(crate) fn name(self) -> &'static str {
        match self {
            FormatName::Canonical => "canonical",
            FormatName::Dct => "dct",
            FormatName::Sanctum => "sanctum",
        }
    }
}

/// Where the tokens are stored.
#[derive(Debug, Args)]
pub(crate) struct DatabaseArgs {
    /// `postgres://…` or `sqlite://path`. Falls back to $DATABASE_URL, which keeps a
    /// password out of `ps` and shell history.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub(crate) database: String,
    /// PostgreSQL only: keep the tables in this schema (created if missing).
    #[arg(long, value_name = "SCHEMA")]
    pub(crate) schema: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    pub(crate) format: FormatArgs,
    /// The record id to put in the token. Required for the numeric formats (dct, sanctum);
    /// canonical tokens get a random 12-character id without it.
    #[arg(long, value_name = "ID")]
    pub(crate) id: Option<String>,
}

/// What `create` and `bootstrap` share.
#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// A scope to grant, such as `vps:read`. Repeat for several.
    #[arg(long = "scope", value_name = "SCOPE", value_parser = parse_scope)]
    pub(crate) scopes: Vec<Scope>,
    /// Lifetime: a number and a unit, `s`, `m`, `h`, `d` or `w` (`90d`, `12h`, `30m`).
    /// Without it the token does not expire.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) expires_in: Option<TimeDelta>,
    #[command(flatten)]
    pub(crate) format: FormatArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    pub(crate) db: DatabaseArgs,
    /// The account, team or service the token acts for.
    #[arg(long, value_parser = parse_owner)]
    pub(crate) owner: Owner,
    /// A name shown in token lists, such as "CI pipeline".
    // Checked in `main`, not by clap, whose error would repeat the name raw (see `check_name`).
    #[arg(long)]
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) issue: IssueArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) db: DatabaseArgs,
    /// Whose tokens to list.
    #[arg(long, value_parser = parse_owner)]
    pub(crate) owner: Owner,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["id", "owner"])))]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    pub(crate) db: DatabaseArgs,
    /// The id of the token to revoke, as `list` shows it (not the token itself).
    #[arg(value_name = "ID")]
    pub(crate) id: Option<String>,
    /// Revoke every token of this owner instead.
    #[arg(long, value_parser = parse_owner)]
    pub(crate) owner: Option<Owner>,
}

#[derive(Debug, Args)]
pub(crate) struct BootstrapArgs {
    #[command(flatten)]
    pub(crate) db: DatabaseArgs,
    /// The owner of the admin token. Bootstrap refuses if this owner has any token,
    /// revoked and expired ones included.
    #[arg(long, default_value = "admin", value_parser = parse_owner)]
    pub(crate) owner: Owner,
    /// The token's name.
    #[arg(long, default_value = "bootstrap")]
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) issue: IssueArgs,
}

fn parse_prefix(text: &str) -> Result<String, String> {
    TokenFormat::builder()
        .prefix(text)
        .build()
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    Scope::new(text).map_err(|e| e.to_string())
}

fn parse_owner(text: &str) -> Result<Owner, String> {
    Owner::new(text).map_err(|e| e.to_string())
}

/// A `--name`: the error names the rule and the character's code point, never the name,
/// which may hold characters that reorder or hide what the terminal shows.
pub(crate) fn check_name(text: &str) -> Result<(), String> {
    apitoken::name::check_name(text).map_err(|e| format!("--name: {e}"))
}

/// `90d`, `12h`, `30m`, `45s`, `2w`: a positive whole number and one unit.
pub(crate) fn parse_duration(text: &str) -> Result<TimeDelta, String> {
    const HELP: &str = "expected a positive number and a unit s, m, h, d or w, such as 90d or 12h";
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("missing unit: {HELP}"))?;
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits.parse().map_err(|_| HELP.to_owned())?;
    if n == 0 {
        return Err(format!("the duration must be more than zero: {HELP}"));
    }
    let delta = match unit {
        "s" => TimeDelta::try_seconds(n),
        "m" => TimeDelta::try_minutes(n),
        "h" => TimeDelta::try_hours(n),
        "d" => TimeDelta::try_days(n),
        "w" => TimeDelta::try_weeks(n),
        _ => return Err(format!("unknown unit: {HELP}")),
    };
    delta.ok_or_else(|| "the duration is too long".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d"), Ok(TimeDelta::days(90)));
        assert_eq!(parse_duration("12h"), Ok(TimeDelta::hours(12)));
        assert_eq!(parse_duration("30m"), Ok(TimeDelta::minutes(30)));
        assert_eq!(parse_duration("45s"), Ok(TimeDelta::seconds(45)));
        assert_eq!(parse_duration("2w"), Ok(TimeDelta::weeks(2)));
        for bad in [
            "",
            "90",
            "d",
            "0d",
            "-1d",
            "1.5d",
            "1y",
            "1 d",
            "1dd",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("9223372036854775807w").is_err());
    }
}
