-- One customer across channels. An identity (a relay alias, an e-mail
-- address, a WhatsApp number) carries keys: `email` (a real address,
-- lowercased), `relay` (an Amazon relay alias without its +suffix),
-- `order` (an Amazon order id it wrote about), `phone` (E.164). Identities
-- that share a key belong to one customer, unless an agent split them:
-- `customer_splits` records each split pair, and no automatic rule joins
-- two customers across a recorded split.
CREATE TABLE identity_keys (
    identity_id INTEGER NOT NULL REFERENCES identities (id),
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (identity_id, kind, value)
) STRICT;
CREATE INDEX identity_keys_by_value ON identity_keys (kind, value);
CREATE TABLE customer_splits (
    identity_a INTEGER NOT NULL REFERENCES identities (id),
    identity_b INTEGER NOT NULL REFERENCES identities (id),
    actor TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (identity_a, identity_b)
) STRICT;
CREATE INDEX identities_customer ON identities (customer_id);
-- The identity a thread is with, so that splitting an identity off a
-- customer takes its threads along. Existing threads take their
-- customer's first identity.
ALTER TABLE threads ADD COLUMN identity_id INTEGER REFERENCES identities (id);
UPDATE threads SET identity_id = (SELECT MIN(i.id) FROM identities i WHERE i.customer_id = threads.customer_id)
 WHERE customer_id IS NOT NULL;
-- A reply the platform reported undelivered (Amazon's delivery-failure
-- notice): kept in the conversation, no longer an answer to the clock.
ALTER TABLE messages ADD COLUMN delivery_failed_at INTEGER;
ALTER TABLE messages ADD COLUMN delivery_error TEXT;
INSERT INTO identity_keys (identity_id, kind, value, created_at)
 SELECT id, 'email', email, created_at FROM identities WHERE email IS NOT NULL
 ON CONFLICT DO NOTHING;
