//! `concierge agents …`: register consumer agents' keys and issue capability tokens.
//!
//! Commands whose output a script reads print the value alone on their last line: `register`
//! the key id, `token` and `attenuate` the token.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use crate::app;
use crate::commerce::{format_minor, parse_minor};
use crate::gateway::{identity, tokens};
use crate::store::Store;
use crate::util::{now_ms, rfc3339};

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Registers an agent's Ed25519 public key (a new name creates the agent; a known name gets
    /// one more active key, for rotation). Prints the key id on the last line.
    Register {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        name: String,
        /// The raw 32-byte key in base64 or base64url, or a PEM public key (or @FILE to read it
        /// from a file).
        #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
        public_key: String,
    },
    /// Makes an Ed25519 key pair for an agent: writes the private key (PKCS#8 PEM, mode 0600)
    /// to FILE and prints the public key (base64url) on the last line, ready for `register`.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Lists the registered agents and their keys.
    List {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Revokes an agent (every key) by name, or one key by id (rotation).
    Revoke {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, required_unless_present = "key_id", conflicts_with = "key_id")]
        name: Option<String>,
        #[arg(long)]
        key_id: Option<String>,
    },
    /// Issues a capability token for one customer to an agent. Prints the token on the last
    /// line.
    Token {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The agent's name.
        #[arg(long)]
        agent: String,
        /// The customer's email (or customer id).
        #[arg(long, value_name = "EMAIL")]
        customer: String,
        /// Allowed operations, comma-separated (default: reads, cancel, address change,
        /// returns, exchanges, escalate).
        #[arg(long, value_delimiter = ',')]
        ops: Vec<String>,
        /// Total value of refunds and exchanges allowed, e.g. 250.00 (default: no limit).
        #[arg(long, value_name = "AMOUNT")]
        limit: Option<String>,
        /// Product categories writes may touch, comma-separated (default: any).
        #[arg(long, value_delimiter = ',')]
        categories: Vec<String>,
        /// How long the token is valid: 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        expires: String,
        /// Over the limit, ask a staff member to approve instead of refusing.
        #[arg(long)]
        escalate_over_limit: bool,
    },
    /// Narrows a token (as its holder may, offline): fewer operations, a lower limit, an
    /// earlier expiry. Prints the new token on the last line.
    Attenuate {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        token: String,
        #[arg(long, value_delimiter = ',')]
        ops: Vec<String>,
        #[arg(long, value_name = "AMOUNT")]
        limit: Option<String>,
        #[arg(long)]
        expires: Option<String>,
    },
    /// Lists the tokens issued, newest first.
    Tokens {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Revokes a token: its id (from `tokens`) or the token itself.
    RevokeToken {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        token: String,
    },
}

async fn open(config_file: Option<&Path>, data_dir: Option<PathBuf>) -> anyhow::Result<Store> {
    let config = crate::cli::load_config(config_file, data_dir)?;
    app::open_store(&config).await
}

fn parse_limit(text: &str) -> anyhow::Result<i64> {
    match parse_minor(text) {
        Some(v) if v >= 0 => Ok(v),
        _ => anyhow::bail!("--limit {text:?} is not an amount like 250.00"),
    }
}

fn service_key(store: &Store) -> anyhow::Result<&ed25519_dalek::SigningKey> {
    store
        .audit_signer()
        .context("the service key is not loaded from the data dir")
}

/// Records an operator's change to the agent registry in the action log.
async fn audit(
    store: &Store,
    tool: &str,
    args: serde_json::Value,
    now: i64,
) -> Result<(), crate::store::StoreError> {
    let request = Store::action_request(tool, args, now).by("staff", Some("cli"));
    store.record_action(&request, None, "recorded").await?;
    Ok(())
}

pub async fn run(config_file: Option<&Path>, command: AgentsCommand) -> anyhow::Result<()> {
    match command {
        AgentsCommand::Register {
            data_dir,
            name,
            public_key,
        } => {
            let name = name.trim().to_string();
            anyhow::ensure!(
                !name.is_empty() && name.len() <= 100,
                "--name must be 1 to 100 characters"
            );
            let text = match public_key.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the public key file {path}"))?,
                None => public_key,
            };
            let key = identity::parse_public_key(&text)
                .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?;
            let key_id = identity::key_id(&key);
            let store = open(config_file, data_dir).await?;
            let now = now_ms();
            let result = async {
                store
                    .register_agent_key(&name, &key_id, &identity::encode_public_key(&key), now)
                    .await?;
                audit(
                    &store,
                    "register_agent_key",
                    json!({"name": name, "key_id": key_id}),
                    now,
                )
                .await
            }
            .await;
            store.close().await;
            result?;
            println!("Registered a key for agent {name:?}. Its key id (keyid in Signature-Input):");
            println!("{key_id}");
            Ok(())
        }
        AgentsCommand::Keygen { out } => {
            anyhow::ensure!(
                !out.exists(),
                "{} already exists; choose another file",
                out.display()
            );
            let key = identity::generate_key();
            identity::write_private_key(&out, &key)?;
            let public = key.verifying_key();
            println!(
                "Wrote the private key to {} (keep it secret). Key id {}. Public key:",
                out.display(),
                identity::key_id(&public)
            );
            println!("{}", identity::encode_public_key(&public));
            Ok(())
        }
        AgentsCommand::List { data_dir } => {
            let store = open(config_file, data_dir).await?;
            let agents = store.list_agents().await;
            store.close().await;
            let agents = agents?;
            if agents.is_empty() {
                println!("No agents are registered.");
            }
            for a in agents {
                let state = match a.revoked_at {
                    Some(t) => format!("revoked {}", rfc3339(t)),
                    None => "active".into(),
                };
                println!("{}  ({state}, id {})", a.name, a.id);
                for k in a.keys {
                    let state = match k.revoked_at {
                        Some(t) => format!("revoked {}", rfc3339(t)),
                        None => "active".into(),
                    };
                    println!(
                        "  key {}  {state}  added {}",
                        k.key_id,
                        rfc3339(k.created_at)
                    );
                }
            }
            Ok(())
        }
        AgentsCommand::Revoke {
            data_dir,
            name,
            key_id,
        } => {
            let store = open(config_file, data_dir).await?;
            let now = now_ms();
            let result = async {
                Ok::<_, crate::store::StoreError>(match (name, key_id) {
                    (Some(name), _) => {
                        if store.revoke_agent(&name, now).await? {
                            audit(&store, "revoke_agent", json!({"name": name}), now).await?;
                            Some(format!("Revoked agent {name:?} and all of its keys."))
                        } else {
                            None
                        }
                    }
                    (None, Some(kid)) => match store.revoke_agent_key(&kid, now).await? {
                        Some(a) => {
                            audit(
                                &store,
                                "revoke_agent_key",
                                json!({"name": a, "key_id": kid}),
                                now,
                            )
                            .await?;
                            Some(format!(
                                "Revoked key {kid} of agent {a:?}; its other keys stay active."
                            ))
                        }
                        None => None,
                    },
                    (None, None) => None,
                })
            }
            .await;
            store.close().await;
            match result? {
                Some(message) => {
                    println!("{message}");
                    Ok(())
                }
                None => anyhow::bail!("no such agent or key is registered"),
            }
        }
        AgentsCommand::Token {
            data_dir,
            agent,
            customer,
            ops,
            limit,
            categories,
            expires,
            escalate_over_limit,
        } => {
            let ops: Vec<String> = if ops.is_empty() {
                tokens::DEFAULT_OPERATIONS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            } else {
                ops
            };
            let ops = tokens::check_ops(&ops).map_err(|e| anyhow::anyhow!("--ops: {e}"))?;
            let spend_limit = limit.as_deref().map(parse_limit).transpose()?;
            let ttl =
                tokens::parse_duration(&expires).map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
            let store = open(config_file, data_dir).await?;
            let result = async {
                let agent_rec = store
                    .agent_by_name(agent.trim())
                    .await?
                    .with_context(|| format!("no agent named {agent:?} is registered"))?;
                anyhow::ensure!(
                    agent_rec.revoked_at.is_none(),
                    "agent {agent:?} was revoked"
                );
                let who = customer.trim();
                let found = match store.find_customer_by_email(who).await? {
                    Some(c) => Some(c),
                    None => store.get_customer(who).await?,
                };
                let customer_rec =
                    found.with_context(|| format!("no customer has the email or id {who:?}"))?;
                let now = now_ms();
                let spec = tokens::TokenSpec {
                    agent_id: agent_rec.id.clone(),
                    customer_id: customer_rec.id.clone(),
                    ops,
                    spend_limit,
                    categories,
                    expires_at: now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2),
                    escalate_over_limit,
                };
                let (token, record) =
                    tokens::issue(&store, service_key(&store)?, &spec, "cli", now)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok((token, record, customer_rec))
            }
            .await;
            store.close().await;
            let (token, record, customer_rec) = result?;
            println!(
                "Token {} for agent {agent:?} acting for {} ({}): {}; limit {}; expires {}.",
                record.id,
                customer_rec.full_name(),
                customer_rec.id,
                record.ops.join(", "),
                record
                    .spend_limit
                    .map(format_minor)
                    .unwrap_or_else(|| "none".into()),
                rfc3339(record.expires_at)
            );
            println!("{token}");
            Ok(())
        }
        AgentsCommand::Attenuate {
            data_dir,
            token,
            ops,
            limit,
            expires,
        } => {
            let limit = limit.as_deref().map(parse_limit).transpose()?;
            let expires_at = match expires {
                Some(e) => {
                    let ttl = tokens::parse_duration(&e)
                        .map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
                    Some(now_ms() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2))
                }
                None => None,
            };
            let config = crate::cli::load_config(config_file, data_dir)?;
            let key = identity::configured_service_key(&config)?;
            let root = tokens::root_public_key(&key).map_err(|e| anyhow::anyhow!("{e}"))?;
            let ops = (!ops.is_empty()).then_some(ops);
            let narrowed = tokens::attenuate(&token, &root, ops.as_deref(), limit, expires_at)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{narrowed}");
            Ok(())
        }
        AgentsCommand::Tokens { data_dir } => {
            let store = open(config_file, data_dir).await?;
            let list = tokens::list(&store).await;
            store.close().await;
            let list = list.map_err(|e| anyhow::anyhow!("{e}"))?;
            if list.is_empty() {
                println!("No tokens were issued.");
            }
            for t in list {
                let state = match t.revoked_at {
                    Some(at) => format!("revoked {}", rfc3339(at)),
                    None if t.expires_at <= now_ms() => "expired".into(),
                    None => format!("valid until {}", rfc3339(t.expires_at)),
                };
                println!(
                    "{}  agent {}  customer {}  {state}  spent {} of {}  ops {}",
                    t.id,
                    t.agent_id,
                    t.customer_id,
                    format_minor(t.spent),
                    t.spend_limit
                        .map(format_minor)
                        .unwrap_or_else(|| "unlimited".into()),
                    t.ops.join(",")
                );
            }
            Ok(())
        }
        AgentsCommand::RevokeToken { data_dir, token } => {
            let store = open(config_file, data_dir).await?;
            let result = async {
                let key = service_key(&store)?;
                tokens::revoke(&store, key, &token, "cli", now_ms())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))
            }
            .await;
            store.close().await;
            match result? {
                Some(id) => {
                    println!("Revoked token {id}.");
                    Ok(())
                }
                None => anyhow::bail!("no such token was issued here"),
            }
        }
    }
}
