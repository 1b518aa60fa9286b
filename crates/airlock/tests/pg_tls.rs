//! TLS toward PostgreSQL clients, end to end: psql asks for it with SSLRequest (`sslmode`),
//! verifies the generated or the configured certificate, and holds, denials and Ctrl-C work
//! through it as in clear. Encryption requests the gateway does not take (GSSENCRequest, a
//! second SSLRequest, bytes sent before the answer) get clear answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

const LONG: &str = "60s";
const REQUIRE: &str = "sslmode=require";
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

struct Story {
    pg: PgServer,
    gw: Gateway,
    agent: String,
    dba: String,
}

fn story_with_config(extra_yaml: &str) -> Story {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let gw = Gateway::for_pg_config(&pg, &format!("{}{extra_yaml}", template_config(&pg, LONG)));
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);
    Story { pg, gw, agent, dba }
}

fn story() -> Story {
    story_with_config("")
}

fn generated_certificate(gw: &Gateway) -> PathBuf {
    gw.dir().join("data").join("tls-cert.pem")
}

/// What psql says about its connection (`\conninfo` is answered by psql itself).
fn conninfo(s: &Story, extra: &str) -> String {
    assert_ok(
        &s.gw.psql_with(&s.agent, "prod", extra, "\\conninfo"),
        &format!("psql \\conninfo with {extra}"),
    )
}

#[test]
fn psql_with_sslmode_require_runs_over_tls_with_its_token() {
    let s = story();
    let info = conninfo(&s, REQUIRE);
    assert!(
        info.contains("SSL connection (protocol: TLSv1.3"),
        "psql did not report a TLS 1.3 connection: {info}"
    );
    let out = s.gw.psql_with(
        &s.agent,
        "prod",
        REQUIRE,
        "SELECT id, name FROM items ORDER BY id",
    );
    let rows = assert_ok(&out, "a SELECT over TLS");
    assert!(rows.contains("1|alpha"), "unexpected rows: {rows}");

    let out = s.gw.psql_with("not-a-token", "prod", REQUIRE, "SELECT 1");
    assert_fails_with(
        &out,
        "a wrong token over TLS",
        &["password authentication failed"],
    );
}

#[test]
fn sslmode_disable_still_works_in_clear() {
    let s = story();
    let info = conninfo(&s, "sslmode=disable");
    assert!(
        !info.contains("SSL connection"),
        "sslmode=disable must stay in clear: {info}"
    );
    let out = s.gw.psql_with(
        &s.agent,
        "prod",
        "sslmode=disable",
        "SELECT count(*) FROM items",
    );
    assert_eq!(assert_ok(&out, "a SELECT in clear").trim(), "3");
}

#[test]
fn the_generated_certificate_verifies_for_loopback_names_only() {
    let s = story();
    let cert = generated_certificate(&s.gw);
    for host in ["127.0.0.1", "localhost"] {
        let extra = format!(
            "host={host} sslmode=verify-full sslrootcert={}",
            cert.display()
        );
        let out =
            s.gw.psql_with(&s.agent, "prod", &extra, "SELECT count(*) FROM items");
        assert_eq!(
            assert_ok(&out, &format!("verify-full to {host}")).trim(),
            "3"
        );
    }
    // Verification is real: a name the certificate does not carry is refused by the client.
    let extra = format!(
        "host=gateway.invalid hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={}",
        cert.display()
    );
    let out = s.gw.psql_with(&s.agent, "prod", &extra, "SELECT 1");
    assert_fails_with(
        &out,
        "verify-full to a name not in the certificate",
        &["gateway.invalid"],
    );
}

#[test]
fn a_configured_certificate_is_the_one_clients_verify() {
    let dir = tempfile::tempdir().unwrap();
    let own = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("gateway.pem");
    let key = dir.path().join("gateway.key");
    std::fs::write(&cert, own.cert.pem()).unwrap();
    std::fs::write(&key, own.key_pair.serialize_pem()).unwrap();
    let s = story_with_config(&format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n",
        cert.display(),
        key.display()
    ));
    assert!(
        !generated_certificate(&s.gw).exists(),
        "no certificate is generated when one is configured"
    );
    let extra = format!(
        "host=localhost sslmode=verify-full sslrootcert={}",
        cert.display()
    );
    let out =
        s.gw.psql_with(&s.agent, "prod", &extra, "SELECT count(*) FROM items");
    assert_eq!(
        assert_ok(&out, "verify-full against the configured certificate").trim(),
        "3"
    );
}

#[test]
fn a_held_statement_over_tls_runs_after_approval() {
    let s = story();
    let sql = "DELETE FROM items WHERE id = 1";
    let mut held = s.gw.psql_spawn_with(&s.agent, "prod", REQUIRE, sql);
    let id = held.wait_pending(&s.gw);
    assert!(
        held.wait_stderr_contains(&id, Duration::from_secs(10)),
        "the NOTICE naming request {id} did not come through TLS; stderr: {}",
        held.stderr()
    );
    assert_eq!(s.pg.item_ids(), "1,2,3", "nothing may run before approval");
    assert_ok(
        &s.gw.cli_as(&s.dba, &["approve", &id, "--reason", "ok"]),
        "airlock approve",
    );
    assert_ok(&held.finish(WAIT), "the approved DELETE over TLS");
    assert_eq!(s.pg.item_ids(), "2,3");
}

#[test]
fn a_denial_over_tls_is_42501() {
    let s = story();
    let out = s.gw.psql_with(&s.agent, "prod", REQUIRE, "TRUNCATE items");
    assert_fails_with(&out, "TRUNCATE over TLS", &["42501"]);

    let sql = "DELETE FROM items WHERE id = 2";
    let mut held = s.gw.psql_spawn_with(&s.agent, "prod", REQUIRE, sql);
    let id = held.wait_pending(&s.gw);
    let reason = "not today";
    assert_ok(
        &s.gw.cli_as(&s.dba, &["deny", &id, "--reason", reason]),
        "airlock deny",
    );
    assert_fails_with(
        &held.finish(WAIT),
        "the denied DELETE over TLS",
        &[reason, "42501"],
    );
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

#[test]
fn ctrl_c_over_tls_withdraws_a_held_statement() {
    let s = story();
    let sql = "DELETE FROM items WHERE id = 3";
    let mut held = s.gw.psql_spawn_with(&s.agent, "prod", REQUIRE, sql);
    let id = held.wait_pending(&s.gw);
    // psql sends its CancelRequest on a new connection, in clear.
    held.interrupt();
    assert_fails_with(
        &held.finish(WAIT),
        "Ctrl-C on a held DELETE over TLS",
        &["57014"],
    );
    s.gw.wait_for_state(&id, "canceled");
    assert_eq!(s.pg.item_ids(), "1,2,3");
}

// ---------------------------------------------------------------------------------------------
// Encryption requests the gateway does not take
// ---------------------------------------------------------------------------------------------

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )
    .expect("connect to the gateway");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
}

fn read_one(stream: &mut impl Read) -> Option<u8> {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(1) => Some(byte[0]),
        _ => None,
    }
}

/// The next message: its type and body; `None` once the connection ends.
fn read_message(stream: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    assert!((4..=1 << 24).contains(&len), "a message of length {len}");
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).ok()?;
    Some((head[0], body))
}

/// Logs in with `token` through `stream`; the cancel key of BackendKeyData.
fn login(stream: &mut (impl Read + Write), token: &str) -> [u8; 8] {
    stream
        .write_all(&RawPg::startup_message("agent", "prod"))
        .unwrap();
    let mut key = None;
    loop {
        match read_message(stream) {
            Some((b'R', body)) if body == [0, 0, 0, 3] => {
                let mut password = token.as_bytes().to_vec();
                password.push(0);
                stream.write_all(&RawPg::message(b'p', &password)).unwrap();
            }
            Some((b'K', body)) => key = body.try_into().ok(),
            Some((b'Z', _)) => return key.expect("BackendKeyData before ReadyForQuery"),
            Some((b'E', body)) => panic!("login failed: {}", String::from_utf8_lossy(&body)),
            Some(_) => {}
            None => panic!("the gateway closed the connection during login"),
        }
    }
}

/// Everything the gateway sends until it closes the connection.
fn read_to_close(stream: &mut impl Read) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    all
}

type TlsClient = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client that trusts `root` and offers `alpn`, over `stream`.
fn tls_client(stream: TcpStream, root: &Path, alpn: &[&[u8]]) -> TlsClient {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(root).expect("read the gateway certificate"))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(connection, stream)
}

#[test]
fn gssenc_is_declined_and_tls_can_follow_on_the_same_connection() {
    let s = story();
    let mut raw = connect(s.gw.pg_port);
    raw.write_all(&GSSENC_REQUEST).unwrap();
    assert_eq!(read_one(&mut raw), Some(b'N'), "GSSENCRequest is declined");
    raw.write_all(&SSL_REQUEST).unwrap();
    assert_eq!(read_one(&mut raw), Some(b'S'), "SSLRequest is accepted");
    let mut tls = tls_client(raw, &generated_certificate(&s.gw), &[]);
    tls.write_all(&RawPg::startup_message("agent", "prod"))
        .unwrap();
    assert_eq!(
        read_one(&mut tls),
        Some(b'R'),
        "the login goes on through TLS with the password request"
    );
}

#[test]
fn a_second_ssl_request_inside_tls_is_refused() {
    let s = story();
    let mut raw = connect(s.gw.pg_port);
    raw.write_all(&SSL_REQUEST).unwrap();
    assert_eq!(read_one(&mut raw), Some(b'S'));
    let mut tls = tls_client(raw, &generated_certificate(&s.gw), &[]);
    tls.write_all(&SSL_REQUEST).unwrap();
    let reply = String::from_utf8_lossy(&read_to_close(&mut tls)).into_owned();
    assert!(
        reply.starts_with('E') && reply.contains("08P01") && reply.contains("already encrypted"),
        "a second SSLRequest needs a clear error: {reply:?}"
    );
    assert_ok(
        &s.gw.psql_with(&s.agent, "prod", REQUIRE, "SELECT 1"),
        "the gateway keeps serving",
    );
}

#[test]
fn bytes_sent_with_an_ssl_request_or_instead_of_tls_end_the_connection() {
    let s = story();
    // Bytes before the answer could be spliced into the TLS session: refused, in clear.
    let mut raw = connect(s.gw.pg_port);
    let mut early = SSL_REQUEST.to_vec();
    early.extend(RawPg::startup_message("agent", "prod"));
    raw.write_all(&early).unwrap();
    let reply = String::from_utf8_lossy(&read_to_close(&mut raw)).into_owned();
    assert!(
        reply.starts_with('E') && reply.contains("unexpected data after an encryption request"),
        "bytes right after SSLRequest need a clear error: {reply:?}"
    );

    // A client that is told 'S' and then speaks plain protocol fails the handshake.
    let mut raw = connect(s.gw.pg_port);
    raw.write_all(&SSL_REQUEST).unwrap();
    assert_eq!(read_one(&mut raw), Some(b'S'));
    raw.write_all(&RawPg::startup_message("agent", "prod"))
        .unwrap();
    let reply = read_to_close(&mut raw);
    assert!(
        !reply.starts_with(b"R"),
        "a client that skipped the TLS handshake must not be asked for its password"
    );

    assert_ok(
        &s.gw.psql_with(&s.agent, "prod", REQUIRE, "SELECT 1"),
        "the gateway keeps serving",
    );
}

// ---------------------------------------------------------------------------------------------
// Direct TLS (PostgreSQL 17's `sslnegotiation=direct`) and cancel requests inside TLS
// ---------------------------------------------------------------------------------------------

#[test]
fn direct_tls_with_the_postgresql_alpn_logs_in() {
    let s = story();
    let cert = generated_certificate(&s.gw);
    let mut tls = tls_client(connect(s.gw.pg_port), &cert, &[b"postgresql"]);
    login(&mut tls, &s.agent);
    tls.write_all(&RawPg::message(b'Q', b"SELECT count(*) FROM items\0"))
        .unwrap();
    let mut rows = Vec::new();
    while let Some((tag, body)) = read_message(&mut tls) {
        match tag {
            b'D' => rows.push(String::from_utf8_lossy(&body[6..]).into_owned()),
            b'Z' => break,
            b'E' => panic!("the query failed: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
    assert_eq!(rows, ["3"]);

    // Without the ALPN protocol the connection could be meant for another service.
    let mut tls = tls_client(connect(s.gw.pg_port), &cert, &[]);
    tls.write_all(&RawPg::startup_message("agent", "prod"))
        .unwrap();
    let reply = String::from_utf8_lossy(&read_to_close(&mut tls)).into_owned();
    assert!(
        reply.starts_with('E') && reply.contains("ALPN"),
        "direct TLS without ALPN needs a clear refusal: {reply:?}"
    );
}

#[test]
fn a_cancel_request_inside_tls_withdraws_a_held_statement() {
    let s = story();
    let cert = generated_certificate(&s.gw);
    let mut session = connect(s.gw.pg_port);
    session.write_all(&SSL_REQUEST).unwrap();
    assert_eq!(read_one(&mut session), Some(b'S'));
    let mut session = tls_client(session, &cert, &[b"postgresql"]);
    let key = login(&mut session, &s.agent);
    session
        .write_all(&RawPg::message(b'Q', b"DELETE FROM items WHERE id = 1\0"))
        .unwrap();
    // The NOTICE naming the request comes at once.
    match read_message(&mut session) {
        Some((b'N', body)) => assert!(
            String::from_utf8_lossy(&body).contains("approval request"),
            "unexpected NOTICE: {}",
            String::from_utf8_lossy(&body)
        ),
        other => panic!("expected the NOTICE of a held statement, got {other:?}"),
    }

    // As libpq 17's encrypted cancel does: SSLRequest, then the CancelRequest inside TLS.
    let mut cancel = connect(s.gw.pg_port);
    cancel.write_all(&SSL_REQUEST).unwrap();
    assert_eq!(read_one(&mut cancel), Some(b'S'));
    let mut cancel = tls_client(cancel, &cert, &[b"postgresql"]);
    let mut request = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    request.extend_from_slice(&key);
    cancel.write_all(&request).unwrap();
    read_to_close(&mut cancel);

    loop {
        match read_message(&mut session) {
            Some((b'E', body)) => {
                let text = String::from_utf8_lossy(&body);
                assert!(text.contains("57014"), "expected 57014: {text}");
                break;
            }
            Some(_) => {}
            None => panic!("the session closed instead of reporting the cancel"),
        }
    }
    assert_eq!(s.pg.item_ids(), "1,2,3", "a withdrawn DELETE must not run");
}

#[test]
fn a_large_result_arrives_whole_over_tls() {
    let s = story();
    // Far more than the socket buffers hold, so writes to the client meet a full socket.
    let out = s.gw.psql_with(
        &s.agent,
        "prod",
        REQUIRE,
        "SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g",
    );
    let rows = assert_ok(&out, "a large SELECT over TLS");
    assert_eq!(rows.lines().filter(|l| !l.is_empty()).count(), 50_000);
    assert!(rows
        .trim_end()
        .ends_with(&format!("50000|{}", "x".repeat(200))));
}
