//! Persistent messages and durable subscriptions across restarts, a crash
//! (SIGKILL) in the middle of a load, and a full disk.

mod common;

use common::ow::OwClient;
use common::*;
use ferromq::stomp::frame::Command;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The first message of the backlog test not acknowledged before the restart.
fn got_first_unacked(got: &[String], n: usize) -> String {
    let next = got.iter().filter(|b| *b != "transient").count().min(n);
    format!("{next:05}-{}", "x".repeat(1024))
}

fn persistent(dest: &str, body: &str, receipt: &str) -> ferromq::stomp::frame::Frame {
    frame(
        Command::Send,
        &[
            ("destination", dest),
            ("persistent", "true"),
            ("receipt", receipt),
        ],
    )
    .with_body(body.as_bytes().to_vec())
}

/// Sends `p<prio>-<i>` persistent with that priority (and `extra` headers),
/// and waits for its receipt.
async fn send_with_priority(
    p: &mut Client,
    dest: &str,
    i: usize,
    prio: &str,
    extra: &[(&str, &str)],
) {
    let r = format!("r{i}");
    let mut headers = vec![
        ("destination", dest),
        ("persistent", "true"),
        ("priority", prio),
        ("receipt", r.as_str()),
    ];
    headers.extend_from_slice(extra);
    p.send(&frame(Command::Send, &headers).with_body(format!("p{prio}-{i}").into_bytes()))
        .await;
    p.expect_receipt(&r).await;
}

/// Sends `body(i)` persistent for each `i`, each confirmed by its receipt.
async fn send_confirmed(
    p: &mut Client,
    dest: &str,
    range: std::ops::Range<usize>,
    body: impl Fn(usize) -> String,
) {
    for i in range {
        let r = format!("r{i}");
        p.send(&persistent(dest, &body(i), &r)).await;
        p.expect_receipt(&r).await;
    }
}

async fn drain(c: &mut Client) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(f) = c.recv_within(Duration::from_millis(500)).await {
        if f.command == Command::Message {
            got.push(body(&f));
        }
    }
    got
}

#[tokio::test]
async fn persistent_queue_messages_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let mut p = b.connect("1.2").await;
    for i in 0..4 {
        p.send(&persistent(
            "/queue/keep",
            &format!("p{i}"),
            &format!("r{i}"),
        ))
        .await;
        p.expect_receipt(&format!("r{i}")).await;
    }
    p.send_text("/queue/keep", "transient", Some("t")).await;
    // Consume the first one and have that acknowledgement confirmed.
    let mut c = b.connect("1.2").await;
    c.subscribe(
        "s",
        "/queue/keep",
        "client-individual",
        &[("activemq.prefetchSize", "1")],
    )
    .await;
    let m = c.expect_message().await;
    assert_eq!(body(&m), "p0");
    c.send(&frame(
        Command::Ack,
        &[("id", m.header("ack").unwrap()), ("receipt", "a")],
    ))
    .await;
    // The ack frees the prefetch slot: p1 may come before the receipt.
    loop {
        let f = c.recv().await;
        if f.command == Command::Receipt {
            break;
        }
    }
    drop(c);
    b.stop().await;

    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/keep", "auto", &[]).await;
    // p1 was dispatched (prefetch 1) but never acked: it is back too.
    assert_eq!(drain(&mut c).await, ["p1", "p2", "p3"]);
    b.stop().await;
}

#[tokio::test]
async fn durable_subscriptions_and_their_messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let sub = frame(
        Command::Subscribe,
        &[
            ("id", "d"),
            ("destination", "/topic/news"),
            ("activemq.subscriptionName", "mine"),
            ("receipt", "sub"),
        ],
    );
    for client in ["c1", "c2"] {
        let mut c = Client::connect(b.stomp, "1.2", &[("client-id", client)]).await;
        c.send(&sub).await;
        c.expect_receipt("sub").await;
        c.disconnect().await;
    }
    let mut p = b.connect("1.2").await;
    for i in 0..3 {
        p.send(&persistent(
            "/topic/news",
            &format!("n{i}"),
            &format!("r{i}"),
        ))
        .await;
        p.expect_receipt(&format!("r{i}")).await;
    }
    // c1 reads everything before the restart; c2 stays offline.
    let mut c = Client::connect(b.stomp, "1.2", &[("client-id", "c1")]).await;
    c.send(&sub).await;
    c.expect_receipt("sub").await;
    for i in 0..3 {
        let m = c.expect_message().await;
        assert_eq!(body(&m), format!("n{i}"));
    }
    c.disconnect().await;
    b.stop().await;

    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    for (client, expected) in [("c1", vec![]), ("c2", vec!["n0", "n1", "n2"])] {
        let mut c = Client::connect(b.stomp, "1.2", &[("client-id", client)]).await;
        c.send(&sub).await;
        c.expect_receipt("sub").await;
        assert_eq!(drain(&mut c).await, expected, "{client}");
        c.disconnect().await;
    }
    b.stop().await;
}

#[tokio::test]
async fn persisted_by_stomp_consumed_over_openwire_after_a_restart_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let mut p = b.connect("1.2").await;
    p.send(&persistent("/queue/x-proto", "from stomp", "r"))
        .await;
    p.expect_receipt("r").await;
    let mut ow = OwClient::connect(b.auto, 30_000).await;
    ow.register().await;
    ow.send_text("x-proto-back", "from openwire", 1).await;
    drop(ow);
    b.stop().await;

    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let mut ow = OwClient::connect(b.auto, 30_000).await;
    ow.register().await;
    ow.consume("x-proto", 10).await;
    assert_eq!(ow.receive_text().await.as_deref(), Some("from stomp"));
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/x-proto-back", "auto", &[]).await;
    let m = c.expect_message().await;
    assert_eq!(body(&m), "from openwire");
    assert_eq!(m.header("persistent").unwrap(), "true");
    b.stop().await;
}

#[tokio::test]
async fn a_failing_disk_refuses_sends_keeps_serving_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut faults = None;
    let b = TestBroker::start_in(dir.path(), |c| faults = Some(c.store_faults.clone())).await;
    let faults = faults.unwrap();
    let mut p = b.connect("1.2").await;
    p.send(&persistent("/queue/disk", "before", "r1")).await;
    p.expect_receipt("r1").await;
    faults.fail_writes.store(true, Ordering::Relaxed);
    p.send(&persistent("/queue/disk", "refused", "r2")).await;
    let e = p.expect_error().await;
    assert!(e.header("message").unwrap().contains("store"), "{e:?}");
    assert_eq!(e.header("receipt-id").unwrap(), "r2");
    // Consumers are still served, non-persistent sends still work.
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/disk", "auto", &[]).await;
    assert_eq!(body(&c.expect_message().await), "before");
    p.send_text("/queue/disk", "transient", Some("r3")).await;
    assert_eq!(body(&c.expect_message().await), "transient");
    faults.fail_writes.store(false, Ordering::Relaxed);
    p.send(&persistent("/queue/disk", "after", "r4")).await;
    p.expect_receipt("r4").await;
    assert_eq!(body(&c.expect_message().await), "after");
    assert!(
        c.recv_within(Duration::from_millis(300)).await.is_none(),
        "the refused one never appears"
    );
}

/// ActiveMQ's concurrent store and dispatch: a persistent send to a queue is
/// confirmed once it is durable or once a consumer has consumed it,
/// whichever comes first; a message consumed before it is written never is.
#[tokio::test]
async fn a_persistent_send_consumed_at_once_is_confirmed_before_a_slow_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut faults = None;
    let b = TestBroker::start_in(dir.path(), |c| faults = Some(c.store_faults.clone())).await;
    let faults = faults.unwrap();
    faults.sync_delay_ms.store(1500, Ordering::Relaxed);
    let mut p = b.connect("1.2").await;
    // Nobody consumes: the receipt waits for the (slow) disk.
    let started = std::time::Instant::now();
    p.send(&persistent("/queue/unread", "kept", "r0")).await;
    p.expect_receipt("r0").await;
    assert!(started.elapsed() >= Duration::from_millis(1400));
    // With an auto-acknowledging consumer every receipt comes at once.
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/fast", "auto", &[]).await;
    let started = std::time::Instant::now();
    for i in 0..20 {
        p.send(&persistent(
            "/queue/fast",
            &format!("m{i}"),
            &format!("r{i}"),
        ))
        .await;
        p.expect_receipt(&format!("r{i}")).await;
        assert_eq!(body(&c.expect_message().await), format!("m{i}"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "confirmed on consumption, not after 20 slow fsyncs: {:?}",
        started.elapsed()
    );
    faults.sync_delay_ms.store(0, Ordering::Relaxed);
    let cancelled = b
        .broker
        .store()
        .unwrap()
        .stats()
        .cancelled
        .load(Ordering::Relaxed);
    assert!(cancelled >= 18, "{cancelled} never written");
    drop(c);
    drop(p);
    b.stop().await;
    // After a restart only the unread one is there.
    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/fast", "auto", &[]).await;
    c.subscribe("u", "/queue/unread", "auto", &[]).await;
    assert_eq!(drain(&mut c).await, vec!["kept"]);
}

/// A persistent backlog larger than the destination's memory limit does not
/// stop its producers (ActiveMQ's store cursor): past half the limit
/// messages stay in the journal only and are read back in order as
/// consumers take them, before and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_backlog_larger_than_memory_pages_out_and_back_in_order() {
    const LIMIT: usize = 256 * 1024;
    const N: usize = 1500;
    let dir = tempfile::tempdir().unwrap();
    let small = |c: &mut ferromq::config::Config| c.limits.destination_memory_limit = LIMIT;
    let text = |i: usize| format!("{i:05}-{}", "x".repeat(1024));
    let b = TestBroker::start_in(dir.path(), small).await;
    let mut p = b.connect("1.2").await;
    send_confirmed(&mut p, "/queue/backlog", 0..N, text).await;
    // Non-persistent messages still count against the limit, in memory.
    p.send_text("/queue/backlog", "transient", Some("t")).await;
    let q = b.broker.queue("backlog");
    assert_eq!(q.pending_count(), N + 1);
    assert!(
        q.memory_usage() <= LIMIT,
        "{} bytes held for a 1.5 MiB backlog",
        q.memory_usage()
    );
    // Half of it is consumed now, in order.
    let mut c = b.connect("1.2").await;
    c.subscribe(
        "s",
        "/queue/backlog",
        "client-individual",
        &[("activemq.prefetchSize", "50")],
    )
    .await;
    let mut got = Vec::new();
    while got.len() < N / 2 {
        let m = c.expect_message().await;
        got.push(body(&m));
        // The last acknowledgement asks for a receipt: it comes once every
        // one before it is durable too.
        let last = if got.len() == N / 2 { "last" } else { "" };
        let mut ack = frame(Command::Ack, &[("id", m.header("ack").unwrap())]);
        if !last.is_empty() {
            ack = ack.with_header("receipt", last);
        }
        c.send(&ack).await;
    }
    loop {
        let f = c.recv().await;
        if f.command == Command::Receipt {
            break;
        }
    }
    drop(c);
    drop(p);
    b.stop().await;
    // The rest comes back after a restart, still paged, still in order.
    let b = TestBroker::start_in(dir.path(), small).await;
    let q = b.broker.queue("backlog");
    assert!(q.memory_usage() <= LIMIT);
    // A browser sees the first page of it.
    let mut br = b.connect("1.2").await;
    br.subscribe("b", "/queue/backlog", "auto", &[("browser", "true")])
        .await;
    let first = br.expect_message().await;
    assert_eq!(body(&first), got_first_unacked(&got, N));
    drop(br);
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/backlog", "auto", &[]).await;
    while got.len() < N {
        got.push(body(&c.expect_message().await));
    }
    let expected: Vec<String> = (0..N).map(text).collect();
    // The non-persistent one may come first after the persistent ones that
    // were in memory; every persistent one comes exactly once, in order.
    let persistent: Vec<String> = got.iter().filter(|b| *b != "transient").cloned().collect();
    assert_eq!(persistent.len(), N, "some lost or duplicated");
    if let Some(at) = (0..N).find(|&i| persistent[i] != expected[i]) {
        let show = |v: &[String]| v.iter().map(|b| b[..5].to_string()).collect::<Vec<_>>();
        panic!(
            "out of order at {at}: got {:?}, expected {:?}",
            show(&persistent[at.saturating_sub(2)..(at + 5).min(N)]),
            show(&expected[at.saturating_sub(2)..(at + 5).min(N)])
        );
    }
    assert!(c.recv_within(Duration::from_millis(300)).await.is_none());
}

/// Durable subscriptions page as queues do: a persistent backlog larger
/// than the memory limit neither stops the publisher nor stays in memory,
/// and each subscription gets all of it, in order, before and after a
/// restart (one acknowledged part of it first, the other none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_subscription_backlogs_page_out_and_back_in_order() {
    const LIMIT: usize = 256 * 1024;
    const N: usize = 1500;
    let dir = tempfile::tempdir().unwrap();
    let small = |c: &mut ferromq::config::Config| c.limits.destination_memory_limit = LIMIT;
    let text = |i: usize| format!("{i:05}-{}", "x".repeat(1024));
    let sub = |prefetch: &str| {
        frame(
            Command::Subscribe,
            &[
                ("id", "d"),
                ("destination", "/topic/feed"),
                ("activemq.subscriptionName", "mine"),
                ("activemq.prefetchSize", prefetch),
                ("ack", "client-individual"),
                ("receipt", "sub"),
            ],
        )
    };
    let b = TestBroker::start_in(dir.path(), small).await;
    for client in ["c1", "c2"] {
        let mut c = Client::connect(b.stomp, "1.2", &[("client-id", client)]).await;
        c.send(&sub("10")).await;
        c.expect_receipt("sub").await;
        c.disconnect().await;
    }
    let mut p = b.connect("1.2").await;
    send_confirmed(&mut p, "/topic/feed", 0..N, text).await;
    for client in ["c1", "c2"] {
        let q = b.broker.durable_queue(client, "mine").unwrap();
        assert_eq!(q.pending_count(), N);
        assert!(
            q.memory_usage() <= LIMIT,
            "{client}: {} bytes held for a 1.5 MiB backlog",
            q.memory_usage()
        );
    }
    // c1 takes and acknowledges the first half.
    let mut c = Client::connect(b.stomp, "1.2", &[("client-id", "c1")]).await;
    c.send(&sub("10")).await;
    c.expect_receipt("sub").await;
    let mut got = Vec::new();
    while got.len() < N / 2 {
        let m = c.expect_message().await;
        got.push(body(&m));
        let mut ack = frame(Command::Ack, &[("id", m.header("ack").unwrap())]);
        if got.len() == N / 2 {
            ack = ack.with_header("receipt", "last");
        }
        c.send(&ack).await;
    }
    loop {
        if c.recv().await.command == Command::Receipt {
            break;
        }
    }
    drop(c);
    drop(p);
    b.stop().await;

    let b = TestBroker::start_in(dir.path(), small).await;
    for (client, from) in [("c1", N / 2), ("c2", 0)] {
        let q = b.broker.durable_queue(client, "mine").unwrap();
        assert_eq!(q.pending_count(), N - from, "{client}");
        assert!(q.memory_usage() <= LIMIT, "{client}");
        let mut c = Client::connect(b.stomp, "1.2", &[("client-id", client)]).await;
        c.send(&sub("100")).await;
        c.expect_receipt("sub").await;
        let mut rest = Vec::new();
        while rest.len() < N - from {
            let m = c.expect_message().await;
            rest.push(body(&m));
            c.send(&frame(Command::Ack, &[("id", m.header("ack").unwrap())]))
                .await;
        }
        let all: Vec<String> = if client == "c1" {
            got.iter().chain(rest.iter()).cloned().collect()
        } else {
            rest
        };
        if let Some(at) = (0..N).find(|&i| all[i] != text(i)) {
            panic!("{client}: out of order at {at}: got {}", &all[at][..5]);
        }
        assert!(c.recv_within(Duration::from_millis(300)).await.is_none());
        c.disconnect().await;
    }
    b.stop().await;
    // Every record was acknowledged by both: a restart finds none owed.
    let b = TestBroker::start_in(dir.path(), small).await;
    for client in ["c1", "c2"] {
        let q = b.broker.durable_queue(client, "mine").unwrap();
        assert_eq!(q.pending_count(), 0, "{client}");
    }
    b.stop().await;
}

/// A consumer that asks for an enormous prefetch and does not acknowledge
/// cannot pull a paged backlog into memory: past the budget it gets one more
/// message only once it has none in flight; it still gets them all, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_prefetch_does_not_pull_a_paged_backlog_into_memory() {
    const LIMIT: usize = 256 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_in(dir.path(), |c| c.limits.destination_memory_limit = LIMIT).await;
    let mut p = b.connect("1.2").await;
    let big = |i: usize| format!("{i:03}{}", "z".repeat(16 * 1024));
    send_confirmed(&mut p, "/queue/greedy", 0..200, big).await;
    let q = b.broker.queue("greedy");
    let mut c = b.connect("1.2").await;
    c.subscribe(
        "s",
        "/queue/greedy",
        "client-individual",
        &[("activemq.prefetchSize", "2000000000")],
    )
    .await;
    // More keeps coming (each send is a chance to dispatch): what the
    // consumer is sent without acknowledging stays within the budget.
    send_confirmed(&mut p, "/queue/greedy", 200..300, big).await;
    let mut got = Vec::new();
    while let Some(f) = c.recv_within(Duration::from_millis(500)).await {
        got.push(f);
    }
    assert!(
        !got.is_empty() && got.len() < 50,
        "{} sent unacknowledged",
        got.len()
    );
    assert!(
        q.memory_usage() <= LIMIT,
        "{} bytes in memory for a {LIMIT} limit",
        q.memory_usage()
    );
    // Acknowledging one by one, it gets the rest, in order.
    let mut n = 0;
    let mut pending: std::collections::VecDeque<_> = got.into();
    while n < 300 {
        let f = match pending.pop_front() {
            Some(f) => f,
            None => c.expect_message().await,
        };
        assert_eq!(body(&f), big(n));
        c.send(&frame(Command::Ack, &[("id", f.header("ack").unwrap())]))
            .await;
        n += 1;
    }
    assert!(c.recv_within(Duration::from_millis(300)).await.is_none());
}

/// Paged-out messages larger than the in-memory budget still flow one by
/// one while a consumer's in-flight messages fill the budget.
#[tokio::test]
async fn large_paged_messages_keep_flowing_past_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_in(dir.path(), |c| {
        c.limits.destination_memory_limit = 64 * 1024
    })
    .await;
    let mut p = b.connect("1.2").await;
    let big = |i: usize| format!("{i:03}{}", "y".repeat(16 * 1024));
    send_confirmed(&mut p, "/queue/big", 0..40, big).await;
    let mut c = b.connect("1.2").await;
    c.subscribe(
        "s",
        "/queue/big",
        "client-individual",
        &[("activemq.prefetchSize", "10")],
    )
    .await;
    for i in 0..40 {
        let m = c.expect_message().await;
        assert_eq!(body(&m), big(i));
        c.send(&frame(Command::Ack, &[("id", m.header("ack").unwrap())]))
            .await;
    }
}

/// Runs the real binary, kills it with SIGKILL under load, restarts it and
/// checks that every confirmed send is there and no confirmed ack comes back.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_confirmed_is_lost_when_the_broker_is_killed() {
    use std::process::{Command as Proc, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let spawn = || {
        Proc::new(env!("CARGO_BIN_EXE_ferromq"))
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--stomp-addr",
                &format!("127.0.0.1:{port}"),
                "--auto-addr",
                "",
                "--ws-addr",
                "",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let connect = || async move {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Client::connect(addr, "1.2", &[]).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("broker did not start");
    };
    let mut child = spawn();
    let sent_ok = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let acked_ok = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let received = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    // Two producers with receipts; one consumer acknowledging with receipts.
    let mut tasks = Vec::new();
    for w in 0..2 {
        let sent_ok = sent_ok.clone();
        let mut p = connect().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..100_000 {
                let body = format!("w{w}-{i}");
                p.send(&persistent("/queue/crash", &body, &body)).await;
                match p.recv_within(Duration::from_secs(5)).await {
                    Some(f) if f.command == Command::Receipt => {
                        sent_ok.lock().unwrap().insert(body);
                    }
                    _ => return,
                }
            }
        }));
    }
    {
        let acked_ok = acked_ok.clone();
        let received = received.clone();
        let mut c = connect().await;
        c.subscribe(
            "s",
            "/queue/crash",
            "client-individual",
            &[("activemq.prefetchSize", "20")],
        )
        .await;
        tasks.push(tokio::spawn(async move {
            let mut pending = std::collections::HashMap::new();
            let mut n = 0u64;
            loop {
                let Some(f) = c.recv_within(Duration::from_secs(5)).await else {
                    return;
                };
                match f.command {
                    Command::Message => {
                        n += 1;
                        received.lock().unwrap().insert(body(&f));
                        let receipt = format!("ack{n}");
                        pending.insert(receipt.clone(), body(&f));
                        c.send(&frame(
                            Command::Ack,
                            &[("id", f.header("ack").unwrap()), ("receipt", &receipt)],
                        ))
                        .await;
                    }
                    Command::Receipt => {
                        if let Some(b) = pending.remove(f.header("receipt-id").unwrap().as_str()) {
                            acked_ok.lock().unwrap().insert(b);
                        }
                    }
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let sent: HashSet<String> = sent_ok.lock().unwrap().clone();
    let acked: HashSet<String> = acked_ok.lock().unwrap().clone();
    assert!(
        sent.len() > 50,
        "the load ran: {} confirmed sends",
        sent.len()
    );
    assert!(!acked.is_empty(), "the consumer acknowledged some");

    let mut child = spawn();
    let mut c = connect().await;
    c.subscribe("s", "/queue/crash", "auto", &[]).await;
    let mut after = HashSet::new();
    while let Some(f) = c.recv_within(Duration::from_secs(2)).await {
        after.insert(body(&f));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // A message the consumer got and acknowledged without the receipt
    // arriving may or may not be gone; every other confirmed send must be back.
    let received: HashSet<String> = received.lock().unwrap().clone();
    let lost: Vec<_> = sent
        .iter()
        .filter(|b| !received.contains(*b) && !after.contains(*b))
        .collect();
    assert!(
        lost.is_empty(),
        "{} confirmed sends lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    let resurrected: Vec<_> = acked.intersection(&after).collect();
    assert!(
        resurrected.is_empty(),
        "acknowledged messages came back: {resurrected:?}"
    );
    eprintln!(
        "crash test: {} confirmed sends, {} confirmed acks, {} delivered after restart",
        sent.len(),
        acked.len(),
        after.len()
    );
}

/// The figures for the README: persistent sends confirmed one by one, with
/// 1 and 4 producers, and the fsyncs they cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_throughput_and_fsyncs_per_message() {
    let mut per_message = Vec::new();
    for producers in [1usize, 4] {
        let b = TestBroker::start().await;
        let store = b.broker.store().unwrap().clone();
        let fsyncs_before = store.stats().fsyncs.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        let mut tasks = Vec::new();
        for w in 0..producers {
            let mut p = b.connect("1.2").await;
            tasks.push(tokio::spawn(async move {
                let body = "x".repeat(1024);
                let mut n = 0usize;
                while tokio::time::Instant::now() < deadline {
                    let r = format!("{w}-{n}");
                    p.send(&persistent("/queue/perf", &body, &r)).await;
                    p.expect_receipt(&r).await;
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let fsyncs = store.stats().fsyncs.load(Ordering::Relaxed) - fsyncs_before;
        let ratio = fsyncs as f64 / total as f64;
        eprintln!(
            "persistent, {producers} producer(s), 1 KiB, each send confirmed: {:.0} msg/s, {:.3} fsyncs/message",
            total as f64 / 1.5,
            ratio
        );
        per_message.push(ratio);
        assert!(total > 10, "{total} sends");
        b.stop().await;
    }
    assert!(
        per_message[0] > 0.5,
        "one synchronous producer: about one fsync per send"
    );
    assert!(
        per_message[1] < per_message[0],
        "group commit: 4 producers share fsyncs"
    );
}

#[tokio::test]
async fn recovery_keeps_priority_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let mut p = b.connect("1.2").await;
    for (i, prio) in ["1", "9", "5", "9", "1"].iter().enumerate() {
        send_with_priority(&mut p, "/queue/prio", i, prio, &[]).await;
    }
    b.stop().await;
    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/prio", "auto", &[]).await;
    assert_eq!(
        drain(&mut c).await,
        ["p9-1", "p9-3", "p5-2", "p1-0", "p1-4"]
    );
    b.stop().await;
}

/// A durable subscription comes back in priority order too, and one with a
/// selector is owed only what its selector takes: the rest is not kept for
/// it (it would never be acknowledged), so a restart cannot bury what it
/// does take under what it does not.
#[tokio::test]
async fn durable_subscriptions_recover_in_priority_order_and_by_selector() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let sub = |name: &str, selector: Option<&str>| {
        let mut f = frame(
            Command::Subscribe,
            &[
                ("id", name),
                ("destination", "/topic/prio"),
                ("activemq.subscriptionName", name),
                ("receipt", "sub"),
            ],
        );
        if let Some(s) = selector {
            f = f.with_header("selector", s);
        }
        f
    };
    let mut c = Client::connect(b.stomp, "1.2", &[("client-id", "d")]).await;
    for f in [sub("all", None), sub("red", Some("color = 'red'"))] {
        c.send(&f).await;
        c.expect_receipt("sub").await;
    }
    c.disconnect().await;
    let mut p = b.connect("1.2").await;
    let sends = [
        ("1", "blue"),
        ("9", "red"),
        ("5", "blue"),
        ("9", "blue"),
        ("1", "red"),
    ];
    for (i, (prio, color)) in sends.iter().enumerate() {
        send_with_priority(&mut p, "/topic/prio", i, prio, &[("color", color)]).await;
    }
    b.stop().await;
    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    assert_eq!(
        b.broker.durable_queue("d", "all").unwrap().pending_count(),
        5
    );
    assert_eq!(
        b.broker.durable_queue("d", "red").unwrap().pending_count(),
        2
    );
    let mut c = Client::connect(b.stomp, "1.2", &[("client-id", "d")]).await;
    c.send(&sub("all", None)).await;
    c.expect_receipt("sub").await;
    assert_eq!(
        drain(&mut c).await,
        ["p9-1", "p9-3", "p5-2", "p1-0", "p1-4"]
    );
    c.send(&sub("red", Some("color = 'red'"))).await;
    c.expect_receipt("sub").await;
    assert_eq!(drain(&mut c).await, ["p9-1", "p1-4"]);
    b.stop().await;
}

/// A commit runs to the end even when its caller stops waiting (a
/// connection whose socket fails right after COMMIT): its sends are routed
/// now, not only after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_caller_stops_waiting_still_takes_effect() {
    use ferromq::broker::destination::Destination;
    use ferromq::broker::message::{BodyKind, Message, MessageId};
    use ferromq::broker::transaction::{Transaction, TxOp};
    use std::sync::Arc;
    let b = TestBroker::start().await;
    let dest = Destination::queue("cancelled-commit");
    let target = b.broker.target(&dest);
    let mut tx = Transaction::default();
    for seq in 0..3 {
        let mut m = Message::new(
            MessageId {
                producer: Arc::from("ID:test-1:1:1:1"),
                seq,
            },
            dest.clone(),
            BodyKind::Text,
            bytes::Bytes::from(format!("m{seq}")),
        );
        m.persistent = true;
        tx.ops.push(TxOp::Send(target.clone(), Box::new(m)));
    }
    assert!(b.broker.store().is_some());
    // Polled once (the journal write is under way), then dropped.
    let early = futures_util::FutureExt::now_or_never(b.broker.commit(tx));
    assert!(
        early.is_none(),
        "the commit was not waiting for the journal"
    );
    let q = b.broker.queue("cancelled-commit");
    for _ in 0..100 {
        if q.pending_count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(q.pending_count(), 3, "the committed sends were not routed");
}

/// A message moved to a dead-letter queue that keeps its backlog in the
/// journal (paged out) is delivered once its record is written, even when
/// nothing else happens on that queue then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_paged_out_is_delivered_once_written() {
    const N: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let mut faults = None;
    let b = TestBroker::start_in(dir.path(), |c| {
        c.limits.destination_memory_limit = 64 * 1024;
        faults = Some(c.store_faults.clone());
    })
    .await;
    let faults = faults.unwrap();
    let mut p = b.connect("1.2").await;
    let text = |i: usize| format!("{i:03}-{}", "x".repeat(1024));
    send_confirmed(&mut p, "/queue/ActiveMQ.DLQ", 0..N, text).await;
    send_confirmed(&mut p, "/queue/work", 0..1, |_| "poisoned".to_string()).await;
    let mut w = b.connect("1.2").await;
    w.subscribe("w", "/queue/work", "client-individual", &[])
        .await;
    let m = w.expect_message().await;
    // The journal is busy with a slow fsync when the copy is made.
    faults.sync_delay_ms.store(800, Ordering::Relaxed);
    p.send(&persistent("/queue/busy", "busy", "busy")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    w.send(&frame(Command::Nack, &[("id", m.header("ack").unwrap())]))
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    faults.sync_delay_ms.store(0, Ordering::Relaxed);
    // The backlog drains before the copy is written; then nothing else
    // happens on the queue.
    let mut c = b.connect("1.2").await;
    c.subscribe("c", "/queue/ActiveMQ.DLQ", "auto", &[]).await;
    let mut got = Vec::new();
    while let Some(f) = c.recv_within(Duration::from_secs(5)).await {
        got.push(body(&f));
        if got.len() == N + 1 {
            break;
        }
    }
    assert_eq!(got.len(), N + 1, "the dead-letter copy never came");
    assert_eq!(got[N], "poisoned");
}

/// A durable subscription is confirmed (SUBSCRIBE's and UNSUBSCRIBE's
/// receipts) only once its record is durable.
#[tokio::test]
async fn a_durable_subscription_is_confirmed_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut faults = None;
    let b = TestBroker::start_in(dir.path(), |c| faults = Some(c.store_faults.clone())).await;
    let faults = faults.unwrap();
    faults.sync_delay_ms.store(600, Ordering::Relaxed);
    let mut c = Client::connect(b.stomp, "1.2", &[("client-id", "c1")]).await;
    let started = std::time::Instant::now();
    c.send(&frame(
        Command::Subscribe,
        &[
            ("id", "s"),
            ("destination", "/topic/news"),
            ("activemq.subscriptionName", "daily"),
            ("receipt", "sub"),
        ],
    ))
    .await;
    c.expect_receipt("sub").await;
    assert!(started.elapsed() >= Duration::from_millis(550));
    // Deactivated first (as ActiveMQ, an active one is in use), then removed.
    c.send(&frame(
        Command::Unsubscribe,
        &[("id", "s"), ("receipt", "off")],
    ))
    .await;
    c.expect_receipt("off").await;
    let started = std::time::Instant::now();
    c.send(&frame(
        Command::Unsubscribe,
        &[
            ("id", "gone"),
            ("activemq.subscriptionName", "daily"),
            ("receipt", "unsub"),
        ],
    ))
    .await;
    c.expect_receipt("unsub").await;
    assert!(started.elapsed() >= Duration::from_millis(550));
    // A plain subscription does not wait for the disk.
    let started = std::time::Instant::now();
    c.subscribe("p", "/topic/plain", "auto", &[]).await;
    assert!(started.elapsed() < Duration::from_millis(500));
}

/// A send to a composite destination in STOMP form reaches each element as
/// a copy of its own (destination: the element; original-destination: the
/// composite), stored for each queue as a send to it alone would be.
#[tokio::test]
async fn a_composite_send_reaches_each_element_and_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let mut t = b.connect("1.2").await;
    t.subscribe("t", "/topic/ct", "auto", &[]).await;
    let mut p = b.connect("1.2").await;
    p.send(&persistent("/queue/ca,/queue/cb,/topic/ct", "fan", "r"))
        .await;
    p.expect_receipt("r").await;
    let m = t.expect_message().await;
    assert_eq!(body(&m), "fan");
    assert_eq!(m.header("destination").unwrap(), "/topic/ct");
    drop(t);
    drop(p);
    b.stop().await;
    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let mut c = b.connect("1.2").await;
    for (id, q) in [("a", "/queue/ca"), ("b", "/queue/cb")] {
        c.subscribe(id, q, "auto", &[]).await;
        let m = c.expect_message().await;
        assert_eq!(body(&m), "fan");
        assert_eq!(m.header("destination").unwrap(), q);
        assert!(
            m.header("original-destination")
                .is_some_and(|o| o.contains("cb")),
            "{m:?}"
        );
    }
    // No queue is named after the composite's other parts.
    assert!(b.broker.find_queue("/queue/cb").is_none());
}

/// A durable SUBSCRIBE that cannot be made durable gets an ERROR and leaves
/// nothing attached: once the disk is back, subscribing again works.
#[tokio::test]
async fn a_durable_subscription_that_cannot_be_confirmed_is_not_left_attached() {
    let dir = tempfile::tempdir().unwrap();
    let mut faults = None;
    let b = TestBroker::start_in(dir.path(), |c| faults = Some(c.store_faults.clone())).await;
    let faults = faults.unwrap();
    let mut c = Client::connect(b.stomp, "1.2", &[("client-id", "c2")]).await;
    let durable = |id: &str, receipt: &str| {
        frame(
            Command::Subscribe,
            &[
                ("id", id),
                ("destination", "/topic/t2"),
                ("activemq.subscriptionName", "s"),
                ("receipt", receipt),
            ],
        )
    };
    faults.fail_syncs.store(true, Ordering::Relaxed);
    c.send(&durable("a", "r1")).await;
    let e = c.expect_error().await;
    assert_eq!(e.header("receipt-id").unwrap(), "r1");
    faults.fail_syncs.store(false, Ordering::Relaxed);
    c.send(&durable("b", "r2")).await;
    c.expect_receipt("r2").await;
}

/// Queues are remembered across restarts, empty or not (as ActiveMQ's store
/// remembers its destinations): a virtual topic's consumer queue goes on
/// getting copies while its consumers are away, even over a restart.
#[tokio::test]
async fn a_virtual_topic_consumer_queue_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/Consumer.A.VirtualTopic.orders", "auto", &[])
        .await;
    c.disconnect().await;
    b.stop().await;

    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    assert!(b
        .broker
        .find_queue("Consumer.A.VirtualTopic.orders")
        .is_some());
    let mut p = b.connect("1.2").await;
    p.send(&persistent("/topic/VirtualTopic.orders", "o1", "r1"))
        .await;
    p.expect_receipt("r1").await;
    p.disconnect().await;
    b.stop().await;

    // The copy was stored for the queue: it is there after another restart.
    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/Consumer.A.VirtualTopic.orders", "auto", &[])
        .await;
    let m = c.expect_message().await;
    assert_eq!(body(&m), "o1");
    assert_eq!(
        m.header("original-destination").map(|v| v.as_str()),
        Some("/topic/VirtualTopic.orders")
    );
    b.stop().await;
}

/// A deleted queue (ActiveMQ's destroyDestination) is gone after a restart,
/// its persistent messages with it.
#[tokio::test]
async fn a_deleted_queue_and_its_messages_stay_deleted_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    let mut p = b.connect("1.2").await;
    for i in 0..3 {
        p.send(&persistent(
            "/queue/gone",
            &format!("g{i}"),
            &format!("r{i}"),
        ))
        .await;
        p.expect_receipt(&format!("r{i}")).await;
    }
    p.send(&persistent("/queue/kept", "k", "rk")).await;
    p.expect_receipt("rk").await;
    let gone = ferromq::broker::destination::Destination::queue("gone");
    b.broker.delete_queue(&gone).unwrap();
    assert!(b.broker.find_queue("gone").is_none());
    b.broker.sync().await.unwrap();
    p.disconnect().await;
    b.stop().await;

    let b = TestBroker::start_in(dir.path(), |_| {}).await;
    assert!(b.broker.find_queue("gone").is_none(), "not made again");
    assert!(b.broker.find_queue("kept").is_some());
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/gone", "auto", &[]).await;
    assert!(c.recv_within(Duration::from_millis(300)).await.is_none());
    c.subscribe("k", "/queue/kept", "auto", &[]).await;
    assert_eq!(body(&c.expect_message().await), "k");
    b.stop().await;
}
