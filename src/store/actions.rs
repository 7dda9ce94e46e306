//! Audited writes: the transactions the tool layer (`crate::agent::tools`) makes its changes in,
//! and the append-only, hash-chained action log they are recorded in (`audit_log`, migration
//! 0002).
//!
//! A write runs as: begin a write transaction → lock the log's head row (this serialises every
//! audited write, on SQLite and PostgreSQL alike) → re-read the order (or customer) inside the
//! transaction → let the caller's `decide` closure check its rules and change a draft → store what
//! changed → append ONE log entry (applied, or refused with the caller's reason) → commit. Two
//! concurrent writes therefore never both pass a check made on stale data, and no change exists
//! without its log entry.
//!
//! This module decides nothing: the closure holds the business rules, and its error's `Display`
//! is the recorded outcome. What it may change is limited to what support actions change: the
//! order row, its items, payment history, returns, exchanges and refunds; the customer's
//! addresses and payment-method balances. Nothing else of a draft is written.
//!
//! Hashing: `hash = sha256_hex(prev_hash ‖ canonical_json(entry))`, where the entry is every
//! column but `prev_hash`/`hash` (JSON columns as parsed values) and canonical JSON sorts object
//! keys and has no whitespace. The first `prev_hash` is 64 zeros.
//!
//! Signed head: when the store has the service's Ed25519 key attached
//! ([`Store::with_audit_signer`]; the running service always does), every append also signs
//! the new head — the message is [`audit_head_message`] (`concierge-audit-head-v1:<seq>:<hash>`),
//! the signature base64url in `audit_head.signature` next to the `signed_seq`/`signed_hash` it
//! covers. Writes made without the key (a tool run from a script) move the head without
//! re-signing; the signed seq then lags, and verification reports how many entries are not yet
//! covered. Someone who rewrites the table and recomputes every hash cannot re-sign the head
//! without the key in the data dir, so [`Store::verify_audit_chain`] catches it.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::AnyConnection;
use sqlx::any::AnyRow;

use super::changes::Change;
use super::commerce::{put_exchange, put_refund, put_return};
use super::{
    Backend, Store, StoreError, StoreResult, WriteTx, get_i64, get_json, get_opt_i64, get_opt_json,
    get_opt_str, get_str, to_json,
};
use crate::commerce::{
    Address, Customer, ExchangeRequest, Millis, Minor, Order, OrderItem, PaymentEntry,
    PaymentMethod, Refund, ReturnRequest, Variant,
};
use crate::util::sha256_hex;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who asked for a write, for whom, and with what: the part of a log entry the caller supplies.
/// Built with [`Store::action_request`] and the builder methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionRequest {
    /// "offline_resolver", "llm", "staff", "consumer_agent".
    pub actor_kind: String,
    pub actor_id: Option<String>,
    /// The verified customer the call acts for.
    pub customer_id: Option<String>,
    /// The tool's name ("cancel_order").
    pub tool: String,
    /// The call's arguments as JSON.
    pub args: Value,
    pub at: Millis,
}

impl ActionRequest {
    pub fn by(mut self, actor_kind: &str, actor_id: Option<&str>) -> ActionRequest {
        self.actor_kind = actor_kind.to_string();
        self.actor_id = actor_id.map(str::to_string);
        self
    }

    pub fn for_customer(mut self, customer_id: Option<&str>) -> ActionRequest {
        self.customer_id = customer_id.map(str::to_string);
        self
    }
}

/// What an order write sees: the order as it is now (read inside the write transaction), its
/// customer with payment methods, and the catalogue variants it may need (every variant of every
/// product in the order, plus any extra ids asked for), by id. The `decide` closure changes
/// `order` and `customer` in place.
#[derive(Debug, Clone)]
pub struct OrderDraft {
    pub order: Order,
    pub customer: Option<Customer>,
    pub variants: HashMap<String, Variant>,
}

/// One entry of the action log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: Millis,
    pub actor_kind: String,
    pub actor_id: Option<String>,
    pub customer_id: Option<String>,
    pub tool: String,
    pub args: Value,
    pub order_id: Option<String>,
    /// The order (or, for customer-level tools, the customer) before, as model JSON.
    pub before: Option<Value>,
    /// … and after; None when nothing was changed.
    pub after: Option<Value>,
    /// Changes outside the order: `[{"payment_method_id", "balance_before", "balance_after"}]`.
    pub effects: Value,
    /// "applied", "recorded", "refused: <code>: <message>" or "needs approval: <message>".
    pub outcome: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEntry {
    /// The canonical JSON the hash covers (everything but the two hashes).
    pub fn canonical_body(&self) -> String {
        canonical_json(&json!({
            "seq": self.seq,
            "at": self.at,
            "actor_kind": self.actor_kind,
            "actor_id": self.actor_id,
            "customer_id": self.customer_id,
            "tool": self.tool,
            "args": self.args,
            "order_id": self.order_id,
            "before": self.before,
            "after": self.after,
            "effects": self.effects,
            "outcome": self.outcome,
        }))
    }

    /// What `hash` must be, given `prev_hash`.
    pub fn expected_hash(&self) -> String {
        chain_hash(&self.prev_hash, &self.canonical_body())
    }
}

/// Result of [`Store::verify_audit_chain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditVerification {
    /// Entries checked (all of them when the chain is intact; up to the bad one otherwise).
    pub checked: u64,
    /// The first entry that does not verify, if any.
    pub first_bad: Option<AuditBreak>,
    /// The entry the service's signature covers (entries after it were written without the
    /// key); None when the head was never signed.
    pub signed_seq: Option<i64>,
}

/// The head of the action log and the service's last signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
    pub signed_seq: Option<i64>,
    pub signed_hash: Option<String>,
    /// Ed25519 over [`audit_head_message`]`(signed_seq, signed_hash)`, base64url.
    pub signature: Option<String>,
    pub signed_at: Option<Millis>,
}

/// The bytes the service signs for a head: `concierge-audit-head-v1:<seq>:<hash>`.
pub fn audit_head_message(seq: i64, hash: &str) -> Vec<u8> {
    format!("concierge-audit-head-v1:{seq}:{hash}").into_bytes()
}

fn sign_head(key: &SigningKey, seq: i64, hash: &str) -> String {
    let sig = key.sign(&audit_head_message(seq, hash));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.to_bytes())
}

/// True when `signature` (base64url) is `key`'s signature over the head (`seq`, `hash`).
pub fn verify_head(key: &VerifyingKey, seq: i64, hash: &str, signature: &str) -> bool {
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature.trim())
    else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify(&audit_head_message(seq, hash), &sig).is_ok()
}

impl AuditVerification {
    pub fn is_intact(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Where and why the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditBreak {
    pub seq: i64,
    pub problem: String,
}

impl std::fmt::Display for AuditBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit entry {}: {}", self.seq, self.problem)
    }
}

/// What one audited write did: the caller's result and the entry recorded, or the caller's
/// refusal and the entry recording it.
pub type Audited<T, E> = Result<(T, AuditEntry), (E, AuditEntry)>;

/// JSON with object keys sorted at every level and no whitespace: RFC 8785 (JCS), the one
/// canonical form Concierge hashes and signs ([`crate::util::jcs`]).
pub fn canonical_json(value: &Value) -> String {
    crate::util::jcs(value)
}

fn chain_hash(prev_hash: &str, body: &str) -> String {
    let mut bytes = Vec::with_capacity(prev_hash.len() + body.len());
    bytes.extend_from_slice(prev_hash.as_bytes());
    bytes.extend_from_slice(body.as_bytes());
    sha256_hex(&bytes)
}

impl Store {
    /// Starts describing a write for the log: `tool` with `args`, at `at`. Set the actor and the
    /// customer with [`ActionRequest::by`] and [`ActionRequest::for_customer`].
    pub fn action_request(tool: &str, args: Value, at: Millis) -> ActionRequest {
        ActionRequest {
            actor_kind: String::new(),
            actor_id: None,
            customer_id: None,
            tool: tool.to_string(),
            args,
            at,
        }
    }

    /// One audited change to an order. `order_ref` is an order id or number ("#W123", "W123").
    /// `decide` gets the draft (None when there is no such order) and either changes it and
    /// returns `Ok`, or returns `Err(e)` to refuse — then nothing changes and the entry's outcome
    /// is `e.to_string()`. Either way one entry is appended, in the same transaction.
    pub async fn apply_order_change<T, E: Display>(
        &self,
        request: &ActionRequest,
        order_ref: &str,
        extra_variant_ids: &[String],
        decide: impl FnOnce(Option<&mut OrderDraft>) -> Result<T, E>,
    ) -> StoreResult<Audited<T, E>> {
        let mut tx = self.begin_write().await?;
        let head = lock_head(&mut tx).await?;
        let mut draft = match load_order(&mut tx, order_ref).await? {
            Some(order) => {
                let customer = match &order.customer_id {
                    Some(id) => load_customer(&mut tx, id).await?,
                    None => None,
                };
                let variants = load_variants(&mut tx, &order, extra_variant_ids).await?;
                Some(OrderDraft {
                    order,
                    customer,
                    variants,
                })
            }
            None => None,
        };
        let before = draft.clone();
        let decision = decide(draft.as_mut());
        let order_id = before
            .as_ref()
            .map(|d| d.order.id.clone())
            .or_else(|| Some(order_ref.trim().to_string()));
        let before_json = before.as_ref().map(|d| model_json(&d.order));
        let mut changed = Vec::new();
        let result = match decision {
            Ok(output) => {
                let (Some(before), Some(after)) = (before, draft) else {
                    return Err(StoreError::Conflict(format!(
                        "a change to order {order_ref} was accepted, but there is no such order"
                    )));
                };
                write_order_change(&mut tx, &before.order, &after.order).await?;
                changed.push(Change::Order(after.order.number.clone()));
                let effects = match (&before.customer, &after.customer) {
                    (Some(b), Some(a)) => write_customer_change(&mut tx, b, a, request.at).await?,
                    _ => Vec::new(),
                };
                let fields = EntryFields {
                    order_id,
                    before: before_json,
                    after: Some(model_json(&after.order)),
                    effects: Value::Array(effects),
                    outcome: "applied".into(),
                };
                let entry =
                    append(&mut tx, head, request, fields, self.audit_signer.as_deref()).await?;
                Ok((output, entry))
            }
            Err(refusal) => {
                let fields = EntryFields {
                    order_id,
                    before: before_json,
                    after: None,
                    effects: Value::Array(Vec::new()),
                    outcome: refusal.to_string(),
                };
                let entry =
                    append(&mut tx, head, request, fields, self.audit_signer.as_deref()).await?;
                Err((refusal, entry))
            }
        };
        self.commit_changes(tx, &changed).await?;
        Ok(result)
    }

    /// One audited change to a customer's profile (addresses and payment-method balances are
    /// written; nothing else). Like [`Store::apply_order_change`], for customer-level tools.
    pub async fn apply_customer_change<T, E: Display>(
        &self,
        request: &ActionRequest,
        customer_id: &str,
        decide: impl FnOnce(Option<&mut Customer>) -> Result<T, E>,
    ) -> StoreResult<Audited<T, E>> {
        let mut tx = self.begin_write().await?;
        let head = lock_head(&mut tx).await?;
        let mut customer = load_customer(&mut tx, customer_id).await?;
        let before = customer.clone();
        let decision = decide(customer.as_mut());
        let before_json = before.as_ref().map(model_json);
        let result = match decision {
            Ok(output) => {
                let (Some(before), Some(after)) = (before, customer) else {
                    return Err(StoreError::Conflict(format!(
                        "a change to customer {customer_id} was accepted, but there is no such customer"
                    )));
                };
                let effects = write_customer_change(&mut tx, &before, &after, request.at).await?;
                let fields = EntryFields {
                    order_id: None,
                    before: before_json,
                    after: Some(model_json(&after)),
                    effects: Value::Array(effects),
                    outcome: "applied".into(),
                };
                Ok((
                    output,
                    append(&mut tx, head, request, fields, self.audit_signer.as_deref()).await?,
                ))
            }
            Err(refusal) => {
                let fields = EntryFields {
                    order_id: None,
                    before: before_json,
                    after: None,
                    effects: Value::Array(Vec::new()),
                    outcome: refusal.to_string(),
                };
                Err((
                    refusal,
                    append(&mut tx, head, request, fields, self.audit_signer.as_deref()).await?,
                ))
            }
        };
        tx.commit().await?;
        Ok(result)
    }

    /// Starts a write transaction that will append to the audit log after locking other rows
    /// (stock, a settlement, an order): on PostgreSQL it takes the audit head's row lock
    /// first, the lock every audited write takes, so all of them lock in one order (head, then
    /// rows) and no two can deadlock. On SQLite the write transaction is the lock.
    pub async fn begin_audited_write(&self) -> StoreResult<WriteTx> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
                .fetch_optional(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Appends an entry that changes no data: an escalation, or a write refused before anything
    /// was read (nobody verified).
    pub async fn record_action(
        &self,
        request: &ActionRequest,
        order_id: Option<&str>,
        outcome: &str,
    ) -> StoreResult<AuditEntry> {
        let mut tx = self.begin_write().await?;
        let head = lock_head(&mut tx).await?;
        let fields = EntryFields {
            order_id: order_id.map(str::to_string),
            before: None,
            after: None,
            effects: Value::Array(Vec::new()),
            outcome: outcome.to_string(),
        };
        let entry = append(&mut tx, head, request, fields, self.audit_signer.as_deref()).await?;
        tx.commit().await?;
        Ok(entry)
    }

    /// Appends an entry that changes no commerce data inside the caller's write transaction
    /// (begun with [`Store::begin_write`]), so a record stored by the caller (a negotiated
    /// deal) and its log entry commit together or not at all.
    pub async fn record_action_in(
        &self,
        conn: &mut AnyConnection,
        request: &ActionRequest,
        order_id: Option<&str>,
        outcome: &str,
    ) -> StoreResult<AuditEntry> {
        let head = lock_head(conn).await?;
        let fields = EntryFields {
            order_id: order_id.map(str::to_string),
            before: None,
            after: None,
            effects: Value::Array(Vec::new()),
            outcome: outcome.to_string(),
        };
        append(conn, head, request, fields, self.audit_signer.as_deref()).await
    }

    /// [`Store::record_action_in`] for a write the caller made itself in its transaction (a
    /// settlement step): the order before and after (model JSON, None when not an order
    /// change) and the effects outside it (`[{"payment_method_id", "balance_before",
    /// "balance_after"}]`, or anything the step moved), hashed into the chain with the rest.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_change_in(
        &self,
        conn: &mut AnyConnection,
        request: &ActionRequest,
        order_id: Option<&str>,
        before: Option<Value>,
        after: Option<Value>,
        effects: Value,
        outcome: &str,
    ) -> StoreResult<AuditEntry> {
        let head = lock_head(conn).await?;
        let fields = EntryFields {
            order_id: order_id.map(str::to_string),
            before,
            after,
            effects,
            outcome: outcome.to_string(),
        };
        append(conn, head, request, fields, self.audit_signer.as_deref()).await
    }

    /// Up to `limit` entries with `seq > after_seq`, oldest first.
    pub async fn audit_entries(&self, after_seq: i64, limit: i64) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after_seq)
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// The entries about one order, oldest first.
    pub async fn audit_entries_for_order(&self, order_id: &str) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit_log WHERE order_id = $1 ORDER BY seq")
            .bind(order_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Recomputes the chain from the first entry: every `seq` follows the previous one, every
    /// `prev_hash` is the previous `hash`, every `hash` matches the entry, and the head row
    /// points at the last entry. Names the first entry that fails. A row whose JSON no longer
    /// parses counts as tampered. With the service key attached, the head's signature must
    /// verify with it and cover an entry of this chain (see [`Store::verify_audit_chain_with`]).
    pub async fn verify_audit_chain(&self) -> StoreResult<AuditVerification> {
        let key = self.audit_signer.as_deref().map(SigningKey::verifying_key);
        self.verify_audit_chain_with(key.as_ref()).await
    }

    /// [`Store::verify_audit_chain`] checking the signed head against `key` (None: the
    /// signature is not checked, only that the signed hash belongs to the chain).
    pub async fn verify_audit_chain_with(
        &self,
        key: Option<&VerifyingKey>,
    ) -> StoreResult<AuditVerification> {
        const PAGE: i64 = 500;
        let head = self.audit_head().await?;
        // The signed point, and whether its signature holds (checked when the walk gets there,
        // so an earlier break is named first).
        let signed = match (head.signed_seq, &head.signed_hash, &head.signature) {
            (Some(seq), Some(hash), Some(sig)) => {
                let valid = match key {
                    Some(k) => verify_head(k, seq, hash, sig),
                    None => true,
                };
                Some((seq, hash.clone(), valid))
            }
            _ => None,
        };
        let signed_seq = signed.as_ref().map(|(s, _, _)| *s);
        let signature_problem = |seq: i64| {
            format!(
                "the signature over the head at entry {seq} does not verify with the service \
                 key: the head was forged or signed with another key"
            )
        };
        if let Some((0, hash, valid)) = &signed {
            let problem = if !valid {
                Some(signature_problem(0))
            } else if hash != GENESIS_HASH {
                Some("the signed head names an empty log with a non-empty hash".to_string())
            } else {
                None
            };
            if let Some(problem) = problem {
                return Ok(AuditVerification {
                    checked: 0,
                    first_bad: Some(AuditBreak { seq: 0, problem }),
                    signed_seq,
                });
            }
        }
        let mut prev_hash = GENESIS_HASH.to_string();
        let mut prev_seq = 0i64;
        let mut checked = 0u64;
        loop {
            let rows = sqlx::query("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(prev_seq)
                .bind(PAGE)
                .fetch_all(&self.pool)
                .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let seq = get_i64(row, "seq")?;
                let bad = |problem: String| AuditVerification {
                    checked,
                    first_bad: Some(AuditBreak { seq, problem }),
                    signed_seq,
                };
                if seq != prev_seq + 1 {
                    return Ok(bad(format!(
                        "expected entry {} next, found {seq}: entries are missing",
                        prev_seq + 1
                    )));
                }
                let entry = match entry_from_row(row) {
                    Ok(e) => e,
                    Err(StoreError::Corrupt { what, message }) => {
                        return Ok(bad(format!("{what} is not valid JSON: {message}")));
                    }
                    Err(e) => return Err(e),
                };
                if entry.prev_hash != prev_hash {
                    return Ok(bad(
                        "prev_hash is not the previous entry's hash: the chain was rewritten"
                            .into(),
                    ));
                }
                if entry.expected_hash() != entry.hash {
                    return Ok(bad(
                        "hash does not match the entry: its content was changed".into(),
                    ));
                }
                if let Some((s, hash, valid)) = &signed
                    && *s == seq
                {
                    if !valid {
                        return Ok(bad(signature_problem(seq)));
                    }
                    if *hash != entry.hash {
                        return Ok(bad(
                            "its hash is not the one the service signed: the log up to here \
                             was rewritten and re-hashed"
                                .into(),
                        ));
                    }
                }
                prev_hash = entry.hash;
                prev_seq = seq;
                checked += 1;
            }
        }
        let removed = |problem: String| AuditVerification {
            checked,
            first_bad: Some(AuditBreak {
                seq: prev_seq + 1,
                problem,
            }),
            signed_seq,
        };
        if head.seq != prev_seq || head.hash != prev_hash {
            return Ok(removed(format!(
                "the log ends at entry {prev_seq} but its head says {}: entries were removed",
                head.seq
            )));
        }
        if let Some(s) = signed_seq
            && s > prev_seq
        {
            return Ok(removed(format!(
                "the log ends at entry {prev_seq} but the service signed a head at entry {s}: \
                 entries were removed"
            )));
        }
        Ok(AuditVerification {
            checked,
            first_bad: None,
            signed_seq,
        })
    }

    /// Attaches the service's key: from now on every audited write signs the new head.
    pub fn with_audit_signer(mut self, key: SigningKey) -> Store {
        self.audit_signer = Some(std::sync::Arc::new(key));
        self
    }

    /// The service key attached with [`Store::with_audit_signer`].
    pub fn audit_signer(&self) -> Option<&SigningKey> {
        self.audit_signer.as_deref()
    }

    /// The log's head and the last signature over it.
    pub async fn audit_head(&self) -> StoreResult<AuditHead> {
        let row = sqlx::query(
            "SELECT seq, hash, signed_seq, signed_hash, signature, signed_at FROM audit_head WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::Corrupt {
            what: "audit_head".into(),
            message: "the head row is missing".into(),
        })?;
        Ok(AuditHead {
            seq: get_i64(&row, "seq")?,
            hash: get_str(&row, "hash")?,
            signed_seq: get_opt_i64(&row, "signed_seq")?,
            signed_hash: get_opt_str(&row, "signed_hash")?,
            signature: get_opt_str(&row, "signature")?,
            signed_at: get_opt_i64(&row, "signed_at")?,
        })
    }

    /// Signs the current head with the attached key when it is not signed yet (writes made
    /// without the key leave it unsigned); returns the head as it now stands.
    pub async fn sign_audit_head(&self) -> StoreResult<AuditHead> {
        let head = self.audit_head().await?;
        let Some(key) = self.audit_signer.as_deref() else {
            return Ok(head);
        };
        if head.signed_seq == Some(head.seq) && head.signed_hash.as_deref() == Some(&head.hash) {
            return Ok(head);
        }
        let signature = sign_head(key, head.seq, &head.hash);
        let now = crate::util::now_ms();
        // Only if the head did not move meanwhile (else that append signed it).
        self.write_execute(
            sqlx::query(
                "UPDATE audit_head SET signed_seq = seq, signed_hash = hash, signature = $3, \
               signed_at = $4 WHERE id = 1 AND seq = $1 AND hash = $2",
            )
            .bind(head.seq)
            .bind(head.hash.as_str())
            .bind(signature)
            .bind(now),
        )
        .await?;
        self.audit_head().await
    }
}

// ---- appending ----

/// The head row, locked for this transaction: the seq the new entry gets and the hash before it.
struct Head {
    seq: i64,
    prev_hash: String,
}

async fn lock_head(conn: &mut AnyConnection) -> StoreResult<Head> {
    // An UPDATE takes the row lock on PostgreSQL (and waits for, then sees, any concurrent
    // append); on SQLite the transaction already holds the write lock.
    let row = sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::Corrupt {
            what: "audit_head".into(),
            message: "the head row is missing".into(),
        })?;
    Ok(Head {
        seq: get_i64(&row, "seq")?,
        prev_hash: get_str(&row, "hash")?,
    })
}

struct EntryFields {
    order_id: Option<String>,
    before: Option<Value>,
    after: Option<Value>,
    effects: Value,
    outcome: String,
}

async fn append(
    conn: &mut AnyConnection,
    head: Head,
    request: &ActionRequest,
    fields: EntryFields,
    signer: Option<&SigningKey>,
) -> StoreResult<AuditEntry> {
    let mut entry = AuditEntry {
        seq: head.seq,
        at: request.at,
        actor_kind: request.actor_kind.clone(),
        actor_id: request.actor_id.clone(),
        customer_id: request.customer_id.clone(),
        tool: request.tool.clone(),
        args: request.args.clone(),
        order_id: fields.order_id,
        before: fields.before,
        after: fields.after,
        effects: fields.effects,
        outcome: fields.outcome,
        prev_hash: head.prev_hash,
        hash: String::new(),
    };
    entry.hash = entry.expected_hash();
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor_kind, actor_id, customer_id, tool, args, order_id, \
           before_state, after_state, effects, outcome, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(entry.seq)
    .bind(entry.at)
    .bind(entry.actor_kind.as_str())
    .bind(entry.actor_id.as_deref())
    .bind(entry.customer_id.as_deref())
    .bind(entry.tool.as_str())
    .bind(entry.args.to_string())
    .bind(entry.order_id.as_deref())
    .bind(entry.before.as_ref().map(Value::to_string))
    .bind(entry.after.as_ref().map(Value::to_string))
    .bind(entry.effects.to_string())
    .bind(entry.outcome.as_str())
    .bind(entry.prev_hash.as_str())
    .bind(entry.hash.as_str())
    .execute(&mut *conn)
    .await?;
    match signer {
        // One Ed25519 signature (tens of microseconds) inside the transaction: the head is
        // signed exactly when it moves, by whoever holds the service key.
        Some(key) => {
            let signature = sign_head(key, entry.seq, &entry.hash);
            sqlx::query(
                "UPDATE audit_head SET hash = $1, signed_seq = $2, signed_hash = $1, \
                   signature = $3, signed_at = $4 WHERE id = 1",
            )
            .bind(entry.hash.as_str())
            .bind(entry.seq)
            .bind(signature)
            .bind(crate::util::now_ms())
            .execute(&mut *conn)
            .await?;
        }
        None => {
            sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
                .bind(entry.hash.as_str())
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(entry)
}

fn entry_from_row(r: &AnyRow) -> StoreResult<AuditEntry> {
    Ok(AuditEntry {
        seq: get_i64(r, "seq")?,
        at: get_i64(r, "at")?,
        actor_kind: get_str(r, "actor_kind")?,
        actor_id: get_opt_str(r, "actor_id")?,
        customer_id: get_opt_str(r, "customer_id")?,
        tool: get_str(r, "tool")?,
        args: get_json(r, "args")?,
        order_id: get_opt_str(r, "order_id")?,
        before: get_opt_json(r, "before_state")?,
        after: get_opt_json(r, "after_state")?,
        effects: get_json(r, "effects")?,
        outcome: get_str(r, "outcome")?,
        prev_hash: get_str(r, "prev_hash")?,
        hash: get_str(r, "hash")?,
    })
}

fn model_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

// ---- reading inside the transaction ----

/// The order by id, or by number as a shopper types it ("#W123", "w123").
async fn load_order(conn: &mut AnyConnection, order_ref: &str) -> StoreResult<Option<Order>> {
    let r = order_ref.trim();
    if r.is_empty() {
        return Ok(None);
    }
    let row = match sqlx::query("SELECT * FROM orders WHERE id = $1")
        .bind(r)
        .fetch_optional(&mut *conn)
        .await?
    {
        Some(row) => Some(row),
        None => {
            sqlx::query("SELECT * FROM orders WHERE number_key = $1")
                .bind(super::commerce::order_number_key(r))
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    let Some(row) = row else { return Ok(None) };
    let mut order = order_from_row(&row)?;
    super::commerce::load_order_lines(conn, &mut order).await?;
    Ok(Some(order))
}

async fn load_customer(conn: &mut AnyConnection, id: &str) -> StoreResult<Option<Customer>> {
    let Some(row) = sqlx::query("SELECT * FROM customers WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let mut c = Customer {
        id: get_str(&row, "id")?,
        source: get_str(&row, "source")?,
        first_name: get_str(&row, "first_name")?,
        last_name: get_str(&row, "last_name")?,
        emails: Vec::new(),
        phones: get_json(&row, "phones")?,
        addresses: get_json::<Vec<Address>>(&row, "addresses")?,
        payment_methods: Vec::new(),
        note: get_opt_str(&row, "note")?,
        created_at: get_opt_i64(&row, "created_at")?,
        updated_at: get_opt_i64(&row, "updated_at")?,
    };
    for r in
        sqlx::query("SELECT email FROM customer_emails WHERE customer_id = $1 ORDER BY position")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?
    {
        c.emails.push(get_str(&r, "email")?);
    }
    for r in sqlx::query("SELECT * FROM payment_methods WHERE customer_id = $1 ORDER BY position")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
    {
        c.payment_methods.push(PaymentMethod {
            id: get_str(&r, "id")?,
            kind: get_str(&r, "kind")?,
            brand: get_opt_str(&r, "brand")?,
            last_four: get_opt_str(&r, "last_four")?,
            balance: get_opt_i64(&r, "balance_minor")?,
            currency: get_str(&r, "currency")?,
        });
    }
    Ok(Some(c))
}

/// Every variant of every product in the order, plus the variants `extra` names.
async fn load_variants(
    conn: &mut AnyConnection,
    order: &Order,
    extra: &[String],
) -> StoreResult<HashMap<String, Variant>> {
    let mut out = HashMap::new();
    let mut products: Vec<&str> = Vec::new();
    for item in &order.items {
        if !products.contains(&item.product_id.as_str()) {
            products.push(&item.product_id);
        }
    }
    for pid in products {
        for r in sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM variants v WHERE v.product_id = $1 ORDER BY v.position",
            super::commerce::variant_columns(2)
        )))
        .bind(pid)
        .bind(crate::util::now_ms())
        .fetch_all(&mut *conn)
        .await?
        {
            let v = variant_from_row(&r)?;
            out.insert(v.id.clone(), v);
        }
    }
    let extra: HashSet<&String> = extra.iter().filter(|id| !out.contains_key(*id)).collect();
    for id in extra {
        if let Some(r) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM variants v WHERE v.id = $1",
            super::commerce::variant_columns(2)
        )))
        .bind(id.as_str())
        .bind(crate::util::now_ms())
        .fetch_optional(&mut *conn)
        .await?
        {
            let v = variant_from_row(&r)?;
            out.insert(v.id.clone(), v);
        }
    }
    Ok(out)
}

// ---- writing what a draft changed ----

async fn write_order_change(
    conn: &mut AnyConnection,
    before: &Order,
    after: &Order,
) -> StoreResult<()> {
    if before.id != after.id || before.customer_id != after.customer_id {
        return Err(StoreError::Conflict(format!(
            "a change to order {} tried to change its id or customer",
            before.id
        )));
    }
    let dropped = |b: &[String], a: &[String]| b.iter().any(|id| !a.contains(id));
    let ids = |v: &[ReturnRequest]| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    let xids = |v: &[ExchangeRequest]| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    let rids = |v: &[Refund]| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    if dropped(&ids(&before.returns), &ids(&after.returns))
        || dropped(&xids(&before.exchanges), &xids(&after.exchanges))
        || dropped(&rids(&before.refunds), &rids(&after.refunds))
    {
        return Err(StoreError::Conflict(format!(
            "a change to order {} tried to remove a return, exchange or refund",
            before.id
        )));
    }
    sqlx::query(
        "UPDATE orders SET status = $1, items_modified = $2, total_minor = $3, \
           shipping_address = $4, cancel_reason = $5, updated_at = $6, cancelled_at = $7 \
         WHERE id = $8",
    )
    .bind(after.status.as_str())
    .bind(i64::from(after.items_modified))
    .bind(after.total)
    .bind(after.shipping_address.as_ref().map(to_json))
    .bind(after.cancel_reason.as_deref())
    .bind(after.updated_at)
    .bind(after.cancelled_at)
    .bind(after.id.as_str())
    .execute(&mut *conn)
    .await?;
    if after.items != before.items {
        sqlx::query("DELETE FROM order_items WHERE order_id = $1")
            .bind(after.id.as_str())
            .execute(&mut *conn)
            .await?;
        for (i, it) in after.items.iter().enumerate() {
            insert_item(conn, &after.id, i, it).await?;
        }
    }
    if after.payments != before.payments {
        let appended = after.payments.starts_with(&before.payments);
        let from = if appended {
            before.payments.len()
        } else {
            sqlx::query("DELETE FROM payments WHERE order_id = $1")
                .bind(after.id.as_str())
                .execute(&mut *conn)
                .await?;
            0
        };
        for (i, p) in after.payments.iter().enumerate().skip(from) {
            insert_payment(conn, after, i, p).await?;
        }
    }
    for r in after.returns.iter().filter(|r| !before.returns.contains(r)) {
        put_return(conn, r).await?;
    }
    for x in after
        .exchanges
        .iter()
        .filter(|x| !before.exchanges.contains(x))
    {
        put_exchange(conn, x).await?;
    }
    for r in after.refunds.iter().filter(|r| !before.refunds.contains(r)) {
        put_refund(conn, r).await?;
    }
    Ok(())
}

async fn insert_item(
    conn: &mut AnyConnection,
    order_id: &str,
    position: usize,
    it: &OrderItem,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO order_items (order_id, position, line_id, variant_id, product_id, name, options, sku, price_minor, quantity) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(order_id)
    .bind(i64::try_from(position).unwrap_or(i64::MAX))
    .bind(it.line_id.as_deref())
    .bind(it.variant_id.as_str())
    .bind(it.product_id.as_str())
    .bind(it.name.as_str())
    .bind(to_json(&it.options))
    .bind(it.sku.as_deref())
    .bind(it.price)
    .bind(it.quantity)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_payment(
    conn: &mut AnyConnection,
    order: &Order,
    position: usize,
    p: &PaymentEntry,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO payments (order_id, position, kind, amount_minor, currency, payment_method_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(order.id.as_str())
    .bind(i64::try_from(position).unwrap_or(i64::MAX))
    .bind(p.kind.as_str())
    .bind(p.amount)
    .bind(order.currency.as_str())
    .bind(p.payment_method_id.as_str())
    .bind(p.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes a customer's changed addresses and payment-method balances; returns the balance
/// changes as log effects.
async fn write_customer_change(
    conn: &mut AnyConnection,
    before: &Customer,
    after: &Customer,
    at: Millis,
) -> StoreResult<Vec<Value>> {
    if before.id != after.id {
        return Err(StoreError::Conflict(format!(
            "a change to customer {} tried to change its id",
            before.id
        )));
    }
    if after.addresses != before.addresses {
        sqlx::query("UPDATE customers SET addresses = $1, updated_at = $2 WHERE id = $3")
            .bind(to_json(&after.addresses))
            .bind(at)
            .bind(after.id.as_str())
            .execute(&mut *conn)
            .await?;
    }
    let old: HashMap<&str, Option<Minor>> = before
        .payment_methods
        .iter()
        .map(|m| (m.id.as_str(), m.balance))
        .collect();
    let mut effects = Vec::new();
    for m in &after.payment_methods {
        let Some(&was) = old.get(m.id.as_str()) else {
            return Err(StoreError::Conflict(format!(
                "a change to customer {} tried to add payment method {}",
                after.id, m.id
            )));
        };
        if was != m.balance {
            sqlx::query(
                "UPDATE payment_methods SET balance_minor = $1 WHERE id = $2 AND customer_id = $3",
            )
            .bind(m.balance)
            .bind(m.id.as_str())
            .bind(after.id.as_str())
            .execute(&mut *conn)
            .await?;
            effects.push(json!({
                "payment_method_id": m.id,
                "balance_before": was,
                "balance_after": m.balance,
            }));
        }
    }
    Ok(effects)
}

// Row mapping is `super::commerce`'s: the same columns, read the same way.
use super::commerce::{order_from_row, variant_from_row};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"z": [ {"y": 1, "x": 2} ], "c": null}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":null,"z":[{"x":2,"y":1}]},"b":1}"#
        );
        let b: Value = serde_json::from_str(r#"{ "a": {"z":[{"x":2,"y":1}],"c":null}, "b":1 }"#)
            .unwrap_or(Value::Null);
        assert_eq!(canonical_json(&a), canonical_json(&b));
    }

    #[test]
    fn hash_covers_every_field_and_the_previous_hash() {
        let entry = AuditEntry {
            seq: 1,
            at: 1_700_000_000_000,
            actor_kind: "llm".into(),
            actor_id: None,
            customer_id: Some("ann_1".into()),
            tool: "cancel_order".into(),
            args: json!({"order_id": "#W1", "reason": "no longer needed"}),
            order_id: Some("#W1".into()),
            before: Some(json!({"status": "pending"})),
            after: Some(json!({"status": "cancelled"})),
            effects: json!([]),
            outcome: "applied".into(),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        let h = entry.expected_hash();
        assert_eq!(h.len(), 64);
        let mut other = entry.clone();
        other.outcome = "refused: x".into();
        assert_ne!(other.expected_hash(), h);
        let mut other = entry.clone();
        other.prev_hash = "1".repeat(64);
        assert_ne!(other.expected_hash(), h);
        let mut other = entry;
        other.args = json!({"reason": "no longer needed", "order_id": "#W1"});
        assert_eq!(other.expected_hash(), h, "key order does not matter");
    }
}
