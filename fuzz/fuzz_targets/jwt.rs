//! The JWT validator on arbitrary text, and on a valid token with arbitrary bytes flipped: never
//! panics, and accepts nothing but the valid token itself (no forgery, no malleability).
#![no_main]

use std::sync::OnceLock;

use apitoken::Owner;
use apitoken::jwt::{AccessGrant, JwtIssuer, JwtKey, JwtValidator};
use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;

const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
                           MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                           -----END PRIVATE KEY-----\n";

struct Setup {
    validator: JwtValidator,
    /// One valid token per key.
    tokens: Vec<String>,
    now: DateTime<Utc>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let hs = JwtKey::hs256(b"fuzz-hmac-key-0123456789abcdefgh")
            .unwrap()
            .with_kid("hs")
            .unwrap();
        let ed = JwtKey::ed25519_private_pem(ED25519_PEM)
            .unwrap()
            .with_kid("ed")
            .unwrap();
        let grant = AccessGrant::new(Owner::new("team-1").unwrap(), "fuzz")
            .unwrap()
            .scopes(["vps:read"])
            .unwrap();
        let tokens = [hs.clone(), ed.clone()]
            .into_iter()
            .map(|key| {
                let issuer = JwtIssuer::builder(key, "https://auth.example", "api")
                    .build()
                    .unwrap();
                issuer
                    .issue(&grant)
                    .unwrap()
                    .token
                    .expose_secret()
                    .to_owned()
            })
            .collect();
        let validator = JwtValidator::builder("https://auth.example", "api")
            .key(hs)
            .key(ed)
            .build()
            .unwrap();
        Setup {
            validator,
            tokens,
            now: Utc::now(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let candidate = if mode < 128 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        text.to_owned()
    } else {
        // A valid token with bytes XORed in at chosen positions, kept ASCII.
        let mut bytes = setup.tokens[usize::from(mode & 1)].clone().into_bytes();
        for pair in rest.chunks_exact(2) {
            let at = usize::from(pair[0]) * bytes.len() / 256;
            bytes[at] = (bytes[at] ^ pair[1]) & 0x7f;
        }
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => return,
        }
    };
    if setup.validator.validate(&candidate, setup.now).is_ok() {
        assert!(
            setup.tokens.contains(&candidate),
            "accepted a token that was never issued"
        );
    }
});
