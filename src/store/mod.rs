//! Persistence: persistent messages, durable subscriptions and their
//! acknowledgements survive a restart or a `kill -9`.
//!
//! [`Store`] is the core's view: submit operations, await their durability.
//! Behind it one writer thread owns the [`journal::Journal`] and the index of
//! what is still live, so nothing here takes a lock per message besides the
//! hand-off queue:
//!
//! * every submission waiting when the thread wakes is written with one
//!   `write` and made durable with one `fsync` (group commit), then each
//!   waiter is told;
//! * a submission of several operations is one `Tx` record, so a committed
//!   transaction is in the journal whole or not at all;
//! * a queue message consumed before its record is written (ActiveMQ's
//!   concurrent store and dispatch) is never written, and its producer is
//!   told as soon as it is consumed, durable or not yet: the message has
//!   been delivered;
//! * a message sent to a topic is stored once, with the durable
//!   subscriptions it is for; each subscription's acknowledgement removes
//!   itself from that set;
//! * segments whose records are all dead are deleted oldest first, and when
//!   the journal has grown past a few segments the oldest one's live records
//!   are copied forward (compaction) so that one slow message cannot pin the
//!   whole history.

pub mod codec;
pub mod journal;

use crate::broker::destination::Destination;
use crate::broker::message::Message;
use bytes::{BufMut, Bytes};
use codec::{decode_message, encode_message, put_bytes, put_destination, Cursor};
use journal::{Faults, Journal, JournalError, Location, RawRecord};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};
use tracing::{error, info, warn};

/// When the journal is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fsync before any send is confirmed (KahaDB's `always`).
    Always,
    /// fsync at most this often; sends are confirmed once written
    /// (KahaDB's `periodic`).
    Periodic(Duration),
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub segment_size: u64,
    pub max_record: usize,
    pub sync: SyncPolicy,
    /// Bytes the journal may use; above it, persistent sends wait or fail.
    pub limit: u64,
    /// Compact once there are more segments than this.
    pub compact_after_segments: usize,
    /// Over the limit, persistent sends fail at once instead of waiting.
    pub fail_when_full: bool,
    /// How long the writer may hold the lone Adds of queue messages already
    /// handed to a consumer, for its ack to cancel them (adaptive).
    pub dispatch_hold: Duration,
    pub faults: Faults,
}

impl StoreConfig {
    pub fn new(dir: PathBuf) -> Self {
        StoreConfig {
            dir,
            segment_size: 32 * 1024 * 1024,
            max_record: 128 * 1024 * 1024,
            sync: SyncPolicy::Always,
            limit: 100 * 1024 * 1024 * 1024,
            compact_after_segments: 4,
            fail_when_full: false,
            dispatch_hold: Duration::ZERO,
            faults: Faults::default(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("persistent store write failed: {0}")]
    Io(String),
    #[error("the persistent store is closed")]
    Closed,
    #[error("the persistent store is over its limit of {0} bytes")]
    Full(u64),
    /// A scheduled send refused (bad scheduling properties, no room).
    #[error("{0}")]
    Scheduler(String),
}

/// A message read back from the journal.
#[derive(Debug)]
pub enum ReadBack {
    Message(Arc<Message>),
    /// Its record is not written yet (or the message is gone).
    NotWritten,
    /// Its record cannot be read or decoded (logged).
    Unreadable,
}

/// What the broker asks the store to record.
#[derive(Clone, Debug)]
pub enum Op {
    /// A persistent message, for a queue (`subs` empty) or for the durable
    /// subscriptions of a topic (`subs`).
    Add {
        id: u64,
        destination: Destination,
        subs: Vec<u64>,
        message: Arc<Message>,
    },
    /// A queue's message was consumed (or a topic message dropped entirely).
    Remove {
        id: u64,
    },
    /// A durable subscription consumed a topic message.
    SubAck {
        sub: u64,
        id: u64,
    },
    SubAdd {
        sub: u64,
        client_id: Arc<str>,
        name: Arc<str>,
        topic: Destination,
        no_local: bool,
        /// The subscription's selector, as written.
        selector: Option<Arc<str>>,
    },
    SubRemove {
        sub: u64,
    },
    /// A queue was made: it exists after a restart, empty or not (as
    /// ActiveMQ's store remembers its destinations; a virtual topic's
    /// consumer queue must go on getting copies).
    QueueAdd {
        name: Arc<str>,
    },
    /// A queue was deleted (its messages are removed apart).
    QueueRemove {
        name: Arc<str>,
    },
}

mod kind {
    pub const ADD: u8 = 1;
    pub const REMOVE: u8 = 2;
    pub const SUB_ACK: u8 = 3;
    pub const SUB_ADD: u8 = 4;
    pub const SUB_REMOVE: u8 = 5;
    pub const TX: u8 = 6;
    pub const QUEUE_ADD: u8 = 7;
    pub const QUEUE_REMOVE: u8 = 8;
}

fn encode_op(op: &Op, out: &mut Vec<u8>) -> u8 {
    match op {
        Op::Add {
            id,
            destination,
            subs,
            message,
        } => {
            out.put_u64_le(*id);
            put_destination(out, destination);
            out.put_u32_le(subs.len() as u32);
            for s in subs {
                out.put_u64_le(*s);
            }
            encode_message(out, message);
            kind::ADD
        }
        Op::Remove { id } => {
            out.put_u64_le(*id);
            kind::REMOVE
        }
        Op::SubAck { sub, id } => {
            out.put_u64_le(*sub);
            out.put_u64_le(*id);
            kind::SUB_ACK
        }
        Op::SubAdd {
            sub,
            client_id,
            name,
            topic,
            no_local,
            selector,
        } => {
            out.put_u64_le(*sub);
            put_bytes(out, client_id.as_bytes());
            put_bytes(out, name.as_bytes());
            put_destination(out, topic);
            out.put_u8(*no_local as u8);
            if let Some(s) = selector {
                put_bytes(out, s.as_bytes());
            }
            kind::SUB_ADD
        }
        Op::SubRemove { sub } => {
            out.put_u64_le(*sub);
            kind::SUB_REMOVE
        }
        Op::QueueAdd { name } => {
            put_bytes(out, name.as_bytes());
            kind::QUEUE_ADD
        }
        Op::QueueRemove { name } => {
            put_bytes(out, name.as_bytes());
            kind::QUEUE_REMOVE
        }
    }
}

fn decode_op(kind: u8, payload: &Bytes) -> Result<Op, codec::DecodeError> {
    let mut c = Cursor::new(payload);
    Ok(match kind {
        kind::ADD => {
            let id = c.u64()?;
            let destination = c.destination()?;
            let n = c.u32()? as usize;
            let mut subs = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                subs.push(c.u64()?);
            }
            let mut message = decode_message(&mut c)?;
            message.store_id = id;
            Op::Add {
                id,
                destination,
                subs,
                message: Arc::new(message),
            }
        }
        kind::REMOVE => Op::Remove { id: c.u64()? },
        kind::SUB_ACK => Op::SubAck {
            sub: c.u64()?,
            id: c.u64()?,
        },
        kind::SUB_ADD => Op::SubAdd {
            sub: c.u64()?,
            client_id: Arc::from(c.str()?.as_str()),
            name: Arc::from(c.str()?.as_str()),
            topic: c.destination()?,
            no_local: c.u8()? != 0,
            selector: if c.is_empty() {
                None
            } else {
                Some(Arc::from(c.str()?.as_str()))
            },
        },
        kind::SUB_REMOVE => Op::SubRemove { sub: c.u64()? },
        kind::QUEUE_ADD => Op::QueueAdd {
            name: Arc::from(c.str()?.as_str()),
        },
        kind::QUEUE_REMOVE => Op::QueueRemove {
            name: Arc::from(c.str()?.as_str()),
        },
        _ => return Err(codec::DecodeError("record kind")),
    })
}

/// A record as recovery reads it: a message is only located and ordered
/// (its body stays in the journal until its queue or its durable
/// subscriptions page it in); everything else is decoded.
enum Replayed {
    /// A message, located only: with the durable subscriptions it was stored
    /// for when it is a topic's (`None` for a queue's).
    Located {
        id: u64,
        destination: Destination,
        priority: u8,
        subs: Option<Vec<u64>>,
    },
    Op(Op),
}

fn replay_op(
    kind: u8,
    payload: &Bytes,
    names: &mut Interner,
) -> Result<Replayed, codec::DecodeError> {
    if kind == kind::ADD {
        let mut c = Cursor::new(payload);
        let id = c.u64()?;
        let (dkind, name) = c.raw_destination()?;
        let n = c.u32()? as usize;
        // (A queue's Add never lists subscriptions; one that did would be
        // decoded whole below, as anything unexpected is.)
        if !dkind.is_queue() || n == 0 {
            let subs = (!dkind.is_queue())
                .then(|| (0..n).map(|_| c.u64()).collect::<Result<Vec<_>, _>>())
                .transpose()?;
            let priority = codec::peek_priority(&mut c)?;
            return Ok(Replayed::Located {
                id,
                destination: Destination {
                    kind: dkind,
                    name: names.get(name),
                },
                priority,
                subs,
            });
        }
    }
    Ok(Replayed::Op(decode_op(kind, payload)?))
}

fn replay_record(
    kind: u8,
    payload: &Bytes,
    names: &mut Interner,
) -> Result<Vec<Replayed>, codec::DecodeError> {
    each_op(kind, payload, |k, p| replay_op(k, p, names))
}

fn decode_record(kind: u8, payload: &Bytes) -> Result<Vec<Op>, codec::DecodeError> {
    each_op(kind, payload, decode_op)
}

/// Applies `f` to the one operation of a record, or to each of a
/// transaction's.
fn each_op<T>(
    kind: u8,
    payload: &Bytes,
    mut f: impl FnMut(u8, &Bytes) -> Result<T, codec::DecodeError>,
) -> Result<Vec<T>, codec::DecodeError> {
    if kind != kind::TX {
        return Ok(vec![f(kind, payload)?]);
    }
    let mut c = Cursor::new(payload);
    let n = c.u32()? as usize;
    let mut ops = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let k = c.u8()?;
        let p = c.bytes()?;
        ops.push(f(k, &p)?);
    }
    Ok(ops)
}

/// A durable subscription found on recovery.
#[derive(Clone, Debug)]
pub struct RecoveredSub {
    pub sub: u64,
    pub client_id: Arc<str>,
    pub name: Arc<str>,
    pub topic: Destination,
    pub no_local: bool,
    pub selector: Option<Arc<str>>,
}

/// Everything live in the journal at start-up.
#[derive(Default)]
pub struct Recovered {
    pub subs: Vec<RecoveredSub>,
    /// Topic messages, left in the journal (durable subscriptions page them
    /// in with [`Store::read_messages`]): (topic, durable subscriptions
    /// still owed it, store id), highest priority first, oldest first
    /// within a priority.
    pub owed: Vec<(Destination, Vec<u64>, u64)>,
    /// Queue messages, left in the journal (queues page them in with
    /// [`Store::read_messages`]): (queue, store id), highest priority first,
    /// oldest first within a priority.
    pub queued: Vec<(Destination, u64)>,
    /// Every queue made (QueueAdd), with messages or not.
    pub queues: Vec<Destination>,
    pub took: Duration,
}

/// What the index knows of a live message.
struct Live {
    at: Location,
    /// Durable subscriptions still owed a topic message; `None` for a queue's.
    /// (Boxed: a million queue messages keep just the location.)
    #[allow(clippy::box_collection)]
    subs: Option<Box<HashSet<u64>>>,
}

/// The live records, by where they are.
#[derive(Default)]
struct Index {
    messages: IdMap<Live>,
    subs: IdMap<Location>,
    /// The queues made, and where each one's QueueAdd is.
    queues: HashMap<Arc<str>, Location>,
    live_per_segment: BTreeMap<u64, usize>,
    /// Of those, the durable subscriptions' and queues' records (SubAdd,
    /// QueueAdd): small and never consumed, they are always worth copying
    /// forward (counted as live, a segment where many gathered would never
    /// be compacted, nor any segment after it deleted).
    meta_per_segment: BTreeMap<u64, usize>,
    /// Records written to each segment (live or not): compaction is worth it
    /// only where few of them are still live.
    records_per_segment: BTreeMap<u64, usize>,
}

impl Index {
    /// A message's Add known only by where it is (recovery), with the
    /// durable subscriptions it was stored for when it is a topic's.
    fn add_located(&mut self, id: u64, at: Location, subs: Option<Vec<u64>>) {
        let live = Live {
            at,
            subs: subs.map(|s| Box::new(s.into_iter().collect())),
        };
        *self.records_per_segment.entry(at.segment).or_insert(0) += 1;
        if let Some(old) = self.messages.insert(id, live) {
            self.live(old.at.segment, -1);
        }
        self.live(at.segment, 1);
    }

    fn live(&mut self, seg: u64, delta: isize) {
        let e = self.live_per_segment.entry(seg).or_insert(0);
        *e = (*e as isize + delta).max(0) as usize;
    }

    /// A live SubAdd or QueueAdd comes (`delta` 1) or goes (-1).
    fn meta(&mut self, seg: u64, delta: isize) {
        self.live(seg, delta);
        let e = self.meta_per_segment.entry(seg).or_insert(0);
        *e = (*e as isize + delta).max(0) as usize;
    }

    fn apply(&mut self, op: &Op, at: Location) {
        *self.records_per_segment.entry(at.segment).or_insert(0) += 1;
        match op {
            Op::Add {
                id,
                subs,
                destination,
                ..
            } => {
                let subs =
                    (!destination.is_queue()).then(|| Box::new(subs.iter().copied().collect()));
                if let Some(old) = self.messages.insert(*id, Live { at, subs }) {
                    self.live(old.at.segment, -1);
                }
                self.live(at.segment, 1);
            }
            Op::Remove { id } => {
                if let Some(old) = self.messages.remove(id) {
                    self.live(old.at.segment, -1);
                }
            }
            Op::SubAck { sub, id } => {
                let done = match self.messages.get_mut(id) {
                    Some(Live { subs: Some(s), .. }) => {
                        s.remove(sub);
                        s.is_empty()
                    }
                    _ => false,
                };
                if done {
                    if let Some(old) = self.messages.remove(id) {
                        self.live(old.at.segment, -1);
                    }
                }
            }
            Op::SubAdd { sub, .. } => {
                if let Some(old) = self.subs.insert(*sub, at) {
                    self.meta(old.segment, -1);
                }
                self.meta(at.segment, 1);
            }
            Op::QueueAdd { name } => {
                if let Some(old) = self.queues.insert(name.clone(), at) {
                    self.meta(old.segment, -1);
                }
                self.meta(at.segment, 1);
            }
            Op::QueueRemove { name } => {
                if let Some(old) = self.queues.remove(name) {
                    self.meta(old.segment, -1);
                }
            }
            Op::SubRemove { sub } => {
                if let Some(old) = self.subs.remove(sub) {
                    self.meta(old.segment, -1);
                }
                let mut emptied = Vec::new();
                for (id, l) in self.messages.iter_mut() {
                    if let Some(s) = &mut l.subs {
                        if s.remove(sub) && s.is_empty() {
                            emptied.push(*id);
                        }
                    }
                }
                for id in emptied {
                    if let Some(old) = self.messages.remove(&id) {
                        self.live(old.at.segment, -1);
                    }
                }
            }
        }
    }
}

type Done = oneshot::Sender<Result<(), StoreError>>;

struct Submission {
    ops: Vec<Op>,
    done: Option<Done>,
    /// A queue message's lone Add (`Store::start_write` of one Add without
    /// durable subscriptions): its consumption may cancel or confirm it.
    lone: Option<u64>,
    /// A lone Add whose message a consumer already has (since then): the
    /// writer may hold it for a moment, since that consumer's ack cancels it.
    held: Option<Instant>,
}

/// Where an unconfirmed lone queue Add is.
enum Lone {
    /// Still in `Pending::queue`, at this index: not written yet.
    Queued(usize),
    /// Taken by the writer; the producer's waiter, until it is told.
    Writing(Option<Done>),
}

#[derive(Default)]
struct Pending {
    queue: Vec<Submission>,
    closed: bool,
    /// Lone queue Adds whose producer has not been told yet.
    lone: IdMap<Lone>,
    /// The writer is waiting for work (only then is it worth a wake-up).
    idle: bool,
    /// Entries of `queue` that are held (see [`Submission::held`]).
    held: usize,
    /// Entries of `queue` cancelled in place (nothing left to write).
    dead: usize,
    /// Entries of `queue` nobody waits for (acknowledgements): they do not
    /// end a hold.
    lazy: usize,
    /// The writer holds back held entries until a deadline: anything else
    /// queued wakes it.
    holding: bool,
}

impl Pending {
    /// A queue message was consumed (acknowledged) before its producer was
    /// told it is durable, as ActiveMQ's concurrent store and dispatch: if
    /// its Add is not written yet, neither it nor its removal ever is;
    /// otherwise the removal follows it. Either way its producer is told
    /// now, since the message has been delivered. Returns whether the
    /// removal still has to be written.
    fn consumed(&mut self, id: u64, cancelled: &AtomicU64) -> bool {
        match self.lone.remove(&id) {
            None => true,
            Some(Lone::Queued(at)) => {
                let s = &mut self.queue[at];
                s.ops.clear();
                s.lone = None;
                if s.held.take().is_some() {
                    self.held -= 1;
                }
                if let Some(done) = s.done.take() {
                    let _ = done.send(Ok(()));
                }
                if at + 1 == self.queue.len() {
                    self.queue.pop();
                } else {
                    self.dead += 1;
                }
                if self.queue.len() == self.dead {
                    // Nothing left to write (no `Lone::Queued` points here).
                    self.queue.clear();
                    self.dead = 0;
                }
                cancelled.fetch_add(1, Ordering::Relaxed);
                false
            }
            Some(Lone::Writing(done)) => {
                if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
                true
            }
        }
    }

    /// Only held (or cancelled) entries are queued: the writer may wait.
    fn only_held(&self) -> bool {
        self.held > 0 && self.queue.len() == self.held + self.dead + self.lazy
    }

    /// Whether a wake-up is due for what was just queued, and marks it sent.
    fn wake_due(&mut self) -> bool {
        let due = self.idle || (self.holding && !self.only_held());
        if due {
            self.idle = false;
            self.holding = false;
        }
        due
    }
}

struct Shared {
    pending: Mutex<Pending>,
    /// What is live and where: the writer's, read by page-ins. Held while
    /// records are read, so that no segment goes away under a reader.
    index: Mutex<Index>,
    wake: Condvar,
    /// Bytes of journal on disk.
    usage: AtomicU64,
    limit: u64,
    fail_when_full: bool,
    /// Woken when usage falls (segments deleted).
    space: Notify,
    stopped: AtomicBool,
    /// Counters for tests and the README's figures.
    stats: StoreStats,
}

impl Shared {
    // A panic while holding a lock leaves consistent-enough state: go on.
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default, Debug)]
pub struct StoreStats {
    pub fsyncs: AtomicU64,
    pub records: AtomicU64,
    pub batches: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub compactions: AtomicU64,
    /// Queue messages consumed before their record was written (never written).
    pub cancelled: AtomicU64,
    /// Holds for acks that ended with most held Adds unacknowledged.
    pub late_holds: AtomicU64,
}

pub struct Store {
    shared: Arc<Shared>,
    dir: PathBuf,
    max_record: usize,
    next_id: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Store {
    /// Opens the journal, replays it, and starts the writer thread.
    pub fn open(config: StoreConfig) -> Result<(Arc<Store>, Recovered), JournalError> {
        let started = Instant::now();
        let mut replay = Replay::default();
        let journal = Journal::open_with(
            &config.dir,
            config.segment_size,
            config.max_record,
            config.faults.clone(),
            |records, segments| replay.segment(records, segments),
        )?;
        let (index, mut recovered, max_id) = replay.finish();
        recovered.took = started.elapsed();
        info!(
            messages = recovered.owed.len() + recovered.queued.len(),
            durable_subscriptions = recovered.subs.len(),
            segments = journal.segments().len(),
            took_ms = recovered.took.as_millis() as u64,
            "journal recovered"
        );
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            index: Mutex::new(index),
            wake: Condvar::new(),
            usage: AtomicU64::new(journal.disk_usage()),
            limit: config.limit,
            fail_when_full: config.fail_when_full,
            space: Notify::new(),
            stopped: AtomicBool::new(false),
            stats: StoreStats::default(),
        });
        let thread_shared = shared.clone();
        let (dir, max_record) = (config.dir.clone(), config.max_record);
        let thread = std::thread::Builder::new()
            .name("ferromq-journal".into())
            .spawn(move || Writer::new(journal, config, thread_shared).run())
            .map_err(JournalError::Io)?;
        Ok((
            Arc::new(Store {
                shared,
                dir,
                max_record,
                next_id: AtomicU64::new(max_id + 1),
                thread: Mutex::new(Some(thread)),
            }),
            recovered,
        ))
    }

    /// A new store id (message or durable subscription).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn enqueue(&self, mut ops: Vec<Op>, done: Option<Done>, consumption: bool, wake: bool) {
        let mut p = self.shared.pending();
        if p.closed {
            if let Some(d) = done {
                let _ = d.send(Err(StoreError::Closed));
            }
            return;
        }
        if consumption && !p.lone.is_empty() {
            let cancelled = &self.shared.stats.cancelled;
            ops.retain(|op| match op {
                Op::Remove { id } => p.consumed(*id, cancelled),
                _ => true,
            });
            if ops.is_empty() && done.is_none() {
                return;
            }
        }
        let lone = match (ops.as_slice(), &done) {
            ([Op::Add { id, subs, .. }], Some(_)) if subs.is_empty() => Some(*id),
            _ => None,
        };
        if let Some(id) = lone {
            let at = p.queue.len();
            p.lone.insert(id, Lone::Queued(at));
        }
        if done.is_none() {
            p.lazy += 1;
        }
        p.queue.push(Submission {
            ops,
            done,
            lone,
            held: None,
        });
        let notify = wake && p.wake_due();
        drop(p);
        if notify {
            self.shared.wake.notify_one();
        }
    }

    /// Wakes the writer if something waits for it, after
    /// [`Store::start_write_deferred`] of the message `id`. If `dispatched`
    /// (a consumer has it) its record may be held for a moment: the
    /// consumer's ack cancels it.
    pub fn wake(&self, id: u64, dispatched: bool) {
        let mut p = self.shared.pending();
        if dispatched {
            if let Some(Lone::Queued(at)) = p.lone.get(&id) {
                let at = *at;
                if p.queue[at].held.is_none() {
                    p.queue[at].held = Some(Instant::now());
                    p.held += 1;
                }
            }
        }
        let notify = !p.queue.is_empty() && p.wake_due();
        drop(p);
        if notify {
            self.shared.wake.notify_one();
        }
    }

    /// Records `ops` atomically; resolves once they are durable (or failed).
    pub async fn write(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.start_write(ops).await
    }

    /// Queues `ops` for the journal now; the returned future resolves when
    /// they are durable. (What is submitted is ordered before anything
    /// submitted after this call returns, even before the future is polled.)
    pub fn start_write(
        &self,
        ops: Vec<Op>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(ops, Some(tx), false, true);
        async move { rx.await.unwrap_or(Err(StoreError::Closed)) }
    }

    /// As [`Store::start_write`], but the writer is not woken until
    /// [`Store::wake`]: a queue message handed to an auto-acknowledging
    /// consumer in between is cancelled before the writer ever sees it.
    pub fn start_write_deferred(
        &self,
        ops: Vec<Op>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(ops, Some(tx), false, false);
        async move { rx.await.unwrap_or(Err(StoreError::Closed)) }
    }

    /// Records `ops` without waiting (acknowledgements): they are ordered
    /// after everything submitted before.
    pub fn submit(&self, ops: Vec<Op>) {
        if !ops.is_empty() {
            self.enqueue(ops, None, false, true);
        }
    }

    /// Records that messages were consumed (plain acknowledgements, not
    /// part of a transaction): each is independent of the others. A queue
    /// message whose producer still waits is confirmed to it now, and if its
    /// record is not written yet it never is.
    pub fn consumed(&self, ops: Vec<Op>) {
        if !ops.is_empty() {
            self.enqueue(ops, None, true, true);
        }
    }

    /// Resolves when everything submitted so far is durable.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        self.write(Vec::new()).await
    }

    /// Reads queue messages back from the journal (a queue pages in what it
    /// kept only here), in order.
    pub fn read_messages(&self, ids: &[u64]) -> Vec<ReadBack> {
        let index = self.shared.index();
        let mut files: HashMap<u64, std::fs::File> = HashMap::new();
        // A transaction's record holds many messages: decoded once per call.
        let mut records: HashMap<Location, Result<IdMap<Arc<Message>>, String>> = HashMap::new();
        ids.iter()
            .map(|id| {
                let Some(live) = index.messages.get(id) else {
                    return ReadBack::NotWritten;
                };
                let at = live.at;
                let record = records.entry(at).or_insert_with(|| {
                    let file = match files.entry(at.segment) {
                        std::collections::hash_map::Entry::Occupied(f) => Ok(f.into_mut()),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            journal::open_segment(&self.dir, at.segment).map(|f| v.insert(f))
                        }
                    };
                    let (kind, payload) = file
                        .and_then(|f| journal::read_record_in(f, &self.dir, at, self.max_record))
                        .map_err(|e| e.to_string())?;
                    let ops = decode_record(kind, &payload).map_err(|e| e.to_string())?;
                    Ok(ops
                        .into_iter()
                        .filter_map(|op| match op {
                            Op::Add { id, message, .. } => Some((id, message)),
                            _ => None,
                        })
                        .collect())
                });
                match record {
                    Ok(adds) => match adds.get(id) {
                        Some(m) => ReadBack::Message(m.clone()),
                        None => {
                            error!(id, segment = at.segment, offset = at.offset, "the journal record of a message does not hold it");
                            ReadBack::Unreadable
                        }
                    },
                    Err(e) => {
                        error!(id, segment = at.segment, offset = at.offset, error = %e, "cannot read a message back from the journal");
                        ReadBack::Unreadable
                    }
                }
            })
            .collect()
    }

    pub fn usage(&self) -> u64 {
        self.shared.usage.load(Ordering::Relaxed)
    }

    pub fn over_limit(&self) -> bool {
        self.usage() >= self.shared.limit
    }

    pub fn limit(&self) -> u64 {
        self.shared.limit
    }

    /// Waits until the journal is below its limit again, or fails at once
    /// when so configured.
    pub async fn room(&self) -> Result<(), StoreError> {
        if !self.over_limit() {
            return Ok(());
        }
        if self.shared.fail_when_full {
            return Err(StoreError::Full(self.shared.limit));
        }
        self.wait_for_space().await;
        Ok(())
    }

    /// Waits until the journal is below its limit again.
    pub async fn wait_for_space(&self) {
        loop {
            let notified = self.shared.space.notified();
            if !self.over_limit() || self.shared.stopped.load(Ordering::Relaxed) {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    pub fn stats(&self) -> &StoreStats {
        &self.shared.stats
    }

    /// Writes and syncs what is pending, then stops the writer thread.
    pub fn close(&self) {
        let st = &self.shared.stats;
        info!(
            records = st.records.load(Ordering::Relaxed),
            fsyncs = st.fsyncs.load(Ordering::Relaxed),
            cancelled = st.cancelled.load(Ordering::Relaxed),
            late_holds = st.late_holds.load(Ordering::Relaxed),
            "journal closing"
        );
        {
            let mut p = self.shared.pending();
            p.closed = true;
            p.idle = false;
        }
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// Store ids are sequential integers we hand out: a multiplicative hash
/// spreads them well and costs a fraction of SipHash (a million of them are
/// looked up at recovery).
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Recovered messages share one copy of each destination name (a million
/// queued messages usually go to a few destinations).
#[derive(Default)]
struct Interner {
    known: HashMap<Arc<str>, ()>,
    last: Option<Arc<str>>,
}

impl Interner {
    /// The shared copy of `name`.
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(last) = &self.last {
            if **last == *name {
                return last.clone();
            }
        }
        let shared = match self.known.get_key_value(name) {
            Some((known, ())) => known.clone(),
            None => {
                let new: Arc<str> = Arc::from(name);
                if self.known.len() < 100_000 {
                    self.known.insert(new.clone(), ());
                }
                new
            }
        };
        self.last = Some(shared.clone());
        shared
    }
}

/// Rebuilds the live state from the journal's records.
/// Recovery's state while the journal's segments are read, one by one.
#[derive(Default)]
struct Replay {
    index: Index,
    /// Messages left in the journal: where they go, and their priority.
    located: BTreeMap<u64, (Destination, u8)>,
    subs: BTreeMap<u64, RecoveredSub>,
    max_id: u64,
    names: Interner,
}

impl Replay {
    fn segment(&mut self, records: Vec<RawRecord>, segments: usize) {
        let Replay {
            index,
            located,
            subs,
            max_id,
            names,
        } = self;
        if index.messages.is_empty() {
            // Most records of a long journal are Adds, and segments hold
            // about as many records each: no rehashing on the way.
            // (Capped: the first segment may hold far smaller records than
            // the rest.)
            index
                .messages
                .reserve((records.len() * segments).min(1 << 20));
        }
        for r in records {
            let replayed = match replay_record(r.kind, &r.payload, names) {
                Ok(ops) => ops,
                Err(e) => {
                    // A record that passed its checksum but does not decode was
                    // written by something else; do not guess.
                    error!(segment = r.location.segment, offset = r.location.offset, error = %e, "undecodable journal record skipped");
                    continue;
                }
            };
            for rep in replayed {
                let op = match rep {
                    Replayed::Located {
                        id,
                        destination,
                        priority,
                        subs,
                    } => {
                        *max_id = (*max_id).max(id);
                        index.add_located(id, r.location, subs);
                        located.insert(id, (destination, priority));
                        continue;
                    }
                    Replayed::Op(op) => op,
                };
                match &op {
                    // Every Add is located above, without decoding its message.
                    Op::Add { id, .. } => {
                        *max_id = (*max_id).max(*id);
                    }
                    Op::SubAdd {
                        sub,
                        client_id,
                        name,
                        topic,
                        no_local,
                        selector,
                    } => {
                        *max_id = (*max_id).max(*sub);
                        subs.insert(
                            *sub,
                            RecoveredSub {
                                sub: *sub,
                                client_id: client_id.clone(),
                                name: name.clone(),
                                topic: topic.clone(),
                                no_local: *no_local,
                                selector: selector.clone(),
                            },
                        );
                    }
                    Op::SubRemove { sub } => {
                        subs.remove(sub);
                    }
                    _ => {}
                }
                index.apply(&op, r.location);
                if let Op::Remove { id } | Op::SubAck { id, .. } = &op {
                    if !index.messages.contains_key(id) {
                        located.remove(id);
                    }
                }
            }
        }
    }

    fn finish(self) -> (Index, Recovered, u64) {
        let Replay {
            index,
            mut located,
            subs,
            max_id,
            ..
        } = self;
        located.retain(|id, _| index.messages.contains_key(id));
        // Queues and subscriptions get theirs highest priority first, oldest
        // first within a priority.
        let mut located: Vec<(u64, Destination, u8)> =
            located.into_iter().map(|(id, (d, p))| (id, d, p)).collect();
        located.sort_by_key(|(id, _, priority)| (std::cmp::Reverse(*priority), *id));
        let (queued, owed): (Vec<_>, Vec<_>) =
            located.into_iter().partition(|(_, d, _)| d.is_queue());
        let recovered = Recovered {
            queued: queued.into_iter().map(|(id, d, _)| (d, id)).collect(),
            queues: {
                let mut names: Vec<&Arc<str>> = index.queues.keys().collect();
                names.sort();
                names
                    .into_iter()
                    .map(|n| Destination::queue(n.clone()))
                    .collect()
            },
            subs: subs.into_values().collect(),
            owed: owed
                .into_iter()
                .map(|(id, d, _)| {
                    let subs = index.messages[&id]
                        .subs
                        .as_ref()
                        .map(|s| {
                            let mut v: Vec<u64> = s.iter().copied().collect();
                            v.sort_unstable();
                            v
                        })
                        .unwrap_or_default();
                    (d, subs, id)
                })
                .collect(),
            took: Duration::ZERO,
        };
        (index, recovered, max_id)
    }
}

/// How soon records that nobody waited for are fsynced when the journal goes idle.
const UNWAITED_SYNC_DELAY: Duration = Duration::from_millis(50);

/// The writer thread's state.
struct Writer {
    journal: Journal,
    config: StoreConfig,
    shared: Arc<Shared>,
    last_sync: Instant,
    dirty: bool,
    hold: HoldPolicy,
    /// Records nobody waits for (acknowledgements, subscription changes,
    /// dead-letter moves) whose batch failed: the broker already acted on
    /// them, so they are written first in the next batch, retried until
    /// they are (anything awaited behind them fails meanwhile).
    retry: Vec<Submission>,
    /// When the last batch failed (while the disk keeps failing, batches
    /// are tried at most every RETRY_DELAY: each rewrites the retried ones).
    failed_at: Option<Instant>,
}

/// How soon failed records nobody waits for are tried again when nothing
/// else comes.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// When the writer holds dispatched Adds for their acks: while acks come in
/// time. After a few holds in a row that ended with most Adds still
/// unacknowledged, it writes at once for a while (longer each time).
#[derive(Debug)]
struct HoldPolicy {
    max: Duration,
    misses: u32,
    skip: u32,
    backoff: u32,
}

impl HoldPolicy {
    const MISSES: u32 = 3;
    const MIN_BACKOFF: u32 = 16;
    const MAX_BACKOFF: u32 = 256;

    fn new(max: Duration) -> Self {
        HoldPolicy {
            max,
            misses: 0,
            skip: 0,
            backoff: Self::MIN_BACKOFF,
        }
    }

    /// Whether to hold now (called once per batch).
    fn enabled(&mut self) -> bool {
        if self.max.is_zero() {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// A hold ended: `acked` of the held Adds were cancelled in time,
    /// `late` were not. Returns whether it was worth it.
    fn outcome(&mut self, acked: u64, late: u64) -> bool {
        if acked >= late {
            self.misses = 0;
            self.backoff = Self::MIN_BACKOFF;
            return true;
        }
        self.misses += 1;
        if self.misses >= Self::MISSES {
            self.misses = 0;
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2).min(Self::MAX_BACKOFF);
        }
        false
    }
}

impl Writer {
    fn new(journal: Journal, config: StoreConfig, shared: Arc<Shared>) -> Self {
        Writer {
            hold: HoldPolicy::new(config.dispatch_hold),
            journal,
            config,
            shared,
            last_sync: Instant::now(),
            dirty: false,
            retry: Vec::new(),
            failed_at: None,
        }
    }

    fn run(mut self) {
        loop {
            let (batch, closed) = {
                let mut p = self.shared.pending();
                while p.queue.is_empty() && !p.closed {
                    if !self.dirty && self.retry.is_empty() {
                        p.idle = true;
                        p = self.shared.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                        p.idle = false;
                        continue;
                    }
                    // Something written is not yet durable: sync it when
                    // the journal goes quiet (after the periodic interval, or
                    // soon for acknowledgements nobody waited for).
                    let mut quiet = match self.config.sync {
                        SyncPolicy::Periodic(every) => every,
                        SyncPolicy::Always => UNWAITED_SYNC_DELAY,
                    };
                    if !self.retry.is_empty() {
                        quiet = quiet.min(RETRY_DELAY);
                    }
                    p.idle = true;
                    let (q, timeout) = self
                        .shared
                        .wake
                        .wait_timeout(p, quiet)
                        .unwrap_or_else(|e| e.into_inner());
                    p = q;
                    p.idle = false;
                    if timeout.timed_out() && p.queue.is_empty() {
                        drop(p);
                        if !self.retry.is_empty() {
                            self.write_batch(Vec::new());
                        }
                        self.periodic_sync();
                        p = self.shared.pending();
                    }
                }
                if p.only_held() && !p.closed && self.hold.enabled() {
                    p = Self::hold_for_acks(&self.shared, &mut self.hold, p);
                }
                if p.queue.len() == p.dead && !p.closed {
                    // All cancelled by their acks: nothing to write.
                    p.queue.clear();
                    p.dead = 0;
                    continue;
                }
                let mut batch = std::mem::take(&mut p.queue);
                p.held = 0;
                p.dead = 0;
                p.lazy = 0;
                // The producers of lone Adds are told by whoever comes
                // first: the writer once durable, or their consumption.
                for s in batch.iter_mut() {
                    if let Some(id) = s.lone {
                        p.lone.insert(id, Lone::Writing(s.done.take()));
                    }
                }
                (batch, p.closed)
            };
            if !batch.is_empty() || (closed && !self.retry.is_empty()) {
                if let Some(wait) = self
                    .failed_at
                    .and_then(|t| RETRY_DELAY.checked_sub(t.elapsed()))
                    .filter(|_| !closed)
                {
                    std::thread::sleep(wait);
                }
                self.write_batch(batch);
            }
            if closed {
                if self.dirty {
                    let _ = self.journal.sync();
                }
                self.shared.stopped.store(true, Ordering::Relaxed);
                self.shared.space.notify_waiters();
                return;
            }
        }
    }

    /// Waits, up to the hold time, while only Adds of messages consumers
    /// have are queued: their acks cancel them (see [`Pending::consumed`]).
    /// Each is held from when its consumer got it, up to the hold time.
    fn hold_for_acks<'a>(
        shared: &'a Shared,
        hold: &mut HoldPolicy,
        mut p: std::sync::MutexGuard<'a, Pending>,
    ) -> std::sync::MutexGuard<'a, Pending> {
        let cancelled = &shared.stats.cancelled;
        let before = cancelled.load(Ordering::Relaxed);
        let mut timed_out = false;
        while p.only_held() && !p.closed {
            let oldest = p.queue.iter().filter_map(|s| s.held).min();
            let Some(deadline) = oldest.map(|t| t + hold.max) else {
                break;
            };
            let now = Instant::now();
            if now >= deadline {
                timed_out = true;
                break;
            }
            p.holding = true;
            p = shared
                .wake
                .wait_timeout(p, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            p.holding = false;
        }
        if timed_out || p.held == 0 {
            let acked = cancelled.load(Ordering::Relaxed) - before;
            if !hold.outcome(acked, p.held as u64) {
                shared.stats.late_holds.fetch_add(1, Ordering::Relaxed);
            }
        }
        p
    }

    fn periodic_sync(&mut self) {
        if self.dirty && self.journal.sync().is_ok() {
            self.dirty = false;
            self.last_sync = Instant::now();
            self.shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A queue message added and consumed within the same batch never needs
    /// to reach the disk (ActiveMQ's concurrent store and dispatch): both
    /// records are dropped. Only lone Adds are cancelled (a transaction's
    /// records stay whole); Removes of them may come from anywhere.
    fn cancel_consumed(batch: &mut [Submission]) -> u64 {
        let lone_adds: HashSet<u64> = batch
            .iter()
            .filter_map(|s| match s.ops.as_slice() {
                [Op::Add { id, subs, .. }] if subs.is_empty() => Some(*id),
                _ => None,
            })
            .collect();
        if lone_adds.is_empty() {
            return 0;
        }
        let removed: HashSet<u64> = batch
            .iter()
            .flat_map(|s| s.ops.iter())
            .filter_map(|op| match op {
                Op::Remove { id } if lone_adds.contains(id) => Some(*id),
                _ => None,
            })
            .collect();
        if removed.is_empty() {
            return 0;
        }
        for s in batch.iter_mut() {
            s.ops.retain(|op| match op {
                Op::Add { id, .. } | Op::Remove { id } => !removed.contains(id),
                _ => true,
            });
        }
        removed.len() as u64
    }

    fn write_batch(&mut self, mut batch: Vec<Submission>) {
        if !self.retry.is_empty() {
            let mut first = std::mem::take(&mut self.retry);
            first.append(&mut batch);
            batch = first;
        }
        let cancelled = Self::cancel_consumed(&mut batch);
        if cancelled > 0 {
            self.shared
                .stats
                .cancelled
                .fetch_add(cancelled, Ordering::Relaxed);
        }
        let mark = self.journal.mark();
        // Each submission is one record: where it went, or why it was
        // refused on its own (a record over the size limit).
        let mut at: Vec<Option<Location>> = vec![None; batch.len()];
        let mut refused: Vec<Option<StoreError>> = (0..batch.len()).map(|_| None).collect();
        let mut failure: Option<StoreError> = None;
        let mut scratch = Vec::with_capacity(4096);
        for (i, s) in batch.iter().enumerate() {
            if s.ops.is_empty() {
                continue;
            }
            scratch.clear();
            let kind = if s.ops.len() == 1 {
                encode_op(&s.ops[0], &mut scratch)
            } else {
                scratch.put_u32_le(s.ops.len() as u32);
                let mut one = Vec::new();
                for op in &s.ops {
                    one.clear();
                    let k = encode_op(op, &mut one);
                    scratch.put_u8(k);
                    put_bytes(&mut scratch, &one);
                }
                kind::TX
            };
            match self.journal.append(kind, &scratch) {
                Ok(location) => at[i] = Some(location),
                Err(e @ JournalError::TooLarge { .. }) => {
                    warn!(error = %e, "journal record refused");
                    refused[i] = Some(StoreError::Io(e.to_string()));
                }
                Err(e) => {
                    failure = Some(StoreError::Io(e.to_string()));
                    break;
                }
            }
        }
        if failure.is_none() {
            if let Err(e) = self.journal.flush() {
                failure = Some(StoreError::Io(e.to_string()));
            } else if at.iter().any(Option::is_some) {
                self.dirty = true;
            }
        }
        // Only what somebody waits for needs an fsync now: acknowledgements
        // submitted without waiting ride on the next one (or the idle sync).
        let awaited = batch.iter().any(|s| s.done.is_some() || s.lone.is_some());
        if failure.is_none() && self.dirty && awaited {
            let sync_now = match self.config.sync {
                SyncPolicy::Always => true,
                SyncPolicy::Periodic(every) => self.last_sync.elapsed() >= every,
            };
            if sync_now {
                match self.journal.sync() {
                    Ok(()) => {
                        self.dirty = false;
                        self.last_sync = Instant::now();
                        self.shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failure = Some(StoreError::Io(e.to_string())),
                }
            }
        }
        // After a failure, what a segment rotation made durable stands (it
        // is on disk: its producers are told so, the index has it); the rest
        // of the batch is undone, and counts from the first record lost on.
        let mut lost_from = batch.len();
        self.failed_at = failure.as_ref().map(|_| Instant::now());
        if let Some(e) = &failure {
            warn!(error = %e, "journal batch failed");
            if let Err(e) = self.journal.undo_to(mark) {
                error!(error = %e, "journal: a failed batch could not be undone");
            }
            // A submission without records (a barrier: everything before
            // it is durable) stands only if what came before the batch is.
            let before_ok = self.journal.is_durable_before(mark);
            lost_from = (0..batch.len())
                .find(|&i| match (&refused[i], batch[i].ops.is_empty()) {
                    (Some(_), _) => false,
                    (None, true) => !before_ok,
                    (None, false) => !at[i].is_some_and(|a| self.journal.is_durable(a)),
                })
                .unwrap_or(batch.len());
        }
        let result = |i: usize| -> Result<(), StoreError> {
            match (&refused[i], &failure) {
                (Some(e), _) => Err(e.clone()),
                (None, Some(e)) if i >= lost_from => Err(e.clone()),
                _ => Ok(()),
            }
        };
        let mut written = 0;
        {
            let mut index = self.shared.index();
            for (i, s) in batch.iter().enumerate() {
                if let (Some(location), Ok(())) = (at[i], result(i)) {
                    for op in &s.ops {
                        index.apply(op, location);
                    }
                    written += s.ops.len();
                }
            }
        }
        if failure.is_none() {
            self.shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        self.shared
            .stats
            .records
            .fetch_add(written as u64, Ordering::Relaxed);
        // Space is reclaimed before anyone is told, so that a producer that
        // waited for an acknowledgement sees the freed space.
        if failure.is_none() {
            self.collect_garbage();
        }
        self.shared
            .usage
            .store(self.journal.disk_usage(), Ordering::Relaxed);
        let mut lone = Vec::new();
        for (i, s) in batch.into_iter().enumerate() {
            let r = result(i);
            if let Some(done) = s.done {
                let _ = done.send(r);
            } else if let Some(id) = s.lone {
                lone.push((id, r));
            } else if r.is_err() && refused[i].is_none() && !s.ops.is_empty() {
                self.retry.push(s);
            }
        }
        if !lone.is_empty() {
            let mut p = self.shared.pending();
            for (id, r) in lone {
                if let Some(Lone::Writing(Some(done))) = p.lone.remove(&id) {
                    let _ = done.send(r);
                }
            }
        }
    }

    /// Deletes the oldest segments while nothing in them is live, then
    /// compacts the oldest one if the journal has grown long.
    fn collect_garbage(&mut self) {
        let shared = self.shared.clone();
        let mut guard = shared.index();
        let index = &mut *guard;
        let mut deleted = false;
        // Only segments there were when the pass began: compaction copies
        // metadata records (always live) forward, and a segment of nothing
        // else must not be compacted again in the same pass, for ever.
        let head_at_start = self.journal.head_segment();
        while let Some((&oldest, _)) = self.journal.segments().iter().next() {
            if oldest >= head_at_start {
                break;
            }
            let live = index.live_per_segment.get(&oldest).copied().unwrap_or(0);
            if live > 0 {
                let records = index.records_per_segment.get(&oldest).copied().unwrap_or(0);
                let meta = index.meta_per_segment.get(&oldest).copied().unwrap_or(0);
                // Only a segment where at most a quarter of the records are
                // still live messages is worth copying forward; otherwise it
                // would be rewritten again and again. (Subscription and queue
                // records always are: they are small, and never go.)
                if self.journal.segments().len() > self.config.compact_after_segments
                    && (live - meta.min(live)) * 4 <= records - meta.min(records)
                {
                    let mark = self.journal.mark();
                    if let Err(e) = self.compact(index, oldest) {
                        warn!(segment = oldest, error = %e, "journal compaction failed");
                        // Its copies are not indexed: none stays behind.
                        if let Err(e) = self.journal.undo_to(mark) {
                            error!(error = %e, "journal: a failed compaction could not be undone");
                        }
                        break;
                    }
                    continue;
                }
                break;
            }
            match self.journal.delete_segment(oldest) {
                Ok(()) => {
                    index.live_per_segment.remove(&oldest);
                    index.records_per_segment.remove(&oldest);
                    index.meta_per_segment.remove(&oldest);
                    self.shared
                        .stats
                        .segments_deleted
                        .fetch_add(1, Ordering::Relaxed);
                    deleted = true;
                }
                Err(e) => {
                    warn!(segment = oldest, error = %e, "cannot delete a journal segment");
                    break;
                }
            }
        }
        if deleted {
            self.shared
                .usage
                .store(self.journal.disk_usage(), Ordering::Relaxed);
            self.shared.space.notify_waiters();
        }
    }

    /// Copies the live records of segment `seg` to the head, so it can go.
    fn compact(&mut self, index: &mut Index, seg: u64) -> Result<(), JournalError> {
        let messages: Vec<u64> = index
            .messages
            .iter()
            .filter(|(_, l)| l.at.segment == seg)
            .map(|(id, _)| *id)
            .collect();
        let subs: Vec<u64> = index
            .subs
            .iter()
            .filter(|(_, at)| at.segment == seg)
            .map(|(s, _)| *s)
            .collect();
        let queues: Vec<(Arc<str>, Location)> = index
            .queues
            .iter()
            .filter(|(_, at)| at.segment == seg)
            .map(|(n, at)| (n.clone(), *at))
            .collect();
        let mut copied: Vec<(Op, Location)> = Vec::new();
        let mut scratch = Vec::new();
        // A transaction's record holds many messages: decoded once.
        let mut records: HashMap<Location, IdMap<(Destination, Arc<Message>)>> = HashMap::new();
        for id in messages {
            let at = index.messages[&id].at;
            if let std::collections::hash_map::Entry::Vacant(slot) = records.entry(at) {
                let (kind, payload) = self.journal.read(at)?;
                let ops = decode_record(kind, &payload).map_err(|e| JournalError::Corrupt {
                    file: self.config.dir.clone(),
                    offset: at.offset,
                    reason: e.to_string(),
                })?;
                let adds = ops
                    .into_iter()
                    .filter_map(|op| match op {
                        Op::Add {
                            id,
                            destination,
                            message,
                            ..
                        } => Some((id, (destination, message))),
                        _ => None,
                    })
                    .collect();
                slot.insert(adds);
            }
            let Some((destination, message)) = records[&at].get(&id).cloned() else {
                continue;
            };
            let subs = match &index.messages[&id].subs {
                Some(s) => {
                    let mut v: Vec<u64> = s.iter().copied().collect();
                    v.sort_unstable();
                    v
                }
                None => Vec::new(),
            };
            let op = Op::Add {
                id,
                destination,
                subs,
                message,
            };
            scratch.clear();
            let k = encode_op(&op, &mut scratch);
            let new_at = self.journal.append_copy(k, &scratch)?;
            copied.push((op, new_at));
        }
        for sub in subs {
            let at = index.subs[&sub];
            let (kind, payload) = self.journal.read(at)?;
            let Ok(ops) = decode_record(kind, &payload) else {
                continue;
            };
            for op in ops {
                if matches!(op, Op::SubAdd { sub: s, .. } if s == sub) {
                    scratch.clear();
                    let k = encode_op(&op, &mut scratch);
                    let new_at = self.journal.append_copy(k, &scratch)?;
                    copied.push((op, new_at));
                }
            }
        }
        for (name, _) in queues {
            // Its record holds nothing else: written afresh.
            let op = Op::QueueAdd { name };
            scratch.clear();
            let k = encode_op(&op, &mut scratch);
            let new_at = self.journal.append_copy(k, &scratch)?;
            copied.push((op, new_at));
        }
        self.journal.flush()?;
        self.journal.sync()?;
        for (op, at) in &copied {
            index.apply(op, *at);
        }
        self.shared
            .stats
            .compactions
            .fetch_add(1, Ordering::Relaxed);
        info!(
            segment = seg,
            records = copied.len(),
            "journal segment compacted"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests;
