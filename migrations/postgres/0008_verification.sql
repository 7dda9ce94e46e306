-- Verification that cannot be guessed: every attempt to prove who a shopper is (or an agent's
-- order + email delegation) is recorded once per scope it counts against — the conversation,
-- the claimed customer or email, the sender's channel identity, the client address or agent.
-- `outcome` is 'pending' while the claim is being checked (it counts, so concurrent attempts
-- cannot slip past the limit), then 'failed' or 'passed'; 'refused' when a lock stopped it (not
-- counted; it tells staff which lock a conversation ran into). Lifting a lock sets `lifted_at`.
CREATE TABLE verification_attempts (
    id               TEXT PRIMARY KEY,
    scope            TEXT NOT NULL,
    conversation_id  TEXT,
    outcome          TEXT NOT NULL,
    lifted_at        BIGINT,
    lifted_by        TEXT,
    created_at       BIGINT NOT NULL
);
CREATE INDEX verification_attempts_scope ON verification_attempts (scope, created_at);
CREATE INDEX verification_attempts_conversation ON verification_attempts (conversation_id, created_at);

-- One row per scope ever counted: what concurrent attempts lock (PostgreSQL `FOR UPDATE`) so the
-- check and the record of an attempt are one step.
CREATE TABLE verification_scopes (
    scope       TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

-- When a channel identity was last verified as its customer; a link older than
-- `[verification] link_ttl_days` is not used.
ALTER TABLE identities ADD COLUMN verified_at BIGINT;
UPDATE identities SET verified_at = updated_at WHERE verified = 1;
