//! Tokens the router hands out and must recognise when they come back (the
//! links in emails, the inbox's page cursors): the text, then a dot, then an
//! HMAC-SHA256 of it with a secret only the router knows. Altering any part,
//! or making one without the secret, is detected.

use hmac::{Hmac, Mac};

type HmacSha256 = Hmac<Sha256>;
use sha2::Sha256;

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed")]
    Malformed,
    #[error("its signature does not match: it was altered, or not made by this router")]
    Forged,
}

#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(secret: &[u8]) -> Self {
        Self { key: secret.to_vec() }
    }

    /// `payload.signature`, the signature covering `context` (what the token
    /// is for, and for whom) as well as `payload`. `payload` must be URL-safe.
    pub fn seal(&self, context: &str, payload: &str) -> String {
        let signature = self.mac(context, payload).finalize().into_bytes();
        format!("{payload}.{}", hex(&signature))
    }

    /// The payload of a token sealed for `context`.
    pub fn open<'t>(&self, context: &str, token: &'t str) -> Result<&'t str, TokenError> {
        let (payload, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let signature = unhex(signature).ok_or(TokenError::Malformed)?;
        self.mac(context, payload)
            .verify_slice(&signature)
            .map_err(|_| TokenError::Forged)?;
        Ok(payload)
    }

    fn mac(&self, context: &str, payload: &str) -> HmacSha256 {
        // HMAC takes a key of any length.
        let mut mac = HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(context.as_bytes());
        mac.update(&[0]);
        mac.update(payload.as_bytes());
        mac
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_token_opens_only_for_its_context_and_unaltered() {
        let signer = Signer::new(b"secret");
        let token = signer.seal("cursor\0amy", "42");
        assert_eq!(signer.open("cursor\0amy", &token), Ok("42"));
        assert_eq!(signer.open("cursor\0cara", &token), Err(TokenError::Forged));
        assert_eq!(
            signer.open("cursor\0amy", &token.replacen("42", "41", 1)),
            Err(TokenError::Forged)
        );
        assert_eq!(
            Signer::new(b"other").open("cursor\0amy", &token),
            Err(TokenError::Forged)
        );
        for bad in ["", "42", "42.", "42.xyz", "42.abc"] {
            assert_eq!(signer.open("cursor\0amy", bad), Err(TokenError::Malformed), "{bad:?}");
        }
        assert_eq!(unhex(&hex(b"\x00\xffa")), Some(b"\x00\xffa".to_vec()));
    }
}
