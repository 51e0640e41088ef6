-- What a consent flow (`connectors authorize`, the admin page's Connect
-- button) granted an instance: the account, the scopes and when the kept
-- token expires (eBay refresh tokens: 18 months). Never the token itself.
-- `expiry_alerted_at` is set when the admin was warned of the coming
-- expiry (30 days before), and cleared by the next connection.
CREATE TABLE connector_grants (
    instance TEXT PRIMARY KEY,
    platform TEXT NOT NULL,
    account TEXT,
    scopes TEXT NOT NULL DEFAULT '',
    granted_at INTEGER NOT NULL,
    expires_at INTEGER,
    expiry_alerted_at INTEGER
) STRICT;
