//! The upstream side: connecting to the real PostgreSQL server and logging in with the
//! connection's own credential (SCRAM-SHA-256, md5, cleartext or trust). The credential is
//! used here and nowhere else; errors say what failed, never with what.

use crate::codec::{self, Reader};
use airlock_core::secret::Secret;
use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom the gateway logs in for one connection.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub address: String,
    pub database: String,
    pub user: String,
    pub password: Option<Secret<String>>,
}

impl UpstreamTarget {
    /// Where a configured PostgreSQL connection logs in (config checks that it names a user).
    pub fn of(connection: &airlock_core::config::ConnectionConfig) -> UpstreamTarget {
        UpstreamTarget {
            address: connection.address.clone(),
            database: connection.database_or_default().to_string(),
            user: connection.user.clone().unwrap_or_default(),
            password: connection.password.clone(),
        }
    }

    /// Settings for a side connection (catalog lookups, previews) with `tokio-postgres`: the
    /// connection's own address, database and credential, named `application_name` upstream.
    pub fn side_config(
        &self,
        application_name: &str,
        connect_timeout: std::time::Duration,
    ) -> Result<tokio_postgres::Config, String> {
        let (host, port) = match self.address.rsplit_once(':') {
            Some((host, port)) => (
                host.trim_start_matches('[').trim_end_matches(']'),
                port.parse::<u16>()
                    .map_err(|_| format!("invalid port in address `{}`", self.address))?,
            ),
            None => (self.address.as_str(), 5432),
        };
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(port)
            .dbname(&self.database)
            .user(&self.user)
            .application_name(application_name)
            .connect_timeout(connect_timeout);
        if let Some(password) = &self.password {
            config.password(password.expose().as_bytes());
        }
        Ok(config)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("the upstream refused the gateway's login: {0}")]
    LoginRefused(String),
    #[error("the upstream asked for a password but the connection has none")]
    NoPassword,
    #[error("the upstream asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(String),
    #[error("protocol error from upstream: {0}")]
    Protocol(String),
}

/// A logged-in upstream connection, ready for queries.
pub struct Upstream {
    pub stream: TcpStream,
    /// ParameterStatus messages to replay to the client, as received.
    pub parameters: Vec<Bytes>,
    /// The upstream's BackendKeyData, for forwarding cancel requests.
    pub key: Option<(i32, i32)>,
    /// Bytes read past ReadyForQuery (normally none).
    pub leftover: BytesMut,
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn next(&mut self) -> Result<Bytes, UpstreamError> {
        loop {
            match codec::next_message(&self.buf) {
                Ok(Some((_, len))) => return Ok(self.buf.split_to(len).freeze()),
                Ok(None) => {}
                Err(e) => return Err(UpstreamError::Protocol(e.to_string())),
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            if n == 0 {
                return Err(UpstreamError::Protocol(
                    "connection closed during login".into(),
                ));
            }
        }
    }

    async fn send(&mut self, buf: &[u8]) -> Result<(), UpstreamError> {
        self.stream
            .write_all(buf)
            .await
            .map_err(|e| UpstreamError::Protocol(e.to_string()))
    }
}

fn server_error(msg: &[u8]) -> String {
    let fields = codec::decode_fields(msg);
    let code = codec::field(&fields, b'C').unwrap_or("?");
    let text = codec::field(&fields, b'M').unwrap_or("unknown error");
    format!("{text} (SQLSTATE {code})")
}

fn io_err(e: std::io::Error) -> UpstreamError {
    UpstreamError::Protocol(e.to_string())
}

/// Connects and logs in. `extra` are startup parameters passed through from the client.
pub async fn connect(
    target: &UpstreamTarget,
    extra: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let unreachable = |reason: String| UpstreamError::Unreachable {
        address: target.address.clone(),
        reason,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target.address))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    stream.set_nodelay(true).map_err(io_err)?;
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(8192),
    };

    let mut params: Vec<(&str, &str)> = vec![
        ("user", target.user.as_str()),
        ("database", target.database.as_str()),
    ];
    params.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut out = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut out).map_err(io_err)?;
    conn.send(&out).await?;

    let password = || {
        target
            .password
            .as_ref()
            .map(|p| p.expose().as_bytes())
            .ok_or(UpstreamError::NoPassword)
    };
    let mut scram: Option<ScramSha256> = None;
    loop {
        let msg = conn.next().await?;
        match msg[0] {
            b'R' => {
                let mut r = Reader::new(codec::body(&msg), "Authentication");
                let code = r
                    .i32()
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                let mut out = BytesMut::new();
                match code {
                    0 => break,
                    3 => frontend::password_message(password()?, &mut out).map_err(io_err)?,
                    5 => {
                        let salt = r
                            .bytes(4)
                            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            target.user.as_bytes(),
                            password()?,
                            [salt[0], salt[1], salt[2], salt[3]],
                        );
                        frontend::password_message(hash.as_bytes(), &mut out).map_err(io_err)?;
                    }
                    10 => {
                        let mut offers_scram = false;
                        while let Ok(mechanism) = r.cstr() {
                            if mechanism.is_empty() {
                                break;
                            }
                            offers_scram |= mechanism == SCRAM_SHA_256;
                        }
                        if !offers_scram {
                            return Err(UpstreamError::UnsupportedAuth(
                                "SASL without SCRAM-SHA-256".into(),
                            ));
                        }
                        let client = ScramSha256::new(password()?, ChannelBinding::unsupported());
                        frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut out)
                            .map_err(io_err)?;
                        scram = Some(client);
                    }
                    11 => {
                        let client = scram.as_mut().ok_or_else(|| {
                            UpstreamError::Protocol("SASL continue without start".into())
                        })?;
                        client
                            .update(r.rest())
                            .map_err(|e| UpstreamError::LoginRefused(e.to_string()))?;
                        frontend::sasl_response(client.message(), &mut out).map_err(io_err)?;
                    }
                    12 => {
                        let client = scram.as_mut().ok_or_else(|| {
                            UpstreamError::Protocol("SASL final without start".into())
                        })?;
                        client
                            .finish(r.rest())
                            .map_err(|e| UpstreamError::LoginRefused(e.to_string()))?;
                        continue;
                    }
                    other => return Err(UpstreamError::UnsupportedAuth(format!("code {other}"))),
                }
                conn.send(&out).await?;
            }
            b'E' => return Err(UpstreamError::LoginRefused(server_error(&msg))),
            b'v' | b'N' => {}
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} during authentication",
                    other as char
                )))
            }
        }
    }

    let mut parameters = Vec::new();
    let mut key = None;
    loop {
        let msg = conn.next().await?;
        match msg[0] {
            b'S' => parameters.push(msg),
            b'K' => {
                let mut r = Reader::new(codec::body(&msg), "BackendKeyData");
                if let (Ok(pid), Ok(secret)) = (r.i32(), r.i32()) {
                    key = Some((pid, secret));
                }
            }
            b'Z' => break,
            b'N' => {}
            b'E' => return Err(UpstreamError::LoginRefused(server_error(&msg))),
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} before ReadyForQuery",
                    other as char
                )))
            }
        }
    }
    Ok(Upstream {
        stream: conn.stream,
        parameters,
        key,
        leftover: conn.buf,
    })
}

/// Forwards a cancel request to the upstream backend.
pub async fn cancel(address: &str, key: (i32, i32)) -> std::io::Result<()> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let mut out = BytesMut::new();
    frontend::cancel_request(key.0, key.1, &mut out);
    stream.write_all(&out).await?;
    stream.shutdown().await
}
