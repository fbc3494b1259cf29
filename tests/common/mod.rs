//! Test support: an in-process broker on port 0 and a small STOMP client
//! built on the project's codec, over real sockets.
#![allow(dead_code)]

pub mod ow;

use bytes::BytesMut;
use ferromq::stomp::codec::{encode_frame, Item, Limits, StompCodec};
use ferromq::stomp::frame::{Command, Frame, Version};
use ferromq::{Config, ListenerKind, Server};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestBroker {
    pub stomp: SocketAddr,
    pub auto: SocketAddr,
    /// STOMP over WebSocket, unless a test turned it off.
    pub ws: Option<SocketAddr>,
    pub broker: Arc<ferromq::broker::Broker>,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Self::start_in(dir.path(), tweak).await;
        b._dir = Some(dir);
        b
    }

    /// A broker on a data directory the caller keeps (for restarts).
    pub async fn start_in(
        data_dir: &std::path::Path,
        tweak: impl FnOnce(&mut Config),
    ) -> TestBroker {
        let mut config = Config::default();
        config.broker.data_dir = data_dir.to_path_buf();
        config.listeners.auto = "127.0.0.1:0".into();
        config.listeners.stomp = "127.0.0.1:0".into();
        config.listeners.ws = "127.0.0.1:0".into();
        tweak(&mut config);
        let server = Server::bind(&config).await.unwrap();
        let stomp = server.local_addr(ListenerKind::Stomp).unwrap();
        let auto = server.local_addr(ListenerKind::Auto).unwrap();
        let ws = server.local_addr(ListenerKind::WebSocket);
        let broker = server.broker();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        TestBroker {
            stomp,
            ws,
            auto,
            broker,
            shutdown,
            task: Some(task),
            _dir: None,
        }
    }

    pub async fn connect(&self, version: &str) -> Client {
        Client::connect(self.stomp, version, &[]).await
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Client {
    pub stream: TcpStream,
    pub codec: StompCodec,
    pub buf: BytesMut,
    pub version: Version,
    pub connected: Frame,
    pub heart_beats: usize,
}

impl Client {
    /// Opens a connection without sending anything.
    pub async fn raw(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            codec: StompCodec::new(Limits::default()),
            buf: BytesMut::new(),
            version: Version::V1_0,
            connected: Frame::new(Command::Connected),
            heart_beats: 0,
        }
    }

    /// CONNECT with `accept-version` (none when `version` is "1.0-legacy").
    pub async fn connect(addr: SocketAddr, version: &str, headers: &[(&str, &str)]) -> Client {
        let mut c = Client::raw(addr).await;
        let mut frame = Frame::new(Command::Connect).with_header("host", "localhost");
        if version != "1.0-legacy" {
            frame = frame.with_header("accept-version", version);
        }
        for (k, v) in headers {
            frame = frame.with_header(*k, *v);
        }
        c.send(&frame).await;
        let reply = c.recv().await;
        assert_eq!(reply.command, Command::Connected, "{reply:?}");
        c.version = Version::parse(reply.header("version").unwrap()).unwrap();
        c.codec.set_version(c.version);
        c.connected = reply;
        c
    }

    pub async fn send(&mut self, frame: &Frame) {
        let mut out = BytesMut::new();
        encode_frame(frame, self.version, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame within `timeout`; None on timeout or close. Heart-beats are counted.
    pub async fn recv_within(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(Item::Frame(f))) => return Some(f),
                Ok(Some(Item::HeartBeat)) => {
                    self.heart_beats += 1;
                    continue;
                }
                Ok(None) => {}
                Err(e) => panic!("client decode error: {e}"),
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Frame {
        self.recv_within(WAIT).await.expect("expected a frame")
    }

    /// True when the broker closes the connection within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut scratch = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn expect_receipt(&mut self, id: &str) {
        let f = self.recv().await;
        assert_eq!(f.command, Command::Receipt, "{f:?}");
        assert_eq!(f.header("receipt-id").unwrap(), id);
    }

    pub async fn expect_message(&mut self) -> Frame {
        let f = self.recv().await;
        assert_eq!(f.command, Command::Message, "{f:?}");
        f
    }

    pub async fn expect_error(&mut self) -> Frame {
        let f = self.recv().await;
        assert_eq!(f.command, Command::Error, "{f:?}");
        f
    }

    pub async fn send_text(&mut self, dest: &str, body: &str, receipt: Option<&str>) {
        let mut f = Frame::new(Command::Send)
            .with_header("destination", dest)
            .with_body(body.as_bytes().to_vec());
        if let Some(r) = receipt {
            f = f.with_header("receipt", r);
        }
        self.send(&f).await;
        if let Some(r) = receipt {
            self.expect_receipt(r).await;
        }
    }

    pub async fn subscribe(&mut self, id: &str, dest: &str, ack: &str, extra: &[(&str, &str)]) {
        let mut f = Frame::new(Command::Subscribe)
            .with_header("id", id)
            .with_header("destination", dest)
            .with_header("ack", ack)
            .with_header("receipt", format!("sub-{id}"));
        for (k, v) in extra {
            f = f.with_header(*k, *v);
        }
        self.send(&f).await;
        self.expect_receipt(&format!("sub-{id}")).await;
    }

    pub async fn disconnect(mut self) {
        self.send(&Frame::new(Command::Disconnect).with_header("receipt", "bye"))
            .await;
        self.expect_receipt("bye").await;
        assert!(self.closed_within(WAIT).await);
    }
}

pub fn frame(command: Command, headers: &[(&str, &str)]) -> Frame {
    let mut f = Frame::new(command);
    for (k, v) in headers {
        f = f.with_header(*k, *v);
    }
    f
}

pub fn body(f: &Frame) -> String {
    String::from_utf8_lossy(&f.body).into_owned()
}
