//! Marketplace settings: every `channels/*.toml` holding a `[marketplace]` table (or a top-level
//! `kind = "marketplace"`) describes one marketplace — its name, how its webhooks are signed,
//! where in the payload the buyer, thread, message, text and order are (JSON pointers), and how
//! a reply is posted back. Secrets are never in the file: an HMAC secret comes from the variable
//! `signature.secret_env` names, else `CONCIERGE_MARKETPLACE_<NAME>__SECRET`; reply headers may
//! say `${VAR}` to take a value from the environment when a reply is sent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use handlebars::Handlebars;
use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::util::Secret;

/// One marketplace as its file describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketplaceConfig {
    /// Lower-case letters, digits, `-` and `_`; the channel is `marketplace:<name>`. Defaults to
    /// the file's stem.
    #[serde(default)]
    pub name: String,
    /// Off: no endpoint is mounted and nothing is sent.
    #[serde(default = "yes")]
    pub enabled: bool,
    pub signature: SignatureConfig,
    pub fields: Fields,
    pub reply: ReplyConfig,
    /// eBay's endpoint-ownership challenge (`GET …/webhook?challenge_code=…`).
    #[serde(default)]
    pub challenge: Option<ChallengeConfig>,
}

fn yes() -> bool {
    true
}

/// How a webhook proves it comes from the marketplace.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "scheme", deny_unknown_fields)]
pub enum SignatureConfig {
    /// HMAC-SHA256 of the raw body with a shared secret, in a header.
    #[serde(rename = "hmac-sha256")]
    HmacSha256 {
        header: String,
        /// `base64` (default) or `hex`.
        #[serde(default = "base64_name")]
        encoding: String,
        /// Text before the digest in the header (e.g. `sha256=`), stripped before decoding.
        #[serde(default)]
        prefix: Option<String>,
        /// The environment variable holding the secret.
        #[serde(default)]
        secret_env: Option<String>,
    },
    /// eBay's notification signature: the header is base64 of JSON
    /// `{"alg":"ecdsa","kid":…,"signature":"<base64 DER>","digest":"SHA1"}`, an ECDSA P-256
    /// signature over the raw body with SHA-1, by the key `kid` names.
    #[serde(rename = "ebay-ecdsa")]
    EbayEcdsa {
        #[serde(default = "ebay_header")]
        header: String,
        /// Key id → PEM public key (SubjectPublicKeyInfo; line breaks optional).
        #[serde(default)]
        public_keys: BTreeMap<String, String>,
    },
}

fn base64_name() -> String {
    "base64".into()
}

fn ebay_header() -> String {
    "X-EBAY-SIGNATURE".into()
}

/// JSON pointers (RFC 6901) into the webhook payload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fields {
    pub buyer_id: String,
    #[serde(default)]
    pub buyer_name: Option<String>,
    pub thread_id: String,
    pub message_id: String,
    pub text: String,
    #[serde(default)]
    pub order: Option<String>,
    /// The notification's kind (shown when a payload without text is acknowledged).
    #[serde(default)]
    pub topic: Option<String>,
}

/// How a reply goes back to the buyer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyConfig {
    /// May contain `{thread_id}`, `{buyer_id}` and `{order}` (percent-encoded when filled in).
    pub url: String,
    #[serde(default = "post_name")]
    pub method: String,
    /// A JSON template (Handlebars) with `{{text}}`, `{{thread_id}}`, `{{buyer_id}}`,
    /// `{{order}}`; values are escaped for use inside JSON strings.
    pub body: String,
    /// Static headers; `${VAR}` is replaced with the environment variable's value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON pointer to the marketplace's id for the sent message in its response.
    #[serde(default)]
    pub id_pointer: Option<String>,
    #[serde(default = "thirty")]
    pub timeout_secs: u64,
    /// Attempts before a reply is a dead letter.
    #[serde(default = "eight")]
    pub max_attempts: i64,
    /// Wait before the first retry, in milliseconds (doubling after each further attempt).
    #[serde(default = "one_second")]
    pub retry_base_ms: u64,
    /// Longest wait between two attempts, in milliseconds.
    #[serde(default = "one_hour")]
    pub retry_max_ms: u64,
}

impl ReplyConfig {
    /// How a reply to this marketplace is retried.
    pub fn retry(&self) -> super::RetryPolicy {
        super::RetryPolicy {
            max_attempts: self.max_attempts,
            base_ms: self.retry_base_ms,
            max_ms: self.retry_max_ms,
        }
    }
}

fn eight() -> i64 {
    8
}

fn one_second() -> u64 {
    1000
}

fn one_hour() -> u64 {
    3_600_000
}

fn post_name() -> String {
    "POST".into()
}

fn thirty() -> u64 {
    30
}

/// eBay proves an endpoint is the subscriber's with a GET carrying `challenge_code`; the answer
/// is `{"challengeResponse": hex(SHA-256(challenge_code + verification token + endpoint URL))}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeConfig {
    /// The environment variable holding the verification token given to eBay.
    pub token_env: String,
    /// The endpoint URL exactly as registered with eBay (default: `[server] public_url` + path).
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// A marketplace ready to use: its settings and the secret they name, when present.
#[derive(Debug, Clone)]
pub struct Marketplace {
    pub config: MarketplaceConfig,
    pub file: PathBuf,
    pub secret: Option<Secret>,
}

impl Marketplace {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// `marketplace:<name>`.
    pub fn channel(&self) -> String {
        format!("marketplace:{}", self.config.name)
    }

    /// Where the marketplace posts its webhooks.
    pub fn path(&self) -> String {
        format!("/channels/marketplace/{}/webhook", self.config.name)
    }

    /// Why the endpoint cannot verify what it receives, if it cannot.
    pub fn unverifiable(&self) -> Option<String> {
        match &self.config.signature {
            SignatureConfig::HmacSha256 { .. } if self.secret.is_none() => Some(format!(
                "its HMAC secret is not set ({})",
                self.secret_var()
            )),
            SignatureConfig::EbayEcdsa { public_keys, .. } if public_keys.is_empty() => {
                Some("it has no public_keys".into())
            }
            _ => None,
        }
    }

    /// The environment variable the HMAC secret is read from.
    pub fn secret_var(&self) -> String {
        match &self.config.signature {
            SignatureConfig::HmacSha256 {
                secret_env: Some(v),
                ..
            } => v.clone(),
            _ => format!(
                "CONCIERGE_MARKETPLACE_{}__SECRET",
                self.config.name.to_ascii_uppercase().replace('-', "_")
            ),
        }
    }
}

/// Reads every marketplace file in `dir` (sorted by file name). A file that is not TOML, or
/// whose `[marketplace]` table is invalid, is an error naming it; files without one are skipped.
pub fn load_dir(dir: &Path) -> Result<Vec<Marketplace>, String> {
    load_dir_with_env(dir, |k| std::env::var(k).ok())
}

pub fn load_dir_with_env(
    dir: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Marketplace>, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut out: Vec<Marketplace> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let Some(m) = parse_file(&file, &text, &env)? else {
            continue;
        };
        if let Some(other) = out.iter().find(|o| o.name() == m.name()) {
            return Err(format!(
                "{} and {} both configure marketplace {:?}",
                other.file.display(),
                file.display(),
                m.name()
            ));
        }
        out.push(m);
    }
    Ok(out)
}

/// One file's marketplace, or None when the file configures something else.
pub fn parse_file(
    file: &Path,
    text: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Marketplace>, String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
    let table: toml::Table = toml::from_str(text).map_err(|e| at(&e))?;
    let section = match table.get("marketplace") {
        Some(toml::Value::Table(t)) => t.clone(),
        Some(_) => return Err(at(&"`marketplace` must be a table")),
        None if table.get("kind").and_then(toml::Value::as_str) == Some("marketplace") => {
            let mut t = table.clone();
            t.remove("kind");
            t
        }
        None => return Ok(None),
    };
    let mut config: MarketplaceConfig = toml::Value::Table(section)
        .try_into()
        .map_err(|e: toml::de::Error| at(&format!("[marketplace] {}", e.message())))?;
    if config.name.is_empty() {
        config.name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
    }
    validate(&config).map_err(|e| at(&e))?;
    let mut m = Marketplace {
        config,
        file: file.to_path_buf(),
        secret: None,
    };
    if matches!(m.config.signature, SignatureConfig::HmacSha256 { .. }) {
        m.secret = env(&m.secret_var())
            .filter(|s| !s.is_empty())
            .map(Secret::new);
    }
    Ok(Some(m))
}

fn validate(c: &MarketplaceConfig) -> Result<(), String> {
    let name_ok = !c.name.is_empty()
        && c.name.len() <= 64
        && c.name
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_');
    if !name_ok {
        return Err(format!(
            "marketplace name {:?} must be 1-64 lower-case letters, digits, '-' or '_'",
            c.name
        ));
    }
    match &c.signature {
        SignatureConfig::HmacSha256 {
            header, encoding, ..
        } => {
            axum::http::HeaderName::try_from(header.as_str())
                .map_err(|_| format!("signature.header {header:?} is not a header name"))?;
            if !matches!(encoding.as_str(), "base64" | "hex") {
                return Err(format!(
                    "signature.encoding {encoding:?} must be \"base64\" or \"hex\""
                ));
            }
        }
        SignatureConfig::EbayEcdsa {
            header,
            public_keys,
        } => {
            axum::http::HeaderName::try_from(header.as_str())
                .map_err(|_| format!("signature.header {header:?} is not a header name"))?;
            for (kid, pem) in public_keys {
                parse_public_key(pem).map_err(|e| format!("signature.public_keys.{kid:?}: {e}"))?;
            }
        }
    }
    let f = &c.fields;
    let mut pointers = vec![
        ("buyer_id", Some(&f.buyer_id)),
        ("thread_id", Some(&f.thread_id)),
        ("message_id", Some(&f.message_id)),
        ("text", Some(&f.text)),
        ("buyer_name", f.buyer_name.as_ref()),
        ("order", f.order.as_ref()),
        ("topic", f.topic.as_ref()),
    ];
    if let Some(p) = &c.reply.id_pointer {
        pointers.push(("reply.id_pointer", Some(p)));
    }
    for (key, p) in pointers {
        if let Some(p) = p
            && !p.is_empty()
            && !p.starts_with('/')
        {
            return Err(format!(
                "fields.{key} {p:?} is not a JSON pointer (it starts with '/')"
            ));
        }
    }
    if !c.reply.url.starts_with("http://") && !c.reply.url.starts_with("https://") {
        return Err(format!("reply.url {:?} is not an http(s) URL", c.reply.url));
    }
    if c.reply.max_attempts < 1 {
        return Err(format!(
            "reply.max_attempts must be at least 1, not {}",
            c.reply.max_attempts
        ));
    }
    if !matches!(c.reply.method.as_str(), "POST" | "PUT" | "PATCH") {
        return Err(format!(
            "reply.method {:?} must be POST, PUT or PATCH",
            c.reply.method
        ));
    }
    check_body_template(&c.reply.body)?;
    for name in c.reply.headers.keys() {
        axum::http::HeaderName::try_from(name.as_str())
            .map_err(|_| format!("reply.headers: {name:?} is not a header name"))?;
    }
    Ok(())
}

/// A P-256 public key from PEM (SubjectPublicKeyInfo), with or without line breaks — eBay's key
/// API returns it on one line.
pub fn parse_public_key(pem: &str) -> Result<VerifyingKey, String> {
    let body: String = pem
        .replace("-----BEGIN PUBLIC KEY-----", "")
        .replace("-----END PUBLIC KEY-----", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = B64
        .decode(body)
        .map_err(|_| "the public key is not base64 PEM".to_string())?;
    VerifyingKey::from_public_key_der(&der)
        .map_err(|e| format!("not a P-256 public key (SubjectPublicKeyInfo): {e}"))
}

/// What a reply template may use.
#[derive(Debug, Clone)]
pub struct ReplyVars {
    pub text: String,
    pub thread_id: String,
    pub buyer_id: String,
    pub order: String,
}

/// Escapes a value for use inside a JSON string literal.
fn json_string_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_string()
}

/// Renders the body template; the result must be JSON.
pub fn render_body(template: &str, vars: &ReplyVars) -> Result<String, String> {
    let mut hbs = Handlebars::new();
    hbs.set_strict_mode(true);
    hbs.register_escape_fn(json_string_escape);
    let data = json!({
        "text": vars.text,
        "thread_id": vars.thread_id,
        "buyer_id": vars.buyer_id,
        "order": vars.order,
    });
    let body = hbs
        .render_template(template, &data)
        .map_err(|e| format!("reply.body does not render: {e}"))?;
    serde_json::from_str::<Value>(&body)
        .map_err(|e| format!("reply.body does not render to JSON: {e}"))?;
    Ok(body)
}

/// Checks a body template at load time (with awkward sample values).
pub fn check_body_template(template: &str) -> Result<(), String> {
    render_body(
        template,
        &ReplyVars {
            text: "a \"quoted\"\nline \\ with </script>".into(),
            thread_id: "t-1".into(),
            buyer_id: "b-1".into(),
            order: String::new(),
        },
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_presets_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("channels");
        let all = load_dir_with_env(&dir, |_| None).unwrap();
        let ebay = all.iter().find(|m| m.name() == "ebay").unwrap();
        assert!(ebay.config.enabled);
        assert_eq!(ebay.unverifiable(), None);
        assert_eq!(ebay.path(), "/channels/marketplace/ebay/webhook");
        let generic = all.iter().find(|m| m.name() == "generic").unwrap();
        assert!(!generic.config.enabled);
        assert!(
            generic
                .unverifiable()
                .unwrap()
                .contains("MARKETPLACE_WEBHOOK_SECRET")
        );
        // Files for other channels are not marketplaces.
        assert!(all.iter().all(|m| m.name() != "email"));
    }

    #[test]
    fn the_secret_comes_from_the_environment() {
        let text = r#"
kind = "marketplace"
signature = { scheme = "hmac-sha256", header = "X-Sig" }
fields = { buyer_id = "/b", thread_id = "/t", message_id = "/m", text = "/x" }
reply = { url = "https://m.example/x", body = '{"text": "{{text}}"}' }
"#;
        let env = |k: &str| (k == "CONCIERGE_MARKETPLACE_MY_SHOP__SECRET").then(|| "s".to_string());
        let m = parse_file(Path::new("my-shop.toml"), text, &env)
            .unwrap()
            .unwrap();
        assert_eq!(m.name(), "my-shop");
        assert_eq!(m.secret.as_ref().map(Secret::expose), Some("s"));
    }

    #[test]
    fn bad_settings_are_named() {
        let text = r#"
[marketplace]
name = "Bad Name"
signature = { scheme = "hmac-sha256", header = "X-Sig" }
fields = { buyer_id = "/b", thread_id = "/t", message_id = "/m", text = "/x" }
reply = { url = "https://m.example/x", body = '{"text": "{{text}}"}' }
"#;
        let e = parse_file(Path::new("x.toml"), text, &|_| None).unwrap_err();
        assert!(e.contains("Bad Name"), "{e}");
        let e = parse_file(
            Path::new("x.toml"),
            &text.replace("Bad Name", "ok").replace("\"/t\"", "\"t\""),
            &|_| None,
        )
        .unwrap_err();
        assert!(e.contains("fields.thread_id"), "{e}");
        let e = parse_file(
            Path::new("x.toml"),
            &text
                .replace("Bad Name", "ok")
                .replace("{\"text\": \"{{text}}\"}", "{{text}}"),
            &|_| None,
        )
        .unwrap_err();
        assert!(e.contains("reply.body"), "{e}");
        assert!(
            parse_file(Path::new("email.toml"), "from = \"a@b.c\"", &|_| None)
                .unwrap()
                .is_none()
        );
    }
}
