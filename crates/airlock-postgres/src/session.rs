//! One agent session after login: the relay between client and upstream.
//!
//! Client → upstream: every message is framed; Query and Execute are decided by the gate before
//! they are forwarded, everything else passes through untouched (in place, in one write per
//! batch). Upstream → client: passed through in place; only CommandComplete, ErrorResponse and
//! ReadyForQuery are looked at, to record outcomes and to put refusals in their place.
//!
//! A refusal is realised on the upstream itself: instead of the refused message the gateway sends
//! a message that can only fail, carrying a random marker, and rewrites the resulting error into
//! the refusal. So the refusal lands exactly where the refused message stood in the response
//! stream, the upstream skips to the next Sync as it would for any error, and the transaction
//! status the client sees is the upstream's own.

use crate::cancel::CancelSlot;
use crate::codec::{self, Severity};
use crate::names::{Lookup, Names, Space};
use airlock_core::classify::{Classification, NamedObject, StatementKind};
use airlock_core::gate::{Denial, DenialKind, Gate, Session, Submission};
use airlock_core::operation::Operation;
use airlock_core::store::OutcomeStatus;
use bytes::{Buf, Bytes, BytesMut};
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What the upstream will answer, in order, for what the client side forwarded.
enum Expect {
    /// A permitted Query (`simple`) or Execute; its outcome is recorded against `event`.
    Outcome { event: Option<i64>, simple: bool },
    /// A refusal: the upstream error carrying `marker` is replaced by `error`.
    Refusal { marker: String, error: Bytes },
    /// A Parse, Bind or Close whose name takes its new meaning once the upstream confirms it.
    Confirm { space: Space, name: String, id: u64 },
    /// A Describe of a prepared statement: its ParameterDescription tells the parameter types
    /// (for showing reviewers binary parameters as values).
    Describe { statement: String },
    /// A Sync or Query: the upstream answers with ReadyForQuery.
    SyncPoint,
}

/// Parameter types the upstream described, by statement name; shared by both directions.
type DescribedTypes = Arc<Mutex<HashMap<String, Vec<u32>>>>;

type Expectations = Arc<Mutex<VecDeque<Expect>>>;

/// Room made before each read; `reserve` reuses the buffer's space once it has been consumed.
const READ_CHUNK: usize = 16 * 1024;

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

type SessionNames = Arc<Names<Prepared, Portal>>;

#[derive(Clone)]
struct Prepared {
    sql: Arc<str>,
    classification: Arc<Classification>,
    param_types: Vec<u32>,
}

#[derive(Clone)]
struct Portal {
    statement: Option<Prepared>,
    params: Vec<Option<String>>,
}

pub struct Relay<'a> {
    pub gate: &'a Gate,
    pub session: &'a Session,
    pub cancel: &'a CancelSlot,
}

impl Relay<'_> {
    /// Relays until either side closes. `client_buf` holds bytes already read from the client.
    pub async fn run(
        &self,
        client: &mut TcpStream,
        upstream: &mut TcpStream,
        client_buf: BytesMut,
        upstream_buf: BytesMut,
    ) -> End {
        let expectations: Expectations = Arc::new(Mutex::new(VecDeque::new()));
        let described: DescribedTypes = Arc::new(Mutex::new(HashMap::new()));
        let names: SessionNames = Names::new();
        let (inject_tx, inject_rx) = mpsc::unbounded_channel::<Bytes>();
        let (client_read, mut client_write) = client.split();
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
        end
    }
}

fn marker() -> String {
    format!("airlock_refused_{:016x}", rand::thread_rng().gen::<u64>())
}

fn refusal_error(denial: &Denial) -> Bytes {
    let (code, message, detail) = match denial.kind {
        DenialKind::Policy => ("42501", format!("airlock: {}", denial.message), None),
        DenialKind::Rejected => ("42501", format!("airlock: {}", denial.message), None),
        DenialKind::Expired => ("57014", format!("airlock: {}", denial.message), None),
        DenialKind::Canceled => (
            "57014",
            "canceling statement due to user request".to_string(),
            Some(format!("airlock: {}", denial.message)),
        ),
        DenialKind::Unavailable => ("58000", format!("airlock: {}", denial.message), None),
        DenialKind::IdentityExpired => ("28000", format!("airlock: {}", denial.message), None),
        DenialKind::AccessRevoked => ("42501", format!("airlock: {}", denial.message), None),
    };
    codec::error_response(Severity::Error, code, &message, detail.as_deref(), None)
}

struct ClientSide<'r, 'a, R, W> {
    relay: &'r Relay<'a>,
    reader: R,
    buf: BytesMut,
    upstream: W,
    /// Start of the bytes in `buf` that are yet to be forwarded.
    pending_from: usize,
    /// After a refusal in the extended protocol, the rest of the batch is dropped up to Sync,
    /// exactly as the upstream would skip it after an error.
    skip_until_sync: bool,
    /// Extended-protocol messages were sent since the last Sync.
    in_batch: bool,
    /// Batches (Syncs and Queries) sent so far: the number of the batch being sent.
    batch: u64,
    names: SessionNames,
    expectations: Expectations,
    described: DescribedTypes,
    inject: mpsc::UnboundedSender<Bytes>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ClientSide<'_, '_, R, W> {
    async fn run(&mut self) -> End {
        loop {
            match self.process_buffered().await {
                Ok(()) => {}
                Err(end) => return end,
            }
            self.buf.reserve(READ_CHUNK);
            match self.reader.read_buf(&mut self.buf).await {
                Ok(0) => return End::ClientClosed,
                Ok(_) => {}
                Err(e) => return End::Io(e),
            }
        }
    }

    fn expect(&mut self, items: impl IntoIterator<Item = Expect>) {
        if let Ok(mut queue) = self.expectations.lock() {
            for item in items {
                if matches!(item, Expect::SyncPoint) {
                    self.batch += 1;
                }
                queue.push_back(item);
            }
        }
    }

    /// Forwards what is pending before `upto`, then waits until the upstream has answered
    /// `batch`, so a name's meaning proposed there is settled.
    async fn settle(&mut self, upto: usize, batch: u64) -> Result<(), End> {
        self.flush_until(upto).await?;
        self.names.wait_answered(batch).await;
        Ok(())
    }

    async fn statement(&mut self, name: &str, upto: usize) -> Result<Option<Prepared>, End> {
        loop {
            match self.names.statement(name, self.batch) {
                Lookup::Found(prepared) => return Ok(Some(prepared)),
                Lookup::Unknown => return Ok(None),
                Lookup::WaitFor(batch) => self.settle(upto, batch).await?,
            }
        }
    }

    /// Adds to each statement the kinds of what its `EXECUTE name` / `FETCH … FROM name` runs,
    /// as this session's names say. A name the gateway does not know (SQL-level PREPARE or
    /// DECLARE) runs something it cannot judge: OTHER, which no rule allows unless it says so.
    async fn resolve_runs(
        &mut self,
        classification: Arc<Classification>,
        upto: usize,
    ) -> Result<Arc<Classification>, End> {
        let Classification::Parsed(statements) = classification.as_ref() else {
            return Ok(classification);
        };
        if statements.iter().all(|s| s.runs.is_empty()) {
            return Ok(classification);
        }
        let mut resolved = statements.clone();
        for statement in &mut resolved {
            for run in std::mem::take(&mut statement.runs) {
                let target = match &run {
                    NamedObject::Statement(name) => self.statement(name, upto).await?,
                    NamedObject::Portal(name) => {
                        self.portal(name, upto).await?.and_then(|p| p.statement)
                    }
                };
                match target.as_ref().map(|p| p.classification.as_ref()) {
                    Some(Classification::Parsed(inner)) => {
                        for s in inner {
                            statement.kinds.extend(s.kinds.iter().copied());
                            if !s.runs.is_empty() {
                                statement.kinds.push(StatementKind::Other);
                            }
                            if statement.forbidden.is_none() {
                                statement.forbidden.clone_from(&s.forbidden);
                            }
                        }
                    }
                    _ => statement.kinds.push(StatementKind::Other),
                }
            }
            statement.kinds.sort();
            statement.kinds.dedup();
        }
        Ok(Arc::new(Classification::Parsed(resolved)))
    }

    /// SQL-level PREPARE, DEALLOCATE, DECLARE, CLOSE and DISCARD change names the protocol
    /// also uses, out of the gateway's sight: after one, those names are unknown.
    fn forget_names_changed_by(&self, classification: &Classification) {
        let kinds = classification.kinds();
        let has = |k: StatementKind| kinds.contains(&k);
        if has(StatementKind::Prepare)
            || has(StatementKind::Deallocate)
            || has(StatementKind::Discard)
        {
            self.names.forget(Space::Statement);
        }
        if has(StatementKind::Declare) || has(StatementKind::Close) || has(StatementKind::Discard) {
            self.names.forget(Space::Portal);
        }
    }

    async fn portal(&mut self, name: &str, upto: usize) -> Result<Option<Portal>, End> {
        loop {
            match self.names.portal(name, self.batch) {
                Lookup::Found(portal) => return Ok(Some(portal)),
                Lookup::Unknown => return Ok(None),
                Lookup::WaitFor(batch) => self.settle(upto, batch).await?,
            }
        }
    }

    async fn flush_until(&mut self, end: usize) -> Result<(), End> {
        if end > self.pending_from {
            self.upstream
                .write_all(&self.buf[self.pending_from..end])
                .await?;
        }
        self.pending_from = end;
        Ok(())
    }

    /// Handles every complete message in the buffer, then forwards what passes through.
    async fn process_buffered(&mut self) -> Result<(), End> {
        let mut pos = 0;
        loop {
            let (tag, len) = match codec::next_message(&self.buf[pos..]) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(e) => return Err(violation(&e.to_string())),
            };
            let range = pos..pos + len;
            pos += len;
            if self.skip_until_sync && tag != b'S' {
                self.drop_message(range).await?;
                continue;
            }
            match tag {
                b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.in_batch = true,
                b'S' => self.in_batch = false,
                _ => {}
            }
            match tag {
                // The upstream would answer it inside the batch's error handling, not with its
                // own ReadyForQuery; libpq and the drivers never do this.
                b'Q' if self.in_batch => return Err(violation(
                    "a simple Query inside an unfinished extended-protocol batch (send Sync first)",
                )),
                b'Q' => self.on_query(range).await?,
                b'P' => self.on_parse(range)?,
                b'B' => self.on_bind(range).await?,
                b'E' => self.on_execute(range).await?,
                b'C' => self.on_close(range)?,
                b'S' => {
                    self.skip_until_sync = false;
                    self.expect([Expect::SyncPoint]);
                }
                b'D' => self.on_describe(range)?,
                b'H' | b'd' | b'c' | b'f' => {}
                b'X' => {
                    self.flush_until(range.end).await?;
                    return Err(End::ClientClosed);
                }
                b'F' => {
                    self.drop_message(range).await?;
                    let denial = Denial {
                        kind: DenialKind::Policy,
                        message: "the fast-path function call interface is not allowed through the gateway".into(),
                    };
                    self.refuse(&denial, true).await?;
                }
                other => {
                    return Err(violation(&format!(
                        "unexpected message type {:?} from the client",
                        other as char
                    )))
                }
            }
        }
        self.flush_until(pos).await?;
        self.buf.advance(pos);
        self.pending_from = 0;
        Ok(())
    }

    /// Leaves a message out of what is forwarded.
    async fn drop_message(&mut self, range: Range<usize>) -> Result<(), End> {
        self.flush_until(range.start).await?;
        self.pending_from = range.end;
        Ok(())
    }

    async fn on_query(&mut self, range: Range<usize>) -> Result<(), End> {
        let sql =
            codec::decode_query(&self.buf[range.clone()]).map_err(|e| violation(&e.to_string()))?;
        let text: Arc<str> = Arc::from(sql);
        let classification = self.relay.gate.classifier().classify(&text);
        let classification = self.resolve_runs(classification, range.start).await?;
        let op = Operation {
            connection: self.relay.session.connection.clone(),
            text,
            params: Vec::new(),
            classification,
        };
        self.decide_and_forward(range, op, true).await
    }

    fn on_parse(&mut self, range: Range<usize>) -> Result<(), End> {
        let parse = codec::decode_parse(&self.buf[range]).map_err(|e| violation(&e.to_string()))?;
        let prepared = Prepared {
            sql: Arc::from(parse.query),
            classification: self.relay.gate.classifier().classify(parse.query),
            param_types: parse.param_types,
        };
        if let Ok(mut described) = self.described.lock() {
            described.remove(parse.name);
        }
        let name = parse.name.to_string();
        let id = self
            .names
            .propose_statement(&name, self.batch, Some(prepared));
        self.expect([Expect::Confirm {
            space: Space::Statement,
            name,
            id,
        }]);
        Ok(())
    }

    fn on_describe(&mut self, range: Range<usize>) -> Result<(), End> {
        let (kind, name) = codec::decode_target(&self.buf[range], "Describe")
            .map_err(|e| violation(&e.to_string()))?;
        if kind == b'S' {
            let statement = name.to_string();
            self.expect([Expect::Describe { statement }]);
        }
        Ok(())
    }

    /// A statement's parameter types: those the client gave, else those the upstream described.
    fn param_types(&self, statement: &str, prepared: Option<&Prepared>) -> Vec<u32> {
        let given = prepared.map(|p| p.param_types.clone()).unwrap_or_default();
        if !given.is_empty() && given.iter().all(|oid| *oid != 0) {
            return given;
        }
        self.described
            .lock()
            .ok()
            .and_then(|d| d.get(statement).cloned())
            .unwrap_or(given)
    }

    async fn on_bind(&mut self, range: Range<usize>) -> Result<(), End> {
        let statement = codec::decode_bind_statement(&self.buf[range.clone()])
            .map_err(|e| violation(&e.to_string()))?
            .to_string();
        let prepared = self.statement(&statement, range.start).await?;
        let types = self.param_types(&statement, prepared.as_ref());
        let bind =
            codec::decode_bind(&self.buf[range], &types).map_err(|e| violation(&e.to_string()))?;
        let name = bind.portal.to_string();
        let portal = Portal {
            statement: prepared,
            params: bind.params,
        };
        let id = self.names.propose_portal(&name, self.batch, Some(portal));
        self.expect([Expect::Confirm {
            space: Space::Portal,
            name,
            id,
        }]);
        Ok(())
    }

    fn on_close(&mut self, range: Range<usize>) -> Result<(), End> {
        let (kind, name) = codec::decode_target(&self.buf[range], "Close")
            .map_err(|e| violation(&e.to_string()))?;
        let name = name.to_string();
        let (space, id) = if kind == b'S' {
            let id = self.names.propose_statement(&name, self.batch, None);
            (Space::Statement, id)
        } else {
            (
                Space::Portal,
                self.names.propose_portal(&name, self.batch, None),
            )
        };
        self.expect([Expect::Confirm { space, name, id }]);
        Ok(())
    }

    async fn on_execute(&mut self, range: Range<usize>) -> Result<(), End> {
        let name = codec::decode_execute_portal(&self.buf[range.clone()])
            .map_err(|e| violation(&e.to_string()))?
            .to_string();
        let op = match self.portal(&name, range.start).await? {
            Some(Portal {
                statement: Some(prepared),
                params,
            }) => Operation {
                connection: self.relay.session.connection.clone(),
                text: prepared.sql,
                params,
                classification: self
                    .resolve_runs(prepared.classification, range.start)
                    .await?,
            },
            _ => {
                // Not bound through this session's Parse/Bind: nothing to judge, so refuse.
                let message = format!("portal \"{name}\" was not prepared through the gateway");
                self.drop_message(range).await?;
                let denial = Denial {
                    kind: DenialKind::Policy,
                    message,
                };
                return self.refuse(&denial, false).await;
            }
        };
        self.decide_and_forward(range, op, false).await
    }

    /// Asks the gate; forwards on a permit, holds on require-approval, refuses otherwise.
    async fn decide_and_forward(
        &mut self,
        range: Range<usize>,
        op: Operation,
        simple: bool,
    ) -> Result<(), End> {
        let relay = self.relay;
        let verdict = match relay.gate.submit(relay.session, &op).await {
            Submission::Permitted(permit) => Ok(permit),
            Submission::Denied(denial) => Err(denial),
            Submission::Held(hold) => {
                // Everything before the held message goes now; the held one waits.
                self.flush_until(range.start).await?;
                let reviewers = hold.reviewers.join(", ");
                let notice = codec::error_response(
                    Severity::Notice,
                    "01000",
                    &format!(
                        "airlock: approval request {} is waiting for review by [{reviewers}]; the statement runs once approved (expires in {})",
                        hold.request_id,
                        humantime::format_duration(hold.timeout)
                    ),
                    None,
                    Some(&format!(
                        "A reviewer decides with: airlock approve {id} / airlock deny {id} --reason TEXT. Cancel the query to withdraw it.",
                        id = hold.request_id
                    )),
                );
                let _ = self.inject.send(notice);
                let signal = relay.cancel.hold();
                let reader = &mut self.reader;
                let buf = &mut self.buf;
                let withdraw = async {
                    tokio::select! {
                        _ = signal.notified() => {}
                        _ = wait_for_eof(reader, buf) => {}
                    }
                };
                let verdict = hold.resolve(withdraw).await;
                relay.cancel.release();
                verdict
            }
        };
        match verdict {
            Ok(permit) => {
                self.forget_names_changed_by(&op.classification);
                self.expect(
                    [Expect::Outcome {
                        event: permit.event(),
                        simple,
                    }]
                    .into_iter()
                    .chain(simple.then_some(Expect::SyncPoint)),
                );
                Ok(())
            }
            // Nothing more runs under an expired identity, and as at login, no grant means no
            // session: FATAL, and the session ends.
            Err(denial) if denial.kind == DenialKind::IdentityExpired => {
                Err(fatal("28000", &denial.message, "identity expired"))
            }
            Err(denial) if denial.kind == DenialKind::AccessRevoked => {
                Err(fatal("42501", &denial.message, "access revoked"))
            }
            Err(denial) => {
                self.drop_message(range).await?;
                self.refuse(&denial, simple).await
            }
        }
    }

    /// Sends the upstream a message that can only fail, to be rewritten into `denial`.
    async fn refuse(&mut self, denial: &Denial, simple: bool) -> Result<(), End> {
        tracing::info!(session = self.relay.session.id, reason = %denial.message, "refused");
        let marker = marker();
        let error = refusal_error(denial);
        let failing = if simple {
            self.expect([
                Expect::Refusal {
                    marker: marker.clone(),
                    error,
                },
                Expect::SyncPoint,
            ]);
            codec::failing_query(&marker)
        } else {
            self.skip_until_sync = true;
            self.expect([Expect::Refusal {
                marker: marker.clone(),
                error,
            }]);
            codec::failing_parse(&marker)
        };
        self.upstream.write_all(&failing).await?;
        Ok(())
    }
}

fn fatal(code: &str, message: &str, reason: &'static str) -> End {
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

fn violation(what: &str) -> End {
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

/// Reads (and keeps) client bytes while a statement is held, returning when the client goes.
async fn wait_for_eof<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut BytesMut) {
    loop {
        if buf.len() > codec::MAX_MESSAGE_LEN {
            return std::future::pending().await;
        }
        match reader.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

struct UpstreamSide<'r, 'a, R> {
    relay: &'r Relay<'a>,
    reader: R,
    buf: BytesMut,
    expectations: Expectations,
    described: DescribedTypes,
    names: SessionNames,
    /// Expectations taken from the shared queue, oldest first.
    local: VecDeque<Expect>,
    /// Tags seen so far for the simple Query being answered: (last tag, rows).
    simple: Option<(String, u64)>,
}

impl<R: AsyncRead + Unpin> UpstreamSide<'_, '_, R> {
    async fn run<W: AsyncWrite + Unpin>(
        &mut self,
        client: &mut W,
        mut inject: mpsc::UnboundedReceiver<Bytes>,
    ) -> End {
        loop {
            if let Err(end) = self.forward_buffered(client).await {
                return end;
            }
            self.buf.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                Some(msg) = inject.recv() => {
                    if let Err(e) = client.write_all(&msg).await {
                        return End::Io(e);
                    }
                }
                read = self.reader.read_buf(&mut self.buf) => match read {
                    Ok(0) => return End::UpstreamClosed,
                    Ok(_) => {}
                    Err(_) => return End::UpstreamClosed,
                }
            }
        }
    }

    fn take_expectations(&mut self) {
        if let Ok(mut shared) = self.expectations.lock() {
            self.local.extend(shared.drain(..));
        }
    }

    async fn forward_buffered<W: AsyncWrite + Unpin>(&mut self, client: &mut W) -> Result<(), End> {
        let mut pos = 0;
        let mut from = 0;
        let mut took = false;
        loop {
            let (tag, len) = match codec::next_message(&self.buf[pos..]) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(_) => return Err(End::UpstreamClosed),
            };
            let range = pos..pos + len;
            pos += len;
            if tag == b'S' {
                check_reading_setting(&self.buf[range.clone()])?;
                continue;
            }
            if !matches!(
                tag,
                b'C' | b'E' | b'Z' | b'I' | b's' | b't' | b'1' | b'2' | b'3'
            ) {
                continue;
            }
            if !took {
                self.take_expectations();
                took = true;
            }
            if let Some(replacement) = self.on_tracked(tag, range.clone()) {
                client.write_all(&self.buf[from..range.start]).await?;
                client.write_all(&replacement).await?;
                from = range.end;
            }
        }
        if pos > from {
            client.write_all(&self.buf[from..pos]).await?;
        }
        self.buf.advance(pos);
        Ok(())
    }

    fn outcome(
        &self,
        event: Option<i64>,
        status: OutcomeStatus,
        tag: Option<String>,
        error: Option<String>,
    ) {
        if let Some(event) = event {
            let rows = tag.as_deref().and_then(codec::rows_of_tag);
            self.relay
                .gate
                .record_outcome(self.relay.session, event, status, rows, tag, error);
        }
    }

    /// Tracks one response message; returns a replacement when it must be rewritten.
    fn on_tracked(&mut self, tag: u8, range: Range<usize>) -> Option<Bytes> {
        match tag {
            b'C' | b'I' | b's' => {
                let command = if tag == b'C' {
                    Some(codec::decode_command_tag(&self.buf[range]))
                } else {
                    None
                };
                match self.local.front() {
                    Some(Expect::Outcome { simple: true, .. }) => {
                        if let Some(command) = command {
                            let rows = codec::rows_of_tag(&command).unwrap_or(0);
                            let total = self.simple.as_ref().map_or(0, |(_, r)| *r) + rows;
                            self.simple = Some((command, total));
                        }
                    }
                    Some(Expect::Outcome {
                        simple: false,
                        event,
                    }) => {
                        let event = *event;
                        self.local.pop_front();
                        self.outcome(event, OutcomeStatus::Ok, command, None);
                    }
                    _ => {}
                }
                None
            }
            b'E' => {
                // A refusal pending in this segment whose marker this error carries?
                let msg = &self.buf[range];
                // Markers are unique, so the whole queue can be searched: a refusal is rewritten
                // even if the queue ever drifted from the upstream's answers.
                let refusal = self
                    .local
                    .iter()
                    .position(|e| matches!(e, Expect::Refusal { marker, .. } if contains(msg, marker.as_bytes())));
                if let Some(index) = refusal {
                    if let Some(Expect::Refusal { error, .. }) = self.local.remove(index) {
                        return Some(error);
                    }
                    return None;
                }
                let fields = codec::decode_fields(msg);
                let text = codec::field(&fields, b'M').unwrap_or("error").to_string();
                if let Some(Expect::Outcome { event, simple }) = self.local.front() {
                    let (event, simple) = (*event, *simple);
                    self.local.pop_front();
                    if simple {
                        self.simple = None;
                    }
                    self.outcome(event, OutcomeStatus::Error, None, Some(text));
                }
                None
            }
            b'1' | b'2' | b'3' => {
                let confirmed = self
                    .local
                    .iter()
                    .take_while(|e| !matches!(e, Expect::SyncPoint))
                    .position(|e| matches!(e, Expect::Confirm { .. }));
                if let Some(Expect::Confirm { space, name, id }) =
                    confirmed.and_then(|i| self.local.remove(i))
                {
                    self.names.confirm(space, &name, id);
                }
                None
            }
            b't' => {
                let describe = self
                    .local
                    .iter()
                    .take_while(|e| !matches!(e, Expect::SyncPoint))
                    .position(|e| matches!(e, Expect::Describe { .. }));
                if let Some(Expect::Describe { statement }) =
                    describe.and_then(|i| self.local.remove(i))
                {
                    if let (Ok(types), Ok(mut described)) = (
                        codec::decode_parameter_description(&self.buf[range]),
                        self.described.lock(),
                    ) {
                        described.insert(statement, types);
                    }
                }
                None
            }
            b'Z' => {
                while let Some(expect) = self.local.pop_front() {
                    match expect {
                        Expect::SyncPoint => break,
                        Expect::Outcome {
                            event,
                            simple: true,
                        } => {
                            let done = self.simple.take();
                            let (tag, rows) = match done {
                                Some((tag, rows)) => (Some(tag), rows),
                                None => (None, 0),
                            };
                            if let Some(event) = event {
                                self.relay.gate.record_outcome(
                                    self.relay.session,
                                    event,
                                    OutcomeStatus::Ok,
                                    Some(rows),
                                    tag,
                                    None,
                                );
                            }
                        }
                        Expect::Outcome {
                            event,
                            simple: false,
                        } => self.outcome(event, OutcomeStatus::NotRun, None, None),
                        // Skipped after an error: the name keeps its old meaning.
                        Expect::Confirm { space, name, id } => self.names.reject(space, &name, id),
                        // The upstream skipped it after an earlier error, which the client saw.
                        Expect::Refusal { .. } | Expect::Describe { .. } => {}
                    }
                }
                self.names.batch_answered();
                None
            }
            _ => None,
        }
    }
}

/// Ends the session if the upstream reports that it now reads SQL text differently from the
/// gateway's parser (another encoding, or backslash escapes in ordinary strings).
fn check_reading_setting(msg: &[u8]) -> Result<(), End> {
    let mut r = codec::Reader::new(codec::body(msg), "ParameterStatus");
    let (Ok(name), Ok(value)) = (r.cstr(), r.cstr()) else {
        return Ok(());
    };
    match crate::READING_SETTINGS
        .iter()
        .find(|(setting, _)| *setting == name)
    {
        Some((_, required)) if !value.eq_ignore_ascii_case(required) => {
            tracing::error!(
                setting = name,
                value,
                "upstream setting changed; ending the session"
            );
            Err(fatal(
                "42501",
                &format!("{name} was changed to {value}; the gateway only relays sessions with {name} = {required}"),
                "upstream reading setting changed",
            ))
        }
        _ => Ok(()),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
