CREATE TABLE settlements (
    deal_id      TEXT PRIMARY KEY REFERENCES deals (id),
    agent_id     TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    total        BIGINT NOT NULL,      -- INTEGER on sqlite
    currency     TEXT NOT NULL,
    status       TEXT NOT NULL,        -- 'running' | 'compensating' | 'settled' | 'failed'
    reason       TEXT,
    order_id     TEXT,
    started_at   BIGINT NOT NULL,      -- unix ms
    finished_at  BIGINT
);
