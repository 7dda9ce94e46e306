-- One answer per inbound message. A reply Concierge composes for an inbound message (the brand
-- agent's answer, the /start greeting, a group chat's invitation) names that message in
-- `in_reply_to`; the unique index makes a second answer to the same message impossible, also
-- when a turn is re-run after a crash or two workers race. Replies stored before this column
-- existed carry the id in their meta: the first of them per message is copied over.
ALTER TABLE messages ADD COLUMN in_reply_to TEXT;
UPDATE messages SET in_reply_to = json_extract(meta, '$.in_reply_to')
 WHERE direction = 'outbound'
   AND json_valid(meta)
   AND json_type(meta, '$.in_reply_to') = 'text'
   AND NOT EXISTS (
       SELECT 1 FROM messages o
        WHERE o.conversation_id = messages.conversation_id
          AND o.direction = 'outbound'
          AND o.seq < messages.seq
          AND json_valid(o.meta)
          AND json_extract(o.meta, '$.in_reply_to') = json_extract(messages.meta, '$.in_reply_to'));
CREATE UNIQUE INDEX messages_in_reply_to ON messages (in_reply_to);
