//! Token records: what a store keeps about a token. Never the secret, nor its hash.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::TokenId;
use crate::scope::ScopeSet;

/// Free-form data an application attaches to a token (a JSON object), returned with every
/// successful verification.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// The longest owner text accepted.
pub const MAX_OWNER_LEN: usize = 255;

/// The account, team or service a token acts for.
///
/// Applications compare it with the owner of the resource a request touches, so a token of one
/// team cannot reach another team's resources (the DanubeData seed's 403 for "resources from
/// another team"). 1 to 255 bytes, no control characters.
///
/// ```
/// use apitoken::Owner;
/// let team = Owner::new("team-42")?;
/// assert_eq!(team.as_str(), "team-42");
/// assert!(Owner::new("").is_err());
/// # Ok::<(), apitoken::InvalidOwner>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner(Box<str>);

/// Text that is not a valid [`Owner`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid owner: expected 1 to {MAX_OWNER_LEN} bytes without control characters")]
#[non_exhaustive]
pub struct InvalidOwner;

impl Owner {
    /// Validates `text` as an owner.
    pub fn new(text: &str) -> Result<Self, InvalidOwner> {
        if text.is_empty() || text.len() > MAX_OWNER_LEN || text.chars().any(char::is_control) {
            return Err(InvalidOwner);
        }
        Ok(Self(text.into()))
    }

    /// The owner's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Owner {
    type Err = InvalidOwner;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for Owner {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

/// Everything a store keeps about one token except its secret hash.
///
/// A record never holds the token's plaintext nor its hash, so serializing one into an API
/// response (a token list, say) reveals nothing that helps anyone authenticate.
///
/// ```
/// use apitoken::{Owner, TokenId, TokenRecord};
/// use chrono::Utc;
///
/// let mut record = TokenRecord::new(TokenId::from_u64(1), Owner::new("team-1")?, "CI/CD Pipeline", Utc::now());
/// record.scopes = apitoken::ScopeSet::parse("vps:read")?;
/// let json = serde_json::to_value(&record)?;
/// assert_eq!(json["name"], "CI/CD Pipeline");
/// assert_eq!(json["expires_at"], serde_json::Value::Null);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TokenRecord {
    /// The id, as it appears in the token text (or the record key, for id-less formats).
    pub id: TokenId,
    /// A name the owner chose, such as "Production Server".
    pub name: String,
    /// Whom the token acts for.
    pub owner: Owner,
    /// What the token may do.
    pub scopes: ScopeSet,
    /// When it was issued. A global maximum lifetime counts from here.
    pub created_at: DateTime<Utc>,
    /// When it last verified successfully, as of the verifier's last flush of buffered
    /// last-use times (see [`last_used`](crate::last_used)).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops working; `None` never expires by itself (as DCT's keys). A token is
    /// expired from this instant on: `expires_at == now` is expired.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked. Revocation cannot be undone.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Application data, returned with each verification.
    #[serde(default)]
    pub metadata: Metadata,
    /// Networks the token may be used from (IPv4 and IPv6 CIDRs); empty means anywhere. A
    /// request from elsewhere, or whose client address is unknown, is refused like an invalid
    /// token.
    #[serde(default)]
    pub allowed_ips: Vec<IpNet>,
}

impl TokenRecord {
    /// A record with no scopes, no expiry and no metadata.
    pub fn new(
        id: TokenId,
        owner: Owner,
        name: impl Into<String>,
        created_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            name: name.into(),
            owner,
            scopes: ScopeSet::new(),
            created_at,
            last_used_at: None,
            expires_at: None,
            revoked_at: None,
            metadata: Metadata::new(),
            allowed_ips: Vec::new(),
        }
    }

    /// Whether the token has been revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// Whether a request from `client` may use the token: always when `allowed_ips` is empty,
    /// otherwise only from inside one of those networks (an unknown client never).
    /// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
    ///
    /// ```
    /// use apitoken::{Owner, TokenId, TokenRecord};
    ///
    /// let mut record = TokenRecord::new(TokenId::from_u64(1), Owner::new("t")?, "ci", chrono::Utc::now());
    /// assert!(record.allows(None));
    /// record.allowed_ips = vec!["192.0.2.0/24".parse()?, "2001:db8::/32".parse()?];
    /// assert!(record.allows(Some("192.0.2.7".parse()?)));
    /// assert!(record.allows(Some("::ffff:192.0.2.7".parse()?)));
    /// assert!(!record.allows(Some("198.51.100.1".parse()?)));
    /// assert!(!record.allows(None));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn allows(&self, client: Option<IpAddr>) -> bool {
        if self.allowed_ips.is_empty() {
            return true;
        }
        let Some(ip) = client.map(canonical_ip) else {
            return false;
        };
        self.allowed_ips.iter().any(|net| net.contains(&ip))
    }

    /// Reads every field a verification checks (the times, the scopes, the allowlist) and
    /// discards them: a refusal runs this on the record it touched, so that it reads as much
    /// of a record's memory as an acceptance does. In a large store records are cold in the
    /// CPU's cache, and a refusal that read less of one would be measurably cheaper.
    #[inline]
    pub(crate) fn read_checked_fields(&self) {
        std::hint::black_box((
            self.created_at,
            self.last_used_at,
            self.expires_at,
            self.revoked_at,
            self.scopes.len(),
            self.allowed_ips.len(),
        ));
    }

    /// Whether the token's own `expires_at` has been reached at `now`.
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) as the IPv4 address they carry, so one
/// allowlist entry covers a client however its connection was accepted.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
