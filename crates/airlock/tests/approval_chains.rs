//! Approval chains, escalation and approval with a modified statement, end to end: a real
//! PostgreSQL upstream, the `airlock serve` binary, psql as the agent and the airlock CLI as
//! the reviewers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Output;
use std::time::{Duration, Instant};
use support::*;

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", describe(out));
}

fn assert_refused(out: &Output, what: &str, needle: &str) {
    assert!(
        !out.status.success(),
        "{what} should have been refused: {}",
        describe(out)
    );
    assert!(
        all_output(out).contains(needle),
        "{what}: expected {needle:?} in {}",
        describe(out)
    );
}

/// Connection `prod` to `pg`; `agents` may read, and DELETE / DROP wait for the rule `held`
/// (YAML lines at rule indentation); `extra` is appended (top-level sections).
fn config(pg: &PgServer, held: &str, extra: &str) -> String {
    format!(
        "connections:\n{}policies:\n  - name: agents-on-prod\n    groups: [agents]\n    \
         connections: [prod]\n    rules:\n      - match: SELECT\n        action: allow\n      \
         - match: DELETE|DROP\n        action: require-approval\n{held}{extra}",
        connection_yaml("prod", pg.port(), &format!("${{env:{PASSWORD_ENV}}}")),
    )
}

#[test]
fn all_groups_must_approve_needs_one_approval_from_each_group() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let held = "        reviewers: [dba, security]\n        approvals: 2\n        \
                all_groups_must_approve: true\n        timeout: 60s\n";
    let gw = Gateway::for_pg_config(&pg, &config(&pg, held, ""));
    let agent = gw.mint("agent-1", &["agents"]);
    let dba1 = gw.mint("dba-1", &["dba"]);
    let dba2 = gw.mint("dba-2", &["dba"]);
    let sec = gw.mint("sec-1", &["security"]);

    let mut psql = gw.psql_spawn(&agent, "prod", "DELETE FROM items WHERE id = 2");
    let id = psql.wait_pending(&gw);
    assert_ok(&gw.cli_as(&dba1, &["approve", &id]), "first dba approval");
    assert_ok(&gw.cli_as(&dba2, &["approve", &id]), "second dba approval");
    assert_eq!(
        gw.approval_state(&id),
        "pending",
        "two approvals from the same group are not enough"
    );
    assert!(psql.try_status().is_none(), "still held");
    assert_eq!(pg.item_ids(), "1,2,3");

    assert_ok(&gw.cli_as(&sec, &["approve", &id]), "security approval");
    let out = psql.finish(WAIT);
    assert!(
        out.status.success(),
        "runs once each group approved: {}",
        describe(&out)
    );
    assert_eq!(pg.item_ids(), "1,3");
    assert_eq!(gw.approval_state(&id), "approved");

    // One approval from each group settles a request that needs two.
    let mut psql = gw.psql_spawn(&agent, "prod", "DELETE FROM items WHERE id = 3");
    let id = psql.wait_pending(&gw);
    assert_ok(&gw.cli_as(&sec, &["approve", &id]), "security approval");
    assert_eq!(gw.approval_state(&id), "pending");
    assert_ok(&gw.cli_as(&dba1, &["approve", &id]), "dba approval");
    assert!(psql.finish(WAIT).status.success());
    assert_eq!(pg.item_ids(), "1");

    // A single deny still ends the request.
    let mut psql = gw.psql_spawn(&agent, "prod", "DELETE FROM items WHERE id = 1");
    let id = psql.wait_pending(&gw);
    assert_ok(&gw.cli_as(&sec, &["approve", &id]), "security approval");
    assert_ok(
        &gw.cli_as(&dba1, &["deny", &id, "--reason", "not today"]),
        "dba denial",
    );
    let out = psql.finish(WAIT);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("not today"), "{}", describe(&out));
    assert_eq!(gw.approval_state(&id), "denied");
    assert_eq!(pg.item_ids(), "1");
}

#[test]
fn escalation_widens_who_may_decide_and_notifies() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let receiver = WebhookReceiver::start(0);
    let held = "        reviewers: [dba]\n        escalate_after: 2s\n        \
                escalate_to: [oncall]\n        timeout: 60s\n";
    let notify = format!("notify:\n  - webhook: {}\n", receiver.url("/json"));
    let gw = Gateway::for_pg_config(&pg, &config(&pg, held, &notify));
    let agent = gw.mint("agent-1", &["agents"]);
    let oncall = gw.mint("oncall-1", &["oncall"]);

    let started = Instant::now();
    let mut psql = gw.psql_spawn(&agent, "prod", "DELETE FROM items WHERE id = 2");
    let id = psql.wait_pending(&gw);
    let early = gw.cli_as(&oncall, &["approve", &id]);
    if started.elapsed() < Duration::from_millis(1800) {
        assert_refused(&early, "approval before escalation", "only members of");
        assert_eq!(gw.approval_state(&id), "pending");
    }

    let escalated = receiver.wait_for("/json", 1, |b| b["event"] == "escalated");
    assert_eq!(escalated[0]["request"]["escalate_to"][0], "oncall");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_ok(
        &gw.cli_as(&oncall, &["approve", &id]),
        "approval after escalation",
    );
    let out = psql.finish(WAIT);
    assert!(
        out.status.success(),
        "runs after escalation: {}",
        describe(&out)
    );
    assert_eq!(pg.item_ids(), "1,3");
}

#[test]
fn approve_with_replacement_runs_the_reviewers_statement() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let held = "        reviewers: [dba]\n        timeout: 60s\n";
    let gw = Gateway::for_pg_config(&pg, &config(&pg, held, ""));
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);

    let mut psql = gw.psql_spawn(&agent, "prod", "delete from items");
    let id = psql.wait_pending(&gw);
    let replacement = "delete from items where id = 1";
    assert_ok(
        &gw.cli_as(&dba, &["approve", &id, "--replace-with", replacement]),
        "approve with a replacement",
    );
    let out = psql.finish(WAIT);
    assert!(
        out.status.success(),
        "the replacement runs: {}",
        describe(&out)
    );
    assert_eq!(pg.item_ids(), "2,3", "only row 1 is gone");
    assert!(
        stderr_of(&out).contains(&format!(
            "airlock: approval request {id} was approved with a modified statement: {replacement}"
        )),
        "the agent is told: {}",
        describe(&out)
    );

    let request = gw.approval(&id);
    assert_eq!(request["operation"], "delete from items", "{request:?}");
    assert_eq!(request["replacement"], replacement, "{request:?}");
    let sessions = gw.cli(&["sessions", "export", "--format", "jsonl"]);
    assert!(
        stdout_of(&sessions).contains(&format!("\"replaced_with\":\"{replacement}\"")),
        "the resolution records the replacement: {}",
        describe(&sessions)
    );
}

#[test]
fn a_more_dangerous_replacement_is_refused() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let held = "        reviewers: [dba]\n        timeout: 60s\n";
    let gw = Gateway::for_pg_config(&pg, &config(&pg, held, ""));
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);

    let mut psql = gw.psql_spawn(&agent, "prod", "DELETE FROM items WHERE id = 3");
    let id = psql.wait_pending(&gw);
    assert_refused(
        &gw.cli_as(
            &dba,
            &["approve", &id, "--replace-with", "DROP TABLE items"],
        ),
        "a DROP for a DELETE",
        "the replacement is refused: it runs DROP",
    );
    assert_eq!(gw.approval_state(&id), "pending");
    assert!(psql.try_status().is_none(), "still held");

    assert_ok(&gw.cli_as(&dba, &["approve", &id]), "plain approval");
    assert!(psql.finish(WAIT).status.success());
    assert_eq!(pg.item_ids(), "1,2");
    assert_eq!(pg.psql_admin("SELECT count(*) FROM items"), "2");
}

/// In the extended protocol (tokio-postgres, a bound parameter) the reviewer's replacement runs
/// in place of the agent's Execute when the client can read its answer as its own: both return
/// no rows and the replacement needs no parameters. A replacement returning rows is refused.
#[test]
fn approve_with_replacement_in_the_extended_protocol() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let held = "        reviewers: [dba]\n        timeout: 60s\n";
    let gw = Gateway::for_pg_config(&pg, &config(&pg, held, ""));
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);
    let rt = runtime();
    let (client, notices) = rt.block_on(gw.connect(&agent, "prod")).unwrap();
    let client = std::sync::Arc::new(client);

    let sql = "DELETE FROM items WHERE id < $1";
    let agent_client = client.clone();
    let held_delete = rt.spawn(async move { agent_client.execute(sql, &[&3i32]).await });
    let id = gw.wait_for_pending(sql);
    let replacement = "DELETE FROM items WHERE id = 1";
    assert_ok(
        &gw.cli_as(&dba, &["approve", &id, "--replace-with", replacement]),
        "approve with a replacement",
    );
    let deleted = rt
        .block_on(held_delete)
        .unwrap()
        .expect("the replacement runs in place of the Execute");
    assert_eq!(deleted, 1, "the replacement's row count");
    assert_eq!(pg.item_ids(), "2,3", "only the replacement ran");
    assert!(
        notices.all().iter().any(|n| n.contains(&format!(
            "approval request {id} was approved with a modified statement: {replacement}"
        ))),
        "the agent is told: {:?}",
        notices.all()
    );
    // The session goes on, its unnamed statement no longer the agent's.
    let count: i64 = rt
        .block_on(client.query_one("SELECT count(*) FROM items WHERE id > $1", &[&0i32]))
        .unwrap()
        .get(0);
    assert_eq!(count, 2);

    // A replacement that returns rows cannot answer an Execute that returns none.
    let agent_client = client.clone();
    let held_delete = rt.spawn(async move { agent_client.execute(sql, &[&3i32]).await });
    let id = gw.wait_for_pending(sql);
    let returning = "DELETE FROM items WHERE id = 2 RETURNING id";
    assert_ok(
        &gw.cli_as(&dba, &["approve", &id, "--replace-with", returning]),
        "approve with a replacement returning rows",
    );
    let refused = rt
        .block_on(held_delete)
        .unwrap()
        .expect_err("refused in the extended protocol");
    let db = refused.as_db_error().expect("an error from the gateway");
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message().contains("RETURNING") && db.message().contains(returning),
        "{}",
        db.message()
    );
    assert_eq!(pg.item_ids(), "2,3", "nothing ran");
}
