//! Several instances on one PostgreSQL database (run when `TEST_DATABASE_URL` is set): live
//! events cross instances (an inbox event stream and a web chat socket on A see what B stored,
//! also when A was not listening at the time), the listening connection comes back when dropped,
//! the search index on A follows writes made through B (deletes included), the conversation
//! lock admits one holder across connection pools, leadership passes on when its holder dies,
//! one instance polls Telegram and another takes over when it stops, and an instance with
//! another service key refuses to start. The search feed (following, pruning, rebuilding an
//! index left behind) is also checked on one instance on both databases.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use concierge::config::Config;
use concierge::store::Store;
use concierge::util::Secret;
use serde_json::json;

use crate::helpers::{Db, TestApp, fresh_postgres, test_config};
use crate::inbox::{add_staff, login};
use crate::shopify::{SECRET as SHOPIFY_SECRET, deliver, fixture};
use crate::telegram::{FakeBotApi, TOKEN};
use crate::webchat::{connect, next_where, send};

/// A fresh database and one service key file for the instances sharing it.
struct Cluster {
    url: String,
    _keys: tempfile::TempDir,
    key_file: PathBuf,
}

impl Cluster {
    /// None (and a note) when `TEST_DATABASE_URL` is unset.
    async fn new() -> Option<Cluster> {
        let Some(url) = fresh_postgres().await else {
            eprintln!("skipped: TEST_DATABASE_URL is not set");
            return None;
        };
        let keys = tempfile::tempdir().expect("tempdir");
        let key_file = keys.path().join("service_key.pem");
        let key = concierge::gateway::identity::generate_key();
        concierge::gateway::identity::write_private_key(&key_file, &key).expect("write key");
        Some(Cluster {
            url,
            _keys: keys,
            key_file,
        })
    }

    fn configure(&self, c: &mut Config) {
        c.database.url = Some(Secret::new(self.url.clone()));
        c.server.service_key_file = Some(self.key_file.clone());
    }

    /// One more instance: its own data dir and index, the shared database and key.
    async fn instance(&self, tweak: impl FnOnce(&mut Config)) -> TestApp {
        TestApp::spawn_with(Db::Postgres, |c| {
            self.configure(c);
            tweak(c)
        })
        .await
    }
}

/// Polls `check` every 25 ms until it holds; returns how long that took, or None after `limit`.
async fn within<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The keys of `app`'s search hits for `q` among orders.
async fn order_hits(app: &TestApp, q: &str) -> Vec<String> {
    let (status, found) = app
        .get_json(&format!("/api/v1/search?q={q}&kind=orders"))
        .await;
    assert_eq!(status, 200, "{found}");
    found["hits"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|hit| hit["key"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_reach_subscribers_on_the_other_instance() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let a = cluster.instance(|_| {}).await;
    let b = cluster.instance(|_| {}).await;
    add_staff(&a, "ana@example.com", "agent").await;

    // The staff inbox's event stream on A sees a message that came in through B.
    let ana_a = login(&a, "ana@example.com").await;
    let mut events = ana_a
        .client
        .get(a.url("/inbox/events"))
        .header("cookie", format!("concierge_staff={}", ana_a.cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let (status, body) = b
        .post_message(json!({"thread": "cluster-1", "text": "Do you ship to Canada?"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let acked = Instant::now();
    let conv = body["conversation_id"].as_str().unwrap().to_string();
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(chunk) = events.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: message") && seen.contains(&conv) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "A's stream within 1 s of B's answer: {seen}");
    eprintln!(
        "inbox event on A: {} ms after B answered",
        acked.elapsed().as_millis()
    );
    assert!(!seen.contains("Do you ship"), "ids only: {seen}");

    // A web chat socket held by A gets a staff reply sent through B.
    let mut ws = connect(&a).await;
    send(&mut ws, json!({"type": "hello"})).await;
    let welcome = next_where(&mut ws, |v| v["type"] == "welcome").await;
    let token = welcome["token"].as_str().unwrap().to_string();
    send(
        &mut ws,
        json!({"type": "message", "text": "How many days do I have to return something?", "client_id": "c-1"}),
    )
    .await;
    next_where(&mut ws, |v| v["type"] == "ack").await;
    next_where(&mut ws, |v| {
        v["type"] == "message" && v["author"] == "brand_agent"
    })
    .await;
    let chat = a
        .store()
        .conversation_by_thread(
            "webchat",
            &format!("webchat:{}", token.split('.').nth(1).unwrap()),
        )
        .await
        .unwrap()
        .expect("the chat's conversation");
    let ana_b = login(&b, "ana@example.com").await;
    let sent = Instant::now();
    let (status, _) = ana_b
        .post(
            &format!("/inbox/c/{}/reply", chat.id),
            &[(
                "text",
                "Hi, Ana from the team: 30 days, and the label is free.",
            )],
        )
        .await;
    assert_eq!(status, 303);
    let replied = Instant::now();
    let frame = next_where(&mut ws, |v| {
        v["type"] == "message" && v["author"] == "staff"
    })
    .await;
    let after_reply = replied.elapsed();
    assert!(
        frame["text"]
            .as_str()
            .unwrap()
            .contains("Ana from the team")
    );
    assert!(
        after_reply < Duration::from_secs(1),
        "the staff reply reached A's socket {after_reply:?} after B stored it"
    );
    eprintln!(
        "staff reply on A's socket: {} ms after B acknowledged it ({} ms after it was sent)",
        after_reply.as_millis(),
        sent.elapsed().as_millis()
    );

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_on_one_instance_follows_writes_through_the_other() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let webhooks = |c: &mut Config| c.shopify.webhook_secret = Some(Secret::new(SHOPIFY_SECRET));
    let a = cluster.instance(webhooks).await;
    let b = cluster.instance(webhooks).await;

    // Created through B: found on A.
    let (status, reply) = deliver(
        &b,
        "orders/create",
        "cl-1",
        &fixture("orders_create_body_compact.json"),
    )
    .await;
    assert_eq!((status, &reply["applied"]), (200, &json!(true)), "{reply}");
    let took = within(Duration::from_secs(2), || async {
        order_hits(&a, "1001").await.contains(&"#1001".to_string())
    })
    .await;
    let took = took.expect("an order created through B is found on A within 2 s");
    eprintln!("created on B, found on A after {} ms", took.as_millis());

    // The customer's new email, written through B: A finds the order by it.
    let mut customer = b
        .store()
        .get_customer("shopify-207119551")
        .await
        .unwrap()
        .expect("the order's customer");
    customer.emails = vec!["robert.norman@example.net".into()];
    b.store().put_customer(&customer).await.unwrap();
    let took = within(Duration::from_secs(2), || async {
        order_hits(&a, "robert.norman@example.net")
            .await
            .contains(&"#1001".to_string())
    })
    .await
    .expect("an update through B is searchable on A within 2 s");
    eprintln!("updated on B, found on A after {} ms", took.as_millis());

    // Deleted in the shop (webhook to B): gone from A's search.
    let (status, reply) = deliver(&b, "orders/delete", "cl-2", br#"{"id": 450789469}"#).await;
    assert_eq!((status, &reply["order"]), (200, &json!("#1001")), "{reply}");
    let took = within(Duration::from_secs(2), || async {
        !order_hits(&a, "1001").await.contains(&"#1001".to_string())
    })
    .await
    .expect("an order deleted through B leaves A's search within 2 s");
    eprintln!("deleted on B, gone from A after {} ms", took.as_millis());
    assert!(
        within(Duration::from_secs(2), || async {
            order_hits(&b, "1001").await.is_empty()
        })
        .await
        .is_some(),
        "and from B's own"
    );
    assert_eq!(
        a.store().get_order("shopify-450789469").await.unwrap(),
        None
    );

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_lock_admits_one_holder_across_pools() {
    let Some(url) = fresh_postgres().await else {
        eprintln!("skipped: TEST_DATABASE_URL is not set");
        return;
    };
    let one = Store::connect(&url, 8).await.unwrap();
    let two = Store::connect(&url, 4).await.unwrap();

    let held = one.lock_conversation_pg("cnv_1").await.unwrap();
    assert!(
        two.try_xact_lock("conversation:cnv_1")
            .await
            .unwrap()
            .is_none(),
        "a second pool cannot take a held lock"
    );
    // Another conversation's lock is independent.
    two.lock_conversation_pg("cnv_2")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let two = two.clone();
        async move {
            let lock = two.lock_conversation_pg("cnv_1").await.unwrap();
            let got = Instant::now();
            lock.release().await.unwrap();
            got
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the second holder waits");
    // Waiters hold no connection: many of them leave the pool free for other work.
    let many: Vec<_> = (0..12)
        .map(|_| {
            let two = two.clone();
            tokio::spawn(async move {
                two.lock_conversation_pg("cnv_1")
                    .await
                    .unwrap()
                    .release()
                    .await
                    .unwrap()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(Duration::from_secs(2), two.ping())
        .await
        .expect("the pool is not exhausted by waiters")
        .unwrap();
    let released = Instant::now();
    held.release().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("the waiter gets the lock once released")
        .unwrap();
    assert!(got.duration_since(released) < Duration::from_secs(1));
    for w in many {
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("every waiter gets its turn")
            .unwrap();
    }

    // A dropped guard releases too (its transaction rolls back).
    drop(one.lock_conversation_pg("cnv_1").await.unwrap());
    tokio::time::timeout(Duration::from_secs(2), two.lock_conversation_pg("cnv_1"))
        .await
        .expect("a dropped guard releases the lock")
        .unwrap()
        .release()
        .await
        .unwrap();

    // Many turns of one conversation over both pools: never two at once, none skipped.
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut turns = Vec::new();
    for i in 0..24 {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        let (running, most, done) = (running.clone(), most.clone(), done.clone());
        turns.push(tokio::spawn(async move {
            let lock = store.lock_conversation_pg("cnv_busy").await.unwrap();
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            done.fetch_add(1, Ordering::SeqCst);
            lock.release().await.unwrap();
        }));
    }
    for t in turns {
        t.await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two turns at once");
    assert_eq!(done.load(Ordering::SeqCst), 24);

    // On SQLite the advisory lock is refused with a reason (the in-process lock serves there).
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(dir.path(), None, 2).await.unwrap();
    let refused = sqlite.lock_conversation_pg("cnv_1").await.unwrap_err();
    assert!(refused.to_string().contains("PostgreSQL"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_is_exclusive_and_passes_on_when_the_leader_dies() {
    let Some(url) = fresh_postgres().await else {
        eprintln!("skipped: TEST_DATABASE_URL is not set");
        return;
    };
    let one = Store::connect(&url, 4).await.unwrap();
    let two = Store::connect(&url, 4).await.unwrap();
    let mut leader = one.try_leadership("poller").await.unwrap().expect("first");
    assert!(two.try_leadership("poller").await.unwrap().is_none());
    assert!(leader.check().await);
    // Other roles are independent.
    two.try_leadership("other")
        .await
        .unwrap()
        .expect("another role")
        .release()
        .await;
    // The leader's connection goes away without a word (what a killed process leaves):
    // PostgreSQL frees the lock and the other pool takes it.
    drop(leader);
    let took = within(Duration::from_secs(5), || async {
        match two.try_leadership("poller").await.unwrap() {
            Some(l) => {
                l.release().await;
                true
            }
            None => false,
        }
    })
    .await;
    assert!(
        took.is_some(),
        "leadership passes on once the leader is gone"
    );

    // `lead` runs the work on one instance at a time and hands over when the leader stops.
    let working = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let leaders = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let run = |who: usize, store: Store, stop: tokio_util::sync::CancellationToken| {
        let (working, most, leaders) = (working.clone(), most.clone(), leaders.clone());
        tokio::spawn(async move {
            store
                .lead("worker", stop, |lost| {
                    let (working, most, leaders) = (working.clone(), most.clone(), leaders.clone());
                    async move {
                        leaders.lock().unwrap().push(who);
                        let now = working.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        lost.cancelled().await;
                        working.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .await
        })
    };
    let stops = [
        tokio_util::sync::CancellationToken::new(),
        tokio_util::sync::CancellationToken::new(),
    ];
    let mut tasks = vec![
        Some(run(0, one.clone(), stops[0].clone())),
        Some(run(1, two.clone(), stops[1].clone())),
    ];
    let led = |n: usize| {
        let leaders = leaders.clone();
        move || {
            let leaders = leaders.clone();
            async move { leaders.lock().unwrap().len() == n }
        }
    };
    assert!(within(Duration::from_secs(3), led(1)).await.is_some());
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let first = leaders.lock().unwrap().clone();
    assert_eq!(first.len(), 1, "the follower waits: {first:?}");
    stops[first[0]].cancel();
    tasks[first[0]].take().unwrap().await.unwrap();
    let handed = within(Duration::from_secs(5), led(2))
        .await
        .expect("the other instance leads within a few seconds");
    eprintln!("leadership handed over after {} ms", handed.as_millis());
    assert_eq!(
        *leaders.lock().unwrap(),
        vec![first[0], 1 - first[0]],
        "the other one took over"
    );
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two leaders at once");
    for (stop, task) in stops.iter().zip(tasks) {
        stop.cancel();
        if let Some(t) = task {
            t.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_comes_back_when_its_connection_is_killed() {
    use concierge::store::cluster::Notice;
    let Some(url) = fresh_postgres().await else {
        eprintln!("skipped: TEST_DATABASE_URL is not set");
        return;
    };
    let store = Store::connect(&url, 4).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (listener, task) = store
        .listen(&["cluster_test"], stop.clone())
        .await
        .expect("PostgreSQL listens");
    // The next notice, from a subscription taken now (before what should cause it).
    let next = || {
        let mut rx = listener.subscribe();
        async move {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a notice within 5 s")
                .unwrap()
        }
    };
    let waiting = next();
    store.notify("cluster_test", "one").await.unwrap();
    assert_eq!(
        waiting.await,
        Notice::Notification {
            channel: "cluster_test".into(),
            payload: "one".into()
        }
    );

    // The server drops the listening connection: it is re-opened, subscribers are told to
    // re-read, and notifications flow again.
    let before = concierge::util::now_ms();
    let waiting = next();
    let killed = sqlx::query(
        "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(killed.len(), 1, "one listening connection");
    match waiting.await {
        Notice::Resumed { lost_at } => {
            assert!(lost_at <= concierge::util::now_ms() && lost_at > before - 60_000)
        }
        other => panic!("expected Resumed, got {other:?}"),
    }
    let waiting = next();
    store.notify("cluster_test", "two").await.unwrap();
    assert_eq!(
        waiting.await,
        Notice::Notification {
            channel: "cluster_test".into(),
            payload: "two".into()
        }
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_missed_while_not_listening_is_caught_up() {
    use concierge::events::InboxEvent;
    use concierge::store::{AuthorKind, Direction, NewMessage};
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let a = cluster.instance(|_| {}).await;
    let b = cluster.instance(|_| {}).await;
    add_staff(&a, "ana@example.com", "agent").await;
    let (status, body) = b
        .post_message(json!({"thread": "cluster-gap", "text": "Do you ship to Canada?"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let conv = body["conversation_id"].as_str().unwrap().to_string();
    let ana = login(&a, "ana@example.com").await;
    let mut events = ana
        .client
        .get(a.url("/inbox/events"))
        .header("cookie", format!("concierge_staff={}", ana.cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);

    // No new connections to the database, and the listening ones dropped: the instances keep
    // their pools' open connections but cannot listen again yet.
    let admin_url = std::env::var("TEST_DATABASE_URL").unwrap();
    let admin = Store::connect(&admin_url, 1).await.unwrap();
    let db = cluster.url.rsplit('/').next().unwrap().to_string();
    let allow =
        |yes: bool| sqlx::AssertSqlSafe(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS {yes}"));
    sqlx::query(allow(false))
        .execute(admin.pool())
        .await
        .unwrap();
    let killed = sqlx::query(
        "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity \
         WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(db.as_str())
    .fetch_all(admin.pool())
    .await
    .unwrap();
    assert_eq!(killed.len(), 2, "each instance's listening connection");

    // Meanwhile a staff member answers through B: its notification reaches nobody on A.
    let message = b
        .store()
        .append_message(
            &conv,
            &NewMessage {
                direction: Direction::Outbound,
                author_kind: AuthorKind::Staff,
                author_id: Some("staff-b".into()),
                text: "Yes, we ship to Canada.".into(),
                html: None,
                meta: json!({}),
            },
        )
        .await
        .unwrap();
    b.state.hub.publish(InboxEvent::Message {
        conversation_id: conv.clone(),
        message: Box::new(message.clone()),
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    sqlx::query(allow(true))
        .execute(admin.pool())
        .await
        .unwrap();

    // Listening again, A re-reads what was stored meanwhile and its stream shows it.
    let wanted = format!("\"seq\":{}", message.seq);
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = events.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains(&conv) && seen.contains(&wanted) && seen.contains("staff") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "{seen}");
    admin.close().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_polls_telegram_and_another_takes_over_when_it_stops() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let fake = FakeBotApi::start().await;
    let polling = |tag: &'static str| {
        let api = format!("{}/{tag}", fake.url);
        move |c: &mut Config| {
            c.telegram.token = Some(Secret::new(TOKEN));
            c.telegram.api_url = api;
            c.telegram.poll_timeout_secs = 1;
        }
    };
    let mut apps = vec![
        Some(cluster.instance(polling("a")).await),
        Some(cluster.instance(polling("b")).await),
    ];

    tokio::time::sleep(Duration::from_secs(3)).await;
    let polls = fake.polls();
    let mut tags: Vec<String> = polls.iter().filter_map(|p| p.tag.clone()).collect();
    tags.dedup();
    assert_eq!(tags.len(), 1, "one poller at a time: {polls:?}");
    let leader = tags[0].clone();

    fake.push_text(1, "/start");
    let sent = fake.wait_sent(1, 15).await;
    assert_eq!(sent.len(), 1, "answered once: {sent:?}");

    // The leader stops; the other instance polls within a few seconds.
    let index = usize::from(leader == "b");
    let before = fake.polls().len();
    let stopped = Instant::now();
    apps[index].take().unwrap().stop().await;
    let other = if leader == "a" { "b" } else { "a" };
    let took = within(Duration::from_secs(5), || async {
        fake.polls()[before..]
            .iter()
            .any(|p| p.tag.as_deref() == Some(other))
    })
    .await
    .expect("the other instance takes over polling");
    eprintln!(
        "Telegram polling moved after {} ms",
        stopped.elapsed().as_millis().max(took.as_millis())
    );
    fake.push_text(2, "thanks!");
    let sent = fake.wait_sent(2, 15).await;
    assert_eq!(
        sent.len(),
        2,
        "the new poller answers, and not update 1 again: {sent:?}"
    );
    let after: Vec<_> = fake.polls()[before..].to_vec();
    let late = after
        .iter()
        .skip_while(|p| p.tag.as_deref() == Some(leader.as_str()))
        .filter(|p| p.tag.as_deref() == Some(leader.as_str()))
        .count();
    assert_eq!(late, 0, "the stopped instance no longer polls: {after:?}");

    for app in apps.into_iter().flatten() {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_another_service_key_refuses_to_start() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let a = cluster.instance(|_| {}).await;

    // Its own data dir's key, not the shared one.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.database.url = Some(Secret::new(cluster.url.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = concierge::app::Application::build_with_listener(config.clone(), listener)
        .await
        .err()
        .expect("a second key is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("is not the key this database was started with")
            && message.contains("service_key_file"),
        "{message}"
    );

    // A key file that is not there is named.
    config.server.service_key_file = Some(dir.path().join("missing.pem"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = concierge::app::Application::build_with_listener(config, listener)
        .await
        .err()
        .expect("a missing key file is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("service_key_file") && message.contains("missing.pem"),
        "{message}"
    );

    // With the shared key it starts, and signs with the same key.
    let b = cluster.instance(|_| {}).await;
    assert_eq!(
        concierge::gateway::service_key(&a.state)
            .unwrap()
            .verifying_key(),
        concierge::gateway::service_key(&b.state)
            .unwrap()
            .verifying_key()
    );
    a.stop().await;
    b.stop().await;
}

/// Whether `app`'s search for `q` (among `kind`) has a hit with this key.
async fn finds(app: &TestApp, kind: &str, q: &str, key: &str) -> bool {
    let (status, v) = app
        .get_json(&format!("/api/v1/search?q={q}&kind={kind}"))
        .await;
    assert_eq!(status, 200, "{v}");
    v["hits"]
        .as_array()
        .is_some_and(|h| h.iter().any(|hit| hit["key"] == key))
}

/// On one instance, either database: the index follows webhooks (deletes included) and catches
/// up on writes made while the instance was down.
async fn search_follows_the_store(db: Db) {
    let Some(app) = TestApp::spawn_on_with(db, |c| {
        c.shopify.webhook_secret = Some(Secret::new(SHOPIFY_SECRET))
    })
    .await
    else {
        return;
    };
    let two = Duration::from_secs(2);
    let (status, reply) = deliver(
        &app,
        "orders/create",
        "f-1",
        &fixture("orders_create_body_compact.json"),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert!(
        within(two, || finds(&app, "orders", "1001", "#1001"))
            .await
            .is_some()
    );

    // A product, then its deletion in the shop.
    let (status, reply) = deliver(
        &app,
        "products/create",
        "f-2",
        &fixture("shopify_python_api__product.json"),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let product = "shopify-632910392";
    assert!(
        within(two, || finds(&app, "products", "ipod", product))
            .await
            .is_some(),
        "the product is found by its title"
    );
    let (status, _) = deliver(&app, "products/delete", "f-3", br#"{"id": 632910392}"#).await;
    assert_eq!(status, 200);
    assert!(
        within(two, || async {
            !finds(&app, "products", "ipod", product).await
        })
        .await
        .is_some(),
        "a product deleted in the shop leaves the search"
    );
    assert_eq!(app.store().get_product(product).await.unwrap(), None);
    // Deleting what is not there is done, and changes nothing.
    let (status, reply) = deliver(&app, "products/delete", "f-4", br#"{"id": 1}"#).await;
    assert_eq!((status, &reply["applied"]), (200, &json!(true)), "{reply}");

    // Written while the instance was down: found after it starts again.
    let mut order = app
        .store()
        .get_order("shopify-450789469")
        .await
        .unwrap()
        .unwrap();
    order.id = "shopify-9900001".into();
    order.number = "#9900001".into();
    let data = app.data_dir();
    let url = app.config.database_url().map(|u| u.expose().to_string());
    let app = app
        .restart_with(move || {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async {
                    let store = Store::open(&data, url.as_deref(), 2).await.unwrap();
                    store.put_order(&order).await.unwrap();
                    store.close().await;
                })
            })
            .join()
            .unwrap()
        })
        .await;
    assert!(
        within(two, || finds(&app, "orders", "9900001", "#9900001"))
            .await
            .is_some(),
        "caught up after the restart"
    );
    assert!(finds(&app, "orders", "1001", "#1001").await);
    app.stop().await;
}
on_both!(search_follows_the_store);

/// The feed keeps its newest row when pruned, and an index whose position the pruning passed
/// (or that is ahead of the feed, or has no position) is rebuilt at start.
async fn the_feed_is_pruned_and_an_index_behind_it_rebuilds(db: Db) {
    use concierge::search::SearchIndex;
    use concierge::search::feed::must_rebuild;
    let dir = tempfile::tempdir().unwrap();
    let store = match db {
        Db::Sqlite => Store::open(dir.path(), None, 2).await.unwrap(),
        Db::Postgres => match fresh_postgres().await {
            Some(url) => Store::connect(&url, 2).await.unwrap(),
            None => return,
        },
    };
    let batch = concierge::import::shopify::parse_products(
        "product",
        &fixture("shopify_python_api__product.json"),
    )
    .unwrap();
    for _ in 0..3 {
        store.put_product(&batch.products[0]).await.unwrap();
    }
    let (oldest, newest) = store.search_changes_bounds().await.unwrap();
    let (oldest, newest) = (oldest.unwrap(), newest.unwrap());
    assert_eq!(newest - oldest, 2, "one row per write");
    let changes = store.search_changes_after(oldest, 10).await.unwrap();
    assert_eq!(changes.len(), 2);
    assert!(
        changes
            .iter()
            .all(|c| c.key == "shopify-632910392" && !c.deleted)
    );

    let at = |position: Option<i64>| {
        let index = SearchIndex::open_in_ram().unwrap();
        index
            .rebuild_at(std::iter::empty(), position, |_| {})
            .unwrap();
        assert_eq!(index.feed_position(), position);
        index
    };
    let current = at(Some(newest));
    let behind = at(Some(oldest));
    assert!(!must_rebuild(&store, &current).await.unwrap());
    assert!(!must_rebuild(&store, &behind).await.unwrap());
    assert!(
        must_rebuild(&store, &at(None)).await.unwrap(),
        "no position"
    );
    assert!(
        must_rebuild(&store, &at(Some(newest + 5))).await.unwrap(),
        "ahead of the feed: another database"
    );

    let pruned = store
        .prune_search_changes(concierge::util::now_ms() + 1)
        .await
        .unwrap();
    assert_eq!(pruned, 2, "all but the newest row");
    assert_eq!(
        store.search_changes_bounds().await.unwrap(),
        (Some(newest), Some(newest))
    );
    assert!(!must_rebuild(&store, &current).await.unwrap());
    assert!(
        must_rebuild(&store, &behind).await.unwrap(),
        "rows after its position were pruned"
    );
    store.close().await;
}
on_both!(the_feed_is_pruned_and_an_index_behind_it_rebuilds);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_to_one_conversation_over_two_instances_take_turns() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let a = Arc::new(cluster.instance(|_| {}).await);
    let b = Arc::new(cluster.instance(|_| {}).await);
    const N: usize = 50;
    let mut sends = Vec::new();
    for i in 0..N {
        let app = if i % 2 == 0 { a.clone() } else { b.clone() };
        sends.push(tokio::spawn(async move {
            app.post_message(json!({
                "thread": "cluster-turns",
                "message_id": format!("turn-{i}"),
                "text": format!("Question {i}: what is your return policy?"),
            }))
            .await
        }));
    }
    let mut conversation = None;
    for s in sends {
        let (status, body) = s.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body["reply"]["text"].is_string(), "answered: {body}");
        conversation = body["conversation_id"].as_str().map(str::to_string);
    }
    let view = a
        .state
        .store
        .conversation_view(&conversation.unwrap())
        .await
        .unwrap()
        .unwrap();
    let inbound: Vec<_> = view
        .messages
        .iter()
        .filter(|m| m.direction == concierge::store::Direction::Inbound)
        .collect();
    assert_eq!(inbound.len(), N, "every message stored once");
    let mut turns: Vec<(i64, i64, String)> = view
        .messages
        .iter()
        .filter(|m| m.author_kind == concierge::store::AuthorKind::BrandAgent)
        .map(|m| {
            (
                m.meta["turn_started_at"]
                    .as_i64()
                    .expect("the turn's start"),
                m.created_at,
                m.meta["in_reply_to"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(turns.len(), N, "every message answered once");
    let answered: std::collections::HashSet<&str> = turns.iter().map(|t| t.2.as_str()).collect();
    assert_eq!(answered.len(), N, "each answer names a different message");
    turns.sort();
    for pair in turns.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two turns of one conversation ran at once: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}
