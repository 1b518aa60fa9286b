//! The bypass corpus, end to end: every entry of `corpus/select_only_bypass.txt` goes through
//! the real gateway (tokio-postgres, simple query protocol, and the extended protocol for
//! single statements) to a real PostgreSQL under a policy that allows SELECT and nothing
//! else, and must be refused by the gateway itself (SQLSTATE 42501, message `airlock: …`; the
//! upstream's own "permission denied" does not count). Every entry of
//! `corpus/select_only_allowed.txt` must run. Afterwards the upstream must look exactly as
//! before: data, sequence, large objects, relations, functions, roles, rules, grants.
//!
//! Corpus format: one entry per line; `#` lines and blank lines are ignored; an entry spanning
//! several lines sits between a line `<<<` and a line `>>>`, verbatim.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use support::*;
use tokio_postgres::Client;

struct Entry {
    line: usize,
    sql: String,
}

fn load(name: &str) -> Vec<Entry> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut entries = Vec::new();
    let mut open: Option<(usize, Vec<&str>)> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if let Some((start, lines)) = open.as_mut() {
            if line == ">>>" {
                entries.push(Entry {
                    line: *start,
                    sql: lines.join("\n"),
                });
                open = None;
            } else {
                lines.push(line);
            }
            continue;
        }
        match line.trim() {
            "" => {}
            "<<<" => open = Some((number, Vec::new())),
            ">>>" => panic!("{name}:{number}: `>>>` without `<<<`"),
            comment if comment.starts_with('#') => {}
            _ => entries.push(Entry {
                line: number,
                sql: line.to_string(),
            }),
        }
    }
    assert!(
        open.is_none(),
        "{name}: an entry opened with `<<<` never ends"
    );
    entries
}

const SELECT_ONLY: &str = "\
policies:
  - name: read-only
    groups: [agents]
    connections: [prod]
    rules:
      - match: SELECT
        action: allow
";

/// Objects the corpus refers to, owned by the gateway's upstream user.
const FIXTURES: &str = "SET ROLE app_owner;
CREATE SEQUENCE seq;
CREATE FUNCTION bump() RETURNS int LANGUAGE sql VOLATILE
  AS $$ UPDATE items SET name = name || '!' WHERE id = 1 RETURNING 1 $$;
CREATE FUNCTION safe_len(text) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT length($1) $$;
CREATE PROCEDURE wipe() LANGUAGE sql AS $$ DELETE FROM items $$;";

/// Everything a refused statement could have changed, as one line of text.
const FINGERPRINT: &str = "SELECT concat_ws(' | ',
  (SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM items),
  (SELECT last_value || '/' || is_called FROM seq),
  (SELECT count(*) FROM pg_largeobject_metadata),
  (SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class
     WHERE relnamespace = 'public'::regnamespace),
  (SELECT string_agg(proname || ':' || provolatile::text, ',' ORDER BY proname) FROM pg_proc
     WHERE pronamespace = 'public'::regnamespace),
  (SELECT string_agg(rolname || ':' || rolsuper::text || rolcreaterole::text, ',' ORDER BY rolname)
     FROM pg_roles),
  (SELECT count(*) FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
     WHERE c.relnamespace = 'public'::regnamespace),
  (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal),
  (SELECT string_agg(extname, ',') FROM pg_extension),
  (SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace),
  (SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database),
  (SELECT count(*) FROM pg_policy),
  (SELECT coalesce(array_to_string(relacl, ','), '-') FROM pg_class WHERE relname = 'items'),
  (SELECT coalesce(obj_description('items'::regclass), '-')),
  (SELECT count(*) FROM pg_db_role_setting))";

/// Connects as the agent, again if a refusal or failure closed the connection.
async fn client(gw: &Gateway, token: &str, current: &mut Option<Client>) -> Client {
    if let Some(client) = current.take().filter(|c| !c.is_closed()) {
        return client;
    }
    let (client, _notices) = gw
        .connect(token, "prod")
        .await
        .expect("connect as the agent");
    client
}

/// Why an error is not the gateway's own refusal, or `None` when it is.
fn not_refused_by_gateway(error: &tokio_postgres::Error) -> Option<String> {
    match error.as_db_error() {
        Some(db) if db.code().code() == "42501" && db.message().starts_with("airlock:") => None,
        Some(db) => Some(format!(
            "failed upstream instead of being refused: {} ({})",
            db.message(),
            db.code().code()
        )),
        None => Some(format!("failed without a server error: {error}")),
    }
}

fn report(failures: &[String], what: &str) {
    assert!(
        failures.is_empty(),
        "{} {what}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_bypass_is_refused_and_every_read_runs_under_a_select_only_policy() {
    let bypasses = load("select_only_bypass.txt");
    let reads = load("select_only_allowed.txt");
    assert!(
        bypasses.len() >= 120,
        "the corpus holds {} entries",
        bypasses.len()
    );

    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    pg.psql_admin(FIXTURES);
    let config = format!(
        "connections:\n{}{SELECT_ONLY}",
        connection_yaml("prod", pg.port(), &format!("${{env:{PASSWORD_ENV}}}"))
    );
    let gw = Gateway::for_pg_config(&pg, &config);
    let agent = gw.mint("agent-1", &["agents"]);
    let before = pg.psql_admin(FINGERPRINT);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (refusals, reads_failed) = runtime.block_on(async {
        let mut current = None;
        let mut failures = Vec::new();
        for entry in &bypasses {
            let at = format!("select_only_bypass.txt:{} {:?}", entry.line, entry.sql);
            let c = client(&gw, &agent, &mut current).await;
            match c.batch_execute(&entry.sql).await {
                Ok(()) => failures.push(format!("{at}: ran (simple query)")),
                Err(e) => {
                    if let Some(why) = not_refused_by_gateway(&e) {
                        failures.push(format!("{at}: {why} (simple query)"));
                    }
                }
            }
            current = Some(c);
            // One statement can also come as Parse/Bind/Execute; the Parse reaches the
            // upstream (which may reject it), but the Execute must never run.
            if !entry.sql.contains(';') {
                let c = client(&gw, &agent, &mut current).await;
                if c.query(entry.sql.as_str(), &[]).await.is_ok() {
                    failures.push(format!("{at}: ran (extended protocol)"));
                }
                current = Some(c);
            }
        }
        let mut reads_failed = Vec::new();
        for entry in &reads {
            let at = format!("select_only_allowed.txt:{} {:?}", entry.line, entry.sql);
            let c = client(&gw, &agent, &mut current).await;
            if let Err(e) = c.batch_execute(&entry.sql).await {
                reads_failed.push(format!("{at}: {e:?} (simple query)"));
            }
            if !entry.sql.contains(';') {
                if let Err(e) = c.query(entry.sql.as_str(), &[]).await {
                    reads_failed.push(format!("{at}: {e:?} (extended protocol)"));
                }
            }
            current = Some(c);
        }
        (failures, reads_failed)
    });
    report(&refusals, "bypass entries were not refused by the gateway");
    report(&reads_failed, "allowed reads failed");
    assert_eq!(
        pg.psql_admin(FINGERPRINT),
        before,
        "the upstream changed although every write was refused"
    );
    assert_eq!(pg.item_ids(), "1,2,3");
}
