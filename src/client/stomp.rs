//! A small asynchronous STOMP client on the project's codec (for the load
//! tools; it works against ferromq and ActiveMQ alike).

use crate::stomp::codec::{encode_frame, Item, Limits, StompCodec};
use crate::stomp::frame::{Command, Frame, Version};
use bytes::BytesMut;
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

pub struct StompClient {
    stream: TcpStream,
    codec: StompCodec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: Version,
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

impl StompClient {
    pub async fn connect(addr: &str, login: Option<(&str, &str)>) -> io::Result<StompClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut c = StompClient {
            stream,
            codec: StompCodec::new(Limits::default()),
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(64 * 1024),
            version: Version::V1_0,
        };
        let mut f = Frame::new(Command::Connect)
            .with_header("accept-version", "1.1,1.2")
            .with_header("host", "localhost");
        if let Some((l, p)) = login {
            f = f.with_header("login", l).with_header("passcode", p);
        }
        c.queue(&f);
        c.flush().await?;
        let reply = c.next_frame().await?;
        if reply.command != Command::Connected {
            return Err(err(format!(
                "CONNECT refused: {:?}",
                reply.header("message")
            )));
        }
        c.version = reply
            .header("version")
            .and_then(|v| Version::parse(v))
            .unwrap_or(Version::V1_0);
        c.codec.set_version(c.version);
        Ok(c)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Buffers a frame (sent at the next `flush`).
    pub fn queue(&mut self, f: &Frame) {
        encode_frame(f, self.version, &mut self.wbuf);
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    pub async fn send(&mut self, f: &Frame) -> io::Result<()> {
        self.queue(f);
        self.flush().await
    }

    /// Reads what the socket has into the read buffer; the end of the
    /// stream is an error (a frame was expected).
    async fn read_more(&mut self) -> io::Result<()> {
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(())
    }

    /// The next frame (heart-beats skipped); an error frame is returned too.
    pub async fn next_frame(&mut self) -> io::Result<Frame> {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(Item::Frame(f))) => return Ok(f),
                Ok(Some(Item::HeartBeat)) => continue,
                Ok(None) => {}
                Err(e) => return Err(err(e.to_string())),
            }
            self.read_more().await?;
        }
    }

    /// The next frame for a consumer that only counts its messages: a
    /// MESSAGE is glanced at where it lies in the read buffer (its `header`
    /// value as a number and its body length) without building a frame;
    /// anything else comes whole, as [`StompClient::next_frame`] gives it.
    pub async fn next_glance(&mut self, header: &str) -> io::Result<Result<Glance, Frame>> {
        loop {
            match glance(&self.rbuf, header.as_bytes()) {
                Glanced::Message(g, used) => {
                    bytes::Buf::advance(&mut self.rbuf, used);
                    return Ok(Ok(g));
                }
                Glanced::Incomplete => {}
                Glanced::Other => match self.codec.decode(&mut self.rbuf) {
                    Ok(Some(Item::Frame(f))) => return Ok(Err(f)),
                    Ok(Some(Item::HeartBeat)) => continue,
                    Ok(None) => {}
                    Err(e) => return Err(err(e.to_string())),
                },
            }
            self.read_more().await?;
        }
    }

    /// Waits for the RECEIPT of `id`; an ERROR is an error.
    pub async fn receipt(&mut self, id: &str) -> io::Result<()> {
        loop {
            let f = self.next_frame().await?;
            match f.command {
                Command::Receipt if f.header("receipt-id").is_some_and(|r| r == id) => {
                    return Ok(())
                }
                Command::Error => {
                    return Err(err(format!(
                        "ERROR: {}",
                        f.header("message")
                            .map(|m| m.to_string())
                            .unwrap_or_default()
                    )))
                }
                _ => {}
            }
        }
    }

    pub async fn disconnect(mut self) -> io::Result<()> {
        self.send(&Frame::new(Command::Disconnect).with_header("receipt", "bye"))
            .await?;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.receipt("bye")).await;
        Ok(())
    }
}

/// What a counting consumer needs of a MESSAGE frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glance {
    /// The looked-for header's value, when it is there and a number.
    pub value: Option<u64>,
    pub body_len: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum Glanced {
    /// A whole MESSAGE frame, and the bytes it took (with any EOLs before it).
    Message(Glance, usize),
    /// More bytes are needed to tell.
    Incomplete,
    /// Not a MESSAGE in the plain shape (another command, CRLF lines, a
    /// frame past the size a glance handles): the codec takes it.
    Other,
}

/// Frames larger than this are left to the codec (and its limits).
const GLANCE_MAX: usize = 1 << 20;

/// Looks at the frame at the start of `buf` (after heart-beat EOLs), as the
/// codec would read it: a MESSAGE with `\n` line ends, the first of a
/// repeated header winning, a body of `content-length` bytes or up to the
/// first NUL.
fn glance(buf: &[u8], header: &[u8]) -> Glanced {
    let skipped = buf.iter().take_while(|&&b| b == b'\n').count();
    let rest = &buf[skipped..];
    const COMMAND: &[u8] = b"MESSAGE\n";
    if rest.len() < COMMAND.len() {
        return if COMMAND.starts_with(rest) {
            Glanced::Incomplete
        } else {
            Glanced::Other
        };
    }
    if !rest.starts_with(COMMAND) {
        return Glanced::Other;
    }
    let mut at = COMMAND.len();
    let mut content_length: Option<usize> = None;
    let mut value: Option<Option<u64>> = None;
    loop {
        let Some(n) = memchr::memchr(b'\n', &rest[at..]) else {
            return if rest.len() > GLANCE_MAX {
                Glanced::Other
            } else {
                Glanced::Incomplete
            };
        };
        let line = &rest[at..at + n];
        at += n + 1;
        if line.is_empty() {
            break;
        }
        if line.ends_with(b"\r") {
            return Glanced::Other;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return Glanced::Other;
        };
        let (name, v) = (&line[..colon], &line[colon + 1..]);
        if name == b"content-length" && content_length.is_none() {
            match std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(n) => content_length = Some(n),
                None => return Glanced::Other,
            }
        } else if name == header && value.is_none() {
            value = Some(std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()));
        }
    }
    let body_len = match content_length {
        Some(n) if n > GLANCE_MAX => return Glanced::Other,
        Some(n) => {
            if rest.len() <= at + n {
                return Glanced::Incomplete;
            }
            if rest[at + n] != 0 {
                return Glanced::Other;
            }
            n
        }
        None => match memchr::memchr(0, &rest[at..]) {
            Some(n) => n,
            None if rest.len() > GLANCE_MAX => return Glanced::Other,
            None => return Glanced::Incomplete,
        },
    };
    Glanced::Message(
        Glance {
            value: value.flatten(),
            body_len,
        },
        skipped + at + body_len + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `stream` frame by frame with the codec, and with glances where
    /// they apply: both must see the same frames, split at the same places.
    fn agree(stream: &[u8], header: &str) -> usize {
        let mut codec = StompCodec::new(Limits::default());
        codec.set_version(Version::V1_2);
        let mut whole = BytesMut::from(stream);
        let mut glanced = BytesMut::from(stream);
        let mut messages = 0;
        loop {
            let frame = loop {
                match codec.decode(&mut whole).unwrap() {
                    Some(Item::HeartBeat) => continue,
                    other => break other,
                }
            };
            let Some(Item::Frame(f)) = frame else {
                // Nothing whole left: the glance must not see a message either.
                assert!(!matches!(
                    glance(&glanced, header.as_bytes()),
                    Glanced::Message(..)
                ));
                return messages;
            };
            match glance(&glanced, header.as_bytes()) {
                Glanced::Message(g, used) => {
                    assert_eq!(f.command, Command::Message);
                    assert_eq!(g.body_len, f.body.len());
                    assert_eq!(g.value, f.header(header).and_then(|v| v.parse().ok()));
                    bytes::Buf::advance(&mut glanced, used);
                    messages += 1;
                }
                Glanced::Other => {
                    let mut c2 = StompCodec::new(Limits::default());
                    c2.set_version(Version::V1_2);
                    let g = loop {
                        match c2.decode(&mut glanced).unwrap() {
                            Some(Item::HeartBeat) => continue,
                            other => break other,
                        }
                    };
                    assert_eq!(g, Some(Item::Frame(f)));
                }
                Glanced::Incomplete => panic!("the codec had a whole frame: {f:?}"),
            }
            assert_eq!(whole, glanced, "both stopped at the same place");
        }
    }

    #[test]
    fn glances_split_frames_where_the_codec_does() {
        let stream: &[u8] =
            b"MESSAGE\nsubscription:1\nmessage-id:ID\\ch-1\\c1\nsent:123\nsent:9\n\nhello\0\n\
            \n\nMESSAGE\ncontent-length:3\nsent:x\n\na\0b\0\n\
            RECEIPT\nreceipt-id:r1\n\n\0\
            MESSAGE\r\nsent:5\r\n\r\nbody\0\
            MESSAGE\n\n\0\
            MESSAGE\nsent:7\n\nlast";
        assert_eq!(agree(stream, "sent"), 3);
        // Every prefix: a glance never claims a frame the codec does not have.
        for cut in 0..stream.len() {
            agree(&stream[..cut], "sent");
        }
    }

    #[test]
    fn the_recorded_stomp_streams_glance_as_they_decode() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol-fixtures/stomp");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.to_string_lossy().into_owned();
            if name.ends_with(".s2c.bin") && !name.contains(".openwire.") {
                let bytes = std::fs::read(&path).unwrap();
                seen += agree(&bytes, "timestamp");
            }
        }
        assert!(seen > 0, "no MESSAGE frames in {}", dir.display());
    }
}
