//! Destination names as ActiveMQ has them: a kind and a physical name.
//!
//! Protocols spell them differently (`/queue/a` in STOMP, `queue://a` in
//! OpenWire); the core only knows [`Destination`].

use std::fmt;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DestinationKind {
    Queue,
    Topic,
    TempQueue,
    TempTopic,
}

impl DestinationKind {
    /// Queues (temporary or not) hand each message to one consumer.
    pub fn is_queue(self) -> bool {
        matches!(self, DestinationKind::Queue | DestinationKind::TempQueue)
    }

    pub fn is_temporary(self) -> bool {
        matches!(
            self,
            DestinationKind::TempQueue | DestinationKind::TempTopic
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    pub kind: DestinationKind,
    pub name: Arc<str>,
}

impl Destination {
    pub fn new(kind: DestinationKind, name: impl Into<Arc<str>>) -> Self {
        Destination {
            kind,
            name: name.into(),
        }
    }

    pub fn queue(name: impl Into<Arc<str>>) -> Self {
        Self::new(DestinationKind::Queue, name)
    }

    pub fn topic(name: impl Into<Arc<str>>) -> Self {
        Self::new(DestinationKind::Topic, name)
    }

    pub fn is_queue(&self) -> bool {
        self.kind.is_queue()
    }
}

/// ActiveMQ's URL form: `queue://a`, `topic://a`, `temp-queue://a`, `temp-topic://a`.
impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            DestinationKind::Queue => "queue",
            DestinationKind::Topic => "topic",
            DestinationKind::TempQueue => "temp-queue",
            DestinationKind::TempTopic => "temp-topic",
        };
        write!(f, "{scheme}://{}", self.name)
    }
}
