//! Central policy change, at once: the config file rewritten under a running gateway (and
//! SIGHUP), `PUT /api/v1/policies`, live sessions judged by the new policy on their next
//! statement or ended when their access is gone, every change audited; and `airlock policy
//! test`. Real PostgreSQL, the real binary, tokio-postgres sessions kept open across changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::process::Command;
use support::*;

const CHANGED: &str = "the policies changed";
const INVALID: &str = "the config file is not valid; the current policies keep serving";
const RESTART: &str = "needs a restart to take effect";

/// The template policy with SELECT denied for `agents`.
fn reads_denied(pg: &PgServer) -> String {
    let allowed = "- match: SELECT\n        action: allow\n";
    let config = template_config(pg, "60s");
    assert!(config.contains(allowed), "{config}");
    config.replacen(
        allowed,
        "- match: SELECT\n        action: deny\n        reason: reads are paused\n",
        1,
    )
}

async fn select_one(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client.simple_query("select 1").await.map(|_| ())
}

fn assert_refused(result: Result<(), tokio_postgres::Error>, code: &str, needle: &str) {
    let err = result.expect_err("the statement should have been refused");
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some(code),
        "{}",
        db_message(&err)
    );
    assert!(db_message(&err).contains(needle), "{}", db_message(&err));
}

async fn api(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", gw.server_url()))
        .bearer_auth(&gw.admin_token);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/yaml")
            .body(body.to_string());
    }
    let response = request.send().await.expect("call the API");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

#[test]
fn config_file_changes_judge_the_next_statement_of_live_sessions() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = Gateway::for_pg(&pg, "60s");
    let agent = gw.mint("agent-1", &["agents"]);
    let rt = runtime();
    let (client, _) = rt.block_on(gw.connect(&agent, "prod")).expect("connect");
    rt.block_on(select_one(&client))
        .expect("SELECT is allowed at first");

    // An invalid file is refused with its line-numbered errors; the old policy keeps serving.
    let invalid = template_config(&pg, "60s").replacen("match: SELECT", "match: SELEKT", 1);
    gw.rewrite_config(&invalid);
    gw.wait_for_log(INVALID, 1);
    let log = gw.log();
    assert!(
        log.contains("policies[0].rules[0].match: unknown statement kind `SELEKT`"),
        "{}",
        tail(&log, 20)
    );
    assert!(log.contains("airlock.yaml:"), "{}", tail(&log, 20));
    rt.block_on(select_one(&client))
        .expect("still allowed under the old policy");

    // A valid file: the very next statement on the same session is judged by it. A changed
    // `admin_groups` is not applied, only reported.
    gw.rewrite_config(&format!(
        "admin_groups: [airlock-admins, more-admins]\n{}",
        reads_denied(&pg)
    ));
    gw.wait_for_log(CHANGED, 1);
    assert_refused(
        rt.block_on(select_one(&client)),
        "42501",
        "reads are paused",
    );
    let log = gw.log();
    assert!(
        log.contains(RESTART) && log.contains("section=admin_groups"),
        "{}",
        tail(&log, 20)
    );
    assert!(!client.is_closed(), "a denial does not end the session");

    // SIGHUP re-reads the file; an unchanged policy is not a change.
    let hup = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    gw.wait_for_log("config file re-read; the policies are unchanged", 1);
    assert_eq!(gw.log_count(CHANGED), 1);

    // Back to the template: reads run again on the same session.
    gw.rewrite_config(&template_config(&pg, "60s"));
    gw.wait_for_log(CHANGED, 2);
    rt.block_on(select_one(&client))
        .expect("allowed again after the file is restored");

    let (status, changes) = rt.block_on(api(
        &gw,
        reqwest::Method::GET,
        "/api/v1/policies/changes",
        None,
    ));
    assert_eq!(status, 200, "{changes}");
    let changes = changes.as_array().unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    for change in changes {
        assert_eq!(change["changed_by"], "config file");
        assert_eq!(change["source"], "config-file");
        assert!(change["at"].as_i64().unwrap() > 0);
    }
    assert_eq!(changes[1]["summary"], "changed `agents-on-prod`");
    assert!(changes[1]["new_policies"]
        .as_str()
        .unwrap()
        .contains("reads are paused"));
}

#[test]
fn put_policies_swaps_them_and_ends_sessions_that_lost_access() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = Gateway::for_pg(&pg, "60s");
    let agent = gw.mint("agent-1", &["agents"]);
    let rt = runtime();
    let (client, _) = rt.block_on(gw.connect(&agent, "prod")).expect("connect");
    let (other, _) = rt.block_on(gw.connect(&agent, "prod")).expect("connect");
    rt.block_on(select_one(&client))
        .expect("SELECT is allowed at first");

    let (status, live) = rt.block_on(api(&gw, reqwest::Method::GET, "/api/v1/policies", None));
    assert_eq!(status, 200);
    assert_eq!(live["policies"][0]["name"], "agents-on-prod");

    // Not an admin: refused.
    let refused = rt.block_on(async {
        reqwest::Client::new()
            .put(format!("{}/api/v1/policies", gw.server_url()))
            .bearer_auth(&agent)
            .body("policies: []\n")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(refused, 403);

    // Invalid: 400 with line-numbered errors, and nothing changes.
    let invalid = "policies:\n  - name: p\n    groups: [agents]\n    connections: [prod]\n    rules:\n      - match: SELECT\n        action: require-approval\n";
    let (status, body) = rt.block_on(api(
        &gw,
        reqwest::Method::PUT,
        "/api/v1/policies",
        Some(invalid),
    ));
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("body:6: policies[0].rules[0].reviewers"),
        "{body}"
    );
    rt.block_on(select_one(&client)).expect("still allowed");

    // Valid: SELECT denied from the next statement on, on the same session.
    let policy = reads_denied(&pg);
    let policies = &policy[policy.find("policies:").unwrap()..];
    let (status, body) = rt.block_on(api(
        &gw,
        reqwest::Method::PUT,
        "/api/v1/policies",
        Some(policies),
    ));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    assert_refused(
        rt.block_on(select_one(&client)),
        "42501",
        "reads are paused",
    );

    // The agent's group removed from every policy: the next statement ends the session.
    let loaders_only = json!({ "policies": [{
        "name": "loaders", "groups": ["loaders"], "connections": ["prod"],
        "rules": [{ "match": "SELECT", "action": "allow" }],
    }]})
    .to_string();
    let (status, body) = rt.block_on(api(
        &gw,
        reqwest::Method::PUT,
        "/api/v1/policies",
        Some(&loaders_only),
    ));
    assert_eq!(status, 200, "{body}");
    let err = rt
        .block_on(select_one(&client))
        .expect_err("the session has lost its access");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.severity(), "FATAL", "{}", db_message(&err));
    assert_eq!(db.code().code(), "42501");
    assert!(db.message().contains("access revoked"), "{}", db.message());
    rt.block_on(async {
        for _ in 0..100 {
            if client.is_closed() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    assert!(client.is_closed(), "the session is closed");
    // Every live session of that identity ends on its next statement, and new ones are refused.
    let err = rt.block_on(select_one(&other)).expect_err("ended too");
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"));
    let err = rt
        .block_on(gw.connect(&agent, "prod"))
        .err()
        .expect("no new session");
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"));

    let (status, changes) = rt.block_on(api(
        &gw,
        reqwest::Method::GET,
        "/api/v1/policies/changes",
        None,
    ));
    assert_eq!(status, 200);
    let changes = changes.as_array().unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(
        changes[0]["summary"],
        "changed `loaders`; removed `agents-on-prod`"
    );
    for change in changes {
        assert_eq!(change["source"], "api");
        assert_eq!(change["changed_by"], "bootstrap-admin");
        assert!(change["changed_by_subject"]
            .as_str()
            .unwrap()
            .starts_with("token:"));
    }
    wait_until(WAIT, "the revoked sessions recorded as such", || {
        let sessions = gw.cli_json(&["sessions", "list"]).to_string();
        (sessions.matches("access revoked").count() == 2).then_some(())
    });
}

const TEST_CONFIG: &str = r#"connections:
  - name: prod
    type: postgres
    address: db.internal:5432
    user: maintenance
    password: not-a-real-password
policies:
  - name: maintenance
    groups: [agents]
    connections: [prod]
    rules:
      - match: SELECT
        action: allow
      - match: DELETE|UPDATE
        action: require-approval
        reviewers: [dba]
      - name: never-truncate
        match: TRUNCATE
        action: deny
"#;

const PASSING: &str = r#"
- name: reads run
  group: agents
  connection: prod
  sql: select * from items
  expect: allow
- groups: [agents]
  connection: prod
  sql: delete from items where id = 1
  expect: require-approval
  rule: "match: DELETE|UPDATE"
- group: agents
  connection: prod
  sql: truncate items
  expect: deny
  rule: never-truncate
- group: strangers
  connection: prod
  sql: select 1
  expect: deny
"#;

fn policy_test(dir: &std::path::Path, cases: &str, extra: &[&str]) -> std::process::Output {
    let config = dir.join("airlock.yaml");
    let file = dir.join("cases.yaml");
    std::fs::write(&config, TEST_CONFIG).unwrap();
    std::fs::write(&file, cases).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airlock"));
    cmd.args(["policy", "test"])
        .arg(&file)
        .arg("--config")
        .arg(&config)
        .args(extra);
    run_with_timeout(cmd, COMMAND_TIMEOUT, "airlock policy test")
}

#[test]
fn policy_test_passes_and_fails_with_its_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let out = policy_test(dir.path(), PASSING, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout_of(&out);
    assert!(text.contains("4 passed, 0 failed"), "{text}");
    assert!(text.contains("never-truncate"), "{text}");
    assert!(text.contains("reads run"), "{text}");

    let failing = format!(
        "{PASSING}- group: agents\n  connection: prod\n  sql: insert into items values (1)\n  expect: allow\n\
         - group: agents\n  connection: prod\n  sql: select 1\n  expect: allow\n  rule: some-other-rule\n"
    );
    let out = policy_test(dir.path(), &failing, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout_of(&out);
    assert!(text.contains("4 passed, 2 failed"), "{text}");
    let insert = text
        .lines()
        .find(|l| l.contains("insert into items"))
        .unwrap();
    assert!(insert.contains("FAIL") && insert.contains("deny"), "{text}");

    let out = policy_test(dir.path(), &failing, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["failed"], 2);
    assert_eq!(doc["cases"][4]["decision"]["rule"], "default: deny");

    // A case file that is not one is an error (exit 1, message on stderr) with its line.
    let out = policy_test(dir.path(), "- group: agents\n  expect: maybe\n", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("line 2"), "{}", describe(&out));
}

/// The template with its `DELETE|DROP|UPDATE` approval rule split: DELETE gets `delete_rule`
/// (lines of a rule after `- match: DELETE`), DROP and UPDATE keep waiting for approval.
fn with_delete_rule(pg: &PgServer, delete_rule: &str) -> String {
    let held = "- match: DELETE|DROP|UPDATE\n";
    let config = template_config(pg, "60s");
    assert!(config.contains(held), "{config}");
    config.replacen(
        held,
        &format!("- match: DELETE\n{delete_rule}      - match: DROP|UPDATE\n"),
        1,
    )
}

#[test]
fn held_statements_are_judged_again_when_the_policies_change() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = Gateway::for_pg(&pg, "60s");
    let agent = gw.mint("agent-1", &["agents"]);
    // Refusals quote "the policies changed" too; count the swaps themselves.
    const SWAPPED: &str = "every later statement is judged by the new ones";

    // Held, then the new policy denies it: refused at once, the request canceled.
    let mut held = gw.psql_spawn(&agent, "prod", "delete from items where id = 1");
    let id = held.wait_pending(&gw);
    gw.rewrite_config(&with_delete_rule(
        &pg,
        "        action: deny\n        reason: deletes are frozen\n",
    ));
    gw.wait_for_log(SWAPPED, 1);
    let out = held.finish(WAIT);
    assert!(!out.status.success(), "{}", describe(&out));
    let text = all_output(&out);
    for needle in [
        "42501",
        "deletes are frozen",
        &format!("approval request {id} was canceled because the policies changed"),
    ] {
        assert!(text.contains(needle), "{needle:?}: {}", describe(&out));
    }
    assert_eq!(gw.approval_state(&id), "canceled");
    assert_eq!(pg.item_ids(), "1,2,3", "the refused DELETE must not run");

    // Held under the template again, then the new policy allows it: it runs without a vote.
    gw.rewrite_config(&template_config(&pg, "60s"));
    gw.wait_for_log(SWAPPED, 2);
    let mut held = gw.psql_spawn(&agent, "prod", "delete from items where id = 2");
    let id = held.wait_pending(&gw);
    gw.rewrite_config(&with_delete_rule(&pg, "        action: allow\n"));
    gw.wait_for_log(SWAPPED, 3);
    let out = held.finish(WAIT);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(gw.approval_state(&id), "canceled");
    assert_eq!(pg.item_ids(), "1,3");

    // A change that still holds it leaves the same request waiting.
    let mut held = gw.psql_spawn(&agent, "prod", "update items set name = 'x' where id = 1");
    let id = held.wait_pending(&gw);
    gw.rewrite_config(&with_delete_rule(&pg, "        action: deny\n"));
    gw.wait_for_log(SWAPPED, 4);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(held.try_status().is_none(), "still held");
    assert_eq!(gw.approval_state(&id), "pending");
}

#[test]
fn policy_get_and_put_round_trip_through_the_cli() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = Gateway::for_pg(&pg, "60s");

    let out = gw.cli(&["policy", "get"]);
    assert!(out.status.success(), "{}", describe(&out));
    let shown = stdout_of(&out);
    assert!(
        shown.contains("policies:") && shown.contains("agents-on-prod"),
        "{shown}"
    );

    // Unchanged: nothing recorded.
    let file = gw.dir().join("policies.yaml");
    std::fs::write(&file, &shown).unwrap();
    let out = gw.cli(&["policy", "put", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout_of(&out).contains("no change"), "{}", describe(&out));

    // Edited: replaced and recorded; `get` shows the new policies.
    let edited = shown.replace(TRUNCATE_REASON, "truncation is off for now");
    assert_ne!(edited, shown);
    std::fs::write(&file, &edited).unwrap();
    let out = gw.cli(&["policy", "put", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout_of(&out).contains("policies replaced") && stdout_of(&out).contains("agents-on-prod"),
        "{}",
        describe(&out)
    );
    let out = gw.cli(&["policy", "get"]);
    assert!(
        stdout_of(&out).contains("truncation is off for now"),
        "{}",
        describe(&out)
    );

    // Invalid: exit 1 with the line of the problem, and the live policies stay.
    std::fs::write(&file, edited.replace("match: SELECT", "match: SELEKT")).unwrap();
    let out = gw.cli(&["policy", "put", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        all_output(&out).contains("unknown statement kind `SELEKT`")
            && all_output(&out).contains("body:"),
        "{}",
        describe(&out)
    );
    let out = gw.cli(&["policy", "get"]);
    assert!(
        stdout_of(&out).contains("match: SELECT"),
        "{}",
        describe(&out)
    );
}
