//! Upstream → client: forwards replies in place, and looks only at the few that matter —
//! CommandComplete, ErrorResponse, ReadyForQuery and the like — to record outcomes, to rewrite
//! refusals, to confirm statement and portal names, and to end the session if the upstream would
//! start reading SQL differently from the gateway.

use crate::codec::{self, Severity};
use crate::masking::{Described, Shaped, Shaper};
use crate::session::{
    fatal, DescribedTypes, End, Expect, Expectations, Relay, SessionNames, READ_CHUNK,
};
use airlock_core::gate::Answered;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::ops::Range;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

pub(crate) struct UpstreamSide<'r, 'a, R> {
    pub(crate) relay: &'r Relay<'a>,
    pub(crate) reader: R,
    pub(crate) buf: BytesMut,
    pub(crate) expectations: Expectations,
    pub(crate) described: DescribedTypes,
    pub(crate) names: SessionNames,
    /// Expectations taken from the shared queue, oldest first.
    pub(crate) local: VecDeque<Expect>,
    /// Tags seen so far for the simple Query being answered: (last tag, rows).
    pub(crate) simple: Option<(String, u64)>,
    /// Masks and records results, in sessions that need it.
    pub(crate) shaper: Option<Shaper>,
}

impl<R: AsyncRead + Unpin> UpstreamSide<'_, '_, R> {
    pub(crate) async fn run<W: AsyncWrite + Unpin>(
        &mut self,
        client: &mut W,
        mut inject: mpsc::UnboundedReceiver<Bytes>,
    ) -> End {
        loop {
            if let Err(end) = self.forward_buffered(client).await {
                return end;
            }
            // Through TLS, written bytes can wait in the session's buffer until flushed (in
            // clear, flushing does nothing).
            if let Err(e) = client.flush().await {
                return End::Io(e);
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
        // Set once a message is replaced: from then on, what goes to the client is gathered
        // here and written at once.
        let mut out: Option<BytesMut> = None;
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
            let shaped =
                self.shaper.is_some() && matches!(tag, b'T' | b'n' | b'D' | b'H' | b'd' | b'c');
            if !shaped
                && !matches!(
                    tag,
                    b'C' | b'E' | b'Z' | b'I' | b's' | b't' | b'1' | b'2' | b'3'
                )
            {
                continue;
            }
            if !took {
                self.take_expectations();
                took = true;
            }
            let replacement = if shaped {
                match self.shape(tag, range.clone()).await {
                    Shaped::Forward => None,
                    Shaped::Replace(bytes) => Some(bytes),
                    Shaped::Drop => Some(Bytes::new()),
                }
            } else {
                self.on_tracked(tag, range.clone())
            };
            if let Some(replacement) = replacement {
                let out = out.get_or_insert_with(BytesMut::new);
                out.extend_from_slice(&self.buf[from..range.start]);
                out.extend_from_slice(&replacement);
                from = range.end;
            }
        }
        match out {
            Some(mut out) => {
                out.extend_from_slice(&self.buf[from..pos]);
                client.write_all(&out).await?;
            }
            None if pos > from => client.write_all(&self.buf[from..pos]).await?,
            None => {}
        }
        self.buf.advance(pos);
        Ok(())
    }

    /// Masks or records one message of a result (only in sessions with a shaper).
    async fn shape(&mut self, tag: u8, range: Range<usize>) -> Shaped {
        let Some(shaper) = self.shaper.as_mut() else {
            return Shaped::Forward;
        };
        let msg = &self.buf[range];
        match tag {
            b'T' => {
                let from = row_shape_source(&mut self.local);
                shaper.row_description(msg, from).await
            }
            b'n' => shaper.no_data(row_shape_source(&mut self.local)),
            b'D' => shaper.data_row(msg),
            b'H' => shaper.copy_out(msg),
            b'd' => shaper.copy_data(msg),
            b'c' => shaper.copy_done(),
            _ => Shaped::Forward,
        }
    }

    /// Records the outcome of `event` with the response captured for it, and starts a fresh
    /// capture.
    fn outcome(&mut self, event: Option<i64>, answered: Answered) {
        let gate = self.relay.gate;
        let capture = self
            .shaper
            .as_mut()
            .map(|shaper| shaper.take_capture(gate.response_capture()));
        if let Some(event) = event {
            gate.record_outcome(self.relay.session, event, answered, capture);
        }
    }

    /// Tracks one response message; returns a replacement when it must be rewritten.
    fn on_tracked(&mut self, tag: u8, range: Range<usize>) -> Option<Bytes> {
        if matches!(tag, b'C' | b'I' | b's' | b'E' | b'Z') {
            let refusal = self.shaper.as_mut().and_then(Shaper::result_end);
            // After an error the result failed anyway; a ReadyForQuery always follows an end.
            if let Some(reason) = refusal.filter(|_| !matches!(tag, b'E' | b'Z')) {
                return Some(self.refuse_result(&reason));
            }
        }
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
                        let rows = command.as_deref().and_then(codec::rows_of_tag);
                        self.outcome(event, Answered::ok(rows, command));
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
                    self.outcome(event, Answered::error(text));
                }
                None
            }
            b'1' | b'2' | b'3' => {
                let confirmed = self
                    .local
                    .iter()
                    .take_while(|e| !matches!(e, Expect::SyncPoint))
                    .position(|e| matches!(e, Expect::Confirm { .. }));
                match confirmed.and_then(|i| self.local.remove(i)) {
                    Some(Expect::Confirm {
                        space,
                        name,
                        id,
                        ours,
                    }) => {
                        self.names.confirm(space, &name, id);
                        ours.then(Bytes::new)
                    }
                    _ => None,
                }
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
                            self.outcome(event, Answered::ok(Some(rows), tag));
                        }
                        Expect::Outcome {
                            event,
                            simple: false,
                        } => self.outcome(event, Answered::not_run(None)),
                        // Skipped after an error: the name keeps its old meaning.
                        Expect::Confirm {
                            space, name, id, ..
                        } => self.names.reject(space, &name, id),
                        // The upstream skipped it after an earlier error, which the client saw.
                        Expect::Refusal { .. }
                        | Expect::Describe { .. }
                        | Expect::RowShape { .. } => {}
                    }
                }
                self.names.batch_answered();
                None
            }
            _ => None,
        }
    }
}

impl<R: AsyncRead + Unpin> UpstreamSide<'_, '_, R> {
    /// A result that could not be masked ends in an error instead of its completion; the
    /// statement is recorded as failed with the reason.
    fn refuse_result(&mut self, reason: &str) -> Bytes {
        let text = format!("airlock: {reason}");
        if let Some(Expect::Outcome { event, simple }) = self.local.front() {
            let (event, simple) = (*event, *simple);
            self.local.pop_front();
            if simple {
                self.simple = None;
            }
            self.outcome(event, Answered::error(text.clone()));
        }
        codec::error_response(Severity::Error, "0A000", &text, None, None)
    }
}

/// Who asked for the RowDescription or NoData at hand: the first Describe awaiting its answer
/// in the current batch, else (none) a simple Query's result.
fn row_shape_source(local: &mut VecDeque<Expect>) -> Described {
    let index = local
        .iter()
        .take_while(|e| !matches!(e, Expect::SyncPoint))
        .position(|e| matches!(e, Expect::RowShape { .. }));
    match index.and_then(|i| local.remove(i)) {
        Some(Expect::RowShape { from }) => from,
        _ => Described::Result,
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
