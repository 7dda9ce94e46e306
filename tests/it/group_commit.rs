//! SQLite's single writer commits the writes of concurrent callers together, and each caller
//! still gets its own result: 200 concurrent brand-agent turns are all stored with their own
//! answers, a write that fails (a constraint violation) fails only its own caller, and a write
//! dropped without commit leaves the others' writes in its group alone. (That a crash loses no
//! acknowledged write is the crash drill's part: `drill.rs` kills servers mid-load.)

use std::collections::HashSet;

use concierge::store::Store;
use serde_json::json;

use crate::helpers::{Db, TestApp};

async fn two_hundred_concurrent_turns_each_get_their_own_answer(db: Db) {
    let Some(app) = TestApp::spawn_on_with(db, |c| c.without_rate_limits()).await else {
        return;
    };
    app.import_tau().await;
    let store = app.store();
    let customers = store.all_customers().await.unwrap();
    let mut asks = Vec::new();
    for c in &customers {
        let Some(email) = c.primary_email() else {
            continue;
        };
        if let Some(o) = store.list_customer_orders(&c.id).await.unwrap().first() {
            asks.push((email.to_string(), o.number.clone()));
        }
        if asks.len() == 200 {
            break;
        }
    }
    assert_eq!(asks.len(), 200);
    let before = store.group_commits();
    let sends = asks.iter().enumerate().map(|(i, (email, number))| {
        app.post_message(json!({
            "thread": format!("burst-{i}"),
            "from": {"email": email, "verified": true},
            "text": format!("Where is my order {number}?"),
        }))
    });
    let answers = futures::future::join_all(sends).await;
    let mut conversations = HashSet::new();
    for ((status, body), (_, number)) in answers.iter().zip(&asks) {
        assert_eq!(*status, 200, "{body}");
        let reply = body["reply"]["text"].as_str().unwrap_or_default();
        assert!(reply.contains(number.as_str()), "{number}: {body}");
        conversations.insert(body["conversation_id"].as_str().unwrap().to_string());
    }
    assert_eq!(conversations.len(), 200, "each turn its own conversation");
    for id in &conversations {
        let view = store.conversation_view(id).await.unwrap().unwrap();
        assert!(view.messages.len() >= 2, "question and answer stored: {id}");
    }
    if let (Some((g0, w0)), Some((g1, w1))) = (before, store.group_commits()) {
        assert!(
            w1 - w0 > g1 - g0,
            "concurrent writes were committed together: {} writes in {} groups",
            w1 - w0,
            g1 - g0
        );
    }
}
on_both!(two_hundred_concurrent_turns_each_get_their_own_answer);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_write_fails_only_its_own_caller() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None, 4).await.unwrap();
    store.set_setting("taken", "first").await.unwrap();
    // 64 writers at once: most insert a key of their own; every eighth breaks the primary key,
    // and every eighth (another one) writes and then drops its transaction without commit.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = store.begin_write().await?;
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2)")
                .bind(format!("k{i}"))
                .bind("mine")
                .execute(&mut *tx)
                .await?;
            if i % 8 == 3 {
                sqlx::query("INSERT INTO settings (key, value) VALUES ('taken', 'again')")
                    .execute(&mut *tx)
                    .await?;
            }
            if i % 8 == 5 {
                drop(tx);
                return Ok(false);
            }
            tx.commit().await?;
            Ok::<bool, concierge::store::StoreError>(true)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let outcome = t.await.unwrap();
        let stored = store.get_setting(&format!("k{i}")).await.unwrap();
        match i % 8 {
            3 => {
                let e = outcome.expect_err("the duplicate key fails");
                assert!(e.is_unique_violation(), "{e}");
                assert_eq!(stored, None, "its own first insert is undone");
            }
            5 => {
                assert!(!outcome.unwrap());
                assert_eq!(stored, None, "dropped without commit");
            }
            _ => {
                assert!(outcome.unwrap());
                assert_eq!(stored.as_deref(), Some("mine"), "k{i}");
            }
        }
    }
    assert_eq!(
        store.get_setting("taken").await.unwrap().as_deref(),
        Some("first")
    );
    let (groups, writes) = store.group_commits().unwrap();
    assert!(writes > groups, "{writes} writes in {groups} groups");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readers_cannot_write_and_the_writer_survives_a_closed_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None, 2).await.unwrap();
    // The pool's connections only read: a write that bypassed the writer would fail loudly.
    let e = sqlx::query("INSERT INTO settings (key, value) VALUES ('x', 'y')")
        .execute(store.pool())
        .await
        .expect_err("read-only pool");
    assert!(e.to_string().contains("readonly"), "{e}");
    store.close().await;
    let e = store.set_setting("after", "close").await.unwrap_err();
    assert!(e.to_string().contains("closed"), "{e}");
    // The file is whole: reopened, it has what was committed.
    let again = Store::open(dir.path(), None, 2).await.unwrap();
    assert_eq!(again.get_setting("x").await.unwrap(), None);
    again.close().await;
}
