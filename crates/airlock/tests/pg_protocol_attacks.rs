//! Regression tests for attacks on the PostgreSQL gateway found in a security review, end to
//! end: a real PostgreSQL upstream, the `airlock serve` binary and a raw protocol frontend that
//! sends exactly the message sequences of the attacks. Each attack must now be refused (the
//! client gets an error or a hold, and the upstream is untouched); a few tests check that
//! legitimate use of the same protocol features still works.
//!
//! Every test starts its own PostgreSQL and gateway, and every read has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::*;

/// The approval timeout of these tests: held statements expire quickly.
const SHORT: &str = "3s";
/// How long a raw read may wait for the gateway (longer than [`SHORT`]).
const READ_DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// A raw PostgreSQL frontend
// ---------------------------------------------------------------------------------------------

/// An ErrorResponse or NoticeResponse, by its fields.
#[derive(Debug, Clone, Default)]
struct PgError {
    severity: String,
    code: String,
    message: String,
}

impl PgError {
    fn parse(body: &[u8]) -> PgError {
        let mut e = PgError::default();
        let mut rest = body;
        while let Some((&field, tail)) = rest.split_first() {
            if field == 0 {
                break;
            }
            let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            match field {
                b'V' => e.severity = value,
                b'S' if e.severity.is_empty() => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or(&[]);
        }
        e
    }
}

/// What the gateway sent back: (tag, body) pairs, and whether it closed the connection.
#[derive(Debug, Default)]
struct Reply {
    messages: Vec<(u8, Vec<u8>)>,
    closed: bool,
}

impl Reply {
    fn errors(&self) -> Vec<PgError> {
        self.of(b'E')
    }

    fn notices(&self) -> Vec<PgError> {
        self.of(b'N')
    }

    fn of(&self, tag: u8) -> Vec<PgError> {
        self.messages
            .iter()
            .filter(|(t, _)| *t == tag)
            .map(|(_, b)| PgError::parse(b))
            .collect()
    }

    fn has(&self, tag: u8) -> bool {
        self.messages.iter().any(|(t, _)| *t == tag)
    }

    /// The first column of every DataRow, as text.
    fn first_values(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter(|(t, _)| *t == b'D')
            .filter_map(|(_, b)| {
                let len = i32::from_be_bytes(b.get(2..6)?.try_into().ok()?);
                let len = usize::try_from(len).ok()?;
                Some(String::from_utf8_lossy(b.get(6..6 + len)?).into_owned())
            })
            .collect()
    }

    /// The CommandComplete tags.
    fn tags(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter(|(t, _)| *t == b'C')
            .map(|(_, b)| {
                String::from_utf8_lossy(b)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .collect()
    }

    /// Whether a NOTICE said the statement is held for approval.
    fn held(&self) -> bool {
        self.notices()
            .iter()
            .any(|n| n.message.contains("approval request"))
    }

    fn show(&self) -> String {
        let mut lines: Vec<String> = self
            .messages
            .iter()
            .map(|(t, b)| match t {
                b'E' | b'N' => format!("{} {:?}", *t as char, PgError::parse(b)),
                _ => format!(
                    "{} {:?}",
                    *t as char,
                    String::from_utf8_lossy(&b[..b.len().min(60)])
                ),
            })
            .collect();
        if self.closed {
            lines.push("<closed>".into());
        }
        lines.join("\n    ")
    }
}

/// A raw session with the gateway's PostgreSQL listener.
struct Fe {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Fe {
    /// Startup as `agent` on `database` with extra startup parameters, answering the cleartext
    /// password request with `token`; the login error if the gateway refuses.
    fn connect(
        port: u16,
        token: &str,
        database: &str,
        extra: &[(&str, &str)],
    ) -> Result<Fe, PgError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .expect("connect to the gateway's PostgreSQL port");
        stream
            .set_read_timeout(Some(Duration::from_millis(250)))
            .expect("set read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(15)))
            .expect("set write timeout");
        let mut fe = Fe {
            stream,
            buf: Vec::new(),
        };
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in [("user", "agent"), ("database", database)]
            .iter()
            .chain(extra.iter())
        {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend(body);
        fe.send(&startup);
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            match fe.read_message(deadline) {
                Some((b'R', body)) => match body.get(..4).map(|c| c.try_into().unwrap()) {
                    Some(code) if u32::from_be_bytes(code) == 3 => fe.send(&msg(b'p', &cs(token))),
                    Some(code) if u32::from_be_bytes(code) == 0 => {}
                    other => panic!("unexpected authentication request {other:?}"),
                },
                Some((b'E', body)) => return Err(PgError::parse(&body)),
                Some((b'Z', _)) => return Ok(fe),
                Some(_) => {}
                None => panic!("the gateway closed the connection during login"),
            }
        }
    }

    fn login(port: u16, token: &str) -> Fe {
        Fe::connect(port, token, "prod", &[]).unwrap_or_else(|e| panic!("raw login refused: {e:?}"))
    }

    fn send(&mut self, bytes: &[u8]) {
        // A write error (the gateway closed) shows up as `closed` on the next read.
        let _ = self.stream.write_all(bytes);
        let _ = self.stream.flush();
    }

    /// The next message, `None` when the connection is closed; panics after `deadline`.
    fn read_message(&mut self, deadline: Instant) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                assert!(len >= 4, "the gateway sent a message of length {len}");
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..1 + len].to_vec();
                    self.buf.drain(..1 + len);
                    return Some((tag, body));
                }
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(
                        Instant::now() < deadline,
                        "the gateway neither answered nor closed within {READ_DEADLINE:?}; \
                         buffered {} bytes",
                        self.buf.len()
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("raw frontend: read failed: {e} ({:?})", e.kind());
                    return None;
                }
            }
        }
    }

    /// Reads until `readies` ReadyForQuery messages have arrived or the connection closes.
    fn read_ready(&mut self, readies: usize) -> Reply {
        let deadline = Instant::now() + READ_DEADLINE;
        let mut reply = Reply::default();
        let mut seen = 0;
        while seen < readies {
            match self.read_message(deadline) {
                Some(m) => {
                    if m.0 == b'Z' {
                        seen += 1;
                    }
                    reply.messages.push(m);
                }
                None => {
                    reply.closed = true;
                    break;
                }
            }
        }
        reply
    }

    /// Sends `bytes` and reads the answers to `readies` batches.
    fn round(&mut self, bytes: &[u8], readies: usize) -> Reply {
        self.send(bytes);
        self.read_ready(readies)
    }

    /// A simple Query and its answer.
    fn simple(&mut self, sql: &str) -> Reply {
        self.round(&query(sql), 1)
    }
}

fn cs(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn query(sql: &str) -> Vec<u8> {
    query_bytes(sql.as_bytes())
}

fn query_bytes(sql: &[u8]) -> Vec<u8> {
    let mut body = sql.to_vec();
    body.push(0);
    msg(b'Q', &body)
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cs(name);
    body.extend(cs(sql));
    body.extend_from_slice(&0i16.to_be_bytes());
    msg(b'P', &body)
}

fn bind(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = cs(portal);
    body.extend(cs(statement));
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    msg(b'B', &body)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut body = cs(portal);
    body.extend_from_slice(&0i32.to_be_bytes());
    msg(b'E', &body)
}

fn describe_msg(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend(cs(name));
    msg(b'D', &body)
}

fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend(cs(name));
    msg(b'C', &body)
}

fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------------
// Stories and assertions
// ---------------------------------------------------------------------------------------------

struct Story {
    pg: PgServer,
    gw: Gateway,
    agent: String,
}

/// The template policy (reads and transactions run, DELETE/DROP/UPDATE held for `dba` for
/// [`SHORT`], TRUNCATE and everything else denied).
fn story() -> Story {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = Gateway::for_pg(&pg, SHORT);
    let agent = gw.mint("agent-1", &["agents"]);
    Story { pg, gw, agent }
}

/// Like the template, but group `agents` may run the kinds in `allow` (e.g.
/// `SELECT|EXPLAIN|EXECUTE|FETCH|TRANSACTION`).
fn story_allowing(allow: &str) -> Story {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let yaml = format!(
        "connections:\n{}policies:\n  - name: agents-on-prod\n    groups: [agents]\n    \
         connections: [prod]\n    rules:\n      \
         - match: {allow}\n        action: allow\n      \
         - match: DELETE|DROP|UPDATE\n        action: require-approval\n        \
         reviewers: [dba]\n        approvals: 1\n        timeout: {SHORT}\n      \
         - match: TRUNCATE\n        action: deny\n        reason: {TRUNCATE_REASON}\n    \
         record: true\n",
        connection_yaml("prod", pg.port(), &format!("${{env:{PASSWORD_ENV}}}")),
    );
    let gw = Gateway::for_pg_config(&pg, &yaml);
    let agent = gw.mint("agent-1", &["agents"]);
    Story { pg, gw, agent }
}

/// A refusal with SQLSTATE `code` (and `needle` in its message).
fn assert_refused(reply: &Reply, code: &str, needle: &str, what: &str) {
    let errors = reply.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.code == code && e.message.contains(needle)),
        "{what}: expected an error {code} mentioning {needle:?}, got:\n    {}",
        reply.show()
    );
}

/// The statement was judged as the write it really is: held for approval (and, with the short
/// timeout, expired with an error) or refused outright — never run.
fn assert_held_or_refused(reply: &Reply, what: &str) {
    let errors = reply.errors();
    let refused = errors.iter().any(|e| e.code == "42501");
    let held_then_failed = reply.held() && !errors.is_empty();
    assert!(
        refused || held_then_failed,
        "{what}: expected a hold for approval (then an error) or a 42501 refusal, got:\n    {}",
        reply.show()
    );
    assert!(
        !reply.has(b'D'),
        "{what}: rows came back from a statement that should not have run:\n    {}",
        reply.show()
    );
    assert!(
        !reply.tags().iter().any(|t| t.starts_with("DELETE")),
        "{what}: a DELETE completed:\n    {}",
        reply.show()
    );
}

fn assert_no_errors(reply: &Reply, what: &str) {
    assert!(
        reply.errors().is_empty() && !reply.closed,
        "{what}: expected success, got:\n    {}",
        reply.show()
    );
}

/// One text value of a simple query that must succeed.
fn value_of(fe: &mut Fe, sql: &str) -> String {
    let reply = fe.simple(sql);
    assert_no_errors(&reply, sql);
    reply
        .first_values()
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("{sql}: no row:\n    {}", reply.show()))
}

/// The session still reads SQL the way the gateway does.
fn assert_reading_settings_intact(fe: &mut Fe) {
    assert_eq!(
        value_of(fe, "SELECT current_setting('standard_conforming_strings')"),
        "on"
    );
    assert_eq!(
        value_of(fe, "SELECT current_setting('client_encoding')"),
        "UTF8"
    );
}

fn table_exists(pg: &PgServer, table: &str) -> bool {
    pg.psql_admin(&format!("SELECT to_regclass('public.{table}') IS NOT NULL")) == "t"
}

/// The gateway survived: the process runs, `/readyz` is 200, a new psql session works.
fn assert_gateway_alive(s: &mut Story, what: &str) {
    assert!(s.gw.alive(), "{what}: the gateway process died");
    assert_eq!(s.gw.readyz(), Some(200), "{what}: /readyz");
    let out = s.gw.psql(&s.agent, "prod", "SELECT count(*) FROM items");
    assert!(
        out.status.success() && stdout_of(&out).trim() == "3",
        "{what}: a new psql session failed: {}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Settings that change how the server reads SQL text
// ---------------------------------------------------------------------------------------------

#[test]
fn standard_conforming_strings_cannot_be_turned_off() {
    // SET and SELECT are allowed here, so only the built-in refusal stands in the way.
    let s = story_allowing("SELECT|SET|TRANSACTION");
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);

    let reply = fe.simple("SELECT set_config('standard_conforming_strings', 'off', false)");
    assert_refused(
        &reply,
        "42501",
        "standard_conforming_strings",
        "set_config(standard_conforming_strings)",
    );
    // The reviewer's follow-up: with backslash escapes on, this would be a SELECT and a DELETE.
    let reply = fe.simple("SELECT '\\', ' ; DELETE FROM items WHERE id = 3; -- '");
    assert!(
        !reply.tags().iter().any(|t| t.starts_with("DELETE")),
        "the disguised DELETE ran:\n    {}",
        reply.show()
    );
    assert_eq!(
        s.pg.item_ids(),
        "1,2,3",
        "the disguised DELETE ran upstream"
    );

    for sql in [
        "SET standard_conforming_strings = off",
        "SET SESSION standard_conforming_strings TO off",
        "SET LOCAL standard_conforming_strings = off",
        "SELECT pg_catalog.set_config('Standard_Conforming_Strings', 'off', true)",
        "RESET ALL",
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'SJIS'",
        "SELECT set_config('client_encoding', 'SJIS', false)",
    ] {
        let reply = fe.simple(sql);
        assert!(
            reply.errors().iter().any(|e| e.code == "42501"),
            "{sql}: expected a 42501 refusal, got:\n    {}",
            reply.show()
        );
    }
    assert_reading_settings_intact(&mut fe);
    // Harmless settings still work under this policy.
    let reply = fe.simple("SELECT set_config('application_name', 'probe', false)");
    assert_no_errors(&reply, "set_config(application_name)");
    let reply = fe.simple("SET search_path = public");
    assert_no_errors(&reply, "SET search_path");
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn standard_conforming_strings_attack_in_one_write_deletes_nothing() {
    let s = story_allowing("SELECT|SET|TRANSACTION");
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    // The setting change and the disguised DELETE pipelined in one write.
    let reply = fe.round(
        &cat(&[
            query("SELECT set_config('standard_conforming_strings', 'off', false)"),
            query("SELECT '\\', ' ; DELETE FROM items WHERE id = 3; -- '"),
        ]),
        2,
    );
    assert_refused(
        &reply,
        "42501",
        "standard_conforming_strings",
        "pipelined set_config",
    );
    assert!(
        !reply.tags().iter().any(|t| t.starts_with("DELETE")),
        "the disguised DELETE ran:\n    {}",
        reply.show()
    );
    assert_eq!(s.pg.item_ids(), "1,2,3");
    if !reply.closed {
        assert_reading_settings_intact(&mut fe);
    }
}

#[test]
fn sjis_client_encoding_is_refused_at_login() {
    let s = story();
    for encoding in ["SJIS", "sjis", "Shift_JIS", "BIG5", "GBK"] {
        match Fe::connect(
            s.gw.pg_port,
            &s.agent,
            "prod",
            &[("client_encoding", encoding)],
        ) {
            Ok(mut fe) => {
                // Had login gone through, this is the reviewer's payload.
                let reply = fe.round(
                    &query_bytes(b"SELECT E'\xc2\x81\\' ; DELETE FROM items WHERE id = 3; --'"),
                    1,
                );
                panic!(
                    "login with client_encoding={encoding} was accepted; the SJIS payload got:\n    \
                     {}\nitems now: {}",
                    reply.show(),
                    s.pg.item_ids()
                );
            }
            Err(e) => {
                assert!(
                    e.message.contains("client_encoding") && !e.code.is_empty(),
                    "client_encoding={encoding}: the login error is not clear: {e:?}"
                );
            }
        }
    }
    // UTF8 spelled differently still logs in, and `options` cannot smuggle an encoding in.
    for (key, value) in [
        ("client_encoding", "UTF8"),
        ("client_encoding", "utf-8"),
        ("options", "-c client_encoding=SJIS"),
        ("options", "-c standard_conforming_strings=off"),
    ] {
        let mut fe = Fe::connect(s.gw.pg_port, &s.agent, "prod", &[(key, value)])
            .unwrap_or_else(|e| panic!("login with {key}={value} refused: {e:?}"));
        assert_reading_settings_intact(&mut fe);
    }
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn sjis_payload_after_a_pipelined_encoding_switch_deletes_nothing() {
    // SELECT and SET allowed: only the built-in refusal stops the encoding switch.
    let s = story_allowing("SELECT|SET|TRANSACTION");
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    let reply = fe.round(
        &cat(&[
            query("SELECT set_config('client_encoding', 'SJIS', false)"),
            query_bytes(b"SELECT E'\xc2\x81\\' ; DELETE FROM items WHERE id = 2; --'"),
        ]),
        2,
    );
    assert_refused(
        &reply,
        "42501",
        "client_encoding",
        "set_config(client_encoding)",
    );
    assert!(
        !reply.tags().iter().any(|t| t.starts_with("DELETE")),
        "the SJIS-disguised DELETE ran:\n    {}",
        reply.show()
    );
    assert_eq!(s.pg.item_ids(), "1,2,3");
    if !reply.closed {
        assert_reading_settings_intact(&mut fe);
    }
}

// ---------------------------------------------------------------------------------------------
// 2–4. Names whose meaning the upstream did not change
// ---------------------------------------------------------------------------------------------

/// Parse "s" = DELETE; a failed re-Parse of "s" as SELECT; Bind/Execute "s".
fn named_reparse_batches() -> [Vec<u8>; 3] {
    [
        cat(&[parse("s", "DELETE FROM items WHERE id = 3"), sync()]),
        cat(&[parse("s", "SELECT 1"), sync()]),
        cat(&[bind("", "s", &[]), execute(""), sync()]),
    ]
}

#[test]
fn failed_reparse_of_a_named_statement_keeps_its_delete_meaning() {
    let s = story();
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    let [first, second, third] = named_reparse_batches();
    let reply = fe.round(&first, 1);
    assert_no_errors(&reply, "Parse s = DELETE");
    let reply = fe.round(&second, 1);
    assert!(
        reply.errors().iter().any(|e| e.code == "42P05"),
        "the upstream should refuse to re-Parse \"s\":\n    {}",
        reply.show()
    );
    let reply = fe.round(&third, 1);
    assert_held_or_refused(&reply, "Execute of \"s\" after a failed re-Parse");
    assert_eq!(s.pg.item_ids(), "1,2,3", "the DELETE behind \"s\" ran");
    // The request reviewers saw (and that expired) is the DELETE, not `SELECT 1`.
    if reply.held() {
        let list = s.gw.cli_json(&["approvals", "list", "--state", "expired"]);
        assert!(
            approval_objects(&list)
                .iter()
                .any(|o| has_field_equal(o, "DELETE FROM items WHERE id = 3")),
            "no expired request for the DELETE: {list}"
        );
    }
    // The session goes on.
    assert_eq!(value_of(&mut fe, "SELECT count(*) FROM items"), "3");
}

#[test]
fn failed_reparse_of_a_named_statement_pipelined_in_one_write() {
    let s = story();
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    let reply = fe.round(&named_reparse_batches().concat(), 3);
    assert_held_or_refused(&reply, "pipelined Execute of \"s\" after a failed re-Parse");
    assert_eq!(s.pg.item_ids(), "1,2,3", "the DELETE behind \"s\" ran");
    assert_eq!(value_of(&mut fe, "SELECT count(*) FROM items"), "3");
}

#[test]
fn skipped_unnamed_parse_keeps_the_delete_meaning() {
    let s = story();
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    let reply = fe.round(
        &cat(&[parse("", "DELETE FROM items WHERE id = 2"), sync()]),
        1,
    );
    assert_no_errors(&reply, "Parse \"\" = DELETE");
    // The Bind fails upstream, so the upstream skips the Parse that follows it.
    let reply = fe.round(
        &cat(&[bind("x", "nope", &[]), parse("", "SELECT 1"), sync()]),
        1,
    );
    assert!(
        !reply.errors().is_empty(),
        "Bind to an unknown statement should fail:\n    {}",
        reply.show()
    );
    let reply = fe.round(&cat(&[bind("", "", &[]), execute(""), sync()]), 1);
    assert_held_or_refused(&reply, "Execute of the unnamed statement");
    assert_eq!(s.pg.item_ids(), "1,2,3", "the unnamed DELETE ran");

    // The same three batches in one write.
    let reply = fe.round(
        &cat(&[
            parse("", "DELETE FROM items WHERE id = 2"),
            sync(),
            bind("x", "nope", &[]),
            parse("", "SELECT 1"),
            sync(),
            bind("", "", &[]),
            execute(""),
            sync(),
        ]),
        3,
    );
    assert_held_or_refused(&reply, "pipelined Execute of the unnamed statement");
    assert_eq!(s.pg.item_ids(), "1,2,3", "the pipelined unnamed DELETE ran");
}

#[test]
fn portal_rebind_rolled_back_by_a_savepoint_keeps_the_delete_meaning() {
    let s = story();
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    assert_no_errors(&fe.simple("BEGIN"), "BEGIN");
    let reply = fe.round(
        &cat(&[
            parse("sd", "DELETE FROM items WHERE id = 3"),
            bind("p", "sd", &[]),
            sync(),
        ]),
        1,
    );
    assert_no_errors(&reply, "Bind p = DELETE");
    assert_no_errors(&fe.simple("SAVEPOINT a"), "SAVEPOINT");
    let reply = fe.round(
        &cat(&[parse("ss", "SELECT 1"), bind("p", "ss", &[]), sync()]),
        1,
    );
    assert!(
        reply.errors().iter().any(|e| e.code == "42P03"),
        "re-binding portal p should fail upstream:\n    {}",
        reply.show()
    );
    assert_no_errors(&fe.simple("ROLLBACK TO a"), "ROLLBACK TO a");
    let reply = fe.round(&cat(&[execute("p"), sync()]), 1);
    assert_held_or_refused(&reply, "Execute p after ROLLBACK TO");
    // COMMIT, not ROLLBACK, so a DELETE that slipped through would stay visible.
    let _ = fe.simple("COMMIT");
    assert_eq!(s.pg.item_ids(), "1,2,3", "the DELETE behind portal p ran");
}

// ---------------------------------------------------------------------------------------------
// 5. SQL-level EXECUTE / FETCH of protocol-level names, and EXPLAIN ANALYZE of writes
// ---------------------------------------------------------------------------------------------

const EXPLAIN_POLICY: &str = "SELECT|EXPLAIN|EXECUTE|FETCH|TRANSACTION";

#[test]
fn sql_execute_of_a_protocol_prepared_delete_is_judged_as_delete() {
    let s = story_allowing(EXPLAIN_POLICY);
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    let reply = fe.round(
        &cat(&[parse("d", "DELETE FROM items WHERE id = 3"), sync()]),
        1,
    );
    assert_no_errors(&reply, "Parse d = DELETE");
    for sql in ["EXPLAIN ANALYZE EXECUTE d", "EXECUTE d"] {
        let reply = fe.simple(sql);
        assert_held_or_refused(&reply, sql);
        assert_eq!(s.pg.item_ids(), "1,2,3", "{sql} ran the DELETE");
    }
    // A name the gateway never saw prepared (SQL-level PREPARE is refused here anyway) is not
    // waved through as a plain EXECUTE either.
    let reply = fe.simple("EXECUTE never_prepared");
    assert!(
        !reply.errors().is_empty(),
        "EXECUTE of an unknown name:\n    {}",
        reply.show()
    );
    // An EXECUTE of a protocol-prepared SELECT is still fine.
    let reply = fe.round(
        &cat(&[parse("r", "SELECT name FROM items WHERE id = 1"), sync()]),
        1,
    );
    assert_no_errors(&reply, "Parse r = SELECT");
    let reply = fe.simple("EXECUTE r");
    assert_no_errors(&reply, "EXECUTE r");
    assert_eq!(reply.first_values(), vec!["alpha".to_string()]);
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn sql_fetch_from_a_protocol_portal_bound_to_delete_is_judged_as_delete() {
    let s = story_allowing(EXPLAIN_POLICY);
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    assert_no_errors(&fe.simple("BEGIN"), "BEGIN");
    let reply = fe.round(
        &cat(&[
            parse("d", "DELETE FROM items WHERE id = 3 RETURNING *"),
            bind("p", "d", &[]),
            sync(),
        ]),
        1,
    );
    assert_no_errors(&reply, "Bind p = DELETE … RETURNING");
    for sql in ["FETCH ALL FROM p", "MOVE ALL IN p"] {
        let reply = fe.simple(sql);
        assert_held_or_refused(&reply, sql);
        assert!(
            !reply.first_values().iter().any(|v| v == "3"),
            "{sql} returned the deleted row:\n    {}",
            reply.show()
        );
        // The transaction is aborted after the refusal; start over for the next attempt.
        let _ = fe.simple("ROLLBACK");
        assert_eq!(s.pg.item_ids(), "1,2,3", "{sql} ran the DELETE");
        assert_no_errors(&fe.simple("BEGIN"), "BEGIN");
        let reply = fe.round(
            &cat(&[
                parse("", "DELETE FROM items WHERE id = 3 RETURNING *"),
                bind("p", "", &[]),
                sync(),
            ]),
            1,
        );
        assert_no_errors(&reply, "Bind p = DELETE … RETURNING (again)");
    }
    // COMMIT, not ROLLBACK, so a DELETE that slipped through would stay visible.
    let _ = fe.simple("COMMIT");
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn explain_analyze_cannot_create_tables() {
    let s = story_allowing(EXPLAIN_POLICY);
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    for (sql, table) in [
        ("EXPLAIN ANALYZE CREATE TABLE t2 AS SELECT 1", "t2"),
        ("EXPLAIN ANALYZE SELECT 1 AS a INTO t3", "t3"),
        ("EXPLAIN (ANALYZE) CREATE TABLE t4 AS SELECT 1", "t4"),
        ("SELECT 1 AS a INTO t5", "t5"),
    ] {
        let reply = fe.simple(sql);
        assert!(
            reply.errors().iter().any(|e| e.code == "42501"),
            "{sql}: expected a 42501 refusal, got:\n    {}",
            reply.show()
        );
        assert!(!table_exists(&s.pg, table), "{sql} created table {table}");
    }
    // A plain EXPLAIN ANALYZE of a read is still allowed.
    let reply = fe.simple("EXPLAIN ANALYZE SELECT * FROM items");
    assert_no_errors(&reply, "EXPLAIN ANALYZE SELECT");
}

// ---------------------------------------------------------------------------------------------
// 6. Statements that could crash the classifier
// ---------------------------------------------------------------------------------------------

fn deep_sum(terms: usize) -> String {
    let mut sql = String::with_capacity(8 + 2 * terms);
    sql.push_str("SELECT 1");
    for _ in 1..terms {
        sql.push_str("+1");
    }
    sql
}

/// Sends `sql` as a simple Query and through the extended protocol, each on a new session:
/// the client gets an error or a result, and the gateway survives.
fn assert_survives(sql: &str, what: &str) {
    let mut s = story();
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    let reply = fe.round(&query(sql), 1);
    assert!(
        !reply.closed && (reply.has(b'E') || reply.has(b'D')),
        "{what}: expected an error or a result on a live session, got:\n    {}",
        reply.show()
    );
    assert_gateway_alive(&mut s, what);
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    let reply = fe.round(
        &cat(&[parse("", sql), bind("", "", &[]), execute(""), sync()]),
        1,
    );
    assert!(
        !reply.closed && (reply.has(b'E') || reply.has(b'D')),
        "{what} (extended protocol): expected an error or a result, got:\n    {}",
        reply.show()
    );
    assert_gateway_alive(&mut s, what);
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn a_sum_of_20_000_terms_does_not_crash_the_gateway() {
    assert_survives(&deep_sum(20_000), "SELECT 1+1+… (20,000 terms)");
}

#[test]
fn a_sum_of_200_000_terms_does_not_crash_the_gateway() {
    assert_survives(&deep_sum(200_000), "SELECT 1+1+… (200,000 terms)");
}

#[test]
fn deeply_nested_parentheses_do_not_crash_the_gateway() {
    let sql = format!("SELECT {}1{}", "(".repeat(100_000), ")".repeat(100_000));
    assert_survives(&sql, "SELECT ((((…1…)))) (100,000 levels)");
}

#[test]
fn statements_over_the_classification_limit_are_refused_as_unparseable() {
    let mut s = story();
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    let sql = format!(
        "SELECT length('{}')",
        "x".repeat(airlock_core::classify::MAX_CLASSIFIED_LEN + 10)
    );
    let reply = fe.simple(&sql);
    let errors = reply.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.code.starts_with("42") && e.message.contains("bytes")),
        "a statement over the limit: expected a 42xxx refusal naming its size, got:\n    {}",
        reply.show()
    );
    assert!(!reply.has(b'D'), "the oversized statement ran");
    // The session and the gateway go on.
    assert_eq!(value_of(&mut fe, "SELECT 7"), "7");
    assert_gateway_alive(&mut s, "after an oversized statement");
}

// ---------------------------------------------------------------------------------------------
// 7. Expectation drift: a simple Query inside an unfinished extended batch
// ---------------------------------------------------------------------------------------------

#[test]
fn simple_query_inside_an_extended_batch_cannot_shift_refusals() {
    let s = story();
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    let reply = fe.simple("TRUNCATE items");
    assert_refused(
        &reply,
        "42501",
        TRUNCATE_REASON,
        "TRUNCATE before the drift",
    );

    let reply = fe.round(
        &cat(&[bind("x", "nope", &[]), query("SELECT 1"), sync()]),
        2,
    );
    if reply.closed {
        // The session was ended with a FATAL protocol error.
        assert!(
            reply.errors().iter().any(|e| e.severity == "FATAL"),
            "the session closed without a FATAL error:\n    {}",
            reply.show()
        );
    } else {
        // The session went on: later refusals must still be the gateway's 42501.
        let reply = fe.simple("TRUNCATE items");
        assert_refused(&reply, "42501", TRUNCATE_REASON, "TRUNCATE after the drift");
        assert_eq!(value_of(&mut fe, "SELECT 42"), "42");
    }
    assert_eq!(s.pg.item_ids(), "1,2,3");

    // A fresh session is refused as usual.
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    let reply = fe.simple("TRUNCATE items");
    assert_refused(
        &reply,
        "42501",
        TRUNCATE_REASON,
        "TRUNCATE on a new session",
    );
    assert_eq!(value_of(&mut fe, "SELECT 42"), "42");
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

// ---------------------------------------------------------------------------------------------
// 8. Legitimate use still works
// ---------------------------------------------------------------------------------------------

#[test]
fn tokio_postgres_pipelines_still_work() {
    let s = story();
    let rt = runtime();
    rt.block_on(async {
        let (client, _) = s.gw.connect(&s.agent, "prod").await.expect("connect");
        let stmt = client
            .prepare("SELECT name FROM items WHERE id = $1")
            .await
            .expect("prepare");
        let (a, b, c) = tokio::try_join!(
            client.query_one(&stmt, &[&1i32]),
            client.query_one(&stmt, &[&2i32]),
            client.query_one(&stmt, &[&3i32]),
        )
        .expect("pipelined queries on a prepared statement");
        assert_eq!(a.get::<_, String>(0), "alpha");
        assert_eq!(b.get::<_, String>(0), "beta");
        assert_eq!(c.get::<_, String>(0), "gamma");
        // Unprepared queries pipelined: each Parse's name is used by a later batch.
        let (a, b, n) = tokio::try_join!(
            client.query_one("SELECT name FROM items WHERE id = $1", &[&1i32]),
            client.query_one("SELECT upper(name) FROM items WHERE id = $1", &[&2i32]),
            client.query_one("SELECT count(*) FROM items", &[]),
        )
        .expect("pipelined unprepared queries");
        assert_eq!(a.get::<_, String>(0), "alpha");
        assert_eq!(b.get::<_, String>(0), "BETA");
        assert_eq!(n.get::<_, i64>(0), 3);
        // A transaction of pipelined reads.
        client.batch_execute("BEGIN").await.expect("BEGIN");
        let (x, y) = tokio::try_join!(
            client.query_one(&stmt, &[&1i32]),
            client.query_one(&stmt, &[&3i32]),
        )
        .expect("pipelined reads in a transaction");
        assert_eq!(x.get::<_, String>(0), "alpha");
        assert_eq!(y.get::<_, String>(0), "gamma");
        client.batch_execute("COMMIT").await.expect("COMMIT");
    });
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn closed_statement_names_can_be_prepared_again() {
    let s = story();
    let mut fe = Fe::login(s.gw.pg_port, &s.agent);
    // Across batches: a DELETE parsed under "s", closed, then "s" is a SELECT.
    let reply = fe.round(
        &cat(&[parse("s", "DELETE FROM items WHERE id = 3"), sync()]),
        1,
    );
    assert_no_errors(&reply, "Parse s = DELETE");
    assert_no_errors(&fe.round(&cat(&[close(b'S', "s"), sync()]), 1), "Close s");
    let reply = fe.round(
        &cat(&[
            parse("s", "SELECT name FROM items WHERE id = 2"),
            sync(),
            bind("", "s", &[]),
            execute(""),
            sync(),
        ]),
        2,
    );
    assert_no_errors(&reply, "re-prepared s = SELECT");
    assert!(!reply.held(), "a SELECT was held:\n    {}", reply.show());
    assert_eq!(reply.first_values(), vec!["beta".to_string()]);

    // All in one batch: Close, Parse, Describe, Bind with a parameter, Execute.
    let reply = fe.round(
        &cat(&[
            close(b'S', "s"),
            parse("s", "SELECT name FROM items WHERE id = $1::int"),
            describe_msg(b'S', "s"),
            bind("q", "s", &["1"]),
            execute("q"),
            close(b'P', "q"),
            sync(),
        ]),
        1,
    );
    assert_no_errors(&reply, "Close + Parse + Bind + Execute in one batch");
    assert_eq!(reply.first_values(), vec!["alpha".to_string()]);

    // The unnamed statement, re-parsed every batch.
    for (id, name) in [("1", "alpha"), ("3", "gamma")] {
        let reply = fe.round(
            &cat(&[
                parse("", "SELECT name FROM items WHERE id = $1::int"),
                bind("", "", &[id]),
                execute(""),
                sync(),
            ]),
            1,
        );
        assert_no_errors(&reply, "unnamed statement");
        assert_eq!(reply.first_values(), vec![name.to_string()]);
    }
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn psql_sessions_still_work() {
    let s = story();
    let out = s.gw.psql_session(
        &s.agent,
        "prod",
        &[
            "SELECT count(*) FROM items",
            "BEGIN",
            "SELECT name FROM items WHERE id = 2",
            "COMMIT",
            "SELECT E'a\\\\b' AS escaped, 'c\\d' AS plain",
        ],
    );
    assert!(out.status.success(), "psql session: {}", describe(&out));
    let text = stdout_of(&out);
    for needle in ["3", "beta", "a\\b|c\\d"] {
        assert!(
            text.lines().any(|l| l.trim() == needle),
            "psql session output lacks {needle:?}: {}",
            describe(&out)
        );
    }
    let text = all_output(&out);
    assert!(!text.contains("ERROR"), "psql session: {}", describe(&out));
}

/// Bind with every result column in binary format.
fn bind_binary_results(portal: &str, statement: &str) -> Vec<u8> {
    let mut body = cs(portal);
    body.extend(cs(statement));
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    msg(b'B', &body)
}

/// libpq's extended-protocol batch (Parse, Bind, Describe portal, Execute, Sync): the
/// client's own description of the portal shapes the masking of the Execute right after it,
/// and a portal that cannot be masked refuses only its own rows.
#[test]
fn a_portal_the_client_describes_before_executing_it_is_masked_by_that_description() {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let yaml = format!(
        "connections:\n{}policies:\n  - name: agents-on-prod\n    groups: [agents]\n    \
         connections: [prod]\n    rules:\n      - match: SELECT\n        action: allow\n    \
         record: true\nmasking:\n  - connections: [prod]\n    columns: [\"items.name\", \"items.id\"]\n    \
         style: redact\n",
        connection_yaml("prod", pg.port(), &format!("${{env:{PASSWORD_ENV}}}")),
    );
    let gw = Gateway::for_pg_config(&pg, &yaml);
    let agent = gw.mint("agent-1", &["agents"]);
    let mut fe = Fe::login(gw.pg_port, &agent);
    let described_batch = |sql: &str, bind_msg: Vec<u8>| {
        cat(&[
            parse("", sql),
            bind_msg,
            describe_msg(b'P', ""),
            execute(""),
            sync(),
        ])
    };

    let reply = fe.round(
        &described_batch("SELECT name, id FROM items ORDER BY id", bind("", "", &[])),
        1,
    );
    assert_no_errors(&reply, "described text portal");
    let names = reply.first_values();
    assert_eq!(names.len(), 3, "{}", reply.show());
    assert!(
        names
            .iter()
            .all(|n| !n.contains("alpha") && !n.contains("beta")),
        "masked names: {names:?}"
    );

    // A masked int column asked for in binary cannot be rewritten: its rows are refused.
    let reply = fe.round(
        &described_batch("SELECT id, name FROM items", bind_binary_results("", "")),
        1,
    );
    assert!(!reply.has(b'D'), "{}", reply.show());
    assert!(
        reply
            .errors()
            .iter()
            .any(|e| e.message.contains("cannot mask")),
        "{}",
        reply.show()
    );

    // A described portal that is never executed refuses nothing after it.
    let reply = fe.round(
        &cat(&[
            parse("", "SELECT id, name FROM items"),
            bind_binary_results("", ""),
            describe_msg(b'P', ""),
            parse("", "SELECT name FROM items WHERE id = 2"),
            bind("", "", &[]),
            execute(""),
            sync(),
        ]),
        1,
    );
    assert_no_errors(
        &reply,
        "an undescribed Execute after a described, unexecuted portal",
    );
    let values = reply.first_values();
    assert_eq!(values.len(), 1, "{}", reply.show());
    assert!(!values[0].contains("beta"), "masked: {values:?}");
}
