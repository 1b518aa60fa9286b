//! Rule matchers beyond statement kind, end to end: a real PostgreSQL upstream, `airlock serve`
//! and psql. Reads run; a call to a dangerous function is denied although it is a SELECT; a
//! DELETE without WHERE is denied outright; a filtered DELETE on `items` is held; user-defined
//! functions are judged by their volatility in the upstream's catalog.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;
use support::*;

fn matcher_policy_yaml(pg: &PgServer) -> String {
    format!(
        "connections:\n{}\
policies:
  - name: matchers
    groups: [agents]
    connections: [prod]
    rules:
      - match: SELECT
        action: allow
      - match: FUNCTION
        action: deny
      - match: DELETE|UPDATE
        where: missing
        action: deny
        reason: writes need a WHERE clause
      - match: DELETE
        tables: [items]
        action: require-approval
        reviewers: [dba]
        timeout: 60s
",
        connection_yaml("prod", pg.port(), &format!("${{env:{PASSWORD_ENV}}}"))
    )
}

fn assert_refused(out: &std::process::Output, what: &str, needles: &[&str]) {
    assert!(
        !out.status.success(),
        "{what} should have been refused: {}",
        describe(out)
    );
    let text = all_output(out);
    for needle in needles {
        assert!(
            text.contains(needle),
            "{what}: expected {needle:?}: {}",
            describe(out)
        );
    }
}

#[test]
fn functions_unfiltered_writes_and_tables_are_judged_through_psql() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = Gateway::for_pg_config(&pg, &matcher_policy_yaml(&pg));
    let agent = gw.mint("agent-1", &["agents"]);

    let out = gw.psql(&agent, "prod", "select * from items order by id");
    assert!(out.status.success(), "the read failed: {}", describe(&out));
    assert!(stdout_of(&out).contains("1|alpha"), "{}", describe(&out));

    for sql in [
        "select pg_terminate_backend(1)",
        "SELECT * FROM items WHERE id = pg_catalog.pg_cancel_backend(1)::int",
        r#"select U&"\0070g_read_file"('postgresql.conf')"#,
    ] {
        let out = gw.psql(&agent, "prod", sql);
        assert_refused(&out, sql, &["42501"]);
    }

    let out = gw.psql(&agent, "prod", "delete from items");
    assert_refused(
        &out,
        "delete from items",
        &["42501", "writes need a WHERE clause"],
    );
    assert_eq!(pg.item_ids(), "1,2,3", "the unfiltered DELETE must not run");

    let mut held = gw.psql_spawn(&agent, "prod", "delete from items where id = 1");
    held.wait_pending(&gw);
    assert!(
        held.wait_stderr_contains("NOTICE", Duration::from_secs(10)),
        "psql got no NOTICE while held; stderr: {}",
        held.stderr()
    );
    assert!(held.try_status().is_none(), "psql must block while held");
    assert_eq!(pg.item_ids(), "1,2,3", "nothing may run before approval");
}

/// User-defined functions through the gateway, looked up in the upstream's catalog: a STABLE
/// one is a read, a VOLATILE one needs a rule that allows `VOLATILE FUNCTION`, and a function
/// replaced by a volatile one is judged by its new definition once the short cache has passed.
#[test]
fn user_functions_are_judged_by_their_volatility_upstream() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    pg.psql_admin(
        "SET ROLE app_owner;
         CREATE FUNCTION reader() RETURNS int LANGUAGE sql STABLE AS $$ SELECT count(*)::int FROM items $$;
         CREATE FUNCTION bump() RETURNS int LANGUAGE sql VOLATILE
           AS $$ UPDATE items SET name = name || '!' WHERE id = 1 RETURNING 1 $$;
         CREATE FUNCTION other_writer() RETURNS int LANGUAGE sql VOLATILE
           AS $$ DELETE FROM items WHERE id = 3 RETURNING 1 $$;",
    );
    let config = format!(
        "connections:\n{}\
policies:
  - name: functions
    groups: [agents]
    connections: [prod]
    rules:
      - match: SELECT
        action: allow
      - match: VOLATILE FUNCTION
        functions: [bump]
        action: allow
",
        connection_yaml("prod", pg.port(), &format!("${{env:{PASSWORD_ENV}}}"))
    );
    let gw = Gateway::for_pg_config(&pg, &config);
    let agent = gw.mint("agent-1", &["agents"]);

    let out = gw.psql(&agent, "prod", "select reader()");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout_of(&out).trim(), "3", "{}", describe(&out));

    let out = gw.psql(&agent, "prod", "select bump()");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        pg.psql_admin("SELECT name FROM items WHERE id = 1"),
        "alpha!"
    );

    for sql in ["select other_writer()", "select reader(), other_writer()"] {
        let out = gw.psql(&agent, "prod", sql);
        assert_refused(&out, sql, &["42501", "VOLATILE FUNCTION"]);
    }
    assert_eq!(pg.item_ids(), "1,2,3");

    // Replaced behind the gateway's back by a function that writes, while a session that
    // has just called it (and cached its answer) stays open.
    let rt = runtime();
    let (client, _) = rt.block_on(gw.connect(&agent, "prod")).expect("connect");
    rt.block_on(client.simple_query("select reader()"))
        .expect("a read while it is STABLE");
    pg.psql_admin(
        "SET ROLE app_owner;
         CREATE OR REPLACE FUNCTION reader() RETURNS int LANGUAGE sql VOLATILE
           AS $$ DELETE FROM items WHERE id = 2 RETURNING 1 $$;",
    );
    std::thread::sleep(Duration::from_secs(3));
    let err = rt
        .block_on(client.simple_query("select reader()"))
        .expect_err("refused once the cached answer is stale");
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("42501"),
        "{}",
        db_message(&err)
    );
    assert!(
        db_message(&err).contains("VOLATILE FUNCTION"),
        "{}",
        db_message(&err)
    );
    assert_eq!(pg.item_ids(), "1,2,3");
}
