//! The CLI commands that need no server: `config check` and `policy explain --config`, run as
//! the real binary, checking output and exit status. Also the errors a user meets before any
//! server is involved (no token, an unreachable server, unsupported options).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

const CONFIG: &str = r#"connections:
  - name: prod
    type: postgres
    address: db.internal:5432
    database: app
    user: maintenance
    password: not-a-real-password
policies:
  - name: maintenance
    groups: [db-maintenance-agents]
    connections: [prod]
    rules:
      - match: SELECT
        action: allow
      - match: DELETE|DROP|UPDATE
        action: require-approval
        reviewers: [dba]
        approvals: 2
        timeout: 15m
      - name: never-truncate
        match: TRUNCATE
        action: deny
        reason: truncating prod is never allowed
"#;

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `airlock ARGS` in `cwd`, with no server or token in the environment.
fn airlock(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(args)
        .current_dir(cwd)
        .env_remove("AIRLOCK_TOKEN")
        .env_remove("AIRLOCK_SERVER")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn config_check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "airlock.yaml", CONFIG);
    let out = airlock(dir.path(), &["config", "check", "airlock.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "airlock.yaml: ok (1 connections, 1 policies)\n"
    );

    let out = airlock(
        dir.path(),
        &["config", "check", "airlock.yaml", "--output", "json"],
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["connections"], 1);
}

#[test]
fn config_check_reports_every_error_with_its_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let broken = CONFIG
        .replace("match: SELECT", "match: SELEKT")
        .replace("connections: [prod]", "connections: [nope]")
        .replace("approvals: 2", "approvals: 0");
    write(&dir, "broken.yaml", &broken);
    let out = airlock(dir.path(), &["config", "check", "broken.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let errors = stderr(&out);
    let lines: Vec<&str> = errors.lines().collect();
    assert!(
        lines
            .contains(&"broken.yaml:11: policies[0].connections[0]: no connection is named `nope`"),
        "{errors}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(
            "broken.yaml:13: policies[0].rules[0].match: unknown statement kind `SELEKT`"
        )),
        "{errors}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("broken.yaml:18: policies[0].rules[1].approvals:")),
        "{errors}"
    );
    assert_eq!(stdout(&out), "");

    let out = airlock(
        dir.path(),
        &["config", "check", "broken.yaml", "--output", "json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 3, "{doc}");
    assert_eq!(doc["errors"][0]["line"], 11);

    let out = airlock(dir.path(), &["config", "check", "missing.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("missing.yaml: cannot read"));

    let out = airlock(dir.path(), &["config", "check", "/"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn config_check_refuses_yaml_that_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "typo.yaml", "connections:\n  - name: [unclosed\n");
    let out = airlock(dir.path(), &["config", "check", "typo.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("typo.yaml:"), "{}", stderr(&out));
}

fn explain(dir: &TempDir, extra: &[&str]) -> Output {
    let mut args = vec![
        "policy",
        "explain",
        "--config",
        "airlock.yaml",
        "--connection",
        "prod",
    ];
    args.extend(extra);
    airlock(dir.path(), &args)
}

#[test]
fn explain_with_a_config_decides_locally() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "airlock.yaml", CONFIG);

    let out = explain(
        &dir,
        &[
            "--group",
            "db-maintenance-agents",
            "--sql",
            "SELECT * FROM users",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("decision:        allow"), "{text}");
    assert!(text.contains("policy:          maintenance"), "{text}");
    assert!(text.contains("rule:            match: SELECT"), "{text}");
    assert!(text.contains("statement kinds: SELECT"), "{text}");

    // Hidden writes are found by the parser, whatever the spelling.
    let out = explain(
        &dir,
        &[
            "--group",
            "someone,db-maintenance-agents",
            "--sql",
            "/* harmless */ with d as (delete from users returning *) select * from d",
        ],
    );
    let text = stdout(&out);
    assert!(text.contains("decision:        require-approval"), "{text}");
    assert!(
        text.contains("reviewers:       dba (2 approvals needed, auto-rejected after 15m)"),
        "{text}"
    );
    assert!(text.contains("statement kinds: SELECT, DELETE"), "{text}");

    let out = explain(
        &dir,
        &[
            "--group",
            "db-maintenance-agents",
            "--sql",
            "select 1; truncate users",
            "--output",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["decision"]["action"], "deny");
    assert_eq!(
        doc["decision"]["reason"],
        "truncating prod is never allowed"
    );
    assert_eq!(doc["decision"]["rule"], "never-truncate");
    assert_eq!(
        doc["statement_kinds"],
        serde_json::json!(["SELECT", "TRUNCATE"])
    );

    let out = explain(&dir, &["--group", "marketing", "--sql", "select 1"]);
    let text = stdout(&out);
    assert!(text.contains("decision:        deny"), "{text}");
    assert!(text.contains("no policy"), "{text}");
}

#[test]
fn explain_refuses_what_it_cannot_answer() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "airlock.yaml", CONFIG);

    for (option, value) in [("--command", "rm -rf /"), ("--http", "DELETE /api/v1/pods")] {
        let out = explain(&dir, &["--group", "g", option, value]);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains("not supported by this version yet"), "{err}");
    }
    let out = explain(
        &dir,
        &["--group", "g", "--sql", "select 1", "--connection", "x"],
    );
    assert_eq!(out.status.code(), Some(1), "clap refuses a repeated option");
    let out = airlock(
        dir.path(),
        &[
            "policy",
            "explain",
            "--config",
            "airlock.yaml",
            "--connection",
            "nope",
            "--group",
            "g",
            "--sql",
            "select 1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no connection is named `nope`"));
    // Usage errors exit 1 too, never 2.
    let out = explain(&dir, &["--group", "g"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn server_commands_explain_a_missing_token_or_server() {
    let dir = tempfile::tempdir().unwrap();
    let out = airlock(dir.path(), &["approvals", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: no API token"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // The bootstrap admin token is picked up from ./airlock-data/admin.token.
    std::fs::create_dir(dir.path().join("airlock-data")).unwrap();
    write(&dir, "airlock-data/admin.token", "alk_from_the_file\n");
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let server = format!("http://127.0.0.1:{port}");
    let out = airlock(dir.path(), &["--server", &server, "tokens", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("error: cannot reach the Airlock server at {server}: connection refused\n")
    );

    let out = airlock(dir.path(), &["deny", "3"]);
    assert_eq!(out.status.code(), Some(1), "a denial needs --reason");
    let out = airlock(dir.path(), &["approve", "3", "--replace-with", " "]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--replace-with needs the statement"));
}

#[test]
fn help_says_where_the_token_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let out = airlock(dir.path(), &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    assert!(help.contains("airlock-data/admin.token"), "{help}");
    assert!(help.contains("AIRLOCK_TOKEN"), "{help}");
}
