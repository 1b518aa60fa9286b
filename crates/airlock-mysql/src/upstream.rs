//! The upstream side: connecting to the real MySQL/MariaDB server and logging in with the
//! connection's own credential (`mysql_native_password`, or `caching_sha2_password` with its
//! RSA key exchange; auth switches are followed), then pinning how the session reads SQL. The
//! credential is used here and nowhere else; errors say what failed, never with what.

use crate::codec::{self, CodecError, PacketReader};
use airlock_core::secret::Secret;
use mysql_common::auth::plugins::{AuthProc, ChallengeResponsePlugin, Context, Response};
use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_PACKET_SIZE: u32 = 64 * 1024 * 1024;
/// Auth exchanges longer than this are a broken or hostile server.
const MAX_AUTH_ROUNDS: usize = 8;

/// Capabilities that change the shape of what the server sends: client and upstream must
/// agree on them, since the gateway relays responses as they come.
pub const FORMAT_CAPABILITIES: CapabilityFlags = CapabilityFlags::CLIENT_PROTOCOL_41
    .union(CapabilityFlags::CLIENT_DEPRECATE_EOF)
    .union(CapabilityFlags::CLIENT_MULTI_RESULTS)
    .union(CapabilityFlags::CLIENT_PS_MULTI_RESULTS);

/// SQL modes that change how the server reads SQL text (`"x"` as a name, `\` as a plain
/// character, or another dialect altogether). The gateway parses with MySQL's default reading
/// and removes these from the upstream session's mode.
const READING_MODES: [&str; 8] = [
    "ANSI_QUOTES",
    "NO_BACKSLASH_ESCAPES",
    "ANSI",
    "ORACLE",
    "MSSQL",
    "DB2",
    "POSTGRESQL",
    "MAXDB",
];

/// Where and as whom the gateway logs in for one connection.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub address: String,
    pub database: String,
    pub user: String,
    pub password: Option<Secret<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("the upstream refused the gateway's login: {0}")]
    LoginRefused(String),
    #[error("the upstream asked for an unsupported authentication method: {0}")]
    UnsupportedAuth(String),
    #[error("the upstream lacks a capability the client uses: {0:?}")]
    MissingCapability(CapabilityFlags),
    #[error("the upstream refused to pin the SQL mode: {0}")]
    Pinning(String),
    #[error("protocol error from upstream: {0}")]
    Protocol(String),
}

impl From<CodecError> for UpstreamError {
    fn from(e: CodecError) -> Self {
        UpstreamError::Protocol(e.to_string())
    }
}

/// A logged-in upstream connection, ready for commands.
pub struct Upstream {
    pub reader: PacketReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
    /// The server's id for this connection (what `KILL QUERY` names).
    pub thread_id: u32,
    pub capabilities: CapabilityFlags,
    pub status: StatusFlags,
}

struct AuthContext<'a> {
    password: &'a [u8],
    scramble: Vec<u8>,
}

impl Context for &AuthContext<'_> {
    fn pass(&self) -> &[u8] {
        self.password
    }
    fn is_ipc_transport(&self) -> bool {
        false
    }
    fn is_tls_transport(&self) -> bool {
        false
    }
    fn scramble(&self) -> &[u8] {
        &self.scramble
    }
    fn server_key_pem(&self) -> Option<&[u8]> {
        None
    }
}

fn packet_of(response: Response) -> Option<Vec<u8>> {
    match response {
        Response::Next { packet } | Response::Last { packet } => packet,
    }
}

/// Connects and logs in with `capabilities` (the ones the client negotiated with the gateway).
pub async fn connect(
    target: &UpstreamTarget,
    capabilities: CapabilityFlags,
) -> Result<Upstream, UpstreamError> {
    let unreachable = |reason: String| UpstreamError::Unreachable {
        address: target.address.clone(),
        reason,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target.address))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (read, mut writer) = stream.into_split();
    let mut reader = PacketReader::new(read);

    let greeting = reader.read().await?;
    if greeting.first() == Some(0xFF) {
        return Err(UpstreamError::LoginRefused(codec::err_message(
            &greeting.payload,
        )));
    }
    let handshake: HandshakePacket<'_> = ParseBuf(&greeting.payload)
        .parse(())
        .map_err(|e| UpstreamError::Protocol(format!("bad handshake: {e}")))?;
    let server_caps = handshake.capabilities();
    let missing = (capabilities & FORMAT_CAPABILITIES) - server_caps;
    if !missing.is_empty() {
        return Err(UpstreamError::MissingCapability(missing));
    }
    let capabilities = capabilities & server_caps;
    let version = handshake
        .maria_db_server_version_parsed()
        .or_else(|| handshake.server_version_parsed())
        .unwrap_or((5, 7, 0));
    let thread_id = handshake.connection_id();
    let mut scramble = handshake.scramble_1_ref().to_vec();
    scramble.extend_from_slice(handshake.scramble_2_ref().unwrap_or_default());
    scramble.resize(20, 0);
    let plugin = match handshake.auth_plugin() {
        Some(AuthPlugin::CachingSha2Password) => AuthPlugin::CachingSha2Password,
        _ => AuthPlugin::MysqlNativePassword,
    };
    let password = target
        .password
        .as_ref()
        .map(|p| p.expose().as_bytes())
        .unwrap_or_default();
    let mut ctx = AuthContext { password, scramble };
    let mut auth =
        AuthProc::init(&plugin).map_err(|e| UpstreamError::UnsupportedAuth(e.to_string()))?;
    let first = auth
        .run(&ctx, &ctx.scramble.clone())
        .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
    let response = HandshakeResponse::new(
        packet_of(first),
        version,
        Some(target.user.as_bytes()),
        (!target.database.is_empty()).then_some(target.database.as_bytes()),
        Some(plugin),
        capabilities,
        None,
        MAX_PACKET_SIZE,
    );
    let mut payload = Vec::new();
    response.serialize(&mut payload);
    let mut seq = greeting.last_seq.wrapping_add(1);
    codec::write_payload(&mut writer, &payload, seq)
        .await
        .map_err(|e| unreachable(e.to_string()))?;

    let mut ok = None;
    for _ in 0..MAX_AUTH_ROUNDS {
        let answer = reader.read().await?;
        seq = answer.last_seq.wrapping_add(1);
        let next = match answer.first() {
            Some(0x00) => {
                ok = Some(answer.payload);
                break;
            }
            Some(0xFF) => {
                return Err(UpstreamError::LoginRefused(codec::err_message(
                    &answer.payload,
                )))
            }
            Some(0xFE) => {
                let switch: AuthSwitchRequest<'_> = ParseBuf(&answer.payload)
                    .parse(())
                    .map_err(|e| UpstreamError::Protocol(format!("bad auth switch: {e}")))?;
                let plugin = switch.auth_plugin().into_owned();
                if !matches!(
                    plugin,
                    AuthPlugin::MysqlNativePassword | AuthPlugin::CachingSha2Password
                ) {
                    return Err(UpstreamError::UnsupportedAuth(
                        String::from_utf8_lossy(plugin.as_bytes()).into_owned(),
                    ));
                }
                let mut data = switch.plugin_data().to_vec();
                if data.last() == Some(&0) {
                    data.pop();
                }
                ctx.scramble = data.clone();
                auth = AuthProc::init(&plugin)
                    .map_err(|e| UpstreamError::UnsupportedAuth(e.to_string()))?;
                auth.run(&ctx, &data)
            }
            Some(0x01) => auth.run(&ctx, answer.payload.get(1..).unwrap_or_default()),
            _ => {
                return Err(UpstreamError::Protocol(
                    "unexpected packet during login".into(),
                ))
            }
        }
        .map_err(|e| UpstreamError::Protocol(format!("authentication exchange: {e}")))?;
        if let Some(packet) = packet_of(next) {
            codec::write_payload(&mut writer, &packet, seq)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        }
    }
    let Some(ok) = ok else {
        return Err(UpstreamError::Protocol("the login did not finish".into()));
    };
    let status = match codec::parse_ok(&ok) {
        Some(codec::Ending::Ok { status, .. }) => status,
        _ => StatusFlags::SERVER_STATUS_AUTOCOMMIT,
    };
    let mut upstream = Upstream {
        reader,
        writer,
        thread_id,
        capabilities,
        status,
    };
    upstream.pin_reading().await?;
    Ok(upstream)
}

/// The statement that removes the SQL modes that change how SQL text is read (see
/// [`READING_MODES`]) from an upstream session: run first on every session the gateway opens.
pub fn pin_reading_statement() -> String {
    let mut mode = "CONCAT(',', @@SESSION.sql_mode, ',')".to_string();
    for name in READING_MODES {
        mode = format!("REPLACE({mode}, ',{name},', ',')");
    }
    format!("SET SESSION sql_mode = TRIM(BOTH ',' FROM {mode})")
}

impl Upstream {
    /// Removes the SQL modes that change how SQL text is read (see [`READING_MODES`]).
    async fn pin_reading(&mut self) -> Result<(), UpstreamError> {
        let sql = pin_reading_statement();
        let mut payload = vec![0x03];
        payload.extend_from_slice(sql.as_bytes());
        codec::write_payload(&mut self.writer, &payload, 0)
            .await
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let answer = self.reader.read().await?;
        match answer.first() {
            Some(0x00) => Ok(()),
            Some(0xFF) => Err(UpstreamError::Pinning(codec::err_message(&answer.payload))),
            _ => Err(UpstreamError::Protocol(
                "unexpected answer to SET sql_mode".into(),
            )),
        }
    }
}
