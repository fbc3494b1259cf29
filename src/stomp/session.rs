//! One STOMP connection: frames in, core operations out, deliveries back.
//!
//! Two tasks per connection. The reader (this session) decodes frames and
//! calls the core; the writer owns the socket's write half and drains two
//! sources: a bounded channel of frames the session wants sent (CONNECTED,
//! RECEIPT, ERROR) and the [`Outbox`] of deliveries the core dispatched. The
//! bounded channel is the session's backpressure: a client that does not read
//! its receipts stops being read. The outbox is bounded by prefetch credit.
//!
//! A subscription's write state (closed, last sequence written) is shared
//! between the two tasks under a small per-subscription mutex, so that when a
//! subscription ends the session knows exactly which deliveries reached the
//! client (they come back flagged redelivered) and which never left (they come
//! back as they were).

use crate::broker::destination::{Destination, DestinationKind};
use crate::broker::message::{ConsumerName, MessageId};
use crate::broker::queue::{AckAction, Queue};
use crate::broker::security::{Access, Subject};
use crate::broker::selector::Selector;
use crate::broker::subscription::{ConsumerSpec, Delivery};
use crate::broker::transaction::{Transaction, TxOp};
use crate::broker::{Broker, BrokerError, Subscription, Target};
use crate::bstr::ByteStr;
use crate::stomp::codec::{encode_frame, CodecError, Item, Limits, StompCodec};
use crate::stomp::frame::{Command, Frame, Version};
use crate::stomp::mapping::{
    self, encode_message, parse_ack_id, parse_destination, AckMode, MappingError,
};
use crate::transport::outbox::Outbox;
use crate::transport::websocket::{CloseReply, WsReader, WsWriter};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// STOMP connector settings.
#[derive(Clone, Debug)]
pub struct StompSettings {
    pub limits: Limits,
    /// A client that promised heart-beats every `cx` ms is dropped after
    /// `cx * heartbeat_grace` ms of silence.
    pub heartbeat_grace: f64,
    /// How long a new connection may take to send CONNECT.
    pub connect_timeout: Duration,
    /// Prefetch of a subscription without `activemq.prefetchSize`: queues,
    /// topics, durable topic subscriptions (ActiveMQ's defaults).
    pub queue_prefetch: u32,
    pub topic_prefetch: u32,
    pub durable_topic_prefetch: u32,
    pub max_subscriptions: usize,
    /// Bytes of messages one open transaction may hold.
    pub max_transaction_bytes: usize,
    /// Frames the session may queue for the writer before it stops reading.
    pub control_queue: usize,
}

impl Default for StompSettings {
    fn default() -> Self {
        StompSettings {
            limits: Limits::default(),
            heartbeat_grace: 1.5,
            connect_timeout: Duration::from_secs(30),
            queue_prefetch: 1000,
            topic_prefetch: 32767,
            durable_topic_prefetch: 100,
            max_subscriptions: 1000,
            max_transaction_bytes: 64 * 1024 * 1024,
            control_queue: 256,
        }
    }
}

const SERVER: &str = concat!("ferromq/", env!("CARGO_PKG_VERSION"));
/// Bodies larger than this are written straight from the message, not copied
/// into the write buffer.
const INLINE_BODY_LIMIT: usize = 64 * 1024;
/// Deliveries the writer takes from the outbox per round.
const WRITE_BATCH: usize = 256;

/// An error answered with an ERROR frame.
#[derive(Debug)]
struct ProtocolError {
    message: String,
    /// Close the connection after the ERROR.
    fatal: bool,
}

impl ProtocolError {
    fn fatal(message: impl Into<String>) -> Self {
        ProtocolError {
            message: message.into(),
            fatal: true,
        }
    }
    fn soft(message: impl Into<String>) -> Self {
        ProtocolError {
            message: message.into(),
            fatal: false,
        }
    }
}

impl From<MappingError> for ProtocolError {
    fn from(e: MappingError) -> Self {
        ProtocolError::soft(e.0)
    }
}

/// What the session asks of the writer.
enum Ctl {
    Frame(Bytes),
    HeartBeat(Duration),
    /// A WebSocket pong, written as it is.
    Raw(Vec<u8>),
}

/// The writer-visible state of one subscription.
struct SubCtx {
    stomp_id: ByteStr,
    ack_mode: AckMode,
    version: Version,
    /// Set right after subscribing, before the consumer gets any credit.
    queue: OnceLock<Arc<Queue>>,
    consumer_id: u64,
    write: Mutex<WriteState>,
}

#[derive(Default)]
struct WriteState {
    closed: bool,
    /// Highest delivery sequence encoded for the client.
    last_written: u64,
}

impl SubCtx {
    fn write_state(&self) -> std::sync::MutexGuard<'_, WriteState> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queue(&self) -> Option<&Arc<Queue>> {
        self.queue.get()
    }
}

type Out = crate::transport::outbox::Out<SubCtx>;
type Sink = crate::transport::outbox::OutboxSink<SubCtx>;

struct SubEntry {
    ctx: Arc<SubCtx>,
    sub: Subscription,
    destination: ByteStr,
}

type ActivityReader = crate::transport::activity::ActivityReader<StompRead>;

/// What a STOMP connection reads from: the socket, or the payload of its
/// WebSocket messages.
enum StompRead {
    Tcp(OwnedReadHalf),
    Ws(WsReader<OwnedReadHalf>),
}

impl tokio::io::AsyncRead for StompRead {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            StompRead::Tcp(r) => std::pin::Pin::new(r).poll_read(cx, buf),
            StompRead::Ws(r) => std::pin::Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// What a STOMP connection writes whole frames to: the socket, or one
/// WebSocket message per write.
enum StompWrite {
    Tcp(OwnedWriteHalf),
    Ws(WsWriter<OwnedWriteHalf>),
}

impl StompWrite {
    /// Writes `buf` (whole frames) and empties it.
    async fn frames(&mut self, buf: &mut BytesMut) -> std::io::Result<()> {
        let res = match self {
            StompWrite::Tcp(sock) => sock.write_all(buf).await,
            StompWrite::Ws(ws) => ws.frames(buf).await,
        };
        buf.clear();
        res
    }

    /// Writes `buf` (whole frames, then the head of a frame whose body is
    /// too big to copy) and the body. The frame's end is left in `buf`
    /// (TCP) or written with it (one WebSocket message).
    async fn big(&mut self, buf: &mut BytesMut, body: &[u8]) -> std::io::Result<()> {
        match self {
            StompWrite::Tcp(sock) => {
                let res = sock.write_all(buf).await;
                buf.clear();
                res?;
                sock.write_all(body).await?;
                buf.extend_from_slice(b"\0\n");
                Ok(())
            }
            StompWrite::Ws(ws) => {
                let res = ws.big_frame(buf, body).await;
                buf.clear();
                res
            }
        }
    }

    fn is_ws(&self) -> bool {
        matches!(self, StompWrite::Ws(_))
    }

    async fn control(&mut self, frame: &[u8]) -> std::io::Result<()> {
        match self {
            StompWrite::Tcp(_) => Ok(()),
            StompWrite::Ws(ws) => ws.control(frame).await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            StompWrite::Tcp(sock) => sock.shutdown().await,
            StompWrite::Ws(ws) => ws.shutdown().await,
        }
    }
}

struct Session {
    broker: Arc<Broker>,
    settings: Arc<StompSettings>,
    peer: SocketAddr,
    connection: u64,
    /// `ID:<host>-<pid>-<start>-1:<n>`: the session header and the root of message ids.
    connection_name: String,
    producer: Arc<str>,
    next_message: u64,
    version: Version,
    connected: bool,
    client_id: Option<String>,
    /// Who the client authenticated as (set by CONNECT).
    subject: Option<Subject>,
    subs: HashMap<ByteStr, SubEntry>,
    txs: HashMap<ByteStr, Transaction>,
    targets: HashMap<ByteStr, (Destination, Target)>,
    /// Browser subscriptions (they end by themselves; UNSUBSCRIBE is accepted).
    browsers: std::collections::HashSet<ByteStr>,
    /// This connection's temporary destinations, by the name it gave them.
    temps: HashMap<String, Destination>,
    /// The same, the other way round, for the writer (MESSAGE frames show
    /// them by the name given).
    temp_names: Arc<mapping::TempNames>,
    control: mpsc::Sender<Ctl>,
    outbox: Arc<Outbox<Out>>,
    read_timeout: Option<Duration>,
}

/// Serves one STOMP connection until the client leaves, a fatal error, or
/// `shutdown`. `prefix` holds bytes already read while sniffing the protocol.
/// Serves a STOMP connection. `websocket`: the connection was upgraded to
/// a WebSocket; it holds what was read past the upgrade request.
pub async fn serve(
    stream: TcpStream,
    prefix: BytesMut,
    websocket: Option<BytesMut>,
    broker: Arc<Broker>,
    settings: Arc<StompSettings>,
    shutdown: CancellationToken,
) {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let connection = broker.next_id();
    let connection_name = format!("{}-1:{connection}", broker.id_prefix());
    let (control, control_rx) = mpsc::channel(settings.control_queue.max(1));
    let outbox = Arc::new(Outbox::new());
    let conn_token = shutdown.child_token();
    let temp_names = Arc::new(mapping::TempNames::default());
    let (read, write) = match websocket {
        None => (StompRead::Tcp(read), StompWrite::Tcp(write)),
        Some(leftover) => {
            let replies = control.clone();
            let pong = Box::new(move |frame: Vec<u8>| {
                // A full channel means a client that does not read: its
                // pong can wait for the next ping.
                let _ = replies.try_send(Ctl::Raw(frame));
            });
            let close = Arc::new(CloseReply::default());
            (
                StompRead::Ws(WsReader::new(read, leftover, pong, close.clone())),
                StompWrite::Ws(WsWriter::new(write, close)),
            )
        }
    };
    let writer = tokio::spawn(writer(
        write,
        control_rx,
        outbox.clone(),
        temp_names.clone(),
        conn_token.clone(),
    ));

    let mut framed = FramedRead::new(
        ActivityReader::new(read, prefix),
        StompCodec::new(settings.limits),
    );

    let mut session = Session {
        producer: Arc::from(format!("{connection_name}:-1:1")),
        broker,
        settings,
        peer,
        connection,
        connection_name,
        next_message: 0,
        version: Version::V1_0,
        connected: false,
        client_id: None,
        subject: None,
        subs: HashMap::new(),
        txs: HashMap::new(),
        targets: HashMap::new(),
        temps: HashMap::new(),
        temp_names,
        browsers: std::collections::HashSet::new(),
        control,
        outbox,
        read_timeout: None,
    };
    // Waits inside a frame's handling (flow control, a full writer) end on
    // shutdown too.
    let reason = tokio::select! {
        reason = session.run(&mut framed, &conn_token) => reason,
        _ = conn_token.cancelled() => "shutdown".to_string(),
    };
    debug!(%reason, "connection closing");
    session.close();
    crate::transport::join_writer(writer, &conn_token).await;
    info!(%reason, "STOMP connection closed");
}

impl Session {
    /// When the connection times out for want of data: the heart-beat limit
    /// after the last read; without heart-beats, an hour from now (the timer
    /// is re-armed then). The limit is set once, at CONNECT, where the
    /// timer is re-armed: whatever changed it later would have to as well.
    fn read_deadline(&self, framed: &FramedRead<ActivityReader, StompCodec>) -> Instant {
        match self.read_timeout {
            Some(t) => framed.get_ref().last_read + t,
            None => Instant::now() + Duration::from_secs(3600),
        }
    }

    async fn run(
        &mut self,
        framed: &mut FramedRead<ActivityReader, StompCodec>,
        token: &CancellationToken,
    ) -> String {
        // One timer for the connection. Reading a frame does not touch it:
        // when it fires, the real deadline is worked out from the last read,
        // and a later one re-arms it (so does CONNECT, which sets the
        // heart-beat limit). Shutdown is the caller's select; the check at
        // each frame only stops a client that keeps sending from being
        // served on.
        let timer = tokio::time::sleep_until(Instant::now() + self.settings.connect_timeout);
        tokio::pin!(timer);
        loop {
            if token.is_cancelled() {
                return "shutdown".into();
            }
            let item = tokio::select! {
                biased;
                item = framed.next() => item,
                _ = &mut timer => {
                    if !self.connected {
                        return "no CONNECT frame in time".into();
                    }
                    let deadline = self.read_deadline(framed);
                    if deadline <= Instant::now() {
                        warn!("client missed its heart-beats; closing");
                        return "missed heart-beats".into();
                    }
                    timer.as_mut().reset(deadline);
                    continue;
                }
            };
            let frame = match item {
                None => return "client closed the connection".into(),
                Some(Ok(Item::HeartBeat)) => continue,
                Some(Ok(Item::Frame(frame))) => frame,
                Some(Err(CodecError::Io(e))) => return format!("read error: {e}"),
                Some(Err(e)) => {
                    warn!(error = %e, "malformed frame");
                    self.send_error(&e.to_string(), None).await;
                    return format!("malformed frame: {e}");
                }
            };
            let receipt = frame.header("receipt").cloned();
            let command = frame.command.clone();
            // A receipted acknowledgement, or removal of a durable
            // subscription, is durable before its receipt.
            let durable_first = match command {
                Command::Ack | Command::Nack => true,
                Command::Unsubscribe => frame
                    .header("activemq.subscriptionName")
                    .or_else(|| frame.header("durable-subscription-name"))
                    .is_some(),
                _ => false,
            };
            if command == Command::Disconnect && !self.connected {
                // ActiveMQ ignores a DISCONNECT before CONNECT altogether.
                continue;
            }
            let was_connected = self.connected;
            let handled = self.handle(frame, framed).await;
            if self.connected && !was_connected {
                timer.as_mut().reset(self.read_deadline(framed));
            }
            match handled {
                Ok(()) => {
                    // CONNECTED and SUBSCRIBE answer their receipts themselves.
                    let answered = matches!(
                        command,
                        Command::Connect | Command::Stomp | Command::Subscribe
                    );
                    if let (Some(r), false) = (&receipt, answered) {
                        if durable_first {
                            if let Err(e) = self.broker.sync().await {
                                self.send_error(&e.to_string(), Some(r)).await;
                                continue;
                            }
                        }
                        self.send_receipt(r).await;
                    }
                    if command == Command::Disconnect {
                        return "DISCONNECT".into();
                    }
                }
                Err(e) => {
                    debug!(%command, error = %e.message, fatal = e.fatal, "frame refused");
                    self.send_error(&e.message, receipt.as_ref()).await;
                    if e.fatal {
                        return format!("fatal error: {}", e.message);
                    }
                }
            }
        }
    }

    async fn handle(
        &mut self,
        frame: Frame,
        framed: &mut FramedRead<ActivityReader, StompCodec>,
    ) -> Result<(), ProtocolError> {
        if !self.connected {
            return match frame.command {
                Command::Connect | Command::Stomp => self.on_connect(frame, framed).await,
                Command::Unknown(name) => Err(ProtocolError::fatal(format!(
                    "Unknown STOMP action: {name}"
                ))),
                _ => Err(ProtocolError::soft("Not connected.")),
            };
        }
        match frame.command {
            Command::Send => self.on_send(frame).await,
            Command::Subscribe => self.on_subscribe(frame).await,
            Command::Unsubscribe => self.on_unsubscribe(frame),
            Command::Ack => self.on_ack(frame, false),
            Command::Nack => {
                if self.version == Version::V1_0 {
                    return Err(ProtocolError::soft(
                        "NACK received but connection is in v1.0 mode.",
                    ));
                }
                self.on_ack(frame, true)
            }
            Command::Begin => self.on_begin(frame),
            Command::Commit => self.on_commit(frame).await,
            Command::Abort => self.on_abort(frame),
            Command::Disconnect => Ok(()),
            Command::Connect | Command::Stomp => Err(ProtocolError::soft("Already connected.")),
            other => Err(ProtocolError::fatal(format!(
                "Unknown STOMP action: {other}"
            ))),
        }
    }

    async fn on_connect(
        &mut self,
        frame: Frame,
        framed: &mut FramedRead<ActivityReader, StompCodec>,
    ) -> Result<(), ProtocolError> {
        let version = match frame.header("accept-version") {
            None => Version::V1_0,
            Some(list) => list
                .split(',')
                .filter_map(Version::parse)
                .max()
                .ok_or_else(|| {
                    ProtocolError::fatal(format!(
                        "Invalid Protocol version[{list}], supported versions are: [1.2, 1.1, 1.0]"
                    ))
                })?,
        };
        // heart-beat: cx = how often the client sends, cy = how often it wants ours.
        // (1.0 clients get heart-beats too when they ask, as in ActiveMQ.)
        let (cx, cy) = match frame.header("heart-beat") {
            None => (0, 0),
            Some(hb) => parse_heart_beat(hb)
                .ok_or_else(|| ProtocolError::fatal(format!("Invalid heart-beat header:{hb}")))?,
        };
        // ActiveMQ closes the connection after this ERROR.
        let subject = self
            .broker
            .authenticate(
                frame.header("login").map(|v| v.as_str()),
                frame.header("passcode").map(|v| v.as_str()),
            )
            .map_err(|e| ProtocolError::fatal(e.0))?;
        if let Some(id) = frame.header("client-id") {
            self.broker
                .register_client_id(id, self.connection, &format!("tcp://{}", self.peer))
                .map_err(|e| ProtocolError::fatal(e.to_string()))?;
            self.client_id = Some(id.to_string());
            tracing::Span::current().record("client_id", id.as_str());
        }
        self.subject = Some(subject);
        self.version = version;
        framed.decoder_mut().set_version(version);
        self.connected = true;
        if cx > 0 {
            self.read_timeout = Some(Duration::from_millis(
                (cx as f64 * self.settings.heartbeat_grace).ceil() as u64,
            ));
        }
        let session = self
            .client_id
            .clone()
            .unwrap_or_else(|| self.connection_name.clone());
        let mut reply = Frame::new(Command::Connected)
            .with_header("server", SERVER)
            .with_header("heart-beat", format!("{cy},{cx}"))
            .with_header("session", session)
            .with_header("version", version.as_str());
        if let Some(r) = frame
            .header("request-id")
            .or_else(|| frame.header("receipt"))
        {
            reply = reply
                .with_header("response-id", r.clone())
                .with_header("receipt-id", r.clone());
        }
        self.send_frame(&reply).await;
        if cy > 0 {
            let _ = self
                .control
                .send(Ctl::HeartBeat(Duration::from_millis(cy)))
                .await;
        }
        debug!(version = version.as_str(), cx, cy, "STOMP connected");
        Ok(())
    }

    /// A STOMP destination name as a core destination; `/temp-queue/NAME`
    /// makes (once) a temporary queue of this connection, as ActiveMQ does.
    fn destination(&mut self, name: &str) -> Result<Destination, ProtocolError> {
        if name.contains(',') {
            return self.composite(name);
        }
        let Some((kind, own)) = mapping::temp_name(name.trim()) else {
            return Ok(parse_destination(name)?);
        };
        if own.is_empty() {
            return Err(ProtocolError::soft(format!(
                "Invalid destination name: [{name}]"
            )));
        }
        if let Some(d) = self.temps.get(own.trim()) {
            return Ok(d.clone());
        }
        if self.temps.len() >= 1024 {
            return Err(ProtocolError::soft(
                "Too many temporary destinations on this connection",
            ));
        }
        let d = Destination::new(
            kind,
            format!("{}:{}", self.connection_name, self.temps.len() + 1),
        );
        self.allow(&d, Access::Admin)?;
        self.broker
            .create_temp(&d, self.connection, &self.connection_name)
            .map_err(|e| ProtocolError::soft(e.to_string()))?;
        let given = match kind {
            DestinationKind::TempQueue => "/temp-queue/",
            _ => "/temp-topic/",
        };
        self.temp_names.insert(&d, format!("{given}{}", own.trim()));
        self.temps.insert(own.trim().to_string(), d.clone());
        Ok(d)
    }

    /// Checks that the client may have `access` to `destination` (see
    /// [`Broker::authorize`]).
    fn allow(&self, destination: &Destination, access: Access) -> Result<(), ProtocolError> {
        self.broker
            .authorize(self.subject.as_ref(), destination, access)
            .map_err(|e| ProtocolError::soft(e.0))
    }

    /// Whose durable subscriptions this connection's are: its client-id, or
    /// without one its connection id (as ActiveMQ's STOMP connector gives a
    /// connection without a client-id).
    fn durable_client_id(&self) -> &str {
        self.client_id.as_deref().unwrap_or(&self.connection_name)
    }

    /// `/queue/a,/topic/b`: a composite destination, each element named as
    /// a destination alone is; written as the core names composites
    /// (`a,topic://b`: an element without a scheme has the first's kind).
    fn composite(&mut self, name: &str) -> Result<Destination, ProtocolError> {
        let mut first: Option<Destination> = None;
        let mut joined = String::with_capacity(name.len());
        for element in name.split(',') {
            let d = self.destination(element)?;
            match &first {
                None => joined.push_str(&d.name),
                // `,queue://b`: Destination's display is its qualified name.
                Some(_) => {
                    use std::fmt::Write as _;
                    let _ = write!(joined, ",{d}");
                }
            }
            first.get_or_insert(d);
        }
        let kind = first.map_or(DestinationKind::Queue, |d| d.kind);
        Ok(Destination::new(kind, joined))
    }

    fn target(&mut self, name: &ByteStr) -> Result<(Destination, Target), ProtocolError> {
        if let Some((d, t)) = self.targets.get(name) {
            let live = t.is_live();
            if live {
                return Ok((d.clone(), t.clone()));
            }
        }
        let destination = self.destination(name)?;
        self.allow(&destination, Access::Write)?;
        let target = self
            .broker
            .resolve(&destination)
            .map_err(|e| ProtocolError::soft(e.to_string()))?;
        if self.targets.len() >= 1024 {
            self.targets.clear();
        }
        self.targets
            .insert(name.clone(), (destination.clone(), target.clone()));
        Ok((destination, target))
    }

    async fn on_send(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        let dest_name = frame
            .header("destination")
            .cloned()
            .ok_or_else(|| ProtocolError::soft("SEND received without a Destination specified!"))?;
        let (destination, target) = self.target(&dest_name)?;
        let tx = frame.header("transaction").cloned();
        if let Some(tx) = &tx {
            if !self.txs.contains_key(tx) {
                return Err(ProtocolError::soft(format!("Invalid transaction id: {tx}")));
            }
        }
        self.next_message += 1;
        let id = MessageId {
            producer: self.producer.clone(),
            seq: self.next_message,
        };
        // A reply-to naming one of this connection's temporary destinations.
        let reply_temp = match frame.header("reply-to") {
            Some(r) if mapping::temp_name(r.trim()).is_some() => Some(self.destination(r)?),
            _ => None,
        };
        let mut message = mapping::message_from_send(frame, destination, id, self.connection)?;
        if let Some(r) = reply_temp {
            message.properties.retain(|(k, _)| k.as_str() != "reply-to");
            message.extras_mut().reply_to = Some(r);
        }
        if let Some(tx) = tx {
            let limit = self.settings.max_transaction_bytes;
            let t = self.txs.get_mut(&tx).expect("checked above");
            // Every copy it will make counts (a virtual topic's queues...).
            t.bytes += message.memory_size() * target.copies();
            if t.bytes > limit {
                return Err(ProtocolError::soft(format!(
                    "Transaction {tx} is over its size limit of {limit} bytes"
                )));
            }
            t.ops.push(TxOp::Send(target, Box::new(message)));
            return Ok(());
        }
        let full = self
            .broker
            .send(&target, message)
            .await
            .map_err(|e| ProtocolError::soft(e.to_string()))?;
        for queue in full {
            // Producer flow control: stop reading this client until the
            // destination has room again.
            queue.wait_for_space().await;
        }
        Ok(())
    }

    async fn on_subscribe(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        let dest_name = frame
            .header("destination")
            .filter(|d| !d.trim().is_empty())
            .cloned()
            .ok_or_else(|| ProtocolError::soft("Invalid empty or 'null' Destination header"))?;
        let stomp_id = match frame.header("id") {
            Some(id) => id.clone(),
            None if self.version == Version::V1_0 => dest_name.clone(),
            None => {
                return Err(ProtocolError::soft(
                    "SUBSCRIBE received without a subscription id!",
                ))
            }
        };
        if self.subs.contains_key(&stomp_id) {
            return Err(ProtocolError::soft(format!(
                "A subscription with id '{stomp_id}' already exists on this connection"
            )));
        }
        // Browsers count too: their ids stay until UNSUBSCRIBE.
        if self.subs.len() + self.browsers.len() >= self.settings.max_subscriptions {
            return Err(ProtocolError::soft(format!(
                "Too many subscriptions on this connection (limit {})",
                self.settings.max_subscriptions
            )));
        }
        // Anything but client / client-individual means auto, as in ActiveMQ.
        let ack_mode =
            AckMode::parse(frame.header("ack").map(|v| v.as_str())).unwrap_or(AckMode::Auto);
        // STOMP properties are all strings: compare them with numbers by
        // converting, as ActiveMQ's STOMP connector does.
        let selector = match frame.header("selector").filter(|s| !s.trim().is_empty()) {
            Some(s) => Some(Arc::new(Selector::parse(s, true).map_err(|e| {
                ProtocolError::soft(format!("javax.jms.InvalidSelectorException: {e}: {s}"))
            })?)),
            None => None,
        };
        let destination = self.destination(&dest_name)?;
        self.allow(&destination, Access::Read)?;
        if frame.header("browser").is_some_and(|b| b.trim() == "true") {
            return self
                .browse(&frame, &stomp_id, &destination, selector.as_deref())
                .await;
        }
        let durable_name = frame
            .header("activemq.subscriptionName")
            .or_else(|| frame.header("durable-subscription-name"));
        if durable_name.is_some() && destination.is_queue() {
            return Err(ProtocolError::soft(
                "Invalid Subscription: cannot durably subscribe to a Queue destination!",
            ));
        }
        let durable = durable_name.map(|name| (self.durable_client_id(), name.as_str()));
        let prefetch = match frame.header("activemq.prefetchSize") {
            Some(v) => v
                .trim()
                .parse::<u32>()
                .map_err(|_| ProtocolError::soft(format!("Invalid activemq.prefetchSize: {v}")))?,
            None if destination.is_queue() => self.settings.queue_prefetch,
            None if durable.is_some() => self.settings.durable_topic_prefetch,
            None => self.settings.topic_prefetch,
        };
        let no_local = frame
            .header("activemq.noLocal")
            .is_some_and(|v| v.trim() == "true");

        let consumer_id = self.broker.next_id();
        let ctx = Arc::new(SubCtx {
            stomp_id: stomp_id.clone(),
            ack_mode,
            version: self.version,
            queue: OnceLock::new(),
            consumer_id,
            write: Mutex::new(WriteState::default()),
        });
        // The consumer starts paused (prefetch 0) so that the RECEIPT goes
        // out before the first MESSAGE, as ActiveMQ guarantees.
        let spec = ConsumerSpec {
            id: consumer_id,
            name: ConsumerName {
                connection_id: Arc::from(self.connection_name.as_str()),
                session: -1,
                value: consumer_id as i64,
            },
            connection: self.connection,
            prefetch: 0,
            no_local,
            selector,
            exclusive: frame
                .header("activemq.exclusive")
                .is_some_and(|v| v.trim() == "true"),
            sink: Arc::new(Sink {
                outbox: self.outbox.clone(),
                ctx: ctx.clone(),
            }),
            reader: self.subject.clone().filter(|_| self.broker.authorizing()),
            priority: frame
                .header("activemq.priority")
                .and_then(|v| v.trim().parse::<i8>().ok())
                .unwrap_or(0),
        };
        let sub = self
            .broker
            .subscribe(&destination, spec, durable)
            .map_err(|e| ProtocolError::soft(e.to_string()))?;
        let queue = sub.queue.clone();
        let _ = ctx.queue.set(queue.clone());
        self.subs.insert(
            stomp_id.clone(),
            SubEntry {
                ctx,
                sub,
                destination: dest_name,
            },
        );
        if let Some(r) = frame.header("receipt") {
            if durable_name.is_some() {
                // A confirmed durable subscription survives a crash; one
                // that cannot be confirmed is not left attached either.
                if let Err(e) = self.broker.sync().await {
                    if let Some(entry) = self.subs.remove(&stomp_id) {
                        self.end_subscription(entry);
                    }
                    self.send_error(&e.to_string(), Some(r)).await;
                    return Ok(());
                }
            }
            self.send_receipt(r).await;
        }
        queue.set_prefetch(consumer_id, prefetch.max(1));
        Ok(())
    }

    fn on_unsubscribe(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        let stomp_id =
            match (frame.header("id"), frame.header("destination")) {
                (Some(id), _) => id.clone(),
                (None, Some(dest)) if self.version == Version::V1_0 => self
                    .subs
                    .iter()
                    .find(|(_, e)| e.destination == *dest)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| dest.clone()),
                (None, None) if self.version == Version::V1_0 => return Err(ProtocolError::soft(
                    "Must specify the subscriptionId or the destination you are unsubscribing from",
                )),
                _ => {
                    return Err(ProtocolError::soft(
                        "UNSUBSCRIBE received without a subscription id!",
                    ))
                }
            };
        if let Some(name) = frame
            .header("activemq.subscriptionName")
            .or_else(|| frame.header("durable-subscription-name"))
        {
            return match self.broker.remove_durable(self.durable_client_id(), name) {
                Ok(()) => Ok(()),
                Err(e @ BrokerError::DurableInUse) => Err(ProtocolError::soft(e.to_string())),
                Err(e) => Err(ProtocolError::soft(e.to_string())),
            };
        }
        if self.browsers.remove(&stomp_id) {
            return Ok(());
        }
        let entry = self
            .subs
            .remove(&stomp_id)
            .ok_or_else(|| ProtocolError::soft("No subscription matched."))?;
        self.end_subscription(entry);
        Ok(())
    }

    /// A queue browser (`browser:true`, STOMP 1.1+): the messages waiting now,
    /// without consuming them, then a MESSAGE with `browser:end`.
    async fn browse(
        &mut self,
        frame: &Frame,
        stomp_id: &ByteStr,
        destination: &Destination,
        selector: Option<&Selector>,
    ) -> Result<(), ProtocolError> {
        if self.version == Version::V1_0 {
            return Err(ProtocolError::soft(
                "Queue Browser feature only valid for Stomp v1.1+ clients!",
            ));
        }
        if !destination.is_queue() {
            return Err(ProtocolError::soft("Only queues can be browsed"));
        }
        if let Some(r) = frame.header("receipt") {
            self.send_receipt(r).await;
        }
        self.browsers.insert(stomp_id.clone());
        let messages = self
            .broker
            .find_queue(&destination.name)
            .map(|q| q.browse())
            .unwrap_or_default();
        let now = crate::broker::message::now_millis();
        let mut memo = mapping::EncodeMemo::with_temps(self.temp_names.clone());
        for (i, m) in messages.into_iter().enumerate() {
            if m.is_expired(now) || selector.is_some_and(|s| !s.matches(&m)) {
                continue;
            }
            let delivery = Delivery {
                message: m,
                consumer: 0,
                seq: i as u64 + 1,
                redelivery_count: 0,
                group_first: false,
            };
            let mut out = BytesMut::new();
            if let Some(body) = encode_message(
                &mut out,
                stomp_id,
                AckMode::Auto,
                self.version,
                &delivery,
                &mut memo,
                usize::MAX,
            ) {
                out.extend_from_slice(&body);
                out.extend_from_slice(b"\0\n");
            }
            let _ = self.control.send(Ctl::Frame(out.freeze())).await;
        }
        let end = Frame::new(Command::Message)
            .with_header("subscription", stomp_id.clone())
            .with_header("browser", "end")
            .with_header("destination", mapping::destination_string(destination))
            .with_header("message-id", "0");
        self.send_frame(&end).await;
        Ok(())
    }

    /// Stops deliveries to a subscription and gives back what it held.
    fn end_subscription(&mut self, entry: SubEntry) {
        let delivered_upto = {
            let mut w = entry.ctx.write_state();
            w.closed = true;
            w.last_written
        };
        self.outbox
            .remove_where(|(ctx, _)| Arc::ptr_eq(ctx, &entry.ctx));
        self.broker.unsubscribe(
            &entry.sub,
            delivered_upto,
            entry.ctx.ack_mode == AckMode::Auto,
        );
    }

    /// ACK or NACK, addressed as the negotiated version wants.
    fn on_ack(&mut self, frame: Frame, nack: bool) -> Result<(), ProtocolError> {
        let what = if nack { "NACK" } else { "ACK" };
        let unexpected = |id: &str| {
            ProtocolError::soft(format!("Unexpected {what} received for message-id [{id}]"))
        };
        let (entry, seq) = if self.version == Version::V1_2 {
            let id = frame.header("id").ok_or_else(|| {
                ProtocolError::soft(if nack {
                    "NACK received without an ack header to acknowledge!"
                } else {
                    "ACK received without a ack id for acknowledge!"
                })
            })?;
            let (consumer, seq) = parse_ack_id(id).ok_or_else(|| unexpected(id))?;
            let entry = self
                .subs
                .values()
                .find(|e| e.ctx.consumer_id == consumer && e.ctx.ack_mode != AckMode::Auto)
                .ok_or_else(|| unexpected(id))?;
            (entry, seq)
        } else {
            let message_id = frame.header("message-id").ok_or_else(|| {
                ProtocolError::soft(format!(
                    "{what} received without a message-id to acknowledge!"
                ))
            })?;
            let subscription = frame.header("subscription");
            if subscription.is_none() && self.version == Version::V1_1 {
                return Err(ProtocolError::soft(format!(
                    "{what} received without a subscription id for acknowledge!"
                )));
            }
            let candidates: Vec<&SubEntry> = match subscription {
                Some(s) => self.subs.get(s).into_iter().collect(),
                None => self.subs.values().collect(),
            };
            candidates
                .into_iter()
                .filter(|e| e.ctx.ack_mode != AckMode::Auto)
                .find_map(|e| {
                    e.sub
                        .queue
                        .find_in_flight(e.ctx.consumer_id, |m| m.id.matches(message_id))
                        .map(|seq| (e, seq))
                })
                .ok_or_else(|| unexpected(message_id))?
        };
        // `client` acks are cumulative; a NACK always names one message.
        let cumulative = entry.ctx.ack_mode == AckMode::Client && !nack;
        let queue = entry.sub.queue.clone();
        let consumer = entry.ctx.consumer_id;
        let ack_text = frame
            .header("id")
            .or_else(|| frame.header("message-id"))
            .cloned()
            .unwrap_or_default();
        let failed = |_| unexpected(&ack_text);
        match frame.header("transaction").cloned() {
            Some(tx) => {
                let t = self
                    .txs
                    .get_mut(&tx)
                    .ok_or_else(|| ProtocolError::soft(format!("Invalid transaction id: {tx}")))?;
                if nack {
                    return Err(ProtocolError::soft("Poison ack cannot be transacted"));
                }
                let seqs = queue
                    .ack(consumer, seq, cumulative, AckAction::Hold)
                    .map_err(failed)?;
                // Acknowledgements count against the transaction's budget too.
                t.bytes += seqs.len() * 8;
                if t.bytes > self.settings.max_transaction_bytes {
                    return Err(ProtocolError::soft(format!(
                        "Transaction {tx} is over its size limit of {} bytes",
                        self.settings.max_transaction_bytes
                    )));
                }
                t.ops.push(TxOp::Ack {
                    queue,
                    consumer,
                    seqs,
                });
            }
            None => {
                let action = if nack {
                    AckAction::Poison
                } else {
                    AckAction::Consume
                };
                queue
                    .ack(consumer, seq, cumulative, action)
                    .map_err(failed)?;
            }
        }
        Ok(())
    }

    fn tx_id(frame: &Frame, command: &str) -> Result<ByteStr, ProtocolError> {
        frame.header("transaction").cloned().ok_or_else(|| {
            ProtocolError::soft(format!("Must specify the transaction you are {command}"))
        })
    }

    fn on_begin(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        let tx = Self::tx_id(&frame, "beginning")?;
        if self.txs.contains_key(&tx) {
            return Err(ProtocolError::soft(format!(
                "The transaction was already started: {tx}"
            )));
        }
        if self.txs.len() >= 1024 {
            return Err(ProtocolError::soft(
                "Too many open transactions on this connection",
            ));
        }
        self.txs.insert(tx, Transaction::default());
        Ok(())
    }

    async fn on_commit(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        let tx = Self::tx_id(&frame, "committing")?;
        let t = self
            .txs
            .remove(&tx)
            .ok_or_else(|| ProtocolError::soft(format!("Invalid transaction id: {tx}")))?;
        let full = self.broker.commit(t).await.map_err(|e| {
            // Nothing of it happened: the held acks go back to unacknowledged.
            ProtocolError::soft(e.to_string())
        })?;
        for queue in full {
            queue.wait_for_space().await;
        }
        Ok(())
    }

    fn on_abort(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        let tx = Self::tx_id(&frame, "aborting")?;
        let t = self
            .txs
            .remove(&tx)
            .ok_or_else(|| ProtocolError::soft(format!("Invalid transaction id: {tx}")))?;
        t.rollback();
        Ok(())
    }

    async fn send_frame(&self, frame: &Frame) {
        let mut out = BytesMut::with_capacity(128 + frame.body.len());
        encode_frame(frame, self.version, &mut out);
        let _ = self.control.send(Ctl::Frame(out.freeze())).await;
    }

    async fn send_receipt(&self, receipt: &ByteStr) {
        let frame = Frame::new(Command::Receipt).with_header("receipt-id", receipt.clone());
        self.send_frame(&frame).await;
    }

    async fn send_error(&self, message: &str, receipt: Option<&ByteStr>) {
        let mut frame = Frame::new(Command::Error)
            .with_header("content-type", "text/plain")
            .with_header("message", message);
        if let Some(r) = receipt {
            frame = frame.with_header("receipt-id", r.clone());
        }
        // Like ActiveMQ: a text body and no content-length.
        frame.body = Bytes::from(format!("{message}\n"));
        self.send_frame(&frame).await;
    }

    /// Ends the connection's business with the core: open transactions roll
    /// back, subscriptions end (their unacknowledged messages go back), the
    /// client id is released.
    fn close(&mut self) {
        for (_, t) in self.txs.drain() {
            t.rollback();
        }
        let subs: Vec<SubEntry> = self.subs.drain().map(|(_, e)| e).collect();
        for entry in subs {
            self.end_subscription(entry);
        }
        self.outbox.close();
        if let Some(id) = self.client_id.take() {
            self.broker.release_client_id(&id, self.connection);
        }
        self.broker.delete_temps_of(self.connection);
        self.temps.clear();
        self.temp_names.clear();
    }
}

/// If the session task ends abnormally (a panic), the connection's business
/// with the core still ends: nothing stays registered or in flight.
impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

fn parse_heart_beat(value: &str) -> Option<(u64, u64)> {
    let (x, y) = value.split_once(',')?;
    Some((x.trim().parse().ok()?, y.trim().parse().ok()?))
}

/// The writer task: the only one that writes to the socket.
async fn writer(
    mut sock: StompWrite,
    mut control: mpsc::Receiver<Ctl>,
    outbox: Arc<Outbox<Out>>,
    temp_names: Arc<mapping::TempNames>,
    token: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut batch: Vec<Out> = Vec::with_capacity(WRITE_BATCH);
    let mut written: Vec<(Arc<SubCtx>, u64)> = Vec::new();
    let mut memo = mapping::EncodeMemo::with_temps(temp_names);
    let mut heart_beat: Option<tokio::time::Interval> = None;
    let mut hb_period = Duration::ZERO;
    let mut last_write = Instant::now();
    let mut control_open = true;
    // Made once: a cancellation future registers itself when polled.
    let cancelled = token.cancelled();
    tokio::pin!(cancelled);
    'serve: loop {
        if outbox.is_empty() {
            tokio::select! {
                biased;
                ctl = control.recv(), if control_open => match ctl {
                    Some(Ctl::Frame(b)) => buf.extend_from_slice(&b),
                    Some(Ctl::HeartBeat(d)) => {
                        heart_beat = Some(heart_beat_timer(d));
                        hb_period = d;
                    }
                    Some(Ctl::Raw(frame)) => {
                        if sock.frames(&mut buf).await.is_err() || sock.control(&frame).await.is_err() {
                            token.cancel();
                            break 'serve;
                        }
                    }
                    None => control_open = false,
                },
                _ = outbox.ready() => {}
                _ = async { heart_beat.as_mut().expect("guarded").tick().await }, if heart_beat.is_some() => {
                    if last_write.elapsed() >= hb_period.mul_f64(0.9) {
                        buf.extend_from_slice(b"\n");
                    }
                }
                _ = &mut cancelled, if control_open => {
                    // The session ended: flush what it queued, then stop.
                    control.close();
                }
            }
        }
        if !control_open && buf.is_empty() && outbox.is_empty() {
            break;
        }
        // Take whatever else is ready without waiting.
        while buf.len() < 256 * 1024 {
            match control.try_recv() {
                Ok(Ctl::Frame(b)) => buf.extend_from_slice(&b),
                Ok(Ctl::HeartBeat(d)) => {
                    heart_beat = Some(heart_beat_timer(d));
                    hb_period = d;
                }
                Ok(Ctl::Raw(frame)) => {
                    if sock.frames(&mut buf).await.is_err() || sock.control(&frame).await.is_err() {
                        token.cancel();
                        break 'serve;
                    }
                }
                Err(_) => break,
            }
        }
        outbox.drain_into(&mut batch, WRITE_BATCH);
        for (ctx, delivery) in batch.drain(..) {
            {
                let mut w = ctx.write_state();
                if w.closed {
                    continue;
                }
                w.last_written = delivery.seq;
            }
            // Over WebSocket, a body that is not UTF-8 goes in a (binary)
            // message of its own: the frames around it stay text.
            let alone = sock.is_ws() && std::str::from_utf8(&delivery.message.body).is_err();
            if alone && !buf.is_empty() && sock.frames(&mut buf).await.is_err() {
                token.cancel();
                break 'serve;
            }
            let big = encode_message(
                &mut buf,
                &ctx.stomp_id,
                ctx.ack_mode,
                ctx.version,
                &delivery,
                &mut memo,
                INLINE_BODY_LIMIT,
            );
            let flush = match &big {
                Some(body) => sock.big(&mut buf, body).await,
                None if alone => sock.frames(&mut buf).await,
                None => Ok(()),
            };
            if flush.is_err() {
                token.cancel();
                break 'serve;
            }
            if big.is_some() || alone {
                last_write = Instant::now();
            }
            match written.iter_mut().find(|(c, _)| Arc::ptr_eq(c, &ctx)) {
                Some((_, seq)) => *seq = delivery.seq,
                None => written.push((ctx, delivery.seq)),
            }
        }
        if !buf.is_empty() {
            if sock.frames(&mut buf).await.is_err() {
                token.cancel();
                break 'serve;
            }
            last_write = Instant::now();
        }
        // Auto-acknowledge what reached the socket: it frees prefetch credit.
        for (ctx, seq) in written.drain(..) {
            if ctx.ack_mode == AckMode::Auto {
                if let Some(queue) = ctx.queue() {
                    let _ = queue.ack(ctx.consumer_id, seq, true, AckAction::Consume);
                }
            }
        }
    }
    let _ = sock.shutdown().await;
}

fn heart_beat_timer(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(Instant::now() + period, period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}
