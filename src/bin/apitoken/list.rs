//! `list` output: a table for people, JSON for scripts. Records hold no secret and no hash.
//!
//! Names are printed with the characters `create` refuses escaped (`\u{202e}` in the table,
//! `\u202e` in the JSON, the same value): a name written to the table by other means, or
//! before the rule, must not reorder or hide what the terminal shows.

use apitoken::TokenRecord;
use apitoken::name::{EscapedName, escape_json};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// One token as `list --json` prints it.
#[derive(Debug, Serialize)]
struct Row<'a> {
    id: &'a str,
    name: &'a str,
    owner: &'a str,
    scopes: Vec<&'a str>,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

pub(crate) fn json(records: &[TokenRecord]) -> String {
    let rows: Vec<Row<'_>> = records
        .iter()
        .map(|r| Row {
            id: r.id.as_str(),
            name: &r.name,
            owner: r.owner.as_str(),
            scopes: r.scopes.iter().map(|s| s.as_str()).collect(),
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
        })
        .collect();
    // Serializing strings and times cannot fail.
    let out = serde_json::to_string_pretty(&rows).unwrap_or_default();
    let mut out = escape_json(&out).into_owned();
    out.push('\n');
    out
}

fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |at| at.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

pub(crate) fn table(records: &[TokenRecord]) -> String {
    const HEADER: [&str; 7] = [
        "ID",
        "NAME",
        "SCOPES",
        "CREATED",
        "LAST USED",
        "EXPIRES",
        "REVOKED",
    ];
    let mut rows: Vec<[String; 7]> = vec![HEADER.map(str::to_owned)];
    for r in records {
        let scopes: Vec<&str> = r.scopes.iter().map(|s| s.as_str()).collect();
        rows.push([
            r.id.to_string(),
            EscapedName::new(&r.name).to_string(),
            if scopes.is_empty() {
                "-".to_owned()
            } else {
                scopes.join(",")
            },
            time(Some(r.created_at)),
            time(r.last_used_at),
            time(r.expires_at),
            time(r.revoked_at),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
