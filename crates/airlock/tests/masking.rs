//! Masking end to end: a real PostgreSQL upstream, the `airlock serve` binary, and real clients
//! (psql in the simple protocol, tokio-postgres in the extended protocol with binary results).
//! Columns are masked by name and by table (resolved from the upstream's catalog, through
//! aliases), detectors mask free text, each style does what it says, RETURNING, COPY and held
//! statements are masked too, and the recordings hold only masked values.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;
use support::*;

/// Values that must never reach an agent or a recording.
const EMAIL: &str = "ann@example.com";
const SSN: &str = "123-45-6789";
const CARD: &str = "4111111111111111";
const NOTE_EMAIL: &str = "ann.lee@corp.example";
const NOTE_IP: &str = "10.1.2.3";
const NOTE_PHONE: &str = "+44 20 7946 0958";
const STRIPE: &str = "sk_live_0123456789abcdefABCD";
const PARAM_EMAIL: &str = "param.leak@example.org";
const SECRETS: [&str; 7] = [EMAIL, SSN, CARD, NOTE_EMAIL, NOTE_IP, NOTE_PHONE, STRIPE];

const POLICY_AND_MASKING: &str = r#"
policies:
  - name: agents
    groups: [agents, loaders, auditors]
    connections: [prod]
    rules:
      - match: DELETE
        action: require-approval
        reviewers: [dba]
        timeout: 60s
      - match: '*'
        action: allow
masking:
  - connections: [prod]
    groups: [agents]
    columns: [users.ssn]
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
    columns: [public.users.birth_date]
    style: 'null'
  - connections: [prod]
    groups: [agents, loaders]
    detectors: [email, credit_card, us_ssn, phone, iban, ipv4, secret]
recording:
  results: { rows: 100, bytes: 65536 }
"#;

fn config(pg: &PgServer) -> String {
    format!(
        "connections:\n{}{POLICY_AND_MASKING}",
        connection_yaml("prod", pg.port(), &format!("${{env:{PASSWORD_ENV}}}")),
    )
}

struct Setup {
    pg: PgServer,
    gw: Gateway,
    agent: String,
}

fn setup() -> Setup {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    pg.psql_admin(&format!(
        "CREATE TABLE users (id int PRIMARY KEY, name text, email text, ssn text, \
           card_number text, birth_date date, notes text, api text); \
         INSERT INTO users VALUES (1, 'Ann Lee', '{EMAIL}', '{SSN}', '{CARD}', '1990-01-02', \
           'call {NOTE_PHONE} or mail {NOTE_EMAIL}, ip {NOTE_IP}', 'key: {STRIPE}'), \
           (2, 'Bob Roe', 'bob@example.com', '987-65-4321', '5500000000000004', NULL, 'nothing', NULL); \
         CREATE TABLE orders (id int, ssn text, email text); \
         INSERT INTO orders VALUES (10, 'ORD-1', '{EMAIL}'); \
         ALTER TABLE users OWNER TO app_owner; ALTER TABLE orders OWNER TO app_owner;"
    ));
    let gw = Gateway::for_pg_config(&pg, &config(&pg));
    let agent = gw.mint("agent-1", &["agents"]);
    Setup { pg, gw, agent }
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", describe(out));
    stdout_of(out)
}

fn assert_no_secret(text: &str, what: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret:?}: {text}");
    }
}

#[test]
fn psql_results_are_masked_by_column_table_detector_and_style() {
    let s = setup();
    let rows = ok(
        &s.gw.psql(
            &s.agent,
            "prod",
            "SELECT id, name, email, ssn, card_number, birth_date, notes, api FROM users ORDER BY id",
        ),
        "SELECT users",
    );
    assert_no_secret(&rows, "the masked SELECT");
    let first: Vec<&str> = rows.lines().next().unwrap().split('|').collect();
    assert_eq!(first[0], "1");
    assert_eq!(first[1], "Ann Lee", "untouched columns pass as they are");
    assert!(
        first[2].starts_with("h:") && first[2].len() == 18,
        "hash: {rows}"
    );
    assert_eq!(first[3], "****", "redact by table.column");
    assert_eq!(first[4], "****1111", "partial by bare name");
    assert_eq!(first[5], "", "null by schema.table.column");
    assert_eq!(
        first[6], "call [phone] or mail [email], ip [ipv4]",
        "detectors on free text"
    );
    assert_eq!(first[7], "key: [secret]");

    // An alias does not hide a column: its origin comes from the upstream's catalog.
    let aliased = ok(
        &s.gw.psql(
            &s.agent,
            "prod",
            "SELECT u.ssn AS x, u.email AS y FROM users u WHERE id = 1",
        ),
        "aliased SELECT",
    );
    assert_eq!(aliased.trim(), format!("****|{}", first[2]));
    // A table rule only touches its table; the hash is the same wherever the value appears.
    let orders = ok(
        &s.gw.psql(&s.agent, "prod", "SELECT ssn, email FROM orders"),
        "SELECT orders",
    );
    assert_eq!(orders.trim(), format!("ORD-1|{}", first[2]));
    // Joins and grouping on a hashed column still work for the agent.
    let joined = ok(
        &s.gw.psql(
            &s.agent,
            "prod",
            "SELECT count(*) FROM users u JOIN orders o ON o.email = u.email",
        ),
        "join",
    );
    assert_eq!(joined.trim(), "1");

    // Another group is not masked by rules scoped to `agents`.
    let auditor = s.gw.mint("auditor-1", &["auditors"]);
    let raw = ok(
        &s.gw.psql(
            &auditor,
            "prod",
            "SELECT email, ssn FROM users WHERE id = 1",
        ),
        "SELECT as auditor",
    );
    assert_eq!(raw.trim(), format!("{EMAIL}|{SSN}"));
    assert_eq!(s.pg.psql_admin("SELECT ssn FROM users WHERE id = 1"), SSN);
}

/// Results of one statement reuse its plan for a while; a result whose description differs in
/// anything — here only the table its same-named column comes from — is planned on its own.
#[test]
fn each_row_description_gets_its_own_plan() {
    let s = setup();
    let rows = ok(
        &s.gw.psql(
            &s.agent,
            "prod",
            "SELECT ssn FROM users WHERE id = 1; SELECT ssn FROM users WHERE id = 2; \
             SELECT ssn FROM orders; SELECT ssn FROM users WHERE id = 1; \
             SELECT ssn FROM orders",
        ),
        "alternating SELECTs",
    );
    assert_no_secret(&rows, "alternating SELECTs");
    let values: Vec<&str> = rows.lines().collect();
    assert_eq!(values, ["****", "****", "ORD-1", "****", "ORD-1"], "{rows}");
}

#[test]
fn extended_protocol_binary_results_are_masked_or_refused() {
    let s = setup();
    let rt = runtime();
    rt.block_on(async {
        let (client, _notices) = s.gw.connect(&s.agent, "prod").await.expect("connect");
        // tokio-postgres asks for every column in binary; text columns are masked in place.
        let row = client
            .query_one(
                "SELECT id, name, email, ssn, card_number, notes FROM users WHERE id = $1",
                &[&1i32],
            )
            .await
            .expect("masked binary text columns");
        assert_eq!(row.get::<_, i32>(0), 1);
        assert_eq!(row.get::<_, &str>(1), "Ann Lee");
        assert!(row.get::<_, &str>(2).starts_with("h:"));
        assert_eq!(row.get::<_, &str>(3), "****");
        assert_eq!(row.get::<_, &str>(4), "****1111");
        assert_eq!(
            row.get::<_, &str>(5),
            "call [phone] or mail [email], ip [ipv4]"
        );
        // Counting is a binary bigint with nothing to find: it passes.
        let count = client
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .expect("count");
        assert_eq!(count.get::<_, i64>(0), 2);
        // A masked column in a binary format the gateway cannot rewrite is refused, never
        // passed through.
        let err = client
            .query("SELECT convert_to(ssn, 'UTF8') AS ssn FROM users", &[])
            .await
            .expect_err("a binary bytea column that must be masked");
        let text = err
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(text.contains("binary format"), "{err:?}");
        // A card number in a binary bigint cannot be masked in place: refused.
        let err = client
            .query(
                "SELECT replace(card_number, '', '')::bigint AS n FROM users WHERE id = 1",
                &[],
            )
            .await
            .expect_err("a card number as binary bigint");
        assert!(format!("{err:?}").contains("bigint"), "{err:?}");
        // The session goes on normally afterwards.
        let row = client
            .query_one("SELECT 41 + 1", &[])
            .await
            .expect("after a refusal");
        assert_eq!(row.get::<_, i32>(0), 42);

        // RETURNING through the extended protocol is masked too.
        let row = client
            .query_one(
                "UPDATE users SET name = name WHERE id = $1 RETURNING ssn, notes",
                &[&1i32],
            )
            .await
            .expect("UPDATE … RETURNING");
        assert_eq!(row.get::<_, &str>(0), "****");
        assert!(!row.get::<_, &str>(1).contains(NOTE_IP));
    });
}

#[test]
fn returning_copy_and_held_statements_are_masked() {
    let s = setup();
    let returning = ok(
        &s.gw.psql(
            &s.agent,
            "prod",
            "UPDATE users SET name = name WHERE id = 1 RETURNING email, ssn, card_number",
        ),
        "UPDATE … RETURNING",
    );
    assert_no_secret(&returning, "RETURNING");
    assert!(returning.contains("|****|****1111"), "{returning}");

    // COPY data carries no column names: column rules refuse it, detectors mask it.
    let out = s.gw.psql(&s.agent, "prod", "COPY users TO STDOUT");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(all_output(&out).contains("COPY TO STDOUT cannot be masked by column"));
    assert_no_secret(&all_output(&out), "a refused COPY");
    let loader = s.gw.mint("loader-1", &["loaders"]);
    for sql in [
        "COPY (SELECT id, email, notes FROM users ORDER BY id) TO STDOUT",
        "COPY users (id, email, notes) TO STDOUT WITH (FORMAT csv)",
    ] {
        let copied = ok(&s.gw.psql(&loader, "prod", sql), sql);
        assert_no_secret(&copied, sql);
        assert!(
            copied.contains("[email]") && copied.contains("[ipv4]"),
            "{copied}"
        );
    }
    let out =
        s.gw.psql(&loader, "prod", "COPY users TO STDOUT WITH (FORMAT binary)");
    assert!(!out.status.success(), "binary COPY: {}", describe(&out));

    // A held statement's rows are masked once it is approved and runs.
    let dba = s.gw.mint("dba-1", &["dba"]);
    let sql = "DELETE FROM users WHERE id = 2 RETURNING email, ssn, notes";
    let mut held = s.gw.psql_spawn(&s.agent, "prod", sql);
    let id = held.wait_pending(&s.gw);
    ok(
        &s.gw.cli_as(&dba, &["approve", &id, "--reason", "ok"]),
        "approve",
    );
    let out = held.finish(WAIT);
    let deleted = ok(&out, "the approved DELETE … RETURNING");
    assert!(
        !deleted.contains("bob@example.com") && !deleted.contains("987-65-4321"),
        "{deleted}"
    );
    assert!(deleted.contains("|****|nothing"), "{deleted}");
}

#[test]
fn recordings_keep_only_masked_values_with_counts() {
    let s = setup();
    let loader = s.gw.mint("loader-1", &["loaders"]);
    ok(
        &s.gw
            .psql(&s.agent, "prod", "SELECT * FROM users ORDER BY id"),
        "SELECT *",
    );
    ok(
        &s.gw
            .psql(&loader, "prod", "COPY (SELECT notes FROM users) TO STDOUT"),
        "COPY",
    );
    let rt = runtime();
    rt.block_on(async {
        let (client, _notices) = s.gw.connect(&s.agent, "prod").await.expect("connect");
        client
            .query("SELECT email, notes FROM users WHERE id = $1", &[&1i32])
            .await
            .expect("extended SELECT");
        // A bound parameter is recorded masked by the session's detectors too.
        client
            .query(
                "SELECT count(*) FROM users WHERE email <> $1",
                &[&PARAM_EMAIL],
            )
            .await
            .expect("extended SELECT with a text parameter");
    });

    let data = s.gw.dir().join("data");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let everything = loop {
        // The store file, its write-ahead log and the journal: everything the gateway keeps.
        let mut everything = Vec::new();
        for entry in std::fs::read_dir(&data).unwrap() {
            let path = entry.unwrap().path();
            everything.extend(std::fs::read(&path).unwrap_or_default());
        }
        let stored = std::fs::read(s.gw.db_file()).unwrap_or_default();
        let wal = std::fs::read(s.gw.db_file().with_extension("db-wal")).unwrap_or_default();
        let in_store = contains_bytes(&stored, b"****1111") || contains_bytes(&wal, b"****1111");
        if in_store || std::time::Instant::now() > deadline {
            break everything;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for secret in SECRETS
        .iter()
        .chain(&["987-65-4321", "bob@example.com", PARAM_EMAIL])
    {
        assert!(
            !contains_bytes(&everything, secret.as_bytes()),
            "{secret:?} reached the gateway's data directory"
        );
    }
    for masked in [
        "****1111",
        "[ipv4]",
        "\"kind\":\"response\"",
        "\"phone\"",
        "\"column\"",
    ] {
        assert!(
            contains_bytes(&everything, masked.as_bytes()),
            "{masked:?} is not in the recordings"
        );
    }
    // `sessions show` reads the masked responses back.
    let sessions = s.gw.cli_json(&["sessions", "list"]);
    let ids: Vec<String> = json_objects(&sessions)
        .into_iter()
        .filter_map(|o| o.get("id").and_then(id_text))
        .collect();
    assert_eq!(ids.len(), 3, "{sessions}");
    let mut counted_outcomes = 0;
    for id in ids {
        let shown = ok(&s.gw.cli(&["sessions", "show", &id]), "sessions show");
        assert_no_secret(&shown, "sessions show");
        assert!(shown.contains("masked:"), "session {id}: {shown}");
        // The counts ride on the statement's outcome; the response event keeps only rows.
        let doc = s.gw.cli_json(&["sessions", "show", &id]);
        for detail in json_objects(&doc) {
            let masked = detail.get("masked").and_then(|m| m.as_object());
            match detail.get("kind").and_then(|k| k.as_str()) {
                Some("outcome") if masked.is_some_and(|m| !m.is_empty()) => counted_outcomes += 1,
                Some("response") => assert!(masked.is_none(), "{detail:?}"),
                _ => {}
            }
        }
    }
    assert!(
        counted_outcomes >= 3,
        "{counted_outcomes} outcomes carry counts"
    );
}

#[test]
fn exec_results_are_masked_with_the_same_rules() {
    let s = setup();
    let sql = "SELECT email, ssn AS x, card_number, notes FROM users WHERE id = 1";
    let out = s.gw.cli_as(
        &s.agent,
        &["--output", "json", "exec", "prod", "--sql", sql],
    );
    let text = ok(&out, "airlock exec");
    assert_no_secret(&text, "airlock exec");
    for masked in ["h:", "\"****\"", "****1111", "[ipv4]"] {
        assert!(text.contains(masked), "{masked:?} missing: {text}");
    }
    // Column origins come from preparing the statement; several statements cannot be
    // prepared, so under column rules they are refused before anything runs.
    let out = s.gw.cli_as(
        &s.agent,
        &[
            "exec",
            "prod",
            "--sql",
            "SELECT 1; SELECT ssn AS x FROM users",
        ],
    );
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        all_output(&out).contains("one statement at a time"),
        "{}",
        describe(&out)
    );
    assert_no_secret(&all_output(&out), "a refused exec");
}
