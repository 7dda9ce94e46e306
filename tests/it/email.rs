//! The email channel end to end: every real .eml fixture ingests; an order-status email is
//! answered over SMTP (a real SMTP conversation with a sink the test starts) with the right
//! threading headers; duplicates are stored once; a reply threads by its token even with a
//! rewritten subject and no In-Reply-To; with the SMTP server down the reply is retried and
//! delivered exactly once when it comes back, also across a restart.

use std::time::Duration;

use concierge::util::Secret;
use serde_json::Value;

use crate::helpers::{Db, TestApp, shared_data};
use crate::smtp_sink::SmtpSink;

const SECRET: &str = "inbound-secret-0123456789";

async fn app_with_smtp(port: u16) -> TestApp {
    let app = TestApp::spawn_with(Db::Sqlite, move |c| {
        c.email.smtp_url = Some(Secret::new(format!("smtp://127.0.0.1:{port}")));
        c.email.inbound_secret = Some(Secret::new(SECRET));
        c.email.from = "Alder & Pine Support <help@alderandpine.example.com>".into();
        c.jobs.poll_interval_ms = 50;
    })
    .await;
    app.import_tau().await;
    app
}

async fn post_mail(app: &TestApp, raw: &str) -> (u16, Value) {
    let r = app
        .client
        .post(app.url("/channels/email/inbound"))
        .bearer_auth(SECRET)
        .header("content-type", "message/rfc822")
        .body(raw.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn order_question(message_id: &str) -> String {
    format!(
        "From: Anya Garcia <anya.garcia2061@example.com>\r\n\
         To: Alder & Pine Support <help@alderandpine.example.com>\r\n\
         Subject: Where is my tea kettle?\r\n\
         Message-ID: <{message_id}>\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello, where is my order #W6310710? Thanks, Anya\r\n"
    )
}

async fn wait_for_mail(sink: &SmtpSink, n: usize, secs: u64) -> Vec<crate::smtp_sink::Received> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let m = sink.messages();
        if m.len() >= n || std::time::Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_fixture_ingests_without_a_panic() {
    let app = app_with_smtp(9).await;
    let dir = shared_data("eml");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "{} fixtures", files.len());
    for f in files {
        let raw = std::fs::read(&f).unwrap();
        let r = app
            .client
            .post(app.url("/channels/email/inbound"))
            .bearer_auth(SECRET)
            .header("content-type", "message/rfc822")
            .body(raw)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(
            status == 200 || status == 422,
            "{}: {status} {body}",
            f.display()
        );
    }
    // The server is still healthy.
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    app.stop().await;
}

#[tokio::test]
async fn an_order_question_is_answered_by_smtp_with_threading_headers() {
    let sink = SmtpSink::start(0).await;
    let app = app_with_smtp(sink.port).await;
    let (s, first) = post_mail(&app, &order_question("q1@mail.example")).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    let (_, again) = post_mail(&app, &order_question("q1@mail.example")).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message_id"], first["message_id"]);

    let mail = wait_for_mail(&sink, 1, 15).await;
    assert_eq!(mail.len(), 1, "one reply");
    let m = &mail[0];
    assert_eq!(m.to, vec!["anya.garcia2061@example.com".to_string()]);
    assert_eq!(m.from, "help@alderandpine.example.com");
    assert_eq!(
        m.header("In-Reply-To").as_deref(),
        Some("<q1@mail.example>")
    );
    assert!(
        m.header("References")
            .unwrap_or_default()
            .contains("<q1@mail.example>")
    );
    let reply_to = m.header("Reply-To").unwrap_or_default();
    assert!(reply_to.contains("help+c-"), "{reply_to}");
    let subject = m.header("Subject").unwrap_or_default();
    assert!(subject.contains("[#c-"), "{subject}");
    assert!(m.data.contains("multipart/alternative"), "text + HTML");
    assert!(
        m.data.contains("951786982868"),
        "the From address plus the order number verify: {}",
        m.data
    );

    // The shopper replies from a client that rewrote the subject and dropped In-Reply-To:
    // the token in the plus-address threads it.
    let token = reply_to
        .split("help+")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    let reply = format!(
        "From: anya.garcia2061@example.com\r\nTo: help+{token}@alderandpine.example.com\r\n\
         Subject: AW: something completely different\r\nMessage-ID: <q2@mail.example>\r\n\r\n\
         Thanks! And can I return it if it doesn't fit?\r\n"
    );
    let (_, second) = post_mail(&app, &reply).await;
    assert_eq!(
        second["conversation_id"], first["conversation_id"],
        "{second}"
    );
    app.stop().await;
    sink.stop();
}

#[tokio::test]
async fn auto_replies_and_bounces_are_recorded_but_not_answered() {
    let sink = SmtpSink::start(0).await;
    let app = app_with_smtp(sink.port).await;
    let auto = "From: anya.garcia2061@example.com\r\nTo: help@alderandpine.example.com\r\n\
                Subject: Out of office\r\nAuto-Submitted: auto-replied\r\nMessage-ID: <ooo@mail.example>\r\n\r\n\
                I am away until Monday.\r\n";
    let (s, body) = post_mail(&app, auto).await;
    assert_eq!(s, 200);
    assert_eq!(body["kind"], "auto_reply");
    assert_eq!(body["will_answer"], false);
    let raw = std::fs::read_to_string(shared_data(
        "eml/mikel-mail__multipart_report_emails__multi_address_bounce1.eml",
    ))
    .unwrap();
    let (_, body) = post_mail(&app, &raw).await;
    assert_eq!(body["kind"], "bounce", "{body}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(sink.messages().is_empty(), "nothing answered");
    app.stop().await;
    sink.stop();
}

#[tokio::test]
async fn a_reply_waits_for_the_smtp_server_and_is_sent_once_across_a_restart() {
    // A port with nothing listening yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = app_with_smtp(port).await;
    let (s, first) = post_mail(&app, &order_question("q9@mail.example")).await;
    assert_eq!(s, 200);
    let conv = first["conversation_id"].as_str().unwrap().to_string();
    // The first attempt fails and is visible on the conversation.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = app
            .store()
            .deliveries_for_conversation(&conv)
            .await
            .unwrap();
        if d.first()
            .is_some_and(|d| d.attempts >= 1 && d.last_error.is_some())
        {
            assert_ne!(d[0].status, "sent");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed attempt recorded: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Concierge restarts while the SMTP server is still down.
    let app = app.restart().await;
    // The SMTP server comes back: the reply goes out, once.
    let sink = SmtpSink::start(port).await;
    let mail = wait_for_mail(&sink, 1, 30).await;
    assert_eq!(mail.len(), 1, "delivered after the server came back");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.messages().len(), 1, "and only once");
    let d = app
        .store()
        .deliveries_for_conversation(&conv)
        .await
        .unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].status, "sent");
    app.stop().await;
    sink.stop();
}

#[tokio::test]
async fn the_inbound_endpoint_checks_its_secret_and_input() {
    let app = app_with_smtp(9).await;
    let r = app
        .client
        .post(app.url("/channels/email/inbound"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = app
        .client
        .post(app.url("/channels/email/inbound"))
        .bearer_auth("wrong")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (s, body) = post_mail(&app, "this is not an email at all").await;
    assert_eq!(s, 422, "{body}");
    // A multipart form with the message in `body-mime`, as inbound-mail services post it.
    let form =
        reqwest::multipart::Form::new().text("body-mime", order_question("form@mail.example"));
    let r = app
        .client
        .post(app.url("/channels/email/inbound"))
        .bearer_auth(SECRET)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Who may confirm a change by email: a From header is a claim; proof is a trusted relay's
// Authentication-Results, or a reply through our own outgoing email.

const RELAY: &str = "mx.relay.alderandpine.example.com";
/// Ivan Santos's pending order, and his address on file.
const ORDER: &str = "#W5183325";
const VICTIM: &str = "ivan.santos3158@example.com";

async fn trust_app(db: Db, port: u16) -> TestApp {
    let pg = match db {
        Db::Postgres => crate::helpers::fresh_postgres().await,
        Db::Sqlite => None,
    };
    let app = TestApp::spawn_with(db, move |c| {
        c.email.smtp_url = Some(Secret::new(format!("smtp://127.0.0.1:{port}")));
        c.email.inbound_secret = Some(Secret::new(SECRET));
        c.email.from = "Alder & Pine Support <help@alderandpine.example.com>".into();
        c.email.trusted_authserv_ids = vec![RELAY.to_string()];
        c.jobs.poll_interval_ms = 50;
        if let Some(url) = pg {
            c.database.url = Some(Secret::new(url));
        }
    })
    .await;
    app.import_tau().await;
    app
}

/// A raw email: `headers` go on top (as a relay prepends them), then the sender's own.
fn mail(
    headers: &[String],
    from: &str,
    message_id: &str,
    threading: &[&str],
    text: &str,
) -> String {
    let mut raw = String::new();
    for h in headers {
        raw.push_str(h);
        raw.push_str("\r\n");
    }
    raw.push_str(&format!(
        "Received: from sender.example by {RELAY}; Mon, 23 Nov 2026 10:00:00 +0000\r\n\
         From: {from}\r\nTo: Alder & Pine Support <help@alderandpine.example.com>\r\n\
         Subject: My order\r\nMessage-ID: <{message_id}>\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    ));
    if let Some(last) = threading.last() {
        raw.push_str(&format!("In-Reply-To: <{last}>\r\n"));
        let refs: Vec<String> = threading.iter().map(|r| format!("<{r}>")).collect();
        raw.push_str(&format!("References: {}\r\n", refs.join(" ")));
    }
    raw.push_str(&format!(
        "Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
    ));
    raw
}

fn auth_results(value: &str) -> String {
    format!("Authentication-Results: {value}")
}

fn dmarc_pass() -> String {
    auth_results(&format!(
        "{RELAY}; spf=pass smtp.mailfrom=example.com; dmarc=pass (p=reject) header.from=example.com"
    ))
}

/// The outbound replies of a conversation once there are `n`, oldest first.
async fn replies(app: &TestApp, conversation: &str, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let view = app
            .store()
            .conversation_view(conversation)
            .await
            .unwrap()
            .expect("conversation");
        let out: Vec<String> = view
            .messages
            .iter()
            .filter(|m| m.direction == concierge::store::Direction::Outbound)
            .map(|m| m.text.clone())
            .collect();
        if out.len() >= n || std::time::Instant::now() > deadline {
            assert_eq!(out.len(), n, "{out:?}");
            return out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn order_status(app: &TestApp) -> String {
    app.store()
        .get_order_by_number(ORDER)
        .await
        .unwrap()
        .expect("the order")
        .status
        .as_str()
        .to_string()
}

/// Asks to cancel the order by email (with `headers` on top) and waits for the confirmation
/// request; returns the conversation and the Message-ID of our email asking for the yes.
async fn ask_to_cancel(
    app: &TestApp,
    sink: &SmtpSink,
    headers: &[String],
    first_id: &str,
) -> (String, String) {
    let raw = mail(
        headers,
        &format!("Ivan Santos <{VICTIM}>"),
        first_id,
        &[],
        &format!("Hi, please cancel order {ORDER}, I no longer need it."),
    );
    let (s, body) = post_mail(app, &raw).await;
    assert_eq!(s, 200, "{body}");
    let conversation = body["conversation_id"].as_str().unwrap().to_string();
    let out = replies(app, &conversation, 1).await;
    assert!(
        out[0].contains(ORDER) && out[0].to_lowercase().contains("yes or no"),
        "the change is listed and a yes asked for: {}",
        out[0]
    );
    let mail = wait_for_mail(sink, 1, 15).await;
    let ours = mail.last().expect("our email");
    assert_eq!(ours.to, vec![VICTIM.to_string()], "to the address on file");
    let our_id = ours
        .header("Message-ID")
        .expect("a Message-ID")
        .trim_matches(['<', '>'])
        .to_string();
    let local = our_id.split('@').next().unwrap_or_default();
    assert!(
        local.len() >= 26 && local.chars().all(|c| c.is_ascii_alphanumeric()),
        "our Message-ID is long and random: {our_id}"
    );
    assert_eq!(order_status(app).await, "pending");
    (conversation, our_id)
}

/// Sends a "yes" and returns the reply to it.
async fn say_yes(
    app: &TestApp,
    conversation: &str,
    headers: &[String],
    message_id: &str,
    threading: &[&str],
    replies_before: usize,
) -> String {
    let raw = mail(headers, VICTIM, message_id, threading, "yes");
    let (s, body) = post_mail(app, &raw).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["conversation_id"], conversation, "threads: {body}");
    replies(app, conversation, replies_before + 1)
        .await
        .pop()
        .unwrap_or_default()
}

/// A spoofed From (the victim's own address) asks to cancel; a "yes" threaded to the
/// attacker's own earlier email changes nothing and says why; the real mailbox's yes, a reply
/// to the email we sent to the address on file, then does cancel (the change stayed pending).
async fn a_spoofed_from_cannot_confirm_a_change(db: Db) {
    let sink = SmtpSink::start(0).await;
    let app = trust_app(db, sink.port).await;
    let (conversation, our_id) = ask_to_cancel(&app, &sink, &[], "atk1@evil.example").await;

    let reply = say_yes(
        &app,
        &conversation,
        &[],
        "atk2@evil.example",
        &["atk1@evil.example"],
        1,
    )
    .await;
    assert_eq!(order_status(&app).await, "pending", "nothing cancelled");
    assert!(
        reply.contains("reply to the email we sent to the address on file"),
        "the reply explains: {reply}"
    );
    // Our reply to that went to the address on file as well, never elsewhere.
    let mail = wait_for_mail(&sink, 2, 15).await;
    assert!(mail.iter().all(|m| m.to == vec![VICTIM.to_string()]));

    // The real mailbox answers our email: that yes confirms.
    let reply = say_yes(
        &app,
        &conversation,
        &[],
        "ivan-yes@example.com",
        &["atk1@evil.example", &our_id],
        2,
    )
    .await;
    assert_eq!(order_status(&app).await, "cancelled", "{reply}");
    app.stop().await;
    sink.stop();
}
on_both!(a_spoofed_from_cannot_confirm_a_change);

/// With the trusted relay's `dmarc=pass` the From address is proven: a yes through our
/// outgoing Message-ID cancels.
async fn a_relay_proven_sender_confirms_through_our_email(db: Db) {
    let sink = SmtpSink::start(0).await;
    let app = trust_app(db, sink.port).await;
    let (conversation, our_id) =
        ask_to_cancel(&app, &sink, &[dmarc_pass()], "ivan1@example.com").await;
    let reply = say_yes(
        &app,
        &conversation,
        &[dmarc_pass()],
        "ivan2@example.com",
        &["ivan1@example.com", &our_id],
        1,
    )
    .await;
    assert_eq!(order_status(&app).await, "cancelled", "{reply}");
    app.stop().await;
    sink.stop();
}
on_both!(a_relay_proven_sender_confirms_through_our_email);

/// A yes threaded to the sender's own mail confirms only when the trusted relay's own,
/// topmost header proves the sender: a forged header below it, an untrusted authserv-id or an
/// unaligned `dkim=pass` prove nothing; the relay's `dmarc=pass` does.
async fn only_the_trusted_relays_own_header_proves_a_sender(db: Db) {
    let cases: Vec<(&str, Vec<String>, bool)> = vec![
        (
            "a forged pass below the relay's own fail",
            vec![
                auth_results(&format!(
                    "{RELAY}; dmarc=fail (p=reject) header.from=example.com"
                )),
                "Received: from attacker.example by mx.evil.example".to_string(),
                auth_results(&format!("{RELAY}; dmarc=pass header.from=example.com")),
            ],
            false,
        ),
        (
            "an untrusted authserv-id",
            vec![auth_results(
                "mx.evil.example; dmarc=pass header.from=example.com",
            )],
            false,
        ),
        (
            "dkim=pass for another domain",
            vec![auth_results(&format!(
                "{RELAY}; dkim=pass header.d=evil.example header.s=s1; dmarc=fail header.from=example.com"
            ))],
            false,
        ),
        ("the relay's dmarc=pass", vec![dmarc_pass()], true),
    ];
    for (i, (what, headers, cancels)) in cases.into_iter().enumerate() {
        let sink = SmtpSink::start(0).await;
        let app = trust_app(db, sink.port).await;
        let first = format!("c{i}-1@sender.example");
        let (conversation, _) = ask_to_cancel(&app, &sink, &headers, &first).await;
        let reply = say_yes(
            &app,
            &conversation,
            &headers,
            &format!("c{i}-2@sender.example"),
            &[&first],
            1,
        )
        .await;
        let expected = if cancels { "cancelled" } else { "pending" };
        assert_eq!(order_status(&app).await, expected, "{what}: {reply}");
        app.stop().await;
        sink.stop();
    }
}
on_both!(only_the_trusted_relays_own_header_proves_a_sender);

/// The conversation token of our Reply-To plus-address, received only by the mailbox we wrote
/// to, confirms like our Message-ID does, even when the client dropped In-Reply-To.
async fn a_yes_to_our_reply_to_address_confirms(db: Db) {
    let sink = SmtpSink::start(0).await;
    let app = trust_app(db, sink.port).await;
    let (conversation, _) = ask_to_cancel(&app, &sink, &[], "tok1@example.com").await;
    let ours = wait_for_mail(&sink, 1, 15).await.remove(0);
    let reply_to = ours.header("Reply-To").unwrap_or_default();
    let token = reply_to
        .split("help+c-")
        .nth(1)
        .and_then(|t| t.split('@').next())
        .unwrap_or_default()
        .to_string();
    assert!(token.len() >= 26, "a long random token: {reply_to}");
    let raw = format!(
        "From: {VICTIM}\r\nTo: help+c-{token}@alderandpine.example.com\r\n\
         Subject: yes\r\nMessage-ID: <tok2@example.com>\r\n\r\nyes\r\n"
    );
    let (_, body) = post_mail(&app, &raw).await;
    assert_eq!(body["conversation_id"], conversation.as_str());
    let reply = replies(&app, &conversation, 2)
        .await
        .pop()
        .unwrap_or_default();
    assert_eq!(order_status(&app).await, "cancelled", "{reply}");
    app.stop().await;
    sink.stop();
}
on_both!(a_yes_to_our_reply_to_address_confirms);

/// Verifying with the From address and an order number answers that email, but never links
/// the address to the customer: a later email from it without the order number is not
/// verified. With the relay's proof the address is linked.
async fn an_unauthenticated_verification_is_not_remembered(db: Db) {
    let sink = SmtpSink::start(0).await;
    let app = trust_app(db, sink.port).await;
    let ask = |id: &str, text: &str, headers: &[String]| mail(headers, VICTIM, id, &[], text);
    let (_, first) = post_mail(
        &app,
        &ask(
            "v1@example.com",
            &format!("What is the status of order {ORDER}?"),
            &[],
        ),
    )
    .await;
    let first_conv = first["conversation_id"].as_str().unwrap().to_string();
    let out = replies(&app, &first_conv, 1).await;
    assert!(
        out[0].contains(ORDER),
        "verified by From + order: {}",
        out[0]
    );
    let view = app
        .store()
        .conversation_view(&first_conv)
        .await
        .unwrap()
        .unwrap();
    let identity = app
        .store()
        .get_identity(view.conversation.identity_id.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!identity.verified, "{identity:?}");
    assert_eq!(identity.customer_id, None);

    let (_, second) = post_mail(
        &app,
        &ask(
            "v2@example.com",
            "Hello again, what are my recent orders?",
            &[],
        ),
    )
    .await;
    let second_conv = second["conversation_id"].as_str().unwrap().to_string();
    assert_ne!(second_conv, first_conv);
    let out = replies(&app, &second_conv, 1).await;
    assert!(
        !out[0].contains(ORDER) && !out[0].contains("#W"),
        "not verified: {}",
        out[0]
    );

    // The relay proves the address: now it is linked, and recognized without an order number.
    let (_, third) = post_mail(
        &app,
        &ask(
            "v3@example.com",
            "What are my recent orders?",
            &[dmarc_pass()],
        ),
    )
    .await;
    let third_conv = third["conversation_id"].as_str().unwrap().to_string();
    replies(&app, &third_conv, 1).await;
    let identity = app
        .store()
        .get_identity(&identity.id)
        .await
        .unwrap()
        .unwrap();
    assert!(identity.verified, "{identity:?}");
    assert_eq!(identity.customer_id.as_deref(), Some("ivan_santos_6635"));
    app.stop().await;
    sink.stop();
}
on_both!(an_unauthenticated_verification_is_not_remembered);

/// Someone verified by claims from another address (the victim's email and order number
/// written in the message) never gets account data at their own address: our reply goes to
/// the customer's address on file.
async fn account_replies_go_only_to_the_address_on_file(db: Db) {
    let sink = SmtpSink::start(0).await;
    let app = trust_app(db, sink.port).await;
    let raw = mail(
        &[],
        "eve@evil.example",
        "eve1@evil.example",
        &[],
        &format!("Where is my order {ORDER}? My email is {VICTIM}."),
    );
    let (s, body) = post_mail(&app, &raw).await;
    assert_eq!(s, 200, "{body}");
    let mail = wait_for_mail(&sink, 1, 15).await;
    assert_eq!(mail.len(), 1);
    for m in &mail {
        assert!(
            m.to == vec![VICTIM.to_string()] || !m.data.contains("W5183325"),
            "account data only to the address on file: {m:?}"
        );
    }
    app.stop().await;
    sink.stop();
}
on_both!(account_replies_go_only_to_the_address_on_file);

/// Eve starts a conversation from her own address and so receives our Message-ID and reply
/// token; she then claims Ivan's email and order there and asks to cancel. Her yes through our
/// email to HER changes nothing: only an email that went to the address on file confirms.
async fn our_email_to_another_address_confirms_nothing(db: Db) {
    let sink = SmtpSink::start(0).await;
    let app = trust_app(db, sink.port).await;
    let eve = "eve@evil.example";
    let (_, first) = post_mail(
        &app,
        &mail(
            &[],
            eve,
            "eve1@evil.example",
            &[],
            "Hello, do you ship to Canada?",
        ),
    )
    .await;
    let conversation = first["conversation_id"].as_str().unwrap().to_string();
    let to_eve = wait_for_mail(&sink, 1, 15).await.remove(0);
    assert_eq!(to_eve.to, vec![eve.to_string()]);
    let eve_knows = to_eve
        .header("Message-ID")
        .unwrap_or_default()
        .trim_matches(['<', '>'])
        .to_string();
    let reply_to = to_eve.header("Reply-To").unwrap_or_default();
    let token = reply_to
        .split("help+c-")
        .nth(1)
        .and_then(|t| t.split('@').next())
        .unwrap_or_default()
        .to_string();
    replies(&app, &conversation, 1).await;

    let raw = mail(
        &[],
        eve,
        "eve2@evil.example",
        &[&eve_knows],
        &format!("My email is {VICTIM}. Please cancel order {ORDER}, I no longer need it."),
    );
    let (_, second) = post_mail(&app, &raw).await;
    assert_eq!(second["conversation_id"], conversation.as_str());
    replies(&app, &conversation, 2).await;
    let raw = format!(
        "From: {eve}\r\nTo: help+c-{token}@alderandpine.example.com\r\n\
         Subject: Re: My order\r\nMessage-ID: <eve3@evil.example>\r\n\
         In-Reply-To: <{eve_knows}>\r\nReferences: <{eve_knows}>\r\n\r\nyes\r\n"
    );
    let (_, third) = post_mail(&app, &raw).await;
    assert_eq!(third["conversation_id"], conversation.as_str());
    let reply = replies(&app, &conversation, 3)
        .await
        .pop()
        .unwrap_or_default();
    assert_eq!(order_status(&app).await, "pending", "{reply}");
    for m in wait_for_mail(&sink, 3, 15).await {
        assert!(
            m.to == vec![VICTIM.to_string()] || !m.data.contains("W5183325"),
            "account data only to the address on file: {m:?}"
        );
    }
    app.stop().await;
    sink.stop();
}
on_both!(our_email_to_another_address_confirms_nothing);

/// An ordinary email — a greeting, the question, "Thanks," and a name — from the order's own
/// address gets the order's status with its tracking number (not "You're welcome"), signed
/// off once.
#[tokio::test]
async fn an_ordinary_email_gets_its_question_answered_signed_off_once() {
    let sink = SmtpSink::start(0).await;
    let app = app_with_smtp(sink.port).await;
    let raw = "From: James Li <james.li4495@example.com>\r\n\
               To: Alder & Pine Support <help@alderandpine.example.com>\r\n\
               Subject: My order\r\n\
               Message-ID: <james-1@mail.example>\r\n\
               Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
               Content-Type: text/plain; charset=utf-8\r\n\r\n\
               Hello,\r\n\r\nCould you tell me where order #W2611340 is?\r\n\r\nThanks,\r\nJames\r\n";
    let (s, body) = post_mail(&app, raw).await;
    assert_eq!(s, 200, "{body}");
    let mail = wait_for_mail(&sink, 1, 15).await;
    assert_eq!(mail.len(), 1, "one reply");
    let text = &mail[0].data;
    assert!(text.contains("357962501027"), "the tracking number: {text}");
    assert!(!text.contains("You're welcome"), "{text}");
    let plain = text
        .split("text/plain")
        .nth(1)
        .and_then(|p| p.split("--").next())
        .unwrap_or(text);
    let voice: toml::Table = toml::from_str(
        &std::fs::read_to_string(crate::helpers::repo_path("brand/voice.toml")).unwrap(),
    )
    .unwrap();
    let sign_off = voice["sign_off"].as_str().unwrap().trim();
    let first_line = sign_off.lines().next().unwrap();
    assert_eq!(
        plain.matches(first_line).count(),
        1,
        "signed off once: {plain}"
    );
    app.stop().await;
    sink.stop();
}
