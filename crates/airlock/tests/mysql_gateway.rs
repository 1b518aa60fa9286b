//! The MySQL adapter end to end: a real MariaDB upstream, the `airlock serve` binary, and real
//! clients (the `mariadb` CLI and mysql_async). Every test starts its own MariaDB and gateway
//! on free loopback ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mariadb.rs"]
mod mariadb;
mod support;

use mariadb::*;
use mysql_async::prelude::*;
use std::time::Duration;
use support::*;

const LONG: &str = "60s";

/// A running upstream and gateway with an agent (`agents`) and a reviewer (`dba`), on
/// connection `prod` with the template policy (reads run; DELETE, DROP and UPDATE wait for
/// `dba`; TRUNCATE is denied).
struct Story {
    db: MariaDb,
    gw: Gateway,
    agent: String,
    dba: String,
}

fn story(timeout: &str) -> Story {
    let db = MariaDb::start();
    let yaml = format!(
        "connections:\n{}{}",
        mysql_connection_yaml("prod", db.port(), &format!("${{env:{PASSWORD_ENV}}}")),
        policy_yaml(&["prod"], timeout)
    );
    let gw = Gateway::start_with_env(&yaml, &[(PASSWORD_ENV, db.password())]);
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);
    Story { db, gw, agent, dba }
}

fn opts(gw: &Gateway, token: &str, connection: &str) -> mysql_async::Opts {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(mysql_port(gw))
        .user(Some("agent"))
        .pass(Some(token))
        .db_name(Some(connection))
        .enable_cleartext_plugin(true)
        .prefer_socket(false)
        .into()
}

async fn connect(gw: &Gateway, token: &str) -> mysql_async::Conn {
    mysql_async::Conn::new(opts(gw, token, "prod"))
        .await
        .expect("connect through the gateway")
}

fn server_error(e: mysql_async::Error) -> mysql_async::ServerError {
    match e {
        mysql_async::Error::Server(e) => e,
        other => panic!("expected a server error, got {other:?}"),
    }
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ok_stdout(out: &std::process::Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", describe(out));
    stdout_of(out)
}

#[test]
fn reads_run_refusals_say_why_and_logins_are_checked() {
    let s = story(LONG);
    let out = mariadb(
        &s.gw,
        &s.agent,
        "prod",
        "select id, name from items order by id",
    );
    assert_eq!(ok_stdout(&out, "select"), "1\talpha\n2\tbeta\n3\tgamma\n");

    let out = mariadb(&s.gw, &s.agent, "prod", "truncate table items");
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("ERROR 1142 (42000)"), "{err}");
    assert!(err.contains(TRUNCATE_REASON), "{err}");
    assert_eq!(s.db.item_ids(), "1,2,3");

    // Unparseable SQL and statements no rule names are denied by default.
    let out = mariadb(&s.gw, &s.agent, "prod", "insert into items values (9, 'x')");
    assert!(
        stderr_of(&out).contains("ERROR 1142 (42000)"),
        "{}",
        describe(&out)
    );
    let out = mariadb(&s.gw, &s.agent, "prod", "selec 1 frm items");
    assert!(
        stderr_of(&out).contains("ERROR 1142 (42000)"),
        "{}",
        describe(&out)
    );

    let out = mariadb(&s.gw, "not-a-token", "prod", "select 1");
    assert!(
        stderr_of(&out).contains("ERROR 1045 (28000)"),
        "{}",
        describe(&out)
    );
    let out = mariadb(&s.gw, &s.agent, "nope", "select 1");
    assert!(
        stderr_of(&out).contains("ERROR 1049 (42000)"),
        "{}",
        describe(&out)
    );
    let outsider = s.gw.mint("outsider", &["nobody"]);
    let out = mariadb(&s.gw, &outsider, "prod", "select 1");
    assert!(
        stderr_of(&out).contains("ERROR 1044 (42000)"),
        "{}",
        describe(&out)
    );

    // The session stays usable after a refusal, prepared reads run with their parameters.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut conn = connect(&s.gw, &s.agent).await;
        let refused = server_error(conn.query_drop("TRUNCATE items").await.unwrap_err());
        assert_eq!((refused.code, refused.state.as_str()), (1142, "42000"));
        let names: Vec<String> = conn
            .exec("SELECT name FROM items WHERE id >= ? ORDER BY id", (2,))
            .await
            .unwrap();
        assert_eq!(names, ["beta", "gamma"]);
        let count: Option<i64> = conn
            .query_first("SELECT COUNT(*) FROM items")
            .await
            .unwrap();
        assert_eq!(count, Some(3));
        conn.ping().await.unwrap();
        conn.disconnect().await.unwrap();
    });

    // What ran is recorded, with the decision.
    s.gw.cli(&["sessions", "list"]);
    let export = s.gw.cli(&["sessions", "export", "--format", "jsonl"]);
    let export = ok_stdout(&export, "sessions export");
    assert!(
        export.contains("select id, name from items order by id"),
        "{export}"
    );
    assert!(export.contains("truncate table items"), "{export}");
    assert!(export.contains("\"mysql\""), "{export}");
}

#[test]
fn a_held_delete_runs_once_approved_and_a_denial_says_why() {
    let s = story(LONG);
    let sql = "delete from items where id = 3";
    let held = mariadb_spawn(&s.gw, &s.agent, "prod", sql);
    let id = s.gw.wait_for_pending(sql);
    assert_eq!(s.db.item_ids(), "1,2,3", "nothing runs before the decision");
    let request = s.gw.approval(&id);
    let shown = serde_json::to_string(&request).unwrap();
    assert!(shown.contains("agent-1"), "{shown}");
    assert!(shown.contains("DELETE"), "{shown}");
    let out =
        s.gw.cli_as(&s.dba, &["approve", &id, "--reason", "ticket OPS-42"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = finish(held, "the held delete");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(s.db.item_ids(), "1,2");
    assert!(
        s.gw.log().contains(&format!("request={id}")),
        "the log names the request"
    );

    let sql = "update items set name = 'zeta' where id = 1";
    let held = mariadb_spawn(&s.gw, &s.agent, "prod", sql);
    let id = s.gw.wait_for_pending(sql);
    let out = s.gw.cli_as(
        &s.dba,
        &["deny", &id, "--reason", "not during business hours"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let out = finish(held, "the denied update");
    let err = stderr_of(&out);
    assert!(err.contains("ERROR 1142 (42000)"), "{err}");
    assert!(err.contains("not during business hours"), "{err}");
    assert_eq!(
        s.db.admin("SELECT name FROM app.items WHERE id = 1"),
        "alpha"
    );
}

#[test]
fn an_unanswered_request_expires() {
    let s = story("2s");
    let sql = "delete from items where id = 1";
    let out = mariadb(&s.gw, &s.agent, "prod", sql);
    let err = stderr_of(&out);
    assert!(err.contains("ERROR 3024 (HY000)"), "{}", describe(&out));
    assert!(err.contains("approval timed out"), "{err}");
    assert_eq!(s.db.item_ids(), "1,2,3");
}

#[test]
fn executable_comments_and_multi_statements_are_judged_as_code() {
    let s = story(LONG);
    // The server runs what is inside /*! … */ and /*!50001 … */: so is it judged.
    for sql in [
        "/*! delete from items where id = 1 */",
        "/*!50001 DELETE FROM items WHERE id = 2 */",
    ] {
        let held = mariadb_spawn(&s.gw, &s.agent, "prod", sql);
        let id = s.gw.wait_for_pending(sql);
        let out = s.gw.cli_as(&s.dba, &["deny", &id, "--reason", "caught"]);
        assert!(out.status.success(), "{}", describe(&out));
        let out = finish(held, sql);
        assert!(stderr_of(&out).contains("caught"), "{}", describe(&out));
    }
    let out = mariadb(
        &s.gw,
        &s.agent,
        "prod",
        "select 1 /*M! ; delete from items */",
    );
    assert!(stderr_of(&out).contains("ERROR 1142"), "{}", describe(&out));

    // mysql_async enables multi-statements: a DELETE behind a SELECT holds the whole string.
    let runtime = multi_thread();
    runtime.block_on(async {
        let mut conn = connect(&s.gw, &s.agent).await;
        let sql = "SELECT 1; DELETE FROM items WHERE id = 3";
        let task = tokio::spawn(async move {
            let result = conn.query_drop(sql).await;
            (conn, result)
        });
        tokio::task::block_in_place(|| {
            let id = s.gw.wait_for_pending(sql);
            let out =
                s.gw.cli_as(&s.dba, &["deny", &id, "--reason", "two statements"]);
            assert!(out.status.success(), "{}", describe(&out));
        });
        let (mut conn, result) = task.await.unwrap();
        let err = server_error(result.unwrap_err());
        assert!(err.message.contains("two statements"), "{err:?}");
        // Several result sets come back whole when allowed.
        let mut results = conn.query_iter("SELECT 1; SELECT 2, 3").await.unwrap();
        let first: Vec<i64> = results.collect().await.unwrap();
        let second: Vec<(i64, i64)> = results.collect().await.unwrap();
        assert_eq!((first, second), (vec![1], vec![(2, 3)]));
        conn.disconnect().await.unwrap();
    });
    assert_eq!(s.db.item_ids(), "1,2,3");
}

#[test]
fn prepared_statements_are_held_with_their_parameters() {
    let s = story(LONG);
    let runtime = multi_thread();
    runtime.block_on(async {
        let mut conn = connect(&s.gw, &s.agent).await;
        let sql = "DELETE FROM items WHERE id = ? AND name = ?";
        let task = tokio::spawn(async move {
            let result = conn.exec_drop(sql, (2, "beta")).await;
            (conn, result)
        });
        tokio::task::block_in_place(|| {
            let id = s.gw.wait_for_pending(sql);
            let shown = s.gw.approval(&id);
            let params = serde_json::to_string(&shown["params"]).unwrap();
            assert_eq!(params, r#"["2","beta"]"#, "{shown:?}");
            let out = s.gw.cli_as(&s.dba, &["approve", &id, "--reason", "ok"]);
            assert!(out.status.success(), "{}", describe(&out));
        });
        let (conn, result) = task.await.unwrap();
        result.expect("the approved statement runs");
        assert_eq!(conn.affected_rows(), 1);
        conn.disconnect().await.unwrap();
    });
    assert_eq!(s.db.item_ids(), "1,3");
}

#[test]
fn kill_query_from_a_second_connection_withdraws_a_held_statement() {
    let s = story(LONG);
    let runtime = multi_thread();
    runtime.block_on(async {
        let mut held = connect(&s.gw, &s.agent).await;
        let mut other = connect(&s.gw, &s.agent).await;
        let target = held.id();
        let sql = "DELETE FROM items WHERE id = 1";
        let task = tokio::spawn(async move {
            let result = held.query_drop(sql).await;
            (held, result)
        });
        let id = tokio::task::block_in_place(|| s.gw.wait_for_pending(sql));
        other
            .query_drop(format!("KILL QUERY {target}"))
            .await
            .expect("KILL QUERY of one's own session");
        let (mut held, result) = task.await.unwrap();
        let err = server_error(result.unwrap_err());
        assert_eq!(err.code, 1317, "{err:?}");
        tokio::task::block_in_place(|| s.gw.wait_for_state(&id, "canceled"));
        // The session goes on.
        let count: Option<i64> = held
            .query_first("SELECT COUNT(*) FROM items")
            .await
            .unwrap();
        assert_eq!(count, Some(3));
    });
    assert_eq!(s.db.item_ids(), "1,2,3");
}

#[test]
fn the_upstream_credential_never_reaches_the_client() {
    let s = story(LONG);
    let password = s.db.password().to_string();
    for sql in [
        "select current_user(), user()",
        "show grants",
        "select * from no_such_table",
        "select * from mysql.user",
    ] {
        let out = mariadb(&s.gw, &s.agent, "prod", sql);
        assert!(
            !all_output(&out).contains(&password),
            "{sql}: {}",
            describe(&out)
        );
    }
    // A gateway whose stored credential is wrong refuses without telling the credential.
    let yaml = format!(
        "connections:\n{}{}",
        mysql_connection_yaml("prod", s.db.port(), "Wr0ng-Upstream-Secret"),
        policy_yaml(&["prod"], LONG)
    );
    let wrong = Gateway::start(&yaml);
    let agent = wrong.mint("agent-2", &["agents"]);
    let out = mariadb(&wrong, &agent, "prod", "select 1");
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("could not connect to the upstream"),
        "{}",
        describe(&out)
    );
    assert!(!all_output(&out).contains("Wr0ng-Upstream-Secret"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!wrong.log().contains("Wr0ng-Upstream-Secret"));
    assert!(!s.gw.log().contains(&password));
}

#[test]
fn schema_switches_local_files_and_explain_go_through_the_policy() {
    let s = story(LONG);
    // The CLI's `use` is COM_INIT_DB: a SET, which the template policy does not allow.
    let out = mariadb(&s.gw, &s.agent, "prod", "use mysql");
    let err = stderr_of(&out);
    assert!(err.contains("ERROR 1142 (42000)"), "{}", describe(&out));
    let export = s.gw.cli(&["sessions", "export", "--format", "jsonl"]);
    let export = ok_stdout(&export, "sessions export");
    assert!(
        export.contains("USE `mysql`"),
        "the switch is recorded: {export}"
    );

    // LOAD DATA LOCAL INFILE is a COPY: refused to agents, allowed to loaders.
    let file = s.gw.dir().join("items.tsv");
    std::fs::write(&file, "7\tseven\n8\teight\n").unwrap();
    let load = format!(
        "LOAD DATA LOCAL INFILE '{}' INTO TABLE items",
        file.display()
    );
    let run = |token: &str| {
        run_with_timeout(
            mariadb_command_with(&s.gw, token, "prod", &load, &["--local-infile=1"]),
            COMMAND_TIMEOUT,
            "mariadb LOAD DATA",
        )
    };
    let out = run(&s.agent);
    assert!(
        stderr_of(&out).contains("ERROR 1142 (42000)"),
        "{}",
        describe(&out)
    );
    assert_eq!(s.db.item_ids(), "1,2,3");
    let loader = s.gw.mint("loader-1", &["loaders"]);
    let out = run(&loader);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(s.db.item_ids(), "1,2,3,7,8");

    // policy explain reads a MySQL connection's SQL as MySQL: REPLACE inserts and deletes
    // (and INSERT is no agent's to run).
    let out = s.gw.cli(&[
        "policy",
        "explain",
        "--group",
        "agents",
        "--connection",
        "prod",
        "--sql",
        "REPLACE INTO items VALUES (1, 'x')",
    ]);
    let shown = ok_stdout(&out, "policy explain");
    assert!(shown.contains("deny"), "{shown}");
    assert!(shown.contains("INSERT, DELETE"), "{shown}");
}

/// Reads one MySQL packet from a raw socket: (sequence id, payload).
fn read_packet(stream: &mut std::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use std::io::Read;
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).ok()?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).ok()?;
    Some((header[3], payload))
}

#[test]
fn malformed_logins_get_an_error_and_the_gateway_keeps_serving() {
    use std::io::Write;
    let s = story(LONG);
    let port = mysql_port(&s.gw);
    let attacks: [&[u8]; 4] = [
        // A handshake response too short to hold its fields.
        &[3, 0, 0, 1, 0x85, 0xa6, 0x03],
        // A packet announcing more than the gateway accepts (16 MiB continuations, 5 times).
        &[0xff, 0xff, 0xff, 1],
        // Capabilities without protocol 4.1.
        &[
            32, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0,
        ],
        // Garbage.
        b"\x10\x00\x00\x01GET / HTTP/1.1\r\n\r\n",
    ];
    for attack in attacks {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (_, greeting) = read_packet(&mut stream).expect("the greeting");
        assert_eq!(greeting[0], 10, "protocol 10 greeting");
        let _ = stream.write_all(attack);
        if attack == [0xff, 0xff, 0xff, 1] {
            let chunk = vec![0u8; 0xff_ffff];
            for _ in 0..5 {
                let mut packet = vec![0xff, 0xff, 0xff, 1];
                packet.extend_from_slice(&chunk);
                if stream.write_all(&packet).is_err() {
                    break;
                }
            }
        }
        let Some((seq, mut answer)) = read_packet(&mut stream) else {
            continue; // closed without an answer: also fine
        };
        if answer[0] == 0xFE {
            // Read as a login after all: the gateway asks for the password, which is no token.
            let mut reply = vec![6, 0, 0, seq.wrapping_add(1)];
            reply.extend_from_slice(b"bogus\0");
            stream.write_all(&reply).unwrap();
            answer = read_packet(&mut stream)
                .expect("an answer to the password")
                .1;
        }
        assert_eq!(answer[0], 0xFF, "an ERR packet: {answer:?}");
    }
    let out = mariadb(&s.gw, &s.agent, "prod", "select count(*) from items");
    assert_eq!(ok_stdout(&out, "select after the attacks").trim(), "3");
}

#[test]
fn kill_query_interrupts_a_running_statement_on_the_upstream() {
    let db = MariaDb::start();
    let yaml = format!(
        "connections:\n{}policies:\n  - name: sleepers\n    groups: [agents]\n    connections: [prod]\n    \
         rules:\n      - match: SELECT|FUNCTION\n        action: allow\n",
        mysql_connection_yaml("prod", db.port(), &format!("${{env:{PASSWORD_ENV}}}")),
    );
    let gw = Gateway::start_with_env(&yaml, &[(PASSWORD_ENV, db.password())]);
    let agent = gw.mint("agent-1", &["agents"]);
    let runtime = multi_thread();
    runtime.block_on(async {
        let mut running = connect(&gw, &agent).await;
        let mut other = connect(&gw, &agent).await;
        let target = running.id();
        let task = tokio::spawn(async move {
            let result: Result<Option<i64>, _> = running.query_first("SELECT SLEEP(300)").await;
            result
        });
        // Wait until the upstream runs it, then interrupt it through the gateway.
        tokio::task::block_in_place(|| {
            wait_until(WAIT, "the sleep running upstream", || {
                let running = db.admin(
                    "SELECT COUNT(*) FROM information_schema.processlist \
                     WHERE info = 'SELECT SLEEP(300)'",
                );
                (running == "1").then_some(())
            })
        });
        other
            .query_drop(format!("KILL QUERY {target}"))
            .await
            .expect("KILL QUERY of one's own session");
        let finished = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the killed statement ends long before its sleep would")
            .unwrap();
        // MariaDB ends an interrupted SLEEP with 1 (or with error 1317).
        match finished {
            Ok(value) => assert_eq!(value, Some(1)),
            Err(e) => assert_eq!(server_error(e).code, 1317),
        }
    });
}
