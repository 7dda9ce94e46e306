-- The outbox: one row per reply to deliver on a channel. A durable job carries each delivery;
-- the row keeps its state, attempts and last error so staff can see what did not go out.
CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,
    message_id       TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    conversation_id  TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    channel          TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    idempotency_key  TEXT NOT NULL UNIQUE,
    external_id      TEXT,
    job_id           TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    sent_at          INTEGER
);
CREATE INDEX deliveries_conversation ON deliveries (conversation_id, created_at);
CREATE INDEX deliveries_status ON deliveries (status, updated_at);

-- An opaque token per conversation, carried in email Reply-To plus-addresses and subjects so a
-- reply threads even when a mail client rewrites its headers.
ALTER TABLE conversations ADD COLUMN reply_token TEXT;
CREATE UNIQUE INDEX conversations_reply_token ON conversations (reply_token);
