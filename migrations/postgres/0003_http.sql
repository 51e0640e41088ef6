-- Webhook deliveries, kept raw and durable before the platform gets its
-- 200, then turned into messages by the daemon. A redelivery of the same
-- body is absorbed by the unique key.
CREATE TABLE webhook_events (
    id BIGSERIAL PRIMARY KEY,
    instance TEXT NOT NULL,
    body_sha256 TEXT NOT NULL,
    body BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    processed_at BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    UNIQUE (instance, body_sha256)
);
CREATE INDEX webhook_events_pending ON webhook_events (instance, id) WHERE processed_at IS NULL;

-- Idempotency-Key of a reply through the API: the same key (per token)
-- queues one reply, whatever the number of retries.
CREATE TABLE idempotency_keys (
    principal TEXT NOT NULL,
    key TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    thread_id BIGINT NOT NULL,
    outbox_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (principal, key)
);
