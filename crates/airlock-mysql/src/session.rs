//! One agent session after login. MySQL is strictly request–response, so the relay is one
//! loop: read a command, have the gate decide the ones that run SQL (COM_QUERY,
//! COM_STMT_EXECUTE with its bound parameters, COM_INIT_DB, COM_FIELD_LIST), forward it, and
//! relay the upstream's whole answer before reading the next command. A refusal is an ERR
//! packet the gateway writes itself; the upstream never sees the refused command, so the
//! session (and any open transaction) carries on.

use crate::codec::{self, CodecError, Ending, Message, PacketReader};
use crate::kill::{parse_kill, KillAction, KillRegistry, Registration};
use crate::masking::{self, Shaped, Shaper};
use crate::upstream::Upstream;
use crate::{ClientRead, ClientWrite};
use airlock_core::classify::{Classification, StatementKind};
use airlock_core::classify_mysql::classify_mysql;
use airlock_core::gate::{Answered, Denial, DenialKind, Gate, Permit, Session, Submission};
use airlock_core::mask::SessionMasker;
use airlock_core::operation::Operation;
use mysql_common::constants::{CapabilityFlags, ColumnFlags, ColumnType, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::StmtPacket;
use mysql_common::value::{BinValue, ValueDeserializer};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_STATISTICS: u8 = 0x09;
const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_SET_OPTION: u8 = 0x1b;
const COM_RESET_CONNECTION: u8 = 0x1f;

/// Answers to the client are written in batches of about this size.
const FLUSH_AT: usize = 64 * 1024;

/// Why a session ended.
pub enum End {
    ClientClosed,
    UpstreamClosed,
    /// The gateway ends the session: `payload` (an ERR) is sent first, `reason` is recorded.
    Fatal {
        payload: Vec<u8>,
        reason: &'static str,
    },
    Io(std::io::Error),
}

impl End {
    fn fatal(code: u16, sqlstate: &str, message: &str, reason: &'static str) -> End {
        End::Fatal {
            payload: codec::err_payload(code, sqlstate, &format!("airlock: {message}")),
            reason,
        }
    }
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Io(e)
    }
}

/// A statement the upstream prepared, as the gateway judges its executions.
struct Prepared {
    sql: Arc<str>,
    classification: Arc<Classification>,
    num_params: u16,
    /// Parameter types from the last execution that sent them.
    types: Vec<(ColumnType, ColumnFlags)>,
    /// Parameters sent with COM_STMT_SEND_LONG_DATA since the last execution.
    long_data: HashSet<u16>,
}

/// What the upstream answers to a command.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// OK, ERR or result sets (several when more results follow), with rows in the binary
    /// protocol when `binary`; a LOCAL INFILE request is relayed to the client only when
    /// `infile` is set.
    Results { infile: bool, binary: bool },
    /// COM_STMT_PREPARE's answer.
    Prepare,
    /// Column definitions up to an EOF (COM_FIELD_LIST).
    FieldList,
    /// One packet (OK, ERR, EOF or a string).
    Single,
}

#[derive(Default)]
struct Outcome {
    error: Option<String>,
    rows: u64,
    affected: u64,
    /// COM_STMT_PREPARE: the statement id and parameter count.
    prepared: Option<(u32, u16)>,
}

pub struct Relay<'a> {
    pub gate: &'a Gate,
    pub session: &'a Session,
    pub kills: &'a KillRegistry,
    pub registration: &'a Registration,
    pub client: PacketReader<ClientRead>,
    pub client_out: ClientWrite,
    pub upstream: Upstream,
    statements: HashMap<u32, Prepared>,
    /// Masks and records result rows; `None` in sessions that need neither.
    shaper: Option<Shaper>,
    out: Vec<u8>,
    /// How far the sequence ids of the packets sent to the client are ahead of the upstream's
    /// (rewritten rows can take more or fewer packets than they came in; dropped rows none).
    seq_shift: u8,
    /// The rest of the current answer is read from the upstream and not sent (a result was
    /// refused, and the client already has its error).
    discarding: bool,
    /// Set while an approved replacement runs: what the OK packets of its answer tell the
    /// client.
    modified: Option<String>,
}

impl<'a> Relay<'a> {
    pub fn new(
        gate: &'a Gate,
        session: &'a Session,
        kills: &'a KillRegistry,
        registration: &'a Registration,
        client: PacketReader<ClientRead>,
        client_out: ClientWrite,
        upstream: Upstream,
    ) -> Self {
        Relay {
            gate,
            session,
            kills,
            registration,
            client,
            client_out,
            upstream,
            statements: HashMap::new(),
            shaper: None,
            out: Vec::with_capacity(FLUSH_AT),
            seq_shift: 0,
            discarding: false,
            modified: None,
        }
    }

    /// Masks result rows with `masker`, and records them when responses are kept. Rows are
    /// looked at only in sessions that need one or the other.
    pub fn masking(mut self, masker: Option<Arc<SessionMasker>>) -> Self {
        self.shaper = (masker.is_some() || self.gate.keeps_responses())
            .then(|| Shaper::new(masker, self.gate.response_capture()));
        self
    }

    fn capabilities(&self) -> CapabilityFlags {
        self.upstream.capabilities
    }

    pub async fn run(mut self) -> End {
        let end = self.serve().await;
        match &end {
            End::Fatal { payload, .. } => {
                let _ = codec::write_payload(&mut self.client_out, payload, 1).await;
            }
            End::UpstreamClosed => {
                let err = codec::err_payload(
                    1053,
                    "08S01",
                    "airlock: the upstream server closed the connection; reconnect to start a \
                     new session",
                );
                let _ = codec::write_payload(&mut self.client_out, &err, 1).await;
            }
            End::ClientClosed | End::Io(_) => {}
        }
        end
    }

    async fn serve(&mut self) -> End {
        loop {
            let message = match self.client.read().await {
                Ok(message) => message,
                Err(CodecError::Closed) => return End::ClientClosed,
                Err(CodecError::Io(e)) => return End::Io(e),
                Err(e) => {
                    return End::fatal(1153, "08S01", &e.to_string(), "client protocol violation")
                }
            };
            if let Err(end) = self.command(message).await {
                return end;
            }
        }
    }

    async fn command(&mut self, message: Message) -> Result<(), End> {
        let Some(command) = message.first() else {
            return Err(End::fatal(
                1047,
                "08S01",
                "empty command packet",
                "client protocol violation",
            ));
        };
        match command {
            COM_QUIT => {
                let _ = self.upstream.writer.write_all(&message.raw).await;
                Err(End::ClientClosed)
            }
            COM_QUERY => self.on_query(message).await,
            COM_INIT_DB => {
                let schema = String::from_utf8_lossy(&message.payload[1..]).into_owned();
                let text = format!("USE `{}`", schema.replace('`', "``"));
                self.judged(message, text, Vec::new(), Reply::Single, None)
                    .await
            }
            COM_FIELD_LIST => {
                let rest = &message.payload[1..];
                let table = rest.split(|b| *b == 0).next().unwrap_or_default();
                let table = String::from_utf8_lossy(table).into_owned();
                let text = format!("SHOW COLUMNS FROM `{}`", table.replace('`', "``"));
                self.judged(message, text, Vec::new(), Reply::FieldList, None)
                    .await
            }
            COM_PING | COM_STATISTICS | COM_SET_OPTION => {
                self.forward(&message).await?;
                self.relay(Reply::Single).await.map(|_| ())
            }
            COM_STMT_RESET => {
                if let Some(prepared) = self.statement_mut(&message.payload) {
                    prepared.long_data.clear();
                }
                self.forward(&message).await?;
                self.relay(Reply::Single).await.map(|_| ())
            }
            COM_RESET_CONNECTION => {
                self.statements.clear();
                self.forward(&message).await?;
                self.relay(Reply::Single).await.map(|_| ())
            }
            COM_STMT_PREPARE => self.on_prepare(message).await,
            COM_STMT_EXECUTE => self.on_execute(message).await,
            COM_STMT_SEND_LONG_DATA => {
                if let (Some(param), Some(prepared)) = (
                    message.payload.get(5..7),
                    self.statement_mut(&message.payload),
                ) {
                    prepared
                        .long_data
                        .insert(u16::from_le_bytes([param[0], param[1]]));
                }
                self.forward(&message).await
            }
            COM_STMT_CLOSE => {
                if let Some(id) = statement_id(&message.payload) {
                    self.statements.remove(&id);
                }
                self.forward(&message).await
            }
            COM_CHANGE_USER => {
                self.refuse_with(
                    &message,
                    1227,
                    "42000",
                    "changing the user inside a session is not allowed through the gateway; \
                     connect again with the other identity's token",
                )
                .await
            }
            other => {
                self.refuse_with(
                    &message,
                    1047,
                    "08S01",
                    &format!("command 0x{other:02x} is not supported through the gateway"),
                )
                .await
            }
        }
    }

    fn statement_mut(&mut self, payload: &[u8]) -> Option<&mut Prepared> {
        statement_id(payload).and_then(|id| self.statements.get_mut(&id))
    }

    async fn forward(&mut self, message: &Message) -> Result<(), End> {
        self.upstream.writer.write_all(&message.raw).await?;
        Ok(())
    }

    async fn on_query(&mut self, message: Message) -> Result<(), End> {
        let Ok(text) = std::str::from_utf8(&message.payload[1..]) else {
            return self
                .refuse_with(
                    &message,
                    1142,
                    "42000",
                    "the statement is not valid UTF-8; the gateway speaks utf8mb4",
                )
                .await;
        };
        let text = text.to_string();
        if let Some((id, query_only)) = parse_kill(&text) {
            match self
                .kills
                .kill(id, &self.session.identity.subject, &self.session.connection)
            {
                KillAction::Withdrawn => {
                    tracing::info!(target_session = id, "KILL withdrew a held statement");
                    let ok = codec::ok_payload(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
                    codec::write_payload(
                        &mut self.client_out,
                        &ok,
                        message.last_seq.wrapping_add(1),
                    )
                    .await?;
                    return Ok(());
                }
                KillAction::Upstream(thread) => {
                    let sql = if query_only {
                        format!("KILL QUERY {thread}")
                    } else {
                        format!("KILL {thread}")
                    };
                    let mut payload = vec![COM_QUERY];
                    payload.extend_from_slice(sql.as_bytes());
                    codec::write_payload(&mut self.upstream.writer, &payload, 0).await?;
                    return self.relay(Reply::Single).await.map(|_| ());
                }
                KillAction::NotOurs => {}
            }
        }
        self.judged(
            message,
            text,
            Vec::new(),
            Reply::Results {
                infile: false,
                binary: false,
            },
            None,
        )
        .await
    }

    async fn on_prepare(&mut self, message: Message) -> Result<(), End> {
        let Ok(text) = std::str::from_utf8(&message.payload[1..]) else {
            return self
                .refuse_with(
                    &message,
                    1142,
                    "42000",
                    "the statement is not valid UTF-8; the gateway speaks utf8mb4",
                )
                .await;
        };
        let sql: Arc<str> = Arc::from(text);
        if let Some(shaper) = self.shaper.as_mut() {
            // Its column definitions are retyped as its results will be.
            shaper.statement(&sql);
        }
        self.forward(&message).await?;
        let outcome = self.relay(Reply::Prepare).await?;
        if let Some((id, num_params)) = outcome.prepared {
            let classification = Arc::new(classify_mysql(&sql));
            self.statements.insert(
                id,
                Prepared {
                    sql,
                    classification,
                    num_params,
                    types: Vec::new(),
                    long_data: HashSet::new(),
                },
            );
        }
        Ok(())
    }

    async fn on_execute(&mut self, message: Message) -> Result<(), End> {
        let Some(id) = statement_id(&message.payload) else {
            return Err(End::fatal(
                1047,
                "08S01",
                "malformed COM_STMT_EXECUTE",
                "client protocol violation",
            ));
        };
        let cursor = message.payload.get(5).copied().unwrap_or_default() & 0x0F != 0;
        let Some(prepared) = self.statements.get_mut(&id) else {
            return self
                .refuse_with(
                    &message,
                    1243,
                    "HY000",
                    &format!("statement {id} was not prepared through the gateway"),
                )
                .await;
        };
        if cursor {
            return self
                .refuse_with(
                    &message,
                    1235,
                    "42000",
                    "server-side cursors are not supported through the gateway",
                )
                .await;
        }
        let params = match decode_params(&message.payload, prepared) {
            Ok(params) => params,
            Err(e) => {
                return self
                    .refuse_with(
                        &message,
                        1210,
                        "HY000",
                        &format!("the statement's parameters could not be read: {e}"),
                    )
                    .await
            }
        };
        prepared.long_data.clear();
        let text = prepared.sql.to_string();
        let classification = prepared.classification.clone();
        self.judged(
            message,
            text,
            params,
            Reply::Results {
                infile: false,
                binary: true,
            },
            Some(classification),
        )
        .await
    }

    /// Decides `message` (running `text` with `params`), forwards it when permitted and relays
    /// the answer; refuses it otherwise.
    async fn judged(
        &mut self,
        message: Message,
        text: String,
        params: Vec<Option<String>>,
        reply: Reply,
        classification: Option<Arc<Classification>>,
    ) -> Result<(), End> {
        let classification = classification.unwrap_or_else(|| Arc::new(classify_mysql(&text)));
        let reply = match reply {
            // LOAD DATA LOCAL sends a file only when the policy allowed a COPY.
            Reply::Results { binary, .. } => Reply::Results {
                infile: classification.has_kind(StatementKind::Copy),
                binary,
            },
            other => other,
        };
        let op = Operation {
            connection: self.session.connection.clone(),
            text: Arc::from(text),
            params,
            classification,
        };
        let Some(permit) = self.decide(&op, &message).await? else {
            return Ok(());
        };
        if let Some(shaper) = self.shaper.as_mut() {
            shaper.statement(permit.replacement.as_deref().unwrap_or(&op.text));
        }
        let outcome = match permit.replacement.as_deref() {
            None => {
                self.forward(&message).await?;
                self.relay(reply).await?
            }
            Some(sql) => self.run_replacement(&message, &permit, sql).await?,
        };
        self.record(&permit, &outcome);
        Ok(())
    }

    /// Runs the statement a reviewer approved in place of the agent's held COM_QUERY (the gate
    /// classified and judged it as MySQL). The agent is told in the info string of the OK
    /// packets that answer it (`mysql_info()`), since MySQL has no notices.
    async fn run_replacement(
        &mut self,
        message: &Message,
        permit: &Permit,
        sql: &str,
    ) -> Result<Outcome, End> {
        let id = permit
            .approved_request
            .map(|id| id.to_string())
            .unwrap_or_else(|| "?".into());
        tracing::info!(request = %id, replacement = %sql, "running the approved replacement in place of the held statement");
        let mut payload = vec![COM_QUERY];
        payload.extend_from_slice(sql.as_bytes());
        let next = codec::write_payload(&mut self.upstream.writer, &payload, 0).await?;
        let infile = classify_mysql(sql).has_kind(StatementKind::Copy);
        self.modified = Some(format!(
            "airlock: approval request {id} was approved with a modified statement: {sql}"
        ));
        // The upstream answers after our packets; the client expects the answer after its own.
        let shift = message.last_seq.wrapping_add(1).wrapping_sub(next);
        let outcome = self
            .relay_shifted(
                Reply::Results {
                    infile,
                    binary: false,
                },
                shift,
            )
            .await;
        self.modified = None;
        outcome
    }

    fn record(&mut self, permit: &Permit, outcome: &Outcome) {
        let capture = self
            .shaper
            .as_mut()
            .map(|shaper| shaper.take_capture(self.gate.response_capture()));
        let Some(event) = permit.event() else {
            return;
        };
        let answered = match &outcome.error {
            Some(error) => Answered::error(error.clone()),
            None => Answered::ok(Some(outcome.rows.max(outcome.affected)), None),
        };
        self.gate
            .record_outcome(self.session, event, answered, capture);
    }

    /// The gate's verdict; a refusal is answered here (`None`).
    async fn decide(&mut self, op: &Operation, message: &Message) -> Result<Option<Permit>, End> {
        let verdict = match self.gate.submit(self.session, op).await {
            Submission::Permitted(permit) => Ok(permit),
            Submission::Denied(denial) => Err(denial),
            Submission::Held(hold) => {
                tracing::info!(
                    request = hold.request_id,
                    reviewers = %hold.reviewers.join(", "),
                    "statement held for review; the client waits"
                );
                let signal = self.registration.hold();
                let client = &mut self.client;
                let withdraw = async {
                    tokio::select! {
                        _ = signal.notified() => {}
                        _ = client.closed() => {}
                    }
                };
                let verdict = hold.resolve(withdraw).await;
                self.registration.release();
                verdict
            }
        };
        match verdict {
            Ok(permit) => match permit.replacement.clone() {
                None => Ok(Some(permit)),
                Some(_) if message.first() == Some(COM_QUERY) => Ok(Some(permit)),
                // A prepared statement's client expects the answer of its own statement
                // (binary rows of the columns it prepared), which another statement's cannot
                // stand in for.
                Some(sql) => {
                    let id = permit.approved_request.unwrap_or_default();
                    let denial = Denial {
                        kind: DenialKind::Rejected,
                        message: format!(
                            "approval request {id} was approved with a modified statement, \
                             which the gateway runs in place of a plain query only, not of a \
                             prepared statement; send it as a plain query: {sql}"
                        ),
                    };
                    self.refuse(&denial, message).await?;
                    Ok(None)
                }
            },
            Err(denial) if denial.kind == DenialKind::IdentityExpired => Err(End::fatal(
                1045,
                "28000",
                &denial.message,
                "identity expired",
            )),
            Err(denial) if denial.kind == DenialKind::AccessRevoked => {
                Err(End::fatal(1044, "42000", &denial.message, "access revoked"))
            }
            Err(denial) => {
                self.refuse(&denial, message).await?;
                Ok(None)
            }
        }
    }

    async fn refuse(&mut self, denial: &Denial, message: &Message) -> Result<(), End> {
        tracing::info!(session = self.session.id, reason = %denial.message, "refused");
        let (code, sqlstate, text) = match denial.kind {
            DenialKind::Expired => (
                3024,
                "HY000",
                format!("approval timed out: {}", denial.message),
            ),
            DenialKind::Canceled => (
                1317,
                "70100",
                format!("query execution was interrupted: {}", denial.message),
            ),
            DenialKind::Unavailable => (1105, "HY000", denial.message.clone()),
            _ => (1142, "42000", denial.message.clone()),
        };
        self.refuse_with(message, code, sqlstate, &text).await
    }

    async fn refuse_with(
        &mut self,
        message: &Message,
        code: u16,
        sqlstate: &str,
        text: &str,
    ) -> Result<(), End> {
        let err = codec::err_payload(code, sqlstate, &format!("airlock: {text}"));
        codec::write_payload(&mut self.client_out, &err, message.last_seq.wrapping_add(1)).await?;
        Ok(())
    }

    async fn upstream_packet(&mut self) -> Result<Message, End> {
        match self.upstream.reader.read().await {
            Ok(message) => Ok(message),
            Err(CodecError::Closed) => Err(End::UpstreamClosed),
            Err(CodecError::Io(e)) => Err(End::Io(e)),
            Err(e) => Err(End::fatal(
                1153,
                "08S01",
                &format!("the upstream sent {e}"),
                "upstream protocol error",
            )),
        }
    }

    /// Passes an upstream packet on to the client (buffered).
    async fn pass(&mut self, message: &Message) -> Result<(), End> {
        self.emit(message, Shaped::Forward).await
    }

    /// Sends the client what becomes of an upstream packet (buffered), keeping the sequence ids
    /// consecutive.
    async fn emit(&mut self, message: &Message, shaped: Shaped) -> Result<(), End> {
        if self.discarding {
            return Ok(());
        }
        let packets = message.last_seq.wrapping_sub(message.seq).wrapping_add(1);
        let start = message.seq.wrapping_add(self.seq_shift);
        match shaped {
            Shaped::Forward if self.seq_shift == 0 => self.out.extend_from_slice(&message.raw),
            Shaped::Forward => {
                codec::frame(&mut self.out, &message.payload, start);
            }
            Shaped::Replace(payload) => {
                let next = codec::frame(&mut self.out, &payload, start);
                self.seq_shift = self
                    .seq_shift
                    .wrapping_add(next.wrapping_sub(start))
                    .wrapping_sub(packets);
            }
            Shaped::Drop => self.seq_shift = self.seq_shift.wrapping_sub(packets),
        }
        if self.out.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            self.client_out.write_all(&self.out).await?;
            // Through TLS, written bytes can wait in the session's buffer until flushed.
            self.client_out.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Relays the upstream's whole answer to the command just forwarded.
    async fn relay(&mut self, reply: Reply) -> Result<Outcome, End> {
        self.relay_shifted(reply, 0).await
    }

    /// [`Relay::relay`], with the client's sequence ids `shift` ahead of the upstream's.
    async fn relay_shifted(&mut self, reply: Reply, shift: u8) -> Result<Outcome, End> {
        self.seq_shift = shift;
        self.discarding = false;
        let outcome = self.relay_inner(reply).await;
        self.flush().await?;
        outcome
    }

    async fn relay_inner(&mut self, reply: Reply) -> Result<Outcome, End> {
        let caps = self.capabilities();
        let deprecate_eof = caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        let mut outcome = Outcome::default();
        match reply {
            Reply::Single => {
                let packet = self.upstream_packet().await?;
                self.pass(&packet).await?;
                if packet.first() == Some(0xFF) {
                    outcome.error = Some(codec::err_message(&packet.payload));
                }
                Ok(outcome)
            }
            Reply::FieldList => loop {
                let packet = self.upstream_packet().await?;
                self.pass(&packet).await?;
                if packet.first() == Some(0xFF) {
                    outcome.error = Some(codec::err_message(&packet.payload));
                    return Ok(outcome);
                }
                if codec::is_terminator(&packet.payload, caps) {
                    return Ok(outcome);
                }
            },
            Reply::Prepare => {
                let packet = self.upstream_packet().await?;
                self.pass(&packet).await?;
                if packet.first() == Some(0xFF) {
                    outcome.error = Some(codec::err_message(&packet.payload));
                    return Ok(outcome);
                }
                let stmt: StmtPacket = ParseBuf(&packet.payload).parse(()).map_err(|e| {
                    End::fatal(
                        1153,
                        "08S01",
                        &format!("the upstream sent a bad prepare answer: {e}"),
                        "upstream protocol error",
                    )
                })?;
                for (count, columns) in [(stmt.num_params(), false), (stmt.num_columns(), true)] {
                    for _ in 0..count {
                        let definition = self.upstream_packet().await?;
                        let shaped = match &self.shaper {
                            Some(shaper) if columns => shaper.prepared_column(&definition.payload),
                            _ => Shaped::Forward,
                        };
                        self.emit(&definition, shaped).await?;
                    }
                    if count > 0 && !deprecate_eof {
                        let eof = self.upstream_packet().await?;
                        self.pass(&eof).await?;
                    }
                }
                outcome.prepared = Some((stmt.statement_id(), stmt.num_params()));
                Ok(outcome)
            }
            Reply::Results { infile, binary } => loop {
                let first = self.upstream_packet().await?;
                let status = match first.first() {
                    Some(0x00) => {
                        let shaped = match &self.modified {
                            Some(note) => codec::ok_with_info(&first.payload, note)
                                .map_or(Shaped::Forward, Shaped::Replace),
                            None => Shaped::Forward,
                        };
                        self.emit(&first, shaped).await?;
                        match codec::parse_ok(&first.payload) {
                            Some(Ending::Ok { status, affected }) => {
                                outcome.affected += affected;
                                status
                            }
                            _ => StatusFlags::empty(),
                        }
                    }
                    Some(0xFF) => {
                        self.pass(&first).await?;
                        outcome.error = Some(codec::err_message(&first.payload));
                        return Ok(outcome);
                    }
                    Some(0xFB) => {
                        // A client whose answer already ended (a refused result) is not asked.
                        let allowed = infile && !self.discarding;
                        self.local_infile(&first, allowed).await?;
                        continue;
                    }
                    _ => {
                        self.pass(&first).await?;
                        let mut rest = first.payload.as_slice();
                        let columns = codec::lenenc_int(&mut rest).unwrap_or_default();
                        for _ in 0..columns {
                            let definition = self.upstream_packet().await?;
                            let shaped = match self.shaper.as_mut() {
                                Some(shaper) => shaper.column(&definition.payload),
                                None => Shaped::Forward,
                            };
                            self.emit(&definition, shaped).await?;
                        }
                        if let Some(shaper) = self.shaper.as_mut() {
                            shaper.columns_done();
                        }
                        if !deprecate_eof {
                            let eof = self.upstream_packet().await?;
                            self.pass(&eof).await?;
                        }
                        loop {
                            let row = self.upstream_packet().await?;
                            if row.first() == Some(0xFF) {
                                if let Some(shaper) = self.shaper.as_mut() {
                                    shaper.result_end();
                                }
                                self.pass(&row).await?;
                                outcome.error = Some(codec::err_message(&row.payload));
                                return Ok(outcome);
                            }
                            if codec::is_terminator(&row.payload, caps) {
                                self.result_end(&row, &mut outcome).await?;
                                match codec::terminator_status(&row.payload, caps) {
                                    Some(Ending::Ok { status, .. }) => break status,
                                    _ => break StatusFlags::empty(),
                                }
                            }
                            let shaped = match self.shaper.as_mut() {
                                Some(shaper) => shaper.row(&row.payload, binary),
                                None => Shaped::Forward,
                            };
                            self.emit(&row, shaped).await?;
                            outcome.rows += 1;
                        }
                    }
                };
                if !status.contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS) {
                    return Ok(outcome);
                }
            },
        }
    }

    /// The end of a result's rows: passed on, or, when the result was refused, replaced by an
    /// error that ends the client's answer (the rest of the upstream's is read and dropped).
    async fn result_end(&mut self, terminator: &Message, outcome: &mut Outcome) -> Result<(), End> {
        let refusal = self.shaper.as_mut().and_then(Shaper::result_end);
        let Some(reason) = refusal else {
            return self.pass(terminator).await;
        };
        let err = codec::err_payload(1105, "HY000", &format!("airlock: {reason}"));
        self.emit(terminator, Shaped::Replace(err)).await?;
        self.discarding = true;
        if outcome.error.is_none() {
            outcome.error = Some(reason);
        }
        Ok(())
    }

    /// The upstream asks for a local file (LOAD DATA LOCAL INFILE): relayed to the client when
    /// the permitted statement is such a load, otherwise answered with "no file".
    async fn local_infile(&mut self, request: &Message, allowed: bool) -> Result<(), End> {
        if !allowed {
            tracing::warn!(
                "the upstream asked for a local file the statement did not load; refused"
            );
            codec::write_payload(
                &mut self.upstream.writer,
                &[],
                request.last_seq.wrapping_add(1),
            )
            .await?;
            return Ok(());
        }
        self.pass(request).await?;
        self.flush().await?;
        loop {
            let chunk = match self.client.read().await {
                Ok(chunk) => chunk,
                Err(CodecError::Closed) => return Err(End::ClientClosed),
                Err(CodecError::Io(e)) => return Err(End::Io(e)),
                Err(e) => {
                    return Err(End::fatal(
                        1153,
                        "08S01",
                        &e.to_string(),
                        "client protocol violation",
                    ))
                }
            };
            if self.seq_shift == 0 {
                self.forward(&chunk).await?;
            } else {
                // Numbered after the packets the client got; the upstream counts its own.
                let mut out = Vec::with_capacity(chunk.payload.len() + 4);
                codec::frame(
                    &mut out,
                    &chunk.payload,
                    chunk.seq.wrapping_sub(self.seq_shift),
                );
                self.upstream.writer.write_all(&out).await?;
            }
            if chunk.payload.is_empty() {
                return Ok(());
            }
        }
    }
}

fn statement_id(payload: &[u8]) -> Option<u32> {
    let id = payload.get(1..5)?;
    Some(u32::from_le_bytes([id[0], id[1], id[2], id[3]]))
}

/// The bound parameters of a COM_STMT_EXECUTE in text form, for reviewers and the record.
fn decode_params(payload: &[u8], prepared: &mut Prepared) -> Result<Vec<Option<String>>, String> {
    let count = usize::from(prepared.num_params);
    if count == 0 {
        return Ok(Vec::new());
    }
    let truncated = || "the packet ends early".to_string();
    let mut rest = payload.get(10..).ok_or_else(truncated)?;
    let bitmap_len = count.div_ceil(8);
    let bitmap = rest.get(..bitmap_len).ok_or_else(truncated)?.to_vec();
    rest = &rest[bitmap_len..];
    let bound = *rest.first().ok_or_else(truncated)?;
    rest = &rest[1..];
    if bound == 1 {
        let types = rest.get(..2 * count).ok_or_else(truncated)?;
        prepared.types = types
            .chunks(2)
            .map(|pair| {
                let kind = ColumnType::try_from(pair[0])
                    .ok()
                    .filter(|kind| masking::binary_decodable(*kind))
                    .ok_or_else(|| format!("unknown parameter type {}", pair[0]))?;
                let flags = if pair[1] & 0x80 != 0 {
                    ColumnFlags::UNSIGNED_FLAG
                } else {
                    ColumnFlags::empty()
                };
                Ok((kind, flags))
            })
            .collect::<Result<_, String>>()?;
        rest = &rest[2 * count..];
    }
    if prepared.types.len() != count {
        return Err("the parameter types were never sent".into());
    }
    let mut params = Vec::with_capacity(count);
    for (index, (kind, flags)) in prepared.types.iter().enumerate() {
        if bitmap[index / 8] & (1 << (index % 8)) != 0 {
            params.push(None);
            continue;
        }
        if prepared.long_data.contains(&(index as u16)) {
            params.push(Some("(sent as long data)".into()));
            continue;
        }
        let mut buf = ParseBuf(rest);
        let value: ValueDeserializer<BinValue> = buf
            .parse((*kind, *flags))
            .map_err(|e| format!("parameter {}: {e}", index + 1))?;
        rest = buf.0;
        params.push(
            masking::value_text(value.0).map(|text| String::from_utf8_lossy(&text).into_owned()),
        );
    }
    Ok(params)
}
