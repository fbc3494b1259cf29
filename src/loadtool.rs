//! `ferromq producer` and `ferromq consumer`: load tools modelled on
//! ActiveMQ's `activemq producer` / `activemq consumer` tasks. They speak
//! STOMP (`stomp://host:port`) or OpenWire (`tcp://host:port`), through the
//! project's own codecs, and work against ferromq and ActiveMQ alike.
//!
//! Every message carries its send time (`ferromq-sent-ns`), so the consumer
//! reports end-to-end latency percentiles from an HDR histogram. Every run
//! ends by itself: after its message count, its `--duration`, or its
//! `--timeout`.

use crate::broker::destination::{Destination, DestinationKind};
use crate::broker::message::PropValue;
use crate::client::openwire::OpenWireClient;
use crate::client::stomp::StompClient;
use crate::stomp::frame::{Command, Frame};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SENT_HEADER: &str = "ferromq-sent-ns";

#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// Broker URL: tcp://host:port (OpenWire) or stomp://host:port (STOMP).
    #[arg(long, alias = "brokerUrl", default_value = "tcp://127.0.0.1:61616")]
    pub url: String,
    /// queue://NAME or topic://NAME.
    #[arg(long, default_value = "queue://TEST")]
    pub destination: String,
    /// Messages: in all for a queue; per subscriber for a topic consumer.
    #[arg(long, alias = "messageCount", default_value_t = 1000)]
    pub count: u64,
    /// Connections working in parallel.
    #[arg(long, alias = "parallelThreads", default_value_t = 1)]
    pub clients: usize,
    /// Stop after this many seconds even if the count is not reached.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Give up (with an error) after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Threads running the clients. One (the default) keeps every client
    /// on the thread that reads and writes its socket: at these message
    /// rates, handing work between threads costs more CPU than it buys.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// User name to connect as (STOMP login, JMS user name).
    #[arg(long)]
    pub user: Option<String>,
    /// Its password.
    #[arg(long)]
    pub password: Option<String>,
}

impl CommonArgs {
    /// The credentials to connect with, when a user is given.
    pub fn login(&self) -> Option<(&str, &str)> {
        self.user
            .as_deref()
            .map(|u| (u, self.password.as_deref().unwrap_or("")))
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct ProducerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Body size in bytes.
    #[arg(long, alias = "messageSize", default_value_t = 256)]
    pub size: usize,
    /// Persistent messages (each send confirmed, as a JMS persistent send).
    #[arg(long)]
    pub persistent: bool,
    /// Send in transactions of this many messages (0: no transactions).
    #[arg(long, alias = "transactionBatchSize", default_value_t = 0)]
    pub batch: u64,
    /// Messages per second, in all (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

#[derive(clap::Args, Clone, Debug)]
pub struct ConsumerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// auto, client or individual.
    #[arg(long, alias = "ackMode", default_value = "auto")]
    pub ack: String,
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u32,
    /// Acknowledge in transactions of this many messages (0: no transactions).
    #[arg(long, alias = "transactionBatchSize", default_value_t = 0)]
    pub batch: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    OpenWire,
    Stomp,
}

/// Splits a broker URL into protocol and `host:port`. `failover:(...)` and
/// options are accepted for convenience (the first address is used).
pub fn parse_url(url: &str) -> Result<(Protocol, String), String> {
    let url = url.trim();
    let url = url
        .strip_prefix("failover:(")
        .map(|u| u.trim_end_matches(')').split(',').next().unwrap_or(u))
        .unwrap_or(url);
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        format!("not a broker URL: {url} (use tcp://host:port or stomp://host:port)")
    })?;
    let protocol = match scheme {
        "tcp" | "nio" | "openwire" => Protocol::OpenWire,
        "stomp" | "stomp+nio" => Protocol::Stomp,
        other => {
            return Err(format!(
                "unsupported scheme {other}: use tcp:// or stomp://"
            ))
        }
    };
    let addr = rest.split(['?', '/']).next().unwrap_or(rest);
    if !addr.contains(':') {
        return Err(format!("{url}: a port is needed"));
    }
    Ok((protocol, addr.to_string()))
}

pub fn parse_destination(d: &str) -> Result<Destination, String> {
    if let Some(n) = d.strip_prefix("queue://") {
        Ok(Destination::queue(n))
    } else if let Some(n) = d.strip_prefix("topic://") {
        Ok(Destination::topic(n))
    } else {
        Err(format!("destination {d}: use queue://NAME or topic://NAME"))
    }
}

fn stomp_destination(d: &Destination) -> String {
    match d.kind {
        DestinationKind::Topic | DestinationKind::TempTopic => format!("/topic/{}", d.name),
        _ => format!("/queue/{}", d.name),
    }
}

/// Shares `total` between `clients` (the first ones get the remainder).
pub fn split(total: u64, clients: usize) -> Vec<u64> {
    let clients = clients.max(1) as u64;
    (0..clients)
        .map(|i| total / clients + u64::from(i < total % clients))
        .collect()
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        Some(Latency {
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub role: &'static str,
    pub protocol: Protocol,
    pub destination: String,
    pub clients: usize,
    pub messages: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub messages_per_second: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency: Option<Latency>,
}

impl Summary {
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string(self).unwrap_or_default());
            return;
        }
        println!(
            "{} {:?} {}: {} messages in {:.2} s = {:.0} msg/s ({} clients), {} errors",
            self.role,
            self.protocol,
            self.destination,
            self.messages,
            self.seconds,
            self.messages_per_second,
            self.clients,
            self.errors
        );
        if let Some(l) = &self.latency {
            println!(
                "latency: p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs, mean {:.0} µs",
                l.p50_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
            );
        }
        if let Some(e) = &self.first_error {
            println!("first error: {e}");
        }
    }
}

/// Counts shared by a run's clients.
#[derive(Default)]
struct Shared {
    done: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    stop: AtomicBool,
    latency: Mutex<Option<Histogram<u64>>>,
    /// Messages the whole run is after (consumers stop at it).
    goal: AtomicU64,
    /// When the first message was received (a consumer's rate is measured
    /// from there, not from when it started waiting).
    first: std::sync::OnceLock<Instant>,
    /// Wakes the progress ticker at the end, and consumers waiting for a
    /// message once the goal is reached.
    stopped: tokio::sync::Notify,
    /// When a consumer run reached its goal.
    finished: std::sync::OnceLock<Instant>,
}

impl Shared {
    /// A consumer got a message; at the goal the others stop waiting.
    fn received_one(&self) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.goal.load(Ordering::Relaxed) {
            self.finished.get_or_init(Instant::now);
            self.stopped.notify_waiters();
        }
    }

    fn error(&self, e: impl ToString) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e.to_string());
        }
    }
}

/// A progress line on an interactive terminal; plain lines otherwise (every 5 s).
fn progress(shared: Arc<Shared>, total: u64, role: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let started = Instant::now();
        let mut last_plain = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shared.stopped.notified() => {}
            }
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let n = shared.done.load(Ordering::Relaxed);
            let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
            if tty {
                let width = 30usize;
                let filled =
                    ((n as f64 / total.max(1) as f64) * width as f64).min(width as f64) as usize;
                eprint!(
                    "\r{role} [{}{}] {n}/{total} {rate:.0} msg/s ",
                    "#".repeat(filled),
                    "-".repeat(width - filled)
                );
            } else if last_plain.elapsed() >= Duration::from_secs(5) {
                eprintln!("{role}: {n}/{total} messages, {rate:.0} msg/s");
                last_plain = Instant::now();
            }
        }
        if tty {
            eprintln!();
        }
    })
}

pub async fn run_producer(args: ProducerArgs) -> Result<Summary, String> {
    let (protocol, addr) = parse_url(&args.common.url)?;
    let destination = parse_destination(&args.common.destination)?;
    let shared = Arc::new(Shared::default());
    let total = args.common.count;
    let ticker = progress(shared.clone(), total, "producer");
    let started = Instant::now();
    let deadline = args
        .common
        .duration
        .map(|d| started + Duration::from_secs_f64(d));
    let mut tasks = Vec::new();
    let per_client_rate = if args.rate > 0.0 {
        args.rate / args.common.clients.max(1) as f64
    } else {
        0.0
    };
    for (i, n) in split(total, args.common.clients).into_iter().enumerate() {
        let shared = shared.clone();
        let args = args.clone();
        let addr = addr.clone();
        let destination = destination.clone();
        tasks.push(tokio::spawn(async move {
            let res = match protocol {
                Protocol::Stomp => {
                    produce_stomp(
                        &addr,
                        &destination,
                        n,
                        &args,
                        per_client_rate,
                        deadline,
                        &shared,
                        i,
                    )
                    .await
                }
                Protocol::OpenWire => {
                    produce_openwire(
                        &addr,
                        &destination,
                        n,
                        &args,
                        per_client_rate,
                        deadline,
                        &shared,
                    )
                    .await
                }
            };
            if let Err(e) = res {
                shared.error(e);
            }
        }));
    }
    let timeout = Duration::from_secs_f64(args.common.timeout);
    let all = futures_util::future::join_all(tasks);
    let timed_out = tokio::time::timeout(timeout, all).await.is_err();
    // Measured before the ticker is stopped: it may be asleep.
    let took = started.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    shared.stopped.notify_one();
    let _ = ticker.await;
    if timed_out {
        shared.error(format!("timed out after {timeout:?}"));
    }
    Ok(summary("producer", protocol, &args.common, &shared, took))
}

fn summary(
    role: &'static str,
    protocol: Protocol,
    common: &CommonArgs,
    shared: &Shared,
    took: Duration,
) -> Summary {
    let messages = shared.done.load(Ordering::Relaxed);
    let seconds = took.as_secs_f64();
    Summary {
        role,
        protocol,
        destination: common.destination.clone(),
        clients: common.clients,
        messages,
        bytes: shared.bytes.load(Ordering::Relaxed),
        seconds,
        messages_per_second: messages as f64 / seconds.max(1e-9),
        errors: shared.errors.load(Ordering::Relaxed),
        first_error: shared
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        latency: shared
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(Latency::from_histogram),
    }
}

/// Paces sends at `rate` per second (0: no pacing).
struct Pacer {
    start: Instant,
    interval: Option<Duration>,
    sent: u64,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        Pacer {
            start: Instant::now(),
            interval: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
            sent: 0,
        }
    }
    async fn wait(&mut self) {
        if let Some(i) = self.interval {
            let at = self.start + i.mul_f64(self.sent as f64);
            tokio::time::sleep_until(at.into()).await;
        }
        self.sent += 1;
    }
    fn paced(&self) -> bool {
        self.interval.is_some()
    }
}

fn over(deadline: Option<Instant>, shared: &Shared) -> bool {
    let goal = shared.goal.load(Ordering::Relaxed);
    shared.stop.load(Ordering::Relaxed)
        || deadline.is_some_and(|d| Instant::now() >= d)
        || (goal > 0 && shared.done.load(Ordering::Relaxed) >= goal)
}

#[allow(clippy::too_many_arguments)]
async fn produce_stomp(
    addr: &str,
    destination: &Destination,
    n: u64,
    args: &ProducerArgs,
    rate: f64,
    deadline: Option<Instant>,
    shared: &Shared,
    client: usize,
) -> std::io::Result<()> {
    let mut c = StompClient::connect(addr, args.common.login()).await?;
    let dest = stomp_destination(destination);
    let body = Bytes::from(vec![b'x'; args.size]);
    let mut pacer = Pacer::new(rate);
    let mut in_tx = 0u64;
    let mut tx_no = 0u64;
    for i in 0..n {
        if over(deadline, shared) {
            break;
        }
        pacer.wait().await;
        if args.batch > 0 && in_tx == 0 {
            tx_no += 1;
            c.queue(
                &Frame::new(Command::Begin)
                    .with_header("transaction", format!("t{client}-{tx_no}")),
            );
        }
        let mut f = Frame::new(Command::Send)
            .with_header("destination", dest.as_str())
            .with_header(SENT_HEADER, now_ns().to_string())
            .with_header("content-length", body.len().to_string())
            .with_body(body.clone());
        if args.persistent {
            f = f.with_header("persistent", "true");
        }
        if args.batch > 0 {
            f = f.with_header("transaction", format!("t{client}-{tx_no}"));
            in_tx += 1;
        }
        let confirm = args.persistent && args.batch == 0;
        if confirm {
            f = f.with_header("receipt", format!("r{i}"));
        }
        c.queue(&f);
        if args.batch > 0 && (in_tx == args.batch || i + 1 == n) {
            c.queue(
                &Frame::new(Command::Commit)
                    .with_header("transaction", format!("t{client}-{tx_no}"))
                    .with_header("receipt", format!("c{tx_no}")),
            );
            c.flush().await?;
            c.receipt(&format!("c{tx_no}")).await?;
            shared.done.fetch_add(in_tx, Ordering::Relaxed);
            shared
                .bytes
                .fetch_add(in_tx * body.len() as u64, Ordering::Relaxed);
            in_tx = 0;
            continue;
        }
        if confirm {
            c.flush().await?;
            c.receipt(&format!("r{i}")).await?;
        } else if pacer.paced() || i % 64 == 63 {
            c.flush().await?;
        }
        if args.batch == 0 {
            shared.done.fetch_add(1, Ordering::Relaxed);
            shared.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        }
    }
    // A final receipt makes sure the broker took everything.
    c.queue(&Frame::new(Command::Disconnect).with_header("receipt", "end"));
    c.flush().await?;
    c.receipt("end").await
}

async fn produce_openwire(
    addr: &str,
    destination: &Destination,
    n: u64,
    args: &ProducerArgs,
    rate: f64,
    deadline: Option<Instant>,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut c = OpenWireClient::connect(addr, None, args.common.login()).await?;
    c.create_producer(destination).await?;
    let body = Bytes::from(vec![b'x'; args.size]);
    let mut pacer = Pacer::new(rate);
    let mut tx = None;
    let mut in_tx = 0u64;
    for i in 0..n {
        if over(deadline, shared) {
            break;
        }
        pacer.wait().await;
        if args.batch > 0 && tx.is_none() {
            tx = Some(c.begin().await?);
        }
        c.send(
            destination,
            body.clone(),
            args.persistent,
            vec![(SENT_HEADER, PropValue::Long(now_ns() as i64))],
            tx.as_ref(),
        )
        .await?;
        if pacer.paced() {
            c.flush().await?;
        }
        if let Some(t) = &tx {
            in_tx += 1;
            if in_tx == args.batch || i + 1 == n {
                c.commit(t).await?;
                shared.done.fetch_add(in_tx, Ordering::Relaxed);
                shared
                    .bytes
                    .fetch_add(in_tx * body.len() as u64, Ordering::Relaxed);
                in_tx = 0;
                tx = None;
            }
            continue;
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
        shared.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    }
    c.close().await
}

pub async fn run_consumer(args: ConsumerArgs) -> Result<Summary, String> {
    let (protocol, addr) = parse_url(&args.common.url)?;
    let destination = parse_destination(&args.common.destination)?;
    if !matches!(args.ack.as_str(), "auto" | "client" | "individual") {
        return Err(format!(
            "--ack {}: use auto, client or individual",
            args.ack
        ));
    }
    let shared = Arc::new(Shared::default());
    // Queue: the count is shared by the competing consumers (each stops when
    // all of them together have it); topic: each subscriber gets them all.
    let clients = args.common.clients.max(1);
    let counts = vec![args.common.count; clients];
    let total = if destination.is_queue() {
        args.common.count
    } else {
        args.common.count * clients as u64
    };
    shared.goal.store(total, Ordering::Relaxed);
    let ticker = progress(shared.clone(), total, "consumer");
    let started = Instant::now();
    let deadline = args
        .common
        .duration
        .map(|d| started + Duration::from_secs_f64(d));
    let mut tasks = Vec::new();
    for (i, n) in counts.into_iter().enumerate() {
        let shared = shared.clone();
        let args = args.clone();
        let addr = addr.clone();
        let destination = destination.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
            let res = match protocol {
                Protocol::Stomp => {
                    consume_stomp(
                        &addr,
                        &destination,
                        n,
                        &args,
                        deadline,
                        &shared,
                        &mut hist,
                        i,
                    )
                    .await
                }
                Protocol::OpenWire => {
                    consume_openwire(
                        &addr,
                        &destination,
                        n,
                        &args,
                        deadline,
                        &shared,
                        &mut hist,
                        i,
                    )
                    .await
                }
            };
            if let Err(e) = res {
                shared.error(e);
            }
            let mut l = shared.latency.lock().unwrap_or_else(|e| e.into_inner());
            match l.as_mut() {
                Some(all) => {
                    let _ = all.add(&hist);
                }
                None => *l = Some(hist),
            }
        }));
    }
    let timeout = Duration::from_secs_f64(args.common.timeout);
    let timed_out = tokio::time::timeout(timeout, futures_util::future::join_all(tasks))
        .await
        .is_err();
    // Measured before the ticker is stopped: it may be asleep.
    let ended = Instant::now();
    shared.stop.store(true, Ordering::Relaxed);
    shared.stopped.notify_one();
    let _ = ticker.await;
    if timed_out {
        shared.error(format!("timed out after {timeout:?}"));
    }
    let from = shared.first.get().copied().unwrap_or(started);
    let ended = shared.finished.get().copied().unwrap_or(ended);
    Ok(summary(
        "consumer",
        protocol,
        &args.common,
        &shared,
        ended.saturating_duration_since(from),
    ))
}

fn record_latency(hist: &mut Histogram<u64>, sent_ns: Option<u64>, shared: &Shared) {
    shared.first.get_or_init(Instant::now);
    if let Some(sent) = sent_ns {
        let us = now_ns().saturating_sub(sent) / 1000;
        let _ = hist.record(us.max(1));
    }
}

/// Waits for the next item unless the run is over (duration, stop).
async fn next_or_stop<T>(
    fut: impl std::future::Future<Output = std::io::Result<T>>,
    deadline: Option<Instant>,
    shared: &Shared,
) -> Option<std::io::Result<T>> {
    // The goal may be reached by another client: no more counting here.
    if over(deadline, shared) {
        return None;
    }
    tokio::pin!(fut);
    loop {
        let tick = tokio::time::sleep(Duration::from_millis(200));
        tokio::select! {
            // The item first: when it is ready (it mostly is, with frames
            // buffered) the timer is never registered.
            biased;
            r = &mut fut => return Some(r),
            _ = tick => {}
            _ = shared.stopped.notified() => {}
        }
        if over(deadline, shared) {
            return None;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn consume_stomp(
    addr: &str,
    destination: &Destination,
    n: u64,
    args: &ConsumerArgs,
    deadline: Option<Instant>,
    shared: &Shared,
    hist: &mut Histogram<u64>,
    client: usize,
) -> std::io::Result<()> {
    let mut c = StompClient::connect(addr, args.common.login()).await?;
    let ack = match args.ack.as_str() {
        "client" => "client",
        "individual" => "client-individual",
        _ => "auto",
    };
    c.send(
        &Frame::new(Command::Subscribe)
            .with_header("id", "1")
            .with_header("destination", stomp_destination(destination))
            .with_header("ack", ack)
            .with_header("activemq.prefetchSize", args.prefetch.to_string())
            .with_header("receipt", "sub"),
    )
    .await?;
    c.receipt("sub").await?;
    let mut got = 0u64;
    let mut tx_no = 0u64;
    let mut in_tx = 0u64;
    while got < n {
        if ack == "auto" {
            // Nothing to acknowledge: messages are only counted, glanced at
            // in the read buffer.
            let Some(g) = next_or_stop(c.next_glance(SENT_HEADER), deadline, shared).await else {
                break;
            };
            match g? {
                Ok(g) => {
                    got += 1;
                    record_latency(hist, g.value, shared);
                    shared.received_one();
                    shared.bytes.fetch_add(g.body_len as u64, Ordering::Relaxed);
                }
                Err(f) if f.command == Command::Error => {
                    return Err(std::io::Error::other(format!(
                        "ERROR: {:?}",
                        f.header("message")
                    )));
                }
                Err(_) => {}
            }
            continue;
        }
        let Some(f) = next_or_stop(c.next_frame(), deadline, shared).await else {
            break;
        };
        let f = f?;
        if f.command == Command::Error {
            return Err(std::io::Error::other(format!(
                "ERROR: {:?}",
                f.header("message")
            )));
        }
        if f.command != Command::Message {
            continue;
        }
        got += 1;
        record_latency(
            hist,
            f.header(SENT_HEADER).and_then(|v| v.parse().ok()),
            shared,
        );
        shared.received_one();
        shared
            .bytes
            .fetch_add(f.body.len() as u64, Ordering::Relaxed);
        if ack != "auto" {
            let id = f
                .header("ack")
                .or_else(|| f.header("message-id"))
                .cloned()
                .unwrap_or_default();
            let mut a = Frame::new(Command::Ack)
                .with_header("id", id.clone())
                .with_header("message-id", id)
                .with_header("subscription", "1");
            if args.batch > 0 {
                if in_tx == 0 {
                    tx_no += 1;
                    c.queue(
                        &Frame::new(Command::Begin)
                            .with_header("transaction", format!("a{client}-{tx_no}")),
                    );
                }
                a = a.with_header("transaction", format!("a{client}-{tx_no}"));
                in_tx += 1;
            }
            c.queue(&a);
            if args.batch > 0 && (in_tx == args.batch || got == n) {
                c.queue(
                    &Frame::new(Command::Commit)
                        .with_header("transaction", format!("a{client}-{tx_no}")),
                );
                in_tx = 0;
            }
            c.flush().await?;
        }
    }
    // What was counted is consumed: an open transaction is committed (else
    // its messages would go to another client and be counted twice).
    if in_tx > 0 {
        c.queue(
            &Frame::new(Command::Commit).with_header("transaction", format!("a{client}-{tx_no}")),
        );
        c.flush().await?;
    }
    c.disconnect().await
}

#[allow(clippy::too_many_arguments)]
async fn consume_openwire(
    addr: &str,
    destination: &Destination,
    n: u64,
    args: &ConsumerArgs,
    deadline: Option<Instant>,
    shared: &Shared,
    hist: &mut Histogram<u64>,
    client: usize,
) -> std::io::Result<()> {
    let mut c = OpenWireClient::connect(addr, None, args.common.login()).await?;
    c.subscribe(client as i64 + 1, destination, args.prefetch as i32)
        .await?;
    let mut got = 0u64;
    let mut tx = None;
    let mut in_tx = 0u64;
    while got < n {
        let Some(r) = next_or_stop(c.receive(), deadline, shared).await else {
            break;
        };
        let r = r?;
        got += 1;
        let sent = match r.message.property(SENT_HEADER) {
            Some(PropValue::Long(v)) => Some(*v as u64),
            Some(PropValue::String(s)) => s.parse().ok(),
            _ => None,
        };
        record_latency(hist, sent, shared);
        shared.received_one();
        shared
            .bytes
            .fetch_add(r.message.body.len() as u64, Ordering::Relaxed);
        if args.batch > 0 && tx.is_none() {
            tx = Some(c.begin().await?);
        }
        c.ack(&r, 1, tx.as_ref()).await?;
        if let Some(t) = &tx {
            in_tx += 1;
            if in_tx == args.batch || got == n {
                c.commit(t).await?;
                tx = None;
                in_tx = 0;
            }
        } else if got.is_multiple_of(64) {
            c.flush().await?;
        }
    }
    // What was counted is consumed: an open transaction is committed (else
    // its messages would go to another client and be counted twice).
    if let Some(t) = &tx {
        c.commit(t).await?;
    }
    c.close().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        p: ProducerArgs,
    }

    #[test]
    fn urls_and_destinations() {
        assert_eq!(
            parse_url("tcp://127.0.0.1:61616").unwrap(),
            (Protocol::OpenWire, "127.0.0.1:61616".into())
        );
        assert_eq!(
            parse_url("stomp://h:61613?x=1").unwrap(),
            (Protocol::Stomp, "h:61613".into())
        );
        assert_eq!(
            parse_url("failover:(tcp://a:1,tcp://b:2)").unwrap(),
            (Protocol::OpenWire, "a:1".into())
        );
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("tcp://nohost").is_err());
        assert_eq!(
            parse_destination("queue://A").unwrap(),
            Destination::queue("A")
        );
        assert_eq!(
            parse_destination("topic://T").unwrap(),
            Destination::topic("T")
        );
        assert!(parse_destination("A").is_err());
    }

    #[test]
    fn activemq_style_option_names() {
        let p = P::parse_from([
            "x",
            "--brokerUrl",
            "stomp://127.0.0.1:1",
            "--messageCount",
            "50",
            "--messageSize",
            "10",
            "--parallelThreads",
            "3",
            "--transactionBatchSize",
            "5",
            "--persistent",
        ])
        .p;
        assert_eq!(p.common.count, 50);
        assert_eq!(p.size, 10);
        assert_eq!(p.common.clients, 3);
        assert_eq!(p.batch, 5);
        assert!(p.persistent);
    }

    #[test]
    fn counts_split_fairly() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split(5, 0), vec![5]);
        assert_eq!(split(7, 1).iter().sum::<u64>(), 7);
    }

    #[test]
    fn latency_percentiles() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let l = Latency::from_histogram(&h).unwrap();
        assert_eq!(l.p50_us, 500);
        assert_eq!(l.p99_us, 990);
        assert_eq!(l.p999_us, 999);
        assert_eq!(l.max_us, 1000);
        assert!((l.mean_us - 500.5).abs() < 0.01);
        assert!(Latency::from_histogram(&Histogram::<u64>::new(3).unwrap()).is_none());
    }

    #[tokio::test]
    async fn pacing_spreads_sends() {
        let mut p = Pacer::new(200.0);
        let start = Instant::now();
        for _ in 0..21 {
            p.wait().await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(95), "{took:?}");
    }
}
