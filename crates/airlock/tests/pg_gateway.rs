//! The spine, end to end: a real PostgreSQL upstream, the `airlock serve` binary, and real
//! clients (psql, tokio-postgres, the airlock CLI, raw sockets). Every test starts its own
//! PostgreSQL and gateway on free loopback ports, so the tests run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::fs;
use std::path::Path;
use std::time::Duration;
use support::*;
use tokio_postgres::NoTls;

/// The approval timeout of tests that do not wait for it.
const LONG: &str = "60s";

/// A running upstream and gateway with an agent (`agents`) and a reviewer (`dba`).
struct Story {
    pg: PgServer,
    gw: Gateway,
    agent: String,
    dba: String,
}

fn story_with(auth: UpstreamAuth, timeout: &str) -> Story {
    let pg = PgServer::start(auth);
    let gw = Gateway::for_pg(&pg, timeout);
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);
    Story { pg, gw, agent, dba }
}

fn story() -> Story {
    story_with(UpstreamAuth::ScramSha256, LONG)
}

/// Whether `text` contains `word` delimited by non-alphanumeric characters.
fn contains_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-')
        .any(|w| w == word)
}

fn expect_db_error<T: std::fmt::Debug>(
    result: Result<T, tokio_postgres::Error>,
    what: &str,
) -> tokio_postgres::Error {
    match result {
        Ok(v) => panic!("{what} should have been refused, got {v:?}"),
        Err(e) => e,
    }
}

fn assert_sqlstate(err: &tokio_postgres::Error, code: &str, what: &str) {
    assert_eq!(
        sqlstate(err).as_deref(),
        Some(code),
        "{what}: expected SQLSTATE {code}, got {}",
        db_message(err)
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Reads through the gateway, with every upstream authentication method
// ---------------------------------------------------------------------------------------------

fn select_through_gateway(auth: UpstreamAuth, stored_prefix: &str) {
    let s = story_with(auth, LONG);
    if !stored_prefix.is_empty() {
        // The upstream really stores the password the way this test means to exercise.
        assert_eq!(
            s.pg.psql_admin(&format!(
                "SELECT rolpassword LIKE '{stored_prefix}%' FROM pg_authid WHERE rolname = 'app_owner'"
            )),
            "t",
            "app_owner's password is not stored as {stored_prefix}"
        );
    }
    let out =
        s.gw.psql(&s.agent, "prod", "SELECT id, name FROM items ORDER BY id");
    let rows = assert_ok(&out, "psql SELECT through the gateway");
    assert_eq!(rows.trim(), "1|alpha\n2|beta\n3|gamma");
}

#[test]
fn psql_select_scram_upstream() {
    select_through_gateway(UpstreamAuth::ScramSha256, "SCRAM-SHA-256$");
}

#[test]
fn psql_select_md5_upstream() {
    select_through_gateway(UpstreamAuth::Md5, "md5");
}

#[test]
fn psql_select_trust_upstream() {
    select_through_gateway(UpstreamAuth::Trust, "");
}

// ---------------------------------------------------------------------------------------------
// tokio-postgres: simple and extended protocol, pipelining, transactions
// ---------------------------------------------------------------------------------------------

#[test]
fn tokio_postgres_simple_query() {
    let s = story();
    let rt = runtime();
    rt.block_on(async {
        let (client, _) = s.gw.connect(&s.agent, "prod").await.expect("connect");
        let messages = client
            .simple_query("SELECT id, name FROM items ORDER BY id")
            .await
            .expect("simple query");
        let rows: Vec<(String, String)> = messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                    r.get(0).unwrap_or_default().to_string(),
                    r.get(1).unwrap_or_default().to_string(),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("1".into(), "alpha".into()),
                ("2".into(), "beta".into()),
                ("3".into(), "gamma".into())
            ]
        );
        let complete = messages
            .iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(3)));
        assert!(complete, "CommandComplete with 3 rows expected");
        // Several allowed statements in one simple query.
        client
            .batch_execute("SELECT 1; SELECT name FROM items WHERE id = 2")
            .await
            .expect("multi-statement simple query of reads");
    });
}

#[test]
fn tokio_postgres_extended_protocol_with_parameters() {
    let s = story();
    let rt = runtime();
    rt.block_on(async {
        let (client, _) = s.gw.connect(&s.agent, "prod").await.expect("connect");
        let stmt = client
            .prepare("SELECT id, name FROM items WHERE id = $1 OR name = $2 ORDER BY id")
            .await
            .expect("prepare");
        let rows = client
            .query(&stmt, &[&1i32, &"gamma"])
            .await
            .expect("query with parameters");
        let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            got,
            vec![(1, "alpha".to_string()), (3, "gamma".to_string())]
        );
        // The same prepared statement again, with other parameters.
        let row = client
            .query_one(&stmt, &[&2i32, &"none"])
            .await
            .expect("reuse");
        assert_eq!(row.get::<_, String>(1), "beta");
        // Unnamed statement, typed result.
        let n: i64 = client
            .query_one("SELECT count(*) FROM items WHERE id > $1", &[&0i32])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 3);
        // NULL parameters and results.
        let row = client
            .query_one("SELECT $1::text IS NULL, NULL::int", &[&None::<String>])
            .await
            .expect("NULL parameter");
        assert!(row.get::<_, bool>(0));
        assert_eq!(row.get::<_, Option<i32>>(1), None);
    });
}

#[test]
fn tokio_postgres_pipelined_queries() {
    let s = story();
    let rt = runtime();
    rt.block_on(async {
        let (client, _) = s.gw.connect(&s.agent, "prod").await.expect("connect");
        let stmt = client
            .prepare("SELECT name FROM items WHERE id = $1")
            .await
            .expect("prepare");
        // Polled together, these are pipelined on the one connection.
        let (a, b, c, d) = tokio::try_join!(
            client.query_one(&stmt, &[&1i32]),
            client.query_one(&stmt, &[&2i32]),
            client.query_one(&stmt, &[&3i32]),
            client.query_one("SELECT count(*) FROM items", &[]),
        )
        .expect("pipelined queries");
        assert_eq!(a.get::<_, String>(0), "alpha");
        assert_eq!(b.get::<_, String>(0), "beta");
        assert_eq!(c.get::<_, String>(0), "gamma");
        assert_eq!(d.get::<_, i64>(0), 3);
        // A refused statement in the middle of a pipeline fails alone.
        let (ok1, refused, ok2) = tokio::join!(
            client.query_one(&stmt, &[&1i32]),
            client.execute("TRUNCATE items", &[]),
            client.query_one(&stmt, &[&3i32]),
        );
        assert_eq!(
            ok1.expect("before the refusal").get::<_, String>(0),
            "alpha"
        );
        let err = expect_db_error(refused, "TRUNCATE in a pipeline");
        assert_sqlstate(&err, "42501", "TRUNCATE in a pipeline");
        assert_eq!(ok2.expect("after the refusal").get::<_, String>(0), "gamma");
    });
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn tokio_postgres_transactions() {
    let s = story();
    let rt = runtime();
    rt.block_on(async {
        let (mut client, _) = s.gw.connect(&s.agent, "prod").await.expect("connect");
        let tx = client.transaction().await.expect("BEGIN");
        let n: i64 = tx
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .expect("read in a transaction")
            .get(0);
        assert_eq!(n, 3);
        tx.commit().await.expect("COMMIT");

        let tx = client.transaction().await.expect("BEGIN again");
        tx.simple_query("SELECT 1").await.expect("simple in tx");
        tx.rollback().await.expect("ROLLBACK");

        client
            .batch_execute("BEGIN; SELECT name FROM items WHERE id = 1; COMMIT")
            .await
            .expect("BEGIN; SELECT; COMMIT in one simple query");
        let n: i64 = client
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .expect("after the transactions")
            .get(0);
        assert_eq!(n, 3);
    });
}

// ---------------------------------------------------------------------------------------------
// Held statements: approve, deny, timeout, cancel, who may decide
// ---------------------------------------------------------------------------------------------

#[test]
fn held_delete_runs_after_approval() {
    let s = story();
    let sql = "DELETE FROM items WHERE id = 1";
    let mut held = s.gw.psql_spawn(&s.agent, "prod", sql);
    let id = held.wait_pending(&s.gw);

    // The client was told which request it waits for, at once.
    assert!(
        held.wait_stderr_contains("NOTICE", Duration::from_secs(10)),
        "psql got no NOTICE while held; stderr: {}",
        held.stderr()
    );
    assert!(
        contains_word(&held.stderr(), &id),
        "the NOTICE does not name request {id}; psql stderr: {}",
        held.stderr()
    );
    // The queue shows the exact SQL, pending; nothing has run upstream yet.
    let list = s.gw.cli_json(&["approvals", "list", "--state", "pending"]);
    let request = approval_objects(&list)
        .into_iter()
        .find(|o| o.get("id").and_then(id_text).as_deref() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("request {id} not in the pending list: {list}"));
    assert_eq!(state_of(request), "pending");
    assert!(
        has_field_equal(request, sql),
        "the request does not carry the exact SQL: {request:?}"
    );
    assert!(held.try_status().is_none(), "psql must block while held");
    assert_eq!(s.pg.item_ids(), "1,2,3", "nothing may run before approval");
    // Other sessions, even the same agent's, are not blocked by a held statement.
    let out = s.gw.psql(&s.agent, "prod", "SELECT count(*) FROM items");
    assert_eq!(
        assert_ok(&out, "a read while another session is held").trim(),
        "3"
    );

    let out = s.gw.cli_as(&s.dba, &["approve", &id, "--reason", "ok"]);
    assert_ok(&out, "airlock approve by a dba");
    let out = held.finish(WAIT);
    assert!(
        out.status.success(),
        "the approved DELETE should succeed: {}",
        describe(&out)
    );
    assert_eq!(s.pg.item_ids(), "2,3", "the approved DELETE ran upstream");
    assert_eq!(s.gw.approval_state(&id), "approved");
}

#[test]
fn held_extended_protocol_delete_runs_after_approval() {
    let s = story();
    let rt = runtime();
    let (client, notices) = rt
        .block_on(s.gw.connect(&s.agent, "prod"))
        .expect("connect");
    let sql = "DELETE FROM items WHERE id = $1";
    let task = rt.spawn(async move {
        let result = client.execute(sql, &[&2i32]).await;
        (client, result)
    });
    let id = s.gw.wait_for_pending(sql);
    assert_eq!(s.pg.item_ids(), "1,2,3", "nothing may run before approval");
    let out = s.gw.cli_as(&s.dba, &["approve", &id, "--reason", "ok"]);
    assert_ok(&out, "airlock approve");
    let (client, result) = rt
        .block_on(async { tokio::time::timeout(WAIT, task).await })
        .expect("the approved statement finishes")
        .expect("task");
    assert_eq!(result.expect("approved DELETE"), 1, "one row deleted");
    assert_eq!(s.pg.item_ids(), "1,3");
    assert!(
        notices.all().iter().any(|n| contains_word(n, &id)),
        "no NOTICE naming request {id}; notices: {:?}",
        notices.all()
    );
    // The session goes on.
    let n: i64 = rt
        .block_on(client.query_one("SELECT count(*) FROM items", &[]))
        .expect("read after the approved DELETE")
        .get(0);
    assert_eq!(n, 2);
}

#[test]
fn reviewers_see_bound_parameters_as_text() {
    let s = story();
    let rt = runtime();
    // tokio-postgres sends parameters in binary; the reviewer must still read their values.
    let cases: [(&str, &str); 2] = [
        ("DELETE FROM items WHERE id = $1", "2"),
        ("DELETE FROM items WHERE name = $1", "beta"),
    ];
    let mut tasks = Vec::new();
    for (sql, _) in cases {
        let (client, _) = rt
            .block_on(s.gw.connect(&s.agent, "prod"))
            .expect("connect");
        tasks.push(rt.spawn(async move {
            if sql.contains("id =") {
                client.execute(sql, &[&2i32]).await
            } else {
                client.execute(sql, &[&"beta"]).await
            }
        }));
    }
    let mut problems = Vec::new();
    for (sql, expected) in cases {
        let id = s.gw.wait_for_pending(sql);
        let request = s.gw.approval(&id);
        let params = request.get("params").cloned().unwrap_or(Value::Null);
        let shown = params
            .as_array()
            .map(|p| p.iter().any(|v| v.as_str() == Some(expected)))
            .unwrap_or(false);
        if !shown {
            problems.push(format!(
                "{sql:?} bound {expected:?}, the reviewer sees params {params}"
            ));
        }
        assert_ok(
            &s.gw
                .cli_as(&s.dba, &["deny", &id, "--reason", "just looking"]),
            "deny",
        );
    }
    for task in tasks {
        let result = rt
            .block_on(async { tokio::time::timeout(WAIT, task).await })
            .expect("the denied statement finishes")
            .expect("task");
        let err = expect_db_error(result, "a denied DELETE");
        assert_sqlstate(&err, "42501", "denied DELETE");
    }
    assert_eq!(s.pg.item_ids(), "1,2,3");
    assert!(
        problems.is_empty(),
        "bound parameters should be shown as text:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn denied_delete_psql_gets_reason_and_42501() {
    let s = story();
    let sql = "DELETE FROM items WHERE id = 2";
    let mut held = s.gw.psql_spawn(&s.agent, "prod", sql);
    let id = held.wait_pending(&s.gw);
    let reason = "not during business hours";
    let out = s.gw.cli_as(&s.dba, &["deny", &id, "--reason", reason]);
    assert_ok(&out, "airlock deny");
    let out = held.finish(WAIT);
    assert_fails_with(&out, "the denied DELETE", &[reason, "42501"]);
    assert_eq!(s.pg.item_ids(), "1,2,3", "the denied DELETE must not run");
    assert_eq!(s.gw.approval_state(&id), "denied");
}

#[test]
fn denied_delete_tokio_postgres_sqlstate_42501() {
    let s = story();
    let rt = runtime();
    let (client, _) = rt
        .block_on(s.gw.connect(&s.agent, "prod"))
        .expect("connect");
    let sql = "DELETE FROM items WHERE id = 3";
    let task = rt.spawn(async move {
        let result = client.simple_query(sql).await;
        (client, result)
    });
    let id = s.gw.wait_for_pending(sql);
    let reason = "use a soft delete instead";
    assert_ok(
        &s.gw.cli_as(&s.dba, &["deny", &id, "--reason", reason]),
        "airlock deny",
    );
    let (client, result) = rt
        .block_on(async { tokio::time::timeout(WAIT, task).await })
        .expect("the denied statement finishes")
        .expect("task");
    let err = expect_db_error(result, "the denied DELETE");
    assert_sqlstate(&err, "42501", "denied DELETE");
    assert!(
        db_message(&err).contains(reason),
        "the error should carry the reviewer's reason: {}",
        db_message(&err)
    );
    assert_eq!(s.pg.item_ids(), "1,2,3");
    rt.block_on(client.simple_query("SELECT 1"))
        .expect("the session goes on after a denial");
}

#[test]
fn approval_timeout_expires_with_57014() {
    let s = story_with(UpstreamAuth::ScramSha256, "3s");
    let sql = "DELETE FROM items WHERE id = 1";
    let mut held = s.gw.psql_spawn(&s.agent, "prod", sql);
    let id = held.wait_pending(&s.gw);
    let out = held.finish(WAIT);
    assert_fails_with(&out, "the expired DELETE", &["57014"]);
    assert_eq!(s.pg.item_ids(), "1,2,3", "the expired DELETE must not run");
    let list = s.gw.cli_json(&["approvals", "list", "--state", "expired"]);
    let found = approval_objects(&list)
        .into_iter()
        .find(|o| o.get("id").and_then(id_text).as_deref() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("request {id} not in `approvals list --state expired`: {list}"));
    assert_eq!(state_of(found), "expired");
    assert!(has_field_equal(found, sql));
    // A late approval cannot revive it.
    let out =
        s.gw.cli_as(&s.dba, &["approve", &id, "--reason", "too late"]);
    assert!(
        !out.status.success(),
        "approving an expired request must fail: {}",
        describe(&out)
    );
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn cancel_request_withdraws_held_statement() {
    let s = story();
    let rt = runtime();
    let (client, _) = rt
        .block_on(s.gw.connect(&s.agent, "prod"))
        .expect("connect");
    let cancel = client.cancel_token();
    let sql = "DELETE FROM items WHERE id = 3";
    let task = rt.spawn(async move {
        let result = client.simple_query(sql).await;
        (client, result)
    });
    let id = s.gw.wait_for_pending(sql);
    rt.block_on(cancel.cancel_query(NoTls))
        .expect("send a CancelRequest");
    let (client, result) = rt
        .block_on(async { tokio::time::timeout(WAIT, task).await })
        .expect("the held statement ends after a CancelRequest")
        .expect("task");
    let err = expect_db_error(result, "the canceled DELETE");
    assert_sqlstate(&err, "57014", "canceled DELETE");
    s.gw.wait_for_state(&id, "canceled");
    assert_eq!(s.pg.item_ids(), "1,2,3", "a withdrawn DELETE must not run");
    // A withdrawn request cannot be approved afterwards.
    let out = s.gw.cli_as(&s.dba, &["approve", &id, "--reason", "late"]);
    assert!(
        !out.status.success(),
        "approving a canceled request must fail"
    );
    assert_eq!(s.pg.item_ids(), "1,2,3");
    let n: i64 = rt
        .block_on(client.query_one("SELECT count(*) FROM items", &[]))
        .expect("the session goes on after a cancel")
        .get(0);
    assert_eq!(n, 3);
}

#[test]
fn psql_ctrl_c_withdraws_held_statement() {
    let s = story();
    let sql = "DELETE FROM items WHERE id = 2";
    let mut held = s.gw.psql_spawn(&s.agent, "prod", sql);
    let id = held.wait_pending(&s.gw);
    held.interrupt();
    let out = held.finish(WAIT);
    assert_fails_with(&out, "Ctrl-C on a held DELETE", &["57014"]);
    s.gw.wait_for_state(&id, "canceled");
    assert_eq!(s.pg.item_ids(), "1,2,3", "a withdrawn DELETE must not run");
}

#[test]
fn two_approvals_need_two_distinct_reviewers() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = Gateway::for_pg_config(&pg, &template_config_with(&pg, LONG, 2));
    let agent = gw.mint("agent-1", &["agents"]);
    let dba1 = gw.mint("dba-1", &["dba"]);
    let dba2 = gw.mint("dba-2", &["dba"]);
    let sql = "DELETE FROM items WHERE id = 3";
    let mut held = gw.psql_spawn(&agent, "prod", sql);
    let id = held.wait_pending(&gw);

    assert_ok(
        &gw.cli_as(&dba1, &["approve", &id, "--reason", "one"]),
        "first approval",
    );
    assert_eq!(gw.approval_state(&id), "pending", "one of two approvals");
    let out = gw.cli_as(&dba1, &["approve", &id, "--reason", "one again"]);
    assert!(
        !out.status.success(),
        "the same reviewer cannot count twice: {}",
        describe(&out)
    );
    assert_eq!(gw.approval_state(&id), "pending");
    assert!(held.try_status().is_none(), "still held after one approval");
    assert_eq!(pg.item_ids(), "1,2,3");

    assert_ok(
        &gw.cli_as(&dba2, &["approve", &id, "--reason", "two"]),
        "second approval",
    );
    let out = held.finish(WAIT);
    assert!(
        out.status.success(),
        "runs after two approvals: {}",
        describe(&out)
    );
    assert_eq!(pg.item_ids(), "1,2");
    let request = gw.approval(&id);
    assert_eq!(state_of(&request), "approved");
    let votes = request
        .get("votes")
        .and_then(|v| v.as_array())
        .map(|v| v.len());
    assert_eq!(votes, Some(2), "two votes recorded: {request:?}");
}

#[test]
fn requester_cannot_approve_own_request() {
    let s = story();
    // A token that is both an agent and a reviewer.
    let both = s.gw.mint("agent-and-dba", &["agents", "dba"]);
    let sql = "DELETE FROM items WHERE id = 2";
    let mut held = s.gw.psql_spawn(&both, "prod", sql);
    let id = held.wait_pending(&s.gw);
    let out =
        s.gw.cli_as(&both, &["approve", &id, "--reason", "trust me"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "self-approval must be refused with exit 1: {}",
        describe(&out)
    );
    assert!(
        !stderr_of(&out).trim().is_empty() || !stdout_of(&out).trim().is_empty(),
        "the refusal should say why"
    );
    assert_eq!(s.gw.approval_state(&id), "pending");
    assert!(held.try_status().is_none(), "still held");
    assert_eq!(s.pg.item_ids(), "1,2,3");
    // Another reviewer can still decide it.
    assert_ok(
        &s.gw
            .cli_as(&s.dba, &["deny", &id, "--reason", "no self-service"]),
        "deny by another dba",
    );
    let out = held.finish(WAIT);
    assert_fails_with(&out, "the denied DELETE", &["42501"]);
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn non_reviewers_cannot_approve() {
    let s = story();
    let other_agent = s.gw.mint("agent-2", &["agents"]);
    let sql = "DELETE FROM items WHERE id = 1";
    let mut held = s.gw.psql_spawn(&s.agent, "prod", sql);
    let id = held.wait_pending(&s.gw);

    let out =
        s.gw.cli_as(&other_agent, &["approve", &id, "--reason", "lgtm"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an agent that is not a reviewer must be refused: {}",
        describe(&out)
    );
    // Admins manage the gateway but decide only where a rule names them.
    let out = s.gw.cli(&["approve", &id, "--reason", "admin override"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an admin that is not a reviewer must be refused: {}",
        describe(&out)
    );
    assert_eq!(s.gw.approval_state(&id), "pending");
    assert!(held.try_status().is_none(), "still held");
    assert_eq!(s.pg.item_ids(), "1,2,3");

    assert_ok(
        &s.gw.cli_as(&s.dba, &["approve", &id, "--reason", "ok"]),
        "approve by the dba",
    );
    let out = held.finish(WAIT);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(s.pg.item_ids(), "2,3");
}

// ---------------------------------------------------------------------------------------------
// Disguised writes are caught from the parse, never run without a decision
// ---------------------------------------------------------------------------------------------

/// Sends `sql`, expects it held, denies it, checks psql fails and nothing changed upstream.
fn disguised_write_is_held_then_denied(sql: &str) {
    let s = story();
    let mut held = s.gw.psql_spawn(&s.agent, "prod", sql);
    let id = held.wait_pending(&s.gw);
    assert_eq!(s.pg.item_ids(), "1,2,3", "{sql:?} ran before a decision");
    assert_ok(
        &s.gw
            .cli_as(&s.dba, &["deny", &id, "--reason", "caught you"]),
        "deny",
    );
    let out = held.finish(WAIT);
    assert_fails_with(&out, sql, &["42501", "caught you"]);
    assert_eq!(s.pg.item_ids(), "1,2,3", "{sql:?} ran although denied");
}

#[test]
fn disguised_comment_lowercase_delete_is_held() {
    disguised_write_is_held_then_denied("/* c */ delete from items where id=1");
}

#[test]
fn disguised_cte_delete_is_held() {
    disguised_write_is_held_then_denied(
        "WITH d AS (DELETE FROM items RETURNING *) SELECT * FROM d",
    );
}

#[test]
fn disguised_multi_statement_drop_is_held_and_expires() {
    let s = story_with(UpstreamAuth::ScramSha256, "3s");
    let sql = "SELECT 1; DROP TABLE items";
    let mut held = s.gw.psql_spawn(&s.agent, "prod", sql);
    let id = held.wait_pending(&s.gw);
    let out = held.finish(WAIT);
    assert_fails_with(&out, "SELECT 1; DROP TABLE items", &["57014"]);
    assert_eq!(s.gw.approval_state(&id), "expired");
    assert_eq!(
        s.pg.psql_admin("SELECT to_regclass('public.items') IS NOT NULL"),
        "t",
        "the table was dropped"
    );
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn lowercase_truncate_is_denied_42501() {
    let s = story();
    let out = s.gw.psql(&s.agent, "prod", "truncate items");
    assert_fails_with(&out, "truncate items", &["42501", TRUNCATE_REASON]);
    assert_eq!(s.pg.item_ids(), "1,2,3");
    // Hidden behind a read in the same string: the whole string is refused.
    let out =
        s.gw.psql(&s.agent, "prod", "select 1; TrUnCaTe /* x */ items");
    assert_fails_with(&out, "select 1; truncate", &["42501"]);
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

// ---------------------------------------------------------------------------------------------
// Fail closed, and the session survives refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn unparseable_sql_fails_closed_and_session_survives() {
    let s = story();
    let rt = runtime();
    rt.block_on(async {
        let (client, _) = s.gw.connect(&s.agent, "prod").await.expect("connect");
        for bad in [
            "SELEC * FROM items",
            "DELETE FROM items WHERE (",
            "\u{1}\u{2} garbage",
        ] {
            let err = expect_db_error(client.simple_query(bad).await, bad);
            let code = sqlstate(&err).unwrap_or_default();
            assert!(
                code.starts_with("42"),
                "{bad:?}: expected a 42xxx refusal, got {}",
                db_message(&err)
            );
            let n: i64 = client
                .query_one("SELECT count(*) FROM items", &[])
                .await
                .unwrap_or_else(|e| panic!("session unusable after {bad:?}: {e}"))
                .get(0);
            assert_eq!(n, 3);
        }
        // The same through the extended protocol.
        let err = expect_db_error(client.prepare("SELEC oops").await, "prepare SELEC");
        assert!(
            sqlstate(&err).unwrap_or_default().starts_with("42"),
            "{}",
            db_message(&err)
        );
        client
            .simple_query("SELECT 1")
            .await
            .expect("session usable after an unparseable Parse");
    });
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn statement_without_a_matching_rule_is_denied() {
    let s = story();
    let out =
        s.gw.psql(&s.agent, "prod", "INSERT INTO items VALUES (9, 'nine')");
    assert_fails_with(&out, "INSERT with no rule", &["42501"]);
    let rt = runtime();
    rt.block_on(async {
        let (client, _) = s.gw.connect(&s.agent, "prod").await.expect("connect");
        let err = expect_db_error(
            client
                .execute("INSERT INTO items VALUES ($1, $2)", &[&10i32, &"ten"])
                .await,
            "extended INSERT",
        );
        assert_sqlstate(&err, "42501", "extended INSERT");
    });
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn session_survives_refusals_inside_and_outside_transactions() {
    let s = story();
    let rt = runtime();
    rt.block_on(async {
        let (mut client, _) = s.gw.connect(&s.agent, "prod").await.expect("connect");
        // Outside a transaction, simple protocol.
        let err = expect_db_error(client.simple_query("TRUNCATE items").await, "TRUNCATE");
        assert_sqlstate(&err, "42501", "TRUNCATE");
        client
            .simple_query("SELECT 1")
            .await
            .expect("after simple refusal");
        // Outside a transaction, extended protocol.
        let err = expect_db_error(client.execute("TRUNCATE items", &[]).await, "TRUNCATE ext");
        assert_sqlstate(&err, "42501", "extended TRUNCATE");
        let n: i64 = client
            .query_one("SELECT count(*) FROM items WHERE id > $1", &[&0i32])
            .await
            .expect("after extended refusal")
            .get(0);
        assert_eq!(n, 3);

        // Inside a transaction (simple protocol).
        client.batch_execute("BEGIN").await.expect("BEGIN");
        client.simple_query("SELECT 1").await.expect("read in tx");
        let err = expect_db_error(client.simple_query("truncate items").await, "in tx");
        assert_sqlstate(&err, "42501", "TRUNCATE in a transaction");
        client
            .batch_execute("ROLLBACK")
            .await
            .expect("ROLLBACK after a refusal");
        client.simple_query("SELECT 1").await.expect("after the tx");

        // Inside a transaction (tokio-postgres Transaction, extended protocol).
        let tx = client.transaction().await.expect("BEGIN");
        let err = expect_db_error(
            tx.execute("INSERT INTO items VALUES ($1, 'x')", &[&7i32])
                .await,
            "INSERT in tx",
        );
        assert_sqlstate(&err, "42501", "INSERT in a transaction");
        tx.rollback().await.expect("ROLLBACK");
        let n: i64 = client
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .expect("after the refused transaction")
            .get(0);
        assert_eq!(n, 3);

        // A committed transaction after all that still works.
        let tx = client.transaction().await.expect("BEGIN");
        tx.query_one("SELECT 1", &[]).await.expect("read");
        tx.commit().await.expect("COMMIT");
    });
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn psql_session_continues_after_refusal() {
    let s = story();
    let out = s.gw.psql_session(
        &s.agent,
        "prod",
        &[
            "truncate items",
            "SELECT count(*) FROM items",
            "BEGIN",
            "INSERT INTO items VALUES (8, 'eight')",
            "ROLLBACK",
            "SELECT name FROM items WHERE id = 2",
        ],
    );
    let stdout = stdout_of(&out);
    let lines: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        lines.contains(&"3") && lines.last() == Some(&"beta"),
        "psql should go on after refusals: {}",
        describe(&out)
    );
    assert!(stderr_of(&out).contains("42501"), "{}", describe(&out));
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

// ---------------------------------------------------------------------------------------------
// Pass-through: COPY and the upstream's notices
// ---------------------------------------------------------------------------------------------

#[test]
fn copy_passes_through_both_ways() {
    let s = story();
    let loader = s.gw.mint("loader", &["loaders"]);
    let out = s.gw.psql(
        &loader,
        "prod",
        "COPY (SELECT id, name FROM items ORDER BY id) TO STDOUT",
    );
    assert_eq!(
        assert_ok(&out, "COPY TO STDOUT").trim(),
        "1\talpha\n2\tbeta\n3\tgamma"
    );
    let out = s.gw.psql_with_stdin(
        &loader,
        "prod",
        "COPY items FROM STDIN",
        "4\tdelta\n5\tepsilon\n\\.\n",
    );
    assert_ok(&out, "COPY FROM STDIN");
    assert_eq!(s.pg.item_ids(), "1,2,3,4,5");
    // A write hidden inside COPY is still a write.
    let out = s.gw.psql(
        &loader,
        "prod",
        "COPY (DELETE FROM items WHERE id = 1 RETURNING *) TO STDOUT",
    );
    assert_fails_with(&out, "COPY (DELETE …) TO STDOUT", &["42501"]);
    // Agents have no COPY rule.
    let out = s.gw.psql(&s.agent, "prod", "COPY items TO STDOUT");
    assert_fails_with(&out, "COPY by an agent", &["42501"]);
    assert_eq!(s.pg.item_ids(), "1,2,3,4,5");
}

#[test]
fn upstream_notices_pass_through() {
    let s = story();
    let out = s.gw.psql(&s.agent, "prod", "SELECT shout()");
    assert_eq!(assert_ok(&out, "SELECT shout()").trim(), "1");
    assert!(
        stderr_of(&out).contains("upstream says hi"),
        "psql should show the upstream's NOTICE: {}",
        describe(&out)
    );
    let rt = runtime();
    let notices = rt.block_on(async {
        let (client, notices) = s.gw.connect(&s.agent, "prod").await.expect("connect");
        client.simple_query("SELECT shout()").await.expect("simple");
        let n: i32 = client
            .query_one("SELECT shout()", &[])
            .await
            .expect("extended")
            .get(0);
        assert_eq!(n, 1);
        notices
    });
    let count = wait_until(Duration::from_secs(5), "two upstream notices", || {
        let n = notices
            .all()
            .iter()
            .filter(|n| n.contains("upstream says hi"))
            .count();
        (n >= 2).then_some(n)
    });
    assert_eq!(count, 2, "notices: {:?}", notices.all());
}

// ---------------------------------------------------------------------------------------------
// Bad input and faults
// ---------------------------------------------------------------------------------------------

#[test]
fn wrong_token_is_rejected() {
    let s = story();
    let out = s.gw.psql("alk_not-a-real-token", "prod", "SELECT 1");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr_of(&out).to_lowercase().contains("authentication"),
        "expected an authentication error: {}",
        describe(&out)
    );
    let out = s.gw.psql("", "prod", "SELECT 1");
    assert!(!out.status.success(), "empty password: {}", describe(&out));
    let rt = runtime();
    rt.block_on(async {
        let err = match s.gw.connect("not-a-token-at-all", "prod").await {
            Ok(_) => panic!("a wrong token connected"),
            Err(e) => e,
        };
        let code = sqlstate(&err).unwrap_or_default();
        assert!(
            code.starts_with("28"),
            "expected an invalid-authorization SQLSTATE (28xxx), got {}",
            db_message(&err)
        );
    });
    // The gateway is fine and a good token still works.
    let out = s.gw.psql(&s.agent, "prod", "SELECT 1");
    assert_ok(&out, "psql after bad logins");
}

#[test]
fn revoked_token_is_rejected() {
    let s = story();
    let minted = s.gw.mint_full("short-lived", &["agents"]);
    assert!(!minted.id.is_empty(), "tokens create printed no id");
    assert_ok(
        &s.gw.psql(&minted.token, "prod", "SELECT 1"),
        "psql before revocation",
    );
    assert_ok(
        &s.gw.cli(&["tokens", "revoke", &minted.id]),
        "airlock tokens revoke",
    );
    let out = s.gw.psql(&minted.token, "prod", "SELECT 1");
    assert!(
        !out.status.success(),
        "revoked token connected: {}",
        describe(&out)
    );
    assert!(
        stderr_of(&out).to_lowercase().contains("authentication"),
        "expected an authentication error: {}",
        describe(&out)
    );
    // Others are unaffected.
    assert_ok(&s.gw.psql(&s.agent, "prod", "SELECT 1"), "another token");
}

#[test]
fn unknown_connection_is_a_clear_error() {
    let s = story();
    let out = s.gw.psql(&s.agent, "no-such-connection", "SELECT 1");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains("no-such-connection"),
        "the error should name the unknown connection: {}",
        describe(&out)
    );
    assert_ok(
        &s.gw.psql(&s.agent, "prod", "SELECT 1"),
        "a known connection",
    );
}

#[test]
fn malformed_protocol_input_gets_an_error_and_the_gateway_keeps_serving() {
    let s = story();
    let port = s.gw.pg_port;
    let rt = runtime();
    // A session opened before the garbage must survive it.
    let (client, _) = rt
        .block_on(s.gw.connect(&s.agent, "prod"))
        .expect("connect");
    let mut problems: Vec<String> = Vec::new();

    // SSLRequest is answered with exactly one byte.
    let mut raw = RawPg::connect(port);
    match raw.ssl_request() {
        Some(b'N') | Some(b'S') => {}
        other => problems.push(format!("SSLRequest answered with {other:?}")),
    }

    let startup_garbage: [(&str, Vec<u8>); 4] = [
        (
            "HTTP instead of a startup packet",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "oversized startup length",
            vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        ),
        ("startup length below the minimum", vec![0, 0, 0, 2, 0, 0]),
        ("unknown protocol version", vec![0, 0, 0, 8, 0, 9, 0, 0]),
    ];
    for (what, bytes) in startup_garbage {
        let mut raw = RawPg::connect(port);
        raw.send(&bytes);
        let (errored, _) = raw.error_or_close();
        if !errored {
            problems.push(format!("{what}: closed without an ErrorResponse"));
        }
    }

    // Oversized message after login.
    let mut raw = RawPg::login(port, &s.agent, "prod");
    raw.send(&[b'Q', 0x7f, 0xff, 0xff, 0xf0]);
    raw.send(b"SELECT 1");
    let (errored, _) = raw.error_or_close();
    if !errored {
        problems.push("oversized Query: closed without an ErrorResponse".into());
    }

    // Unknown message type after login.
    let mut raw = RawPg::login(port, &s.agent, "prod");
    raw.send(&RawPg::message(b'@', b"junk"));
    let (errored, _) = raw.error_or_close();
    if !errored {
        problems.push("unknown message type: closed without an ErrorResponse".into());
    }

    // A client that vanishes in the middle of a message.
    let mut raw = RawPg::login(port, &s.agent, "prod");
    raw.send(&[b'Q', 0, 0, 0, 100]);
    raw.send(b"SELECT");
    drop(raw);

    // A valid raw query still works on a raw session.
    let mut raw = RawPg::login(port, &s.agent, "prod");
    raw.send(&RawPg::message(b'Q', b"SELECT 42\0"));
    let mut saw_row = false;
    loop {
        match raw.read_message() {
            RawReply::Message(b'D', body) => saw_row = contains_bytes(&body, b"42"),
            RawReply::Message(b'Z', _) => break,
            RawReply::Message(b'E', body) => {
                problems.push(format!(
                    "a valid raw query failed: {}",
                    String::from_utf8_lossy(&body)
                ));
                break;
            }
            RawReply::Message(..) => {}
            RawReply::Closed => {
                problems.push("raw session closed on a valid query".into());
                break;
            }
        }
    }
    if !saw_row {
        problems.push("the valid raw query returned no row 42".into());
    }

    // The gateway is alive and serves old and new sessions.
    let mut gw = s.gw;
    assert!(gw.alive(), "the gateway process died");
    assert_eq!(gw.readyz(), Some(200), "/readyz after garbage");
    let n: i64 = rt
        .block_on(client.query_one("SELECT count(*) FROM items", &[]))
        .expect("the earlier session survives other clients' garbage")
        .get(0);
    assert_eq!(n, 3);
    assert_ok(&gw.psql(&s.agent, "prod", "SELECT 1"), "a new session");
    assert!(
        problems.is_empty(),
        "malformed input handling:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn upstream_death_mid_session_is_an_error_and_the_gateway_recovers() {
    let mut pg = PgServer::start(UpstreamAuth::ScramSha256);
    let mut gw = Gateway::for_pg(&pg, LONG);
    let agent = gw.mint("agent-1", &["agents"]);
    let rt = runtime();
    let (busy, _) = rt.block_on(gw.connect(&agent, "prod")).expect("connect");
    let (idle, _) = rt.block_on(gw.connect(&agent, "prod")).expect("connect");
    rt.block_on(busy.simple_query("SELECT 1"))
        .expect("a read before the crash");
    rt.block_on(idle.simple_query("SELECT 1"))
        .expect("a read before the crash");

    // One session is in the middle of a statement when the upstream dies.
    let in_flight = rt.spawn(async move { busy.simple_query("SELECT pg_sleep(60)").await });
    wait_until(WAIT, "the pg_sleep to run upstream", || {
        let n = pg.psql_admin(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'",
        );
        (n != "0").then_some(())
    });
    pg.kill();
    let result = rt
        .block_on(async { tokio::time::timeout(WAIT, in_flight).await })
        .expect("the client must get an answer, not hang, when the upstream dies")
        .expect("task");
    let err = expect_db_error(result, "a statement whose upstream died");
    assert!(
        err.as_db_error().is_some(),
        "the client should get a protocol-native ErrorResponse when its upstream dies, got: {err}"
    );
    let code = sqlstate(&err).unwrap_or_default();
    assert!(
        code.starts_with("08") || code.starts_with("57"),
        "expected a connection (08xxx) or shutdown (57xxx) SQLSTATE, got {}",
        db_message(&err)
    );
    // The other session was idle: its next statement fails, without hanging.
    let result = rt
        .block_on(async {
            tokio::time::timeout(WAIT, idle.simple_query("SELECT count(*) FROM items")).await
        })
        .expect("the idle client must get an answer, not hang, after its upstream died");
    assert!(result.is_err(), "a query on a dead upstream succeeded");

    assert!(gw.alive(), "the gateway died with its upstream");
    assert_eq!(gw.readyz(), Some(200), "/readyz while an upstream is down");
    // A new session while the upstream is down: a clear error, quickly.
    let out = gw.psql(&agent, "prod", "SELECT 1");
    assert!(
        !out.status.success(),
        "a session to a dead upstream succeeded: {}",
        describe(&out)
    );
    assert!(!stderr_of(&out).trim().is_empty(), "no error message");

    pg.restart();
    let out = gw.psql(&agent, "prod", "SELECT count(*) FROM items");
    assert_eq!(
        assert_ok(&out, "a new session after the upstream restarted").trim(),
        "3"
    );
}

// ---------------------------------------------------------------------------------------------
// Recording
// ---------------------------------------------------------------------------------------------

#[test]
fn sessions_are_recorded_with_decisions_and_approvals() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = Gateway::for_pg(&pg, LONG);
    let agent = gw.mint("recorded-agent", &["agents"]);
    let dba_token = gw.mint_full("dba-reviewer", &["dba"]);
    let dba = dba_token.token.clone();

    let read = "SELECT name FROM items WHERE id = 3";
    assert_ok(&gw.psql(&agent, "prod", read), "read");
    let denied = "truncate items";
    assert!(!gw.psql(&agent, "prod", denied).status.success());
    let held_sql = "DELETE FROM items WHERE id = 2";
    let mut held = gw.psql_spawn(&agent, "prod", held_sql);
    let id = held.wait_pending(&gw);
    let approval_reason = "stale row, ticket OPS-1234";
    assert_ok(
        &gw.cli_as(&dba, &["approve", &id, "--reason", approval_reason]),
        "approve",
    );
    assert!(held.finish(WAIT).status.success());

    let list = gw.cli_json(&["sessions", "list"]);
    let ids: Vec<String> = json_objects(&list)
        .into_iter()
        .filter(|o| o.contains_key("connection") || o.contains_key("started_at"))
        .filter_map(|o| o.get("id").and_then(id_text))
        .collect();
    assert!(
        ids.len() >= 3,
        "expected at least 3 recorded sessions, got {ids:?}: {list}"
    );
    let list_text = list.to_string();
    assert!(
        list_text.contains("recorded-agent"),
        "identity missing: {list}"
    );
    assert!(list_text.contains("prod"), "connection missing: {list}");

    let mut shown = String::new();
    for sid in &ids {
        let doc = gw.cli_json(&["sessions", "show", sid]);
        shown.push_str(&doc.to_string());
        shown.push('\n');
    }
    for needle in [
        read,
        denied,
        held_sql,
        "allow",
        "deny",
        "require-approval",
        "DELETE|DROP|UPDATE",
        TRUNCATE_REASON,
        approval_reason,
    ] {
        assert!(
            shown.contains(needle),
            "`sessions show` should record {needle:?}; got:\n{shown}"
        );
    }
    // The approver, by name or by token id.
    assert!(
        shown.contains("dba-reviewer")
            || (!dba_token.id.is_empty() && shown.contains(&dba_token.id)),
        "`sessions show` should name the approver (dba-reviewer / {}); got:\n{shown}",
        dba_token.id
    );

    let out = gw.cli(&["sessions", "export", "--format", "jsonl"]);
    let export = assert_ok(&out, "sessions export --format jsonl");
    let lines: Vec<&str> = export.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the export is empty");
    for line in &lines {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("export line is not JSON ({e}): {line}"));
    }
    for needle in [read, held_sql, approval_reason] {
        assert!(
            export.contains(needle),
            "export lacks {needle:?}:\n{export}"
        );
    }
}

#[test]
fn upstream_password_never_leaks() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let wrong = format!("Wr0ng-Upstr3am-{}", unique_suffix());
    let yaml = format!(
        "connections:\n{}{}{}",
        connection_yaml("prod", pg.port(), &format!("${{env:{PASSWORD_ENV}}}")),
        connection_yaml("broken", pg.port(), "${env:AIRLOCK_TEST_WRONG_PASSWORD}"),
        policy_yaml(&["prod", "broken"], LONG)
    );
    let gw = Gateway::start_with_env(
        &yaml,
        &[
            (PASSWORD_ENV, pg.password()),
            ("AIRLOCK_TEST_WRONG_PASSWORD", &wrong),
            ("RUST_LOG", "debug"),
        ],
    );
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);
    let secrets = [pg.password().to_string(), wrong.clone()];
    let mut outputs: Vec<String> = Vec::new();

    for sql in [
        "SELECT id, name FROM items",
        "truncate items",
        "SELEC garbage",
        "SELECT current_setting('password_encryption')",
        "SELECT rolpassword FROM pg_authid",
    ] {
        outputs.push(all_output(&gw.psql(&agent, "prod", sql)));
    }
    // The upstream refuses the gateway's (wrong) credentials: the error must not carry them.
    let out = gw.psql(&agent, "broken", "SELECT 1");
    assert!(!out.status.success(), "a wrong upstream password worked");
    outputs.push(all_output(&out));
    // Approved and denied held statements.
    for (sql, verb) in [
        ("DELETE FROM items WHERE id = 1", "approve"),
        ("DELETE FROM items WHERE id = 2", "deny"),
    ] {
        let mut held = gw.psql_spawn(&agent, "prod", sql);
        let id = held.wait_pending(&gw);
        outputs.push(all_output(&gw.cli(&[
            "approvals",
            "show",
            &id,
            "--output",
            "json",
        ])));
        outputs.push(all_output(
            &gw.cli_as(&dba, &[verb, &id, "--reason", "checked"]),
        ));
        outputs.push(all_output(&held.finish(WAIT)));
    }
    outputs.push(all_output(&gw.cli(&[
        "approvals",
        "list",
        "--output",
        "json",
    ])));
    outputs.push(all_output(
        &gw.cli(&["sessions", "list", "--output", "json"]),
    ));
    let export = gw.cli(&["sessions", "export", "--format", "jsonl"]);
    assert_ok(&export, "sessions export");
    outputs.push(all_output(&export));

    for secret in &secrets {
        for (i, text) in outputs.iter().enumerate() {
            assert!(
                !text.contains(secret.as_str()),
                "client/CLI output #{i} contains an upstream password:\n{text}"
            );
        }
    }
    // Every file the gateway wrote: its log, the SQLite database and its WAL, psql outputs.
    assert!(
        gw.db_file().exists(),
        "no SQLite file at {}",
        gw.db_file().display()
    );
    let files = files_under(gw.dir());
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with(".log")),
        "no gateway log among {files:?}"
    );
    for file in files {
        let bytes = fs::read(&file).unwrap_or_default();
        for secret in &secrets {
            assert!(
                !contains_bytes(&bytes, secret.as_bytes()),
                "{} contains an upstream password",
                file.display()
            );
        }
    }
}
