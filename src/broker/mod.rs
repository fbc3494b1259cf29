//! The protocol-free broker core: destinations, dispatch, acknowledgements.
//!
//! Protocol sessions turn their frames into calls on [`Broker`] (send,
//! subscribe, unsubscribe) and on the [`Queue`] behind a subscription (ack);
//! the core hands messages back through each consumer's
//! [`subscription::DeliverySink`]. The core never sees a frame.
//!
//! Registries are `DashMap`s consulted when a destination or subscription is
//! first used; the per-message path goes through `Arc<Queue>`/`Arc<Topic>`
//! handles that sessions cache, so no global map is locked per message.

pub mod destination;
pub mod message;
pub mod queue;
pub mod subscription;
pub mod topic;

use crate::bstr::ByteStr;
use dashmap::DashMap;
use destination::{Destination, DestinationKind};
use message::{Message, PropValue};
use queue::{DeadCause, Queue};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use subscription::ConsumerSpec;
use thiserror::Error;
use topic::{Topic, TopicSub};

/// Core settings (a subset of the broker configuration).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub broker_name: String,
    /// Bytes of unconsumed messages a destination (or a topic subscription)
    /// may hold before producers are made to wait.
    pub destination_memory_limit: usize,
    pub dead_letter_queue: String,
    /// Dead-letter non-persistent messages too (ActiveMQ: `processNonPersistent`, off).
    pub dead_letter_non_persistent: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            broker_name: "localhost".into(),
            destination_memory_limit: 64 * 1024 * 1024,
            dead_letter_queue: "ActiveMQ.DLQ".into(),
            dead_letter_non_persistent: false,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BrokerError {
    #[error("Broker: {broker} - Client: {client_id} already connected from {from}")]
    ClientIdInUse {
        broker: String,
        client_id: String,
        from: String,
    },
    #[error("Durable consumer is in use")]
    DurableInUse,
    #[error(
        "No durable subscription exists for clientID: {client_id} and subscriptionName: {name}"
    )]
    NoSuchDurable { client_id: String, name: String },
}

/// Where a destination's messages go; what sessions cache per destination.
#[derive(Clone)]
pub enum Target {
    Queue(Arc<Queue>),
    Topic(Arc<Topic>),
}

impl Target {
    /// Routes a message. Returns queues over their memory limit to wait on.
    pub fn send(&self, message: Arc<Message>) -> Vec<Arc<Queue>> {
        match self {
            Target::Queue(q) => {
                if q.send(message) {
                    vec![q.clone()]
                } else {
                    Vec::new()
                }
            }
            Target::Topic(t) => t.publish(&message),
        }
    }
}

struct DurableSub {
    topic: Arc<Topic>,
    sub_id: u64,
    queue: Arc<Queue>,
    /// The active consumer, if any.
    consumer: Mutex<Option<u64>>,
}

/// What a subscription is, so that it can be undone.
#[derive(Clone)]
enum SubKind {
    Queue,
    Topic { topic: Arc<Topic>, sub_id: u64 },
    Durable { key: (Arc<str>, Arc<str>) },
}

/// A live subscription: acknowledgements go to `queue` with `consumer_id`.
#[derive(Clone)]
pub struct Subscription {
    pub queue: Arc<Queue>,
    pub consumer_id: u64,
    kind: SubKind,
}

impl Subscription {
    pub fn is_durable(&self) -> bool {
        matches!(self.kind, SubKind::Durable { .. })
    }
}

pub struct Broker {
    config: CoreConfig,
    queues: DashMap<Arc<str>, Arc<Queue>>,
    topics: DashMap<Arc<str>, Arc<Topic>>,
    durables: DashMap<(Arc<str>, Arc<str>), Arc<DurableSub>>,
    client_ids: DashMap<Arc<str>, (u64, String)>,
    ids: AtomicU64,
    /// `ID:<host>-<pid>-<start millis>`: the prefix of every id this broker makes.
    id_prefix: String,
    me: Weak<Broker>,
}

impl Broker {
    pub fn new(config: CoreConfig) -> Arc<Broker> {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let id_prefix = format!("ID:{host}-{}-{}", std::process::id(), message::now_millis());
        Arc::new_cyclic(|me| Broker {
            config,
            queues: DashMap::new(),
            topics: DashMap::new(),
            durables: DashMap::new(),
            client_ids: DashMap::new(),
            ids: AtomicU64::new(1),
            id_prefix,
            me: me.clone(),
        })
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// A new number, unique in this broker (connections, consumers...).
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    pub fn id_prefix(&self) -> &str {
        &self.id_prefix
    }

    pub fn queue(&self, name: &str) -> Arc<Queue> {
        if let Some(q) = self.queues.get(name) {
            return q.clone();
        }
        self.queues
            .entry(Arc::from(name))
            .or_insert_with(|| {
                tracing::debug!(queue = name, "queue created");
                Arc::new(Queue::new(
                    Destination::queue(name),
                    self.config.destination_memory_limit,
                    true,
                    self.me.clone(),
                ))
            })
            .clone()
    }

    pub fn topic(&self, name: &str) -> Arc<Topic> {
        if let Some(t) = self.topics.get(name) {
            return t.clone();
        }
        self.topics
            .entry(Arc::from(name))
            .or_insert_with(|| {
                tracing::debug!(topic = name, "topic created");
                Arc::new(Topic::new(Destination::topic(name)))
            })
            .clone()
    }

    pub fn find_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| q.clone())
    }

    /// Resolves a destination to the handle messages are sent through.
    pub fn target(&self, destination: &Destination) -> Target {
        match destination.kind {
            DestinationKind::Queue | DestinationKind::TempQueue => {
                Target::Queue(self.queue(&destination.name))
            }
            DestinationKind::Topic | DestinationKind::TempTopic => {
                Target::Topic(self.topic(&destination.name))
            }
        }
    }

    /// Names of the queues that exist, sorted.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.queues.iter().map(|e| e.key().to_string()).collect();
        names.sort();
        names
    }

    /// Claims a JMS/STOMP client id for a connection.
    pub fn register_client_id(
        &self,
        client_id: &str,
        connection: u64,
        from: &str,
    ) -> Result<(), BrokerError> {
        use dashmap::mapref::entry::Entry;
        match self.client_ids.entry(Arc::from(client_id)) {
            Entry::Occupied(e) => Err(BrokerError::ClientIdInUse {
                broker: self.config.broker_name.clone(),
                client_id: client_id.to_string(),
                from: e.get().1.clone(),
            }),
            Entry::Vacant(e) => {
                e.insert((connection, from.to_string()));
                Ok(())
            }
        }
    }

    pub fn release_client_id(&self, client_id: &str, connection: u64) {
        self.client_ids
            .remove_if(client_id, |_, (c, _)| *c == connection);
    }

    /// Subscribes a consumer to a destination. For a topic with `durable`
    /// (client id, subscription name), the subscription outlives the consumer.
    pub fn subscribe(
        &self,
        destination: &Destination,
        spec: ConsumerSpec,
        durable: Option<(&str, &str)>,
    ) -> Result<Subscription, BrokerError> {
        let consumer_id = spec.id;
        if destination.is_queue() {
            let queue = self.queue(&destination.name);
            queue.add_consumer(spec);
            return Ok(Subscription {
                queue,
                consumer_id,
                kind: SubKind::Queue,
            });
        }
        let topic = self.topic(&destination.name);
        let Some((client_id, name)) = durable else {
            let sub_id = self.next_id();
            let queue = Arc::new(Queue::new(
                destination.clone(),
                self.config.destination_memory_limit,
                false,
                self.me.clone(),
            ));
            topic.attach(TopicSub {
                id: sub_id,
                queue: queue.clone(),
                no_local: spec.no_local,
                connection: spec.connection,
            });
            queue.add_consumer(spec);
            return Ok(Subscription {
                queue,
                consumer_id,
                kind: SubKind::Topic { topic, sub_id },
            });
        };
        let key: (Arc<str>, Arc<str>) = (Arc::from(client_id), Arc::from(name));
        let durable = self
            .durables
            .entry(key.clone())
            .or_insert_with(|| {
                tracing::info!(client_id, subscription = name, topic = %destination, "durable subscription created");
                let sub_id = self.next_id();
                let queue = Arc::new(Queue::new(
                    destination.clone(),
                    self.config.destination_memory_limit,
                    true,
                    self.me.clone(),
                ));
                topic.attach(TopicSub {
                    id: sub_id,
                    queue: queue.clone(),
                    no_local: spec.no_local,
                    connection: spec.connection,
                });
                Arc::new(DurableSub {
                    topic: topic.clone(),
                    sub_id,
                    queue,
                    consumer: Mutex::new(None),
                })
            })
            .clone();
        {
            let mut active = durable.consumer.lock().unwrap_or_else(|e| e.into_inner());
            if active.is_some() {
                return Err(BrokerError::DurableInUse);
            }
            *active = Some(consumer_id);
        }
        durable.queue.add_consumer(spec);
        Ok(Subscription {
            queue: durable.queue.clone(),
            consumer_id,
            kind: SubKind::Durable { key },
        })
    }

    /// Ends a consumer (see [`Queue::remove_consumer`] for the arguments). A
    /// durable subscription stays and keeps collecting messages.
    pub fn unsubscribe(
        &self,
        sub: &Subscription,
        delivered_upto: u64,
        delivered_are_consumed: bool,
    ) {
        sub.queue
            .remove_consumer(sub.consumer_id, delivered_upto, delivered_are_consumed);
        match &sub.kind {
            SubKind::Queue => {}
            SubKind::Topic { topic, sub_id } => {
                topic.detach(*sub_id);
                sub.queue.purge();
                sub.queue.mark_deleted();
            }
            SubKind::Durable { key } => {
                if let Some(d) = self.durables.get(key) {
                    let mut active = d.consumer.lock().unwrap_or_else(|e| e.into_inner());
                    if *active == Some(sub.consumer_id) {
                        *active = None;
                    }
                }
            }
        }
    }

    /// Destroys a durable subscription and its pending messages.
    pub fn remove_durable(&self, client_id: &str, name: &str) -> Result<(), BrokerError> {
        let key: (Arc<str>, Arc<str>) = (Arc::from(client_id), Arc::from(name));
        let removed = self.durables.remove_if(&key, |_, d| {
            d.consumer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
        });
        match removed {
            Some((_, d)) => {
                d.topic.detach(d.sub_id);
                d.queue.purge();
                d.queue.mark_deleted();
                tracing::info!(
                    client_id,
                    subscription = name,
                    "durable subscription removed"
                );
                Ok(())
            }
            None if self.durables.contains_key(&key) => Err(BrokerError::DurableInUse),
            None => Err(BrokerError::NoSuchDurable {
                client_id: client_id.to_string(),
                name: name.to_string(),
            }),
        }
    }

    /// Moves a copy of a message to the dead-letter queue, recording where it
    /// came from and why. Non-persistent messages are dropped, as ActiveMQ's
    /// default dead-letter strategy does.
    pub fn dead_letter(&self, message: &Arc<Message>, cause: DeadCause) {
        if !message.persistent && !self.config.dead_letter_non_persistent {
            tracing::debug!(message_id = %message.id, ?cause, "non-persistent message discarded");
            return;
        }
        if message.destination.is_queue()
            && *message.destination.name == *self.config.dead_letter_queue
        {
            tracing::warn!(message_id = %message.id, "message on the dead-letter queue discarded");
            return;
        }
        // As ActiveMQ: same message id, the original destination recorded,
        // the expiration moved to `originalExpiration`, and a failure cause
        // only where one is known (a STOMP NACK gives none).
        let mut copy = Message::clone(message);
        copy.original_destination = Some(message.destination.clone());
        copy.destination = Destination::queue(self.config.dead_letter_queue.as_str());
        if copy.property("originalExpiration").is_none() {
            copy.properties.push((
                ByteStr::from_static("originalExpiration"),
                PropValue::Long(message.expiration),
            ));
        }
        copy.expiration = 0;
        if let DeadCause::Expired = cause {
            copy.properties.push((
                ByteStr::from_static("dlqDeliveryFailureCause"),
                PropValue::String(ByteStr::from(format!(
                    "java.lang.Throwable: Message Expired. Expiration:{}",
                    message.expiration
                ))),
            ));
        }
        tracing::debug!(message_id = %message.id, ?cause, "message moved to the dead-letter queue");
        self.queue(&self.config.dead_letter_queue)
            .send(Arc::new(copy));
    }
}

#[cfg(test)]
mod tests;
