//! A topic: each message to every current subscriber.
//!
//! Every subscription owns a private [`Queue`] with one consumer; publishing
//! puts the same `Arc<Message>` into each of them. A durable subscription's
//! queue simply outlives its consumer.

use crate::broker::destination::Destination;
use crate::broker::message::Message;
use crate::broker::queue::Queue;
use std::sync::{Arc, RwLock};

#[derive(Clone)]
pub struct TopicSub {
    pub id: u64,
    pub queue: Arc<Queue>,
    /// Skip messages produced by `connection` (JMS noLocal).
    pub no_local: bool,
    pub connection: u64,
    /// Only messages this selects go to the subscription.
    pub selector: Option<Arc<crate::broker::selector::Selector>>,
    /// Who consumes (see [`crate::broker::subscription::ConsumerSpec::reader`]).
    pub reader: Option<crate::broker::security::Subject>,
}

impl TopicSub {
    /// Whether the subscription takes the message (JMS noLocal, selector).
    fn takes(&self, message: &Message) -> bool {
        !(self.no_local && self.connection == message.producer_connection)
            && self.selector.as_ref().is_none_or(|s| s.matches(message))
    }
}

pub struct Topic {
    destination: Destination,
    subs: RwLock<Vec<TopicSub>>,
    /// For a virtual topic: the queues that get a copy of each message.
    virtual_queues: RwLock<Vec<Arc<Queue>>>,
}

impl Topic {
    pub fn new(destination: Destination) -> Self {
        Topic {
            destination,
            subs: RwLock::new(Vec::new()),
            virtual_queues: RwLock::new(Vec::new()),
        }
    }

    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// Puts the message in every subscription. Returns the subscriptions'
    /// queues that are over their memory limit, for the producer to wait on.
    pub fn publish(&self, message: &Arc<Message>) -> Vec<Arc<Queue>> {
        let subs = self.subs.read().unwrap_or_else(|e| e.into_inner());
        let mut full = Vec::new();
        for sub in subs.iter() {
            if !sub.takes(message) {
                continue;
            }
            if sub.queue.send(message.clone()) {
                full.push(sub.queue.clone());
            }
        }
        full
    }

    /// Makes a queue consume from this (virtual) topic.
    pub fn attach_virtual(&self, queue: Arc<Queue>) {
        let mut queues = self
            .virtual_queues
            .write()
            .unwrap_or_else(|e| e.into_inner());
        queues.retain(|q| !q.is_deleted());
        if !queues.iter().any(|q| Arc::ptr_eq(q, &queue)) {
            queues.push(queue);
        }
    }

    /// The queues that consume from this (virtual) topic.
    pub fn virtual_queues(&self) -> Vec<Arc<Queue>> {
        self.virtual_queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|q| !q.is_deleted())
            .cloned()
            .collect()
    }

    /// Attaches a subscription (once: attaching it again does nothing).
    pub fn attach(&self, sub: TopicSub) {
        let mut subs = self.subs.write().unwrap_or_else(|e| e.into_inner());
        if !subs.iter().any(|s| s.id == sub.id) {
            subs.push(sub);
        }
    }

    pub fn detach(&self, id: u64) {
        self.subs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.id != id);
    }

    /// The store ids of the durable subscriptions attached now that take
    /// `message` (as [`Topic::publish`] decides): the ones its journal
    /// record must wait for. (One that does not take it would never
    /// acknowledge it: the record would stay, and come back to it on a
    /// restart.)
    pub fn durable_sub_ids_for(&self, message: &Message) -> Vec<u64> {
        self.subs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.takes(message))
            .filter_map(|s| s.queue.store_sub())
            .collect()
    }

    /// The queues of the subscriptions attached now.
    pub fn subscription_queues(&self) -> Vec<Arc<Queue>> {
        self.subs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| s.queue.clone())
            .collect()
    }

    /// The subscriptions' ids.
    pub fn sub_ids(&self) -> Vec<u64> {
        self.subs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| s.id)
            .collect()
    }

    pub fn subscription_count(&self) -> usize {
        self.subs.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}
