-- Signed checkpoints over the event chain (see airlock_core::checkpoint): the gateway's Ed25519
-- key signs the `hash` of event `event_id`, the chain's head when the checkpoint was taken. They
-- sit beside the chain rather than in it because they belong to no session. Rows are never
-- updated; a retention prune deletes those before its anchor.
CREATE TABLE checkpoints (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    event_id     INTEGER NOT NULL,
    hash         TEXT    NOT NULL,
    interval_ms  INTEGER NOT NULL,
    public_key   TEXT    NOT NULL,
    signature    TEXT    NOT NULL
);
CREATE INDEX checkpoints_event ON checkpoints (event_id);

-- The last event a retention prune removed (0: none). Verification starts after it, from the
-- checkpoint over that event (the anchor); the journal copy skips events at or below it.
ALTER TABLE journal ADD COLUMN pruned_through INTEGER NOT NULL DEFAULT 0;

-- Exports filter by connection and time.
CREATE INDEX sessions_connection ON sessions (connection);
CREATE INDEX events_at ON events (at);
