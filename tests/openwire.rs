//! OpenWire over real sockets, driven by a minimal client built on the
//! project's codec: the handshake, inactivity monitoring, and bad input.
//! (The stock JMS client's behaviour is covered by tests/interop/java.)

mod common;

use bytes::BytesMut;
use common::{TestBroker, WAIT};
use ferromq::openwire::codec::{
    encode_wire_format_info, negotiate, FrameWriter, OpenWireCodec, WireFormatInfo,
};
use ferromq::openwire::primitive_map::MapValue;
use ferromq::openwire::schema;
use ferromq::openwire::value::{Struct, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

struct OwClient {
    stream: TcpStream,
    codec: OpenWireCodec,
    writer: FrameWriter,
    buf: BytesMut,
    next_command: i32,
    broker_info: Struct,
}

fn client_proposal(max_inactivity: i64) -> WireFormatInfo {
    let mut w = WireFormatInfo::broker_proposal(u64::MAX, max_inactivity);
    w.properties
        .push(("Host".into(), MapValue::String("127.0.0.1".into())));
    w
}

fn id(type_id: u8, fields: &[(&str, Value)]) -> Value {
    let mut s = Struct::new(type_id);
    for (k, v) in fields {
        s.set(k, v.clone());
    }
    Value::obj(s)
}

const CONN: &str = "ID:test-1-1-1:1";

impl OwClient {
    async fn connect(addr: SocketAddr, max_inactivity: i64) -> OwClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let ours = client_proposal(max_inactivity);
        let mut out = Vec::new();
        encode_wire_format_info(&ours, &mut out).unwrap();
        stream.write_all(&out).await.unwrap();
        let mut codec = OpenWireCodec::new(u64::MAX);
        let mut buf = BytesMut::new();
        let theirs = loop {
            if let Some(s) = codec.decode(&mut buf).unwrap() {
                break WireFormatInfo::from_struct(&s).unwrap();
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

    async fn send(&mut self, mut s: Struct) -> i32 {
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

    async fn recv_within(&mut self, timeout: Duration) -> Option<Struct> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(s);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    async fn recv(&mut self) -> Option<Struct> {
        self.recv_within(WAIT).await
    }

    /// Receives until a frame of `type_id` arrives (skipping keep-alives and the like).
    async fn expect(&mut self, type_id: u8) -> Struct {
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

    async fn closed_within(&mut self, timeout: Duration) -> bool {
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

    async fn register(&mut self) {
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

    async fn consume(&mut self, queue: &str, prefetch: i32) {
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

#[tokio::test]
async fn handshake_broker_info_and_connection_registration() {
    let b = TestBroker::start().await;
    let mut c = OwClient::connect(b.auto, 30_000).await;
    assert_eq!(c.broker_info.str("brokerName"), Some("localhost"));
    assert!(c
        .broker_info
        .str("brokerURL")
        .unwrap()
        .starts_with("tcp://127.0.0.1:"));
    // A command before ConnectionInfo is refused with an ExceptionResponse.
    let early = Struct::new(schema::PRODUCER_INFO).with("responseRequired", Value::Bool(true));
    let cid = c.send(early).await;
    let r = c.expect(schema::EXCEPTION_RESPONSE).await;
    assert_eq!(r.int("correlationId"), cid);
    c.register().await;
    assert_eq!(
        c.expect(schema::CONNECTION_CONTROL).await.type_id,
        schema::CONNECTION_CONTROL
    );
    // KeepAliveInfo asking for a response is answered with a KeepAliveInfo.
    c.send(Struct::new(schema::KEEP_ALIVE_INFO).with("responseRequired", Value::Bool(true)))
        .await;
    c.expect(schema::KEEP_ALIVE_INFO).await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_and_its_messages_go_to_another_consumer() {
    let b = TestBroker::start().await;
    // A STOMP producer puts one message on the queue.
    let mut p = b.connect("1.2").await;
    p.send_text("/queue/idle", "kept", Some("r")).await;
    let mut c = OwClient::connect(b.auto, 600).await;
    c.register().await;
    c.consume("idle", 10).await;
    let d = c.expect(schema::MESSAGE_DISPATCH).await;
    assert!(d.obj("message").is_some());
    // The broker keeps the line alive while we stay silent...
    let started = Instant::now();
    c.expect(schema::KEEP_ALIVE_INFO).await;
    // ...and drops us for sending nothing.
    assert!(c.closed_within(Duration::from_secs(5)).await);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "dropped too early: {waited:?}"
    );
    // The message it never acknowledged goes to the next consumer, redelivered.
    let mut s = b.connect("1.2").await;
    s.subscribe("s", "/queue/idle", "auto", &[]).await;
    let m = s.expect_message().await;
    assert_eq!(common::body(&m), "kept");
    assert_eq!(m.header("redelivered").unwrap(), "true");
}

#[tokio::test]
async fn unknown_commands_and_oversize_frames_close_the_connection() {
    let b = TestBroker::start_with(|c| c.openwire.max_frame_size = 64 * 1024).await;
    let mut c = OwClient::connect(b.auto, 30_000).await;
    c.register().await;
    // Type 77 does not exist.
    c.stream.write_all(&[0, 0, 0, 2, 77, 0]).await.unwrap();
    let e = c.expect(schema::CONNECTION_ERROR).await;
    assert!(matches!(e.get("exception"), Value::Exc(_)));
    assert!(c.closed_within(WAIT).await);

    // A frame announcing 1 GiB is refused from its size prefix alone.
    let mut c = OwClient::connect(b.auto, 30_000).await;
    c.stream.write_all(&[0x40, 0, 0, 0, 28]).await.unwrap();
    assert!(c.closed_within(WAIT).await);
}

#[tokio::test]
async fn no_wire_format_info_in_time_closes() {
    let b = TestBroker::start_with(|c| c.openwire.handshake_timeout_ms = 300).await;
    let mut stream = TcpStream::connect(b.auto).await.unwrap();
    // Only the start of a WireFormatInfo.
    stream.write_all(&[0, 0, 1, 0x64, 1, b'A']).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => assert!(Instant::now() < deadline, "not closed"),
            Err(_) => panic!("not closed"),
        }
    }
}
