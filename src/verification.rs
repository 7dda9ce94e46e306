//! Verification that cannot be guessed, for every door that proves who a shopper is (the
//! brand agent's dialogue on every channel, and the gateway's order + email delegation):
//! which scopes a failed attempt counts against and with which limit (`[verification]`), the
//! lock that follows, and the one-time codes emailed to the address on file that get a
//! shopper past a lock. The counting itself lives in the store (`store::verification`), the
//! codes in the `delegation_codes` table (scoped by who asked: an agent id, or
//! `conversation:<id>`). This module decides nothing about replies.

use crate::config::VerificationConfig;
use crate::store::{
    AttemptGate, AttemptScope, AttemptTicket, Store, StoreResult, VerificationLock,
};
use crate::util::{constant_time_eq, new_id, sha256_hex};

/// At most this many order numbers from one message take part in verification.
pub const MAX_ORDER_CLAIMS_PER_MESSAGE: usize = 2;
/// How long a one-time code is valid.
pub const CODE_TTL_MS: i64 = 10 * 60 * 1000;
/// Guesses allowed per code.
pub const CODE_MAX_ATTEMPTS: i64 = 5;
/// Codes one requester (an agent, a conversation) may have sent to one address per
/// [`CODE_TTL_MS`].
pub const CODE_MAX_SENDS: i64 = 3;
/// Codes any requester may have sent to one address per [`CODE_TTL_MS`] from conversations.
pub const CODE_MAX_SENDS_PER_ADDRESS: i64 = 5;

/// The configured limits, and the scopes attempts count against.
#[derive(Debug, Clone)]
pub struct Limits {
    cfg: VerificationConfig,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(VerificationConfig::default())
    }
}

impl Limits {
    pub fn new(cfg: VerificationConfig) -> Limits {
        Limits { cfg }
    }

    pub fn window_ms(&self) -> i64 {
        i64::try_from(self.cfg.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 4)
    }

    pub fn link_ttl_ms(&self) -> i64 {
        i64::from(self.cfg.link_ttl_days) * 24 * 3600 * 1000
    }

    /// Whether a link verified at `verified_at` may still be used at `now`.
    pub fn link_is_fresh(&self, verified_at: Option<i64>, now: i64) -> bool {
        verified_at.is_some_and(|at| now - at < self.link_ttl_ms())
    }

    fn scope(key: String, max: u32) -> AttemptScope {
        AttemptScope {
            key,
            max_failures: max,
        }
    }

    pub fn conversation(&self, id: &str) -> AttemptScope {
        Limits::scope(
            format!("conversation:{id}"),
            self.cfg.max_conversation_failures,
        )
    }

    pub fn customer(&self, id: &str) -> AttemptScope {
        Limits::scope(format!("customer:{id}"), self.cfg.max_customer_failures)
    }

    /// A claimed email that is no customer's (a known one counts as its customer).
    pub fn email(&self, email: &str) -> AttemptScope {
        Limits::scope(
            format!("email:{}", email.trim().to_lowercase()),
            self.cfg.max_customer_failures,
        )
    }

    /// The sender's channel identity (a chat visitor, a Telegram user, an email address).
    pub fn identity(&self, id: &str) -> AttemptScope {
        Limits::scope(format!("identity:{id}"), self.cfg.max_customer_failures)
    }

    /// Who asked beyond the channel identity: `ip:<address>` or `agent:<id>`.
    pub fn requester(&self, requester: &str) -> AttemptScope {
        Limits::scope(requester.to_string(), self.cfg.max_customer_failures)
    }

    /// A consumer agent asking for delegations.
    pub fn agent(&self, agent_id: &str) -> AttemptScope {
        self.requester(&format!("agent:{agent_id}"))
    }

    /// Every scope a conversation's attempts can count against, for checking locks on it
    /// from the outside (the staff inbox): the conversation's own limit, and the others'.
    pub fn scope_for_key(&self, key: &str) -> AttemptScope {
        let max = if key.starts_with("conversation:") {
            self.cfg.max_conversation_failures
        } else {
            self.cfg.max_customer_failures
        };
        Limits::scope(key.to_string(), max)
    }
}

/// Locked scopes and when the last of them opens again.
#[derive(Debug, Clone)]
pub struct Lock {
    pub scopes: Vec<VerificationLock>,
    pub until: i64,
}

impl Lock {
    fn of(scopes: Vec<VerificationLock>) -> Option<Lock> {
        let until = scopes.iter().map(|l| l.until).max()?;
        Some(Lock { scopes, until })
    }

    /// Seconds until the lock opens (at least 1).
    pub fn retry_after_secs(&self, now: i64) -> i64 {
        ((self.until - now) / 1000 + 1).max(1)
    }
}

/// A scope in words for staff ("this conversation", "customer ana_…").
pub fn describe_scope(scope: &str) -> String {
    match scope.split_once(':') {
        Some(("conversation", _)) => "this conversation".into(),
        Some(("customer", id)) => format!("customer {id}"),
        Some(("email", e)) => format!("the email address {e}"),
        Some(("identity", _)) => "the sender's channel identity".into(),
        Some(("ip", a)) => format!("the client address {a}"),
        Some(("agent", a)) => format!("the consumer agent {a}"),
        _ => scope.to_string(),
    }
}

/// Lets one attempt through, recording it against every scope, unless one is locked.
pub async fn begin(
    store: &Store,
    limits: &Limits,
    scopes: &[AttemptScope],
    conversation_id: Option<&str>,
    now: i64,
) -> StoreResult<Result<AttemptTicket, Lock>> {
    match store
        .open_verification_attempt(scopes, conversation_id, now, limits.window_ms())
        .await?
    {
        AttemptGate::Open(t) => Ok(Ok(t)),
        AttemptGate::Locked(l) => Ok(Err(Lock::of(l).unwrap_or(Lock {
            scopes: Vec::new(),
            until: now + limits.window_ms(),
        }))),
    }
}

/// The lock on any of these scopes now, if there is one.
pub async fn locked(
    store: &Store,
    limits: &Limits,
    scopes: &[AttemptScope],
    now: i64,
) -> StoreResult<Option<Lock>> {
    Ok(Lock::of(
        store
            .verification_locks(scopes, now, limits.window_ms())
            .await?,
    ))
}

/// The locks that hold on what this conversation's attempts counted against.
pub async fn conversation_locks(
    store: &Store,
    limits: &Limits,
    conversation_id: &str,
    now: i64,
) -> StoreResult<Option<Lock>> {
    let scopes: Vec<AttemptScope> = store
        .conversation_verification_scopes(conversation_id, now - limits.window_ms())
        .await?
        .iter()
        .map(|k| limits.scope_for_key(k))
        .collect();
    locked(store, limits, &scopes, now).await
}

/// The stored hash of a one-time code.
pub fn code_hash(code_id: &str, code: &str) -> String {
    sha256_hex(format!("concierge-delegation-code:{code_id}:{code}").as_bytes())
}

/// A fresh 6-digit code.
pub fn new_code() -> String {
    format!("{:06}", rand::random_range(0..1_000_000u32))
}

/// Why a code could not be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeRefused {
    /// Too many codes went to this address recently.
    TooMany,
}

/// Stores a new one-time code for (`requester`, `email`) and returns it, unless too many were
/// sent. An address that is no customer's gets a row too (`customer_id` empty, a code nobody
/// is told), so answers and limits do not tell whether it is a customer's.
pub async fn issue_code(
    store: &Store,
    requester: &str,
    customer_id: Option<&str>,
    email: &str,
    per_address_limit: Option<i64>,
    now: i64,
) -> StoreResult<Result<String, CodeRefused>> {
    let email = email.trim().to_lowercase();
    let since = now - CODE_TTL_MS;
    if store
        .count_delegation_codes(requester, &email, since)
        .await?
        >= CODE_MAX_SENDS
    {
        return Ok(Err(CodeRefused::TooMany));
    }
    if let Some(limit) = per_address_limit
        && store.count_codes_to_address(&email, since).await? >= limit
    {
        return Ok(Err(CodeRefused::TooMany));
    }
    let code = new_code();
    let id = new_id("dcd");
    let hash = code_hash(&id, &code);
    store
        .insert_delegation_code(&crate::store::NewDelegationCode {
            id: &id,
            agent_id: requester,
            customer_id: customer_id.unwrap_or(""),
            email: &email,
            code_hash: &hash,
            expires_at: now + CODE_TTL_MS,
            created_at: now,
        })
        .await?;
    Ok(Ok(code))
}

/// What checking a one-time code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeCheck {
    /// Right: the customer it was sent for.
    Verified(String),
    /// No valid code for this requester and address.
    NoCode,
    /// The code was guessed [`CODE_MAX_ATTEMPTS`] times.
    AttemptsExceeded,
    /// Wrong; this many guesses are left.
    Wrong { left: i64 },
    /// Right, but already used (or sent for no customer).
    Used,
}

/// Checks a code given for (`requester`, `email`): each guess counts, atomically.
pub async fn redeem_code(
    store: &Store,
    requester: &str,
    email: &str,
    code: &str,
    now: i64,
) -> StoreResult<CodeCheck> {
    let email = email.trim().to_lowercase();
    let Some(stored) = store.active_delegation_code(requester, &email, now).await? else {
        return Ok(CodeCheck::NoCode);
    };
    let Some(attempt) = store
        .count_code_attempt(&stored.id, CODE_MAX_ATTEMPTS)
        .await?
    else {
        return Ok(CodeCheck::AttemptsExceeded);
    };
    let given = code_hash(&stored.id, code.trim());
    if !constant_time_eq(given.as_bytes(), stored.code_hash.as_bytes()) {
        return Ok(CodeCheck::Wrong {
            left: CODE_MAX_ATTEMPTS - attempt,
        });
    }
    if stored.customer_id.is_empty() || !store.use_delegation_code(&stored.id, now).await? {
        return Ok(CodeCheck::Used);
    }
    Ok(CodeCheck::Verified(stored.customer_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_expire_after_the_configured_days() {
        let limits = Limits::new(VerificationConfig {
            link_ttl_days: 30,
            ..Default::default()
        });
        let day = 24 * 3600 * 1000;
        assert!(limits.link_is_fresh(Some(0), 29 * day));
        assert!(!limits.link_is_fresh(Some(0), 30 * day));
        assert!(
            !limits.link_is_fresh(None, 0),
            "a link never dated is not used"
        );
    }

    #[test]
    fn scopes_carry_their_limits() {
        let limits = Limits::default();
        assert_eq!(limits.conversation("c1").max_failures, 3);
        assert_eq!(limits.customer("x").max_failures, 5);
        assert_eq!(limits.email(" A@B.example ").key, "email:a@b.example");
        assert_eq!(limits.agent("a1").key, "agent:a1");
        assert_eq!(limits.scope_for_key("conversation:c1").max_failures, 3);
    }
}
