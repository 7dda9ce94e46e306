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

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::{AgentRef, GatewayError, SignedRequest};
use crate::app::AppState;
use crate::commerce::Millis;

/// Oldest acceptable `created`, in seconds before now.
pub const MAX_SIGNATURE_AGE_SECS: i64 = 300;
/// How far ahead of our clock `created` may be, in seconds.
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;
/// The file in the data dir holding the service's Ed25519 key (PKCS#8 PEM, mode 0600).
pub const SERVICE_KEY_FILE: &str = "service_key.pem";

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

// ---- parsing (RFC 8941 structured fields, the subset RFC 9421 uses) ----

/// A parameter value.
#[derive(Debug, Clone, PartialEq)]
enum Bare {
    Int(i64),
    Str(String),
    Token(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

/// One dictionary member of `Signature-Input` or `Signature`.
#[derive(Debug, Clone, PartialEq)]
enum Member {
    /// An inner list of component names with its parameters, and its text as sent.
    List {
        items: Vec<String>,
        params: Vec<(String, Bare)>,
        raw: String,
    },
    Item(Bare),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Parser<'a> {
        Parser {
            s: s.as_bytes(),
            i: 0,
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_sp(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn key(&mut self) -> Result<String, String> {
        let start = self.i;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => self.i += 1,
            _ => return Err(format!("expected a lower-case key at offset {}", self.i)),
        }
        while matches!(self.peek(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c))
        {
            self.i += 1;
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn string(&mut self) -> Result<String, String> {
        // at '"'
        self.i += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err("a string is not closed".into()),
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c as char);
                            self.i += 1;
                        }
                        _ => return Err("bad escape in a string".into()),
                    }
                }
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(c) if (0x20..0x7f).contains(&c) => {
                    out.push(c as char);
                    self.i += 1;
                }
                Some(_) => return Err("a string holds a character outside printable ASCII".into()),
            }
        }
    }
    fn bare(&mut self) -> Result<Bare, String> {
        match self.peek() {
            Some(b'"') => Ok(Bare::Str(self.string()?)),
            Some(b':') => {
                self.i += 1;
                let start = self.i;
                while matches!(self.peek(), Some(c) if c != b':') {
                    self.i += 1;
                }
                if self.peek() != Some(b':') {
                    return Err("a byte sequence is not closed with ':'".into());
                }
                let text = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                let bytes = STANDARD
                    .decode(&text)
                    .or_else(|_| STANDARD_NO_PAD.decode(&text))
                    .map_err(|_| "a byte sequence is not valid base64".to_string())?;
                Ok(Bare::Bytes(bytes))
            }
            Some(b'?') => {
                self.i += 1;
                match self.peek() {
                    Some(b'1') => {
                        self.i += 1;
                        Ok(Bare::Bool(true))
                    }
                    Some(b'0') => {
                        self.i += 1;
                        Ok(Bare::Bool(false))
                    }
                    _ => Err("a boolean must be ?0 or ?1".into()),
                }
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                self.i += 1;
                while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                    self.i += 1;
                }
                let text = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                text.parse::<i64>()
                    .map(Bare::Int)
                    .map_err(|_| format!("{text:?} is not an integer"))
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => {
                let start = self.i;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c))
                {
                    self.i += 1;
                }
                Ok(Bare::Token(
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                ))
            }
            _ => Err(format!("unexpected character at offset {}", self.i)),
        }
    }
    fn params(&mut self) -> Result<Vec<(String, Bare)>, String> {
        let mut out = Vec::new();
        while self.peek() == Some(b';') {
            self.i += 1;
            self.skip_sp();
            let k = self.key()?;
            let v = if self.peek() == Some(b'=') {
                self.i += 1;
                self.bare()?
            } else {
                Bare::Bool(true)
            };
            out.push((k, v));
        }
        Ok(out)
    }
    fn member(&mut self) -> Result<Member, String> {
        if self.peek() == Some(b'(') {
            let start = self.i;
            self.i += 1;
            let mut items = Vec::new();
            loop {
                self.skip_sp();
                match self.peek() {
                    Some(b')') => {
                        self.i += 1;
                        break;
                    }
                    Some(b'"') => {
                        let name = self.string()?;
                        if self.peek() == Some(b';') {
                            return Err(format!(
                                "component {name:?} has parameters, which Concierge does not support"
                            ));
                        }
                        items.push(name);
                    }
                    _ => return Err("an inner list holds something other than strings".into()),
                }
            }
            let params = self.params()?;
            let raw = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
            Ok(Member::List { items, params, raw })
        } else {
            let b = self.bare()?;
            let _ = self.params()?;
            Ok(Member::Item(b))
        }
    }
    fn dictionary(&mut self) -> Result<Vec<(String, Member)>, String> {
        let mut out = Vec::new();
        self.skip_sp();
        while self.i < self.s.len() {
            let k = self.key()?;
            if self.peek() != Some(b'=') {
                return Err(format!("{k:?} has no value"));
            }
            self.i += 1;
            let m = self.member()?;
            out.push((k, m));
            self.skip_sp();
            match self.peek() {
                None => break,
                Some(b',') => {
                    self.i += 1;
                    self.skip_sp();
                }
                Some(_) => return Err(format!("expected ',' at offset {}", self.i)),
            }
        }
        Ok(out)
    }
}

fn parse_dictionary(text: &str) -> Result<Vec<(String, Member)>, String> {
    Parser::new(text.trim()).dictionary()
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
fn component_value(
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
struct SignatureInput {
    label: String,
    components: Vec<String>,
    raw: String,
    created: Option<i64>,
    expires: Option<i64>,
    key_id: Option<String>,
    nonce: Option<String>,
    alg: Option<String>,
}

fn parse_signature_headers(
    input: &str,
    signature: &str,
) -> Result<(SignatureInput, Vec<u8>), GatewayError> {
    let inputs = parse_dictionary(input)
        .map_err(|e| unauth("signature_invalid", format!("Signature-Input: {e}")))?;
    let sigs = parse_dictionary(signature)
        .map_err(|e| unauth("signature_invalid", format!("Signature: {e}")))?;
    // The first labelled input that has a matching signature.
    for (label, member) in inputs {
        let Member::List { items, params, raw } = member else {
            continue;
        };
        let Some(sig) = sigs.iter().find_map(|(l, m)| match m {
            Member::Item(Bare::Bytes(b)) if *l == label => Some(b.clone()),
            _ => None,
        }) else {
            continue;
        };
        let mut parsed = SignatureInput {
            label,
            components: items,
            raw,
            created: None,
            expires: None,
            key_id: None,
            nonce: None,
            alg: None,
        };
        for (k, v) in params {
            match (k.as_str(), v) {
                ("created", Bare::Int(i)) => parsed.created = Some(i),
                ("expires", Bare::Int(i)) => parsed.expires = Some(i),
                ("keyid", Bare::Str(s)) => parsed.key_id = Some(s),
                ("nonce", Bare::Str(s)) => parsed.nonce = Some(s),
                ("alg", Bare::Str(s)) => parsed.alg = Some(s),
                ("tag", _) => {}
                (k @ ("created" | "expires" | "keyid" | "nonce" | "alg"), _) => {
                    return Err(unauth(
                        "signature_invalid",
                        format!("Signature-Input: the {k} parameter has the wrong type"),
                    ));
                }
                _ => {}
            }
        }
        return Ok((parsed, sig));
    }
    Err(unauth(
        "signature_invalid",
        "Signature-Input and Signature share no label with a component list and a signature \
         (expected e.g. sig1=(\"@method\" \"@target-uri\");… and sig1=:…:)",
    ))
}

/// Checks the body against the `Content-Digest` header (sha-256).
fn check_digest(headers: &HeaderMap, body: &[u8]) -> Result<(), GatewayError> {
    let Some(value) = header_value(headers, "content-digest")? else {
        return Err(unauth(
            "digest_required",
            "the request has a body but no Content-Digest header (sha-256=:…:)",
        ));
    };
    let dict = parse_dictionary(&value)
        .map_err(|e| unauth("digest_invalid", format!("Content-Digest: {e}")))?;
    let Some(expected) = dict.iter().find_map(|(k, m)| match m {
        Member::Item(Bare::Bytes(b)) if k == "sha-256" => Some(b.clone()),
        _ => None,
    }) else {
        return Err(unauth(
            "digest_invalid",
            "Content-Digest has no sha-256 value; Concierge checks sha-256 only",
        ));
    };
    let actual = Sha256::digest(body);
    if !crate::util::constant_time_eq(&expected, &actual) {
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
    let public = parse_public_key(&key.public_key)
        .map_err(|e| GatewayError::Internal(format!("stored key {key_id}: {e}")))?;

    let public_url = state.config.server.public_url.as_deref();
    let mut base = String::new();
    for c in &params.components {
        let value = component_value(c, public_url, req)?;
        base.push_str(&format!("\"{c}\": {value}\n"));
    }
    base.push_str(&format!("\"@signature-params\": {}", params.raw));
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
    if !store
        .remember_nonce(&key_id, &nonce, keep_until)
        .await
        .map_err(internal)?
    {
        return Err(unauth(
            "nonce_reused",
            format!("nonce {nonce:?} was already used with key {key_id:?}: this is a replay"),
        ));
    }
    // Forget stale nonces now and then (about one signed request in 64).
    if rand::random::<u8>() < 4 {
        let _ = store.purge_nonces(now).await;
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
        let d = parse_dictionary(
            r#"sig1=("@method" "@target-uri");created=1700000000;keyid="k\"1";nonce="n";alg="ed25519", sig2=:AAEC:"#,
        )
        .unwrap_or_default();
        assert_eq!(d.len(), 2);
        match &d[0].1 {
            Member::List { items, params, raw } => {
                assert_eq!(items, &["@method", "@target-uri"]);
                assert!(params.contains(&("keyid".into(), Bare::Str("k\"1".into()))));
                assert!(params.contains(&("created".into(), Bare::Int(1_700_000_000))));
                assert!(raw.starts_with("(\"@method\"") && raw.ends_with("alg=\"ed25519\""));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d[1].1, Member::Item(Bare::Bytes(vec![0, 1, 2])));
        assert!(parse_dictionary("sig1=(\"@method\"").is_err());
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
