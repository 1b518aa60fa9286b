//! Upstream → client: forwards replies in place, and looks only at the few that matter —
//! CommandComplete, ErrorResponse, ReadyForQuery and the like — to record outcomes, to rewrite
//! refusals, to confirm statement and portal names, and to end the session if the upstream would
//! start reading SQL differently from the gateway.

use crate::codec;
use crate::session::{
    fatal, DescribedTypes, End, Expect, Expectations, Relay, SessionNames, READ_CHUNK,
};
use airlock_core::store::OutcomeStatus;
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
