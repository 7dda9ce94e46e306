//! The command line: `serve`, `import`, `export`, `reindex`, `drill` and `bench`. Each command loads the
//! configuration (file, environment, then its flags), does its work through the library, and
//! exits non-zero with a message that says what went wrong.

pub mod gateway;
pub mod web;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::app::{self, Application};
use crate::config::Config;
use crate::import::{self, ImportKind};

/// The demo store is the same for everyone (only its dates follow the clock).
const DEMO_SEED: u64 = 2026;

#[derive(Debug, Parser)]
#[command(
    name = "concierge",
    version,
    about = "Self-hosted customer-support agent for e-commerce brands"
)]
pub struct Cli {
    /// Configuration file (default: ./concierge.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long, value_name = "ADDR")]
        bind: Option<String>,
        /// Fill an empty data dir with the demo brand's store and print how to use it.
        #[arg(long)]
        demo: bool,
    },
    /// Import a shop's data (re-importing updates, never duplicates).
    Import {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        kind: ImportKind,
        path: PathBuf,
    },
    /// Export the store in another system's format.
    Export {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        format: ExportFormat,
        out_dir: PathBuf,
    },
    /// Rebuild the search index from the database.
    Reindex {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// The action log: every write anyone made to commerce data, hash-chained.
    Audit {
        #[command(subcommand)]
        what: AuditCommand,
    },
    /// Staff accounts for the web inbox.
    Staff {
        #[command(subcommand)]
        what: web::StaffCommand,
    },
    /// Consumer AI agents: keys and capability tokens.
    Agents {
        #[command(subcommand)]
        what: gateway::AgentsCommand,
    },
    /// Email channel tools.
    Email {
        #[command(subcommand)]
        what: EmailCommand,
    },
    /// Measure the agent's understanding on held-out data.
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
    /// Drills that show what happens when things go wrong (see `concierge drill crash --help`).
    Drill {
        #[command(subcommand)]
        what: crate::drill::DrillCommand,
    },
    /// Measure speed on this machine (build with --release for real figures).
    Bench {
        #[command(subcommand)]
        what: crate::bench::BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recomputes the chain from the first entry; exits non-zero naming the first entry that
    /// does not verify.
    Verify {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EmailCommand {
    /// Store one raw email read from standard input (for a mail pipe such as an MTA's
    /// `| concierge email ingest`); a running server answers it.
    Ingest {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Accuracy of the shipped intent classifier on the held-out split, and its most confused
    /// pairs.
    Intents {
        /// The Bitext customer-support CSV the classifier was trained from.
        #[arg(
            long,
            default_value = "../shared/data/bitext-customer-support/Bitext_Sample_Customer_Support_Training_Dataset_4514.csv"
        )]
        data: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    TauRetail,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn load_config(
    file: Option<&Path>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<Config> {
    let mut config = Config::load(file, std::env::vars())?;
    if let Some(d) = data_dir {
        config.data_dir = d;
    }
    crate::telemetry::init_tracing(&config.log);
    Ok(config)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = cli.config.as_deref();
    match cli.command {
        Command::Serve {
            data_dir,
            bind,
            demo,
        } => {
            let mut config = load_config(file, data_dir)?;
            if let Some(b) = bind {
                config.server.bind = b;
            }
            serve(config, demo).await
        }
        Command::Import {
            data_dir,
            kind,
            path,
        } => import_cmd(load_config(file, data_dir)?, kind, &path).await,
        Command::Export {
            data_dir,
            format: ExportFormat::TauRetail,
            out_dir,
        } => export_tau(load_config(file, data_dir)?, &out_dir).await,
        Command::Reindex { data_dir } => reindex_cmd(load_config(file, data_dir)?).await,
        Command::Staff { what } => web::run(file, what).await,
        Command::Agents { what } => gateway::run(file, what).await,
        Command::Audit {
            what: AuditCommand::Verify { data_dir },
        } => {
            let config = load_config(file, data_dir)?;
            let store = app::open_store(&config).await?;
            let report = store.verify_audit_chain().await;
            store.close().await;
            let report = report?;
            match &report.first_bad {
                None => {
                    let signed = match report.signed_seq {
                        Some(s) if s as u64 == report.checked => {
                            "; the head is signed with the service key".to_string()
                        }
                        Some(s) => format!(
                            "; signed with the service key up to entry {s} (later entries were \
                             written without the key)"
                        ),
                        None => "; the head is not signed yet".to_string(),
                    };
                    println!(
                        "audit log intact: {} entries verified{signed}",
                        report.checked
                    );
                    Ok(())
                }
                Some(bad) => anyhow::bail!(
                    "audit log broken at {bad} ({} entries before it verified)",
                    report.checked
                ),
            }
        }
        Command::Email {
            what: EmailCommand::Ingest { data_dir },
        } => {
            let config = load_config(file, data_dir)?;
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut raw)
                .context("cannot read the message from standard input")?;
            anyhow::ensure!(
                raw.len() <= config.email.max_message_bytes,
                "the message is larger than [email] max_message_bytes ({} bytes)",
                config.email.max_message_bytes
            );
            let store = app::open_store(&config).await?;
            let support = crate::channels::email::routes::support_address(&config.email.from);
            let (receipt, _) = crate::channels::email::inbound::receive(
                &store,
                &config.data_dir,
                &support,
                &config.email.trusted_authserv_ids,
                &raw,
            )
            .await?;
            store.close().await;
            println!("{}", serde_json::to_string(&receipt)?);
            Ok(())
        }
        Command::Eval {
            what: EvalCommand::Intents { data },
        } => {
            let (_, held_out) = crate::agent::nlu::load_dataset(&data)
                .with_context(|| format!("cannot load the evaluation data {}", data.display()))?;
            let report = crate::agent::nlu::evaluate(crate::agent::nlu::shipped_model(), &held_out);
            print!("{report}");
            Ok(())
        }
        Command::Drill { what } => crate::drill::run_command(what).await,
        Command::Bench { what } => crate::bench::run(what).await,
    }
}

async fn serve(config: Config, demo: bool) -> anyhow::Result<()> {
    if demo {
        let store = app::open_store(&config).await?;
        let counts = store.counts().await?;
        if counts.orders == 0 && counts.customers == 0 {
            let store_data = crate::demo::generate(
                DEMO_SEED,
                crate::util::now_ms(),
                crate::demo::DemoSize::default(),
            );
            let c = store
                .import(
                    &store_data.customers,
                    &store_data.products,
                    &store_data.orders,
                    |_| {},
                )
                .await
                .context("cannot load the demo store")?;
            eprintln!(
                "Loaded the demo store: {} customers, {} products, {} orders.",
                c.customers, c.products, c.orders
            );
        }
        store.close().await;
    }
    let application = Application::build(config).await?;
    let addr = application.local_addr();
    let state = application.state();
    if demo {
        // An example a newcomer can paste: a shipped order, asked by its verified customer.
        let orders = state.store.all_orders().await?;
        let example = orders
            .iter()
            .find(|o| o.status == crate::commerce::OrderStatus::Processed)
            .or_else(|| orders.first());
        let (example, email) = match example {
            Some(o) => {
                let email = match &o.customer_id {
                    Some(c) => state
                        .store
                        .get_customer(c)
                        .await?
                        .and_then(|c| c.primary_email().map(str::to_string)),
                    None => None,
                };
                (
                    o.number.clone(),
                    email.unwrap_or_else(|| "shopper@example.com".into()),
                )
            }
            None => ("#D0000000".into(), "shopper@example.com".into()),
        };
        let key = state.api_key.expose();
        let data_dir = state.config.data_dir.display();
        let text = format!(
            "Concierge is running with the demo brand.\n\
             \x20 Health:        http://{addr}/healthz\n\
             \x20 API channel:   http://{addr}/api/v1/messages\n\
             \x20 Search:        http://{addr}/api/v1/search?q=returns\n\
             \x20 API key:       {key}\n\
             \x20 Web chat:      http://{addr}/chat (a demo shop page with the chat widget)\n\
             \x20 Staff inbox:   http://{addr}/inbox (add the first admin: concierge staff add --data-dir {data_dir} --email you@example.com --role admin)\n\
             Try:\n\
             \x20 curl -s http://{addr}/api/v1/messages -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n\
             \x20   -d '{{\"thread\":\"demo-1\",\"from\":{{\"email\":\"{email}\",\"verified\":true}},\"text\":\"Where is my order {example}?\"}}'\n"
        );
        // Whoever reads our stdout may go away; that must not stop the service.
        let mut out = std::io::stdout().lock();
        let _ = std::io::Write::write_all(&mut out, text.as_bytes());
        let _ = std::io::Write::flush(&mut out);
    } else {
        tracing::info!(%addr, "Concierge is listening");
    }
    application.run_until(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// A progress bar on a terminal; hidden otherwise.
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

async fn import_cmd(config: Config, kind: ImportKind, path: &Path) -> anyhow::Result<()> {
    let batches = import::load(kind, path)?;
    let store = app::open_store(&config).await?;
    let mut total = crate::store::ImportCounts::default();
    for (label, batch) in &batches {
        let n = (batch.customers.len() + batch.products.len() + batch.orders.len()) as u64;
        let bar = progress_bar(n, "importing");
        let counts = store
            .import(&batch.customers, &batch.products, &batch.orders, |i| {
                bar.set_position(i)
            })
            .await
            .with_context(|| format!("{label}: nothing from this file was written"))?;
        bar.finish_and_clear();
        total.customers += counts.customers;
        total.products += counts.products;
        total.variants += counts.variants;
        total.orders += counts.orders;
    }
    println!(
        "Imported {} customers, {} products ({} variants), {} orders from {} file(s).",
        total.customers,
        total.products,
        total.variants,
        total.orders,
        batches.len()
    );
    refresh_index(&config, &store).await;
    store.close().await;
    Ok(())
}

/// After an import: update the index directly when no server holds it. A running server's
/// index follows the database's change feed, which the import wrote to.
async fn refresh_index(config: &Config, store: &crate::store::Store) {
    let attempt = async {
        let index = app::open_index(&config.data_dir)?;
        app::rebuild_index(store, &index, &config.brand.dir).await
    };
    match attempt.await {
        Ok(n) => println!("Search index updated ({n} documents)."),
        Err(e) => println!(
            "The search index is in use ({e:#}); the running server's index follows the import within seconds."
        ),
    }
}

async fn export_tau(config: Config, out_dir: &Path) -> anyhow::Result<()> {
    let store = app::open_store(&config).await?;
    let customers = store.all_customers().await?;
    let products = store.all_products().await?;
    let orders = store.all_orders().await?;
    store.close().await;
    let (users, orders_json, products_json) = import::tau::export(&customers, &products, &orders);
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    for (name, value) in [
        ("users.json", users),
        ("orders.json", orders_json),
        ("products.json", products_json),
    ] {
        let path = out_dir.join(name);
        let text = serde_json::to_string_pretty(&value)?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "Exported {} users, {} orders, {} products to {}.",
        customers.len(),
        orders.len(),
        products.len(),
        out_dir.display()
    );
    Ok(())
}

async fn reindex_cmd(config: Config) -> anyhow::Result<()> {
    let store = app::open_store(&config).await?;
    let index = app::open_index(&config.data_dir)?;
    let bar = progress_bar(0, "indexing");
    let b = bar.clone();
    let n = app::rebuild_index_with_progress(&store, &index, &config.brand.dir, move |n, total| {
        b.set_length(total);
        b.set_position(n);
    })
    .await
    .context("reindex failed (is a server running on this data dir? stop it first)")?;
    bar.finish_and_clear();
    store.close().await;
    println!("Reindexed {n} documents.");
    Ok(())
}
