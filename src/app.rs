//! Application assembly: opens the store and the search index, loads the brand and its
//! marketplaces into the [`AppState`], mounts every face on one router, binds the listener (port
//! 0 in tests), starts the job worker (with each job kind's handler) and the metrics listener,
//! and runs until a shutdown signal — then stops taking requests, finishes in-flight ones and the
//! running jobs, commits the index and closes the database. Nothing in the library imports this
//! module but the command line and the benches.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::agent::{Agent, BrandPaths};
use crate::commerce::policy::Policy;
use crate::config::Config;
use crate::error::{ApiError, BodyLimit};
use crate::events::EventHub;
use crate::http::api;
use crate::search::{self, IndexDoc, SearchIndex};
use crate::store::{Job, Store};
use crate::util::{Secret, random_token};
use crate::worker::{self, Handlers, JobError, JobFuture};

/// Notification channels each instance listens on (PostgreSQL).
const CLUSTER_CHANNELS: [&str; 2] = [
    crate::store::cluster::EVENTS_CHANNEL,
    crate::store::cluster::SEARCH_CHANNEL,
];

pub use crate::state::AppState;

/// Rebuild the search index from the database (queued by `concierge import` while the server
/// holds the index).
pub const JOB_REINDEX: &str = "reindex";

/// The job kinds this service runs, each by the module that owns it.
pub fn job_handlers() -> Handlers {
    Handlers::default()
        .on(crate::inbox::JOB_TURN, crate::inbox::turn::job)
        .on(crate::store::JOB_DELIVER, crate::channels::outbox::job)
        .on(JOB_REINDEX, reindex_job)
        .on(crate::settle::JOB_SETTLE, crate::settle::job)
}

fn reindex_job<'a>(state: &'a AppState, _job: &'a Job) -> JobFuture<'a> {
    Box::pin(async move {
        let n = rebuild_index_live(state)
            .await
            .map_err(|e| JobError::retry(format!("{e:#}")))?;
        tracing::info!(documents = n, "search index refreshed");
        Ok(())
    })
}

pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: AppState,
}

impl Application {
    /// Builds the service, binding `[server] bind`.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(&config.server.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.bind))?;
        Application::build_with_listener(config, listener).await
    }

    /// Builds the service on a listener the caller bound (tests bind port 0).
    pub async fn build_with_listener(
        config: Config,
        listener: TcpListener,
    ) -> anyhow::Result<Application> {
        let limits = Arc::new(crate::limits::Limits::new(&config)?);
        let store = open_store(&config).await?;
        let policy = Policy::load(&config.brand.dir.join("policy.toml"))
            .context("cannot load the brand policy")?;
        let api_key = api_key(&config, &store).await?;
        let search = open_index(&config.data_dir)?;
        if search::feed::must_rebuild(&store, &search).await? {
            let n = rebuild_index(&store, &search, &config.brand.dir).await?;
            tracing::info!(documents = n, "search index rebuilt from the database");
        }
        let indexer = search.spawn_writer();
        for chunk in search::load_policy_dir(&config.brand.dir.join("policies"))
            .context("cannot read the brand's policy texts")?
        {
            indexer.upsert(IndexDoc::Policy(chunk)).await?;
        }
        let policy = Arc::new(policy);
        let agent = Agent::load(
            &BrandPaths {
                brand_dir: &config.brand.dir,
                prompts_dir: &config.brand.prompts,
                channels_dir: &config.brand.channels,
            },
            &config.llm,
            store.clone(),
            search.clone(),
            policy.clone(),
        )
        .context("cannot load the brand agent (voice, templates, policy texts)")?
        .with_verification(
            crate::verification::Limits::new(config.verification.clone()),
            config
                .email
                .smtp_url
                .is_some()
                .then_some(config.email.max_attempts),
        );
        let risk = crate::risk::start(&store, &config.brand.dir)
            .await
            .context("cannot rebuild the risk book (exposure, circuit breakers)")?;
        let metrics_listener = match &config.metrics.bind {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for metrics on {addr}"))?,
            ),
            None => None,
        };
        Ok(Application {
            listener,
            metrics_listener,
            state: AppState {
                marketplaces: crate::channels::marketplace::load(&config.brand.channels).into(),
                config: Arc::new(config),
                store,
                search,
                indexer,
                policy,
                agent: Arc::new(agent),
                hub: EventHub::default(),
                api_key,
                limits,
                jobs_queued: Default::default(),
                risk,
                agent_sockets: Default::default(),
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains gracefully.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            metrics_listener,
            state,
        } = self;
        let stop = CancellationToken::new();
        let grace = Duration::from_secs(state.config.server.shutdown_grace_secs);

        // Several instances on PostgreSQL: live events and the search feed's wake-ups.
        let notices = state.store.listen(&CLUSTER_CHANNELS, stop.clone()).await;
        let listening = notices.as_ref().map(|(l, _)| l);
        let relay = crate::inbox::relay::spawn(&state.store, &state.hub, listening, stop.clone());
        let feed = search::feed::spawn(
            &state.store,
            &state.search,
            &state.indexer,
            listening,
            stop.clone(),
        );
        let worker = tokio::spawn(worker::run(state.clone(), job_handlers(), stop.clone()));
        let telegram = crate::channels::telegram::spawn(&state, stop.clone());
        let metrics = metrics_listener.map(|l| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let app = axum::Router::new().route(
                    "/metrics",
                    axum::routing::get(|| async { crate::telemetry::metrics_handle().render() }),
                );
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
            })
        });
        crate::telemetry::metrics_handle();

        let bound = listener
            .local_addr()
            .context("the listener has no address")?;
        let app = crate::http::hosts::layer(router(state.clone()), &state.config.server, bound);
        // Small frames (chat, JSON answers) must not wait for Nagle's algorithm.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let stop_http = stop.clone();
        let hub = state.hub.clone();
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests and jobs");
            stop_http.cancel();
            hub.close();
        });
        let served = server.await;
        stop.cancel();
        if tokio::time::timeout(grace, worker).await.is_err() {
            tracing::warn!("the job worker did not stop within the grace period");
        }
        if let Some(t) = telegram
            && tokio::time::timeout(grace, t).await.is_err()
        {
            tracing::warn!("Telegram polling did not stop within the grace period");
        }
        if let Some(m) = metrics {
            let _ = tokio::time::timeout(Duration::from_secs(2), m).await;
        }
        let cluster_tasks = [Some(feed), relay, notices.map(|(_, t)| t)];
        for task in cluster_tasks.into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        if let Err(e) = state.indexer.clone().shutdown().await {
            tracing::warn!(error = %e, "search index writer did not shut down cleanly");
        }
        state.store.close().await;
        served.context("HTTP server failed")
    }
}

/// Every face on one router: health and the API channel, the channels' webhooks and the web
/// chat, the staff inbox, the consumer-agent gateway — under the limits, security headers,
/// body limit, timeout and tracing every request gets.
pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    let timeout = Duration::from_secs(state.config.server.request_timeout_secs);
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/api/v1/messages", post(api::post_message))
        .route("/api/v1/conversations/{id}", get(api::get_conversation))
        .route("/api/v1/orders/{number}", get(api::get_order))
        .route("/api/v1/search", get(api::search))
        .merge(crate::channels::webchat::routes())
        .merge(crate::channels::email::routes::routes(
            state.config.email.max_message_bytes,
        ))
        .merge(crate::channels::shopify::routes())
        .merge(crate::channels::telegram::routes())
        .merge(crate::channels::marketplace::routes(&state))
        .merge(crate::web::routes(&state))
        .merge(
            crate::gateway::routes(&state)
                .layer(axum::middleware::from_fn(crate::http::limits::gateway_refusals)),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(serde_json::json!({"error": {"code": "method_not_allowed", "message": "this endpoint does not take that method"}})),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::limits::public_per_ip,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::headers::security_headers,
        ))
        .layer(axum::middleware::from_fn(crate::telemetry::track_requests))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(BodyLimit(limit)))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str)
                    .unwrap_or("unmatched");
                tracing::info_span!("request", method = %req.method(), route)
            }),
        )
        .with_state(state)
}

pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let url = config.database_url().map(Secret::expose);
    // The data dir holds the database, keys and customers' attachments: owner only.
    crate::files::secure_data_dir(&config.data_dir, url.is_none())?;
    let store = Store::open(&config.data_dir, url, config.database.max_connections)
        .await
        .with_context(|| match url {
            Some(u) => format!("cannot open database {}", crate::store::redact_url(u)),
            None => format!(
                "cannot open the SQLite database in {}",
                config.data_dir.display()
            ),
        })?;
    // The service key signs the audit log's head and roots the agents' capability tokens.
    let key = crate::gateway::identity::checked_service_key(config, &store).await?;
    crate::files::secure_files(&config.data_dir)?;
    Ok(store.with_audit_signer(key))
}

pub fn open_index(data_dir: &Path) -> anyhow::Result<SearchIndex> {
    let dir = data_dir.join("index");
    SearchIndex::open(&dir)
        .with_context(|| format!("cannot open the search index in {}", dir.display()))
}

/// The API key: from configuration, else the one generated for this data dir on first start.
pub async fn api_key(config: &Config, store: &Store) -> anyhow::Result<Secret> {
    if let Some(k) = &config.api.key {
        if k.expose().trim().len() < 16 {
            anyhow::bail!("the API key must be at least 16 characters long");
        }
        return Ok(k.clone());
    }
    if let Some(k) = store.get_setting("api_key").await? {
        return Ok(Secret::new(k));
    }
    let key = format!("ck_{}", random_token(24));
    store.set_setting("api_key", &key).await?;
    tracing::info!(
        "generated an API key for this data dir (see `concierge serve --demo` output, or set CONCIERGE_API_KEY)"
    );
    Ok(Secret::new(key))
}

/// Every document the search index holds, read from the database and the brand folder.
pub async fn index_documents(store: &Store, brand_dir: &Path) -> anyhow::Result<Vec<IndexDoc>> {
    search::feed::documents(store, brand_dir).await
}

/// Rebuilds the whole index from the database (no writer task may be running on it).
pub async fn rebuild_index(
    store: &Store,
    index: &SearchIndex,
    brand_dir: &Path,
) -> anyhow::Result<u64> {
    rebuild_index_with_progress(store, index, brand_dir, |_, _| {}).await
}

pub async fn rebuild_index_with_progress(
    store: &Store,
    index: &SearchIndex,
    brand_dir: &Path,
    progress: impl FnMut(u64, u64) + Send + 'static,
) -> anyhow::Result<u64> {
    search::feed::rebuild(store, index, brand_dir, progress).await
}

/// Brings the index of a running server up to date with the database, through its writer task
/// (every order, product and policy section is upserted by key).
pub async fn rebuild_index_live(state: &AppState) -> anyhow::Result<u64> {
    let docs = index_documents(&state.store, &state.config.brand.dir).await?;
    let n = docs.len() as u64;
    for doc in docs {
        state.indexer.upsert(doc).await?;
    }
    state.indexer.flush().await?;
    Ok(n)
}
