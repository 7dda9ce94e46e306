-- A2A: the consumer-agent gateway's tasks and contexts. A context is a caller's conversation
-- thread (`scope` = "agent:<id>" for a signing agent, or "public" for unsigned callers); once a
-- text message in it has gone to the brand agent, a2a_contexts records its inbox conversation.
-- A task is one request and its answer: its state, status message, history and artifacts as
-- A2A 1.0 JSON.
CREATE TABLE a2a_contexts (
    scope            TEXT NOT NULL,
    id               TEXT NOT NULL,
    conversation_id  TEXT REFERENCES conversations (id) ON DELETE SET NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (scope, id)
);

CREATE TABLE a2a_tasks (
    id               TEXT PRIMARY KEY,
    scope            TEXT NOT NULL,
    context_id       TEXT NOT NULL,
    -- the messageId of the message that started the task: a retry with the same messageId
    -- gets this task back instead of running again
    message_id       TEXT NOT NULL,
    state            TEXT NOT NULL,
    status_message   TEXT,
    history          TEXT NOT NULL,
    artifacts        TEXT NOT NULL,
    conversation_id  TEXT REFERENCES conversations (id) ON DELETE SET NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE UNIQUE INDEX a2a_tasks_message ON a2a_tasks (scope, message_id);
CREATE INDEX a2a_tasks_scope ON a2a_tasks (scope, updated_at, id);
CREATE INDEX a2a_tasks_context ON a2a_tasks (scope, context_id, updated_at, id);
