//! The PostgreSQL adapter: a listener that speaks the PostgreSQL wire protocol to agents,
//! takes them through TLS when they ask (SSLRequest, or PostgreSQL 17's direct TLS), logs them
//! in with their Airlock token (sent as the password), logs in to the upstream with the
//! connection's own credential, and relays every message through the gate.
//!
//! This module owns the listener, the encryption requests and the login. Modules: `codec`
//! (framing and messages), `upstream` (login to the real server), `volatility` (function
//! volatility from the upstream's catalog), `session` (the relay, with its halves `requests`
//! and `replies`), `names` (statement and portal names as the upstream confirmed them),
//! `cancel` (cancel requests and held statements), `preview` (the blast-radius preview of held
//! statements, on a side connection), `masking` (masking and recording of replies) and
//! `catalog` (where result columns come from). The certificate is `airlock_core::tls`'s.

pub mod cancel;
pub mod catalog;
pub mod codec;
pub mod masking;
pub mod names;
pub mod preview;
mod replacement;
pub mod replies;
pub mod requests;
pub mod session;
pub mod upstream;
pub mod volatility;

use crate::cancel::{CancelAction, CancelRegistry};
use crate::catalog::Catalog;
use crate::codec::Severity;
use crate::session::{ClientStream, End, Relay};
use crate::upstream::UpstreamTarget;
use airlock_core::gate::Gate;
use airlock_core::identity::AuthError;
use airlock_core::operation::Protocol;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

/// A client has this long to finish the startup exchange (a TLS handshake included), and as
/// long again to log in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_SESSIONS: usize = 10_000;
/// Parsing SQL recurses as deep as the statement nests; a generous stack keeps a hostile
/// statement from overflowing it (memory is only committed as it is used).
const CLASSIFY_STACK: usize = 1024 * 1024 * 1024;

/// The ALPN protocol of PostgreSQL. Direct TLS clients must offer it (so that a TLS connection
/// meant for another service is not taken for a PostgreSQL one); clients that ask with
/// SSLRequest may.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";
/// The first byte of a TLS handshake record. A startup packet starts with its length, which is
/// never that large, so this byte tells a direct TLS client apart.
const TLS_HANDSHAKE: u8 = 0x16;

/// Startup parameters passed on to the upstream; anything else (notably `options`, which can
/// set arbitrary server settings, and `replication`) stays at the gateway.
const FORWARDED_PARAMETERS: [&str; 5] = [
    "application_name",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
];

/// Settings that decide how the server reads SQL text. The gateway parses as UTF-8 with
/// standard-conforming strings; the upstream session is pinned to the same, and a session whose
/// upstream reports otherwise is ended (see `session`).
pub const READING_SETTINGS: [(&str, &str); 2] = [
    ("client_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
];

pub struct PgGateway {
    gate: Arc<Gate>,
    targets: HashMap<String, UpstreamTarget>,
    catalogs: HashMap<String, Arc<Catalog>>,
    cancels: Arc<CancelRegistry>,
    sessions: Arc<Semaphore>,
    tls: TlsAcceptor,
}

/// A refusal during login: sent as a FATAL ErrorResponse, then the connection closes.
struct LoginError {
    code: &'static str,
    message: String,
    hint: Option<String>,
}

impl LoginError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        LoginError {
            code,
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    fn to_bytes(&self) -> Bytes {
        codec::error_response(
            Severity::Fatal,
            self.code,
            &self.message,
            None,
            self.hint.as_deref(),
        )
    }
}

/// What a client's first packet asks for.
enum Opening {
    Cancel((i32, i32)),
    Startup(Startup),
    /// SSLRequest, answered with 'S': the TLS handshake comes next.
    Tls,
}

struct Startup {
    minor: i32,
    params: Vec<(String, String)>,
}

impl PgGateway {
    pub fn new(
        gate: Arc<Gate>,
        targets: HashMap<String, UpstreamTarget>,
        tls: Arc<ServerConfig>,
    ) -> Arc<PgGateway> {
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        let catalogs = targets
            .iter()
            .map(|(name, target)| (name.clone(), Arc::new(Catalog::new(target.clone()))))
            .collect();
        Arc::new(PgGateway {
            gate,
            targets,
            catalogs,
            cancels: Arc::new(CancelRegistry::default()),
            sessions: Arc::new(Semaphore::new(MAX_SESSIONS)),
            tls: TlsAcceptor::from(Arc::new(tls)),
        })
    }

    /// Serves the listener on `threads` threads, each with its own single-threaded runtime:
    /// a session then lives on one thread and its relay never hops between threads (on a
    /// small virtual machine a cross-thread wake-up costs more than the whole relay step).
    /// Returns when a serving thread fails.
    pub async fn serve(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        threads: usize,
    ) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let (failed_tx, mut failed_rx) =
            tokio::sync::mpsc::channel::<std::io::Error>(threads.max(1));
        for index in 0..threads.max(1) {
            let listener = listener.try_clone()?;
            let gateway = self.clone();
            let failed = failed_tx.clone();
            std::thread::Builder::new()
                .name(format!("pg-{index}"))
                .stack_size(CLASSIFY_STACK)
                .spawn(move || {
                    let result = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .and_then(|runtime| {
                            runtime.block_on(async move {
                                gateway.accept_loop(TcpListener::from_std(listener)?).await
                            })
                        });
                    if let Err(e) = result {
                        let _ = failed.blocking_send(e);
                    }
                })?;
        }
        drop(failed_tx);
        match failed_rx.recv().await {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = self.sessions.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "session limit reached; refusing connection");
                tokio::spawn(refuse_busy(stream));
                continue;
            };
            let gateway = self.clone();
            tokio::spawn(
                async move {
                    gateway.handle(stream, peer).await;
                    drop(permit);
                }
                .instrument(tracing::info_span!("pg", %peer)),
            );
        }
    }

    async fn handle(&self, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let mut buf = BytesMut::with_capacity(8192);
        // One budget for the whole startup exchange, TLS handshake included.
        let deadline = Instant::now() + LOGIN_TIMEOUT;
        let direct = match is_direct_tls(&mut stream, deadline).await {
            Some(direct) => direct,
            None => return,
        };
        if !direct {
            match open(&mut stream, &mut buf, false, deadline).await {
                Some(Opening::Cancel(key)) => return self.cancel(key).await,
                Some(Opening::Startup(startup)) => {
                    return self.start(stream, buf, startup, peer).await
                }
                Some(Opening::Tls) => {}
                None => return,
            }
        }
        let mut tls = match tokio::time::timeout_at(deadline, self.tls.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "TLS handshake with the client failed");
                return;
            }
            Err(_) => {
                tracing::info!("TLS handshake with the client timed out");
                return;
            }
        };
        if direct && tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            let e = LoginError::new(
                "08P01",
                "direct TLS connections must negotiate the \"postgresql\" ALPN protocol",
            );
            tracing::info!(reason = %e.message, "startup refused");
            refuse(&mut tls, &e).await;
            return;
        }
        match open(&mut tls, &mut buf, true, deadline).await {
            Some(Opening::Cancel(key)) => self.cancel(key).await,
            Some(Opening::Startup(startup)) => self.start(tls, buf, startup, peer).await,
            // A second encryption request is refused inside `open`.
            Some(Opening::Tls) | None => {}
        }
    }

    /// Logs the client in and relays its session.
    async fn start<S: ClientStream>(
        &self,
        mut stream: S,
        mut buf: BytesMut,
        startup: Startup,
        peer: SocketAddr,
    ) {
        let login = tokio::time::timeout(
            LOGIN_TIMEOUT,
            self.login(&mut stream, &mut buf, &startup, peer),
        )
        .await
        .unwrap_or_else(|_| Err(LoginError::new("08P01", "login timed out")));
        match login {
            Ok(ready) => self.run_session(stream, buf, ready).await,
            Err(e) => {
                tracing::info!(code = e.code, reason = %e.message, "login refused");
                refuse(&mut stream, &e).await;
            }
        }
    }

    async fn cancel(&self, key: (i32, i32)) {
        match self.cancels.cancel(key) {
            CancelAction::Withdrawn => tracing::info!("cancel request withdrew a held statement"),
            CancelAction::Forward(address, upstream_key) => {
                if let Err(e) = upstream::cancel(&address, upstream_key).await {
                    tracing::warn!(error = %e, "could not forward a cancel request");
                }
            }
            CancelAction::Nothing => {}
        }
    }

    async fn login<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        buf: &mut BytesMut,
        startup: &Startup,
        peer: SocketAddr,
    ) -> Result<Ready, LoginError> {
        let Startup { minor, params } = startup;
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let unsupported: Vec<String> = params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.clone())
            .collect();
        if *minor > 0 || !unsupported.is_empty() {
            write(stream, &codec::negotiate_protocol_version(0, &unsupported)).await?;
        }
        if param("replication").is_some_and(|v| v != "false" && v != "0") {
            return Err(LoginError::new(
                "08P01",
                "replication connections are not allowed through the gateway",
            ));
        }
        let user = param("user").unwrap_or("");
        let connection = param("database")
            .filter(|d| !d.is_empty())
            .unwrap_or(user)
            .to_string();

        write(stream, &codec::auth_request(3)).await?;
        let token = read_password(stream, buf).await?;
        let identity = self
            .gate
            .identity()
            .authenticate(&token)
            .await
            .map_err(|e| {
                tracing::info!(reason = %e, "authentication failed");
                match e {
                    AuthError::Store(_) => {
                        LoginError::new("58000", "the gateway cannot verify tokens right now")
                    }
                    _ => LoginError::new(
                        "28P01",
                        format!("password authentication failed for user \"{user}\""),
                    )
                    .hint(format!(
                        "{}. The password must be an Airlock agent token or an OIDC token (JWT).",
                        AuthError::CLIENT_MESSAGE
                    )),
                }
            })?;
        let target = self.targets.get(&connection).ok_or_else(|| {
            LoginError::new("3D000", format!("connection \"{connection}\" does not exist"))
                .hint("The database name selects the Airlock connection; `airlock` lists connections at /api/v1/connections.")
        })?;
        if !self
            .gate
            .policies()
            .grants_connection(&identity, &connection)
        {
            return Err(LoginError::new(
                "42501",
                format!(
                    "no policy lets {} use connection \"{connection}\"",
                    identity.name
                ),
            ));
        }
        if let Some(encoding) = param("client_encoding") {
            let normalized = encoding
                .trim()
                .trim_matches('\'')
                .to_ascii_uppercase()
                .replace(['-', '_'], "");
            if normalized != "UTF8" && normalized != "UNICODE" {
                return Err(LoginError::new(
                    "22023",
                    format!("client_encoding \"{encoding}\" is not supported through the gateway; use UTF8"),
                ));
            }
        }
        let mut forwarded: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| FORWARDED_PARAMETERS.contains(&k.as_str()))
            .cloned()
            .collect();
        forwarded.extend(
            READING_SETTINGS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let upstream = upstream::connect(target, &forwarded).await.map_err(|e| {
            tracing::error!(connection = %connection, error = %e, "upstream login failed");
            LoginError::new(
                "08006",
                format!("the gateway could not connect to the upstream of \"{connection}\""),
            )
            .hint("The upstream is down or refused the gateway's credentials; an administrator can see the details in the gateway log.")
        })?;
        let session = self
            .gate
            .open_session(identity, &connection, Protocol::Postgres, &peer.to_string())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not record the session");
                LoginError::new(
                    "58000",
                    "the gateway could not record the session, so it was refused",
                )
            })?;
        let catalog = self
            .catalogs
            .get(&connection)
            .cloned()
            .unwrap_or_else(|| Arc::new(Catalog::new(target.clone())));
        Ok(Ready {
            session,
            upstream,
            address: target.address.clone(),
            target: target.clone(),
            catalog,
        })
    }

    async fn run_session<S: ClientStream>(
        &self,
        mut client: S,
        client_buf: BytesMut,
        ready: Ready,
    ) {
        let Ready {
            session,
            upstream,
            address,
            target,
            catalog,
        } = ready;
        let cancel = self.cancels.register(address, upstream.key);
        let (pid, secret) = cancel.key();
        let mut hello = BytesMut::new();
        hello.extend_from_slice(&codec::auth_request(0));
        for parameter in &upstream.parameters {
            hello.extend_from_slice(parameter);
        }
        hello.extend_from_slice(&codec::backend_key_data(pid, secret));
        hello.extend_from_slice(&codec::ready_for_query(b'I'));
        let span = tracing::info_span!("session", id = session.id, connection = %session.connection, who = %session.identity.name);
        let end = async {
            tracing::info!("session opened");
            if let Err(e) = write_flushed(&mut client, &hello).await {
                return End::Io(e);
            }
            let mut upstream_stream = upstream.stream;
            let relay = Relay {
                gate: &self.gate,
                session: &session,
                cancel: &cancel,
                target: &target,
                catalog: &catalog,
            };
            relay
                .run(
                    &mut client,
                    &mut upstream_stream,
                    client_buf,
                    upstream.leftover,
                )
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
        // Through TLS this says goodbye properly (close_notify), so clients see a clean end.
        let _ = client.shutdown().await;
        self.gate.close_session(&session, &reason).await;
    }
}

struct Ready {
    session: airlock_core::gate::Session,
    upstream: upstream::Upstream,
    address: String,
    target: UpstreamTarget,
    catalog: Arc<Catalog>,
}

/// Writes and flushes: through TLS, written bytes wait in the session's buffer until flushed.
async fn write_flushed<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), LoginError> {
    write_flushed(stream, bytes)
        .await
        .map_err(|e| LoginError::new("08006", e.to_string()))
}

/// Sends a login refusal and closes the connection.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, e: &LoginError) {
    let _ = write_flushed(stream, &e.to_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Whether the client opens with a TLS handshake rather than a startup packet (without reading
/// it); `None` when the client goes away or stays silent past `deadline`.
async fn is_direct_tls(stream: &mut TcpStream, deadline: Instant) -> Option<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == TLS_HANDSHAKE),
        Ok(_) => None,
        Err(_) => {
            let e = LoginError::new("08P01", "the startup exchange timed out");
            refuse(stream, &e).await;
            None
        }
    }
}

/// Reads the opening packets until `deadline`; `None` when the connection ends here (the
/// client was told why when it could be). `encrypted`: the client is already through TLS.
async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    encrypted: bool,
    deadline: Instant,
) -> Option<Opening> {
    let error = match tokio::time::timeout_at(deadline, read_opening(stream, buf, encrypted)).await
    {
        Ok(Ok(opening)) => return opening,
        Ok(Err(e)) => e,
        Err(_) => LoginError::new("08P01", "the startup exchange timed out"),
    };
    tracing::info!(code = error.code, reason = %error.message, "startup refused");
    refuse(stream, &error).await;
    None
}

async fn refuse_busy(mut stream: TcpStream) {
    let e = LoginError::new(
        "53300",
        "the gateway has too many sessions; try again later",
    );
    let _ = stream.write_all(&e.to_bytes()).await;
}

/// Reads the opening packet. SSLRequest is answered with 'S' (TLS follows) unless the client is
/// already `encrypted`; GSSENCRequest with 'N' (not supported, so the client goes on in clear or
/// asks for TLS). `None` when the client went away.
async fn read_opening<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    encrypted: bool,
) -> Result<Option<Opening>, LoginError> {
    loop {
        let packet = loop {
            match codec::next_startup_packet(buf) {
                Ok(Some(packet)) => break packet,
                Ok(None) => {}
                Err(e) => {
                    return Err(LoginError::new(
                        "08P01",
                        format!("invalid startup packet: {e}"),
                    ))
                }
            }
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        };
        let mut r = codec::Reader::new(&packet, "startup");
        let code = r
            .i32()
            .map_err(|e| LoginError::new("08P01", e.to_string()))?;
        match code {
            codec::SSL_REQUEST | codec::GSSENC_REQUEST if encrypted => {
                return Err(LoginError::new(
                    "08P01",
                    "encryption request on a connection that is already encrypted",
                ));
            }
            codec::SSL_REQUEST | codec::GSSENC_REQUEST if !buf.is_empty() => {
                // Bytes sent before our answer could be spliced into a later TLS session.
                return Err(LoginError::new(
                    "08P01",
                    "unexpected data after an encryption request",
                ));
            }
            codec::SSL_REQUEST => {
                write(stream, b"S").await?;
                return Ok(Some(Opening::Tls));
            }
            codec::GSSENC_REQUEST => write(stream, b"N").await?,
            codec::CANCEL_REQUEST => {
                let (Ok(pid), Ok(secret)) = (r.i32(), r.i32()) else {
                    return Err(LoginError::new("08P01", "malformed cancel request"));
                };
                return Ok(Some(Opening::Cancel((pid, secret))));
            }
            version if version >> 16 == 3 => {
                let mut params = Vec::new();
                loop {
                    let key = r
                        .cstr()
                        .map_err(|_| LoginError::new("08P01", "malformed startup packet"))?;
                    if key.is_empty() {
                        break;
                    }
                    let value = r
                        .cstr()
                        .map_err(|_| LoginError::new("08P01", "malformed startup packet"))?;
                    params.push((key.to_string(), value.to_string()));
                }
                return Ok(Some(Opening::Startup(Startup {
                    minor: version & 0xffff,
                    params,
                })));
            }
            other => {
                return Err(LoginError::new(
                    "0A000",
                    format!(
                        "unsupported frontend protocol {}.{}: the gateway speaks 3.0",
                        other >> 16,
                        other & 0xffff
                    ),
                ))
            }
        }
    }
}

/// Reads the PasswordMessage that answers our cleartext password request.
async fn read_password<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<String, LoginError> {
    loop {
        match codec::next_message(buf) {
            Ok(Some((b'p', len))) => {
                let msg = buf.split_to(len);
                let token = codec::Reader::new(codec::body(&msg), "PasswordMessage")
                    .cstr()
                    .map_err(|e| LoginError::new("08P01", e.to_string()))?
                    .to_string();
                return Ok(token);
            }
            Ok(Some((other, _))) => {
                return Err(LoginError::new(
                    "08P01",
                    format!("expected a password message, got {:?}", other as char),
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(LoginError::new("08P01", e.to_string())),
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => {
                return Err(LoginError::new(
                    "08006",
                    "the client went away during login",
                ))
            }
            Ok(_) => {}
        }
        if buf.len() > codec::MAX_STARTUP_LEN {
            return Err(LoginError::new("08P01", "password message too long"));
        }
    }
}
