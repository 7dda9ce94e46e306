-- Risk controls on agent commerce (issue #15). Exposure itself is not stored: it is derived
-- from live negotiations, deals and settlements, and rebuilt from them at start.
--
-- Financial circuit breakers: each breaker's current state ('brand' or 'agent:<agent id>'),
-- and every transition (tripped by a rule or by staff, half-open after the cool-down, closed,
-- reset), each with the number of its entry in the hash-chained action log.
CREATE TABLE risk_breakers (
    breaker     TEXT PRIMARY KEY,
    state       TEXT NOT NULL,          -- 'closed' | 'open' | 'half_open'
    reason      TEXT NOT NULL,
    since       BIGINT NOT NULL,
    open_until  BIGINT,                 -- open: when it goes half-open (NULL: held by staff)
    updated_at  BIGINT NOT NULL
);

CREATE TABLE risk_breaker_events (
    id          TEXT PRIMARY KEY,
    breaker     TEXT NOT NULL,
    at          BIGINT NOT NULL,
    from_state  TEXT NOT NULL,
    to_state    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    actor_kind  TEXT NOT NULL,          -- 'system' | 'staff'
    actor_id    TEXT,
    open_until  BIGINT,
    audit_seq   BIGINT NOT NULL
);
CREATE INDEX risk_breaker_events_at ON risk_breaker_events (at);

-- Counterparty monitoring: an agent's misbehaviour that nothing else stores (frames refused
-- before anything is written): 'signature_failure', 'offer_out_of_range'.
CREATE TABLE risk_agent_counters (
    agent_id  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    count     BIGINT NOT NULL,
    last_at   BIGINT NOT NULL,
    PRIMARY KEY (agent_id, kind)
);
