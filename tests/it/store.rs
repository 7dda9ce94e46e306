//! The store suite: the same stories on SQLite (always) and on PostgreSQL (when
//! `TEST_DATABASE_URL` is set, as CI does).

use std::collections::HashSet;

use concierge::commerce::OrderStatus;
use concierge::import::{self, ImportBatch, ImportKind};
use concierge::store::{AuthorKind, ConversationStatus, InboundMessage, JobStatus, Store};
use serde_json::json;

use crate::helpers::{Db, fresh_postgres, shared_data};

/// Opens an empty store on `db`; None when Postgres is not configured.
async fn open(db: Db) -> Option<(Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = match db {
        Db::Sqlite => Store::open(&dir.path().join("data"), None, 4).await,
        Db::Postgres => Store::connect(&fresh_postgres().await?, 4).await,
    }
    .expect("open store");
    Some((store, dir))
}

fn tau_batch() -> ImportBatch {
    let mut batches = import::load(
        ImportKind::TauRetail,
        &shared_data("tau-bench-retail/tau-bench-v1"),
    )
    .expect("parse tau-bench");
    assert_eq!(batches.len(), 1);
    batches.remove(0).1
}

async fn import_tau(store: &Store, b: &ImportBatch) {
    store
        .import(&b.customers, &b.products, &b.orders, |_| {})
        .await
        .expect("import");
}

on_both!(tau_import_is_an_idempotent_upsert);
async fn tau_import_is_an_idempotent_upsert(db: Db) {
    let Some((store, _dir)) = open(db).await else {
        return;
    };
    let batch = tau_batch();
    import_tau(&store, &batch).await;
    let c = store.counts().await.unwrap();
    assert_eq!(
        (c.customers, c.orders, c.products, c.variants),
        (500, 1000, 50, 591)
    );
    import_tau(&store, &batch).await;
    assert_eq!(store.counts().await.unwrap(), c, "re-import changed counts");

    // What comes back is what went in.
    let mut orders = store.all_orders().await.unwrap();
    let mut expected = batch.orders.clone();
    orders.sort_by(|a, b| a.id.cmp(&b.id));
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(orders, expected);
    let mut customers = store.all_customers().await.unwrap();
    let mut expected = batch.customers.clone();
    customers.sort_by(|a, b| a.id.cmp(&b.id));
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(customers, expected);
    assert_eq!(store.all_products().await.unwrap().len(), 50);
}

on_both!(lookups_by_number_email_name_and_tracking);
async fn lookups_by_number_email_name_and_tracking(db: Db) {
    let Some((store, _dir)) = open(db).await else {
        return;
    };
    import_tau(&store, &tau_batch()).await;
    for q in ["#W2611340", "W2611340", "w2611340", " #w2611340 "] {
        let o = store.get_order_by_number(q).await.unwrap();
        assert_eq!(o.map(|o| o.id), Some("#W2611340".to_string()), "{q}");
    }
    let o = store
        .get_order_by_number("#W2611340")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.status, OrderStatus::Processed);
    assert_eq!(o.items.len(), 2);
    assert_eq!(o.items[0].price, 4784);
    assert_eq!(o.customer_id.as_deref(), Some("james_li_5688"));
    assert!(
        store
            .get_order_by_number("#W0000000")
            .await
            .unwrap()
            .is_none()
    );

    let t = store.get_order_by_tracking("357962501027").await.unwrap();
    assert_eq!(t.map(|o| o.id), Some("#W2611340".to_string()));

    let c = store
        .find_customer_by_email("Noah.Brown7922@EXAMPLE.com")
        .await
        .unwrap()
        .expect("customer by email");
    assert_eq!(c.id, "noah_brown_6181");
    assert_eq!(c.payment_methods.len(), 2);
    let by_zip = store
        .find_customers_by_name_zip("noah", "BROWN", "80279")
        .await
        .unwrap();
    assert_eq!(by_zip.len(), 1);
    assert!(
        store
            .find_customers_by_name_zip("noah", "brown", "00000")
            .await
            .unwrap()
            .is_empty()
    );
    let orders = store
        .list_customer_orders("ivan_santos_6635")
        .await
        .unwrap();
    let numbers: Vec<_> = orders.iter().map(|o| o.number.as_str()).collect();
    assert_eq!(
        numbers,
        ["#W6893533", "#W8770097", "#W5183325", "#W3913498"]
    );
}

// A lookup by number is an index search (a guess must not scan every order), on both engines.
on_both!(order_lookup_by_number_searches_an_index);
async fn order_lookup_by_number_searches_an_index(db: Db) {
    use sqlx::Row;
    let Some((store, _dir)) = open(db).await else {
        return;
    };
    import_tau(&store, &tau_batch()).await;
    let mut conn = store.pool().acquire().await.unwrap();
    let plan: Vec<String> = match db {
        Db::Sqlite => sqlx::query("EXPLAIN QUERY PLAN SELECT * FROM orders WHERE number_key = $1")
            .bind("#W2611340")
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect(),
        Db::Postgres => {
            // Small tables may be scanned anyway; forbid that to see whether an index serves.
            sqlx::query("SET enable_seqscan = off")
                .execute(&mut *conn)
                .await
                .unwrap();
            let plan = sqlx::query("EXPLAIN SELECT * FROM orders WHERE number_key = $1")
                .bind("#W2611340")
                .fetch_all(&mut *conn)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect();
            sqlx::query("RESET enable_seqscan")
                .execute(&mut *conn)
                .await
                .unwrap();
            plan
        }
    };
    let plan = plan.join("\n");
    assert!(
        plan.contains("orders_number_lookup")
            && !plan.contains("Seq Scan")
            && !plan.contains("SCAN orders"),
        "the lookup by number does not use the index:\n{plan}"
    );
    // Every spelling a shopper types finds the order through the key.
    for q in ["#W2611340", "W2611340", "w2611340", " #w2611340 "] {
        let o = store.get_order_by_number(q).await.unwrap();
        assert_eq!(o.map(|o| o.id), Some("#W2611340".to_string()), "{q}");
    }
}

on_both!(a_failed_import_writes_nothing);
async fn a_failed_import_writes_nothing(db: Db) {
    let Some((store, _dir)) = open(db).await else {
        return;
    };
    let mut batch = tau_batch();
    // The last order points at a customer nobody knows: the whole batch must be refused.
    if let Some(o) = batch.orders.last_mut() {
        o.customer_id = Some("nobody_0000".into());
    }
    let err = store
        .import(&batch.customers, &batch.products, &batch.orders, |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nobody_0000"), "{err}");
    let c = store.counts().await.unwrap();
    assert_eq!((c.customers, c.orders, c.products), (0, 0, 0));
}

fn inbound(thread: &str, external: Option<&str>, text: &str) -> InboundMessage {
    InboundMessage {
        channel: "api".into(),
        thread_key: thread.into(),
        external_id: external.map(str::to_string),
        sender_id: "shopper@example.com".into(),
        sender_name: Some("Sam Shopper".into()),
        sender_email: Some("shopper@example.com".into()),
        sender_verified: false,
        author_kind: AuthorKind::Customer,
        subject: None,
        text: text.into(),
        html: None,
        attachments: json!([]),
        meta: json!({}),
    }
}

on_both!(inbound_messages_are_stored_once);
async fn inbound_messages_are_stored_once(db: Db) {
    let Some((store, _dir)) = open(db).await else {
        return;
    };
    let first = store
        .ingest(&inbound("t-1", Some("m-1"), "hello"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    let again = store
        .ingest(&inbound("t-1", Some("m-1"), "hello"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(again.conversation_id, first.conversation_id);
    let second = store
        .ingest(&inbound("t-1", Some("m-2"), "are you there?"))
        .await
        .unwrap();
    assert_eq!(second.conversation_id, first.conversation_id);
    // A message without a channel id is never a duplicate.
    store.ingest(&inbound("t-1", None, "third")).await.unwrap();
    store.ingest(&inbound("t-1", None, "third")).await.unwrap();

    // Racing deliveries of one message store it once.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.ingest(&inbound("t-2", Some("race"), "same")).await
        }));
    }
    let mut ids = HashSet::new();
    let mut fresh = 0;
    for t in tasks {
        let o = t.await.unwrap().expect("ingest under race");
        ids.insert(o.message_id);
        fresh += usize::from(!o.duplicate);
    }
    assert_eq!((ids.len(), fresh), (1, 1));

    let view = store
        .conversation_view(&first.conversation_id)
        .await
        .unwrap()
        .unwrap();
    let texts: Vec<_> = view.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["hello", "are you there?", "third", "third"]);
    let seqs: Vec<_> = view.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(view.conversation.status, ConversationStatus::Open);

    // A resolved conversation reopens when the customer writes again.
    store
        .set_conversation_status(&first.conversation_id, ConversationStatus::Resolved)
        .await
        .unwrap();
    store
        .ingest(&inbound("t-1", Some("m-9"), "one more thing"))
        .await
        .unwrap();
    let c = store
        .get_conversation(&first.conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.status, ConversationStatus::Open);
    assert!(c.resolved_at.is_none());
}

on_both!(verified_senders_are_linked_to_their_customer);
async fn verified_senders_are_linked_to_their_customer(db: Db) {
    let Some((store, _dir)) = open(db).await else {
        return;
    };
    import_tau(&store, &tau_batch()).await;
    let mut m = inbound("t-v", Some("v-1"), "hi");
    m.sender_id = "noah.brown7922@example.com".into();
    m.sender_email = Some("Noah.Brown7922@example.com".into());
    m.sender_verified = true;
    let o = store.ingest(&m).await.unwrap();
    let idn = store.get_identity(&o.identity_id).await.unwrap().unwrap();
    assert!(idn.verified);
    assert_eq!(idn.customer_id.as_deref(), Some("noah_brown_6181"));
    let c = store
        .get_conversation(&o.conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.customer_id.as_deref(), Some("noah_brown_6181"));

    // An unverified claim to the same email links nothing.
    let mut m = inbound("t-u", Some("u-1"), "hi");
    m.sender_id = "someone-else".into();
    m.sender_email = Some("noah.brown7922@example.com".into());
    let o = store.ingest(&m).await.unwrap();
    let idn = store.get_identity(&o.identity_id).await.unwrap().unwrap();
    assert!(!idn.verified);
    assert_eq!(idn.customer_id, None);
}

on_both!(jobs_survive_crashes_and_back_off);
async fn jobs_survive_crashes_and_back_off(db: Db) {
    let Some((store, _dir)) = open(db).await else {
        return;
    };
    let id = store
        .enqueue_job("deliver", &json!({"to": "x"}), Some("deliver:1"), 2)
        .await
        .unwrap();
    let same = store
        .enqueue_job("deliver", &json!({"to": "x"}), Some("deliver:1"), 2)
        .await
        .unwrap();
    assert_eq!(id, same, "dedupe key queues once");
    assert_eq!(store.pending_jobs().await.unwrap(), 1);

    // Worker A claims with a short lease and "crashes"; B takes over after the lease.
    // (The lease is long enough that a loaded machine cannot let it run out before B tries.)
    let a = store
        .claim_job("worker-a", 1_000)
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(a.id, id);
    assert_eq!(a.attempts, 1);
    assert!(
        store.claim_job("worker-b", 50).await.unwrap().is_none(),
        "leased"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_050)).await;
    let b = store
        .claim_job("worker-b", 60_000)
        .await
        .unwrap()
        .expect("taken over");
    assert_eq!((b.id.as_str(), b.attempts), (id.as_str(), 2));

    // Failing its last attempt makes it dead, with the error kept; retry-now revives it.
    // Only the worker holding a job records its outcome: worker-a lost it to worker-b.
    assert_eq!(
        store.fail_job(&id, "worker-a", "late", 0).await.unwrap(),
        None
    );
    assert!(!store.complete_job(&id, "worker-a").await.unwrap());
    assert!(!store.bury_job(&id, "worker-a", "late").await.unwrap());
    let status = store
        .fail_job(&id, "worker-b", "smtp down", 0)
        .await
        .unwrap();
    assert_eq!(status, Some(JobStatus::Dead));
    let dead = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(dead.last_error.as_deref(), Some("smtp down"));
    assert!(store.claim_job("worker-c", 1000).await.unwrap().is_none());
    assert!(store.retry_job_now(&id).await.unwrap());
    let c = store
        .claim_job("worker-c", 1000)
        .await
        .unwrap()
        .expect("revived");
    assert!(store.complete_job(&c.id, "worker-c").await.unwrap());
    assert_eq!(store.pending_jobs().await.unwrap(), 0);

    // A failure with attempts left is retried later, not now.
    let id2 = store
        .enqueue_job("deliver", &json!({}), None, 5)
        .await
        .unwrap();
    let j = store.claim_job("w", 1000).await.unwrap().unwrap();
    assert_eq!(j.id, id2);
    let later = concierge::util::now_ms() + 60_000;
    assert_eq!(
        store.fail_job(&id2, "w", "timeout", later).await.unwrap(),
        Some(JobStatus::Queued)
    );
    assert!(store.claim_job("w", 1000).await.unwrap().is_none());
}

static LEASE_PROBE_TICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A job that works until stopped, counting its ticks.
fn lease_probe<'a>(
    _state: &'a concierge::state::AppState,
    _job: &'a concierge::store::Job,
) -> concierge::worker::JobFuture<'a> {
    Box::pin(async {
        loop {
            LEASE_PROBE_TICKS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test]
async fn a_job_that_lost_its_lease_stops_and_leaves_the_outcome_to_its_new_worker() {
    let app =
        crate::helpers::TestApp::spawn_with(crate::helpers::Db::Sqlite, |c| c.jobs.lease_secs = 1)
            .await;
    let store = app.store();
    // Queued for later, so the app's own worker leaves it alone; claimed here by id.
    let mut tx = store.begin_write().await.unwrap();
    let id = store
        .enqueue_job_in(
            &mut tx,
            "lease_probe",
            &json!({}),
            None,
            5,
            concierge::util::now_ms() + 3_600_000,
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let job = store
        .claim_job_by_id(&id, "worker-a", 1000)
        .await
        .unwrap()
        .expect("claimed");
    // Another worker takes the job over while worker-a runs it (as when worker-a's lease ran
    // out behind a long pause).
    let thief = store.clone();
    let stolen = id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        thief
            .write_execute(
                sqlx::query("UPDATE jobs SET locked_by = 'worker-b' WHERE id = $1")
                    .bind(stolen.as_str()),
            )
            .await
            .unwrap();
    });
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        concierge::worker::run_claimed(&app.state, "worker-a", Some(lease_probe), &job),
    )
    .await
    .expect("worker-a stops the job once it sees the lease gone");
    assert!(result.is_err(), "{result:?}");
    // Stopped for good: no more ticks.
    let ticks = LEASE_PROBE_TICKS.load(std::sync::atomic::Ordering::SeqCst);
    assert!(ticks > 0);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        LEASE_PROBE_TICKS.load(std::sync::atomic::Ordering::SeqCst),
        ticks
    );
    // Its outcome was not recorded over worker-b's claim.
    let row = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(row.status, JobStatus::Running);
    assert_eq!(row.attempts, 1);
    assert_eq!(row.last_error, None);
}
