//! One OpenWire connection: the handshake, then commands in, core
//! operations out, deliveries back as MessageDispatch.
//!
//! As for STOMP there are two tasks: this session (the reader) and a writer
//! that owns the socket's write half, the negotiated format and the write
//! side of the marshalling cache — so every frame is encoded by one task, in
//! the order it goes on the wire. The session sends it commands over a
//! bounded channel; the core's deliveries come through the outbox, bounded by
//! prefetch credit.
//!
//! A delivery's sequence number (per consumer) is sent as the message id's
//! `brokerSequenceId`, with the consumer's tag above it (see [`wire_seq`]).
//! The client echoes it in its acks and reports the last one it handed to the
//! application in `RemoveInfo.lastDeliveredSequenceId`, which is exactly what
//! the core needs to return unacknowledged messages with the right
//! redelivered flag.

use crate::broker::destination::Destination;
use crate::broker::message::now_millis;
use crate::broker::queue::AckAction;
use crate::broker::security::{Access, SecurityError, Subject};
use crate::broker::selector::Selector;
use crate::broker::subscription::ConsumerSpec;
use crate::broker::transaction::{Transaction, TxOp};
use crate::broker::{Broker, BrokerError, Subscription, Target};
use crate::openwire::codec::{
    encode_wire_format_info, negotiate, CodecError, FrameWriter, Inbound, Negotiated,
    OpenWireCodec, WireFormatInfo,
};
use crate::openwire::convert::{
    self, consumer_name, destination_from, id_string, message_to_struct, throwable, ValueMemo,
};
use crate::openwire::marshal::{AckFrame, AckedId, MessageParts};
use crate::openwire::schema;
use crate::openwire::value::{Struct, Value};
use crate::transport::activity::ActivityReader;
use crate::transport::outbox::Outbox;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// OpenWire connector settings.
#[derive(Clone, Debug)]
pub struct OpenWireSettings {
    /// Largest frame accepted (ActiveMQ's default connector: 100 MiB).
    pub max_frame_size: u64,
    /// Proposed `MaxInactivityDuration` (ms); the smaller of both sides wins.
    pub max_inactivity_ms: i64,
    /// How long a new connection has to send its WireFormatInfo.
    pub handshake_timeout: Duration,
    /// Commands the session may queue for the writer before it stops reading.
    pub control_queue: usize,
    /// Bytes of messages one open transaction may hold.
    pub max_transaction_bytes: usize,
}

impl Default for OpenWireSettings {
    fn default() -> Self {
        OpenWireSettings {
            max_frame_size: 100 * 1024 * 1024,
            max_inactivity_ms: 30_000,
            handshake_timeout: Duration::from_secs(30),
            control_queue: 256,
            max_transaction_bytes: 64 * 1024 * 1024,
        }
    }
}

/// ActiveMQ's acknowledgement types (MessageAck.ackType).
mod ack_type {
    pub const DELIVERED: i8 = 0;
    pub const POISON: i8 = 1;
    pub const STANDARD: i8 = 2;
    pub const REDELIVERED: i8 = 3;
    pub const INDIVIDUAL: i8 = 4;
    pub const UNMATCHED: i8 = 5;
    pub const EXPIRED: i8 = 6;
}

/// TransactionInfo.type values.
mod tx_type {
    pub const BEGIN: i8 = 0;
    pub const PREPARE: i8 = 1;
    pub const COMMIT_ONE_PHASE: i8 = 2;
    pub const COMMIT_TWO_PHASE: i8 = 3;
    pub const ROLLBACK: i8 = 4;
    pub const RECOVER: i8 = 5;
    pub const FORGET: i8 = 6;
    pub const END: i8 = 7;
}

/// An error answered with an ExceptionResponse (or a ConnectionError when
/// no response was asked for); `class` is the Java exception class the
/// client rebuilds.
#[derive(Debug)]
struct JmsError {
    class: &'static str,
    message: String,
}

impl JmsError {
    fn new(class: &'static str, message: impl Into<String>) -> Self {
        JmsError {
            class,
            message: message.into(),
        }
    }
    fn jms(message: impl Into<String>) -> Self {
        Self::new("javax.jms.JMSException", message)
    }
}

impl From<SecurityError> for JmsError {
    fn from(e: SecurityError) -> Self {
        JmsError::new("java.lang.SecurityException", e.0)
    }
}

/// What a commit (or prepare) of a transaction marked rollback-only gets:
/// ActiveMQ's XAException, whose message carries its error code (the
/// client reads it back for XA; a local transaction's commit throws a
/// JMSException with this message).
fn rolled_back(cause: &str) -> JmsError {
    debug!(cause, "commit of a transaction marked rollback-only");
    JmsError::new(
        "javax.transaction.xa.XAException",
        "COMMIT FAILED: Transaction marked rollback only xaErrorCode:100",
    )
}

impl From<BrokerError> for JmsError {
    fn from(e: BrokerError) -> Self {
        let class = match &e {
            BrokerError::ClientIdInUse { .. } => "javax.jms.InvalidClientIDException",
            BrokerError::NoSuchDurable { .. } => "javax.jms.InvalidDestinationException",
            // Its message is the destination: the client's class builds
            // "The destination X does not exist." from it.
            BrokerError::NoSuchTempQueue(name) => {
                return JmsError::new(
                    "org.apache.activemq.DestinationDoesNotExistException",
                    format!("temp-queue://{name}"),
                )
            }
            BrokerError::NoSuchTempTopic(name) => {
                return JmsError::new(
                    "org.apache.activemq.DestinationDoesNotExistException",
                    format!("temp-topic://{name}"),
                )
            }
            BrokerError::Invalid(_) => "javax.jms.InvalidDestinationException",
            BrokerError::DurableInUse
            | BrokerError::TempInUse(_)
            | BrokerError::TempNotOwned(_) => "javax.jms.JMSException",
        };
        JmsError::new(class, e.to_string())
    }
}

/// How a command was answered.
enum Reply {
    /// A plain Response, if one was asked for.
    Done,
    /// This reply (its correlationId is filled in), if one was asked for.
    With(Struct),
    /// The handler sent its Response itself (to order it before other frames).
    Sent,
}

/// What the session asks of the writer.
enum Ctl {
    Frame(Struct),
    Negotiated(Negotiated),
}

/// The writer-visible state of one consumer.
struct ConsumerCtx {
    /// The client's ConsumerId, echoed in every MessageDispatch.
    id_value: Value,
    /// Set apart this consumer's `brokerSequenceId`s (see [`wire_seq`]).
    tag: u64,
    write: Mutex<WriteState>,
}

/// Bits of a `brokerSequenceId` that hold the delivery's sequence number;
/// the consumer's tag is above them (23 bits, so that the value stays a
/// positive Java long).
const SEQ_BITS: u32 = 40;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
const TAG_MASK: u64 = (1 << 23) - 1;

/// The `brokerSequenceId` of a consumer's delivery. Numbers from different
/// consumers differ, as ActiveMQ's broker-wide ones do: a session or a
/// connection that closes reports one number for all its consumers (the
/// highest), and the tag says whose it is.
fn wire_seq(tag: u64, seq: u64) -> u64 {
    (tag << SEQ_BITS) | (seq & SEQ_MASK)
}

/// The delivery sequence number in a `brokerSequenceId`.
fn seq_of_wire(v: i64) -> u64 {
    v.max(0) as u64 & SEQ_MASK
}

#[derive(Default)]
struct WriteState {
    closed: bool,
    last_written: u64,
}

impl ConsumerCtx {
    fn write_state(&self) -> std::sync::MutexGuard<'_, WriteState> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Out = crate::transport::outbox::Out<ConsumerCtx>;
type Sink = crate::transport::outbox::OutboxSink<ConsumerCtx>;

struct ConsumerEntry {
    ctx: Arc<ConsumerCtx>,
    /// None for a browser.
    sub: Option<Subscription>,
    session: i64,
    /// Highest sequence the client said it delivered to the application.
    delivered_upto: u64,
    /// Bumped by every MessagePull: a timer only ends the pull it was for.
    pull_generation: u64,
    pull_timer: Option<tokio::task::AbortHandle>,
}

impl Drop for ConsumerEntry {
    fn drop(&mut self) {
        if let Some(t) = self.pull_timer.take() {
            t.abort();
        }
    }
}

enum Internal {
    PullTimeout(String, u64),
}

struct Session {
    /// The text of the last producer id received.
    producer_memo: convert::IdMemo,
    /// The text of the last consumer id acknowledged for.
    consumer_memo: convert::IdMemo,
    broker: Arc<Broker>,
    settings: Arc<OpenWireSettings>,
    peer: SocketAddr,
    local: SocketAddr,
    connection: u64,
    control: mpsc::Sender<Ctl>,
    outbox: Arc<Outbox<Out>>,
    internal: mpsc::Sender<Internal>,
    negotiated: Option<Negotiated>,
    connection_id: Option<String>,
    client_id: Option<String>,
    /// Who the client authenticated as (set by its ConnectionInfo).
    subject: Option<Subject>,
    sessions: HashSet<i64>,
    consumers: HashMap<String, ConsumerEntry>,
    /// Temporary destinations this connection created and has not deleted.
    temps: usize,
    /// Responses to synchronous sends waiting for room (aborted with the
    /// connection).
    parked: tokio::task::JoinSet<()>,
    /// ProducerAcks waiting for room, the same way.
    parked_acks: tokio::task::JoinSet<()>,
    /// Producers with a window: (session, window size), by id.
    producers: HashMap<String, (i64, i32)>,
    txs: HashMap<String, Transaction>,
    targets: HashMap<Destination, Target>,
    shutdown_requested: bool,
}

/// Serves one OpenWire connection until the client leaves, a fatal error or
/// `shutdown`. `prefix` holds bytes already read while sniffing the protocol.
pub async fn serve(
    stream: TcpStream,
    prefix: bytes::BytesMut,
    broker: Arc<Broker>,
    settings: Arc<OpenWireSettings>,
    shutdown: CancellationToken,
) {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let connection = broker.next_id();
    let (control, control_rx) = mpsc::channel(settings.control_queue.max(1));
    let (internal, mut internal_rx) = mpsc::channel(1024);
    let outbox = Arc::new(Outbox::new());
    let token = shutdown.child_token();
    let ours = WireFormatInfo::broker_proposal(settings.max_frame_size, settings.max_inactivity_ms);
    let writer = tokio::spawn(writer(
        write,
        ours.clone(),
        control_rx,
        outbox.clone(),
        token.clone(),
    ));
    let mut framed = FramedRead::new(
        ActivityReader::new(read, prefix),
        OpenWireCodec::new(settings.max_frame_size),
    );
    let mut session = Session {
        producer_memo: convert::IdMemo::default(),
        consumer_memo: convert::IdMemo::default(),
        broker,
        settings,
        peer,
        local,
        connection,
        control,
        outbox,
        internal,
        negotiated: None,
        connection_id: None,
        client_id: None,
        subject: None,
        sessions: HashSet::from([-1]),
        consumers: HashMap::new(),
        producers: HashMap::new(),
        temps: 0,
        parked: tokio::task::JoinSet::new(),
        parked_acks: tokio::task::JoinSet::new(),
        txs: HashMap::new(),
        targets: HashMap::new(),
        shutdown_requested: false,
    };
    let reason = tokio::select! {
        reason = session.run(&mut framed, &mut internal_rx, &ours, &token) => reason,
        _ = token.cancelled() => "shutdown".to_string(),
    };
    debug!(%reason, "connection closing");
    session.close();
    crate::transport::join_writer(writer, &token).await;
    info!(%reason, "OpenWire connection closed");
}

impl Session {
    async fn run(
        &mut self,
        framed: &mut FramedRead<ActivityReader<OwnedReadHalf>, OpenWireCodec>,
        internal: &mut mpsc::Receiver<Internal>,
        ours: &WireFormatInfo,
        token: &CancellationToken,
    ) -> String {
        // One timer for the connection. Reading a frame does not touch it:
        // when it fires, the real deadline is worked out from the last read,
        // and a later one re-arms it (so does the handshake, which sets the
        // inactivity limit). Shutdown is the caller's select; the check at
        // each command only stops a client that keeps sending from being
        // served on.
        let timer = tokio::time::sleep_until(Instant::now() + self.settings.handshake_timeout);
        tokio::pin!(timer);
        loop {
            if token.is_cancelled() {
                return "shutdown".into();
            }
            let item = tokio::select! {
                biased;
                Some(i) = internal.recv() => {
                    self.on_internal(i).await;
                    continue;
                }
                item = framed.next() => item,
                _ = &mut timer => {
                    if self.negotiated.is_none() {
                        return "no WireFormatInfo in time".into();
                    }
                    let deadline = self.read_deadline(framed);
                    if deadline <= Instant::now() {
                        warn!("no data from the client within the inactivity duration; closing");
                        return "inactivity".into();
                    }
                    timer.as_mut().reset(deadline);
                    continue;
                }
            };
            let command = match item {
                None => return "client closed the connection".into(),
                Some(Ok(c)) => c,
                Some(Err(CodecError::Io(e))) => return format!("read error: {e}"),
                Some(Err(e)) => {
                    warn!(error = %e, "bad OpenWire frame");
                    if self.negotiated.is_some() {
                        self.connection_error(JmsError::new("java.io.IOException", e.to_string()))
                            .await;
                    }
                    return format!("bad frame: {e}");
                }
            };
            let command = match command {
                Inbound::Ack(a) => {
                    self.on_ack_frame(&a).await;
                    continue;
                }
                Inbound::Message(m) => {
                    self.on_message_frame(*m).await;
                    continue;
                }
                Inbound::Struct(s) => s,
            };
            if self.negotiated.is_none() {
                match self.handshake(&command, ours, framed).await {
                    Ok(()) => {
                        timer.as_mut().reset(self.read_deadline(framed));
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %e, "OpenWire handshake failed");
                        return format!("handshake failed: {e}");
                    }
                }
            }
            self.on_command(command).await;
            if self.shutdown_requested {
                return "ShutdownInfo".into();
            }
        }
    }

    /// When the connection times out for want of data: the negotiated
    /// inactivity duration (and a third) after the last read; without
    /// inactivity monitoring, an hour from now (the timer is re-armed then).
    /// The limit is set once, by the handshake, where the timer is re-armed:
    /// whatever changed it later would have to as well.
    fn read_deadline(
        &self,
        framed: &FramedRead<ActivityReader<OwnedReadHalf>, OpenWireCodec>,
    ) -> Instant {
        match &self.negotiated {
            Some(n) if n.max_inactivity_ms > 0 => {
                framed.get_ref().last_read
                    + Duration::from_millis((n.max_inactivity_ms + n.max_inactivity_ms / 3) as u64)
            }
            _ => Instant::now() + Duration::from_secs(3600),
        }
    }

    async fn handshake(
        &mut self,
        command: &Struct,
        ours: &WireFormatInfo,
        framed: &mut FramedRead<ActivityReader<OwnedReadHalf>, OpenWireCodec>,
    ) -> Result<(), CodecError> {
        let theirs = WireFormatInfo::from_struct(command)?;
        let n = negotiate(ours, &theirs)?;
        framed.decoder_mut().negotiated(&n);
        framed.decoder_mut().fast_paths(true);
        self.negotiated = Some(n);
        debug!(
            version = n.format.version,
            tight = n.format.tight,
            cache = n.format.cache,
            "wire format negotiated"
        );
        let _ = self.control.send(Ctl::Negotiated(n)).await;
        let broker_info = Struct::new(schema::BROKER_INFO)
            .with(
                "brokerId",
                Value::obj(Struct::new(schema::BROKER_ID).with(
                    "value",
                    Value::str(format!("{}-0:1", self.broker.id_prefix())),
                )),
            )
            .with("brokerURL", Value::str(format!("tcp://{}", self.local)))
            .with(
                "brokerName",
                Value::str(self.broker.config().broker_name.as_str()),
            );
        self.send(broker_info).await;
        Ok(())
    }

    async fn send(&self, s: Struct) {
        let _ = self.control.send(Ctl::Frame(s)).await;
    }

    async fn connection_error(&self, e: JmsError) {
        let mut s =
            Struct::new(schema::CONNECTION_ERROR).with("exception", throwable(e.class, &e.message));
        if let Some(c) = &self.connection_id {
            s.set("connectionId", connection_id_value(c));
        }
        self.send(s).await;
    }

    async fn on_command(&mut self, command: Struct) {
        let command_id = command.command_id();
        let response_required = command.response_required();
        let type_id = command.type_id;
        let result = self.dispatch_command(command).await;
        self.answer(type_id, command_id, response_required, result)
            .await;
    }

    /// A message from the fast decoder: as [`Session::on_command`] does
    /// for any command.
    async fn on_message_frame(&mut self, m: MessageParts) {
        let (type_id, command_id, response_required) =
            (m.type_id, m.command_id, m.response_required);
        let result = match self.connection_id {
            None => Err(not_registered()),
            Some(_) => self.on_message(m).await,
        };
        self.answer(type_id, command_id, response_required, result)
            .await;
    }

    /// Answers a command: its Response or ExceptionResponse when it asked
    /// for one; a failure it did not ask an answer for ends in a
    /// ConnectionError.
    async fn answer(
        &mut self,
        type_id: u8,
        command_id: i32,
        response_required: bool,
        result: Result<Reply, JmsError>,
    ) {
        match result {
            Ok(Reply::Sent) => {}
            Ok(reply) => {
                if response_required {
                    let r = match reply {
                        Reply::With(s) => s,
                        _ => Struct::new(schema::RESPONSE),
                    };
                    self.send(r.with("correlationId", Value::Int(command_id)))
                        .await;
                }
            }
            Err(e) => {
                debug!(command = schema::type_name(type_id), class = e.class, error = %e.message, "command refused");
                if response_required {
                    let r = Struct::new(schema::EXCEPTION_RESPONSE)
                        .with("correlationId", Value::Int(command_id))
                        .with("exception", throwable(e.class, &e.message));
                    self.send(r).await;
                } else {
                    self.connection_error(e).await;
                }
            }
        }
    }

    async fn dispatch_command(&mut self, c: Struct) -> Result<Reply, JmsError> {
        if c.type_id != schema::CONNECTION_INFO
            && self.connection_id.is_none()
            && !matches!(
                c.type_id,
                schema::KEEP_ALIVE_INFO | schema::SHUTDOWN_INFO | schema::WIRE_FORMAT_INFO
            )
        {
            return Err(not_registered());
        }
        match c.type_id {
            schema::CONNECTION_INFO => self.on_connection_info(&c).await,
            schema::SESSION_INFO => {
                if let Some(sid) = c.obj("sessionId") {
                    if self.sessions.len() >= MAX_SESSIONS {
                        return Err(JmsError::new(
                            "javax.jms.ResourceAllocationException",
                            format!("A connection may have at most {MAX_SESSIONS} sessions"),
                        ));
                    }
                    self.sessions.insert(sid.long("value"));
                }
                Ok(Reply::Done)
            }
            schema::CONSUMER_INFO => self.on_consumer_info(&c).await,
            schema::PRODUCER_INFO => {
                // A producer for a temporary destination that is gone is
                // refused (ActiveMQ: DestinationDoesNotExistException).
                if let Some(d) = c.obj("destination").and_then(destination_from) {
                    if d.kind.is_temporary() {
                        self.broker.resolve(&d)?;
                    }
                    self.allow(&d, Access::Write)?;
                }
                // Only producers with a window are remembered: they are sent
                // a ProducerAck for each message.
                let window = c.int("windowSize");
                if let (Some(pid), true) = (c.obj("producerId"), window > 0) {
                    if self.producers.len() >= MAX_SESSIONS {
                        return Err(JmsError::new(
                            "javax.jms.ResourceAllocationException",
                            format!("A connection may have at most {MAX_SESSIONS} producers with a window"),
                        ));
                    }
                    self.producers
                        .insert(id_string(pid), (pid.long("sessionId"), window));
                }
                Ok(Reply::Done)
            }
            t if schema::is_message(t) => match MessageParts::from_struct(&c) {
                Some(m) => self.on_message(m).await,
                None => Err(JmsError::new(
                    "java.io.IOException",
                    "message with a message id that is not a MessageId",
                )),
            },
            schema::MESSAGE_ACK => match AckFrame::from_struct(&c) {
                Some(a) => self.on_ack(&a),
                None => Err(JmsError::new(
                    "java.io.IOException",
                    "MessageAck with a message id that is not a MessageId",
                )),
            },
            schema::MESSAGE_PULL => self.on_pull(&c).await,
            schema::REMOVE_INFO => self.on_remove(&c),
            schema::TRANSACTION_INFO => self.on_transaction(&c).await,
            schema::DESTINATION_INFO => self.on_destination_info(&c),
            schema::REMOVE_SUBSCRIPTION_INFO => {
                let client_id = c
                    .str("clientId")
                    .map(str::to_string)
                    .or_else(|| self.client_id.clone())
                    .unwrap_or_default();
                let name = c.str("subscriptionName").unwrap_or_default();
                self.broker.remove_durable(&client_id, name)?;
                self.durable_first().await?;
                Ok(Reply::Done)
            }
            schema::KEEP_ALIVE_INFO => {
                if c.response_required() {
                    self.send(Struct::new(schema::KEEP_ALIVE_INFO)).await;
                }
                Ok(Reply::Done)
            }
            schema::SHUTDOWN_INFO => {
                self.shutdown_requested = true;
                Ok(Reply::Done)
            }
            schema::WIRE_FORMAT_INFO
            | schema::FLUSH_COMMAND
            | schema::CONNECTION_CONTROL
            | schema::CONSUMER_CONTROL
            | schema::CONTROL_COMMAND
            | schema::BROKER_INFO
            | schema::RESPONSE
            | schema::EXCEPTION_RESPONSE => Ok(Reply::Done),
            other => Err(JmsError::new(
                "java.io.IOException",
                format!("Unexpected command: {}", schema::type_name(other)),
            )),
        }
    }

    async fn on_connection_info(&mut self, c: &Struct) -> Result<Reply, JmsError> {
        let connection_id = c
            .obj("connectionId")
            .and_then(|id| id.str("value"))
            .ok_or_else(|| JmsError::jms("ConnectionInfo without a connection id"))?
            .to_string();
        match self.connection_id.as_deref() {
            Some(id) if id == connection_id => return Ok(Reply::Done), // replayed after failover
            Some(id) => {
                // One logical connection per socket here: a second would
                // take a client id that the first never gives back.
                return Err(JmsError::new(
                    "javax.jms.IllegalStateException",
                    format!("This transport already carries connection {id}"),
                ));
            }
            None => {}
        }
        let subject = self
            .broker
            .authenticate(c.str("userName"), c.str("password"))?;
        if let Some(client_id) = c.str("clientId") {
            self.broker.register_client_id(
                client_id,
                self.connection,
                &format!("tcp://{}", self.peer),
            )?;
            self.client_id = Some(client_id.to_string());
            tracing::Span::current().record("client_id", client_id);
        }
        self.connection_id = Some(connection_id);
        self.subject = Some(subject);
        if c.bool("manageable") {
            // As ActiveMQ: the Response, then a ConnectionControl.
            self.respond(c).await;
            self.send(
                Struct::new(schema::CONNECTION_CONTROL)
                    .with("connectedBrokers", Value::str(""))
                    .with("reconnectTo", Value::str("")),
            )
            .await;
            return Ok(Reply::Sent);
        }
        Ok(Reply::Done)
    }

    /// Checks that the client may have `access` to `destination` (see
    /// [`Broker::authorize`]).
    fn allow(&self, destination: &Destination, access: Access) -> Result<(), JmsError> {
        Ok(self
            .broker
            .authorize(self.subject.as_ref(), destination, access)?)
    }

    /// Sends the plain Response a command asked for.
    async fn respond(&self, c: &Struct) {
        if c.response_required() {
            self.send(
                Struct::new(schema::RESPONSE).with("correlationId", Value::Int(c.command_id())),
            )
            .await;
        }
    }

    async fn on_consumer_info(&mut self, c: &Struct) -> Result<Reply, JmsError> {
        let id_struct = c
            .obj("consumerId")
            .ok_or_else(|| JmsError::jms("ConsumerInfo without a consumer id"))?;
        let key = id_string(id_struct);
        if self.consumers.contains_key(&key) {
            return Ok(Reply::Done); // replayed after failover
        }
        if self.consumers.len() >= MAX_CONSUMERS {
            return Err(JmsError::new(
                "javax.jms.ResourceAllocationException",
                format!("Too many consumers on this connection (limit {MAX_CONSUMERS})"),
            ));
        }
        let session = id_struct.long("sessionId");
        if !self.sessions.contains(&session) {
            return Err(JmsError::jms(format!("Session {session} does not exist")));
        }
        let destination = c
            .obj("destination")
            .and_then(destination_from)
            .ok_or_else(|| {
                JmsError::new(
                    "javax.jms.InvalidDestinationException",
                    "Destination must not be null",
                )
            })?;
        self.allow(&destination, Access::Read)?;
        let selector = match c.str("selector").filter(|s| !s.trim().is_empty()) {
            Some(s) => Some(Arc::new(Selector::parse(s, false).map_err(|e| {
                JmsError::new("javax.jms.InvalidSelectorException", format!("{e}: {s}"))
            })?)),
            None => None,
        };
        let consumer_id = self.broker.next_id();
        let ctx = Arc::new(ConsumerCtx {
            id_value: Value::obj(id_struct.clone()),
            tag: consumer_id & TAG_MASK,
            write: Mutex::new(WriteState::default()),
        });
        if c.bool("browser") {
            if !destination.is_queue() {
                return Err(JmsError::new(
                    "javax.jms.InvalidDestinationException",
                    "Only queues can be browsed",
                ));
            }
            self.consumers.insert(
                key,
                ConsumerEntry {
                    ctx: ctx.clone(),
                    sub: None,
                    session,
                    delivered_upto: 0,
                    pull_generation: 0,
                    pull_timer: None,
                },
            );
            self.respond(c).await;
            self.browse(&ctx, &destination, selector.as_deref()).await;
            return Ok(Reply::Sent);
        }
        let prefetch = c.int("prefetchSize").max(0) as u32;
        let durable_name = c
            .str("subscriptionName")
            .filter(|_| !destination.is_queue());
        let client_id = c
            .str("clientId")
            .map(str::to_string)
            .or_else(|| self.client_id.clone());
        let durable = match (durable_name, &client_id) {
            (Some(name), Some(cid)) => Some((cid.as_str(), name)),
            (Some(_), None) => {
                return Err(JmsError::new(
                    "javax.jms.JMSException",
                    "You cannot create a durable subscriber without specifying a unique clientID on a Connection",
                ))
            }
            _ => None,
        };
        let spec = ConsumerSpec {
            id: consumer_id,
            name: consumer_name(id_struct),
            connection: self.connection,
            prefetch: 0,
            no_local: c.bool("noLocal"),
            selector,
            exclusive: c.bool("exclusive"),
            sink: Arc::new(Sink {
                outbox: self.outbox.clone(),
                ctx: ctx.clone(),
            }),
            reader: self.subject.clone().filter(|_| self.broker.authorizing()),
            priority: c.byte("priority"),
        };
        let sub = self.broker.subscribe(&destination, spec, durable)?;
        let queue = sub.queue.clone();
        self.consumers.insert(
            key.clone(),
            ConsumerEntry {
                ctx,
                sub: Some(sub),
                session,
                delivered_upto: 0,
                pull_generation: 0,
                pull_timer: None,
            },
        );
        if durable.is_some() {
            if let Err(e) = self.durable_first().await {
                // Not confirmed: not attached either (a retry must not find
                // the subscription in use).
                if let Some(entry) = self.consumers.remove(&key) {
                    self.end_consumer(entry, Reported::Nothing, false);
                }
                return Err(e);
            }
        }
        // The Response first, then messages.
        self.respond(c).await;
        queue.set_prefetch(consumer_id, prefetch);
        Ok(Reply::Sent)
    }

    /// Waits until a durable subscription's creation or removal is durable
    /// (it is confirmed next).
    async fn durable_first(&self) -> Result<(), JmsError> {
        self.broker
            .sync()
            .await
            .map_err(|e| JmsError::new("java.io.IOException", e.to_string()))
    }

    /// Sends a queue browser the messages waiting now, then the end marker.
    async fn browse(
        &self,
        ctx: &Arc<ConsumerCtx>,
        destination: &Destination,
        selector: Option<&Selector>,
    ) {
        let messages = match self.broker.find_queue(&destination.name) {
            Some(q) => q.browse(),
            None => Vec::new(),
        };
        let now = now_millis();
        let mut memo = ValueMemo::default();
        for (i, m) in messages.iter().enumerate() {
            if m.is_expired(now) || selector.is_some_and(|s| !s.matches(m)) {
                continue;
            }
            let dispatch = Struct::new(schema::MESSAGE_DISPATCH)
                .with("consumerId", ctx.id_value.clone())
                .with("destination", memo.destination(&m.destination))
                .with(
                    "message",
                    Value::obj(message_to_struct(m, 0, i as u64 + 1, now, &mut memo)),
                );
            self.send(dispatch).await;
        }
        self.send(Struct::new(schema::MESSAGE_DISPATCH).with("consumerId", ctx.id_value.clone()))
            .await;
    }

    fn target(&mut self, d: &Destination) -> Result<Target, JmsError> {
        if let Some(t) = self.targets.get(d) {
            if t.is_live() {
                return Ok(t.clone());
            }
        }
        // Checked first: resolving a destination makes it.
        self.allow(d, Access::Write)?;
        let t = self.broker.resolve(d)?;
        if self.targets.len() >= 1024 {
            self.targets.clear();
        }
        self.targets.insert(d.clone(), t.clone());
        Ok(t)
    }

    async fn on_message(&mut self, c: MessageParts) -> Result<Reply, JmsError> {
        let tx = c.transaction_id.as_struct().map(tx_key);
        let asynchronous = !c.response_required;
        let result = self.take_message(c, tx.as_deref()).await;
        if let (Err(e), Some(tx), true) = (&result, &tx, asynchronous) {
            self.rollback_only(tx, e);
        }
        result
    }

    /// A transacted command the client did not wait for failed: its
    /// transaction may only roll back (ActiveMQ's
    /// rollbackOnlyOnAsyncException), or its commit would silently leave
    /// that command out.
    fn rollback_only(&mut self, tx: &str, e: &JmsError) {
        if let Some(t) = self.txs.get_mut(tx) {
            t.rollback_only
                .get_or_insert_with(|| format!("{}: {}", e.class, e.message));
        }
    }

    /// A message sent (`tx`: the key of its transaction, if any).
    async fn take_message(&mut self, c: MessageParts, tx: Option<&str>) -> Result<Reply, JmsError> {
        let message = convert::message_from_parts(&c, self.connection, &mut self.producer_memo)
            .map_err(|e| JmsError::jms(e.0))?;
        let target = self.target(&message.destination)?;
        if let Some(key) = tx {
            let limit = self.settings.max_transaction_bytes;
            let t = self.txs.get_mut(key).ok_or_else(|| {
                JmsError::new(
                    "javax.jms.IllegalStateException",
                    format!("Transaction '{key}' has not been started."),
                )
            })?;
            // Every copy it will make counts (a virtual topic's queues...).
            t.bytes += message.memory_size() * target.copies();
            if t.bytes > limit {
                return Err(JmsError::new(
                    "javax.jms.ResourceAllocationException",
                    format!("Transaction '{key}' is over its size limit of {limit} bytes"),
                ));
            }
            t.ops.push(TxOp::Send(target, Box::new(message)));
            self.producer_ack(&c).await;
            return Ok(Reply::Done);
        }
        let full = self
            .broker
            .send(&target, message)
            .await
            .map_err(|e| JmsError::new("java.io.IOException", e.to_string()))?;
        if !full.is_empty() && c.response_required {
            // Producer flow control for a synchronous send: its Response
            // waits for room, but the connection keeps being read (its own
            // consumers' acks are what make room), as ActiveMQ parks it. Up
            // to MAX_PARKED at a time (a Java client has one per producer
            // thread): past that, reading waits for the oldest, so that a
            // client cannot pile sends past the limit by pipelining them.
            while self.parked.try_join_next().is_some() {}
            while self.parked.len() >= MAX_PARKED {
                self.parked.join_next().await;
            }
            let control = self.control.clone();
            let correlation = c.command_id;
            self.parked.spawn(async move {
                for q in full {
                    q.wait_for_space().await;
                }
                let r =
                    Struct::new(schema::RESPONSE).with("correlationId", Value::Int(correlation));
                let _ = control.send(Ctl::Frame(r)).await;
            });
            return Ok(Reply::Sent);
        }
        let mut ack = self.producer_ack_for(&c);
        if let Some(ack) = ack.take_if(|_| !full.is_empty()) {
            // A producer with a window: its ProducerAck waits for room (its
            // window stops it), not the connection's reading, as ActiveMQ
            // parks its message: the connection's own consumers may be what
            // makes room. Bounded: past MAX_PARKED_ACKS, reading waits.
            while self.parked_acks.try_join_next().is_some() {}
            while self.parked_acks.len() >= MAX_PARKED_ACKS {
                self.parked_acks.join_next().await;
            }
            let control = self.control.clone();
            self.parked_acks.spawn(async move {
                for q in full {
                    q.wait_for_space().await;
                }
                let _ = control.send(Ctl::Frame(ack)).await;
            });
            return Ok(Reply::Done);
        }
        for q in full {
            // An asynchronous send without a window: stop reading this
            // connection until there is room (as ActiveMQ blocks its transport).
            q.wait_for_space().await;
        }
        if let Some(ack) = ack {
            self.send(ack).await;
        }
        Ok(Reply::Done)
    }

    /// An asynchronous send of a producer with a window is acknowledged
    /// with a ProducerAck once taken, giving back what the client counted
    /// against its window for it: ActiveMQ's `Message.getSize()` (1024, plus
    /// the marshalled properties and content), never less.
    async fn producer_ack(&mut self, c: &MessageParts) {
        if let Some(ack) = self.producer_ack_for(c) {
            self.send(ack).await;
        }
    }

    /// The ProducerAck an asynchronous send gets, if its producer has a window.
    fn producer_ack_for(&mut self, c: &MessageParts) -> Option<Struct> {
        if c.response_required {
            return None;
        }
        let windowed = match self.producer_memo.get(&c.producer_id) {
            Some(id) => self.producers.contains_key(&*id),
            None => false,
        };
        let (true, Some(pid)) = (windowed, c.producer_id.as_struct()) else {
            return None;
        };
        let wire_len = |v: &Option<bytes::Bytes>| v.as_ref().map_or(0, bytes::Bytes::len);
        let size = 1024 + wire_len(&c.content) + wire_len(&c.properties);
        Some(
            Struct::new(schema::PRODUCER_ACK)
                .with("producerId", Value::obj(pid.clone()))
                .with("size", Value::Int(size.min(i32::MAX as usize) as i32)),
        )
    }

    /// A MessageAck from the fast decoder: as [`Session::on_command`] does
    /// for any command.
    async fn on_ack_frame(&mut self, a: &AckFrame) {
        let result = match self.connection_id {
            None => Err(not_registered()),
            Some(_) => self.on_ack(a),
        };
        self.answer(
            schema::MESSAGE_ACK,
            a.command_id,
            a.response_required,
            result,
        )
        .await;
    }

    fn on_ack(&mut self, c: &AckFrame) -> Result<Reply, JmsError> {
        let result = self.take_ack(c);
        if let (Err(e), false) = (&result, c.response_required) {
            if let Some(tx) = c.transaction_id.as_struct().map(tx_key) {
                self.rollback_only(&tx, e);
            }
        }
        result
    }

    fn take_ack(&mut self, c: &AckFrame) -> Result<Reply, JmsError> {
        let Some(key) = self.consumer_memo.get(&c.consumer_id) else {
            return Ok(Reply::Done);
        };
        let Some(entry) = self.consumers.get_mut(&*key) else {
            debug!(consumer = %key, "ack for an unknown consumer ignored");
            return Ok(Reply::Done);
        };
        let Some(sub) = &entry.sub else {
            return Ok(Reply::Done); // browsed messages are not consumed
        };
        let seq_of = |m: &Option<AckedId>| m.as_ref().map(|m| seq_of_wire(m.broker_seq));
        let Some(last) = seq_of(&c.last) else {
            return Ok(Reply::Done);
        };
        let first = seq_of(&c.first).unwrap_or(last).min(last);
        let queue = sub.queue.clone();
        let consumer = sub.consumer_id;
        let tx = c.transaction_id.as_struct().map(tx_key);
        let result = match c.ack_type {
            ack_type::DELIVERED | ack_type::REDELIVERED => {
                entry.delivered_upto = entry.delivered_upto.max(last);
                queue
                    .ack_between(consumer, 0, last, AckAction::Hold)
                    .map(|_| ())
            }
            ack_type::STANDARD | ack_type::INDIVIDUAL => {
                entry.delivered_upto = entry.delivered_upto.max(last);
                // A standard ack covers its range (from the first delivery
                // without one), as ActiveMQ's PrefetchSubscription: a message
                // the client holds back for redelivery (nonBlockingRedelivery)
                // stays with it.
                let from = match (c.ack_type, &c.first) {
                    (ack_type::INDIVIDUAL, _) => last,
                    (_, Some(_)) => first,
                    (_, None) => 0,
                };
                match tx {
                    Some(tx) => {
                        let t = self.txs.get_mut(&tx).ok_or_else(|| {
                            JmsError::new(
                                "javax.jms.IllegalStateException",
                                format!("Transaction '{tx}' has not been started."),
                            )
                        })?;
                        let seqs = queue
                            .ack_between(consumer, from, last, AckAction::Hold)
                            .unwrap_or_default();
                        // Acknowledgements count against the transaction's budget too.
                        t.bytes += seqs.len() * 8;
                        if t.bytes > self.settings.max_transaction_bytes {
                            return Err(JmsError::new(
                                "javax.jms.ResourceAllocationException",
                                format!("Transaction '{tx}' is over its size limit"),
                            ));
                        }
                        t.ops.push(TxOp::Ack {
                            queue,
                            consumer,
                            seqs,
                        });
                        Ok(())
                    }
                    None => queue
                        .ack_between(consumer, from, last, AckAction::Consume)
                        .map(|_| ()),
                }
            }
            ack_type::POISON => {
                // Java's Throwable.toString(): "class: message".
                let cause = match &c.poison_cause {
                    Value::Exc(t) => Some(Arc::from(match (&t.class, &t.message) {
                        (Some(cl), Some(m)) => format!("{cl}: {m}"),
                        (Some(cl), None) => cl.clone(),
                        (None, m) => m.clone().unwrap_or_default(),
                    })),
                    _ => None,
                };
                queue
                    .poison_between(consumer, first, last, cause)
                    .map(|_| ())
            }
            ack_type::UNMATCHED => queue
                .ack_between(consumer, first, last, AckAction::Consume)
                .map(|_| ()),
            // As ActiveMQ's PrefetchSubscription: an expired ack dead-letters.
            ack_type::EXPIRED => queue
                .ack_between(consumer, first, last, AckAction::Expire)
                .map(|_| ()),
            other => {
                debug!(ack_type = other, "unknown ack type ignored");
                Ok(())
            }
        };
        if let Err(e) = result {
            debug!(consumer = %key, error = %e, "ack did not match");
        }
        Ok(Reply::Done)
    }

    async fn on_pull(&mut self, c: &Struct) -> Result<Reply, JmsError> {
        let Some(key) = c.obj("consumerId").map(id_string) else {
            return Ok(Reply::Done);
        };
        let Some(entry) = self.consumers.get_mut(&key) else {
            return Ok(Reply::Done);
        };
        let Some(sub) = &entry.sub else {
            return Ok(Reply::Done);
        };
        entry.pull_generation += 1;
        if let Some(t) = entry.pull_timer.take() {
            t.abort();
        }
        let generation = entry.pull_generation;
        if sub.queue.pull(sub.consumer_id) {
            return Ok(Reply::Done);
        }
        match c.long("timeout") {
            // receiveNoWait: say "nothing" at once.
            t if t < 0 => {
                if sub.queue.cancel_pull(sub.consumer_id) {
                    let d = Struct::new(schema::MESSAGE_DISPATCH)
                        .with("consumerId", entry.ctx.id_value.clone());
                    self.send(d).await;
                }
            }
            // receive(), or a timeout too long to matter: wait as long as it takes.
            0 => {}
            t if t > 24 * 3600 * 1000 => {}
            t => {
                let internal = self.internal.clone();
                let timer = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(t as u64)).await;
                    let _ = internal.send(Internal::PullTimeout(key, generation)).await;
                });
                entry.pull_timer = Some(timer.abort_handle());
            }
        }
        Ok(Reply::Done)
    }

    async fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::PullTimeout(key, generation) => {
                let Some(entry) = self.consumers.get(&key) else {
                    return;
                };
                if entry.pull_generation != generation {
                    return; // a later pull replaced this one
                }
                if let Some(sub) = &entry.sub {
                    if sub.queue.cancel_pull(sub.consumer_id) {
                        let d = Struct::new(schema::MESSAGE_DISPATCH)
                            .with("consumerId", entry.ctx.id_value.clone());
                        self.send(d).await;
                    }
                }
            }
        }
    }

    fn on_remove(&mut self, c: &Struct) -> Result<Reply, JmsError> {
        let Some(object) = c.obj("objectId") else {
            return Ok(Reply::Done);
        };
        // Absent before OpenWire 5: unknown, as ActiveMQ's default.
        let last_delivered = match c.get("lastDeliveredSequenceId") {
            Value::Long(v) => *v,
            _ => -2,
        };
        match object.type_id {
            schema::CONSUMER_ID => {
                let key = id_string(object);
                match self.consumers.remove(&key) {
                    Some(entry) => {
                        self.end_consumer(entry, Reported::from_remove(last_delivered), false);
                        Ok(Reply::Done)
                    }
                    None => Err(JmsError::jms(format!(
                        "Cannot remove a consumer that had not been registered: {key}"
                    ))),
                }
            }
            schema::PRODUCER_ID => {
                self.producers.remove(&id_string(object));
                Ok(Reply::Done)
            }
            schema::SESSION_ID => {
                let session = object.long("value");
                let keys: Vec<String> = self
                    .consumers
                    .iter()
                    .filter(|(_, e)| e.session == session)
                    .map(|(k, _)| k.clone())
                    .collect();
                // The client reports the last message its consumers handed to
                // the application, across all of them (see `Reported`).
                let reported = Reported::from_remove(last_delivered);
                for k in keys {
                    if let Some(e) = self.consumers.remove(&k) {
                        self.end_consumer(e, reported, false);
                    }
                }
                // The Java client closes a session's producers without a
                // RemoveInfo of their own.
                self.producers.retain(|_, (s, _)| *s != session);
                self.sessions.remove(&session);
                Ok(Reply::Done)
            }
            schema::CONNECTION_ID => {
                // The client still sends ShutdownInfo and closes the socket
                // itself. Its sessions were not removed one by one: this
                // reports the last delivered message over all of them.
                self.release_reported(false, Reported::from_remove(last_delivered));
                Ok(Reply::Done)
            }
            _ => Ok(Reply::Done),
        }
    }

    /// Ends a consumer. Its unacknowledged messages go back; those the client
    /// handed to the application come back flagged redelivered.
    fn end_consumer(&mut self, entry: ConsumerEntry, reported: Reported, dropped: bool) {
        let written = {
            let mut w = entry.ctx.write_state();
            w.closed = true;
            w.last_written
        };
        self.outbox
            .remove_where(|(ctx, _)| Arc::ptr_eq(ctx, &entry.ctx));
        if let Some(sub) = &entry.sub {
            let delivered = match reported {
                // Only the consumer the number belongs to: for the others of
                // a session it says nothing (as in ActiveMQ, where it matches
                // one consumer's message).
                Reported::Upto(r) if r >> SEQ_BITS == entry.ctx.tag => {
                    seq_of_wire(r as i64).min(written).max(entry.delivered_upto)
                }
                Reported::Upto(_) => entry.delivered_upto,
                // Like ActiveMQ, count everything that reached the socket as
                // delivered when the client did not say (or the connection
                // dropped).
                Reported::Unknown => written,
                Reported::Nothing if dropped => written,
                Reported::Nothing => entry.delivered_upto,
            };
            self.broker.unsubscribe(sub, delivered, false);
        }
    }

    async fn on_transaction(&mut self, c: &Struct) -> Result<Reply, JmsError> {
        let key = c
            .obj("transactionId")
            .map(tx_key)
            .ok_or_else(|| JmsError::jms("TransactionInfo without a transaction id"))?;
        let missing = |key: &str| {
            JmsError::new(
                "javax.jms.IllegalStateException",
                format!("Transaction '{key}' has not been started."),
            )
        };
        match c.byte("type") {
            tx_type::BEGIN => {
                if self.txs.len() >= MAX_TRANSACTIONS && !self.txs.contains_key(&key) {
                    return Err(JmsError::new(
                        "javax.jms.ResourceAllocationException",
                        format!("Too many open transactions on this connection (limit {MAX_TRANSACTIONS})"),
                    ));
                }
                self.txs.entry(key).or_default();
                Ok(Reply::Done)
            }
            tx_type::COMMIT_ONE_PHASE | tx_type::COMMIT_TWO_PHASE => {
                let t = self.txs.remove(&key).ok_or_else(|| missing(&key))?;
                if let Some(cause) = &t.rollback_only {
                    let e = rolled_back(cause);
                    t.rollback();
                    return Err(e);
                }
                let full = self.broker.commit(t).await.map_err(|e| {
                    JmsError::new("javax.jms.TransactionRolledBackException", e.to_string())
                })?;
                for q in full {
                    q.wait_for_space().await;
                }
                Ok(Reply::Done)
            }
            tx_type::ROLLBACK => {
                let t = self.txs.remove(&key).ok_or_else(|| missing(&key))?;
                t.rollback();
                Ok(Reply::Done)
            }
            tx_type::PREPARE => {
                match self.txs.get(&key) {
                    None => return Err(missing(&key)),
                    Some(t) if t.rollback_only.is_some() => {
                        let t = self.txs.remove(&key).expect("just found");
                        let e = rolled_back(t.rollback_only.as_deref().unwrap_or_default());
                        t.rollback();
                        return Err(e);
                    }
                    Some(_) => {}
                }
                Ok(Reply::With(
                    Struct::new(schema::INTEGER_RESPONSE).with("result", Value::Int(0)),
                ))
            }
            tx_type::RECOVER => Ok(Reply::With(
                Struct::new(schema::DATA_ARRAY_RESPONSE).with("data", Value::Arr(Vec::new())),
            )),
            tx_type::END | tx_type::FORGET => Ok(Reply::Done),
            other => Err(JmsError::jms(format!(
                "Unknown transaction operation {other}"
            ))),
        }
    }

    fn on_destination_info(&mut self, c: &Struct) -> Result<Reply, JmsError> {
        let Some(destination) = c.obj("destination").and_then(destination_from) else {
            return Err(JmsError::new(
                "javax.jms.InvalidDestinationException",
                "DestinationInfo without a destination",
            ));
        };
        let add = c.byte("operationType") == 0;
        // Creating or removing a destination is an admin's (removing one
        // that does not exist is not checked, as in ActiveMQ).
        if destination.kind.is_temporary() || add != self.broker.exists(&destination) {
            self.allow(&destination, Access::Admin)?;
        }
        if destination.kind.is_temporary() {
            if add {
                if self.temps >= MAX_TEMPS && !self.broker.owns_temp(&destination, self.connection)
                {
                    return Err(JmsError::new(
                        "javax.jms.ResourceAllocationException",
                        format!("A connection may have at most {MAX_TEMPS} temporary destinations"),
                    ));
                }
                let conn = self.connection_id.clone().unwrap_or_default();
                if self
                    .broker
                    .create_temp(&destination, self.connection, &conn)?
                {
                    self.temps += 1;
                }
            } else {
                self.broker.delete_temp(&destination, self.connection)?;
                self.temps = self.temps.saturating_sub(1);
                self.targets.remove(&destination);
            }
        } else if add {
            self.broker.target(&destination);
        } else if destination.kind == crate::broker::destination::DestinationKind::Queue {
            self.broker.delete_queue(&destination)?;
            self.targets.remove(&destination);
        } else {
            self.broker.delete_topic(&destination)?;
            self.targets.remove(&destination);
        }
        Ok(Reply::Done)
    }

    /// Ends the connection's business with the core: transactions roll back,
    /// consumers end, temporary destinations go, the client id is released.
    /// `dropped` when the socket went without the client saying goodbye.
    fn release(&mut self, dropped: bool) {
        self.release_reported(dropped, Reported::Nothing);
    }

    fn release_reported(&mut self, dropped: bool, reported: Reported) {
        for (_, t) in self.txs.drain() {
            t.rollback();
        }
        let entries: Vec<ConsumerEntry> = self.consumers.drain().map(|(_, e)| e).collect();
        for e in entries {
            self.end_consumer(e, reported, dropped);
        }
        self.broker.delete_temps_of(self.connection);
        if let Some(id) = self.client_id.take() {
            self.broker.release_client_id(&id, self.connection);
        }
        self.connection_id = None;
    }

    /// The connection is over: release everything, stop deliveries.
    fn close(&mut self) {
        let dropped = !self.shutdown_requested;
        self.release(dropped);
        self.outbox.close();
        self.parked.abort_all();
        self.parked_acks.abort_all();
    }
}

/// What a RemoveInfo says about the messages the client handed to the
/// application (`lastDeliveredSequenceId`), for the consumers it ends.
///
/// For one consumer the report is exact. For a session or a connection the
/// client sends the highest over its consumers: it applies to the consumer
/// it belongs to (its tag, see [`wire_seq`]); the others' messages come back
/// as their acknowledgements left them, as in ActiveMQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reported {
    /// Delivered up to this sequence number.
    Upto(u64),
    /// Nothing delivered (-1: `LAST_DELIVERED_UNSET`).
    Nothing,
    /// Not known (-2: `LAST_DELIVERED_UNKNOWN`): everything that reached the
    /// client counts as delivered, as in ActiveMQ.
    Unknown,
}

impl Reported {
    fn from_remove(last_delivered: i64) -> Self {
        match last_delivered {
            n if n >= 0 => Reported::Upto(n as u64),
            -1 => Reported::Nothing,
            _ => Reported::Unknown,
        }
    }
}

/// If the session task ends abnormally (a panic), the connection's business
/// with the core still ends: nothing stays registered or in flight.
impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

fn connection_id_value(id: &str) -> Value {
    Value::obj(Struct::new(schema::CONNECTION_ID).with("value", Value::str(id)))
}

/// The refusal of a command that comes before the ConnectionInfo.
fn not_registered() -> JmsError {
    JmsError::new(
        "java.lang.IllegalStateException",
        "Cannot process a command before the connection is registered (ConnectionInfo)",
    )
}

/// A transaction id as a map key.
fn tx_key(tx: &Struct) -> String {
    match tx.type_id {
        schema::LOCAL_TRANSACTION_ID => {
            let conn = tx
                .obj("connectionId")
                .and_then(|c| c.str("value"))
                .unwrap_or_default();
            format!("TX:{conn}:{}", tx.long("value"))
        }
        _ => format!("XID:{:?}", tx.fields),
    }
}

const WRITE_BATCH: usize = 256;
/// Per-connection caps, so that one client cannot grow the broker's memory
/// without bound.
const MAX_CONSUMERS: usize = 10_000;
const MAX_TRANSACTIONS: usize = 1024;
const MAX_SESSIONS: usize = 10_000;
const MAX_TEMPS: usize = 1024;
/// Synchronous sends whose Response waits for room, per connection.
const MAX_PARKED: usize = 1024;
/// ProducerAcks of windowed producers waiting for room at a time, per
/// connection (a 1 MiB window of 1 KiB messages is a thousand of them).
const MAX_PARKED_ACKS: usize = 4096;

/// The writer task: sends our WireFormatInfo at once, then every frame the
/// session queues and every delivery the core dispatches.
async fn writer(
    mut sock: OwnedWriteHalf,
    ours: WireFormatInfo,
    mut control: mpsc::Receiver<Ctl>,
    outbox: Arc<Outbox<Out>>,
    token: CancellationToken,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    if encode_wire_format_info(&ours, &mut buf).is_err() || sock.write_all(&buf).await.is_err() {
        token.cancel();
        return;
    }
    buf.clear();
    let mut frames: Option<FrameWriter> = None;
    let mut batch: Vec<Out> = Vec::with_capacity(WRITE_BATCH);
    let mut keep_alive: Option<tokio::time::Interval> = None;
    let mut keep_alive_period = Duration::ZERO;
    let mut last_write = Instant::now();
    let mut control_open = true;
    let keep_alive_frame = Struct::new(schema::KEEP_ALIVE_INFO);
    let mut memo = ValueMemo::default();
    // Made once: a cancellation future registers itself when polled.
    let cancelled = token.cancelled();
    tokio::pin!(cancelled);
    loop {
        if outbox.is_empty() || frames.is_none() {
            tokio::select! {
                biased;
                ctl = control.recv(), if control_open => match ctl {
                    Some(ctl) => {
                        if !handle_ctl(ctl, &mut frames, &mut buf, &mut keep_alive, &mut keep_alive_period) {
                            token.cancel();
                            return;
                        }
                    }
                    None => control_open = false,
                },
                _ = outbox.ready(), if frames.is_some() => {}
                _ = async { keep_alive.as_mut().expect("guarded").tick().await }, if keep_alive.is_some() => {
                    if last_write.elapsed() >= keep_alive_period.mul_f64(0.9) {
                        if let Some(f) = frames.as_mut() {
                            let _ = f.encode(&keep_alive_frame, &mut buf);
                        }
                    }
                }
                _ = &mut cancelled, if control_open => control.close(),
            }
        }
        if !control_open && buf.is_empty() && (outbox.is_empty() || frames.is_none()) {
            break;
        }
        while buf.len() < 256 * 1024 {
            match control.try_recv() {
                Ok(ctl) => {
                    if !handle_ctl(
                        ctl,
                        &mut frames,
                        &mut buf,
                        &mut keep_alive,
                        &mut keep_alive_period,
                    ) {
                        token.cancel();
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        if let Some(f) = frames.as_mut() {
            outbox.drain_into(&mut batch, WRITE_BATCH);
            let now = now_millis();
            for (ctx, delivery) in batch.drain(..) {
                {
                    let mut w = ctx.write_state();
                    if w.closed {
                        continue;
                    }
                    w.last_written = delivery.seq;
                }
                if let Err(e) = convert::encode_delivery(
                    f,
                    &ctx.id_value,
                    &delivery.message,
                    delivery.redelivery_count,
                    delivery.group_first,
                    wire_seq(ctx.tag, delivery.seq),
                    now,
                    &mut memo,
                    &mut buf,
                ) {
                    // The marshalling cache may now disagree with the
                    // client's: the connection cannot go on.
                    warn!(error = %e, "cannot encode a dispatch; closing the connection");
                    token.cancel();
                    return;
                }
                if buf.len() >= 256 * 1024 {
                    if sock.write_all(&buf).await.is_err() {
                        token.cancel();
                        return;
                    }
                    buf.clear();
                }
            }
        }
        if !buf.is_empty() {
            if sock.write_all(&buf).await.is_err() {
                token.cancel();
                return;
            }
            buf.clear();
            last_write = Instant::now();
        }
    }
    let _ = sock.shutdown().await;
}

/// Applies a session request; false when the connection cannot go on.
fn handle_ctl(
    ctl: Ctl,
    frames: &mut Option<FrameWriter>,
    buf: &mut Vec<u8>,
    keep_alive: &mut Option<tokio::time::Interval>,
    keep_alive_period: &mut Duration,
) -> bool {
    match ctl {
        Ctl::Negotiated(n) => {
            *frames = Some(FrameWriter::new(n.format));
            if n.max_inactivity_ms > 0 {
                let period = Duration::from_millis((n.max_inactivity_ms / 3).max(1) as u64);
                let start = Instant::now()
                    + Duration::from_millis(n.initial_delay_ms.max(0) as u64).min(period);
                let mut i = tokio::time::interval_at(start, period);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                *keep_alive = Some(i);
                *keep_alive_period = period;
            }
        }
        Ctl::Frame(s) => match frames.as_mut() {
            Some(f) => {
                if let Err(e) = f.encode(&s, buf) {
                    warn!(error = %e, command = schema::type_name(s.type_id), "cannot encode a command");
                    return false;
                }
            }
            None => warn!(
                command = schema::type_name(s.type_id),
                "frame before negotiation dropped"
            ),
        },
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_sequence_ids_carry_the_consumer_tag() {
        for tag in [0, 1, 77, TAG_MASK] {
            for seq in [1, 2, 1 << 20, SEQ_MASK] {
                let wire = wire_seq(tag, seq);
                assert!(
                    (wire as i64) > 0,
                    "a positive Java long: {tag} {seq} {wire}"
                );
                assert_eq!(wire >> SEQ_BITS, tag);
                assert_eq!(seq_of_wire(wire as i64), seq);
            }
        }
        // Two consumers' same delivery numbers differ on the wire.
        assert_ne!(wire_seq(1, 5), wire_seq(2, 5));
        assert_eq!(seq_of_wire(-1), 0);
        assert_eq!(Reported::from_remove(-1), Reported::Nothing);
        assert_eq!(Reported::from_remove(-2), Reported::Unknown);
        assert_eq!(
            Reported::from_remove(wire_seq(3, 9) as i64),
            Reported::Upto(wire_seq(3, 9))
        );
    }
}
