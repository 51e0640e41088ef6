-- The watchdog's relay-mail check (Amazon relay mail stopped while SP-API
-- shows new orders) alerts once per silence: the silence is named by the
-- instance's last inbound message time, as for silence_alerted_for.
ALTER TABLE instances ADD COLUMN relay_alerted_for INTEGER;
