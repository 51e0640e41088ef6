-- Digests are queued like alerts: the daemon that claims a scheduled run
-- (a row in digest_runs) renders it and queues one delivery per sink in
-- the same transaction, and the alert delivery worker sends them with the
-- same retries and leases. A crash after the claim loses nothing, and
-- several daemons on one store send each run once.
CREATE TABLE digest_deliveries (
    id BIGSERIAL PRIMARY KEY,
    digest TEXT NOT NULL,
    slot BIGINT NOT NULL,
    sink TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    payload TEXT NOT NULL,
    error TEXT,
    created_at BIGINT NOT NULL,
    sent_at BIGINT,
    UNIQUE (digest, slot, sink)
);
CREATE INDEX digest_deliveries_ready ON digest_deliveries (state, next_attempt_at);
