//! What a destination's memory limit counts against what its messages
//! really hold: a backlog of small messages, over OpenWire and over STOMP,
//! measured with a counting allocator. The limits (`limits.memory_limit`,
//! `limits.destination_memory_limit`) bound the process's memory only if
//! the count is close to the truth.
//!
//! The allocator counts the whole process: the tests here take turns
//! (`ONE_AT_A_TIME`).

mod common;

use common::ow::{OwClient, CONN};
use common::{frame, TestBroker, WAIT};
use ferromq::broker::message::PropValue;
use ferromq::openwire::value::Value;
use ferromq::stomp::frame::Command;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

/// What the system allocator adds to each allocation, on average (glibc:
/// an 8-byte header, sizes rounded up to 16).
const PER_ALLOCATION: isize = 16;

struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Memory in use now, the allocator's own share included.
fn live() -> isize {
    BYTES.load(Ordering::Relaxed) + PER_ALLOCATION * ALLOCATIONS.load(Ordering::Relaxed)
}

/// Waits until the queue has `n` messages.
async fn until_enqueued(b: &TestBroker, queue: &str, n: u64) {
    let start = Instant::now();
    loop {
        if let Some(q) = b.broker.find_queue(queue) {
            if q.stats.enqueued.load(Ordering::Relaxed) >= n {
                // The connection's buffers settle too.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "{queue}: {n} messages did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends messages `from..to` with `send` and returns (what the queue
/// counts, what the process holds) for them.
async fn measure<F, Fut>(b: &TestBroker, queue: &str, from: u64, to: u64, mut send: F) -> (f64, f64)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let q = b.broker.find_queue(queue).expect("the queue exists");
    let (counted0, live0) = (q.memory_usage(), live());
    for i in from..to {
        send(i).await;
    }
    until_enqueued(b, queue, to - 1).await; // (numbered from 1)
    let (counted1, live1) = (q.memory_usage(), live());
    let n = (to - from) as f64;
    ((counted1 - counted0) as f64 / n, (live1 - live0) as f64 / n)
}

fn check(what: &str, (counted, real): (f64, f64)) {
    eprintln!("{what}: counted {counted:.0} B per message, holds {real:.0} B");
    assert!(
        counted >= real * 0.9 && counted <= real * 1.15,
        "{what}: a queued message counts {counted:.0} B but holds {real:.0} B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_counts_what_it_holds() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let b = TestBroker::start().await;

    // OpenWire: what the JMS load client sends (a 256 B BytesMessage with an
    // int and a long property), non-persistent, no consumer.
    let mut ow = OwClient::connect(b.auto, 0).await;
    ow.register().await;
    let send = |i: u64| {
        let mut m = ferromq::broker::message::Message::new(
            ferromq::broker::message::MessageId {
                producer: std::sync::Arc::from(format!("{CONN}:1:1")),
                seq: i,
            },
            ferromq::broker::destination::Destination::queue("backlog-ow"),
            ferromq::broker::message::BodyKind::Bytes,
            bytes::Bytes::from(vec![b'x'; 256]),
        );
        m.properties = vec![
            ("ferromq-phase".into(), PropValue::Int(1)),
            (
                "ferromq-sent-ns".into(),
                PropValue::Long(i as i64 * 1_000_003),
            ),
        ];
        let mut s =
            ferromq::openwire::convert::message_to_struct(&m, 0, 0, 0, &mut Default::default());
        s.set("responseRequired", Value::Bool(false));
        s
    };
    // The first messages of a queue keep the buffers they were read into;
    // past a sixteenth of the limit each gets its own (what a backlog is
    // made of). Measure there.
    let warm = 10_000;
    for i in 1..=warm {
        ow.send(send(i)).await;
    }
    until_enqueued(&b, "backlog-ow", warm).await;
    let ow = std::sync::Arc::new(tokio::sync::Mutex::new(ow));
    let figures = measure(&b, "backlog-ow", warm + 1, warm + 20_001, |i| {
        let ow = ow.clone();
        async move {
            let mut ow = ow.lock().await;
            ow.send(send(i)).await;
        }
    })
    .await;
    check("OpenWire", figures);

    // STOMP: 256 B bodies with two custom headers.
    let mut c = b.connect("1.2").await;
    let body = vec![b'y'; 256];
    let stomp_send = |i: u64| {
        frame(Command::Send, &[("destination", "/queue/backlog-stomp")])
            .with_header("sent", &*(i * 1_000_003).to_string())
            .with_header("phase", "1")
            .with_body(body.clone())
    };
    for i in 1..=warm {
        c.send(&stomp_send(i)).await;
    }
    until_enqueued(&b, "backlog-stomp", warm).await;
    let c = std::sync::Arc::new(tokio::sync::Mutex::new(c));
    let figures = measure(&b, "backlog-stomp", warm + 1, warm + 20_001, |i| {
        let c = c.clone();
        let f = stomp_send(i);
        async move { c.lock().await.send(&f).await }
    })
    .await;
    check("STOMP", figures);
    b.stop().await;
}

/// The process's resident memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf only reads a system setting.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

/// (glibc's allocator keeps freed pages; ferromq trims it.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_goes_back_to_the_system_once_a_backlog_drains() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let b = TestBroker::start().await;
    // What an earlier test freed would otherwise be reused, not grown.
    ferromq::transport::trim::trim();
    let before = rss();
    // ~40 MiB of backlog, then a consumer takes it all.
    let n = 30_000;
    let mut p = b.connect("1.2").await;
    let body = vec![b'z'; 1024];
    for _ in 0..n {
        p.send(&frame(Command::Send, &[("destination", "/queue/drain")]).with_body(body.clone()))
            .await;
    }
    until_enqueued(&b, "drain", n).await;
    let full = rss();
    assert!(
        full >= before + (30 << 20),
        "the backlog shows: {} -> {} MiB",
        before >> 20,
        full >> 20
    );
    let mut c = b.connect("1.2").await;
    c.subscribe("0", "/queue/drain", "auto", &[]).await;
    for _ in 0..n {
        c.expect_message().await;
    }
    // Within a few of the trimmer's periods most of it is back.
    let start = Instant::now();
    loop {
        let now = rss();
        if now < full - (24 << 20) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "resident memory stays at {} MiB after the backlog ({} MiB before it, {} MiB with it)",
            now >> 20,
            before >> 20,
            full >> 20
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.stop().await;
}
