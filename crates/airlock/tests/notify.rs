//! Webhook notifications, end to end: a real PostgreSQL, the `airlock serve` binary with three
//! webhooks (json, slack, teams) pointing at a local receiver, and a held DELETE that is
//! approved. The receiver checks each payload's shape, the identity and the exact statement,
//! that no credential leaks, and that a webhook that is down at first delays nothing and is
//! retried, with every attempt listed by `airlock approvals show`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;

const HOOK_ENV: &str = "AIRLOCK_TEST_SLACK_HOOK";

/// The template config plus three webhooks on `receiver`; the Slack one, a secret, comes from
/// the environment as it would in production.
fn gateway(pg: &PgServer, receiver: &WebhookReceiver) -> Gateway {
    let yaml = format!(
        "{}notify:\n  - webhook: {}\n  - webhook: ${{env:{HOOK_ENV}}}\n    format: slack\n  \
         - webhook: {}\n    format: teams\n    events: [requested, decided]\n",
        template_config(pg, "60s"),
        receiver.url("/json"),
        receiver.url("/teams"),
    );
    let slack = receiver.url("/slack/T000/B000/secret-token");
    Gateway::start_with_env(&yaml, &[(PASSWORD_ENV, pg.password()), (HOOK_ENV, &slack)])
}

const SLACK: &str = "/slack/T000/B000/secret-token";

fn event_is(event: &'static str) -> impl Fn(&Value) -> bool {
    move |b| b["event"] == event
}

fn slack_text(body: &Value) -> String {
    body["blocks"].to_string()
}

#[test]
fn held_delete_notifies_every_webhook_in_its_format_and_its_decision() {
    let receiver = WebhookReceiver::start(0);
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = gateway(&pg, &receiver);
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);

    let sql = "DELETE FROM items WHERE id = 2";
    let mut held = gw.psql_spawn(&agent, "prod", sql);
    let id = held.wait_pending(&gw);
    let id_num: i64 = id.parse().unwrap();

    let json = receiver
        .wait_for("/json", 1, event_is("requested"))
        .remove(0);
    assert_eq!(json["version"], 1);
    let request = &json["request"];
    assert_eq!(request["id"], id_num);
    assert_eq!(request["operation"], sql);
    assert_eq!(request["connection"], "prod");
    assert_eq!(request["requester"]["name"], "agent-1");
    assert_eq!(
        request["requester"]["groups"],
        serde_json::json!(["agents"])
    );
    assert_eq!(request["statement_kinds"], serde_json::json!(["DELETE"]));
    assert_eq!(request["reviewers"], serde_json::json!(["dba"]));
    assert_eq!(request["state"], "pending");
    assert_eq!(
        json["links"]["approve_cli"],
        format!("airlock approve {id}")
    );
    assert_eq!(
        json["links"]["api"],
        format!("{}/api/v1/approvals/{id}", gw.server_url())
    );

    let slack = receiver.wait_for(SLACK, 1, |b| {
        b["blocks"][0]["text"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("waiting for review"))
    });
    let blocks = slack_text(&slack[0]);
    assert_eq!(slack[0]["blocks"][0]["type"], "header");
    assert!(blocks.contains(&format!("```{sql}```")), "{blocks}");
    assert!(blocks.contains("agent-1"), "{blocks}");
    assert!(
        blocks.contains(&format!("airlock approve {id}")),
        "{blocks}"
    );

    let teams = receiver.wait_for("/teams", 1, |_| true).remove(0);
    assert_eq!(teams["type"], "message");
    let card = &teams["attachments"][0]["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["body"][2]["text"], sql);
    assert!(card["body"][1].to_string().contains("agent-1"), "{card}");

    assert!(held.try_status().is_none(), "psql must still be held");
    let out = gw.cli_as(&dba, &["approve", &id, "--reason", "ticket OPS-42"]);
    assert!(out.status.success(), "approve: {}", describe(&out));
    let out = held.finish(WAIT);
    assert!(out.status.success(), "held DELETE: {}", describe(&out));
    assert_eq!(pg.item_ids(), "1,3");

    let decided = receiver.wait_for("/json", 1, event_is("decided")).remove(0);
    assert_eq!(decided["request"]["state"], "approved");
    assert_eq!(decided["request"]["reason"], "ticket OPS-42");
    assert_eq!(decided["request"]["votes"][0]["reviewer_name"], "dba-1");
    receiver.wait_for(SLACK, 1, |b| {
        b["blocks"][0]["text"]["text"] == format!("Approval request {id} was approved by dba-1")
    });
    receiver.wait_for("/teams", 2, |_| true);

    // No credential anywhere: not the upstream password, not a token; the Slack address (a
    // secret) is in no log line.
    let everything = receiver.all_text();
    assert!(!everything.contains(pg.password()), "{everything}");
    assert!(!everything.contains(&agent) && !everything.contains(&dba));
    assert!(!gw.log().contains("secret-token"), "{}", gw.log());

    let shown = gw.approval(&id);
    let deliveries = shown["deliveries"].as_array().expect("deliveries listed");
    for (event, webhook) in [
        ("requested", 0),
        ("requested", 1),
        ("requested", 2),
        ("decided", 0),
    ] {
        assert!(
            deliveries.iter().any(|d| d["event"] == event
                && d["webhook"] == webhook
                && d["delivered"] == true
                && d["status_code"] == 200),
            "no delivered {event} to webhook {webhook}: {deliveries:?}"
        );
    }
    assert!(!Value::Array(deliveries.clone())
        .to_string()
        .contains("secret-token"));
}

#[test]
fn a_webhook_that_is_down_delays_nothing_and_is_retried() {
    // The first two attempts on every path get a 500.
    let receiver = WebhookReceiver::start(2);
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = gateway(&pg, &receiver);
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);

    let sql = "DELETE FROM items WHERE id = 3";
    let mut held = gw.psql_spawn(&agent, "prod", sql);
    let id = held.wait_pending(&gw);
    let out = gw.cli_as(&dba, &["approve", &id]);
    assert!(out.status.success(), "approve: {}", describe(&out));
    let out = held.finish(WAIT);
    assert!(out.status.success(), "held DELETE: {}", describe(&out));
    assert_eq!(pg.item_ids(), "1,2");

    // Attempts 1 and 2 fail, 3 succeeds; then the decision goes through on its first try.
    let bodies = receiver.wait_for("/json", 4, |_| true);
    assert_eq!(bodies[0]["event"], "requested");
    assert_eq!(bodies[2]["event"], "requested");
    assert_eq!(bodies[3]["event"], "decided");

    let deadline = std::time::Instant::now() + WAIT;
    let deliveries = loop {
        let shown = gw.approval(&id);
        let list: Vec<Value> = shown["deliveries"]
            .as_array()
            .expect("deliveries listed")
            .iter()
            .filter(|d| d["webhook"] == 0)
            .cloned()
            .collect();
        if list.len() >= 4 || std::time::Instant::now() >= deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let summary: Vec<(String, i64, i64, bool)> = deliveries
        .iter()
        .map(|d| {
            (
                d["event"].as_str().unwrap().to_string(),
                d["attempt"].as_i64().unwrap(),
                d["status_code"].as_i64().unwrap(),
                d["delivered"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("requested".to_string(), 1, 500, false),
            ("requested".to_string(), 2, 500, false),
            ("requested".to_string(), 3, 200, true),
            ("decided".to_string(), 1, 200, true),
        ],
        "{deliveries:?}"
    );
    assert_eq!(
        deliveries[0]["target"],
        format!("http://127.0.0.1:{}/…", receiver.port)
    );

    // The text view lists the attempts too.
    let out = gw.cli(&["approvals", "show", &id]);
    let text = stdout_of(&out);
    assert!(text.contains("attempt 1: failed, HTTP 500"), "{text}");
    assert!(text.contains("attempt 3: delivered, HTTP 200"), "{text}");
    assert!(!receiver.all_text().contains(pg.password()));
}

#[test]
fn a_withdrawn_request_is_announced_as_canceled() {
    let receiver = WebhookReceiver::start(0);
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = gateway(&pg, &receiver);
    let agent = gw.mint("agent-1", &["agents"]);

    let sql = "DELETE FROM items WHERE id = 1";
    let mut held = gw.psql_spawn(&agent, "prod", sql);
    let id = held.wait_pending(&gw);
    receiver.wait_for("/json", 1, event_is("requested"));
    held.interrupt();
    let out = held.finish(WAIT);
    assert!(
        !out.status.success(),
        "the withdrawn DELETE: {}",
        describe(&out)
    );
    gw.wait_for_state(&id, "canceled");

    let canceled = receiver
        .wait_for("/json", 1, event_is("canceled"))
        .remove(0);
    assert_eq!(canceled["request"]["state"], "canceled");
    assert_eq!(canceled["request"]["operation"], sql);
    receiver.wait_for(SLACK, 1, |b| {
        b["blocks"][0]["text"]["text"] == format!("Approval request {id} was withdrawn")
    });
    // The Teams webhook asked for `requested` and `decided` only.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        receiver.bodies("/teams").len(),
        1,
        "{}",
        receiver.all_text()
    );
    assert_eq!(pg.item_ids(), "1,2,3");
}
