-- Every attempt to settle a deal, by its Idempotency-Key (issue #15): a retry with the key of
-- an earlier, failed attempt gets that attempt's outcome (not a new attempt), and counterparty
-- monitoring counts every attempt, not only each deal's latest. `settlements` keeps the
-- deal's latest attempt as before; both are written in the same transactions.
CREATE TABLE settlement_attempts (
    deal_id            TEXT NOT NULL REFERENCES settlements (deal_id),
    attempt            INTEGER NOT NULL,
    idempotency_key    TEXT NOT NULL,
    agent_id           TEXT NOT NULL,
    total              INTEGER NOT NULL,
    payment_method_id  TEXT,
    status             TEXT NOT NULL,        -- 'running' | 'compensating' | 'settled' | 'failed'
    reason             TEXT,
    order_id           TEXT,
    http_status        INTEGER,
    compensated        INTEGER NOT NULL DEFAULT 0, -- 1 once a completed step was undone
    started_at         INTEGER NOT NULL,
    finished_at        INTEGER,
    PRIMARY KEY (deal_id, attempt)
);
CREATE UNIQUE INDEX settlement_attempts_key ON settlement_attempts (deal_id, idempotency_key);
CREATE INDEX settlement_attempts_agent ON settlement_attempts (agent_id, started_at);
INSERT INTO settlement_attempts (deal_id, attempt, idempotency_key, agent_id, total,
    payment_method_id, status, reason, order_id, http_status, compensated, started_at, finished_at)
  SELECT deal_id, attempt, COALESCE(idempotency_key, 'attempt-' || CAST(attempt AS TEXT)), agent_id,
    total, payment_method_id, status, reason, order_id, http_status,
    CASE WHEN status = 'compensating' OR (status = 'failed' AND order_id IS NOT NULL) THEN 1 ELSE 0 END,
    started_at, finished_at
  FROM settlements;
