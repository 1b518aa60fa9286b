-- The approval workflow's later parts. `preview` is the blast-radius preview (JSON) computed
-- before reviewers are told; `approval_window_ms` is how long an approved request may still be
-- run by its requester re-sending it after its client went away, and `claimed_at` /
-- `claimed_by_session` record the one time an approval was run; `remind_after_ms` is how often
-- reviewers are reminded of a pending request. Copied onto each request, like its chain.
ALTER TABLE approvals ADD COLUMN preview TEXT;
ALTER TABLE approvals ADD COLUMN approval_window_ms INTEGER;
ALTER TABLE approvals ADD COLUMN remind_after_ms INTEGER;
ALTER TABLE approvals ADD COLUMN claimed_at INTEGER;
ALTER TABLE approvals ADD COLUMN claimed_by_session INTEGER;
CREATE INDEX approvals_claimable ON approvals (requester_subject, connection, state);
