-- An instance whose credentials the platform refuses (a revoked refresh
-- token) raises one admin alert per episode: `auth_alerted_at` is set in
-- the transaction that queues the alert and cleared by the next successful
-- poll, so neither every retry nor a restart alerts again. The deliveries
-- belong to no thread, hence their own table, sent by the same sinks.
ALTER TABLE instances ADD COLUMN auth_alerted_at BIGINT;
-- Platform API calls in the last 24 h and the daily budget, as the
-- connector last counted them (eBay: 5,000 calls a day by default).
ALTER TABLE instances ADD COLUMN api_calls_24h BIGINT;
ALTER TABLE instances ADD COLUMN api_call_budget BIGINT;
ALTER TABLE instances ADD COLUMN api_calls_at BIGINT;
CREATE TABLE instance_alerts (
    id BIGSERIAL PRIMARY KEY,
    instance TEXT NOT NULL,
    problem TEXT NOT NULL,
    episode BIGINT NOT NULL,
    sink TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    payload TEXT NOT NULL,
    error TEXT,
    created_at BIGINT NOT NULL,
    sent_at BIGINT,
    UNIQUE (instance, problem, episode, sink)
);
CREATE INDEX instance_alerts_ready ON instance_alerts (state, next_attempt_at);
