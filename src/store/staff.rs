//! Staff inbox rows: staff accounts, sign-in sessions (stored by the hash of their token), private
//! notes, and the queries behind the queue and the escalation
//! list. Business rules (who may do what, when a sign-in is refused) live in `crate::web`.

use serde::Serialize;
use sqlx::any::AnyRow;

use super::{
    Escalation, Identity, Store, StoreError, StoreResult, get_i64, get_json, get_opt_i64,
    get_opt_str, get_str, to_json,
};
use crate::util::{new_id, now_ms};

/// A person who signs in to the inbox.
#[derive(Debug, Clone, Serialize)]
pub struct StaffMember {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    /// "admin" or "agent".
    pub role: String,
    pub active: bool,
    pub created_at: i64,
}

impl StaffMember {
    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }

    /// The name to show: the name when set, else the email.
    pub fn display(&self) -> &str {
        self.name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(&self.email)
    }
}

/// A live session, as found by its token hash.
#[derive(Debug, Clone)]
pub struct StaffSession {
    pub token_hash: String,
    pub csrf_token: String,
    pub flash: Option<String>,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub staff: StaffMember,
}

#[derive(Debug, Clone, Serialize)]
pub struct StaffNote {
    pub id: String,
    pub conversation_id: String,
    pub staff_id: Option<String>,
    pub staff_email: Option<String>,
    pub text: String,
    pub created_at: i64,
}

/// What the queue is narrowed to. Empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    pub status: Option<String>,
    pub channel: Option<String>,
    /// Some(None) = unassigned; Some(Some(id)) = assigned to that staff member.
    pub assignee: Option<Option<String>>,
    /// Only conversations with an open escalation.
    pub escalated: bool,
    /// Only these conversations (the message search's hits).
    pub ids: Option<Vec<String>>,
}

/// One line of the queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueRow {
    pub id: String,
    pub channel: String,
    pub status: String,
    pub assignee: Option<String>,
    pub assignee_email: Option<String>,
    pub tags: Vec<String>,
    pub subject: Option<String>,
    pub customer_name: Option<String>,
    pub sender: Option<String>,
    pub last_text: Option<String>,
    pub last_author: Option<String>,
    pub open_escalation: Option<String>,
    pub updated_at: i64,
    pub escalated_at: Option<i64>,
}

/// An open escalation with what the escalation list shows about its conversation.
#[derive(Debug, Clone, Serialize)]
pub struct OpenEscalation {
    pub id: String,
    pub conversation_id: String,
    pub reason: String,
    pub summary: String,
    pub created_at: i64,
    pub channel: String,
    pub subject: Option<String>,
    pub assignee_email: Option<String>,
    pub customer_name: Option<String>,
    pub sender: Option<String>,
}

const STAFF_COLUMNS: &str = "s.id, s.email, s.name, s.role, s.active, s.created_at";

fn staff_from_row(r: &AnyRow) -> StoreResult<StaffMember> {
    Ok(StaffMember {
        id: get_str(r, "id")?,
        email: get_str(r, "email")?,
        name: get_opt_str(r, "name")?,
        role: get_str(r, "role")?,
        active: get_i64(r, "active")? != 0,
        created_at: get_i64(r, "created_at")?,
    })
}

fn customer_name(r: &AnyRow) -> StoreResult<Option<String>> {
    let first = get_opt_str(r, "first_name")?.unwrap_or_default();
    let last = get_opt_str(r, "last_name")?.unwrap_or_default();
    let name = format!("{first} {last}").trim().to_string();
    Ok((!name.is_empty()).then_some(name))
}

fn sender(r: &AnyRow) -> StoreResult<Option<String>> {
    Ok(get_opt_str(r, "display_name")?
        .filter(|s| !s.trim().is_empty())
        .or(get_opt_str(r, "identity_email")?)
        .or(get_opt_str(r, "sender_id")?))
}

impl Store {
    /// Adds a staff member; a taken email is a [`StoreError::Conflict`] naming it.
    pub async fn create_staff(
        &self,
        email: &str,
        name: Option<&str>,
        role: &str,
        password_hash: &str,
    ) -> StoreResult<StaffMember> {
        let now = now_ms();
        let id = new_id("stf");
        let email = email.trim().to_lowercase();
        let res = self.write_execute(sqlx::query(
            "INSERT INTO staff (id, email, name, role, password_hash, active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 1, $6, $6)",
        )
        .bind(id.as_str())
        .bind(email.as_str())
        .bind(name)
        .bind(role)
        .bind(password_hash)
        .bind(now)
        )
        .await;
        match res {
            Ok(_) => {}
            Err(e) => {
                if e.is_unique_violation() {
                    return Err(StoreError::Conflict(format!(
                        "a staff member with the email {email} already exists"
                    )));
                }
                return Err(e);
            }
        }
        Ok(StaffMember {
            id,
            email,
            name: name.map(str::to_string),
            role: role.to_string(),
            active: true,
            created_at: now,
        })
    }

    /// A staff member and their password hash, by email (any case).
    pub async fn staff_login(&self, email: &str) -> StoreResult<Option<(StaffMember, String)>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STAFF_COLUMNS}, s.password_hash FROM staff s WHERE s.email = $1"
        )))
        .bind(email.trim().to_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((staff_from_row(&r)?, get_str(&r, "password_hash")?)))
            .transpose()
    }

    pub async fn get_staff(&self, id: &str) -> StoreResult<Option<StaffMember>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STAFF_COLUMNS} FROM staff s WHERE s.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(staff_from_row).transpose()
    }

    pub async fn list_staff(&self) -> StoreResult<Vec<StaffMember>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STAFF_COLUMNS} FROM staff s ORDER BY s.email"
        )))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(staff_from_row)
        .collect()
    }

    /// Sets a new password and ends every session of the account (whoever knew the old
    /// password is signed out).
    pub async fn set_staff_password(&self, id: &str, password_hash: &str) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("UPDATE staff SET password_hash = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(password_hash)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM staff_sessions WHERE staff_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    pub async fn set_staff_role(&self, id: &str, role: &str) -> StoreResult<bool> {
        let n = self
            .write_execute(
                sqlx::query("UPDATE staff SET role = $2, updated_at = $3 WHERE id = $1")
                    .bind(id)
                    .bind(role)
                    .bind(now_ms()),
            )
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Enables or disables a staff member; disabling also ends their sessions.
    pub async fn set_staff_active(&self, id: &str, active: bool) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("UPDATE staff SET active = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(i64::from(active))
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if !active {
            sqlx::query("DELETE FROM staff_sessions WHERE staff_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Active admins (the last one may not be disabled or demoted).
    pub async fn count_active_admins(&self) -> StoreResult<i64> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM staff WHERE role = 'admin' AND active = 1")
                .fetch_one(&self.pool)
                .await?;
        get_i64(&row, "n")
    }

    pub async fn create_staff_session(
        &self,
        token_hash: &str,
        staff_id: &str,
        csrf_token: &str,
        expires_at: i64,
    ) -> StoreResult<()> {
        let now = now_ms();
        self.write_execute(sqlx::query(
            "INSERT INTO staff_sessions (token_hash, staff_id, csrf_token, created_at, last_seen_at, expires_at) \
             VALUES ($1, $2, $3, $4, $4, $5)",
        )
        .bind(token_hash)
        .bind(staff_id)
        .bind(csrf_token)
        .bind(now)
        .bind(expires_at)
        )
        .await?;
        // Expired sessions of anyone are dropped on the way.
        self.write_execute(
            sqlx::query("DELETE FROM staff_sessions WHERE expires_at < $1").bind(now),
        )
        .await?;
        Ok(())
    }

    /// The unexpired session of an active staff member with this token hash.
    pub async fn staff_session(&self, token_hash: &str) -> StoreResult<Option<StaffSession>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STAFF_COLUMNS}, x.token_hash, x.csrf_token, x.flash, x.last_seen_at, x.expires_at \
             FROM staff_sessions x JOIN staff s ON s.id = x.staff_id \
             WHERE x.token_hash = $1 AND x.expires_at > $2 AND s.active = 1"
        )))
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(StaffSession {
                token_hash: get_str(&r, "token_hash")?,
                csrf_token: get_str(&r, "csrf_token")?,
                flash: get_opt_str(&r, "flash")?,
                last_seen_at: get_i64(&r, "last_seen_at")?,
                expires_at: get_i64(&r, "expires_at")?,
                staff: staff_from_row(&r)?,
            })
        })
        .transpose()
    }

    /// Slides a session's expiry forward.
    pub async fn touch_staff_session(&self, token_hash: &str, expires_at: i64) -> StoreResult<()> {
        self.write_execute(sqlx::query(
            "UPDATE staff_sessions SET last_seen_at = $2, expires_at = $3 WHERE token_hash = $1",
        )
        .bind(token_hash)
        .bind(now_ms())
        .bind(expires_at)
        )
        .await?;
        Ok(())
    }

    pub async fn delete_staff_session(&self, token_hash: &str) -> StoreResult<()> {
        self.write_execute(
            sqlx::query("DELETE FROM staff_sessions WHERE token_hash = $1").bind(token_hash),
        )
        .await?;
        Ok(())
    }

    /// Sets (Some) or clears (None) the session's one-time notice.
    pub async fn set_session_flash(
        &self,
        token_hash: &str,
        flash: Option<&str>,
    ) -> StoreResult<()> {
        self.write_execute(
            sqlx::query("UPDATE staff_sessions SET flash = $2 WHERE token_hash = $1")
                .bind(token_hash)
                .bind(flash),
        )
        .await?;
        Ok(())
    }

    pub async fn add_staff_note(
        &self,
        conversation_id: &str,
        staff_id: &str,
        text: &str,
    ) -> StoreResult<StaffNote> {
        let now = now_ms();
        let id = new_id("note");
        self.write_execute(sqlx::query(
            "INSERT INTO staff_notes (id, conversation_id, staff_id, text, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.as_str())
        .bind(conversation_id)
        .bind(staff_id)
        .bind(text)
        .bind(now)
        )
        .await?;
        Ok(StaffNote {
            id,
            conversation_id: conversation_id.to_string(),
            staff_id: Some(staff_id.to_string()),
            staff_email: None,
            text: text.to_string(),
            created_at: now,
        })
    }

    pub async fn staff_notes(&self, conversation_id: &str) -> StoreResult<Vec<StaffNote>> {
        sqlx::query(
            "SELECT n.id, n.conversation_id, n.staff_id, n.text, n.created_at, s.email AS staff_email \
             FROM staff_notes n LEFT JOIN staff s ON s.id = n.staff_id \
             WHERE n.conversation_id = $1 ORDER BY n.created_at, n.id",
        )
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(StaffNote {
                id: get_str(r, "id")?,
                conversation_id: get_str(r, "conversation_id")?,
                staff_id: get_opt_str(r, "staff_id")?,
                staff_email: get_opt_str(r, "staff_email")?,
                text: get_str(r, "text")?,
                created_at: get_i64(r, "created_at")?,
            })
        })
        .collect()
    }

    /// Assigns a conversation (None = nobody).
    pub async fn set_assignee(
        &self,
        conversation_id: &str,
        staff_id: Option<&str>,
    ) -> StoreResult<()> {
        self.write_execute(
            sqlx::query("UPDATE conversations SET assignee = $2, updated_at = $3 WHERE id = $1")
                .bind(conversation_id)
                .bind(staff_id)
                .bind(now_ms()),
        )
        .await?;
        Ok(())
    }

    pub async fn set_tags(&self, conversation_id: &str, tags: &[String]) -> StoreResult<()> {
        self.write_execute(
            sqlx::query("UPDATE conversations SET tags = $2, updated_at = $3 WHERE id = $1")
                .bind(conversation_id)
                .bind(to_json(&tags))
                .bind(now_ms()),
        )
        .await?;
        Ok(())
    }

    /// Closes an open escalation as "approved", "rejected" or "resolved" by a staff member.
    /// False when it was not open (someone else got there first).
    pub async fn close_escalation(
        &self,
        escalation_id: &str,
        status: &str,
        staff_id: &str,
    ) -> StoreResult<bool> {
        let n = self
            .write_execute(
                sqlx::query(
                    "UPDATE escalations SET status = $2, resolved_at = $3, resolved_by = $4 \
             WHERE id = $1 AND status = 'open'",
                )
                .bind(escalation_id)
                .bind(status)
                .bind(now_ms())
                .bind(staff_id),
            )
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Closes every open escalation of a conversation (a staff reply or resolve handles them).
    pub async fn close_open_escalations(
        &self,
        conversation_id: &str,
        status: &str,
        staff_id: &str,
    ) -> StoreResult<u64> {
        Ok(self
            .write_execute(
                sqlx::query(
                    "UPDATE escalations SET status = $2, resolved_at = $3, resolved_by = $4 \
             WHERE conversation_id = $1 AND status = 'open'",
                )
                .bind(conversation_id)
                .bind(status)
                .bind(now_ms())
                .bind(staff_id),
            )
            .await?
            .rows_affected())
    }

    pub async fn get_escalation(&self, id: &str) -> StoreResult<Option<Escalation>> {
        let row = sqlx::query("SELECT conversation_id FROM escalations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let conversation = get_str(&row, "conversation_id")?;
        Ok(self
            .escalations(&conversation)
            .await?
            .into_iter()
            .find(|e| e.id == id))
    }

    /// Every identity linked to a customer (how they reached the brand, and whether verified).
    pub async fn customer_identities(&self, customer_id: &str) -> StoreResult<Vec<Identity>> {
        sqlx::query("SELECT * FROM identities WHERE customer_id = $1 ORDER BY channel, external_id")
            .bind(customer_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(Identity {
                    id: get_str(r, "id")?,
                    channel: get_str(r, "channel")?,
                    external_id: get_str(r, "external_id")?,
                    customer_id: get_opt_str(r, "customer_id")?,
                    verified: get_i64(r, "verified")? != 0,
                    display_name: get_opt_str(r, "display_name")?,
                    email: get_opt_str(r, "email")?,
                    verified_at: super::get_opt_i64(r, "verified_at")?,
                })
            })
            .collect()
    }

    /// The customer's other conversations (any channel), newest first.
    pub async fn customer_conversation_ids(
        &self,
        customer_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<(String, String, String, i64)>> {
        sqlx::query(
            "SELECT id, channel, status, updated_at FROM conversations WHERE customer_id = $1 \
             ORDER BY updated_at DESC LIMIT $2",
        )
        .bind(customer_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                get_str(r, "id")?,
                get_str(r, "channel")?,
                get_str(r, "status")?,
                get_i64(r, "updated_at")?,
            ))
        })
        .collect()
    }

    /// One page of the queue, newest activity first, and how many conversations match in all.
    pub async fn queue(
        &self,
        filter: &QueueFilter,
        offset: i64,
        limit: i64,
    ) -> StoreResult<(Vec<QueueRow>, i64)> {
        let mut clauses: Vec<String> = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let param = |binds: &mut Vec<String>, v: &str| {
            binds.push(v.to_string());
            format!("${}", binds.len())
        };
        if let Some(s) = &filter.status {
            let p = param(&mut binds, s);
            clauses.push(format!("c.status = {p}"));
        }
        if let Some(ch) = &filter.channel {
            let p = param(&mut binds, ch);
            clauses.push(format!("c.channel = {p}"));
        }
        match &filter.assignee {
            Some(Some(id)) => {
                let p = param(&mut binds, id);
                clauses.push(format!("c.assignee = {p}"));
            }
            Some(None) => clauses.push("c.assignee IS NULL".into()),
            None => {}
        }
        // `e.status || ''` keeps SQLite on the per-conversation index (escalations_conversation):
        // on the status index it would scan every open escalation for each conversation.
        if filter.escalated {
            clauses.push(
                "EXISTS (SELECT 1 FROM escalations e WHERE e.conversation_id = c.id AND e.status || '' = 'open')"
                    .into(),
            );
        }
        if let Some(ids) = &filter.ids {
            if ids.is_empty() {
                return Ok((Vec::new(), 0));
            }
            let ps: Vec<String> = ids.iter().map(|id| param(&mut binds, id)).collect();
            clauses.push(format!("c.id IN ({})", ps.join(", ")));
        }
        let where_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };

        let count_sql = format!("SELECT COUNT(*) AS n FROM conversations c {where_sql}");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(count_sql));
        for b in &binds {
            q = q.bind(b.as_str());
        }
        let total = get_i64(&q.fetch_one(&self.pool).await?, "n")?;

        let n = binds.len();
        let sql = format!(
            "SELECT c.id, c.channel, c.status, c.assignee, c.tags, c.subject, c.updated_at, c.escalated_at, \
               s.email AS assignee_email, cu.first_name, cu.last_name, \
               i.display_name, i.email AS identity_email, i.external_id AS sender_id, \
               (SELECT m.text FROM messages m WHERE m.conversation_id = c.id ORDER BY m.seq DESC LIMIT 1) AS last_text, \
               (SELECT m.author_kind FROM messages m WHERE m.conversation_id = c.id ORDER BY m.seq DESC LIMIT 1) AS last_author, \
               (SELECT e.reason FROM escalations e WHERE e.conversation_id = c.id AND e.status || '' = 'open' \
                  ORDER BY e.created_at DESC LIMIT 1) AS open_escalation \
             FROM conversations c \
             LEFT JOIN staff s ON s.id = c.assignee \
             LEFT JOIN customers cu ON cu.id = c.customer_id \
             LEFT JOIN identities i ON i.id = c.identity_id \
             {where_sql} ORDER BY c.updated_at DESC, c.id DESC LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in &binds {
            q = q.bind(b.as_str());
        }
        let rows = q.bind(limit).bind(offset).fetch_all(&self.pool).await?;
        let rows = rows
            .iter()
            .map(|r| {
                Ok(QueueRow {
                    id: get_str(r, "id")?,
                    channel: get_str(r, "channel")?,
                    status: get_str(r, "status")?,
                    assignee: get_opt_str(r, "assignee")?,
                    assignee_email: get_opt_str(r, "assignee_email")?,
                    tags: get_json(r, "tags")?,
                    subject: get_opt_str(r, "subject")?,
                    customer_name: customer_name(r)?,
                    sender: sender(r)?,
                    last_text: get_opt_str(r, "last_text")?,
                    last_author: get_opt_str(r, "last_author")?,
                    open_escalation: get_opt_str(r, "open_escalation")?,
                    updated_at: get_i64(r, "updated_at")?,
                    escalated_at: get_opt_i64(r, "escalated_at")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((rows, total))
    }

    /// Open escalations, oldest first (the longest wait on top).
    pub async fn open_escalations(&self, limit: i64) -> StoreResult<Vec<OpenEscalation>> {
        sqlx::query(
            "SELECT e.id, e.conversation_id, e.reason, e.summary, e.created_at, c.channel, c.subject, \
               s.email AS assignee_email, cu.first_name, cu.last_name, \
               i.display_name, i.email AS identity_email, i.external_id AS sender_id \
             FROM escalations e JOIN conversations c ON c.id = e.conversation_id \
             LEFT JOIN staff s ON s.id = c.assignee \
             LEFT JOIN customers cu ON cu.id = c.customer_id \
             LEFT JOIN identities i ON i.id = c.identity_id \
             WHERE e.status = 'open' ORDER BY e.created_at, e.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(OpenEscalation {
                id: get_str(r, "id")?,
                conversation_id: get_str(r, "conversation_id")?,
                reason: get_str(r, "reason")?,
                summary: get_str(r, "summary")?,
                created_at: get_i64(r, "created_at")?,
                channel: get_str(r, "channel")?,
                subject: get_opt_str(r, "subject")?,
                assignee_email: get_opt_str(r, "assignee_email")?,
                customer_name: customer_name(r)?,
                sender: sender(r)?,
            })
        })
        .collect()
    }

    pub async fn count_open_escalations(&self) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM escalations WHERE status = 'open'")
            .fetch_one(&self.pool)
            .await?;
        get_i64(&row, "n")
    }

    /// The channels conversations exist on (for the queue's filter).
    pub async fn conversation_channels(&self) -> StoreResult<Vec<String>> {
        sqlx::query("SELECT DISTINCT channel FROM conversations ORDER BY channel")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| get_str(r, "channel"))
            .collect()
    }

    /// Messages after the key (`created_at`, `id`) in that order, at most `limit`: what the
    /// inbox's message search indexes next.
    pub async fn messages_since(
        &self,
        after_at: i64,
        after_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<(String, String, String, i64)>> {
        sqlx::query(
            "SELECT id, conversation_id, text, created_at FROM messages \
             WHERE (created_at, id) > ($1, $2) \
             ORDER BY created_at, id LIMIT $3",
        )
        .bind(after_at)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                get_str(r, "id")?,
                get_str(r, "conversation_id")?,
                get_str(r, "text")?,
                get_i64(r, "created_at")?,
            ))
        })
        .collect()
    }

    /// Fills an empty database with `conversations` synthetic conversations (a customer
    /// question, the agent's answer and a follow-up each; every tenth escalated) and one more
    /// with `long_messages` messages; returns that long conversation's id. For the inbox
    /// benchmark: one transaction, no channel or agent involved.
    pub async fn seed_inbox_for_bench(
        &self,
        conversations: usize,
        long_messages: usize,
    ) -> StoreResult<String> {
        const CHANNELS: [&str; 5] = ["api", "email", "webchat", "telegram", "a2a"];
        const WORDS: [&str; 8] = [
            "parcel", "refund", "lamp", "kettle", "address", "invoice", "exchange", "delivery",
        ];
        let base = now_ms() - (conversations as i64 + long_messages as i64) * 1_000;
        let mut tx = self.begin_write().await?;
        let mut long_id = String::new();
        for i in 0..=conversations {
            let long = i == conversations;
            let channel = CHANNELS[i % CHANNELS.len()];
            let at = base + i as i64 * 1_000;
            let identity = new_id("idt");
            let conv = new_id("cnv");
            sqlx::query(
                "INSERT INTO identities (id, channel, external_id, verified, display_name, email, created_at, updated_at) \
                 VALUES ($1, $2, $3, 0, $4, $5, $6, $6)",
            )
            .bind(identity.as_str())
            .bind(channel)
            .bind(format!("bench-{i}"))
            .bind(format!("Shopper {i}"))
            .bind(format!("shopper{i}@example.com"))
            .bind(at)
            .execute(&mut *tx)
            .await?;
            let status = if i % 10 == 0 {
                "escalated"
            } else {
                ["open", "awaiting_customer", "resolved"][i % 3]
            };
            let word = WORDS[i % WORDS.len()];
            let n = if long { long_messages.max(1) } else { 3 };
            let last = at + n as i64;
            sqlx::query(
                "INSERT INTO conversations (id, channel, thread_key, identity_id, status, tags, created_at, updated_at, last_message_at, escalated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)",
            )
            .bind(conv.as_str())
            .bind(channel)
            .bind(format!("bench-thread-{i}"))
            .bind(identity.as_str())
            .bind(status)
            .bind(to_json(&vec![word.to_string()]))
            .bind(at)
            .bind(last)
            .bind((status == "escalated").then_some(at))
            .execute(&mut *tx)
            .await?;
            for seq in 1..=n as i64 {
                let (author, text) = match seq % 3 {
                    1 => (
                        "customer",
                        format!(
                            "Hello, a question about my {word} (#{i}-{seq}): when will it arrive? <b>thanks</b>"
                        ),
                    ),
                    2 => (
                        "brand_agent",
                        format!(
                            "Thanks for asking about your {word}. It ships within 2 business days and arrives 3 to 5 business days later."
                        ),
                    ),
                    _ => (
                        "customer",
                        format!("Great, and can I change the {word} afterwards if needed?"),
                    ),
                };
                bench_message(&mut tx, &conv, channel, seq, author, &text, at + seq).await?;
            }
            if status == "escalated" {
                sqlx::query(
                    "INSERT INTO escalations (id, conversation_id, reason, summary, draft, status, created_at) \
                     VALUES ($1, $2, 'human_requested', $3, $4, 'open', $5)",
                )
                .bind(new_id("esc"))
                .bind(conv.as_str())
                .bind(format!("Shopper {i} asked for a person about their {word}."))
                .bind(format!("Hi, thanks for your patience: about your {word}, here is what I can do."))
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            if long {
                long_id = conv;
            }
        }
        tx.commit().await?;
        Ok(long_id)
    }
}

async fn bench_message(
    tx: &mut super::WriteTx,
    conv: &str,
    channel: &str,
    seq: i64,
    author: &str,
    text: &str,
    at: i64,
) -> StoreResult<()> {
    let direction = if author == "brand_agent" || author == "staff" {
        "outbound"
    } else {
        "inbound"
    };
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, seq, channel, direction, author_kind, text, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(new_id("msg"))
    .bind(conv)
    .bind(seq)
    .bind(channel)
    .bind(direction)
    .bind(author)
    .bind(text)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
