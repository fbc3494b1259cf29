use super::*;
use crate::broker::destination::Destination;
use crate::broker::message::{BodyKind, MessageId, PropValue};
use crate::broker::subscription::DeliverySink;
use crate::broker::CoreConfig;
use bytes::Bytes;

#[derive(Default)]
struct Collect {
    got: Mutex<Vec<Delivery>>,
    gone: AtomicBool,
}

impl DeliverySink for Collect {
    fn deliver(&self, d: Delivery) -> bool {
        if self.gone.load(Ordering::Relaxed) {
            return false;
        }
        self.got.lock().unwrap().push(d);
        true
    }
}

impl Collect {
    fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }
    /// The bodies, `*` after those first of their group for the consumer.
    fn flagged(&self) -> Vec<String> {
        self.take()
            .iter()
            .map(|d| {
                let body = String::from_utf8_lossy(&d.message.body);
                if d.group_first {
                    format!("{body}*")
                } else {
                    body.into_owned()
                }
            })
            .collect()
    }
    fn bodies(&self) -> Vec<String> {
        self.take()
            .iter()
            .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
            .collect()
    }
}

fn msg(seq: u64, body: &str, persistent: bool) -> Arc<Message> {
    let mut m = Message::new(
        MessageId {
            producer: Arc::from("ID:test-1:1:1:1"),
            seq,
        },
        Destination::queue("q"),
        BodyKind::Text,
        Bytes::copy_from_slice(body.as_bytes()),
    );
    m.persistent = persistent;
    Arc::new(m)
}

fn consumer(id: u64, prefetch: u32) -> (ConsumerSpec, Arc<Collect>) {
    let sink = Arc::new(Collect::default());
    (
        ConsumerSpec {
            name: crate::broker::message::ConsumerName {
                connection_id: std::sync::Arc::from("ID:test-1"),
                session: 1,
                value: 1,
            },
            id,
            connection: 1,
            prefetch,
            no_local: false,
            selector: None,
            exclusive: false,
            sink: sink.clone(),
            reader: None,
            priority: 0,
        },
        sink,
    )
}

fn setup() -> (Arc<Broker>, Arc<Queue>) {
    let broker = Broker::new(CoreConfig::default());
    let q = broker.queue("q");
    (broker, q)
}

#[test]
fn round_robin_within_prefetch_and_fifo() {
    let (_b, q) = setup();
    let (a, sa) = consumer(1, 2);
    let (b, sb) = consumer(2, 2);
    q.add_consumer(a);
    q.add_consumer(b);
    for i in 0..6 {
        q.send(msg(i, &format!("m{i}"), false));
    }
    assert_eq!(sa.bodies(), ["m0", "m2"]);
    assert_eq!(sb.bodies(), ["m1", "m3"]);
    assert_eq!(q.pending_count(), 2);
    // Acking returns credit: the rest flows in order.
    q.ack(1, 2, true, AckAction::Consume).unwrap();
    assert_eq!(sa.bodies(), ["m4", "m5"]);
    assert_eq!(q.pending_count(), 0);
    assert_eq!(q.in_flight_count(), 4);
}

#[test]
fn closed_consumer_returns_messages_in_order_flagging_delivered_ones() {
    let (_b, q) = setup();
    let (a, sa) = consumer(1, 10);
    q.add_consumer(a);
    for i in 0..4 {
        q.send(msg(i, &format!("m{i}"), false));
    }
    assert_eq!(sa.take().len(), 4);
    q.ack(1, 1, false, AckAction::Consume).unwrap();
    // Deliveries 2 and 3 reached the client, 4 did not.
    assert!(q.remove_consumer(1, 3, false));
    let (b, sb) = consumer(2, 10);
    q.add_consumer(b);
    let got = sb.take();
    let view: Vec<(String, bool)> = got
        .iter()
        .map(|d| {
            (
                String::from_utf8_lossy(&d.message.body).into_owned(),
                d.redelivered(),
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            ("m1".into(), true),
            ("m2".into(), true),
            ("m3".into(), false)
        ]
    );
}

#[test]
fn auto_ack_consumer_close_consumes_what_was_delivered() {
    let (_b, q) = setup();
    let (a, sa) = consumer(1, 10);
    q.add_consumer(a);
    for i in 0..3 {
        q.send(msg(i, &format!("m{i}"), false));
    }
    assert_eq!(sa.take().len(), 3);
    q.remove_consumer(1, 2, true);
    assert_eq!(q.pending_count(), 1);
    assert_eq!(q.browse()[0].body, Bytes::from_static(b"m2"));
}

#[test]
fn individual_and_cumulative_acks() {
    let (_b, q) = setup();
    let (a, _sa) = consumer(1, 10);
    q.add_consumer(a);
    for i in 0..5 {
        q.send(msg(i, "x", false));
    }
    assert_eq!(q.ack(1, 3, false, AckAction::Consume).unwrap(), vec![3]);
    assert_eq!(
        q.ack(1, 4, true, AckAction::Consume).unwrap(),
        vec![1, 2, 4]
    );
    assert_eq!(
        q.ack(1, 4, true, AckAction::Consume),
        Err(AckError::NotInFlight)
    );
    assert_eq!(
        q.ack(9, 5, true, AckAction::Consume),
        Err(AckError::UnknownConsumer)
    );
    assert_eq!(q.in_flight_count(), 1);
    assert_eq!(q.stats.dequeued.load(Ordering::Relaxed), 4);
}

#[test]
fn poison_moves_persistent_messages_to_the_dlq_and_drops_others() {
    let (broker, q) = setup();
    let (a, _sa) = consumer(1, 10);
    q.add_consumer(a);
    q.send(msg(1, "persistent", true));
    q.send(msg(2, "transient", false));
    q.ack(1, 1, false, AckAction::Poison).unwrap();
    q.ack(1, 2, false, AckAction::Poison).unwrap();
    let dlq = broker.find_queue("ActiveMQ.DLQ").unwrap();
    let dead = dlq.browse();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, Bytes::from_static(b"persistent"));
    assert_eq!(
        dead[0].extras().original_destination,
        Some(Destination::queue("q"))
    );
    assert_eq!(
        dead[0].id,
        msg(1, "", true).id,
        "the DLQ copy keeps its message id"
    );
    assert_eq!(q.in_flight_count() + q.pending_count(), 0);
}

#[test]
fn held_acks_commit_or_roll_back() {
    let (_b, q) = setup();
    let (a, sa) = consumer(1, 2);
    q.add_consumer(a);
    for i in 0..4 {
        q.send(msg(i, &format!("m{i}"), false));
    }
    assert_eq!(sa.take().len(), 2);
    // Held acks give the credit back, so two more are dispatched.
    let held = q.ack(1, 2, true, AckAction::Hold).unwrap();
    assert_eq!(held, vec![1, 2]);
    assert_eq!(sa.take().len(), 2);
    // Rollback: still unacknowledged by this consumer, acknowledgeable again.
    q.settle_held(1, &held, false, false);
    assert_eq!(q.in_flight_count(), 4);
    q.ack(1, 1, false, AckAction::Consume).unwrap();
    // Commit of a held ack consumes it.
    let held = q.ack(1, 2, false, AckAction::Hold).unwrap();
    q.settle_held(1, &held, true, false);
    assert_eq!(q.in_flight_count(), 2);
}

#[test]
fn dead_sink_keeps_the_message() {
    let (_b, q) = setup();
    let (a, sa) = consumer(1, 10);
    sa.gone.store(true, Ordering::Relaxed);
    q.add_consumer(a);
    q.send(msg(1, "kept", false));
    assert_eq!(q.pending_count(), 1);
    let (b, sb) = consumer(2, 10);
    q.add_consumer(b);
    assert_eq!(sb.bodies(), ["kept"]);
}

#[test]
fn expired_messages_are_not_delivered() {
    let (broker, q) = setup();
    let mut m = Message::clone(&msg(1, "old", true));
    m.expiration = 1;
    q.send(Arc::new(m));
    q.send(msg(2, "fresh", false));
    let (a, sa) = consumer(1, 10);
    q.add_consumer(a);
    assert_eq!(sa.bodies(), ["fresh"]);
    let dead = broker.find_queue("ActiveMQ.DLQ").unwrap().browse();
    assert_eq!(dead.len(), 1);
    assert!(matches!(
        dead[0].property("dlqDeliveryFailureCause"),
        Some(crate::broker::message::PropValue::String(s)) if s.contains("Expired")
    ));
}

#[tokio::test]
async fn producers_wait_while_the_queue_is_over_its_memory_limit() {
    let broker = Broker::new(CoreConfig {
        destination_memory_limit: 2_000,
        ..CoreConfig::default()
    });
    let q = broker.queue("q");
    let mut over = false;
    for i in 0..20 {
        over = q.send(msg(i, &"x".repeat(200), false));
        if over {
            break;
        }
    }
    assert!(over, "the limit must be reached");
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.wait_for_space().await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "the producer must wait");
    let (a, sa) = consumer(1, 100);
    q.add_consumer(a);
    let n = sa.take().len() as u64;
    q.ack(1, n, true, AckAction::Consume).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("the producer is released once messages are consumed")
        .unwrap();
}

#[test]
fn paused_consumer_gets_nothing_until_given_credit() {
    let (_b, q) = setup();
    let (a, sa) = consumer(1, 0);
    q.add_consumer(a);
    q.send(msg(1, "m", false));
    assert!(sa.take().is_empty());
    q.set_prefetch(1, 5);
    assert_eq!(sa.bodies(), ["m"]);
}

#[test]
fn higher_priority_first_fifo_within_a_priority() {
    let (_b, q) = setup();
    for (i, p) in [4u8, 9, 4, 0, 9, 7].iter().enumerate() {
        let mut m = Message::clone(&msg(i as u64, &format!("p{p}-{i}"), false));
        m.priority = *p;
        q.send(Arc::new(m));
    }
    let (a, sa) = consumer(1, 100);
    q.add_consumer(a);
    assert_eq!(
        sa.bodies(),
        ["p9-1", "p9-4", "p7-5", "p4-0", "p4-2", "p0-3"]
    );
    // A redelivered message goes back to its place.
    q.remove_consumer(1, 0, false);
    let (b, sb) = consumer(2, 100);
    q.add_consumer(b);
    assert_eq!(
        sb.bodies(),
        ["p9-1", "p9-4", "p7-5", "p4-0", "p4-2", "p0-3"]
    );
}

#[test]
fn selectors_pick_their_messages_and_the_rest_waits() {
    use crate::broker::message::PropValue;
    use crate::broker::selector::Selector;
    let (_b, q) = setup();
    let (mut red, sr) = consumer(1, 10);
    red.selector = Some(Arc::new(Selector::parse("color = 'red'", false).unwrap()));
    let (mut blue, sb) = consumer(2, 10);
    blue.selector = Some(Arc::new(Selector::parse("color = 'blue'", false).unwrap()));
    q.add_consumer(red);
    for (i, c) in ["blue", "green", "red", "blue", "red"].iter().enumerate() {
        let mut m = Message::clone(&msg(i as u64, &format!("{c}{i}"), false));
        m.properties
            .push(("color".into(), PropValue::String((*c).into())));
        q.send(Arc::new(m));
    }
    // The red consumer skips the blue and green ones.
    assert_eq!(sr.bodies(), ["red2", "red4"]);
    q.add_consumer(blue);
    assert_eq!(sb.bodies(), ["blue0", "blue3"]);
    // Nobody selects green: it waits.
    assert_eq!(q.pending_count(), 1);
    let (plain, sp) = consumer(3, 10);
    q.add_consumer(plain);
    assert_eq!(sp.bodies(), ["green1"]);
}

#[test]
fn exclusive_consumer_gets_everything_until_it_goes() {
    let (_b, q) = setup();
    let (a, sa) = consumer(1, 100);
    let (mut b, sb) = consumer(2, 100);
    b.exclusive = true;
    let (c, sc) = consumer(3, 100);
    q.add_consumer(a);
    q.add_consumer(b);
    q.add_consumer(c);
    for i in 0..4 {
        q.send(msg(i, &format!("m{i}"), false));
    }
    assert!(sa.take().is_empty() && sc.take().is_empty());
    assert_eq!(sb.bodies(), ["m0", "m1", "m2", "m3"]);
    q.remove_consumer(2, 0, false);
    // The others share again (what it had not acked comes back to them).
    let total = sa.take().len() + sc.take().len();
    assert_eq!(total, 4);
}

#[test]
fn a_message_group_sticks_to_one_consumer() {
    use crate::broker::message::PropValue;
    let (_b, q) = setup();
    let (a, sa) = consumer(1, 100);
    let (b, sb) = consumer(2, 100);
    q.add_consumer(a);
    q.add_consumer(b);
    for (i, g) in ["x", "y", "x", "x", "y", "z"].iter().enumerate() {
        let mut m = Message::clone(&msg(i as u64, &format!("{g}{i}"), false));
        m.properties
            .push(("JMSXGroupID".into(), PropValue::String((*g).into())));
        q.send(Arc::new(m));
    }
    let (ga, gb) = (sa.bodies(), sb.bodies());
    let groups = |v: &Vec<String>| {
        v.iter()
            .map(|b| b[..1].to_string())
            .collect::<std::collections::HashSet<_>>()
    };
    assert!(groups(&ga).is_disjoint(&groups(&gb)), "{ga:?} / {gb:?}");
    assert_eq!(ga.len() + gb.len(), 6);
    // The group's consumer leaves: its groups move to the other one.
    let owner_of_x = if ga.iter().any(|b| b.starts_with('x')) {
        1
    } else {
        2
    };
    q.remove_consumer(owner_of_x, 0, false);
    let mut m = Message::clone(&msg(9, "x9", false));
    m.properties
        .push(("JMSXGroupID".into(), PropValue::String("x".into())));
    q.send(Arc::new(m));
    let survivor = if owner_of_x == 1 { &sb } else { &sa };
    assert!(survivor.bodies().contains(&"x9".to_string()));
}

/// As ActiveMQ: JMSXGroupSeq 1 starts a group afresh (on whichever consumer
/// takes it), a negative one closes it.
#[test]
fn a_group_sequence_restarts_and_closes_a_group() {
    use crate::broker::message::PropValue;
    let (_b, q) = setup();
    let (a, sa) = consumer(1, 100);
    let (b, sb) = consumer(2, 100);
    q.add_consumer(a);
    q.add_consumer(b);
    let send = |seq: u64, group: &str, group_seq: i32| {
        let mut m = Message::clone(&msg(seq, &format!("{group}{seq}"), false));
        m.properties
            .push(("JMSXGroupID".into(), PropValue::String(group.into())));
        m.properties
            .push(("JMSXGroupSeq".into(), PropValue::Int(group_seq)));
        q.send(Arc::new(m));
    };
    // Round robin starts at consumer 1: the group is its.
    send(0, "g", 0);
    send(1, "g", 0);
    // Closed by its last message: the next one goes round robin, to 2.
    send(2, "g", -1);
    send(3, "g", 0);
    // The first of a group for its consumer says so (JMSXGroupFirstForConsumer).
    assert_eq!(sa.flagged(), ["g0*", "g1", "g2"]);
    assert_eq!(
        sb.flagged(),
        ["g3*"],
        "the closed group was assigned afresh"
    );
    // Sequence 1 starts it afresh even though 2 owns it: round robin gives
    // it to 1, and the rest follows.
    send(4, "g", 1);
    send(5, "g", 0);
    assert_eq!(sa.flagged(), ["g4*", "g5"]);
}

/// A durable subscription's paged message whose record is no longer in the
/// journal (it was stored for the subscriptions attached before this one,
/// and they are done with it) is skipped, not waited for: the ones behind
/// it still come.
#[test]
fn a_durable_subscription_skips_a_paged_message_no_longer_in_the_journal() {
    use crate::store::{Op, Store, StoreConfig};
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(StoreConfig::new(dir.path().to_path_buf())).unwrap();
    let topic = Destination::topic("t");
    let (sub, gone, kept) = (store.next_id(), store.next_id(), store.next_id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut m = Message::clone(&msg(1, "kept", true));
        m.destination = topic.clone();
        m.store_id = kept;
        store
            .write(vec![Op::Add {
                id: kept,
                destination: topic.clone(),
                subs: vec![sub],
                message: Arc::new(m),
            }])
            .await
            .unwrap();
    });
    let q = Queue::new(
        topic,
        1 << 20,
        true,
        std::sync::Weak::new(),
        Some(Persistence {
            store: store.clone(),
            sub: Some(sub),
        }),
    );
    q.restore_paged(vec![gone, kept]);
    let (c, sink) = consumer(1, 10);
    q.add_consumer(c);
    assert_eq!(sink.bodies(), ["kept"]);
    assert_eq!(q.pending_count(), 0);
    store.close();
}

#[test]
fn a_backlog_keeps_its_messages_in_buffers_of_their_own() {
    let (_b, q) = setup();
    // As a protocol hands them over: body and property slices of the
    // buffer a read filled, shared with the other frames of that read.
    let read = Bytes::from(vec![b'x'; 8192]);
    let within =
        |p: *const u8| (read.as_ptr()..read.as_ptr().wrapping_add(read.len())).contains(&p);
    let framed = |seq: u64| {
        let mut m = Message::new(
            MessageId {
                producer: Arc::from("ID:test-1:1:1:1"),
                seq,
            },
            Destination::queue("q"),
            BodyKind::Bytes,
            read.slice(100..356),
        );
        let key = crate::bstr::ByteStr::from_utf8(read.slice(10..13)).unwrap();
        m.properties.push((key, PropValue::Int(1)));
        m.extras_mut().correlation_id =
            Some(crate::bstr::ByteStr::from_utf8(read.slice(20..24)).unwrap());
        Arc::new(m)
    };
    // A queue that keeps up passes them on as they are.
    q.send(framed(0));
    let kept = q.browse();
    assert!(within(kept[0].body.as_ptr()));
    // Past a sixteenth of the memory limit, they get buffers of their own,
    // with the same contents.
    let big = "y".repeat(4096);
    let n = q.memory_limit / 16 / big.len() + 1;
    for i in 0..n {
        q.send(msg(1 + i as u64, &big, false));
    }
    q.send(framed(1_000_000));
    let last = q.browse().pop().unwrap();
    assert_eq!(last.id.seq, 1_000_000);
    assert!(!within(last.body.as_ptr()));
    assert!(!within(last.properties[0].0.as_bytes().as_ptr()));
    let corr = last.extras().correlation_id.as_ref().unwrap();
    assert!(!within(corr.as_bytes().as_ptr()));
    assert_eq!(&last.body[..], &read[100..356]);
    assert_eq!(&*last.properties[0].0, "xxx");
    assert_eq!(corr.as_str(), "xxxx");
}

#[test]
fn a_backlog_no_selector_takes_is_not_evaluated_again_at_every_dispatch() {
    use crate::broker::selector::Selector;
    use crate::broker::subscription::SELECTOR_EVALUATIONS;
    let evaluations = || SELECTOR_EVALUATIONS.with(|n| n.get());
    let (_b, q) = setup();
    let (mut red, sr) = consumer(1, 1);
    red.selector = Some(Arc::new(Selector::parse("color = 'red'", false).unwrap()));
    q.add_consumer(red);
    // 5 000 green ones nobody selects, then red and green ones mixed, each
    // red one taken and acknowledged one at a time (prefetch 1).
    for i in 0..5_000 {
        q.send(Arc::new(colored(i, "green")));
    }
    let before = evaluations();
    let mut got = Vec::new();
    for i in 5_000..7_000u64 {
        q.send(Arc::new(colored(
            i,
            if i % 2 == 0 { "red" } else { "green" },
        )));
        for d in sr.take() {
            got.push(d.message.id.seq);
            q.ack(1, d.seq, true, AckAction::Consume).unwrap();
        }
    }
    assert_eq!(got, (5_000..7_000).step_by(2).collect::<Vec<_>>());
    // Each message is evaluated a few times, not the whole green front at
    // every dispatch (that was 5 000 evaluations per send and per ack).
    let spent = evaluations() - before;
    assert!(spent < 20_000, "{spent} selector evaluations");
    assert_eq!(q.pending_count(), 6_000);
    // A consumer that takes them gets the skipped ones too, in order.
    let (plain, sp) = consumer(2, 10_000);
    q.add_consumer(plain);
    let all: Vec<u64> = sp.take().iter().map(|d| d.message.id.seq).collect();
    assert_eq!(all.len(), 6_000);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(all[0], 0);
}

#[test]
fn a_message_put_back_among_the_unselected_is_dispatched() {
    use crate::broker::selector::Selector;
    let (_b, q) = setup();
    // A plain consumer takes a red message and holds it.
    let (plain, sp) = consumer(1, 1);
    q.add_consumer(plain);
    q.send(Arc::new(colored(0, "red")));
    assert_eq!(sp.bodies(), ["red0"]);
    // Behind it, green ones; the plain consumer is full, the red one does
    // not select them: they are the unselected front.
    let (mut red, sr) = consumer(2, 10);
    red.selector = Some(Arc::new(Selector::parse("color = 'red'", false).unwrap()));
    q.add_consumer(red);
    for i in 1..50 {
        q.send(Arc::new(colored(i, "green")));
    }
    // The plain consumer goes: its red message goes back in front of them,
    // and the red consumer gets it.
    assert!(q.remove_consumer(1, 0, false));
    assert_eq!(sr.bodies(), ["red0"]);
    assert_eq!(q.pending_count(), 49);
}

#[test]
fn expired_messages_in_the_unselected_front_are_taken_out() {
    use crate::broker::selector::Selector;
    let (_b, q) = setup();
    let (mut red, sr) = consumer(1, 10);
    red.selector = Some(Arc::new(Selector::parse("color = 'red'", false).unwrap()));
    q.add_consumer(red);
    let mut short = colored(0, "green");
    short.expiration = now_millis() + 100;
    q.send(Arc::new(short));
    q.send(Arc::new(colored(1, "green")));
    assert_eq!(q.pending_count(), 2);
    // Within a second of the last look, the front is only skipped.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    q.send(Arc::new(colored(2, "red")));
    assert_eq!(sr.bodies(), ["red2"]);
    assert_eq!(q.pending_count(), 1);
    assert_eq!(q.stats.expired.load(Ordering::Relaxed), 1);
}

/// A message with a `color` property, for selectors.
fn colored(seq: u64, color: &str) -> Message {
    let mut m = Message::clone(&msg(seq, &format!("{color}{seq}"), false));
    m.properties
        .push(("color".into(), PropValue::String(color.into())));
    m
}

/// ActiveMQ's consumer priority: consumers of a higher priority are offered
/// messages first (round robin among them); lower ones get what the higher
/// ones have no room for.
#[test]
fn higher_priority_consumers_are_offered_messages_first() {
    let (_b, q) = setup();
    let mut made = Vec::new();
    for (id, priority) in [(1, 0), (2, 5), (3, 5), (4, -1)] {
        let (mut spec, sink) = consumer(id, 2);
        spec.priority = priority;
        q.add_consumer(spec);
        made.push(sink);
    }
    for i in 0..8 {
        q.send(msg(i, &format!("m{i}"), false));
    }
    let got: Vec<Vec<String>> = made.iter().map(|s| s.bodies()).collect();
    assert_eq!(got[1], ["m0", "m2"]);
    assert_eq!(got[2], ["m1", "m3"]);
    assert_eq!(got[0], ["m4", "m5"]);
    assert_eq!(got[3], ["m6", "m7"]);
}

/// Round robin is kept per priority: a lower priority's consumers share
/// what the higher one leaves, even while the higher one keeps taking some.
#[test]
fn lower_priority_consumers_share_fairly() {
    let (_b, q) = setup();
    let (mut high, h) = consumer(1, 1);
    high.priority = 5;
    q.add_consumer(high);
    let (l0, s0) = consumer(2, 10);
    let (l1, s1) = consumer(3, 10);
    q.add_consumer(l0);
    q.add_consumer(l1);
    for i in 0..3u64 {
        // The high one takes one and is full; the next goes to a low one.
        q.send(msg(2 * i, &format!("h{i}"), false));
        q.send(msg(2 * i + 1, &format!("l{i}"), false));
        q.ack(1, i + 1, false, AckAction::Consume).unwrap();
    }
    assert_eq!(h.bodies(), ["h0", "h1", "h2"]);
    assert_eq!(s0.bodies(), ["l0", "l2"]);
    assert_eq!(s1.bodies(), ["l1"]);
}

#[test]
fn a_deleted_queue_refuses_sends_and_consumers() {
    let (_b, q) = setup();
    let (c, _) = consumer(1, 10);
    q.add_consumer(c);
    assert!(q.mark_deleted_if_unused().is_some(), "in use");
    q.remove_consumer(1, 0, false);
    assert!(q.mark_deleted_if_unused().is_none());
    q.send(msg(1, "late", false));
    assert_eq!(
        q.pending_count(),
        0,
        "a send racing the deletion goes with the queue"
    );
    let (c, _) = consumer(2, 10);
    assert!(q.try_add_consumer(c).is_err());
}
