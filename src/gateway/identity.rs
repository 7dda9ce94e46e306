//! Registered agents and their Ed25519 keys; RFC 9421 HTTP Message Signature verification.
//!
//! A consumer agent signs each request with one of its registered keys:
//!
//! ```text
//! Content-Digest: sha-256=:<base64 of SHA-256 of the body>:
//! Signature-Input: sig1=("@method" "@target-uri" "content-digest");created=1700000000;keyid="<key id>";nonce="<random>";alg="ed25519"
//! Signature: sig1=:<base64 Ed25519 signature over the signature base>:
//! ```
//!
//! The signature base is built per RFC 9421 §2.5: one line `"<component>": <value>` per covered
//! component, then `"@signature-params": <the inner list as sent>`, joined by `\n`. Components
//! understood: `@method`, `@target-uri`, `@authority`, `@scheme`, `@path`, `@query`,
//! `@request-target`, and any header by its lower-case name (multiple values joined by ", ").
//! A signature must cover `@method` and `@target-uri`, and `content-digest` when the request has
//! a body; it must carry `created` (not older than 5 minutes, not more than 1 minute ahead),
//! `keyid` and a `nonce` never used before with that key.
//!
//! `@target-uri` is the URL as the client sent it: `[server] public_url` when set (behind a
//! proxy; its scheme, authority and any path prefix the proxy strips), else `X-Forwarded-Proto`
//! (or http) and the `Host` header; then the path and query exactly as received (not decoded).
//!
//! Key ids are derived from the key: base64url (no padding) of the first 16 bytes of the SHA-256
//! of the raw 32-byte public key — so the same key always has the same id, whoever registers it.

use std::path::{Path, PathBuf};

use axum::http::{HeaderMap, Method};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::{AgentRef, GatewayError, SignedRequest};
use crate::commerce::Millis;
use crate::state::AppState;

/// Oldest acceptable `created`, in seconds before now.
pub const MAX_SIGNATURE_AGE_SECS: i64 = 300;
/// How far ahead of our clock `created` may be, in seconds.
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;
pub use crate::files::SERVICE_KEY_FILE;

// ---- keys ----

/// Reads an agent's public key: the raw 32 bytes in base64 or base64url (padded or not), or a
/// PEM `PUBLIC KEY` (SubjectPublicKeyInfo). The error says what was wrong.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("the public key is empty".into());
    }
    if t.starts_with("-----BEGIN") {
        if !t.contains("PUBLIC KEY") {
            return Err(
                "this PEM is not a public key (expected -----BEGIN PUBLIC KEY-----); never share \
                 a private key"
                    .into(),
            );
        }
        return VerifyingKey::from_public_key_pem(t)
            .map_err(|e| format!("the PEM public key is not an Ed25519 key: {e}"));
    }
    let bytes = [URL_SAFE_NO_PAD, URL_SAFE, STANDARD, STANDARD_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(t).ok())
        .ok_or("the public key is neither base64/base64url nor PEM")?;
    let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "an Ed25519 public key is 32 bytes; this one decodes to {} bytes",
            bytes.len()
        )
    })?;
    VerifyingKey::from_bytes(&raw).map_err(|e| format!("not a valid Ed25519 public key: {e}"))
}

/// The key id of a public key: base64url of the first 16 bytes of SHA-256(raw key).
/// A stored public key, parsed once: decoding it (and decompressing the curve point) on every
/// signed request would cost more than the signature check's bookkeeping. Bounded: emptied when
/// full.
fn parsed_public_key(text: &str) -> Result<VerifyingKey, String> {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    static PARSED: LazyLock<Mutex<HashMap<String, VerifyingKey>>> = LazyLock::new(Default::default);
    if let Some(k) = PARSED.lock().unwrap_or_else(|p| p.into_inner()).get(text) {
        return Ok(*k);
    }
    let key = parse_public_key(text)?;
    let mut map = PARSED.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= 10_000 {
        map.clear();
    }
    map.insert(text.to_string(), key);
    Ok(key)
}

pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// The raw public key as base64url without padding (how it is stored).
pub fn encode_public_key(key: &VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// A fresh random Ed25519 key.
pub fn generate_key() -> SigningKey {
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

/// The path of the service key in `data_dir`.
pub fn service_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SERVICE_KEY_FILE)
}

/// The service's Ed25519 key: read from `<data_dir>/service_key.pem`, or generated and written
/// there (mode 0600) on first use. It signs the action log's head and is the root key of the
/// capability tokens. Deployments with several instances share one data dir key file.
pub fn service_key(data_dir: &Path) -> anyhow::Result<SigningKey> {
    use anyhow::Context;
    let path = service_key_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(pem) => SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 private key: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
            let key = generate_key();
            let pem = key
                .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                .map_err(|e| anyhow::anyhow!("cannot encode the service key: {e}"))?;
            write_private(&path, pem.as_bytes())?;
            // Two processes starting at once: whoever wrote first wins; read back what is there.
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
                anyhow::anyhow!("{} is not an Ed25519 private key: {e}", path.display())
            })
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The service key this process uses: `[server] service_key_file` when set (every instance
/// sharing a database points it at the same key), else the data dir's, made on first use.
pub fn configured_service_key(config: &crate::config::Config) -> anyhow::Result<SigningKey> {
    match &config.server.service_key_file {
        Some(path) => {
            read_private_key(path).map_err(|e| anyhow::anyhow!("[server] service_key_file: {e:#}"))
        }
        None => service_key(&config.data_dir),
    }
}

/// The configured service key, checked against the database: the first start records its
/// public half there, and a process whose key differs (another instance's own key, a lost key
/// file) is refused, since the audit log's head and the tokens issued were signed with the
/// recorded one.
pub async fn checked_service_key(
    config: &crate::config::Config,
    store: &crate::store::Store,
) -> anyhow::Result<SigningKey> {
    let key = configured_service_key(config)?;
    let mine = encode_public_key(&key.verifying_key());
    let recorded = store.adopt_service_key(&mine).await?;
    if recorded != mine {
        let source = match &config.server.service_key_file {
            Some(path) => path.display().to_string(),
            None => service_key_path(&config.data_dir).display().to_string(),
        };
        let recorded_id = parse_public_key(&recorded)
            .map(|k| key_id(&k))
            .unwrap_or(recorded);
        anyhow::bail!(
            "the service key in {source} (key id {}) is not the key this database was started \
             with (key id {recorded_id}). Every instance sharing a database must use the same \
             key: copy the first instance's service_key.pem and point [server] \
             service_key_file (or CONCIERGE_SERVICE_KEY_FILE) at it",
            key_id(&key.verifying_key())
        );
    }
    Ok(key)
}

/// Writes `key` as a PKCS#8 PEM file readable by the owner only (an existing file is kept).
pub fn write_private_key(path: &Path, key: &SigningKey) -> anyhow::Result<()> {
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the key: {e}"))?;
    write_private(path, pem.as_bytes())
}

/// Reads a PKCS#8 PEM Ed25519 private key.
pub fn read_private_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 private key: {e}", path.display()))
}

/// Creates `path` with `bytes`, readable by the owner only; an existing file is left alone.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut f) => {
            f.write_all(bytes)
                .and_then(|_| f.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

// ---- signing (for agents, tests and the benchmark) ----

/// The headers a signed request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    pub signature_input: String,
    pub signature: String,
    /// `Content-Digest`, when the request has a body.
    pub content_digest: Option<String>,
}

impl SignatureHeaders {
    /// The headers as (name, value) pairs, ready to add to a request.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("signature-input", self.signature_input.clone()),
            ("signature", self.signature.clone()),
        ];
        if let Some(d) = &self.content_digest {
            out.push(("content-digest", d.clone()));
        }
        out
    }
}

/// `sha-256=:<base64>:` for a body (RFC 9530).
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
}

/// Signs a request as a consumer agent would: covers `@method`, `@target-uri` and, when `body`
/// is not empty, `content-digest`; `created` in seconds since the epoch.
pub fn sign_request(
    key: &SigningKey,
    key_id: &str,
    method: &str,
    url: &str,
    body: &[u8],
    nonce: &str,
    created: i64,
) -> SignatureHeaders {
    let digest = (!body.is_empty()).then(|| content_digest(body));
    let mut components = vec!["@method", "@target-uri"];
    if digest.is_some() {
        components.push("content-digest");
    }
    let list: Vec<String> = components.iter().map(|c| format!("\"{c}\"")).collect();
    let params = format!(
        "({});created={created};keyid={};nonce={};alg=\"ed25519\"",
        list.join(" "),
        sf_string(key_id),
        sf_string(nonce)
    );
    let mut base = String::new();
    base.push_str(&format!("\"@method\": {}\n", method.to_ascii_uppercase()));
    base.push_str(&format!("\"@target-uri\": {url}\n"));
    if let Some(d) = &digest {
        base.push_str(&format!("\"content-digest\": {d}\n"));
    }
    base.push_str(&format!("\"@signature-params\": {params}"));
    let sig = key.sign(base.as_bytes());
    SignatureHeaders {
        signature_input: format!("sig1={params}"),
        signature: format!("sig1=:{}:", STANDARD.encode(sig.to_bytes())),
        content_digest: digest,
    }
}

/// An RFC 8941 string: quoted, with `"` and `\` escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

// ---- parsing (RFC 8941 structured fields, by the `sfv` crate) ----

/// Parses a structured-field dictionary (`Signature-Input`, `Signature`, `Content-Digest`).
fn parse_dictionary(text: &str) -> Result<sfv::Dictionary, String> {
    sfv::Parser::new(text.trim())
        .with_version(sfv::Version::Rfc8941)
        .parse::<sfv::Dictionary>()
        .map_err(|e| e.to_string())
}

// ---- verification ----

fn unauth(code: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::Unauthenticated {
        code,
        message: message.into(),
    }
}

fn header_value(headers: &HeaderMap, name: &str) -> Result<Option<String>, GatewayError> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            unauth(
                "signature_invalid",
                format!("the {name} header is not printable ASCII"),
            )
        })?;
    Ok((!values.is_empty()).then(|| {
        values
            .iter()
            .map(|v| v.trim())
            .collect::<Vec<_>>()
            .join(", ")
    }))
}

/// The URL the client sent the request to (see the module docs).
pub fn target_uri(public_url: Option<&str>, req: &SignedRequest<'_>) -> String {
    let path_and_query = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let base = crate::http::hosts::public_base(public_url, req.uri, req.headers);
    format!("{base}{path_and_query}")
}

fn scheme(req: &SignedRequest<'_>) -> String {
    if let Some(s) = req.uri.scheme_str() {
        return s.to_ascii_lowercase();
    }
    req.headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| v == "http" || v == "https")
        .unwrap_or_else(|| "http".into())
}

fn authority(req: &SignedRequest<'_>) -> Option<String> {
    req.uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers
                .get("host")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .map(|a| a.to_ascii_lowercase())
}

/// The value of one covered component, or why there is none.
pub(crate) fn component_value(
    name: &str,
    public_url: Option<&str>,
    req: &SignedRequest<'_>,
) -> Result<String, GatewayError> {
    let public = public_url.and_then(|u| reqwest::Url::parse(u).ok());
    Ok(match name {
        "@method" => req.method.as_str().to_ascii_uppercase(),
        "@target-uri" => target_uri(public_url, req),
        "@authority" => match &public {
            Some(u) => match (u.host_str(), u.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => String::new(),
            },
            None => authority(req).unwrap_or_default(),
        },
        "@scheme" => match &public {
            Some(u) => u.scheme().to_string(),
            None => scheme(req),
        },
        "@path" => req.uri.path().to_string(),
        "@query" => format!("?{}", req.uri.query().unwrap_or("")),
        "@request-target" => req
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        n if n.starts_with('@') => {
            return Err(unauth(
                "signature_invalid",
                format!("the signature covers {n:?}, a component Concierge does not support"),
            ));
        }
        header => header_value(req.headers, header)?.ok_or_else(|| {
            unauth(
                "signature_invalid",
                format!("the signature covers the {header} header, but the request has none"),
            )
        })?,
    })
}

/// The parsed `Signature-Input` member we verify.
pub(crate) struct SignatureInput {
    pub(crate) label: String,
    pub(crate) components: Vec<String>,
    pub(crate) raw: String,
    pub(crate) created: Option<i64>,
    pub(crate) expires: Option<i64>,
    pub(crate) key_id: Option<String>,
    pub(crate) nonce: Option<String>,
    pub(crate) alg: Option<String>,
}

pub(crate) fn parse_signature_headers(
    input: &str,
    signature: &str,
) -> Result<(SignatureInput, Vec<u8>), GatewayError> {
    use sfv::{BareItem, FieldType, ListEntry};
    let invalid = |m: String| unauth("signature_invalid", m);
    let inputs = parse_dictionary(input).map_err(|e| invalid(format!("Signature-Input: {e}")))?;
    let sigs = parse_dictionary(signature).map_err(|e| invalid(format!("Signature: {e}")))?;
    // The first labelled input that has a matching signature.
    for (label, member) in inputs {
        let ListEntry::InnerList(list) = member else {
            continue;
        };
        let Some(ListEntry::Item(sfv::Item {
            bare_item: BareItem::ByteSequence(sig),
            ..
        })) = sigs.get(label.as_str())
        else {
            continue;
        };
        let mut components = Vec::with_capacity(list.items.len());
        for item in &list.items {
            let BareItem::String(name) = &item.bare_item else {
                return Err(invalid(
                    "Signature-Input: a component list holds something other than strings".into(),
                ));
            };
            if !item.params.is_empty() {
                return Err(invalid(format!(
                    "Signature-Input: component {:?} has parameters, which Concierge does not \
                     support",
                    name.as_str()
                )));
            }
            components.push(name.as_str().to_string());
        }
        // RFC 9421 §2.3: `@signature-params` is the serialized inner list with its parameters.
        let raw = vec![ListEntry::InnerList(list.clone())]
            .serialize()
            .ok_or_else(|| invalid("Signature-Input: an empty component list".into()))?;
        let mut parsed = SignatureInput {
            label: label.as_str().to_string(),
            components,
            raw,
            created: None,
            expires: None,
            key_id: None,
            nonce: None,
            alg: None,
        };
        for (k, v) in &list.params {
            match (k.as_str(), v) {
                ("created", BareItem::Integer(i)) => parsed.created = Some(i64::from(*i)),
                ("expires", BareItem::Integer(i)) => parsed.expires = Some(i64::from(*i)),
                ("keyid", BareItem::String(s)) => parsed.key_id = Some(s.as_str().to_string()),
                ("nonce", BareItem::String(s)) => parsed.nonce = Some(s.as_str().to_string()),
                ("alg", BareItem::String(s)) => parsed.alg = Some(s.as_str().to_string()),
                (k @ ("created" | "expires" | "keyid" | "nonce" | "alg"), _) => {
                    return Err(invalid(format!(
                        "Signature-Input: the {k} parameter has the wrong type"
                    )));
                }
                _ => {}
            }
        }
        return Ok((parsed, sig.clone()));
    }
    Err(unauth(
        "signature_invalid",
        "Signature-Input and Signature share no label with a component list and a signature \
         (expected e.g. sig1=(\"@method\" \"@target-uri\");… and sig1=:…:)",
    ))
}

/// The RFC 9421 signature base (§2.5) of a request for the parsed `Signature-Input`.
pub(crate) fn signature_base(
    params: &SignatureInput,
    public_url: Option<&str>,
    req: &SignedRequest<'_>,
) -> Result<String, GatewayError> {
    use std::fmt::Write;
    let mut base = String::with_capacity(256);
    for c in &params.components {
        let value = component_value(c, public_url, req)?;
        let _ = writeln!(base, "\"{c}\": {value}");
    }
    let _ = write!(base, "\"@signature-params\": {}", params.raw);
    Ok(base)
}

/// Checks the body against the `Content-Digest` header (sha-256).
pub(crate) fn check_digest(headers: &HeaderMap, body: &[u8]) -> Result<(), GatewayError> {
    let Some(value) = header_value(headers, "content-digest")? else {
        return Err(unauth(
            "digest_required",
            "the request has a body but no Content-Digest header (sha-256=:…:)",
        ));
    };
    let dict = parse_dictionary(&value)
        .map_err(|e| unauth("digest_invalid", format!("Content-Digest: {e}")))?;
    let Some(sfv::ListEntry::Item(sfv::Item {
        bare_item: sfv::BareItem::ByteSequence(expected),
        ..
    })) = dict.get("sha-256")
    else {
        return Err(unauth(
            "digest_invalid",
            "Content-Digest has no sha-256 value; Concierge checks sha-256 only",
        ));
    };
    let actual = Sha256::digest(body);
    if !crate::util::constant_time_eq(expected, &actual) {
        return Err(unauth(
            "digest_mismatch",
            "the body does not match its Content-Digest: it was changed after signing",
        ));
    }
    Ok(())
}

/// Verifies the request's RFC 9421 signature. None when the request carries no signature;
/// the signing agent when it verifies; otherwise an error whose code says which check failed.
pub async fn verify_request(
    state: &AppState,
    req: &SignedRequest<'_>,
    now: Millis,
) -> Result<Option<AgentRef>, GatewayError> {
    let input = header_value(req.headers, "signature-input")?;
    let signature = header_value(req.headers, "signature")?;
    let (input, signature) = match (input, signature) {
        (None, None) => return Ok(None),
        (Some(i), Some(s)) => (i, s),
        (Some(_), None) => {
            return Err(unauth(
                "signature_invalid",
                "the request has Signature-Input but no Signature header",
            ));
        }
        (None, Some(_)) => {
            return Err(unauth(
                "signature_invalid",
                "the request has Signature but no Signature-Input header",
            ));
        }
    };
    let (params, sig) = parse_signature_headers(&input, &signature)?;
    if let Some(alg) = &params.alg
        && alg != "ed25519"
    {
        return Err(unauth(
            "signature_alg_unsupported",
            format!("alg {alg:?} is not supported; sign with Ed25519 (alg=\"ed25519\")"),
        ));
    }
    let key_id = params.key_id.clone().ok_or_else(|| {
        unauth(
            "signature_invalid",
            format!("signature {:?} has no keyid parameter", params.label),
        )
    })?;
    for required in ["@method", "@target-uri"] {
        if !params.components.iter().any(|c| c == required) {
            return Err(unauth(
                "signature_incomplete",
                format!("the signature must cover {required:?}"),
            ));
        }
    }
    if !req.body.is_empty() && !params.components.iter().any(|c| c == "content-digest") {
        return Err(unauth(
            "signature_incomplete",
            "the request has a body, so the signature must cover \"content-digest\"",
        ));
    }
    let now_s = now.div_euclid(1000);
    let created = params.created.ok_or_else(|| {
        unauth(
            "signature_invalid",
            "the signature has no created parameter (seconds since 1970)",
        )
    })?;
    if created < now_s - MAX_SIGNATURE_AGE_SECS {
        return Err(unauth(
            "signature_stale",
            format!(
                "the signature was created {} s ago; signatures older than {MAX_SIGNATURE_AGE_SECS} s are refused",
                now_s - created
            ),
        ));
    }
    if created > now_s + MAX_CLOCK_SKEW_SECS {
        return Err(unauth(
            "signature_stale",
            format!(
                "the signature was created {} s in the future; check the agent's clock",
                created - now_s
            ),
        ));
    }
    if let Some(expires) = params.expires
        && expires < now_s
    {
        return Err(unauth(
            "signature_expired",
            format!("the signature expired {} s ago", now_s - expires),
        ));
    }
    let nonce = params.nonce.clone().ok_or_else(|| {
        unauth(
            "nonce_required",
            "the signature has no nonce parameter; every request needs a fresh random nonce",
        )
    })?;
    if nonce.is_empty() || nonce.len() > 128 {
        return Err(unauth(
            "nonce_invalid",
            "the nonce must be 1 to 128 characters long",
        ));
    }
    if !req.body.is_empty() || req.headers.contains_key("content-digest") {
        check_digest(req.headers, req.body)?;
    }

    let store = &state.store;
    let internal = |e: crate::store::StoreError| GatewayError::Internal(e.to_string());
    let Some(key) = store.agent_key(&key_id).await.map_err(internal)? else {
        return Err(unauth(
            "unknown_key",
            format!("no agent is registered with key id {key_id:?}"),
        ));
    };
    if key.agent_revoked_at.is_some() {
        return Err(unauth(
            "key_revoked",
            format!("agent {:?} was revoked", key.agent_name),
        ));
    }
    if key.key_revoked_at.is_some() {
        return Err(unauth(
            "key_revoked",
            format!(
                "key {key_id:?} of agent {:?} was revoked; sign with a current key",
                key.agent_name
            ),
        ));
    }
    let public = parsed_public_key(&key.public_key)
        .map_err(|e| GatewayError::Internal(format!("stored key {key_id}: {e}")))?;

    let base = signature_base(&params, state.config.server.public_url.as_deref(), req)?;
    let sig = Signature::from_slice(&sig).map_err(|_| {
        unauth(
            "bad_signature",
            "the signature is not a 64-byte Ed25519 signature",
        )
    })?;
    if public.verify(base.as_bytes(), &sig).is_err() {
        return Err(unauth(
            "bad_signature",
            format!(
                "the signature does not verify with key {key_id:?} over {} (is the URL the \
                 one the request was sent to?)",
                params
                    .components
                    .iter()
                    .map(|c| format!("\"{c}\""))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ));
    }
    // Only a verified signature may use up a nonce. It is kept until `created` is stale.
    let keep_until = (created + MAX_SIGNATURE_AGE_SECS + MAX_CLOCK_SKEW_SECS) * 1000;
    // A read changes nothing: on SQLite it need not wait for its nonce to be written.
    let remembered = if matches!(*req.method, Method::GET | Method::HEAD) {
        store.remember_read_nonce(&key_id, &nonce, keep_until).await
    } else {
        store.remember_nonce(&key_id, &nonce, keep_until).await
    };
    if !remembered.map_err(internal)? {
        return Err(unauth(
            "nonce_reused",
            format!("nonce {nonce:?} was already used with key {key_id:?}: this is a replay"),
        ));
    }
    Ok(Some(AgentRef {
        id: key.agent_id,
        name: key.agent_name,
        key_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{Method, Uri};

    #[test]
    fn public_keys_parse_in_every_accepted_form() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = key.verifying_key();
        let raw = public.as_bytes();
        for text in [
            URL_SAFE_NO_PAD.encode(raw),
            URL_SAFE.encode(raw),
            STANDARD.encode(raw),
            {
                use ed25519_dalek::pkcs8::EncodePublicKey;
                public
                    .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                    .unwrap_or_default()
            },
        ] {
            assert_eq!(parse_public_key(&text).ok(), Some(public), "{text}");
        }
        let e = parse_public_key(&STANDARD.encode([1u8; 31])).unwrap_err();
        assert!(e.contains("31 bytes"), "{e}");
        assert!(parse_public_key("not a key!").is_err());
        assert_eq!(key_id(&public).len(), 22);
    }

    #[test]
    fn structured_fields_parse_with_params_and_raw_text() {
        let (input, sig) = parse_signature_headers(
            r#"sig1=("@method" "@target-uri");created=1700000000;keyid="k\"1";nonce="n";alg="ed25519";tag=x, sig2=:AAEC:"#,
            "sig2=:AAEC:, sig1=:AAEC:",
        )
        .unwrap_or_else(|_| panic!("parses"));
        assert_eq!(input.label, "sig1");
        assert_eq!(input.components, ["@method", "@target-uri"]);
        assert_eq!(input.key_id.as_deref(), Some("k\"1"));
        assert_eq!(input.created, Some(1_700_000_000));
        assert_eq!(
            input.raw,
            r#"("@method" "@target-uri");created=1700000000;keyid="k\"1";nonce="n";alg="ed25519";tag=x"#
        );
        assert_eq!(sig, vec![0, 1, 2]);
        // Extra spaces are not part of the canonical form the signature base uses.
        let (spaced, _) = parse_signature_headers(
            "sig1=( \"@method\"  \"@target-uri\" );created=1",
            "sig1=:AAEC:",
        )
        .unwrap_or_else(|_| panic!("parses"));
        assert_eq!(spaced.raw, "(\"@method\" \"@target-uri\");created=1");
        for (input, signature) in [
            ("sig1=(\"@method\"", "sig1=:AAEC:"),
            ("sig1=(\"@method\";x)", "sig1=:AAEC:"),
            ("sig1=(method)", "sig1=:AAEC:"),
            ("sig1=(\"@method\");created=\"1\"", "sig1=:AAEC:"),
            ("sig1=(\"@method\")", "sig2=:AAEC:"),
            ("sig1=(\"@method\")", "sig1=:AA!C:"),
        ] {
            assert!(
                parse_signature_headers(input, signature).is_err(),
                "{input} / {signature}"
            );
        }
    }

    #[test]
    fn a_signature_made_by_the_helper_has_the_rfc_9421_base() {
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let h = sign_request(
            &key,
            "kid",
            "post",
            "https://shop.example/agent/v1/x?a=%20b",
            b"{}",
            "n1",
            1_700_000_000,
        );
        assert_eq!(
            h.signature_input,
            "sig1=(\"@method\" \"@target-uri\" \"content-digest\");created=1700000000;keyid=\"kid\";nonce=\"n1\";alg=\"ed25519\""
        );
        let (input, sig) =
            parse_signature_headers(&h.signature_input, &h.signature).unwrap_or_else(|_| panic!());
        let headers = {
            let mut m = HeaderMap::new();
            m.insert(
                "content-digest",
                h.content_digest
                    .clone()
                    .unwrap_or_default()
                    .parse()
                    .unwrap(),
            );
            m
        };
        let uri: Uri = "/agent/v1/x?a=%20b".parse().unwrap();
        let req = SignedRequest {
            method: &Method::POST,
            uri: &uri,
            headers: &headers,
            body: b"{}",
        };
        let mut base = String::new();
        for c in &input.components {
            let v = component_value(c, Some("https://shop.example/"), &req)
                .unwrap_or_else(|_| panic!("{c}"));
            base.push_str(&format!("\"{c}\": {v}\n"));
        }
        base.push_str(&format!("\"@signature-params\": {}", input.raw));
        let sig = Signature::from_slice(&sig).unwrap();
        assert!(key.verifying_key().verify(base.as_bytes(), &sig).is_ok());
        assert!(check_digest(&headers, b"{}").is_ok());
        assert!(matches!(
            check_digest(&headers, b"{ }"),
            Err(GatewayError::Unauthenticated {
                code: "digest_mismatch",
                ..
            })
        ));
    }
}
