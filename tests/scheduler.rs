//! Scheduled delivery (ActiveMQ's schedulerSupport) over STOMP: delays,
//! periods and repeats, transactions, bad values, the memory bound, and
//! persistent jobs across restarts.

mod common;

use common::*;
use ferromq::stomp::frame::{Command, Frame};
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn on(c: &mut ferromq::config::Config) {
    c.broker.scheduler_support = true;
}

fn scheduled(dest: &str, body: &str, headers: &[(&str, &str)]) -> Frame {
    let mut f = frame(Command::Send, &[("destination", dest)]).with_body(body.as_bytes().to_vec());
    for (k, v) in headers {
        f = f.with_header(*k, *v);
    }
    f
}

#[tokio::test]
async fn a_delay_holds_a_message_and_a_period_repeats_it() {
    let b = TestBroker::start_with(on).await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/sched", "auto", &[]).await;
    let sent = Instant::now();
    c.send(&scheduled(
        "/queue/sched",
        "later",
        &[
            ("AMQ_SCHEDULED_DELAY", "1500"),
            ("colour", "red"),
            ("receipt", "r"),
        ],
    ))
    .await;
    c.expect_receipt("r").await;
    c.send_text("/queue/sched", "now", None).await;
    assert_eq!(body(&c.expect_message().await), "now");
    assert!(c.recv_within(Duration::from_millis(500)).await.is_none());
    let m = c.expect_message().await;
    assert_eq!(body(&m), "later");
    assert!(
        sent.elapsed() >= Duration::from_millis(1490),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(m.header("colour").unwrap(), "red");
    assert!(m.header("AMQ_SCHEDULED_DELAY").is_none(), "{m:?}");
    assert!(m.header("scheduledJobId").unwrap().starts_with("ID:"));
    assert!(c.recv_within(Duration::from_millis(300)).await.is_none());

    // No delay: the first copy a period after the send, then two more.
    let sent = Instant::now();
    c.send(&scheduled(
        "/queue/sched",
        "tick",
        &[
            ("AMQ_SCHEDULED_PERIOD", "200"),
            ("AMQ_SCHEDULED_REPEAT", "2"),
        ],
    ))
    .await;
    let mut ids = HashSet::new();
    for _ in 0..3 {
        let m = c.expect_message().await;
        assert_eq!(body(&m), "tick");
        ids.insert(m.header("message-id").unwrap().to_string());
    }
    assert!(
        sent.elapsed() >= Duration::from_millis(590),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(ids.len(), 3, "each copy has its own id");
    assert!(c.recv_within(Duration::from_millis(500)).await.is_none());
    assert_eq!(b.broker.scheduled(), 0);
}

#[tokio::test]
async fn without_scheduler_support_the_properties_are_ignored() {
    let b = TestBroker::start().await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/unsched", "auto", &[]).await;
    c.send(&scheduled(
        "/queue/unsched",
        "at once",
        &[("AMQ_SCHEDULED_DELAY", "60000")],
    ))
    .await;
    let m = c.expect_message().await;
    assert_eq!(body(&m), "at once");
    // As ActiveMQ: the property simply travels with it.
    assert_eq!(m.header("AMQ_SCHEDULED_DELAY").unwrap(), "60000");
}

#[tokio::test]
async fn bad_values_cron_and_a_full_scheduler_get_errors() {
    let b = TestBroker::start_with(|c| {
        on(c);
        c.limits.scheduler_memory_limit = 64 * 1024;
    })
    .await;
    let mut c = b.connect("1.2").await;
    for (headers, want) in [
        (vec![("AMQ_SCHEDULED_DELAY", "soon")], "AMQ_SCHEDULED_DELAY"),
        (
            vec![
                ("AMQ_SCHEDULED_PERIOD", "100"),
                ("AMQ_SCHEDULED_REPEAT", "x"),
            ],
            "AMQ_SCHEDULED_REPEAT",
        ),
        (vec![("AMQ_SCHEDULED_CRON", "* * * * *")], "not supported"),
    ] {
        let mut headers = headers;
        headers.push(("receipt", "bad"));
        c.send(&scheduled("/queue/bad", "x", &headers)).await;
        let e = c.expect_error().await;
        assert!(e.header("message").unwrap().contains(want), "{e:?}");
    }
    // Past the limit.
    let big = "b".repeat(40 * 1024);
    c.send(&scheduled(
        "/queue/bad",
        &big,
        &[("AMQ_SCHEDULED_DELAY", "60000"), ("receipt", "1")],
    ))
    .await;
    c.expect_receipt("1").await;
    c.send(&scheduled(
        "/queue/bad",
        &big,
        &[("AMQ_SCHEDULED_DELAY", "60000"), ("receipt", "2")],
    ))
    .await;
    let e = c.expect_error().await;
    assert!(
        e.header("message")
            .unwrap()
            .contains("Job Scheduler Store is Full"),
        "{e:?}"
    );
    // The connection goes on.
    c.send_text("/queue/bad", "fine", Some("3")).await;
    assert_eq!(b.broker.scheduled(), 1);
}

#[tokio::test]
async fn a_transaction_schedules_on_commit_only() {
    let b = TestBroker::start_with(on).await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/txs", "auto", &[]).await;
    for (tx, end) in [("t1", Command::Abort), ("t2", Command::Commit)] {
        c.send(&frame(Command::Begin, &[("transaction", tx)])).await;
        c.send(&scheduled(
            "/queue/txs",
            tx,
            &[("AMQ_SCHEDULED_DELAY", "300"), ("transaction", tx)],
        ))
        .await;
        c.send(&frame(end, &[("transaction", tx), ("receipt", tx)]))
            .await;
        c.expect_receipt(tx).await;
    }
    assert_eq!(body(&c.expect_message().await), "t2");
    assert!(c.recv_within(Duration::from_millis(800)).await.is_none());
}

#[tokio::test]
async fn persistent_jobs_survive_restarts_and_end_after_their_last_firing() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_in(dir.path(), on).await;
    let mut p = b.connect("1.2").await;
    let sent = Instant::now();
    for (body, headers) in [
        ("delayed", vec![("AMQ_SCHEDULED_DELAY", "5000")]),
        (
            "repeated",
            vec![
                ("AMQ_SCHEDULED_DELAY", "4500"),
                ("AMQ_SCHEDULED_PERIOD", "300"),
                ("AMQ_SCHEDULED_REPEAT", "1"),
            ],
        ),
        // Not persistent: kept in memory only, as non-persistent messages are.
        ("lost", vec![("AMQ_SCHEDULED_DELAY", "4000")]),
    ] {
        let mut headers = headers;
        if body != "lost" {
            headers.push(("persistent", "true"));
        }
        headers.push(("receipt", body));
        p.send(&scheduled("/queue/kept", body, &headers)).await;
        p.expect_receipt(body).await;
    }
    assert_eq!(b.broker.scheduled(), 3);
    drop(p);
    b.stop().await;

    let b = TestBroker::start_in(dir.path(), on).await;
    assert_eq!(b.broker.scheduled(), 2);
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/kept", "auto", &[]).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(body(&c.expect_message().await));
    }
    assert!(
        sent.elapsed() >= Duration::from_millis(4990),
        "{:?}",
        sent.elapsed()
    );
    got.sort();
    assert_eq!(got, ["delayed", "repeated", "repeated"]);
    assert!(c.recv_within(Duration::from_millis(500)).await.is_none());
    drop(c);
    b.stop().await;

    // Done: nothing comes back.
    let b = TestBroker::start_in(dir.path(), on).await;
    assert_eq!(b.broker.scheduled(), 0);
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/kept", "auto", &[]).await;
    assert!(c.recv_within(Duration::from_millis(500)).await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn a_repeating_job_remembers_how_many_firings_are_left() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_in(dir.path(), on).await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/left", "auto", &[]).await;
    c.send(&scheduled(
        "/queue/left",
        "r",
        &[
            ("AMQ_SCHEDULED_PERIOD", "1500"),
            ("AMQ_SCHEDULED_REPEAT", "2"),
            ("persistent", "true"),
            ("receipt", "r"),
        ],
    ))
    .await;
    c.expect_receipt("r").await;
    // The first firing (after one period), then a restart.
    assert_eq!(body(&c.expect_message().await), "r");
    drop(c);
    b.stop().await;
    let b = TestBroker::start_in(dir.path(), on).await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/left", "auto", &[]).await;
    // Two more, not three.
    assert_eq!(body(&c.expect_message().await), "r");
    assert_eq!(body(&c.expect_message().await), "r");
    assert!(c.recv_within(Duration::from_millis(2000)).await.is_none());
    b.stop().await;
}

/// Browses the jobs through the management topic: (body, job id) pairs.
async fn browse(c: &mut Client, reply_to: &str) -> Vec<(String, String)> {
    c.send(&scheduled(
        "/topic/ActiveMQ.Scheduler.Management",
        "",
        &[("AMQ_SCHEDULER_ACTION", "BROWSE"), ("reply-to", reply_to)],
    ))
    .await;
    let mut jobs = Vec::new();
    while let Some(m) = c.recv_within(Duration::from_millis(700)).await {
        assert_eq!(m.command, Command::Message, "{m:?}");
        jobs.push((body(&m), m.header("scheduledJobId").unwrap().to_string()));
    }
    jobs.sort();
    jobs
}

#[tokio::test]
async fn the_management_topic_browses_and_removes_jobs_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_in(dir.path(), on).await;
    let mut c = b.connect("1.2").await;
    for name in ["a", "b", "c"] {
        c.send(&scheduled(
            "/queue/managed",
            name,
            &[
                ("AMQ_SCHEDULED_DELAY", "60000"),
                ("persistent", "true"),
                ("receipt", name),
            ],
        ))
        .await;
        c.expect_receipt(name).await;
    }
    c.subscribe("r", "/queue/browsed", "auto", &[]).await;
    let jobs = browse(&mut c, "/queue/browsed").await;
    let names: Vec<&str> = jobs.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    // The management message itself went nowhere.
    assert!(b
        .broker
        .find_queue("ActiveMQ.Scheduler.Management")
        .is_none());
    c.send(&scheduled(
        "/topic/ActiveMQ.Scheduler.Management",
        "",
        &[
            ("AMQ_SCHEDULER_ACTION", "REMOVE"),
            ("scheduledJobId", &jobs[1].1),
            ("receipt", "removed"),
        ],
    ))
    .await;
    c.expect_receipt("removed").await;
    assert_eq!(b.broker.scheduled(), 2);
    drop(c);
    b.stop().await;
    // Removed for good: the restart brings back the other two only.
    let b = TestBroker::start_in(dir.path(), on).await;
    assert_eq!(b.broker.scheduled(), 2);
    let mut c = b.connect("1.2").await;
    c.subscribe("r", "/queue/browsed", "auto", &[]).await;
    let names: Vec<String> = browse(&mut c, "/queue/browsed")
        .await
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    assert_eq!(names, ["a", "c"]);
    c.send(&scheduled(
        "/queue/ActiveMQ.Scheduler.Management",
        "",
        &[("AMQ_SCHEDULER_ACTION", "REMOVEALL"), ("receipt", "all")],
    ))
    .await;
    c.expect_receipt("all").await;
    assert_eq!(b.broker.scheduled(), 0);
    assert!(browse(&mut c, "/queue/browsed").await.is_empty());
    b.stop().await;
}
