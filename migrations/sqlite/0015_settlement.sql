CREATE TABLE settlements (
    deal_id      TEXT PRIMARY KEY REFERENCES deals (id),
    agent_id     TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    total        INTEGER NOT NULL,     -- BIGINT on postgres
    currency     TEXT NOT NULL,
    status       TEXT NOT NULL,        -- 'running' | 'compensating' | 'settled' | 'failed'
    reason       TEXT,
    order_id     TEXT,
    started_at   INTEGER NOT NULL,     -- unix ms
    finished_at  INTEGER
);
