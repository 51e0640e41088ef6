-- hourglass schema, PostgreSQL flavour. Times are UTC instants in milliseconds
-- since the Unix epoch. Keep in step with migrations/sqlite/0001_init.sql.

CREATE TABLE instances (
    name TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    channel TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'idle',
    failures BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    last_error_kind TEXT,
    last_poll_at BIGINT,
    last_success_at BIGINT,
    next_poll_at BIGINT,
    messages_total BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);

CREATE TABLE cursors (
    instance TEXT NOT NULL,
    scope TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (instance, scope)
);

CREATE TABLE customers (
    id BIGSERIAL PRIMARY KEY,
    display_name TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE identities (
    id BIGSERIAL PRIMARY KEY,
    customer_id BIGINT NOT NULL REFERENCES customers (id),
    channel TEXT NOT NULL,
    handle TEXT NOT NULL,
    display_name TEXT,
    email TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (channel, handle)
);
CREATE INDEX identities_email ON identities (email) WHERE email IS NOT NULL;

CREATE TABLE threads (
    id BIGSERIAL PRIMARY KEY,
    instance TEXT NOT NULL,
    thread_key TEXT NOT NULL,
    channel TEXT NOT NULL,
    customer_id BIGINT REFERENCES customers (id),
    subject TEXT,
    order_id TEXT,
    marketplace TEXT,
    language TEXT,
    reply_to TEXT,
    awaiting_since BIGINT,
    due_at BIGINT,
    reply_window_closes_at BIGINT,
    last_inbound_at BIGINT,
    last_outbound_at BIGINT,
    handled_at BIGINT,
    handled_by TEXT,
    snoozed_at BIGINT,
    snoozed_until BIGINT,
    snoozed_by TEXT,
    alerted_remaining_ms BIGINT,
    next_alert_at BIGINT,
    message_count BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (instance, thread_key)
);
CREATE INDEX threads_due_at ON threads (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX threads_next_alert_at ON threads (next_alert_at) WHERE next_alert_at IS NOT NULL;
CREATE INDEX threads_order_id ON threads (order_id) WHERE order_id IS NOT NULL;

CREATE TABLE messages (
    id BIGSERIAL PRIMARY KEY,
    thread_id BIGINT NOT NULL REFERENCES threads (id),
    instance TEXT NOT NULL,
    external_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    automatic BIGINT NOT NULL DEFAULT 0,
    sent_at BIGINT NOT NULL,
    author TEXT,
    subject TEXT,
    body TEXT NOT NULL DEFAULT '',
    html TEXT,
    order_id TEXT,
    language TEXT,
    reply_to TEXT,
    meta TEXT NOT NULL DEFAULT 'null',
    created_at BIGINT NOT NULL,
    UNIQUE (instance, external_id)
);
CREATE INDEX messages_thread ON messages (thread_id, sent_at);

CREATE TABLE attachments (
    id BIGSERIAL PRIMARY KEY,
    message_id BIGINT NOT NULL REFERENCES messages (id),
    filename TEXT,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    data BYTEA
);
CREATE INDEX attachments_message ON attachments (message_id);

CREATE TABLE quarantine (
    id BIGSERIAL PRIMARY KEY,
    instance TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    external_id TEXT,
    error TEXT NOT NULL,
    raw BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE outbox (
    id TEXT PRIMARY KEY NOT NULL,
    thread_id BIGINT NOT NULL REFERENCES threads (id),
    instance TEXT NOT NULL,
    body TEXT NOT NULL,
    template TEXT,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    claimed_by TEXT,
    claimed_until BIGINT,
    error TEXT,
    external_id TEXT,
    created_by TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE INDEX outbox_ready ON outbox (state, next_attempt_at);

CREATE TABLE alerts (
    id BIGSERIAL PRIMARY KEY,
    thread_id BIGINT NOT NULL REFERENCES threads (id),
    cycle BIGINT NOT NULL,
    threshold TEXT NOT NULL,
    sink TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    payload TEXT NOT NULL,
    error TEXT,
    created_at BIGINT NOT NULL,
    sent_at BIGINT,
    UNIQUE (thread_id, cycle, threshold, sink)
);
CREATE INDEX alerts_ready ON alerts (state, next_attempt_at);

CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    thread_id BIGINT,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_thread ON audit (thread_id);
