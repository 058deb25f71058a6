//! Unit tests of the parent module.

use super::*;

const S: i128 = 1_000_000_000;

#[test]
fn gcra_allows_a_burst_then_one_per_interval() {
    let limit = RateLimit::per_minute(3); // interval 20 s
    let (d, tat) = gcra(None, 0, &limit);
    assert!(d.is_allowed());
    assert_eq!(d.remaining(), 2);
    assert_eq!(d.reset_after(), Duration::from_secs(20));
    let (d, tat) = gcra(Some(tat), 0, &limit);
    assert_eq!(d.remaining(), 1);
    let (d, tat) = gcra(Some(tat), 0, &limit);
    assert_eq!(d.remaining(), 0);
    assert_eq!(d.reset_after(), Duration::from_secs(60));
    let (d, same) = gcra(Some(tat), 0, &limit);
    assert!(!d.is_allowed());
    assert_eq!(same, tat, "a refusal spends nothing");
    assert_eq!(d.retry_after(), Duration::from_secs(20));
    // 20 s later one more is allowed, and only one.
    let (d, tat) = gcra(Some(tat), 20 * S, &limit);
    assert!(d.is_allowed());
    assert_eq!(d.remaining(), 0);
    let (d, _) = gcra(Some(tat), 20 * S, &limit);
    assert!(!d.is_allowed());
    // Long idle: back to a full burst, not more.
    let (d, _) = gcra(Some(tat), 1000 * S, &limit);
    assert_eq!(d.remaining(), 2);
}

#[test]
fn burst_smaller_than_requests() {
    let limit = RateLimit::per_second(10).with_burst(2);
    let (d, tat) = gcra(None, 0, &limit);
    assert_eq!(d.remaining(), 1);
    let (_, tat) = gcra(Some(tat), 0, &limit);
    let (d, _) = gcra(Some(tat), 0, &limit);
    assert!(!d.is_allowed());
    assert_eq!(d.retry_after(), Duration::from_millis(100));
}

#[test]
fn metadata_limits() {
    let parse = |v: serde_json::Value| limit_from_metadata(&v);
    assert_eq!(
        parse(serde_json::json!({"requests": 5, "period_secs": 10})),
        RateLimit::new(5, Duration::from_secs(10))
    );
    assert_eq!(
        parse(serde_json::json!({"requests": 5, "period_secs": 10, "burst": 1})).map(|l| l.burst()),
        Some(1)
    );
    assert_eq!(
        parse(serde_json::json!({"requests": 0, "period_secs": 10})),
        None
    );
    assert_eq!(parse(serde_json::json!({"requests": 5})), None);
    assert_eq!(parse(serde_json::json!("100/min")), None);
    assert_eq!(
        parse(serde_json::json!({"requests": -1, "period_secs": 1})),
        None
    );
}
