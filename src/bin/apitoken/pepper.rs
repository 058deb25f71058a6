//! The pepper: read from an environment variable (never from argv, which `ps` shows), as hex
//! or base64.

use apitoken::{MIN_PEPPER_LEN, SecretHasher};
use zeroize::Zeroizing;

/// The hasher for `--pepper-env VAR`, or plain SHA-256 without it. Errors name the variable,
/// never its value.
pub(crate) fn hasher(var: Option<&str>) -> Result<SecretHasher, String> {
    let Some(var) = var else {
        return Ok(SecretHasher::sha256());
    };
    let value = match std::env::var(var) {
        Ok(value) => Zeroizing::new(value),
        Err(std::env::VarError::NotPresent) => {
            return Err(format!("the pepper variable {var} is not set"));
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(format!("the pepper variable {var} is not valid UTF-8"));
        }
    };
    let bytes = decode(value.trim()).ok_or_else(|| {
        format!("the pepper variable {var} does not hold hex or base64 (see docs/cli.md)")
    })?;
    SecretHasher::hmac_sha256(&bytes).map_err(|_| {
        format!(
            "the pepper in {var} is {} bytes; at least {MIN_PEPPER_LEN} are needed",
            bytes.len()
        )
    })
}

/// `hex:…` or `base64:…` say which; otherwise an even number of hex digits is hex, and
/// anything else is tried as base64 (standard or URL-safe alphabet, padding optional).
fn decode(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    if let Some(hex) = text.strip_prefix("hex:") {
        return decode_hex(hex);
    }
    if let Some(b64) = text.strip_prefix("base64:") {
        return decode_base64(b64);
    }
    decode_hex(text).or_else(|| decode_base64(text))
}

fn decode_hex(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let raw = text.as_bytes();
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(raw.len() / 2));
    for pair in raw.chunks_exact(2) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out.push((hi * 16 + lo) as u8);
    }
    Some(out)
}

fn decode_base64(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let body = text.trim_end_matches('=');
    let padding = text.len() - body.len();
    if body.is_empty() || body.len() % 4 == 1 || padding > 2 {
        return None;
    }
    if padding > 0 && !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(body.len() * 3 / 4));
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for b in body.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_decode_to_the_same_bytes() {
        let bytes: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37)).collect();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        // base64 of the same 32 bytes, computed independently (python3 base64.b64encode).
        let b64 = "ACVKb5S53gMoTXKXvOEGK1B1mr/kCS5TeJ3C5wwxVns=";
        assert_eq!(decode(&hex).as_deref(), Some(&bytes));
        assert_eq!(decode(&hex.to_uppercase()).as_deref(), Some(&bytes));
        assert_eq!(decode(b64).as_deref(), Some(&bytes));
        assert_eq!(decode(b64.trim_end_matches('=')).as_deref(), Some(&bytes));
        let url_safe = b64.replace('/', "_").replace('+', "-");
        assert_eq!(decode(&url_safe).as_deref(), Some(&bytes));
        assert_eq!(decode(&format!("hex:{hex}")).as_deref(), Some(&bytes));
        assert_eq!(decode(&format!("base64:{b64}")).as_deref(), Some(&bytes));
        // Explicit base64 for text that would otherwise read as hex.
        assert_eq!(
            decode("base64:abcd").as_deref(),
            Some(&vec![0x69, 0xb7, 0x1d])
        );
        assert_eq!(decode("abcd").as_deref(), Some(&vec![0xab, 0xcd]));
    }

    #[test]
    fn rejects_what_is_neither() {
        for bad in [
            "", "hex:abc", "a", "abcde", "ab!d", "a===", "abc===", "hex:zz", "ab=c",
        ] {
            assert!(decode(bad).is_none(), "{bad:?}");
        }
    }
}
