//! MySQL packet framing (3-byte length, 1-byte sequence id; a payload of 16 MiB − 1 continues
//! in the next packet) with a maximum message length, and the few packets the gateway writes
//! itself (OK, ERR). The structured packets (handshakes, auth switches, prepared statement
//! answers) come from `mysql_common`.

use bytes::{Buf, BytesMut};
use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::io::BufMutExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest payload one packet carries; a payload this long continues in the next packet.
pub const MAX_PACKET_PAYLOAD: usize = 0xFF_FFFF;
/// The longest message (all its packets together) the gateway accepts from either side.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("a message longer than the gateway accepts")]
    TooLong,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// One whole message: its payload (continuations joined), the raw bytes as they came on the
/// wire (for relaying untouched), and the sequence id of its first packet.
pub struct Message {
    pub payload: Vec<u8>,
    pub raw: BytesMut,
    pub seq: u8,
    /// The sequence id of its last packet.
    pub last_seq: u8,
}

impl Message {
    pub fn first(&self) -> Option<u8> {
        self.payload.first().copied()
    }
}

/// A buffered reader of whole messages.
pub struct PacketReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    pub fn new(inner: R) -> Self {
        PacketReader {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// The complete message at the start of the buffer, if there is one.
    fn buffered(&mut self) -> Result<Option<Message>, CodecError> {
        let mut pos = 0;
        let mut payload_len = 0;
        loop {
            if self.buf.len() < pos + 4 {
                return Ok(None);
            }
            let len = usize::from(self.buf[pos])
                | usize::from(self.buf[pos + 1]) << 8
                | usize::from(self.buf[pos + 2]) << 16;
            payload_len += len;
            if payload_len > MAX_MESSAGE_LEN {
                return Err(CodecError::TooLong);
            }
            if self.buf.len() < pos + 4 + len {
                self.buf.reserve(pos + 4 + len - self.buf.len());
                return Ok(None);
            }
            let last_seq = self.buf[pos + 3];
            pos += 4 + len;
            if len < MAX_PACKET_PAYLOAD {
                let raw = self.buf.split_to(pos);
                let seq = raw[3];
                let mut payload = Vec::with_capacity(payload_len);
                let mut at = 0;
                while at < raw.len() {
                    let len = usize::from(raw[at])
                        | usize::from(raw[at + 1]) << 8
                        | usize::from(raw[at + 2]) << 16;
                    payload.extend_from_slice(&raw[at + 4..at + 4 + len]);
                    at += 4 + len;
                }
                return Ok(Some(Message {
                    payload,
                    raw,
                    seq,
                    last_seq,
                }));
            }
        }
    }

    pub async fn read(&mut self) -> Result<Message, CodecError> {
        loop {
            if let Some(message) = self.buffered()? {
                return Ok(message);
            }
            self.buf.reserve(READ_CHUNK);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(CodecError::Closed);
            }
        }
    }

    /// Whether bytes are waiting that no message has consumed yet.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Waits until the peer closes (or fails); what it sends meanwhile is kept for later.
    pub async fn closed(&mut self) {
        loop {
            if self.buf.len() > MAX_MESSAGE_LEN {
                return std::future::pending().await;
            }
            self.buf.reserve(READ_CHUNK);
            match self.inner.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Bytes read but not yet consumed, and the inner reader.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }

    pub fn from_parts(inner: R, buf: BytesMut) -> Self {
        PacketReader { inner, buf }
    }
}

/// Reads exactly one packet of at most `max` bytes, and nothing after it (what follows may be
/// another protocol: a TLS handshake).
pub async fn read_one<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Message, CodecError> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(CodecError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    if len > max {
        return Err(CodecError::TooLong);
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    let mut raw = BytesMut::with_capacity(4 + len);
    raw.extend_from_slice(&header);
    raw.extend_from_slice(&payload);
    Ok(Message {
        payload,
        raw,
        seq: header[3],
        last_seq: header[3],
    })
}

/// Frames `payload` as packets starting at sequence id `seq`; returns the next sequence id.
pub fn frame(out: &mut Vec<u8>, payload: &[u8], mut seq: u8) -> u8 {
    let mut chunks = payload.chunks(MAX_PACKET_PAYLOAD).peekable();
    if payload.is_empty() {
        out.extend_from_slice(&[0, 0, 0, seq]);
        return seq.wrapping_add(1);
    }
    while let Some(chunk) = chunks.next() {
        let len = chunk.len();
        out.extend_from_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, seq]);
        out.extend_from_slice(chunk);
        seq = seq.wrapping_add(1);
        if chunks.peek().is_none() && len == MAX_PACKET_PAYLOAD {
            out.extend_from_slice(&[0, 0, 0, seq]);
            seq = seq.wrapping_add(1);
        }
    }
    seq
}

pub async fn write_payload<W: AsyncWrite + Unpin>(
    writer: &mut W,
    payload: &[u8],
    seq: u8,
) -> std::io::Result<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    let next = frame(&mut out, payload, seq);
    writer.write_all(&out).await?;
    // Through TLS, written bytes can wait in the session's buffer until flushed.
    writer.flush().await?;
    Ok(next)
}

/// An ERR packet's payload (protocol 4.1 form, with SQLSTATE).
pub fn err_payload(code: u16, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + message.len());
    out.push(0xFF);
    out.extend_from_slice(&code.to_le_bytes());
    out.push(b'#');
    let mut state = [b'H', b'Y', b'0', b'0', b'0'];
    for (slot, byte) in state.iter_mut().zip(sqlstate.bytes()) {
        *slot = byte;
    }
    out.extend_from_slice(&state);
    out.extend_from_slice(message.as_bytes());
    out
}

/// An OK packet's payload with no affected rows.
pub fn ok_payload(status: StatusFlags) -> Vec<u8> {
    let mut out = vec![0x00, 0, 0];
    out.extend_from_slice(&status.bits().to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// Reads a length-encoded integer.
pub fn lenenc_int(buf: &mut &[u8]) -> Option<u64> {
    let first = *buf.first()?;
    let width = match first {
        0..=0xFA => {
            buf.advance(1);
            return Some(u64::from(first));
        }
        0xFC => 2,
        0xFD => 3,
        0xFE => 8,
        _ => return None,
    };
    if buf.len() < 1 + width {
        return None;
    }
    let mut value = 0u64;
    for (i, byte) in buf[1..=width].iter().enumerate() {
        value |= u64::from(*byte) << (8 * i);
    }
    buf.advance(1 + width);
    Some(value)
}

/// What a response packet is, given where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// An OK packet (or, without CLIENT_DEPRECATE_EOF, an EOF packet) with these status flags.
    Ok {
        status: StatusFlags,
        affected: u64,
    },
    Err,
}

/// Reads the status flags (and affected rows) of an OK packet.
pub fn parse_ok(payload: &[u8]) -> Option<Ending> {
    let mut rest = payload.get(1..)?;
    let affected = lenenc_int(&mut rest)?;
    lenenc_int(&mut rest)?;
    let status = u16::from_le_bytes([*rest.first()?, *rest.get(1)?]);
    Some(Ending::Ok {
        status: StatusFlags::from_bits_truncate(status),
        affected,
    })
}

/// An OK packet's payload with its human-readable info (what `mysql_info()` returns) replaced
/// by `info` (a length-encoded string, as servers send it and clients read it); `None` when the
/// packet is not a well-formed OK packet.
pub fn ok_with_info(payload: &[u8], info: &str) -> Option<Vec<u8>> {
    let mut rest = payload.get(1..)?;
    lenenc_int(&mut rest)?;
    lenenc_int(&mut rest)?;
    // Status flags and warning count.
    rest.get(..4)?;
    let fixed = payload.len() - rest.len() + 4;
    let mut out = payload[..fixed].to_vec();
    out.put_lenenc_str(info.as_bytes());
    Some(out)
}

/// Reads the status flags of an old-style EOF packet (`FE warnings status`).
pub fn parse_eof(payload: &[u8]) -> Option<Ending> {
    let status = u16::from_le_bytes([*payload.get(3)?, *payload.get(4)?]);
    Some(Ending::Ok {
        status: StatusFlags::from_bits_truncate(status),
        affected: 0,
    })
}

/// Whether a packet inside a result set ends its rows: an EOF packet (`FE`, short), or with
/// CLIENT_DEPRECATE_EOF an OK packet that starts with `FE`.
pub fn is_terminator(payload: &[u8], capabilities: CapabilityFlags) -> bool {
    payload.first() == Some(&0xFE)
        && if capabilities.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF) {
            payload.len() < MAX_PACKET_PAYLOAD
        } else {
            payload.len() < 9
        }
}

/// The terminator's status flags.
pub fn terminator_status(payload: &[u8], capabilities: CapabilityFlags) -> Option<Ending> {
    if capabilities.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF) {
        parse_ok(payload)
    } else {
        parse_eof(payload)
    }
}

/// The message of an ERR packet, for the record.
pub fn err_message(payload: &[u8]) -> String {
    let code = payload
        .get(1..3)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or_default();
    let text = if payload.get(3) == Some(&b'#') {
        payload.get(9..).unwrap_or_default()
    } else {
        payload.get(3..).unwrap_or_default()
    };
    format!("{code}: {}", String::from_utf8_lossy(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_including_continuations() {
        for len in [0usize, 1, 100, MAX_PACKET_PAYLOAD, MAX_PACKET_PAYLOAD + 7] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut wire = Vec::new();
            frame(&mut wire, &payload, 3);
            let mut reader = PacketReader::new(wire.as_slice());
            let message = reader.read().await.unwrap();
            assert_eq!(message.payload, payload);
            assert_eq!(message.seq, 3);
            assert_eq!(message.raw.as_ref(), wire.as_slice());
        }
    }

    #[tokio::test]
    async fn a_message_too_long_is_refused() {
        let mut long = vec![0xFF, 0xFF, 0xFF, 0];
        long.extend(std::iter::repeat_n(0u8, MAX_PACKET_PAYLOAD));
        let mut all = Vec::new();
        for _ in 0..5 {
            all.extend_from_slice(&long);
        }
        let mut reader = PacketReader::new(all.as_slice());
        assert!(matches!(reader.read().await, Err(CodecError::TooLong)));
    }

    #[test]
    fn err_and_ok_packets() {
        let err = err_payload(1142, "42000", "no");
        assert_eq!(err_message(&err), "1142: no");
        let ok = ok_payload(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
        assert_eq!(
            parse_ok(&ok),
            Some(Ending::Ok {
                status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
                affected: 0
            })
        );
        let mut with_info = ok.clone();
        with_info.extend_from_slice(b"\x0fRows matched: 1");
        let replaced = ok_with_info(&with_info, "note").unwrap();
        assert_eq!(replaced, [ok.as_slice(), b"\x04note"].concat());
        assert_eq!(parse_ok(&replaced), parse_ok(&with_info));
        let mut three: &[u8] = &[0xFC, 0x10, 0x27, 9];
        assert_eq!(lenenc_int(&mut three), Some(10_000));
        assert_eq!(three, &[9]);
    }
}
