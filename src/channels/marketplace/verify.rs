//! Webhook signatures, checked over the raw body before anything in it is read: HMAC-SHA256
//! with a shared secret (compared in constant time), or eBay's ECDSA P-256 / SHA-1 signature by
//! a configured public key. Every refusal says why (no secrets, no expected values).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use p256::ecdsa::Signature;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use serde::Deserialize;
use sha1::{Digest, Sha1};
use sha2::Sha256;

use crate::config::marketplace::{Marketplace, SignatureConfig, parse_public_key};

/// Checks a webhook's signature; `Err` says why it is refused.
pub fn check(m: &Marketplace, header_value: Option<&[u8]>, body: &[u8]) -> Result<(), String> {
    match &m.config.signature {
        SignatureConfig::HmacSha256 {
            header,
            encoding,
            prefix,
            ..
        } => {
            let secret = m
                .secret
                .as_ref()
                .ok_or_else(|| format!("no secret is configured ({})", m.secret_var()))?;
            let value = header_value.ok_or_else(|| format!("missing {header} header"))?;
            hmac_sha256(
                secret.expose().as_bytes(),
                value,
                encoding,
                prefix.as_deref(),
                body,
            )
            .map_err(|e| format!("{header}: {e}"))
        }
        SignatureConfig::EbayEcdsa {
            header,
            public_keys,
        } => {
            let value = header_value.ok_or_else(|| format!("missing {header} header"))?;
            ebay_ecdsa(value, body, |kid| public_keys.get(kid).cloned())
                .map_err(|e| format!("{header}: {e}"))
        }
    }
}

/// Verifies an HMAC-SHA256 header value (`encoding`: base64 or hex) over `body`.
pub fn hmac_sha256(
    secret: &[u8],
    value: &[u8],
    encoding: &str,
    prefix: Option<&str>,
    body: &[u8],
) -> Result<(), String> {
    let text = std::str::from_utf8(value).map_err(|_| "not text".to_string())?;
    let text = text.trim();
    let text = match prefix {
        Some(p) => text
            .strip_prefix(p)
            .ok_or_else(|| format!("does not start with {p:?}"))?,
        None => text,
    };
    let given = match encoding {
        "hex" => hex::decode(text).map_err(|_| "not hex".to_string())?,
        _ => B64.decode(text).map_err(|_| "not base64".to_string())?,
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())?;
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| "signature does not match the body".to_string())
}

/// The decoded `X-EBAY-SIGNATURE` header.
#[derive(Debug, Deserialize)]
pub struct EbaySignature {
    pub alg: String,
    pub kid: String,
    pub signature: String,
    pub digest: String,
}

/// Decodes eBay's signature header (base64 of a JSON object).
pub fn decode_ebay_header(value: &[u8]) -> Result<EbaySignature, String> {
    let raw = B64
        .decode(value.trim_ascii())
        .map_err(|_| "not base64".to_string())?;
    serde_json::from_slice(&raw)
        .map_err(|e| format!("not eBay's signature object (alg, kid, signature, digest): {e}"))
}

/// Verifies eBay's signature header over `body` with the key `key_for(kid)` returns.
pub fn ebay_ecdsa(
    value: &[u8],
    body: &[u8],
    key_for: impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    let sig = decode_ebay_header(value)?;
    if !sig.alg.eq_ignore_ascii_case("ecdsa") {
        return Err(format!("unsupported alg {:?} (expected ecdsa)", sig.alg));
    }
    if !sig.digest.eq_ignore_ascii_case("sha1") {
        return Err(format!(
            "unsupported digest {:?} (expected SHA1)",
            sig.digest
        ));
    }
    let pem = key_for(&sig.kid).ok_or_else(|| format!("unknown key id {:?}", sig.kid))?;
    let key = parse_public_key(&pem)?;
    let der = B64
        .decode(sig.signature.trim())
        .map_err(|_| "the signature is not base64".to_string())?;
    let signature =
        Signature::from_der(&der).map_err(|_| "the signature is not DER ECDSA".to_string())?;
    key.verify_prehash(&Sha1::digest(body), &signature)
        .map_err(|_| "signature does not match the body".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_accepts_the_right_digest_only() {
        let body = b"{\"a\":1}";
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        let b64 = B64.encode(tag);
        let hx = hex::encode(tag);
        assert!(hmac_sha256(b"s3cret", b64.as_bytes(), "base64", None, body).is_ok());
        assert!(hmac_sha256(b"s3cret", hx.as_bytes(), "hex", None, body).is_ok());
        let prefixed = format!("sha256={hx}");
        assert!(hmac_sha256(b"s3cret", prefixed.as_bytes(), "hex", Some("sha256="), body).is_ok());
        assert!(hmac_sha256(b"other", b64.as_bytes(), "base64", None, body).is_err());
        assert!(hmac_sha256(b"s3cret", b64.as_bytes(), "base64", None, b"{}").is_err());
        assert!(hmac_sha256(b"s3cret", b"%%%", "base64", None, body).is_err());
    }

    #[test]
    fn reads_a_one_line_pem() {
        let pem = "-----BEGIN PUBLIC KEY-----MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZhhxXKtR+TOvtDbgTPCkSof02qgBB7IsYOyf76ilExJ/upAa/vKIKheOoCyOpcLmi4t0b4uepb7LLjmMr90FUg==-----END PUBLIC KEY-----";
        assert!(parse_public_key(pem).is_ok());
        assert!(
            parse_public_key("-----BEGIN PUBLIC KEY-----AAAA-----END PUBLIC KEY-----").is_err()
        );
    }
}
