-- Agent-to-agent negotiation (issue #14). A negotiation is its transcript: every move (the
-- frame as received or sent, with its signature) is a row keyed by (negotiation, round), so a
-- replayed or racing move for a round already taken is refused by the database; the
-- negotiation row carries what was fixed at open (`setup`: lines, floors, stock bounds, the
-- strategy's parameters, the token's limits) and a copy of the state for listing. A deal is
-- stored with both signatures, in the same transaction as its audit-log entry.
CREATE TABLE negotiations (
    id           TEXT PRIMARY KEY,
    agent_id     TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    token_id     TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    status       TEXT NOT NULL,
    round        BIGINT NOT NULL DEFAULT 0,
    max_rounds   BIGINT NOT NULL,
    deadline_at  BIGINT NOT NULL,
    categories   TEXT NOT NULL,
    setup        TEXT NOT NULL,
    end_reason   TEXT,
    deal_id      TEXT,
    opened_at    BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    UNIQUE (agent_id, request_id)
);
CREATE INDEX negotiations_opened ON negotiations (opened_at);
CREATE INDEX negotiations_agent ON negotiations (agent_id, opened_at);

CREATE TABLE negotiation_moves (
    negotiation_id  TEXT NOT NULL REFERENCES negotiations (id),
    round           BIGINT NOT NULL,
    side            TEXT NOT NULL,
    kind            TEXT NOT NULL,
    terms           TEXT,
    total           BIGINT,
    frame           TEXT NOT NULL,
    sig             TEXT,
    at              BIGINT NOT NULL,
    PRIMARY KEY (negotiation_id, round)
);

CREATE TABLE deals (
    id              TEXT PRIMARY KEY,
    negotiation_id  TEXT NOT NULL UNIQUE REFERENCES negotiations (id),
    agent_id        TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    deal            TEXT NOT NULL,
    deal_hash       TEXT NOT NULL,
    brand_sig       TEXT NOT NULL,
    agent_sig       TEXT NOT NULL,
    total           BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    audit_seq       BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);
