//! Rows behind the limits: sign-in attempts counted per email and per client address (one
//! upsert checks and records), and the latest messages of a conversation (a bounded history).

use super::inbox::message_from_row;
use super::{Direction, Message, Store, StoreResult, get_i64};

/// What [`Store::reserve_login_attempt`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginReservation {
    /// The attempt is counted; check the password.
    Granted,
    /// Over the limit for `scope` ("email" or "ip") until `until` (ms since 1970).
    Refused { scope: &'static str, until: i64 },
}

impl Store {
    /// Counts one attempt for `(scope, subject)` in a window of `window_ms` that starts with
    /// the first attempt, and returns the count including this one and the window's start. One
    /// statement: concurrent attempts are serialized by the row (PostgreSQL's `ON CONFLICT`
    /// locks it; SQLite has one writer).
    async fn count_login_attempt(
        &self,
        scope: &str,
        subject: &str,
        now: i64,
        window_ms: i64,
    ) -> StoreResult<(i64, i64)> {
        let row = self.write_fetch_one(sqlx::query(
            "INSERT INTO login_attempts (scope, subject, window_start, n) VALUES ($1, $2, $3, 1) \
             ON CONFLICT (scope, subject) DO UPDATE SET \
               n = CASE WHEN login_attempts.window_start <= $4 THEN 1 ELSE login_attempts.n + 1 END, \
               window_start = CASE WHEN login_attempts.window_start <= $4 THEN $3 \
                                   ELSE login_attempts.window_start END \
             RETURNING n, window_start",
        )
        .bind(scope)
        .bind(subject)
        .bind(now)
        .bind(now - window_ms)
        )
        .await?;
        Ok((get_i64(&row, "n")?, get_i64(&row, "window_start")?))
    }

    async fn uncount_login_attempt(&self, scope: &str, subject: &str) -> StoreResult<()> {
        self.write_execute(
            sqlx::query(
                "UPDATE login_attempts SET n = n - 1 WHERE scope = $1 AND subject = $2 AND n > 0",
            )
            .bind(scope)
            .bind(subject),
        )
        .await?;
        Ok(())
    }

    /// Reserves a sign-in attempt for `email` from `ip` before its password is checked: at most
    /// `max_email` per email and `max_ip` per address in the window (0: no limit). A refused
    /// attempt leaves the other scope's count as it was.
    pub async fn reserve_login_attempt(
        &self,
        email: &str,
        ip: &str,
        now: i64,
        window_ms: i64,
        max_email: i64,
        max_ip: i64,
    ) -> StoreResult<LoginReservation> {
        let email = email.trim().to_lowercase();
        if max_email > 0 {
            let (n, start) = self
                .count_login_attempt("email", &email, now, window_ms)
                .await?;
            if n > max_email {
                return Ok(LoginReservation::Refused {
                    scope: "email",
                    until: start + window_ms,
                });
            }
        }
        if max_ip > 0 {
            let (n, start) = self.count_login_attempt("ip", ip, now, window_ms).await?;
            if n > max_ip {
                if max_email > 0 {
                    self.uncount_login_attempt("email", &email).await?;
                }
                return Ok(LoginReservation::Refused {
                    scope: "ip",
                    until: start + window_ms,
                });
            }
        }
        Ok(LoginReservation::Granted)
    }

    /// Gives back a reserved attempt whose password was never checked.
    pub async fn release_login_attempt(&self, email: &str, ip: &str) -> StoreResult<()> {
        self.uncount_login_attempt("email", &email.trim().to_lowercase())
            .await?;
        self.uncount_login_attempt("ip", ip).await
    }

    /// A successful sign-in: the email's count starts over, the address gets its attempt back,
    /// and windows over a day old are dropped.
    pub async fn login_succeeded(&self, email: &str, ip: &str, now: i64) -> StoreResult<()> {
        self.write_execute(
            sqlx::query("DELETE FROM login_attempts WHERE scope = 'email' AND subject = $1")
                .bind(email.trim().to_lowercase()),
        )
        .await?;
        self.uncount_login_attempt("ip", ip).await?;
        self.write_execute(
            sqlx::query("DELETE FROM login_attempts WHERE window_start < $1")
                .bind(now - 24 * 3600 * 1000),
        )
        .await?;
        Ok(())
    }

    /// The latest `limit` messages of a conversation that its customer may see (not internal
    /// notes), oldest first.
    pub async fn recent_messages(
        &self,
        conversation_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<Message>> {
        let mut messages = sqlx::query(
            "SELECT * FROM messages WHERE conversation_id = $1 AND direction <> $2 \
             ORDER BY seq DESC LIMIT $3",
        )
        .bind(conversation_id)
        .bind(Direction::Internal.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(message_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
        messages.reverse();
        Ok(messages)
    }
}
