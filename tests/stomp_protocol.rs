//! STOMP protocol behaviour over real sockets: negotiation, heart-beats,
//! escaping, receipts and every kind of bad input.

mod common;

use common::*;
use ferromq::stomp::frame::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn version_negotiation_and_connected_headers() {
    let b = TestBroker::start().await;
    for (offered, expected) in [
        ("1.0-legacy", "1.0"),
        ("1.0", "1.0"),
        ("1.1", "1.1"),
        ("1.0,1.1,1.2", "1.2"),
        ("1.2,1.1", "1.2"),
    ] {
        let c = Client::connect(b.stomp, offered, &[]).await;
        assert_eq!(
            c.connected.header("version").unwrap(),
            expected,
            "{offered}"
        );
        assert_eq!(c.connected.header("heart-beat").unwrap(), "0,0");
        assert!(c
            .connected
            .header("server")
            .unwrap()
            .starts_with("ferromq/"));
        assert!(c.connected.header("session").unwrap().starts_with("ID:"));
        c.disconnect().await;
    }
    // The STOMP command works like CONNECT; client-id becomes the session.
    let c = Client::connect(b.stomp, "1.2", &[("client-id", "me")]).await;
    assert_eq!(c.connected.header("session").unwrap(), "me");
    c.disconnect().await;
    let mut c = Client::raw(b.stomp).await;
    c.send_raw(b"STOMP\naccept-version:1.2\nhost:x\nreceipt:c1\n\n\0")
        .await;
    let f = c.recv().await;
    assert_eq!(f.command, Command::Connected);
    assert_eq!(f.header("receipt-id").unwrap(), "c1");
    b.stop().await;
}

#[tokio::test]
async fn unsupported_version_is_a_fatal_error() {
    let b = TestBroker::start().await;
    let mut c = Client::raw(b.stomp).await;
    c.send_raw(b"CONNECT\naccept-version:2.0,3.1\nhost:x\n\n\0")
        .await;
    let f = c.expect_error().await;
    assert!(
        f.header("message")
            .unwrap()
            .contains("Invalid Protocol version"),
        "{f:?}"
    );
    assert!(c.closed_within(WAIT).await);
}

#[tokio::test]
async fn duplicate_client_id_is_refused() {
    let b = TestBroker::start().await;
    let first = Client::connect(b.stomp, "1.2", &[("client-id", "dup")]).await;
    let mut c = Client::raw(b.stomp).await;
    c.send_raw(b"CONNECT\naccept-version:1.2\nhost:x\nclient-id:dup\n\n\0")
        .await;
    let f = c.expect_error().await;
    assert!(
        f.header("message").unwrap().contains("already connected"),
        "{f:?}"
    );
    assert!(c.closed_within(WAIT).await);
    first.disconnect().await;
    // Released on disconnect.
    let again = Client::connect(b.stomp, "1.2", &[("client-id", "dup")]).await;
    again.disconnect().await;
}

#[tokio::test]
async fn frames_before_connect() {
    let b = TestBroker::start().await;
    let mut c = Client::raw(b.stomp).await;
    c.send_raw(b"SEND\ndestination:/queue/x\nreceipt:r\n\nhi\0")
        .await;
    let f = c.expect_error().await;
    assert_eq!(f.header("message").unwrap(), "Not connected.");
    assert_eq!(f.header("receipt-id").unwrap(), "r");
    // Not fatal: CONNECT still works.
    c.send_raw(b"CONNECT\naccept-version:1.2\nhost:x\n\n\0")
        .await;
    assert_eq!(c.recv().await.command, Command::Connected);
}

#[tokio::test]
async fn no_connect_in_time_closes() {
    let b = TestBroker::start_with(|c| c.stomp.connect_timeout_ms = 300).await;
    let mut c = Client::raw(b.stomp).await;
    assert!(c.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn heart_beats_both_ways() {
    let b = TestBroker::start().await;
    // The client wants ours every 200 ms and sends none.
    let mut c = Client::connect(b.stomp, "1.2", &[("heart-beat", "0,200")]).await;
    assert_eq!(c.connected.header("heart-beat").unwrap(), "200,0");
    assert!(c.recv_within(Duration::from_millis(1100)).await.is_none());
    assert!(c.heart_beats >= 3, "only {} heart-beats", c.heart_beats);
    c.disconnect().await;

    // The client promises one every 200 ms: silence closes it, EOLs keep it alive.
    let mut c = Client::connect(b.stomp, "1.2", &[("heart-beat", "200,0")]).await;
    assert_eq!(c.connected.header("heart-beat").unwrap(), "0,200");
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.stream.write_all(b"\n").await.unwrap();
    }
    c.send_text("/queue/hb", "still here", Some("alive")).await;
    assert!(
        c.closed_within(Duration::from_secs(3)).await,
        "silent client must be dropped"
    );

    let bad = Client::raw(b.stomp).await;
    let mut bad = bad;
    bad.send_raw(b"CONNECT\naccept-version:1.2\nhost:x\nheart-beat:fast\n\n\0")
        .await;
    let f = bad.expect_error().await;
    assert!(f
        .header("message")
        .unwrap()
        .starts_with("Invalid heart-beat header"));
    assert!(bad.closed_within(WAIT).await);
}

#[tokio::test]
async fn header_escaping_per_version() {
    let b = TestBroker::start().await;
    for version in ["1.1", "1.2"] {
        let mut c = b.connect(version).await;
        let q = format!("/queue/esc-{version}");
        c.subscribe("s", &q, "auto", &[]).await;
        let value = if version == "1.2" {
            "a:b\nc\\d\re"
        } else {
            "a:b\nc\\d"
        };
        c.send(
            &frame(
                Command::Send,
                &[("destination", &q), ("weird", value), ("ütf", "✓ 你好")],
            )
            .with_body("x"),
        )
        .await;
        let m = c.expect_message().await;
        assert_eq!(m.header("weird").unwrap(), value, "{version}");
        assert_eq!(m.header("ütf").unwrap(), "✓ 你好");
        c.disconnect().await;
    }
    // 1.0: nothing is escaped, the raw bytes pass.
    let mut c = b.connect("1.0").await;
    c.subscribe("s", "/queue/esc-10", "auto", &[]).await;
    c.send_raw(b"SEND\ndestination:/queue/esc-10\nraw:a\\cb\n\nx\0")
        .await;
    let m = c.expect_message().await;
    assert_eq!(m.header("raw").unwrap(), "a\\cb");
    assert!(m.header("message-id").unwrap().contains(':'));
}

#[tokio::test]
async fn receipts_on_every_frame_and_crlf_frames() {
    let b = TestBroker::start().await;
    let mut c = b.connect("1.2").await;
    c.send_raw(
        b"SUBSCRIBE\r\nid:1\r\ndestination:/queue/r\r\nack:client\r\nreceipt:a\r\n\r\n\0\r\n",
    )
    .await;
    c.expect_receipt("a").await;
    c.send_raw(b"SEND\r\ndestination:/queue/r\r\nreceipt:b\r\n\r\nbody\0\r\n\r\n")
        .await;
    c.expect_receipt("b").await;
    let m = c.expect_message().await;
    assert_eq!(body(&m), "body");
    let ack = m.header("ack").unwrap().clone();
    for (cmd, headers) in [
        (
            Command::Begin,
            vec![("transaction", "t1"), ("receipt", "c")],
        ),
        (
            Command::Ack,
            vec![
                ("id", ack.as_str()),
                ("transaction", "t1"),
                ("receipt", "d"),
            ],
        ),
        (
            Command::Commit,
            vec![("transaction", "t1"), ("receipt", "e")],
        ),
        (
            Command::Begin,
            vec![("transaction", "t2"), ("receipt", "f")],
        ),
        (
            Command::Abort,
            vec![("transaction", "t2"), ("receipt", "g")],
        ),
        (Command::Unsubscribe, vec![("id", "1"), ("receipt", "h")]),
    ] {
        let r = headers.iter().find(|(k, _)| *k == "receipt").unwrap().1;
        c.send(&frame(cmd, &headers)).await;
        c.expect_receipt(r).await;
    }
    c.disconnect().await;
}

#[tokio::test]
async fn per_frame_errors_keep_the_connection() {
    let b = TestBroker::start().await;
    let mut c = b.connect("1.2").await;
    type Case<'a> = (Vec<(&'a str, &'a str)>, Command, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("receipt", "1")],
            Command::Send,
            "SEND received without a Destination specified!",
        ),
        (
            vec![("receipt", "2"), ("destination", "/queue/")],
            Command::Send,
            "non-empty name",
        ),
        (
            vec![("receipt", "3"), ("destination", "/queue/a")],
            Command::Subscribe,
            "SUBSCRIBE received without a subscription id!",
        ),
        (
            vec![("receipt", "4"), ("id", "x")],
            Command::Subscribe,
            "Destination",
        ),
        (
            vec![("receipt", "5"), ("id", "nope")],
            Command::Unsubscribe,
            "No subscription matched.",
        ),
        (
            vec![("receipt", "6")],
            Command::Ack,
            "ACK received without a ack id for acknowledge!",
        ),
        (
            vec![("receipt", "7"), ("id", "1-1")],
            Command::Nack,
            "Unexpected NACK received",
        ),
        (
            vec![("receipt", "8")],
            Command::Begin,
            "Must specify the transaction",
        ),
        (
            vec![("receipt", "9"), ("transaction", "zz")],
            Command::Commit,
            "Invalid transaction id: zz",
        ),
        (
            vec![("receipt", "10"), ("transaction", "zz")],
            Command::Abort,
            "Invalid transaction id",
        ),
        (
            vec![
                ("receipt", "11"),
                ("destination", "/queue/a"),
                ("transaction", "zz"),
            ],
            Command::Send,
            "Invalid transaction id",
        ),
        (
            vec![
                ("receipt", "12"),
                ("destination", "/queue/a"),
                ("priority", "high"),
            ],
            Command::Send,
            "priority",
        ),
        (
            vec![
                ("receipt", "13"),
                ("destination", "/queue/a"),
                ("id", "d"),
                ("activemq.subscriptionName", "n"),
            ],
            Command::Subscribe,
            "cannot durably subscribe to a Queue",
        ),
        (
            vec![("receipt", "15")],
            Command::Connect,
            "Already connected.",
        ),
    ];
    for (headers, cmd, text) in cases {
        let receipt = headers[0].1;
        c.send(&frame(cmd.clone(), &headers)).await;
        let f = c.expect_error().await;
        assert!(f.header("message").unwrap().contains(text), "{cmd}: {f:?}");
        assert_eq!(f.header("receipt-id").unwrap(), receipt, "{cmd}");
    }
    // Still usable.
    c.send_text("/queue/a", "fine", Some("ok")).await;
    c.send(&frame(Command::Begin, &[("transaction", "t")]))
        .await;
    c.send(&frame(
        Command::Begin,
        &[("transaction", "t"), ("receipt", "dup")],
    ))
    .await;
    let f = c.expect_error().await;
    assert!(f.header("message").unwrap().contains("already started"));
    c.disconnect().await;

    // NACK in 1.0 is refused.
    let mut c = b.connect("1.0").await;
    c.send(&frame(
        Command::Nack,
        &[("message-id", "x"), ("receipt", "n")],
    ))
    .await;
    assert!(c
        .expect_error()
        .await
        .header("message")
        .unwrap()
        .contains("v1.0"));
    c.disconnect().await;
}

#[tokio::test]
async fn framing_errors_are_fatal() {
    let b = TestBroker::start_with(|c| {
        c.stomp.max_header_length = 100;
        c.stomp.max_headers = 5;
        c.stomp.max_frame_size = 1000;
    })
    .await;
    let too_long_header = format!("SEND\ndestination:/queue/a\nh:{}\n\nx\0", "v".repeat(200));
    let too_many_headers = "SEND\na:1\nb:2\nc:3\nd:4\ne:5\nf:6\ng:7\n\nx\0".to_string();
    let too_big = format!("SEND\ndestination:/queue/a\n\n{}\0", "x".repeat(2000));
    let too_big_cl = "SEND\ndestination:/queue/a\ncontent-length:5000\n\n".to_string();
    let bad_cl = "SEND\ndestination:/queue/a\ncontent-length:abc\nreceipt:r\n\nx\0".to_string();
    let bad_utf8 = b"SEND\ndestination:/queue/\xff\xfe\n\nx\0".to_vec();
    let unknown = "FROBNICATE\nreceipt:f\n\n\0".to_string();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (too_long_header.into_bytes(), "maximum header length"),
        (too_many_headers.into_bytes(), "maximum number of headers"),
        (too_big.into_bytes(), "maximum data length"),
        (too_big_cl.into_bytes(), "maximum data length"),
        (bad_cl.into_bytes(), "content-length is not a valid integer"),
        (bad_utf8, "UTF-8"),
        (unknown.into_bytes(), "Unknown STOMP action: FROBNICATE"),
    ];
    for (bytes, text) in cases {
        let mut c = b.connect("1.2").await;
        c.send_raw(&bytes).await;
        let f = c.expect_error().await;
        assert!(f.header("message").unwrap().contains(text), "{text}: {f:?}");
        assert!(c.closed_within(WAIT).await, "{text}: must close");
    }
    // A message accepted before the bad frame is not lost.
    let mut c = b.connect("1.2").await;
    c.send_text("/queue/kept", "accepted", Some("r")).await;
    c.send_raw(b"SEND\ncontent-length:zz\n\n\0").await;
    c.expect_error().await;
    let mut d = b.connect("1.2").await;
    d.subscribe("s", "/queue/kept", "auto", &[]).await;
    assert_eq!(body(&d.expect_message().await), "accepted");
}

#[tokio::test]
async fn auto_port_speaks_stomp_and_openwire() {
    let b = TestBroker::start().await;
    let mut c = Client::connect(b.auto, "1.2", &[]).await;
    c.send_text("/queue/auto", "via auto port", Some("r")).await;
    c.disconnect().await;
    // Leading EOLs are STOMP too.
    let mut c = Client::raw(b.auto).await;
    c.send_raw(b"\n\nCONNECT\naccept-version:1.2\nhost:x\n\n\0")
        .await;
    assert_eq!(c.recv().await.command, Command::Connected);
    // An OpenWire client's first bytes on the same port: the broker answers
    // with its own WireFormatInfo.
    let wire = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/protocol-fixtures/openwire/connect-close.c2s.bin"
    ))
    .unwrap();
    let mut ow = Client::raw(b.auto).await;
    ow.send_raw(&wire[..360]).await;
    let mut head = [0u8; 13];
    tokio::time::timeout(WAIT, ow.stream.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head[4..13], b"\x01ActiveMQ");
}

#[tokio::test]
async fn shutdown_closes_clients_and_returns() {
    let b = TestBroker::start().await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/sd", "client", &[]).await;
    let shutdown = b.shutdown.clone();
    shutdown.cancel();
    assert!(c.closed_within(WAIT).await);
    b.stop().await;
}
