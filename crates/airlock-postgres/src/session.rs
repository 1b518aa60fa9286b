//! One agent session after login: runs the relay's two halves — `requests` (client →
//! upstream) and `replies` (upstream → client) — in one task, and owns what they share: the
//! queue of what the upstream will answer (`Expect`), the session's statement and portal
//! names, how a session ends (`End`), and how the client's connection, in clear or through
//! TLS, splits into the halves the two directions use (`ClientStream`).
//!
//! A refusal is realised on the upstream itself: instead of the refused message the gateway sends
//! a message that can only fail, carrying a random marker, and rewrites the resulting error into
//! the refusal. So the refusal lands exactly where the refused message stood in the response
//! stream, the upstream skips to the next Sync as it would for any error, and the transaction
//! status the client sees is the upstream's own.

use crate::cancel::CancelSlot;
use crate::catalog::Catalog;
use crate::codec::{self, Severity};
use crate::masking::{Described, Shaper};
use crate::names::{Names, Space};
use crate::replies::UpstreamSide;
use crate::requests::ClientSide;
use crate::upstream::UpstreamTarget;
use crate::volatility::FunctionCatalog;
use airlock_core::classify::Classification;
use airlock_core::gate::{Gate, Session};
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// What the upstream will answer, in order, for what the client side forwarded.
pub(crate) enum Expect {
    /// A permitted Query (`simple`) or Execute; its outcome is recorded against `event`.
    Outcome { event: Option<i64>, simple: bool },
    /// A refusal: the upstream error carrying `marker` is replaced by `error`.
    Refusal { marker: String, error: Bytes },
    /// A Parse, Bind or Close whose name takes its new meaning once the upstream confirms it;
    /// the confirmation of the gateway's own (`ours`) is not forwarded.
    Confirm {
        space: Space,
        name: String,
        id: u64,
        ours: bool,
    },
    /// A Describe of a prepared statement: its ParameterDescription tells the parameter types
    /// (for showing reviewers binary parameters as values).
    Describe { statement: String },
    /// A Describe whose RowDescription or NoData is looked at (only while replies are masked
    /// or recorded): see [`Described`] for who asked and what it shapes.
    RowShape { from: Described },
    /// A Sync or Query: the upstream answers with ReadyForQuery.
    SyncPoint,
}

/// Parameter types the upstream described, by statement name; shared by both directions.
pub(crate) type DescribedTypes = Arc<Mutex<HashMap<String, Vec<u32>>>>;

pub(crate) type Expectations = Arc<Mutex<VecDeque<Expect>>>;

/// Room made before each read; `reserve` reuses the buffer's space once it has been consumed.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Why a session ended.
pub enum End {
    ClientClosed,
    /// The gateway ends the session: `message` (a FATAL) is sent before closing, `reason` is
    /// recorded.
    Fatal {
        message: Bytes,
        reason: &'static str,
    },
    UpstreamClosed,
    Io(std::io::Error),
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Io(e)
    }
}

/// A client connection the relay reads from and writes to at once. In clear the socket splits
/// into two borrowed halves at no cost; a TLS session is one state that both halves share.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin {
    type Reader<'s>: AsyncRead + Unpin
    where
        Self: 's;
    type Writer<'s>: AsyncWrite + Unpin
    where
        Self: 's;
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);
}

impl ClientStream for TcpStream {
    type Reader<'s> = ReadHalf<'s>;
    type Writer<'s> = WriteHalf<'s>;

    fn halves(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        self.split()
    }
}

impl ClientStream for TlsStream<TcpStream> {
    type Reader<'s> = tokio::io::ReadHalf<&'s mut Self>;
    type Writer<'s> = tokio::io::WriteHalf<&'s mut Self>;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        tokio::io::split(self)
    }
}

pub(crate) type SessionNames = Arc<Names<Prepared, Portal>>;

#[derive(Clone)]
pub(crate) struct Prepared {
    pub(crate) sql: Arc<str>,
    pub(crate) classification: Arc<Classification>,
    pub(crate) param_types: Vec<u32>,
}

#[derive(Clone)]
pub(crate) struct Portal {
    pub(crate) statement: Option<Prepared>,
    pub(crate) params: Vec<Option<String>>,
}

pub struct Relay<'a> {
    pub gate: &'a Gate,
    pub session: &'a Session,
    pub cancel: &'a CancelSlot,
    /// The upstream, for the side connection that looks up function volatility.
    pub target: &'a UpstreamTarget,
    /// Where result columns come from, for masking rules on tables.
    pub catalog: &'a Arc<Catalog>,
}

impl Relay<'_> {
    /// Relays until either side closes. `client_buf` holds bytes already read from the client.
    pub async fn run<C: ClientStream>(
        &self,
        client: &mut C,
        upstream: &mut TcpStream,
        client_buf: BytesMut,
        upstream_buf: BytesMut,
    ) -> End {
        // Replies are shaped (masked, recorded) only in sessions that need it; the others relay
        // rows without looking at them.
        let masker = match self.gate.masker(self.session) {
            Ok(masker) => masker,
            Err(reason) => {
                tracing::error!(%reason, "masking cannot be set up; refusing the session");
                return fatal(
                    "58000",
                    "masking cannot be set up for this session",
                    "masking unavailable",
                );
            }
        };
        let shaper = (masker.is_some() || self.gate.keeps_responses())
            .then(|| Shaper::new(masker, self.catalog.clone(), self.gate.response_capture()));
        let expectations: Expectations = Arc::new(Mutex::new(VecDeque::new()));
        let described: DescribedTypes = Arc::new(Mutex::new(HashMap::new()));
        let names: SessionNames = Names::new();
        let (inject_tx, inject_rx) = mpsc::unbounded_channel::<Bytes>();
        let (client_read, mut client_write) = client.halves();
        let (upstream_read, upstream_write) = upstream.split();
        let mut to_upstream = ClientSide {
            relay: self,
            reader: client_read,
            buf: client_buf,
            upstream: upstream_write,
            pending_from: 0,
            skip_until_sync: false,
            in_batch: false,
            batch: 0,
            names: names.clone(),
            expectations: expectations.clone(),
            described: described.clone(),
            inject: inject_tx,
            catalog: FunctionCatalog::new(self.target.clone()),
            shaping: shaper.is_some(),
            described_portal: None,
        };
        let mut to_client = UpstreamSide {
            relay: self,
            reader: upstream_read,
            buf: upstream_buf,
            expectations,
            described,
            names,
            local: VecDeque::new(),
            simple: None,
            shaper,
        };
        let end = tokio::select! {
            end = to_upstream.run() => end,
            end = to_client.run(&mut client_write, inject_rx) => end,
        };
        match &end {
            End::Fatal { message, .. } => {
                let _ = client_write.write_all(message).await;
            }
            End::UpstreamClosed => {
                let fatal = codec::error_response(
                    Severity::Fatal,
                    "08006",
                    "the upstream server closed the connection",
                    Some("Airlock lost its connection to the upstream; reconnect to start a new session."),
                    None,
                );
                let _ = client_write.write_all(&fatal).await;
            }
            _ => {}
        }
        let _ = client_write.flush().await;
        end
    }
}

pub(crate) fn fatal(code: &str, message: &str, reason: &'static str) -> End {
    End::Fatal {
        message: codec::error_response(
            Severity::Fatal,
            code,
            &format!("airlock: {message}"),
            None,
            None,
        ),
        reason,
    }
}

pub(crate) fn violation(what: &str) -> End {
    End::Fatal {
        message: codec::error_response(
            Severity::Fatal,
            "08P01",
            &format!("invalid message from the client: {what}"),
            None,
            None,
        ),
        reason: "client protocol violation",
    }
}
