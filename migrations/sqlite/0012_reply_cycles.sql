-- Every awaiting cycle of every thread: the customer message that opened
-- it, and how it ended (a human reply, a "no response needed" mark, or not
-- yet). The Late Response Rate and the reports count these rows, one
-- grouped range scan over reply_cycles_started instead of a walk through
-- every thread's messages. Kept by the clock in the transaction that
-- reclocks the thread (src/store/clock.rs). The instance, channel and
-- marketplace are copied from the thread so that the index covers the
-- grouped query. An empty marketplace means none.
CREATE TABLE reply_cycles (
    thread_id INTEGER NOT NULL REFERENCES threads (id),
    started_at INTEGER NOT NULL,
    instance TEXT NOT NULL,
    channel TEXT NOT NULL,
    marketplace TEXT NOT NULL DEFAULT '',
    answered_at INTEGER,
    no_response_needed_at INTEGER,
    PRIMARY KEY (thread_id, started_at)
) STRICT;
CREATE INDEX reply_cycles_started ON reply_cycles
    (started_at, instance, marketplace, answered_at, no_response_needed_at);
-- The cycles of the messages already stored: an inbound message opens a
-- cycle when the message before it (human replies first at equal times)
-- is a human reply or nothing (a reply at the same instant comes after it,
-- as the clock has it), and the first human reply at or after it closes it. Older "no response needed" marks are not kept anywhere but
-- the audit, so only each thread's latest one is applied below.
INSERT INTO reply_cycles (thread_id, started_at, instance, channel, marketplace, answered_at)
SELECT e.thread_id, e.sent_at, t.instance, t.channel, COALESCE(t.marketplace, ''), e.next_out
FROM (
    SELECT thread_id, sent_at, direction,
        LAG(direction) OVER (PARTITION BY thread_id ORDER BY sent_at, ord) AS prev,
        MIN(CASE WHEN direction = 'outbound' THEN sent_at END) OVER (
            PARTITION BY thread_id ORDER BY sent_at, ord
            ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS next_out
    FROM (
        SELECT thread_id, sent_at, direction,
            CASE WHEN direction = 'inbound' THEN 0 ELSE 1 END AS ord
        FROM messages
        WHERE direction = 'inbound' OR (direction = 'outbound' AND automatic = 0)
    ) m
) e JOIN threads t ON t.id = e.thread_id
WHERE e.direction = 'inbound' AND (e.prev IS NULL OR e.prev = 'outbound')
ON CONFLICT DO NOTHING;
UPDATE reply_cycles SET no_response_needed_at = (
    SELECT t.handled_at FROM threads t WHERE t.id = reply_cycles.thread_id)
WHERE answered_at IS NULL AND EXISTS (
    SELECT 1 FROM threads t WHERE t.id = reply_cycles.thread_id
      AND t.handled_at IS NOT NULL AND t.handled_at >= reply_cycles.started_at);
-- A Late Response Rate alert is raised once when the forecast reaches the
-- configured level and again only after it went back under: a row here is
-- an open episode of one instance and marketplace.
CREATE TABLE late_response_alerts (
    instance TEXT NOT NULL,
    marketplace TEXT NOT NULL,
    raised_at INTEGER NOT NULL,
    PRIMARY KEY (instance, marketplace)
) STRICT;
