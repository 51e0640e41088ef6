-- Several daemons on one store share the instances through leases.
-- A daemon says it is alive with a heartbeat, it is counted among the live
-- daemons until `expires_at`. Each instance is polled by the holder of its
-- lease, `token` grows on every takeover and is checked when a poll commits
-- its cursor, so a daemon that lost its lease (hung past the expiry) cannot
-- move the cursor. Digests record each scheduled run once, whoever sends it.
CREATE TABLE daemons (
    id TEXT PRIMARY KEY NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

CREATE TABLE leases (
    instance TEXT PRIMARY KEY NOT NULL,
    holder TEXT,
    token INTEGER NOT NULL DEFAULT 0,
    acquired_at INTEGER NOT NULL DEFAULT 0,
    renewed_at INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE digest_runs (
    digest TEXT NOT NULL,
    slot INTEGER NOT NULL,
    daemon TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (digest, slot)
) STRICT;
