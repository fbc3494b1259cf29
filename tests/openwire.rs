//! OpenWire over real sockets, driven by a minimal client built on the
//! project's codec: the handshake, inactivity monitoring, and bad input.
//! (The stock JMS client's behaviour is covered by tests/interop/java.)

mod common;

use common::ow::OwClient;
use common::{TestBroker, WAIT};
use ferromq::openwire::schema;
use ferromq::openwire::value::{Struct, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A ConnectionInfo asking for a response, without a client id.
fn connection_info(conn: &str) -> Struct {
    Struct::new(schema::CONNECTION_INFO)
        .with("responseRequired", Value::Bool(true))
        .with(
            "connectionId",
            common::ow::id(schema::CONNECTION_ID, &[("value", Value::str(conn))]),
        )
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
    // So is an acknowledgement (which the fast ack decoder takes).
    let early_ack = Struct::new(schema::MESSAGE_ACK)
        .with("responseRequired", Value::Bool(true))
        .with("ackType", Value::Byte(2))
        .with("messageCount", Value::Int(1));
    let cid = c.send(early_ack).await;
    let r = c.expect(schema::EXCEPTION_RESPONSE).await;
    assert_eq!(r.int("correlationId"), cid);
    assert!(format!("{:?}", r.get("exception")).contains("IllegalStateException"));
    c.register().await;
    assert_eq!(
        c.expect(schema::CONNECTION_CONTROL).await.type_id,
        schema::CONNECTION_CONTROL
    );
    // KeepAliveInfo asking for a response is answered with a KeepAliveInfo.
    c.send(Struct::new(schema::KEEP_ALIVE_INFO).with("responseRequired", Value::Bool(true)))
        .await;
    c.expect(schema::KEEP_ALIVE_INFO).await;
    // A second connection on the same socket is refused; its client id is
    // not taken (another connection may have it).
    let cid = c
        .send(connection_info("ID:other-1").with("clientId", Value::str("second-client")))
        .await;
    let r = c.expect(schema::EXCEPTION_RESPONSE).await;
    assert_eq!(r.int("correlationId"), cid);
    let mut other = OwClient::connect(b.auto, 30_000).await;
    let cid = other
        .send(connection_info("ID:other-2").with("clientId", Value::str("second-client")))
        .await;
    assert_eq!(
        other.expect(schema::RESPONSE).await.int("correlationId"),
        cid
    );
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

/// A temporary destination belongs to the connection that made it: another
/// may neither take its name nor delete it.
#[tokio::test]
async fn another_connection_cannot_take_or_delete_a_temporary_destination() {
    let b = TestBroker::start().await;
    let temp = || {
        common::ow::id(
            schema::ACTIVEMQ_TEMP_QUEUE,
            &[("physicalName", Value::str("ID:owner-1:1:1"))],
        )
    };
    let info = |op: i8| {
        Struct::new(schema::DESTINATION_INFO)
            .with("responseRequired", Value::Bool(true))
            .with("destination", temp())
            .with("operationType", Value::Byte(op))
    };
    let mut owner = OwClient::connect(b.auto, 30_000).await;
    let mut other = OwClient::connect(b.auto, 30_000).await;
    for (c, conn) in [(&mut owner, "ID:owner-1"), (&mut other, "ID:other-1")] {
        let cid = c.send(connection_info(conn)).await;
        assert_eq!(c.expect(schema::RESPONSE).await.int("correlationId"), cid);
    }
    let cid = owner.send(info(0)).await;
    assert_eq!(
        owner.expect(schema::RESPONSE).await.int("correlationId"),
        cid
    );
    for op in [0, 1] {
        let cid = other.send(info(op)).await;
        let r = other.expect(schema::EXCEPTION_RESPONSE).await;
        assert_eq!(r.int("correlationId"), cid, "operation {op}");
    }
    let cid = owner.send(info(1)).await;
    assert_eq!(
        owner.expect(schema::RESPONSE).await.int("correlationId"),
        cid
    );
    // Gone: now the name is free for anyone.
    let cid = other.send(info(0)).await;
    assert_eq!(
        other.expect(schema::RESPONSE).await.int("correlationId"),
        cid
    );
}

/// Synchronous sends past a destination's memory limit wait for room
/// (their Responses are held back); a client that pipelines them cannot pile
/// up more than a bounded number before the broker stops reading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_synchronous_sends_past_the_memory_limit_are_bounded() {
    use ferromq::broker::destination::Destination;
    use ferromq::broker::message::{BodyKind, Message, MessageId};
    use ferromq::openwire::convert::message_to_struct;
    let b = TestBroker::start_with(|c| c.limits.destination_memory_limit = 64 * 1024).await;
    let mut c = OwClient::connect(b.auto, 30_000).await;
    c.register().await;
    let sender = tokio::spawn(async move {
        for seq in 0..1500u64 {
            let m = Message::new(
                MessageId {
                    producer: std::sync::Arc::from(format!("{}:1:1", common::ow::CONN)),
                    seq,
                },
                Destination::queue("pipelined"),
                BodyKind::Text,
                bytes::Bytes::from(vec![b'p'; 1024]),
            );
            let s = message_to_struct(&m, 0, 0, 0, &mut Default::default())
                .with("responseRequired", Value::Bool(true));
            c.send(s).await; // not waiting for the Responses
        }
        c
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let queued = b.broker.queue("pipelined").pending_count();
    assert!(
        queued < 1200,
        "{queued} pipelined sends taken past the limit"
    );
    sender.abort();
}

/// A standard ack covers its range, from its first message id (ActiveMQ's
/// PrefetchSubscription): a message before it that the client holds back
/// (for a delayed redelivery) stays unacknowledged, and goes back to the
/// queue when the connection goes.
#[tokio::test]
async fn a_standard_ack_covers_only_its_range() {
    let b = TestBroker::start().await;
    let mut p = b.connect("1.2").await;
    for i in 0..3 {
        p.send_text("/queue/range", &format!("m{i}"), Some(&format!("r{i}")))
            .await;
    }
    let mut c = OwClient::connect(b.auto, 30_000).await;
    c.register().await;
    c.consume("range", 10).await;
    let mut dispatched = Vec::new();
    for _ in 0..3 {
        dispatched.push(c.expect(schema::MESSAGE_DISPATCH).await);
    }
    let second = &dispatched[1];
    let message_id = second.obj("message").unwrap().get("messageId").clone();
    let ack = Struct::new(schema::MESSAGE_ACK)
        .with("ackType", Value::Byte(2))
        .with("consumerId", second.get("consumerId").clone())
        .with("destination", second.get("destination").clone())
        .with("firstMessageId", message_id.clone())
        .with("lastMessageId", message_id)
        .with("messageCount", Value::Int(1))
        .with("responseRequired", Value::Bool(true));
    let cid = c.send(ack).await;
    assert_eq!(c.expect(schema::RESPONSE).await.int("correlationId"), cid);
    drop(c);
    let mut s = b.connect("1.2").await;
    s.subscribe("s", "/queue/range", "auto", &[]).await;
    let mut got = Vec::new();
    while let Some(f) = s.recv_within(Duration::from_millis(500)).await {
        got.push(String::from_utf8_lossy(&f.body).into_owned());
    }
    assert_eq!(got, ["m0", "m2"], "only m1 was acknowledged");
}
