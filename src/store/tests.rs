use super::*;
use crate::broker::message::{BodyKind, MessageId};

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir.to_path_buf());
    c.segment_size = 64 * 1024;
    c
}

fn msg(id: u64, dest: &Destination, body: &str) -> Arc<Message> {
    let mut m = Message::new(
        MessageId {
            producer: Arc::from("ID:t-1:1:1"),
            seq: id,
        },
        dest.clone(),
        BodyKind::Text,
        Bytes::from(body.to_string()),
    );
    m.persistent = true;
    m.store_id = id;
    Arc::new(m)
}

fn add(store: &Store, dest: &Destination, body: &str, subs: Vec<u64>) -> Op {
    let id = store.next_id();
    Op::Add {
        id,
        destination: dest.clone(),
        subs,
        message: msg(id, dest, body),
    }
}

/// What a restart recovers, with the messages (which recovery leaves in the
/// journal) read back as their queues and subscriptions would page them in.
struct Loaded {
    messages: Vec<(Destination, Vec<u64>, Arc<Message>)>,
    subs: Vec<RecoveredSub>,
    took: Duration,
}

fn load(dir: &std::path::Path) -> (Arc<Store>, Loaded) {
    load_with(config(dir))
}

fn load_with(config: StoreConfig) -> (Arc<Store>, Loaded) {
    let (store, r) = Store::open(config).unwrap();
    let located: Vec<(Destination, Vec<u64>, u64)> = r
        .queued
        .iter()
        .map(|(d, id)| (d.clone(), Vec::new(), *id))
        .chain(r.owed.iter().cloned())
        .collect();
    let ids: Vec<u64> = located.iter().map(|(_, _, id)| *id).collect();
    let messages: Vec<_> = located
        .into_iter()
        .zip(store.read_messages(&ids))
        .map(|((d, subs, _), read)| match read {
            ReadBack::Message(m) => (d, subs, m),
            other => panic!("a recovered message cannot be read back: {other:?}"),
        })
        .collect();
    let loaded = Loaded {
        messages,
        subs: r.subs,
        took: r.took,
    };
    (store, loaded)
}

fn bodies(r: &Loaded) -> Vec<String> {
    r.messages
        .iter()
        .map(|(_, _, m)| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn queue_messages_survive_a_restart_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let q = Destination::queue("q");
    rt().block_on(async {
        let (store, r) = Store::open(config(dir.path())).unwrap();
        assert!(r.queued.is_empty() && r.owed.is_empty());
        let mut ids = Vec::new();
        for i in 0..5 {
            let op = add(&store, &q, &format!("m{i}"), vec![]);
            if let Op::Add { id, .. } = &op {
                ids.push(*id);
            }
            store.write(vec![op]).await.unwrap();
        }
        store.submit(vec![Op::Remove { id: ids[1] }]);
        store.barrier().await.unwrap();
        store.close();
    });
    let (store, r) = load(dir.path());
    assert_eq!(bodies(&r), ["m0", "m2", "m3", "m4"]);
    assert!(r
        .messages
        .iter()
        .all(|(_, _, m)| m.store_id > 0 && m.persistent));
    // New ids continue after the recovered ones.
    assert!(store.next_id() > r.messages.last().unwrap().2.store_id);
}

#[test]
fn a_topic_message_is_stored_once_for_its_durable_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let t = Destination::topic("t");
    let (_s1, s2) = rt().block_on(async {
        let (store, _) = Store::open(config(dir.path())).unwrap();
        let s1 = store.next_id();
        let s2 = store.next_id();
        for (sub, name) in [(s1, "a"), (s2, "b")] {
            store
                .write(vec![Op::SubAdd {
                    sub,
                    client_id: Arc::from("c"),
                    name: Arc::from(name),
                    topic: t.clone(),
                    no_local: false,
                    selector: (name == "b").then(|| Arc::from("n > 1")),
                }])
                .await
                .unwrap();
        }
        let op = add(&store, &t, "both", vec![s1, s2]);
        let Op::Add { id, .. } = op else {
            unreachable!()
        };
        store.write(vec![op]).await.unwrap();
        let before = store.stats().records.load(Ordering::Relaxed);
        store.write(vec![Op::SubAck { sub: s1, id }]).await.unwrap();
        assert_eq!(store.stats().records.load(Ordering::Relaxed), before + 1);
        store.close();
        (s1, s2)
    });
    let (_, r) = load(dir.path());
    assert_eq!(r.subs.len(), 2);
    assert_eq!(
        r.subs[1].selector.as_deref(),
        Some("n > 1"),
        "a selector survives"
    );
    assert_eq!(r.subs[0].selector, None);
    assert_eq!(r.messages.len(), 1);
    assert_eq!(
        r.messages[0].1,
        vec![s2],
        "only the subscription that has not acked"
    );
    // One Add record holds the body once.
    let journal_bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(journal_bytes < 1024);
}

#[test]
fn a_transaction_is_all_or_nothing_even_when_torn() {
    let dir = tempfile::tempdir().unwrap();
    let q = Destination::queue("q");
    rt().block_on(async {
        let (store, _) = Store::open(config(dir.path())).unwrap();
        store
            .write(vec![add(&store, &q, "before", vec![])])
            .await
            .unwrap();
        let tx = vec![
            add(&store, &q, "tx1", vec![]),
            add(&store, &q, "tx2", vec![]),
            add(&store, &q, "tx3", vec![]),
        ];
        store.write(tx).await.unwrap();
        store.close();
    });
    let (_, r) = load(dir.path());
    assert_eq!(bodies(&r), ["before", "tx1", "tx2", "tx3"]);
    drop(r);
    // Tear the transaction record anywhere: none of it comes back.
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let full = std::fs::read(&seg).unwrap();
    let tx_start = full.windows(3).position(|w| w == b"tx1").unwrap() - 80;
    for cut in [tx_start + 40, full.len() - 1, full.len() - 10] {
        std::fs::write(&seg, &full[..cut]).unwrap();
        let (_, r) = load(dir.path());
        assert_eq!(bodies(&r), ["before"], "cut at {cut}");
        std::fs::write(&seg, &full).unwrap();
    }
}

#[test]
fn group_commit_shares_fsyncs_between_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let q = Destination::queue("q");
    rt().block_on(async {
        let (store, _) = Store::open(config(dir.path())).unwrap();
        let mut tasks = Vec::new();
        for w in 0..16 {
            let store = store.clone();
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let op = add(&store, &q, &format!("{w}-{i}"), vec![]);
                    store.write(vec![op]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let fsyncs = store.stats().fsyncs.load(Ordering::Relaxed);
        let records = store.stats().records.load(Ordering::Relaxed);
        assert_eq!(records, 400);
        assert!(
            fsyncs < records / 2,
            "{fsyncs} fsyncs for {records} records"
        );
        store.close();
    });
    let (_, r) = load(dir.path());
    assert_eq!(r.messages.len(), 400);
}

#[test]
fn write_and_fsync_failures_are_never_confirmed_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let q = Destination::queue("q");
    let mut cfg = config(dir.path());
    let faults = cfg.faults.clone();
    cfg.faults = faults.clone();
    rt().block_on(async {
        let (store, _) = Store::open(cfg.clone()).unwrap();
        store
            .write(vec![add(&store, &q, "ok1", vec![])])
            .await
            .unwrap();
        faults.fail_writes.store(true, Ordering::Relaxed);
        assert!(store
            .write(vec![add(&store, &q, "lost-write", vec![])])
            .await
            .is_err());
        faults.fail_writes.store(false, Ordering::Relaxed);
        faults.fail_syncs.store(true, Ordering::Relaxed);
        assert!(store
            .write(vec![add(&store, &q, "unsynced", vec![])])
            .await
            .is_err());
        faults.fail_syncs.store(false, Ordering::Relaxed);
        store
            .write(vec![add(&store, &q, "ok2", vec![])])
            .await
            .unwrap();
        store.close();
    });
    let (_, r) = load(dir.path());
    // A failed write leaves nothing, and what a failed fsync covered is cut
    // off again: neither was confirmed, and neither comes back.
    assert_eq!(bodies(&r), ["ok1", "ok2"]);
}

#[test]
fn an_oversized_record_fails_alone_in_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let q = Destination::queue("q");
    let mut cfg = config(dir.path());
    cfg.max_record = 1000;
    let faults = cfg.faults.clone();
    rt().block_on(async {
        let (store, _) = Store::open(cfg).unwrap();
        let acked = add(&store, &q, "acked", vec![]);
        let acked_id = add_id(&acked);
        store.write(vec![acked]).await.unwrap();
        // While a slow sync runs, the next three gather into one batch.
        faults.sync_delay_ms.store(200, Ordering::Relaxed);
        let first = add(&store, &q, "first", vec![]);
        let s2 = store.clone();
        let slow = tokio::spawn(async move { s2.write(vec![first]).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        faults.sync_delay_ms.store(0, Ordering::Relaxed);
        store.submit(vec![Op::Remove { id: acked_id }]);
        let big = store.write(vec![add(&store, &q, &"x".repeat(2000), vec![])]);
        let fine = store.write(vec![add(&store, &q, "fine", vec![])]);
        let (big, fine) = tokio::join!(big, fine);
        assert!(big.is_err(), "the oversized record is refused");
        fine.expect("a record beside it is written");
        slow.await.unwrap().unwrap();
        store.close();
    });
    let (_, r) = load(dir.path());
    assert_eq!(bodies(&r), ["first", "fine"]);
}

#[test]
fn acknowledgements_of_a_failed_batch_are_written_once_the_disk_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let q = Destination::queue("q");
    let cfg = config(dir.path());
    let faults = cfg.faults.clone();
    rt().block_on(async {
        let (store, _) = Store::open(cfg).unwrap();
        let ops: Vec<Op> = (0..3)
            .map(|i| add(&store, &q, &format!("m{i}"), vec![]))
            .collect();
        let ids: Vec<u64> = ops.iter().map(add_id).collect();
        store.write(ops).await.unwrap();
        faults.fail_writes.store(true, Ordering::Relaxed);
        // The broker acted on these acks already: they are not dropped.
        store.submit(vec![Op::Remove { id: ids[0] }]);
        store.submit(vec![Op::Remove { id: ids[2] }]);
        assert!(
            store.barrier().await.is_err(),
            "nothing is confirmed while earlier acks are not written"
        );
        faults.fail_writes.store(false, Ordering::Relaxed);
        store.barrier().await.unwrap();
        store.close();
    });
    let (_, r) = load(dir.path());
    assert_eq!(bodies(&r), ["m1"]);
}

#[test]
fn acknowledgements_of_a_failed_batch_are_retried_without_new_work() {
    let dir = tempfile::tempdir().unwrap();
    let q = Destination::queue("q");
    let cfg = config(dir.path());
    let faults = cfg.faults.clone();
    rt().block_on(async {
        let (store, _) = Store::open(cfg).unwrap();
        let op = add(&store, &q, "m", vec![]);
        let id = add_id(&op);
        store.write(vec![op]).await.unwrap();
        faults.fail_writes.store(true, Ordering::Relaxed);
        store.submit(vec![Op::Remove { id }]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        faults.fail_writes.store(false, Ordering::Relaxed);
        // No other submission: the writer retries on its own.
        tokio::time::sleep(RETRY_DELAY + Duration::from_millis(500)).await;
        // Crash: the store is dropped without a close.
        std::mem::forget(store);
    });
    let (_, r) = load(dir.path());
    assert!(bodies(&r).is_empty());
}

#[test]
fn consumed_segments_are_deleted_and_compaction_keeps_exactly_the_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let q = Destination::queue("q");
    let body = "x".repeat(2000);
    let keep = rt().block_on(async {
        let (store, _) = Store::open(config(dir.path())).unwrap();
        // One old message stays; thousands come and go after it.
        let first = add(&store, &q, "the slow one", vec![]);
        let Op::Add { id: keep, .. } = first else {
            unreachable!()
        };
        store.write(vec![first]).await.unwrap();
        for _ in 0..300 {
            let op = add(&store, &q, &body, vec![]);
            let Op::Add { id, .. } = op else {
                unreachable!()
            };
            store.write(vec![op]).await.unwrap();
            store.write(vec![Op::Remove { id }]).await.unwrap();
        }
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(
            segments <= 6,
            "{segments} segments: old ones must be deleted"
        );
        assert!(store.stats().segments_deleted.load(Ordering::Relaxed) > 0);
        assert!(store.stats().compactions.load(Ordering::Relaxed) > 0);
        assert!(store.usage() < 6 * 64 * 1024);
        // A page-in reads it from where compaction moved it; consumed ones
        // are not there.
        let read = store.read_messages(&[keep, keep + 1]);
        assert!(
            matches!(&read[0], ReadBack::Message(m) if &m.body[..] == b"the slow one" && m.store_id == keep)
        );
        assert!(matches!(read[1], ReadBack::NotWritten));
        store.close();
        keep
    });
    let (_, r) = load(dir.path());
    assert_eq!(bodies(&r), ["the slow one"]);
    assert_eq!(r.messages[0].2.store_id, keep);
}

/// A record written under a larger size limit than today's is still copied
/// forward by compaction (it is not refused as a new record would be), so
/// the segments behind it are still reclaimed.
#[test]
fn compaction_copies_a_record_over_a_lowered_limit() {
    let dir = tempfile::tempdir().unwrap();
    let q = Destination::queue("q");
    let big = "b".repeat(5000);
    let keep = rt().block_on(async {
        let (store, _) = Store::open(config(dir.path())).unwrap();
        let first = add(&store, &q, &big, vec![]);
        let keep = add_id(&first);
        store.write(vec![first]).await.unwrap();
        store.close();
        keep
    });
    let mut lowered = config(dir.path());
    lowered.max_record = 3000;
    let body = "x".repeat(2000);
    rt().block_on(async {
        let (store, _) = Store::open(lowered.clone()).unwrap();
        for _ in 0..300 {
            let op = add(&store, &q, &body, vec![]);
            let id = add_id(&op);
            store.write(vec![op]).await.unwrap();
            store.write(vec![Op::Remove { id }]).await.unwrap();
        }
        assert!(store.stats().compactions.load(Ordering::Relaxed) > 0);
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(
            segments <= 6,
            "{segments} segments: old ones must be deleted"
        );
        store.close();
    });
    let (_, r) = load_with(lowered);
    assert_eq!(bodies(&r), [big]);
    assert_eq!(r.messages[0].2.store_id, keep);
}

#[test]
fn a_million_small_messages_recover_quickly() {
    // Scaled down for the unit test; the README's figure comes from the
    // `recovery_benchmark` test in release mode.
    let dir = tempfile::tempdir().unwrap();
    let q = Destination::queue("q");
    let n = 20_000;
    rt().block_on(async {
        let mut cfg = config(dir.path());
        cfg.segment_size = 32 * 1024 * 1024;
        let (store, _) = Store::open(cfg).unwrap();
        let ops: Vec<Op> = (0..n)
            .map(|i| add(&store, &q, &format!("small {i}"), vec![]))
            .collect();
        for chunk in ops.chunks(1000) {
            for op in chunk {
                store.submit(vec![op.clone()]);
            }
            store.barrier().await.unwrap();
        }
        store.close();
    });
    let mut cfg = config(dir.path());
    cfg.segment_size = 32 * 1024 * 1024;
    let (_, r) = load_with(cfg);
    assert_eq!(r.messages.len(), n);
    assert!(r.took < Duration::from_secs(10), "{:?}", r.took);
}

#[test]
fn removes_in_one_batch_free_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let q = Destination::queue("q");
    rt().block_on(async {
        let (store, _) = Store::open(config(dir.path())).unwrap();
        let body = "y".repeat(16 * 1024);
        let mut ids = Vec::new();
        for _ in 0..30 {
            let op = add(&store, &q, &body, vec![]);
            let Op::Add { id, .. } = &op else {
                unreachable!()
            };
            ids.push(*id);
            store.write(vec![op]).await.unwrap();
        }
        let before = store.usage();
        store.submit(ids.iter().map(|id| Op::Remove { id: *id }).collect());
        store.barrier().await.unwrap();
        assert!(store.stats().segments_deleted.load(Ordering::Relaxed) > 0);
        assert!(
            store.usage() < before / 4,
            "{} -> {}",
            before,
            store.usage()
        );
    });
}

#[test]
fn a_message_consumed_before_it_is_written_is_never_written() {
    let q = Destination::queue("q");
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path())).unwrap();
    let keep = add(&store, &q, "kept", vec![]);
    let gone = add(&store, &q, "consumed at once", vec![]);
    let (Op::Add { id: keep_id, .. }, Op::Add { id: gone_id, .. }) = (&keep, &gone) else {
        unreachable!()
    };
    let (keep_id, gone_id) = (*keep_id, *gone_id);
    let mut batch = vec![
        Submission {
            ops: vec![keep],
            done: None,
            lone: None,
            held: None,
        },
        Submission {
            ops: vec![gone],
            done: None,
            lone: None,
            held: None,
        },
        Submission {
            ops: vec![Op::Remove { id: gone_id }, Op::Remove { id: 999_999 }],
            done: None,
            lone: None,
            held: None,
        },
    ];
    assert_eq!(Writer::cancel_consumed(&mut batch), 1);
    assert!(matches!(batch[0].ops.as_slice(), [Op::Add { id, .. }] if *id == keep_id));
    assert!(batch[1].ops.is_empty());
    assert!(matches!(
        batch[2].ops.as_slice(),
        [Op::Remove { id: 999_999 }]
    ));
    // A transaction's Add is never cancelled.
    let tx_add = add(&store, &q, "in a transaction", vec![]);
    let Op::Add { id: tx_id, .. } = &tx_add else {
        unreachable!()
    };
    let tx_id = *tx_id;
    let mut batch = vec![
        Submission {
            ops: vec![tx_add, Op::Remove { id: 1 }],
            done: None,
            lone: None,
            held: None,
        },
        Submission {
            ops: vec![Op::Remove { id: tx_id }],
            done: None,
            lone: None,
            held: None,
        },
    ];
    assert_eq!(Writer::cancel_consumed(&mut batch), 0);
    assert_eq!(batch[1].ops.len(), 1);
}

fn add_id(op: &Op) -> u64 {
    match op {
        Op::Add { id, .. } => *id,
        _ => unreachable!(),
    }
}

#[test]
fn consumption_confirms_the_producer_and_cancels_an_unwritten_add() {
    let q = Destination::queue("q");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let faults = cfg.faults.clone(); // shares the switches
    rt().block_on(async {
        let (store, _) = Store::open(cfg).unwrap();
        // A slow fsync keeps the writer busy with the first message.
        faults.sync_delay_ms.store(400, Ordering::Relaxed);
        let first = add(&store, &q, "being written", vec![]);
        let first_id = add_id(&first);
        let first_done = store.start_write(vec![first]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Queued behind it: consumed before the writer gets to it.
        let second = add(&store, &q, "consumed before written", vec![]);
        let second_id = add_id(&second);
        let second_done = store.start_write(vec![second]);
        let started = Instant::now();
        store.consumed(vec![Op::Remove { id: second_id }]);
        tokio::time::timeout(Duration::from_millis(200), second_done)
            .await
            .expect("a consumed message's producer is told at once")
            .unwrap();
        // The one being written is confirmed by its consumption too, before
        // its fsync ends; its removal is written after it.
        store.consumed(vec![Op::Remove { id: first_id }]);
        tokio::time::timeout(Duration::from_millis(200), first_done)
            .await
            .expect("confirmed on consumption while being written")
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(300));
        faults.sync_delay_ms.store(0, Ordering::Relaxed);
        let kept = add(&store, &q, "kept", vec![]);
        store.write(vec![kept]).await.unwrap();
        assert_eq!(store.stats().cancelled.load(Ordering::Relaxed), 1);
        store.close();
    });
    let (store, r) = load(dir.path());
    assert_eq!(bodies(&r), vec!["kept"]);
    // Only the first Add, its Remove and "kept" reached the journal.
    drop(store);
    let (_, records) = Journal::open(
        &dir.path().join(""),
        64 * 1024,
        128 * 1024 * 1024,
        Faults::default(),
    )
    .unwrap();
    assert_eq!(records.len(), 3);
}

#[test]
fn a_transaction_s_removal_does_not_confirm_early() {
    let q = Destination::queue("q");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let faults = cfg.faults.clone();
    rt().block_on(async {
        let (store, _) = Store::open(cfg).unwrap();
        faults.sync_delay_ms.store(300, Ordering::Relaxed);
        let first = add(&store, &q, "a", vec![]);
        let first_done = store.start_write(vec![first]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = add(&store, &q, "b", vec![]);
        let second_id = add_id(&second);
        let mut second_done = Box::pin(store.start_write(vec![second]));
        // A committed transaction's acknowledgement is only as good as its
        // record: the producer waits for that.
        let tx = store.start_write(vec![
            Op::Remove { id: second_id },
            add(&store, &q, "tx send", vec![]),
        ]);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut second_done)
                .await
                .is_err()
        );
        faults.sync_delay_ms.store(0, Ordering::Relaxed);
        first_done.await.unwrap();
        second_done.await.unwrap();
        tx.await.unwrap();
        store.close();
    });
    let (_, r) = load(dir.path());
    assert_eq!(bodies(&r), vec!["a", "tx send"]);
}

#[test]
fn recovered_queue_messages_share_their_destination_name() {
    let dir = tempfile::tempdir().unwrap();
    let q = Destination::queue("shared");
    rt().block_on(async {
        let (store, _) = Store::open(config(dir.path())).unwrap();
        for i in 0..3 {
            store
                .write(vec![add(&store, &q, &format!("m{i}"), vec![])])
                .await
                .unwrap();
        }
        store.close();
    });
    let (_, r) = Store::open(config(dir.path())).unwrap();
    assert_eq!(r.queued.len(), 3);
    let (d0, _) = &r.queued[0];
    for (d, _) in &r.queued[1..] {
        assert!(Arc::ptr_eq(&d0.name, &d.name));
    }
}

#[test]
fn a_dispatched_add_is_held_for_its_ack_and_written_when_none_comes() {
    let q = Destination::queue("q");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.dispatch_hold = Duration::from_millis(300);
    rt().block_on(async {
        let (store, _) = Store::open(cfg).unwrap();
        // Handed to a consumer whose ack comes within the hold: never written.
        let acked = add(&store, &q, "acked in time", vec![]);
        let acked_id = add_id(&acked);
        let acked_done = store.start_write_deferred(vec![acked]);
        store.wake(acked_id, true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.consumed(vec![Op::Remove { id: acked_id }]);
        tokio::time::timeout(Duration::from_millis(100), acked_done)
            .await
            .expect("confirmed by its consumption")
            .unwrap();
        assert_eq!(store.stats().cancelled.load(Ordering::Relaxed), 1);
        assert_eq!(store.stats().records.load(Ordering::Relaxed), 0);
        // No ack: written once the hold is over, and only then confirmed.
        let unacked = add(&store, &q, "never acked", vec![]);
        let unacked_id = add_id(&unacked);
        let started = Instant::now();
        let unacked_done = store.start_write_deferred(vec![unacked]);
        store.wake(unacked_id, true);
        unacked_done.await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        // Not handed to a consumer (nobody will ack it soon): written at once.
        let queued = add(&store, &q, "nobody has it", vec![]);
        let queued_id = add_id(&queued);
        let started = Instant::now();
        let queued_done = store.start_write_deferred(vec![queued]);
        store.wake(queued_id, false);
        queued_done.await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(250));
        // Anything else queued behind held Adds ends the hold too.
        let held = add(&store, &q, "held", vec![]);
        let held_id = add_id(&held);
        let started = Instant::now();
        let held_done = store.start_write_deferred(vec![held]);
        store.wake(held_id, true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        store
            .write(vec![add(&store, &q, "plain write", vec![])])
            .await
            .unwrap();
        held_done.await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(250));
        // An acknowledgement nobody waits for does not end a hold.
        let written = add(&store, &q, "written, then acked", vec![]);
        let written_id = add_id(&written);
        store.write(vec![written]).await.unwrap();
        let cancelled = store.stats().cancelled.load(Ordering::Relaxed);
        let held = add(&store, &q, "held past an ack", vec![]);
        let held_id = add_id(&held);
        let held_done = store.start_write_deferred(vec![held]);
        store.wake(held_id, true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.submit(vec![Op::Remove { id: written_id }]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.consumed(vec![Op::Remove { id: held_id }]);
        held_done.await.unwrap();
        assert_eq!(
            store.stats().cancelled.load(Ordering::Relaxed),
            cancelled + 1
        );
        store.close();
    });
    let (_, r) = load(dir.path());
    assert_eq!(
        bodies(&r),
        vec!["never acked", "nobody has it", "held", "plain write"]
    );
}

#[test]
fn holds_stop_while_acks_come_too_late() {
    let mut p = HoldPolicy::new(Duration::from_millis(1));
    assert!(p.enabled());
    for _ in 0..HoldPolicy::MISSES {
        assert!(!p.outcome(0, 1));
    }
    let skipped = (0..10_000).take_while(|_| !p.enabled()).count();
    assert_eq!(skipped as u32, HoldPolicy::MIN_BACKOFF);
    for _ in 0..HoldPolicy::MISSES {
        assert!(!p.outcome(0, 1));
    }
    let skipped = (0..10_000).take_while(|_| !p.enabled()).count();
    assert_eq!(skipped as u32, HoldPolicy::MIN_BACKOFF * 2);
    // A hold that worked resets the back-off.
    assert!(p.outcome(3, 1));
    for _ in 0..HoldPolicy::MISSES {
        assert!(!p.outcome(0, 1));
    }
    let skipped = (0..10_000).take_while(|_| !p.enabled()).count();
    assert_eq!(skipped as u32, HoldPolicy::MIN_BACKOFF);
    assert!(!HoldPolicy::new(Duration::ZERO).enabled());
}

#[test]
fn made_queues_are_remembered_through_compaction() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (store, r) = Store::open(config(dir.path())).unwrap();
        assert!(r.queues.is_empty());
        store
            .write(vec![Op::QueueAdd {
                name: Arc::from("Consumer.A.VirtualTopic.x"),
            }])
            .await
            .unwrap();
        store
            .write(vec![Op::QueueAdd {
                name: Arc::from("b"),
            }])
            .await
            .unwrap();
        // Enough traffic after them that their segment is compacted away.
        churn(&store, 300).await;
        assert!(store.stats().compactions.load(Ordering::Relaxed) > 0);
        assert!(std::fs::read_dir(dir.path()).unwrap().count() <= 6);
        store.close();
    });
    let (_, r) = Store::open(config(dir.path())).unwrap();
    assert_eq!(
        r.queues,
        [
            Destination::queue("Consumer.A.VirtualTopic.x"),
            Destination::queue("b")
        ]
    );
}

/// Queue records never go: where many gathered, their segment must still be
/// compacted (and every segment after it deleted).
#[test]
fn many_queue_records_do_not_stop_segments_being_deleted() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (store, _) = Store::open(config(dir.path())).unwrap();
        for i in 0..400 {
            store.submit(vec![Op::QueueAdd {
                name: Arc::from(format!("queue-{i}")),
            }]);
        }
        churn(&store, 600).await;
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(
            segments <= 6,
            "{segments} segments: old ones must be deleted"
        );
        store.close();
    });
    let (_, r) = Store::open(config(dir.path())).unwrap();
    assert_eq!(r.queues.len(), 400);
}

/// `n` messages of 2 000 bytes that come and go: enough of them fill and
/// retire segments.
async fn churn(store: &Store, n: usize) {
    let q = Destination::queue("churn");
    let body = "x".repeat(2000);
    for _ in 0..n {
        let op = add(store, &q, &body, vec![]);
        let id = add_id(&op);
        store.write(vec![op]).await.unwrap();
        store.write(vec![Op::Remove { id }]).await.unwrap();
    }
}

/// More queue records than fill the segments compaction leaves alone:
/// compacting them only moves them forward, so a pass must end (it once
/// went on copying them for ever, holding the index).
#[test]
fn a_journal_of_mostly_queue_records_is_compacted_in_bounded_passes() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (store, _) = Store::open(config(dir.path())).unwrap();
        let long = "q".repeat(200);
        for i in 0..3000 {
            store.submit(vec![Op::QueueAdd {
                name: Arc::from(format!("{long}-{i}")),
            }]);
        }
        let churned = tokio::time::timeout(Duration::from_secs(60), churn(&store, 300)).await;
        assert!(churned.is_ok(), "the writer is stuck compacting");
        store.close();
    });
    let (_, r) = Store::open(config(dir.path())).unwrap();
    assert_eq!(r.queues.len(), 3000);
}
