//! PostgreSQL wire framing, hand-written for the relay path: check-then-split framing over a
//! `BytesMut` (pass-through messages are never copied or decoded), the few field decoders
//! policy needs (Query, Parse, Bind, Execute, ErrorResponse, CommandComplete), and builders for
//! the messages the gateway itself sends.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest message the gateway accepts from a client or an upstream (PostgreSQL's own cap on
/// a single message is 1 GB; policy needs the whole statement in memory, so stay far below).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;
/// Startup packets are small; anything bigger is hostile or broken.
pub const MAX_STARTUP_LEN: usize = 10_000;

pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("message length {0} is out of bounds")]
    BadLength(usize),
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// Where the next complete typed message sits in `buf`: `(tag, total length)` including the
/// tag byte, or `None` when more bytes are needed.
pub fn next_message(buf: &[u8]) -> Result<Option<(u8, usize)>, CodecError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(CodecError::BadLength(len));
    }
    if buf.len() < len + 1 {
        return Ok(None);
    }
    Ok(Some((buf[0], len + 1)))
}

/// Cursor over a message body with bounds-checked reads.
pub struct Reader<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(body: &'a [u8], what: &'static str) -> Self {
        Reader { data: body, what }
    }

    fn err(&self) -> CodecError {
        CodecError::Malformed(self.what)
    }

    pub fn cstr(&mut self) -> Result<&'a str, CodecError> {
        let end = self.data.iter().position(|b| *b == 0).ok_or(self.err())?;
        let s = std::str::from_utf8(&self.data[..end]).map_err(|_| self.err())?;
        self.data = &self.data[end + 1..];
        Ok(s)
    }

    pub fn i16(&mut self) -> Result<i16, CodecError> {
        if self.data.len() < 2 {
            return Err(self.err());
        }
        let v = i16::from_be_bytes([self.data[0], self.data[1]]);
        self.data = &self.data[2..];
        Ok(v)
    }

    pub fn i32(&mut self) -> Result<i32, CodecError> {
        if self.data.len() < 4 {
            return Err(self.err());
        }
        let v = i32::from_be_bytes([self.data[0], self.data[1], self.data[2], self.data[3]]);
        self.data = &self.data[4..];
        Ok(v)
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.data.len() < n {
            return Err(self.err());
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    pub fn rest(&self) -> &'a [u8] {
        self.data
    }
}

/// The body of a message (after tag and length).
pub fn body(msg: &[u8]) -> &[u8] {
    &msg[5..]
}

pub struct ParseMsg<'a> {
    pub name: &'a str,
    pub query: &'a str,
    /// Parameter type OIDs the client specified (0: let the server infer).
    pub param_types: Vec<u32>,
}

pub fn decode_parse(msg: &[u8]) -> Result<ParseMsg<'_>, CodecError> {
    let mut r = Reader::new(body(msg), "Parse");
    let name = r.cstr()?;
    let query = r.cstr()?;
    let count = r.i16()?;
    let mut param_types = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        param_types.push(r.i32()? as u32);
    }
    Ok(ParseMsg {
        name,
        query,
        param_types,
    })
}

/// The type OIDs of a ParameterDescription.
pub fn decode_parameter_description(msg: &[u8]) -> Result<Vec<u32>, CodecError> {
    let mut r = Reader::new(body(msg), "ParameterDescription");
    let count = r.i16()?;
    (0..count).map(|_| r.i32().map(|oid| oid as u32)).collect()
}

pub fn decode_query(msg: &[u8]) -> Result<&str, CodecError> {
    Reader::new(body(msg), "Query").cstr()
}

pub struct BindMsg<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    /// Parameter values rendered as text for reviewers (binary values as `\x…` hex).
    pub params: Vec<Option<String>>,
}

/// Renders a parameter for reviewers: text as is, binary values of common types decoded,
/// anything else as `\x…` hex.
fn render_param(raw: &[u8], format: i16, oid: u32) -> String {
    if format == 0 {
        if let Ok(text) = std::str::from_utf8(raw) {
            return text.to_string();
        }
    }
    let be = |n: usize| -> Option<[u8; 8]> {
        (raw.len() == n).then(|| {
            let mut out = [0u8; 8];
            out[8 - n..].copy_from_slice(raw);
            out
        })
    };
    let decoded = match oid {
        16 if raw.len() == 1 => Some((raw[0] != 0).to_string()),
        21 => be(2).map(|b| i16::from_be_bytes([b[6], b[7]]).to_string()),
        23 | 26 => be(4).map(|b| i32::from_be_bytes([b[4], b[5], b[6], b[7]]).to_string()),
        20 => be(8).map(|b| i64::from_be_bytes(b).to_string()),
        700 => be(4).map(|b| f32::from_be_bytes([b[4], b[5], b[6], b[7]]).to_string()),
        701 => be(8).map(|b| f64::from_be_bytes(b).to_string()),
        18 | 19 | 25 | 114 | 1042 | 1043 => std::str::from_utf8(raw).ok().map(str::to_string),
        3802 if raw.first() == Some(&1) => std::str::from_utf8(&raw[1..]).ok().map(str::to_string),
        2950 if raw.len() == 16 => {
            let h = hex::encode(raw);
            Some(format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            ))
        }
        _ => None,
    };
    decoded.unwrap_or_else(|| format!("\\x{}", hex::encode(raw)))
}

/// Decodes a Bind; `types` are the statement's parameter type OIDs as far as known.
pub fn decode_bind<'a>(msg: &'a [u8], types: &[u32]) -> Result<BindMsg<'a>, CodecError> {
    let mut r = Reader::new(body(msg), "Bind");
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    let n_formats = r.i16()?;
    if n_formats < 0 {
        return Err(CodecError::Malformed("Bind"));
    }
    let mut formats = Vec::with_capacity(n_formats as usize);
    for _ in 0..n_formats {
        formats.push(r.i16()?);
    }
    let n_params = r.i16()?;
    if n_params < 0 {
        return Err(CodecError::Malformed("Bind"));
    }
    let mut params = Vec::with_capacity(n_params as usize);
    for i in 0..n_params as usize {
        let len = r.i32()?;
        if len < 0 {
            params.push(None);
            continue;
        }
        let raw = r.bytes(len as usize)?;
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => *formats.get(i).ok_or(CodecError::Malformed("Bind"))?,
        };
        params.push(Some(render_param(
            raw,
            format,
            types.get(i).copied().unwrap_or(0),
        )));
    }
    Ok(BindMsg {
        portal,
        statement,
        params,
    })
}

/// The statement a Bind names, read before the parameters (which need its types).
pub fn decode_bind_statement(msg: &[u8]) -> Result<&str, CodecError> {
    let mut r = Reader::new(body(msg), "Bind");
    r.cstr()?;
    r.cstr()
}

pub fn decode_execute_portal(msg: &[u8]) -> Result<&str, CodecError> {
    Reader::new(body(msg), "Execute").cstr()
}

/// Close ('C') and Describe ('D'): the target type ('S' statement, 'P' portal) and name.
pub fn decode_target<'a>(msg: &'a [u8], what: &'static str) -> Result<(u8, &'a str), CodecError> {
    let mut r = Reader::new(body(msg), what);
    let kind = r.bytes(1)?[0];
    Ok((kind, r.cstr()?))
}

/// The fields of an ErrorResponse or NoticeResponse, by field code.
pub fn decode_fields(msg: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut data = body(msg);
    while let Some((&code, rest)) = data.split_first() {
        if code == 0 {
            break;
        }
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        out.push((code, String::from_utf8_lossy(&rest[..end]).into_owned()));
        data = rest.get(end + 1..).unwrap_or(&[]);
    }
    out
}

pub fn field(fields: &[(u8, String)], code: u8) -> Option<&str> {
    fields
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.as_str())
}

/// The command tag of a CommandComplete, e.g. `DELETE 3`.
pub fn decode_command_tag(msg: &[u8]) -> String {
    let b = body(msg);
    let end = b.iter().position(|x| *x == 0).unwrap_or(b.len());
    // Checked first: the lossy conversion walks a valid tag far more slowly.
    match std::str::from_utf8(&b[..end]) {
        Ok(tag) => tag.to_owned(),
        Err(_) => String::from_utf8_lossy(&b[..end]).into_owned(),
    }
}

/// Rows a command tag reports (`INSERT 0 5` → 5, `SELECT 2` → 2).
pub fn rows_of_tag(tag: &str) -> Option<u64> {
    tag.rsplit(' ').next().and_then(|n| n.parse().ok())
}

/// A message the gateway builds: tag, then body; the length is filled in by `finish`.
pub struct Builder {
    buf: BytesMut,
}

impl Builder {
    pub fn new(tag: u8) -> Self {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u8(tag);
        buf.put_u32(0);
        Builder { buf }
    }

    pub fn cstr(mut self, s: &str) -> Self {
        // A NUL inside would end the field early; the text is ours or from PostgreSQL.
        self.buf.put_slice(s.replace('\0', "").as_bytes());
        self.buf.put_u8(0);
        self
    }

    pub fn u8(mut self, v: u8) -> Self {
        self.buf.put_u8(v);
        self
    }

    pub fn i32(mut self, v: i32) -> Self {
        self.buf.put_i32(v);
        self
    }

    pub fn finish(mut self) -> Bytes {
        let len = (self.buf.len() - 1) as u32;
        self.buf[1..5].copy_from_slice(&len.to_be_bytes());
        self.buf.freeze()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
        }
    }
}

/// An ErrorResponse (or, for `Severity::Notice`, a NoticeResponse).
pub fn error_response(
    severity: Severity,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Bytes {
    let tag = if severity == Severity::Notice {
        b'N'
    } else {
        b'E'
    };
    let mut b = Builder::new(tag)
        .u8(b'S')
        .cstr(severity.as_str())
        .u8(b'V')
        .cstr(severity.as_str())
        .u8(b'C')
        .cstr(code)
        .u8(b'M')
        .cstr(message);
    if let Some(detail) = detail {
        b = b.u8(b'D').cstr(detail);
    }
    if let Some(hint) = hint {
        b = b.u8(b'H').cstr(hint);
    }
    b.u8(0).finish()
}

pub fn ready_for_query(status: u8) -> Bytes {
    Builder::new(b'Z').u8(status).finish()
}

pub fn auth_request(code: i32) -> Bytes {
    Builder::new(b'R').i32(code).finish()
}

pub fn backend_key_data(pid: i32, secret: i32) -> Bytes {
    Builder::new(b'K').i32(pid).i32(secret).finish()
}

/// NegotiateProtocolVersion: the newest minor version we speak, and the options we ignored.
pub fn negotiate_protocol_version(minor: i32, unsupported: &[String]) -> Bytes {
    let mut b = Builder::new(b'v').i32(minor).i32(unsupported.len() as i32);
    for option in unsupported {
        b = b.cstr(option);
    }
    b.finish()
}

/// A Parse message that can only fail: its text is not SQL. Used to put the upstream into the
/// error state exactly where a refused message stood in the client's stream.
pub fn failing_parse(marker: &str) -> Bytes {
    Builder::new(b'P')
        .cstr(marker)
        .cstr(marker)
        .u8(0)
        .u8(0)
        .finish()
}

/// A simple Query that can only fail, for the same purpose in the simple protocol.
pub fn failing_query(marker: &str) -> Bytes {
    query(marker)
}

/// A simple-protocol Query message.
pub fn query(sql: &str) -> Bytes {
    Builder::new(b'Q').cstr(sql).finish()
}

/// A Describe of a portal: what the gateway sends before a permitted Execute when it must know
/// the result's columns (masking, recording).
pub fn describe_portal(portal: &str) -> Bytes {
    Builder::new(b'D').u8(b'P').cstr(portal).finish()
}

/// Parse, Bind and Execute of `sql` through the unnamed statement and portal, with no
/// parameters: how the gateway runs a reviewer's replacement in place of a held Execute.
pub fn run_unnamed(sql: &str) -> Bytes {
    let parse = Builder::new(b'P').cstr("").cstr(sql).u8(0).u8(0).finish();
    // No parameter formats, no parameters, no result formats.
    let bind = Builder::new(b'B')
        .cstr("")
        .cstr("")
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(0)
        .finish();
    let execute = Builder::new(b'E').cstr("").i32(0).finish();
    [parse, bind, execute].concat().into()
}

/// One field of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowField {
    pub name: String,
    /// The table the column comes from (0: not a plain table column) and its attribute number.
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

pub fn decode_row_description(msg: &[u8]) -> Result<Vec<RowField>, CodecError> {
    let mut r = Reader::new(body(msg), "RowDescription");
    let count = r.i16()?;
    let mut fields = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let name = r.cstr()?.to_string();
        let table_oid = r.i32()? as u32;
        let attnum = r.i16()?;
        let type_oid = r.i32()? as u32;
        r.bytes(6)?; // type size and modifier
        let format = r.i16()?;
        fields.push(RowField {
            name,
            table_oid,
            attnum,
            type_oid,
            format,
        });
    }
    Ok(fields)
}

/// Where each value of a DataRow sits in the message (`None`: SQL NULL).
pub fn data_row_values(msg: &[u8]) -> Result<Vec<Option<std::ops::Range<usize>>>, CodecError> {
    let mut r = Reader::new(body(msg), "DataRow");
    let count = r.i16()?;
    let mut values = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let len = r.i32()?;
        if len < 0 {
            values.push(None);
            continue;
        }
        let start = msg.len() - r.rest().len();
        r.bytes(len as usize)?;
        values.push(Some(start..start + len as usize));
    }
    Ok(values)
}

/// A DataRow of `values` (`None`: SQL NULL), appended to `out`.
pub fn put_data_row<'v>(
    out: &mut BytesMut,
    values: impl ExactSizeIterator<Item = Option<&'v [u8]>>,
) {
    let start = out.len();
    out.put_u8(b'D');
    out.put_u32(0);
    out.put_i16(values.len() as i16);
    for value in values {
        match value {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
            None => out.put_i32(-1),
        }
    }
    let len = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// The overall format of a CopyOutResponse (0 textual, 1 binary).
pub fn decode_copy_format(msg: &[u8]) -> Result<u8, CodecError> {
    Ok(Reader::new(body(msg), "CopyOutResponse").bytes(1)?[0])
}

/// A CopyData message carrying `data`.
pub fn copy_data(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 5);
    out.put_u8(b'd');
    out.put_u32((data.len() + 4) as u32);
    out.put_slice(data);
    out.freeze()
}

/// Splits a startup-phase packet (no tag byte) off the front of `buf`.
pub fn next_startup_packet(buf: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(CodecError::BadLength(len));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len).freeze();
    packet.advance(4);
    Ok(Some(packet))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_waits_for_whole_messages_and_bounds_lengths() {
        let q = Builder::new(b'Q').cstr("select 1").finish();
        assert_eq!(next_message(&q[..3]).unwrap(), None);
        assert_eq!(next_message(&q[..q.len() - 1]).unwrap(), None);
        assert_eq!(next_message(&q).unwrap(), Some((b'Q', q.len())));
        assert_eq!(decode_query(&q).unwrap(), "select 1");
        assert!(next_message(&[b'Q', 0, 0, 0, 2]).is_err());
        assert!(next_message(&[b'Q', 0x7f, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn bind_round_trip_with_text_binary_and_null() {
        let msg = Builder::new(b'B')
            .cstr("portal")
            .cstr("stmt")
            .u8(0)
            .u8(2)
            .u8(0)
            .u8(0)
            .u8(0)
            .u8(1)
            .u8(0)
            .u8(3)
            .i32(2)
            .u8(b'4')
            .u8(b'2')
            .i32(2)
            .u8(0xde)
            .u8(0xad)
            .i32(-1)
            .u8(0)
            .u8(0)
            .finish();
        let bind = decode_bind(&msg, &[]).unwrap();
        assert_eq!(bind.portal, "portal");
        assert_eq!(bind.statement, "stmt");
        assert_eq!(
            bind.params,
            vec![Some("42".into()), Some("\\xdead".into()), None]
        );
        // Truncated: claims a parameter longer than the message.
        let bad = Builder::new(b'B')
            .cstr("")
            .cstr("")
            .u8(0)
            .u8(0)
            .u8(0)
            .u8(1)
            .i32(50)
            .finish();
        assert!(decode_bind(&bad, &[]).is_err());
    }

    #[test]
    fn binary_parameters_of_known_types_are_shown_as_values() {
        assert_eq!(render_param(&2i32.to_be_bytes(), 1, 23), "2");
        assert_eq!(render_param(&(-7i64).to_be_bytes(), 1, 20), "-7");
        assert_eq!(render_param(&1.5f64.to_be_bytes(), 1, 701), "1.5");
        assert_eq!(render_param(b"beta", 1, 25), "beta");
        assert_eq!(render_param(&[1], 1, 16), "true");
        assert_eq!(render_param(&[0xde, 0xad], 1, 17), "\\xdead");
        assert_eq!(render_param(&[0, 0, 0], 1, 23), "\\x000000");
        let uuid = [0x12u8; 16];
        assert_eq!(
            render_param(&uuid, 1, 2950),
            "12121212-1212-1212-1212-121212121212"
        );
    }

    #[test]
    fn parse_error_and_tags() {
        let p = failing_parse("m");
        let parsed = decode_parse(&p).unwrap();
        assert_eq!((parsed.name, parsed.query), ("m", "m"));
        let e = error_response(Severity::Error, "42501", "no", Some("d"), None);
        let fields = decode_fields(&e);
        assert_eq!(field(&fields, b'C'), Some("42501"));
        assert_eq!(field(&fields, b'M'), Some("no"));
        assert_eq!(field(&fields, b'D'), Some("d"));
        assert_eq!(rows_of_tag("INSERT 0 5"), Some(5));
        assert_eq!(rows_of_tag("BEGIN"), None);
        let c = Builder::new(b'C').cstr("DELETE 3").finish();
        assert_eq!(decode_command_tag(&c), "DELETE 3");
    }

    #[test]
    fn startup_packets() {
        let mut buf = BytesMut::new();
        buf.put_u32(8);
        buf.put_i32(SSL_REQUEST);
        buf.put_u8(b'x');
        let p = next_startup_packet(&mut buf).unwrap().unwrap();
        assert_eq!(&p[..], &SSL_REQUEST.to_be_bytes());
        assert_eq!(&buf[..], b"x");
        let mut huge = BytesMut::new();
        huge.put_u32(1_000_000);
        assert!(next_startup_packet(&mut huge).is_err());
    }

    #[test]
    fn row_descriptions_and_data_rows_round_trip() {
        let mut t = BytesMut::new();
        t.put_u8(b'T');
        t.put_u32(0);
        t.put_i16(1);
        t.put_slice(b"email\0");
        t.put_i32(16384);
        t.put_i16(3);
        t.put_i32(25);
        t.put_i16(-1);
        t.put_i32(-1);
        t.put_i16(0);
        let len = (t.len() - 1) as u32;
        t[1..5].copy_from_slice(&len.to_be_bytes());
        let fields = decode_row_description(&t).unwrap();
        assert_eq!(
            fields,
            [RowField {
                name: "email".into(),
                table_oid: 16384,
                attnum: 3,
                type_oid: 25,
                format: 0
            }]
        );
        assert!(decode_row_description(&t[..t.len() - 1]).is_err());

        let mut row = BytesMut::new();
        put_data_row(
            &mut row,
            [Some(&b"a@b.io"[..]), None, Some(&b""[..])].into_iter(),
        );
        assert_eq!(next_message(&row).unwrap(), Some((b'D', row.len())));
        let values = data_row_values(&row).unwrap();
        let texts: Vec<Option<&[u8]>> = values.iter().map(|v| v.clone().map(|r| &row[r])).collect();
        assert_eq!(texts, [Some(&b"a@b.io"[..]), None, Some(&b""[..])]);
        assert!(data_row_values(&row[..row.len() - 2]).is_err());
        assert_eq!(copy_data(b"x\n")[..], b"d\0\0\0\x06x\n"[..]);
        assert_eq!(describe_portal("p")[..], b"D\0\0\0\x07Pp\0"[..]);
    }
}
