//! The consumer-agent gateway's records (migration 0006): registered agents and their keys,
//! signature nonces, capability tokens and what was spent under them, idempotent writes and
//! one-time delegation codes. No rules here: `crate::gateway` decides; this reads and writes.

use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;

use super::changes::Change;
use super::{
    Store, StoreError, StoreResult, get_i64, get_json, get_opt_i64, get_opt_str, get_str, to_json,
};
use crate::commerce::{Millis, Minor};
use crate::util::new_id;

/// A registered agent with its keys.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRecord {
    pub id: String,
    pub name: String,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
    pub keys: Vec<AgentKeyRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentKeyRecord {
    pub key_id: String,
    /// The raw 32-byte Ed25519 key, base64url without padding.
    pub public_key: String,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// What signature verification needs to know about a key id.
#[derive(Debug, Clone)]
pub struct KeyLookup {
    pub agent_id: String,
    pub agent_name: String,
    pub public_key: String,
    pub key_revoked_at: Option<Millis>,
    pub agent_revoked_at: Option<Millis>,
}

/// A capability token as issued (the root token; attenuations are not stored).
#[derive(Debug, Clone, Serialize)]
pub struct TokenRecord {
    /// The root token's first revocation id, hex.
    pub id: String,
    pub agent_id: String,
    pub customer_id: String,
    pub ops: Vec<String>,
    pub spend_limit: Option<Minor>,
    pub categories: Vec<String>,
    pub expires_at: Millis,
    pub issued_at: Millis,
    /// "cli", "order_email", "email_code".
    pub issued_via: String,
    /// Over the limit: "refuse", or "escalate" to a staff member for approval.
    pub over_limit: String,
    pub spent: Minor,
    pub revoked_at: Option<Millis>,
}

/// What a claim of an idempotency key found.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyClaim {
    /// The key is new: the caller runs the work and then completes or releases it.
    Claimed,
    /// The same request ran before: its stored answer.
    Replay { status: u16, body: Value },
    /// The key was used for a different request.
    Conflict,
    /// The first request with this key is still running.
    InFlight,
}

/// A one-time delegation code to store (hashed).
#[derive(Debug, Clone)]
pub struct NewDelegationCode<'a> {
    pub id: &'a str,
    pub agent_id: &'a str,
    pub customer_id: &'a str,
    pub email: &'a str,
    pub code_hash: &'a str,
    pub expires_at: Millis,
    pub created_at: Millis,
}

/// A one-time delegation code waiting to be used.
#[derive(Debug, Clone)]
pub struct DelegationCode {
    pub id: String,
    pub customer_id: String,
    pub code_hash: String,
    pub attempts: i64,
    pub expires_at: Millis,
}

impl Store {
    // ---- agents and keys ----

    /// Registers `public_key` (raw, base64url) under `key_id` for the agent `name`, creating the
    /// agent when it is new; an existing agent gets one more active key (rotation). Returns
    /// the agent id. Fails when the agent was revoked or the key is already registered.
    pub async fn register_agent_key(
        &self,
        name: &str,
        key_id: &str,
        public_key: &str,
        now: Millis,
    ) -> StoreResult<String> {
        let mut tx = self.begin_write().await?;
        let existing = sqlx::query("SELECT id, revoked_at FROM agents WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let agent_id = match existing {
            Some(row) => {
                if get_opt_i64(&row, "revoked_at")?.is_some() {
                    return Err(StoreError::Conflict(format!(
                        "agent {name:?} was revoked; register the new agent under another name"
                    )));
                }
                get_str(&row, "id")?
            }
            None => {
                let id = new_id("agt");
                sqlx::query("INSERT INTO agents (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(id.as_str())
                    .bind(name)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                id
            }
        };
        let taken = sqlx::query("SELECT a.name FROM agent_keys k JOIN agents a ON a.id = k.agent_id WHERE k.key_id = $1")
            .bind(key_id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = taken {
            let owner = get_str(&row, "name")?;
            return Err(StoreError::Conflict(format!(
                "this key (key id {key_id}) is already registered to agent {owner:?}"
            )));
        }
        sqlx::query(
            "INSERT INTO agent_keys (key_id, agent_id, public_key, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(key_id)
        .bind(agent_id.as_str())
        .bind(public_key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.commit_changes(tx, &[Change::AgentKey(key_id.to_string())])
            .await?;
        Ok(agent_id)
    }

    /// Every registered agent with its keys, by name.
    pub async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        let rows = sqlx::query("SELECT * FROM agents ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id = get_str(&r, "id")?;
            let keys = sqlx::query(
                "SELECT * FROM agent_keys WHERE agent_id = $1 ORDER BY created_at, key_id",
            )
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|k| {
                Ok(AgentKeyRecord {
                    key_id: get_str(k, "key_id")?,
                    public_key: get_str(k, "public_key")?,
                    created_at: get_i64(k, "created_at")?,
                    revoked_at: get_opt_i64(k, "revoked_at")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
            out.push(AgentRecord {
                id,
                name: get_str(&r, "name")?,
                created_at: get_i64(&r, "created_at")?,
                revoked_at: get_opt_i64(&r, "revoked_at")?,
                keys,
            });
        }
        Ok(out)
    }

    /// The agent named `name`, if registered.
    pub async fn agent_by_name(&self, name: &str) -> StoreResult<Option<AgentRecord>> {
        Ok(self
            .list_agents()
            .await?
            .into_iter()
            .find(|a| a.name == name))
    }

    /// Revokes the agent `name` and every key it has. False when there is no such agent.
    pub async fn revoke_agent(&self, name: &str, now: Millis) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let Some(row) = sqlx::query("SELECT id FROM agents WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let id = get_str(&row, "id")?;
        sqlx::query("UPDATE agents SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE agent_keys SET revoked_at = $2 WHERE agent_id = $1 AND revoked_at IS NULL",
        )
        .bind(id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.commit_changes(tx, &[Change::Agent(id)]).await?;
        Ok(true)
    }

    /// Revokes one key (rotation: the agent's other keys stay active). Returns the agent's name,
    /// or None when no such key is registered.
    pub async fn revoke_agent_key(&self, key_id: &str, now: Millis) -> StoreResult<Option<String>> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT a.name FROM agent_keys k JOIN agents a ON a.id = k.agent_id WHERE k.key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        sqlx::query(
            "UPDATE agent_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL",
        )
        .bind(key_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.commit_changes(tx, &[Change::AgentKey(key_id.to_string())])
            .await?;
        Ok(Some(get_str(&row, "name")?))
    }

    /// The key `key_id` and its agent, revoked or not.
    pub async fn agent_key(&self, key_id: &str) -> StoreResult<Option<KeyLookup>> {
        let epoch = match self.cache.key(key_id) {
            Ok(key) => return Ok(key),
            Err(epoch) => epoch,
        };
        let key = self.load_agent_key(key_id).await?;
        self.cache.keep_key(epoch, key_id, key.clone());
        Ok(key)
    }

    async fn load_agent_key(&self, key_id: &str) -> StoreResult<Option<KeyLookup>> {
        let row = sqlx::query(
            "SELECT k.agent_id, a.name, k.public_key, k.revoked_at AS key_revoked_at, \
               a.revoked_at AS agent_revoked_at \
             FROM agent_keys k JOIN agents a ON a.id = k.agent_id WHERE k.key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(KeyLookup {
                agent_id: get_str(&r, "agent_id")?,
                agent_name: get_str(&r, "name")?,
                public_key: get_str(&r, "public_key")?,
                key_revoked_at: get_opt_i64(&r, "key_revoked_at")?,
                agent_revoked_at: get_opt_i64(&r, "agent_revoked_at")?,
            })
        })
        .transpose()
    }

    // ---- capability tokens ----

    pub async fn insert_token(&self, t: &TokenRecord) -> StoreResult<()> {
        self.write_execute(sqlx::query(
            "INSERT INTO agent_tokens (id, agent_id, customer_id, ops, spend_limit_minor, categories, \
               expires_at, issued_at, issued_via, over_limit, spent_minor) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)",
        )
        .bind(t.id.as_str())
        .bind(t.agent_id.as_str())
        .bind(t.customer_id.as_str())
        .bind(to_json(&t.ops))
        .bind(t.spend_limit)
        .bind(to_json(&t.categories))
        .bind(t.expires_at)
        .bind(t.issued_at)
        .bind(t.issued_via.as_str())
        .bind(t.over_limit.as_str())
        )
        .await?;
        Ok(())
    }

    pub async fn token(&self, id: &str) -> StoreResult<Option<TokenRecord>> {
        let row = sqlx::query("SELECT * FROM agent_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Tokens issued, newest first; only those of `agent_id` when given.
    pub async fn list_tokens(&self, agent_id: Option<&str>) -> StoreResult<Vec<TokenRecord>> {
        let rows =
            match agent_id {
                Some(a) => sqlx::query(
                    "SELECT * FROM agent_tokens WHERE agent_id = $1 ORDER BY issued_at DESC, id",
                )
                .bind(a)
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query("SELECT * FROM agent_tokens ORDER BY issued_at DESC, id")
                        .fetch_all(&self.pool)
                        .await?
                }
            };
        rows.iter().map(token_from_row).collect()
    }

    /// Records `revocation_id` as revoked (a root token's id revokes it and everything
    /// attenuated from it; an attenuated token's own id revokes only it and its descendants).
    /// Returns false when it was already revoked.
    pub async fn revoke_token_id(
        &self,
        revocation_id: &str,
        token_id: Option<&str>,
        now: Millis,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "INSERT INTO agent_token_revocations (revocation_id, token_id, revoked_at) \
             VALUES ($1, $2, $3) ON CONFLICT (revocation_id) DO NOTHING",
        )
        .bind(revocation_id)
        .bind(token_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(t) = token_id.filter(|t| *t == revocation_id) {
            sqlx::query(
                "UPDATE agent_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(t)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        self.commit_changes(tx, &[Change::TokenRevoked(revocation_id.to_string())])
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// True when any of `revocation_ids` was revoked.
    pub async fn any_token_revoked(&self, revocation_ids: &[String]) -> StoreResult<bool> {
        let mut unknown = Vec::new();
        for id in revocation_ids {
            match self.cache.revoked(id) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(epoch) => unknown.push((id, epoch)),
            }
        }
        for (id, epoch) in unknown {
            let revoked = self.load_token_revoked(std::slice::from_ref(id)).await?;
            self.cache.keep_revoked(epoch, id, revoked);
            if revoked {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn load_token_revoked(&self, revocation_ids: &[String]) -> StoreResult<bool> {
        if revocation_ids.is_empty() {
            return Ok(false);
        }
        let placeholders: Vec<String> = (1..=revocation_ids.len())
            .map(|i| format!("${i}"))
            .collect();
        let sql = format!(
            "SELECT count(*) AS n FROM agent_token_revocations WHERE revocation_id IN ({})",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in revocation_ids {
            q = q.bind(id.as_str());
        }
        let row = q.fetch_one(&self.pool).await?;
        Ok(get_i64(&row, "n")? > 0)
    }

    /// Adds `amount` to what is committed under the token and records a reservation; returns
    /// the reservation's id and the token's new total. The caller checks the total against the
    /// limit afterwards (so two concurrent calls each see the other's reservation) and settles
    /// the reservation with [`Store::settle_spend`].
    pub async fn reserve_spend(
        &self,
        token_id: &str,
        amount: Minor,
        tool: &str,
        order_id: Option<&str>,
        now: Millis,
    ) -> StoreResult<(String, Minor)> {
        let id = new_id("spd");
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "UPDATE agent_tokens SET spent_minor = spent_minor + $2 WHERE id = $1 RETURNING spent_minor",
        )
        .bind(token_id)
        .bind(amount)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Conflict(format!("no token {token_id} was issued here")))?;
        let total = get_i64(&row, "spent_minor")?;
        sqlx::query(
            "INSERT INTO agent_token_spend (id, token_id, amount_minor, tool, order_id, state, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'reserved', $6, $6)",
        )
        .bind(id.as_str())
        .bind(token_id)
        .bind(amount)
        .bind(tool)
        .bind(order_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((id, total))
    }

    /// Marks a reservation spent (the call succeeded) or releases it (it did not: the amount is
    /// taken off the token's total again).
    pub async fn settle_spend(
        &self,
        reservation_id: &str,
        spent: bool,
        now: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let state = if spent { "spent" } else { "released" };
        let row = sqlx::query(
            "UPDATE agent_token_spend SET state = $2, updated_at = $3 \
             WHERE id = $1 AND state = 'reserved' RETURNING token_id, amount_minor",
        )
        .bind(reservation_id)
        .bind(state)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row
            && !spent
        {
            sqlx::query("UPDATE agent_tokens SET spent_minor = spent_minor - $2 WHERE id = $1")
                .bind(get_str(&row, "token_id")?)
                .bind(get_i64(&row, "amount_minor")?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What is committed (spent or reserved) under the token now.
    pub async fn token_spent(&self, token_id: &str) -> StoreResult<Minor> {
        let row = sqlx::query("SELECT spent_minor FROM agent_tokens WHERE id = $1")
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| get_i64(&r, "spent_minor"))
            .transpose()?
            .unwrap_or(0))
    }

    // ---- idempotency ----

    /// Claims (`scope`, `key`) for a request with `fingerprint`, or says what happened to it.
    /// Keys older than `purge_before` are forgotten first.
    pub async fn claim_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now: Millis,
        purge_before: Millis,
        abandoned_before: Millis,
    ) -> StoreResult<IdempotencyClaim> {
        self.write_execute(
            sqlx::query(
                "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at < $3",
            )
            .bind(scope)
            .bind(key)
            .bind(purge_before),
        )
        .await?;
        let inserted = self
            .write_execute(
                sqlx::query(
                    "INSERT INTO idempotency_keys (scope, key, fingerprint, state, created_at) \
             VALUES ($1, $2, $3, 'in_flight', $4) ON CONFLICT (scope, key) DO NOTHING",
                )
                .bind(scope)
                .bind(key)
                .bind(fingerprint)
                .bind(now),
            )
            .await?;
        if inserted.rows_affected() == 1 {
            return Ok(IdempotencyClaim::Claimed);
        }
        let row = sqlx::query(
            "SELECT fingerprint, state, status, body FROM idempotency_keys WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            // Released between our insert and our read: the other request failed; try again.
            return Box::pin(self.claim_idempotency_key(
                scope,
                key,
                fingerprint,
                now,
                purge_before,
                abandoned_before,
            ))
            .await;
        };
        if get_str(&row, "fingerprint")? != fingerprint {
            return Ok(IdempotencyClaim::Conflict);
        }
        if get_str(&row, "state")? != "done" {
            // A request that never finished (its client went away mid-call, the process
            // stopped): after a while a retry may take the key over — one retry only.
            let taken = self
                .write_execute(
                    sqlx::query(
                        "UPDATE idempotency_keys SET created_at = $3 \
                 WHERE scope = $1 AND key = $2 AND state = 'in_flight' AND created_at < $4",
                    )
                    .bind(scope)
                    .bind(key)
                    .bind(now)
                    .bind(abandoned_before),
                )
                .await?;
            return Ok(if taken.rows_affected() == 1 {
                IdempotencyClaim::Claimed
            } else {
                IdempotencyClaim::InFlight
            });
        }
        let status = get_opt_i64(&row, "status")?.unwrap_or(200);
        let body = match get_opt_str(&row, "body")? {
            Some(text) => serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                what: "idempotency_keys.body".into(),
                message: e.to_string(),
            })?,
            None => Value::Null,
        };
        Ok(IdempotencyClaim::Replay {
            status: u16::try_from(status).unwrap_or(200),
            body,
        })
    }

    /// Stores the answer of a claimed key.
    pub async fn complete_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &Value,
    ) -> StoreResult<()> {
        self.write_execute(sqlx::query(
            "UPDATE idempotency_keys SET state = 'done', status = $3, body = $4 WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .bind(i64::from(status))
        .bind(body.to_string())
        )
        .await?;
        Ok(())
    }

    /// Forgets a claimed key whose request failed on our side, so a retry runs again.
    pub async fn release_idempotency_key(&self, scope: &str, key: &str) -> StoreResult<()> {
        self.write_execute(sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND state = 'in_flight'",
        )
        .bind(scope)
        .bind(key)
        )
        .await?;
        Ok(())
    }

    /// Forgets every key claimed before `before`.
    pub async fn purge_idempotency_keys(&self, before: Millis) -> StoreResult<u64> {
        let done = self
            .write_execute(
                sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1").bind(before),
            )
            .await?;
        Ok(done.rows_affected())
    }

    // ---- one-time delegation codes ----

    pub async fn insert_delegation_code(&self, code: &NewDelegationCode<'_>) -> StoreResult<()> {
        self.write_execute(sqlx::query(
            "INSERT INTO delegation_codes (id, agent_id, customer_id, email, code_hash, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(code.id)
        .bind(code.agent_id)
        .bind(code.customer_id)
        .bind(code.email)
        .bind(code.code_hash)
        .bind(code.expires_at)
        .bind(code.created_at)
        )
        .await?;
        Ok(())
    }

    /// How many codes were sent for (`agent_id`, `email`) since `since`.
    pub async fn count_delegation_codes(
        &self,
        agent_id: &str,
        email: &str,
        since: Millis,
    ) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT count(*) AS n FROM delegation_codes WHERE agent_id = $1 AND email = $2 AND created_at >= $3",
        )
        .bind(agent_id)
        .bind(email)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        get_i64(&row, "n")
    }

    /// How many codes were sent to `email` since `since`, whoever asked.
    pub async fn count_codes_to_address(&self, email: &str, since: Millis) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT count(*) AS n FROM delegation_codes WHERE email = $1 AND created_at >= $2",
        )
        .bind(email)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        get_i64(&row, "n")
    }

    /// The newest unused, unexpired code for (`agent_id`, `email`).
    pub async fn active_delegation_code(
        &self,
        agent_id: &str,
        email: &str,
        now: Millis,
    ) -> StoreResult<Option<DelegationCode>> {
        let row = sqlx::query(
            "SELECT * FROM delegation_codes WHERE agent_id = $1 AND email = $2 AND used_at IS NULL \
               AND expires_at > $3 ORDER BY created_at DESC LIMIT 1",
        )
        .bind(agent_id)
        .bind(email)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(DelegationCode {
                id: get_str(&r, "id")?,
                customer_id: get_str(&r, "customer_id")?,
                code_hash: get_str(&r, "code_hash")?,
                attempts: get_i64(&r, "attempts")?,
                expires_at: get_i64(&r, "expires_at")?,
            })
        })
        .transpose()
    }

    /// Counts one attempt at a code; returns the attempts made so far, this one included, or
    /// None when the code is used up (`max_attempts` reached) — atomically, so concurrent
    /// guesses cannot exceed the limit.
    pub async fn count_code_attempt(
        &self,
        id: &str,
        max_attempts: i64,
    ) -> StoreResult<Option<i64>> {
        let row = self
            .write_fetch_optional(
                sqlx::query(
                    "UPDATE delegation_codes SET attempts = attempts + 1 \
             WHERE id = $1 AND attempts < $2 AND used_at IS NULL RETURNING attempts",
                )
                .bind(id)
                .bind(max_attempts),
            )
            .await?;
        row.map(|r| get_i64(&r, "attempts")).transpose()
    }

    /// Marks a code used; false when it already was (two concurrent redemptions: one wins).
    pub async fn use_delegation_code(&self, id: &str, now: Millis) -> StoreResult<bool> {
        let done = self
            .write_execute(
                sqlx::query(
                    "UPDATE delegation_codes SET used_at = $2 WHERE id = $1 AND used_at IS NULL",
                )
                .bind(id)
                .bind(now),
            )
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The product a variant (item id) belongs to.
    pub async fn variant_product(&self, variant_id: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT product_id FROM variants WHERE id = $1")
            .bind(variant_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| get_str(&r, "product_id")).transpose()
    }

    /// The product categories (product types) of the given products; products without one
    /// are left out.
    pub async fn product_categories(&self, product_ids: &[String]) -> StoreResult<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for id in product_ids {
            let row = sqlx::query("SELECT product_type FROM products WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = row
                && let Some(t) = get_opt_str(&row, "product_type")?
                && !out.contains(&t)
            {
                out.push(t);
            }
        }
        Ok(out)
    }
}

fn token_from_row(r: &AnyRow) -> StoreResult<TokenRecord> {
    Ok(TokenRecord {
        id: get_str(r, "id")?,
        agent_id: get_str(r, "agent_id")?,
        customer_id: get_str(r, "customer_id")?,
        ops: get_json(r, "ops")?,
        spend_limit: get_opt_i64(r, "spend_limit_minor")?,
        categories: get_json(r, "categories")?,
        expires_at: get_i64(r, "expires_at")?,
        issued_at: get_i64(r, "issued_at")?,
        issued_via: get_str(r, "issued_via")?,
        over_limit: get_str(r, "over_limit")?,
        spent: get_i64(r, "spent_minor")?,
        revoked_at: get_opt_i64(r, "revoked_at")?,
    })
}
