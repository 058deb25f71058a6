//! The two checksums the formats carry: CRC-32 in six base62 digits (this crate's and GitHub's
//! style) and CRC-32 in eight lowercase hex digits (Laravel Sanctum's `crc32b`).
//!
//! A checksum is not a security control: anyone can compute it. It lets a server drop a
//! mistyped or made-up token before any hashing or store work, and lets a secret scanner tell a
//! real token from random text.

use super::BASE62;

/// Characters in a base62 CRC-32: 62^6 ≈ 5.7 × 10^10 > 2^32.
pub(crate) const BASE62_LEN: usize = 6;
/// Characters in a hex CRC-32.
pub(crate) const HEX_LEN: usize = 8;

pub(crate) fn crc32_base62(data: &[u8]) -> [u8; BASE62_LEN] {
    let mut value = crc32fast::hash(data);
    let mut out = [b'0'; BASE62_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

pub(crate) fn crc32_hex(data: &[u8]) -> [u8; HEX_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let value = crc32fast::hash(data);
    let mut out = [0u8; HEX_LEN];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = HEX[((value >> (28 - 4 * i)) & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_matches_phps_crc32b() {
        // The DanubeData seed token `1|7TEw…345196d2`: Sanctum appended crc32b of the 40
        // random characters.
        assert_eq!(
            &crc32_hex(b"7TEwyZaQXMXRVBZV9USjWNRbXAbPv9BrgMJSLDCk"),
            b"345196d2"
        );
        // crc32("123456789") = 0xcbf43926, the CRC-32 check value.
        assert_eq!(&crc32_hex(b"123456789"), b"cbf43926");
    }

    #[test]
    fn base62_is_zero_padded_big_endian() {
        assert_eq!(&crc32_base62(b""), b"000000"); // crc32("") = 0
        // 0xcbf43926 in base62 with the alphabet 0-9A-Za-z, computed independently.
        assert_eq!(&crc32_base62(b"123456789"), b"3jZRME");
    }
}
