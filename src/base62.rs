//! The base62 alphabet, shared by generated secrets (`secret`), random ids and checksums
//! (`format`). A token-value module: it uses nothing of the crate, so `format` and `secret`
//! both depend on it instead of on each other.

/// The alphabet of generated secrets, random ids and base62 checksums: `0-9A-Za-z`.
///
/// Letters and digits only, so a double-click selects a whole secret, and nothing needs
/// escaping in a header, a URL, JSON or a shell.
///
/// ```
/// assert_eq!(apitoken::format::BASE62.len(), 62);
/// assert_eq!(&apitoken::format::BASE62[..3], b"012");
/// ```
pub const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
