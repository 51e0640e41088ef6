-- hourglass schema, SQLite flavour. Times are UTC instants in milliseconds
-- since the Unix epoch. Keep in step with migrations/postgres/0001_init.sql.

CREATE TABLE instances (
    name TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    channel TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'idle',
    failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_error_kind TEXT,
    last_poll_at INTEGER,
    last_success_at INTEGER,
    next_poll_at INTEGER,
    messages_total INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE cursors (
    instance TEXT NOT NULL,
    scope TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (instance, scope)
) STRICT;

CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    display_name TEXT,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE identities (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    channel TEXT NOT NULL,
    handle TEXT NOT NULL,
    display_name TEXT,
    email TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (channel, handle)
) STRICT;
CREATE INDEX identities_email ON identities (email) WHERE email IS NOT NULL;

CREATE TABLE threads (
    id INTEGER PRIMARY KEY,
    instance TEXT NOT NULL,
    thread_key TEXT NOT NULL,
    channel TEXT NOT NULL,
    customer_id INTEGER REFERENCES customers (id),
    subject TEXT,
    order_id TEXT,
    marketplace TEXT,
    language TEXT,
    reply_to TEXT,
    awaiting_since INTEGER,
    due_at INTEGER,
    reply_window_closes_at INTEGER,
    last_inbound_at INTEGER,
    last_outbound_at INTEGER,
    handled_at INTEGER,
    handled_by TEXT,
    snoozed_at INTEGER,
    snoozed_until INTEGER,
    snoozed_by TEXT,
    alerted_remaining_ms INTEGER,
    next_alert_at INTEGER,
    message_count INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (instance, thread_key)
) STRICT;
CREATE INDEX threads_due_at ON threads (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX threads_next_alert_at ON threads (next_alert_at) WHERE next_alert_at IS NOT NULL;
CREATE INDEX threads_order_id ON threads (order_id) WHERE order_id IS NOT NULL;

CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    thread_id INTEGER NOT NULL REFERENCES threads (id),
    instance TEXT NOT NULL,
    external_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    automatic INTEGER NOT NULL DEFAULT 0,
    sent_at INTEGER NOT NULL,
    author TEXT,
    subject TEXT,
    body TEXT NOT NULL DEFAULT '',
    html TEXT,
    order_id TEXT,
    language TEXT,
    reply_to TEXT,
    meta TEXT NOT NULL DEFAULT 'null',
    created_at INTEGER NOT NULL,
    UNIQUE (instance, external_id)
) STRICT;
CREATE INDEX messages_thread ON messages (thread_id, sent_at);

CREATE TABLE attachments (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages (id),
    filename TEXT,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    data BLOB
) STRICT;
CREATE INDEX attachments_message ON attachments (message_id);

CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY,
    instance TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    external_id TEXT,
    error TEXT NOT NULL,
    raw BLOB NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE outbox (
    id TEXT PRIMARY KEY NOT NULL,
    thread_id INTEGER NOT NULL REFERENCES threads (id),
    instance TEXT NOT NULL,
    body TEXT NOT NULL,
    template TEXT,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    claimed_by TEXT,
    claimed_until INTEGER,
    error TEXT,
    external_id TEXT,
    created_by TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    sent_at INTEGER
) STRICT;
CREATE INDEX outbox_ready ON outbox (state, next_attempt_at);

CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    thread_id INTEGER NOT NULL REFERENCES threads (id),
    cycle INTEGER NOT NULL,
    threshold TEXT NOT NULL,
    sink TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    payload TEXT NOT NULL,
    error TEXT,
    created_at INTEGER NOT NULL,
    sent_at INTEGER,
    UNIQUE (thread_id, cycle, threshold, sink)
) STRICT;
CREATE INDEX alerts_ready ON alerts (state, next_attempt_at);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    thread_id INTEGER,
    detail TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX audit_thread ON audit (thread_id);
