-- Hand-offs to a person: why, a summary, and a draft reply for staff to approve, edit or reject.
CREATE TABLE escalations (
    id               TEXT PRIMARY KEY,
    conversation_id  TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    reason           TEXT NOT NULL,
    summary          TEXT NOT NULL,
    draft            TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'open',
    created_at       INTEGER NOT NULL,
    resolved_at      INTEGER,
    resolved_by      TEXT
);
CREATE INDEX escalations_conversation ON escalations (conversation_id, created_at);
CREATE INDEX escalations_open ON escalations (status, created_at);
