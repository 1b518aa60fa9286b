-- Every change of the live policies (the audit of "who changed what, when"): the author, where
-- the change came from (`api` or `config-file`), a summary by policy name, and the whole
-- policies before and after, each a `policies:` YAML document. Rows are never updated.
CREATE TABLE policy_changes (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    at                  INTEGER NOT NULL,
    source              TEXT    NOT NULL,
    changed_by_subject  TEXT,
    changed_by          TEXT    NOT NULL,
    summary             TEXT    NOT NULL,
    old_policies        TEXT    NOT NULL,
    new_policies        TEXT    NOT NULL
);
