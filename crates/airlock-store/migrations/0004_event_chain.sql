-- The tamper-evident chain over events (see airlock_core::chain): each event's `hash` covers its
-- contents and the `prev_hash` it chains from. NULL in events recorded before the chain existed;
-- verification starts at the first chained event.
ALTER TABLE events ADD COLUMN prev_hash TEXT;
ALTER TABLE events ADD COLUMN hash TEXT;
