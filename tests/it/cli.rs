//! The `concierge` binary as an operator runs it: import, export, reindex, and the README's
//! demo command.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{repo_path, shared_data};

/// The `concierge` binary, run from the repository (so the brand folders are found) on
/// `data_dir`.
pub(crate) fn concierge(data_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_concierge"));
    c.current_dir(repo_path(""))
        .env_remove("DATABASE_URL")
        .env_remove("CONCIERGE_API_KEY")
        .env("RUST_LOG", "warn")
        .env("CONCIERGE_DATA_DIR", data_dir);
    c
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run concierge");
    assert!(
        out.status.success(),
        "concierge failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn tau_import_export_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = shared_data("tau-bench-retail/tau-bench-v1");
    let out = run_ok(concierge(&data).args(["import", "tau-retail"]).arg(&src));
    assert!(out.contains("500 customers"), "{out}");
    assert!(out.contains("1000 orders"), "{out}");
    // Again: an upsert, the export is the same.
    run_ok(concierge(&data).args(["import", "tau-retail"]).arg(&src));
    let exported = tmp.path().join("export");
    run_ok(
        concierge(&data)
            .args(["export", "tau-retail"])
            .arg(&exported),
    );
    for f in ["users.json", "orders.json", "products.json"] {
        let a = read_json(&src.join(f));
        let b = read_json(&exported.join(f));
        assert!(a == b, "{f} differs after import → export");
    }
    // The export imports back to the same state.
    let data2 = tmp.path().join("data2");
    run_ok(
        concierge(&data2)
            .args(["import", "tau-retail"])
            .arg(&exported),
    );
    let exported2 = tmp.path().join("export2");
    run_ok(
        concierge(&data2)
            .args(["export", "tau-retail"])
            .arg(&exported2),
    );
    assert_eq!(
        read_json(&exported.join("orders.json")),
        read_json(&exported2.join("orders.json"))
    );
    let out = run_ok(concierge(&data).arg("reindex"));
    assert!(out.contains("Reindexed"), "{out}");
}

#[test]
fn shopify_fixtures_import_and_a_corrupt_file_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dir = shared_data("webhooks/shopify");
    for (kind, file) in [
        ("shopify-customers", "shopify_python_api__customer.json"),
        ("shopify-products", "shopify_python_api__product.json"),
        ("shopify-orders", "shopify_python_api__orders.json"),
        ("shopify-orders", "shopify_python_api__order.json"),
        ("shopify-orders", "orders_create_body_compact.json"),
    ] {
        run_ok(concierge(&data).args(["import", kind]).arg(dir.join(file)));
    }
    let before = tmp.path().join("before");
    run_ok(concierge(&data).args(["export", "tau-retail"]).arg(&before));
    // τ-bench's format keys orders by id; Shopify order 450789469 ("#1001") is there with its
    // three lines, its tracking number and its customer.
    let orders = read_json(&before.join("orders.json"));
    let o = &orders["shopify-450789469"];
    assert_eq!(o["user_id"], "shopify-207119551", "{orders}");
    assert_eq!(o["items"].as_array().map(Vec::len), Some(3), "{o}");
    assert_eq!(o["fulfillments"][0]["tracking_id"][0], "1Z2345", "{o}");
    let users = read_json(&before.join("users.json"));
    assert_eq!(
        users["shopify-207119551"]["email"], "bob.norman@hostmail.com",
        "{users}"
    );

    // Corrupt the second record of a two-order file.
    let mut doc = read_json(&dir.join("shopify_python_api__orders.json"));
    let first = doc["orders"][0].clone();
    let mut second = first.clone();
    second["id"] = json!(999_000_111);
    second["name"] = json!("#9001");
    second["total_price"] = json!("twelve dollars");
    doc["orders"] = json!([first, second]);
    let bad = tmp.path().join("bad_orders.json");
    std::fs::write(&bad, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = concierge(&data)
        .args(["import", "shopify-orders"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad_orders.json"), "{err}");
    assert!(err.contains("record 1"), "{err}");
    assert!(err.contains("total_price"), "{err}");
    let after = tmp.path().join("after");
    run_ok(concierge(&data).args(["export", "tau-retail"]).arg(&after));
    for f in ["users.json", "orders.json", "products.json"] {
        assert_eq!(
            read_json(&before.join(f)),
            read_json(&after.join(f)),
            "{f} changed"
        );
    }
}

/// A `concierge serve` child process, killed when dropped.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The README's demo command, on a fresh data dir: it serves, answers health, stores a message
/// and recognizes its duplicate; SIGTERM stops it cleanly.
#[test]
fn demo_command_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut child = concierge(&data)
        .args(["serve", "--demo", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start demo");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut server = Server(child);
    // The logs, kept to check: not a terminal, so no colour codes.
    let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            sink.lock().unwrap().push_str(&line);
        }
    });
    // Read the banner on a thread that keeps draining stdout afterwards.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut health, mut key, mut chat, mut example) = (None, None, None, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while health.is_none() || key.is_none() || chat.is_none() || example.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo did not print its banner in time");
        if let Some(u) = line.trim().strip_prefix("Health:") {
            health = Some(u.trim().to_string());
        }
        if let Some(k) = line.trim().strip_prefix("API key:") {
            key = Some(k.trim().to_string());
        }
        if let Some(u) = line.trim().strip_prefix("Web chat:") {
            chat = u.split_whitespace().next().map(str::to_string);
        }
        if let Some(rest) = line.split("Where is my order ").nth(1) {
            example = rest.split('?').next().map(str::to_string);
        }
    }
    let (chat, example) = (chat.unwrap_or_default(), example.unwrap_or_default());
    let (health, key) = (health.unwrap_or_default(), key.unwrap_or_default());
    let base = health.trim_end_matches("/healthz").to_string();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = concierge::http_client::client();
        let r = client.get(&health).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let body = json!({"thread": "demo", "from": {"name": "Sam"}, "text": "hello", "message_id": "d-1"});
        let post = || {
            client
                .post(format!("{base}/api/v1/messages"))
                .bearer_auth(&key)
                .json(&body)
                .send()
        };
        let a: Value = post().await.unwrap().json().await.unwrap();
        let b: Value = post().await.unwrap().json().await.unwrap();
        assert_eq!((a["duplicate"].clone(), b["duplicate"].clone()), (json!(false), json!(true)));
        let conv: Value = client
            .get(format!("{base}/api/v1/conversations/{}", a["conversation_id"].as_str().unwrap()))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(conv["messages"][0]["text"], "hello");
        // The demo store is searchable.
        let hits: Value = client
            .get(format!("{base}/api/v1/search?q=returns&kind=policies"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(!hits["hits"].as_array().unwrap().is_empty(), "{hits}");
        // The demo page printed in the banner shows the demo store's own products and asks
        // about an order the store has.
        let page = client.get(&chat).send().await.unwrap().text().await.unwrap();
        assert!(!page.contains("%%"), "unfilled: {page}");
        assert_eq!(page.matches("data-testid=\"demo-product\"><span class=\"tag\">").count(), 4);
        assert!(page.contains(&format!("Where is my order {example}?")), "{example}: {page}");
        let found: Value = client
            .get(format!("{base}/api/v1/orders/{}", example.trim_start_matches('#')))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(found.to_string().contains(example.trim_start_matches('#')), "{found}");
    });
    let logs = logs.lock().unwrap().clone();
    assert!(
        !logs.is_empty() && !logs.contains('\u{1b}'),
        "colour codes in the logs: {logs:?}"
    );

    // Graceful stop on SIGTERM.
    let pid = server.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            assert!(status.success(), "demo exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `concierge eval intents` reports the shipped classifier's held-out accuracy, which must stay
/// at or above 90 %.
#[test]
fn eval_intents_reports_accuracy_above_ninety_percent() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = shared_data(
        "bitext-customer-support/Bitext_Sample_Customer_Support_Training_Dataset_4514.csv",
    );
    let out = run_ok(
        concierge(&tmp.path().join("data"))
            .args(["eval", "intents", "--data"])
            .arg(csv),
    );
    let line = out.lines().next().unwrap_or_default();
    let accuracy: f64 = line
        .strip_prefix("accuracy ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy line: {out}"));
    assert!(accuracy >= 0.90, "held-out accuracy {accuracy}: {out}");
    assert!(out.contains("most confused"), "{out}");
}

/// `concierge audit verify` passes on an intact log and names the first altered entry.
#[test]
fn audit_verify_names_the_first_altered_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_ok(
        concierge(&data)
            .args(["import", "tau-retail"])
            .arg(shared_data("tau-bench-retail/tau-bench-v1")),
    );
    let out = run_ok(concierge(&data).args(["audit", "verify"]));
    assert!(out.contains("intact: 0 entries"), "{out}");

    // Three writes through the tool layer, as the offline resolver would make them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use concierge::agent::tools::{self, Actor, ToolCall, ToolContext};
        let store = concierge::store::Store::open(&data, None, 2).await.unwrap();
        let policy =
            concierge::commerce::policy::Policy::load(&repo_path("brand/policy.toml")).unwrap();
        let ctx = ToolContext {
            store: &store,
            policy: &policy,
            actor: Actor::OfflineResolver,
            customer_id: Some("ivan_santos_6635".into()),
            now: concierge::util::now_ms(),
        };
        for order in ["#W5183325", "#W3913498", "#W6893533"] {
            let call = ToolCall::CancelOrder {
                order_id: order.into(),
                reason: "no longer needed".into(),
            };
            let _ = tools::execute(&ctx, &call).await; // the delivered one is refused, and logged
        }
        store.close().await;
    });
    let out = run_ok(concierge(&data).args(["audit", "verify"]));
    assert!(out.contains("intact: 3 entries"), "{out}");

    // Someone edits entry 2 behind the service's back.
    let db = data.join("concierge.db");
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query("DROP TRIGGER audit_log_no_update")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_log SET outcome = 'applied' WHERE seq = 2")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    });
    let out = concierge(&data).args(["audit", "verify"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("audit entry 2"), "{err}");
}
