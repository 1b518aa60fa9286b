//! `airlock audit verify` end to end: statements run through psql and the real gateway are
//! recorded in an intact chain; an event edited in the SQLite file behind the gateway's back is
//! reported by id, over the API and offline (`--db`), with exit status 1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;

#[test]
fn audit_verify_passes_on_a_clean_log_and_names_an_edited_event() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = Gateway::for_pg(&pg, "60s");
    let agent = gw.mint("agent-1", &["agents"]);
    for sql in ["SELECT 1", "SELECT 'audit me'", "TRUNCATE items"] {
        gw.psql(&agent, "prod", sql);
    }

    let out = gw.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout_of(&out);
    assert!(text.contains("events verified"), "{text}");
    let report = gw.cli_json(&["audit", "verify"]);
    assert_eq!(report["ok"], Value::Bool(true));
    assert_eq!(report["first_break"], Value::Null);
    // Three statements and the outcomes of the two that ran.
    assert!(report["events_checked"].as_u64().unwrap() >= 5, "{report}");

    let db = gw.db_file();
    let db_arg = db.to_str().unwrap();
    let offline = gw.cli(&["audit", "verify", "--db", db_arg]);
    assert!(offline.status.success(), "{}", describe(&offline));

    // Rewrite what the agent ran, as someone with access to the file would.
    let edited = edit_event(&db, "audit me", "nothing to see");
    let out = gw.cli(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stdout_of(&out).contains(&format!("broken at event {edited}:")),
        "{}",
        describe(&out)
    );
    let out = gw.cli(&["--output", "json", "audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let report: Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(report["ok"], Value::Bool(false));
    assert_eq!(report["first_break"]["id"].as_i64(), Some(edited));

    let offline = gw.cli(&["audit", "verify", "--db", db_arg]);
    assert_eq!(offline.status.code(), Some(1), "{}", describe(&offline));
    assert!(stdout_of(&offline).contains(&format!("event {edited}")));
}

/// Replaces `from` with `to` in the one stored event whose detail contains `from`, directly in
/// the SQLite file; returns that event's id.
fn edit_event(db: &std::path::Path, from: &str, to: &str) -> i64 {
    let url = format!("sqlite://{}", db.display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        // The gateway copies its journal into the file shortly after each statement.
        let id = wait_for_event(&pool, from).await;
        sqlx::query("UPDATE events SET detail = replace(detail, ?, ?) WHERE id = ?")
            .bind(from)
            .bind(to)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        id
    })
}

async fn wait_for_event(pool: &sqlx::SqlitePool, text: &str) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM events WHERE instr(detail, ?) > 0 ORDER BY id")
                .bind(text)
                .fetch_optional(pool)
                .await
                .unwrap();
        if let Some(id) = id {
            return id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no event mentions {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
