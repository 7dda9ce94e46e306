//! `concierge drill crash`: shows that a message Concierge has acknowledged is never lost or
//! answered twice when an instance dies. The drill runs real `concierge serve` processes (one on
//! SQLite, or several on one PostgreSQL database), drives shoppers' messages into them at full
//! speed over the API, web chat and inbound email (replies go out to an SMTP sink the drill
//! runs), kills an instance with SIGKILL at random moments and restarts it, and retries every
//! message that was not acknowledged with the same ids, as a channel would. Then it waits for
//! the service to settle and counts, from the database and the sink:
//! - lost: an acknowledged message that is not stored, or stored but never answered;
//! - duplicated: a message stored twice, answered twice, or an email reply sent under two
//!   different Message-IDs.
//!
//! Each drill message opens its own conversation (its own API thread, chat visitor or email
//! thread), so one conversation holds exactly one shopper message and must hold exactly one
//! brand-agent reply.

pub mod smtp_sink;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::{Mutex, RwLock, Semaphore};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use smtp_sink::SmtpSink;

const API_KEY: &str = "drill-api-key-0123456789abcdef";
const INBOUND_SECRET: &str = "drill-inbound-secret-0123456789";
/// How long an acknowledged-but-unanswered turn waits before another worker takes it over.
const LEASE_SECS: u64 = 3;
/// The questions shoppers send (each answered by the brand agent without an account).
const QUESTIONS: &[&str] = &[
    "What is your return policy?",
    "How long does shipping take?",
    "Do you ship internationally?",
    "Can I exchange an item for a different size?",
    "How do refunds work?",
];

/// What to run.
#[derive(Debug, Clone)]
pub struct CrashDrill {
    /// The `concierge` binary the instances run.
    pub exe: PathBuf,
    /// The folder with the brand (`brand/`, `prompts/`, `channels/`).
    pub project_dir: PathBuf,
    /// Messages to drive in (split over API, web chat and email).
    pub messages: usize,
    /// SIGKILLs, spread over the run.
    pub kills: usize,
    /// Instances; more than one needs PostgreSQL.
    pub instances: usize,
    /// A PostgreSQL database URL: the drill creates a fresh database on that server (and drops
    /// it afterwards unless `work_dir` is given). None: SQLite in the work dir.
    pub database_url: Option<String>,
    /// Messages in flight at once.
    pub concurrency: usize,
    pub seed: u64,
    /// Where the instances' data dirs, configs and logs go; kept afterwards. None: a temporary
    /// folder removed at the end.
    pub work_dir: Option<PathBuf>,
}

impl CrashDrill {
    pub fn new(exe: PathBuf, project_dir: PathBuf) -> CrashDrill {
        CrashDrill {
            exe,
            project_dir,
            messages: 10_000,
            kills: 5,
            instances: 1,
            database_url: None,
            concurrency: 32,
            seed: 1,
            work_dir: None,
        }
    }
}

/// What the drill counted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrillReport {
    pub engine: String,
    pub instances: usize,
    pub messages: usize,
    /// Messages the service acknowledged (some after retries).
    pub accepted: usize,
    pub accepted_by_channel: HashMap<String, usize>,
    /// Messages never acknowledged (the client gave up or the service refused them).
    pub refused: usize,
    pub kills: usize,
    /// Sends repeated because an attempt failed (instance down, connection cut).
    pub retries: usize,
    /// Acknowledged messages missing from the store.
    pub lost_messages: usize,
    /// Conversations holding the same shopper message twice.
    pub duplicated_messages: usize,
    /// Stored messages with no brand-agent reply.
    pub unanswered: usize,
    /// Stored messages answered more than once.
    pub answered_twice: usize,
    /// Acknowledged emails whose reply never reached the SMTP sink.
    pub emails_missing: usize,
    /// Email replies sent under two or more different Message-IDs.
    pub emails_duplicated: usize,
    /// Email replies that reached the sink more than once with the same Message-ID (allowed:
    /// delivery is at least once).
    pub emails_redelivered: usize,
    pub drive_ms: u64,
    pub settle_ms: u64,
}

impl DrillReport {
    pub fn lost(&self) -> usize {
        self.lost_messages + self.unanswered + self.emails_missing
    }

    pub fn duplicated(&self) -> usize {
        self.duplicated_messages + self.answered_twice + self.emails_duplicated
    }

    pub fn passed(&self) -> bool {
        self.lost() == 0 && self.duplicated() == 0 && self.refused == 0
    }
}

impl std::fmt::Display for DrillReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let by = |c: &str| self.accepted_by_channel.get(c).copied().unwrap_or(0);
        writeln!(
            f,
            "crash drill on {} ({} instance{}): {} messages, {} SIGKILLs, {} retried sends",
            self.engine,
            self.instances,
            if self.instances == 1 { "" } else { "s" },
            self.messages,
            self.kills,
            self.retries
        )?;
        writeln!(
            f,
            "  accepted {} (api {}, web chat {}, email {}), refused {}; driven in {:.1} s, settled in {:.1} s",
            self.accepted,
            by("api"),
            by("webchat"),
            by("email"),
            self.refused,
            self.drive_ms as f64 / 1000.0,
            self.settle_ms as f64 / 1000.0
        )?;
        writeln!(
            f,
            "  lost {} (not stored {}, unanswered {}, email replies missing {})",
            self.lost(),
            self.lost_messages,
            self.unanswered,
            self.emails_missing
        )?;
        write!(
            f,
            "  duplicated {} (stored twice {}, answered twice {}, email replies under two Message-IDs {}); email replies re-sent with the same Message-ID {}",
            self.duplicated(),
            self.duplicated_messages,
            self.answered_twice,
            self.emails_duplicated,
            self.emails_redelivered
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Api,
    WebChat,
    Email,
}

impl Kind {
    fn of(i: usize) -> Kind {
        match i % 5 {
            0 | 1 => Kind::Api,
            2 | 3 => Kind::WebChat,
            _ => Kind::Email,
        }
    }

    fn channel(self) -> &'static str {
        match self {
            Kind::Api => "api",
            Kind::WebChat => "webchat",
            Kind::Email => "email",
        }
    }
}

/// One `concierge serve` process.
struct Instance {
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Instance {
    async fn start(&mut self, exe: &Path, cwd: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let child = tokio::process::Command::new(exe)
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .current_dir(cwd)
            .env_remove("DATABASE_URL")
            .env_remove("CONCIERGE_API_KEY")
            .env_remove("CONCIERGE_DATA_DIR")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", exe.display()))?;
        self.child = Some(child);
        let client = crate::http_client::client();
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                anyhow::bail!(
                    "the instance on port {} exited ({status}) while starting; see {}",
                    self.port,
                    self.log.display()
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the instance on port {} did not become healthy in 120 s; see {}",
                    self.port,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush, as when a machine dies.
    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

/// Ports of the instances that are up (None while one is down).
type Live = Arc<RwLock<Vec<Option<u16>>>>;

async fn pick(live: &Live, rng: &mut impl Rng) -> u16 {
    loop {
        let up: Vec<u16> = live.read().await.iter().flatten().copied().collect();
        if !up.is_empty() {
            return up[rng.random_range(0..up.len())];
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A message the service acknowledged: its stored id and conversation.
#[derive(Debug, Clone)]
struct Accepted {
    kind: Kind,
    index: usize,
    message_id: String,
}

pub async fn crash(drill: &CrashDrill) -> anyhow::Result<DrillReport> {
    anyhow::ensure!(drill.messages > 0, "the drill needs at least one message");
    anyhow::ensure!(
        drill.instances >= 1 && drill.instances <= 8,
        "--instances must be 1 to 8"
    );
    anyhow::ensure!(
        drill.instances == 1 || drill.database_url.is_some(),
        "several instances share one PostgreSQL database: give --database-url"
    );
    let temp;
    let work: PathBuf = match &drill.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let database = match &drill.database_url {
        Some(url) => Some(ScratchDatabase::create(url).await?),
        None => None,
    };
    let result = run(drill, &work, database.as_ref().map(|d| d.url.as_str())).await;
    if let Some(db) = database
        && drill.work_dir.is_none()
    {
        db.drop_it().await;
    }
    result
}

async fn run(drill: &CrashDrill, work: &Path, db_url: Option<&str>) -> anyhow::Result<DrillReport> {
    let sink = SmtpSink::bind(0)
        .await
        .context("cannot start the SMTP sink")?;
    let project = std::path::absolute(&drill.project_dir)?;
    let mut instances = Vec::new();
    for n in 0..drill.instances {
        let dir = work.join(format!("instance-{n}"));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let config = dir.join("concierge.toml");
        std::fs::write(
            &config,
            config_text(&project, &data, db_url, port, sink.port),
        )?;
        instances.push(Instance {
            port,
            config,
            log: dir.join("serve.log"),
            child: None,
        });
    }
    // The first instance makes the service key; the others share it (see docs/deploy.md).
    instances[0].start(&drill.exe, &project).await?;
    let key_file = work
        .join("instance-0/data")
        .join(crate::files::SERVICE_KEY_FILE);
    for inst in instances.iter_mut().skip(1) {
        let data = inst.config.parent().unwrap_or(work).join("data");
        std::fs::create_dir_all(&data)?;
        if key_file.exists() {
            std::fs::copy(&key_file, data.join(crate::files::SERVICE_KEY_FILE))?;
        }
        inst.start(&drill.exe, &project).await?;
    }
    let live: Live = Arc::new(RwLock::new(
        instances.iter().map(|i| Some(i.port)).collect(),
    ));
    let instances = Arc::new(Mutex::new(instances));
    let accepted_count = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));

    // The killer: SIGKILLs spread over the run, each followed by a restart.
    let killer = {
        let instances = instances.clone();
        let live = live.clone();
        let accepted_count = accepted_count.clone();
        let (exe, project, kills, total, seed) = (
            drill.exe.clone(),
            project.clone(),
            drill.kills,
            drill.messages,
            drill.seed,
        );
        tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x6b69_6c6c);
            let mut done = 0;
            for k in 0..kills {
                let step = total / (kills + 1);
                let at = step * (k + 1) + rng.random_range(0..step.max(1)) / 2;
                while accepted_count.load(Ordering::Relaxed) < at.min(total.saturating_sub(1)) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let mut insts = instances.lock().await;
                let n = rng.random_range(0..insts.len());
                live.write().await[n] = None;
                insts[n].kill().await;
                done += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
                insts[n].start(&exe, &project).await?;
                live.write().await[n] = Some(insts[n].port);
            }
            anyhow::Ok(done)
        })
    };

    // The shoppers.
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(drill.concurrency.max(1)));
    let http = crate::http_client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut tasks = Vec::with_capacity(drill.messages);
    for i in 0..drill.messages {
        let permit = permits.clone().acquire_owned().await?;
        let (live, http, accepted_count, retries) = (
            live.clone(),
            http.clone(),
            accepted_count.clone(),
            retries.clone(),
        );
        let seed = drill.seed;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(i as u64));
            let kind = Kind::of(i);
            let r = send_until_acked(kind, i, &live, &http, &mut rng, &retries).await;
            if r.is_ok() {
                accepted_count.fetch_add(1, Ordering::Relaxed);
            }
            r.map(|message_id| Accepted {
                kind,
                index: i,
                message_id,
            })
        }));
    }
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for t in tasks {
        match t.await? {
            Ok(a) => accepted.push(a),
            Err(e) => refused.push(e),
        }
    }
    let drive_ms = started.elapsed().as_millis() as u64;
    let kills = killer.await??;
    for e in refused.iter().take(3) {
        tracing::warn!(error = %e, "a drill message was never acknowledged");
        eprintln!("drill: a message was never acknowledged: {e:#}");
    }

    // Let the service settle: every turn answered, every email out.
    let settle_started = Instant::now();
    let pool = connect(db_url, &work.join("instance-0/data")).await?;
    let emails: HashSet<usize> = accepted
        .iter()
        .filter(|a| a.kind == Kind::Email)
        .map(|a| a.index)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(LEASE_SECS * 4 + 180);
    loop {
        let snapshot = Snapshot::read(&pool).await?;
        let replied = replies_by_thread(&sink);
        let ids: HashSet<&str> = accepted.iter().map(|a| a.message_id.as_str()).collect();
        let waiting = snapshot.open_jobs > 0
            || ids
                .iter()
                .any(|id| snapshot.replies_to(id) == 0 && snapshot.has(id))
            || emails.iter().any(|i| !replied.contains_key(&mail_id(*i)));
        if !waiting || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settle_ms = settle_started.elapsed().as_millis() as u64;
    for inst in instances.lock().await.iter_mut() {
        inst.kill().await;
    }

    // Count.
    let snapshot = Snapshot::read(&pool).await?;
    pool.close().await;
    let replied = replies_by_thread(&sink);
    let mut report = DrillReport {
        engine: if db_url.is_some() {
            "PostgreSQL".into()
        } else {
            "SQLite".into()
        },
        instances: drill.instances,
        messages: drill.messages,
        accepted: accepted.len(),
        refused: refused.len(),
        kills,
        retries: retries.load(Ordering::Relaxed),
        drive_ms,
        settle_ms,
        ..DrillReport::default()
    };
    for a in &accepted {
        *report
            .accepted_by_channel
            .entry(a.kind.channel().to_string())
            .or_default() += 1;
        if !snapshot.has(&a.message_id) {
            report.lost_messages += 1;
            continue;
        }
        match snapshot.replies_to(&a.message_id) {
            0 => report.unanswered += 1,
            1 => {}
            _ => report.answered_twice += 1,
        }
        if a.kind == Kind::Email {
            match replied.get(&mail_id(a.index)) {
                None => report.emails_missing += 1,
                Some(ids) => {
                    let distinct: HashSet<&String> = ids.iter().collect();
                    if distinct.len() > 1 {
                        report.emails_duplicated += 1;
                    } else if ids.len() > 1 {
                        report.emails_redelivered += 1;
                    }
                }
            }
        }
    }
    report.duplicated_messages = snapshot.conversations_with_repeats;
    Ok(report)
}

/// Sends one message until the service acknowledges it; Ok carries the stored message's id.
async fn send_until_acked(
    kind: Kind,
    i: usize,
    live: &Live,
    http: &reqwest::Client,
    rng: &mut impl Rng,
    retries: &AtomicUsize,
) -> anyhow::Result<String> {
    let text = QUESTIONS[i % QUESTIONS.len()];
    let mut chat_token: Option<String> = None;
    let mut last_error = String::new();
    for attempt in 0..200 {
        if attempt > 0 {
            retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
        }
        let port = pick(live, rng).await;
        let result = match kind {
            Kind::Api => send_api(http, port, i, text).await,
            Kind::Email => send_email(http, port, i, text).await,
            Kind::WebChat => send_chat(port, i, text, &mut chat_token).await,
        };
        match result {
            Ok(id) => return Ok(id),
            Err(Failure::Refused(e)) => anyhow::bail!("{} message {i}: {e}", kind.channel()),
            Err(Failure::Retry(e)) => last_error = e,
        }
    }
    anyhow::bail!(
        "{} message {i} was not acknowledged after 200 attempts: {last_error}",
        kind.channel()
    )
}

enum Failure {
    /// The service said no for good (a bug in the drill or the service).
    Refused(String),
    /// The attempt failed in a way a channel retries (instance down, cut connection, 5xx).
    Retry(String),
}

async fn http_result(r: reqwest::Result<reqwest::Response>) -> Result<Value, Failure> {
    let r = r.map_err(|e| Failure::Retry(e.to_string()))?;
    let status = r.status();
    let body = r.text().await.map_err(|e| Failure::Retry(e.to_string()))?;
    if status.is_success() {
        return serde_json::from_str(&body)
            .map_err(|e| Failure::Refused(format!("unreadable answer {body:?}: {e}")));
    }
    if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
        Err(Failure::Retry(format!("{status}: {body}")))
    } else {
        Err(Failure::Refused(format!("{status}: {body}")))
    }
}

fn message_id_of(v: &Value) -> Result<String, Failure> {
    v.get("message_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Failure::Refused(format!("no message_id in {v}")))
}

async fn send_api(
    http: &reqwest::Client,
    port: u16,
    i: usize,
    text: &str,
) -> Result<String, Failure> {
    let r = http
        .post(format!("http://127.0.0.1:{port}/api/v1/messages"))
        .bearer_auth(API_KEY)
        .json(&json!({
            "thread": format!("drill-api-{i}"),
            "message_id": format!("drill-api-{i}"),
            "from": {"name": format!("Drill shopper {i}")},
            "text": text,
        }))
        .send()
        .await;
    message_id_of(&http_result(r).await?)
}

fn mail_id(i: usize) -> String {
    format!("drill-mail-{i}@shopper.drill.test")
}

async fn send_email(
    http: &reqwest::Client,
    port: u16,
    i: usize,
    text: &str,
) -> Result<String, Failure> {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let raw = format!(
        "From: Drill Shopper {i} <shopper{i}@shopper.drill.test>\r\n\
         To: Support <support@brand.drill.test>\r\n\
         Subject: Question {i}\r\n\
         Message-ID: <{}>\r\n\
         Date: {date}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         {text}\r\n",
        mail_id(i)
    );
    let r = http
        .post(format!("http://127.0.0.1:{port}/channels/email/inbound"))
        .bearer_auth(INBOUND_SECRET)
        .header("content-type", "message/rfc822")
        .body(raw)
        .send()
        .await;
    message_id_of(&http_result(r).await?)
}

async fn send_chat(
    port: u16,
    i: usize,
    text: &str,
    token: &mut Option<String>,
) -> Result<String, Failure> {
    let retry = |e: &dyn std::fmt::Display| Failure::Retry(e.to_string());
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/chat/ws")),
    )
    .await
    .map_err(|e| retry(&e))?
    .map_err(|e| retry(&e))?;
    let hello = match token {
        Some(t) => json!({"type": "hello", "token": t}),
        None => json!({"type": "hello"}),
    };
    ws.send(WsMessage::Text(hello.to_string().into()))
        .await
        .map_err(|e| retry(&e))?;
    let client_id = format!("drill-chat-{i}");
    let mut sent = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| Failure::Retry("no acknowledgement in 30 s".into()))?;
        let frame = match frame {
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Close(_))) | None => {
                return Err(Failure::Retry("the socket closed".into()));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(retry(&e)),
        };
        let v: Value = serde_json::from_str(frame.as_str())
            .map_err(|e| Failure::Refused(format!("unreadable frame {frame}: {e}")))?;
        match v.get("type").and_then(Value::as_str) {
            Some("welcome") => {
                if let Some(t) = v.get("token").and_then(Value::as_str) {
                    *token = Some(t.to_string());
                }
                if !sent {
                    let m = json!({"type": "message", "text": text, "client_id": client_id});
                    ws.send(WsMessage::Text(m.to_string().into()))
                        .await
                        .map_err(|e| retry(&e))?;
                    sent = true;
                }
            }
            Some("ack") if v.get("client_id").and_then(Value::as_str) == Some(&client_id) => {
                let _ = ws.close(None).await;
                return v
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| Failure::Refused(format!("ack without id: {v}")));
            }
            Some("error") => {
                let m = v.get("message").and_then(Value::as_str).unwrap_or("");
                // A store error while an instance dies is retried; anything else is a refusal.
                if v.get("code").is_some() || m.contains("could not") || m.contains("internal") {
                    return Err(Failure::Retry(v.to_string()));
                }
                return Err(Failure::Refused(v.to_string()));
            }
            _ => {}
        }
    }
}

/// Email replies the sink received, by the shopper message they answer: the Message-IDs.
fn replies_by_thread(sink: &SmtpSink) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for m in sink.messages() {
        let Some(irt) = m.header("In-Reply-To") else {
            continue;
        };
        let key = irt.trim().trim_matches(['<', '>']).to_string();
        out.entry(key)
            .or_default()
            .push(m.header("Message-ID").unwrap_or_default());
    }
    out
}

/// What the database holds, for the count.
struct Snapshot {
    /// Stored shopper message id → brand-agent replies in its conversation.
    replies: HashMap<String, usize>,
    /// Conversations holding more than one shopper message.
    conversations_with_repeats: usize,
    /// Jobs not finished (queued or running).
    open_jobs: i64,
}

impl Snapshot {
    async fn read(pool: &sqlx::AnyPool) -> anyhow::Result<Snapshot> {
        let rows = sqlx::query(
            "SELECT i.id AS id, i.conversation_id AS conversation_id, \
             (SELECT COUNT(*) FROM messages o WHERE o.conversation_id = i.conversation_id \
               AND o.direction = 'outbound' AND o.author_kind = 'brand_agent') AS replies \
             FROM messages i WHERE i.direction = 'inbound' AND i.author_kind = 'customer'",
        )
        .fetch_all(pool)
        .await
        .context("cannot read the drill's messages")?;
        let mut replies = HashMap::new();
        let mut per_conversation: HashMap<String, usize> = HashMap::new();
        for r in rows {
            let id: String = r.try_get("id")?;
            let conv: String = r.try_get("conversation_id")?;
            let n: i64 = r.try_get("replies")?;
            replies.insert(id, n.max(0) as usize);
            *per_conversation.entry(conv).or_default() += 1;
        }
        let open_jobs: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE status IN ('queued', 'running')")
                .fetch_one(pool)
                .await?
                .try_get("n")?;
        Ok(Snapshot {
            replies,
            conversations_with_repeats: per_conversation.values().filter(|n| **n > 1).count(),
            open_jobs,
        })
    }

    fn has(&self, id: &str) -> bool {
        self.replies.contains_key(id)
    }

    fn replies_to(&self, id: &str) -> usize {
        self.replies.get(id).copied().unwrap_or(0)
    }
}

async fn connect(db_url: Option<&str>, sqlite_dir: &Path) -> anyhow::Result<sqlx::AnyPool> {
    sqlx::any::install_default_drivers();
    let url = match db_url {
        Some(u) => u.to_string(),
        None => format!(
            "sqlite://{}?mode=ro",
            sqlite_dir.join("concierge.db").display()
        ),
    };
    sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .context("cannot open the drill's database")
}

/// A fresh PostgreSQL database for one drill or benchmark, next to the one the operator named.
pub(crate) struct ScratchDatabase {
    admin: String,
    name: String,
    pub(crate) url: String,
}

impl ScratchDatabase {
    pub(crate) async fn create(url: &str) -> anyhow::Result<ScratchDatabase> {
        let (base, _) = url
            .rsplit_once('/')
            .context("--database-url must look like postgres://user@host:port/database")?;
        let name = format!(
            "concierge_scratch_{}",
            crate::util::random_token(6).to_lowercase()
        );
        let name: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
            .await
            .with_context(|| format!("cannot connect to {}", crate::store::redact_url(url)))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .context("cannot create the drill's database")?;
        Ok(ScratchDatabase {
            admin: url.to_string(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    pub(crate) async fn drop_it(self) {
        if let Ok(mut conn) = <sqlx::AnyConnection as sqlx::Connection>::connect(&self.admin).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await;
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn toml_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn config_text(project: &Path, data: &Path, db_url: Option<&str>, port: u16, smtp: u16) -> String {
    let path = |p: &Path| toml_str(&p.display().to_string());
    let database = match db_url {
        Some(u) => format!("[database]\nurl = {}\nmax_connections = 16\n", toml_str(u)),
        None => String::new(),
    };
    format!(
        "data_dir = {data}\n\n\
         [server]\nbind = \"127.0.0.1:{port}\"\nshutdown_grace_secs = 2\n\n\
         {database}\n\
         [api]\nkey = {api}\n\n\
         [brand]\ndir = {brand}\nprompts = {prompts}\nchannels = {channels}\n\n\
         [jobs]\npoll_interval_ms = 50\nlease_secs = {LEASE_SECS}\n\n\
         [email]\nsmtp_url = \"smtp://127.0.0.1:{smtp}\"\nfrom = \"Support <support@brand.drill.test>\"\n\
         inbound_secret = {secret}\n\n\
         [chat]\nmessages_per_minute = 100000\nmessages_per_minute_per_ip = 1000000\nsockets_per_ip = 100000\n\n\
         [limits]\npublic_per_ip_per_minute = 1000000\nagent_key_per_minute = 1000000\n\n\
         [log]\nlevel = \"warn\"\n",
        data = path(data),
        api = toml_str(API_KEY),
        brand = path(&project.join("brand")),
        prompts = path(&project.join("prompts")),
        channels = path(&project.join("channels")),
        secret = toml_str(INBOUND_SECRET),
    )
}

#[derive(Debug, clap::Subcommand)]
pub enum DrillCommand {
    /// Drive messages over the API, web chat and email into `concierge serve` processes, SIGKILL
    /// them at random moments, restart them and retry what was not acknowledged; then count lost
    /// and duplicated messages, answers and email replies. Exits non-zero unless both are 0.
    Crash {
        /// Messages to send (2/5 API, 2/5 web chat, 1/5 email).
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// SIGKILLs, spread over the run.
        #[arg(long, default_value_t = 5)]
        kills: usize,
        /// Instances (more than one needs --database-url).
        #[arg(long, default_value_t = 1)]
        instances: usize,
        /// A PostgreSQL database URL; the drill creates (and afterwards drops) a fresh database
        /// on that server. Without it: SQLite.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Messages in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Keep the instances' data, configs and logs here (default: a temporary folder).
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run_command(what: DrillCommand) -> anyhow::Result<()> {
    match what {
        DrillCommand::Crash {
            messages,
            kills,
            instances,
            database_url,
            concurrency,
            seed,
            work_dir,
            json,
        } => {
            let exe = std::env::current_exe().context("cannot find the concierge binary")?;
            let project = std::env::current_dir()?;
            anyhow::ensure!(
                project.join("brand").is_dir(),
                "run the drill from the project folder (it needs brand/, prompts/ and channels/)"
            );
            let drill = CrashDrill {
                messages,
                kills,
                instances,
                database_url,
                concurrency,
                seed,
                work_dir,
                ..CrashDrill::new(exe, project)
            };
            let report = crash(&drill).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            anyhow::ensure!(
                report.passed(),
                "the drill found {} lost and {} duplicated (and {} never acknowledged)",
                report.lost(),
                report.duplicated(),
                report.refused
            );
            Ok(())
        }
    }
}
