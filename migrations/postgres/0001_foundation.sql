-- Concierge foundation schema (PostgreSQL).
-- Conventions shared with the PostgreSQL schema: ids are TEXT, times are BIGINT epoch
-- milliseconds (NULL = unknown), money is BIGINT minor units next to a currency code,
-- structured values are JSON stored as TEXT, flags are BIGINT 0/1.

CREATE TABLE customers (
    id            TEXT PRIMARY KEY,
    source        TEXT NOT NULL,
    first_name    TEXT NOT NULL,
    last_name     TEXT NOT NULL,
    email         TEXT,
    phones        TEXT NOT NULL DEFAULT '[]',
    addresses     TEXT NOT NULL DEFAULT '[]',
    note          TEXT,
    created_at    BIGINT,
    updated_at    BIGINT
);
CREATE INDEX customers_name ON customers (lower(first_name), lower(last_name));

-- Every email a customer is known by (the primary one too), lower-cased.
CREATE TABLE customer_emails (
    email         TEXT PRIMARY KEY,
    customer_id   TEXT NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    position      BIGINT NOT NULL
);
CREATE INDEX customer_emails_customer ON customer_emails (customer_id);

CREATE TABLE payment_methods (
    id            TEXT PRIMARY KEY,
    customer_id   TEXT NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    position      BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    brand         TEXT,
    last_four     TEXT,
    balance_minor BIGINT,
    currency      TEXT NOT NULL
);
CREATE INDEX payment_methods_customer ON payment_methods (customer_id);

CREATE TABLE products (
    id            TEXT PRIMARY KEY,
    source        TEXT NOT NULL,
    name          TEXT NOT NULL,
    product_type  TEXT,
    vendor        TEXT,
    description   TEXT,
    tags          TEXT NOT NULL DEFAULT '[]',
    option_names  TEXT NOT NULL DEFAULT '[]',
    created_at    BIGINT,
    updated_at    BIGINT
);

CREATE TABLE variants (
    id            TEXT PRIMARY KEY,
    product_id    TEXT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    position      BIGINT NOT NULL,
    title         TEXT,
    sku           TEXT,
    options       TEXT NOT NULL DEFAULT '{}',
    price_minor   BIGINT NOT NULL,
    currency      TEXT NOT NULL,
    available     BIGINT NOT NULL,
    stock         BIGINT
);
CREATE INDEX variants_product ON variants (product_id);

CREATE TABLE orders (
    id               TEXT PRIMARY KEY,
    number           TEXT NOT NULL UNIQUE,
    source           TEXT NOT NULL,
    customer_id      TEXT REFERENCES customers (id) ON DELETE SET NULL,
    email            TEXT,
    status           TEXT NOT NULL,
    items_modified   BIGINT NOT NULL DEFAULT 0,
    currency         TEXT NOT NULL,
    total_minor      BIGINT NOT NULL,
    shipping_address TEXT,
    cancel_reason    TEXT,
    created_at       BIGINT,
    updated_at       BIGINT,
    cancelled_at     BIGINT,
    position         BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX orders_customer ON orders (customer_id, position);
CREATE INDEX orders_email ON orders (lower(email));

CREATE TABLE order_items (
    order_id      TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    position      BIGINT NOT NULL,
    line_id       TEXT,
    variant_id    TEXT NOT NULL,
    product_id    TEXT NOT NULL,
    name          TEXT NOT NULL,
    options       TEXT NOT NULL DEFAULT '{}',
    sku           TEXT,
    price_minor   BIGINT NOT NULL,
    quantity      BIGINT NOT NULL,
    PRIMARY KEY (order_id, position)
);

CREATE TABLE fulfillments (
    order_id         TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    position         BIGINT NOT NULL,
    id               TEXT,
    carrier          TEXT,
    status           TEXT,
    tracking_numbers TEXT NOT NULL DEFAULT '[]',
    tracking_urls    TEXT NOT NULL DEFAULT '[]',
    item_ids         TEXT NOT NULL DEFAULT '[]',
    shipped_at       BIGINT,
    delivered_at     BIGINT,
    estimated_at     BIGINT,
    PRIMARY KEY (order_id, position)
);

-- Exact tracking-number lookups (a tracking number identifies one order).
CREATE TABLE tracking_numbers (
    tracking_number TEXT NOT NULL,
    order_id        TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    PRIMARY KEY (tracking_number, order_id)
);

-- The order's payment history: payments and refunds, in order.
CREATE TABLE payments (
    order_id          TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    position          BIGINT NOT NULL,
    kind              TEXT NOT NULL,
    amount_minor      BIGINT NOT NULL,
    currency          TEXT NOT NULL,
    payment_method_id TEXT NOT NULL,
    created_at        BIGINT,
    PRIMARY KEY (order_id, position)
);

CREATE TABLE returns (
    id                TEXT PRIMARY KEY,
    order_id          TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    item_ids          TEXT NOT NULL,
    payment_method_id TEXT NOT NULL,
    status            TEXT NOT NULL,
    refund_minor      BIGINT NOT NULL,
    currency          TEXT NOT NULL,
    created_at        BIGINT
);
CREATE INDEX returns_order ON returns (order_id);

CREATE TABLE exchanges (
    id                  TEXT PRIMARY KEY,
    order_id            TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    item_ids            TEXT NOT NULL,
    new_item_ids        TEXT NOT NULL,
    payment_method_id   TEXT NOT NULL,
    status              TEXT NOT NULL,
    price_diff_minor    BIGINT NOT NULL,
    currency            TEXT NOT NULL,
    created_at          BIGINT
);
CREATE INDEX exchanges_order ON exchanges (order_id);

CREATE TABLE refunds (
    id                TEXT PRIMARY KEY,
    order_id          TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    amount_minor      BIGINT NOT NULL,
    currency          TEXT NOT NULL,
    payment_method_id TEXT,
    note              TEXT,
    line_ids          TEXT NOT NULL DEFAULT '[]',
    created_at        BIGINT
);
CREATE INDEX refunds_order ON refunds (order_id);

-- Inbox.
CREATE TABLE identities (
    id            TEXT PRIMARY KEY,
    channel       TEXT NOT NULL,
    external_id   TEXT NOT NULL,
    customer_id   TEXT REFERENCES customers (id) ON DELETE SET NULL,
    verified      BIGINT NOT NULL DEFAULT 0,
    display_name  TEXT,
    email         TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    UNIQUE (channel, external_id)
);
CREATE INDEX identities_customer ON identities (customer_id);

CREATE TABLE conversations (
    id               TEXT PRIMARY KEY,
    channel          TEXT NOT NULL,
    thread_key       TEXT NOT NULL,
    identity_id      TEXT REFERENCES identities (id) ON DELETE SET NULL,
    customer_id      TEXT REFERENCES customers (id) ON DELETE SET NULL,
    status           TEXT NOT NULL,
    assignee         TEXT,
    priority         TEXT NOT NULL DEFAULT 'normal',
    tags             TEXT NOT NULL DEFAULT '[]',
    subject          TEXT,
    state            TEXT NOT NULL DEFAULT '{}',
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    last_message_at  BIGINT,
    escalated_at     BIGINT,
    resolved_at      BIGINT,
    UNIQUE (channel, thread_key)
);
CREATE INDEX conversations_status ON conversations (status, updated_at);
CREATE INDEX conversations_customer ON conversations (customer_id);

CREATE TABLE messages (
    id               TEXT PRIMARY KEY,
    conversation_id  TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq              BIGINT NOT NULL,
    channel          TEXT NOT NULL,
    external_id      TEXT,
    direction        TEXT NOT NULL,
    author_kind      TEXT NOT NULL,
    author_id        TEXT,
    text             TEXT NOT NULL,
    html             TEXT,
    attachments      TEXT NOT NULL DEFAULT '[]',
    meta             TEXT NOT NULL DEFAULT '{}',
    created_at       BIGINT NOT NULL,
    UNIQUE (conversation_id, seq)
);
CREATE UNIQUE INDEX messages_channel_external ON messages (channel, external_id);

-- Work that must survive a crash: claimed with a lease, retried with backoff.
CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    payload       TEXT NOT NULL,
    status        TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    max_attempts  BIGINT NOT NULL DEFAULT 8,
    run_at        BIGINT NOT NULL,
    locked_until  BIGINT,
    locked_by     TEXT,
    last_error    TEXT,
    dedupe_key    TEXT UNIQUE,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX jobs_due ON jobs (status, run_at);

-- Small key-value settings that belong to this data dir (e.g. the demo API key's hash).
CREATE TABLE settings (
    key           TEXT PRIMARY KEY,
    value         TEXT NOT NULL
);
