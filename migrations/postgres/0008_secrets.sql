-- Secrets a connector learns at run time and must keep (X rotates its
-- refresh token on every use). `value` is the hex of nonce || ciphertext,
-- sealed with [store] secret_key: the plain value is never stored.
CREATE TABLE secrets (
    instance TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (instance, name)
);
