-- Contexts the server minted for unsigned A2A callers. An unsigned caller's first message gets a
-- new context id (at least 128 random bits, given only to that caller); an unsigned message or
-- ListTasks naming any other contextId is refused as an unknown context. An unsigned caller's
-- tasks live in the scope "public:<context id>", so one caller never sees another's.
CREATE TABLE a2a_public_contexts (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);
