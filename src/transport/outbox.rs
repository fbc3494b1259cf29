//! The core-to-connection hand-off: a queue of deliveries for one
//! connection's writer task.
//!
//! It has no capacity of its own because the core bounds it: a consumer is
//! dispatched to only while it has prefetch credit, so the outbox never holds
//! more than the sum of its consumers' prefetch. Pushing never blocks (the
//! core pushes with a destination lock held); the writer waits on `ready`.

use crate::broker::subscription::{Delivery, DeliverySink};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// A consumer's deliveries, tagged with the protocol's context for it
/// (`C`), queued for its connection's writer.
pub type Out<C> = (Arc<C>, Delivery);

/// The core's sink for one consumer: its deliveries go to the connection's outbox.
pub struct OutboxSink<C> {
    pub outbox: Arc<Outbox<Out<C>>>,
    pub ctx: Arc<C>,
}

impl<C: Send + Sync> DeliverySink for OutboxSink<C> {
    fn deliver(&self, delivery: Delivery) -> bool {
        self.outbox.push((self.ctx.clone(), delivery))
    }
}

pub struct Outbox<T> {
    inner: Mutex<Inner<T>>,
    ready: Notify,
}

struct Inner<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Outbox<T> {
    pub fn new() -> Self {
        Outbox {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
        }
    }

    /// Queues an item; `false` when the outbox is closed (the item is dropped).
    pub fn push(&self, item: T) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.closed {
            return false;
        }
        let was_empty = inner.items.is_empty();
        inner.items.push_back(item);
        drop(inner);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Moves up to `max` items into `out`.
    pub fn drain_into(&self, out: &mut Vec<T>, max: usize) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let n = inner.items.len().min(max);
        out.extend(inner.items.drain(..n));
    }

    /// Waits until something may have been pushed (cancellation-safe).
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Drops the queued items `gone` picks (a consumer that ended: the
    /// writer would skip them, and they may wait long on a client that does
    /// not read).
    pub fn remove_where(&self, gone: impl Fn(&T) -> bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.items.retain(|i| !gone(i));
    }

    /// Refuses further pushes and drops what is queued; returns it.
    pub fn close(&self) -> Vec<T> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.closed = true;
        let left = inner.items.drain(..).collect();
        drop(inner);
        self.ready.notify_one();
        left
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .items
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_drain_close() {
        let o = Outbox::new();
        assert!(o.push(1));
        assert!(o.push(2));
        assert!(o.push(7));
        o.remove_where(|i| *i == 7);
        let mut out = Vec::new();
        o.drain_into(&mut out, 1);
        assert_eq!(out, vec![1]);
        assert_eq!(o.close(), vec![2]);
        assert!(!o.push(3));
        assert!(o.is_empty());
    }
}
