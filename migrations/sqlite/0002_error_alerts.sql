-- A thread's error (a refused or bounced reply) is alerted on once: the
-- flag is set in the transaction that records the error, and cleared by the
-- alert engine when it queues the alert.
ALTER TABLE threads ADD COLUMN last_error_at INTEGER;
ALTER TABLE threads ADD COLUMN error_alert_pending INTEGER NOT NULL DEFAULT 0;
CREATE INDEX threads_error_alert ON threads (last_error_at) WHERE error_alert_pending = 1;
