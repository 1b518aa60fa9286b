//! The MySQL/MariaDB adapter: a listener that speaks the MySQL client/server protocol to
//! agents, takes them through TLS when they ask, logs them in with their Airlock token (sent as
//! the password through the `mysql_clear_password` method), logs in to the upstream with the
//! connection's own credential, and relays every command through the gate.
//!
//! This module owns the listener and the login. Modules: `codec` (packet framing and the
//! packets the gateway writes), `upstream` (login to the real server), `session` (the relay),
//! `masking` (masking and recording of result rows), `kill` (`KILL QUERY` across sessions and
//! held statements). The certificate clients are shown is `airlock_core::tls`'s.

pub mod codec;
pub mod kill;
mod masking;
pub mod session;
pub mod upstream;

use crate::codec::{CodecError, Message, PacketReader};
use crate::kill::KillRegistry;
use crate::session::{End, Relay};
use crate::upstream::UpstreamTarget;
use airlock_core::gate::Gate;
use airlock_core::identity::AuthError;
use airlock_core::operation::Protocol;
use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;
use rand::RngCore;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

/// The client's side of a session, in clear or through TLS.
pub type ClientRead = Box<dyn AsyncRead + Send + Unpin>;
pub type ClientWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A client has this long to log in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_SESSIONS: usize = 10_000;
/// What the gateway tells clients it is. Clients pick features by version; an 8.0 server
/// offers everything they need, and the capability flags say the rest.
const SERVER_VERSION: &[u8] = b"8.0.99-airlock";
const UTF8MB4_GENERAL_CI: u8 = 45;
const CLEAR_PASSWORD: &[u8] = b"mysql_clear_password";
/// The longest first answer a client sends (a handshake response with its connection
/// attributes, or a TLS request).
const MAX_HANDSHAKE_LEN: usize = 64 * 1024;

/// What the gateway negotiates with clients, and passes on to the upstream. Left out on
/// purpose: compression, session tracking, query attributes and optional metadata (they
/// change packet formats the relay reads), IGNORE_SPACE (it changes how SQL is read). TLS is
/// offered besides (see [`GREETING_CAPABILITIES`]); it is the gateway's own, never the
/// upstream's.
const OFFERED: CapabilityFlags = CapabilityFlags::CLIENT_LONG_PASSWORD
    .union(CapabilityFlags::CLIENT_FOUND_ROWS)
    .union(CapabilityFlags::CLIENT_LONG_FLAG)
    .union(CapabilityFlags::CLIENT_CONNECT_WITH_DB)
    .union(CapabilityFlags::CLIENT_LOCAL_FILES)
    .union(CapabilityFlags::CLIENT_PROTOCOL_41)
    .union(CapabilityFlags::CLIENT_INTERACTIVE)
    .union(CapabilityFlags::CLIENT_TRANSACTIONS)
    .union(CapabilityFlags::CLIENT_SECURE_CONNECTION)
    .union(CapabilityFlags::CLIENT_MULTI_STATEMENTS)
    .union(CapabilityFlags::CLIENT_MULTI_RESULTS)
    .union(CapabilityFlags::CLIENT_PS_MULTI_RESULTS)
    .union(CapabilityFlags::CLIENT_PLUGIN_AUTH)
    .union(CapabilityFlags::CLIENT_CONNECT_ATTRS)
    .union(CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)
    .union(CapabilityFlags::CLIENT_DEPRECATE_EOF);
const GREETING_CAPABILITIES: CapabilityFlags = OFFERED.union(CapabilityFlags::CLIENT_SSL);

pub struct MysqlGateway {
    gate: Arc<Gate>,
    targets: HashMap<String, UpstreamTarget>,
    kills: Arc<KillRegistry>,
    sessions: Arc<Semaphore>,
    tls: TlsAcceptor,
}

/// A refusal during login: an ERR packet, then the connection closes.
struct LoginError {
    code: u16,
    sqlstate: &'static str,
    message: String,
}

impl LoginError {
    fn new(code: u16, sqlstate: &'static str, message: impl Into<String>) -> Self {
        LoginError {
            code,
            sqlstate,
            message: message.into(),
        }
    }

    fn payload(&self) -> Vec<u8> {
        codec::err_payload(self.code, self.sqlstate, &self.message)
    }
}

impl From<CodecError> for LoginError {
    fn from(e: CodecError) -> Self {
        LoginError::new(1043, "08S01", format!("bad handshake: {e}"))
    }
}

impl From<std::io::Error> for LoginError {
    fn from(e: std::io::Error) -> Self {
        LoginError::new(1043, "08S01", format!("bad handshake: {e}"))
    }
}

/// A client greeted, through TLS if it asked for it, and its handshake response.
struct Opened {
    reader: PacketReader<ClientRead>,
    writer: ClientWrite,
    answer: Message,
}

struct Ready {
    session: airlock_core::gate::Session,
    upstream: upstream::Upstream,
    id: u32,
}

impl MysqlGateway {
    pub fn new(
        gate: Arc<Gate>,
        targets: HashMap<String, UpstreamTarget>,
        tls: TlsAcceptor,
    ) -> Arc<MysqlGateway> {
        Arc::new(MysqlGateway {
            gate,
            targets,
            kills: Arc::new(KillRegistry::default()),
            sessions: Arc::new(Semaphore::new(MAX_SESSIONS)),
            tls,
        })
    }

    /// Accepts clients until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = self.sessions.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "session limit reached; refusing connection");
                continue;
            };
            let gateway = self.clone();
            tokio::spawn(
                async move {
                    gateway.handle(stream, peer).await;
                    drop(permit);
                }
                .instrument(tracing::info_span!("mysql", %peer)),
            );
        }
    }

    async fn handle(&self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let id = self.kills.allocate();
        let deadline = tokio::time::Instant::now() + LOGIN_TIMEOUT;
        let scramble = new_scramble();
        let opened = tokio::time::timeout_at(deadline, self.open(stream, id, &scramble)).await;
        let Ok(Some(mut opened)) = opened else {
            tracing::info!("the client left or timed out before logging in");
            return;
        };
        let login = tokio::time::timeout_at(deadline, self.login(&mut opened, &scramble, id, peer))
            .await
            .unwrap_or_else(|_| Err((LoginError::new(1043, "08S01", "login timed out"), 2)));
        let Opened {
            reader, mut writer, ..
        } = opened;
        match login {
            Ok((ready, seq)) => self.run_session(reader, writer, ready, seq).await,
            Err((e, seq)) => {
                tracing::info!(code = e.code, reason = %e.message, "login refused");
                let _ = codec::write_payload(&mut writer, &e.payload(), seq).await;
            }
        }
    }

    /// Greets the client and reads its answer, going through TLS first when the client asks
    /// for it. `None` when the connection ends here (the client was told why when it could be).
    async fn open(&self, mut stream: TcpStream, id: u32, scramble: &[u8; 20]) -> Option<Opened> {
        codec::write_payload(&mut stream, &greeting(id, scramble), 0)
            .await
            .ok()?;
        // Exactly one packet: a client that asks for TLS starts its handshake right after it.
        let first = match codec::read_one(&mut stream, MAX_HANDSHAKE_LEN).await {
            Ok(first) => first,
            Err(CodecError::Closed) => return None,
            Err(e) => {
                let _ = codec::write_payload(&mut stream, &LoginError::from(e).payload(), 2).await;
                return None;
            }
        };
        if !is_tls_request(&first.payload) {
            let (read, write) = stream.into_split();
            return Some(Opened {
                reader: PacketReader::new(Box::new(read)),
                writer: Box::new(write),
                answer: first,
            });
        }
        let tls = match self.tls.accept(stream).await {
            Ok(tls) => tls,
            Err(e) => {
                tracing::info!(error = %e, "TLS handshake with the client failed");
                return None;
            }
        };
        let (read, write) = tokio::io::split(tls);
        let mut reader: PacketReader<ClientRead> = PacketReader::new(Box::new(read));
        let mut writer: ClientWrite = Box::new(write);
        match reader.read().await {
            Ok(answer) => Some(Opened {
                reader,
                writer,
                answer,
            }),
            Err(CodecError::Closed) => None,
            Err(e) => {
                let seq = first.seq.wrapping_add(1);
                let _ =
                    codec::write_payload(&mut writer, &LoginError::from(e).payload(), seq).await;
                None
            }
        }
    }

    /// The login; on failure, the error and the sequence id its ERR packet takes.
    async fn login(
        &self,
        opened: &mut Opened,
        scramble: &[u8; 20],
        id: u32,
        peer: SocketAddr,
    ) -> Result<(Ready, u8), (LoginError, u8)> {
        let Opened {
            reader,
            writer,
            answer,
        } = opened;
        let mut seq = answer.last_seq.wrapping_add(1);
        let response: HandshakeResponse<'_> = ParseBuf(&answer.payload).parse(()).map_err(|e| {
            (
                LoginError::new(1043, "08S01", format!("bad handshake: {e}")),
                seq,
            )
        })?;
        let capabilities = response.capabilities() & OFFERED;
        if !capabilities.contains(CapabilityFlags::CLIENT_PROTOCOL_41) {
            return Err((
                LoginError::new(1043, "08S01", "the client must speak protocol 4.1"),
                seq,
            ));
        }
        let user = String::from_utf8_lossy(response.user()).into_owned();
        let connection = response
            .db_name()
            .map(|db| String::from_utf8_lossy(db).into_owned())
            .unwrap_or_default();
        let token_bytes = match response.auth_plugin() {
            Some(AuthPlugin::MysqlClearPassword) => response.scramble_buf().to_vec(),
            _ => {
                // Ask for the password in clear: the gateway verifies the token itself.
                let switch = AuthSwitchRequest::new(CLEAR_PASSWORD, scramble.to_vec());
                let mut payload = Vec::new();
                switch.serialize(&mut payload);
                codec::write_payload(writer, &payload, seq)
                    .await
                    .map_err(|e| (e.into(), seq))?;
                let answer = reader.read().await.map_err(|e| (e.into(), seq))?;
                seq = answer.last_seq.wrapping_add(1);
                answer.payload
            }
        };
        let token = String::from_utf8_lossy(&token_bytes)
            .trim_end_matches('\0')
            .to_string();
        let deny =
            |code, sqlstate, message: String| (LoginError::new(code, sqlstate, message), seq);
        let identity = self
            .gate
            .identity()
            .authenticate(&token)
            .await
            .map_err(|e| {
                tracing::info!(reason = %e, "authentication failed");
                match e {
                    AuthError::Store(_) => deny(
                        1105,
                        "HY000",
                        "the gateway cannot verify tokens right now".into(),
                    ),
                    _ => deny(
                        1045,
                        "28000",
                        format!(
                            "Access denied for user '{user}': {}. The password must be an Airlock \
                         agent token or an OIDC token (JWT), sent in clear \
                         (--enable-cleartext-plugin / --default-auth=mysql_clear_password).",
                            AuthError::CLIENT_MESSAGE
                        ),
                    ),
                }
            })?;
        let target = self.targets.get(&connection).ok_or_else(|| {
            deny(
                1049,
                "42000",
                format!(
                    "Unknown database '{connection}': the database name selects the Airlock \
                     connection, and no MySQL connection has that name"
                ),
            )
        })?;
        if !self
            .gate
            .policies()
            .grants_connection(&identity, &connection)
        {
            return Err(deny(
                1044,
                "42000",
                format!(
                    "no policy lets {} use connection '{connection}'",
                    identity.name
                ),
            ));
        }
        let upstream = upstream::connect(target, capabilities).await.map_err(|e| {
            tracing::error!(connection = %connection, error = %e, "upstream login failed");
            deny(
                1105,
                "HY000",
                format!(
                    "the gateway could not connect to the upstream of '{connection}'; an \
                         administrator can see why in the gateway log"
                ),
            )
        })?;
        let session = self
            .gate
            .open_session(identity, &connection, Protocol::Mysql, &peer.to_string())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not record the session");
                deny(
                    1105,
                    "HY000",
                    "the gateway could not record the session, so it was refused".into(),
                )
            })?;
        Ok((
            Ready {
                session,
                upstream,
                id,
            },
            seq,
        ))
    }

    async fn run_session(
        &self,
        reader: PacketReader<ClientRead>,
        mut writer: ClientWrite,
        ready: Ready,
        seq: u8,
    ) {
        let Ready {
            session,
            upstream,
            id,
        } = ready;
        let registration = self.kills.register(
            id,
            &session.identity.subject,
            &session.connection,
            upstream.thread_id,
        );
        let span = tracing::info_span!("session", id = session.id, connection = %session.connection, who = %session.identity.name, mysql_id = id);
        let end = async {
            let masker = match self.gate.masker(&session) {
                Ok(masker) => masker,
                Err(reason) => {
                    tracing::error!(%reason, "masking cannot be set up; refusing the session");
                    let err =
                        LoginError::new(1105, "HY000", "masking cannot be set up for this session");
                    let _ = codec::write_payload(&mut writer, &err.payload(), seq).await;
                    return End::Fatal {
                        payload: Vec::new(),
                        reason: "masking unavailable",
                    };
                }
            };
            tracing::info!("session opened");
            let ok = codec::ok_payload(upstream.status);
            if let Err(e) = codec::write_payload(&mut writer, &ok, seq).await {
                return End::Io(e);
            }
            Relay::new(
                &self.gate,
                &session,
                &self.kills,
                &registration,
                reader,
                writer,
                upstream,
            )
            .masking(masker)
            .run()
            .await
        }
        .instrument(span.clone())
        .await;
        let reason = match end {
            End::ClientClosed => "client closed".to_string(),
            End::Fatal { reason, .. } => reason.to_string(),
            End::UpstreamClosed => "upstream closed".to_string(),
            End::Io(e) => format!("i/o error: {e}"),
        };
        span.in_scope(|| tracing::info!(%reason, "session closed"));
        self.gate.close_session(&session, &reason).await;
    }
}

/// A fresh scramble. It must not contain NUL bytes: clients read it as a C string.
fn new_scramble() -> [u8; 20] {
    let mut scramble = [0u8; 20];
    rand::thread_rng().fill_bytes(&mut scramble);
    for byte in &mut scramble {
        *byte = (*byte % 94) + 33;
    }
    scramble
}

/// The server greeting: protocol 10, the scramble, TLS offered, the clear-password method.
fn greeting(id: u32, scramble: &[u8; 20]) -> Vec<u8> {
    let mut part_2 = scramble[8..].to_vec();
    part_2.push(0);
    let mut first = [0u8; 8];
    first.copy_from_slice(&scramble[..8]);
    let greeting = HandshakePacket::new(
        10,
        SERVER_VERSION,
        id,
        first,
        Some(part_2),
        GREETING_CAPABILITIES,
        UTF8MB4_GENERAL_CI,
        StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        Some(CLEAR_PASSWORD),
    );
    let mut payload = Vec::new();
    greeting.serialize(&mut payload);
    payload
}

/// Whether a client's first answer is the short packet that asks for TLS before the login.
fn is_tls_request(payload: &[u8]) -> bool {
    let Some(flags) = payload.get(..4) else {
        return false;
    };
    let flags = u32::from_le_bytes([flags[0], flags[1], flags[2], flags[3]]);
    payload.len() == 32
        && CapabilityFlags::from_bits_truncate(flags).contains(CapabilityFlags::CLIENT_SSL)
}
