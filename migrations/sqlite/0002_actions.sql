-- The action log (SQLite): one row per write the tool layer was asked to make — applied,
-- refused or sent for approval — plus escalations. Append-only, hash-chained.
-- Conventions as in 0001: ids TEXT, times INTEGER epoch ms, JSON as TEXT.
--
-- `hash` is the lower-case hex SHA-256 of `prev_hash` followed by the canonical JSON of the
-- entry (every other column, keys sorted, no spaces; see src/store/actions.rs). The first entry's
-- `prev_hash` is 64 zeros. `seq` has no gaps. `audit_head` holds the last seq and hash: appends
-- lock it first, which serialises them (and every tool write) and lets verification notice a
-- truncated tail.

CREATE TABLE audit_log (
    seq           INTEGER PRIMARY KEY,
    at            INTEGER NOT NULL,
    actor_kind    TEXT NOT NULL,
    actor_id      TEXT,
    -- The customer the call acted for (no foreign key: the log outlives the customer).
    customer_id   TEXT,
    tool          TEXT NOT NULL,
    args          TEXT NOT NULL,
    order_id      TEXT,
    -- The order (or customer) as JSON of the model before and after; NULL when there was none
    -- or nothing was changed.
    before_state  TEXT,
    after_state   TEXT,
    -- Changes outside the order, e.g. gift-card balances: JSON array.
    effects       TEXT NOT NULL DEFAULT '[]',
    -- "applied", "recorded", "refused: <code>: <message>" or "needs approval: <message>".
    outcome       TEXT NOT NULL,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);
CREATE INDEX audit_log_order ON audit_log (order_id);
CREATE INDEX audit_log_customer ON audit_log (customer_id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TABLE audit_head (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    seq           INTEGER NOT NULL,
    hash          TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
