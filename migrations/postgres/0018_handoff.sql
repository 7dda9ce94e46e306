-- The hand-off holds (issue #17): once a conversation is escalated or a person has replied in
-- it, the brand agent stops answering it until staff resolve it or hand it back.
ALTER TABLE conversations ADD COLUMN with_staff BIGINT NOT NULL DEFAULT 0;
UPDATE conversations SET with_staff = 1
  WHERE status = 'escalated'
     OR (status <> 'resolved' AND EXISTS (SELECT 1 FROM messages m
           WHERE m.conversation_id = conversations.id AND m.author_kind = 'staff'));
