-- The staff web inbox (SQLite): the people who sign in, their sessions, failed sign-ins (for rate
-- limiting) and private notes on conversations. Conventions as in 0001.

CREATE TABLE staff (
    id             TEXT PRIMARY KEY,
    -- Lower-cased; what a person signs in with.
    email          TEXT NOT NULL UNIQUE,
    name           TEXT,
    -- "admin" (also manages staff) or "agent".
    role           TEXT NOT NULL,
    -- Argon2id PHC string.
    password_hash  TEXT NOT NULL,
    active         INTEGER NOT NULL DEFAULT 1,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

-- A signed-in browser. The cookie carries a random token; only its SHA-256 is kept here.
CREATE TABLE staff_sessions (
    token_hash     TEXT PRIMARY KEY,
    staff_id       TEXT NOT NULL REFERENCES staff (id) ON DELETE CASCADE,
    -- Sent back in every form (and the X-CSRF-Token header) that changes something.
    csrf_token     TEXT NOT NULL,
    -- A one-time notice for the next page ("Order #W… cancelled", a refusal's reason).
    flash          TEXT,
    created_at     INTEGER NOT NULL,
    last_seen_at   INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
);
CREATE INDEX staff_sessions_staff ON staff_sessions (staff_id);
CREATE INDEX staff_sessions_expiry ON staff_sessions (expires_at);

-- Failed sign-ins, counted per email and per client address over a sliding window.
CREATE TABLE login_failures (
    id             TEXT PRIMARY KEY,
    email          TEXT NOT NULL,
    ip             TEXT NOT NULL,
    at             INTEGER NOT NULL
);
CREATE INDEX login_failures_email ON login_failures (email, at);
CREATE INDEX login_failures_ip ON login_failures (ip, at);

-- Private notes: staff only, never sent on any channel.
CREATE TABLE staff_notes (
    id               TEXT PRIMARY KEY,
    conversation_id  TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    staff_id         TEXT,
    text             TEXT NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE INDEX staff_notes_conversation ON staff_notes (conversation_id, created_at);

-- The queue lists conversations newest activity first, optionally by channel or assignee.
CREATE INDEX conversations_updated ON conversations (updated_at);
CREATE INDEX conversations_channel ON conversations (channel, updated_at);
CREATE INDEX conversations_assignee ON conversations (assignee, updated_at);
-- The inbox's message search catches up on new messages in creation order.
CREATE INDEX messages_created ON messages (created_at, id);
