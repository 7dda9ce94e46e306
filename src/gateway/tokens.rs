//! Biscuit capability tokens: issue, attenuate, verify, revoke; spending tracked per root token.
//!
//! A token lets one agent act for one customer. Its authority block, signed with the service
//! key (`<data_dir>/service_key.pem`), holds:
//!
//! ```text
//! customer("<customer id>"); agent("<agent id>");
//! operation_allowed("get_order"); …            // one per tool the token allows
//! spend_limit(25000);                          // minor units (informational; the check enforces)
//! category_allowed("Footwear"); …              // when scoped to product categories
//! expires(2026-11-24T00:00:00Z);
//! check if operation($op), operation_allowed($op);
//! check if time($t), $t <= 2026-11-24T00:00:00Z;
//! check if spend($s), $s <= 25000;             // when there is a limit
//! reject if category($c), !{"Footwear"}.contains($c);  // when scoped
//! ```
//!
//! Every call is authorized against the facts of that call: `operation(<tool>)`,
//! `customer(<id>)`, `time(<now>)`, `spend(<everything committed under the root token,
//! including this call>)` and one `category(<product type>)` per product the write touches.
//! The holder may append blocks with more checks ([`attenuate`]: fewer operations, a lower
//! limit, an earlier expiry) and hand the narrower token to a sub-agent; checks only add up, so
//! an attenuated token can never do more than its parent. A limit in an attenuated block caps
//! the total spent under the whole delegation (the root token), not what the sub-agent alone
//! spends.
//!
//! Tokens are revoked by revocation id: the root token's id (its `id` here) revokes it and every
//! token attenuated from it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::{Algorithm, Term};
use biscuit_auth::{
    AuthorizerBuilder, AuthorizerLimits, Biscuit, BiscuitBuilder, BlockBuilder, KeyPair,
    PrivateKey, PublicKey,
};
use ed25519_dalek::SigningKey;

use super::{GatewayError, Grant};
use crate::commerce::{Millis, Minor};
use crate::store::{Store, TokenRecord};

/// The operations a token may allow: the tools about a customer (everything except looking
/// customers up), `negotiate` (the negotiation WebSocket, `gateway::negotiation`) and `settle`
/// (paying for a negotiated deal, `gateway::settlement`; a deal's own token may settle it too).
pub const OPERATIONS: &[&str] = &[
    "get_order",
    "list_customer_orders",
    "delivery_estimate",
    "return_eligibility",
    "cancel_order",
    "modify_order_address",
    "modify_order_items",
    "modify_order_payment",
    "return_items",
    "exchange_items",
    "update_customer_address",
    "escalate",
    "negotiate",
    "settle",
];

/// The operations a token gets when nobody says otherwise: reading orders and the writes a
/// shopper's assistant typically needs.
pub const DEFAULT_OPERATIONS: &[&str] = &[
    "get_order",
    "list_customer_orders",
    "delivery_estimate",
    "return_eligibility",
    "cancel_order",
    "modify_order_address",
    "return_items",
    "exchange_items",
    "escalate",
];

/// What a token grants, for [`issue`].
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub agent_id: String,
    pub customer_id: String,
    pub ops: Vec<String>,
    /// Total value of refunds and exchanges, minor units; None = no limit.
    pub spend_limit: Option<Minor>,
    /// Product categories writes may touch; empty = any.
    pub categories: Vec<String>,
    pub expires_at: Millis,
    /// Over the limit, ask a staff member to approve instead of refusing.
    pub escalate_over_limit: bool,
}

/// Checks operation names: known, not empty, no duplicates (order kept).
pub fn check_ops(ops: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for op in ops {
        let op = op.trim();
        if op.is_empty() {
            continue;
        }
        if !OPERATIONS.contains(&op) {
            return Err(format!(
                "unknown operation {op:?}; a token may allow: {}",
                OPERATIONS.join(", ")
            ));
        }
        if !out.iter().any(|o| o == op) {
            out.push(op.to_string());
        }
    }
    if out.is_empty() {
        return Err("a token must allow at least one operation".into());
    }
    Ok(out)
}

/// Reads a duration like "90s", "15m", "1h", "7d" (or a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30m, 1h, 7d)"))?;
    let secs = match unit {
        "s" => n,
        "m" | "min" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("the duration must be more than zero".into());
    }
    Ok(Duration::from_secs(secs))
}

fn root_keypair(key: &SigningKey) -> Result<KeyPair, GatewayError> {
    let private = PrivateKey::from_bytes(key.as_bytes(), Algorithm::Ed25519)
        .map_err(|e| GatewayError::Internal(format!("service key: {e}")))?;
    Ok(KeyPair::from(&private))
}

/// The service key's public half as Biscuit's root key.
pub fn root_public_key(key: &SigningKey) -> Result<PublicKey, GatewayError> {
    PublicKey::from_bytes(key.verifying_key().as_bytes(), Algorithm::Ed25519)
        .map_err(|e| GatewayError::Internal(format!("service key: {e}")))
}

fn date(ms: Millis) -> Term {
    Term::from(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0)))
}

fn string_set(items: &[String]) -> Term {
    Term::Set(
        items
            .iter()
            .map(|s| Term::from(s.as_str()))
            .collect::<BTreeSet<_>>(),
    )
}

fn token_err(e: biscuit_auth::error::Token) -> GatewayError {
    GatewayError::Internal(format!("capability token: {e}"))
}

fn hex_id(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// A signed token for a spec, not yet recorded.
pub(crate) struct Minted {
    pub(crate) token: Biscuit,
    /// The operations it allows, checked.
    pub(crate) ops: Vec<String>,
    /// Its categories, trimmed and lower-cased.
    pub(crate) categories: Vec<String>,
}

/// Builds and signs the token for `spec` with the service key; the error says which part of
/// the spec is refused.
pub(crate) fn mint(
    key: &SigningKey,
    spec: &TokenSpec,
    now: Millis,
) -> Result<Minted, GatewayError> {
    let ops = check_ops(&spec.ops).map_err(|m| GatewayError::Forbidden {
        code: "invalid_operations",
        message: m,
    })?;
    if spec.expires_at <= now {
        return Err(GatewayError::Forbidden {
            code: "invalid_expiry",
            message: "the token's expiry must be in the future".into(),
        });
    }
    if let Some(l) = spec.spend_limit
        && l < 0
    {
        return Err(GatewayError::Forbidden {
            code: "invalid_limit",
            message: "the spending limit must not be negative".into(),
        });
    }
    let mut params = std::collections::HashMap::new();
    params.insert(
        "customer".to_string(),
        Term::from(spec.customer_id.as_str()),
    );
    params.insert("agent".to_string(), Term::from(spec.agent_id.as_str()));
    params.insert("expires".to_string(), date(spec.expires_at));
    let mut code = String::from(
        "customer({customer});\nagent({agent});\nexpires({expires});\n\
         check if operation($op), operation_allowed($op);\n\
         check if time($t), $t <= {expires};\n",
    );
    for (i, op) in ops.iter().enumerate() {
        params.insert(format!("op{i}"), Term::from(op.as_str()));
        code.push_str(&format!("operation_allowed({{op{i}}});\n"));
    }
    if let Some(limit) = spec.spend_limit {
        params.insert("limit".to_string(), Term::from(limit));
        code.push_str("spend_limit({limit});\ncheck if spend($s), $s <= {limit};\n");
    }
    let categories: Vec<String> = spec
        .categories
        .iter()
        .map(|c| c.trim().to_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    if !categories.is_empty() {
        for (i, c) in categories.iter().enumerate() {
            params.insert(format!("cat{i}"), Term::from(c.as_str()));
            code.push_str(&format!("category_allowed({{cat{i}}});\n"));
        }
        params.insert("categories".to_string(), string_set(&categories));
        code.push_str("reject if category($c), !{categories}.contains($c);\n");
    }
    let builder = BiscuitBuilder::new()
        .code_with_params(&code, params, Default::default())
        .map_err(token_err)?;
    let token = builder.build(&root_keypair(key)?).map_err(token_err)?;
    Ok(Minted {
        token,
        ops,
        categories,
    })
}

/// Issues a token for `spec`, signed with the service key, and records it. Returns the token
/// (base64url) and its record.
pub async fn issue(
    store: &Store,
    key: &SigningKey,
    spec: &TokenSpec,
    via: &str,
    now: Millis,
) -> Result<(String, TokenRecord), GatewayError> {
    let Minted {
        token,
        ops,
        categories,
    } = mint(key, spec, now)?;
    let id = hex_id(
        token
            .revocation_identifiers()
            .first()
            .ok_or_else(|| GatewayError::Internal("a token without a revocation id".into()))?,
    );
    let record = TokenRecord {
        id,
        agent_id: spec.agent_id.clone(),
        customer_id: spec.customer_id.clone(),
        ops,
        spend_limit: spec.spend_limit,
        categories,
        expires_at: spec.expires_at,
        issued_at: now,
        issued_via: via.to_string(),
        over_limit: if spec.escalate_over_limit {
            "escalate".into()
        } else {
            "refuse".into()
        },
        spent: 0,
        revoked_at: None,
    };
    let internal = |e: crate::store::StoreError| GatewayError::Internal(e.to_string());
    store.insert_token(&record).await.map_err(internal)?;
    // Delegations are part of the audit trail: who may act for whom, within what.
    let (actor_kind, actor_id) = if via == "cli" {
        ("staff", "cli")
    } else {
        ("consumer_agent", record.agent_id.as_str())
    };
    let request = Store::action_request(
        "issue_token",
        serde_json::json!({
            "token_id": record.id,
            "agent_id": record.agent_id,
            "ops": record.ops,
            "spend_limit": record.spend_limit,
            "categories": record.categories,
            "expires_at": record.expires_at,
            "over_limit": record.over_limit,
            "verified_by": via,
        }),
        now,
    )
    .by(actor_kind, Some(actor_id))
    .for_customer(Some(&record.customer_id));
    store
        .record_action(&request, None, "recorded")
        .await
        .map_err(internal)?;
    let text = token.to_base64().map_err(token_err)?;
    Ok((text, record))
}

/// Narrows a token, as its holder may without asking Concierge: appends a block allowing only
/// `ops` (when given), capping the delegation's total spend at `limit` (when given) and
/// expiring at `expires_at` (when given). `root` is the service's public key (published in the
/// agent card and at `/agent/v1/audit/head`).
pub fn attenuate(
    token: &str,
    root: &PublicKey,
    ops: Option<&[String]>,
    limit: Option<Minor>,
    expires_at: Option<Millis>,
) -> Result<String, String> {
    let parent = Biscuit::from_base64(token.trim(), root)
        .map_err(|e| format!("the token does not verify with this service's key: {e}"))?;
    let mut params = std::collections::HashMap::new();
    let mut code = String::new();
    if let Some(ops) = ops {
        let ops = check_ops(ops)?;
        params.insert("ops".to_string(), string_set(&ops));
        code.push_str("check if operation($op), {ops}.contains($op);\n");
    }
    if let Some(limit) = limit {
        if limit < 0 {
            return Err("the spending limit must not be negative".into());
        }
        params.insert("limit".to_string(), Term::from(limit));
        code.push_str("spend_limit({limit});\ncheck if spend($s), $s <= {limit};\n");
    }
    if let Some(at) = expires_at {
        params.insert("expires".to_string(), date(at));
        code.push_str("expires({expires});\ncheck if time($t), $t <= {expires};\n");
    }
    if code.is_empty() {
        return Err("say what to narrow: operations, a limit or an expiry".into());
    }
    let block = BlockBuilder::new()
        .code_with_params(&code, params, Default::default())
        .map_err(|e| e.to_string())?;
    parent
        .append(block)
        .and_then(|t| t.to_base64())
        .map_err(|e| e.to_string())
}

/// The facts of one call, for [`authorize`].
#[derive(Debug, Clone)]
pub struct CallFacts<'a> {
    pub operation: &'a str,
    pub customer_id: &'a str,
    /// Everything committed under the root token, this call included.
    pub spend: Minor,
    /// Product categories the call touches.
    pub categories: &'a [String],
    pub now: Millis,
}

fn limits() -> AuthorizerLimits {
    // The default 1 ms is too tight for a busy machine; these tokens are small.
    AuthorizerLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_time: Duration::from_millis(100),
    }
}

/// Runs every check of `token` (authority and attenuations) against the call. The error is the
/// failed checks, as Datalog.
pub fn authorize(token: &Biscuit, facts: &CallFacts<'_>) -> Result<(), String> {
    use biscuit_auth::builder::{fact, int, string};
    // The authorizer's own check and policy are parsed once; the call's facts are built
    // directly, with no Datalog text to parse per call.
    static BASE: std::sync::LazyLock<Result<AuthorizerBuilder, String>> =
        std::sync::LazyLock::new(|| {
            AuthorizerBuilder::new()
                .code("check if customer_call($c), customer($c);\nallow if true;")
                .map(|b| b.set_limits(limits()))
                .map_err(|e| e.to_string())
        });
    let mut builder = BASE.clone()?;
    let mut add = |f| -> Result<(), String> {
        builder = std::mem::take(&mut builder)
            .fact(f)
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    add(fact("operation", &[string(facts.operation)]))?;
    add(fact("customer_call", &[string(facts.customer_id)]))?;
    add(fact("spend", &[int(facts.spend)]))?;
    add(fact("time", &[date(facts.now)]))?;
    for c in facts.categories {
        add(fact("category", &[string(c)]))?;
    }
    let mut authorizer = builder.build(token).map_err(|e| e.to_string())?;
    authorizer.authorize().map(|_| ()).map_err(|e| match e {
        biscuit_auth::error::Token::FailedLogic(logic) => logic.to_string(),
        other => other.to_string(),
    })
}

fn unauth(code: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::Unauthenticated {
        code,
        message: message.into(),
    }
}

/// Verifies a bearer token: signed by the service key, not revoked, not expired, issued here.
/// The grant lists what the token (with its attenuations) still allows.
///
/// A token's content never changes, so what its signatures and Datalog say is computed once and
/// kept in memory ([`VerifiedTokens`]); revocation and expiry are checked on every call.
pub async fn verify(
    store: &Store,
    key: &SigningKey,
    token: &str,
    now: Millis,
) -> Result<Grant, GatewayError> {
    let cache_key = VerifiedTokens::key(key, token);
    if let Some((grant, ids)) = VERIFIED.get(&cache_key) {
        if store
            .any_token_revoked(&ids)
            .await
            .map_err(|e| GatewayError::Internal(e.to_string()))?
        {
            return Err(unauth("token_revoked", "this capability token was revoked"));
        }
        if grant.expires_at <= now {
            return Err(expired(grant.expires_at));
        }
        return Ok(grant);
    }
    let (grant, ids) = verify_uncached(store, key, token, now).await?;
    VERIFIED.put(cache_key, &grant, ids);
    Ok(grant)
}

fn expired(at: Millis) -> GatewayError {
    unauth(
        "token_expired",
        format!(
            "this capability token expired at {}; ask the customer to delegate again",
            crate::util::rfc3339(at)
        ),
    )
}

/// Tokens whose signatures and facts were verified, by hash of (service key, token). Bounded:
/// emptied when full, so it costs at most a re-verification.
struct VerifiedTokens(std::sync::Mutex<std::collections::HashMap<[u8; 32], Verified>>);

/// A verified token's grant and the revocation ids of its blocks.
type Verified = (Grant, Vec<String>);

const VERIFIED_MAX: usize = 10_000;

static VERIFIED: std::sync::LazyLock<VerifiedTokens> =
    std::sync::LazyLock::new(|| VerifiedTokens(Default::default()));

impl VerifiedTokens {
    fn key(service: &SigningKey, token: &str) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(service.verifying_key().as_bytes());
        h.update(token.trim().as_bytes());
        h.finalize().into()
    }

    fn get(&self, key: &[u8; 32]) -> Option<(Grant, Vec<String>)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).cloned()
    }

    fn put(&self, key: [u8; 32], grant: &Grant, ids: Vec<String>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= VERIFIED_MAX {
            map.clear();
        }
        map.insert(key, (grant.clone(), ids));
    }
}

/// What a token's signatures and Datalog say, before any record is consulted.
pub(crate) struct ReadToken {
    pub(crate) biscuit: Biscuit,
    /// The authority block's revocation id (hex).
    pub(crate) token_id: String,
    /// Every block's revocation id (hex), the authority block's first.
    pub(crate) ids: Vec<String>,
    pub(crate) customer_id: String,
    pub(crate) agent_id: String,
    pub(crate) ops: Vec<String>,
    pub(crate) categories: Vec<String>,
    /// The narrowest spending limit of every block.
    pub(crate) spend_limit: Option<Minor>,
    /// The earliest expiry of every block.
    pub(crate) expires_at: Option<Millis>,
}

/// Reads a bearer token: signed by the service key (the root of every block's signature
/// chain), with an authority block naming a customer and an agent. Needs no store.
pub(crate) fn read_token(key: &SigningKey, token: &str) -> Result<ReadToken, GatewayError> {
    let root = root_public_key(key)?;
    let biscuit = Biscuit::from_base64(token.trim(), root).map_err(|e| {
        unauth(
            "token_invalid",
            format!("the bearer token is not a capability token issued here: {e}"),
        )
    })?;
    let ids: Vec<String> = biscuit
        .revocation_identifiers()
        .iter()
        .map(|b| hex_id(b))
        .collect();
    let token_id = ids
        .first()
        .cloned()
        .ok_or_else(|| unauth("token_invalid", "the token has no authority block"))?;
    let invalid = |e: biscuit_auth::error::Token| unauth("token_invalid", e.to_string());
    // What the authority block says, and the narrowest limit and expiry of every block.
    let mut authorizer = AuthorizerBuilder::new()
        .set_limits(limits())
        .build(&biscuit)
        .map_err(invalid)?;
    let customer: Vec<(String,)> = authorizer
        .query("data($c) <- customer($c)")
        .map_err(invalid)?;
    let agent: Vec<(String,)> = authorizer.query("data($a) <- agent($a)").map_err(invalid)?;
    let ops: Vec<(String,)> = authorizer
        .query("data($o) <- operation_allowed($o)")
        .map_err(invalid)?;
    let categories: Vec<(String,)> = authorizer
        .query("data($c) <- category_allowed($c)")
        .map_err(invalid)?;
    let limits_all: Vec<(i64,)> = authorizer
        .query_all("data($l) <- spend_limit($l)")
        .map_err(invalid)?;
    let expiries: Vec<(SystemTime,)> = authorizer
        .query_all("data($t) <- expires($t)")
        .map_err(invalid)?;
    let (Some((customer_id,)), Some((agent_id,))) =
        (customer.into_iter().next(), agent.into_iter().next())
    else {
        return Err(unauth(
            "token_invalid",
            "the token names no customer or no agent",
        ));
    };
    let expires_at = expiries
        .iter()
        .map(|(t,)| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0)
        })
        .min();
    Ok(ReadToken {
        biscuit,
        token_id,
        ids,
        customer_id,
        agent_id,
        ops: ops.into_iter().map(|(o,)| o).collect(),
        categories: categories.into_iter().map(|(c,)| c).collect(),
        spend_limit: limits_all.iter().map(|(l,)| *l).min(),
        expires_at,
    })
}

async fn verify_uncached(
    store: &Store,
    key: &SigningKey,
    token: &str,
    now: Millis,
) -> Result<(Grant, Vec<String>), GatewayError> {
    let ReadToken {
        biscuit,
        token_id,
        ids,
        customer_id,
        agent_id,
        ops,
        categories,
        spend_limit,
        expires_at,
    } = read_token(key, token)?;
    let internal = |e: crate::store::StoreError| GatewayError::Internal(e.to_string());
    if store.any_token_revoked(&ids).await.map_err(internal)? {
        return Err(unauth("token_revoked", "this capability token was revoked"));
    }
    let Some(record) = store.token(&token_id).await.map_err(internal)? else {
        return Err(unauth(
            "token_invalid",
            "this capability token is not on record here",
        ));
    };
    let expires_at = expires_at
        .unwrap_or(record.expires_at)
        .min(record.expires_at);
    if expires_at <= now {
        return Err(expired(expires_at));
    }
    let biscuit = Arc::new(biscuit);
    // Operations still allowed after every attenuation: probe each one (a token without
    // attenuations allows exactly what its authority block lists).
    let attenuated = biscuit.block_count() > 1;
    let allowed: Vec<String> = ops
        .into_iter()
        .filter(|op| {
            !attenuated
                || authorize(
                    &biscuit,
                    &CallFacts {
                        operation: op,
                        customer_id: &customer_id,
                        spend: 0,
                        categories: &[],
                        now,
                    },
                )
                .is_ok()
        })
        .collect();
    let grant = Grant {
        token_id,
        agent_id,
        customer_id,
        ops: allowed,
        spend_limit,
        categories,
        expires_at,
        escalate_over_limit: record.over_limit == "escalate",
        token: Some(biscuit),
    };
    Ok((grant, ids))
}

/// Revokes a token as staff member `by` (a staff id, or "cli"; recorded in the action log):
/// `token_or_id` is the token itself (its own revocation id is revoked, so an attenuated token
/// is revoked without its parent) or a root token's id. Returns the id revoked, or None when
/// there is no such token.
pub async fn revoke(
    store: &Store,
    key: &SigningKey,
    token_or_id: &str,
    by: &str,
    now: Millis,
) -> Result<Option<String>, GatewayError> {
    let internal = |e: crate::store::StoreError| GatewayError::Internal(e.to_string());
    let t = token_or_id.trim();
    let is_hex_id = t.len() == 128 && t.chars().all(|c| c.is_ascii_hexdigit());
    let (revocation_id, root_id) = if is_hex_id {
        let id = t.to_ascii_lowercase();
        if store.token(&id).await.map_err(internal)?.is_none() {
            return Ok(None);
        }
        (id.clone(), id)
    } else {
        let biscuit = Biscuit::from_base64(t, root_public_key(key)?).map_err(|e| {
            unauth(
                "token_invalid",
                format!("not a token id (128 hex digits) nor a token issued here: {e}"),
            )
        })?;
        let ids: Vec<String> = biscuit
            .revocation_identifiers()
            .iter()
            .map(|b| hex_id(b))
            .collect();
        let (Some(root), Some(last)) = (ids.first(), ids.last()) else {
            return Ok(None);
        };
        (last.clone(), root.clone())
    };
    if store
        .revoke_token_id(&revocation_id, Some(&root_id), now)
        .await
        .map_err(internal)?
    {
        let customer = store.token(&root_id).await.map_err(internal)?;
        let request = Store::action_request(
            "revoke_token",
            serde_json::json!({"token_id": root_id, "revocation_id": revocation_id}),
            now,
        )
        .by("staff", Some(by))
        .for_customer(customer.as_ref().map(|t| t.customer_id.as_str()));
        store
            .record_action(&request, None, "recorded")
            .await
            .map_err(internal)?;
    }
    Ok(Some(revocation_id))
}

/// Every token issued, newest first.
pub async fn list(store: &Store) -> Result<Vec<TokenRecord>, GatewayError> {
    store
        .list_tokens(None)
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_for(key: &SigningKey, limit: Option<Minor>, cats: &[&str]) -> Biscuit {
        let mut params = std::collections::HashMap::new();
        params.insert("customer".to_string(), Term::from("cus_a"));
        params.insert("expires".to_string(), date(4_000_000_000_000));
        let mut code = String::from(
            "customer({customer});\nagent(\"agt\");\noperation_allowed(\"return_items\");\n\
             check if operation($op), operation_allowed($op);\ncheck if time($t), $t <= {expires};\n",
        );
        if let Some(l) = limit {
            params.insert("limit".into(), Term::from(l));
            code.push_str("check if spend($s), $s <= {limit};\n");
        }
        if !cats.is_empty() {
            let c: Vec<String> = cats.iter().map(|s| s.to_string()).collect();
            params.insert("categories".into(), string_set(&c));
            code.push_str("reject if category($c), !{categories}.contains($c);\n");
        }
        BiscuitBuilder::new()
            .code_with_params(&code, params, Default::default())
            .and_then(|b| b.build(&root_keypair(key).unwrap_or_else(|_| panic!())))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn facts<'a>(op: &'a str, spend: Minor, cats: &'a [String]) -> CallFacts<'a> {
        CallFacts {
            operation: op,
            customer_id: "cus_a",
            spend,
            categories: cats,
            now: 1_800_000_000_000,
        }
    }

    #[test]
    fn checks_cover_operation_spend_category_customer_and_attenuation() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let t = token_for(&key, Some(10_000), &["Footwear"]);
        let r = authorize(&t, &facts("return_items", 10_000, &[]));
        assert!(r.is_ok(), "{r:?}");
        assert!(authorize(&t, &facts("return_items", 10_001, &[])).is_err());
        assert!(authorize(&t, &facts("cancel_order", 0, &[])).is_err());
        assert!(authorize(&t, &facts("return_items", 0, &["Footwear".into()])).is_ok());
        let e = authorize(
            &t,
            &facts("return_items", 0, &["Footwear".into(), "Hat".into()]),
        );
        assert!(e.is_err());
        let mut other = facts("return_items", 0, &[]);
        other.customer_id = "cus_b";
        assert!(authorize(&t, &other).is_err());

        let root = root_public_key(&key).unwrap_or_else(|_| panic!());
        let text = t.to_base64().unwrap_or_default();
        let narrow = attenuate(&text, &root, None, Some(5_000), None).unwrap_or_default();
        let narrow = Biscuit::from_base64(&narrow, root).unwrap_or_else(|e| panic!("{e}"));
        assert!(authorize(&narrow, &facts("return_items", 5_000, &[])).is_ok());
        assert!(authorize(&narrow, &facts("return_items", 5_001, &[])).is_err());
        // A block cannot widen: a higher limit in an attenuation changes nothing.
        let wide = attenuate(&text, &root, None, Some(99_999), None).unwrap_or_default();
        let wide = Biscuit::from_base64(&wide, root).unwrap_or_else(|e| panic!("{e}"));
        assert!(authorize(&wide, &facts("return_items", 10_001, &[])).is_err());
    }

    #[test]
    fn durations_and_operations_are_checked() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("0m").is_err());
        assert!(check_ops(&["get_order".into(), "teleport".into()]).is_err());
        assert_eq!(
            check_ops(&["get_order".into(), " get_order".into()]),
            Ok(vec!["get_order".to_string()])
        );
    }
}
