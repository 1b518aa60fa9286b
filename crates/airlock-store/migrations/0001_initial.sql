-- Airlock's embedded store: tokens, recorded sessions and their events, approval requests and
-- their votes, and connection definitions. Timestamps are Unix milliseconds; lists are JSON text.

CREATE TABLE tokens (
    id          TEXT    PRIMARY KEY NOT NULL,
    name        TEXT    NOT NULL,
    "groups"    TEXT    NOT NULL DEFAULT '[]',
    hash        TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);

CREATE TABLE sessions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    protocol      TEXT    NOT NULL,
    connection    TEXT    NOT NULL,
    subject       TEXT    NOT NULL,
    display_name  TEXT    NOT NULL,
    "groups"      TEXT    NOT NULL DEFAULT '[]',
    auth_method   TEXT    NOT NULL,
    client_addr   TEXT    NOT NULL,
    started_at    INTEGER NOT NULL,
    ended_at      INTEGER,
    end_reason    TEXT
);

CREATE INDEX sessions_subject_started ON sessions (subject, started_at);
CREATE INDEX sessions_started ON sessions (started_at);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  INTEGER NOT NULL REFERENCES sessions (id),
    at          INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    detail      TEXT    NOT NULL
);

CREATE INDEX events_session ON events (session_id, id);

CREATE TABLE approvals (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id         INTEGER NOT NULL REFERENCES sessions (id),
    requester_subject  TEXT    NOT NULL,
    requester_name     TEXT    NOT NULL,
    requester_groups   TEXT    NOT NULL DEFAULT '[]',
    connection         TEXT    NOT NULL,
    protocol           TEXT    NOT NULL,
    operation          TEXT    NOT NULL,
    params             TEXT    NOT NULL DEFAULT '[]',
    statement_kinds    TEXT    NOT NULL DEFAULT '[]',
    policy             TEXT    NOT NULL,
    rule               TEXT    NOT NULL,
    reviewers          TEXT    NOT NULL DEFAULT '[]',
    approvals_needed   INTEGER NOT NULL CHECK (approvals_needed >= 0),
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    state              TEXT    NOT NULL DEFAULT 'pending'
                       CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'canceled')),
    decided_at         INTEGER,
    reason             TEXT
);

CREATE INDEX approvals_state ON approvals (state);

CREATE TABLE votes (
    approval_id       INTEGER NOT NULL REFERENCES approvals (id),
    reviewer_subject  TEXT    NOT NULL,
    reviewer_name     TEXT    NOT NULL,
    reviewer_groups   TEXT    NOT NULL DEFAULT '[]',
    approve           INTEGER NOT NULL CHECK (approve IN (0, 1)),
    reason            TEXT,
    at                INTEGER NOT NULL,
    UNIQUE (approval_id, reviewer_subject)
);

CREATE TABLE connections (
    name             TEXT PRIMARY KEY NOT NULL,
    kind             TEXT NOT NULL,
    address          TEXT NOT NULL,
    "database"       TEXT,
    "user"           TEXT,
    sealed_password  BLOB
);
