//! A queue: each message to exactly one consumer.
//!
//! State sits behind one mutex per queue (never a global one). Dispatch runs
//! inline in whichever call made work possible (a send, an ack returning
//! credit, a consumer arriving): it hands the oldest pending message to the
//! next consumer in round-robin order that has prefetch credit. Handing out
//! never blocks: the consumer's sink only queues the delivery for its
//! connection's writer, and credit bounds how many can be queued.
//!
//! A topic subscription is also a `Queue` (private to the subscription, with
//! one consumer), so acknowledgement, redelivery and flow control work the
//! same way for both kinds of destination.
//!
//! Lock order: queue state → a sink's outbox. Nothing is called on another
//! destination while the lock is held (dead letters are routed after).

use crate::broker::destination::Destination;
use crate::broker::message::{now_millis, Message};
use crate::broker::subscription::{ConsumerSlot, ConsumerSpec, Delivery, Entry, InFlight};
use crate::broker::Broker;
use crate::store::{Op, ReadBack, Store};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use thiserror::Error;
use tokio::sync::Notify;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AckError {
    #[error("no such consumer")]
    UnknownConsumer,
    #[error("the message is not awaiting acknowledgement")]
    NotInFlight,
}

/// What an acknowledgement does with the messages it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckAction {
    /// Consumed: gone from the queue.
    Consume,
    /// Poison (STOMP NACK): moved to the dead-letter queue.
    Poison,
    /// Expired in the consumer's hands (the JMS client's EXPIRED ack): moved
    /// to the dead-letter queue as an expired message.
    Expire,
    /// Acknowledged inside a transaction: settled at commit or rollback.
    Hold,
}

/// Why a message is dead-lettered (becomes `dlqDeliveryFailureCause`).
#[derive(Clone, Debug)]
pub enum DeadCause {
    /// The consumer gave up on it; the cause it gave, if any.
    Poison(Option<Arc<str>>),
    Expired,
}

/// A persistent message kept only in the journal (paged out), in arrival
/// order behind the pending ones.
struct Paged {
    order: u64,
    store_id: u64,
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<Entry>,
    /// Persistent messages not in memory, oldest first: every persistent
    /// message arriving while there are some joins them (first in, first
    /// out); they are read back as pending ones are dispatched.
    paged: VecDeque<Paged>,
    consumers: Vec<ConsumerSlot>,
    /// Where round-robin continues.
    next_consumer: usize,
    /// With consumers of several priorities: the consumer each priority
    /// last handed a message to (round robin within each).
    last_served: Vec<(i8, u64)>,
    next_order: u64,
    /// Message groups (JMSXGroupID) and the consumer each belongs to.
    groups: std::collections::HashMap<crate::bstr::ByteStr, u64>,
    /// How many pending messages, from the front, no consumer's selector
    /// takes: dispatching starts after them (each dispatch would otherwise
    /// evaluate selectors over the whole unselected backlog again). Valid
    /// while the consumers stay the same; shrinks when a message is put
    /// back among them.
    unselected: usize,
    /// When the unselected front was last looked at for expired messages.
    unselected_checked: Option<std::time::Instant>,
}

/// Counters a console or test can read without taking the lock.
#[derive(Default, Debug)]
pub struct QueueStats {
    pub enqueued: AtomicU64,
    pub dequeued: AtomicU64,
    pub dispatched: AtomicU64,
    pub expired: AtomicU64,
}

/// How a queue takes broker-wide memory: a queue holding anything counts
/// at least this much there, and at most two of these more than it holds.
const USAGE_CHUNK: usize = 8 * 1024;

/// How long a producer waits when only the broker-wide limit holds it (its
/// destination has room): then it goes on. A connection that both sends and
/// acknowledges (its acks unread while it waits) cannot be stuck for good
/// when what holds the memory is its own unacknowledged messages.
const BROKER_WIDE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Memory shared by every destination: ActiveMQ's systemUsage memoryUsage,
/// the parent of each destination's limit. When it is full, producers of
/// every destination wait (as ActiveMQ's `Usage.isFull` asks the parent),
/// and persistent messages past half of it stay in the journal only.
pub struct MemoryUsage {
    /// Signed: one queue's give-back may land before another's take is
    /// counted; a moment below zero is harmless, a wrap would not be.
    used: AtomicIsize,
    /// The highest `used` since [`MemoryUsage::take_peak`] last read it.
    peak: AtomicIsize,
    limit: usize,
    space: Notify,
}

impl MemoryUsage {
    pub fn new(limit: usize) -> Self {
        MemoryUsage {
            used: AtomicIsize::new(0),
            peak: AtomicIsize::new(0),
            limit,
            space: Notify::new(),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed).max(0) as usize
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn is_full(&self) -> bool {
        self.used() >= self.limit
    }

    /// The highest use since the last call (a backlog that came and went
    /// between two looks shows here), and starts again from now.
    pub fn take_peak(&self) -> usize {
        let now = self.used.load(Ordering::Relaxed);
        self.peak.swap(now, Ordering::Relaxed).max(now).max(0) as usize
    }

    fn add(&self, n: usize) {
        let before = self.used.fetch_add(n as isize, Ordering::Relaxed);
        self.peak.fetch_max(before + n as isize, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        let before = self.used.fetch_sub(n as isize, Ordering::Relaxed);
        let limit = self.limit as isize;
        if before >= limit && before - (n as isize) < limit {
            self.space.notify_waiters();
        }
    }
}

pub struct Queue {
    destination: Destination,
    state: Mutex<QueueState>,
    /// Bytes held by messages not yet consumed (pending or in flight).
    memory: AtomicUsize,
    memory_limit: usize,
    /// The broker-wide memory this queue's messages count in too, by
    /// [`USAGE_CHUNK`]s: what this queue has taken of it.
    usage: Option<Arc<MemoryUsage>>,
    reserved: AtomicUsize,
    /// Some messages may be paged out (set under the lock when one is;
    /// cleared under it when none are): spares a persistent send's
    /// [`Queue::kick`] the lock.
    paging: AtomicBool,
    space: Notify,
    deleted: AtomicBool,
    /// Poisoned messages go to the dead-letter queue (not for non-durable
    /// topic subscriptions, where ActiveMQ just drops them).
    dead_letters: bool,
    broker: Weak<Broker>,
    /// Where consumption of persistent messages is recorded; with the id of
    /// the durable subscription this queue is for, if it is one.
    store: Option<Arc<Store>>,
    store_sub: Option<u64>,
    pub stats: QueueStats,
}

/// Where a queue's persistent messages are recorded.
pub struct Persistence {
    pub store: Arc<Store>,
    /// The durable subscription this queue belongs to (its acks are SubAcks).
    pub sub: Option<u64>,
}

impl Queue {
    pub fn new(
        destination: Destination,
        memory_limit: usize,
        dead_letters: bool,
        broker: Weak<Broker>,
        persistence: Option<Persistence>,
    ) -> Self {
        let (store, store_sub) = match persistence {
            Some(p) => (Some(p.store), p.sub),
            None => (None, None),
        };
        let usage = broker.upgrade().map(|b| b.memory_usage().clone());
        Queue {
            destination,
            state: Mutex::new(QueueState::default()),
            memory: AtomicUsize::new(0),
            memory_limit,
            usage,
            reserved: AtomicUsize::new(0),
            paging: AtomicBool::new(false),
            space: Notify::new(),
            deleted: AtomicBool::new(false),
            dead_letters,
            broker,
            store,
            store_sub,
            stats: QueueStats::default(),
        }
    }

    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding the lock leaves consistent-enough state for
        // the other connections to go on; do not poison the whole queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a message and dispatches. Returns `true` when the queue is over
    /// its memory limit: the producer should wait ([`Queue::wait_for_space`])
    /// before sending more.
    pub fn send(&self, message: Arc<Message>) -> bool {
        self.send_dispatched(message).0
    }

    /// As [`Queue::send`]; also says whether a consumer has the message now
    /// (nothing is left pending after dispatching it).
    pub fn send_dispatched(&self, mut message: Arc<Message>) -> (bool, bool) {
        if self.compacts(&message) {
            if let Some(m) = Arc::get_mut(&mut message) {
                m.compact();
            }
        }
        let size = message.memory_size();
        let dead = {
            let mut st = self.lock();
            if self.is_deleted() {
                // Raced with the queue's deletion: it goes with the queue
                // (its record too, or a restart would bring it back).
                drop(st);
                if let (Some(store), true) = (&self.store, message.store_id != 0) {
                    store.consumed(vec![self.removal_of(message.store_id)]);
                }
                return (false, true);
            }
            self.stats.enqueued.fetch_add(1, Ordering::Relaxed);
            let order = st.next_order;
            st.next_order += 1;
            // A persistent message past half the memory limit stays in the
            // journal only (ActiveMQ's store cursor): its producer does not
            // wait for consumers, only the store limit bounds the backlog.
            if self.pages(&message)
                && (!st.paged.is_empty()
                    || self.memory.load(Ordering::Relaxed) + size > self.memory_limit / 2
                    || self
                        .usage
                        .as_ref()
                        .is_some_and(|u| u.used() + size > u.limit() / 2))
            {
                st.paged.push_back(Paged {
                    order,
                    store_id: message.store_id,
                });
                self.paging.store(true, Ordering::Relaxed);
                drop(message);
                let dead = self.dispatch(&mut st);
                drop(st);
                self.finish(dead, Vec::new());
                return (self.over_limit(), false);
            }
            self.hold(&mut st, order, message);
            let dead = self.dispatch(&mut st);
            (dead, st.pending.is_empty())
        };
        let (dead, dispatched) = dead;
        self.finish(dead, Vec::new());
        (self.over_limit(), dispatched)
    }

    /// Whether a message sent now should get buffers of its own (see
    /// [`Message::compact`]): the queue has a backlog (past a sixteenth of
    /// its limit), where it would wait in memory (not paged out), so that
    /// what the backlog keeps is what it counts. A queue that keeps up
    /// pays nothing.
    pub fn compacts(&self, m: &Message) -> bool {
        let used = self.memory.load(Ordering::Relaxed);
        used > self.memory_limit / 16 && !(self.pages(m) && used > self.memory_limit / 2)
    }

    /// Keeps a message in memory, pending, in its place.
    fn hold(&self, st: &mut QueueState, order: u64, message: Arc<Message>) {
        let size = message.memory_size();
        self.memory.fetch_add(size, Ordering::Relaxed);
        self.reserve();
        let at = insert_pending(
            &mut st.pending,
            Entry {
                order,
                message,
                redelivery_count: 0,
            },
        );
        st.unselected = st.unselected.min(at);
    }

    /// Whether a message may be paged out: a persistent one, of a queue or
    /// of a durable subscription, with a store (its record is in the
    /// journal before it gets here, or soon after for a queue's send).
    fn pages(&self, m: &Message) -> bool {
        m.store_id != 0 && self.store.is_some()
    }

    /// Reads paged-out messages back while few are pending. Stops at one
    /// whose record is not written yet (its send is still being stored):
    /// [`Queue::kick`] comes once it is.
    fn page_in(&self, st: &mut QueueState) {
        let Some(store) = &self.store else {
            return;
        };
        let budget = self.memory_limit / 2;
        while st.pending.len() < PAGE_SIZE && !st.paged.is_empty() {
            // In chunks, so that large messages past the budget are not read
            // for nothing; over the budget (in-flight messages count, and
            // their acks may not be released yet) one at a time while none
            // is pending, and only for a consumer that has nothing in flight:
            // every consumer still gets its next message, and what consumers
            // hold past the budget is at most one message each (a consumer
            // with a large prefetch that does not ack cannot pull the backlog
            // into memory).
            let over = self.memory.load(Ordering::Relaxed) >= budget;
            let someone_idle = |st: &QueueState| {
                st.consumers.is_empty()
                    || st
                        .consumers
                        .iter()
                        .any(|c| c.has_credit() && c.in_flight.is_empty())
            };
            if over && (!st.pending.is_empty() || !someone_idle(st)) {
                return;
            }
            let chunk = if over { 1 } else { PAGE_CHUNK };
            let n = st.paged.len().min(PAGE_SIZE - st.pending.len()).min(chunk);
            let ids: Vec<u64> = st.paged.iter().take(n).map(|p| p.store_id).collect();
            let read = store.read_messages(&ids);
            let mut taken = 0;
            for r in read {
                match r {
                    ReadBack::Message(message) => {
                        let order = st.paged[taken].order;
                        self.hold(st, order, message);
                        taken += 1;
                    }
                    ReadBack::Unreadable => taken += 1, // logged; nothing to deliver
                    // A topic message's record is written before it is
                    // published: not in the journal now means no longer
                    // owed (it was stored for the subscriptions attached
                    // then, and they are done with it).
                    ReadBack::NotWritten if self.store_sub.is_some() => {
                        tracing::debug!(subscription = %self.destination, store_id = st.paged[taken].store_id, "a paged topic message is no longer in the journal; skipped");
                        taken += 1;
                    }
                    ReadBack::NotWritten => {
                        tracing::debug!(queue = %self.destination, store_id = st.paged[taken].store_id, "page-in waits for a record to be written");
                        break;
                    }
                }
                if self.memory.load(Ordering::Relaxed) >= budget {
                    break;
                }
            }
            st.paged.drain(..taken);
            if taken < n {
                return;
            }
        }
    }

    /// Takes recovered messages that are in the journal only, in this order
    /// (behind any already here).
    pub fn restore_paged(&self, ids: Vec<u64>) {
        self.stats
            .enqueued
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        let mut st = self.lock();
        self.paging.store(true, Ordering::Relaxed);
        st.paged.reserve(ids.len());
        for store_id in ids {
            let order = st.next_order;
            st.next_order += 1;
            st.paged.push_back(Paged { order, store_id });
        }
    }

    /// Dispatches again (a paged-out message's record is now written).
    pub fn kick(&self) {
        if !self.paging.load(Ordering::Relaxed) {
            return;
        }
        let dead = {
            let mut st = self.lock();
            if st.paged.is_empty() {
                self.paging.store(false, Ordering::Relaxed);
                return;
            }
            self.dispatch(&mut st)
        };
        self.finish(dead, Vec::new());
    }

    /// Whether its producers should wait: the queue is at its memory limit,
    /// or the broker at its own.
    pub fn over_limit(&self) -> bool {
        self.memory.load(Ordering::Relaxed) >= self.memory_limit
            || self.usage.as_ref().is_some_and(|u| u.is_full())
    }

    /// Waits until the queue, and the broker, are below their memory limits
    /// (producer flow control). When only the broker's limit holds it, for
    /// [`BROKER_WIDE_WAIT`] at most.
    pub async fn wait_for_space(&self) {
        let give_up = tokio::time::Instant::now() + BROKER_WIDE_WAIT;
        loop {
            let mine = self.space.notified();
            let broker_wide = self.usage.as_ref().map(|u| u.space.notified());
            let own_full = self.memory.load(Ordering::Relaxed) >= self.memory_limit;
            if !self.over_limit() || self.is_deleted() {
                return;
            }
            match broker_wide {
                Some(all) if !own_full => {
                    tokio::select! {
                        _ = mine => {}
                        _ = all => {}
                        _ = tokio::time::sleep_until(give_up) => return,
                    }
                }
                Some(all) => {
                    tokio::select! {
                        _ = mine => {}
                        _ = all => {}
                    }
                }
                None => mine.await,
            }
        }
    }

    pub fn memory_usage(&self) -> usize {
        self.memory.load(Ordering::Relaxed)
    }

    fn release(&self, size: usize) {
        if size == 0 {
            return;
        }
        let before = self.memory.fetch_sub(size, Ordering::Relaxed);
        if before >= self.memory_limit && before - size < self.memory_limit {
            self.space.notify_waiters();
        }
        self.unreserve();
    }

    /// Takes what the queue's messages need of the broker-wide memory, in
    /// chunks: the shared counter moves once per chunk, not per message.
    /// (Reads the queue's count afresh: callers may race, the last one
    /// leaves it right.)
    fn reserve(&self) {
        let Some(u) = &self.usage else {
            return;
        };
        let used = self.memory.load(Ordering::Relaxed);
        if used > self.reserved.load(Ordering::Relaxed) {
            let want = used.div_ceil(USAGE_CHUNK) * USAGE_CHUNK;
            let before = self.reserved.fetch_max(want, Ordering::Relaxed);
            if want > before {
                u.add(want - before);
            }
        }
    }

    /// Gives back what the queue's messages no longer need: all of it once
    /// it is empty; otherwise keeping a chunk to spare, so that a queue
    /// around a chunk boundary does not move the shared counter on every
    /// message.
    fn unreserve(&self) {
        let Some(u) = &self.usage else {
            return;
        };
        loop {
            let used = self.memory.load(Ordering::Relaxed);
            let reserved = self.reserved.load(Ordering::Relaxed);
            let want = if used == 0 {
                0
            } else {
                used.div_ceil(USAGE_CHUNK) * USAGE_CHUNK + USAGE_CHUNK
            };
            if reserved <= want || (used != 0 && reserved < want + USAGE_CHUNK) {
                return;
            }
            if self
                .reserved
                .compare_exchange(reserved, want, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                u.sub(reserved - want);
                return;
            }
        }
    }

    pub fn add_consumer(&self, spec: ConsumerSpec) {
        let _ = self.try_add_consumer(spec);
    }

    /// Adds a consumer, unless the queue was deleted (the spec comes back:
    /// the caller attaches it to the queue of that name made afresh).
    pub fn try_add_consumer(&self, spec: ConsumerSpec) -> Result<(), ConsumerSpec> {
        let dead = {
            let mut st = self.lock();
            if self.is_deleted() {
                return Err(spec);
            }
            // Highest priority first (ActiveMQ's consumer priority); after
            // the others of its priority, for round robin among them.
            let priority = spec.priority;
            let at = st
                .consumers
                .partition_point(|c| c.spec.priority >= priority);
            if at < st.consumers.len() && st.next_consumer >= at {
                st.next_consumer += 1;
            }
            st.consumers.insert(at, ConsumerSlot::new(spec));
            st.unselected = 0;
            self.dispatch(&mut st)
        };
        self.finish(dead, Vec::new());
        Ok(())
    }

    /// Removes a consumer. Its unacknowledged messages go back to the queue in
    /// their original order. Those with a sequence up to `delivered_upto` had
    /// reached the client and come back flagged redelivered; when
    /// `delivered_are_consumed` (auto-acknowledge) they count as consumed
    /// instead. Returns whether the consumer existed.
    pub fn remove_consumer(
        &self,
        id: u64,
        delivered_upto: u64,
        delivered_are_consumed: bool,
    ) -> bool {
        let mut forgotten = Vec::new();
        let (found, dead) = {
            let mut st = self.lock();
            let Some(pos) = st.consumers.iter().position(|c| c.spec.id == id) else {
                return false;
            };
            let slot = st.consumers.remove(pos);
            if st.next_consumer > pos {
                st.next_consumer -= 1;
            }
            // Its message groups go to whoever gets their next message.
            st.groups.retain(|_, owner| *owner != id);
            let mut freed = 0;
            let mut back = Vec::with_capacity(slot.in_flight.len());
            for f in slot.in_flight {
                let mut entry = f.entry;
                if f.seq <= delivered_upto {
                    if delivered_are_consumed && !f.held {
                        freed += entry.message.memory_size();
                        self.forget(&entry.message, &mut forgotten);
                        self.stats.dequeued.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    entry.redelivery_count += 1;
                }
                back.push(entry);
            }
            let first = requeue(&mut st.pending, back);
            st.unselected = st.unselected.min(first);
            // Released before dispatching, which may page messages in.
            self.release(freed);
            (true, self.dispatch(&mut st))
        };
        self.finish(dead, forgotten);
        found
    }

    /// Acknowledges the delivery `seq` of `consumer` (and every earlier one
    /// when `cumulative`). Returns the sequences it covered.
    pub fn ack(
        &self,
        consumer: u64,
        seq: u64,
        cumulative: bool,
        action: AckAction,
    ) -> Result<Vec<u64>, AckError> {
        self.ack_with(consumer, action, None, |slot| {
            slot.ack_range(seq, cumulative).ok_or(AckError::NotInFlight)
        })
    }

    /// Acknowledges every in-flight delivery of `consumer` with a sequence in
    /// `first..=last` (OpenWire acks name ranges). Returns the sequences covered.
    pub fn ack_between(
        &self,
        consumer: u64,
        first: u64,
        last: u64,
        action: AckAction,
    ) -> Result<Vec<u64>, AckError> {
        self.ack_with(consumer, action, None, |slot| {
            Ok(slot.seq_range(first, last))
        })
    }

    /// Poisons the deliveries `first..=last` of `consumer`, giving the cause
    /// the client reported (it becomes `dlqDeliveryFailureCause`).
    pub fn poison_between(
        &self,
        consumer: u64,
        first: u64,
        last: u64,
        cause: Option<Arc<str>>,
    ) -> Result<Vec<u64>, AckError> {
        self.ack_with(consumer, AckAction::Poison, cause, |slot| {
            Ok(slot.seq_range(first, last))
        })
    }

    fn ack_with(
        &self,
        consumer: u64,
        action: AckAction,
        cause: Option<Arc<str>>,
        range: impl FnOnce(&ConsumerSlot) -> Result<std::ops::Range<usize>, AckError>,
    ) -> Result<Vec<u64>, AckError> {
        let mut freed = 0;
        let mut dead_lettered = Vec::new();
        let mut forgotten = Vec::new();
        let dead_cause = match action {
            AckAction::Poison => Some(DeadCause::Poison(cause)),
            AckAction::Expire => Some(DeadCause::Expired),
            AckAction::Consume | AckAction::Hold => None,
        };
        let (covered, mut dead) = {
            let mut st = self.lock();
            let slot = st
                .consumers
                .iter_mut()
                .find(|c| c.spec.id == consumer)
                .ok_or(AckError::UnknownConsumer)?;
            let range = range(slot)?;
            let mut covered = Vec::with_capacity(range.len());
            match action {
                AckAction::Hold => {
                    for f in slot.in_flight.range_mut(range) {
                        covered.push(f.seq);
                        if !f.held {
                            f.held = true;
                            slot.credit_used -= 1;
                        }
                    }
                }
                AckAction::Consume | AckAction::Poison | AckAction::Expire => {
                    for f in slot.in_flight.drain(range) {
                        covered.push(f.seq);
                        if !f.held {
                            slot.credit_used -= 1;
                        }
                        freed += f.entry.message.memory_size();
                        if dead_cause.is_some() && self.dead_letters {
                            dead_lettered.push(f.entry.message);
                        } else {
                            self.forget(&f.entry.message, &mut forgotten);
                        }
                    }
                    self.stats
                        .dequeued
                        .fetch_add(covered.len() as u64, Ordering::Relaxed);
                }
            }
            self.release(freed);
            (covered, self.dispatch(&mut st))
        };
        if let Some(cause) = dead_cause {
            dead.extend(dead_lettered.into_iter().map(|m| (m, cause.clone())));
        }
        self.finish(dead, forgotten);
        Ok(covered)
    }

    /// Ends a transaction's hold on deliveries. On commit they are consumed.
    /// On rollback they stay with the consumer, unacknowledged again (as
    /// ActiveMQ does: the client may acknowledge them anew; they return to
    /// the queue only if the consumer closes). Unknown sequences are skipped:
    /// the consumer may have closed and returned them already.
    /// `journaled`: the caller already recorded the consumption (in its
    /// transaction's journal record).
    pub fn settle_held(&self, consumer: u64, seqs: &[u64], commit: bool, journaled: bool) {
        let mut freed = 0;
        let mut forgotten = Vec::new();
        let dead = {
            let mut st = self.lock();
            let Some(slot) = st.consumers.iter_mut().find(|c| c.spec.id == consumer) else {
                return;
            };
            for &seq in seqs {
                let Ok(pos) = slot.in_flight.binary_search_by_key(&seq, |f| f.seq) else {
                    continue;
                };
                if commit {
                    let f = slot.in_flight.remove(pos).expect("position just found");
                    if !f.held {
                        slot.credit_used -= 1;
                    }
                    freed += f.entry.message.memory_size();
                    if !journaled {
                        self.forget(&f.entry.message, &mut forgotten);
                    }
                    self.stats.dequeued.fetch_add(1, Ordering::Relaxed);
                } else {
                    let f = &mut slot.in_flight[pos];
                    if f.held {
                        f.held = false;
                        slot.credit_used += 1;
                    }
                }
            }
            self.release(freed);
            self.dispatch(&mut st)
        };
        self.finish(dead, forgotten);
    }

    /// The journal operations that consuming these held deliveries means
    /// (for a transaction's commit record).
    pub fn held_removals(&self, consumer: u64, seqs: &[u64]) -> Vec<Op> {
        let st = self.lock();
        let Some(slot) = st.consumers.iter().find(|c| c.spec.id == consumer) else {
            return Vec::new();
        };
        seqs.iter()
            .filter_map(|seq| {
                let pos = slot.in_flight.binary_search_by_key(seq, |f| f.seq).ok()?;
                self.removal(&slot.in_flight[pos].entry.message)
            })
            .collect()
    }

    /// Changes a consumer's prefetch (0 pauses it) and dispatches.
    pub fn set_prefetch(&self, consumer: u64, prefetch: u32) {
        let dead = {
            let mut st = self.lock();
            if let Some(slot) = st.consumers.iter_mut().find(|c| c.spec.id == consumer) {
                slot.spec.prefetch = prefetch.min(crate::broker::subscription::MAX_PREFETCH);
            }
            self.dispatch(&mut st)
        };
        self.finish(dead, Vec::new());
    }

    /// Lets a prefetch-0 consumer have one more message (OpenWire
    /// MessagePull). Returns true when a message was dispatched at once.
    pub fn pull(&self, consumer: u64) -> bool {
        let (dispatched, dead) = {
            let mut st = self.lock();
            let Some(slot) = st.consumers.iter_mut().find(|c| c.spec.id == consumer) else {
                return false;
            };
            slot.pull_credit += 1;
            let before = slot.next_seq;
            let dead = self.dispatch(&mut st);
            let after = st
                .consumers
                .iter()
                .find(|c| c.spec.id == consumer)
                .map_or(before, |c| c.next_seq);
            (after > before, dead)
        };
        self.finish(dead, Vec::new());
        dispatched
    }

    /// Withdraws unused pull credit. Returns true when there was some, that
    /// is, when the pull found no message (the caller then says so).
    pub fn cancel_pull(&self, consumer: u64) -> bool {
        let mut st = self.lock();
        match st.consumers.iter_mut().find(|c| c.spec.id == consumer) {
            Some(slot) if slot.pull_credit > 0 => {
                slot.pull_credit = 0;
                true
            }
            _ => false,
        }
    }

    /// The sequence of the first in-flight delivery to `consumer` whose
    /// message satisfies `pred` (acknowledgement by message id).
    pub fn find_in_flight(&self, consumer: u64, pred: impl Fn(&Message) -> bool) -> Option<u64> {
        let st = self.lock();
        let slot = st.consumers.iter().find(|c| c.spec.id == consumer)?;
        slot.in_flight
            .iter()
            .find(|f| pred(&f.entry.message))
            .map(|f| f.seq)
    }

    /// Takes back a pending message (its persistent send failed). Returns
    /// whether it was still waiting for a consumer.
    pub fn withdraw(&self, store_id: u64) -> bool {
        let removed = {
            let mut st = self.lock();
            if let Some(pos) = st.paged.iter().position(|p| p.store_id == store_id) {
                st.paged.remove(pos);
                return true;
            }
            match st
                .pending
                .iter()
                .position(|e| e.message.store_id == store_id)
            {
                Some(pos) => {
                    if pos < st.unselected {
                        st.unselected -= 1;
                    }
                    st.pending.remove(pos)
                }
                None => None,
            }
        };
        match removed {
            Some(e) => {
                self.release(e.message.memory_size());
                true
            }
            None => false,
        }
    }

    /// The queue's messages not yet acknowledged (a browser's view): those
    /// consumers have, oldest first, then those waiting for one, in memory
    /// after reading back a page of those paged out (like ActiveMQ, a
    /// browser sees a bounded page of a large backlog).
    pub fn browse(&self) -> Vec<Arc<Message>> {
        let mut st = self.lock();
        if !st.paged.is_empty() && st.pending.len() < PAGE_IN_BELOW {
            self.page_in(&mut st);
        }
        let mut delivered: Vec<&Entry> = st
            .consumers
            .iter()
            .flat_map(|c| c.in_flight.iter().map(|f| &f.entry))
            .collect();
        delivered.sort_by_key(|e| e.order);
        delivered
            .into_iter()
            .chain(st.pending.iter())
            .map(|e| e.message.clone())
            .collect()
    }

    /// Messages waiting for a consumer, in memory or paged out.
    pub fn pending_count(&self) -> usize {
        let st = self.lock();
        st.pending.len() + st.paged.len()
    }

    pub fn in_flight_count(&self) -> usize {
        self.lock()
            .consumers
            .iter()
            .map(|c| c.in_flight.len())
            .sum()
    }

    pub fn consumer_count(&self) -> usize {
        self.lock().consumers.len()
    }

    /// How clients name the consumers attached now.
    pub fn consumer_names(&self) -> Vec<crate::broker::message::ConsumerName> {
        self.lock()
            .consumers
            .iter()
            .map(|c| c.spec.name.clone())
            .collect()
    }

    /// Drops every pending message (used when a subscription's queue is destroyed).
    pub fn purge(&self) {
        let (freed, paged) = {
            let mut st = self.lock();
            let mut removals = Vec::new();
            let mut freed = 0;
            for e in st.pending.drain(..) {
                freed += e.message.memory_size();
                if e.message.store_id != 0 {
                    removals.push(self.removal_of(e.message.store_id));
                }
            }
            st.unselected = 0;
            removals.extend(st.paged.drain(..).map(|p| self.removal_of(p.store_id)));
            (freed, removals)
        };
        self.release(freed);
        if let (Some(store), false) = (&self.store, paged.is_empty()) {
            store.consumed(paged);
        }
    }

    /// Marks the queue deleted unless a consumer is attached (returned then).
    /// Under the queue's lock: a consumer is either refused afterwards
    /// ([`Queue::try_add_consumer`]) or seen here.
    pub fn mark_deleted_if_unused(&self) -> Option<crate::broker::message::ConsumerName> {
        let st = self.lock();
        if let Some(c) = st.consumers.first() {
            return Some(c.spec.name.clone());
        }
        self.deleted.store(true, Ordering::Relaxed);
        drop(st);
        self.space.notify_waiters();
        None
    }

    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Relaxed);
        self.space.notify_waiters();
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Relaxed)
    }

    /// Hands pending messages to consumers with credit, round-robin.
    /// Returns the expired messages it met, to be routed once the lock is released.
    fn dispatch(&self, st: &mut QueueState) -> Vec<(Arc<Message>, DeadCause)> {
        let mut dead = Vec::new();
        loop {
            if st.consumers.is_empty() {
                return dead;
            }
            let paged_before = st.paged.len();
            if paged_before > 0 && st.pending.len() < PAGE_IN_BELOW {
                self.page_in(st);
            }
            self.dispatch_pending(st, &mut dead);
            // Consumers still have room and more was read back: go on.
            let more = st.pending.is_empty()
                && !st.paged.is_empty()
                && st.paged.len() < paged_before
                && st.consumers.iter().any(|c| c.has_credit() && !c.dead);
            if !more {
                return dead;
            }
        }
    }

    /// Takes out the expired messages waiting in memory, whether or not
    /// anyone consumes (ActiveMQ's periodic expiry: a queue nobody reads
    /// does not fill up with them). Returns how many.
    pub fn expire_pending(&self) -> usize {
        let now = now_millis();
        let mut dead: Vec<(Arc<Message>, DeadCause)> = Vec::new();
        {
            let mut st = self.lock();
            // One pass (removing one by one would be quadratic in a backlog).
            let (unselected, mut index, mut before_unselected, mut freed) =
                (st.unselected, 0, 0, 0);
            st.pending.retain(|e| {
                let expired = e.message.is_expired(now);
                if expired {
                    before_unselected += usize::from(index < unselected);
                    freed += e.message.memory_size();
                    dead.push((e.message.clone(), DeadCause::Expired));
                }
                index += 1;
                !expired
            });
            st.unselected -= before_unselected;
            self.stats
                .expired
                .fetch_add(dead.len() as u64, Ordering::Relaxed);
            self.release(freed);
        }
        let n = dead.len();
        if n > 0 {
            self.finish(dead, Vec::new());
        }
        n
    }

    /// Takes an expired pending message out, to be routed once the lock is released.
    fn take_expired(
        &self,
        st: &mut QueueState,
        at: usize,
        dead: &mut Vec<(Arc<Message>, DeadCause)>,
    ) {
        let entry = st.pending.remove(at).expect("index checked");
        self.stats.expired.fetch_add(1, Ordering::Relaxed);
        self.release(entry.message.memory_size());
        dead.push((entry.message, DeadCause::Expired));
    }

    fn dispatch_pending(&self, st: &mut QueueState, dead: &mut Vec<(Arc<Message>, DeadCause)>) {
        let mut now = None;
        // Without selectors the first pending message either goes to a
        // consumer or nobody has credit: no scanning. With selectors, a
        // message nobody with credit selects waits, and later ones are
        // looked at (at most MAX_SCAN per pass, like ActiveMQ's paging).
        // An exclusive consumer (the first one alive) gets everything.
        let exclusive = st
            .consumers
            .iter()
            .position(|c| c.spec.exclusive && !c.dead);
        // The front no consumer selects is skipped; once a second, its
        // expired messages are taken out.
        if st.unselected > 0 {
            let due = st
                .unselected_checked
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
            if due {
                st.unselected_checked = Some(std::time::Instant::now());
                let now = *now.get_or_insert_with(now_millis);
                let mut i = 0;
                while i < st.unselected {
                    if st.pending[i].message.is_expired(now) {
                        self.take_expired(st, i, dead);
                        st.unselected -= 1;
                    } else {
                        i += 1;
                    }
                }
            }
        }
        let mut at = st.unselected;
        let scan_end = at + MAX_SCAN;
        'messages: while at < st.pending.len() && at < scan_end {
            let front = &st.pending[at];
            if front.message.expiration > 0
                && front
                    .message
                    .is_expired(*now.get_or_insert_with(now_millis))
            {
                self.take_expired(st, at, dead);
                continue;
            }
            let n = st.consumers.len();
            // A message of a group goes to the group's consumer, if it has one.
            // As ActiveMQ's assignMessageGroup: sequence 1 starts the group
            // afresh (whoever takes it owns it), a negative one ends it.
            let group = match st.pending[at].message.property("JMSXGroupID") {
                Some(crate::broker::message::PropValue::String(g)) => Some(g.clone()),
                _ => None,
            };
            let group_seq = match group
                .is_some()
                .then(|| st.pending[at].message.property("JMSXGroupSeq"))
            {
                Some(Some(crate::broker::message::PropValue::Int(n))) => *n,
                _ => 0,
            };
            let owner = group.as_ref().filter(|_| group_seq != 1).and_then(|g| {
                let id = *st.groups.get(g)?;
                st.consumers.iter().position(|c| c.spec.id == id && !c.dead)
            });
            if exclusive.is_some_and(|e| !st.consumers[e].has_credit()) {
                break; // the exclusive consumer is full: nobody else may have anything
            }
            let only = exclusive.or(owner);
            let mut any_credit = false;
            let mut selected = false;
            // Consumers of a higher priority first, round robin among
            // those of one priority (one rotation when all have the same).
            let by_priority = (n > 1
                && st.consumers[0].spec.priority != st.consumers[n - 1].spec.priority)
                .then(|| priority_order(&st.consumers, &st.last_served));
            for k in 0..n {
                let i = match &by_priority {
                    Some(order) => order[k],
                    None => (st.next_consumer + k) % n,
                };
                if !st.consumers[i].has_credit() {
                    continue;
                }
                any_credit = true;
                if !st.consumers[i].accepts(&st.pending[at].message) {
                    continue;
                }
                selected = true;
                if only.is_some_and(|o| o != i) {
                    continue;
                }
                let group_first = matches!((&group, owner), (Some(_), None));
                if let (Some(g), None) = (&group, owner) {
                    // Bounded, as ActiveMQ's group map: past the cap, groups
                    // are assigned afresh.
                    if st.groups.len() >= MAX_GROUPS {
                        st.groups.clear();
                    }
                    let id = st.consumers[i].spec.id;
                    st.groups.insert(g.clone(), id);
                }
                let entry = st.pending.remove(at).expect("index checked");
                let slot = &mut st.consumers[i];
                let seq = slot.next_seq;
                let delivery = Delivery {
                    message: entry.message.clone(),
                    consumer: slot.spec.id,
                    seq,
                    redelivery_count: entry.redelivery_count,
                    group_first,
                };
                if slot.spec.sink.deliver(delivery) {
                    slot.next_seq += 1;
                    slot.use_credit();
                    slot.in_flight.push_back(InFlight {
                        seq,
                        entry,
                        held: false,
                    });
                    st.next_consumer = (i + 1) % n;
                    if by_priority.is_some() {
                        let (p, id) = (st.consumers[i].spec.priority, st.consumers[i].spec.id);
                        match st.last_served.iter_mut().find(|(q, _)| *q == p) {
                            Some(entry) => entry.1 = id,
                            None => st.last_served.push((p, id)),
                        }
                    }
                    self.stats.dispatched.fetch_add(1, Ordering::Relaxed);
                    if let (Some(g), true) = (&group, group_seq < 0) {
                        st.groups.remove(g);
                    }
                } else {
                    slot.dead = true;
                    st.pending.insert(at, entry);
                }
                continue 'messages;
            }
            if !any_credit {
                break;
            }
            if at == st.unselected && !selected {
                // Those with credit were asked above; the others now.
                let m = &st.pending[at].message;
                if !st
                    .consumers
                    .iter()
                    .any(|c| !c.dead && !c.has_credit() && c.accepts(m))
                {
                    st.unselected += 1;
                }
            }
            at += 1;
        }
    }

    /// What records that this queue is done with a persistent message.
    pub fn removal(&self, m: &Message) -> Option<Op> {
        if m.store_id == 0 || self.store.is_none() {
            return None;
        }
        Some(self.removal_of(m.store_id))
    }

    /// Done with a stored message: removed from a queue; acknowledged by a
    /// durable subscription (the record stays for the others owed it).
    fn removal_of(&self, id: u64) -> Op {
        match self.store_sub {
            Some(sub) => Op::SubAck { sub, id },
            None => Op::Remove { id },
        }
    }

    /// The durable subscription this queue is for, if any.
    pub fn store_sub(&self) -> Option<u64> {
        self.store_sub
    }

    fn forget(&self, m: &Message, ops: &mut Vec<Op>) {
        if let Some(op) = self.removal(m) {
            ops.push(op);
        }
    }

    /// After the lock is released: record consumption, route dead letters.
    fn finish(&self, dead: Vec<(Arc<Message>, DeadCause)>, forgotten: Vec<Op>) {
        if !forgotten.is_empty() {
            if let Some(store) = &self.store {
                store.consumed(forgotten);
            }
        }
        if dead.is_empty() {
            return;
        }
        for (message, cause) in dead {
            let removal = self.removal(&message);
            match self.broker.upgrade() {
                Some(broker) => broker.dead_letter(&message, cause, removal),
                None => {
                    if let (Some(store), Some(op)) = (&self.store, removal) {
                        store.submit(vec![op]);
                    }
                }
            }
        }
    }
}

/// Pending messages one dispatch pass looks at, at most, for consumers with
/// selectors.
const MAX_SCAN: usize = 10_000;

/// Paged-out messages are read back when fewer than this many are pending,
/// up to `PAGE_SIZE` pending (and half the memory limit).
const PAGE_IN_BELOW: usize = 250;
const PAGE_SIZE: usize = 1_000;
const PAGE_CHUNK: usize = 250;

/// The order consumers (sorted by priority, highest first) are offered a
/// message in: each priority's in turn, round robin within each from after
/// the one it last served.
fn priority_order(consumers: &[ConsumerSlot], last_served: &[(i8, u64)]) -> Vec<usize> {
    let mut order = Vec::with_capacity(consumers.len());
    let mut lo = 0;
    while lo < consumers.len() {
        let p = consumers[lo].spec.priority;
        let hi = lo + consumers[lo..].partition_point(|c| c.spec.priority == p);
        let start = last_served
            .iter()
            .find(|(q, _)| *q == p)
            .and_then(|(_, id)| consumers[lo..hi].iter().position(|c| c.spec.id == *id))
            .map_or(lo, |i| lo + (i + 1) % (hi - lo));
        order.extend((0..hi - lo).map(|k| lo + (start - lo + k) % (hi - lo)));
        lo = hi;
    }
    order
}

/// Message groups a queue remembers the consumer of.
const MAX_GROUPS: usize = 65_536;

/// Puts entries (sorted by order) back among the pending ones, keeping the
/// destination's original order.
/// Returns the lowest position one went to (`pending.len()` when none did).
fn requeue(pending: &mut VecDeque<Entry>, back: Vec<Entry>) -> usize {
    let mut first = usize::MAX;
    for entry in back.into_iter().rev() {
        // Later ones went in at or after it: an insertion before them
        // shifts them, not `first`.
        first = first.min(insert_pending(pending, entry));
    }
    first.min(pending.len())
}

/// Pending messages are kept highest JMS priority first, then in arrival
/// order (FIFO within a priority). Equal priorities, the common case, only
/// ever append.
fn pending_key(e: &Entry) -> (std::cmp::Reverse<u8>, u64) {
    (std::cmp::Reverse(e.message.priority), e.order)
}

/// Returns where it went.
fn insert_pending(pending: &mut VecDeque<Entry>, entry: Entry) -> usize {
    let key = pending_key(&entry);
    match pending.back() {
        Some(last) if pending_key(last) > key => {
            let pos = pending.partition_point(|e| pending_key(e) < key);
            pending.insert(pos, entry);
            pos
        }
        _ => {
            pending.push_back(entry);
            pending.len() - 1
        }
    }
}

/// Whatever a queue still holds when it goes (a closed subscription's,
/// a deleted temporary queue's) leaves the broker-wide count with it.
impl Drop for Queue {
    fn drop(&mut self) {
        let left = *self.reserved.get_mut();
        if let (Some(u), true) = (&self.usage, left > 0) {
            u.sub(left);
        }
    }
}

#[cfg(test)]
mod tests;
