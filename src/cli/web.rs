//! `concierge staff …`: manage the people who sign in to the inbox.
//!
//! Passwords are read from stdin (one line) when it is not a terminal — `echo "$PW" | concierge
//! staff add …` — else asked for at a prompt without echo, twice.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::store::Store;
use crate::web::{check_role, hash_password, validate_password};

#[derive(Debug, Subcommand)]
pub enum StaffCommand {
    /// Add a staff member (the password comes from stdin or a prompt).
    Add {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        email: String,
        /// admin (also manages staff) or agent.
        #[arg(long, default_value = "agent")]
        role: String,
        /// The name shown to colleagues (defaults to the email).
        #[arg(long)]
        name: Option<String>,
    },
    /// List staff members.
    List {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Set a new password (from stdin or a prompt); the member's sessions stay valid.
    Passwd {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        email: String,
    },
    /// Stop a staff member from signing in (ends their sessions).
    Disable {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        email: String,
    },
    /// Let a disabled staff member sign in again.
    Enable {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        email: String,
    },
    /// Change a staff member's role.
    Role {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
    },
}

async fn open(config_file: Option<&Path>, data_dir: Option<PathBuf>) -> anyhow::Result<Store> {
    let config = crate::cli::load_config(config_file, data_dir)?;
    crate::app::open_store(&config).await
}

/// Reads a password: one line of stdin, or a prompt without echo (asked twice) on a terminal.
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        let pw = line.trim_end_matches(['\n', '\r']).to_string();
        if pw.is_empty() {
            bail!(
                "no password on stdin: pipe one line, e.g. `echo \"$PASSWORD\" | concierge staff add …`"
            );
        }
        return Ok(pw);
    }
    let ask = |prompt: &str| -> anyhow::Result<String> {
        eprint!("{prompt}");
        std::io::stderr().flush().ok();
        let echo_off = std::process::Command::new("stty")
            .arg("-echo")
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success());
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        if echo_off {
            let _ = std::process::Command::new("stty")
                .arg("echo")
                .stdin(std::process::Stdio::inherit())
                .status();
        }
        eprintln!();
        read.context("cannot read the password")?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let first = ask("Password: ")?;
    let again = ask("Password again: ")?;
    if first != again {
        bail!("the two passwords differ; nothing was changed");
    }
    Ok(first)
}

fn new_password_hash() -> anyhow::Result<String> {
    let pw = read_password()?;
    validate_password(&pw).map_err(|e| anyhow::anyhow!("{e}"))?;
    hash_password(&pw)
}

async fn find(store: &Store, email: &str) -> anyhow::Result<crate::store::StaffMember> {
    match store.staff_login(email).await? {
        Some((s, _)) => Ok(s),
        None => bail!("there is no staff member with the email {email}"),
    }
}

async fn set_active(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    email: &str,
    active: bool,
) -> anyhow::Result<()> {
    let store = open(config_file, data_dir).await?;
    let s = find(&store, email).await?;
    if !active && s.is_admin() && s.active && store.count_active_admins().await? <= 1 {
        bail!("{} is the last active admin and stays enabled", s.email);
    }
    store.set_staff_active(&s.id, active).await?;
    store.close().await;
    if active {
        println!("{} can sign in again", s.email);
    } else {
        println!("{} can no longer sign in (their sessions ended)", s.email);
    }
    Ok(())
}

pub async fn run(config_file: Option<&Path>, command: StaffCommand) -> anyhow::Result<()> {
    match command {
        StaffCommand::Add {
            data_dir,
            email,
            role,
            name,
        } => {
            let email = email.trim().to_lowercase();
            if !email.contains('@') || email.chars().any(char::is_whitespace) {
                bail!("{email:?} is not an email address");
            }
            check_role(&role).map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            let hash = new_password_hash()?;
            let store = open(config_file, data_dir).await?;
            let created = store
                .create_staff(&email, name.as_deref(), &role, &hash)
                .await;
            store.close().await;
            let s = created?;
            println!("added {} ({}) — sign in at /inbox/login", s.email, s.role);
        }
        StaffCommand::List { data_dir } => {
            let store = open(config_file, data_dir).await?;
            let staff = store.list_staff().await;
            store.close().await;
            let staff = staff?;
            if staff.is_empty() {
                println!(
                    "no staff yet: add the first admin with `concierge staff add --email you@example.com --role admin`"
                );
            }
            for s in staff {
                println!(
                    "{:<40} {:<6} {:<8} {}",
                    s.email,
                    s.role,
                    if s.active { "active" } else { "disabled" },
                    s.name.unwrap_or_default()
                );
            }
        }
        StaffCommand::Passwd { data_dir, email } => {
            let store = open(config_file, data_dir).await?;
            let s = find(&store, &email).await?;
            let hash = new_password_hash()?;
            store.set_staff_password(&s.id, &hash).await?;
            store.close().await;
            println!("new password set for {} (their sessions ended)", s.email);
        }
        StaffCommand::Disable { data_dir, email } => {
            set_active(config_file, data_dir, &email, false).await?;
        }
        StaffCommand::Enable { data_dir, email } => {
            set_active(config_file, data_dir, &email, true).await?;
        }
        StaffCommand::Role {
            data_dir,
            email,
            role,
        } => {
            check_role(&role).map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            let store = open(config_file, data_dir).await?;
            let s = find(&store, &email).await?;
            if s.is_admin()
                && role == "agent"
                && s.active
                && store.count_active_admins().await? <= 1
            {
                bail!("{} is the last active admin and stays admin", s.email);
            }
            store.set_staff_role(&s.id, &role).await?;
            store.close().await;
            println!("{} is now {role}", s.email);
        }
    }
    Ok(())
}
