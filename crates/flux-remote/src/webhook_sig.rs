//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256(key,
//! "{webhook-id}.{webhook-timestamp}.{body}")>`, the key written `whsec_<base64>`. The server
//! signs with [`WebhookSecret::sign`]; receivers check with [`verify_webhook`].

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How far a delivery's timestamp may be from the receiver's clock (the specification's 5 min).
pub const WEBHOOK_TOLERANCE_SECS: u64 = 5 * 60;

/// A webhook signing key. `Debug` shows no key material.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// Why a webhook was not accepted as genuine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookVerifyError {
    #[error("the webhook secret is not `whsec_` followed by base64")]
    BadSecret,
    #[error("the webhook-timestamp is not Unix seconds")]
    BadTimestamp,
    #[error("the webhook-timestamp is more than 5 minutes away from now")]
    StaleTimestamp,
    #[error("no v1 signature in webhook-signature matches")]
    NoMatch,
}

impl WebhookSecret {
    /// `whsec_<base64>` (surrounding whitespace ignored), or plain base64.
    pub fn parse(text: &str) -> Result<WebhookSecret, WebhookVerifyError> {
        let text = text.trim();
        let encoded = text.strip_prefix("whsec_").unwrap_or(text);
        match base64::engine::general_purpose::STANDARD.decode(encoded) {
            Ok(key) if !key.is_empty() => Ok(WebhookSecret(key)),
            _ => Err(WebhookVerifyError::BadSecret),
        }
    }

    /// The `webhook-signature` value for one attempt.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut message = format!("{id}.{timestamp}.").into_bytes();
        message.extend_from_slice(body);
        let mac = hmac_sha256(&self.0, &message);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac)
        )
    }
}

/// Checks a delivery: the headers `webhook-id`, `webhook-timestamp`, `webhook-signature` (which
/// may carry several space-separated signatures), the raw body, and the receiver's clock.
pub fn verify_webhook(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_unix_secs: u64,
) -> Result<(), WebhookVerifyError> {
    let secret = WebhookSecret::parse(secret)?;
    let sent: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| WebhookVerifyError::BadTimestamp)?;
    if sent.abs_diff(now_unix_secs) > WEBHOOK_TOLERANCE_SECS {
        return Err(WebhookVerifyError::StaleTimestamp);
    }
    let expected = secret.sign(id, sent, body);
    let matches = signature.split_whitespace().any(|candidate| {
        candidate.starts_with("v1,") && bool::from(candidate.as_bytes().ct_eq(expected.as_bytes()))
    });
    if matches {
        Ok(())
    } else {
        Err(WebhookVerifyError::NoMatch)
    }
}

/// HMAC-SHA256 (RFC 2104) over `sha2`, which the crate already has.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 and test case 6 (a key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn the_standard_webhooks_example_verifies() {
        // The example of the Standard Webhooks specification's reference libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(
            WebhookSecret::parse(secret)
                .unwrap()
                .sign(id, 1_614_265_330, body),
            signature
        );
        verify_webhook(secret, id, "1614265330", signature, body, 1_614_265_330).unwrap();
        let other = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(b"another secret key")
        );
        let other = other.as_str();
        assert_eq!(
            verify_webhook(other, id, "1614265330", signature, body, 1_614_265_330),
            Err(WebhookVerifyError::NoMatch)
        );
        assert_eq!(
            verify_webhook(
                secret,
                id,
                "1614265330",
                signature,
                body,
                1_614_265_330 + 301
            ),
            Err(WebhookVerifyError::StaleTimestamp)
        );
        assert_eq!(
            verify_webhook(secret, id, "1614265330", signature, b"{}", 1_614_265_330),
            Err(WebhookVerifyError::NoMatch)
        );
    }
}
