//! The staff web inbox: login, CSRF, queue, conversation view and actions (HTTP and browser).

use std::time::Duration;

use concierge::commerce::OrderStatus;
use fantoccini::Locator;
use serde_json::{Value, json};

use crate::browser::{Browser, screenshot_dir, wait_for};
use crate::helpers::{Db, TestApp};

pub(crate) const PASSWORD: &str = "correct horse battery";

pub(crate) async fn add_staff(app: &TestApp, email: &str, role: &str) -> String {
    let hash = concierge::web::hash_password(PASSWORD).unwrap();
    app.store()
        .create_staff(email, None, role, &hash)
        .await
        .expect("create staff")
        .id
}

pub(crate) fn client() -> reqwest::Client {
    concierge::http_client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        let mut o = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                o.push(b as char);
            } else {
                o.push_str(&format!("%{b:02X}"));
            }
        }
        o
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of a cookie a response sets.
pub(crate) fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let first = v.split(';').next()?;
            let (k, val) = first.split_once('=')?;
            (k.trim() == name).then(|| val.to_string())
        })
}

/// `name="_csrf" value="…"` in a page.
pub(crate) fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in {html}"))
        + marker.len();
    html[at..].split('"').next().unwrap().to_string()
}

/// A signed-in staff member over plain HTTP.
pub(crate) struct Staff {
    pub(crate) client: reqwest::Client,
    base: String,
    pub(crate) cookie: String,
    csrf: String,
}

/// Tries to sign in; returns the response.
pub(crate) async fn try_login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    try_login_with(app, email, password, &[]).await
}

pub(crate) async fn try_login_with(
    app: &TestApp,
    email: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let c = client();
    let page = c.get(app.url("/inbox/login")).send().await.unwrap();
    let login_cookie = set_cookie(&page, "concierge_login_csrf").expect("login csrf cookie");
    let html = page.text().await.unwrap();
    let token = hidden(&html, "_csrf");
    let mut req = c.post(app.url("/inbox/login"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.header("cookie", format!("concierge_login_csrf={login_cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("_csrf", &token),
            ("email", email),
            ("password", password),
            ("next", "/inbox"),
        ]))
        .send()
        .await
        .unwrap()
}

pub(crate) async fn login(app: &TestApp, email: &str) -> Staff {
    let resp = try_login(app, email, PASSWORD).await;
    assert_eq!(resp.status(), 303, "{:?}", resp.text().await);
    let cookie = set_cookie(&resp, "concierge_staff").expect("session cookie");
    let raw = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("concierge_staff="))
        .unwrap();
    assert!(
        raw.contains("HttpOnly") && raw.contains("SameSite=Lax"),
        "{raw}"
    );
    assert!(!raw.contains("Secure"), "plain-HTTP test server: {raw}");
    let mut s = Staff {
        client: client(),
        base: app.addr.clone(),
        cookie,
        csrf: String::new(),
    };
    let (status, html) = s.get("/inbox").await;
    assert_eq!(status, 200, "{html}");
    s.csrf = html
        .split("data-csrf=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf on the page")
        .to_string();
    s
}

impl Staff {
    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("concierge_staff={}", self.cookie))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// POSTs a form with the CSRF token; returns (status, Location).
    pub(crate) async fn post(&self, path: &str, pairs: &[(&str, &str)]) -> (u16, String) {
        let mut all = vec![("_csrf", self.csrf.as_str())];
        all.extend_from_slice(pairs);
        self.post_raw(path, &all).await
    }

    async fn post_raw(&self, path: &str, pairs: &[(&str, &str)]) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", format!("concierge_staff={}", self.cookie))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(pairs))
            .send()
            .await
            .unwrap();
        let loc = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        (status, if loc.is_empty() { body } else { loc })
    }
}

async fn escalate(app: &TestApp, thread: &str, from: Value, text: &str) -> String {
    let (s, body) = app
        .post_message(json!({"thread": thread, "from": from, "text": text}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["resolution"]["status"], "escalated", "{body}");
    body["conversation_id"].as_str().unwrap().to_string()
}

async fn signed_out_is_sent_to_login_and_forms_need_the_csrf_token(db: Db) {
    let Some(app) = TestApp::spawn_on(db).await else {
        return;
    };
    // Every /inbox page needs a session.
    for path in [
        "/inbox",
        "/inbox/escalations",
        "/inbox/c/nope",
        "/inbox/events",
    ] {
        let r = client().get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 303, "{path}");
        let loc = r.headers()["location"].to_str().unwrap();
        assert!(loc.starts_with("/inbox/login"), "{path} → {loc}");
    }
    let r = client()
        .get(app.url("/inbox/c/x"))
        .header("cookie", "concierge_staff=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);

    add_staff(&app, "ana@example.com", "agent").await;
    let conv = escalate(
        &app,
        "csrf-1",
        json!({"name": "Sam"}),
        "Can I speak to a real person please?",
    )
    .await;
    let ana = login(&app, "ana@example.com").await;

    // Without the token (and with a wrong one) nothing happens.
    let path = format!("/inbox/c/{conv}/reply");
    let (s, body) = ana.post_raw(&path, &[("text", "sneaky")]).await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("security token"), "{body}");
    let (s, _) = ana
        .post_raw(&path, &[("_csrf", "wrong"), ("text", "sneaky")])
        .await;
    assert_eq!(s, 403);
    let view = app.store().conversation_view(&conv).await.unwrap().unwrap();
    assert!(view.messages.iter().all(|m| m.text != "sneaky"));

    // The sign-in form is protected too.
    let r = client()
        .post(app.url("/inbox/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("email", "ana@example.com"),
            ("password", PASSWORD),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // With it, the reply is stored as the staff member's and the hand-off is taken over.
    let (s, loc) = ana.post(&path, &[("text", "Hi Sam, Ana here.")]).await;
    assert_eq!(
        (s, loc.as_str()),
        (303, format!("/inbox/c/{conv}").as_str())
    );
    let view = app.store().conversation_view(&conv).await.unwrap().unwrap();
    let last = view.messages.last().unwrap();
    assert_eq!(last.author_kind.as_str(), "staff");
    assert_eq!(last.text, "Hi Sam, Ana here.");
    assert_eq!(view.conversation.status.as_str(), "awaiting_customer");
    assert_eq!(
        app.store().escalations(&conv).await.unwrap()[0].status,
        "resolved"
    );

    // Behind a TLS-terminating proxy the session cookie is Secure.
    let r = try_login_with(
        &app,
        "ana@example.com",
        PASSWORD,
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(r.status(), 303);
    let raw: Vec<&str> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        raw.iter()
            .any(|c| c.starts_with("concierge_staff=") && c.contains("; Secure")),
        "{raw:?}"
    );

    // Logging out ends the session on the server: the old cookie no longer works.
    let (s, _) = ana.post("/inbox/logout", &[]).await;
    assert_eq!(s, 303);
    let (s, _) = ana.get("/inbox").await;
    assert_eq!(s, 303);
    app.stop().await;
}
on_both!(signed_out_is_sent_to_login_and_forms_need_the_csrf_token);

async fn repeated_wrong_passwords_are_refused(db: Db) {
    let Some(app) = TestApp::spawn_on(db).await else {
        return;
    };
    add_staff(&app, "bo@example.com", "agent").await;
    for i in 0..5 {
        let r = try_login(&app, "bo@example.com", "not the password").await;
        assert_eq!(r.status(), 401, "attempt {i}");
        assert!(r.text().await.unwrap().contains("do not match"));
    }
    // The sixth try is refused even with the right password, and says when to come back.
    let r = try_login(&app, "BO@example.com", PASSWORD).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body = r.text().await.unwrap();
    assert!(body.contains("Too many failed sign-ins"), "{body}");
    // Other accounts are not locked out by it.
    add_staff(&app, "cy@example.com", "agent").await;
    login(&app, "cy@example.com").await;
    // An unknown email fails like a wrong password.
    let r = try_login(&app, "nobody@example.com", PASSWORD).await;
    assert_eq!(r.status(), 401);
    app.stop().await;
}
on_both!(repeated_wrong_passwords_are_refused);

async fn queue_filters_search_and_staff_actions(db: Db) {
    let Some(app) = TestApp::spawn_on(db).await else {
        return;
    };
    let ana = add_staff(&app, "ana@example.com", "admin").await;
    add_staff(&app, "ben@example.com", "agent").await;
    let esc = escalate(
        &app,
        "q-1",
        json!({"name": "Pat"}),
        "I need a human, my parcel arrived crushed",
    )
    .await;
    let (s, body) = app
        .post_message(json!({"thread": "q-2", "text": "What is your return policy?"}))
        .await;
    assert_eq!(s, 200, "{body}");
    let other = body["conversation_id"].as_str().unwrap().to_string();

    let s = login(&app, "ana@example.com").await;
    let (_, all) = s.get("/inbox").await;
    assert!(all.contains(&esc) && all.contains(&other));
    let (_, escalated) = s.get("/inbox?escalated=1").await;
    assert!(
        escalated.contains(&esc) && !escalated.contains(&other),
        "{escalated}"
    );
    let (_, found) = s.get("/inbox?q=crushed").await;
    assert!(found.contains(&esc) && !found.contains(&other), "{found}");
    let (_, none) = s.get("/inbox?q=zeppelin").await;
    assert!(none.contains("No conversations match"));
    let (_, by_channel) = s.get("/inbox?channel=email").await;
    assert!(!by_channel.contains(&esc));
    let (code, bad) = s.get("/inbox?status=sleeping").await;
    assert_eq!(code, 400);
    assert!(bad.contains("is not a status"), "{bad}");

    // Assign, tag, note, resolve, reopen.
    let c = |p: &str| format!("/inbox/c/{esc}/{p}");
    assert_eq!(s.post(&c("assign"), &[("assignee", "me")]).await.0, 303);
    let (_, mine) = s.get("/inbox?assignee=me").await;
    assert!(mine.contains(&esc) && !mine.contains(&other));
    assert_eq!(
        s.post(&c("tags"), &[("tags", "Damaged, VIP, damaged")])
            .await
            .0,
        303
    );
    assert_eq!(
        s.post(&c("note"), &[("text", "Called the carrier.")])
            .await
            .0,
        303
    );
    let conv = app.store().get_conversation(&esc).await.unwrap().unwrap();
    assert_eq!(conv.assignee.as_deref(), Some(ana.as_str()));
    assert_eq!(conv.tags, ["damaged", "vip"]);
    let (_, page) = s.get(&format!("/inbox/c/{esc}")).await;
    assert!(page.contains("Called the carrier.") && page.contains("Private note"));
    assert!(page.contains("Note added"), "the notice shows once");
    let (_, again) = s.get(&format!("/inbox/c/{esc}")).await;
    assert!(!again.contains("Note added"));
    // Notes stay private: the API's view of the conversation does not have them.
    let (_, api) = app.get_json(&format!("/api/v1/conversations/{esc}")).await;
    assert!(!api.to_string().contains("Called the carrier"));

    // Rejecting the draft sends nothing and closes the escalation.
    let e = app.store().escalations(&esc).await.unwrap().remove(0);
    let before = app
        .store()
        .conversation_view(&esc)
        .await
        .unwrap()
        .unwrap()
        .messages
        .len();
    assert_eq!(
        s.post(
            &c("draft"),
            &[("escalation_id", &e.id), ("decision", "reject")]
        )
        .await
        .0,
        303
    );
    let e = app.store().escalations(&esc).await.unwrap().remove(0);
    assert_eq!(
        (e.status.as_str(), e.resolved_by.as_deref()),
        ("rejected", Some(ana.as_str()))
    );
    let after = app
        .store()
        .conversation_view(&esc)
        .await
        .unwrap()
        .unwrap()
        .messages
        .len();
    assert_eq!(before, after);

    assert_eq!(s.post(&c("status"), &[("action", "resolve")]).await.0, 303);
    let (_, resolved) = s.get("/inbox?status=resolved").await;
    assert!(resolved.contains(&esc));
    assert_eq!(s.post(&c("status"), &[("action", "reopen")]).await.0, 303);
    assert_eq!(
        app.store()
            .get_conversation(&esc)
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str(),
        "open"
    );

    // Only admins manage staff.
    let ben = login(&app, "ben@example.com").await;
    assert_eq!(ben.get("/inbox/staff").await.0, 403);
    let (code, page) = s.get("/inbox/staff").await;
    assert_eq!(code, 200);
    assert!(page.contains("ben@example.com"));
    let (code, _) = s
        .post(
            "/inbox/staff",
            &[
                ("action", "add"),
                ("email", "cy@example.com"),
                ("role", "agent"),
                ("password", "short"),
            ],
        )
        .await;
    assert_eq!(code, 303);
    assert!(
        app.store()
            .staff_login("cy@example.com")
            .await
            .unwrap()
            .is_none()
    );
    app.stop().await;
}
on_both!(queue_filters_search_and_staff_actions);

#[tokio::test]
async fn the_events_stream_announces_new_messages() {
    let app = TestApp::spawn().await;
    add_staff(&app, "ana@example.com", "agent").await;
    let s = login(&app, "ana@example.com").await;
    let mut resp = s
        .client
        .get(app.url("/inbox/events"))
        .header("cookie", format!("concierge_staff={}", s.cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (_, body) = app
        .post_message(json!({"thread": "live-1", "text": "Do you ship to Canada?"}))
        .await;
    let conv = body["conversation_id"].as_str().unwrap().to_string();
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = resp.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: message") && seen.contains(&conv) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "{seen}");
    assert!(
        !seen.contains("Do you ship"),
        "the stream carries no message text: {seen}"
    );
    app.stop().await;
}

#[test]
fn staff_add_reads_the_password_from_stdin() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_concierge"))
            .current_dir(crate::helpers::repo_path(""))
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(
        &[
            "staff",
            "add",
            "--email",
            "Ana@Example.com",
            "--role",
            "admin",
        ],
        "a long enough password\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &[
            "staff",
            "add",
            "--email",
            "ana@example.com",
            "--role",
            "agent",
        ],
        "another long password\n",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = run(
        &[
            "staff",
            "add",
            "--email",
            "bo@example.com",
            "--role",
            "boss",
        ],
        "another long password\n",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a role"));
    let out = run(&["staff", "add", "--email", "bo@example.com"], "short\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 10 characters"));
    let out = run(&["staff", "list"], "");
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("ana@example.com") && list.contains("admin"),
        "{list}"
    );
    assert!(!list.contains("bo@example.com"));
    // The last admin stays enabled.
    let out = run(&["staff", "disable", "--email", "ana@example.com"], "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("last active admin"));
}

/// A customer of the τ store with a pending and a delivered order: (email, pending, delivered).
async fn customer_with_pending_and_delivered(app: &TestApp) -> (String, String, String) {
    for c in app.store().all_customers().await.unwrap() {
        let orders = app.store().list_customer_orders(&c.id).await.unwrap();
        let pending = orders.iter().find(|o| o.status == OrderStatus::Pending);
        let delivered = orders.iter().find(|o| o.status == OrderStatus::Delivered);
        if let (Some(p), Some(d), Some(email)) = (pending, delivered, c.primary_email()) {
            return (email.to_string(), p.number.clone(), d.number.clone());
        }
    }
    panic!("the τ store has a customer with a pending and a delivered order");
}

#[tokio::test]
async fn staff_handle_an_escalation_in_the_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    app.import_tau().await;
    add_staff(&app, "ana@example.com", "admin").await;
    let (email, pending, delivered) = customer_with_pending_and_delivered(&app).await;
    let conv = escalate(
        &app,
        "browser-1",
        json!({"email": email, "verified": true}),
        "Can I speak to a real person please? <script>window.pwned = 1</script><b>now</b>",
    )
    .await;
    let c = &browser.client;
    let fail = |what: &str| format!("{what}\nchromedriver log:\n{}", browser.driver_log());

    // Signed out, the inbox sends us to sign in, then back.
    c.goto(&app.url("/inbox?escalated=1")).await.unwrap();
    c.find(Locator::Css("#email"))
        .await
        .expect("login form")
        .send_keys("ana@example.com")
        .await
        .unwrap();
    c.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    c.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The escalated conversation is in the queue; open it.
    let link = wait_for(Duration::from_secs(10), || async {
        c.find(Locator::Css(&format!(
            "tr[data-conversation-id='{conv}'] a.row-link"
        )))
        .await
        .ok()
    })
    .await
    .unwrap_or_else(|| panic!("{}", fail("the escalated conversation is not in the queue")));
    let queue_shot = browser
        .screenshot(&screenshot_dir().join("inbox-queue.png"))
        .await;
    println!("screenshot: {}", queue_shot.display());
    link.click().await.unwrap();
    let draft = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("[data-testid=draft]"))
        .await
        .expect("the escalation's draft");
    let draft_text = draft.prop("value").await.unwrap().unwrap_or_default();
    assert!(!draft_text.trim().is_empty());

    // The customer's HTML shows as text; the script never ran.
    let first = c
        .find(Locator::Css(
            "[data-testid=timeline-item][data-author=customer] .text",
        ))
        .await
        .unwrap();
    let shown = first.text().await.unwrap();
    assert!(
        shown.contains("<script>window.pwned = 1</script><b>now</b>"),
        "{shown}"
    );
    let pwned = c.execute("return window.pwned === undefined && document.querySelectorAll('#timeline script, #timeline b').length === 0", vec![]).await.unwrap();
    assert_eq!(pwned, Value::Bool(true));

    // A new customer message appears without a reload.
    let (s, _) = app
        .post_message(json!({"thread": "browser-1", "from": {"email": email, "verified": true}, "text": "Hello? Still there?"}))
        .await;
    assert_eq!(s, 200);
    let live = wait_for(Duration::from_secs(10), || async {
        let items = c
            .find_all(Locator::Css("[data-testid=timeline-item] .text"))
            .await
            .ok()?;
        for i in items {
            if i.text().await.ok()?.contains("Still there?") {
                return Some(());
            }
        }
        None
    })
    .await;
    assert!(
        live.is_some(),
        "{}",
        fail("the new message did not appear live")
    );

    // Approve the draft: it goes out on the conversation's channel (the API returns it).
    c.find(Locator::Css("[data-testid=approve]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let flash = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("[data-testid=flash]"))
        .await
        .unwrap();
    assert!(
        flash
            .text()
            .await
            .unwrap()
            .contains("approved and sent on api")
    );
    let (_, api) = app.get_json(&format!("/api/v1/conversations/{conv}")).await;
    let staff_msgs: Vec<&Value> = api["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["author_kind"] == "staff")
        .collect();
    assert_eq!(staff_msgs.len(), 1, "{api}");
    assert_eq!(
        staff_msgs[0]["text"].as_str().unwrap().trim(),
        draft_text.trim()
    );
    assert!(
        c.find(Locator::Css("[data-testid=escalation]"))
            .await
            .is_err()
    );

    // Reply by hand.
    c.find(Locator::Css("[data-testid=reply-text]"))
        .await
        .unwrap()
        .send_keys("I have cancelled the pending order for you.")
        .await
        .unwrap();
    c.find(Locator::Css("[data-testid=send-reply]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath(
            "//li[@data-author='staff']//div[contains(., 'I have cancelled the pending order')]",
        ))
        .await
        .expect("the hand reply in the timeline");

    // The shopper writes again after a person replied: the message waits for staff — no bot
    // reply, no second escalation — and shows in the timeline live.
    let (s, body) = app
        .post_message(json!({"thread": "browser-1", "from": {"email": email, "verified": true}, "text": "Great, and what about my other order?"}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(body["reply"].is_null(), "the bot answered: {body}");
    let live = wait_for(Duration::from_secs(10), || async {
        let items = c
            .find_all(Locator::Css(
                "[data-testid=timeline-item][data-author=customer] .text",
            ))
            .await
            .ok()?;
        for i in items {
            if i.text().await.ok()?.contains("my other order?") {
                return Some(());
            }
        }
        None
    })
    .await;
    assert!(
        live.is_some(),
        "{}",
        fail("the held message did not appear live")
    );
    assert_eq!(app.store().escalations(&conv).await.unwrap().len(), 1);
    assert!(
        c.find(Locator::Css("[data-testid=hand-back]"))
            .await
            .is_ok(),
        "{}",
        fail("no hand-back action while a person has the conversation")
    );

    // Cancel the pending order from the sidebar.
    // Clicks an order's cancel button; returns the notice that replaces `before`.
    let order_action = |number: &str, before: &str| {
        let number = number.to_string();
        let before = before.to_string();
        async move {
            let article = c
                .find(Locator::Css(&format!("article[data-order='{number}']")))
                .await
                .unwrap();
            article
                .find(Locator::XPath(".//summary[contains(., 'Cancel order')]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            article
                .find(Locator::Css("[data-testid=cancel-order]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            wait_for(Duration::from_secs(10), || async {
                let text = c
                    .find(Locator::Css("[data-testid=flash]"))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                (text != before && (text.starts_with("Order") || text.starts_with("Refused")))
                    .then_some(text)
            })
            .await
            .expect("a notice after the order action")
        }
    };
    let notice = order_action(&pending, "").await;
    assert!(
        notice.contains(&format!("Order {pending}: cancelled")),
        "{notice}"
    );
    let status = c
        .find(Locator::Css(&format!(
            "article[data-order='{pending}'] [data-testid=order-status]"
        )))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(status, "cancelled");
    let o = app
        .store()
        .get_order_by_number(&pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.status, OrderStatus::Cancelled);
    // Recorded with the staff member as the actor.
    let log = app.store().audit_entries_for_order(&o.id).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(last.actor_kind, "staff");
    assert!(last.actor_id.as_deref().unwrap().starts_with("stf_"));

    // A delivered order cannot be cancelled: the policy's reason shows.
    let notice = order_action(&delivered, &notice).await;
    assert!(notice.starts_with("Refused:"), "{notice}");
    assert!(notice.to_lowercase().contains("delivered"), "{notice}");
    let o = app
        .store()
        .get_order_by_number(&delivered)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.status, OrderStatus::Delivered);

    let shot = browser
        .screenshot(&screenshot_dir().join("inbox-conversation.png"))
        .await;
    println!("screenshot: {}", shot.display());
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn staff_order_actions_go_through_the_tool_layer() {
    let app = TestApp::spawn().await;
    app.import_tau().await;
    add_staff(&app, "ana@example.com", "agent").await;
    let sofia = app
        .store()
        .get_customer("sofia_rossi_8776")
        .await
        .unwrap()
        .unwrap();
    let email = sofia.primary_email().unwrap().to_string();
    let (s, body) = app
        .post_message(json!({"thread": "orders-1", "from": {"email": email, "verified": true}, "text": "Hi, a question about my orders"}))
        .await;
    assert_eq!(s, 200, "{body}");
    let conv = body["conversation_id"].as_str().unwrap().to_string();
    let ana = login(&app, "ana@example.com").await;
    let (_, page) = ana.get(&format!("/inbox/c/{conv}")).await;
    assert!(page.contains("#W5918442"), "the sidebar lists her orders");
    let path = format!("/inbox/c/{conv}/order");

    // Above the auto-approval limit: the agent may not, staff may.
    let (s, _) = ana
        .post(
            &path,
            &[
                ("action", "cancel"),
                ("order_id", "#W5918442"),
                ("reason", "no longer needed"),
            ],
        )
        .await;
    assert_eq!(s, 303);
    let o = app.store().get_order("#W5918442").await.unwrap().unwrap();
    assert_eq!(o.status, OrderStatus::Cancelled);
    let (_, page) = ana.get(&format!("/inbox/c/{conv}")).await;
    assert!(page.contains("Order #W5918442: cancelled."), "{page}");

    // A bad form says what is missing; a refused call says why, and nothing changes.
    let (s, _) = ana
        .post(&path, &[("action", "return"), ("order_id", "#W5918442")])
        .await;
    assert_eq!(s, 303);
    let (_, page) = ana.get(&format!("/inbox/c/{conv}")).await;
    assert!(
        page.contains("Not done: tick the items to return."),
        "{page}"
    );
    let (s, _) = ana
        .post(
            &path,
            &[
                ("action", "address"),
                ("order_id", "#W5918442"),
                ("address1", "1 Main St"),
                ("city", "Austin"),
                ("state", "TX"),
                ("zip", "73301"),
                ("country", "USA"),
            ],
        )
        .await;
    assert_eq!(s, 303);
    let (_, page) = ana.get(&format!("/inbox/c/{conv}")).await;
    assert!(page.contains("Refused:"), "{page}");
    let log = app
        .store()
        .audit_entries_for_order("#W5918442")
        .await
        .unwrap();
    let actors: Vec<&str> = log.iter().map(|e| e.actor_kind.as_str()).collect();
    assert_eq!(
        actors,
        ["staff", "staff"],
        "the cancel and the refused change"
    );
    assert!(log[1].outcome.starts_with("refused"), "{}", log[1].outcome);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_revoke_a_consumer_agents_token() {
    use concierge::gateway::{GatewayError, identity, tokens};
    let app = TestApp::spawn().await;
    app.import_tau().await;
    let ana_id = add_staff(&app, "ana@example.com", "agent").await;
    let key = identity::generate_key();
    let public = key.verifying_key();
    let now = concierge::util::now_ms();
    app.store()
        .register_agent_key(
            "shopper-bot",
            &identity::key_id(&public),
            &identity::encode_public_key(&public),
            now,
        )
        .await
        .unwrap();
    let agent = app.store().list_agents().await.unwrap().remove(0);
    let service = app.store().audit_signer().expect("service key").clone();
    let (token, record) = tokens::issue(
        app.store(),
        &service,
        &tokens::TokenSpec {
            agent_id: agent.id.clone(),
            customer_id: "sofia_rossi_8776".into(),
            ops: vec!["get_order".into(), "return_items".into()],
            spend_limit: Some(25_000),
            categories: vec![],
            expires_at: now + 3_600_000,
            escalate_over_limit: false,
        },
        "cli",
        now,
    )
    .await
    .unwrap();
    tokens::verify(app.store(), &service, &token, now)
        .await
        .expect("a fresh token verifies");

    let ana = login(&app, "ana@example.com").await;
    let (status, page) = ana.get("/inbox/agents").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&record.id), "the token is listed: {page}");
    assert!(page.contains("shopper-bot") && page.contains("Sofia Rossi"));
    assert!(page.contains("get_order, return_items") && page.contains("$250.00"));
    let path = format!("/inbox/agents/tokens/{}/revoke", record.id);
    // Without the CSRF token nothing happens.
    let (status, _) = ana.post_raw(&path, &[]).await;
    assert_eq!(status, 403);
    tokens::verify(app.store(), &service, &token, now)
        .await
        .expect("still valid after a refused POST");
    let (status, location) = ana.post(&path, &[]).await;
    assert_eq!((status, location.as_str()), (303, "/inbox/agents"));
    match tokens::verify(app.store(), &service, &token, concierge::util::now_ms()).await {
        Err(GatewayError::Unauthenticated { code, .. }) => assert_eq!(code, "token_revoked"),
        other => panic!("a revoked token must be refused, got {other:?}"),
    }
    let (_, page) = ana.get("/inbox/agents").await;
    assert!(page.contains("Token revoked"), "{page}");
    assert!(page.contains("revoked 20"), "the row shows when: {page}");
    // The action log names the staff member.
    let report = app.store().verify_audit_chain().await.unwrap();
    assert!(report.first_bad.is_none());
    let mut conn = app.store().pool().acquire().await.unwrap();
    let row: (String, Option<String>) = sqlx::query_as(
        "SELECT actor_kind, actor_id FROM audit_log WHERE tool = 'revoke_token' ORDER BY seq DESC LIMIT 1",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(row, ("staff".to_string(), Some(ana_id)));
}

/// An admin's password reset (in the inbox or with `concierge staff passwd`) and disabling an
/// account end that account's sessions: the old cookie no longer opens the inbox.
async fn a_password_reset_or_disable_ends_the_accounts_sessions(db: Db) {
    let Some(app) = TestApp::spawn_on(db).await else {
        return;
    };
    add_staff(&app, "ana@example.com", "admin").await;
    let bo_id = add_staff(&app, "bo@example.com", "agent").await;
    let ana = login(&app, "ana@example.com").await;
    let bo = login(&app, "bo@example.com").await;
    assert_eq!(bo.get("/inbox").await.0, 200);
    let (status, _) = ana
        .post(
            &format!("/inbox/staff/{bo_id}"),
            &[
                ("action", "password"),
                ("password", "a brand new passphrase"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    let (status, to) = bo.get("/inbox").await;
    assert_eq!(status, 303, "the old session must be gone: {to}");
    // The admin's own session is untouched; the new password works.
    assert_eq!(ana.get("/inbox").await.0, 200);
    let r = try_login(&app, "bo@example.com", "a brand new passphrase").await;
    assert_eq!(r.status(), 303);
    // Disabling ends sessions as well.
    let bo = {
        let r = try_login(&app, "bo@example.com", "a brand new passphrase").await;
        assert_eq!(r.status(), 303);
        set_cookie(&r, "concierge_staff").unwrap()
    };
    let (status, _) = ana
        .post(&format!("/inbox/staff/{bo_id}"), &[("action", "disable")])
        .await;
    assert_eq!(status, 303);
    let r = client()
        .get(app.url("/inbox"))
        .header("cookie", format!("concierge_staff={bo}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    app.stop().await;
}
on_both!(a_password_reset_or_disable_ends_the_accounts_sessions);

#[tokio::test]
async fn the_cli_password_reset_ends_sessions() {
    let app = TestApp::spawn().await;
    add_staff(&app, "cy@example.com", "agent").await;
    let cy = login(&app, "cy@example.com").await;
    assert_eq!(cy.get("/inbox").await.0, 200);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_concierge"))
        .current_dir(crate::helpers::repo_path(""))
        .env_remove("DATABASE_URL")
        .env_remove("CONCIERGE_API_KEY")
        .env("RUST_LOG", "warn")
        .args(["staff", "passwd", "--data-dir"])
        .arg(app.data_dir())
        .args(["--email", "cy@example.com"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"another fine passphrase\n").await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = cy.get("/inbox").await;
    assert_eq!(status, 303, "the session from before the reset still works");
    app.stop().await;
}

/// The hand-off holds: once escalated (and after a person replied), the shopper's new messages
/// wait for staff — no bot reply, no second escalation — until staff hand the conversation
/// back or resolve it.
async fn the_hand_off_holds_until_staff_hand_back_or_resolve(db: Db) {
    let Some(app) = TestApp::spawn_on(db).await else {
        return;
    };
    add_staff(&app, "ana@example.com", "admin").await;
    let esc = escalate(
        &app,
        "hold-1",
        json!({"name": "Pat"}),
        "I need a human, my parcel arrived crushed",
    )
    .await;
    let store = app.store();
    assert!(
        store
            .get_conversation(&esc)
            .await
            .unwrap()
            .unwrap()
            .with_staff
    );
    let mut events = app.state.hub.subscribe();
    // Escalated, nobody has replied yet: the next message waits for staff.
    let (s, body) = app
        .post_message(json!({"thread": "hold-1", "from": {"name": "Pat"}, "text": "Hello? Where is my refund?"}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["conversation_id"], esc.as_str());
    assert!(body["reply"].is_null(), "the bot answered: {body}");
    assert_eq!(body["waiting_for_staff"], true, "{body}");
    // Staff see it arrive live.
    let seen = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if let Ok(concierge::events::InboxEvent::Status {
                conversation_id,
                status,
            }) = events.recv().await
                && conversation_id == esc
                && status == "with_staff"
            {
                break;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "no live event for the held message");
    // A person replies; the shopper writes again: still no bot reply, no second escalation.
    let staff = login(&app, "ana@example.com").await;
    let (code, _) = staff
        .post(
            &format!("/inbox/c/{esc}/reply"),
            &[("text", "So sorry, Pat — I'm on it.")],
        )
        .await;
    assert_eq!(code, 303);
    let (_, body) = app
        .post_message(json!({"thread": "hold-1", "from": {"name": "Pat"}, "text": "Thanks! Also, can I get a replacement?"}))
        .await;
    assert!(
        body["reply"].is_null(),
        "the bot answered after staff: {body}"
    );
    assert_eq!(body["waiting_for_staff"], true);
    assert_eq!(
        store.escalations(&esc).await.unwrap().len(),
        1,
        "one escalation"
    );
    let view = store.conversation_view(&esc).await.unwrap().unwrap();
    let bot_replies = view
        .messages
        .iter()
        .filter(|m| m.author_kind == concierge::store::AuthorKind::BrandAgent)
        .count();
    assert_eq!(bot_replies, 1, "only the hand-off's own reply");
    let conv = store.get_conversation(&esc).await.unwrap().unwrap();
    assert_eq!(
        conv.status,
        concierge::store::ConversationStatus::Open,
        "back in the staff queue"
    );
    let (_, page) = staff.get(&format!("/inbox/c/{esc}")).await;
    assert!(page.contains("data-testid=\"hand-back\""), "{page}");
    // Handed back: the brand agent answers again.
    let (code, _) = staff.post(&format!("/inbox/c/{esc}/hand-back"), &[]).await;
    assert_eq!(code, 303);
    assert!(
        !store
            .get_conversation(&esc)
            .await
            .unwrap()
            .unwrap()
            .with_staff
    );
    // (The hand reply had closed the escalation.)
    assert_eq!(store.escalations(&esc).await.unwrap()[0].status, "resolved");
    let (_, body) = app
        .post_message(json!({"thread": "hold-1", "from": {"name": "Pat"}, "text": "What is your return policy?"}))
        .await;
    assert!(body["reply"]["text"].is_string(), "{body}");
    assert_eq!(body["waiting_for_staff"], false);
    // Hand-off again, handed back with nobody having replied: its escalation closes as
    // handed back.
    escalate(
        &app,
        "hold-1",
        json!({"name": "Pat"}),
        "Let me talk to a person please",
    )
    .await;
    let (code, _) = staff.post(&format!("/inbox/c/{esc}/hand-back"), &[]).await;
    assert_eq!(code, 303);
    assert_eq!(
        store.escalations(&esc).await.unwrap()[0].status,
        "handed_back"
    );
    // Hand-off again, then resolved by staff: the agent answers the next message.
    escalate(
        &app,
        "hold-1",
        json!({"name": "Pat"}),
        "Let me talk to a person please",
    )
    .await;
    let (code, _) = staff
        .post(&format!("/inbox/c/{esc}/status"), &[("action", "resolve")])
        .await;
    assert_eq!(code, 303);
    let (_, body) = app
        .post_message(json!({"thread": "hold-1", "from": {"name": "Pat"}, "text": "What is your return policy?"}))
        .await;
    assert!(body["reply"]["text"].is_string(), "{body}");
}
on_both!(the_hand_off_holds_until_staff_hand_back_or_resolve);
