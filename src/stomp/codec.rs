//! The STOMP codec: bytes in, [`Frame`]s out, and back. Pure: no I/O, no
//! broker state. Plugs into `tokio_util::codec` as a `Decoder`/`Encoder`.
//!
//! Decoding is resumable: the scan position inside a partly received frame is
//! kept between calls, so a frame that arrives one byte at a time is scanned
//! once, and a body with a `content-length` is taken out of the buffer in one
//! zero-copy `split_to` when complete. Every limit (command length, header
//! line length, header count, frame size) is checked before the bytes are
//! buffered further, so a peer cannot make us hold more than the limits.

use crate::bstr::ByteStr;
use crate::stomp::frame::{Command, Frame, Version};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

/// Size limits, with ActiveMQ 5.17's STOMP defaults.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_command_length: usize,
    pub max_header_length: usize,
    pub max_headers: usize,
    pub max_frame_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_command_length: 1024,
            max_header_length: 10 * 1024,
            max_headers: 1000,
            max_frame_size: 100 * 1024 * 1024,
        }
    }
}

/// A frame that cannot be decoded. Every codec error is fatal for the
/// connection: after one the byte stream cannot be resynchronised.
#[derive(Debug, Error)]
pub enum CodecError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug)]
enum State {
    /// Looking for the blank line that ends the headers.
    Head {
        /// Bytes before this offset have been scanned already.
        scanned: usize,
        /// Start of the line being scanned.
        line_start: usize,
        /// Lines seen so far (command line included).
        lines: usize,
    },
    /// Headers parsed; waiting for the body.
    Body {
        command: Command,
        headers: Vec<(ByteStr, ByteStr)>,
        content_length: Option<usize>,
        scanned: usize,
    },
}

impl State {
    fn head() -> State {
        State::Head {
            scanned: 0,
            line_start: 0,
            lines: 0,
        }
    }
}

/// A decoded item: a frame, or a heart-beat (a bare EOL between frames).
#[derive(Debug, PartialEq)]
pub enum Item {
    Frame(Frame),
    HeartBeat,
}

#[derive(Debug)]
pub struct StompCodec {
    limits: Limits,
    version: Version,
    state: State,
}

impl StompCodec {
    pub fn new(limits: Limits) -> Self {
        StompCodec {
            limits,
            version: Version::V1_0,
            state: State::head(),
        }
    }

    /// Sets the negotiated version, which decides header (un)escaping.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    pub fn version(&self) -> Version {
        self.version
    }

    fn decode_item(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, CodecError> {
        loop {
            match &mut self.state {
                State::Head {
                    scanned,
                    line_start,
                    lines,
                } => {
                    if *scanned == 0 {
                        // EOLs between frames are heart-beats.
                        match buf.first() {
                            None => return Ok(None),
                            Some(b'\n') => {
                                buf.advance(1);
                                return Ok(Some(Item::HeartBeat));
                            }
                            Some(b'\r') => {
                                if buf.len() < 2 {
                                    return Ok(None);
                                }
                                if buf[1] == b'\n' {
                                    buf.advance(2);
                                    return Ok(Some(Item::HeartBeat));
                                }
                            }
                            Some(_) => {}
                        }
                    }
                    let Some(head_len) = scan_head(buf, scanned, line_start, lines, &self.limits)?
                    else {
                        return Ok(None);
                    };
                    let head = buf.split_to(head_len).freeze();
                    let (command, headers) = parse_head(head, self.version)?;
                    let content_length = content_length(&headers, &self.limits)?;
                    // Room for the rest of the body and its NUL, not more: a
                    // body already buffered must not be copied (the frames
                    // before it still share this buffer).
                    if let Some(len) = content_length {
                        buf.reserve((len + 1).saturating_sub(buf.len()));
                    }
                    self.state = State::Body {
                        command,
                        headers,
                        content_length,
                        scanned: 0,
                    };
                }
                State::Body {
                    content_length,
                    scanned,
                    ..
                } => {
                    let body_len = match *content_length {
                        Some(len) => {
                            if buf.len() <= len {
                                return Ok(None);
                            }
                            if buf[len] != 0 {
                                return Err(CodecError::Malformed(
                                    "Expected the frame to end with a NUL byte after content-length bytes".into(),
                                ));
                            }
                            len
                        }
                        None => {
                            let found = memchr::memchr(0, &buf[*scanned..]);
                            let seen = found.map_or(buf.len(), |i| *scanned + i);
                            if seen > self.limits.max_frame_size {
                                return Err(CodecError::TooLarge(format!(
                                    "The maximum data length was exceeded: the body is larger than {} bytes",
                                    self.limits.max_frame_size
                                )));
                            }
                            *scanned = seen;
                            if found.is_none() {
                                return Ok(None);
                            }
                            seen
                        }
                    };
                    let body = buf.split_to(body_len).freeze();
                    buf.advance(1); // the NUL
                    let State::Body {
                        command, headers, ..
                    } = std::mem::replace(&mut self.state, State::head())
                    else {
                        unreachable!("state checked above")
                    };
                    return Ok(Some(Item::Frame(Frame {
                        command,
                        headers,
                        body,
                    })));
                }
            }
        }
    }
}

/// Scans for the blank line that ends the command and headers, checking the
/// limits line by line. Returns the length of the head including the blank line.
fn scan_head(
    buf: &BytesMut,
    scanned: &mut usize,
    line_start: &mut usize,
    lines: &mut usize,
    limits: &Limits,
) -> Result<Option<usize>, CodecError> {
    while let Some(i) = memchr::memchr(b'\n', &buf[*scanned..]) {
        let nl = *scanned + i;
        let mut line_end = nl;
        if line_end > *line_start && buf[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        let line_len = line_end - *line_start;
        *scanned = nl + 1;
        if line_len == 0 && *lines > 0 {
            return Ok(Some(nl + 1));
        }
        check_line(*lines, line_len, limits)?;
        *lines += 1;
        if *lines > limits.max_headers + 1 {
            return Err(CodecError::TooLarge(format!(
                "The maximum number of headers was exceeded: more than {}",
                limits.max_headers
            )));
        }
        *line_start = nl + 1;
    }
    *scanned = buf.len();
    check_line(*lines, buf.len() - *line_start, limits)?;
    Ok(None)
}

fn check_line(lines: usize, len: usize, limits: &Limits) -> Result<(), CodecError> {
    if lines == 0 && len > limits.max_command_length {
        return Err(CodecError::TooLarge(format!(
            "The maximum command length was exceeded: more than {} bytes",
            limits.max_command_length
        )));
    }
    if lines > 0 && len > limits.max_header_length {
        return Err(CodecError::TooLarge(format!(
            "The maximum header length was exceeded: more than {} bytes",
            limits.max_header_length
        )));
    }
    Ok(())
}

type Head = (Command, Vec<(ByteStr, ByteStr)>);

/// Parses the command line and header lines of a complete head.
fn parse_head(head: Bytes, version: Version) -> Result<Head, CodecError> {
    let first_nl = memchr::memchr(b'\n', &head).map_or(head.len(), |i| i + 1);
    let command_line = line_content(&head[..first_nl]);
    let command = Command::parse(trim_ascii(command_line));
    let escaped = version >= Version::V1_1 && !command.is_connect_family();
    // The header lines are checked as UTF-8 once, then sliced at ASCII
    // delimiters (which keeps every slice valid UTF-8).
    let lines = ByteStr::from_utf8(head.slice(first_nl..))
        .map_err(|_| CodecError::Malformed("Invalid UTF-8 in a header".into()))?;
    let unescape = escaped && memchr::memchr(b'\\', lines.as_bytes()).is_some();
    let text = lines.as_bytes();
    let mut headers = Vec::new();
    let mut pos = 0;
    while pos < text.len() {
        let nl = memchr::memchr(b'\n', &text[pos..]).map_or(text.len(), |i| pos + i);
        let end = pos + line_content(&text[pos..nl]).len();
        let start = pos;
        pos = nl + 1;
        if end == start {
            break;
        }
        // ActiveMQ accepts a header line without a colon as a header with an empty value.
        let (name, mut value) = match memchr::memchr(b':', &text[start..end]) {
            Some(i) => (
                lines.slice(start..start + i),
                lines.slice(start + i + 1..end),
            ),
            None => (lines.slice(start..end), ByteStr::default()),
        };
        let name = if unescape && name.contains('\\') {
            decode_text(name.as_bytes().clone(), true, version)?
        } else {
            name
        };
        if unescape && value.contains('\\') {
            value = decode_text(value.as_bytes().clone(), true, version)?;
        }
        if !escaped
            && (value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace))
        {
            value = trim_value(value);
        }
        headers.push((name, value));
    }
    Ok((command, headers))
}

/// A line without its `\r` (CRLF line ends).
fn line_content(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// STOMP 1.0 (and CONNECT frames) header values are trimmed, as ActiveMQ does.
fn trim_value(value: ByteStr) -> ByteStr {
    let t = value.trim();
    let start = t.as_ptr() as usize - value.as_ptr() as usize;
    ByteStr::from_utf8(value.as_bytes().slice(start..start + t.len()))
        .expect("a trimmed str is UTF-8")
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn decode_text(raw: Bytes, escaped: bool, version: Version) -> Result<ByteStr, CodecError> {
    let invalid_utf8 = || CodecError::Malformed("Invalid UTF-8 in a header".into());
    if !escaped || memchr::memchr(b'\\', &raw).is_none() {
        return ByteStr::from_utf8(raw).map_err(|_| invalid_utf8());
    }
    // As ActiveMQ does, an escape sequence the version does not define is
    // kept literally rather than refused.
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        let next = raw.get(i + 1).copied();
        let decoded = match (c, next) {
            (b'\\', Some(b'n')) => Some(b'\n'),
            (b'\\', Some(b'c')) => Some(b':'),
            (b'\\', Some(b'\\')) => Some(b'\\'),
            (b'\\', Some(b'r')) if version >= Version::V1_2 => Some(b'\r'),
            _ => None,
        };
        match decoded {
            Some(d) => {
                out.push(d);
                i += 2;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    ByteStr::from_utf8(Bytes::from(out)).map_err(|_| invalid_utf8())
}

/// The first `content-length` header, checked against the frame size limit.
fn content_length(
    headers: &[(ByteStr, ByteStr)],
    limits: &Limits,
) -> Result<Option<usize>, CodecError> {
    let Some((_, value)) = headers.iter().find(|(k, _)| k.as_str() == "content-length") else {
        return Ok(None);
    };
    let invalid =
        || CodecError::Malformed("Specified content-length is not a valid integer".into());
    let len: i64 = value.trim().parse().map_err(|_| invalid())?;
    if len < 0 {
        return Err(invalid());
    }
    let len = len as usize;
    if len > limits.max_frame_size {
        return Err(CodecError::TooLarge(format!(
            "The maximum data length was exceeded: content-length {len} is over {} bytes",
            limits.max_frame_size
        )));
    }
    Ok(Some(len))
}

impl Decoder for StompCodec {
    type Item = Item;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, CodecError> {
        self.decode_item(buf)
    }
}

/// Writes a header line, escaping as `version` requires.
pub fn put_header(out: &mut BytesMut, name: &str, value: &str, escape: Option<Version>) {
    put_text(out, name, escape);
    out.put_u8(b':');
    put_text(out, value, escape);
    out.put_u8(b'\n');
}

/// Writes a header line whose name needs no escaping (one of the fixed
/// header names).
pub fn put_known_header(
    out: &mut BytesMut,
    name: &'static str,
    value: &str,
    escape: Option<Version>,
) {
    debug_assert!(!name
        .bytes()
        .any(|c| matches!(c, b'\\' | b'\n' | b':' | b'\r')));
    out.extend_from_slice(name.as_bytes());
    out.put_u8(b':');
    put_text(out, value, escape);
    out.put_u8(b'\n');
}

/// Writes a header line with a decimal value (which never needs escaping).
pub fn put_int_header(out: &mut BytesMut, name: &'static str, value: i64) {
    out.extend_from_slice(name.as_bytes());
    out.put_u8(b':');
    put_int(out, value);
    out.put_u8(b'\n');
}

/// Writes `v` in decimal, as `Display` does.
pub fn put_int(out: &mut BytesMut, v: i64) {
    if v < 0 {
        out.put_u8(b'-');
    }
    put_uint(out, v.unsigned_abs());
}

/// Writes `v` in decimal, as `Display` does.
pub fn put_uint(out: &mut BytesMut, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Writes header text, escaping as `escape` requires (1.1 and later: `\\`,
/// newline and `:`; 1.2 also carriage return): runs without special bytes
/// are copied whole.
pub fn put_text(out: &mut BytesMut, text: &str, escape: Option<Version>) {
    let Some(version) = escape.filter(|v| *v >= Version::V1_1) else {
        out.extend_from_slice(text.as_bytes());
        return;
    };
    let cr = version >= Version::V1_2;
    let bytes = text.as_bytes();
    let mut copied = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let escaped: &[u8] = match c {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b':' => b"\\c",
            b'\r' if cr => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&bytes[copied..i]);
        out.extend_from_slice(escaped);
        copied = i + 1;
    }
    out.extend_from_slice(&bytes[copied..]);
}

/// Encodes one frame, followed by the EOL ActiveMQ writes after every frame.
pub fn encode_frame(frame: &Frame, version: Version, out: &mut BytesMut) {
    let escape = (!frame.command.is_connect_family()).then_some(version);
    out.reserve(64 + frame.body.len());
    out.extend_from_slice(frame.command.as_str().as_bytes());
    out.put_u8(b'\n');
    for (name, value) in &frame.headers {
        put_header(out, name, value, escape);
    }
    out.put_u8(b'\n');
    out.extend_from_slice(&frame.body);
    out.extend_from_slice(b"\0\n");
}

impl Encoder<&Frame> for StompCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(frame, self.version, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
