-- An agent takes (acknowledges) a thread for its current awaiting cycle:
-- who, when, and which cycle (`awaiting_since`). A new cycle is not taken.
ALTER TABLE threads ADD COLUMN taken_by TEXT;
ALTER TABLE threads ADD COLUMN taken_at INTEGER;
ALTER TABLE threads ADD COLUMN taken_cycle INTEGER;
-- A delivery held by a route's quiet hours: sent, with the others held
-- for the same sink, as one summary at `held_until` (the end of quiet).
ALTER TABLE alerts ADD COLUMN held_until INTEGER;
ALTER TABLE instance_alerts ADD COLUMN held_until INTEGER;
-- The silent-channel watchdog alerts once per silence: the silence is
-- named by the instance's last inbound message time.
ALTER TABLE instances ADD COLUMN silence_alerted_for INTEGER;
-- The arrival rhythm (inbound messages per hour over 4 weeks) and the last
-- inbound message of an instance, read by index.
CREATE INDEX messages_instance_arrivals ON messages (instance, direction, sent_at);
