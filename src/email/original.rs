//! The reported message's raw bytes as forwarded with the alert: always their size and hash,
//! the bytes themselves (base64) only up to `Limits::include_original_max`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;

use super::decode::sha256_hex;
use super::Limits;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Original {
    pub size: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    pub content_type: String,
    /// The bytes, when `size <= include_original_max`.
    pub base64: Option<String>,
    /// Why `base64` is absent.
    pub omitted: Option<String>,
}

/// Packages the original message (`message/rfc822`, `application/vnd.ms-outlook`…).
pub fn original(bytes: &[u8], content_type: &str, limits: &Limits) -> Original {
    let fits = bytes.len() <= limits.include_original_max;
    Original {
        size: bytes.len() as u64,
        sha256: sha256_hex(bytes),
        content_type: content_type.trim().to_string(),
        base64: fits.then(|| STANDARD.encode(bytes)),
        omitted: (!fits).then(|| {
            format!(
                "the original is {} bytes, more than the {}-byte limit",
                bytes.len(),
                limits.include_original_max
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_and_above_the_limit() {
        let limits = Limits {
            include_original_max: 3,
            ..Limits::default()
        };
        let small = original(b"abc", "message/rfc822", &limits);
        assert_eq!(small.size, 3);
        assert_eq!(
            small.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(small.base64.as_deref(), Some("YWJj"));
        assert_eq!(small.omitted, None);

        let big = original(b"abcd", "application/vnd.ms-outlook", &limits);
        assert_eq!(big.size, 4);
        assert_eq!(big.base64, None);
        assert_eq!(
            big.omitted.as_deref(),
            Some("the original is 4 bytes, more than the 3-byte limit")
        );
        assert_eq!(big.content_type, "application/vnd.ms-outlook");
    }
}
