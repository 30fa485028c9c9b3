//! Webhook signatures: an Ed25519 key, its public half as a JSON Web Key Set,
//! and the `Webhook-Signature` header over `<t>.<raw body>`.
//!
//! A key's id is derived from the key itself (`ds_` and the base64url SHA-256
//! JWK thumbprint of RFC 7638), so every instance that holds the same key
//! publishes the same id, and a receiver can pick the key a signature names.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use sha2::Digest as _;

/// A webhook signing key with its derived id.
pub(crate) struct SigningKey {
    key: ed25519_dalek::SigningKey,
    /// The public key, base64url: the JWK's `x`.
    x: String,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key of a 32-byte Ed25519 seed (the private key as RFC 8032 has it).
    pub(crate) fn from_seed(seed: &[u8; 32]) -> SigningKey {
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
        // RFC 7638: the required members, in lexicographic order, no spaces.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = format!(
            "ds_{}",
            URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
        );
        SigningKey { key, x, kid }
    }

    /// A new random key, from the operating system's generator.
    pub(crate) fn generate() -> std::io::Result<SigningKey> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(std::io::Error::other)?;
        Ok(SigningKey::from_seed(&seed))
    }

    /// The 32-byte seed, to persist the key.
    pub(crate) fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The key's id, `ds_` and its thumbprint.
    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JSON Web Key (RFC 8037).
    pub(crate) fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
            "x": self.x,
        })
    }

    /// The `Webhook-Signature` value for `body` sent at `unix_seconds`:
    /// `t=<seconds>,kid=<id>,ed25519=<base64url signature of "<t>.<body>">`.
    pub(crate) fn signature_header(&self, unix_seconds: u64, body: &[u8]) -> String {
        let t = unix_seconds.to_string();
        let mut signed = Vec::with_capacity(t.len() + 1 + body.len());
        signed.extend_from_slice(t.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(body);
        let signature = self.key.sign(&signed);
        format!(
            "t={t},kid={},ed25519={}",
            self.kid,
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

/// The JSON Web Key Set of `keys` (the active key first, then keys kept for
/// signatures still in flight).
pub(crate) fn jwks(keys: &[&SigningKey]) -> Vec<u8> {
    let keys: Vec<serde_json::Value> = keys.iter().map(|k| k.jwk()).collect();
    serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8037 appendix A.1: the example Ed25519 key (RFC 8032's first test key).
    fn rfc8037_key() -> SigningKey {
        let seed = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        SigningKey::from_seed(&seed.try_into().unwrap())
    }

    #[test]
    fn the_public_key_and_kid_follow_the_rfcs() {
        let key = rfc8037_key();
        assert_eq!(key.x, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        // RFC 8037 appendix A.3 gives this key's thumbprint.
        assert_eq!(key.kid(), "ds_kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(SigningKey::from_seed(&key.seed()).kid(), key.kid());
    }

    #[test]
    fn signatures_follow_rfc_8032() {
        // RFC 8037 appendix A.4 signs this payload with the same key.
        let key = rfc8037_key();
        let signature = key
            .key
            .sign(b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc");
        assert_eq!(
            URL_SAFE_NO_PAD.encode(signature.to_bytes()),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    /// What a receiver does: parse the header, find the key by `kid` in the
    /// published set, check the time window and the signature.
    fn verify(header: &str, body: &[u8], jwks: &[u8], now: u64) -> Result<(), &'static str> {
        let mut t = None;
        let mut kid = None;
        let mut sig = None;
        for part in header.split(',') {
            match part.split_once('=') {
                Some(("t", v)) => t = v.parse::<u64>().ok(),
                Some(("kid", v)) => kid = Some(v),
                Some(("ed25519", v)) => sig = Some(v),
                _ => return Err("malformed header"),
            }
        }
        let (t, kid, sig) = (t.ok_or("no t")?, kid.ok_or("no kid")?, sig.ok_or("no sig")?);
        if now.abs_diff(t) > 300 {
            return Err("outside the replay window");
        }
        let set: serde_json::Value = serde_json::from_slice(jwks).map_err(|_| "bad jwks")?;
        let jwk = set["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
            .ok_or("unknown kid")?;
        if jwk["kty"] != "OKP" || jwk["crv"] != "Ed25519" || jwk["alg"] != "EdDSA" {
            return Err("wrong key type");
        }
        let x = URL_SAFE_NO_PAD
            .decode(jwk["x"].as_str().ok_or("no x")?)
            .map_err(|_| "bad x")?;
        let public = ed25519_dalek::VerifyingKey::from_bytes(
            &x.try_into().map_err(|_| "x is not 32 bytes")?,
        )
        .map_err(|_| "bad public key")?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| "bad signature")?;
        let sig = ed25519_dalek::Signature::from_slice(&sig).map_err(|_| "bad signature")?;
        let signed = [t.to_string().as_bytes(), b".", body].concat();
        public
            .verify_strict(&signed, &sig)
            .map_err(|_| "signature does not verify")
    }

    #[test]
    fn a_receiver_verifies_with_the_published_set() {
        let old = SigningKey::generate().unwrap();
        let key = SigningKey::generate().unwrap();
        assert_ne!(key.kid(), old.kid());
        assert!(key.kid().starts_with("ds_"));
        let set = jwks(&[&key, &old]);
        let body = br#"{"subscription_id":"s","generation":1}"#;
        let header = key.signature_header(1_800_000_000, body);
        assert!(header.starts_with(&format!("t=1800000000,kid={},ed25519=", key.kid())));
        assert_eq!(verify(&header, body, &set, 1_800_000_010), Ok(()));
        // Signed by the older key, still published: fine.
        let by_old = old.signature_header(1_800_000_000, body);
        assert_eq!(verify(&by_old, body, &set, 1_800_000_000), Ok(()));
        // A changed body, a moved timestamp, an old header, an unknown key.
        assert!(verify(&header, br#"{"subscription_id":"t"}"#, &set, 1_800_000_000).is_err());
        let moved = header.replacen("t=1800000000", "t=1800000001", 1);
        assert!(verify(&moved, body, &set, 1_800_000_000).is_err());
        assert_eq!(
            verify(&header, body, &set, 1_800_000_301),
            Err("outside the replay window")
        );
        assert_eq!(
            verify(&header, body, &jwks(&[&old]), 1_800_000_000),
            Err("unknown kid")
        );
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = rfc8037_key();
        let shown = format!("{key:?}");
        assert!(shown.contains(key.kid()));
        assert!(!shown.contains("nWGxne"));
        assert!(!shown.contains("9d61b1"));
    }
}
