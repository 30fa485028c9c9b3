//! Bearer tokens for webhook callbacks and pull-wake acks: scoped to one
//! subscription and one wake generation, with an expiry, and signed with
//! HMAC-SHA256 under a key every instance derives from the shared signing
//! key, so a token made by one instance is accepted by all.
//!
//! The format is `<base64url JSON claims>.<base64url MAC>`. Only the server
//! reads it; a client passes it back as `Authorization: Bearer <token>`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac as _;
use serde::{Deserialize, Serialize};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// The subscription.
    #[serde(rename = "sub")]
    pub(crate) subscription: String,
    /// The wake generation it was issued for.
    #[serde(rename = "gen")]
    pub(crate) generation: u64,
    /// Unix seconds after which it is refused.
    pub(crate) exp: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Malformed, forged, or for another subscription (`TOKEN_INVALID`).
    Invalid,
    /// Past its expiry (`TOKEN_EXPIRED`).
    Expired,
}

/// The key tokens are signed with.
pub(crate) struct TokenKey(HmacSha256);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// Derives the token key from `secret` (the signing key's seed), so that
    /// no second secret has to be shared between instances.
    pub(crate) fn derive(secret: &[u8; 32]) -> TokenKey {
        let mut derive = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        derive.update(b"durable-streams subscription token key v1");
        let key = derive.finalize().into_bytes();
        TokenKey(HmacSha256::new_from_slice(&key).expect("HMAC takes any key length"))
    }

    /// A token carrying `claims`.
    pub(crate) fn issue(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut mac = self.0.clone();
        mac.update(body.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{tag}")
    }

    /// The claims of `token` if it is genuine, for `subscription`, and not
    /// expired at `now` (unix seconds). The generation is the caller's to
    /// compare: an old generation is fenced, not invalid.
    pub(crate) fn check(
        &self,
        token: &str,
        subscription: &str,
        now: u64,
    ) -> Result<Claims, TokenError> {
        let (body, tag) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Invalid)?;
        let mut mac = self.0.clone();
        mac.update(body.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&tag).map_err(|_| TokenError::Invalid)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Invalid)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Invalid)?;
        if claims.subscription != subscription {
            return Err(TokenError::Invalid);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// The token of an `Authorization: Bearer <token>` value.
pub(crate) fn bearer(authorization: Option<&str>) -> Result<&str, TokenError> {
    let value = authorization.ok_or(TokenError::Invalid)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(TokenError::Invalid);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(generation: u64) -> Claims {
        Claims {
            subscription: "sub-1".into(),
            generation,
            exp: 1_000,
        }
    }

    #[test]
    fn a_token_is_accepted_for_its_subscription_until_it_expires() {
        let key = TokenKey::derive(&[7; 32]);
        let token = key.issue(&claims(3));
        assert_eq!(key.check(&token, "sub-1", 999), Ok(claims(3)));
        assert_eq!(key.check(&token, "sub-1", 1_000), Err(TokenError::Expired));
        assert_eq!(key.check(&token, "sub-2", 999), Err(TokenError::Invalid));
    }

    #[test]
    fn another_instance_with_the_same_secret_accepts_it() {
        let token = TokenKey::derive(&[7; 32]).issue(&claims(1));
        assert!(TokenKey::derive(&[7; 32]).check(&token, "sub-1", 0).is_ok());
        assert_eq!(
            TokenKey::derive(&[8; 32]).check(&token, "sub-1", 0),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn forged_and_malformed_tokens_are_invalid() {
        let key = TokenKey::derive(&[7; 32]);
        let token = key.issue(&claims(1));
        let (_, tag) = token.split_once('.').unwrap();
        // Claims changed to a later generation, old MAC kept.
        let forged = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(2)).unwrap())
        );
        for bad in [
            forged.as_str(),
            "",
            "abc",
            "a.b",
            &token[1..],
            &format!("{token}x"),
        ] {
            assert_eq!(
                key.check(bad, "sub-1", 0),
                Err(TokenError::Invalid),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bearer_values_are_parsed_strictly() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer abc")), Ok("abc"));
        for bad in [
            None,
            Some("abc"),
            Some("Basic abc"),
            Some("Bearer "),
            Some("Bearer"),
        ] {
            assert_eq!(bearer(bad), Err(TokenError::Invalid), "{bad:?}");
        }
    }
}
