//! Verification that cannot be guessed, from the outside: a message full of guessed order
//! numbers proves nothing on the API, web chat and A2A; failed attempts lock a conversation (3)
//! and a customer (5) within the window, concurrently too; the lock opens when the window
//! passes or when staff lift it; a one-time code emailed to the address on file gets past it;
//! order + email delegations are locked per agent and per email with 429 + Retry-After; links
//! on channel identities expire; and the new turn fields (linkable, vouched, claims) hold.

use std::time::Duration;

use concierge::agent::Inbound;
use concierge::store::{AuthorKind, InboundMessage};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::helpers::{Db, TestApp};

/// James Li (τ-bench retail): the victim in these stories.
const JAMES: &str = "james_li_5688";
const JAMES_EMAIL: &str = "james.li4495@example.com";
const JAMES_ORDER: &str = "#W2611340";
/// Aarav Anderson: another customer.
const AARAV: &str = "aarav_anderson_8794";
const AARAV_EMAIL: &str = "aarav.anderson9752@example.com";
const AARAV_ORDER: &str = "#W4316152";

async fn shop(db: Db) -> Option<TestApp> {
    let app = TestApp::spawn_on(db).await?;
    app.import_tau().await;
    Some(app)
}

async fn shop_with(tweak: impl FnOnce(&mut concierge::config::Config)) -> TestApp {
    let app = TestApp::spawn_with(Db::Sqlite, tweak).await;
    app.import_tau().await;
    app
}

/// The victim's email and 300 order numbers, the right one in the middle.
fn guesses() -> String {
    let mut numbers: Vec<String> = (0..300).map(|i| format!("W{:07}", 1_000_000 + i)).collect();
    numbers[150] = JAMES_ORDER.trim_start_matches('#').to_string();
    format!(
        "Where is my order? My email is {JAMES_EMAIL} and it's one of these: {}",
        numbers.join(" ")
    )
}

/// The victim's order numbers, without the '#'.
async fn victim_orders(app: &TestApp) -> Vec<String> {
    let orders = app.store().list_customer_orders(JAMES).await.unwrap();
    assert!(!orders.is_empty());
    orders
        .iter()
        .map(|o| o.number.trim_start_matches('#').to_string())
        .collect()
}

fn assert_discloses_nothing(reply: &str, victim: &[String], what: &str) {
    for n in victim {
        assert!(
            !reply.contains(n.as_str()),
            "{what}: the reply names the victim's order {n}: {reply}"
        );
    }
}

/// One API message: (reply text, resolution).
async fn say(app: &TestApp, thread: &str, text: &str) -> (String, Value) {
    let (status, body) = app
        .post_message(json!({"thread": thread, "from": {"name": "Shopper"}, "text": text}))
        .await;
    assert_eq!(status, 200, "{body}");
    (
        body["reply"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["resolution"].clone(),
    )
}

fn wrong_claim(i: usize) -> String {
    format!(
        "Where is my order #W{:07}? My email is {JAMES_EMAIL}",
        1_000_100 + i
    )
}

fn right_claim() -> String {
    format!("Where is my order {JAMES_ORDER}? My email is {JAMES_EMAIL}")
}

fn is_lock_reply(reply: &str) -> bool {
    reply.contains("paused checking account details")
}

// ---- guesses in one message, on every channel ----

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_frame(ws: &mut Socket, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("socket closed")
            .expect("socket error");
        if let Ws::Text(t) = frame {
            let v: Value = serde_json::from_str(&t).unwrap();
            if pred(&v) {
                return v;
            }
        }
    }
}

async fn guessed_order_numbers_verify_nothing(db: Db) {
    let Some(app) = shop(db).await else { return };
    let victim = victim_orders(&app).await;
    let text = guesses();

    // The API channel.
    let (reply, res) = say(&app, "guess-api", &text).await;
    assert_discloses_nothing(&reply, &victim, "api");
    assert!(res.get("verified_customer").is_none(), "{res}");
    assert!(
        !res["actions"].to_string().contains("order_lookup"),
        "{res}"
    );

    // Web chat over a WebSocket.
    let url = format!("{}/chat/ws", app.addr.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Ws::Text(json!({"type": "hello"}).to_string().into()))
        .await
        .unwrap();
    next_frame(&mut ws, |v| v["type"] == "welcome").await;
    ws.send(Ws::Text(
        json!({"type": "message", "text": text, "client_id": "g-1"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let answer = next_frame(&mut ws, |v| {
        v["type"] == "message" && v["author"] == "brand_agent"
    })
    .await;
    let reply = answer["text"].as_str().unwrap();
    assert_discloses_nothing(reply, &victim, "web chat");
    assert!(reply.contains("confirm"), "asks to verify: {reply}");
    ws.close(None).await.ok();

    // A2A text from an unsigned caller.
    let r = app
        .client
        .post(app.url("/a2a"))
        .header("A2A-Version", "1.0")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message":
            {"messageId": "g-a2a-1", "role": "ROLE_USER", "parts": [{"text": text}]}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let all = body.to_string();
    assert!(
        body.get("error").is_none() || body["error"].is_null(),
        "{body}"
    );
    // The request's own text is echoed in the task history; the agent's answer must not name
    // any order of the victim's.
    let answer = body["result"]["task"]["status"]["message"].to_string();
    assert_discloses_nothing(&answer, &victim, "a2a");
    assert!(!all.contains(JAMES), "no verified customer: {all}");

    // In none of the conversations is anyone verified.
    for thread in ["guess-api"] {
        let conv = app
            .store()
            .conversation_by_thread("api", thread)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(conv.customer_id, None);
    }
    app.stop().await;
}
on_both!(guessed_order_numbers_verify_nothing);

// ---- locks ----

async fn three_failures_lock_the_conversation(db: Db) {
    let Some(app) = shop(db).await else { return };
    let victim = victim_orders(&app).await;
    for i in 0..2 {
        let (reply, res) = say(&app, "lock-1", &wrong_claim(i)).await;
        assert!(res.get("verified_customer").is_none());
        assert!(
            !is_lock_reply(&reply),
            "not locked after {} failures: {reply}",
            i + 1
        );
    }
    // The third failure locks the conversation, and the reply says so.
    let (reply, _) = say(&app, "lock-1", &wrong_claim(2)).await;
    assert!(is_lock_reply(&reply), "{reply}");
    // A correct claim during the lock verifies nothing and explains the lock.
    let (reply, res) = say(&app, "lock-1", &right_claim()).await;
    assert!(res.get("verified_customer").is_none(), "{res}");
    assert_discloses_nothing(&reply, &victim, "locked conversation");
    assert!(is_lock_reply(&reply), "{reply}");
    assert!(
        reply.contains("code") && reply.contains("person"),
        "offers a code or a person: {reply}"
    );
    // The customer is not locked by one conversation's three failures: a new conversation
    // with the right details verifies.
    let (reply, res) = say(&app, "lock-2", &right_claim()).await;
    assert_eq!(res["verified_customer"], JAMES, "{res}");
    assert!(reply.contains("W2611340"), "{reply}");
    app.stop().await;
}
on_both!(three_failures_lock_the_conversation);

/// Staff signed in over plain HTTP.
struct Staff {
    client: reqwest::Client,
    base: String,
    cookie: String,
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let enc = |s: &str| -> String {
                s.bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect()
            };
            format!("{}={}", enc(k), enc(v))
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn cookie_of(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (k, val) = v.split(';').next()?.split_once('=')?;
            (k.trim() == name).then(|| val.to_string())
        })
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = html.find(&marker).expect("hidden field") + marker.len();
    html[at..].split('"').next().unwrap().to_string()
}

async fn staff_login(app: &TestApp) -> Staff {
    let password = "correct horse battery";
    let hash = concierge::web::hash_password(password).unwrap();
    app.store()
        .create_staff("agent@shop.example", None, "agent", &hash)
        .await
        .unwrap();
    let client = concierge::http_client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client.get(app.url("/inbox/login")).send().await.unwrap();
    let login_cookie = cookie_of(&page, "concierge_login_csrf").unwrap();
    let token = hidden(&page.text().await.unwrap(), "_csrf");
    let resp = client
        .post(app.url("/inbox/login"))
        .header("cookie", format!("concierge_login_csrf={login_cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("_csrf", &token),
            ("email", "agent@shop.example"),
            ("password", password),
            ("next", "/inbox"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    Staff {
        client,
        base: app.addr.clone(),
        cookie: cookie_of(&resp, "concierge_staff").unwrap(),
    }
}

impl Staff {
    async fn get(&self, path: &str) -> String {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("concierge_staff={}", self.cookie))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    async fn post(&self, path: &str, csrf: &str) -> u16 {
        self.client
            .post(format!("{}{path}", self.base))
            .header("cookie", format!("concierge_staff={}", self.cookie))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("_csrf", csrf)]))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

async fn five_failures_lock_the_customer_and_staff_lift_it(db: Db) {
    let Some(app) = shop(db).await else { return };
    let victim = victim_orders(&app).await;
    // One failure in each of five conversations.
    for i in 0..5 {
        let (_, res) = say(&app, &format!("cust-{i}"), &wrong_claim(i)).await;
        assert!(res.get("verified_customer").is_none());
    }
    // A sixth conversation with the right details: the customer is locked.
    let (reply, res) = say(&app, "cust-6", &right_claim()).await;
    assert!(res.get("verified_customer").is_none(), "{res}");
    assert!(is_lock_reply(&reply), "{reply}");
    assert_discloses_nothing(&reply, &victim, "locked customer");

    // Staff see the lock on that conversation, with what locked it and until when.
    let conv = app
        .store()
        .conversation_by_thread("api", "cust-6")
        .await
        .unwrap()
        .unwrap();
    let staff = staff_login(&app).await;
    let page = staff.get(&format!("/inbox/c/{}", conv.id)).await;
    assert!(page.contains("data-testid=\"verification-lock\""), "{page}");
    assert!(page.contains("Verification locked until"), "{page}");
    assert!(page.contains(&format!("customer {JAMES}")), "{page}");
    assert!(page.contains("5 failed"), "{page}");
    // A conversation with no attempts shows no lock.
    let (_, _) = say(&app, "quiet", "Hello").await;
    let quiet = app
        .store()
        .conversation_by_thread("api", "quiet")
        .await
        .unwrap()
        .unwrap();
    let page_quiet = staff.get(&format!("/inbox/c/{}", quiet.id)).await;
    assert!(!page_quiet.contains("verification-lock"));

    // Staff lift it (a form post with the CSRF token); the action log records who did.
    let csrf = hidden(&page, "_csrf");
    let status = staff
        .post(&format!("/inbox/c/{}/verification/unlock", conv.id), &csrf)
        .await;
    assert_eq!(status, 303);
    let page = staff.get(&format!("/inbox/c/{}", conv.id)).await;
    assert!(
        !page.contains("data-testid=\"verification-lock\""),
        "{page}"
    );
    let log = app.store().audit_entries(0, 1000).await.unwrap();
    let lift = log
        .iter()
        .find(|e| e.tool == "lift_verification_lock")
        .expect("the lift is in the action log");
    assert_eq!(lift.actor_kind, "staff");
    assert!(lift.args.to_string().contains(&format!("customer:{JAMES}")));

    // The shopper can verify again.
    let (reply, res) = say(&app, "cust-6", &right_claim()).await;
    assert_eq!(res["verified_customer"], JAMES, "{res}");
    assert!(reply.contains("W2611340"), "{reply}");
    app.stop().await;
}
on_both!(five_failures_lock_the_customer_and_staff_lift_it);

/// Twelve wrong attempts at once, each in its own conversation: at most five are checked
/// against the customer, the rest meet the lock.
async fn concurrent_attempts_cannot_pass_the_limit(db: Db) {
    let Some(app) = shop(db).await else { return };
    let mut tasks = Vec::new();
    for i in 0..12 {
        let client = app.client.clone();
        let url = app.url("/api/v1/messages");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(crate::helpers::API_KEY)
                .json(&json!({"thread": format!("par-{i}"), "text": wrong_claim(i)}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let limits = concierge::verification::Limits::default();
    let locks = app
        .store()
        .verification_locks(
            &[limits.customer(JAMES)],
            concierge::util::now_ms(),
            limits.window_ms(),
        )
        .await
        .unwrap();
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!(locks[0].failures, 5, "exactly five attempts were checked");
    let (reply, res) = say(&app, "par-right", &right_claim()).await;
    assert!(res.get("verified_customer").is_none(), "{res}");
    assert!(is_lock_reply(&reply), "{reply}");
    app.stop().await;
}
on_both!(concurrent_attempts_cannot_pass_the_limit);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_opens_when_the_window_passes() {
    let app = shop_with(|c| c.verification.window_secs = 3).await;
    let started = std::time::Instant::now();
    for i in 0..3 {
        say(&app, "window", &wrong_claim(i)).await;
    }
    let (reply, res) = say(&app, "window", &right_claim()).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the attempts took longer than the window"
    );
    assert!(res.get("verified_customer").is_none(), "{res}");
    assert!(is_lock_reply(&reply), "{reply}");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (reply, res) = say(&app, "window", &right_claim()).await;
    assert_eq!(res["verified_customer"], JAMES, "{res}");
    assert!(reply.contains("W2611340"), "{reply}");
    app.stop().await;
}

// ---- the one-time code ----

async fn wait_for_mail(
    sink: &crate::smtp_sink::SmtpSink,
    n: usize,
) -> Vec<crate::smtp_sink::Received> {
    for _ in 0..200 {
        let got = sink.messages();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("expected {n} mails, got {:?}", sink.messages());
}

fn code_in(mail: &crate::smtp_sink::Received) -> String {
    let text = mail.data.replace("=\r\n", "");
    let at = text
        .find("verification code is ")
        .expect("a code in the mail")
        + "verification code is ".len();
    text[at..at + 6].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_code_to_the_address_on_file_gets_past_the_lock() {
    let sink = crate::smtp_sink::SmtpSink::start(0).await;
    let port = sink.port;
    let app = shop_with(move |c| {
        c.email.smtp_url = Some(concierge::util::Secret::new(format!(
            "smtp://127.0.0.1:{port}"
        )));
    })
    .await;
    let victim = victim_orders(&app).await;
    // An address that is nobody's asks for a code: the same answer, no mail.
    let (reply, _) = say(
        &app,
        "code-nobody",
        "Please email me a code, my email is nobody.here@example.com",
    )
    .await;
    assert!(reply.contains("6-digit code"), "{reply}");

    for i in 0..3 {
        say(&app, "code", &wrong_claim(i)).await;
    }
    let (reply, _) = say(&app, "code", &right_claim()).await;
    assert!(is_lock_reply(&reply), "{reply}");
    assert!(reply.contains("emailed a 6-digit code"), "{reply}");
    let mail = wait_for_mail(&sink, 1).await;
    assert_eq!(
        mail.len(),
        1,
        "only the customer's own address gets a code: {mail:?}"
    );
    assert!(
        mail[0].to.iter().any(|t| t.contains(JAMES_EMAIL)),
        "{:?}",
        mail[0].to
    );
    let code = code_in(&mail[0]);
    assert!(code.chars().all(|c| c.is_ascii_digit()), "{code}");
    // The code never shows in the shopper's conversation.
    let conv = app
        .store()
        .conversation_by_thread("api", "code")
        .await
        .unwrap()
        .unwrap();
    let view = app
        .store()
        .conversation_view(&conv.id)
        .await
        .unwrap()
        .unwrap();
    assert!(view.messages.iter().all(|m| !m.text.contains(&code)));

    // A wrong code is refused, and says how many tries are left.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (reply, res) = say(&app, "code", &format!("The code is {wrong}")).await;
    assert!(res.get("verified_customer").is_none(), "{res}");
    assert!(
        reply.contains("doesn't match") && reply.contains("4 tries left"),
        "{reply}"
    );
    assert_discloses_nothing(&reply, &victim, "wrong code");
    // The right code verifies, and the request waiting for it goes on.
    let (_, res) = say(&app, "code", &code).await;
    assert_eq!(res["verified_customer"], JAMES, "{res}");
    let (reply, _) = say(&app, "code", &format!("Where is my order {JAMES_ORDER}?")).await;
    assert!(reply.contains("W2611340"), "{reply}");
    app.stop().await;
}

// ---- delegation by order + email ----

struct SignedAgent {
    key: ed25519_dalek::SigningKey,
    key_id: String,
}

async fn register(app: &TestApp, name: &str) -> SignedAgent {
    use concierge::gateway::identity;
    let key = identity::generate_key();
    let key_id = identity::key_id(&key.verifying_key());
    app.store()
        .register_agent_key(
            name,
            &key_id,
            &identity::encode_public_key(&key.verifying_key()),
            concierge::util::now_ms(),
        )
        .await
        .unwrap();
    SignedAgent { key, key_id }
}

impl SignedAgent {
    /// POST /agent/v1/delegations: (status, Retry-After, body).
    async fn delegate(
        &self,
        app: &TestApp,
        order: &str,
        email: &str,
    ) -> (u16, Option<String>, Value) {
        let url = app.url("/agent/v1/delegations");
        let body = serde_json::to_vec(&json!({"order_id": order, "email": email})).unwrap();
        let sig = concierge::gateway::identity::sign_request(
            &self.key,
            &self.key_id,
            "POST",
            &url,
            &body,
            &concierge::util::random_token(16),
            concierge::util::now_ms() / 1000,
        );
        let mut req = app
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in sig.pairs() {
            req = req.header(k, v);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (status, retry, r.json().await.unwrap_or(Value::Null))
    }
}

async fn delegation_by_order_and_email_is_locked_per_agent_and_per_email(db: Db) {
    let Some(app) = shop(db).await else { return };
    let a = register(&app, "agent-a").await;
    // Five wrong orders for James's email from agent A.
    for i in 0..5 {
        let (status, _, body) = a
            .delegate(&app, &format!("#W{:07}", 1_000_100 + i), JAMES_EMAIL)
            .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "verification_failed");
    }
    // The right pair is now refused: 429, Retry-After, a clear error, no token.
    let (status, retry, body) = a.delegate(&app, JAMES_ORDER, JAMES_EMAIL).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "verification_locked", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("one-time code")
    );
    assert!(body.get("token").is_none());
    let secs: i64 = retry.expect("Retry-After").parse().unwrap();
    assert!(secs > 3000 && secs <= 3601, "{secs}");
    // Per email: another agent cannot verify James by order + email either.
    let b = register(&app, "agent-b").await;
    let (status, retry, body) = b.delegate(&app, JAMES_ORDER, JAMES_EMAIL).await;
    assert_eq!(status, 429, "{body}");
    assert!(retry.is_some());
    // Per agent: agent A is locked for every customer, even with a right pair.
    let (status, _, body) = a.delegate(&app, AARAV_ORDER, AARAV_EMAIL).await;
    assert_eq!(status, 429, "{body}");
    // An agent with no failures verifies another customer as before.
    let c = register(&app, "agent-c").await;
    let (status, _, body) = c.delegate(&app, AARAV_ORDER, AARAV_EMAIL).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["customer_id"], AARAV);
    app.stop().await;
}
on_both!(delegation_by_order_and_email_is_locked_per_agent_and_per_email);

// ---- switching customers, links, and the turn's proof fields ----

async fn a_verified_conversation_is_not_switched_by_another_customers_claim(db: Db) {
    let Some(app) = shop(db).await else { return };
    let (_, res) = say(&app, "switch", &right_claim()).await;
    assert_eq!(res["verified_customer"], JAMES);
    let aarav_orders = app.store().list_customer_orders(AARAV).await.unwrap();
    let (reply, res) = say(
        &app,
        "switch",
        &format!("Actually, where is order {AARAV_ORDER}? My email is {AARAV_EMAIL}"),
    )
    .await;
    assert_eq!(res["verified_customer"], JAMES, "{res}");
    assert!(reply.contains("only help with the account"), "{reply}");
    for o in &aarav_orders {
        assert!(!reply.contains(o.number.trim_start_matches('#')), "{reply}");
    }
    let conv = app
        .store()
        .conversation_by_thread("api", "switch")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conv.customer_id.as_deref(), Some(JAMES));
    app.stop().await;
}
on_both!(a_verified_conversation_is_not_switched_by_another_customers_claim);

/// Stores a Telegram-like message from `sender` in `thread` and has the agent answer it with
/// the given proof settings.
struct Proof<'a> {
    linkable: bool,
    from_claims: bool,
    vouched: Option<&'a str>,
}

const PLAIN: Proof<'static> = Proof {
    linkable: true,
    from_claims: true,
    vouched: None,
};

async fn turn(
    app: &TestApp,
    sender: &str,
    thread: &str,
    text: &str,
    proof: Proof<'_>,
) -> (concierge::agent::AgentReply, String, String) {
    let msg = InboundMessage {
        channel: "telegram".into(),
        thread_key: format!("telegram:{thread}"),
        external_id: Some(concierge::util::new_id("ext")),
        sender_id: sender.into(),
        sender_name: None,
        sender_email: None,
        sender_verified: false,
        author_kind: AuthorKind::Customer,
        subject: None,
        text: text.into(),
        html: None,
        attachments: json!([]),
        meta: json!({}),
    };
    let stored = app.store().ingest(&msg).await.unwrap();
    let reply = app
        .state
        .agent
        .reply(&Inbound {
            conversation_id: &stored.conversation_id,
            message_id: &stored.message_id,
            identity_id: Some(&stored.identity_id),
            channel: "telegram",
            text,
            sender_email: None,
            sender_verified: false,
            sender_email_is_claim: false,
            confirms_writes: true,
            identity_linkable: proof.linkable,
            requester: None,
            verify_from_claims: proof.from_claims,
            vouched_customer: proof.vouched,
            deliver: None,
        })
        .await
        .unwrap();
    (reply, stored.identity_id, stored.conversation_id)
}

async fn identity_links_expire_and_a_fresh_verification_renews_them(db: Db) {
    let Some(app) = shop(db).await else { return };
    let store = app.store();
    let (r, identity, _) = turn(&app, "tg-1", "chat-1", &right_claim(), PLAIN).await;
    assert_eq!(r.outcome.verified_customer.as_deref(), Some(JAMES));
    let linked = store.get_identity(&identity).await.unwrap().unwrap();
    assert_eq!(linked.customer_id.as_deref(), Some(JAMES));
    let first = linked.verified_at.expect("the link is dated");

    // A new conversation of the same sender is recognized while the link is fresh.
    let (r, _, _) = turn(&app, "tg-1", "chat-2", "where is my order?", PLAIN).await;
    assert_eq!(r.outcome.verified_customer.as_deref(), Some(JAMES));
    // Using the link does not renew it.
    let again = store.get_identity(&identity).await.unwrap().unwrap();
    assert_eq!(again.verified_at, Some(first));

    // 31 days later (the link's date moved back), the link is not used.
    let month = 31 * 24 * 3600 * 1000_i64;
    store
        .write_execute(
            sqlx::query("UPDATE identities SET verified_at = verified_at - $2 WHERE id = $1")
                .bind(identity.as_str())
                .bind(month),
        )
        .await
        .unwrap();
    let (r, _, conv3) = turn(&app, "tg-1", "chat-3", "where is my order?", PLAIN).await;
    assert_eq!(r.outcome.verified_customer, None, "{}", r.outcome.reply);
    assert!(r.outcome.reply.contains("confirm"), "{}", r.outcome.reply);
    // The conversation that reused the link lapses with it too (its date moved back alike).
    let conv2 = store
        .conversation_by_thread("telegram", "telegram:chat-2")
        .await
        .unwrap()
        .unwrap();
    let mut state = store.conversation_state(&conv2.id).await.unwrap();
    assert_eq!(
        state["verified_at"],
        json!(first),
        "reusing a link keeps its date"
    );
    state["verified_at"] = json!(first - month);
    store
        .save_conversation_state(&conv2.id, &state)
        .await
        .unwrap();
    let (r, _, _) = turn(&app, "tg-1", "chat-2", "and my other orders?", PLAIN).await;
    assert_eq!(r.outcome.verified_customer, None, "{}", r.outcome.reply);

    // A fresh verification renews the link.
    let (r, _, _) = turn(&app, "tg-1", "chat-3", &right_claim(), PLAIN).await;
    assert_eq!(r.outcome.verified_customer.as_deref(), Some(JAMES));
    let renewed = store.get_identity(&identity).await.unwrap().unwrap();
    assert!(renewed.verified_at.unwrap() > first, "renewed");
    let state = store.conversation_state(&conv3).await.unwrap();
    assert_eq!(state["verified_by"], "claims");
    app.stop().await;
}
on_both!(identity_links_expire_and_a_fresh_verification_renews_them);

async fn the_turn_says_what_may_verify_and_what_may_be_remembered(db: Db) {
    let Some(app) = shop(db).await else { return };
    let store = app.store();
    // Not linkable: the conversation is the customer's, the sender's identity is not linked.
    let unlinked = Proof {
        linkable: false,
        ..PLAIN
    };
    let (r, identity, conv) = turn(&app, "grp-1", "group-1", &right_claim(), unlinked).await;
    assert_eq!(r.outcome.verified_customer.as_deref(), Some(JAMES));
    let id = store.get_identity(&identity).await.unwrap().unwrap();
    assert_eq!(id.customer_id, None);
    assert!(!id.verified);
    let c = store.get_conversation(&conv).await.unwrap().unwrap();
    assert_eq!(c.customer_id.as_deref(), Some(JAMES));
    // So the same sender elsewhere is not recognized.
    let (r, _, _) = turn(&app, "grp-1", "group-2", "where is my order?", PLAIN).await;
    assert_eq!(r.outcome.verified_customer, None);

    // Claims may not verify: the right order and email prove nothing, and are not counted.
    let no_claims = Proof {
        from_claims: false,
        ..PLAIN
    };
    let (r, _, conv) = turn(&app, "ag-1", "ctx-1", &right_claim(), no_claims).await;
    assert_eq!(r.outcome.verified_customer, None);
    assert!(!r.outcome.reply.contains("W2611340"), "{}", r.outcome.reply);
    let scopes = store
        .conversation_verification_scopes(&conv, 0)
        .await
        .unwrap();
    assert!(scopes.is_empty(), "{scopes:?}");

    // A credential vouches: the customer it proves, whatever the text claims.
    let vouched = Proof {
        from_claims: false,
        vouched: Some(AARAV),
        ..PLAIN
    };
    let (r, _, _) = turn(&app, "ag-2", "ctx-2", "where is my order?", vouched).await;
    assert_eq!(r.outcome.verified_customer.as_deref(), Some(AARAV));
    let vouched = Proof {
        from_claims: false,
        vouched: Some(AARAV),
        ..PLAIN
    };
    let (r, _, _) = turn(&app, "ag-2", "ctx-2", &right_claim(), vouched).await;
    assert_eq!(r.outcome.verified_customer.as_deref(), Some(AARAV));
    assert!(!r.outcome.reply.contains("W2611340"), "{}", r.outcome.reply);
    app.stop().await;
}
on_both!(the_turn_says_what_may_verify_and_what_may_be_remembered);
