//! Small shared helpers: clocks, ids, hashing and secrets. Nothing here knows about the shop.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Now, in epoch milliseconds.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// A new time-ordered id with a readable prefix: `msg_0190f…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Lower-case hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Compares two byte strings (secrets, MACs, tokens) in time that depends only on their
/// lengths, by `subtle`.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// A random token of `bytes` random bytes, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// A secret from configuration (an API key, a database URL with a password). Its `Debug` and
/// `Display` never show the value; two are compared in constant time.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        constant_time_eq(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl Eq for Secret {}

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// An IPv4 address seen through an IPv6 socket (`::ffff:a.b.c.d`) is the IPv4 address.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(std::net::IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Formats epoch milliseconds as an RFC 3339 UTC timestamp.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// RFC 8785 JSON Canonicalization Scheme (JCS): object members sorted by their keys' UTF-16
/// code units, no whitespace, strings escaped as ECMAScript's `JSON.stringify` escapes them,
/// numbers as ECMAScript prints them (integers within ±2^53 as they are; anything else as the
/// nearest double, shortest form). The bytes that signatures and `sha256:` hashes of JSON cover.
pub fn jcs(value: &serde_json::Value) -> String {
    let mut out = String::with_capacity(128);
    jcs_into(value, &mut out);
    out
}

/// `sha256:` + lowercase hex of SHA-256 over the JCS bytes of `value`.
pub fn jcs_sha256(value: &serde_json::Value) -> String {
    format!("sha256:{}", sha256_hex(jcs(value).as_bytes()))
}

fn jcs_into(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => jcs_number(n, out),
        Value::String(s) => jcs_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                jcs_into(v, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(Vec<u16>, &String, &Value)> = map
                .iter()
                .map(|(k, v)| (k.encode_utf16().collect(), k, v))
                .collect();
            members.sort_by(|a, b| a.0.cmp(&b.0));
            out.push('{');
            for (i, (_, k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                jcs_string(k, out);
                out.push(':');
                jcs_into(v, out);
            }
            out.push('}');
        }
    }
}

fn jcs_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn jcs_number(n: &serde_json::Number, out: &mut String) {
    const SAFE: u64 = 1 << 53;
    if let Some(i) = n.as_i64()
        && i.unsigned_abs() <= SAFE
    {
        out.push_str(&i.to_string());
        return;
    }
    if let Some(u) = n.as_u64()
        && u <= SAFE
    {
        out.push_str(&u.to_string());
        return;
    }
    out.push_str(&es_number(n.as_f64().unwrap_or(0.0)));
}

/// ECMAScript's Number::toString for a finite double (ECMA-262 §6.1.6.1.20), which JCS uses.
fn es_number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    // Rust prints the shortest digits that round-trip; `{:e}` gives them as d.ddde±x.
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let k = digits.len() as i64;
    let n = exp.parse::<i64>().unwrap_or(0) + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let e = if e >= 0 {
            format!("+{e}")
        } else {
            e.to_string()
        };
        if k == 1 {
            format!("{digits}e{e}")
        } else {
            format!("{}.{}e{e}", &digits[..1], &digits[1..])
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jcs_follows_rfc_8785() {
        // RFC 8785 §3.2.2 and appendix B: numbers as ECMAScript prints them.
        let numbers = serde_json::json!([
            333_333_333.333_333_3_f64,
            1e30_f64,
            4.50_f64,
            2e-3_f64,
            1e-27_f64,
            1e21_f64,
            1e-7_f64,
            123e-7_f64,
            -0.0_f64,
            9007199254740992_u64,
            9007199254740993_u64,
            -5_i64,
            1e20_f64
        ]);
        assert_eq!(
            jcs(&numbers),
            "[333333333.3333333,1e+30,4.5,0.002,1e-27,1e+21,1e-7,0.0000123,0,9007199254740992,\
             9007199254740992,-5,100000000000000000000]"
        );
        let v: serde_json::Value = serde_json::from_str(
            r#"{"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}"#,
        )
        .unwrap();
        assert_eq!(
            jcs(&v),
            r#"{"literals":[null,true,false],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        // Keys sort by UTF-16 code units: U+1D11E (a surrogate pair) before U+FB33.
        let v = serde_json::json!({"\u{fb33}": 1, "\u{1d11e}": 2, "\r": 3, "1": 4, "a": 5});
        let keys: Vec<String> =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&jcs(&v))
                .unwrap()
                .keys()
                .cloned()
                .collect();
        assert_eq!(keys, ["\r", "1", "a", "\u{1d11e}", "\u{fb33}"]);
        assert!(jcs_sha256(&serde_json::json!({})).starts_with("sha256:"));
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn ids_sort_by_time_and_compare_safely() {
        let a = new_id("msg");
        let b = new_id("msg");
        assert!(a.starts_with("msg_") && a < b);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
