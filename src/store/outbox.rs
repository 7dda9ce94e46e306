//! Deliveries: the outbox rows behind every reply sent on a channel (email, Telegram,
//! marketplaces). A delivery and the durable job that carries it ([`JOB_DELIVER`]) are created
//! in one transaction — with the reply itself when the reply is new
//! ([`Store::append_outbound`](super::Store::append_outbound));
//! the row records attempts, the last error and the channel's id for what was sent. Also the
//! email channel's threading lookups (reply tokens, message ids).

use serde::Serialize;
use serde_json::json;
use sqlx::any::AnyRow;

use super::{Store, StoreResult, get_i64, get_opt_i64, get_opt_str, get_str, to_json};
use crate::util::{new_id, now_ms};

/// Job kind that delivers one outbox row (run by `channels::outbox`). Named here because the
/// store creates the job in the same transaction as the row.
pub const JOB_DELIVER: &str = "deliver";

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: String,
    pub message_id: String,
    pub conversation_id: String,
    pub channel: String,
    /// queued, sent, failed (will retry), dead (gave up; staff can retry)
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub idempotency_key: String,
    pub external_id: Option<String>,
    pub job_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub sent_at: Option<i64>,
}

/// The delivery a new outbound message needs: its channel and how often it may be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub channel: String,
    pub max_attempts: i64,
}

/// Inserts a delivery row and the job that sends it, in a transaction. Idempotent per message
/// and channel (the row's key and the job's dedupe key).
pub(super) async fn insert_delivery(
    tx: &mut super::WriteTx,
    message_id: &str,
    conversation_id: &str,
    delivery: &NewDelivery,
) -> StoreResult<()> {
    let key = format!("{}:{message_id}", delivery.channel);
    let now = now_ms();
    let id = new_id("dlv");
    let job_id = new_id("job");
    let inserted = sqlx::query(
        "INSERT INTO deliveries (id, message_id, conversation_id, channel, status, attempts, idempotency_key, job_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'queued', 0, $5, $6, $7, $7) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(id.as_str())
    .bind(message_id)
    .bind(conversation_id)
    .bind(delivery.channel.as_str())
    .bind(key.as_str())
    .bind(job_id.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO jobs (id, kind, payload, status, attempts, max_attempts, run_at, dedupe_key, created_at, updated_at) \
         VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6, $5, $5) ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(job_id.as_str())
    .bind(JOB_DELIVER)
    .bind(to_json(&json!({"delivery_id": id})))
    .bind(delivery.max_attempts)
    .bind(now)
    .bind(format!("deliver:{key}"))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Puts a stored outbound message in the outbox of `channel`. Idempotent per message and
    /// channel: asking twice returns the first delivery.
    pub async fn enqueue_delivery(
        &self,
        message_id: &str,
        conversation_id: &str,
        delivery: &NewDelivery,
    ) -> StoreResult<Delivery> {
        let key = format!("{}:{message_id}", delivery.channel);
        if let Some(d) = self.delivery_by_key(&key).await? {
            return Ok(d);
        }
        let mut tx = self.begin_write().await?;
        insert_delivery(&mut tx, message_id, conversation_id, delivery).await?;
        tx.commit().await?;
        self.delivery_by_key(&key)
            .await?
            .ok_or_else(|| super::StoreError::Conflict(format!("delivery {key} vanished")))
    }

    /// Emails a customer at an address on file, outside any shopper's conversation (a one-time
    /// code): a conversation of its own on the email channel (resolved; a reply threads to it),
    /// the message, and its delivery through the outbox.
    pub async fn send_account_email(
        &self,
        to: &str,
        customer_id: &str,
        subject: &str,
        text: &str,
        max_attempts: i64,
    ) -> StoreResult<Delivery> {
        let now = now_ms();
        let to = to.trim().to_lowercase();
        let conversation_id = new_id("cnv");
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO identities (id, channel, external_id, email, created_at, updated_at) \
             VALUES ($1, 'email', $2, $2, $3, $3) ON CONFLICT (channel, external_id) DO NOTHING",
        )
        .bind(new_id("idn"))
        .bind(to.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let identity =
            sqlx::query("SELECT id FROM identities WHERE channel = 'email' AND external_id = $1")
                .bind(to.as_str())
                .fetch_one(&mut *tx)
                .await?;
        let identity_id = get_str(&identity, "id")?;
        sqlx::query(
            "INSERT INTO conversations (id, channel, thread_key, identity_id, customer_id, status, subject, created_at, updated_at, resolved_at) \
             VALUES ($1, 'email', $2, $3, $4, 'resolved', $5, $6, $6, $6)",
        )
        .bind(conversation_id.as_str())
        .bind(format!("account:{conversation_id}"))
        .bind(identity_id.as_str())
        .bind(customer_id)
        .bind(subject)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let message = self
            .append_message(
                &conversation_id,
                &super::NewMessage {
                    direction: super::Direction::Outbound,
                    author_kind: super::AuthorKind::BrandAgent,
                    author_id: None,
                    text: text.to_string(),
                    html: None,
                    meta: json!({"account_email": true}),
                },
            )
            .await?;
        self.enqueue_delivery(
            &message.id,
            &conversation_id,
            &NewDelivery {
                channel: "email".into(),
                max_attempts,
            },
        )
        .await
    }

    async fn delivery_by_key(&self, key: &str) -> StoreResult<Option<Delivery>> {
        let row = sqlx::query("SELECT * FROM deliveries WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    pub async fn get_delivery(&self, id: &str) -> StoreResult<Option<Delivery>> {
        let row = sqlx::query("SELECT * FROM deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    pub async fn mark_delivery_sent(&self, id: &str, external_id: Option<&str>) -> StoreResult<()> {
        let now = now_ms();
        self.write_execute(sqlx::query(
            "UPDATE deliveries SET status = 'sent', attempts = attempts + 1, external_id = COALESCE($2, external_id), \
               last_error = NULL, sent_at = $3, updated_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(external_id)
        .bind(now)
        )
        .await?;
        Ok(())
    }

    /// Records a failed attempt (`dead`: no more retries).
    pub async fn mark_delivery_failed(&self, id: &str, error: &str, dead: bool) -> StoreResult<()> {
        self.write_execute(sqlx::query(
            "UPDATE deliveries SET status = $3, attempts = attempts + 1, last_error = $2, updated_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .bind(if dead { "dead" } else { "failed" })
        .bind(now_ms())
        )
        .await?;
        Ok(())
    }

    /// Marks a dead delivery dead for good when its job has used its attempts.
    pub async fn mark_delivery_dead(&self, id: &str) -> StoreResult<()> {
        self.write_execute(sqlx::query("UPDATE deliveries SET status = 'dead', updated_at = $2 WHERE id = $1 AND status <> 'sent'")
            .bind(id)
            .bind(now_ms())
            )
            .await?;
        Ok(())
    }

    /// Sends a failed or dead delivery again now (staff's retry).
    pub async fn retry_delivery_now(&self, id: &str) -> StoreResult<bool> {
        let Some(d) = self.get_delivery(id).await? else {
            return Ok(false);
        };
        if d.status == "sent" {
            return Ok(false);
        }
        if let Some(job) = &d.job_id {
            self.retry_job_now(job).await?;
        }
        self.write_execute(
            sqlx::query("UPDATE deliveries SET status = 'queued', updated_at = $2 WHERE id = $1")
                .bind(id)
                .bind(now_ms()),
        )
        .await?;
        Ok(true)
    }

    pub async fn deliveries_for_conversation(
        &self,
        conversation_id: &str,
    ) -> StoreResult<Vec<Delivery>> {
        sqlx::query("SELECT * FROM deliveries WHERE conversation_id = $1 ORDER BY created_at, id")
            .bind(conversation_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(delivery_from_row)
            .collect()
    }

    /// Deliveries that gave up, newest first (the dead letters staff see).
    pub async fn dead_deliveries(&self, limit: i64) -> StoreResult<Vec<Delivery>> {
        sqlx::query(
            "SELECT * FROM deliveries WHERE status = 'dead' ORDER BY updated_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(delivery_from_row)
        .collect()
    }

    /// Gives a stored message the channel's id for it (an email's Message-ID), so replies that
    /// reference it find their conversation.
    pub async fn set_message_external_id(
        &self,
        message_id: &str,
        external_id: &str,
    ) -> StoreResult<()> {
        self.write_execute(
            sqlx::query(
                "UPDATE messages SET external_id = $2 WHERE id = $1 AND external_id IS NULL",
            )
            .bind(message_id)
            .bind(external_id),
        )
        .await?;
        Ok(())
    }

    /// The conversation (id, thread key) holding any of these channel message ids.
    pub async fn conversation_by_external_ids(
        &self,
        channel: &str,
        ids: &[String],
    ) -> StoreResult<Option<(String, String)>> {
        for ext in ids.iter().rev() {
            let row = sqlx::query(
                "SELECT c.id, c.thread_key FROM messages m JOIN conversations c ON c.id = m.conversation_id \
                 WHERE m.channel = $1 AND m.external_id = $2",
            )
            .bind(channel)
            .bind(ext.as_str())
            .fetch_optional(&self.pool)
            .await?;
            if let Some(r) = row {
                return Ok(Some((get_str(&r, "id")?, get_str(&r, "thread_key")?)));
            }
        }
        Ok(None)
    }

    /// The conversation's reply token, created on first use.
    pub async fn reply_token(&self, conversation_id: &str) -> StoreResult<String> {
        let row = sqlx::query("SELECT reply_token FROM conversations WHERE id = $1")
            .bind(conversation_id)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(t) = row
            .as_ref()
            .map(|r| get_opt_str(r, "reply_token"))
            .transpose()?
            .flatten()
        {
            return Ok(t);
        }
        let token = random_base36(REPLY_TOKEN_CHARS);
        self.write_execute(
            sqlx::query(
                "UPDATE conversations SET reply_token = $2 WHERE id = $1 AND reply_token IS NULL",
            )
            .bind(conversation_id)
            .bind(token.as_str()),
        )
        .await?;
        let row = sqlx::query("SELECT reply_token FROM conversations WHERE id = $1")
            .bind(conversation_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(get_opt_str(&row, "reply_token")?.unwrap_or(token))
    }

    /// Notes on a sent email message the address it went to (`meta.sent_to`), so a reply to
    /// it can later be told to come from that mailbox.
    pub async fn record_email_recipient(&self, message_id: &str, address: &str) -> StoreResult<()> {
        let row = sqlx::query("SELECT meta FROM messages WHERE id = $1")
            .bind(message_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(());
        };
        let mut meta: serde_json::Value =
            serde_json::from_str(&get_str(&row, "meta")?).unwrap_or_else(|_| json!({}));
        if !meta.is_object() {
            meta = json!({});
        }
        meta["sent_to"] = json!(address);
        self.write_execute(
            sqlx::query("UPDATE messages SET meta = $2 WHERE id = $1")
                .bind(message_id)
                .bind(to_json(&meta)),
        )
        .await?;
        Ok(())
    }

    /// The conversation (id, thread key) a reply token names.
    pub async fn conversation_by_reply_token(
        &self,
        token: &str,
    ) -> StoreResult<Option<(String, String)>> {
        let row = sqlx::query("SELECT id, thread_key FROM conversations WHERE reply_token = $1")
            .bind(token.trim().to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((get_str(&r, "id")?, get_str(&r, "thread_key")?)))
            .transpose()
    }
}

/// Characters in a conversation's reply token: lower-case base 36, 26 characters ≈ 134 bits.
pub const REPLY_TOKEN_CHARS: usize = 26;

/// `n` characters from a CSPRNG, each uniform over `0-9a-z`.
pub fn random_base36(n: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn delivery_from_row(r: &AnyRow) -> StoreResult<Delivery> {
    Ok(Delivery {
        id: get_str(r, "id")?,
        message_id: get_str(r, "message_id")?,
        conversation_id: get_str(r, "conversation_id")?,
        channel: get_str(r, "channel")?,
        status: get_str(r, "status")?,
        attempts: get_i64(r, "attempts")?,
        last_error: get_opt_str(r, "last_error")?,
        idempotency_key: get_str(r, "idempotency_key")?,
        external_id: get_opt_str(r, "external_id")?,
        job_id: get_opt_str(r, "job_id")?,
        created_at: get_i64(r, "created_at")?,
        updated_at: get_i64(r, "updated_at")?,
        sent_at: get_opt_i64(r, "sent_at")?,
    })
}
