//! [`AddressAllowlist`]: a token with allowed networks works from those networks only.

use super::Policy;
use crate::error::{AuthError, RejectReason};
use crate::record::TokenRecord;
use crate::verifier::RequestInfo;

/// Refuses a token with an allowlist ([`TokenRecord::allowed_ips`]) from any other address,
/// or from an unknown one, as [`RejectReason::AddressNotAllowed`]: an invalid token to the
/// client, so a caller elsewhere learns nothing of the token.
///
/// Every verifier runs it first among its policies, whatever else is configured: an
/// allowlist that could be left out by a forgotten line would fail open.
///
/// ```
/// use apitoken::policy::{AddressAllowlist, Policy};
/// use apitoken::{Owner, RequestInfo, TokenId, TokenRecord};
///
/// let mut record =
///     TokenRecord::new(TokenId::new("abc")?, Owner::new("team-1")?, "ci", chrono::Utc::now());
/// record.allowed_ips = vec!["10.0.0.0/8".parse()?];
/// let inside = RequestInfo::new().client_ip(Some("10.1.2.3".parse()?));
/// let outside = RequestInfo::new().client_ip(Some("192.0.2.1".parse()?));
/// assert!(AddressAllowlist.on_record(&record, &inside).is_ok());
/// assert!(AddressAllowlist.on_record(&record, &outside).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AddressAllowlist;

impl Policy for AddressAllowlist {
    #[inline]
    fn on_record(&self, record: &TokenRecord, request: &RequestInfo) -> Result<(), AuthError> {
        if record.allows(request.client_ip) {
            Ok(())
        } else {
            Err(AuthError::invalid_token(
                RejectReason::AddressNotAllowed,
                Some(record.id),
            ))
        }
    }
}
