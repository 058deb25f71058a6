//! Issue, verify, check scopes, record last use, revoke; then parse the token of every seed
//! format. No HTTP: the library alone.
//!
//! ```sh
//! cargo run --example library
//! ```

use apitoken::{
    AuthErrorKind, MemoryStore, NewToken, Owner, ScopeRequirement, TokenFormat, TokenStore,
    Verifier,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let format = TokenFormat::builder().prefix("demo_live_").build()?;
    let verifier = Verifier::builder(MemoryStore::new()).format(format).build();

    // 1. Issue a read-only token. The text is shown once; the store keeps its SHA-256.
    let issued = verifier
        .issuer()
        .issue(
            NewToken::new("Production Server", Owner::new("team-1")?)
                .scopes(["vps:read", "storage:read"])?,
        )
        .await?;
    let token = issued.token.expose_secret();
    println!("issued token {} (shown once): {token}", issued.record.id);

    // 2. Verify it with the scope a `GET /api/v1/vps` route needs.
    let principal = verifier
        .verify(token, &ScopeRequirement::all(["vps:read"])?)
        .await?;
    println!(
        "verified: token {} named {:?} acts for {} with scopes [{}]",
        principal.token_id(),
        principal.name(),
        principal.owner(),
        principal.scopes()
    );

    // 2b. Last use is noted in memory and written in batches, never on the request path. A
    // service spawns `verifier.spawn_last_used_flusher()`; here we flush by hand.
    let written = verifier.flush_last_used().await?;
    let stored = verifier.store().get(&issued.record.id).await?;
    println!(
        "flushed last use of {written} token(s): last used at {:?}",
        stored.and_then(|s| s.record.last_used_at)
    );

    // 3. Least privilege: the same token cannot write.
    let err = verifier
        .verify(token, &ScopeRequirement::all(["vps:write"])?)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);
    println!(
        "POST needs vps:write: refused ({err}), missing [{}]",
        err.missing_scopes()
            .map(ToString::to_string)
            .unwrap_or_default()
    );

    // 4. A mistyped token is refused by its checksum, before any store lookup.
    let last = if token.ends_with('x') { 'y' } else { 'x' };
    let mistyped = format!("{}{last}", &token[..token.len() - 1]);
    let err = verifier.authenticate(&mistyped).await.unwrap_err();
    println!(
        "mistyped token: {err} (reason for logs: {:?})",
        err.reason()
    );

    // 5. Revocation is immediate.
    verifier.revoke(&issued.record.id).await?;
    let err = verifier.authenticate(token).await.unwrap_err();
    println!("after revoke: {err} (reason for logs: {:?})", err.reason());

    // 6. Every format in the seed documents parses, with the id it names.
    let seeds = [
        (
            "Delphix DCT",
            TokenFormat::dct(),
            "1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3",
        ),
        (
            "Laravel Sanctum",
            TokenFormat::sanctum(),
            "1|7TEwyZaQXMXRVBZV9USjWNRbXAbPv9BrgMJSLDCk345196d2",
        ),
    ];
    for (system, format, text) in seeds {
        let parsed = format.parse(text)?;
        println!(
            "{system}: id {}",
            parsed.id().map_or("(none)", |id| id.as_str())
        );
    }
    Ok(())
}
