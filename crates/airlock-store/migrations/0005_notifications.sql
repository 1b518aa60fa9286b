-- Webhook notification delivery attempts (`notify:` in the config), one row per attempt, so a
-- notifier that is down is visible on the request (`airlock approvals show`). `target` is the
-- webhook's redacted address (scheme, host, port): the full address is a secret and is never
-- stored. Rows are never updated.
CREATE TABLE notification_deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id   INTEGER NOT NULL REFERENCES approvals (id),
    event        TEXT    NOT NULL,
    webhook      INTEGER NOT NULL,
    target       TEXT    NOT NULL,
    format       TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    delivered    INTEGER NOT NULL
);
CREATE INDEX notification_deliveries_request ON notification_deliveries (request_id, id);
