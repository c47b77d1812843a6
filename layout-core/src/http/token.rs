//! Bearer tokens and their constant-time comparison.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::EndpointError;

/// The shortest bearer token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// The longest bearer token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 1024;

/// A bearer token: 16 to 1024 visible ASCII characters. Its `Debug` does not show it.
///
/// An endpoint keeps the token's SHA-256 digest beside it, so checking a presented token
/// costs one digest and a constant-time compare of two 32-byte values
/// ([`token_matches`]).
#[derive(Clone)]
pub struct BearerToken {
    token: String,
    digest: [u8; 32],
}

impl BearerToken {
    /// Checks `token`.
    pub fn new(token: impl Into<String>) -> Result<Self, EndpointError> {
        let token = token.into();
        if token.len() < MIN_TOKEN_LEN || token.len() > MAX_TOKEN_LEN {
            return Err(EndpointError::InvalidToken(format!(
                "the token has {} bytes; it needs {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN}",
                token.len()
            )));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(EndpointError::InvalidToken(
                "the token may hold only visible ASCII characters (no spaces)".to_owned(),
            ));
        }
        let digest = digest(token.as_bytes());
        Ok(Self { token, digest })
    }

    /// Reads a token from a file (surrounding whitespace is trimmed).
    pub fn from_file(path: &Path) -> Result<Self, EndpointError> {
        let text = std::fs::read_to_string(path).map_err(|source| EndpointError::TokenFile {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(text.trim())
    }

    /// The token.
    pub fn expose(&self) -> &str {
        &self.token
    }

    /// Whether `presented` is this token, compared in constant time over SHA-256
    /// digests: the time it takes tells nothing about how much of it matched or how long
    /// the token is.
    ///
    /// ```
    /// use layout_core::http::BearerToken;
    ///
    /// let token = BearerToken::new("correct-horse-battery-staple")?;
    /// assert!(token.matches("correct-horse-battery-staple"));
    /// assert!(!token.matches("correct-horse-battery-stapl"));
    /// # Ok::<(), layout_core::http::EndpointError>(())
    /// ```
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(digest(presented.as_bytes()).ct_eq(&self.digest))
    }

    /// Whether the value of an `Authorization` header, `Bearer <token>`, carries this
    /// token: [`bearer_credentials`], then [`matches`](Self::matches). Any other scheme,
    /// or no token, does not authorize.
    ///
    /// ```
    /// use layout_core::http::BearerToken;
    ///
    /// let token = BearerToken::new("correct-horse-battery-staple")?;
    /// assert!(token.authorizes("Bearer correct-horse-battery-staple"));
    /// assert!(!token.authorizes("Basic correct-horse-battery-staple"));
    /// assert!(!token.authorizes("Bearer"));
    /// # Ok::<(), layout_core::http::EndpointError>(())
    /// ```
    pub fn authorizes(&self, authorization: &str) -> bool {
        bearer_credentials(authorization).is_some_and(|presented| self.matches(presented))
    }
}

impl PartialEq for BearerToken {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.digest.ct_eq(&other.digest))
    }
}

impl Eq for BearerToken {}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The token of an `Authorization` header value using the Bearer scheme (the scheme's
/// case does not matter; whitespace around the token is trimmed), or `None` for another
/// scheme or a value without a space after the scheme. The token itself is not checked:
/// compare it with [`token_matches`] or [`BearerToken::matches`].
///
/// ```
/// use layout_core::http::bearer_credentials;
///
/// assert_eq!(bearer_credentials("Bearer abc"), Some("abc"));
/// assert_eq!(bearer_credentials("bearer  abc "), Some("abc"));
/// assert_eq!(bearer_credentials("Basic abc"), None);
/// assert_eq!(bearer_credentials("Bearer"), None);
/// ```
pub fn bearer_credentials(authorization: &str) -> Option<&str> {
    match authorization.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Some(rest.trim()),
        _ => None,
    }
}

/// Whether a presented token equals the configured one, compared without leaking,
/// through timing, how much of it matched or how long it is.
///
/// Both are reduced to their SHA-256 digests, which always have 32 bytes, and the
/// digests are compared with `subtle`'s constant-time equality. Hashing takes time in
/// proportion to the length of what is hashed, so what the timing can tell is the
/// length of the *presented* token (which the caller knows anyway), never anything about
/// the configured one beyond the one bit "equal or not". Two different tokens with the
/// same digest would be a SHA-256 collision.
///
/// ```
/// use layout_core::http::token_matches;
///
/// assert!(token_matches(b"s3cret-token-value", b"s3cret-token-value"));
/// assert!(!token_matches(b"s3cret-token-valuE", b"s3cret-token-value"));
/// assert!(!token_matches(b"", b"s3cret-token-value"));
/// ```
pub fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    bool::from(digest(presented).ct_eq(&digest(expected)))
}

#[cfg(test)]
mod tests {
    use super::{bearer_credentials, token_matches, BearerToken};

    #[test]
    fn only_the_exact_token_matches() {
        let token = b"s3cret-token-value";
        assert!(token_matches(token, token));
        assert!(!token_matches(b"s3cret-token-valuE", token));
        assert!(!token_matches(b"s3cret-token-valu", token));
        assert!(!token_matches(b"s3cret-token-value-and-more", token));
        assert!(!token_matches(b"", token));
    }

    #[test]
    fn a_bearer_token_matches_only_itself() {
        let token = BearerToken::new("s3cret-token-value").expect("valid token");
        assert!(token.matches("s3cret-token-value"));
        assert!(!token.matches("s3cret-token-valuE"));
        assert!(!token.matches("s3cret-token-valu"));
        assert!(!token.matches("s3cret-token-value-and-more"));
        assert!(!token.matches(""));
    }

    #[test]
    fn only_a_bearer_header_with_the_token_authorizes() {
        let token = BearerToken::new("s3cret-token-value").expect("valid token");
        assert!(token.authorizes("Bearer s3cret-token-value"));
        assert!(token.authorizes("bEARER   s3cret-token-value  "));
        for value in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer s3cret-token-valuE",
            "Bearer s3cret-token-valu",
            "Basic s3cret-token-value",
            "s3cret-token-value",
            "Bearer s3cret-token-value extra",
        ] {
            assert!(!token.authorizes(value), "{value:?} must not authorize");
        }
    }

    #[test]
    fn bearer_credentials_takes_the_token_of_the_bearer_scheme_only() {
        assert_eq!(bearer_credentials("Bearer abc"), Some("abc"));
        assert_eq!(bearer_credentials("BEARER abc"), Some("abc"));
        assert_eq!(bearer_credentials("Bearer  abc "), Some("abc"));
        assert_eq!(bearer_credentials("Bearer "), Some(""));
        assert_eq!(bearer_credentials("Bearer"), None);
        assert_eq!(bearer_credentials("Token abc"), None);
        assert_eq!(bearer_credentials(""), None);
    }

    #[test]
    fn tokens_outside_the_limits_are_refused() {
        assert!(BearerToken::new("short").is_err());
        assert!(BearerToken::new("has a space in it!!").is_err());
        assert!(BearerToken::new("x".repeat(1025)).is_err());
        assert!(BearerToken::new("x".repeat(16)).is_ok());
    }
}
