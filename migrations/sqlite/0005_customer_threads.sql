-- The web inbox shows a customer's other threads beside each thread.
CREATE INDEX threads_customer ON threads (customer_id) WHERE customer_id IS NOT NULL;
