//! What the core knows of a consumer: where to deliver, how much credit it
//! has, and the deliveries it has not acknowledged yet.
//!
//! The core never writes frames. A protocol session implements
//! [`DeliverySink`] and turns each [`Delivery`] into its own frame.

use crate::broker::message::Message;
use std::collections::VecDeque;
use std::sync::Arc;

/// A message handed to a consumer.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub consumer: u64,
    /// Per-consumer delivery sequence (1, 2, ...): what acknowledgements name.
    pub seq: u64,
    /// How many times this message was handed out before and came back.
    pub redelivery_count: u32,
    /// The first message of a message group since the group was given to
    /// this consumer (ActiveMQ's JMSXGroupFirstForConsumer).
    pub group_first: bool,
}

impl Delivery {
    pub fn redelivered(&self) -> bool {
        self.redelivery_count > 0
    }
}

/// The connection side of a consumer. `deliver` must not block and must not
/// call back into the core (it is called with the destination's lock held):
/// it queues the delivery for the connection's writer and returns `false`
/// when the connection is gone.
pub trait DeliverySink: Send + Sync {
    fn deliver(&self, delivery: Delivery) -> bool;
}

/// How a consumer wants messages: what a protocol's subscribe becomes.
pub struct ConsumerSpec {
    pub id: u64,
    /// How clients name this consumer (for advisories).
    pub name: crate::broker::message::ConsumerName,
    pub connection: u64,
    /// Deliveries that may be unacknowledged at once; 0 pauses dispatch.
    pub prefetch: u32,
    pub no_local: bool,
    /// An exclusive consumer receives every message of the queue while it is there.
    pub exclusive: bool,
    /// Consumers of a higher priority are offered messages first (ActiveMQ's
    /// consumer priority, 0 by default).
    pub priority: i8,
    /// Only messages this selects are dispatched to the consumer.
    pub selector: Option<Arc<crate::broker::selector::Selector>>,
    pub sink: Arc<dyn DeliverySink>,
    /// Who consumes: the topics a wildcard subscription joins are those it
    /// may read. `None`: no check.
    pub reader: Option<crate::broker::security::Subject>,
}

/// A queue entry: one message and its delivery history in this destination.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// Position in the destination: entries go back in this order on redelivery.
    pub order: u64,
    pub message: Arc<Message>,
    pub redelivery_count: u32,
}

#[derive(Debug)]
pub(crate) struct InFlight {
    pub seq: u64,
    pub entry: Entry,
    /// Acknowledged inside an open transaction: the credit is given back, the
    /// entry stays until the transaction ends.
    pub held: bool,
}

pub(crate) struct ConsumerSlot {
    pub spec: ConsumerSpec,
    pub in_flight: VecDeque<InFlight>,
    /// In-flight entries that still take credit (not held).
    pub credit_used: u32,
    pub next_seq: u64,
    /// Messages a prefetch-0 consumer asked for (OpenWire MessagePull).
    pub pull_credit: u32,
    /// The sink said the connection is gone; skip it until it is removed.
    pub dead: bool,
}

/// The largest prefetch a consumer gets, whatever it asks for (ActiveMQ's
/// `ActiveMQPrefetchPolicy.MAX_PREFETCH_SIZE`): what one consumer may hold
/// unacknowledged is bounded.
pub const MAX_PREFETCH: u32 = 32767;

impl ConsumerSlot {
    pub fn new(mut spec: ConsumerSpec) -> Self {
        spec.prefetch = spec.prefetch.min(MAX_PREFETCH);
        ConsumerSlot {
            spec,
            in_flight: VecDeque::new(),
            credit_used: 0,
            next_seq: 1,
            pull_credit: 0,
            dead: false,
        }
    }

    pub fn has_credit(&self) -> bool {
        !self.dead && (self.credit_used < self.spec.prefetch || self.pull_credit > 0)
    }

    /// Whether the consumer's selector (if any) selects the message.
    pub fn accepts(&self, m: &Message) -> bool {
        #[cfg(test)]
        if self.spec.selector.is_some() {
            SELECTOR_EVALUATIONS.with(|n| n.set(n.get() + 1));
        }
        self.spec.selector.as_ref().is_none_or(|s| s.matches(m))
    }

    /// Takes the credit for one dispatch.
    pub fn use_credit(&mut self) {
        if self.credit_used >= self.spec.prefetch {
            self.pull_credit -= 1;
        }
        self.credit_used += 1;
    }

    /// Index range of in-flight entries an ack of `seq` covers.
    pub fn ack_range(&self, seq: u64, cumulative: bool) -> Option<std::ops::Range<usize>> {
        let pos = self.in_flight.binary_search_by_key(&seq, |f| f.seq).ok()?;
        Some(if cumulative { 0..pos + 1 } else { pos..pos + 1 })
    }

    /// Index range of in-flight entries with a sequence in `first..=last`.
    pub fn seq_range(&self, first: u64, last: u64) -> std::ops::Range<usize> {
        // The usual ack: the oldest delivery, by a consumer that keeps up.
        match self.in_flight.front() {
            None => return 0..0,
            Some(f) if f.seq == last && first <= last => return 0..1,
            _ => {}
        }
        let start = self.in_flight.partition_point(|f| f.seq < first);
        let end = self.in_flight.partition_point(|f| f.seq <= last);
        start..end.max(start)
    }
}

#[cfg(test)]
thread_local! {
    /// Selector evaluations on this thread (dispatching runs on the thread
    /// that sends or acknowledges): what a test can bound dispatching's work by.
    pub static SELECTOR_EVALUATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
