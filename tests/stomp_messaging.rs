//! Messaging through the broker over real STOMP connections: queues, topics,
//! acknowledgement modes, redelivery, transactions, durable subscriptions,
//! large bodies, flow control.

mod common;

use common::*;
use ferromq::stomp::frame::Command;
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[tokio::test]
async fn queue_message_carries_activemq_headers() {
    let b = TestBroker::start().await;
    let mut p = b.connect("1.2").await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s1", "/queue/h", "auto", &[]).await;
    p.send(
        &frame(
            Command::Send,
            &[
                ("destination", "/queue/h"),
                ("receipt", "r"),
                ("persistent", "true"),
                ("priority", "7"),
                ("correlation-id", "corr"),
                ("reply-to", "/queue/replies"),
                ("type", "t1"),
                ("expires", "0"),
                ("content-type", "text/plain"),
                ("custom", "value"),
                ("custom", "second ignored"),
            ],
        )
        .with_body("payload"),
    )
    .await;
    p.expect_receipt("r").await;
    let m = c.expect_message().await;
    let id = m.header("message-id").unwrap();
    assert!(id.starts_with("ID:") && id.ends_with(":-1:1:1"), "{id}");
    for (k, v) in [
        ("destination", "/queue/h"),
        ("subscription", "s1"),
        ("persistent", "true"),
        ("priority", "7"),
        ("correlation-id", "corr"),
        ("reply-to", "/queue/replies"),
        ("type", "t1"),
        ("expires", "0"),
        ("content-type", "text/plain"),
        ("custom", "value"),
    ] {
        assert_eq!(m.header(k).map(|v| v.as_str()), Some(v), "{k}");
    }
    assert!(m.header("timestamp").unwrap().parse::<i64>().unwrap() > 0);
    assert!(m.header("ack").is_none(), "auto mode has no ack header");
    assert!(m.header("redelivered").is_none());
    assert!(m.header("receipt").is_none());
    assert!(
        m.header("content-length").is_none(),
        "a text message has none"
    );
    assert_eq!(body(&m), "payload");
}

#[tokio::test]
async fn competing_consumers_each_message_exactly_once_round_robin() {
    let b = TestBroker::start().await;
    let mut c1 = b.connect("1.2").await;
    let mut c2 = b.connect("1.2").await;
    c1.subscribe(
        "a",
        "/queue/cc",
        "client-individual",
        &[("activemq.prefetchSize", "1")],
    )
    .await;
    c2.subscribe(
        "b",
        "/queue/cc",
        "client-individual",
        &[("activemq.prefetchSize", "1")],
    )
    .await;
    let mut p = b.connect("1.2").await;
    for i in 0..20 {
        p.send_text("/queue/cc", &format!("m{i}"), None).await;
    }
    p.send_text("/queue/cc", "last", Some("done")).await;
    let mut seen = Vec::new();
    let (mut n1, mut n2) = (0, 0);
    while seen.len() < 21 {
        for (c, n) in [(&mut c1, &mut n1), (&mut c2, &mut n2)] {
            if let Some(m) = c.recv_within(Duration::from_millis(50)).await {
                assert_eq!(m.command, Command::Message);
                // With prefetch 1, nothing else may come before this ack.
                seen.push(body(&m));
                *n += 1;
                c.send(&frame(Command::Ack, &[("id", m.header("ack").unwrap())]))
                    .await;
            }
        }
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 21, "no duplicates: {seen:?}");
    assert!(n1 >= 5 && n2 >= 5, "both consumers get a share: {n1}/{n2}");
    assert!(c1.recv_within(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn fifo_per_producer_and_prefetch_bounds_unacked() {
    let b = TestBroker::start().await;
    let mut p = b.connect("1.2").await;
    for i in 0..50 {
        p.send_text("/queue/fifo", &format!("{i}"), None).await;
    }
    p.send_text("/queue/fifo", "50", Some("r")).await;
    let mut c = b.connect("1.2").await;
    c.subscribe(
        "s",
        "/queue/fifo",
        "client",
        &[("activemq.prefetchSize", "10")],
    )
    .await;
    let mut got = Vec::new();
    while let Some(m) = c.recv_within(Duration::from_millis(300)).await {
        got.push(m);
    }
    assert_eq!(got.len(), 10, "prefetch 10 means at most 10 unacknowledged");
    let last = got.last().unwrap().header("ack").unwrap().clone();
    c.send(&frame(Command::Ack, &[("id", &last)])).await;
    while got.len() < 51 {
        let m = c.expect_message().await;
        c.send(&frame(Command::Ack, &[("id", m.header("ack").unwrap())]))
            .await;
        got.push(m);
    }
    let order: Vec<usize> = got.iter().map(|m| body(m).parse().unwrap()).collect();
    assert_eq!(order, (0..51).collect::<Vec<_>>());
}

#[tokio::test]
async fn topic_broadcasts_to_every_current_subscriber() {
    let b = TestBroker::start().await;
    let mut s1 = b.connect("1.2").await;
    let mut s2 = b.connect("1.1").await;
    s1.subscribe("x", "/topic/news", "auto", &[]).await;
    s2.subscribe("y", "/topic/news", "auto", &[]).await;
    let mut p = b.connect("1.0").await;
    p.send_text("/topic/nobody-listens", "lost", Some("r0"))
        .await;
    for i in 0..5 {
        p.send_text("/topic/news", &format!("n{i}"), None).await;
    }
    for s in [&mut s1, &mut s2] {
        for i in 0..5 {
            let m = s.expect_message().await;
            assert_eq!(body(&m), format!("n{i}"));
            assert_eq!(m.header("destination").unwrap(), "/topic/news");
        }
    }
    // A subscriber that arrives later sees only later messages.
    let mut late = b.connect("1.2").await;
    late.subscribe("z", "/topic/news", "auto", &[]).await;
    p.send_text("/topic/news", "after", Some("r1")).await;
    assert_eq!(body(&late.expect_message().await), "after");
    assert_eq!(body(&s1.expect_message().await), "after");
}

#[tokio::test]
async fn client_ack_is_cumulative_and_the_rest_is_redelivered() {
    let b = TestBroker::start().await;
    let mut p = b.connect("1.2").await;
    for i in 1..=5 {
        p.send_text("/queue/cum", &format!("m{i}"), None).await;
    }
    p.send_text("/queue/cum", "m6", Some("r")).await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/cum", "client", &[]).await;
    let msgs: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(c.expect_message().await);
        }
        v
    };
    c.send(&frame(
        Command::Ack,
        &[("id", msgs[2].header("ack").unwrap()), ("receipt", "a")],
    ))
    .await;
    c.expect_receipt("a").await;
    // Acknowledging an already covered message is an error.
    c.send(&frame(
        Command::Ack,
        &[("id", msgs[0].header("ack").unwrap()), ("receipt", "b")],
    ))
    .await;
    assert!(c
        .expect_error()
        .await
        .header("message")
        .unwrap()
        .contains("Unexpected ACK"));
    c.disconnect().await;
    let mut d = b.connect("1.2").await;
    d.subscribe("s", "/queue/cum", "auto", &[]).await;
    for i in 4..=6 {
        let m = d.expect_message().await;
        assert_eq!(body(&m), format!("m{i}"));
        assert_eq!(m.header("redelivered").unwrap(), "true");
        assert_eq!(m.header("message-id"), msgs[i - 1].header("message-id"));
    }
    assert!(d.recv_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn ack_by_message_id_in_1_0_and_1_1() {
    let b = TestBroker::start().await;
    for version in ["1.0", "1.1"] {
        let q = format!("/queue/ack-{version}");
        let mut c = b.connect(version).await;
        c.subscribe("s", &q, "client-individual", &[]).await;
        c.send_text(&q, "one", None).await;
        let m = c.expect_message().await;
        assert!(m.header("ack").is_none(), "no ack header before 1.2");
        let mid = m.header("message-id").unwrap().clone();
        if version == "1.1" {
            c.send(&frame(
                Command::Ack,
                &[("message-id", &mid), ("receipt", "x")],
            ))
            .await;
            assert!(c
                .expect_error()
                .await
                .header("message")
                .unwrap()
                .contains("subscription id"));
        }
        c.send(&frame(
            Command::Ack,
            &[
                ("message-id", &mid),
                ("subscription", "s"),
                ("receipt", "a"),
            ],
        ))
        .await;
        c.expect_receipt("a").await;
        c.disconnect().await;
        let mut d = b.connect(version).await;
        d.subscribe("s", &q, "auto", &[]).await;
        assert!(
            d.recv_within(Duration::from_millis(300)).await.is_none(),
            "acked: gone"
        );
    }
}

#[tokio::test]
async fn nack_sends_persistent_messages_to_the_dlq() {
    let b = TestBroker::start().await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/poison", "client-individual", &[])
        .await;
    c.send(
        &frame(
            Command::Send,
            &[
                ("destination", "/queue/poison"),
                ("persistent", "true"),
                ("k", "v"),
            ],
        )
        .with_body("bad"),
    )
    .await;
    c.send_text("/queue/poison", "transient", None).await;
    let m1 = c.expect_message().await;
    let m2 = c.expect_message().await;
    for (m, r) in [(&m1, "n1"), (&m2, "n2")] {
        c.send(&frame(
            Command::Nack,
            &[("id", m.header("ack").unwrap()), ("receipt", r)],
        ))
        .await;
        c.expect_receipt(r).await;
    }
    c.subscribe("d", "/queue/ActiveMQ.DLQ", "auto", &[]).await;
    let dead = c.expect_message().await;
    assert_eq!(body(&dead), "bad");
    assert_eq!(
        dead.header("original-destination").unwrap(),
        "/queue/poison"
    );
    assert_eq!(dead.header("destination").unwrap(), "/queue/ActiveMQ.DLQ");
    assert_eq!(dead.header("message-id"), m1.header("message-id"));
    assert_eq!(dead.header("k").unwrap(), "v");
    assert_eq!(dead.header("persistent").unwrap(), "true");
    assert!(
        c.recv_within(Duration::from_millis(300)).await.is_none(),
        "non-persistent ones are dropped"
    );
}

#[tokio::test]
async fn unacked_messages_of_a_dropped_connection_go_to_another_consumer() {
    let b = TestBroker::start().await;
    let mut p = b.connect("1.2").await;
    for i in 0..4 {
        p.send_text("/queue/drop", &format!("m{i}"), None).await;
    }
    p.send_text("/queue/drop", "m4", Some("r")).await;
    let mut c = b.connect("1.2").await;
    c.subscribe(
        "s",
        "/queue/drop",
        "client-individual",
        &[("activemq.prefetchSize", "3")],
    )
    .await;
    let got: Vec<_> = [
        c.expect_message().await,
        c.expect_message().await,
        c.expect_message().await,
    ]
    .into();
    c.send(&frame(
        Command::Ack,
        &[("id", got[1].header("ack").unwrap()), ("receipt", "a")],
    ))
    .await;
    // The ack returned credit: m3 comes (before or after the receipt, which
    // waits for the ack to be durable); m4 stays in the broker.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let f = c.recv().await;
        seen.push(match f.command {
            Command::Receipt => format!("receipt {}", f.header("receipt-id").unwrap()),
            _ => body(&f),
        });
    }
    seen.sort();
    assert_eq!(seen, ["m3", "receipt a"]);
    drop(c); // connection lost, no DISCONNECT
    let mut d = b.connect("1.2").await;
    d.subscribe("s", "/queue/drop", "client-individual", &[])
        .await;
    let mut again = Vec::new();
    for _ in 0..4 {
        let m = d.expect_message().await;
        again.push((body(&m), m.header("redelivered").is_some()));
    }
    assert_eq!(
        again,
        [
            ("m0".to_string(), true),
            ("m2".to_string(), true),
            ("m3".to_string(), true),
            ("m4".to_string(), false)
        ]
    );
    assert!(d.recv_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn transactions_commit_abort_and_disconnect() {
    let b = TestBroker::start().await;
    let mut p = b.connect("1.2").await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/tx", "client-individual", &[])
        .await;
    p.send(&frame(Command::Begin, &[("transaction", "t1")]))
        .await;
    p.send(
        &frame(
            Command::Send,
            &[("destination", "/queue/tx"), ("transaction", "t1")],
        )
        .with_body("c1"),
    )
    .await;
    p.send(
        &frame(
            Command::Send,
            &[("destination", "/queue/tx"), ("transaction", "t1")],
        )
        .with_body("c2"),
    )
    .await;
    assert!(
        c.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing before COMMIT"
    );
    p.send(&frame(
        Command::Commit,
        &[("transaction", "t1"), ("receipt", "c")],
    ))
    .await;
    p.expect_receipt("c").await;
    let m1 = c.expect_message().await;
    let m2 = c.expect_message().await;
    assert_eq!((body(&m1), body(&m2)), ("c1".into(), "c2".into()));

    p.send(&frame(Command::Begin, &[("transaction", "t2")]))
        .await;
    p.send(
        &frame(
            Command::Send,
            &[("destination", "/queue/tx"), ("transaction", "t2")],
        )
        .with_body("aborted"),
    )
    .await;
    p.send(&frame(
        Command::Abort,
        &[("transaction", "t2"), ("receipt", "a")],
    ))
    .await;
    p.expect_receipt("a").await;
    // A transaction left open by a dropped connection is aborted.
    p.send(&frame(Command::Begin, &[("transaction", "t3")]))
        .await;
    p.send(
        &frame(
            Command::Send,
            &[
                ("destination", "/queue/tx"),
                ("transaction", "t3"),
                ("receipt", "s"),
            ],
        )
        .with_body("dropped"),
    )
    .await;
    p.expect_receipt("s").await;
    drop(p);
    assert!(c.recv_within(Duration::from_millis(500)).await.is_none());

    // ACK in a transaction then ABORT: the message is unacknowledged again.
    c.send(&frame(Command::Begin, &[("transaction", "t4")]))
        .await;
    c.send(&frame(
        Command::Ack,
        &[("id", m1.header("ack").unwrap()), ("transaction", "t4")],
    ))
    .await;
    c.send(&frame(
        Command::Abort,
        &[("transaction", "t4"), ("receipt", "ab")],
    ))
    .await;
    c.expect_receipt("ab").await;
    // ...and can be acknowledged anew, this time committed.
    c.send(&frame(Command::Begin, &[("transaction", "t5")]))
        .await;
    c.send(&frame(
        Command::Ack,
        &[("id", m1.header("ack").unwrap()), ("transaction", "t5")],
    ))
    .await;
    c.send(&frame(
        Command::Commit,
        &[("transaction", "t5"), ("receipt", "cm")],
    ))
    .await;
    c.expect_receipt("cm").await;
    c.disconnect().await;
    // m1 is consumed; m2 was never acknowledged and comes back redelivered.
    let mut d = b.connect("1.2").await;
    d.subscribe("s", "/queue/tx", "auto", &[]).await;
    let m = d.expect_message().await;
    assert_eq!(body(&m), "c2");
    assert_eq!(m.header("redelivered").unwrap(), "true");
    assert!(d.recv_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn durable_topic_subscription_keeps_messages_while_offline() {
    let b = TestBroker::start().await;
    let f = frame(
        Command::Subscribe,
        &[
            ("id", "dur"),
            ("destination", "/topic/dt"),
            ("activemq.subscriptionName", "subname"),
            ("receipt", "sub"),
        ],
    );
    let mut c = Client::connect(b.stomp, "1.2", &[("client-id", "durable-client")]).await;
    c.send(&f).await;
    c.expect_receipt("sub").await;
    c.disconnect().await;
    let mut p = b.connect("1.2").await;
    for i in 0..3 {
        p.send(
            &frame(
                Command::Send,
                &[("destination", "/topic/dt"), ("persistent", "true")],
            )
            .with_body(format!("off{i}")),
        )
        .await;
    }
    p.send_text("/topic/dt", "off3", Some("r")).await;
    let mut c = Client::connect(b.stomp, "1.2", &[("client-id", "durable-client")]).await;
    c.send(&f).await;
    c.expect_receipt("sub").await;
    for i in 0..4 {
        assert_eq!(body(&c.expect_message().await), format!("off{i}"));
    }
    // Destroying it while active is refused; deactivate first.
    c.send(&frame(
        Command::Unsubscribe,
        &[
            ("id", "dur"),
            ("activemq.subscriptionName", "subname"),
            ("receipt", "u1"),
        ],
    ))
    .await;
    assert_eq!(
        c.expect_error().await.header("message").unwrap(),
        "Durable consumer is in use"
    );
    c.send(&frame(
        Command::Unsubscribe,
        &[("id", "dur"), ("receipt", "u2")],
    ))
    .await;
    c.expect_receipt("u2").await;
    c.send(&frame(
        Command::Unsubscribe,
        &[
            ("id", "dur"),
            ("activemq.subscriptionName", "subname"),
            ("receipt", "u3"),
        ],
    ))
    .await;
    c.expect_receipt("u3").await;
    p.send_text("/topic/dt", "after removal", Some("r2")).await;
    c.send(&f).await;
    c.expect_receipt("sub").await;
    assert!(
        c.recv_within(Duration::from_millis(300)).await.is_none(),
        "a new subscription starts empty"
    );
}

#[tokio::test]
async fn binary_and_large_bodies_stream_through() {
    let b = TestBroker::start().await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/big", "auto", &[]).await;
    let binary: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    c.send(
        &frame(
            Command::Send,
            &[("destination", "/queue/big"), ("content-length", "1000")],
        )
        .with_body(binary.clone()),
    )
    .await;
    let m = c.expect_message().await;
    assert_eq!(m.header("content-length").unwrap(), "1000");
    assert_eq!(&m.body[..], &binary[..]);

    let big: Vec<u8> = (0..30 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    c.send(
        &frame(
            Command::Send,
            &[
                ("destination", "/queue/big"),
                ("content-length", &big.len().to_string()),
                ("receipt", "big"),
            ],
        )
        .with_body(big.clone()),
    )
    .await;
    c.expect_receipt("big").await;
    let m = c.expect_message().await;
    assert_eq!(m.body.len(), big.len());
    assert!(m.body[..] == big[..], "30 MiB body byte-exact");
    eprintln!("30 MiB round trip in {:?}", started.elapsed());
}

#[tokio::test]
async fn producer_flow_control_blocks_then_resumes() {
    let b = TestBroker::start_with(|c| c.limits.destination_memory_limit = 64 * 1024).await;
    let mut p = b.connect("1.2").await;
    let chunk = "x".repeat(8 * 1024);
    // Fill well past the limit: the producer is stopped being read from.
    let mut receipts = 0;
    for i in 0..40 {
        p.send(
            &frame(
                Command::Send,
                &[("destination", "/queue/fc"), ("receipt", &format!("r{i}"))],
            )
            .with_body(chunk.clone()),
        )
        .await;
    }
    while p.recv_within(Duration::from_millis(300)).await.is_some() {
        receipts += 1;
    }
    assert!(
        receipts < 40,
        "producer must be held back, got {receipts} receipts"
    );
    assert!(b.broker.find_queue("fc").unwrap().memory_usage() < 200 * 1024);
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/fc", "auto", &[]).await;
    for _ in 0..40 {
        c.expect_message().await;
    }
    while receipts < 40 {
        p.recv().await;
        receipts += 1;
    }
}

#[tokio::test]
async fn the_broker_wide_memory_limit_holds_back_producers_of_every_queue() {
    // Each queue may hold 64 MiB, the broker 128 KiB in all.
    let b = TestBroker::start_with(|c| c.limits.memory_limit = 128 * 1024).await;
    let chunk = "x".repeat(8 * 1024);
    let mut a = b.connect("1.2").await;
    for i in 0..30 {
        a.send(
            &frame(
                Command::Send,
                &[
                    ("destination", "/queue/mem-a"),
                    ("receipt", &format!("a{i}")),
                ],
            )
            .with_body(chunk.clone()),
        )
        .await;
    }
    let mut receipts = 0;
    while a.recv_within(Duration::from_millis(300)).await.is_some() {
        receipts += 1;
    }
    assert!(
        receipts < 30,
        "held back at the broker's limit: {receipts} receipts"
    );
    // A producer of another, empty, queue waits too.
    let mut other = b.connect("1.2").await;
    other
        .send(
            &frame(
                Command::Send,
                &[("destination", "/queue/mem-b"), ("receipt", "b")],
            )
            .with_body(chunk.clone()),
        )
        .await;
    assert!(other
        .recv_within(Duration::from_millis(500))
        .await
        .is_none());
    assert!(b.broker.memory_usage().used() < 256 * 1024);
    // Consuming queue a lets both go on.
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/mem-a", "auto", &[]).await;
    for _ in 0..30 {
        c.expect_message().await;
    }
    other.expect_receipt("b").await;
    while receipts < 30 {
        a.recv().await;
        receipts += 1;
    }
}

#[tokio::test]
async fn a_slow_consumer_does_not_hold_up_others() {
    let b = TestBroker::start().await;
    let mut slow = b.connect("1.2").await;
    slow.subscribe(
        "s",
        "/topic/fan",
        "client",
        &[("activemq.prefetchSize", "5")],
    )
    .await;
    let mut fast = b.connect("1.2").await;
    fast.subscribe("f", "/topic/fan", "auto", &[]).await;
    let mut p = b.connect("1.2").await;
    for i in 0..200 {
        p.send_text("/topic/fan", &format!("{i}"), None).await;
    }
    p.send_text("/topic/fan", "end", Some("r")).await;
    for i in 0..200 {
        assert_eq!(body(&fast.expect_message().await), i.to_string());
    }
    assert_eq!(body(&fast.expect_message().await), "end");
    let mut n = 0;
    while slow.recv_within(Duration::from_millis(200)).await.is_some() {
        n += 1;
    }
    assert_eq!(n, 5, "the slow one holds only its prefetch");
}

/// A quick throughput figure: one pipelined producer, one auto-ack consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_throughput() {
    let b = TestBroker::start().await;
    let n = 50_000usize;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/tp", "auto", &[]).await;
    let addr = b.stomp;
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        let mut p = Client::connect(addr, "1.2", &[]).await;
        let mut batch = bytes::BytesMut::new();
        let body = "x".repeat(256);
        for i in 0..n {
            let f = frame(Command::Send, &[("destination", "/queue/tp")]).with_body(body.clone());
            ferromq::stomp::codec::encode_frame(&f, p.version, &mut batch);
            if i % 500 == 499 {
                p.send_raw(&batch).await;
                batch.clear();
            }
        }
        p.send_raw(&batch).await;
        p.send_text("/queue/tp", "end", Some("done")).await;
    });
    let mut got = 0;
    loop {
        let m = c.expect_message().await;
        if &m.body[..] == b"end" {
            break;
        }
        got += 1;
    }
    producer.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(got, n);
    eprintln!(
        "pipelined STOMP: {n} x 256 B messages in {secs:.2} s = {:.0} msg/s (debug/release as built)",
        n as f64 / secs
    );
}

#[tokio::test]
async fn selectors_on_queues_and_topics() {
    let b = TestBroker::start().await;
    let mut c = b.connect("1.2").await;
    c.subscribe(
        "big",
        "/queue/sel",
        "auto",
        &[("selector", "n > 10 AND kind = 'order'")],
    )
    .await;
    let mut t = b.connect("1.2").await;
    t.subscribe(
        "t",
        "/topic/sel",
        "auto",
        &[("selector", "region IN ('eu', 'us')")],
    )
    .await;
    let mut p = b.connect("1.2").await;
    for (n, kind) in [
        ("5", "order"),
        ("50", "order"),
        ("500", "quote"),
        ("20", "order"),
    ] {
        p.send(
            &frame(
                Command::Send,
                &[("destination", "/queue/sel"), ("n", n), ("kind", kind)],
            )
            .with_body(format!("{n}-{kind}")),
        )
        .await;
    }
    for region in ["asia", "eu", "us"] {
        p.send(
            &frame(
                Command::Send,
                &[("destination", "/topic/sel"), ("region", region)],
            )
            .with_body(region.to_string()),
        )
        .await;
    }
    p.send_text("/queue/other", "sync", Some("r")).await;
    assert_eq!(body(&c.expect_message().await), "50-order");
    assert_eq!(body(&c.expect_message().await), "20-order");
    assert!(c.recv_within(Duration::from_millis(300)).await.is_none());
    assert_eq!(body(&t.expect_message().await), "eu");
    assert_eq!(body(&t.expect_message().await), "us");
    // The others are still on the queue for a plain consumer.
    let mut all = b.connect("1.2").await;
    all.subscribe("all", "/queue/sel", "auto", &[]).await;
    assert_eq!(body(&all.expect_message().await), "5-order");
    assert_eq!(body(&all.expect_message().await), "500-quote");
    // A bad selector is refused clearly.
    c.send(&frame(
        Command::Subscribe,
        &[
            ("id", "bad"),
            ("destination", "/queue/sel"),
            ("selector", "n >"),
            ("receipt", "x"),
        ],
    ))
    .await;
    assert!(c
        .expect_error()
        .await
        .header("message")
        .unwrap()
        .contains("InvalidSelectorException"));
}

#[tokio::test]
async fn temporary_queues_for_request_reply() {
    let b = TestBroker::start().await;
    let mut requester = b.connect("1.2").await;
    requester
        .subscribe("replies", "/temp-queue/replies", "auto", &[])
        .await;
    let mut responder = b.connect("1.2").await;
    responder
        .subscribe("svc", "/queue/service", "auto", &[])
        .await;
    requester
        .send(
            &frame(
                Command::Send,
                &[
                    ("destination", "/queue/service"),
                    ("reply-to", "/temp-queue/replies"),
                    ("receipt", "q"),
                ],
            )
            .with_body("ping"),
        )
        .await;
    requester.expect_receipt("q").await;
    let req = responder.expect_message().await;
    let reply_to = req.header("reply-to").unwrap().clone();
    assert!(reply_to.starts_with("/remote-temp-queue/ID:"), "{reply_to}");
    responder
        .send(
            &frame(
                Command::Send,
                &[("destination", &reply_to), ("receipt", "r")],
            )
            .with_body("pong"),
        )
        .await;
    responder.expect_receipt("r").await;
    let reply = requester.expect_message().await;
    assert_eq!(body(&reply), "pong");
    assert_eq!(reply.header("subscription").unwrap(), "replies");
    // Its own temporary queue, by the name it gave it (as ActiveMQ shows it).
    assert_eq!(reply.header("destination").unwrap(), "/temp-queue/replies");
    // The same in a reply-to it gets back.
    responder
        .send(
            &frame(
                Command::Send,
                &[
                    ("destination", &reply_to),
                    ("reply-to", &reply_to),
                    ("receipt", "r2"),
                ],
            )
            .with_body("pong again"),
        )
        .await;
    responder.expect_receipt("r2").await;
    let reply = requester.expect_message().await;
    assert_eq!(reply.header("reply-to").unwrap(), "/temp-queue/replies");
    // The temporary queue goes with its connection.
    requester.disconnect().await;
    responder
        .send(
            &frame(
                Command::Send,
                &[("destination", &reply_to), ("receipt", "gone")],
            )
            .with_body("late"),
        )
        .await;
    let e = responder.expect_error().await;
    assert!(
        e.header("message").unwrap().contains("does not exist"),
        "{e:?}"
    );
}

#[tokio::test]
async fn queue_browser_subscription() {
    let b = TestBroker::start().await;
    let mut p = b.connect("1.2").await;
    for i in 0..3 {
        p.send(
            &frame(
                Command::Send,
                &[("destination", "/queue/browse"), ("k", &i.to_string())],
            )
            .with_body(format!("b{i}")),
        )
        .await;
    }
    p.send_text("/queue/browse", "b3", Some("r")).await;
    let mut c = b.connect("1.2").await;
    c.send(&frame(
        Command::Subscribe,
        &[
            ("id", "br"),
            ("destination", "/queue/browse"),
            ("browser", "true"),
            ("selector", "k <> 1"),
            ("receipt", "s"),
        ],
    ))
    .await;
    c.expect_receipt("s").await;
    let mut seen = Vec::new();
    loop {
        let m = c.expect_message().await;
        if m.header("browser").is_some_and(|v| v == "end") {
            assert_eq!(m.header("subscription").unwrap(), "br");
            break;
        }
        seen.push(body(&m));
    }
    // b3 has no k: "k <> 1" is unknown for it, so it is not selected.
    assert_eq!(seen, ["b0", "b2"]);
    c.send(&frame(
        Command::Unsubscribe,
        &[("id", "br"), ("receipt", "u")],
    ))
    .await;
    c.expect_receipt("u").await;
    // Browsing consumed nothing.
    c.subscribe("all", "/queue/browse", "client", &[]).await;
    let mut last = None;
    for i in 0..4 {
        let m = c.expect_message().await;
        assert_eq!(body(&m), format!("b{i}"));
        last = m.header("ack").cloned();
    }
    // Delivered but not acknowledged: a browser still sees them (ActiveMQ's
    // browsers see every message not acknowledged).
    let mut br = b.connect("1.2").await;
    br.subscribe("br2", "/queue/browse", "auto", &[("browser", "true")])
        .await;
    let mut seen = Vec::new();
    loop {
        let m = br.expect_message().await;
        if m.header("browser").is_some_and(|v| v == "end") {
            break;
        }
        seen.push(body(&m));
    }
    assert_eq!(seen, ["b0", "b1", "b2", "b3"]);
    c.send(&frame(
        Command::Ack,
        &[("id", &last.unwrap()), ("receipt", "a")],
    ))
    .await;
    c.expect_receipt("a").await;
    br.subscribe("br3", "/queue/browse", "auto", &[("browser", "true")])
        .await;
    let end = br.expect_message().await;
    assert_eq!(end.header("browser").unwrap(), "end", "all acknowledged");
}

#[tokio::test]
async fn wildcard_topic_subscriptions() {
    let b = TestBroker::start().await;
    let mut all = b.connect("1.2").await;
    all.subscribe("all", "/topic/stock.>", "auto", &[]).await;
    let mut nyse = b.connect("1.2").await;
    nyse.subscribe("nyse", "/topic/stock.*.nyse", "auto", &[])
        .await;
    let mut p = b.connect("1.2").await;
    for t in [
        "stock.ibm.nyse",
        "stock.sap.xetra",
        "bonds.x",
        "stock.ge.nyse",
    ] {
        p.send_text(&format!("/topic/{t}"), t, None).await;
    }
    p.send_text("/queue/sync", "sync", Some("r")).await;
    let m = all.expect_message().await;
    assert_eq!(m.header("destination").unwrap(), "/topic/stock.ibm.nyse");
    assert_eq!(body(&all.expect_message().await), "stock.sap.xetra");
    assert_eq!(body(&all.expect_message().await), "stock.ge.nyse");
    assert!(all.recv_within(Duration::from_millis(200)).await.is_none());
    assert_eq!(body(&nyse.expect_message().await), "stock.ibm.nyse");
    assert_eq!(body(&nyse.expect_message().await), "stock.ge.nyse");
    assert!(nyse.recv_within(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn exclusive_consumers_and_message_groups() {
    let b = TestBroker::start().await;
    let mut plain = b.connect("1.2").await;
    plain.subscribe("p", "/queue/excl", "auto", &[]).await;
    let mut only = b.connect("1.2").await;
    only.subscribe(
        "x",
        "/queue/excl",
        "auto",
        &[("activemq.exclusive", "true")],
    )
    .await;
    let mut p = b.connect("1.2").await;
    for i in 0..5 {
        p.send_text("/queue/excl", &format!("e{i}"), None).await;
    }
    p.send_text("/queue/excl", "e5", Some("r")).await;
    for i in 0..6 {
        assert_eq!(body(&only.expect_message().await), format!("e{i}"));
    }
    assert!(plain
        .recv_within(Duration::from_millis(200))
        .await
        .is_none());

    // Message groups: each group's messages to one consumer.
    let mut c1 = b.connect("1.2").await;
    c1.subscribe("g", "/queue/groups", "auto", &[]).await;
    let mut c2 = b.connect("1.2").await;
    c2.subscribe("g", "/queue/groups", "auto", &[]).await;
    for (i, g) in ["a", "b", "a", "b", "a", "c"].iter().enumerate() {
        p.send(
            &frame(
                Command::Send,
                &[("destination", "/queue/groups"), ("JMSXGroupID", g)],
            )
            .with_body(format!("{g}{i}")),
        )
        .await;
    }
    p.send_text("/queue/sync", "s", Some("r2")).await;
    let mut got: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    for (n, c) in [&mut c1, &mut c2].into_iter().enumerate() {
        while let Some(m) = c.recv_within(Duration::from_millis(300)).await {
            got[n].push(body(&m)[..1].to_string());
        }
    }
    assert_eq!(got[0].len() + got[1].len(), 6);
    for g in ["a", "b", "c"] {
        let g = g.to_string();
        assert!(
            !(got[0].contains(&g) && got[1].contains(&g)),
            "group {g} split: {got:?}"
        );
    }
}

/// Without a client-id a connection's durable subscriptions are its
/// connection id's (as ActiveMQ does): they work while it is connected.
#[tokio::test]
async fn durable_subscription_without_a_client_id() {
    let b = TestBroker::start().await;
    let mut c = b.connect("1.2").await;
    let durable = [("activemq.subscriptionName", "mine")];
    c.subscribe("d", "/topic/dnc", "auto", &durable).await;
    c.send(&frame(
        Command::Unsubscribe,
        &[("id", "d"), ("receipt", "off")],
    ))
    .await;
    c.expect_receipt("off").await;
    // Kept while inactive.
    c.send_text("/topic/dnc", "while away", Some("s")).await;
    c.subscribe("d2", "/topic/dnc", "auto", &durable).await;
    assert_eq!(body(&c.expect_message().await), "while away");
    c.send(&frame(
        Command::Unsubscribe,
        &[("id", "d2"), ("receipt", "off2")],
    ))
    .await;
    c.expect_receipt("off2").await;
    c.send(&frame(
        Command::Unsubscribe,
        &[
            ("id", "x"),
            ("activemq.subscriptionName", "mine"),
            ("receipt", "rm"),
        ],
    ))
    .await;
    c.expect_receipt("rm").await;
}

/// JMS map, object and stream messages, and plain ones, reach STOMP
/// consumers without a body (as ActiveMQ's STOMP connector sends them: only
/// text and bytes messages have one there).
#[tokio::test]
async fn jms_only_bodies_are_not_sent_to_stomp() {
    use ferromq::broker::destination::Destination;
    use ferromq::broker::message::{BodyKind, Message, MessageId};
    let b = TestBroker::start().await;
    let q = Destination::queue("kinds");
    let target = b.broker.resolve(&q).unwrap();
    let kinds = [
        BodyKind::Map,
        BodyKind::Object,
        BodyKind::Stream,
        BodyKind::Empty,
        BodyKind::Bytes,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let id = MessageId {
            producer: std::sync::Arc::from("ID:jms-1:1:1:1"),
            seq: i as u64 + 1,
        };
        let body = bytes::Bytes::from_static(b"\0\0\0\x01\0\x01k\x09\0\0\0\x01x");
        b.broker
            .send(&target, Message::new(id, q.clone(), kind, body))
            .await
            .unwrap();
    }
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/kinds", "auto", &[]).await;
    for _ in 0..4 {
        let m = c.expect_message().await;
        assert!(m.body.is_empty(), "{m:?}");
        assert!(m.header("content-length").is_none(), "{m:?}");
    }
    let bytes = c.expect_message().await;
    assert_eq!(bytes.body.len(), 13);
    assert_eq!(bytes.header("content-length").unwrap(), "13");
}

/// Expired messages leave a queue nobody consumes from (ActiveMQ's periodic
/// expiry): persistent ones to the dead-letter queue, the others dropped.
#[tokio::test]
async fn expired_messages_leave_a_queue_without_consumers() {
    let b = TestBroker::start_with(|c| c.broker.expire_messages_period_ms = 100).await;
    let mut p = b.connect("1.2").await;
    let soon = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 200)
        .to_string();
    for (i, persistent) in [(0, "true"), (1, "false")] {
        p.send(
            &frame(
                Command::Send,
                &[
                    ("destination", "/queue/nobody"),
                    ("expires", &soon),
                    ("persistent", persistent),
                    ("receipt", &format!("r{i}")),
                ],
            )
            .with_body(format!("short-lived {persistent}")),
        )
        .await;
        p.expect_receipt(&format!("r{i}")).await;
    }
    p.send_text("/queue/nobody", "lasting", Some("r2")).await;
    let q = b.broker.queue("nobody");
    assert_eq!(q.pending_count(), 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    while q.pending_count() > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(q.pending_count(), 1, "the expired ones are gone");
    let dlq = b.broker.queue("ActiveMQ.DLQ");
    let dead: Vec<String> = dlq
        .browse()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    assert_eq!(dead, ["short-lived true"]);
}
