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
    // Finer kinds take PostgreSQL's names: a server-side LOAD DATA reads a server file.
    let out = s.gw.cli(&[
        "policy",
        "explain",
        "--group",
        "loaders",
        "--connection",
        "prod",
        "--sql",
        "LOAD DATA INFILE '/etc/passwd' INTO TABLE items",
    ]);
    let shown = ok_stdout(&out, "policy explain");
    assert!(shown.contains("COPY FROM FILE"), "{shown}");
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

const EMAIL: &str = "ann@example.com";
const SSN: &str = "123-45-6789";
const NOTE_EMAIL: &str = "ann.lee@corp.example";
const NOTE_PHONE: &str = "+44 20 7946 0958";
const NOTE_IP: &str = "10.1.2.3";
/// A card number kept in an unlisted BIGINT column: only the detectors can catch it.
const STRAY_CARD: &str = "4111111111111111";
const MASKED_SECRETS: [&str; 6] = [EMAIL, SSN, NOTE_EMAIL, NOTE_PHONE, NOTE_IP, STRAY_CARD];

/// Masking for `agents` (not for `loaders`), with recorded responses, on [`story`]'s policies.
const MYSQL_MASKING: &str = r#"masking:
  - connections: [prod]
    groups: [agents]
    columns: [users.ssn, app.users.pin]
    style: redact
  - connections: [prod]
    groups: [agents]
    columns: [card_number]
    style: partial
  - connections: [prod]
    groups: [agents]
    columns: ['*.email']
    style: hash
  - connections: [prod]
    groups: [agents]
    columns: [users.birth_date]
    style: 'null'
  - connections: [prod]
    groups: [agents]
    detectors: [email, credit_card, us_ssn, phone, ipv4]
recording:
  results: { rows: 100, bytes: 65536 }
"#;

fn masked_story() -> Story {
    let db = MariaDb::start();
    db.admin(&format!(
        "CREATE TABLE app.users (id INT PRIMARY KEY, name VARCHAR(50), email VARCHAR(100), \
           ssn CHAR(11), card_number BIGINT, birth_date DATE, notes TEXT, pin INT, \
           stray BIGINT UNSIGNED); \
         INSERT INTO app.users VALUES (1, 'Ann Lee', '{EMAIL}', '{SSN}', 5500000000000004, \
           '1990-01-02', 'call {NOTE_PHONE} or mail {NOTE_EMAIL}, ip {NOTE_IP}', 4321, \
           {STRAY_CARD}), \
           (2, 'Bob Roe', NULL, NULL, NULL, NULL, 'nothing', NULL, 42)"
    ));
    let yaml = format!(
        "connections:\n{}{}{MYSQL_MASKING}",
        mysql_connection_yaml("prod", db.port(), &format!("${{env:{PASSWORD_ENV}}}")),
        policy_yaml(&["prod"], LONG)
    );
    let gw = Gateway::start_with_env(&yaml, &[(PASSWORD_ENV, db.password())]);
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);
    Story { db, gw, agent, dba }
}

const USERS: &str = "SELECT id, name, email, ssn, card_number, birth_date, notes, pin, stray \
                     FROM users ORDER BY id";

#[test]
fn text_results_are_masked_by_column_detector_and_style() {
    let s = masked_story();
    let rows = ok_stdout(&mariadb(&s.gw, &s.agent, "prod", USERS), "SELECT users");
    for secret in MASKED_SECRETS {
        assert!(!rows.contains(secret), "{secret:?} shown: {rows}");
    }
    let lines: Vec<Vec<&str>> = rows.lines().map(|l| l.split('\t').collect()).collect();
    let first = &lines[0];
    assert_eq!(&first[..2], ["1", "Ann Lee"], "untouched columns pass");
    assert!(
        first[2].starts_with("h:") && first[2].len() == 18,
        "hash: {rows}"
    );
    assert_eq!(first[3], "****", "redact by table.column");
    assert_eq!(first[4], "****0004", "partial by bare name, on a BIGINT");
    assert_eq!(first[5], "NULL", "null by table.column");
    assert_eq!(
        first[6], "call [phone] or mail [email], ip [ipv4]",
        "detectors"
    );
    assert_eq!(first[7], "****", "redact by schema.table.column, on an INT");
    assert_eq!(first[8], "NULL", "a finding in a number column nulls it");
    assert_eq!(
        lines[1],
        ["2", "Bob Roe", "NULL", "NULL", "NULL", "NULL", "nothing", "NULL", "42"],
        "NULLs stay NULL, values with nothing found pass"
    );

    // An alias does not hide a column: its source is in the column definition.
    let aliased = ok_stdout(
        &mariadb(
            &s.gw,
            &s.agent,
            "prod",
            "SELECT u.ssn AS x, u.email AS y FROM users u WHERE id = 1",
        ),
        "aliased SELECT",
    );
    assert_eq!(aliased.trim(), format!("****\t{}", first[2]));
    // Detectors see expressions; a table rule's column name masks an expression of that name.
    let derived = ok_stdout(
        &mariadb(
            &s.gw,
            &s.agent,
            "prod",
            "SELECT concat('to: ', email) AS note, upper(ssn) AS ssn FROM users WHERE id = 1",
        ),
        "derived SELECT",
    );
    assert_eq!(derived.trim(), "to: [email]\t****");
    // Each result of a multi-statement string is masked by its own columns.
    let both = ok_stdout(
        &mariadb(
            &s.gw,
            &s.agent,
            "prod",
            "SELECT ssn FROM users WHERE id = 1; SELECT id, notes FROM users WHERE id = 1",
        ),
        "two results",
    );
    assert_eq!(
        both, "****\n1\tcall [phone] or mail [email], ip [ipv4]\n",
        "{both}"
    );
    // A derived table or a CTE hides the table its columns come from: with column rules, the
    // result is refused rather than risked.
    for sql in [
        "SELECT x FROM (SELECT ssn AS x FROM users) AS t",
        "WITH c AS (SELECT ssn FROM users) SELECT ssn AS note FROM c",
    ] {
        let out = mariadb(&s.gw, &s.agent, "prod", sql);
        let err = stderr_of(&out);
        assert!(err.contains("ERROR 1105 (HY000)"), "{}", describe(&out));
        assert!(err.contains("derived table"), "{}", describe(&out));
        assert!(!all_output(&out).contains(SSN), "{}", describe(&out));
    }

    // An identity no rule names reads the values as stored.
    let loader = s.gw.mint("loader-1", &["loaders"]);
    let plain = ok_stdout(&mariadb(&s.gw, &loader, "prod", USERS), "unmasked SELECT");
    assert!(
        plain.starts_with(&format!(
            "1\tAnn Lee\t{EMAIL}\t{SSN}\t5500000000000004\t1990-01-02\t"
        )),
        "{plain}"
    );
    assert!(plain.contains(STRAY_CARD), "{plain}");

    // The recording keeps the rows as the agent got them, with counts.
    let agent_part = agent_recording(&s);
    assert!(agent_part.contains("\"kind\":\"response\""), "{agent_part}");
    assert!(agent_part.contains("\"credit_card\""), "{agent_part}");
}

#[test]
fn binary_results_of_prepared_statements_are_masked_and_retyped() {
    use mysql_async::consts::ColumnType;
    let s = masked_story();
    let loader = s.gw.mint("loader-1", &["loaders"]);
    let runtime = multi_thread();
    runtime.block_on(async {
        let mut conn = connect(&s.gw, &s.agent).await;
        let text_hash: Option<String> = conn
            .query_first("SELECT email FROM users WHERE id = 1")
            .await
            .unwrap();
        let sql = format!(
            "{} LIMIT ?",
            USERS.replace(" ORDER BY id", " WHERE id >= ? ORDER BY id")
        );
        // The answer to the prepare already says which columns are strings now.
        let prepared = conn.prep(sql.as_str()).await.unwrap();
        assert_eq!(
            prepared.columns()[4].column_type(),
            ColumnType::MYSQL_TYPE_VAR_STRING
        );
        let rows: Vec<mysql_async::Row> = conn.exec(&prepared, (1, 10)).await.unwrap();
        let first = &rows[0];
        let get = |i: usize| first.as_ref(i).cloned().unwrap();
        use mysql_async::Value;
        assert_eq!(get(0), Value::Int(1), "an INT no rule touches stays binary");
        assert_eq!(get(1), Value::Bytes(b"Ann Lee".to_vec()));
        assert_eq!(
            Some(
                String::from_utf8(match get(2) {
                    Value::Bytes(b) => b,
                    other => panic!("{other:?}"),
                })
                .unwrap()
            ),
            text_hash,
            "the same digest in both protocols"
        );
        assert_eq!(get(3), Value::Bytes(b"****".to_vec()));
        assert_eq!(
            get(4),
            Value::Bytes(b"****0004".to_vec()),
            "a masked BIGINT is a string"
        );
        assert_eq!(
            first.columns_ref()[4].column_type(),
            ColumnType::MYSQL_TYPE_VAR_STRING
        );
        assert_eq!(get(5), Value::NULL, "null style");
        assert_eq!(
            get(6),
            Value::Bytes(b"call [phone] or mail [email], ip [ipv4]".to_vec())
        );
        assert_eq!(
            get(7),
            Value::Bytes(b"****".to_vec()),
            "a masked INT is a string"
        );
        assert_eq!(
            first.columns_ref()[7].column_type(),
            ColumnType::MYSQL_TYPE_VAR_STRING
        );
        assert_eq!(get(8), Value::NULL, "a finding in a BIGINT nulls it");
        let second = &rows[1];
        assert_eq!(
            mysql_async::from_value::<u64>(second.as_ref(8).cloned().unwrap()),
            42,
            "a BIGINT with nothing found"
        );
        assert_eq!(second.as_ref(4).cloned().unwrap(), Value::NULL);
        conn.disconnect().await.unwrap();

        // An unmasked session gets the upstream's values and types.
        let mut conn = mysql_async::Conn::new(opts(&s.gw, &loader, "prod"))
            .await
            .unwrap();
        let rows: Vec<mysql_async::Row> = conn.exec(sql.as_str(), (1, 10)).await.unwrap();
        let first = &rows[0];
        assert_eq!(
            first.as_ref(4).cloned().unwrap(),
            Value::Int(5_500_000_000_000_004)
        );
        assert_eq!(
            first.columns_ref()[4].column_type(),
            ColumnType::MYSQL_TYPE_LONGLONG
        );
        assert_eq!(
            first.as_ref(2).cloned().unwrap(),
            Value::Bytes(EMAIL.as_bytes().to_vec())
        );
        assert_eq!(
            mysql_async::from_value::<u64>(first.as_ref(8).cloned().unwrap()),
            4_111_111_111_111_111
        );
        assert_eq!(
            first.as_ref(5).cloned().unwrap(),
            Value::Date(1990, 1, 2, 0, 0, 0, 0)
        );
        conn.disconnect().await.unwrap();
    });
    agent_recording(&s);
}

#[test]
fn an_approved_replacement_runs_in_place_of_a_held_query() {
    let s = story(LONG);
    let runtime = multi_thread();
    runtime.block_on(async {
        let mut conn = connect(&s.gw, &s.agent).await;
        let sql = "DELETE FROM items";
        let task = tokio::spawn(async move {
            let result = conn.query_drop(sql).await;
            (conn, result)
        });
        tokio::task::block_in_place(|| {
            let id = s.gw.wait_for_pending(sql);
            // Judged as MySQL reads it: the executable comment is a DROP, not a comment.
            let out = s.gw.cli_as(
                &s.dba,
                &[
                    "approve",
                    &id,
                    "--replace-with",
                    "DELETE FROM items WHERE id = 3 /*! ; DROP TABLE items */",
                ],
            );
            assert!(!out.status.success(), "{}", describe(&out));
            assert!(all_output(&out).contains("DROP"), "{}", describe(&out));
            let out = s.gw.cli_as(
                &s.dba,
                &[
                    "approve",
                    &id,
                    "--replace-with",
                    "DELETE FROM `items` WHERE id = 3",
                ],
            );
            assert!(out.status.success(), "{}", describe(&out));
        });
        let (mut conn, result) = task.await.unwrap();
        result.expect("the replacement runs");
        assert_eq!(conn.affected_rows(), 1);
        let info = conn.info().into_owned();
        assert!(
            info.contains(
                "was approved with a modified statement: DELETE FROM `items` WHERE id = 3"
            ),
            "{info:?}"
        );
        // The session goes on, and its next statements are answered normally.
        let count: Option<i64> = conn
            .query_first("SELECT COUNT(*) FROM items")
            .await
            .unwrap();
        assert_eq!(count, Some(2));

        // A prepared statement's replacement is refused, naming it.
        let sql = "DELETE FROM items WHERE id = ?";
        let task = tokio::spawn(async move {
            let result = conn.exec_drop(sql, (1,)).await;
            (conn, result)
        });
        tokio::task::block_in_place(|| {
            let id = s.gw.wait_for_pending(sql);
            let out = s.gw.cli_as(
                &s.dba,
                &[
                    "approve",
                    &id,
                    "--replace-with",
                    "DELETE FROM items WHERE id = 2",
                ],
            );
            assert!(out.status.success(), "{}", describe(&out));
        });
        let (conn, result) = task.await.unwrap();
        let err = server_error(result.unwrap_err());
        assert_eq!((err.code, err.state.as_str()), (1142, "42000"), "{err:?}");
        assert!(
            err.message
                .contains("send it as a plain query: DELETE FROM items WHERE id = 2"),
            "{err:?}"
        );
        conn.disconnect().await.unwrap();
    });
    assert_eq!(s.db.item_ids(), "1,2");
    let export = ok_stdout(
        &s.gw.cli(&["sessions", "export", "--format", "jsonl"]),
        "sessions export",
    );
    assert!(
        export.contains("DELETE FROM `items` WHERE id = 3"),
        "the replacement is recorded: {export}"
    );
}

#[test]
fn clients_that_ask_for_tls_log_in_over_it() {
    use std::os::unix::fs::PermissionsExt;
    let s = story(LONG);
    // Without a `tls:` section the gateway shows a certificate it generated once, key 0600;
    // this client does not verify it.
    let out = mariadb_tls(
        &s.gw,
        &s.agent,
        "prod",
        "status; select name from items where id = 1",
        &["--disable-ssl-verify-server-cert"],
    );
    let shown = ok_stdout(&out, "a session over TLS");
    assert!(shown.contains("Cipher in use is"), "{shown}");
    assert!(shown.trim_end().ends_with("alpha"), "{shown}");
    let data = s.gw.dir().join("data");
    let key = data.join("tls-key.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A refusal over TLS is the usual error, and the clear-password path still works.
    let out = mariadb_tls(
        &s.gw,
        &s.agent,
        "prod",
        "truncate table items",
        &["--disable-ssl-verify-server-cert"],
    );
    assert!(
        stderr_of(&out).contains("ERROR 1142 (42000)"),
        "{}",
        describe(&out)
    );
    let out = mariadb(&s.gw, &s.agent, "prod", "select count(*) from items");
    assert_eq!(ok_stdout(&out, "a session in clear").trim(), "3");

    // A configured certificate is checked by `config check` and shown to clients, which can
    // verify it.
    let cert = data.join("tls-cert.pem");
    let config = std::fs::read_to_string(s.gw.dir().join("airlock.yaml")).unwrap();
    let broken = s.gw.dir().join("broken-tls.yaml");
    std::fs::write(
        &broken,
        format!(
            "{config}tls:\n  cert_file: {}\n  key_file: {}\n",
            cert.display(),
            data.join("no-such-key.pem").display()
        ),
    )
    .unwrap();
    let out = s.gw.cli(&["config", "check", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains("tls.key_file"),
        "{}",
        describe(&out)
    );

    let db_port = s.db.port();
    let own = tempfile::tempdir().unwrap();
    let (own_cert, own_key) = (own.path().join("c.pem"), own.path().join("k.pem"));
    std::fs::copy(&cert, &own_cert).unwrap();
    std::fs::copy(&key, &own_key).unwrap();
    let yaml = format!(
        "connections:\n{}{}tls:\n  cert_file: {}\n  key_file: {}\n",
        mysql_connection_yaml("prod", db_port, &format!("${{env:{PASSWORD_ENV}}}")),
        policy_yaml(&["prod"], LONG),
        own_cert.display(),
        own_key.display()
    );
    let gw = Gateway::start_with_env(&yaml, &[(PASSWORD_ENV, s.db.password())]);
    let agent = gw.mint("agent-2", &["agents"]);
    let ca = format!("--ssl-ca={}", own_cert.display());
    let out = mariadb_tls(
        &gw,
        &agent,
        "prod",
        "select name from items where id = 2",
        &[&ca, "--ssl-verify-server-cert"],
    );
    assert_eq!(ok_stdout(&out, "a verified TLS session").trim(), "beta");
    assert!(
        !gw.dir().join("data").join("tls-key.pem").exists(),
        "no certificate is generated when one is configured"
    );
}

/// The recording of `agent-1`'s sessions (JSON lines), checked to keep masked values only.
fn agent_recording(s: &Story) -> String {
    let export = ok_stdout(
        &s.gw.cli(&["sessions", "export", "--format", "jsonl"]),
        "sessions export",
    );
    let agent_part: Vec<&str> = export.lines().filter(|l| l.contains("agent-1")).collect();
    let agent_part = agent_part.join("\n");
    assert!(agent_part.contains("****0004"), "{agent_part}");
    for secret in MASKED_SECRETS {
        assert!(
            !agent_part.contains(secret),
            "{secret:?} recorded: {agent_part}"
        );
    }
    agent_part
}
