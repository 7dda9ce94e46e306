//! The test harness: a fresh app per test (its own temp data dir, SQLite by default or a fresh
//! PostgreSQL database when `TEST_DATABASE_URL` is set and the test asks for it), bound to port 0,
//! with a typed client. Logs are silent unless `TEST_LOG` is set.

use std::path::{Path, PathBuf};
use std::sync::Once;

use concierge::app::{AppState, Application};
use concierge::config::Config;
use concierge::store::Store;
use concierge::util::Secret;
use serde_json::Value;
use tokio::sync::oneshot;

pub const API_KEY: &str = "test-api-key-0123456789";

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A path in ../shared/data; fails with a message naming it when absent.
pub fn shared_data(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel);
    assert!(
        p.exists(),
        "test data missing: {} (the shared data folder must sit beside the repo)",
        p.display()
    );
    p
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            concierge::telemetry::init_tracing(&Default::default());
        }
    });
}

/// `on_both!(story)` runs `async fn story(db: Db)` as two tests: on SQLite always, on
/// PostgreSQL when `TEST_DATABASE_URL` is set (as CI does).
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            use $crate::helpers::Db;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if std::env::var("TEST_DATABASE_URL").is_err() {
                    eprintln!("skipped: TEST_DATABASE_URL is not set");
                    return;
                }
                super::$name(Db::Postgres).await
            }
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A fresh, empty PostgreSQL database on the `TEST_DATABASE_URL` server, or None when the
/// variable is unset.
pub async fn fresh_postgres() -> Option<String> {
    let base = std::env::var("TEST_DATABASE_URL").ok()?;
    use sqlx::Connection;
    let name = format!("concierge_t_{}", uuid_simple());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("TEST_DATABASE_URL is set but PostgreSQL is unreachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let _ = conn.close().await;
    let (prefix, _) = base
        .rsplit_once('/')
        .expect("TEST_DATABASE_URL has a database name");
    Some(format!("{prefix}/{name}"))
}

fn uuid_simple() -> String {
    concierge::util::new_id("t").replace("t_", "")
}

pub struct TestApp {
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub state: AppState,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::load(None, Vec::<(String, String)>::new()).expect("default config");
    config.data_dir = dir.join("data");
    config.brand.dir = repo_path("brand");
    config.brand.prompts = repo_path("prompts");
    config.brand.channels = repo_path("channels");
    config.api.key = Some(Secret::new(API_KEY));
    config.jobs.poll_interval_ms = 50;
    // Generous limits: tests of other features must not trip them (tests/it/limits.rs sets
    // tight ones).
    config.limits.public_per_ip_per_minute = 100_000;
    config.limits.agent_key_per_minute = 100_000;
    config.limits.password_check_queue = 256;
    config.chat.messages_per_minute = 10_000;
    config.chat.messages_per_minute_per_ip = 10_000;
    config.chat.typing_per_minute = 10_000;
    config.chat.sockets_per_ip = 10_000;
    config
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(Db::Sqlite, |_| {}).await
    }

    /// Spawns on the given database; returns None for Postgres when TEST_DATABASE_URL is unset.
    pub async fn spawn_on(db: Db) -> Option<TestApp> {
        match db {
            Db::Sqlite => Some(TestApp::spawn().await),
            Db::Postgres => {
                let url = fresh_postgres().await?;
                Some(
                    TestApp::spawn_with(Db::Postgres, move |c| {
                        c.database.url = Some(Secret::new(url.clone()))
                    })
                    .await,
                )
            }
        }
    }

    /// [`TestApp::spawn_on`] with a configuration tweak.
    pub async fn spawn_on_with(db: Db, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
        match db {
            Db::Sqlite => Some(TestApp::spawn_with(Db::Sqlite, tweak).await),
            Db::Postgres => {
                let url = fresh_postgres().await?;
                Some(
                    TestApp::spawn_with(Db::Postgres, move |c| {
                        c.database.url = Some(Secret::new(url));
                        tweak(c)
                    })
                    .await,
                )
            }
        }
    }

    pub async fn spawn_with(_db: Db, tweak: impl FnOnce(&mut Config)) -> TestApp {
        init_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        config.server.bind = "127.0.0.1:0".into();
        tweak(&mut config);
        TestApp::start(dir, config).await
    }

    /// Stops the app gracefully and starts it again on the same data dir and configuration
    /// (what a crash-and-restart looks like from the outside, minus the crash).
    pub async fn restart(mut self) -> TestApp {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("join").expect("server ran cleanly");
        }
        let TestApp { dir, config, .. } = self;
        TestApp::start(dir, config).await
    }

    /// Stops the app, runs `between` (the service is down), and starts it again.
    pub async fn restart_with(mut self, between: impl FnOnce()) -> TestApp {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("join").expect("server ran cleanly");
        }
        between();
        let TestApp { dir, config, .. } = self;
        TestApp::start(dir, config).await
    }

    async fn start(dir: tempfile::TempDir, config: Config) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let app = Application::build_with_listener(config.clone(), listener)
            .await
            .expect("build app");
        let addr = format!("http://{}", app.local_addr());
        let state = app.state().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            dir,
            config,
            state,
            client: concierge::http_client::client(),
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// The app's data dir (SQLite database, search index).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }

    /// POST /api/v1/messages with the API key; returns (status, body).
    pub async fn post_message(&self, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url("/api/v1/messages"))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Imports the τ-bench retail store through the library (as `concierge import` does) and
    /// brings the running index up to date.
    pub async fn import_tau(&self) {
        let batches = concierge::import::load(
            concierge::import::ImportKind::TauRetail,
            &shared_data("tau-bench-retail/tau-bench-v1"),
        )
        .expect("parse tau-bench");
        for (_, b) in batches {
            self.store()
                .import(&b.customers, &b.products, &b.orders, |_| {})
                .await
                .expect("import");
        }
        concierge::app::rebuild_index_live(&self.state)
            .await
            .expect("index");
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("join").expect("server ran cleanly");
        }
    }
}
