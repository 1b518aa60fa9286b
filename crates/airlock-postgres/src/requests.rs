//! Client → upstream: frames every client message, has the gate decide each Query and Execute
//! before it is forwarded, forwards everything else untouched (in place, one write per batch),
//! holds statements awaiting approval, and realises refusals on the upstream (see `session`).

use crate::codec::{self, Severity};
use crate::masking::Described;
use crate::names::{Lookup, Space};
use crate::replacement;
use crate::session::{
    fatal, violation, DescribedTypes, End, Expect, Expectations, Portal, Prepared, Relay,
    SessionNames, READ_CHUNK,
};
use crate::volatility::FunctionCatalog;
use airlock_core::classify::{Classification, NamedObject, StatementKind};
use airlock_core::gate::{Denial, DenialKind, Permit, Submission};
use airlock_core::operation::Operation;
use bytes::{Buf, Bytes, BytesMut};
use rand::Rng;
use std::ops::Range;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

fn marker() -> String {
    format!("airlock_refused_{:016x}", rand::thread_rng().gen::<u64>())
}

fn refusal_error(denial: &Denial) -> Bytes {
    let ours = format!("airlock: {}", denial.message);
    let code = match denial.kind {
        DenialKind::Policy | DenialKind::Rejected | DenialKind::AccessRevoked => "42501",
        DenialKind::Expired | DenialKind::Canceled => "57014",
        DenialKind::Unavailable => "58000",
        DenialKind::IdentityExpired => "28000",
    };
    // A withdrawn statement reads like any canceled one; the reason goes in the detail.
    let (message, detail) = match denial.kind {
        DenialKind::Canceled => (
            "canceling statement due to user request",
            Some(ours.as_str()),
        ),
        _ => (ours.as_str(), None),
    };
    codec::error_response(Severity::Error, code, message, detail, None)
}

pub(crate) struct ClientSide<'r, 'a, R, W> {
    pub(crate) relay: &'r Relay<'a>,
    pub(crate) reader: R,
    pub(crate) buf: BytesMut,
    pub(crate) upstream: W,
    /// Start of the bytes in `buf` that are yet to be forwarded.
    pub(crate) pending_from: usize,
    /// After a refusal in the extended protocol, the rest of the batch is dropped up to Sync,
    /// exactly as the upstream would skip it after an error.
    pub(crate) skip_until_sync: bool,
    /// Extended-protocol messages were sent since the last Sync.
    pub(crate) in_batch: bool,
    /// Batches (Syncs and Queries) sent so far: the number of the batch being sent.
    pub(crate) batch: u64,
    pub(crate) names: SessionNames,
    pub(crate) expectations: Expectations,
    pub(crate) described: DescribedTypes,
    pub(crate) inject: mpsc::UnboundedSender<Bytes>,
    pub(crate) catalog: FunctionCatalog,
    /// Replies are masked or recorded: every result's row shape must be known (see `masking`).
    pub(crate) shaping: bool,
    /// The portal the message just handled asked to describe (while shaping): an Execute of
    /// it right after takes its row shape from that description.
    pub(crate) described_portal: Option<String>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ClientSide<'_, '_, R, W> {
    pub(crate) async fn run(&mut self) -> End {
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
                            // Rules on tables, functions and WHERE judge what runs, too.
                            statement.tables.extend(s.tables.iter().cloned());
                            statement.functions.extend(s.functions.iter().cloned());
                            statement.unfiltered_write |= s.unfiltered_write;
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
            statement.tables.sort();
            statement.tables.dedup();
            statement.functions.sort();
            statement.functions.dedup();
        }
        Ok(Arc::new(Classification::Parsed(resolved)))
    }

    /// SQL-level PREPARE, DEALLOCATE, DECLARE, CLOSE and DISCARD change names the protocol
    /// also uses, out of the gateway's sight: after one, those names are unknown.
    fn forget_names_changed_by(&self, classification: &Classification) {
        let has = |k: StatementKind| classification.has_kind(k);
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
            let described_portal = self.described_portal.take();
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
                b'E' => self.on_execute(range, described_portal).await?,
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
        let classification = self.catalog.judge(classification).await;
        let op = Operation {
            connection: self.relay.session.connection.clone(),
            text,
            params: Vec::new(),
            classification,
        };
        self.decide_and_forward(range, op, true, false).await
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
            ours: false,
        }]);
        Ok(())
    }

    fn on_describe(&mut self, range: Range<usize>) -> Result<(), End> {
        let (kind, name) = codec::decode_target(&self.buf[range], "Describe")
            .map_err(|e| violation(&e.to_string()))?;
        // Names are copied only where they are kept: unmasked portal describes pass untouched.
        let shape_from = match kind {
            b'S' => {
                self.expect([Expect::Describe {
                    statement: name.to_string(),
                }]);
                Described::Client
            }
            _ if self.shaping => {
                self.described_portal = Some(name.to_string());
                Described::ClientPortal
            }
            _ => Described::Client,
        };
        if self.shaping {
            self.expect([Expect::RowShape { from: shape_from }]);
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
            ours: false,
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
        self.expect([Expect::Confirm {
            space,
            name,
            id,
            ours: false,
        }]);
        Ok(())
    }

    /// `described_portal`: the portal the client's previous message described, if any.
    async fn on_execute(
        &mut self,
        range: Range<usize>,
        described_portal: Option<String>,
    ) -> Result<(), End> {
        let name = codec::decode_execute_portal(&self.buf[range.clone()])
            .map_err(|e| violation(&e.to_string()))?
            .to_string();
        let shape_known = described_portal.as_deref() == Some(name.as_str());
        let op = match self.portal(&name, range.start).await? {
            Some(Portal {
                statement: Some(prepared),
                params,
            }) => {
                let classification = self
                    .resolve_runs(prepared.classification, range.start)
                    .await?;
                Operation {
                    connection: self.relay.session.connection.clone(),
                    text: prepared.sql,
                    params,
                    classification: self.catalog.judge(classification).await,
                }
            }
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
        self.decide_and_forward(range, op, false, shape_known).await
    }

    /// Asks the gate; forwards on a permit, holds on require-approval, refuses otherwise.
    /// `shape_known`: an Execute whose rows' shape the client's own Describe just gave.
    async fn decide_and_forward(
        &mut self,
        range: Range<usize>,
        op: Operation,
        simple: bool,
        shape_known: bool,
    ) -> Result<(), End> {
        let relay = self.relay;
        let verdict = match relay.gate.submit(relay.session, &op).await {
            Submission::Permitted(permit) => {
                if let Some(id) = permit.approved_request {
                    // Approved while its first client was away: say what it runs under.
                    let _ = self.inject.send(codec::error_response(
                        Severity::Notice,
                        "01000",
                        &format!("airlock: runs under approval request {id}, approved earlier"),
                        None,
                        None,
                    ));
                }
                Ok(permit)
            }
            Submission::Denied(denial) => Err(denial),
            Submission::Held(hold) => {
                // Everything before the held message goes now; the held one waits.
                self.flush_until(range.start).await?;
                let reviewers = hold.reviewers.join(", ");
                let blast_radius = hold
                    .preview
                    .as_ref()
                    .filter(|p| !p.impacts.is_empty())
                    .map(|p| format!("Blast radius: {}", p.describe().replace('\n', "; ")));
                let notice = codec::error_response(
                    Severity::Notice,
                    "01000",
                    &format!(
                        "airlock: approval request {} is waiting for review by [{reviewers}]; the statement runs once approved (expires in {})",
                        hold.request_id,
                        humantime::format_duration(hold.timeout)
                    ),
                    blast_radius.as_deref(),
                    Some(&format!(
                        "A reviewer decides with: airlock approve {id} / airlock deny {id} --reason TEXT. Cancel the query to withdraw it.",
                        id = hold.request_id
                    )),
                );
                let _ = self.inject.send(notice);
                let signal = relay.cancel.hold();
                let gone = wait_for_eof(&mut self.reader, &mut self.buf);
                let verdict = relay
                    .gate
                    .resolve_or_abandon(relay.session, &op, hold, signal.notified(), gone)
                    .await;
                relay.cancel.release();
                // The client went away and the request waits on for its reviewers: it can be
                // claimed by the requester re-sending the statement once approved.
                verdict.ok_or(End::ClientClosed)?
            }
        };
        match verdict {
            Ok(permit) => {
                if let Some(sql) = permit.replacement.clone() {
                    return self
                        .forward_replacement(range, &permit, &op.text, sql, simple)
                        .await;
                }
                self.forget_names_changed_by(&op.classification);
                if self.shaping && !simple && !shape_known {
                    // The rows of an Execute are shaped by the portal's description: the
                    // client's, when it asked right before (as libpq does), else the gateway's
                    // own, asked for right before it and kept from the client.
                    let name = codec::decode_execute_portal(&self.buf[range.clone()])
                        .map_err(|e| violation(&e.to_string()))?
                        .to_string();
                    self.flush_until(range.start).await?;
                    self.expect([Expect::RowShape {
                        from: Described::Ours,
                    }]);
                    self.upstream
                        .write_all(&codec::describe_portal(&name))
                        .await?;
                }
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

    /// Runs the statement a reviewer approved in place of the held one, telling the agent. A
    /// simple Query is replaced by a Query; an Execute, whose portal the client bound upstream,
    /// by the replacement parsed, bound and executed in the unnamed statement and portal, when
    /// the client can read its answer as its own (see [`replacement::can_stand_in`]); otherwise
    /// it is refused with the replacement in the message.
    async fn forward_replacement(
        &mut self,
        range: Range<usize>,
        permit: &Permit,
        original: &str,
        sql: String,
        simple: bool,
    ) -> Result<(), End> {
        let id = permit
            .approved_request
            .map(|id| id.to_string())
            .unwrap_or_else(|| "?".into());
        self.drop_message(range).await?;
        if !simple {
            if let Err(why) = replacement::can_stand_in(original, &sql) {
                let denial = Denial {
                    kind: DenialKind::Rejected,
                    message: format!(
                        "approval request {id} was approved with a modified statement, which \
                         cannot run in place of yours in the extended query protocol ({why}); \
                         send it as a simple query: {sql}"
                    ),
                };
                return self.refuse(&denial, false).await;
            }
        }
        let notice = codec::error_response(
            Severity::Notice,
            "01000",
            &format!(
                "airlock: approval request {id} was approved with a modified statement: {sql}"
            ),
            None,
            None,
        );
        let _ = self.inject.send(notice);
        let classification = self.relay.gate.classifier().classify(&sql);
        self.forget_names_changed_by(&classification);
        if simple {
            self.expect([
                Expect::Outcome {
                    event: permit.event(),
                    simple: true,
                },
                Expect::SyncPoint,
            ]);
            self.upstream.write_all(&codec::query(&sql)).await?;
            return Ok(());
        }
        // The unnamed statement and portal now hold the replacement: a later Bind or Execute of
        // them is judged as what they run.
        let prepared = Prepared {
            sql: Arc::from(sql.as_str()),
            classification,
            param_types: Vec::new(),
        };
        let statement = self
            .names
            .propose_statement("", self.batch, Some(prepared.clone()));
        let portal = self.names.propose_portal(
            "",
            self.batch,
            Some(Portal {
                statement: Some(prepared),
                params: Vec::new(),
            }),
        );
        self.expect([
            Expect::Confirm {
                space: Space::Statement,
                name: String::new(),
                id: statement,
                ours: true,
            },
            Expect::Confirm {
                space: Space::Portal,
                name: String::new(),
                id: portal,
                ours: true,
            },
            Expect::Outcome {
                event: permit.event(),
                simple: false,
            },
        ]);
        self.upstream.write_all(&codec::run_unnamed(&sql)).await?;
        Ok(())
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
