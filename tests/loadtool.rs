//! The load tools against the in-process broker: every message sent is
//! received, over STOMP and OpenWire, queues and topics, persistent and
//! transacted.

mod common;

use common::TestBroker;
use ferromq::loadtool::{run_consumer, run_producer, CommonArgs, ConsumerArgs, ProducerArgs};
use std::time::Duration;

fn common(url: String, destination: &str, count: u64, clients: usize) -> CommonArgs {
    CommonArgs {
        url,
        destination: destination.into(),
        count,
        clients,
        duration: None,
        timeout: 60.0,
        json: false,
        threads: 1,
        user: None,
        password: None,
    }
}

async fn round_trip(
    url: String,
    destination: &str,
    count: u64,
    persistent: bool,
    batch: u64,
    ack: &str,
) {
    let consumer = tokio::spawn(run_consumer(ConsumerArgs {
        common: common(url.clone(), destination, count, 2),
        ack: ack.into(),
        prefetch: 100,
        batch,
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let p = run_producer(ProducerArgs {
        common: common(url, destination, count, 2),
        size: 100,
        persistent,
        batch,
        rate: 0.0,
    })
    .await
    .unwrap();
    assert_eq!((p.messages, p.errors), (count, 0), "{:?}", p.first_error);
    let c = consumer.await.unwrap().unwrap();
    assert_eq!((c.messages, c.errors), (count, 0), "{:?}", c.first_error);
    let l = c.latency.expect("latency measured");
    assert!(l.p50_us <= l.p99_us && l.p99_us <= l.max_us);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_and_openwire_tools_deliver_every_message() {
    let b = TestBroker::start().await;
    let stomp = format!("stomp://{}", b.stomp);
    let tcp = format!("tcp://{}", b.auto);
    round_trip(stomp.clone(), "queue://lt-stomp", 3000, false, 0, "auto").await;
    round_trip(tcp.clone(), "queue://lt-ow", 3000, false, 0, "auto").await;
    round_trip(stomp.clone(), "queue://lt-stomp-p", 300, true, 0, "client").await;
    round_trip(tcp.clone(), "queue://lt-ow-p", 300, true, 0, "auto").await;
    round_trip(stomp, "queue://lt-stomp-tx", 1000, true, 50, "individual").await;
    round_trip(tcp.clone(), "queue://lt-ow-tx", 1000, true, 50, "auto").await;
    // A topic: every subscriber gets every message.
    let consumer = tokio::spawn(run_consumer(ConsumerArgs {
        common: common(tcp.clone(), "topic://lt-t", 500, 3),
        ack: "auto".into(),
        prefetch: 1000,
        batch: 0,
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = run_producer(ProducerArgs {
        common: common(tcp, "topic://lt-t", 500, 1),
        size: 10,
        persistent: false,
        batch: 0,
        rate: 2000.0,
    })
    .await
    .unwrap();
    assert_eq!(p.messages, 500);
    assert!(p.seconds >= 0.2, "paced at 2000/s: {}", p.seconds);
    let c = consumer.await.unwrap().unwrap();
    assert_eq!(c.messages, 1500);
}
