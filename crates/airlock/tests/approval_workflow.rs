//! The approval workflow's later parts, end to end with a real PostgreSQL, the `airlock serve`
//! binary, psql as the agent and the airlock CLI as the reviewers: the blast-radius preview
//! (counted against the real table, shown by `approvals show` and sent to webhooks, the write
//! never run), `rows_limit`, a request that outlives its client and runs once when re-sent
//! (`approval_window`), and reminders (`remind_after`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::process::Output;
use std::time::Duration;
use support::*;

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", describe(out));
}

/// Connection `prod` to `pg`; `agents` may read, and `rules` (YAML at rule indentation) decide
/// the rest; `extra` is appended (top-level sections).
fn config(pg: &PgServer, rules: &str, extra: &str) -> String {
    format!(
        "connections:\n{}policies:\n  - name: agents-on-prod\n    groups: [agents]\n    \
         connections: [prod]\n    rules:\n      - match: SELECT\n        action: allow\n{rules}{extra}",
        connection_yaml("prod", pg.port(), &format!("${{env:{PASSWORD_ENV}}}")),
    )
}

const HELD: &str = "      - match: DELETE|UPDATE|DROP|TRUNCATE|FUNCTION\n        action: require-approval\n        \
                    reviewers: [dba]\n        timeout: 60s\n";

fn requested(id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |b| b["event"] == "requested" && id_text(&b["request"]["id"]).as_deref() == Some(id)
}

#[test]
fn preview_counts_rows_and_sizes_tables_for_reviewers_and_webhooks() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    pg.psql_admin("ANALYZE items");
    let receiver = WebhookReceiver::start(0);
    let notify = format!(
        "notify:\n  - webhook: {}\n  - webhook: {}\n    format: slack\n  - webhook: {}\n    format: teams\n",
        receiver.url("/json"),
        receiver.url("/slack"),
        receiver.url("/teams")
    );
    let gw = Gateway::for_pg_config(&pg, &config(&pg, HELD, &notify));
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);

    // An UPDATE or DELETE: the rows it would touch, counted on the real table.
    let sql = "DELETE FROM items WHERE id >= 2";
    let mut psql = gw.psql_spawn(&agent, "prod", sql);
    let id = psql.wait_pending(&gw);
    let shown = gw.cli(&["approvals", "show", &id]);
    assert_ok(&shown, "approvals show");
    assert!(
        stdout_of(&shown).contains("DELETE items: 2 rows (counted)"),
        "{}",
        describe(&shown)
    );
    assert!(
        psql.wait_stderr_contains("Blast radius: DELETE items: 2 rows (counted)", WAIT),
        "the agent's NOTICE carries the preview: {}",
        psql.stderr()
    );
    let preview = &gw.approval(&id)["preview"];
    assert_eq!(preview["impacts"][0]["kind"], "rows", "{preview}");
    assert_eq!(preview["impacts"][0]["rows"], 2, "{preview}");
    assert_eq!(preview["impacts"][0]["exact"], true, "{preview}");
    let json = receiver.wait_for("/json", 1, requested(&id));
    assert_eq!(json[0]["request"]["preview"]["impacts"][0]["rows"], 2);
    let slack = receiver.wait_for("/slack", 1, |b| {
        b.to_string().contains(&format!("request {id} "))
    });
    assert!(slack[0]["blocks"]
        .to_string()
        .contains("DELETE items: 2 rows (counted)"));
    let teams = receiver.wait_for("/teams", 1, |b| {
        b.to_string().contains(&format!("request {id} "))
    });
    assert!(teams[0]
        .to_string()
        .contains("DELETE items: 2 rows (counted)"));
    assert!(
        !receiver.all_text().contains(pg.password()),
        "no credential in a payload"
    );
    // Counting never ran the write.
    assert_eq!(pg.item_ids(), "1,2,3");
    assert_ok(
        &gw.cli_as(&dba, &["deny", &id, "--reason", "not now"]),
        "deny",
    );
    assert!(!psql.finish(WAIT).status.success());

    // DROP TABLE and TRUNCATE: the table's row estimate and size.
    let mut psql = gw.psql_spawn(&agent, "prod", "DROP TABLE items");
    let id = psql.wait_pending(&gw);
    let preview = &gw.approval(&id)["preview"]["impacts"][0];
    assert_eq!(preview["kind"], "table", "{preview}");
    assert_eq!(preview["table"], "items", "{preview}");
    assert_eq!(preview["estimated_rows"], 3, "{preview}");
    assert!(preview["bytes"].as_i64().unwrap() > 0, "{preview}");
    assert!(stdout_of(&gw.cli(&["approvals", "show", &id])).contains("DROP TABLE items: ~3 rows"));
    assert_ok(&gw.cli_as(&dba, &["deny", &id, "--reason", "no"]), "deny");
    assert!(!psql.finish(WAIT).status.success());

    // A count that takes too long gives way to the planner's estimate.
    let slow = "DELETE FROM items USING generate_series(1, 2000000000) g WHERE items.id = g";
    let mut psql = gw.psql_spawn(&agent, "prod", slow);
    let id = psql.wait_pending(&gw);
    let preview = &gw.approval(&id)["preview"]["impacts"][0];
    assert_eq!(preview["kind"], "rows", "{preview}");
    assert_eq!(preview["exact"], false, "{preview}");
    assert!(
        preview["note"]
            .as_str()
            .unwrap()
            .contains("the count took longer than"),
        "{preview}"
    );
    assert_ok(&gw.cli_as(&dba, &["deny", &id, "--reason", "no"]), "deny");
    assert!(!psql.finish(WAIT).status.success());

    // A WHERE calling a function that could do something is not run, only estimated; and a
    // preview that fails says why without blocking the request.
    let risky = "DELETE FROM items WHERE pg_terminate_backend(id) AND id > 1";
    let mut psql = gw.psql_spawn(&agent, "prod", risky);
    let id = psql.wait_pending(&gw);
    let preview = &gw.approval(&id)["preview"]["impacts"][0];
    assert_eq!(preview["exact"], false, "{preview}");
    assert!(preview["note"]
        .as_str()
        .unwrap()
        .contains("pg_terminate_backend"));
    assert_ok(&gw.cli_as(&dba, &["deny", &id, "--reason", "no"]), "deny");
    assert!(!psql.finish(WAIT).status.success());
    let mut psql = gw.psql_spawn(&agent, "prod", "UPDATE missing_table SET a = 1");
    let id = psql.wait_pending(&gw);
    let preview = &gw.approval(&id)["preview"]["impacts"][0];
    assert_eq!(preview["kind"], "unavailable", "{preview}");
    assert!(
        preview["reason"]
            .as_str()
            .unwrap()
            .contains("missing_table"),
        "{preview}"
    );
    assert_ok(&gw.cli_as(&dba, &["deny", &id, "--reason", "no"]), "deny");
    assert!(!psql.finish(WAIT).status.success());
    assert_eq!(pg.item_ids(), "1,2,3");

    // A pipeline's `airlock exec` is shown the same preview.
    let out = gw.cli_as(&agent, &["exec", "prod", "--sql", sql]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(
        stdout_of(&out).contains("blast radius: DELETE items: 2 rows (counted)"),
        "{}",
        describe(&out)
    );
    let id = gw.wait_for_pending(sql);
    assert_ok(&gw.cli_as(&dba, &["deny", &id, "--reason", "no"]), "deny");
    assert_eq!(pg.item_ids(), "1,2,3");
}

#[test]
fn rows_limit_lets_small_counted_writes_through() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let rules = format!(
        "      - name: small-deletes\n        match: DELETE\n        rows_limit: 1\n        action: allow\n{HELD}"
    );
    let gw = Gateway::for_pg_config(&pg, &config(&pg, &rules, ""));
    let agent = gw.mint("agent-1", &["agents"]);

    // One row, counted: allowed at once.
    let out = gw.psql(&agent, "prod", "DELETE FROM items WHERE id = 1");
    assert_ok(&out, "a one-row delete");
    assert_eq!(pg.item_ids(), "2,3");
    // Two rows: over the limit, held.
    let sql = "DELETE FROM items WHERE id >= 2";
    let mut psql = gw.psql_spawn(&agent, "prod", sql);
    let id = psql.wait_pending(&gw);
    assert_eq!(gw.approval(&id)["preview"]["impacts"][0]["rows"], 2);
    assert_eq!(pg.item_ids(), "2,3");
    drop(psql);
    // `policy explain` takes the count as an input, as the decision does.
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "explain",
            "--group",
            "agents",
            "--connection",
            "prod",
            "--sql",
            sql,
        ];
        args.extend_from_slice(extra);
        let out = gw.cli(&args);
        assert_ok(&out, "policy explain");
        stdout_of(&out)
    };
    let uncounted = explain(&[]);
    assert!(uncounted.contains("require-approval"), "{uncounted}");
    assert!(
        uncounted.contains("the gateway counts the rows first"),
        "{uncounted}"
    );
    let counted = explain(&["--rows", "1"]);
    assert!(
        counted.contains("allow") && counted.contains("small-deletes"),
        "{counted}"
    );
    assert!(explain(&["--rows", "2"]).contains("require-approval"));
    // The allowed delete was recorded under the rule that allowed it.
    let sessions = gw.cli_json(&["sessions", "list"]);
    assert!(sessions.to_string().contains("agent-1"));
    let events = gw.cli(&["sessions", "show", "1", "--output", "json"]);
    assert!(
        stdout_of(&events).contains("small-deletes"),
        "{}",
        describe(&events)
    );
}

#[test]
fn approved_request_survives_its_client_and_runs_once_when_resent() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let rules = "      - match: DELETE\n        action: require-approval\n        reviewers: [dba]\n        \
                 timeout: 60s\n        approval_window: 5m\n      - match: UPDATE\n        \
                 action: require-approval\n        reviewers: [dba]\n        timeout: 3s\n        \
                 approval_window: 5m\n";
    let gw = Gateway::for_pg_config(&pg, &config(&pg, rules, ""));
    let agent = gw.mint("agent-1", &["agents"]);
    let other = gw.mint("agent-2", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);

    let sql = "DELETE FROM items WHERE id = 2";
    let mut psql = gw.psql_spawn(&agent, "prod", sql);
    let id = psql.wait_pending(&gw);
    // The client is killed while its statement is held.
    drop(psql);
    gw.wait_for_log("the requester went away", 1);
    assert_eq!(
        gw.approval_state(&id),
        "pending",
        "stays pending for its reviewers"
    );
    assert_ok(&gw.cli_as(&dba, &["approve", &id]), "approve");
    assert_eq!(gw.approval_state(&id), "approved");
    assert_eq!(pg.item_ids(), "1,2,3", "nothing runs without its requester");

    // Another identity sending the same statement does not get the approval.
    let mut psql = gw.psql_spawn(&other, "prod", sql);
    let other_id = psql.wait_pending(&gw);
    assert_ne!(other_id, id);
    drop(psql);
    assert_ok(
        &gw.cli_as(&dba, &["deny", &other_id, "--reason", "no"]),
        "deny",
    );

    // The requester reconnects and re-sends the identical statement: it runs, once.
    let out = gw.psql(&agent, "prod", sql);
    assert_ok(&out, "the re-sent statement");
    assert!(
        stderr_of(&out).contains(&format!("runs under approval request {id}")),
        "{}",
        describe(&out)
    );
    assert_eq!(pg.item_ids(), "1,3");
    let shown = stdout_of(&gw.cli(&["approvals", "show", &id]));
    assert!(shown.contains("ran at"), "{shown}");
    // Sent once more, it is a new request.
    let mut psql = gw.psql_spawn(&agent, "prod", sql);
    let again = psql.wait_pending(&gw);
    assert_ne!(again, id);
    drop(psql);

    // A different statement does not match the approval either.
    let third = "DELETE FROM items WHERE id = 3";
    let mut psql = gw.psql_spawn(&agent, "prod", third);
    let third_id = psql.wait_pending(&gw);
    drop(psql);
    assert_eq!(pg.item_ids(), "1,3");

    // Re-sent while its request is still pending, a statement waits on that request rather
    // than opening another one, and runs once it is approved.
    gw.wait_for_log("the requester went away", 4);
    let mut psql = gw.psql_spawn(&agent, "prod", third);
    assert!(
        psql.wait_stderr_contains(
            &format!("approval request {third_id} is waiting for review"),
            WAIT
        ),
        "{}",
        psql.stderr()
    );
    gw.wait_for_log("it waits on its earlier request", 1);
    assert_ok(&gw.cli_as(&dba, &["approve", &third_id]), "approve");
    let out = psql.finish(WAIT);
    assert_ok(&out, "the re-attached statement");
    assert_eq!(pg.item_ids(), "1");
    let pending = gw.cli_json(&["approvals", "list", "--state", "pending"]);
    assert!(
        !pending.to_string().contains(third),
        "no second request was opened: {pending}"
    );

    // Cancelling the query (a CancelRequest) still withdraws the request.
    let mut psql = gw.psql_spawn(&agent, "prod", "DELETE FROM items WHERE id = 1");
    let id = psql.wait_pending(&gw);
    psql.interrupt();
    assert!(!psql.finish(WAIT).status.success());
    gw.wait_for_state(&id, "canceled");

    // An abandoned request nobody decides still expires on time.
    let mut psql = gw.psql_spawn(&agent, "prod", "UPDATE items SET name = 'x' WHERE id = 1");
    let id = psql.wait_pending(&gw);
    drop(psql);
    gw.wait_for_state(&id, "expired");
}

#[test]
fn reviewers_are_reminded_of_pending_requests() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let receiver = WebhookReceiver::start(0);
    let rules = "      - match: DELETE\n        action: require-approval\n        reviewers: [dba]\n        \
                 timeout: 60s\n        remind_after: 1s\n";
    let notify = format!(
        "notify:\n  - webhook: {}\n  - webhook: {}\n    format: slack\n",
        receiver.url("/json"),
        receiver.url("/slack")
    );
    let gw = Gateway::for_pg_config(&pg, &config(&pg, rules, &notify));
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);

    let mut psql = gw.psql_spawn(&agent, "prod", "DELETE FROM items WHERE id = 2");
    let id = psql.wait_pending(&gw);
    let reminders = receiver.wait_for("/json", 2, |b| b["event"] == "reminder");
    assert_eq!(
        id_text(&reminders[0]["request"]["id"]).as_deref(),
        Some(id.as_str())
    );
    assert_eq!(reminders[0]["request"]["state"], "pending");
    let slack = receiver.wait_for("/slack", 1, |b| {
        b["blocks"]
            .to_string()
            .contains("is still waiting for review")
    });
    assert!(slack[0]["blocks"]
        .to_string()
        .contains(&format!("airlock approve {id}")));
    assert_ok(&gw.cli_as(&dba, &["approve", &id]), "approve");
    assert!(psql.finish(WAIT).status.success());
    assert_eq!(pg.item_ids(), "1,3");
    // No reminder after the decision.
    let before = receiver
        .bodies("/json")
        .iter()
        .filter(|b| b["event"] == "reminder")
        .count();
    std::thread::sleep(Duration::from_millis(2500));
    let after = receiver
        .bodies("/json")
        .iter()
        .filter(|b| b["event"] == "reminder")
        .count();
    assert_eq!(before, after, "reminders stop once the request is decided");
}

/// A statement sent with bound parameters (tokio-postgres, extended protocol) is previewed with
/// its values: the count runs on the real table with the same `$1`, and the write does not.
#[test]
fn preview_counts_a_statement_with_bound_parameters_using_their_values() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = Gateway::for_pg_config(&pg, &config(&pg, HELD, ""));
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);
    let rt = runtime();
    let (client, notices) = rt.block_on(gw.connect(&agent, "prod")).unwrap();
    let sql = "DELETE FROM items WHERE id < $1";
    let held = rt.spawn(async move { client.execute(sql, &[&3i32]).await });
    let id = gw.wait_for_pending(sql);

    let request = gw.approval(&id);
    assert_eq!(request["params"], serde_json::json!(["3"]));
    let impact = &request["preview"]["impacts"][0];
    assert_eq!(impact["kind"], "rows", "{impact}");
    assert_eq!(impact["rows"], 2, "{impact}");
    assert_eq!(impact["exact"], true, "{impact}");
    let shown = gw.cli(&["approvals", "show", &id]);
    assert!(
        stdout_of(&shown).contains("DELETE items: 2 rows (counted)"),
        "{}",
        describe(&shown)
    );
    assert_eq!(pg.item_ids(), "1,2,3", "counting never runs the write");

    assert_ok(
        &gw.cli_as(&dba, &["approve", &id, "--reason", "two rows, as expected"]),
        "approve",
    );
    let deleted = rt
        .block_on(held)
        .unwrap()
        .expect("the approved DELETE runs");
    assert_eq!(deleted, 2);
    assert_eq!(pg.item_ids(), "3");
    assert!(
        notices
            .all()
            .iter()
            .any(|n| n.contains("Blast radius: DELETE items: 2 rows (counted)")),
        "the agent's NOTICE carries the preview: {:?}",
        notices.all()
    );
}

/// A gateway killed while a request waits picks the request up when it starts again: no
/// session waits for it any more, yet its reminders go on and it expires at its timeout with no
/// vote, announced like any expiry.
#[test]
fn a_request_left_pending_by_a_killed_gateway_is_reminded_and_expires_after_a_restart() {
    let receiver = WebhookReceiver::start(0);
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let rules = "      - match: DELETE\n        action: require-approval\n        reviewers: [dba]\n        \
                 timeout: 15s\n        remind_after: 1s\n";
    let extra = format!("notify:\n  - webhook: {}\n", receiver.url("/json"));
    let mut gw = Gateway::for_pg_config(&pg, &config(&pg, rules, &extra));
    let agent = gw.mint("agent-restart", &["agents"]);
    let sql = "DELETE FROM items WHERE id = 1";
    let psql = gw.psql_spawn(&agent, "prod", sql);
    let id = gw.wait_for_pending(sql);
    receiver.wait_for("/json", 1, requested(&id));

    gw.kill();
    // Still pending once the gateway is gone: only the restarted one can settle it.
    assert_eq!(stored_state(&gw, &id), "pending");
    let reminded = |b: &Value| {
        b["event"] == "reminder" && id_text(&b["request"]["id"]).as_deref() == Some(id.as_str())
    };
    let before = receiver
        .bodies("/json")
        .iter()
        .filter(|b| reminded(b))
        .count();
    gw.restart();

    receiver.wait_for("/json", before + 1, reminded);
    let expired = receiver.wait_for("/json", 1, |b| {
        b["event"] == "expired" && id_text(&b["request"]["id"]).as_deref() == Some(id.as_str())
    });
    assert_eq!(expired[0]["request"]["state"], "expired");
    assert_eq!(gw.approval_state(&id), "expired");
    assert!(gw.approval(&id)["votes"].as_array().unwrap().is_empty());
    drop(psql);
    assert_eq!(pg.item_ids(), "1,2,3");
}

/// An escalation that fell due while the gateway was down is announced when it starts again.
#[test]
fn an_escalation_due_while_the_gateway_was_down_is_announced_after_a_restart() {
    let receiver = WebhookReceiver::start(0);
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let rules = "      - match: DELETE\n        action: require-approval\n        reviewers: [dba]\n        \
                 timeout: 60s\n        escalate_after: 5s\n        escalate_to: [security]\n";
    let extra = format!("notify:\n  - webhook: {}\n", receiver.url("/json"));
    let mut gw = Gateway::for_pg_config(&pg, &config(&pg, rules, &extra));
    let agent = gw.mint("agent-restart", &["agents"]);
    let sql = "DELETE FROM items WHERE id = 1";
    let psql = gw.psql_spawn(&agent, "prod", sql);
    let id = gw.wait_for_pending(sql);
    let escalate_at = gw.approval(&id)["escalate_at"].as_i64().unwrap();
    gw.kill();
    drop(psql);
    let escalated = |b: &Value| {
        b["event"] == "escalated" && id_text(&b["request"]["id"]).as_deref() == Some(id.as_str())
    };
    assert_eq!(
        receiver
            .bodies("/json")
            .iter()
            .filter(|b| escalated(b))
            .count(),
        0,
        "not escalated before the gateway was killed"
    );
    wait_until(WAIT, "the escalation time to pass", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        (now > escalate_at).then_some(())
    });

    gw.restart();
    let announced = receiver.wait_for("/json", 1, escalated);
    assert_eq!(announced[0]["request"]["state"], "pending");
    assert_eq!(stored_state(&gw, &id), "pending");
}

/// A request's state as the store holds it, read from the SQLite file: the gateway may be down.
fn stored_state(gw: &Gateway, id: &str) -> String {
    let url = format!("sqlite://{}", gw.db_file().display());
    let id: i64 = id.parse().unwrap();
    runtime().block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let state = sqlx::query_scalar("SELECT state FROM approvals WHERE id = ?")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        state
    })
}
