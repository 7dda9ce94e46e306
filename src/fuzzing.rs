//! Entry points for fuzzing: each takes arbitrary bytes and drives one parser of untrusted input
//! the way a request does — the same functions, in the same order — up to the point where a
//! database or a runtime would be needed. They return nothing: a panic, a hang or unbounded
//! memory is the finding. The cargo-fuzz crate in `fuzz/` and the test suite's mutation run
//! (`tests/it/fuzz.rs`) share them, with the seed inputs [`seeds`] makes.
//!
//! Not part of Concierge's interface; hidden from its docs.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::channels::email::{parse as email_parse, quote, thread};
use crate::channels::marketplace::inbound::{Payload, read_payload};
use crate::channels::shopify::{Parsed, verify_hmac};
use crate::channels::webchat::{ClientFrame, check_message, sign_token, verify_token};
use crate::config::marketplace::parse_file;
use crate::gateway::a2a::{self, Op, Work};
use crate::gateway::identity;
use crate::gateway::tokens;
use crate::import::tau;

/// A fuzz target's entry point: it takes the fuzzer's bytes.
pub type Target = fn(&[u8]);

/// Every target: its name (the `fuzz/` binary, the seed folder) and its entry point.
pub const TARGETS: &[(&str, Target)] = &[
    ("email", email),
    ("shopify_webhook", shopify_webhook),
    ("marketplace_webhook", marketplace_webhook),
    ("telegram_update", telegram_update),
    ("a2a_request", a2a_request),
    ("mcp_request", mcp_request),
    ("http_signature", http_signature),
    ("capability_token", capability_token),
    ("webchat_frame", webchat_frame),
    ("importers", importers),
];

/// The support address inbound mail is addressed to.
const SUPPORT: &str = "help@shop.example";
/// The shared secret of the Shopify and marketplace targets.
const SECRET: &str = "fuzz-secret";
/// The web chat's token key.
const CHAT_KEY: &[u8] = b"fuzz-chat-key";
/// The public URL signed requests are sent to.
const PUBLIC_URL: &str = "https://shop.example";

/// The service key the capability-token and signature targets verify against.
fn service_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
}

/// Inbound mail: MIME parsing (headers, charsets, parts, attachments), quoted-reply and
/// signature stripping, HTML to text, and the threading clues (reply token, subject, order).
pub fn email(data: &[u8]) {
    if let Ok(parsed) = email_parse::parse(data) {
        let _ = thread::find_token(&parsed, SUPPORT);
        let _ = thread::normalize_subject(&parsed.subject);
        let _ = thread::is_forward_subject(&parsed.subject);
        let _ = thread::amazon_order_id(&parsed.subject, &parsed.text);
        if let Some(from) = &parsed.from {
            let _ = thread::is_amazon_relay(&from.email);
        }
    }
    // The stripping on its own, so the fuzzer reaches it without building MIME first.
    let text = String::from_utf8_lossy(data);
    let _ = quote::strip_reply(&text);
    let _ = quote::strip_html_reply(&text);
}

/// Shopify webhooks: the HMAC check over the raw body, then the body parsed for each topic.
pub fn shopify_webhook(data: &[u8]) {
    let mut headers = axum::http::HeaderMap::new();
    let signature = crate::channels::shopify::sign(SECRET.as_bytes(), data);
    if let Ok(v) = axum::http::HeaderValue::from_str(&signature) {
        headers.insert("x-shopify-hmac-sha256", v);
    }
    let verified = verify_hmac(SECRET.as_bytes(), &headers, data).is_ok();
    assert_eq!(
        verified,
        !data.is_empty(),
        "a correctly signed body verifies"
    );
    headers.insert(
        "x-shopify-hmac-sha256",
        axum::http::HeaderValue::from_static("bm90IHRoZSBzaWduYXR1cmU="),
    );
    assert!(verify_hmac(SECRET.as_bytes(), &headers, data).is_err());
    for topic in [
        "orders/create",
        "orders/updated",
        "fulfillments/create",
        "refunds/create",
        "customers/update",
        "products/update",
        "app/uninstalled",
    ] {
        let _ = Parsed::from_body(topic, data);
    }
}

/// The repository's marketplace presets, with [`SECRET`] as every secret.
fn marketplaces() -> Vec<crate::channels::marketplace::Marketplace> {
    let env = |_: &str| Some(SECRET.to_string());
    [
        ("generic.toml", include_str!("../channels/generic.toml")),
        ("ebay.toml", include_str!("../channels/ebay.toml")),
    ]
    .into_iter()
    .filter_map(|(file, text)| parse_file(std::path::Path::new(file), text, &env).ok()?)
    .collect()
}

/// Marketplace webhooks: the signature check (HMAC; eBay's ECDSA header), the JSON body, the
/// buyer message at the configured pointers and the inbox's checks on it.
pub fn marketplace_webhook(data: &[u8]) {
    use crate::channels::marketplace::verify;
    static PRESETS: std::sync::OnceLock<Vec<crate::channels::marketplace::Marketplace>> =
        std::sync::OnceLock::new();
    let presets = PRESETS.get_or_init(marketplaces);
    // The first line is the signature header as sent (eBay's is base64 JSON); the rest the body.
    let (header, body) = split_line(data);
    for m in presets {
        let _ = verify::check(m, Some(header), body);
        let _ = verify::check(m, None, body);
    }
    let Some(generic) = presets.iter().find(|m| m.name() == "generic") else {
        return;
    };
    let signed = {
        use hmac::Mac;
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()) else {
            return;
        };
        mac.update(data);
        STANDARD.encode(mac.finalize().into_bytes())
    };
    assert!(
        verify::check(generic, Some(signed.as_bytes()), data).is_ok(),
        "a correctly signed body verifies"
    );
    let Ok(payload) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for m in presets {
        if let Ok(Payload::Message(msg)) = read_payload(m, &payload) {
            let _ = crate::inbox::validate(&msg);
        }
    }
}

/// Telegram updates: the raw JSON, teloxide's `Update` and the lenient reading of a message
/// teloxide refuses.
pub fn telegram_update(data: &[u8]) {
    use crate::channels::telegram::inbound;
    if let Ok(raw) = serde_json::from_slice::<Value>(data) {
        let _ = inbound::parse_raw(&raw);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = inbound::greeting_command(text);
    }
}

/// A2A JSON-RPC: the envelope, then each method's params as its handler reads them (a message
/// with its parts and any structured tool call; task ids; list filters and page tokens).
pub fn a2a_request(data: &[u8]) {
    use crate::gateway::a2a_tasks::TaskState;
    let Ok(env) = a2a::read_envelope(data) else {
        return;
    };
    let params = &env.params;
    match env.op {
        Op::Send | Op::Stream => {
            if let Ok(send) = a2a::parse_send(params)
                && let Ok(Work::Call(call)) = a2a::work_of(&send.message)
            {
                let _ = crate::gateway::calls::needs_idempotency(call.name());
            }
        }
        Op::Get | Op::Cancel | Op::Subscribe => {
            let _ = a2a::task_id_param(params);
            let _ = a2a::uint_param(params, "historyLength");
        }
        Op::List => {
            let _ = a2a::str_param(params, "contextId");
            if let Ok(Some(s)) = a2a::str_param(params, "status") {
                let _ = TaskState::parse(s);
            }
            let _ = a2a::uint_param(params, "pageSize");
            if let Ok(Some(t)) = a2a::str_param(params, "pageToken") {
                let _ = a2a::parse_page_token(t);
            }
        }
        Op::PushConfig | Op::ExtendedCard => {}
    }
}

/// MCP: the JSON-RPC message as rmcp reads it, and a tool call's arguments as `call_tool` reads
/// them.
pub fn mcp_request(data: &[u8]) {
    use rmcp::model::{ClientJsonRpcMessage, ClientRequest, JsonRpcMessage};
    let Ok(JsonRpcMessage::Request(req)) = serde_json::from_slice::<ClientJsonRpcMessage>(data)
    else {
        return;
    };
    if let ClientRequest::CallToolRequest(call) = req.request {
        let name = call.params.name.to_string();
        if crate::gateway::calls::specs()
            .iter()
            .any(|s| s.name == name)
        {
            let args = Value::Object(call.params.arguments.unwrap_or_default());
            let _ = crate::gateway::calls::parse(&name, &args);
        }
    }
}

/// RFC 9421 signatures: `Signature-Input`, `Signature` and `Content-Digest` (RFC 8941 structured
/// fields), the digest check, the signature base over the covered components, and the Ed25519
/// check. Input: the three header values on the first three lines, then the body.
pub fn http_signature(data: &[u8]) {
    use axum::http::{HeaderMap, HeaderValue, Method, Uri};
    let (input, rest) = split_line(data);
    let (signature, rest) = split_line(rest);
    let (digest, body) = split_line(rest);
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("signature-input", input),
        ("signature", signature),
        ("content-digest", digest),
    ] {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(name, v);
        }
    }
    headers.insert("host", HeaderValue::from_static("shop.example"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let uri = Uri::from_static("/a2a?q=%20x");
    let req = crate::gateway::SignedRequest {
        method: &Method::POST,
        uri: &uri,
        headers: &headers,
        body,
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if headers.contains_key("content-digest") {
        let _ = identity::check_digest(&headers, body);
    }
    let (Some(input), Some(signature)) = (text("signature-input"), text("signature")) else {
        return;
    };
    let Ok((params, sig)) = identity::parse_signature_headers(input, signature) else {
        return;
    };
    for public_url in [Some(PUBLIC_URL), None] {
        let mut base = String::new();
        for c in &params.components {
            match identity::component_value(c, public_url, &req) {
                Ok(value) => base.push_str(&format!("\"{c}\": {value}\n")),
                Err(_) => return,
            }
        }
        base.push_str(&format!("\"@signature-params\": {}", params.raw));
        if let Ok(sig) = ed25519_dalek::Signature::from_slice(&sig) {
            use ed25519_dalek::Verifier;
            let _ = service_key().verifying_key().verify(base.as_bytes(), &sig);
        }
    }
}

/// Capability tokens (Biscuit): the bearer text, and the raw token bytes behind it, verified
/// against the service key and read; then attenuated as a holder would.
pub fn capability_token(data: &[u8]) {
    let key = service_key();
    let texts = [
        std::str::from_utf8(data).ok().map(str::to_string),
        // The raw token bytes, as a bearer token carries them (base64url, padded).
        Some(URL_SAFE.encode(data)),
    ];
    for text in texts.into_iter().flatten() {
        let Ok(read) = tokens::read_token(&key, &text) else {
            continue;
        };
        let facts = tokens::CallFacts {
            operation: "get_order",
            customer_id: &read.customer_id,
            spend: 0,
            categories: &[],
            now: 1_700_000_000_000,
        };
        let _ = tokens::authorize(&read.biscuit, &facts);
        if let Ok(root) = tokens::root_public_key(&key) {
            let ops = ["get_order".to_string()];
            let _ = tokens::attenuate(&text, &root, Some(&ops), Some(100), None);
        }
    }
}

/// Web chat frames: the JSON frame, a `hello` token's signature, a message's checks.
pub fn webchat_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(ClientFrame::Hello { token: Some(token) }) => {
            if let Some(visitor) = verify_token(CHAT_KEY, &token) {
                assert_eq!(
                    verify_token(CHAT_KEY, &sign_token(CHAT_KEY, &visitor)).as_deref(),
                    Some(visitor.as_str()),
                    "a token the chat signs verifies"
                );
            }
        }
        Ok(ClientFrame::Message { text, client_id }) => {
            let _ = check_message(&text, &client_id);
        }
        Ok(ClientFrame::Hello { token: None } | ClientFrame::Typing) | Err(_) => {}
    }
}

/// The importers: Shopify exports and envelopes (orders, products, customers, a fulfilment, a
/// refund) and a τ-bench `db.json`.
pub fn importers(data: &[u8]) {
    use crate::import::shopify;
    let _ = shopify::parse_orders("orders.json", data);
    let _ = shopify::parse_products("products.json", data);
    let _ = shopify::parse_customers("customers.json", data);
    let _ = shopify::parse_fulfillment("fulfillment.json", data);
    let _ = shopify::parse_refund("refund.json", data);
    let _ = tau::parse_db("db.json", data);
}

/// The first line (without its `\n`) and the rest.
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Seed inputs made by Concierge's own code (signed requests, minted tokens, chat frames,
/// exported stores) for a target; the shared test data adds real-world ones (see
/// `fuzz/README.md`).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "http_signature" => signature_seeds(),
        "capability_token" => token_seeds(),
        "webchat_frame" => {
            let token = sign_token(CHAT_KEY, "0190f0aa11bb22cc33dd44ee55ff6677");
            [
                json!({"type": "hello"}),
                json!({"type": "hello", "token": token}),
                json!({"type": "message", "text": "where is my order #W1234567?", "client_id": "c1"}),
                json!({"type": "typing"}),
            ]
            .iter()
            .map(|v| v.to_string().into_bytes())
            .collect()
        }
        "a2a_request" => a2a_seeds(),
        "mcp_request" => [
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "1"}}}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "get_order", "arguments": {"order_id": "#W1234567"}}}),
            json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "search_policy", "arguments": {"query": "returns", "limit": 3}}}),
            json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "return_items", "arguments": {"order_id": "#W1", "item_ids": ["1", "2"], "payment_method_id": "credit_card_1"}}}),
        ]
        .iter()
        .map(|v| v.to_string().into_bytes())
        .collect(),
        "marketplace_webhook" => vec![
            json!({"buyer": {"id": "b1", "name": "Ann"}, "thread": {"id": "t1"}, "message": {"id": "m1", "text": "Where is my parcel?"}, "order": {"id": "o1"}, "topic": "message"}).to_string().into_bytes(),
        ],
        "importers" => {
            let demo = crate::demo::generate(
                7,
                1_700_000_000_000,
                crate::demo::DemoSize {
                    customers: 2,
                    orders: 3,
                },
            );
            let products = &demo.products[..demo.products.len().min(3)];
            let db = tau::export_db(&demo.customers, products, &demo.orders);
            vec![db.to_string().into_bytes()]
        }
        _ => Vec::new(),
    }
}

fn signature_seeds() -> Vec<Vec<u8>> {
    let key = service_key();
    let kid = identity::key_id(&key.verifying_key());
    let mut out = Vec::new();
    for (method, body) in [("POST", &b"{\"jsonrpc\":\"2.0\"}"[..]), ("GET", &b""[..])] {
        let h = identity::sign_request(
            &key,
            &kid,
            method,
            &format!("{PUBLIC_URL}/a2a?q=%20x"),
            body,
            "nonce-1",
            1_700_000_000,
        );
        let mut seed = Vec::new();
        for line in [
            h.signature_input.as_str(),
            h.signature.as_str(),
            h.content_digest.as_deref().unwrap_or(""),
        ] {
            seed.extend_from_slice(line.as_bytes());
            seed.push(b'\n');
        }
        seed.extend_from_slice(body);
        out.push(seed);
    }
    out.push(
        b"sig1=(\"@method\" \"@authority\" \"@scheme\" \"@path\" \"@query\" \"@request-target\" \"content-type\");created=1;expires=2;keyid=\"k\";nonce=\"n\";alg=\"ed25519\";tag=\"t\"\nsig1=:AAAA:\nsha-256=:AAAA:\nx"
            .to_vec(),
    );
    out
}

fn token_seeds() -> Vec<Vec<u8>> {
    let key = service_key();
    let spec = |ops: &[&str], limit, categories: &[&str]| tokens::TokenSpec {
        agent_id: "agent_1".into(),
        customer_id: "customer_1".into(),
        ops: ops.iter().map(|s| s.to_string()).collect(),
        spend_limit: limit,
        categories: categories.iter().map(|s| s.to_string()).collect(),
        expires_at: 1_900_000_000_000,
        escalate_over_limit: false,
    };
    let mut out = Vec::new();
    for s in [
        spec(&["get_order", "list_customer_orders"], None, &[]),
        spec(&["return_items", "exchange_items"], Some(5_000), &["shoes"]),
    ] {
        let Ok(minted) = tokens::mint(&key, &s, 1_700_000_000_000) else {
            continue;
        };
        if let Ok(bytes) = minted.token.to_vec() {
            out.push(bytes);
        }
        if let Ok(text) = minted.token.to_base64()
            && let Ok(root) = tokens::root_public_key(&key)
        {
            let ops = ["get_order".to_string()];
            if let Ok(narrow) = tokens::attenuate(&text, &root, Some(&ops), Some(10), None)
                && let Ok(bytes) =
                    biscuit_auth::Biscuit::from_base64(narrow.trim(), root).and_then(|b| b.to_vec())
            {
                out.push(bytes);
            }
        }
    }
    out
}

fn a2a_seeds() -> Vec<Vec<u8>> {
    let message = |parts: Value| json!({"messageId": "m-1", "role": "ROLE_USER", "contextId": "ctx-1", "parts": parts});
    [
        json!({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message(json!([{"text": "where is my order?"}])), "configuration": {"historyLength": 2}}}),
        json!({"jsonrpc": "2.0", "id": "2", "method": "message/send", "params": {"message": {"kind": "message", "messageId": "m-2", "role": "user", "parts": [{"kind": "data", "data": {"action": "get_order", "order_id": "#W1234567"}}]}}}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "SendMessage", "params": {"message": message(json!([{"url": "https://x.example/a.png", "mediaType": "image/png"}, {"raw": "AAEC", "filename": "a.bin"}]))}}),
        json!({"jsonrpc": "2.0", "id": 4, "method": "GetTask", "params": {"id": "task-1", "historyLength": 1}}),
        json!({"jsonrpc": "2.0", "id": 5, "method": "ListTasks", "params": {"contextId": "ctx-1", "status": "TASK_STATE_WORKING", "pageSize": 10, "pageToken": URL_SAFE_NO_PAD.encode("1700000000000:task-1")}}),
        json!({"jsonrpc": "2.0", "id": 6, "method": "tasks/cancel", "params": {"id": "task-1"}}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}
