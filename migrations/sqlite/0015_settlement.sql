-- Settlement (issue #15): a deal becomes a paid order through a saga whose every step is logged
-- before and after it runs. `settlements` is one row per deal (the latest attempt; a failed
-- settlement may be attempted again with a new Idempotency-Key); `settlement_steps` is the
-- saga log of every attempt; `stock_reservations` hold stock for a running settlement and are
-- subtracted from stock wherever availability is read.
CREATE TABLE settlements (
    deal_id      TEXT PRIMARY KEY REFERENCES deals (id),
    agent_id     TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    total        INTEGER NOT NULL,
    currency     TEXT NOT NULL,
    status       TEXT NOT NULL,        -- 'running' | 'compensating' | 'settled' | 'failed'
    reason       TEXT,
    order_id     TEXT,
    started_at   INTEGER NOT NULL,     -- unix ms like the negotiation tables
    finished_at  INTEGER,
    attempt            INTEGER NOT NULL DEFAULT 1,
    idempotency_key    TEXT,
    payment_method_id  TEXT,
    provider           TEXT,
    payment_ref        TEXT,
    address            TEXT,
    http_status        INTEGER,
    updated_at         INTEGER
);
CREATE INDEX settlements_agent ON settlements (agent_id, started_at);
CREATE INDEX settlements_status ON settlements (status);

CREATE TABLE settlement_steps (
    deal_id     TEXT NOT NULL REFERENCES settlements (deal_id),
    attempt     INTEGER NOT NULL,
    step        TEXT NOT NULL,
    position    INTEGER NOT NULL,
    status      TEXT NOT NULL,        -- 'started' | 'done' | 'failed'
    detail      TEXT,
    audit_seq   INTEGER,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    PRIMARY KEY (deal_id, attempt, step)
);

CREATE TABLE stock_reservations (
    id          TEXT PRIMARY KEY,
    deal_id     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    variant_id  TEXT NOT NULL,
    product_id  TEXT NOT NULL,
    quantity    INTEGER NOT NULL,
    status      TEXT NOT NULL,        -- 'held' | 'consumed' | 'released'
    expires_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX stock_reservations_variant ON stock_reservations (variant_id, status);
CREATE INDEX stock_reservations_deal ON stock_reservations (deal_id, attempt);
