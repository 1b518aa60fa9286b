//! Masking and recording of replies: the row shape of each result (from its RowDescription,
//! with column origins from the [`Catalog`]), every DataRow and COPY line rewritten by the
//! session's masker before the agent sees it, and the masked rows kept for the statement's
//! record. A result that cannot be masked — a column a rule must mask requested in binary
//! format, rows without a known shape, columns that cannot be resolved — is refused: its rows
//! are dropped and its completion becomes an error, so nothing unmasked goes through.

use crate::catalog::Catalog;
use crate::codec::{self, RowField};
use airlock_core::mask::{ColumnAction, ColumnSource, MaskStyle, Masked, SessionMasker};
use airlock_core::response::ResponseCapture;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the plan of a row description is reused for the same description: the results of
/// one statement repeat it, and planning (decoding, column origins, rule matching) is most of
/// what masking costs per result. Short, so a table renamed upstream is planned afresh soon
/// after the [`Catalog`] notices.
const REPLAN_AFTER: Duration = Duration::from_secs(1);

/// Types whose binary form is their text (UTF-8 bytes), so they are masked like text.
const TEXT_LIKE_TYPES: [u32; 6] = [
    25,   // text
    1043, // varchar
    1042, // bpchar
    19,   // name
    705,  // unknown
    114,  // json
];
const INT8: u32 = 20;
/// jsonb's binary form: a version byte (1), then the text.
const JSONB: u32 = 3802;

/// How a column's values are encoded, as far as masking is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    /// Text format, or a binary type whose bytes are its text.
    Text,
    /// Binary jsonb: a version byte, then the text.
    Jsonb,
    /// Binary int8, scanned as its decimal text; a finding cannot be masked in binary, so it
    /// refuses the result.
    Int8,
}

/// How a column in `format` of `type_oid` can be masked by `action`, if it can.
fn coding(format: i16, type_oid: u32, action: ColumnAction) -> Option<Coding> {
    if format == 0 || TEXT_LIKE_TYPES.contains(&type_oid) {
        return Some(Coding::Text);
    }
    match (type_oid, action) {
        // NULL is NULL in every format.
        (_, ColumnAction::Pass) | (_, ColumnAction::Mask(MaskStyle::Null)) => Some(Coding::Text),
        (JSONB, _) => Some(Coding::Jsonb),
        (INT8, ColumnAction::Scan) => Some(Coding::Int8),
        _ => None,
    }
}

/// What becomes of one reply message.
pub(crate) enum Shaped {
    Forward,
    Replace(Bytes),
    Drop,
}

/// Where a RowDescription comes from.
pub(crate) enum Described {
    /// The gateway's own Describe before an Execute: it sets the shape and is not forwarded.
    Ours,
    /// The client's Describe of a statement: forwarded as is.
    Client,
    /// The client's Describe of a portal: it sets the shape (an Execute of that portal right
    /// after it uses it) and is forwarded.
    ClientPortal,
    /// A result of a simple Query: it sets the shape and is forwarded.
    Result,
}

/// The last row description planned, as its message bytes, with its plan.
struct Planned {
    description: Vec<u8>,
    names: Vec<String>,
    shape: Arc<Shape>,
    at: Instant,
}

struct Shape {
    actions: Vec<ColumnAction>,
    codings: Vec<Coding>,
    /// No column needs work: rows pass untouched unless they are recorded.
    untouched: bool,
}

pub(crate) struct Shaper {
    masker: Option<Arc<SessionMasker>>,
    catalog: Arc<Catalog>,
    pub(crate) capture: ResponseCapture,
    shape: Option<Arc<Shape>>,
    planned: Option<Planned>,
    /// Why the last client-described portal has no shape: the reason its rows are refused
    /// if they follow.
    unshapeable: Option<String>,
    /// Why the current result is refused.
    refusal: Option<String>,
    in_copy: bool,
    out: BytesMut,
}

impl Shaper {
    pub(crate) fn new(
        masker: Option<Arc<SessionMasker>>,
        catalog: Arc<Catalog>,
        capture: ResponseCapture,
    ) -> Shaper {
        Shaper {
            masker,
            catalog,
            capture,
            shape: None,
            planned: None,
            unshapeable: None,
            refusal: None,
            in_copy: false,
            out: BytesMut::new(),
        }
    }

    fn refuse(&mut self, reason: impl Into<String>) -> Shaped {
        if self.refusal.is_none() {
            let reason = reason.into();
            tracing::warn!(%reason, "a result could not be masked; refusing it");
            self.refusal = Some(reason);
        }
        Shaped::Drop
    }

    pub(crate) async fn row_description(&mut self, msg: &[u8], from: Described) -> Shaped {
        if matches!(from, Described::Client) {
            return Shaped::Forward;
        }
        let forward = match from {
            Described::Ours => Shaped::Drop,
            _ => Shaped::Forward,
        };
        if let Some(planned) = self
            .planned
            .as_ref()
            .filter(|p| p.description == msg && p.at.elapsed() < REPLAN_AFTER)
        {
            self.capture.columns(planned.names.iter().cloned());
            self.unshapeable = None;
            self.shape = Some(planned.shape.clone());
            return forward;
        }
        let fields = match codec::decode_row_description(msg) {
            Ok(fields) => fields,
            Err(e) => {
                self.shape = None;
                self.refuse(format!(
                    "the upstream sent a malformed row description: {e}"
                ));
                return forward;
            }
        };
        self.capture.columns(fields.iter().map(|f| f.name.clone()));
        self.unshapeable = None;
        match self.plan(&fields).await {
            Ok(shape) => {
                let shape = Arc::new(shape);
                self.shape = Some(shape.clone());
                self.planned = Some(Planned {
                    description: msg.to_vec(),
                    names: fields.into_iter().map(|f| f.name).collect(),
                    shape,
                    at: Instant::now(),
                });
            }
            // The client may never execute the portal it described: only its rows are refused.
            Err(reason) if matches!(from, Described::ClientPortal) => {
                self.shape = None;
                self.unshapeable = Some(reason);
            }
            Err(reason) => {
                self.shape = None;
                self.refuse(reason);
            }
        }
        forward
    }

    async fn plan(&self, fields: &[RowField]) -> Result<Shape, String> {
        let Some(masker) = &self.masker else {
            return Ok(Shape {
                actions: vec![ColumnAction::Pass; fields.len()],
                codings: vec![Coding::Text; fields.len()],
                untouched: true,
            });
        };
        let origins = if masker.needs_origins() && fields.iter().any(|f| f.table_oid != 0) {
            let columns: Vec<(u32, i16)> = fields.iter().map(|f| (f.table_oid, f.attnum)).collect();
            self.catalog
                .origins(&columns)
                .await
                .map_err(|e| format!("the result's columns cannot be resolved for masking ({e})"))?
        } else {
            vec![None; fields.len()]
        };
        let sources: Vec<ColumnSource> = fields
            .iter()
            .zip(origins)
            .map(|(f, origin)| ColumnSource {
                label: f.name.clone(),
                origin,
                type_oid: f.type_oid,
            })
            .collect();
        let actions = masker.plan(&sources);
        let mut codings = Vec::with_capacity(fields.len());
        for (field, action) in fields.iter().zip(&actions) {
            match coding(field.format, field.type_oid, *action) {
                Some(coding) => codings.push(coding),
                None => {
                    return Err(format!(
                        "column \"{}\" must be masked, and the gateway cannot mask its binary \
                         format; request the result in text format",
                        field.name
                    ))
                }
            }
        }
        let untouched = actions.iter().all(|a| *a == ColumnAction::Pass);
        Ok(Shape {
            actions,
            codings,
            untouched,
        })
    }

    /// The NoData that answers a Describe: the gateway's own is not forwarded.
    pub(crate) fn no_data(&mut self, from: Described) -> Shaped {
        match from {
            Described::Ours => {
                self.shape = None;
                Shaped::Drop
            }
            Described::ClientPortal => {
                self.shape = None;
                Shaped::Forward
            }
            Described::Client | Described::Result => Shaped::Forward,
        }
    }

    pub(crate) fn data_row(&mut self, msg: &[u8]) -> Shaped {
        if self.refusal.is_some() {
            return Shaped::Drop;
        }
        let wants = self.capture.wants_row();
        let (masker, shape) = match (&self.masker, &self.shape) {
            (Some(masker), Some(shape)) => (masker.clone(), shape),
            (Some(_), None) => {
                let reason = self
                    .unshapeable
                    .take()
                    .unwrap_or_else(|| "rows arrived without a row description".into());
                return self.refuse(reason);
            }
            (None, Some(shape)) if shape.untouched && !wants => return Shaped::Forward,
            (None, _) => {
                if wants {
                    if let Ok(ranges) = codec::data_row_values(msg) {
                        self.capture
                            .row(ranges.into_iter().map(|r| r.map(|r| &msg[r])));
                    }
                }
                return Shaped::Forward;
            }
        };
        if shape.untouched && !wants {
            return Shaped::Forward;
        }
        let ranges = match codec::data_row_values(msg) {
            Ok(ranges) if ranges.len() == shape.actions.len() => ranges,
            _ => return self.refuse("a data row does not match its row description"),
        };
        let mut masked: Vec<Masked> = Vec::with_capacity(ranges.len());
        for ((range, action), coding) in ranges.iter().zip(&shape.actions).zip(&shape.codings) {
            let Some(range) = range else {
                masked.push(Masked::Unchanged);
                continue;
            };
            let value = &msg[range.clone()];
            let counts = &mut self.capture.masked;
            masked.push(match coding {
                Coding::Text => masker.apply(*action, value, counts),
                Coding::Jsonb => match value.split_first() {
                    Some((1, text)) => match masker.apply(*action, text, counts) {
                        Masked::Text(t) => Masked::Text(format!("\u{1}{t}")),
                        other => other,
                    },
                    _ => Masked::Null,
                },
                Coding::Int8 => {
                    let number = <[u8; 8]>::try_from(value).map(i64::from_be_bytes);
                    let text = number.map(|n| n.to_string()).unwrap_or_default();
                    match masker.apply(*action, text.as_bytes(), counts) {
                        Masked::Unchanged => Masked::Unchanged,
                        _ => {
                            return self.refuse(
                                "a bigint value must be masked, and the gateway cannot mask \
                                 binary bigint values; request the result in text format",
                            )
                        }
                    }
                }
            });
        }
        let values = ranges.iter().zip(&masked).map(|(range, m)| match m {
            Masked::Unchanged => range.clone().map(|r| &msg[r]),
            Masked::Null => None,
            Masked::Text(text) => Some(text.as_bytes()),
        });
        if wants {
            self.capture.row(values.clone());
        }
        if masked.iter().all(|m| *m == Masked::Unchanged) {
            return Shaped::Forward;
        }
        codec::put_data_row(&mut self.out, values);
        Shaped::Replace(self.out.split().freeze())
    }

    /// CopyOutResponse: COPY TO STDOUT data follows, one line per CopyData.
    pub(crate) fn copy_out(&mut self, msg: &[u8]) -> Shaped {
        self.capture.columns(["copy".to_string()]);
        if let Some(masker) = &self.masker {
            if masker.needs_origins() {
                // COPY data does not say which column a value belongs to.
                return self.refuse(
                    "COPY TO STDOUT cannot be masked by column on this connection; \
                     read the rows with SELECT instead",
                );
            }
            if codec::decode_copy_format(msg) != Ok(0) {
                return self.refuse("binary COPY cannot be masked; use the text or CSV format");
            }
        }
        self.in_copy = true;
        Shaped::Forward
    }

    pub(crate) fn copy_data(&mut self, msg: &[u8]) -> Shaped {
        if self.refusal.is_some() {
            return Shaped::Drop;
        }
        if !self.in_copy {
            return Shaped::Forward;
        }
        let line = codec::body(msg);
        let masked = match &self.masker {
            Some(masker) => masker.scan_text(line, &mut self.capture.masked),
            None => Masked::Unchanged,
        };
        match masked {
            Masked::Text(text) => {
                self.capture.row([Some(text.as_bytes())]);
                Shaped::Replace(codec::copy_data(text.as_bytes()))
            }
            _ => {
                self.capture.row([Some(line)]);
                Shaped::Forward
            }
        }
    }

    pub(crate) fn copy_done(&mut self) -> Shaped {
        self.in_copy = false;
        if self.refusal.is_some() {
            Shaped::Drop
        } else {
            Shaped::Forward
        }
    }

    /// A result ended (CommandComplete, PortalSuspended, an error): why it was refused, if it
    /// was. The next result starts afresh.
    pub(crate) fn result_end(&mut self) -> Option<String> {
        self.shape = None;
        self.in_copy = false;
        self.refusal.take()
    }

    /// The capture so far, replaced by `fresh`.
    pub(crate) fn take_capture(&mut self, fresh: ResponseCapture) -> ResponseCapture {
        std::mem::replace(&mut self.capture, fresh)
    }
}
