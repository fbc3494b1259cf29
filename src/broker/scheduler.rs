//! Scheduled delivery, as ActiveMQ's `schedulerSupport`: a message with
//! `AMQ_SCHEDULED_DELAY` (ms), `AMQ_SCHEDULED_PERIOD` (ms) and
//! `AMQ_SCHEDULED_REPEAT` is held, then sent to its destination after the
//! delay (or one period when there is no delay), and again every period as
//! many more times as the repeat says (-1: forever).
//!
//! Each firing is a copy without the scheduling properties and with
//! `scheduledJobId`; a repeating job's copies get message ids of their own.
//! A persistent job is in the journal (under a destination no client can
//! name) until its last firing, so it survives a restart; a non-persistent
//! one lives in memory, as non-persistent messages do.
//!
//! Pure parts here: reading the properties, the job heap and its memory
//! bound. The broker fires the jobs (see `Broker::run_scheduler`).

use crate::broker::destination::{Destination, DestinationKind};
use crate::broker::message::{now_millis, Message, MessageId, PropValue};
use crate::broker::Broker;
use crate::bstr::ByteStr;
use crate::store::{Op, ReadBack, StoreError};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub const DELAY: &str = "AMQ_SCHEDULED_DELAY";
pub const PERIOD: &str = "AMQ_SCHEDULED_PERIOD";
pub const REPEAT: &str = "AMQ_SCHEDULED_REPEAT";
pub const CRON: &str = "AMQ_SCHEDULED_CRON";
/// The most repeats a message may ask for (ActiveMQ's maxRepeatAllowed).
pub const MAX_REPEAT: i32 = 1000;
/// Set on every copy a job sends (ActiveMQ's name).
pub const JOB_ID: &str = "scheduledJobId";
/// ActiveMQ's management destination (a topic or a queue of this name): a
/// message to it with `AMQ_SCHEDULER_ACTION` browses or removes jobs.
pub const MANAGEMENT: &str = "ActiveMQ.Scheduler.Management";
pub const ACTION: &str = "AMQ_SCHEDULER_ACTION";
pub const ACTION_START_TIME: &str = "ACTION_START_TIME";
pub const ACTION_END_TIME: &str = "ACTION_END_TIME";

/// Whether a destination is the scheduler's management one.
pub fn is_management(d: &Destination) -> bool {
    d.name.len() >= MANAGEMENT.len()
        && d.name.as_bytes()[..MANAGEMENT.len()].eq_ignore_ascii_case(MANAGEMENT.as_bytes())
}

/// Kept on a stored job: when it fires next (ms since the epoch) and how
/// many more times after that.
const DUE: &str = "__ferromq_scheduled_due";
const LEFT: &str = "__ferromq_scheduled_left";

/// Where stored jobs are in the journal: a temporary queue, which no client
/// message is ever stored for.
pub fn jobs_destination() -> Destination {
    Destination {
        kind: DestinationKind::TempQueue,
        name: Arc::from("ferromq.scheduler.jobs"),
    }
}

/// What a message asks of the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub delay: i64,
    pub period: i64,
    /// More firings after the first; -1 for ever.
    pub repeat: i32,
}

fn as_long(name: &str, v: &PropValue) -> Result<i64, String> {
    let bad = || format!("{name} must be a number of milliseconds, not '{v}'");
    match v {
        PropValue::Byte(n) => Ok(*n as i64),
        PropValue::Short(n) => Ok(*n as i64),
        PropValue::Int(n) => Ok(*n as i64),
        PropValue::Long(n) => Ok(*n),
        PropValue::String(s) => s.trim().parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// The scheduling a message asks for: `None` when it has none of the
/// properties; an error for values that are not numbers, or a cron entry
/// (not supported here).
pub fn spec(m: &Message) -> Result<Option<Spec>, String> {
    // A job's copy sent again (from a browse, say) goes at once, as in
    // ActiveMQ.
    if m.property(JOB_ID).is_some() {
        return Ok(None);
    }
    parse_spec(m)
}

/// The scheduling properties of a message, read as they are.
fn parse_spec(m: &Message) -> Result<Option<Spec>, String> {
    let delay = m.property(DELAY);
    let period = m.property(PERIOD);
    if let Some(cron) = m.property(CRON) {
        return Err(format!(
            "{CRON} ('{cron}') is not supported: use {DELAY}, {PERIOD} and {REPEAT}"
        ));
    }
    if delay.is_none() && period.is_none() {
        return Ok(None);
    }
    let delay = delay.map(|v| as_long(DELAY, v)).transpose()?.unwrap_or(0);
    let period = period.map(|v| as_long(PERIOD, v)).transpose()?.unwrap_or(0);
    let repeat = match m.property(REPEAT) {
        Some(v) => {
            let n = as_long(REPEAT, v)?;
            i32::try_from(n).map_err(|_| format!("{REPEAT} {n} is out of range"))?
        }
        None => 0,
    };
    if period < 0 {
        return Err(format!("{PERIOD} must not be negative"));
    }
    if repeat < -1 {
        return Err(format!("{REPEAT} must be -1 (for ever) or more"));
    }
    if repeat > MAX_REPEAT {
        // ActiveMQ's maxRepeatAllowed, and its words.
        return Err(format!(
            "The scheduled repeat value is too large ({repeat}; at most {MAX_REPEAT})"
        ));
    }
    if repeat == -1 && period == 0 {
        return Err(format!("{REPEAT} -1 (for ever) needs a {PERIOD}"));
    }
    Ok(Some(Spec {
        delay,
        period,
        repeat,
    }))
}

/// When a job scheduled at `now` fires first (ActiveMQ: after the delay, or
/// after one period when there is none).
pub fn first_due(now: i64, spec: &Spec) -> i64 {
    now.saturating_add(if spec.delay > 0 {
        spec.delay
    } else {
        spec.period
    })
}

/// A held message and when it goes.
#[derive(Clone, Debug)]
pub struct Job {
    pub due: i64,
    /// Orders jobs due at the same time (first scheduled, first sent).
    pub seq: u64,
    /// `<producer id>:<n>`, as ActiveMQ's job ids.
    pub id: Arc<str>,
    pub period: i64,
    /// Firings left after the next one; -1 for ever.
    pub left: i32,
    /// Whether the message asked for repeats (then every copy gets an id
    /// of its own, as in ActiveMQ).
    pub repeats: bool,
    /// The message as sent (scheduling properties included).
    pub message: Arc<Message>,
    /// Its journal record; 0 when it is not stored.
    pub store_id: u64,
}

impl Job {
    fn bytes(&self) -> usize {
        self.message.memory_size()
    }

    /// The message to store for this job: its state and id in properties.
    pub fn stored_message(&self, store_id: u64) -> Message {
        let mut m = (*self.message).clone();
        m.properties
            .retain(|(k, _)| !matches!(k.as_str(), DUE | LEFT | JOB_ID));
        m.properties
            .push((ByteStr::from(DUE), PropValue::Long(self.due)));
        m.properties
            .push((ByteStr::from(LEFT), PropValue::Int(self.left)));
        m.properties.push((
            ByteStr::from(JOB_ID),
            PropValue::String(ByteStr::from(&*self.id)),
        ));
        m.store_id = store_id;
        m
    }

    /// A job read back from the journal; `None` when the record is not one.
    pub fn from_stored(m: Arc<Message>, store_id: u64, seq: u64) -> Option<Job> {
        let due = match m.property(DUE)? {
            PropValue::Long(v) => *v,
            _ => return None,
        };
        let left = match m.property(LEFT)? {
            PropValue::Int(v) => *v,
            _ => return None,
        };
        let spec = parse_spec(&m).ok().flatten()?;
        let id = match m.property(JOB_ID) {
            Some(PropValue::String(s)) => Arc::from(s.as_str()),
            _ => Arc::from(format!("{}:{}", m.id.producer, m.id.seq)),
        };
        let mut message = (*m).clone();
        message
            .properties
            .retain(|(k, _)| k.as_str() != DUE && k.as_str() != LEFT && k.as_str() != JOB_ID);
        Some(Job {
            due,
            seq,
            id,
            period: spec.period,
            left,
            repeats: spec.repeat != 0,
            message: Arc::new(message),
            store_id,
        })
    }

    /// The copy a firing sends, at `now`: no scheduling properties, the job
    /// id, its own message id when the job repeats, and a time to live that
    /// counts from now (as ActiveMQ moves the expiration).
    pub fn copy(&self, now: i64, new_id: impl FnOnce() -> MessageId) -> Message {
        let mut m = (*self.message).clone();
        m.properties.retain(|(k, _)| {
            !matches!(
                k.as_str(),
                DELAY | PERIOD | REPEAT | CRON | DUE | LEFT | JOB_ID
            )
        });
        m.properties.push((
            ByteStr::from(JOB_ID),
            PropValue::String(ByteStr::from(&*self.id)),
        ));
        if self.repeats {
            m.id = new_id();
        }
        if m.timestamp > 0 && m.expiration > 0 {
            let ttl = m.expiration.saturating_sub(m.timestamp);
            let expiration = now.saturating_add(ttl);
            if expiration > m.expiration {
                m.expiration = expiration;
                m.timestamp = now;
            }
        }
        m.store_id = 0;
        m
    }
}

impl PartialEq for Job {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Job {}
impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Job {
    /// Reversed: the heap's top is the job due first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// The jobs waiting, bounded in bytes (ActiveMQ's jobSchedulerUsage).
pub struct Jobs {
    inner: Mutex<Inner>,
    limit: usize,
    /// Woken when a job is added (it may be due before the one waited for).
    pub added: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    heap: BinaryHeap<Job>,
    bytes: usize,
    seq: u64,
}

impl Jobs {
    pub fn new(limit: usize) -> Self {
        Jobs {
            inner: Mutex::new(Inner::default()),
            limit,
            added: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A number for a new job (ordering, job ids).
    pub fn next_seq(&self) -> u64 {
        let mut i = self.lock();
        i.seq += 1;
        i.seq
    }

    /// Whether a message of `bytes` more fits.
    pub fn has_room(&self, bytes: usize) -> Result<(), String> {
        let i = self.lock();
        if i.bytes + bytes > self.limit {
            return Err(format!(
                "Job Scheduler Store is Full ({} of {} bytes used): the scheduled message is refused",
                i.bytes, self.limit
            ));
        }
        Ok(())
    }

    /// Adds a job (room was checked; a job coming back after a firing or
    /// from the journal is always taken).
    pub fn add(&self, job: Job) {
        {
            let mut i = self.lock();
            i.bytes += job.bytes();
            i.seq = i.seq.max(job.seq);
            i.heap.push(job);
        }
        self.added.notify_one();
    }

    /// The jobs due at `now` (at most `max`), taken out; and when the next
    /// one is due.
    pub fn take_due(&self, now: i64, max: usize) -> (Vec<Job>, Option<i64>) {
        let mut i = self.lock();
        let mut due = Vec::new();
        while due.len() < max && i.heap.peek().is_some_and(|j| j.due <= now) {
            let job = i.heap.pop().expect("peeked");
            i.bytes -= job.bytes();
            due.push(job);
        }
        let next = i.heap.peek().map(|j| j.due);
        (due, next)
    }

    pub fn len(&self) -> usize {
        self.lock().heap.len()
    }

    /// Every job waiting, due first.
    pub fn snapshot(&self) -> Vec<Job> {
        let mut all = self.lock().heap.clone().into_vec();
        all.sort_by(|a, b| b.cmp(a));
        all
    }

    /// Takes out the jobs `remove` says yes to.
    pub fn remove_where(&self, mut remove: impl FnMut(&Job) -> bool) -> Vec<Job> {
        let mut i = self.lock();
        let mut gone = Vec::new();
        let mut kept = Vec::with_capacity(i.heap.len());
        for job in std::mem::take(&mut i.heap).into_vec() {
            if remove(&job) {
                gone.push(job);
            } else {
                kept.push(job);
            }
        }
        i.heap = BinaryHeap::from(kept);
        for job in &gone {
            i.bytes -= job.bytes();
        }
        gone
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Broker {
    /// The scheduling a message asks for, when scheduled delivery is on.
    pub(crate) fn scheduling(&self, m: &Message) -> Result<Option<Spec>, StoreError> {
        if !self.config.scheduler_support {
            return Ok(None);
        }
        spec(m).map_err(StoreError::Scheduler)
    }

    /// A job for a message, and its journal record when it is persistent
    /// (not written yet).
    pub(crate) fn new_job(
        &self,
        mut message: Message,
        spec: Spec,
    ) -> Result<(Job, Option<Op>), StoreError> {
        // It waits: it must not keep the buffer it came in alive.
        message.compact();
        self.jobs
            .has_room(message.memory_size())
            .map_err(StoreError::Scheduler)?;
        let seq = self.jobs.next_seq();
        let mut job = Job {
            due: first_due(now_millis(), &spec),
            seq,
            id: Arc::from(format!("{}:{seq}", message.id.producer)),
            period: spec.period,
            left: spec.repeat,
            repeats: spec.repeat != 0,
            message: Arc::new(message),
            store_id: 0,
        };
        let op = match &self.store {
            Some(store)
                if job.message.persistent && !job.message.destination.kind.is_temporary() =>
            {
                job.store_id = store.next_id();
                Some(job_record(&job))
            }
            _ => None,
        };
        Ok((job, op))
    }

    /// Whether a message is for the scheduler's management destination
    /// (only with scheduled delivery on, as ActiveMQ's SchedulerBroker).
    pub(crate) fn is_scheduler_management(&self, m: &Message) -> bool {
        self.config.scheduler_support && is_management(&m.destination)
    }

    /// Runs a management message's `AMQ_SCHEDULER_ACTION`: BROWSE sends a
    /// copy of each job (non-persistent, with `scheduledJobId`) to its
    /// reply-to; REMOVE takes out the job named by `scheduledJobId`;
    /// REMOVEALL every job; BROWSE and REMOVEALL keep to the jobs due
    /// between `ACTION_START_TIME` and `ACTION_END_TIME` when both are set.
    /// The message itself goes nowhere.
    pub(crate) async fn manage_jobs(&self, m: &Message) {
        let text = |name: &str| m.property(name).map(|v| v.to_string());
        let time = |name: &str| m.property(name).and_then(|v| as_long(name, v).ok());
        let window = match (time(ACTION_START_TIME), time(ACTION_END_TIME)) {
            (Some(start), Some(end)) => Some((start, end)),
            _ => None,
        };
        let in_window =
            |job: &Job| window.is_none_or(|(start, end)| job.due >= start && job.due <= end);
        match text(ACTION).as_deref() {
            Some("BROWSE") => {
                let Some(reply_to) = m.extras().reply_to.clone() else {
                    return;
                };
                let Ok(target) = self.resolve(&reply_to) else {
                    warn!(%reply_to, "scheduler browse: the reply-to destination is gone");
                    return;
                };
                for job in self.jobs.snapshot().into_iter().filter(|j| in_window(j)) {
                    let mut copy = (*job.message).clone();
                    copy.persistent = false;
                    copy.id = MessageId {
                        producer: self.scheduler_producer.clone(),
                        seq: self.next_id(),
                    };
                    let original = std::mem::replace(&mut copy.destination, reply_to.clone());
                    let extras = copy.extras_mut();
                    extras.original_destination = Some(original);
                    extras.jms_type = Some(ByteStr::from("Advisory"));
                    copy.properties.retain(|(k, _)| k.as_str() != JOB_ID);
                    copy.properties.push((
                        ByteStr::from(JOB_ID),
                        PropValue::String(ByteStr::from(&*job.id)),
                    ));
                    copy.store_id = 0;
                    target.send(Arc::new(copy));
                }
            }
            Some("REMOVE") => {
                let Some(id) = text(JOB_ID) else {
                    return;
                };
                let gone = self.jobs.remove_where(|j| *j.id == *id);
                self.forget_jobs(gone);
            }
            Some("REMOVEALL") => {
                let gone = self.jobs.remove_where(|j| in_window(j));
                self.forget_jobs(gone);
            }
            other => warn!(action = ?other, "scheduler management: unknown {ACTION}"),
        }
    }

    /// Removes taken-out jobs' records.
    fn forget_jobs(&self, gone: Vec<Job>) {
        let ops: Vec<Op> = gone
            .iter()
            .filter(|j| j.store_id != 0)
            .map(|j| Op::Remove { id: j.store_id })
            .collect();
        if let (Some(store), false) = (&self.store, ops.is_empty()) {
            store.submit(ops);
        }
    }

    /// Takes back the jobs the journal holds (at start-up).
    pub(crate) fn restore_jobs(&self, ids: &[u64]) {
        let Some(store) = &self.store else {
            return;
        };
        if ids.is_empty() {
            return;
        }
        if !self.config.scheduler_support {
            warn!(
                jobs = ids.len(),
                "the journal holds scheduled messages: they are sent as scheduled, though scheduler_support is off"
            );
        }
        for (id, back) in ids.iter().zip(store.read_messages(ids)) {
            match back {
                ReadBack::Message(m) => match Job::from_stored(m, *id, self.jobs.next_seq()) {
                    Some(job) => self.jobs.add(job),
                    None => warn!(
                        id,
                        "a stored scheduled message cannot be read as a job; left out"
                    ),
                },
                _ => warn!(id, "a stored scheduled message cannot be read; left out"),
            }
        }
    }

    /// Sends the jobs as they come due, until `stop`.
    pub async fn run_scheduler(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if stop.is_cancelled() {
                return;
            }
            let now = now_millis();
            let (due, next) = self.jobs.take_due(now, 256);
            if !due.is_empty() {
                self.fire(due, now).await;
                continue;
            }
            let wait = next.map_or(Duration::from_secs(3600), |t| {
                Duration::from_millis((t - now).clamp(1, 3_600_000) as u64)
            });
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.jobs.added.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sends a copy for each job, then records what is left of them. A
    /// copy the store could not take is tried again a second later (its
    /// job unchanged); one whose destination is gone (a deleted temporary
    /// queue) is dropped.
    async fn fire(&self, due: Vec<Job>, now: i64) {
        let sends = due.iter().map(|job| {
            let copy = job.copy(now, || MessageId {
                producer: self.scheduler_producer.clone(),
                seq: self.next_id(),
            });
            async move {
                let target = match self.resolve(&copy.destination) {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(job = %job.id, error = %e, "a scheduled message's destination is gone; dropped");
                        return Fired::Sent(Vec::new());
                    }
                };
                match self.send(&target, copy).await {
                    Ok(full) => Fired::Sent(full),
                    Err(e) => {
                        warn!(job = %job.id, error = %e, "a scheduled message could not be sent; trying again");
                        Fired::Retry
                    }
                }
            }
        });
        let fired = futures_util::future::join_all(sends).await;
        let mut removed = Vec::new();
        let mut rewrite = Vec::new();
        let mut again = Vec::new();
        let mut full = Vec::new();
        for (mut job, fired) in due.into_iter().zip(fired) {
            match fired {
                Fired::Retry => {
                    job.due = now.saturating_add(RETRY_MS);
                    again.push(job);
                    continue;
                }
                Fired::Sent(f) => full.extend(f),
            }
            if job.left == 0 {
                if job.store_id != 0 {
                    removed.push(Op::Remove { id: job.store_id });
                }
                continue;
            }
            if job.left > 0 {
                job.left -= 1;
            }
            // As ActiveMQ: the next firing is a period after this one ran.
            job.due = now.saturating_add(job.period);
            match &self.store {
                Some(store) if job.store_id != 0 => {
                    // Its state now, in a record of its own; the old one
                    // goes in the same write.
                    let mut next = job.clone();
                    next.store_id = store.next_id();
                    let ops = vec![Op::Remove { id: job.store_id }, job_record(&next)];
                    rewrite.push((job, next, store.start_write(ops)));
                }
                _ => again.push(job),
            }
        }
        if let Some(store) = &self.store {
            // Removals are retried by the store until written.
            store.submit(removed);
        }
        for (job, next, written) in rewrite {
            match written.await {
                Ok(()) => again.push(next),
                Err(e) => {
                    // The old record stays: a restart fires it as it was.
                    warn!(job = %job.id, error = %e, "a repeating scheduled message's record could not be updated");
                    again.push(job);
                }
            }
        }
        for job in again {
            self.jobs.add(job);
        }
        // Producer flow control for the scheduler too: a destination over
        // its limit holds it back (for a while; other jobs are due too).
        for queue in full {
            let _ = tokio::time::timeout(Duration::from_secs(1), queue.wait_for_space()).await;
        }
        // Copies that needed no waiting must not keep a worker to themselves.
        tokio::task::yield_now().await;
    }

    /// How many scheduled messages wait.
    pub fn scheduled(&self) -> usize {
        self.jobs.len()
    }
}

/// What became of a job's copy.
enum Fired {
    /// Sent; these queues are over their memory limit.
    Sent(Vec<Arc<crate::broker::queue::Queue>>),
    /// The store did not take it: the job tries again.
    Retry,
}

/// How long a job whose copy failed waits before it tries again.
const RETRY_MS: i64 = 1000;

/// A job's journal record.
fn job_record(job: &Job) -> Op {
    Op::Add {
        id: job.store_id,
        destination: jobs_destination(),
        subs: Vec::new(),
        message: Arc::new(job.stored_message(job.store_id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::{BodyKind, MessageId};
    use bytes::Bytes;

    fn msg(props: &[(&str, PropValue)]) -> Message {
        let mut m = Message::new(
            MessageId {
                producer: Arc::from("ID:p-1:1:1:1"),
                seq: 7,
            },
            Destination {
                kind: DestinationKind::Queue,
                name: Arc::from("q"),
            },
            BodyKind::Text,
            Bytes::from_static(b"hi"),
        );
        for (k, v) in props {
            m.properties.push((ByteStr::from(*k), v.clone()));
        }
        m
    }

    #[test]
    fn the_properties_say_what_to_schedule() {
        assert_eq!(spec(&msg(&[])).unwrap(), None);
        let s = spec(&msg(&[(DELAY, PropValue::Long(500))]))
            .unwrap()
            .unwrap();
        assert_eq!((s.delay, s.period, s.repeat), (500, 0, 0));
        assert_eq!(first_due(1000, &s), 1500);
        // STOMP headers are strings.
        let s = spec(&msg(&[
            (PERIOD, PropValue::String(ByteStr::from("200"))),
            (REPEAT, PropValue::String(ByteStr::from("3"))),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((s.delay, s.period, s.repeat), (0, 200, 3));
        assert_eq!(first_due(1000, &s), 1200, "no delay: one period");
        // A job's copy sent again goes at once (ActiveMQ: a job id is set).
        let again = msg(&[
            (DELAY, PropValue::Long(500)),
            (JOB_ID, PropValue::String(ByteStr::from("ID:x:1"))),
        ]);
        assert_eq!(spec(&again).unwrap(), None);
        assert!(parse_spec(&again).unwrap().is_some());
        assert!(is_management(&Destination {
            kind: DestinationKind::Topic,
            name: Arc::from("activemq.scheduler.management"),
        }));
        for bad in [
            msg(&[(DELAY, PropValue::String(ByteStr::from("soon")))]),
            msg(&[(DELAY, PropValue::Double(1.5))]),
            msg(&[(PERIOD, PropValue::Long(-1))]),
            msg(&[(PERIOD, PropValue::Long(10)), (REPEAT, PropValue::Int(-2))]),
            msg(&[(DELAY, PropValue::Long(10)), (REPEAT, PropValue::Int(-1))]),
            msg(&[(CRON, PropValue::String(ByteStr::from("* * * * *")))]),
            msg(&[
                (PERIOD, PropValue::Long(10)),
                (REPEAT, PropValue::Int(1001)),
            ]),
        ] {
            assert!(spec(&bad).is_err(), "{:?}", bad.properties);
        }
    }

    #[test]
    fn jobs_come_out_in_due_order_within_their_byte_limit() {
        let jobs = Jobs::new(1000);
        let job = |due, seq| Job {
            due,
            seq,
            id: Arc::from("j"),
            period: 0,
            left: 0,
            repeats: false,
            message: Arc::new(msg(&[])),
            store_id: 0,
        };
        let size = job(0, 0).bytes();
        jobs.add(job(300, 1));
        jobs.add(job(100, 2));
        jobs.add(job(100, 3));
        jobs.add(job(200, 4));
        let (due, next) = jobs.take_due(150, 10);
        assert_eq!(due.iter().map(|j| j.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(next, Some(200));
        let (due, next) = jobs.take_due(1000, 1);
        assert_eq!((due[0].seq, next), (4, Some(300)));
        assert_eq!(jobs.len(), 1);
        assert!(jobs.has_room(1000 - size).is_ok());
        assert!(jobs.has_room(1001 - size).is_err());
        assert_eq!(jobs.next_seq(), 5);
    }

    #[test]
    fn a_stored_job_comes_back_and_copies_lose_the_scheduling() {
        let m = msg(&[
            (PERIOD, PropValue::Long(100)),
            (REPEAT, PropValue::Int(2)),
            ("colour", PropValue::String(ByteStr::from("red"))),
        ]);
        let job = Job {
            due: 12345,
            seq: 9,
            id: Arc::from("ID:p-1:1:1:1:9"),
            period: 100,
            left: 1,
            repeats: true,
            message: Arc::new(m),
            store_id: 0,
        };
        let stored = job.stored_message(77);
        let back = Job::from_stored(Arc::new(stored), 77, 3).unwrap();
        assert_eq!(
            (back.due, back.left, back.period, back.store_id),
            (12345, 1, 100, 77)
        );
        assert!(back.repeats);
        assert_eq!(&*back.id, "ID:p-1:1:1:1:9");
        let copy = back.copy(50_000, || MessageId {
            producer: Arc::from("ID:sched"),
            seq: 1,
        });
        assert_eq!(&*copy.id.producer, "ID:sched");
        let names: Vec<&str> = copy.properties.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec!["colour", JOB_ID]);
        assert_eq!(copy.store_id, 0);
        // Not a job.
        assert!(Job::from_stored(Arc::new(msg(&[])), 1, 1).is_none());
    }

    #[test]
    fn a_copy_keeps_its_time_to_live_from_the_firing() {
        let mut m = msg(&[(DELAY, PropValue::Long(5000))]);
        m.timestamp = 1000;
        m.expiration = 3000;
        let job = Job {
            due: 6000,
            seq: 1,
            id: Arc::from("j"),
            period: 0,
            left: 0,
            repeats: false,
            message: Arc::new(m),
            store_id: 0,
        };
        let copy = job.copy(6000, || unreachable!("no repeats: the id stays"));
        assert_eq!((copy.timestamp, copy.expiration), (6000, 8000));
        assert_eq!(copy.id.seq, 7);
        // An expiration at the end of time stays there.
        let mut m = (*job.message).clone();
        m.expiration = i64::MAX;
        let job = Job {
            message: Arc::new(m),
            ..job
        };
        assert_eq!(job.copy(6000, || unreachable!()).expiration, i64::MAX);
    }
}
