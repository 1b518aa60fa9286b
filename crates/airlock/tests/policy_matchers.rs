//! Rule matchers beyond statement kind, end to end: a real PostgreSQL upstream, `airlock serve`
//! and psql. Reads run; a call to a dangerous function is denied although it is a SELECT; a
//! DELETE without WHERE is denied outright; a filtered DELETE on `items` is held.

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
