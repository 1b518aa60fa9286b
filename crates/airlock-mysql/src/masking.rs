//! Masking and recording of result sets. Each column definition is planned once by the
//! session's masker (from the column's source, `org_table.org_name`, and its label, `name`),
//! and every row — text protocol (COM_QUERY) or binary protocol (COM_STMT_EXECUTE) — is
//! rewritten before the agent sees it; the rows as sent are what the statement's record keeps.
//!
//! A masked value must still be a valid value of its column, as the client reads the column's
//! type from its definition:
//! - string, ENUM/SET and JSON columns take the masked text as it is;
//! - a whole-column rule on any other type (numbers, dates, BIT, …) announces the column as a
//!   string (`VAR_STRING`, utf8mb4), in the result and in the answer to COM_STMT_PREPARE, so
//!   the masked text is a valid value in both protocols (`null` style keeps the type);
//! - detectors scan strings, JSON, BIGINT and DECIMAL values (the other types cannot hold a
//!   finding); a finding in a BIGINT or DECIMAL nulls the value, since no number can stand
//!   for the masked text.
//!
//! MySQL describes a column read through a derived table or a common table expression as a
//! column of a table of that name, which hides where its values come from. In sessions with
//! column rules, such a column (its `org_table` is a name the statement gives to a derived
//! table, CTE or `JSON_TABLE`, or the statement cannot be read to tell) refuses the result.
//!
//! A row that cannot be read refuses the rest of its result: its rows are dropped and the
//! client gets an error in place of the end of the result, so nothing unmasked goes through.

use airlock_core::classify_mysql::derived_table_names;
use airlock_core::mask::SessionMasker;
use airlock_core::mask::{ColumnAction, ColumnOrigin, ColumnSource, MaskStyle, Masked};
use airlock_core::response::ResponseCapture;
use mysql_common::constants::{ColumnFlags, ColumnType};
use mysql_common::io::{BufMutExt, ParseBuf};
use mysql_common::packets::Column;
use mysql_common::proto::MySerialize;
use mysql_common::value::{BinValue, ValueDeserializer};
use mysql_common::Value;
use std::ops::Range;
use std::sync::Arc;

const UTF8MB4_GENERAL_CI: u16 = 45;
/// Display width announced for a column retyped as a string (255 utf8mb4 characters).
const RETYPED_LENGTH: u32 = 255 * 4;
/// A NULL in a text-protocol row.
const TEXT_NULL: u8 = 0xFB;

/// What becomes of one result packet.
pub(crate) enum Shaped {
    Forward,
    Replace(Vec<u8>),
    Drop,
}

/// One result column as the upstream defined it, and what masking does to it.
struct Planned {
    column_type: ColumnType,
    flags: ColumnFlags,
    action: ColumnAction,
}

impl Planned {
    /// A whole-column rule whose text cannot stand in the column's type: the client is told
    /// the column is a string.
    fn retyped(&self) -> bool {
        matches!(self.action, ColumnAction::Mask(style) if style != MaskStyle::Null)
            && !holds_text(self.column_type)
    }
}

/// Strings, ENUM/SET and JSON: masked text is a valid value of theirs.
fn holds_text(t: ColumnType) -> bool {
    use ColumnType::*;
    matches!(
        t,
        MYSQL_TYPE_STRING
            | MYSQL_TYPE_VAR_STRING
            | MYSQL_TYPE_VARCHAR
            | MYSQL_TYPE_TINY_BLOB
            | MYSQL_TYPE_MEDIUM_BLOB
            | MYSQL_TYPE_LONG_BLOB
            | MYSQL_TYPE_BLOB
            | MYSQL_TYPE_ENUM
            | MYSQL_TYPE_SET
            | MYSQL_TYPE_JSON
    )
}

/// Numbers long enough to hold a finding (a card or phone number): scanned, and nulled when
/// something is found.
fn is_long_number(t: ColumnType) -> bool {
    use ColumnType::*;
    matches!(
        t,
        MYSQL_TYPE_LONGLONG | MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL
    )
}

/// Types `mysql_common` decodes in the binary protocol (the others are replication-only).
pub(crate) fn binary_decodable(t: ColumnType) -> bool {
    use ColumnType::*;
    !matches!(
        t,
        MYSQL_TYPE_TIMESTAMP2
            | MYSQL_TYPE_DATETIME2
            | MYSQL_TYPE_TIME2
            | MYSQL_TYPE_TYPED_ARRAY
            | MYSQL_TYPE_UNKNOWN
    )
}

/// A binary-protocol value in its text form, as the text protocol would send it (`None`: NULL).
pub(crate) fn value_text(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::NULL => None,
        Value::Bytes(bytes) => Some(bytes),
        // The server writes hours past a day as hours, with at least two digits.
        Value::Time(negative, days, hours, minutes, seconds, micros) => {
            let sign = if negative { "-" } else { "" };
            let hours = days * 24 + u32::from(hours);
            let fraction = if micros == 0 {
                String::new()
            } else {
                format!(".{micros:06}")
            };
            Some(format!("{sign}{hours:02}:{minutes:02}:{seconds:02}{fraction}").into_bytes())
        }
        other => Some(other.as_sql(false).trim_matches('\'').as_bytes().to_vec()),
    }
}

/// Reads one binary-protocol value of type `(t, flags)` at the start of `bytes`: its length.
fn binary_value(bytes: &[u8], t: ColumnType, flags: ColumnFlags) -> Result<(Value, usize), String> {
    if !binary_decodable(t) {
        return Err(format!("a value of type {t:?} cannot be read"));
    }
    let mut buf = ParseBuf(bytes);
    let value: ValueDeserializer<BinValue> = buf
        .parse((t, flags))
        .map_err(|e| format!("a binary value cannot be read: {e}"))?;
    Ok((value.0, bytes.len() - buf.0.len()))
}

/// The values of a text-protocol row: the range of each, `None` for NULL.
fn text_values(row: &[u8], columns: usize) -> Option<Vec<Option<Range<usize>>>> {
    let mut values = Vec::with_capacity(columns);
    let mut at = 0;
    for _ in 0..columns {
        if row.get(at) == Some(&TEXT_NULL) {
            values.push(None);
            at += 1;
            continue;
        }
        let mut rest = row.get(at..)?;
        let len = usize::try_from(crate::codec::lenenc_int(&mut rest)?).ok()?;
        let start = row.len() - rest.len();
        let end = start.checked_add(len).filter(|end| *end <= row.len())?;
        values.push(Some(start..end));
        at = end;
    }
    (at == row.len()).then_some(values)
}

/// The null bitmap of a binary row starts after the header byte and skips two bits.
fn binary_bitmap_len(columns: usize) -> usize {
    (columns + 7 + 2) / 8
}

/// A value of a row as it goes to the client.
enum Out<'a> {
    Null,
    /// Sent as it came (in the text protocol without its length prefix); `shown` is its text
    /// when that differs from what is on the wire (binary values, when recorded).
    Raw {
        wire: &'a [u8],
        shown: Option<Vec<u8>>,
    },
    /// Masked text, written as a length-encoded string.
    Text(Vec<u8>),
}

impl Out<'_> {
    fn recorded(&self) -> Option<&[u8]> {
        match self {
            Out::Null => None,
            Out::Raw { wire, shown } => Some(shown.as_deref().unwrap_or(wire)),
            Out::Text(text) => Some(text),
        }
    }
}

/// A row's values, and whether masking changed any.
struct Values<'a> {
    values: Vec<Out<'a>>,
    changed: bool,
}

pub(crate) struct Shaper {
    masker: Option<Arc<SessionMasker>>,
    capture: ResponseCapture,
    columns: Vec<Planned>,
    names: Vec<String>,
    /// Why the current result is refused.
    refusal: Option<String>,
    /// The names the running statement gives to derived tables and CTEs; `None` when unknown.
    derived: Option<Vec<String>>,
}

impl Shaper {
    pub(crate) fn new(masker: Option<Arc<SessionMasker>>, capture: ResponseCapture) -> Shaper {
        Shaper {
            masker,
            capture,
            columns: Vec::new(),
            names: Vec::new(),
            refusal: None,
            derived: None,
        }
    }

    /// The statement whose answer comes next.
    pub(crate) fn statement(&mut self, sql: &str) {
        let needs_origins = self.masker.as_ref().is_some_and(|m| m.needs_origins());
        self.derived = if needs_origins {
            derived_table_names(sql)
        } else {
            Some(Vec::new())
        };
    }

    fn refuse(&mut self, reason: impl Into<String>) -> Shaped {
        if self.refusal.is_none() {
            let reason = reason.into();
            tracing::warn!(%reason, "a result could not be masked; refusing it");
            self.refusal = Some(reason);
        }
        Shaped::Drop
    }

    /// A column definition and its plan; the definition to send instead when it is retyped.
    fn plan(&self, definition: &[u8]) -> Result<(Planned, String, Option<Vec<u8>>), String> {
        let column: Column = ParseBuf(definition)
            .parse(())
            .map_err(|e| format!("the upstream sent a malformed column definition: {e}"))?;
        let label = column.name_str().into_owned();
        let column_type = column.column_type();
        let action = match &self.masker {
            None => ColumnAction::Pass,
            Some(masker) => {
                let org_table = column.org_table_str().to_lowercase();
                let through_derived = !org_table.is_empty()
                    && column
                        .table_ref()
                        .eq_ignore_ascii_case(column.org_table_ref())
                    && self
                        .derived
                        .as_ref()
                        .is_none_or(|names| names.contains(&org_table));
                if masker.needs_origins() && through_derived {
                    return Err(format!(
                        "column `{label}` is read through `{org_table}`, a derived table or \
                         common table expression, which hides the table it comes from, so the \
                         masking rules cannot be applied to it; select from the table itself"
                    ));
                }
                let origin = (!column.org_table_ref().is_empty()).then(|| ColumnOrigin {
                    schema: column.schema_str().into_owned(),
                    table: column.org_table_str().into_owned(),
                    column: column.org_name_str().into_owned(),
                });
                let source = ColumnSource {
                    label: label.clone(),
                    origin,
                    type_oid: 0,
                };
                match masker.plan(std::slice::from_ref(&source)).first() {
                    Some(ColumnAction::Scan)
                        if !(holds_text(column_type) || is_long_number(column_type)) =>
                    {
                        ColumnAction::Pass
                    }
                    Some(action) => *action,
                    None => ColumnAction::Pass,
                }
            }
        };
        let planned = Planned {
            column_type,
            flags: column.flags(),
            action,
        };
        let rewritten = planned.retyped().then(|| {
            let retyped = Column::new(ColumnType::MYSQL_TYPE_VAR_STRING)
                .with_schema(column.schema_ref())
                .with_table(column.table_ref())
                .with_org_table(column.org_table_ref())
                .with_name(column.name_ref())
                .with_org_name(column.org_name_ref())
                .with_character_set(UTF8MB4_GENERAL_CI)
                .with_column_length(RETYPED_LENGTH)
                .with_flags(column.flags() & ColumnFlags::NOT_NULL_FLAG);
            let mut out = Vec::new();
            retyped.serialize(&mut out);
            out
        });
        Ok((planned, label, rewritten))
    }

    /// A column definition of a result: planned, and retyped when masking needs it.
    pub(crate) fn column(&mut self, definition: &[u8]) -> Shaped {
        match self.plan(definition) {
            Ok((planned, label, rewritten)) => {
                self.columns.push(planned);
                self.names.push(label);
                rewritten.map_or(Shaped::Forward, Shaped::Replace)
            }
            Err(reason) => {
                // The definitions still go out, so that the client reads the refusal where
                // rows would come.
                self.refuse(reason);
                Shaped::Forward
            }
        }
    }

    /// A column definition in the answer to COM_STMT_PREPARE: retyped as its results will be.
    pub(crate) fn prepared_column(&self, definition: &[u8]) -> Shaped {
        match self.plan(definition) {
            Ok((_, _, Some(rewritten))) => Shaped::Replace(rewritten),
            // A definition that cannot be read is passed on: its results are refused.
            _ => Shaped::Forward,
        }
    }

    /// The column definitions are all in.
    pub(crate) fn columns_done(&mut self) {
        self.capture.columns(std::mem::take(&mut self.names));
    }

    /// A row of the current result, text or binary protocol.
    pub(crate) fn row(&mut self, row: &[u8], binary: bool) -> Shaped {
        if self.refusal.is_some() {
            return Shaped::Drop;
        }
        let wants = self.capture.wants_row();
        let untouched = self.columns.iter().all(|c| c.action == ColumnAction::Pass);
        if untouched && !wants {
            return Shaped::Forward;
        }
        let read = if binary {
            self.binary_row(row, wants)
        } else {
            self.text_row(row)
        };
        let Values { values, changed } = match read {
            Ok(values) => values,
            Err(reason) => return self.refuse(reason),
        };
        if wants {
            self.capture.row(values.iter().map(Out::recorded));
        }
        if !changed {
            return Shaped::Forward;
        }
        Shaped::Replace(encode(&values, binary))
    }

    /// Masks one value's text by `action`; a finding in a number column nulls it.
    fn mask(&mut self, action: ColumnAction, column_type: ColumnType, text: &[u8]) -> Masked {
        let Some(masker) = &self.masker else {
            return Masked::Unchanged;
        };
        match masker.apply(action, text, &mut self.capture.masked) {
            Masked::Text(_) if action == ColumnAction::Scan && is_long_number(column_type) => {
                Masked::Null
            }
            masked => masked,
        }
    }

    fn text_row<'r>(&mut self, row: &'r [u8]) -> Result<Values<'r>, String> {
        let ranges = text_values(row, self.columns.len())
            .ok_or("a row does not match its column definitions")?;
        let mut values = Vec::with_capacity(ranges.len());
        let mut changed = false;
        for (range, index) in ranges.into_iter().zip(0..) {
            let Some(range) = range else {
                values.push(Out::Null);
                continue;
            };
            let wire = &row[range];
            let column: &Planned = &self.columns[index];
            let (action, column_type) = (column.action, column.column_type);
            values.push(match self.mask(action, column_type, wire) {
                Masked::Unchanged => Out::Raw { wire, shown: None },
                Masked::Null => Out::Null,
                Masked::Text(text) => Out::Text(text.into_bytes()),
            });
            changed |= !matches!(values.last(), Some(Out::Raw { .. }));
        }
        Ok(Values { values, changed })
    }

    /// A binary row's values. Only values that are masked or recorded are decoded into text.
    fn binary_row<'r>(&mut self, row: &'r [u8], wants: bool) -> Result<Values<'r>, String> {
        let count = self.columns.len();
        let bitmap_len = binary_bitmap_len(count);
        let malformed = || "a binary row does not match its column definitions".to_string();
        if row.first() != Some(&0x00) {
            return Err(malformed());
        }
        let bitmap = row.get(1..1 + bitmap_len).ok_or_else(malformed)?;
        let mut at = 1 + bitmap_len;
        let mut values = Vec::with_capacity(count);
        let mut changed = self.columns.iter().any(Planned::retyped);
        for index in 0..count {
            let bit = index + 2;
            if bitmap[bit / 8] & (1 << (bit % 8)) != 0 {
                values.push(Out::Null);
                continue;
            }
            let column: &Planned = &self.columns[index];
            let (column_type, flags, action) = (column.column_type, column.flags, column.action);
            let (value, len) = binary_value(&row[at..], column_type, flags)?;
            let wire = &row[at..at + len];
            at += len;
            if action == ColumnAction::Pass && !wants {
                values.push(Out::Raw { wire, shown: None });
                continue;
            }
            let Some(text) = value_text(value) else {
                values.push(Out::Null);
                continue;
            };
            let masked = self.mask(action, column_type, &text);
            changed |= masked != Masked::Unchanged;
            values.push(match masked {
                Masked::Unchanged => Out::Raw {
                    wire,
                    shown: Some(text),
                },
                Masked::Null => Out::Null,
                Masked::Text(masked) => Out::Text(masked.into_bytes()),
            });
        }
        if at != row.len() {
            return Err(malformed());
        }
        Ok(Values { values, changed })
    }

    /// The current result ended: why it was refused, if it was. The next result starts afresh.
    pub(crate) fn result_end(&mut self) -> Option<String> {
        self.columns.clear();
        self.names.clear();
        self.refusal.take()
    }

    /// The capture so far, replaced by `fresh`.
    pub(crate) fn take_capture(&mut self, fresh: ResponseCapture) -> ResponseCapture {
        std::mem::replace(&mut self.capture, fresh)
    }
}

/// A row packet of `values`. Masked text is a valid value of its binary column: the column is a
/// text type, or was retyped as one (see the module header).
fn encode(values: &[Out<'_>], binary: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if !binary {
        for value in values {
            match value {
                Out::Null => out.push(TEXT_NULL),
                Out::Raw { wire, .. } => out.put_lenenc_str(wire),
                Out::Text(text) => out.put_lenenc_str(text),
            }
        }
        return out;
    }
    out.push(0x00);
    let mut bitmap = vec![0u8; binary_bitmap_len(values.len())];
    for (index, value) in values.iter().enumerate() {
        if matches!(value, Out::Null) {
            let bit = index + 2;
            bitmap[bit / 8] |= 1 << (bit % 8);
        }
    }
    out.extend_from_slice(&bitmap);
    for value in values {
        match value {
            Out::Null => {}
            Out::Raw { wire, .. } => out.extend_from_slice(wire),
            Out::Text(text) => out.put_lenenc_str(text),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::config::ResultsLimit;
    use airlock_core::mask::{Detector, HashKey, MaskPolicy, MaskRuleConfig};
    use airlock_core::store::EventDetail;

    fn shaper(columns: &[&str]) -> Shaper {
        let rules = vec![MaskRuleConfig {
            connections: vec!["*".into()],
            groups: Vec::new(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            detectors: vec![Detector::Email, Detector::CreditCard],
            style: MaskStyle::Redact,
        }];
        let masker = MaskPolicy::new(rules, HashKey::new([7; 32]))
            .for_session("prod", &[])
            .unwrap();
        let mut shaper = Shaper::new(
            masker,
            ResponseCapture::new(ResultsLimit {
                rows: 10,
                bytes: 1000,
            }),
        );
        shaper.statement("SELECT * FROM users");
        shaper
    }

    fn definition(table: &str, name: &str, column_type: ColumnType) -> Vec<u8> {
        let mut out = Vec::new();
        Column::new(column_type)
            .with_schema(b"app")
            .with_table(table.as_bytes())
            .with_org_table(table.as_bytes())
            .with_name(name.as_bytes())
            .with_org_name(name.as_bytes())
            .serialize(&mut out);
        out
    }

    /// Plans the columns `id INT, ssn CHAR, pin INT, note TEXT, card BIGINT` of table `users`;
    /// the definitions the client gets.
    fn plan_users(shaper: &mut Shaper) -> Vec<ColumnType> {
        let columns = [
            ("id", ColumnType::MYSQL_TYPE_LONG),
            ("ssn", ColumnType::MYSQL_TYPE_STRING),
            ("pin", ColumnType::MYSQL_TYPE_LONG),
            ("note", ColumnType::MYSQL_TYPE_BLOB),
            ("card", ColumnType::MYSQL_TYPE_LONGLONG),
        ];
        let sent = columns
            .iter()
            .map(|(name, t)| {
                let original = definition("users", name, *t);
                let sent = match shaper.column(&original) {
                    Shaped::Forward => original,
                    Shaped::Replace(rewritten) => rewritten,
                    Shaped::Drop => panic!("column {name} refused"),
                };
                let column: Column = ParseBuf(&sent).parse(()).unwrap();
                assert_eq!(column.name_ref(), name.as_bytes());
                column.column_type()
            })
            .collect();
        shaper.columns_done();
        sent
    }

    fn recorded_rows(shaper: &mut Shaper) -> Vec<Vec<Option<String>>> {
        let capture = shaper.take_capture(ResponseCapture::new(ResultsLimit::default()));
        match capture.into_event(1).0 {
            Some(EventDetail::Response { rows, .. }) => rows,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn text_rows_are_masked_and_non_text_columns_retyped() {
        let mut shaper = shaper(&["users.ssn", "pin"]);
        let sent = plan_users(&mut shaper);
        use ColumnType::*;
        assert_eq!(
            sent,
            [
                MYSQL_TYPE_LONG,
                MYSQL_TYPE_STRING,
                MYSQL_TYPE_VAR_STRING,
                MYSQL_TYPE_BLOB,
                MYSQL_TYPE_LONGLONG
            ]
        );
        let mut row = Vec::new();
        for value in [
            "1",
            "123-45-6789",
            "4321",
            "mail ann@example.com",
            "4111111111111111",
        ] {
            row.put_lenenc_str(value.as_bytes());
        }
        let Shaped::Replace(masked) = shaper.row(&row, false) else {
            panic!("the row is not rewritten");
        };
        let mut expected = Vec::new();
        for value in ["1", "****", "****", "mail [email]"] {
            expected.put_lenenc_str(value.as_bytes());
        }
        expected.push(TEXT_NULL);
        assert_eq!(masked, expected);

        let mut clean = Vec::new();
        clean.put_lenenc_str(b"2");
        clean.push(TEXT_NULL);
        clean.push(TEXT_NULL);
        clean.put_lenenc_str(b"nothing");
        clean.put_lenenc_str(b"42");
        assert!(matches!(shaper.row(&clean, false), Shaped::Forward));
        assert!(matches!(shaper.row(&clean[..3], false), Shaped::Drop));
        assert!(
            shaper.result_end().is_some(),
            "a short row refuses the result"
        );
        assert_eq!(recorded_rows(&mut shaper)[0][1].as_deref(), Some("****"));
    }

    #[test]
    fn binary_rows_are_masked_with_retyped_values_as_strings() {
        let mut shaper = shaper(&["users.ssn", "pin"]);
        plan_users(&mut shaper);
        // id = 1, ssn, pin = 4321, note, card (a BIGINT holding a card number); no NULLs.
        let mut row = vec![0x00, 0x00];
        row.extend_from_slice(&1i32.to_le_bytes());
        row.put_lenenc_str(b"123-45-6789");
        row.extend_from_slice(&4321i32.to_le_bytes());
        row.put_lenenc_str(b"mail ann@example.com");
        row.extend_from_slice(&4_111_111_111_111_111i64.to_le_bytes());
        let Shaped::Replace(masked) = shaper.row(&row, true) else {
            panic!("the row is not rewritten");
        };
        // card is nulled: bit 4 + 2 of the bitmap.
        let mut expected = vec![0x00, 1 << 6];
        expected.extend_from_slice(&1i32.to_le_bytes());
        expected.put_lenenc_str(b"****");
        expected.put_lenenc_str(b"****");
        expected.put_lenenc_str(b"mail [email]");
        assert_eq!(masked, expected);
        assert_eq!(
            recorded_rows(&mut shaper)[0],
            [
                Some("1"),
                Some("****"),
                Some("****"),
                Some("mail [email]"),
                None
            ]
            .map(|v| v.map(String::from))
        );

        // A truncated value refuses the result.
        assert!(matches!(
            shaper.row(&row[..row.len() - 2], true),
            Shaped::Drop
        ));
        assert!(shaper.result_end().is_some());
    }

    #[test]
    fn a_column_read_through_a_derived_table_refuses_the_result() {
        let mut shaper = shaper(&["users.ssn"]);
        shaper.statement("SELECT x FROM (SELECT ssn AS x FROM users) AS T");
        let through = definition("t", "x", ColumnType::MYSQL_TYPE_STRING);
        assert!(matches!(shaper.column(&through), Shaped::Forward));
        assert!(matches!(shaper.row(&[1, b'x'], false), Shaped::Drop));
        let reason = shaper.result_end().unwrap();
        assert!(reason.contains("derived table"), "{reason}");
        // A table's own name, or an alias of one, is a source.
        shaper.statement("SELECT ssn FROM users");
        let own = definition("users", "ssn", ColumnType::MYSQL_TYPE_STRING);
        assert!(matches!(shaper.column(&own), Shaped::Forward));
        assert!(shaper.result_end().is_none());
        // Text the gateway cannot read tells nothing.
        shaper.statement("HANDLER users READ FIRST");
        shaper.column(&own);
        assert!(shaper.result_end().is_some());
    }

    #[test]
    fn binary_values_read_as_the_text_protocol_writes_them() {
        let text = |v: Value| String::from_utf8(value_text(v).unwrap()).unwrap();
        assert_eq!(text(Value::Int(-7)), "-7");
        assert_eq!(text(Value::Date(1990, 1, 2, 0, 0, 0, 0)), "1990-01-02");
        assert_eq!(
            text(Value::Date(1990, 1, 2, 3, 4, 5, 6)),
            "1990-01-02 03:04:05.000006"
        );
        assert_eq!(text(Value::Time(false, 0, 12, 0, 0, 0)), "12:00:00");
        assert_eq!(text(Value::Time(true, 1, 2, 3, 4, 5)), "-26:03:04.000005");
        assert_eq!(value_text(Value::NULL), None);
    }

    #[test]
    fn a_session_without_rules_only_records() {
        let mut shaper = Shaper::new(
            None,
            ResponseCapture::new(ResultsLimit {
                rows: 10,
                bytes: 1000,
            }),
        );
        assert!(matches!(
            shaper.column(&definition("users", "pin", ColumnType::MYSQL_TYPE_LONG)),
            Shaped::Forward
        ));
        shaper.columns_done();
        let row = [0x00, 0x00, 0x2a, 0, 0, 0];
        assert!(matches!(shaper.row(&row, true), Shaped::Forward));
        assert_eq!(recorded_rows(&mut shaper), [[Some("42".to_string())]]);
    }
}
