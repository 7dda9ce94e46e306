-- The search change feed. Every write that changes what the search index holds (an order, a
-- product, a customer's name or emails shown on their orders) adds a row here in the same
-- transaction; each instance's index follows the rows in sequence order, so a write on one
-- instance is searchable on the others within a second, deletes included. kind: 'order' (key:
-- the order number, the index's key), 'product' (key: the product id) or 'all' (a bulk import:
-- re-read everything). Rows older than a day are pruned; the newest row always stays.
CREATE TABLE search_changes (
    seq         BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    deleted     BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);
CREATE INDEX search_changes_created ON search_changes (created_at);
