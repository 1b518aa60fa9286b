-- How far the recorder's journal has been copied into `events` (a single row).
CREATE TABLE journal (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    offset INTEGER NOT NULL
);
INSERT INTO journal (id, offset) VALUES (1, 0);
