//! The JWT minter (features `jwt` and `oauth`): a [`JwtIssuer`] as the token endpoint's
//! [`AccessTokenMinter`], so the authorization server hands out JWT access tokens instead of
//! opaque ones.
//!
//! A front end's file: uses the `jwt` plug-in, the core and token values.

use crate::jwt::{AccessGrant, JwtError, JwtIssuer};

use super::{AccessTokenMinter, AccessTokenRequest, BoxFuture, MintError, MintedAccessToken};

/// A [`JwtIssuer`] mints the OAuth token endpoint's access tokens (features `jwt` and
/// `oauth`): plug it in with
/// [`AuthorizationServerBuilder::minter`](super::AuthorizationServerBuilder::minter). The
/// endpoint chooses the `jti`, owner (`sub`), scopes, client (`client_id`) and times; the
/// issuer signs them ([`JwtIssuer::issue_as`]). A request with an IP allowlist (a client key
/// restricted to some networks, under client credentials) is refused, since a JWT cannot
/// carry one. Revoking the grant a JWT came from does not reach the JWT before its `exp`.
impl AccessTokenMinter for JwtIssuer {
    fn mint(
        &self,
        request: AccessTokenRequest,
    ) -> BoxFuture<'_, Result<MintedAccessToken, MintError>> {
        let minted = (|| {
            if !request.allowed_ips.is_empty() {
                return Err(JwtError::AllowlistUnsupported);
            }
            if request.rate_limit.is_some() {
                return Err(JwtError::RateLimitUnsupported);
            }
            let grant = AccessGrant::new(request.owner, request.client_id.as_str())?
                .with_scope_set(request.scopes);
            let issued =
                self.issue_as(&grant, request.jti, request.issued_at, request.expires_at)?;
            let seconds = (issued.claims.expires_at - issued.claims.issued_at).num_seconds();
            Ok(MintedAccessToken::new(
                issued.token,
                u64::try_from(seconds).unwrap_or(0),
            ))
        })();
        Box::pin(std::future::ready(
            minted.map_err(|err| MintError::Failed(Box::new(err))),
        ))
    }

    fn self_contained(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeDelta};

    use super::*;
    use crate::id::TokenId;
    use crate::jwt::JwtKey;
    use crate::oauth::GrantType;
    use crate::rate_limit::RateLimit;
    use crate::record::Owner;
    use crate::scope::ScopeSet;

    #[tokio::test]
    async fn as_a_minter_it_signs_what_the_endpoint_decided_and_refuses_allowlists_and_limits() {
        let key = JwtKey::hs256(&[9u8; 32]).unwrap();
        let issuer = JwtIssuer::builder(key, "iss", "aud").build().unwrap();
        let validator = issuer.validator().build().unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut request = AccessTokenRequest {
            jti: TokenId::new("family-1-3").unwrap(),
            owner: Owner::new("acct-1").unwrap(),
            scopes: ScopeSet::parse("db:read").unwrap(),
            client_id: TokenId::new("client-7").unwrap(),
            grant_type: GrantType::ClientCredentials,
            issued_at: t0,
            expires_at: t0 + TimeDelta::minutes(20),
            allowed_ips: Vec::new(),
            rate_limit: None,
        };
        let minted = issuer.mint(request.clone()).await.unwrap();
        assert_eq!(minted.expires_in, 1200);
        let claims = validator
            .validate(minted.token.expose_secret(), t0)
            .unwrap();
        assert_eq!(claims.id.as_str(), "family-1-3");
        assert_eq!(claims.subject.as_str(), "acct-1");
        assert_eq!(claims.client_id, "client-7");
        assert_eq!(claims.scopes.to_string(), "db:read");
        assert_eq!(
            (claims.issued_at, claims.expires_at),
            (t0, request.expires_at)
        );

        let mut limited = request.clone();
        limited.rate_limit = Some(RateLimit::per_hour(1));
        assert!(
            issuer.mint(limited).await.is_err(),
            "a JWT cannot keep a rate limit"
        );
        request.allowed_ips = vec!["192.0.2.0/24".parse().unwrap()];
        assert!(issuer.mint(request).await.is_err());
    }
}
