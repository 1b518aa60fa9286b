//! The record in depth, end to end through the real gateway, a real PostgreSQL, psql,
//! tokio-postgres and the airlock CLI: `sessions replay` tells a session's story (parameters,
//! decisions, the reviewer and their reason, rows, errors); `sessions export` filters by
//! connection, identity and time and pages through more events than one store read; signed
//! checkpoints catch a chain rewritten from end to end in the SQLite file (with or without its
//! checkpoints); retention prunes old sessions and `audit verify` still passes from the anchor.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

/// Connections `prod` and `staging` to `pg`, the template policy on both, and `extra`.
fn two_connections(pg: &PgServer, extra: &str) -> String {
    let password = format!("${{env:{PASSWORD_ENV}}}");
    format!(
        "connections:\n{}{}{}{extra}",
        connection_yaml("prod", pg.port(), &password),
        connection_yaml("staging", pg.port(), &password),
        policy_yaml(&["prod", "staging"], "60s"),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The id of the (only) session of `name` on `connection`, from `sessions list`.
fn session_id(gw: &Gateway, name: &str, connection: &str) -> Option<i64> {
    let list = gw.cli_json(&["sessions", "list"]);
    list.as_array()?
        .iter()
        .find(|s| s["display_name"] == name && s["connection"] == connection)
        .and_then(|s| s["id"].as_i64())
}

fn jsonl(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", describe(out));
    stdout_of(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn replay_and_export_tell_what_happened() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = Gateway::for_pg_config(&pg, &two_connections(&pg, ""));
    let agent = gw.mint("agent-1", &["agents"]);
    let other = gw.mint("agent-2", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);
    const HELD: &str = "DELETE FROM items WHERE id = 3";

    // One session of agent-1 on prod: a read with a parameter, an upstream error, a denial and
    // a statement held until a reviewer approves it.
    let rt = runtime();
    let (client, _notices) = rt.block_on(gw.connect(&agent, "prod")).expect("connect");
    rt.block_on(async {
        let rows = client
            .query("SELECT $1::text AS v", &[&"replay me"])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        let missing = client.batch_execute("SELECT * FROM no_such_table").await;
        assert!(missing.is_err());
        let denied = client.batch_execute("TRUNCATE items").await.unwrap_err();
        let denied = format!("{denied:?}");
        assert!(denied.contains(TRUNCATE_REASON), "{denied}");
    });
    std::thread::scope(|scope| {
        let reviewer = scope.spawn(|| {
            let id = gw.wait_for_pending(HELD);
            let out = gw.cli_as(&dba, &["approve", &id, "--reason", "gamma is obsolete"]);
            assert!(out.status.success(), "{}", describe(&out));
        });
        let deleted = rt.block_on(client.execute(HELD, &[]));
        reviewer.join().unwrap();
        assert_eq!(deleted.unwrap(), 1);
    });
    drop(client);

    // agent-2 on staging, with more events than one page of an export.
    rt.block_on(async {
        let (client, _notices) = gw.connect(&other, "staging").await.expect("connect");
        client.batch_execute("SELECT 'from staging'").await.unwrap();
        for _ in 0..300 {
            client.batch_execute("SELECT 1").await.unwrap();
        }
    });

    let id = session_id(&gw, "agent-1", "prod").expect("agent-1's session is listed");
    let out = gw.cli(&["sessions", "replay", &id.to_string()]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout_of(&out);
    for needle in [
        &format!("Session {id}: agent-1") as &str,
        "4 statements",
        "SELECT $1::text AS v",
        "parameters: $1 = 'replay me'",
        "allowed (SELECT) by policy agents-on-prod",
        "→ ok, SELECT 1, 1 row",
        "SELECT * FROM no_such_table",
        "→ ERROR",
        "does not exist",
        "DENIED (TRUNCATE)",
        TRUNCATE_REASON,
        HELD,
        "held for approval, request",
        "APPROVED after",
        "approved by dba-1 [dba]",
        "\"gamma is obsolete\"",
        "→ ok, DELETE 1, 1 row",
    ] {
        assert!(text.contains(needle), "replay lacks {needle:?}:\n{text}");
    }
    // In the order they happened.
    let order = ["replay me", "no_such_table", "TRUNCATE", HELD];
    let positions: Vec<usize> = order.iter().map(|n| text.find(n).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");

    let replay = gw.cli_json(&["sessions", "replay", &id.to_string()]);
    let steps = replay["timeline"].as_array().unwrap();
    assert_eq!(steps.len(), 4, "{replay}");
    assert_eq!(steps[0]["params"][0], "replay me");
    assert_eq!(steps[0]["outcomes"][0]["rows"], 1);
    assert_eq!(steps[1]["outcomes"][0]["status"], "error");
    assert_eq!(steps[2]["action"], "deny");
    assert_eq!(steps[2]["outcomes"].as_array().unwrap().len(), 0);
    let approval = &steps[3]["approval"];
    assert_eq!(approval["state"], "approved");
    assert_eq!(approval["votes"][0]["reviewer_name"], "dba-1");
    assert_eq!(approval["votes"][0]["reason"], "gamma is obsolete");
    assert_eq!(steps[3]["outcomes"][0]["tag"], "DELETE 1");

    // `sessions show` lists the votes too.
    let show = gw.cli(&["sessions", "show", &id.to_string()]);
    assert!(
        stdout_of(&show).contains("approved by dba-1 at"),
        "{}",
        describe(&show)
    );

    // Export: by connection, by identity, both, by time; every page of the long session.
    let staging = jsonl(&gw.cli(&["sessions", "export", "--connection", "staging"]));
    assert!(staging.iter().all(|r| r["connection"] == "staging"));
    assert!(staging
        .iter()
        .any(|r| r["operation"] == "SELECT 'from staging'"));
    let listed = gw.cli_json(&["sessions", "list"]);
    let staging_events: i64 = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["connection"] == "staging")
        .map(|s| s["event_count"].as_i64().unwrap())
        .sum();
    assert!(staging_events > 600, "{staging_events}");
    assert_eq!(staging.len() as i64, staging_events);
    let ids: Vec<i64> = staging
        .iter()
        .map(|r| r["event_id"].as_i64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in event order, once each"
    );

    let mine = jsonl(&gw.cli(&["sessions", "export", "--identity", "agent-1"]));
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|r| r["display_name"] == "agent-1"));
    assert!(mine
        .iter()
        .any(|r| r["kind"] == "resolution" && r["votes"][0]["reason"] == "gamma is obsolete"));
    let by_subject = jsonl(&gw.cli(&[
        "sessions",
        "export",
        "--identity",
        mine[0]["subject"].as_str().unwrap(),
    ]));
    assert_eq!(by_subject.len(), mine.len());

    let csv = gw.cli(&[
        "sessions",
        "export",
        "--format",
        "csv",
        "--connection",
        "prod",
        "--identity",
        "agent-1",
    ]);
    assert!(csv.status.success(), "{}", describe(&csv));
    let csv = stdout_of(&csv);
    assert!(csv.starts_with("session_id,protocol,connection,"), "{csv}");
    assert!(csv.contains(",replaced_with,votes,"), "{csv}");
    assert!(csv.contains("gamma is obsolete"), "{csv}");
    assert!(!csv.contains("from staging"), "{csv}");
    let nobody = jsonl(&gw.cli(&[
        "sessions",
        "export",
        "--connection",
        "prod",
        "--identity",
        "agent-2",
    ]));
    assert!(nobody.is_empty(), "{nobody:?}");
    let future = jsonl(&gw.cli(&["sessions", "export", "--since", "2999-01-01"]));
    assert!(future.is_empty());
    // An agent exports only its own sessions, whatever it asks for.
    let theirs = jsonl(&gw.cli_as(&other, &["sessions", "export", "--identity", "agent-1"]));
    assert!(theirs.is_empty(), "{theirs:?}");
}

/// `audit verify --output json`, as admin.
fn verify_report(gw: &Gateway) -> Value {
    let out = gw.cli(&["--output", "json", "audit", "verify"]);
    serde_json::from_str(&stdout_of(&out)).unwrap_or_else(|_| panic!("{}", describe(&out)))
}

fn sqlite<T>(db: &Path, work: impl AsyncFnOnce(&sqlx::SqlitePool) -> T) -> T {
    let url = format!("sqlite://{}", db.display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let result = work(&pool).await;
        pool.close().await;
        result
    })
}

fn max_event(db: &Path) -> i64 {
    sqlite(db, async |pool| {
        sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(id) FROM events")
            .fetch_one(pool)
            .await
            .unwrap()
            .unwrap_or(0)
    })
}

/// Waits until a valid checkpoint covers every stored event.
fn wait_signed(gw: &Gateway) -> Value {
    wait_until(WAIT, "a checkpoint over the whole chain", || {
        let head = max_event(&gw.db_file());
        let report = verify_report(gw);
        (report["ok"] == true && head > 0 && report["signed_through"].as_i64() == Some(head))
            .then_some(report)
    })
}

/// Replaces `from` with `to` in the event that holds it and recomputes every hash after it,
/// as someone with write access to the file but not the key would.
fn rewrite_chain(db: &Path, from: &str, to: &str) -> i64 {
    sqlite(db, async |pool| {
        let edited: i64 = sqlx::query_scalar("SELECT id FROM events WHERE instr(detail, ?) > 0")
            .bind(from)
            .fetch_one(pool)
            .await
            .unwrap();
        sqlx::query("UPDATE events SET detail = replace(detail, ?, ?) WHERE id = ?")
            .bind(from)
            .bind(to)
            .bind(edited)
            .execute(pool)
            .await
            .unwrap();
        let rows: Vec<(i64, i64, i64, String, String)> = sqlx::query_as(
            "SELECT id, session_id, at, detail, prev_hash FROM events WHERE id >= ? ORDER BY id",
        )
        .bind(edited)
        .fetch_all(pool)
        .await
        .unwrap();
        let mut prev = rows[0].4.clone();
        for (id, session, at, detail, _) in rows {
            let hash = airlock_core::chain::event_hash(&prev, id, session, at, &detail);
            sqlx::query("UPDATE events SET prev_hash = ?, hash = ? WHERE id = ?")
                .bind(&prev)
                .bind(&hash)
                .bind(id)
                .execute(pool)
                .await
                .unwrap();
            prev = hash;
        }
        edited
    })
}

#[test]
fn signed_checkpoints_catch_a_rewritten_chain() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let yaml = format!(
        "{}recording:\n  checkpoint_interval: 1s\n",
        template_config(&pg, "60s")
    );
    let gw = Gateway::for_pg_config(&pg, &yaml);
    let agent = gw.mint("agent-1", &["agents"]);
    assert!(gw
        .psql(&agent, "prod", "SELECT 'audit me'")
        .status
        .success());
    // History that spans more than two checkpoint intervals.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(gw.psql(&agent, "prod", "SELECT 'later'").status.success());

    let key = gw.dir().join("data").join("audit-signing.key");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the signing key is private");
    }
    let report = wait_signed(&gw);
    assert!(
        report["checkpoints_checked"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let out = gw.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout_of(&out).contains("signed checkpoints"),
        "{}",
        describe(&out)
    );
    let db = gw.db_file();
    let db_arg = db.to_str().unwrap();
    let offline = gw.cli(&["audit", "verify", "--db", db_arg]);
    assert!(offline.status.success(), "{}", describe(&offline));

    // Every hash recomputed: the chain itself is consistent again, the checkpoints are not.
    rewrite_chain(&db, "audit me", "nothing to see");
    let out = gw.cli(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stdout_of(&out).contains("rewritten"), "{}", describe(&out));
    let offline = gw.cli(&["audit", "verify", "--db", db_arg]);
    assert_eq!(offline.status.code(), Some(1), "{}", describe(&offline));

    // Without the checkpoints, the long unsigned history gives the rewrite away; and the
    // running gateway refuses to sign a chain that does not continue what it signed.
    sqlite(&db, async |pool| {
        sqlx::query("DELETE FROM checkpoints")
            .execute(pool)
            .await
            .unwrap();
    });
    wait_until(WAIT, "the gateway to refuse signing", || {
        gw.log().contains("refusing to sign").then_some(())
    });
    // A checkpoint signed just before the first delete may have landed after it; once the
    // gateway refuses to sign, none can come any more.
    sqlite(&db, async |pool| {
        sqlx::query("DELETE FROM checkpoints")
            .execute(pool)
            .await
            .unwrap();
    });
    let out = gw.cli(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stdout_of(&out).contains("not covered by a signed checkpoint"),
        "{}",
        describe(&out)
    );
    // Offline, told the configured interval, the same.
    let offline = gw.cli(&[
        "audit",
        "verify",
        "--db",
        db_arg,
        "--checkpoint-interval",
        "1s",
    ]);
    assert_eq!(offline.status.code(), Some(1), "{}", describe(&offline));
    assert!(
        stdout_of(&offline).contains("not covered by a signed checkpoint"),
        "{}",
        describe(&offline)
    );
    // What the gateway records next does not chain onto the rewrite either.
    assert!(gw
        .psql(&agent, "prod", "SELECT 'after the rewrite'")
        .status
        .success());
    let out = gw.cli(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    // Someone else's key proves nothing.
    let offline = gw.cli(&[
        "audit",
        "verify",
        "--db",
        db_arg,
        "--public-key",
        &"11".repeat(32),
    ]);
    assert_eq!(offline.status.code(), Some(1), "{}", describe(&offline));
}

#[test]
fn retention_prunes_old_sessions_and_verify_still_passes() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let yaml = format!(
        "{}recording:\n  retention: 5s\n  checkpoint_interval: 1s\n",
        template_config(&pg, "60s")
    );
    let gw = Gateway::for_pg_config(&pg, &yaml);
    let old = gw.mint("old-agent", &["agents"]);
    let current = gw.mint("current-agent", &["agents"]);
    assert!(gw.psql(&old, "prod", "SELECT 'old news'").status.success());
    let old_id = session_id(&gw, "old-agent", "prod").unwrap();
    // A checkpoint over the old session alone, before the current one begins.
    wait_signed(&gw);

    let rt = runtime();
    rt.block_on(async {
        let (client, _notices) = gw.connect(&current, "prod").await.expect("connect");
        // The current session stays active while the old one ages out.
        let deadline = Instant::now() + WAIT;
        loop {
            client.batch_execute("SELECT 'still here'").await.unwrap();
            if session_id(&gw, "old-agent", "prod").is_none() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the old session was not pruned\n{}",
                tail(&gw.log(), 20)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(session_id(&gw, "current-agent", "prod").is_some());

        let report = verify_report(&gw);
        assert_eq!(report["ok"], true, "{report}");
        assert!(report["pruned_through"].as_i64().unwrap() > 0, "{report}");
        let out = gw.cli(&["audit", "verify"]);
        assert!(out.status.success(), "{}", describe(&out));
        assert!(
            stdout_of(&out).contains("pruned by retention"),
            "{}",
            describe(&out)
        );

        // The gateway goes on recording and signing from the anchor.
        client
            .batch_execute("SELECT 'after the prune'")
            .await
            .unwrap();
    });
    wait_signed(&gw);
    let db = gw.db_file();
    let offline = gw.cli(&["audit", "verify", "--db", db.to_str().unwrap()]);
    assert!(offline.status.success(), "{}", describe(&offline));
    let (old_events, old_sessions): (i64, i64) = sqlite(&db, async |pool| {
        sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM events WHERE instr(detail, 'old news') > 0), \
             (SELECT COUNT(*) FROM sessions WHERE id = ?)",
        )
        .bind(old_id)
        .fetch_one(pool)
        .await
        .unwrap()
    });
    assert_eq!((old_events, old_sessions), (0, 0));
    let out = gw.cli(&["sessions", "show", &old_id.to_string()]);
    assert!(!out.status.success(), "{}", describe(&out));
}
