//! The JWT plug-in's unit tests: the shape checks of the wire format, NumericDate, and what
//! the issuer's and the validator's builders refuse. The end-to-end tests are in
//! `tests/jwt.rs`.

use std::time::Duration;

use chrono::TimeDelta;

use super::wire::{NumericDate, has_jwt_shape, is_access_token_type, is_compact_jws};
use super::{
    JwtError, JwtIssuer, JwtKey, JwtValidator, JwtValidatorBuilder, MAX_LEEWAY, MAX_LIFETIME,
};

#[test]
fn access_token_type_accepts_both_forms_in_any_case_and_nothing_else() {
    for ok in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/AT+jwt",
    ] {
        assert!(is_access_token_type(ok), "{ok}");
    }
    for bad in [
        "JWT",
        "rt+jwt",
        "application/jwt",
        "at+jwt ",
        "application/",
        "",
        "xapplication/at+jwt",
        "application/application/at+jwt",
    ] {
        assert!(!is_access_token_type(bad), "{bad}");
    }
}

#[test]
fn compact_jws_shape() {
    assert!(is_compact_jws("eyJh.eyJi.c2ln"));
    assert!(is_compact_jws("eyJh.e-_i.c"));
    for bad in [
        "eyJh.eyJi.",
        "eyJh..c2ln",
        "eyJh.eyJi",
        "eyJh.eyJi.c2ln.x",
        "eyJh.eyJi.c2l=",
        "eyJh.ey+i.c2ln",
    ] {
        assert!(!is_compact_jws(bad), "{bad}");
    }
    assert!(has_jwt_shape("eyJh.eyJi.c2ln"));
    assert!(!has_jwt_shape("abc.eyJi.c2ln"));
    assert!(!has_jwt_shape("eyJh.eyJi"));
}

#[test]
fn numeric_dates_accept_fractions_and_refuse_the_out_of_range() {
    let at = |n: NumericDate| n.to_utc().map(|d| d.timestamp());
    assert_eq!(at(NumericDate::Whole(1_700_000_000)), Some(1_700_000_000));
    assert_eq!(
        at(NumericDate::Fraction(1_700_000_000.9)),
        Some(1_700_000_000)
    );
    assert_eq!(at(NumericDate::Fraction(f64::NAN)), None);
    assert_eq!(at(NumericDate::Whole(i64::MAX)), None);
}

#[test]
fn several_keys_need_distinct_kids() {
    let key = |kid: Option<&str>| {
        let key = JwtKey::hs256(&[9u8; 32]).unwrap();
        match kid {
            Some(kid) => key.with_kid(kid).unwrap(),
            None => key,
        }
    };
    let build = |keys: Vec<JwtKey>| {
        keys.into_iter()
            .fold(
                JwtValidator::builder("iss", "aud"),
                JwtValidatorBuilder::key,
            )
            .build()
            .map(|_| ())
    };
    assert_eq!(build(vec![]), Err(JwtError::NoKeys));
    assert_eq!(build(vec![key(None)]), Ok(()));
    assert_eq!(build(vec![key(Some("a")), key(Some("b"))]), Ok(()));
    assert_eq!(
        build(vec![key(Some("a")), key(Some("a"))]),
        Err(JwtError::AmbiguousKeys)
    );
    assert_eq!(
        build(vec![key(Some("a")), key(None)]),
        Err(JwtError::AmbiguousKeys)
    );
}

#[test]
fn leeway_above_the_cap_is_refused_not_clamped() {
    let builder = || JwtValidator::builder("iss", "aud").key(JwtKey::hs256(&[9u8; 32]).unwrap());
    assert!(builder().leeway(MAX_LEEWAY).build().is_ok());
    assert_eq!(
        builder()
            .leeway(MAX_LEEWAY + Duration::from_secs(1))
            .build()
            .unwrap_err(),
        JwtError::LeewayTooLong
    );
}

#[test]
fn issuer_refuses_public_keys_and_lifetimes_out_of_range() {
    let public = JwtKey::ed25519_public_pem(
        "-----BEGIN PUBLIC KEY-----\n\
         MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
         -----END PUBLIC KEY-----\n",
    )
    .unwrap();
    assert_eq!(
        JwtIssuer::builder(public, "iss", "aud")
            .build()
            .unwrap_err(),
        JwtError::CannotSign
    );
    let hs = || JwtKey::hs256(&[9u8; 32]).unwrap();
    for bad in [
        TimeDelta::zero(),
        TimeDelta::seconds(-1),
        MAX_LIFETIME + TimeDelta::seconds(1),
    ] {
        assert_eq!(
            JwtIssuer::builder(hs(), "iss", "aud")
                .lifetime(bad)
                .build()
                .unwrap_err(),
            JwtError::InvalidLifetime
        );
    }
    assert_eq!(
        JwtIssuer::builder(hs(), "", "aud").build().unwrap_err(),
        JwtError::InvalidIssuerOrAudience
    );
    assert_eq!(
        JwtIssuer::builder(hs(), "iss", "a\nb").build().unwrap_err(),
        JwtError::InvalidIssuerOrAudience
    );
}
