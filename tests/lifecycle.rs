//! Token lifecycle and policy, end to end: rotation and its grace window, owner-wide
//! revocation across replicas, idle expiry, IP allowlists behind and without proxies, audit
//! events.

#[path = "support/stores.rs"]
mod stores;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apitoken::middleware::{AuthLayer, PeerAddr, TrustedProxies};
use apitoken::{
    AuditEvent, AuditOutcome, AuthErrorKind, CachedStore, IssueError, ManualClock, MemoryStore,
    NewToken, Owner, RejectReason, TokenStore, Verifier,
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use http::{Request, Response, StatusCode};
use tower::{ServiceExt, service_fn};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn team(n: u32) -> Owner {
    Owner::new(&format!("team-{n}")).unwrap()
}

async fn rotation_edges<S: TokenStore + 'static>(store: S) {
    let clock = Arc::new(ManualClock::new(t0()));
    let verifier = Verifier::builder(store).clock(clock.clone()).build();
    let issuer = verifier.issuer();
    let old = issuer
        .issue(
            NewToken::new("deploy", team(1))
                .scopes(["vps:read"])
                .unwrap()
                .allowed_ips(["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()])
                .expires_in(TimeDelta::days(90)),
        )
        .await
        .unwrap();
    let old_token = old.token.expose_secret();

    clock.set(t0() + TimeDelta::days(10));
    let grace = TimeDelta::hours(1);
    let new = issuer.rotate(&old.record.id, grace).await.expect("rotate");
    let new_token = new.token.expose_secret();
    assert_ne!(new.record.id, old.record.id);
    assert_eq!(new.record.name, "deploy");
    assert_eq!(new.record.owner, team(1));
    assert_eq!(new.record.scopes, old.record.scopes);
    assert_eq!(new.record.allowed_ips, old.record.allowed_ips);
    // The same 90-day lifetime, counted from the rotation.
    assert_eq!(
        new.record.expires_at,
        Some(t0() + TimeDelta::days(10) + TimeDelta::days(90))
    );
    let ip = Some("192.0.2.1".parse().unwrap());
    let info = apitoken::RequestInfo::new().client_ip(ip);
    let none = apitoken::ScopeRequirement::none();

    // Inside the grace window both work; at its end the old one has expired.
    clock.set(t0() + TimeDelta::days(10) + grace - TimeDelta::seconds(1));
    assert!(
        verifier
            .verify_request(old_token, &none, &info)
            .await
            .is_ok()
    );
    assert!(
        verifier
            .verify_request(new_token, &none, &info)
            .await
            .is_ok()
    );
    clock.set(t0() + TimeDelta::days(10) + grace);
    let err = verifier
        .verify_request(old_token, &none, &info)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Expired));
    assert!(
        verifier
            .verify_request(new_token, &none, &info)
            .await
            .is_ok()
    );

    // A retired token cannot be rotated again; zero grace revokes at once.
    assert!(matches!(
        issuer.rotate(&old.record.id, grace).await,
        Err(IssueError::NotFound)
    ));
    let newest = issuer
        .rotate(&new.record.id, TimeDelta::zero())
        .await
        .unwrap();
    let err = verifier
        .verify_request(new_token, &none, &info)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Revoked));
    assert!(
        verifier
            .verify_request(newest.token.expose_secret(), &none, &info)
            .await
            .is_ok()
    );
    // Nothing is issued for an unknown id.
    assert!(matches!(
        issuer.rotate(&"ZZZZZZZZZZZZ".parse().unwrap(), grace).await,
        Err(IssueError::NotFound)
    ));
}

#[tokio::test]
async fn rotation_grace_window_in_memory() {
    rotation_edges(MemoryStore::new()).await;
    rotation_edges(CachedStore::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn rotation_grace_window_in_sqlite() {
    rotation_edges(stores::sqlite().await).await;
}

#[tokio::test]
async fn rotation_grace_window_in_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    rotation_edges(stores::postgres(&url).await).await;
}

#[tokio::test]
async fn owner_revocation_is_seen_by_another_replicas_cache() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let schema = stores::unique_name("owners");
    let replica = |url: String, schema: String| async move {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let store = CachedStore::builder(stores::postgres_on(pool, &schema).await)
            .ttl(Duration::from_secs(600))
            .build();
        let _listener = store.spawn_change_listener();
        Verifier::builder(store).build()
    };
    let a = replica(url.clone(), schema.clone()).await;
    let b = replica(url, schema).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tokens = Vec::new();
    for name in ["laptop", "ci", "backup"] {
        let issued = a
            .issuer()
            .issue(NewToken::new(name, team(7)))
            .await
            .unwrap();
        tokens.push(issued.token);
    }
    let other = a.issuer().issue(NewToken::new("x", team(8))).await.unwrap();
    for token in &tokens {
        b.authenticate(token.expose_secret()).await.unwrap(); // cached in B
    }

    // "An employee leaves": everything of team-7 goes, through A.
    assert_eq!(a.store().revoke_owner(&team(7), a.now()).await.unwrap(), 3);
    let started = Instant::now();
    for token in &tokens {
        loop {
            match b.authenticate(token.expose_secret()).await {
                Err(err) => {
                    assert_eq!(err.reason(), Some(RejectReason::Revoked));
                    break;
                }
                Ok(_) => {
                    assert!(
                        started.elapsed() < Duration::from_millis(100),
                        "B still accepts"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    }
    assert!(b.authenticate(other.token.expose_secret()).await.is_ok());
}

#[test]
fn an_idle_limit_without_last_use_is_refused_at_build_time() {
    use apitoken::VerifierBuildError;

    // Idle time counts from the last use; with none recorded every token in use would
    // expire max_idle after its creation.
    let idle = || Verifier::builder(MemoryStore::new()).max_idle(TimeDelta::days(30));
    assert_eq!(
        idle().disable_last_used().try_build().unwrap_err(),
        VerifierBuildError::IdleWithoutLastUse
    );
    assert_eq!(
        idle().last_used_max_pending(0).try_build().unwrap_err(),
        VerifierBuildError::IdleWithoutLastUse
    );
    assert!(idle().last_used_max_pending(1).try_build().is_ok());
    assert!(
        Verifier::builder(MemoryStore::new())
            .disable_last_used()
            .try_build()
            .is_ok()
    );
    let panicked = std::panic::catch_unwind(|| idle().disable_last_used().build()).unwrap_err();
    let message = panicked.downcast_ref::<String>().expect("a message");
    assert!(message.contains("max_idle"), "{message}");
}

#[tokio::test]
async fn idle_tokens_expire_and_use_keeps_them_alive() {
    let clock = Arc::new(ManualClock::new(t0()));
    let verifier = Verifier::builder(MemoryStore::new())
        .clock(clock.clone())
        .max_idle(TimeDelta::days(30))
        .build();
    let unused = verifier
        .issuer()
        .issue(NewToken::new("unused", team(1)))
        .await
        .unwrap();
    let used = verifier
        .issuer()
        .issue(NewToken::new("used", team(1)))
        .await
        .unwrap();

    clock.set(t0() + TimeDelta::days(10));
    verifier
        .authenticate(used.token.expose_secret())
        .await
        .unwrap();
    // Never used: idle since creation. One second before the limit it still works.
    clock.set(t0() + TimeDelta::days(30) - TimeDelta::seconds(1));
    assert!(
        verifier
            .authenticate(unused.token.expose_secret())
            .await
            .is_ok()
    );
    // That use was noted too; move past both limits for the unused token...
    clock.set(t0() + TimeDelta::days(30) - TimeDelta::seconds(1) + TimeDelta::days(30));
    let err = verifier
        .authenticate(unused.token.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Idle));

    // The used token's last use (day 10, noted in memory, not flushed) counts: idle from
    // day 10 + 30 days.
    let fresh = verifier
        .issuer()
        .issue(NewToken::new("fresh", team(1)))
        .await
        .unwrap();
    clock.set(t0() + TimeDelta::days(70));
    verifier
        .authenticate(fresh.token.expose_secret())
        .await
        .unwrap();
    verifier.flush_last_used().await.unwrap();
    clock.set(t0() + TimeDelta::days(100) - TimeDelta::seconds(1));
    assert!(
        verifier
            .authenticate(fresh.token.expose_secret())
            .await
            .is_ok()
    );
    clock.set(t0() + TimeDelta::days(130));
    let err = verifier
        .authenticate(fresh.token.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Idle));
}

/// Sends `token` from `peer` with `headers` through an AuthLayer with `proxies`.
async fn call(
    verifier: &Verifier<MemoryStore>,
    proxies: TrustedProxies,
    peer: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Response<String> {
    let service = AuthLayer::new(verifier.clone())
        .trusted_proxies(proxies)
        .layer(service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new("ok".to_owned()))
        }));
    let mut builder = Request::get("/").header("authorization", format!("Bearer {token}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut request = builder.body(String::new()).unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    request.extensions_mut().insert(PeerAddr(peer));
    service.oneshot(request).await.unwrap()
}

use tower::Layer as _;

#[tokio::test]
async fn ip_allowlists_with_and_without_trusted_proxies() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let issued = verifier
        .issuer()
        .issue(NewToken::new("office", team(1)).allowed_ips([
            "203.0.113.0/24".parse().unwrap(),
            "2001:db8:1::/48".parse().unwrap(),
        ]))
        .await
        .unwrap();
    let token = issued.token.expose_secret().to_owned();
    let anywhere = verifier
        .issuer()
        .issue(NewToken::new("anywhere", team(1)))
        .await
        .unwrap();
    let none = TrustedProxies::none;
    let proxies = || TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);

    // Direct connections: IPv4 and IPv6, inside and outside.
    assert_eq!(
        call(&verifier, none(), "203.0.113.9:5000", &token, &[])
            .await
            .status(),
        200
    );
    assert_eq!(
        call(&verifier, none(), "[2001:db8:1::7]:443", &token, &[])
            .await
            .status(),
        200
    );
    assert_eq!(
        call(&verifier, none(), "[::ffff:203.0.113.9]:1", &token, &[])
            .await
            .status(),
        200
    );
    let outside = call(&verifier, none(), "198.51.100.1:5000", &token, &[]).await;
    let invalid = call(&verifier, none(), "203.0.113.9:5000", "demo_nope", &[]).await;
    assert_eq!(outside.status(), StatusCode::UNAUTHORIZED);
    // Refused exactly like an invalid token: no hint that the token exists.
    assert_eq!(outside.headers(), invalid.headers());
    assert_eq!(outside.body(), invalid.body());
    assert_eq!(
        call(&verifier, none(), "[2001:db8:2::7]:443", &token, &[])
            .await
            .status(),
        401
    );

    // A spoofed X-Forwarded-For from an untrusted client changes nothing.
    let spoofed = [("x-forwarded-for", "203.0.113.9")];
    assert_eq!(
        call(&verifier, none(), "198.51.100.1:1", &token, &spoofed)
            .await
            .status(),
        401
    );
    assert_eq!(
        call(&verifier, proxies(), "198.51.100.1:1", &token, &spoofed)
            .await
            .status(),
        401
    );

    // Behind a trusted proxy the forwarded address counts, right to left.
    let via = |chain: &'static str| [("x-forwarded-for", chain)];
    assert_eq!(
        call(
            &verifier,
            proxies(),
            "10.0.0.2:1",
            &token,
            &via("203.0.113.9")
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        call(
            &verifier,
            proxies(),
            "10.0.0.2:1",
            &token,
            &via("203.0.113.9, 198.51.100.1")
        )
        .await
        .status(),
        401,
        "the hop next to the trusted proxy is the client; the one before it could be forged"
    );
    assert_eq!(
        call(
            &verifier,
            proxies().forwarded(),
            "10.0.0.2:1",
            &token,
            &[("forwarded", r#"for="[2001:db8:1::9]:4711""#)]
        )
        .await
        .status(),
        200
    );
    // A client's own `Forwarded` header, passed through by a proxy that appends to
    // X-Forwarded-For, is not believed.
    let spoof = [
        ("forwarded", "for=203.0.113.7"),
        ("x-forwarded-for", "198.51.100.66"),
    ];
    assert_eq!(
        call(&verifier, proxies(), "10.0.0.2:1", &token, &spoof)
            .await
            .status(),
        401
    );
    // A trusted proxy that forwards nothing: unknown client, refused.
    assert_eq!(
        call(&verifier, proxies(), "10.0.0.2:1", &token, &[])
            .await
            .status(),
        401
    );
    // Tokens without an allowlist work from anywhere.
    assert_eq!(
        call(
            &verifier,
            none(),
            "198.51.100.1:5000",
            anywhere.token.expose_secret(),
            &[]
        )
        .await
        .status(),
        200
    );
    let err = verifier
        .verify_request(
            &token,
            &apitoken::ScopeRequirement::none(),
            &apitoken::RequestInfo::new().client_ip(Some("198.51.100.1".parse().unwrap())),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    assert_eq!(err.reason(), Some(RejectReason::AddressNotAllowed));
}

#[tokio::test]
async fn the_audit_hook_sees_every_outcome_and_no_secret() {
    let events: Arc<Mutex<Vec<AuditEvent>>> = Arc::default();
    let sink = Arc::clone(&events);
    let verifier = Verifier::builder(MemoryStore::new())
        .audit(move |event: &AuditEvent| sink.lock().unwrap().push(event.clone()))
        .build();
    let issued = verifier
        .issuer()
        .issue(NewToken::new("ci", team(3)).scopes(["vps:read"]).unwrap())
        .await
        .unwrap();
    let token = issued.token.expose_secret().to_owned();

    let ok = call(
        &verifier,
        TrustedProxies::none(),
        "192.0.2.1:1",
        &token,
        &[],
    )
    .await;
    assert_eq!(ok.status(), 200);
    let mut wrong = token.clone();
    wrong.replace_range(20..21, if &token[20..21] == "A" { "B" } else { "A" });
    call(
        &verifier,
        TrustedProxies::none(),
        "192.0.2.2:1",
        &wrong,
        &[],
    )
    .await;
    // No credentials at all is audited too.
    let service = AuthLayer::new(verifier.clone()).layer(service_fn(|_r: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let mut bare = Request::new(String::new());
    bare.extensions_mut()
        .insert(PeerAddr("192.0.2.3:1".parse().unwrap()));
    service.oneshot(bare).await.unwrap();

    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(events[0].outcome, AuditOutcome::Accepted);
    assert_eq!(events[0].token_id, Some(issued.record.id));
    assert_eq!(events[0].owner, Some(team(3)));
    assert_eq!(events[0].client_ip, Some("192.0.2.1".parse().unwrap()));
    assert!(matches!(
        events[1].outcome,
        AuditOutcome::Refused {
            kind: AuthErrorKind::InvalidToken,
            ..
        }
    ));
    assert_eq!(events[1].client_ip, Some("192.0.2.2".parse().unwrap()));
    assert!(matches!(
        events[2].outcome,
        AuditOutcome::Refused {
            kind: AuthErrorKind::MissingCredentials,
            reason: None
        }
    ));
    let secret_part = token.split_once('.').unwrap().1;
    for event in &events {
        let text = format!("{event:?}");
        assert!(!text.contains(secret_part), "{text}");
        assert!(
            !text.contains(&wrong[token.find('.').unwrap() + 1..]),
            "{text}"
        );
    }
}

#[tokio::test]
async fn throttled_requests_are_audited_too() {
    let events: Arc<Mutex<Vec<AuditEvent>>> = Arc::default();
    let sink = Arc::clone(&events);
    let verifier = Verifier::builder(MemoryStore::new())
        .audit(move |event: &AuditEvent| sink.lock().unwrap().push(event.clone()))
        .build();
    let throttle = apitoken::rate_limit::FailureThrottle::new(2, Duration::from_secs(60));
    let service = AuthLayer::new(verifier.clone())
        .throttle_failures(throttle)
        .layer(service_fn(|_r: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    for _ in 0..3 {
        let mut request = Request::get("/")
            .header("authorization", "Bearer nonsense")
            .body(String::new())
            .unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr("192.0.2.9:1".parse().unwrap()));
        service.clone().oneshot(request).await.unwrap();
    }
    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 3, "{events:#?}");
    assert!(matches!(
        events[2].outcome,
        AuditOutcome::Refused {
            kind: AuthErrorKind::RateLimited,
            ..
        }
    ));
    assert_eq!(events[2].client_ip, Some("192.0.2.9".parse().unwrap()));
}
