//! STOMP over WebSocket (RFC 6455), as ActiveMQ's `ws://` transport serves
//! it to browsers and to stompjs: an HTTP/1.1 upgrade, then STOMP frames in
//! WebSocket messages.
//!
//! The STOMP session stays a byte-stream session: [`WsReader`] takes the
//! WebSocket framing off what the client sends (so frames split over
//! messages, or several in one, decode as on TCP), and [`WsWriter`] puts
//! whole STOMP frames into messages, never part of one, which is what every
//! STOMP-over-WebSocket client parses. Pings are answered, a close is
//! answered and ends the stream.
//!
//! Pure parts (SHA-1, base64, the handshake, frame headers) are plain
//! functions, tested against the RFC's examples.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The GUID RFC 6455 appends to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The largest HTTP request head a client may send.
pub const MAX_REQUEST: usize = 16 * 1024;

/// STOMP sub-protocols, best first (ActiveMQ's order).
const SUB_PROTOCOLS: [&str; 4] = ["v12.stomp", "v11.stomp", "v10.stomp", "stomp"];

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close status codes (RFC 6455 §7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// SHA-1 (FIPS 180-4). Only the handshake uses it, on a few dozen bytes.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes(word.try_into().expect("4 bytes"));
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    base64(&sha1(format!("{key}{GUID}").as_bytes()))
}

/// A WebSocket upgrade request, as far as the broker needs it.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub key: String,
    /// The STOMP sub-protocol chosen from the client's offer; `None` when it
    /// offered none.
    pub protocol: Option<&'static str>,
}

/// Why a request is not a WebSocket upgrade we serve: the HTTP status and a
/// text for the body (and the log).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    pub text: String,
}

impl Refusal {
    fn new(status: u16, reason: &'static str, text: impl Into<String>) -> Self {
        Refusal {
            status,
            reason,
            text: text.into(),
        }
    }

    /// The HTTP response that says so (the connection closes after it).
    pub fn response(&self) -> String {
        let extra = if self.status == 426 {
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {} {}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}\n",
            self.status,
            self.reason,
            self.text.len() + 1,
            self.text
        )
    }
}

/// Where the request head ends (the index after its blank line), if it is
/// complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// True when the first line is complete and is not an HTTP request line
/// (a STOMP client on the WebSocket port, say): no need to wait for the
/// rest.
pub fn not_http(buf: &[u8]) -> bool {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let line = &buf[..end];
            !(line.ends_with(b"\r") && line.windows(6).any(|w| w == b" HTTP/"))
        }
        None => false,
    }
}

/// Checks a complete request head (up to and including its blank line).
pub fn parse_upgrade(head: &[u8]) -> Result<Upgrade, Refusal> {
    let bad = |text: &str| Refusal::new(400, "Bad Request", text);
    // Header values may hold obs-text (a cookie, say): not our business.
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, _target, version) = (parts.next(), parts.next(), parts.next());
    if !matches!(version, Some(v) if v.starts_with("HTTP/1.")) {
        return Err(bad("not an HTTP/1.1 request"));
    }
    if method != Some("GET") {
        return Err(Refusal::new(
            405,
            "Method Not Allowed",
            "a WebSocket upgrade is a GET",
        ));
    }
    let mut upgrade = false;
    let mut connection_upgrade = false;
    let mut key = None;
    let mut ws_version = None;
    let mut offered: Vec<String> = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("a header line without a colon"));
        };
        let value = value.trim();
        let has_token = |token: &str| {
            value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade |= has_token("websocket"),
            "connection" => connection_upgrade |= has_token("upgrade"),
            "sec-websocket-key" => key = Some(value.to_string()),
            "sec-websocket-version" => ws_version = Some(value.to_string()),
            "sec-websocket-protocol" => offered.extend(
                value
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty()),
            ),
            _ => {}
        }
    }
    if !upgrade || !connection_upgrade {
        return Err(Refusal::new(
            426,
            "Upgrade Required",
            "this port speaks STOMP over WebSocket: send a WebSocket upgrade",
        ));
    }
    if ws_version.as_deref() != Some("13") {
        return Err(Refusal::new(
            426,
            "Upgrade Required",
            "only WebSocket version 13 is supported",
        ));
    }
    let key = match key {
        Some(k) if !k.is_empty() => k,
        _ => return Err(bad("no Sec-WebSocket-Key")),
    };
    let protocol = if offered.is_empty() {
        None
    } else {
        match SUB_PROTOCOLS
            .iter()
            .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
        {
            Some(p) => Some(*p),
            // ActiveMQ serves any STOMP-looking offer, as plain "stomp".
            None if offered
                .iter()
                .any(|o| o.to_ascii_lowercase().contains("stomp")) =>
            {
                Some("stomp")
            }
            None => {
                return Err(bad(&format!(
                    "no supported sub-protocol in '{}' (this port speaks {})",
                    offered.join(", "),
                    SUB_PROTOCOLS.join(", ")
                )))
            }
        }
    };
    Ok(Upgrade { key, protocol })
}

/// The `101 Switching Protocols` answer to an upgrade.
pub fn accept_response(u: &Upgrade) -> String {
    let protocol = match u.protocol {
        Some(p) => format!("Sec-WebSocket-Protocol: {p}\r\n"),
        None => String::new(),
    };
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{protocol}\r\n",
        accept_key(&u.key)
    )
}

/// Writes the header of an unmasked, final frame (server to client) into
/// `out`; returns its length.
pub fn frame_header(opcode: u8, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A whole frame with a small payload (control frames).
pub fn small_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut head = [0u8; 10];
    let n = frame_header(opcode, payload.len(), &mut head);
    let mut v = Vec::with_capacity(n + payload.len());
    v.extend_from_slice(&head[..n]);
    v.extend_from_slice(payload);
    v
}

/// A close frame with a status code.
pub fn close_frame(code: u16) -> Vec<u8> {
    small_frame(OP_CLOSE, &code.to_be_bytes())
}

/// The close frame the writer ends with, as the reader learnt it: the
/// client's close (echoed) or a protocol error (1002). Shared by the two
/// halves of a connection, so that it cannot be lost behind a full queue and
/// so that no data follows a close.
#[derive(Debug, Default)]
pub struct CloseReply(AtomicU32);

/// In [`CloseReply`]: the client's close had no status code.
const CLOSE_EMPTY: u32 = 1 << 16;

impl CloseReply {
    /// Sets the reply unless one is set already.
    fn set(&self, v: u32) {
        let _ = self
            .0
            .compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire);
    }

    /// True once the client closed (or failed) the connection.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire) != 0
    }

    /// The close frame to send: the one set, or a normal close.
    fn frame(&self) -> Vec<u8> {
        match self.0.load(Ordering::Acquire) {
            0 => close_frame(CLOSE_NORMAL),
            CLOSE_EMPTY => small_frame(OP_CLOSE, &[]),
            code => close_frame(code as u16),
        }
    }
}

/// A client frame's header.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: u8,
    pub mask: [u8; 4],
    pub len: u64,
}

/// Parses a client frame's header from the start of `buf`: `Ok(None)` when
/// more bytes are needed, an error for what RFC 6455 says must fail the
/// connection (an unmasked frame, reserved bits or opcodes, a fragmented or
/// oversize control frame).
pub fn parse_head(buf: &[u8]) -> Result<Option<(FrameHead, usize)>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err("reserved bits set (no extension was negotiated)");
    }
    let opcode = b0 & 0x0F;
    let fin = b0 & 0x80 != 0;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin {
                return Err("a fragmented control frame");
            }
            if b1 & 0x7F > 125 {
                return Err("a control frame longer than 125 bytes");
            }
        }
        _ => return Err("a reserved opcode"),
    }
    if b1 & 0x80 == 0 {
        return Err("an unmasked frame from the client");
    }
    let (len, at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if n >> 63 != 0 {
                return Err("a frame length with the top bit set");
            }
            (n, 10)
        }
        n => (n as u64, 2),
    };
    if buf.len() < at + 4 {
        return Ok(None);
    }
    let mask = buf[at..at + 4].try_into().expect("4 bytes");
    Ok(Some((
        FrameHead {
            fin,
            opcode,
            mask,
            len,
        },
        at + 4,
    )))
}

/// Unmasks `data` in place; `offset` is how far into the payload it starts.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let start = (offset % 4) as usize;
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(start + i) % 4];
    }
}

enum ReadState {
    /// Between frames.
    Head,
    /// Inside a data frame: payload bytes still to come.
    Data {
        remaining: u64,
        mask: [u8; 4],
        offset: u64,
    },
    /// Inside a control frame: its payload is collected whole.
    Control { opcode: u8, head: FrameHead },
    /// A close was received (and answered) or the connection failed.
    Done,
}

/// Turns a client's WebSocket frames back into the byte stream they carry.
/// Control frames never reach the reader: a ping is answered with a pong
/// (handed to `pong`, for whoever writes the socket); a close ends the
/// stream, and the writer answers it when the connection closes (see
/// [`CloseReply`]).
pub struct WsReader<R> {
    inner: R,
    buf: BytesMut,
    state: ReadState,
    /// Inside a fragmented message (a continuation must follow).
    in_message: bool,
    pong: Box<dyn FnMut(Vec<u8>) + Send>,
    close: Arc<CloseReply>,
}

impl<R> WsReader<R> {
    /// `leftover`: what was read past the upgrade request.
    pub fn new(
        inner: R,
        leftover: BytesMut,
        pong: Box<dyn FnMut(Vec<u8>) + Send>,
        close: Arc<CloseReply>,
    ) -> Self {
        WsReader {
            inner,
            buf: leftover,
            state: ReadState::Head,
            in_message: false,
            pong,
            close,
        }
    }

    /// Fails the connection: it closes with 1002, the read is an error.
    fn fail(&mut self, why: &'static str) -> io::Error {
        self.close.set(CLOSE_PROTOCOL_ERROR as u32);
        self.state = ReadState::Done;
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket protocol error: {why}"),
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for WsReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match &mut this.state {
                ReadState::Done => return Poll::Ready(Ok(())),
                ReadState::Data { remaining: 0, .. } => {
                    this.state = ReadState::Head;
                    continue;
                }
                ReadState::Data {
                    remaining,
                    mask,
                    offset,
                } => {
                    if !this.buf.is_empty() {
                        let n = (*remaining)
                            .min(this.buf.len() as u64)
                            .min(out.remaining() as u64) as usize;
                        let chunk = &mut this.buf[..n];
                        unmask(chunk, *mask, *offset);
                        out.put_slice(chunk);
                        this.buf.advance(n);
                        *remaining -= n as u64;
                        *offset += n as u64;
                        return Poll::Ready(Ok(()));
                    }
                }
                ReadState::Head => match parse_head(&this.buf) {
                    Err(why) => return Poll::Ready(Err(this.fail(why))),
                    Ok(Some((head, used))) => {
                        if head.opcode < OP_CLOSE {
                            let continuation = head.opcode == OP_CONTINUATION;
                            if continuation != this.in_message {
                                return Poll::Ready(Err(this.fail(if continuation {
                                    "a continuation frame with no message to continue"
                                } else {
                                    "a new message before the last one ended"
                                })));
                            }
                            this.in_message = !head.fin;
                        } else if head.opcode == OP_CLOSE && head.len == 1 {
                            return Poll::Ready(Err(this.fail("a close frame of one byte")));
                        }
                        this.buf.advance(used);
                        this.state = if head.opcode >= OP_CLOSE {
                            ReadState::Control {
                                opcode: head.opcode,
                                head,
                            }
                        } else {
                            ReadState::Data {
                                remaining: head.len,
                                mask: head.mask,
                                offset: 0,
                            }
                        };
                        continue;
                    }
                    Ok(None) => {}
                },
                ReadState::Control { opcode, head } => {
                    let len = head.len as usize;
                    if this.buf.len() >= len {
                        let opcode = *opcode;
                        let mask = head.mask;
                        let mut payload = this.buf.split_to(len);
                        unmask(&mut payload, mask, 0);
                        match opcode {
                            OP_PING => {
                                (this.pong)(small_frame(OP_PONG, &payload));
                                this.state = ReadState::Head;
                            }
                            OP_CLOSE => {
                                // Echo the status code; the stream ends.
                                this.close.set(if payload.len() >= 2 {
                                    u16::from_be_bytes([payload[0], payload[1]]) as u32
                                } else {
                                    CLOSE_EMPTY
                                });
                                this.state = ReadState::Done;
                            }
                            _ => this.state = ReadState::Head,
                        }
                        continue;
                    }
                }
            }
            // More bytes are needed.
            if this.buf.capacity() - this.buf.len() < 4096 {
                this.buf.reserve(16 * 1024);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // The client went away without a close: end of stream.
                Poll::Ready(Ok(0)) => {
                    this.state = ReadState::Done;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

/// Writes STOMP frames to a WebSocket client: each call one message, text
/// when it is UTF-8 (as ActiveMQ sends STOMP), binary otherwise. Once the
/// client has closed, no more data goes out (the write fails, so nothing
/// counts as delivered).
pub struct WsWriter<W> {
    inner: W,
    close: Arc<CloseReply>,
    close_sent: bool,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    pub fn new(inner: W, close: Arc<CloseReply>) -> Self {
        WsWriter {
            inner,
            close,
            close_sent: false,
        }
    }

    /// One message made of `parts` (whole STOMP frames), written without
    /// copying them.
    pub async fn message(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        if self.close_sent || self.close.is_set() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the WebSocket is closing",
            ));
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len == 0 {
            return Ok(());
        }
        let text = parts.iter().all(|p| std::str::from_utf8(p).is_ok());
        let mut head = [0u8; 10];
        let n = frame_header(if text { OP_TEXT } else { OP_BINARY }, len, &mut head);
        if parts.len() == 1 {
            let mut chain = (&head[..n]).chain(parts[0]);
            return self.inner.write_all_buf(&mut chain).await;
        }
        self.inner.write_all(&head[..n]).await?;
        for p in parts {
            self.inner.write_all(p).await?;
        }
        Ok(())
    }

    /// Whole STOMP frames (and heart-beat EOLs). A heart-beat ahead of a
    /// frame goes in a message of its own: some clients take a message that
    /// starts with an EOL for a heart-beat only.
    pub async fn frames(&mut self, buf: &[u8]) -> io::Result<()> {
        let eols = buf.iter().take_while(|&&b| b == b'\n').count();
        if eols > 0 && eols < buf.len() {
            self.message(&[&buf[..eols]]).await?;
            return self.message(&[&buf[eols..]]).await;
        }
        self.message(&[buf]).await
    }

    /// `head` (whole frames, then the head of one more) and that frame's
    /// body and end, in one message; heart-beat EOLs ahead go alone, as in
    /// [`WsWriter::frames`].
    pub async fn big_frame(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        let eols = head.iter().take_while(|&&b| b == b'\n').count();
        if eols > 0 {
            self.message(&[&head[..eols]]).await?;
        }
        self.message(&[&head[eols..], body, b"\0\n"]).await
    }

    /// A control frame made by the reader (a pong).
    pub async fn control(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.close_sent {
            return Ok(());
        }
        self.inner.write_all(frame).await
    }

    /// Ends the connection: the close frame (the client's echoed, 1002
    /// after a protocol error, else a normal close), then the TCP shutdown.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        if !self.close_sent {
            self.close_sent = true;
            let _ = self.inner.write_all(&self.close.frame()).await;
        }
        self.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn sha1_matches_the_standard_vectors() {
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(&sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        let million = vec![b'a'; 1_000_000];
        assert_eq!(
            hex(&sha1(&million)),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    #[test]
    fn accept_key_is_the_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn request(extra: &str) -> String {
        format!("GET /stomp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")
    }

    #[test]
    fn upgrades_pick_the_best_stomp_sub_protocol() {
        let r = request(
            "Sec-WebSocket-Protocol: v10.stomp, v11.stomp\r\nSec-WebSocket-Protocol: v12.stomp\r\n",
        );
        assert_eq!(head_end(r.as_bytes()), Some(r.len()));
        let u = parse_upgrade(r.as_bytes()).unwrap();
        assert_eq!(u.protocol, Some("v12.stomp"));
        let resp = accept_response(&u);
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: v12.stomp\r\n"));
        assert!(resp.ends_with("\r\n\r\n"));
        // No offer: no sub-protocol header.
        let u = parse_upgrade(request("").as_bytes()).unwrap();
        assert_eq!(u.protocol, None);
        assert!(!accept_response(&u).contains("Sec-WebSocket-Protocol"));
        let u = parse_upgrade(request("Sec-WebSocket-Protocol: stomp\r\n").as_bytes()).unwrap();
        assert_eq!(u.protocol, Some("stomp"));
    }

    #[test]
    fn requests_that_are_not_stomp_upgrades_are_refused() {
        let refused = |r: &str| parse_upgrade(r.as_bytes()).unwrap_err();
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: x\r\n\r\n").status, 426);
        assert_eq!(refused(&request("").replacen("GET", "POST", 1)).status, 405);
        assert_eq!(
            refused(&request("").replace("Version: 13", "Version: 8")).status,
            426
        );
        // ActiveMQ takes any STOMP-looking offer as "stomp".
        let u = parse_upgrade(request("Sec-WebSocket-Protocol: v13.stomp\r\n").as_bytes()).unwrap();
        assert_eq!(u.protocol, Some("stomp"));
        // Bytes that are not UTF-8 in a header value do not matter.
        let mut r = request("Cookie: caf\u{e9}\r\n").into_bytes();
        let at = r.iter().position(|&b| b == 0xc3).unwrap();
        r.remove(at);
        assert!(parse_upgrade(&r).is_ok());
        let r = refused(&request("Sec-WebSocket-Protocol: mqtt\r\n"));
        assert_eq!(r.status, 400);
        assert!(r.text.contains("mqtt"), "{}", r.text);
        assert_eq!(refused("CONNECT\naccept-version:1.2\n\n\0").status, 400);
        assert!(not_http(b"CONNECT\naccept-version:1.2\n\n\0"));
        assert!(!not_http(b"GET / HTTP/1.1\r\nHost"));
        assert!(!not_http(b"GET / HT"));
        let resp = refused("GET / HTTP/1.1\r\n\r\n").response();
        assert!(
            resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{resp}"
        );
        assert!(resp.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn frame_headers_use_the_shortest_length_form() {
        let mut h = [0u8; 10];
        assert_eq!(frame_header(OP_TEXT, 5, &mut h), 2);
        assert_eq!(&h[..2], &[0x81, 5]);
        assert_eq!(frame_header(OP_BINARY, 300, &mut h), 4);
        assert_eq!(&h[..4], &[0x82, 126, 1, 44]);
        assert_eq!(frame_header(OP_TEXT, 70_000, &mut h), 10);
        assert_eq!(&h[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    /// A masked client frame.
    fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = vec![b0];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n <= 65535 => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    #[test]
    fn client_frame_heads_are_checked() {
        let f = client_frame(0x81, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        // RFC 6455 §5.7: a masked "Hello".
        assert_eq!(hex(&f), "818537fa213d7f9f4d5158");
        let (head, used) = parse_head(&f).unwrap().unwrap();
        assert_eq!((head.fin, head.opcode, head.len, used), (true, 1, 5, 6));
        assert_eq!(parse_head(&f[..5]).unwrap(), None);
        assert!(parse_head(&[0x81, 0x05]).is_err(), "unmasked");
        assert!(parse_head(&[0xC1, 0x85]).is_err(), "RSV1");
        assert!(parse_head(&[0x83, 0x85]).is_err(), "opcode 3");
        assert!(parse_head(&[0x09, 0x80]).is_err(), "fragmented ping");
        assert!(parse_head(&[0x89, 0xFE]).is_err(), "long ping");
        let long = client_frame(0x82, &vec![7; 70_000], [1, 2, 3, 4]);
        assert_eq!(parse_head(&long).unwrap().unwrap().0.len, 70_000);
    }

    /// What a reader makes of `frames` fed `chunk` bytes at a time: the
    /// bytes, the pongs, the close it leaves for the writer, and whether
    /// the stream ended without an error.
    async fn read_all(frames: Vec<u8>, chunk: usize) -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>, bool) {
        use tokio::io::AsyncReadExt;
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let replies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let r2 = replies.clone();
        let close = Arc::new(CloseReply::default());
        let mut reader = WsReader::new(
            server,
            BytesMut::new(),
            Box::new(move |f| r2.lock().unwrap().push(f)),
            close.clone(),
        );
        let writer = tokio::spawn(async move {
            for c in frames.chunks(chunk) {
                client.write_all(c).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let mut got = Vec::new();
        let res = reader.read_to_end(&mut got).await;
        drop(writer.await);
        let replies = replies.lock().unwrap().clone();
        (got, replies, close.frame(), res.is_ok())
    }

    #[tokio::test]
    async fn the_reader_hands_out_payloads_and_answers_control_frames() {
        let mut stream = Vec::new();
        stream.extend(client_frame(0x01, b"CONNECT\naccept", [9, 8, 7, 6]));
        stream.extend(client_frame(0x89, b"hi", [1, 1, 1, 1]));
        stream.extend(client_frame(0x80, b"-version:1.2\n\n\0", [3, 5, 7, 9]));
        stream.extend(client_frame(0x82, &vec![0xAB; 300], [0xff, 0, 0xff, 0]));
        stream.extend(client_frame(0x8A, b"", [0, 0, 0, 0]));
        stream.extend(client_frame(0x88, &1000u16.to_be_bytes(), [4, 3, 2, 1]));
        stream.extend(client_frame(0x81, b"after the close", [4, 3, 2, 1]));
        for chunk in [1, 3, 7, 4096] {
            let (got, pongs, close, ok) = read_all(stream.clone(), chunk).await;
            assert!(ok);
            let mut want = b"CONNECT\naccept-version:1.2\n\n\0".to_vec();
            want.extend(vec![0xAB; 300]);
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(pongs, vec![small_frame(OP_PONG, b"hi")], "chunk {chunk}");
            assert_eq!(close, close_frame(1000), "chunk {chunk}");
        }
        // A close without a code is echoed without one.
        let (_, _, close, ok) = read_all(client_frame(0x88, b"", [1, 2, 3, 4]), 4096).await;
        assert!(ok);
        assert_eq!(close, vec![0x88, 0]);
    }

    #[tokio::test]
    async fn the_reader_fails_on_broken_fragmentation_and_odd_closes() {
        let failed = |stream: Vec<u8>| async move {
            let (_, _, close, ok) = read_all(stream, 4096).await;
            assert!(!ok);
            assert_eq!(close, close_frame(CLOSE_PROTOCOL_ERROR));
        };
        failed(client_frame(0x80, b"nothing to continue", [1, 2, 3, 4])).await;
        let mut s = client_frame(0x01, b"started", [1, 2, 3, 4]);
        s.extend(client_frame(0x81, b"new message", [1, 2, 3, 4]));
        failed(s).await;
        failed(client_frame(0x88, b"x", [1, 2, 3, 4])).await;
    }

    #[tokio::test]
    async fn the_reader_fails_on_an_unmasked_frame() {
        let mut stream = client_frame(0x81, b"ok", [1, 2, 3, 4]);
        stream.extend([0x81, 0x02, b'n', b'o']);
        let (got, pongs, close, ok) = read_all(stream, 4096).await;
        assert!(!ok);
        assert_eq!(got, b"ok");
        assert!(pongs.is_empty());
        assert_eq!(close, close_frame(CLOSE_PROTOCOL_ERROR));
    }

    #[tokio::test]
    async fn the_writer_sends_whole_frames_as_text_or_binary() {
        use tokio::io::AsyncReadExt;
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let close = Arc::new(CloseReply::default());
        let mut w = WsWriter::new(client, close.clone());
        w.frames(b"\nMESSAGE\n\nhi\0\n").await.unwrap();
        w.big_frame(b"\nMESSAGE\n\n", &[0xff, 0xfe]).await.unwrap();
        w.control(&small_frame(OP_PONG, b"x")).await.unwrap();
        // The client closed: no more data, and its close is echoed.
        close.set(1001);
        assert!(w.frames(b"MESSAGE\n\nlate\0\n").await.is_err());
        w.shutdown().await.unwrap();
        drop(w);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        let mut want = vec![0x81, 1, b'\n', 0x81, 13];
        want.extend_from_slice(b"MESSAGE\n\nhi\0\n");
        want.extend([0x81, 1, b'\n', 0x82, 13]);
        want.extend_from_slice(b"MESSAGE\n\n\xff\xfe\0\n");
        want.extend([0x8A, 1, b'x', 0x88, 2, 0x03, 0xE9]);
        assert_eq!(got, want);
    }
}
