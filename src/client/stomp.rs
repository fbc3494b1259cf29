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

    /// The next frame (heart-beats skipped); an error frame is returned too.
    pub async fn next_frame(&mut self) -> io::Result<Frame> {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(Item::Frame(f))) => return Ok(f),
                Ok(Some(Item::HeartBeat)) => continue,
                Ok(None) => {}
                Err(e) => return Err(err(e.to_string())),
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
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
