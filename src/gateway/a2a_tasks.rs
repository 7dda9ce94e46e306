//! A2A's data model as Concierge keeps it — messages, parts, tasks and artifacts — with the
//! two wire dialects (1.0: `{"text": …}` parts, `ROLE_USER`, `TASK_STATE_COMPLETED`; 0.3: `kind`
//! fields, `user`, `completed`), and the persistence of tasks and contexts (tables `a2a_tasks`,
//! `a2a_contexts`, and `a2a_public_contexts` for the contexts minted for unsigned callers). Stored JSON is the 1.0 form; [`parse_message`] reads either dialect.

use base64::Engine;
use serde_json::{Map, Value, json};
use sqlx::Row;

use crate::store::{Store, StoreResult};

/// Which shapes a request gets back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    V1,
    V03,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Agent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Data(Value),
    Url {
        url: String,
        media_type: Option<String>,
        filename: Option<String>,
    },
    Raw {
        base64: String,
        media_type: Option<String>,
        filename: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub message_id: String,
    pub role: Role,
    pub parts: Vec<Part>,
    pub context_id: Option<String>,
    pub task_id: Option<String>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub artifact_id: String,
    pub name: String,
    pub parts: Vec<Part>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Submitted,
    Working,
    InputRequired,
    AuthRequired,
    Completed,
    Canceled,
    Failed,
    Rejected,
}

const STATES: [TaskState; 8] = [
    TaskState::Submitted,
    TaskState::Working,
    TaskState::InputRequired,
    TaskState::AuthRequired,
    TaskState::Completed,
    TaskState::Canceled,
    TaskState::Failed,
    TaskState::Rejected,
];

impl TaskState {
    /// The stored name, such as "input_required".
    pub fn db(self) -> &'static str {
        match self {
            TaskState::Submitted => "submitted",
            TaskState::Working => "working",
            TaskState::InputRequired => "input_required",
            TaskState::AuthRequired => "auth_required",
            TaskState::Completed => "completed",
            TaskState::Canceled => "canceled",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
        }
    }

    pub fn wire(self, d: Dialect) -> String {
        match d {
            Dialect::V1 => format!("TASK_STATE_{}", self.db().to_uppercase()),
            Dialect::V03 => self.db().replace('_', "-"),
        }
    }

    /// Reads a state in any of its spellings ("TASK_STATE_INPUT_REQUIRED", "input-required",
    /// "input_required").
    pub fn parse(s: &str) -> Option<TaskState> {
        let s = s.trim().to_ascii_lowercase();
        let s = s
            .strip_prefix("task_state_")
            .unwrap_or(&s)
            .replace('-', "_");
        STATES.into_iter().find(|t| t.db() == s)
    }

    /// Completed, canceled, failed and rejected tasks take no more messages.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Canceled | TaskState::Failed | TaskState::Rejected
        )
    }
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub scope: String,
    pub context_id: String,
    pub message_id: String,
    pub state: TaskState,
    pub status_message: Option<Message>,
    pub history: Vec<Message>,
    pub artifacts: Vec<Artifact>,
    pub conversation_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A request's message, or why it cannot be read (the field path and what is wrong).
pub fn parse_message(v: &Value) -> Result<Message, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| "message: must be an object".to_string())?;
    let message_id = match obj.get("messageId") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= 256 => s.clone(),
        Some(Value::String(_)) => {
            return Err("message.messageId: must be 1 to 256 characters".into());
        }
        Some(_) => return Err("message.messageId: must be a string".into()),
        None => return Err("message.messageId: is required".into()),
    };
    let role = match obj.get("role").and_then(Value::as_str) {
        Some("ROLE_USER" | "user") => Role::User,
        Some("ROLE_AGENT" | "agent") => Role::Agent,
        Some(other) => {
            return Err(format!(
                "message.role: {other:?} is not ROLE_USER or ROLE_AGENT"
            ));
        }
        None => return Err("message.role: is required (ROLE_USER)".into()),
    };
    let parts_v = match obj.get("parts") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err("message.parts: must not be empty".into()),
        Some(_) => return Err("message.parts: must be an array".into()),
        None => return Err("message.parts: is required".into()),
    };
    let mut parts = Vec::with_capacity(parts_v.len());
    for (i, p) in parts_v.iter().enumerate() {
        parts.push(parse_part(p).map_err(|e| format!("message.parts[{i}]{e}"))?);
    }
    let opt_str = |key: &str| -> Result<Option<String>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) if s.chars().count() <= 128 => Ok(Some(s.clone())),
            Some(Value::String(_)) => Err(format!("message.{key}: is longer than 128 characters")),
            Some(_) => Err(format!("message.{key}: must be a string")),
        }
    };
    Ok(Message {
        message_id,
        role,
        parts,
        context_id: opt_str("contextId")?,
        task_id: opt_str("taskId")?,
        metadata: obj.get("metadata").filter(|m| m.is_object()).cloned(),
    })
}

fn parse_part(p: &Value) -> Result<Part, String> {
    let obj = p.as_object().ok_or(": must be an object")?;
    let media_type = obj
        .get("mediaType")
        .or_else(|| obj.get("mimeType"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let filename = obj
        .get("filename")
        .or_else(|| obj.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(t) = obj.get("text") {
        return t
            .as_str()
            .map(|s| Part::Text(s.to_string()))
            .ok_or_else(|| ".text: must be a string".to_string());
    }
    if let Some(d) = obj.get("data") {
        return Ok(Part::Data(d.clone()));
    }
    if let Some(u) = obj.get("url").and_then(Value::as_str) {
        return Ok(Part::Url {
            url: u.to_string(),
            media_type,
            filename,
        });
    }
    if let Some(r) = obj.get("raw").and_then(Value::as_str) {
        return Ok(Part::Raw {
            base64: r.to_string(),
            media_type,
            filename,
        });
    }
    // 0.3: {"kind": "file", "file": {"uri" | "bytes", "mimeType", "name"}}
    if let Some(f) = obj.get("file").and_then(Value::as_object) {
        let media_type = f
            .get("mimeType")
            .and_then(Value::as_str)
            .map(str::to_string);
        let filename = f.get("name").and_then(Value::as_str).map(str::to_string);
        if let Some(u) = f.get("uri").and_then(Value::as_str) {
            return Ok(Part::Url {
                url: u.to_string(),
                media_type,
                filename,
            });
        }
        if let Some(b) = f.get("bytes").and_then(Value::as_str) {
            return Ok(Part::Raw {
                base64: b.to_string(),
                media_type,
                filename,
            });
        }
    }
    Err(": must have one of text, data, url or raw".into())
}

pub fn part_json(p: &Part, d: Dialect) -> Value {
    let mut v = match (p, d) {
        (Part::Text(t), Dialect::V1) => json!({ "text": t }),
        (Part::Text(t), Dialect::V03) => json!({ "kind": "text", "text": t }),
        (Part::Data(x), Dialect::V1) => json!({ "data": x, "mediaType": "application/json" }),
        (Part::Data(x), Dialect::V03) => json!({ "kind": "data", "data": x }),
        (
            Part::Url {
                url,
                media_type,
                filename,
            },
            Dialect::V1,
        ) => file_v1("url", url, media_type, filename),
        (
            Part::Raw {
                base64,
                media_type,
                filename,
            },
            Dialect::V1,
        ) => file_v1("raw", base64, media_type, filename),
        (
            Part::Url {
                url,
                media_type,
                filename,
            },
            Dialect::V03,
        ) => file_v03("uri", url, media_type, filename),
        (
            Part::Raw {
                base64,
                media_type,
                filename,
            },
            Dialect::V03,
        ) => file_v03("bytes", base64, media_type, filename),
    };
    if let Value::Object(m) = &mut v {
        m.retain(|_, x| !x.is_null());
    }
    v
}

fn file_v1(key: &str, val: &str, media_type: &Option<String>, filename: &Option<String>) -> Value {
    json!({ key: val, "mediaType": media_type, "filename": filename })
}

fn file_v03(key: &str, val: &str, media_type: &Option<String>, filename: &Option<String>) -> Value {
    let mut file = json!({ key: val, "mimeType": media_type, "name": filename });
    if let Value::Object(m) = &mut file {
        m.retain(|_, x| !x.is_null());
    }
    json!({ "kind": "file", "file": file })
}

pub fn message_json(m: &Message, d: Dialect) -> Value {
    let mut o = Map::new();
    if d == Dialect::V03 {
        o.insert("kind".into(), json!("message"));
    }
    o.insert("messageId".into(), json!(m.message_id));
    let role = match (m.role, d) {
        (Role::User, Dialect::V1) => "ROLE_USER",
        (Role::Agent, Dialect::V1) => "ROLE_AGENT",
        (Role::User, Dialect::V03) => "user",
        (Role::Agent, Dialect::V03) => "agent",
    };
    o.insert("role".into(), json!(role));
    o.insert(
        "parts".into(),
        Value::Array(m.parts.iter().map(|p| part_json(p, d)).collect()),
    );
    if let Some(c) = &m.context_id {
        o.insert("contextId".into(), json!(c));
    }
    if let Some(t) = &m.task_id {
        o.insert("taskId".into(), json!(t));
    }
    if let Some(md) = &m.metadata {
        o.insert("metadata".into(), md.clone());
    }
    Value::Object(o)
}

pub fn artifact_json(a: &Artifact, d: Dialect) -> Value {
    let mut v = json!({
        "artifactId": a.artifact_id,
        "name": a.name,
        "parts": a.parts.iter().map(|p| part_json(p, d)).collect::<Vec<_>>(),
    });
    if let Some(md) = &a.metadata {
        v["metadata"] = md.clone();
    }
    v
}

pub fn status_json(t: &Task, d: Dialect) -> Value {
    let mut s = json!({
        "state": t.state.wire(d),
        "timestamp": crate::util::rfc3339(t.updated_at),
    });
    if let Some(m) = &t.status_message {
        s["message"] = message_json(m, d);
    }
    s
}

/// The task as the wire shows it; `history_length` keeps the most recent messages (None: all).
pub fn task_json(
    t: &Task,
    d: Dialect,
    history_length: Option<usize>,
    include_artifacts: bool,
) -> Value {
    let mut o = Map::new();
    if d == Dialect::V03 {
        o.insert("kind".into(), json!("task"));
    }
    o.insert("id".into(), json!(t.id));
    o.insert("contextId".into(), json!(t.context_id));
    o.insert("status".into(), status_json(t, d));
    if include_artifacts && !t.artifacts.is_empty() {
        o.insert(
            "artifacts".into(),
            Value::Array(t.artifacts.iter().map(|a| artifact_json(a, d)).collect()),
        );
    }
    let skip = history_length.map_or(0, |n| t.history.len().saturating_sub(n));
    if history_length != Some(0) && !t.history.is_empty() {
        o.insert(
            "history".into(),
            Value::Array(
                t.history[skip..]
                    .iter()
                    .map(|m| message_json(m, d))
                    .collect(),
            ),
        );
    }
    if let Some(c) = &t.conversation_id {
        o.insert("metadata".into(), json!({ "conversationId": c }));
    }
    Value::Object(o)
}

/// A streaming status event.
pub fn status_event(t: &Task, d: Dialect) -> Value {
    match d {
        Dialect::V1 => json!({"statusUpdate": {
            "taskId": t.id, "contextId": t.context_id, "status": status_json(t, d),
        }}),
        Dialect::V03 => json!({
            "kind": "status-update", "taskId": t.id, "contextId": t.context_id,
            "status": status_json(t, d), "final": t.state.is_terminal()
                || matches!(t.state, TaskState::InputRequired | TaskState::AuthRequired),
        }),
    }
}

/// A streaming artifact event.
pub fn artifact_event(t: &Task, a: &Artifact, d: Dialect) -> Value {
    let body = json!({
        "taskId": t.id, "contextId": t.context_id, "artifact": artifact_json(a, d),
        "append": false, "lastChunk": true,
    });
    match d {
        Dialect::V1 => json!({ "artifactUpdate": body }),
        Dialect::V03 => {
            let mut b = body;
            b["kind"] = json!("artifact-update");
            b
        }
    }
}

/// Checks that a base64 payload is valid (raw parts are stored as given).
pub fn valid_base64(s: &str) -> bool {
    base64::engine::general_purpose::STANDARD.decode(s).is_ok()
}

// ---- persistence ----

fn messages_to_json(ms: &[Message]) -> String {
    Value::Array(ms.iter().map(|m| message_json(m, Dialect::V1)).collect()).to_string()
}

fn messages_from_json(s: &str) -> Vec<Message> {
    serde_json::from_str::<Vec<Value>>(s)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| parse_message(v).ok())
        .collect()
}

fn artifacts_to_json(a: &[Artifact]) -> String {
    Value::Array(a.iter().map(|x| artifact_json(x, Dialect::V1)).collect()).to_string()
}

fn artifacts_from_json(s: &str) -> Vec<Artifact> {
    serde_json::from_str::<Vec<Value>>(s)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| {
            Some(Artifact {
                artifact_id: v.get("artifactId")?.as_str()?.to_string(),
                name: v
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                parts: v
                    .get("parts")?
                    .as_array()?
                    .iter()
                    .filter_map(|p| parse_part(p).ok())
                    .collect(),
                metadata: v.get("metadata").cloned(),
            })
        })
        .collect()
}

fn row_task(r: &sqlx::any::AnyRow) -> StoreResult<Task> {
    let state: String = r.try_get("state")?;
    let status: Option<String> = r.try_get("status_message")?;
    Ok(Task {
        id: r.try_get("id")?,
        scope: r.try_get("scope")?,
        context_id: r.try_get("context_id")?,
        message_id: r.try_get("message_id")?,
        state: TaskState::parse(&state).ok_or_else(|| crate::store::StoreError::Corrupt {
            what: "a2a task".into(),
            message: format!("unknown state {state:?}"),
        })?,
        status_message: status
            .as_deref()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .and_then(|v| parse_message(&v).ok()),
        history: messages_from_json(&r.try_get::<String, _>("history")?),
        artifacts: artifacts_from_json(&r.try_get::<String, _>("artifacts")?),
        conversation_id: r.try_get("conversation_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const TASK_COLUMNS: &str = "id, scope, context_id, message_id, state, status_message, history, \
                            artifacts, conversation_id, created_at, updated_at";

pub async fn get_task(store: &Store, scope: &str, id: &str) -> StoreResult<Option<Task>> {
    let row = sqlx::query(
        "SELECT id, scope, context_id, message_id, state, status_message, history, artifacts, \
         conversation_id, created_at, updated_at FROM a2a_tasks WHERE id = $1 AND scope = $2",
    )
    .bind(id)
    .bind(scope)
    .fetch_optional(store.pool())
    .await?;
    row.as_ref().map(row_task).transpose()
}

/// A task by id in any scope (the caller checks that the scope is theirs).
pub async fn task_by_id(store: &Store, id: &str) -> StoreResult<Option<Task>> {
    let row = sqlx::query(
        "SELECT id, scope, context_id, message_id, state, status_message, history, artifacts, \
         conversation_id, created_at, updated_at FROM a2a_tasks WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(store.pool())
    .await?;
    row.as_ref().map(row_task).transpose()
}

/// Records a context minted for an unsigned caller.
pub async fn mint_public_context(store: &Store, id: &str, now: i64) -> StoreResult<()> {
    store
        .write_execute(
            sqlx::query("INSERT INTO a2a_public_contexts (id, created_at) VALUES ($1, $2)")
                .bind(id)
                .bind(now),
        )
        .await?;
    Ok(())
}

/// Whether the server minted this context for an unsigned caller.
pub async fn public_context_exists(store: &Store, id: &str) -> StoreResult<bool> {
    let row = sqlx::query("SELECT id FROM a2a_public_contexts WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?;
    Ok(row.is_some())
}

pub async fn task_by_message(
    store: &Store,
    scope: &str,
    message_id: &str,
) -> StoreResult<Option<Task>> {
    let row = sqlx::query(
        "SELECT id, scope, context_id, message_id, state, status_message, history, artifacts, \
         conversation_id, created_at, updated_at FROM a2a_tasks WHERE scope = $1 AND message_id = $2",
    )
    .bind(scope)
    .bind(message_id)
    .fetch_optional(store.pool())
    .await?;
    row.as_ref().map(row_task).transpose()
}

const SAVE_TASK: &str = "INSERT INTO a2a_tasks (id, scope, context_id, message_id, state, \
     status_message, history, artifacts, conversation_id, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
     ON CONFLICT (id) DO UPDATE SET state = excluded.state, \
     status_message = excluded.status_message, history = excluded.history, \
     artifacts = excluded.artifacts, conversation_id = excluded.conversation_id, \
     updated_at = excluded.updated_at";

/// Inserts a new task, or overwrites its state, messages and artifacts. A task that talked to
/// the brand agent also records its context's inbox conversation, in the same transaction; a
/// structured call is one statement.
pub async fn save_task(store: &Store, t: &Task) -> StoreResult<()> {
    let status = t
        .status_message
        .as_ref()
        .map(|m| message_json(m, Dialect::V1).to_string());
    let task = sqlx::query(SAVE_TASK)
        .bind(&t.id)
        .bind(&t.scope)
        .bind(&t.context_id)
        .bind(&t.message_id)
        .bind(t.state.db())
        .bind(status)
        .bind(messages_to_json(&t.history))
        .bind(artifacts_to_json(&t.artifacts))
        .bind(&t.conversation_id)
        .bind(t.created_at)
        .bind(t.updated_at);
    let Some(conversation_id) = &t.conversation_id else {
        store.write_execute(task).await?;
        return Ok(());
    };
    let mut tx = store.begin_write().await?;
    sqlx::query(
        "INSERT INTO a2a_contexts (scope, id, conversation_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (scope, id) DO UPDATE SET updated_at = excluded.updated_at, \
         conversation_id = excluded.conversation_id",
    )
    .bind(&t.scope)
    .bind(&t.context_id)
    .bind(conversation_id)
    .bind(t.updated_at)
    .execute(&mut *tx)
    .await?;
    task.execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Which of a scope's tasks [`list_tasks`] lists.
#[derive(Debug, Default, Clone, Copy)]
pub struct TaskFilter<'a> {
    pub context_id: Option<&'a str>,
    pub state: Option<TaskState>,
    /// Only tasks whose status changed at or after this time (ms since the epoch).
    pub updated_since: Option<i64>,
}

/// One page of a scope's tasks, newest first, after the keyset `after` (updated_at, id);
/// returns the page and the total count matching the filters.
pub async fn list_tasks(
    store: &Store,
    scope: &str,
    filter_by: TaskFilter<'_>,
    after: Option<(i64, String)>,
    limit: usize,
) -> StoreResult<(Vec<Task>, i64)> {
    let TaskFilter {
        context_id,
        state,
        updated_since,
    } = filter_by;
    let mut filter = String::from("scope = $1");
    let mut n = 1;
    let mut next = || {
        n += 1;
        n
    };
    let ctx_p = context_id.map(|_| next());
    let state_p = state.map(|_| next());
    let since_p = updated_since.map(|_| next());
    if let Some(p) = ctx_p {
        filter.push_str(&format!(" AND context_id = ${p}"));
    }
    if let Some(p) = state_p {
        filter.push_str(&format!(" AND state = ${p}"));
    }
    if let Some(p) = since_p {
        filter.push_str(&format!(" AND updated_at >= ${p}"));
    }
    let count_sql = format!("SELECT COUNT(*) AS n FROM a2a_tasks WHERE {filter}");
    let mut page_filter = filter.clone();
    let keyset = after.as_ref().map(|_| (next(), next()));
    if let Some((a, b)) = keyset {
        page_filter.push_str(&format!(
            " AND (updated_at < ${a} OR (updated_at = ${a} AND id < ${b}))"
        ));
    }
    let page_sql = format!(
        "SELECT {TASK_COLUMNS} FROM a2a_tasks WHERE {page_filter} \
         ORDER BY updated_at DESC, id DESC LIMIT {limit}"
    );
    // Built from constants and numbered placeholders only; every value is bound.
    let mut count = sqlx::query(sqlx::AssertSqlSafe(count_sql)).bind(scope);
    let mut page = sqlx::query(sqlx::AssertSqlSafe(page_sql)).bind(scope);
    if let Some(c) = context_id {
        count = count.bind(c);
        page = page.bind(c);
    }
    if let Some(s) = state {
        count = count.bind(s.db());
        page = page.bind(s.db());
    }
    if let Some(t) = updated_since {
        count = count.bind(t);
        page = page.bind(t);
    }
    if let Some((t, id)) = &after {
        page = page.bind(*t).bind(id.clone());
    }
    let total: i64 = count.fetch_one(store.pool()).await?.try_get("n")?;
    let rows = page.fetch_all(store.pool()).await?;
    let tasks = rows.iter().map(row_task).collect::<StoreResult<Vec<_>>>()?;
    Ok((tasks, total))
}
