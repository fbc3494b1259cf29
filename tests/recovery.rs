//! Recovery time of a large journal (the README's figure comes from here).

use bytes::Bytes;
use ferromq::broker::destination::Destination;
use ferromq::broker::message::{BodyKind, Message, MessageId};
use ferromq::store::{Op, ReadBack, Store, StoreConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_small_persistent_messages_recover_in_seconds() {
    let n: usize = std::env::var("FERROMQ_RECOVERY_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            100_000
        } else {
            1_000_000
        });
    let dir = tempfile::tempdir().unwrap();
    let queue = Destination::queue("recovery");
    let producer: Arc<str> = Arc::from("ID:recovery-1-1-1:1:1:1");
    let started = Instant::now();
    {
        let (store, _) = Store::open(StoreConfig::new(dir.path().to_path_buf())).unwrap();
        for chunk in 0..n.div_ceil(10_000) {
            for i in chunk * 10_000..((chunk + 1) * 10_000).min(n) {
                let id = store.next_id();
                let mut m = Message::new(
                    MessageId {
                        producer: producer.clone(),
                        seq: i as u64,
                    },
                    queue.clone(),
                    BodyKind::Text,
                    Bytes::from(format!("message {i}")),
                );
                m.persistent = true;
                m.store_id = id;
                store.submit(vec![Op::Add {
                    id,
                    destination: queue.clone(),
                    subs: Vec::new(),
                    message: Arc::new(m),
                }]);
            }
            store.barrier().await.unwrap();
        }
        store.close();
    }
    let wrote = started.elapsed();
    let started = Instant::now();
    let (store, recovered) = Store::open(StoreConfig::new(dir.path().to_path_buf())).unwrap();
    let took = started.elapsed();
    // Queue messages stay in the journal until their queue pages them in.
    assert_eq!(recovered.queued.len(), n);
    let ends = [recovered.queued[0].1, recovered.queued[n - 1].1];
    let read = store.read_messages(&ends);
    let [ReadBack::Message(first), ReadBack::Message(last)] = &read[..] else {
        panic!("{read:?}")
    };
    assert_eq!(first.body, Bytes::from("message 0"));
    assert_eq!(last.id.seq, n as u64 - 1);
    eprintln!("recovery: {n} messages written in {wrote:?}, recovered in {took:?}");
    assert!(took < Duration::from_secs(30), "recovery took {took:?}");
}
