//! The MySQL/MariaDB adapter: a listener that speaks the MySQL client/server protocol to
//! agents, logs them in with their Airlock token (sent as the password through the
//! `mysql_clear_password` method), logs in to the upstream with the connection's own credential,
//! and relays every command through the gate.
//!
//! This module owns the listener and the login. Modules: `codec` (packet framing and the
//! packets the gateway writes), `upstream` (login to the real server), `session` (the relay),
//! `masking` (masking and recording of result rows), `kill` (`KILL QUERY` across sessions and
//! held statements).

pub mod codec;
pub mod kill;
mod masking;
pub mod session;
pub mod upstream;

use crate::codec::{CodecError, PacketReader};
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
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::Instrument;

/// A client has this long to log in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_SESSIONS: usize = 10_000;
/// What the gateway tells clients it is. Clients pick features by version; an 8.0 server
/// offers everything they need, and the capability flags say the rest.
const SERVER_VERSION: &[u8] = b"8.0.99-airlock";
const UTF8MB4_GENERAL_CI: u8 = 45;
const CLEAR_PASSWORD: &[u8] = b"mysql_clear_password";

/// What the gateway offers clients. Left out on purpose: TLS and compression (not offered),
/// session tracking, query attributes and optional metadata (they change packet formats the
/// relay reads), IGNORE_SPACE (it changes how SQL is read).
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

pub struct MysqlGateway {
    gate: Arc<Gate>,
    targets: HashMap<String, UpstreamTarget>,
    kills: Arc<KillRegistry>,
    sessions: Arc<Semaphore>,
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

struct Ready {
    session: airlock_core::gate::Session,
    upstream: upstream::Upstream,
    id: u32,
}

impl MysqlGateway {
    pub fn new(gate: Arc<Gate>, targets: HashMap<String, UpstreamTarget>) -> Arc<MysqlGateway> {
        Arc::new(MysqlGateway {
            gate,
            targets,
            kills: Arc::new(KillRegistry::default()),
            sessions: Arc::new(Semaphore::new(MAX_SESSIONS)),
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
        let (read, mut write) = stream.into_split();
        let mut reader = PacketReader::new(read);
        let id = self.kills.allocate();
        let login =
            tokio::time::timeout(LOGIN_TIMEOUT, self.login(&mut reader, &mut write, id, peer))
                .await
                .unwrap_or_else(|_| Err((LoginError::new(1043, "08S01", "login timed out"), 2)));
        match login {
            Ok((ready, seq)) => self.run_session(reader, write, ready, seq).await,
            Err((e, seq)) => {
                tracing::info!(code = e.code, reason = %e.message, "login refused");
                let _ = codec::write_payload(&mut write, &e.payload(), seq).await;
            }
        }
    }

    /// The login; on failure, the error and the sequence id its ERR packet takes.
    async fn login(
        &self,
        reader: &mut PacketReader<OwnedReadHalf>,
        writer: &mut OwnedWriteHalf,
        id: u32,
        peer: SocketAddr,
    ) -> Result<(Ready, u8), (LoginError, u8)> {
        let mut scramble = [0u8; 20];
        rand::thread_rng().fill_bytes(&mut scramble);
        // The scramble must not contain NUL bytes: clients read it as a C string.
        for byte in &mut scramble {
            *byte = (*byte % 94) + 33;
        }
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
            OFFERED,
            UTF8MB4_GENERAL_CI,
            StatusFlags::SERVER_STATUS_AUTOCOMMIT,
            Some(CLEAR_PASSWORD),
        );
        let mut payload = Vec::new();
        greeting.serialize(&mut payload);
        codec::write_payload(writer, &payload, 0)
            .await
            .map_err(|e| (e.into(), 1))?;

        let answer = reader.read().await.map_err(|e| (e.into(), 2))?;
        let mut seq = answer.last_seq.wrapping_add(1);
        if answer.payload.len() == 32 {
            return Err((
                LoginError::new(
                    1043,
                    "08S01",
                    "TLS is not offered by this gateway; connect without TLS (--ssl=0 / --ssl-mode=DISABLED)",
                ),
                seq,
            ));
        }
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
        reader: PacketReader<OwnedReadHalf>,
        mut writer: OwnedWriteHalf,
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
