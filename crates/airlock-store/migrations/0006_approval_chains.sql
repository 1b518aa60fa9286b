-- Approval chains and escalation, and approval with a modified statement. The rule's
-- `all_groups_must_approve`, its escalation time and groups are copied onto each request, so
-- a request is settled by the rule it was opened under even after the policies change.
-- `replacement` keeps the reviewer's statement beside the requested `operation`, which is
-- never changed; on a vote it names the approval that proposed it.
ALTER TABLE approvals ADD COLUMN all_groups_must_approve INTEGER NOT NULL DEFAULT 0;
ALTER TABLE approvals ADD COLUMN escalate_at INTEGER;
ALTER TABLE approvals ADD COLUMN escalate_to TEXT NOT NULL DEFAULT '[]';
ALTER TABLE approvals ADD COLUMN replacement TEXT;
ALTER TABLE votes ADD COLUMN replacement TEXT;
