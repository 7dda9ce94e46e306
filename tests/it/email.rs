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
