//! Inbox rows: identities (a channel's user → maybe a customer), conversations (one thread on
//! one channel) and messages. A message is unique per (channel, channel message id), so a
//! repeated delivery is recognized and stored once — also when two deliveries race.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyRow;

use super::jobs::{NewJob, insert_job};
use super::outbox::{NewDelivery, insert_delivery};
use super::{
    Backend, Store, StoreError, StoreResult, get_i64, get_json, get_opt_i64, get_opt_str, get_str,
    to_json,
};
use crate::util::{new_id, now_ms};

/// The payload of a job that answers one inbound message.
fn turn_payload(conversation_id: &str, message_id: &str) -> Value {
    serde_json::json!({"conversation_id": conversation_id, "message_id": message_id})
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
    /// A staff member's private note: never sent.
    Internal,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Internal => "internal",
        }
    }
    fn parse(s: &str) -> Option<Direction> {
        Some(match s {
            "inbound" => Direction::Inbound,
            "outbound" => Direction::Outbound,
            "internal" => Direction::Internal,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorKind {
    Customer,
    BrandAgent,
    Staff,
    ConsumerAgent,
}

impl AuthorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorKind::Customer => "customer",
            AuthorKind::BrandAgent => "brand_agent",
            AuthorKind::Staff => "staff",
            AuthorKind::ConsumerAgent => "consumer_agent",
        }
    }
    fn parse(s: &str) -> Option<AuthorKind> {
        Some(match s {
            "customer" => AuthorKind::Customer,
            "brand_agent" => AuthorKind::BrandAgent,
            "staff" => AuthorKind::Staff,
            "consumer_agent" => AuthorKind::ConsumerAgent,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationStatus {
    Open,
    AwaitingCustomer,
    Escalated,
    Resolved,
}

impl ConversationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationStatus::Open => "open",
            ConversationStatus::AwaitingCustomer => "awaiting_customer",
            ConversationStatus::Escalated => "escalated",
            ConversationStatus::Resolved => "resolved",
        }
    }
    pub fn parse(s: &str) -> Option<ConversationStatus> {
        Some(match s {
            "open" => ConversationStatus::Open,
            "awaiting_customer" => ConversationStatus::AwaitingCustomer,
            "escalated" => ConversationStatus::Escalated,
            "resolved" => ConversationStatus::Resolved,
            _ => return None,
        })
    }
}

/// A message as a channel adapter hands it over, already normalized.
#[derive(Debug, Clone)]
pub struct InboundMessage {
    pub channel: String,
    /// The channel's thread (an email thread token, a chat session, a Telegram chat id, the API's
    /// `thread`).
    pub thread_key: String,
    /// The channel's id for this message; deliveries with the same id are stored once.
    pub external_id: Option<String>,
    /// The sender's id on the channel (email address, Telegram user id, …).
    pub sender_id: String,
    pub sender_name: Option<String>,
    pub sender_email: Option<String>,
    /// The channel vouches for the sender's email (an authenticated API caller, a signed-in
    /// shop session).
    pub sender_verified: bool,
    pub author_kind: AuthorKind,
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
    pub attachments: Value,
    pub meta: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestOutcome {
    pub conversation_id: String,
    pub message_id: String,
    pub identity_id: String,
    pub duplicate: bool,
    /// The job that answers the message, when one was asked for
    /// ([`Store::ingest_scheduling`]).
    pub job_id: Option<String>,
}

/// A message Concierge itself adds to a conversation (a reply, a staff note).
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub direction: Direction,
    pub author_kind: AuthorKind,
    pub author_id: Option<String>,
    pub text: String,
    pub html: Option<String>,
    pub meta: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub id: String,
    pub channel: String,
    pub external_id: String,
    pub customer_id: Option<String>,
    pub verified: bool,
    pub display_name: Option<String>,
    pub email: Option<String>,
    /// When the link to the customer was last proven (a link expires after
    /// `[verification] link_ttl_days`).
    pub verified_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Conversation {
    pub id: String,
    pub channel: String,
    pub thread_key: String,
    pub identity_id: Option<String>,
    pub customer_id: Option<String>,
    pub status: ConversationStatus,
    pub assignee: Option<String>,
    pub priority: String,
    pub tags: Vec<String>,
    pub subject: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_message_at: Option<i64>,
    pub escalated_at: Option<i64>,
    pub resolved_at: Option<i64>,
    /// A person has the conversation (it was escalated, or staff replied): the brand agent
    /// does not answer it until staff resolve it or hand it back.
    pub with_staff: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub seq: i64,
    pub channel: String,
    pub external_id: Option<String>,
    pub direction: Direction,
    pub author_kind: AuthorKind,
    pub author_id: Option<String>,
    pub text: String,
    pub html: Option<String>,
    pub attachments: Value,
    pub meta: Value,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationView {
    pub conversation: Conversation,
    pub messages: Vec<Message>,
}

impl Store {
    /// Stores an inbound message, creating the sender's identity and the conversation as
    /// needed, in one transaction. A message whose (channel, external id) is already stored is
    /// not stored again: the outcome points at the stored one with `duplicate: true`.
    pub async fn ingest(&self, msg: &InboundMessage) -> StoreResult<IngestOutcome> {
        self.ingest_scheduling(msg, None).await
    }

    /// [`ingest`](Self::ingest), and queues `job` (payload `{"conversation_id", "message_id"}`,
    /// dedupe key `<kind>:<message id>`) in the same transaction as a new message. For a
    /// duplicate the job is queued unless it exists already, so a message stored before its job
    /// existed still gets it — and never two.
    pub async fn ingest_scheduling(
        &self,
        msg: &InboundMessage,
        job: Option<NewJob<'_>>,
    ) -> StoreResult<IngestOutcome> {
        let found = match self.find_duplicate(msg).await? {
            Some(found) => found,
            None => match self.ingest_new(msg, job).await {
                // Two deliveries raced past the check: the loser reports the winner's message.
                Err(e) if e.is_unique_violation() && msg.external_id.is_some() => {
                    self.settle_writes().await;
                    match self.find_duplicate(msg).await? {
                        Some(found) => found,
                        None => return Err(e),
                    }
                }
                other => return other,
            },
        };
        let job_id = match job {
            Some(job) => Some(
                self.enqueue_job(
                    job.kind,
                    &turn_payload(&found.conversation_id, &found.message_id),
                    Some(&format!("{}:{}", job.kind, found.message_id)),
                    job.max_attempts,
                )
                .await?,
            ),
            None => None,
        };
        Ok(IngestOutcome { job_id, ..found })
    }

    async fn find_duplicate(&self, msg: &InboundMessage) -> StoreResult<Option<IngestOutcome>> {
        let Some(ext) = &msg.external_id else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT m.id, m.conversation_id, c.identity_id FROM messages m \
             JOIN conversations c ON c.id = m.conversation_id \
             WHERE m.channel = $1 AND m.external_id = $2",
        )
        .bind(msg.channel.as_str())
        .bind(ext.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(IngestOutcome {
                conversation_id: get_str(&r, "conversation_id")?,
                message_id: get_str(&r, "id")?,
                identity_id: get_opt_str(&r, "identity_id")?.unwrap_or_default(),
                duplicate: true,
                job_id: None,
            })
        })
        .transpose()
    }

    async fn ingest_new(
        &self,
        msg: &InboundMessage,
        job: Option<NewJob<'_>>,
    ) -> StoreResult<IngestOutcome> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;

        // The sender's identity on this channel.
        let email = msg.sender_email.as_ref().map(|e| e.trim().to_lowercase());
        let linked_customer = match (&email, msg.sender_verified) {
            (Some(e), true) => {
                sqlx::query("SELECT customer_id FROM customer_emails WHERE email = $1")
                    .bind(e.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| get_str(&r, "customer_id"))
                    .transpose()?
            }
            _ => None,
        };
        let identity_id = new_id("idn");
        sqlx::query(
            "INSERT INTO identities (id, channel, external_id, customer_id, verified, verified_at, display_name, email, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, CASE WHEN $5 = 1 THEN $8 ELSE NULL END, $6, $7, $8, $8) \
             ON CONFLICT (channel, external_id) DO UPDATE SET \
               display_name = COALESCE(excluded.display_name, identities.display_name), \
               email = COALESCE(excluded.email, identities.email), \
               customer_id = COALESCE(excluded.customer_id, identities.customer_id), \
               verified = CASE WHEN excluded.verified = 1 THEN 1 ELSE identities.verified END, \
               verified_at = CASE WHEN excluded.verified = 1 THEN excluded.verified_at ELSE identities.verified_at END, \
               updated_at = excluded.updated_at",
        )
        .bind(identity_id.as_str())
        .bind(msg.channel.as_str())
        .bind(msg.sender_id.as_str())
        .bind(linked_customer.as_deref())
        .bind(i64::from(msg.sender_verified && linked_customer.is_some()))
        .bind(msg.sender_name.as_deref())
        .bind(email.as_deref())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let identity = sqlx::query(
            "SELECT id, customer_id FROM identities WHERE channel = $1 AND external_id = $2",
        )
        .bind(msg.channel.as_str())
        .bind(msg.sender_id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let identity_id = get_str(&identity, "id")?;
        let identity_customer = get_opt_str(&identity, "customer_id")?;

        // The conversation for this thread; a new customer message reopens a resolved one.
        let conversation_id = new_id("cnv");
        sqlx::query(
            "INSERT INTO conversations (id, channel, thread_key, identity_id, customer_id, status, subject, created_at, updated_at, last_message_at) \
             VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $7, $7) \
             ON CONFLICT (channel, thread_key) DO UPDATE SET \
               customer_id = COALESCE(conversations.customer_id, excluded.customer_id), \
               status = CASE WHEN conversations.status IN ('resolved', 'awaiting_customer') THEN 'open' ELSE conversations.status END, \
               resolved_at = CASE WHEN conversations.status = 'resolved' THEN NULL ELSE conversations.resolved_at END, \
               updated_at = excluded.updated_at, last_message_at = excluded.last_message_at",
        )
        .bind(conversation_id.as_str())
        .bind(msg.channel.as_str())
        .bind(msg.thread_key.as_str())
        .bind(identity_id.as_str())
        .bind(identity_customer.as_deref())
        .bind(msg.subject.as_deref())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let lock = match self.backend {
            Backend::Postgres => {
                "SELECT id FROM conversations WHERE channel = $1 AND thread_key = $2 FOR UPDATE"
            }
            Backend::Sqlite => {
                "SELECT id FROM conversations WHERE channel = $1 AND thread_key = $2"
            }
        };
        let conv = sqlx::query(lock)
            .bind(msg.channel.as_str())
            .bind(msg.thread_key.as_str())
            .fetch_one(&mut *tx)
            .await?;
        let conversation_id = get_str(&conv, "id")?;

        let message_id = new_id("msg");
        insert_message(
            &mut tx,
            &message_id,
            &conversation_id,
            &msg.channel,
            msg.external_id.as_deref(),
            Direction::Inbound,
            msg.author_kind,
            Some(identity_id.as_str()),
            &msg.text,
            msg.html.as_deref(),
            &msg.attachments,
            &msg.meta,
            None,
            now,
        )
        .await?;
        let job_id = match job {
            Some(job) => Some(
                insert_job(
                    &mut tx,
                    job.kind,
                    &turn_payload(&conversation_id, &message_id),
                    Some(&format!("{}:{message_id}", job.kind)),
                    job.max_attempts,
                )
                .await?,
            ),
            None => None,
        };
        tx.commit().await?;
        Ok(IngestOutcome {
            conversation_id,
            message_id,
            identity_id,
            duplicate: false,
            job_id,
        })
    }

    /// Adds a message Concierge produced (a reply, a note) to a conversation.
    pub async fn append_message(
        &self,
        conversation_id: &str,
        msg: &NewMessage,
    ) -> StoreResult<Message> {
        self.append_outbound(conversation_id, msg, None, None).await
    }

    /// Adds a message Concierge produced, in one transaction with what it needs: `in_reply_to`
    /// names the inbound message it answers (one answer per message: a second one is refused as
    /// a unique violation), `delivery` puts it in the outbox with the job that sends it.
    pub async fn append_outbound(
        &self,
        conversation_id: &str,
        msg: &NewMessage,
        in_reply_to: Option<&str>,
        delivery: Option<&NewDelivery>,
    ) -> StoreResult<Message> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let conv = sqlx::query("SELECT channel FROM conversations WHERE id = $1")
            .bind(conversation_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("no conversation {conversation_id}")))?;
        let channel = get_str(&conv, "channel")?;
        let id = new_id("msg");
        let seq = insert_message(
            &mut tx,
            &id,
            conversation_id,
            &channel,
            None,
            msg.direction,
            msg.author_kind,
            msg.author_id.as_deref(),
            &msg.text,
            msg.html.as_deref(),
            &Value::Array(Vec::new()),
            &msg.meta,
            in_reply_to,
            now,
        )
        .await?;
        if let Some(d) = delivery {
            insert_delivery(&mut tx, &id, conversation_id, d).await?;
        }
        if msg.author_kind == AuthorKind::Staff && msg.direction == Direction::Outbound {
            // A person has replied: the conversation is theirs until resolved or handed back.
            sqlx::query("UPDATE conversations SET with_staff = 1 WHERE id = $1")
                .bind(conversation_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Message {
            id,
            conversation_id: conversation_id.to_string(),
            seq,
            channel,
            external_id: None,
            direction: msg.direction,
            author_kind: msg.author_kind,
            author_id: msg.author_id.clone(),
            text: msg.text.clone(),
            html: msg.html.clone(),
            attachments: Value::Array(Vec::new()),
            meta: msg.meta.clone(),
            created_at: now,
        })
    }

    pub async fn get_conversation(&self, id: &str) -> StoreResult<Option<Conversation>> {
        let row = sqlx::query("SELECT * FROM conversations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(conversation_from_row).transpose()
    }

    /// A conversation and all its messages in order.
    pub async fn conversation_view(&self, id: &str) -> StoreResult<Option<ConversationView>> {
        let Some(conversation) = self.get_conversation(id).await? else {
            return Ok(None);
        };
        let messages =
            sqlx::query("SELECT * FROM messages WHERE conversation_id = $1 ORDER BY seq")
                .bind(id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(message_from_row)
                .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some(ConversationView {
            conversation,
            messages,
        }))
    }

    pub async fn set_conversation_status(
        &self,
        id: &str,
        status: ConversationStatus,
    ) -> StoreResult<()> {
        let now = now_ms();
        self.write_execute(
            sqlx::query(
                "UPDATE conversations SET status = $2, updated_at = $3, \
               escalated_at = CASE WHEN $2 = 'escalated' THEN $3 ELSE escalated_at END, \
               resolved_at = CASE WHEN $2 = 'resolved' THEN $3 ELSE NULL END, \
               with_staff = CASE WHEN $2 = 'resolved' THEN 0 ELSE with_staff END \
             WHERE id = $1",
            )
            .bind(id)
            .bind(status.as_str())
            .bind(now),
        )
        .await?;
        Ok(())
    }

    pub async fn get_identity(&self, id: &str) -> StoreResult<Option<Identity>> {
        let row = sqlx::query("SELECT * FROM identities WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Identity {
                id: get_str(&r, "id")?,
                channel: get_str(&r, "channel")?,
                external_id: get_str(&r, "external_id")?,
                customer_id: get_opt_str(&r, "customer_id")?,
                verified: get_i64(&r, "verified")? != 0,
                display_name: get_opt_str(&r, "display_name")?,
                email: get_opt_str(&r, "email")?,
                verified_at: get_opt_i64(&r, "verified_at")?,
            })
        })
        .transpose()
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_message(
    tx: &mut super::WriteTx,
    id: &str,
    conversation_id: &str,
    channel: &str,
    external_id: Option<&str>,
    direction: Direction,
    author_kind: AuthorKind,
    author_id: Option<&str>,
    text: &str,
    html: Option<&str>,
    attachments: &Value,
    meta: &Value,
    in_reply_to: Option<&str>,
    now: i64,
) -> StoreResult<i64> {
    // Touch the conversation's row first: that locks it before its last sequence number is read,
    // so two messages stored into one conversation at once (by two instances on PostgreSQL) take
    // turns here instead of both picking the same next number; SQLite takes its write lock here.
    sqlx::query("UPDATE conversations SET updated_at = $2, last_message_at = $2 WHERE id = $1")
        .bind(conversation_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    let seq_row = sqlx::query(
        "SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM messages WHERE conversation_id = $1",
    )
    .bind(conversation_id)
    .fetch_one(&mut **tx)
    .await?;
    let seq = get_i64(&seq_row, "next")?;
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, seq, channel, external_id, direction, author_kind, author_id, text, html, attachments, meta, in_reply_to, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(id)
    .bind(conversation_id)
    .bind(seq)
    .bind(channel)
    .bind(external_id)
    .bind(direction.as_str())
    .bind(author_kind.as_str())
    .bind(author_id)
    .bind(text)
    .bind(html)
    .bind(to_json(attachments))
    .bind(to_json(meta))
    .bind(in_reply_to)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(seq)
}

fn conversation_from_row(r: &AnyRow) -> StoreResult<Conversation> {
    let status = get_str(r, "status")?;
    Ok(Conversation {
        id: get_str(r, "id")?,
        channel: get_str(r, "channel")?,
        thread_key: get_str(r, "thread_key")?,
        identity_id: get_opt_str(r, "identity_id")?,
        customer_id: get_opt_str(r, "customer_id")?,
        status: ConversationStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
            what: "conversation status".into(),
            message: format!("unknown status {status:?}"),
        })?,
        assignee: get_opt_str(r, "assignee")?,
        priority: get_str(r, "priority")?,
        tags: get_json(r, "tags")?,
        subject: get_opt_str(r, "subject")?,
        created_at: get_i64(r, "created_at")?,
        updated_at: get_i64(r, "updated_at")?,
        last_message_at: get_opt_i64(r, "last_message_at")?,
        escalated_at: get_opt_i64(r, "escalated_at")?,
        resolved_at: get_opt_i64(r, "resolved_at")?,
        with_staff: get_i64(r, "with_staff")? != 0,
    })
}

pub(super) fn message_from_row(r: &AnyRow) -> StoreResult<Message> {
    let direction = get_str(r, "direction")?;
    let author = get_str(r, "author_kind")?;
    Ok(Message {
        id: get_str(r, "id")?,
        conversation_id: get_str(r, "conversation_id")?,
        seq: get_i64(r, "seq")?,
        channel: get_str(r, "channel")?,
        external_id: get_opt_str(r, "external_id")?,
        direction: Direction::parse(&direction).ok_or_else(|| StoreError::Corrupt {
            what: "message direction".into(),
            message: format!("unknown direction {direction:?}"),
        })?,
        author_kind: AuthorKind::parse(&author).ok_or_else(|| StoreError::Corrupt {
            what: "message author".into(),
            message: format!("unknown author kind {author:?}"),
        })?,
        author_id: get_opt_str(r, "author_id")?,
        text: get_str(r, "text")?,
        html: get_opt_str(r, "html")?,
        attachments: get_json(r, "attachments")?,
        meta: get_json(r, "meta")?,
        created_at: get_i64(r, "created_at")?,
    })
}

/// A hand-off to a person.
#[derive(Debug, Clone, Serialize)]
pub struct Escalation {
    pub id: String,
    pub conversation_id: String,
    /// human_requested, legal, fraud, needs_approval, low_confidence, llm_failure, out_of_scope
    pub reason: String,
    pub summary: String,
    pub draft: String,
    /// open, approved, rejected, resolved
    pub status: String,
    pub created_at: i64,
    pub resolved_at: Option<i64>,
    pub resolved_by: Option<String>,
}

impl Store {
    /// The dialogue state the brand agent keeps for a conversation (JSON).
    pub async fn conversation_state(&self, id: &str) -> StoreResult<Value> {
        let row = sqlx::query("SELECT state FROM conversations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => get_json(&r, "state"),
            None => Ok(Value::Object(Default::default())),
        }
    }

    pub async fn save_conversation_state(&self, id: &str, state: &Value) -> StoreResult<()> {
        self.write_execute(
            sqlx::query("UPDATE conversations SET state = $2 WHERE id = $1")
                .bind(id)
                .bind(to_json(state)),
        )
        .await?;
        Ok(())
    }

    /// Records that the person behind an identity proved to be this customer: the identity
    /// stays linked (a Telegram or chat user is recognized next time, until the link expires;
    /// `verified_at` is now) and the conversation is theirs. `identity_id` is None when the
    /// channel must not remember the link.
    pub async fn link_verified_customer(
        &self,
        conversation_id: &str,
        identity_id: Option<&str>,
        customer_id: &str,
    ) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        if let Some(identity) = identity_id {
            sqlx::query(
                "UPDATE identities SET customer_id = $2, verified = 1, verified_at = $3, updated_at = $3 WHERE id = $1",
            )
            .bind(identity)
            .bind(customer_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE conversations SET customer_id = $2, updated_at = $3 WHERE id = $1")
            .bind(conversation_id)
            .bind(customer_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Hands a conversation a person had back to the brand agent: it answers the shopper's next
    /// message again. Open escalations close as `handed_back`; the conversation waits for the
    /// customer. False when no person had it.
    pub async fn hand_back(&self, conversation_id: &str, staff_id: &str) -> StoreResult<bool> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE conversations SET with_staff = 0, status = 'awaiting_customer', updated_at = $2 \
             WHERE id = $1 AND with_staff = 1",
        )
        .bind(conversation_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE escalations SET status = 'handed_back', resolved_at = $2, resolved_by = $3 \
             WHERE conversation_id = $1 AND status = 'open'",
        )
        .bind(conversation_id)
        .bind(now)
        .bind(staff_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Hands a conversation to a person: records the escalation and marks the conversation
    /// escalated, in one transaction.
    pub async fn escalate(
        &self,
        conversation_id: &str,
        reason: &str,
        summary: &str,
        draft: &str,
    ) -> StoreResult<Escalation> {
        let now = now_ms();
        let id = new_id("esc");
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO escalations (id, conversation_id, reason, summary, draft, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'open', $6)",
        )
        .bind(id.as_str())
        .bind(conversation_id)
        .bind(reason)
        .bind(summary)
        .bind(draft)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE conversations SET status = 'escalated', escalated_at = $2, updated_at = $2, \
               with_staff = 1 WHERE id = $1",
        )
        .bind(conversation_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Escalation {
            id,
            conversation_id: conversation_id.to_string(),
            reason: reason.to_string(),
            summary: summary.to_string(),
            draft: draft.to_string(),
            status: "open".into(),
            created_at: now,
            resolved_at: None,
            resolved_by: None,
        })
    }

    /// A conversation's escalations, newest first.
    pub async fn escalations(&self, conversation_id: &str) -> StoreResult<Vec<Escalation>> {
        let rows = sqlx::query(
            "SELECT * FROM escalations WHERE conversation_id = $1 ORDER BY created_at DESC, id DESC",
        )
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Escalation {
                    id: get_str(r, "id")?,
                    conversation_id: get_str(r, "conversation_id")?,
                    reason: get_str(r, "reason")?,
                    summary: get_str(r, "summary")?,
                    draft: get_str(r, "draft")?,
                    status: get_str(r, "status")?,
                    created_at: get_i64(r, "created_at")?,
                    resolved_at: get_opt_i64(r, "resolved_at")?,
                    resolved_by: get_opt_str(r, "resolved_by")?,
                })
            })
            .collect()
    }

    /// The answer Concierge composed for an inbound message (the reply stored with
    /// `in_reply_to` naming it), if it has one.
    pub async fn answer_to(&self, inbound_message_id: &str) -> StoreResult<Option<Message>> {
        let row = sqlx::query("SELECT * FROM messages WHERE in_reply_to = $1")
            .bind(inbound_message_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(message_from_row).transpose()
    }

    /// The first outbound message after an inbound one: the reply it got (for answering a
    /// duplicate delivery with the original reply).
    pub async fn reply_to(&self, inbound_message_id: &str) -> StoreResult<Option<Message>> {
        let row = sqlx::query(
            "SELECT o.* FROM messages i JOIN messages o ON o.conversation_id = i.conversation_id \
             WHERE i.id = $1 AND o.seq > i.seq AND o.direction = 'outbound' \
             ORDER BY o.seq LIMIT 1",
        )
        .bind(inbound_message_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(message_from_row).transpose()
    }
}

impl Store {
    /// The conversation of a channel thread, if it exists.
    pub async fn conversation_by_thread(
        &self,
        channel: &str,
        thread_key: &str,
    ) -> StoreResult<Option<Conversation>> {
        let row = sqlx::query("SELECT * FROM conversations WHERE channel = $1 AND thread_key = $2")
            .bind(channel)
            .bind(thread_key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(conversation_from_row).transpose()
    }

    /// Messages of a conversation after a sequence number (for catching a client up).
    pub async fn messages_after(
        &self,
        conversation_id: &str,
        after_seq: i64,
    ) -> StoreResult<Vec<Message>> {
        sqlx::query("SELECT * FROM messages WHERE conversation_id = $1 AND seq > $2 ORDER BY seq")
            .bind(conversation_id)
            .bind(after_seq)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(message_from_row)
            .collect()
    }
}

impl Store {
    /// A message by its channel id.
    pub async fn message_by_external_id(
        &self,
        channel: &str,
        external_id: &str,
    ) -> StoreResult<Option<Message>> {
        let row = sqlx::query("SELECT * FROM messages WHERE channel = $1 AND external_id = $2")
            .bind(channel)
            .bind(external_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(message_from_row).transpose()
    }
}

impl Store {
    pub async fn message_by_id(&self, id: &str) -> StoreResult<Option<Message>> {
        let row = sqlx::query("SELECT * FROM messages WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(message_from_row).transpose()
    }
}

impl Store {
    /// Messages stored at or after `since_ms`, oldest first, at most `limit` (for catching up
    /// live events another instance published while this one was not listening).
    pub async fn messages_stored_since(
        &self,
        since_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<Message>> {
        sqlx::query("SELECT * FROM messages WHERE created_at >= $1 ORDER BY created_at LIMIT $2")
            .bind(since_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(message_from_row)
            .collect()
    }

    /// Conversations changed at or after `since_ms`, oldest change first, at most `limit`.
    pub async fn conversations_changed_since(
        &self,
        since_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<Conversation>> {
        sqlx::query(
            "SELECT * FROM conversations WHERE updated_at >= $1 ORDER BY updated_at LIMIT $2",
        )
        .bind(since_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(conversation_from_row)
        .collect()
    }
}
