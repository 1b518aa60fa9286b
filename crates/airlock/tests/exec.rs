//! `airlock exec` and `/api/v1/exec` end to end: a real PostgreSQL upstream, the `airlock serve`
//! binary and the real CLI. The statement takes the gate's one path, so the template policy
//! decides it (SELECT runs, TRUNCATE is denied, DELETE waits for a `dba` reviewer), and the
//! exit codes are the product contract's: 0 ok, 1 error, 2 denied, 3 expired, 4 pending.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// Shared with the MySQL adapter's tests, which use the rest of it.
#[allow(dead_code)]
#[path = "support/mariadb.rs"]
mod mariadb;
mod support;

use serde_json::Value;
use std::process::Output;
use std::time::Duration;
use support::*;

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn assert_code(out: &Output, expected: i32, what: &str) {
    assert_eq!(code(out), expected, "{what}: {}", describe(out));
}

fn assert_no_password(pg: &PgServer, text: &str, what: &str) {
    assert!(
        !text.contains(pg.password()),
        "{what} contains the upstream password"
    );
}

struct Story {
    pg: PgServer,
    gw: Gateway,
    agent: String,
    dba: String,
}

fn story(timeout: &str) -> Story {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = Gateway::for_pg(&pg, timeout);
    let agent = gw.mint("pipeline-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);
    Story { pg, gw, agent, dba }
}

#[test]
fn allowed_runs_denied_is_refused_and_the_session_is_recorded_as_api() {
    let s = story("60s");
    let out = s.gw.cli_as(
        &s.agent,
        &[
            "exec",
            "prod",
            "--sql",
            "SELECT id, name FROM items ORDER BY id",
        ],
    );
    assert_code(&out, 0, "allowed SELECT");
    let text = stdout_of(&out);
    for needle in ["alpha", "beta", "gamma", "name", "SELECT 3"] {
        assert!(
            text.contains(needle),
            "missing {needle:?}: {}",
            describe(&out)
        );
    }
    assert_no_password(&s.pg, &all_output(&out), "exec output");

    let out = s.gw.cli_as(
        &s.agent,
        &[
            "exec",
            "prod",
            "--sql",
            "SELECT NULL AS n, 'x' AS t",
            "--output",
            "json",
        ],
    );
    assert_code(&out, 0, "allowed SELECT, JSON");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "ok");
    assert_eq!(doc["results"][0]["columns"], serde_json::json!(["n", "t"]));
    assert_eq!(doc["results"][0]["rows"], serde_json::json!([[null, "x"]]));
    assert_eq!(doc["results"][0]["truncated"], false);

    let out =
        s.gw.cli_as(&s.agent, &["exec", "prod", "--sql", "TRUNCATE items"]);
    assert_code(&out, 2, "denied TRUNCATE");
    assert!(
        all_output(&out).contains(TRUNCATE_REASON),
        "{}",
        describe(&out)
    );
    assert_eq!(s.pg.item_ids(), "1,2,3");

    let out =
        s.gw.cli_as(&s.agent, &["exec", "prod", "--sql", "SELECT * FROM nope"]);
    assert_code(&out, 1, "upstream error");
    assert!(all_output(&out).contains("42P01"), "{}", describe(&out));

    let out =
        s.gw.cli_as(&s.agent, &["exec", "missing", "--sql", "SELECT 1"]);
    assert_code(&out, 1, "unknown connection");

    let sessions = s.gw.cli_json(&["sessions", "list"]);
    let api: Vec<_> = json_objects(&sessions)
        .into_iter()
        .filter(|o| o.get("protocol").and_then(Value::as_str) == Some("api"))
        .collect();
    assert!(api.len() >= 4, "api sessions: {sessions}");
    assert_no_password(&s.pg, &sessions.to_string(), "sessions list");
    assert_no_password(&s.pg, &s.gw.log(), "gateway log");
}

#[test]
fn held_without_wait_exits_4_and_runs_once_approved() {
    let s = story("60s");
    let sql = "DELETE FROM items WHERE id = 3";
    let out = s.gw.cli_as(&s.agent, &["exec", "prod", "--sql", sql]);
    assert_code(&out, 4, "held DELETE without --wait");
    let id = s.gw.wait_for_pending(sql);
    assert!(
        stdout_of(&out).contains(&format!("approval request {id}")),
        "{}",
        describe(&out)
    );
    assert_eq!(s.pg.item_ids(), "1,2,3", "nothing runs before approval");

    let vote =
        s.gw.cli_as(&s.dba, &["approve", &id, "--reason", "ticket OPS-1"]);
    assert!(vote.status.success(), "{}", describe(&vote));
    wait_until(WAIT, "the approved DELETE to run", || {
        (s.pg.item_ids() == "1,2").then_some(())
    });
    // The outcome is recorded in the exec's own session, like any statement's.
    wait_until(WAIT, "the outcome to be recorded", || {
        let export = stdout_of(&s.gw.cli(&["sessions", "export"]));
        (export.contains("\"api\"") && export.contains("DELETE 1")).then_some(())
    });
    assert_no_password(&s.pg, &s.gw.log(), "gateway log");
}

#[test]
fn held_with_wait_runs_when_approved_meanwhile_and_denial_exits_2() {
    let s = story("60s");
    let sql = "DELETE FROM items WHERE id = 2";
    let out = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            s.gw.cli_as(&s.agent, &["exec", "prod", "--sql", sql, "--wait"])
        });
        let id = s.gw.wait_for_pending(sql);
        let vote = s.gw.cli_as(&s.dba, &["approve", &id]);
        assert!(vote.status.success(), "{}", describe(&vote));
        waiting.join().unwrap()
    });
    assert_code(&out, 0, "held DELETE with --wait, approved");
    assert!(stdout_of(&out).contains("DELETE 1"), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains("waiting for approval request"),
        "{}",
        describe(&out)
    );
    assert!(stderr_of(&out).contains("dba"), "{}", describe(&out));
    assert_eq!(s.pg.item_ids(), "1,3");
    assert_no_password(&s.pg, &all_output(&out), "exec output");

    let sql = "DELETE FROM items WHERE id = 1";
    let out = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            s.gw.cli_as(&s.agent, &["exec", "prod", "--sql", sql, "--wait"])
        });
        let id = s.gw.wait_for_pending(sql);
        let vote =
            s.gw.cli_as(&s.dba, &["deny", &id, "--reason", "not during the freeze"]);
        assert!(vote.status.success(), "{}", describe(&vote));
        waiting.join().unwrap()
    });
    assert_code(&out, 2, "held DELETE with --wait, denied");
    assert!(
        all_output(&out).contains("not during the freeze"),
        "{}",
        describe(&out)
    );
    assert_eq!(s.pg.item_ids(), "1,3");
}

#[test]
fn held_with_wait_expires_with_the_rule_and_gives_up_at_its_own_timeout() {
    let s = story("3s");
    let sql = "DELETE FROM items WHERE id = 1";
    let out =
        s.gw.cli_as(&s.agent, &["exec", "prod", "--sql", sql, "--wait"]);
    assert_code(&out, 3, "held DELETE, rule timeout 3s");
    assert!(all_output(&out).contains("expired"), "{}", describe(&out));
    assert_eq!(s.pg.item_ids(), "1,2,3");

    // The pipeline's own --timeout, shorter than the rule's: the request is withdrawn, so a
    // late approval cannot run it.
    let sql = "DELETE FROM items WHERE id = 2";
    let out = s.gw.cli_as(
        &s.agent,
        &["exec", "prod", "--sql", sql, "--wait", "--timeout", "1s"],
    );
    assert_code(&out, 3, "held DELETE, --timeout 1s");
    let doc = s.gw.cli_json(&["approvals", "list"]);
    let request = approval_objects(&doc)
        .into_iter()
        .find(|o| has_field_equal(o, sql))
        .cloned()
        .unwrap_or_else(|| panic!("no request for {sql:?}: {doc}"));
    assert_eq!(state_of(&request), "canceled");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

/// `METHOD path` on the API with `token` and a JSON body: the status and the JSON answer.
fn api(
    gw: &Gateway,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    runtime().block_on(async {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", gw.server_url()))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("call the API");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    })
}

#[test]
fn the_api_waits_for_a_decision_and_answers_polls_of_background_execs() {
    let s = story("60s");
    let post = reqwest::Method::POST;
    let sql = "DELETE FROM items WHERE id = 3";
    let body = serde_json::json!({"connection": "prod", "sql": sql, "wait": true, "timeout": 1});
    let (status, pending) = api(&s.gw, &s.agent, post.clone(), "/api/v1/exec", Some(body));
    assert_eq!(status, 202, "{pending}");
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["reviewers"], serde_json::json!(["dba"]));
    let id = pending["request_id"].as_i64().unwrap();
    let path = format!("/api/v1/exec/{id}");

    // Only the requester (and admins) see a background exec.
    let (status, _) = api(&s.gw, &s.dba, reqwest::Method::GET, &path, None);
    assert_eq!(status, 404);
    let vote = s.gw.cli_as(&s.dba, &["approve", &id.to_string()]);
    assert!(vote.status.success(), "{}", describe(&vote));
    let (status, done) = api(
        &s.gw,
        &s.agent,
        reqwest::Method::GET,
        &format!("{path}?wait=20"),
        None,
    );
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "ok");
    assert_eq!(done["request_id"], id);
    assert_eq!(done["results"][0]["tag"], "DELETE 1");
    assert_eq!(s.pg.item_ids(), "1,2");

    // With `wait`, the one call returns the result of an approval given meanwhile.
    let sql = "DELETE FROM items WHERE id = 2";
    let (status, done) = std::thread::scope(|scope| {
        let call = scope.spawn(|| {
            let body =
                serde_json::json!({"connection": "prod", "sql": sql, "wait": true, "timeout": 30});
            api(&s.gw, &s.agent, post.clone(), "/api/v1/exec", Some(body))
        });
        let id = s.gw.wait_for_pending(sql);
        let vote = s.gw.cli_as(&s.dba, &["approve", &id]);
        assert!(vote.status.success(), "{}", describe(&vote));
        call.join().unwrap()
    });
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["results"][0]["tag"], "DELETE 1");
    assert_eq!(s.pg.item_ids(), "1");

    let body = serde_json::json!({"connection": "prod", "sql": "TRUNCATE items"});
    let (status, denied) = api(&s.gw, &s.agent, post, "/api/v1/exec", Some(body));
    assert_eq!(status, 403, "{denied}");
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["reason"], TRUNCATE_REASON);
}

/// `exec` on a MySQL connection goes through the same gate, reading SQL as the MySQL adapter
/// does: reads run, TRUNCATE is denied, a DELETE waits for its reviewer and runs once approved,
/// and a DROP hidden behind a backslash-escaped quote (invisible to a PostgreSQL reading) is
/// held as the DROP MySQL would run. A reviewer's replacement is not run on MySQL.
#[test]
fn exec_on_a_mysql_connection_goes_through_the_same_gate() {
    let db = mariadb::MariaDb::start();
    let yaml = format!(
        "connections:\n{}{}",
        mariadb::mysql_connection_yaml("shop", db.port(), &format!("${{env:{PASSWORD_ENV}}}")),
        policy_yaml(&["shop"], "60s")
    );
    let gw = Gateway::start_with_env(&yaml, &[(PASSWORD_ENV, db.password())]);
    let agent = gw.mint("pipeline-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);

    let out = gw.cli_as(
        &agent,
        &[
            "exec",
            "shop",
            "--sql",
            "SELECT id, name FROM items ORDER BY id",
            "--output",
            "json",
        ],
    );
    assert_code(&out, 0, "allowed SELECT on MySQL");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["results"][0]["columns"],
        serde_json::json!(["id", "name"])
    );
    assert_eq!(
        doc["results"][0]["rows"],
        serde_json::json!([["1", "alpha"], ["2", "beta"], ["3", "gamma"]])
    );
    assert!(!all_output(&out).contains(db.password()));

    let out = gw.cli_as(&agent, &["exec", "shop", "--sql", "TRUNCATE items"]);
    assert_code(&out, 2, "denied TRUNCATE on MySQL");

    // A backslash escapes a quote in MySQL: one string to MySQL, a DROP to PostgreSQL...
    let quoted = "SELECT 'a\\'; DROP TABLE items; -- '";
    let out = gw.cli_as(&agent, &["exec", "shop", "--sql", quoted]);
    assert_code(&out, 0, "a string to MySQL runs as the SELECT it is");
    assert_eq!(db.item_ids(), "1,2,3");
    // ...and a DROP to MySQL, one string to PostgreSQL.
    let hidden = "SELECT 'a\\'' ; DROP TABLE items; -- '";
    let out = gw.cli_as(&agent, &["exec", "shop", "--sql", hidden]);
    assert_code(&out, 4, "a DROP hidden from a PostgreSQL reading is held");
    let id = gw.wait_for_pending(hidden);
    assert_ok_vote(&gw.cli_as(&dba, &["deny", &id, "--reason", "no"]));
    assert_eq!(db.item_ids(), "1,2,3");

    let sql = "DELETE FROM items WHERE id = 3";
    let out = gw.cli_as(&agent, &["exec", "shop", "--sql", sql]);
    assert_code(&out, 4, "held DELETE on MySQL");
    let id = gw.wait_for_pending(sql);
    assert_eq!(db.item_ids(), "1,2,3", "nothing runs before approval");
    assert_ok_vote(&gw.cli_as(&dba, &["approve", &id]));
    wait_until(WAIT, "the approved DELETE to run on MySQL", || {
        (db.item_ids() == "1,2").then_some(())
    });

    let sql = "DELETE FROM items WHERE id = 2";
    let out = gw.cli_as(&agent, &["exec", "shop", "--sql", sql]);
    assert_code(&out, 4, "held DELETE on MySQL");
    let id = gw.wait_for_pending(sql);
    assert_ok_vote(&gw.cli_as(
        &dba,
        &[
            "approve",
            &id,
            "--replace-with",
            "DELETE FROM items WHERE id = 1",
        ],
    ));
    let (status, answer) = api(
        &gw,
        &agent,
        reqwest::Method::GET,
        &format!("/api/v1/exec/{id}?wait=30"),
        None,
    );
    assert_eq!(
        (status, &answer["status"]),
        (403, &Value::from("denied")),
        "{answer}"
    );
    assert!(answer["reason"]
        .as_str()
        .unwrap()
        .contains("send it yourself"));
    assert_eq!(db.item_ids(), "1,2", "neither statement ran");
}

fn assert_ok_vote(out: &Output) {
    assert!(out.status.success(), "{}", describe(out));
}
