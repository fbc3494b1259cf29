//! A minimal OpenWire client built on the project's codec, for tests.
#![allow(dead_code)]

use super::WAIT;
use bytes::BytesMut;
use ferromq::openwire::codec::{
    encode_wire_format_info, negotiate, FrameWriter, OpenWireCodec, WireFormatInfo,
};
use ferromq::openwire::primitive_map::MapValue;
use ferromq::openwire::schema;
use ferromq::openwire::value::{Struct, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

pub struct OwClient {
    pub stream: TcpStream,
    codec: OpenWireCodec,
    writer: FrameWriter,
    buf: BytesMut,
    next_command: i32,
    pub broker_info: Struct,
}

pub fn client_proposal(max_inactivity: i64) -> WireFormatInfo {
    let mut w = WireFormatInfo::broker_proposal(u64::MAX, max_inactivity);
    w.properties
        .push(("Host".into(), MapValue::String("127.0.0.1".into())));
    w
}

pub fn id(type_id: u8, fields: &[(&str, Value)]) -> Value {
    let mut s = Struct::new(type_id);
    for (k, v) in fields {
        s.set(k, v.clone());
    }
    Value::obj(s)
}

pub const CONN: &str = "ID:test-1-1-1:1";

impl OwClient {
    pub async fn connect(addr: SocketAddr, max_inactivity: i64) -> OwClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let ours = client_proposal(max_inactivity);
        let mut out = Vec::new();
        encode_wire_format_info(&ours, &mut out).unwrap();
        stream.write_all(&out).await.unwrap();
        let mut codec = OpenWireCodec::new(u64::MAX);
        let mut buf = BytesMut::new();
        let theirs = loop {
            if let Some(s) = codec.decode(&mut buf).unwrap() {
                break WireFormatInfo::from_struct(&s.into_struct().unwrap()).unwrap();
            }
            assert!(stream.read_buf(&mut buf).await.unwrap() > 0);
        };
        let n = negotiate(&ours, &theirs).unwrap();
        codec.negotiated(&n);
        let mut c = OwClient {
            stream,
            codec,
            writer: FrameWriter::new(n.format),
            buf,
            next_command: 1,
            broker_info: Struct::new(schema::BROKER_INFO),
        };
        c.broker_info = c.recv().await.expect("BrokerInfo");
        c
    }

    pub async fn send(&mut self, mut s: Struct) -> i32 {
        let id = self.next_command;
        self.next_command += 1;
        if s.is_command() {
            s.fields[0] = Value::Int(id);
        }
        let mut out = Vec::new();
        self.writer.encode(&s, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
        id
    }

    pub async fn recv_within(&mut self, timeout: Duration) -> Option<Struct> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.codec.decode(&mut self.buf).unwrap() {
                return s.into_struct(); // no fast paths: always a structure
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    pub async fn recv(&mut self) -> Option<Struct> {
        self.recv_within(WAIT).await
    }

    /// Receives until a frame of `type_id` arrives (skipping keep-alives and the like).
    pub async fn expect(&mut self, type_id: u8) -> Struct {
        loop {
            let s = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("no {}", schema::type_name(type_id)));
            if s.type_id == type_id {
                return s;
            }
        }
    }

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

    pub async fn register(&mut self) {
        let info = Struct::new(schema::CONNECTION_INFO)
            .with("responseRequired", Value::Bool(true))
            .with(
                "connectionId",
                id(schema::CONNECTION_ID, &[("value", Value::str(CONN))]),
            )
            .with(
                "clientId",
                Value::str(format!("client-{}", self.next_command)),
            )
            .with("manageable", Value::Bool(true));
        let cid = self.send(info).await;
        let r = self.expect(schema::RESPONSE).await;
        assert_eq!(r.int("correlationId"), cid);
        let session = Struct::new(schema::SESSION_INFO).with(
            "sessionId",
            id(
                schema::SESSION_ID,
                &[
                    ("connectionId", Value::str(CONN)),
                    ("value", Value::Long(1)),
                ],
            ),
        );
        self.send(session).await;
    }

    pub async fn consume(&mut self, queue: &str, prefetch: i32) {
        let info = Struct::new(schema::CONSUMER_INFO)
            .with("responseRequired", Value::Bool(true))
            .with(
                "consumerId",
                id(
                    schema::CONSUMER_ID,
                    &[
                        ("connectionId", Value::str(CONN)),
                        ("sessionId", Value::Long(1)),
                        ("value", Value::Long(1)),
                    ],
                ),
            )
            .with(
                "destination",
                id(
                    schema::ACTIVEMQ_QUEUE,
                    &[("physicalName", Value::str(queue))],
                ),
            )
            .with("prefetchSize", Value::Int(prefetch));
        let cid = self.send(info).await;
        assert_eq!(
            self.expect(schema::RESPONSE).await.int("correlationId"),
            cid
        );
    }
}

impl OwClient {
    /// Sends a persistent text message to a queue (synchronously, as the
    /// JMS client does) and waits for its Response.
    pub async fn send_text(&mut self, queue: &str, text: &str, seq: i64) {
        use ferromq::openwire::convert::message_to_struct;
        let mut m = ferromq::broker::message::Message::new(
            ferromq::broker::message::MessageId {
                producer: std::sync::Arc::from(format!("{CONN}:1:1")),
                seq: seq as u64,
            },
            ferromq::broker::destination::Destination::queue(queue),
            ferromq::broker::message::BodyKind::Text,
            bytes::Bytes::from(text.to_string()),
        );
        m.persistent = true;
        let mut s = message_to_struct(&m, 0, 0, 0, &mut Default::default());
        s.set("responseRequired", Value::Bool(true));
        let cid = self.send(s).await;
        let r = self.expect(schema::RESPONSE).await;
        assert_eq!(r.int("correlationId"), cid);
    }

    /// Receives the next MessageDispatch's message text (and acks it).
    pub async fn receive_text(&mut self) -> Option<String> {
        let d = loop {
            let s = self.recv().await?;
            if s.type_id == schema::MESSAGE_DISPATCH {
                break s;
            }
        };
        let m = d.obj("message")?;
        let core =
            ferromq::openwire::convert::message_from_struct(m, 0, &mut Default::default()).ok()?;
        let ack = Struct::new(schema::MESSAGE_ACK)
            .with("consumerId", d.get("consumerId").clone())
            .with("destination", d.get("destination").clone())
            .with("ackType", Value::Byte(2))
            .with("lastMessageId", m.get("messageId").clone())
            .with("messageCount", Value::Int(1));
        self.send(ack).await;
        Some(String::from_utf8_lossy(&core.body).into_owned())
    }
}
