//! A small asynchronous OpenWire client on the project's codec: enough of
//! what the ActiveMQ JMS client does for the load tools (handshake, a
//! connection with one session, producers, consumers, acks, transactions).

use crate::broker::destination::Destination;
use crate::broker::message::{BodyKind, Message, MessageId, PropValue};
use crate::openwire::codec::Inbound;
use crate::openwire::codec::{
    encode_wire_format_info, negotiate, FrameWriter, OpenWireCodec, WireFormatInfo,
};
use crate::openwire::convert::{
    destination_value, message_from_struct, message_to_struct, IdMemo, ValueMemo,
};
use crate::openwire::primitive_map::MapValue;
use crate::openwire::schema;
use crate::openwire::value::{Struct, Value};
use bytes::{Bytes, BytesMut};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

pub struct OpenWireClient {
    stream: TcpStream,
    codec: OpenWireCodec,
    writer: FrameWriter,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    next_command: i32,
    connection_id: String,
    producer_seq: i64,
    producer: Arc<str>,
    memo: ValueMemo,
    producers: IdMemo,
    tx_seq: i64,
    /// Commands that arrived while a request waited for its Response.
    backlog: std::collections::VecDeque<Struct>,
}

fn id(type_id: u8, fields: Vec<(&str, Value)>) -> Value {
    let mut s = Struct::new(type_id);
    for (k, v) in fields {
        s.set(k, v);
    }
    Value::obj(s)
}

/// A dispatched message, with what acknowledging it needs.
pub struct Received {
    pub message: Message,
    pub consumer: Value,
    pub destination: Value,
    pub message_id: Value,
}

impl OpenWireClient {
    pub async fn connect(
        addr: &str,
        client_id: Option<&str>,
        login: Option<(&str, &str)>,
    ) -> io::Result<OpenWireClient> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut ours = WireFormatInfo::broker_proposal(u64::MAX, 0);
        ours.properties
            .push(("Host".into(), MapValue::String("localhost".into())));
        let mut out = Vec::new();
        encode_wire_format_info(&ours, &mut out).map_err(|e| err(e.to_string()))?;
        stream.write_all(&out).await?;
        let mut codec = OpenWireCodec::new(u64::MAX);
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let theirs = loop {
            if let Some(s) = codec.decode(&mut rbuf).map_err(|e| err(e.to_string()))? {
                let s = s.into_struct().ok_or_else(|| err("not a WireFormatInfo"))?;
                break WireFormatInfo::from_struct(&s).map_err(|e| err(e.to_string()))?;
            }
            if stream.read_buf(&mut rbuf).await? == 0 {
                return Err(err("closed during the handshake"));
            }
        };
        let n = negotiate(&ours, &theirs).map_err(|e| err(e.to_string()))?;
        codec.negotiated(&n);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let connection_id = format!("ID:ferromq-load-{}-{stamp}-1:1", std::process::id());
        let mut c = OpenWireClient {
            stream,
            codec,
            writer: FrameWriter::new(n.format),
            rbuf,
            wbuf: Vec::with_capacity(64 * 1024),
            next_command: 1,
            producer: Arc::from(format!("{connection_id}:1:1")),
            memo: ValueMemo::default(),
            producers: IdMemo::default(),
            connection_id,
            producer_seq: 0,
            tx_seq: 0,
            backlog: std::collections::VecDeque::new(),
        };
        let info = Struct::new(schema::CONNECTION_INFO)
            .with(
                "connectionId",
                id(
                    schema::CONNECTION_ID,
                    vec![("value", Value::str(c.connection_id.clone()))],
                ),
            )
            .with(
                "clientId",
                Value::str(
                    client_id
                        .map(str::to_string)
                        .unwrap_or_else(|| c.connection_id.clone()),
                ),
            )
            .with("manageable", Value::Bool(false));
        let info = match login {
            Some((user, password)) => info
                .with("userName", Value::str(user))
                .with("password", Value::str(password)),
            None => info,
        };
        c.request(info).await?;
        let session = Struct::new(schema::SESSION_INFO).with("sessionId", c.session_id());
        c.oneway(session).await?;
        Ok(c)
    }

    fn session_id(&self) -> Value {
        id(
            schema::SESSION_ID,
            vec![
                ("connectionId", Value::str(self.connection_id.clone())),
                ("value", Value::Long(1)),
            ],
        )
    }

    fn producer_id(&self) -> Value {
        id(
            schema::PRODUCER_ID,
            vec![
                ("connectionId", Value::str(self.connection_id.clone())),
                ("value", Value::Long(1)),
                ("sessionId", Value::Long(1)),
            ],
        )
    }

    fn consumer_id(&self, n: i64) -> Value {
        id(
            schema::CONSUMER_ID,
            vec![
                ("connectionId", Value::str(self.connection_id.clone())),
                ("sessionId", Value::Long(1)),
                ("value", Value::Long(n)),
            ],
        )
    }

    fn encode(&mut self, mut s: Struct, response: bool) -> io::Result<i32> {
        let cid = self.next_command;
        self.next_command += 1;
        s.fields[0] = Value::Int(cid);
        s.fields[1] = Value::Bool(response);
        self.writer
            .encode(&s, &mut self.wbuf)
            .map_err(|e| err(e.to_string()))?;
        Ok(cid)
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    async fn oneway(&mut self, s: Struct) -> io::Result<()> {
        self.encode(s, false)?;
        self.flush().await
    }

    /// Sends a command and waits for its Response; what arrives in between
    /// (dispatches) is kept for `next`.
    async fn request(&mut self, s: Struct) -> io::Result<()> {
        let cid = self.encode(s, true)?;
        self.flush().await?;
        loop {
            let r = self.read_command().await?;
            match r.type_id {
                schema::RESPONSE if r.int("correlationId") == cid => return Ok(()),
                schema::EXCEPTION_RESPONSE if r.int("correlationId") == cid => {
                    let text = match r.get("exception") {
                        Value::Exc(t) => format!(
                            "{}: {}",
                            t.class.clone().unwrap_or_default(),
                            t.message.clone().unwrap_or_default()
                        ),
                        _ => "error".into(),
                    };
                    return Err(err(text));
                }
                _ => self.backlog.push_back(r),
            }
        }
    }

    /// The next command from the broker (keep-alives skipped).
    pub async fn next(&mut self) -> io::Result<Struct> {
        if let Some(s) = self.backlog.pop_front() {
            return Ok(s);
        }
        self.read_command().await
    }

    async fn read_command(&mut self) -> io::Result<Struct> {
        loop {
            // The codec's fast paths are off: every frame is a structure.
            if let Some(s) = self
                .codec
                .decode(&mut self.rbuf)
                .map_err(|e| err(e.to_string()))?
                .and_then(Inbound::into_struct)
            {
                if s.type_id == schema::KEEP_ALIVE_INFO {
                    continue;
                }
                return Ok(s);
            }
            // Nothing whole buffered: what we owe the broker (acks) goes
            // out before waiting for it.
            self.flush().await?;
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
        }
    }

    pub async fn create_producer(&mut self, destination: &Destination) -> io::Result<()> {
        let info = Struct::new(schema::PRODUCER_INFO)
            .with("producerId", self.producer_id())
            .with("destination", destination_value(destination));
        self.request(info).await
    }

    pub async fn begin(&mut self) -> io::Result<Value> {
        self.tx_seq += 1;
        let tx = id(
            schema::LOCAL_TRANSACTION_ID,
            vec![
                ("value", Value::Long(self.tx_seq)),
                (
                    "connectionId",
                    id(
                        schema::CONNECTION_ID,
                        vec![("value", Value::str(self.connection_id.clone()))],
                    ),
                ),
            ],
        );
        let info = self.tx_info(&tx, 0);
        self.oneway(info).await?;
        Ok(tx)
    }

    fn tx_info(&self, tx: &Value, kind: i8) -> Struct {
        Struct::new(schema::TRANSACTION_INFO)
            .with(
                "connectionId",
                id(
                    schema::CONNECTION_ID,
                    vec![("value", Value::str(self.connection_id.clone()))],
                ),
            )
            .with("transactionId", tx.clone())
            .with("type", Value::Byte(kind))
    }

    pub async fn commit(&mut self, tx: &Value) -> io::Result<()> {
        let info = self.tx_info(tx, 2);
        self.request(info).await
    }

    /// Sends a message: synchronously (waiting for the Response) when
    /// persistent outside a transaction, as the JMS client does.
    pub async fn send(
        &mut self,
        destination: &Destination,
        body: Bytes,
        persistent: bool,
        properties: Vec<(&'static str, PropValue)>,
        tx: Option<&Value>,
    ) -> io::Result<()> {
        self.producer_seq += 1;
        let mut m = Message::new(
            MessageId {
                producer: self.producer.clone(),
                seq: self.producer_seq as u64,
            },
            destination.clone(),
            BodyKind::Bytes,
            body,
        );
        m.persistent = persistent;
        m.properties = properties.into_iter().map(|(k, v)| (k.into(), v)).collect();
        let mut s = message_to_struct(&m, 0, 0, m.timestamp, &mut self.memo);
        s.set("brokerInTime", Value::Long(0))
            .set("brokerOutTime", Value::Long(0));
        if let Some(tx) = tx {
            s.set("transactionId", tx.clone());
        }
        if persistent && tx.is_none() {
            self.request(s).await
        } else {
            self.encode(s, false)?;
            if self.wbuf.len() > 32 * 1024 {
                self.flush().await?;
            }
            Ok(())
        }
    }

    pub async fn subscribe(
        &mut self,
        n: i64,
        destination: &Destination,
        prefetch: i32,
    ) -> io::Result<Value> {
        let consumer = self.consumer_id(n);
        let info = Struct::new(schema::CONSUMER_INFO)
            .with("consumerId", consumer.clone())
            .with("destination", destination_value(destination))
            .with("prefetchSize", Value::Int(prefetch))
            .with("dispatchAsync", Value::Bool(true));
        self.request(info).await?;
        Ok(consumer)
    }

    /// The next dispatched message.
    pub async fn receive(&mut self) -> io::Result<Received> {
        loop {
            let s = self.next().await?;
            if s.type_id != schema::MESSAGE_DISPATCH {
                continue;
            }
            let Some(m) = s.obj("message") else { continue };
            let message = message_from_struct(m, 0, &mut self.producers).map_err(|e| err(e.0))?;
            return Ok(Received {
                message,
                consumer: s.get("consumerId").clone(),
                destination: s.get("destination").clone(),
                message_id: m.get("messageId").clone(),
            });
        }
    }

    /// A standard (cumulative) acknowledgement up to `r`, counting `count`.
    pub async fn ack(&mut self, r: &Received, count: i32, tx: Option<&Value>) -> io::Result<()> {
        let mut ack = Struct::new(schema::MESSAGE_ACK)
            .with("destination", r.destination.clone())
            .with("consumerId", r.consumer.clone())
            .with("ackType", Value::Byte(2))
            .with("firstMessageId", r.message_id.clone())
            .with("lastMessageId", r.message_id.clone())
            .with("messageCount", Value::Int(count));
        if let Some(tx) = tx {
            ack.set("transactionId", tx.clone());
        }
        self.encode(ack, false)?;
        if self.wbuf.len() > 16 * 1024 {
            self.flush().await?;
        }
        Ok(())
    }

    pub async fn close(mut self) -> io::Result<()> {
        self.flush().await?;
        let remove = Struct::new(schema::REMOVE_INFO)
            .with(
                "objectId",
                id(
                    schema::CONNECTION_ID,
                    vec![("value", Value::str(self.connection_id.clone()))],
                ),
            )
            .with("lastDeliveredSequenceId", Value::Long(-1));
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.request(remove)).await;
        let _ = self.oneway(Struct::new(schema::SHUTDOWN_INFO)).await;
        Ok(())
    }
}
