-- The consumer-agent gateway's trust data (SQLite): registered agents and their Ed25519 keys,
-- signature nonces, capability tokens with their spending, idempotent writes, one-time codes,
-- and the service's signature over the action log's head.
-- Conventions as in 0001: ids TEXT, times INTEGER epoch ms, money INTEGER minor units.

-- A consumer agent (a shopper's AI assistant) known by name. Revoking it revokes every key.
CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
);

-- An agent's public keys; several may be active at once (rotation). `key_id` is derived from
-- the key (see src/gateway/identity.rs); `public_key` is the raw 32 bytes, base64url.
CREATE TABLE agent_keys (
    key_id        TEXT PRIMARY KEY,
    agent_id      TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    public_key    TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
);
CREATE INDEX agent_keys_agent ON agent_keys (agent_id);

-- Signature nonces seen, per key, kept until the signature could no longer be fresh.
CREATE TABLE agent_nonces (
    key_id        TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    expires_at    INTEGER NOT NULL,
    PRIMARY KEY (key_id, nonce)
);
CREATE INDEX agent_nonces_expiry ON agent_nonces (expires_at);

-- Capability tokens issued (one row per root token; `id` is its first revocation id, hex).
-- `spent_minor` is what calls under the token have committed or reserved so far.
CREATE TABLE agent_tokens (
    id                 TEXT PRIMARY KEY,
    agent_id           TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    customer_id        TEXT NOT NULL,
    ops                TEXT NOT NULL,
    spend_limit_minor  INTEGER,
    categories         TEXT NOT NULL DEFAULT '[]',
    expires_at         INTEGER NOT NULL,
    issued_at          INTEGER NOT NULL,
    issued_via         TEXT NOT NULL,
    -- over the limit: 'refuse', or 'escalate' (a staff member is asked to approve)
    over_limit         TEXT NOT NULL DEFAULT 'refuse',
    spent_minor        INTEGER NOT NULL DEFAULT 0,
    revoked_at         INTEGER
);
CREATE INDEX agent_tokens_agent ON agent_tokens (agent_id, issued_at);
CREATE INDEX agent_tokens_customer ON agent_tokens (customer_id, issued_at);

-- Revoked revocation ids (of root tokens or of attenuated ones); a token carrying any is refused.
CREATE TABLE agent_token_revocations (
    revocation_id  TEXT PRIMARY KEY,
    token_id       TEXT,
    revoked_at     INTEGER NOT NULL
);

-- Every refund or exchange value charged against a token: reserved before the call, spent when
-- it succeeded, released when it did not.
CREATE TABLE agent_token_spend (
    id            TEXT PRIMARY KEY,
    token_id      TEXT NOT NULL,
    amount_minor  INTEGER NOT NULL,
    tool          TEXT NOT NULL,
    order_id      TEXT,
    state         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX agent_token_spend_token ON agent_token_spend (token_id, created_at);

-- Idempotent writes: one row per (caller, Idempotency-Key); the stored answer is replayed.
CREATE TABLE idempotency_keys (
    scope         TEXT NOT NULL,
    key           TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    state         TEXT NOT NULL,
    status        INTEGER,
    body          TEXT,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- One-time codes emailed to a customer so an agent can get a token for them (hashed).
CREATE TABLE delegation_codes (
    id            TEXT PRIMARY KEY,
    agent_id      TEXT NOT NULL,
    customer_id   TEXT NOT NULL,
    email         TEXT NOT NULL,
    code_hash     TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    expires_at    INTEGER NOT NULL,
    used_at       INTEGER,
    created_at    INTEGER NOT NULL
);
CREATE INDEX delegation_codes_lookup ON delegation_codes (agent_id, email, created_at);

-- The last head of the action log the service signed with its Ed25519 key (the key lives in
-- the data dir, not here): `signature` is base64url over "concierge-audit-head-v1:<seq>:<hash>".
ALTER TABLE audit_head ADD COLUMN signed_seq INTEGER;
ALTER TABLE audit_head ADD COLUMN signed_hash TEXT;
ALTER TABLE audit_head ADD COLUMN signature TEXT;
ALTER TABLE audit_head ADD COLUMN signed_at INTEGER;
