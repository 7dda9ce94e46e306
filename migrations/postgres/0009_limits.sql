-- Sign-in attempts, counted atomically per email (scope 'email') and per client address
-- (scope 'ip') over a fixed window that starts with the first attempt: one upsert both checks
-- and records an attempt, so parallel requests cannot pass the limit. A successful sign-in
-- clears its email's count and gives its address's attempt back.
CREATE TABLE login_attempts (
    scope          TEXT NOT NULL,
    subject        TEXT NOT NULL,
    window_start   BIGINT NOT NULL,
    n              BIGINT NOT NULL,
    PRIMARY KEY (scope, subject)
);
CREATE INDEX login_attempts_window ON login_attempts (window_start);

-- Replaced by login_attempts (it counted failures after checking, so parallel tries passed).
DROP TABLE login_failures;
