use super::*;
use crate::broker::message::{BodyKind, MessageId};
use crate::broker::subscription::{Delivery, DeliverySink};
use bytes::Bytes;

#[derive(Default)]
struct Collect(Mutex<Vec<Delivery>>);

impl DeliverySink for Collect {
    fn deliver(&self, d: Delivery) -> bool {
        self.0.lock().unwrap().push(d);
        true
    }
}

impl Collect {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

fn spec(broker: &Broker, connection: u64, no_local: bool) -> (ConsumerSpec, Arc<Collect>) {
    let sink = Arc::new(Collect::default());
    (
        ConsumerSpec {
            name: crate::broker::message::ConsumerName {
                connection_id: std::sync::Arc::from("ID:test-1"),
                session: 1,
                value: 1,
            },
            id: broker.next_id(),
            connection,
            prefetch: 100,
            no_local,
            selector: None,
            exclusive: false,
            sink: sink.clone(),
            reader: None,
            priority: 0,
        },
        sink,
    )
}

fn topic_msg(seq: u64, connection: u64) -> Arc<Message> {
    let mut m = Message::new(
        MessageId {
            producer: Arc::from("ID:t-1:1:1:1"),
            seq,
        },
        Destination::topic("t"),
        BodyKind::Text,
        Bytes::from_static(b"hi"),
    );
    m.producer_connection = connection;
    Arc::new(m)
}

#[test]
fn topic_fans_out_to_every_subscriber_sharing_the_body() {
    let broker = Broker::new(CoreConfig::default());
    let t = Destination::topic("t");
    let (s1, c1) = spec(&broker, 1, false);
    let (s2, c2) = spec(&broker, 2, true);
    let sub1 = broker.subscribe(&t, s1, None).unwrap();
    let _sub2 = broker.subscribe(&t, s2, None).unwrap();
    let target = broker.target(&t);
    target.send(topic_msg(1, 2)); // from connection 2: its noLocal sub skips it
    target.send(topic_msg(2, 3));
    assert_eq!(c1.count(), 2);
    assert_eq!(c2.count(), 1);
    let a = c1.0.lock().unwrap()[1].message.body.as_ptr();
    let b = c2.0.lock().unwrap()[0].message.body.as_ptr();
    assert_eq!(a, b, "the body is shared, not copied");
    broker.unsubscribe(&sub1, 0, false);
    target.send(topic_msg(3, 3));
    assert_eq!(c1.count(), 2, "no delivery after unsubscribe");
    assert_eq!(broker.topic("t").subscription_count(), 1);
}

#[test]
fn durable_subscription_keeps_messages_while_offline() {
    let broker = Broker::new(CoreConfig::default());
    let t = Destination::topic("t");
    let (s1, c1) = spec(&broker, 1, false);
    let sub = broker.subscribe(&t, s1, Some(("client", "sub"))).unwrap();
    let (s2, _) = spec(&broker, 2, false);
    assert_eq!(
        broker.subscribe(&t, s2, Some(("client", "sub"))).err(),
        Some(BrokerError::DurableInUse)
    );
    assert_eq!(
        broker.remove_durable("client", "sub"),
        Err(BrokerError::DurableInUse)
    );
    broker.unsubscribe(&sub, 0, false);
    assert_eq!(c1.count(), 0);
    broker.target(&t).send(topic_msg(1, 5));
    broker.target(&t).send(topic_msg(2, 5));
    let (s3, c3) = spec(&broker, 3, false);
    let sub = broker.subscribe(&t, s3, Some(("client", "sub"))).unwrap();
    assert_eq!(c3.count(), 2);
    broker.unsubscribe(&sub, 2, false);
    broker.remove_durable("client", "sub").unwrap();
    assert!(matches!(
        broker.remove_durable("client", "sub"),
        Err(BrokerError::NoSuchDurable { .. })
    ));
}

#[test]
fn client_ids_are_exclusive() {
    let broker = Broker::new(CoreConfig::default());
    broker.register_client_id("c", 1, "tcp://a").unwrap();
    let err = broker.register_client_id("c", 2, "tcp://b").unwrap_err();
    assert!(err.to_string().contains("already connected from tcp://a"));
    broker.release_client_id("c", 2); // not the owner: no effect
    assert!(broker.register_client_id("c", 3, "tcp://b").is_err());
    broker.release_client_id("c", 1);
    broker.register_client_id("c", 3, "tcp://b").unwrap();
}

#[test]
fn a_durable_subscription_moved_to_another_topic_is_recreated() {
    let broker = Broker::new(CoreConfig::default());
    let (a, b) = (Destination::topic("a"), Destination::topic("b"));
    let (s1, _) = spec(&broker, 1, false);
    let sub = broker.subscribe(&a, s1, Some(("c", "n"))).unwrap();
    broker.unsubscribe(&sub, 0, false);
    broker.target(&a).send(topic_msg(1, 9));
    // Same name, another topic: the old subscription and its message are gone.
    let (s2, c2) = spec(&broker, 2, false);
    let sub = broker.subscribe(&b, s2, Some(("c", "n"))).unwrap();
    assert_eq!(c2.count(), 0);
    broker.target(&a).send(topic_msg(2, 9));
    assert_eq!(c2.count(), 0, "no longer on topic a");
    broker.target(&b).send(topic_msg(3, 9));
    assert_eq!(c2.count(), 1);
    assert_eq!(broker.topic("a").subscription_count(), 0);
    broker.unsubscribe(&sub, 1, false);
}

#[test]
fn wildcard_patterns() {
    for (p, n, want) in [
        ("a.*", "a.b", true),
        ("a.*", "a.b.c", false),
        ("a.>", "a.b.c", true),
        ("a.>", "a.b", true),
        // As ActiveMQ's PrefixDestinationFilter: "A matches A.>".
        ("a.>", "a", true),
        ("a.>", "ab", false),
        ("a.b.>", "a", false),
        ("*.b", "a.b", true),
        ("a.*.c", "a.x.c", true),
        ("a.*.c", "a.x.d", false),
        ("a.b", "a.b", true),
        (">", "anything.at.all", true),
    ] {
        assert_eq!(wildcard_matches(p, n), want, "{p} ~ {n}");
    }
    assert!(is_wildcard("a.*") && is_wildcard("a.>") && !is_wildcard("a.b*"));
}

#[test]
fn wildcard_subscriptions_cover_existing_and_new_topics() {
    let broker = Broker::new(CoreConfig::default());
    broker.topic("stock.ibm");
    let (s, c) = spec(&broker, 1, false);
    let sub = broker
        .subscribe(&Destination::topic("stock.>"), s, None)
        .unwrap();
    broker
        .target(&Destination::topic("stock.ibm"))
        .send(topic_msg(1, 9));
    broker
        .target(&Destination::topic("stock.msft.nyse"))
        .send(topic_msg(2, 9)); // created after
    broker
        .target(&Destination::topic("bonds.x"))
        .send(topic_msg(3, 9));
    assert_eq!(c.count(), 2);
    broker.unsubscribe(&sub, 0, false);
    broker
        .target(&Destination::topic("stock.ibm"))
        .send(topic_msg(4, 9));
    broker
        .target(&Destination::topic("stock.new"))
        .send(topic_msg(5, 9));
    assert_eq!(c.count(), 2, "nothing after unsubscribe");
    assert_eq!(broker.topic("stock.ibm").subscription_count(), 0);
}

#[tokio::test]
async fn persistent_messages_into_a_backlog_get_buffers_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) =
        crate::store::Store::open(crate::store::StoreConfig::new(dir.path().to_path_buf()))
            .unwrap();
    let broker = Broker::with_store(CoreConfig::default(), Some(store));
    let target = broker.resolve(&Destination::queue("p")).unwrap();
    let Target::Queue(q) = &target else {
        panic!("a queue")
    };
    let read = Bytes::from(vec![b'x'; 8192]);
    let within =
        |p: *const u8| (read.as_ptr()..read.as_ptr().wrapping_add(read.len())).contains(&p);
    let framed = |seq: u64, body: Bytes| {
        let mut m = Message::new(
            MessageId {
                producer: Arc::from("ID:t-1:1:1"),
                seq,
            },
            Destination::queue("p"),
            BodyKind::Bytes,
            body,
        );
        m.persistent = true;
        m
    };
    broker
        .send(&target, framed(0, read.slice(0..256)))
        .await
        .unwrap();
    assert!(within(q.browse()[0].body.as_ptr()));
    // A backlog past a sixteenth of the limit (below half: still in memory).
    let n = CoreConfig::default().destination_memory_limit / 16 / 4096 + 1;
    for i in 1..=n as u64 {
        broker
            .send(&target, framed(i, Bytes::from(vec![b'y'; 4096])))
            .await
            .unwrap();
    }
    broker
        .send(&target, framed(1_000_000, read.slice(300..556)))
        .await
        .unwrap();
    let last = q.browse().pop().unwrap();
    assert_eq!(last.id.seq, 1_000_000);
    assert!(!within(last.body.as_ptr()));
    assert_eq!(&last.body[..], &read[300..556]);
    broker.close_store();
}

fn virtual_msg(topic: &str, seq: u64) -> Message {
    Message::new(
        MessageId {
            producer: Arc::from("ID:v-1:1:1:1"),
            seq,
        },
        Destination::topic(topic),
        BodyKind::Text,
        Bytes::from_static(b"hi"),
    )
}

#[tokio::test]
async fn virtual_topics_copy_each_message_to_their_consumer_queues() {
    let broker = Broker::new(CoreConfig::default());
    assert_eq!(
        broker.virtual_topic_of("Consumer.A.VirtualTopic.Orders"),
        Some("VirtualTopic.Orders")
    );
    for not in [
        "Consumer.A.Orders",
        "Consumer.VirtualTopic.X",
        "Other.A.VirtualTopic.X",
        "Consumer.A.",
        "Consumer.A.VirtualTopic.>",
    ] {
        assert_eq!(broker.virtual_topic_of(not), None, "{not}");
    }
    let a = broker.queue("Consumer.A.VirtualTopic.Orders");
    let b = broker.queue("Consumer.B.VirtualTopic.Orders");
    let other = broker.queue("Consumer.A.VirtualTopic.Other");
    let (s, topic_sub) = spec(&broker, 1, false);
    broker
        .subscribe(&Destination::topic("VirtualTopic.Orders"), s, None)
        .unwrap();
    let target = broker
        .resolve(&Destination::topic("VirtualTopic.Orders"))
        .unwrap();
    assert!(matches!(target, Target::Virtual(_)));
    assert_eq!(
        target.copies(),
        3,
        "two queues and the topic: what a transaction counts"
    );
    broker
        .send(&target, virtual_msg("VirtualTopic.Orders", 1))
        .await
        .unwrap();
    assert_eq!(
        (a.pending_count(), b.pending_count(), other.pending_count()),
        (1, 1, 0)
    );
    assert_eq!(
        topic_sub.count(),
        1,
        "the topic's own subscribers get it too"
    );
    let copy = &a.browse()[0];
    assert_eq!(
        copy.destination,
        Destination::queue("Consumer.A.VirtualTopic.Orders")
    );
    assert_eq!(
        copy.extras().original_destination,
        Some(Destination::topic("VirtualTopic.Orders"))
    );
    // A queue made later gets what is sent from then on.
    let late = broker.queue("Consumer.C.VirtualTopic.Orders");
    target.send(Arc::new(virtual_msg("VirtualTopic.Orders", 2)));
    assert_eq!((a.pending_count(), late.pending_count()), (2, 1));
    // An ordinary topic is not virtual; nor is anything with the feature off.
    assert!(matches!(
        broker.resolve(&Destination::topic("Orders")).unwrap(),
        Target::Topic(_)
    ));
    let off = Broker::new(CoreConfig {
        virtual_topics: String::new(),
        ..CoreConfig::default()
    });
    let q = off.queue("Consumer.A.VirtualTopic.Orders");
    let t = off
        .resolve(&Destination::topic("VirtualTopic.Orders"))
        .unwrap();
    assert!(matches!(t, Target::Topic(_)));
    off.send(&t, virtual_msg("VirtualTopic.Orders", 1))
        .await
        .unwrap();
    assert_eq!(q.pending_count(), 0);
}

#[tokio::test]
async fn a_scheduled_copy_the_store_refuses_is_tried_again_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::store::StoreConfig::new(dir.path().to_path_buf());
    let faults = config.faults.clone();
    let (store, _) = crate::store::Store::open(config).unwrap();
    let broker = Broker::with_store(
        CoreConfig {
            scheduler_support: true,
            ..CoreConfig::default()
        },
        Some(store),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn(broker.clone().run_scheduler(stop.clone()));
    let mut m = Message::new(
        MessageId {
            producer: Arc::from("ID:s-1:1:1"),
            seq: 1,
        },
        Destination::queue("sched"),
        BodyKind::Text,
        Bytes::from_static(b"later"),
    );
    m.persistent = true;
    m.properties
        .push((ByteStr::from(scheduler::DELAY), PropValue::Long(300)));
    let target = broker.resolve(&Destination::queue("sched")).unwrap();
    broker.send(&target, m).await.unwrap();
    assert_eq!(broker.scheduled(), 1);
    // The disk fills up before the job is due: its copy cannot be stored.
    faults
        .fail_writes
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let q = broker.queue("sched");
    assert!(q.browse().is_empty());
    assert_eq!(broker.scheduled(), 1, "the job waits to try again");
    faults
        .fail_writes
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while q.browse().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let sent = q.browse();
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0].body[..], b"later");
    assert_eq!(broker.scheduled(), 0);
    stop.cancel();
    runner.await.unwrap();
    broker.close_store();
}

/// A 4 KiB message for queue `dest`.
fn msg(dest: &str, seq: u64) -> Arc<Message> {
    Arc::new(Message::new(
        MessageId {
            producer: Arc::from("ID:m-1:1:1"),
            seq,
        },
        Destination::queue(dest),
        BodyKind::Bytes,
        Bytes::from(vec![b'm'; 4096]),
    ))
}

#[tokio::test]
async fn the_broker_wide_memory_limit_holds_back_every_destination() {
    let broker = Broker::new(CoreConfig {
        memory_limit: 64 * 1024,
        ..CoreConfig::default()
    });
    let a = broker.queue("a");
    let b = broker.queue("b");
    let mut seq = 0;
    // Far below its own 64 MiB, queue a fills the broker's 64 KiB.
    while !a.send(msg("a", seq)) {
        seq += 1;
        assert!(seq < 100, "the broker-wide limit never stopped queue a");
    }
    assert!(broker.memory_usage().is_full());
    // Queue b is empty, but its producers wait too.
    assert!(b.memory_usage() == 0 && b.over_limit());
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.wait_for_space().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    a.purge();
    tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("space comes back")
        .unwrap();
    assert_eq!(broker.memory_usage().used(), 0);
    // What a queue still holds when it goes leaves the count with it.
    let topic_queue = Queue::new(
        Destination::topic("t"),
        1 << 20,
        false,
        broker.me.clone(),
        None,
    );
    topic_queue.send(msg("t", 1));
    assert!(broker.memory_usage().used() > 0);
    drop(topic_queue);
    assert_eq!(broker.memory_usage().used(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_producer_held_only_by_the_broker_wide_limit_goes_on_after_a_while() {
    let broker = Broker::new(CoreConfig {
        memory_limit: 16 * 1024,
        ..CoreConfig::default()
    });
    let a = broker.queue("a");
    let mut seq = 0;
    while !a.send(msg("a", seq)) {
        seq += 1;
    }
    let b = broker.queue("b");
    assert!(b.over_limit());
    let started = tokio::time::Instant::now();
    b.wait_for_space().await;
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(5) && waited < std::time::Duration::from_secs(6),
        "{waited:?}"
    );
    // A queue over its own limit still waits for its consumers.
    let small = Queue::new(
        Destination::queue("small"),
        4096,
        true,
        broker.me.clone(),
        None,
    );
    small.send(msg("small", 1));
    let held =
        tokio::time::timeout(std::time::Duration::from_secs(30), small.wait_for_space()).await;
    assert!(held.is_err(), "its own limit is not given up on");
}

#[test]
fn a_topic_is_deleted_only_when_nothing_subscribes_to_it() {
    let broker = Broker::new(CoreConfig::default());
    broker.topic("news.sport");
    let (s, _) = spec(&broker, 1, false);
    let wild = broker
        .subscribe(&Destination::topic("news.>"), s, None)
        .unwrap();
    let e = broker
        .delete_topic(&Destination::topic("news.sport"))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("Destination: topic://news.sport still has an active subscription"),
        "{e}"
    );
    broker.unsubscribe(&wild, 0, false);
    broker
        .delete_topic(&Destination::topic("news.sport"))
        .unwrap();
    assert!(!broker.exists(&Destination::topic("news.sport")));
    // A virtual topic stays, for its consumer queues.
    broker.queue("Consumer.A.VirtualTopic.Orders");
    broker
        .delete_topic(&Destination::topic("VirtualTopic.Orders"))
        .unwrap();
    broker
        .target(&Destination::topic("VirtualTopic.Orders"))
        .send(Arc::new(virtual_msg("VirtualTopic.Orders", 1)));
    assert_eq!(
        broker
            .queue("Consumer.A.VirtualTopic.Orders")
            .browse()
            .len(),
        1
    );
}
