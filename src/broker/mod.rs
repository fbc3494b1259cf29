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
pub mod scheduler;
pub mod security;
pub mod selector;
pub mod subscription;
pub mod topic;
pub mod transaction;

use crate::bstr::ByteStr;
use crate::store::{Op, Recovered, Store, StoreError};
use dashmap::DashMap;
use destination::{Destination, DestinationKind};
use message::{Advisory, ConsumerName, Message, PropValue};
use queue::{DeadCause, Persistence, Queue};
use security::{Access, SecurityError, Subject};
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
    /// The URL clients know this broker by (advisories' `originBrokerURL`).
    pub broker_url: String,
    /// Users and what they may do.
    pub security: Arc<security::Security>,
    /// Topics that are virtual topics (ActiveMQ's default `VirtualTopic.>`);
    /// empty: none.
    pub virtual_topics: String,
    /// Queues named this prefix plus a virtual topic's name each get a copy
    /// of its messages (`Consumer.*.`: `Consumer.A.VirtualTopic.X`).
    pub virtual_topic_prefix: String,
    /// Scheduled delivery (ActiveMQ's `schedulerSupport`); off: scheduling
    /// properties are ignored.
    pub scheduler_support: bool,
    /// Bytes of scheduled messages held at most.
    pub scheduler_memory_limit: usize,
    /// Bytes of messages all destinations together hold in memory before
    /// every producer waits (ActiveMQ's systemUsage memoryUsage).
    pub memory_limit: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            broker_name: "localhost".into(),
            destination_memory_limit: 64 * 1024 * 1024,
            dead_letter_queue: "ActiveMQ.DLQ".into(),
            dead_letter_non_persistent: false,
            broker_url: "tcp://localhost:61616".into(),
            security: Arc::default(),
            virtual_topics: "VirtualTopic.>".into(),
            virtual_topic_prefix: "Consumer.*.".into(),
            scheduler_support: false,
            scheduler_memory_limit: 256 * 1024 * 1024,
            memory_limit: 1024 * 1024 * 1024,
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
    #[error("The destination temp-queue://{0} does not exist.")]
    NoSuchTempQueue(String),
    #[error("The destination temp-topic://{0} does not exist.")]
    NoSuchTempTopic(String),
    #[error("Destination still has an active subscription: {0}")]
    TempInUse(String),
    #[error("The temporary destination {0} belongs to another connection")]
    TempNotOwned(String),
    #[error("{0}")]
    Invalid(String),
}

/// Where a destination's messages go; what sessions cache per destination.
#[derive(Clone)]
pub enum Target {
    Queue(Arc<Queue>),
    Topic(Arc<Topic>),
    /// A composite destination (`a,b,topic://c`): every element.
    Many(Vec<Target>),
    /// A virtual topic: the topic, and every queue that consumes from it
    /// (`Consumer.*.VirtualTopic.X`) at the time of the send.
    Virtual(Arc<Topic>),
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
            Target::Many(_) | Target::Virtual(_) => {
                each_element(self, Arc::unwrap_or_clone(message))
                    .into_iter()
                    .flat_map(|(t, m)| t.send(Arc::new(m)))
                    .collect()
            }
        }
    }

    /// How many copies of a message sent through it are kept (a composite's
    /// elements, a virtual topic's queues and itself): what a transaction
    /// holding it counts.
    pub fn copies(&self) -> usize {
        match self {
            Target::Queue(_) | Target::Topic(_) => 1,
            Target::Many(all) => all.iter().map(Target::copies).sum(),
            Target::Virtual(t) => 1 + t.virtual_queues().len(),
        }
    }

    /// False once a temporary queue behind it was deleted.
    pub fn is_live(&self) -> bool {
        match self {
            Target::Queue(q) => !q.is_deleted(),
            Target::Topic(_) | Target::Virtual(_) => true,
            Target::Many(all) => all.iter().all(Target::is_live),
        }
    }
}

/// A message to `target` as what each destination gets: a composite's
/// elements each get a copy of their own, whose destination is the element
/// and whose original destination is the composite (as ActiveMQ's
/// CompositeDestinationBroker sends them); so do the queues of a virtual
/// topic, after the topic itself (as its VirtualTopicInterceptor); anything
/// else, the message.
pub fn each_element(target: &Target, message: Message) -> Vec<(Target, Message)> {
    let all = match target {
        Target::Many(all) => all,
        Target::Virtual(topic) => {
            // The queues first, then the topic, as ActiveMQ.
            let queues = topic.virtual_queues();
            let mut out = Vec::with_capacity(queues.len() + 1);
            for q in queues {
                let mut copy = message.clone();
                copy.destination = q.destination().clone();
                copy.extras_mut().original_destination = Some(message.destination.clone());
                out.push((Target::Queue(q), copy));
            }
            out.push((Target::Topic(topic.clone()), message));
            return out;
        }
        _ => return vec![(target.clone(), message)],
    };
    let composite = message.destination.clone();
    all.iter()
        .zip(composite_elements(&composite))
        .flat_map(|(t, d)| {
            let mut copy = message.clone();
            copy.destination = d;
            copy.extras_mut().original_destination = Some(composite.clone());
            each_element(t, copy)
        })
        .collect()
}

/// Splits a composite destination name (`a,b,topic://c`) into its elements;
/// an element without a scheme has the kind of the whole.
pub fn composite_elements(d: &Destination) -> Vec<Destination> {
    d.name
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            for (scheme, kind) in [
                ("queue://", DestinationKind::Queue),
                ("topic://", DestinationKind::Topic),
                ("temp-queue://", DestinationKind::TempQueue),
                ("temp-topic://", DestinationKind::TempTopic),
            ] {
                if let Some(rest) = n.strip_prefix(scheme) {
                    return Destination::new(kind, rest);
                }
            }
            Destination::new(d.kind, n)
        })
        .collect()
}

/// Whether a destination name has ActiveMQ wildcards (`*` one level, `>` the rest).
pub fn is_wildcard(name: &str) -> bool {
    name.split('.').any(|p| p == "*" || p == ">")
}

/// ActiveMQ's wildcard matching: `.` separates levels, `*` matches one level,
/// `>` (last) matches the remaining levels, none included (`a.>` matches `a`,
/// as ActiveMQ's PrefixDestinationFilter has it).
pub fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let mut p = pattern.split('.');
    let mut n = name.split('.');
    loop {
        match (p.next(), n.next()) {
            (Some(">"), _) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

pub const ADVISORY_PREFIX: &str = "ActiveMQ.Advisory.";
pub const TEMP_QUEUE_ADVISORY: &str = "ActiveMQ.Advisory.TempQueue";
pub const TEMP_TOPIC_ADVISORY: &str = "ActiveMQ.Advisory.TempTopic";

/// A temporary destination and the connection that made it.
struct TempDestination {
    owner: u64,
    connection_id: Arc<str>,
    destination: Destination,
}

struct DurableSub {
    /// Its id in the store (0 without a store).
    store_id: u64,
    topic: Arc<Topic>,
    sub_id: u64,
    queue: Arc<Queue>,
    no_local: bool,
    selector: Option<Arc<selector::Selector>>,
    /// The active consumer, if any.
    consumer: Mutex<Option<u64>>,
}

/// What a subscription is, so that it can be undone.
#[derive(Clone)]
enum SubKind {
    Queue,
    Topic {
        topics: Vec<Arc<Topic>>,
        sub_id: u64,
        /// Attached to every topic a wildcard covers (not only `topics`).
        wildcard: bool,
    },
    Durable {
        key: (Arc<str>, Arc<str>),
    },
}

/// A live subscription: acknowledgements go to `queue` with `consumer_id`.
#[derive(Clone)]
pub struct Subscription {
    pub queue: Arc<Queue>,
    pub consumer_id: u64,
    pub name: ConsumerName,
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
    temps: DashMap<Destination, TempDestination>,
    /// Wildcard topic subscriptions (`news.*`, `news.>`), by pattern.
    wildcards: Mutex<Vec<(Arc<str>, TopicSub)>>,
    store: Option<Arc<Store>>,
    ids: AtomicU64,
    /// `ID:<host>-<pid>-<start millis>`: the prefix of every id this broker makes.
    id_prefix: String,
    /// Scheduled messages waiting (see [`Broker::run_scheduler`]).
    jobs: scheduler::Jobs,
    /// The producer id of the copies repeating jobs send.
    scheduler_producer: Arc<str>,
    /// What every destination's messages hold in memory, together.
    memory: Arc<queue::MemoryUsage>,
    me: Weak<Broker>,
}

impl Broker {
    pub fn new(config: CoreConfig) -> Arc<Broker> {
        Self::with_store(config, None)
    }

    /// A broker whose persistent messages go to `store`.
    pub fn with_store(config: CoreConfig, store: Option<Arc<Store>>) -> Arc<Broker> {
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
        let jobs = scheduler::Jobs::new(config.scheduler_memory_limit);
        let memory = Arc::new(queue::MemoryUsage::new(config.memory_limit));
        let scheduler_producer = Arc::from(format!("{id_prefix}-1:0:0:0"));
        Arc::new_cyclic(|me| Broker {
            config,
            queues: DashMap::new(),
            topics: DashMap::new(),
            durables: DashMap::new(),
            client_ids: DashMap::new(),
            temps: DashMap::new(),
            wildcards: Mutex::new(Vec::new()),
            store,
            ids: AtomicU64::new(1),
            id_prefix,
            jobs,
            scheduler_producer,
            memory,
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

    /// The broker-wide memory every destination counts in.
    pub fn memory_usage(&self) -> &Arc<queue::MemoryUsage> {
        &self.memory
    }

    pub fn queue(&self, name: &str) -> Arc<Queue> {
        if let Some(q) = self.queues.get(name) {
            return q.clone();
        }
        self.queue_of(&Destination::queue(name))
    }

    /// The queue for a destination (a queue or a temporary queue), made with
    /// that destination's kind.
    fn queue_of(&self, destination: &Destination) -> Arc<Queue> {
        self.make_queue(destination, true)
    }

    /// The queue for a destination, made if need be; a queue made is
    /// recorded in the store (`record`) unless it is temporary.
    fn make_queue(&self, destination: &Destination, record: bool) -> Arc<Queue> {
        let name: &str = &destination.name;
        if let Some(q) = self.queues.get(name) {
            return q.clone();
        }
        let mut created = false;
        let queue = self
            .queues
            .entry(Arc::from(name))
            .or_insert_with(|| {
                tracing::debug!(queue = name, "queue created");
                created = true;
                let queue = Arc::new(Queue::new(
                    destination.clone(),
                    self.config.destination_memory_limit,
                    true,
                    self.me.clone(),
                    self.persistence(None),
                ));
                if destination.kind == DestinationKind::Queue {
                    if let Some(topic) = self.virtual_topic_of(name) {
                        // From now on it gets a copy of what the topic is
                        // sent. (Attached before anyone else can have the
                        // queue: `topic` touches only the topics.)
                        self.topic(topic).attach_virtual(queue.clone());
                    }
                }
                queue
            })
            .clone();
        // A wildcard or composite name is no queue of its own to remember.
        if created
            && record
            && destination.kind == DestinationKind::Queue
            && !is_wildcard(name)
            && !name.contains(',')
        {
            if let Some(store) = &self.store {
                // Not awaited: a restart before it is durable forgets only
                // that the queue was made (as if it had not been).
                store.submit(vec![Op::QueueAdd {
                    name: destination.name.clone(),
                }]);
            }
        }
        queue
    }

    /// Deletes a queue and its messages (ActiveMQ's removeDestination, JMS
    /// `ActiveMQConnection.destroyDestination`); refused while it has
    /// consumers. Deleting one that does not exist does nothing.
    pub fn delete_queue(&self, destination: &Destination) -> Result<(), BrokerError> {
        let Some(queue) = self.find_queue(&destination.name) else {
            return Ok(());
        };
        // This queue, not one made again meanwhile; its QueueRemove goes to
        // the journal while no new one can be made (and recorded) before it.
        let mut in_use = None;
        let removed = self.queues.remove_if(&*destination.name, |_, q| {
            if !Arc::ptr_eq(q, &queue) {
                return false;
            }
            in_use = q.mark_deleted_if_unused();
            if in_use.is_none() {
                if let Some(store) = &self.store {
                    store.submit(vec![Op::QueueRemove {
                        name: destination.name.clone(),
                    }]);
                }
            }
            in_use.is_none()
        });
        if let Some(c) = in_use {
            return Err(BrokerError::Invalid(format!(
                "Destination: {destination} still has an active subscription: {}:{}:{}",
                c.connection_id, c.session, c.value
            )));
        }
        if removed.is_none() {
            return Ok(());
        }
        // Sends and consumers that still reach it are refused from now on
        // (see Queue::send_dispatched, Queue::try_add_consumer).
        queue.purge();
        tracing::debug!(queue = %destination.name, "queue deleted");
        Ok(())
    }

    /// Whether a topic of this name is a virtual topic.
    /// Deletes a topic (ActiveMQ's removeDestination, JMS
    /// `destroyDestination`): refused while anything subscribes to it, as
    /// in ActiveMQ (a subscriber, a wildcard subscription covering it, a
    /// durable subscription even while inactive). A virtual topic stays in
    /// place for its consumer queues' sake.
    pub fn delete_topic(&self, destination: &Destination) -> Result<(), BrokerError> {
        let Some(topic) = self
            .topics
            .get(&*destination.name)
            .map(|t| t.value().clone())
        else {
            return Ok(());
        };
        let refused = |topic: &Topic| {
            let ids = topic.sub_ids();
            let first = ids.first()?;
            let durable = self
                .durables
                .iter()
                .find(|d| d.value().sub_id == *first)
                .map(|d| format!("{}:{}", d.key().0, d.key().1));
            Some(BrokerError::Invalid(format!(
                "Destination: {destination} still has an active subscription: {}",
                durable.unwrap_or_else(|| format!("subscription {first}"))
            )))
        };
        if let Some(e) = refused(&topic) {
            return Err(e);
        }
        if !self.is_virtual_topic(&destination.name) {
            self.topics.remove_if(&*destination.name, |_, t| {
                Arc::ptr_eq(t, &topic) && t.subscription_count() == 0
            });
        }
        tracing::debug!(topic = %destination.name, "topic deleted");
        Ok(())
    }

    pub fn is_virtual_topic(&self, name: &str) -> bool {
        let pattern = &self.config.virtual_topics;
        !pattern.is_empty() && wildcard_matches(pattern, name)
    }

    /// The virtual topic a queue of this name consumes from
    /// (`Consumer.A.VirtualTopic.X`: `VirtualTopic.X`), if any.
    fn virtual_topic_of<'a>(&self, queue: &'a str) -> Option<&'a str> {
        if self.config.virtual_topics.is_empty() {
            return None;
        }
        let mut rest = queue;
        for part in self
            .config
            .virtual_topic_prefix
            .trim_end_matches('.')
            .split('.')
        {
            let (head, tail) = rest.split_once('.')?;
            if part != "*" && part != head {
                return None;
            }
            rest = tail;
        }
        (!rest.is_empty() && !is_wildcard(rest) && self.is_virtual_topic(rest)).then_some(rest)
    }

    pub fn topic(&self, name: &str) -> Arc<Topic> {
        if let Some(t) = self.topics.get(name) {
            return t.clone();
        }
        let mut created = false;
        let topic = self
            .topics
            .entry(Arc::from(name))
            .or_insert_with(|| {
                tracing::debug!(topic = name, "topic created");
                created = true;
                Arc::new(Topic::new(Destination::topic(name)))
            })
            .clone();
        if created {
            // Wildcard subscriptions that cover the new topic join it.
            let wild = self.wildcards.lock().unwrap_or_else(|e| e.into_inner());
            for (pattern, sub) in wild.iter() {
                if wildcard_matches(pattern, name) && self.may_read(sub, &topic) {
                    topic.attach(sub.clone());
                }
            }
        }
        topic
    }

    /// Who a connection giving these credentials is (or ActiveMQ's refusal).
    pub fn authenticate(
        &self,
        user: Option<&str>,
        password: Option<&str>,
    ) -> Result<Subject, SecurityError> {
        self.config.security.authenticate(user, password)
    }

    /// Whether authorization applies at all (sessions skip their checks when not).
    pub fn authorizing(&self) -> bool {
        self.config.security.authorizing()
    }

    /// Checks that `subject` may read from or write to `destination` (each
    /// element of a composite), and may create it where it does not exist
    /// yet, as ActiveMQ's authorization broker does. `Access::Admin` checks
    /// creating (or removing) it outright. A connection that has not
    /// authenticated (`None`) is refused, as ActiveMQ's.
    pub fn authorize(
        &self,
        subject: Option<&Subject>,
        destination: &Destination,
        access: Access,
    ) -> Result<(), SecurityError> {
        let security = &self.config.security;
        if !security.authorizing() {
            return Ok(());
        }
        let subject = subject.ok_or_else(|| SecurityError("User is not authenticated.".into()))?;
        if destination.name.contains(',') {
            return composite_elements(destination)
                .iter()
                .try_for_each(|d| self.authorize(Some(subject), d, access));
        }
        security.check(subject, destination, access)?;
        // A temporary destination is made (and checked) by create_temp's
        // caller; a wildcard is no destination (nothing is made).
        if access != Access::Admin
            && !destination.kind.is_temporary()
            && !is_wildcard(&destination.name)
            && !self.exists(destination)
        {
            security.check(subject, destination, Access::Admin)?;
        }
        Ok(())
    }

    /// Whether a wildcard subscription may join a topic: the topics it
    /// covers are each checked (as ActiveMQ's AuthorizationDestinationFilter).
    fn may_read(&self, sub: &TopicSub, topic: &Topic) -> bool {
        sub.reader.as_ref().is_none_or(|subject| {
            self.config
                .security
                .allows(subject, topic.destination(), Access::Read)
        })
    }

    /// Whether the destination has been made (used) already.
    pub fn exists(&self, destination: &Destination) -> bool {
        match destination.kind {
            DestinationKind::Queue => self.queues.contains_key(&*destination.name),
            DestinationKind::Topic => self.topics.contains_key(&*destination.name),
            DestinationKind::TempQueue | DestinationKind::TempTopic => {
                self.temps.contains_key(destination)
            }
        }
    }

    pub fn find_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| q.clone())
    }

    /// Resolves a destination to the handle messages are sent through.
    /// Temporary destinations must exist (a deleted one is an error).
    pub fn resolve(&self, destination: &Destination) -> Result<Target, BrokerError> {
        if destination.name.contains(',') {
            let all = composite_elements(destination)
                .iter()
                .map(|d| self.resolve(d))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Target::Many(all));
        }
        match destination.kind {
            DestinationKind::Queue => Ok(Target::Queue(self.queue(&destination.name))),
            DestinationKind::Topic => {
                let topic = self.topic(&destination.name);
                Ok(if self.is_virtual_topic(&destination.name) {
                    Target::Virtual(topic)
                } else {
                    Target::Topic(topic)
                })
            }
            DestinationKind::TempQueue => {
                if !self.temps.contains_key(destination) {
                    return Err(BrokerError::NoSuchTempQueue(destination.name.to_string()));
                }
                Ok(Target::Queue(self.queue_of(destination)))
            }
            DestinationKind::TempTopic => {
                if !self.temps.contains_key(destination) {
                    return Err(BrokerError::NoSuchTempTopic(destination.name.to_string()));
                }
                Ok(Target::Topic(self.topic(&destination.name)))
            }
        }
    }

    /// Like [`Broker::resolve`], for plain queues and topics (which always resolve).
    pub fn target(&self, destination: &Destination) -> Target {
        self.resolve(destination)
            .unwrap_or_else(|_| Target::Queue(self.queue(&destination.name)))
    }

    /// Creates a temporary destination owned by a connection and announces it.
    /// Whether connection `owner` owns this temporary destination.
    pub fn owns_temp(&self, destination: &Destination, owner: u64) -> bool {
        self.temps
            .get(destination)
            .is_some_and(|t| t.owner == owner)
    }

    /// Creates a temporary destination owned by connection `owner`; `false`
    /// when it already had it. Refused when another connection owns that
    /// name.
    pub fn create_temp(
        &self,
        destination: &Destination,
        owner: u64,
        connection_id: &str,
    ) -> Result<bool, BrokerError> {
        let fresh = match self.temps.entry(destination.clone()) {
            dashmap::Entry::Occupied(e) if e.get().owner != owner => {
                return Err(BrokerError::TempNotOwned(destination.to_string()));
            }
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(v) => {
                v.insert(TempDestination {
                    owner,
                    connection_id: Arc::from(connection_id),
                    destination: destination.clone(),
                });
                true
            }
        };
        if destination.is_queue() {
            self.queue_of(destination);
        } else {
            self.topic(&destination.name);
        }
        if fresh {
            self.advise_temp(destination, connection_id, true);
        }
        Ok(fresh)
    }

    /// Deletes a temporary destination for connection `by`; refused while it
    /// has consumers, and when another connection owns it.
    pub fn delete_temp(&self, destination: &Destination, by: u64) -> Result<(), BrokerError> {
        if self.temps.get(destination).is_some_and(|t| t.owner != by) {
            return Err(BrokerError::TempNotOwned(destination.to_string()));
        }
        let in_use = if destination.is_queue() {
            self.find_queue(&destination.name)
                .is_some_and(|q| q.consumer_count() > 0)
        } else {
            self.topics
                .get(&*destination.name)
                .is_some_and(|t| t.subscription_count() > 0)
        };
        if in_use {
            return Err(BrokerError::TempInUse(destination.to_string()));
        }
        self.drop_temp(destination);
        Ok(())
    }

    /// Deletes every temporary destination of a closing connection.
    pub fn delete_temps_of(&self, owner: u64) {
        let mine: Vec<Destination> = self
            .temps
            .iter()
            .filter(|t| t.owner == owner)
            .map(|t| t.destination.clone())
            .collect();
        for d in mine {
            self.drop_temp(&d);
        }
    }

    fn drop_temp(&self, destination: &Destination) {
        let Some((_, temp)) = self.temps.remove(destination) else {
            return;
        };
        if destination.is_queue() {
            if let Some((_, q)) = self.queues.remove(&*destination.name) {
                q.mark_deleted();
                q.purge();
            }
        } else {
            self.topics.remove(&*destination.name);
        }
        self.advise_temp(destination, &temp.connection_id, false);
    }

    fn advise_temp(&self, destination: &Destination, connection_id: &str, added: bool) {
        let topic = if destination.is_queue() {
            TEMP_QUEUE_ADVISORY
        } else {
            TEMP_TOPIC_ADVISORY
        };
        let advisory = Advisory::TempDestination {
            added,
            destination: destination.clone(),
            connection_id: Arc::from(connection_id),
        };
        self.publish_advisory(topic, advisory, Vec::new());
    }

    /// Publishes an advisory message, if anyone listens on its topic.
    fn publish_advisory(
        &self,
        topic: &str,
        advisory: Advisory,
        properties: Vec<(ByteStr, PropValue)>,
    ) {
        let Some(t) = self.topics.get(topic).map(|t| t.clone()) else {
            return;
        };
        if t.subscription_count() == 0 {
            return;
        }
        let message = self.advisory_message(topic, advisory, properties);
        t.publish(&Arc::new(message));
    }

    fn advisory_message(
        &self,
        topic: &str,
        advisory: Advisory,
        mut properties: Vec<(ByteStr, PropValue)>,
    ) -> Message {
        let seq = self.next_id();
        let mut m = Message::new(
            message::MessageId {
                producer: Arc::from(format!("{}-1:0:0:0", self.id_prefix)),
                seq,
            },
            Destination::topic(topic),
            message::BodyKind::Empty,
            bytes::Bytes::new(),
        );
        m.extras_mut().jms_type = Some(ByteStr::from_static("Advisory"));
        m.extras_mut().advisory = Some(Arc::new(advisory));
        properties.push((
            ByteStr::from_static("originBrokerId"),
            PropValue::String(ByteStr::from(format!("{}-0:1", self.id_prefix))),
        ));
        properties.push((
            ByteStr::from_static("originBrokerName"),
            PropValue::String(ByteStr::from(self.config.broker_name.as_str())),
        ));
        properties.push((
            ByteStr::from_static("originBrokerURL"),
            PropValue::String(ByteStr::from(self.config.broker_url.as_str())),
        ));
        m.properties = properties;
        m
    }

    /// The ADD advisories of every existing temporary destination of a kind
    /// (what a new subscriber to the temp advisory topics is told first).
    fn temp_advisories(&self, topic: &str) -> Vec<Arc<Message>> {
        let queues = topic == TEMP_QUEUE_ADVISORY;
        self.temps
            .iter()
            .filter(|t| t.destination.is_queue() == queues)
            .map(|t| {
                Arc::new(self.advisory_message(
                    topic,
                    Advisory::TempDestination {
                        added: true,
                        destination: t.destination.clone(),
                        connection_id: t.connection_id.clone(),
                    },
                    Vec::new(),
                ))
            })
            .collect()
    }

    /// The ADD advisories of the consumers a destination has now (what a
    /// new subscriber to its consumer advisory topic is told first).
    fn consumer_advisories(&self, topic: &str) -> Vec<Arc<Message>> {
        let Some(rest) = topic.strip_prefix("ActiveMQ.Advisory.Consumer.") else {
            return Vec::new();
        };
        let (destination, queues) = if let Some(name) = rest.strip_prefix("Queue.") {
            let d = Destination::queue(name);
            (d, self.find_queue(name).into_iter().collect::<Vec<_>>())
        } else if let Some(name) = rest.strip_prefix("Topic.") {
            let d = Destination::topic(name);
            let subs = self
                .topics
                .get(name)
                .map(|t| t.subscription_queues())
                .unwrap_or_default();
            (d, subs)
        } else {
            return Vec::new();
        };
        let names: Vec<ConsumerName> = queues.iter().flat_map(|q| q.consumer_names()).collect();
        let count = names.len();
        names
            .into_iter()
            .map(|consumer| {
                Arc::new(self.advisory_message(
                    topic,
                    Advisory::Consumer {
                        added: true,
                        consumer,
                        destination: destination.clone(),
                    },
                    vec![(
                        ByteStr::from_static("consumerCount"),
                        PropValue::Int(count as i32),
                    )],
                ))
            })
            .collect()
    }

    /// Tells `ActiveMQ.Advisory.Consumer.<Queue|Topic>.<name>` listeners that a
    /// consumer came or went, with the destination's consumer count.
    fn advise_consumer(
        &self,
        destination: &Destination,
        consumer: &ConsumerName,
        added: bool,
        count: usize,
    ) {
        if destination.name.starts_with(ADVISORY_PREFIX) {
            return;
        }
        let kind = match destination.kind {
            DestinationKind::Queue => "Queue",
            DestinationKind::Topic => "Topic",
            DestinationKind::TempQueue => "TempQueue",
            DestinationKind::TempTopic => "TempTopic",
        };
        let topic = format!("{ADVISORY_PREFIX}Consumer.{kind}.{}", destination.name);
        self.publish_advisory(
            &topic,
            Advisory::Consumer {
                added,
                consumer: consumer.clone(),
                destination: destination.clone(),
            },
            vec![(
                ByteStr::from_static("consumerCount"),
                PropValue::Int(count as i32),
            )],
        );
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
        let name = spec.name.clone();
        if destination.kind.is_temporary() && !self.temps.contains_key(destination) {
            return Err(match destination.kind {
                DestinationKind::TempQueue => {
                    BrokerError::NoSuchTempQueue(destination.name.to_string())
                }
                _ => BrokerError::NoSuchTempTopic(destination.name.to_string()),
            });
        }
        if destination.is_queue() {
            if destination.name.contains(',') {
                return Err(BrokerError::Invalid(format!(
                    "consuming from a composite queue is not supported: {destination}"
                )));
            }
            // A queue deleted meanwhile (destroyDestination) is made afresh.
            let mut spec = spec;
            let queue = loop {
                let queue = self.queue_of(destination);
                match queue.try_add_consumer(spec) {
                    Ok(()) => break queue,
                    Err(back) => spec = back,
                }
            };
            self.advise_consumer(destination, &name, true, queue.consumer_count());
            return Ok(Subscription {
                queue,
                consumer_id,
                name,
                kind: SubKind::Queue,
            });
        }
        let Some((client_id, sub_name)) = durable else {
            return self.subscribe_topics(destination, spec);
        };
        let topic = self.topic(&destination.name);
        let key: (Arc<str>, Arc<str>) = (Arc::from(client_id), Arc::from(sub_name));
        // Subscribing again under the same name to another topic, or with
        // another noLocal, replaces the subscription (as JMS and ActiveMQ do).
        let changed = self.durables.get(&key).is_some_and(|d| {
            d.topic.destination() != destination
                || d.no_local != spec.no_local
                || d.selector.as_ref().map(|s| s.text()) != spec.selector.as_ref().map(|s| s.text())
        });
        if changed {
            match self.remove_durable(client_id, sub_name) {
                Err(BrokerError::DurableInUse) => return Err(BrokerError::DurableInUse),
                _ => tracing::info!(
                    client_id,
                    subscription = sub_name,
                    "durable subscription changed: recreated"
                ),
            }
        }
        let durable = self
            .durables
            .entry(key.clone())
            .or_insert_with(|| {
                tracing::info!(client_id, subscription = sub_name, topic = %destination, "durable subscription created");
                let store_id = self.store.as_ref().map_or(0, |s| s.next_id());
                if let Some(store) = &self.store {
                    store.submit(vec![Op::SubAdd {
                        sub: store_id,
                        client_id: Arc::from(client_id),
                        name: Arc::from(sub_name),
                        topic: destination.clone(),
                        no_local: spec.no_local,
                        selector: spec.selector.as_ref().map(|s| Arc::from(s.text())),
                    }]);
                }
                self.new_durable(
                    store_id,
                    &topic,
                    destination,
                    spec.no_local,
                    spec.connection,
                    spec.selector.clone(),
                )
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
        self.advise_consumer(destination, &name, true, topic.subscription_count());
        Ok(Subscription {
            queue: durable.queue.clone(),
            consumer_id,
            name,
            kind: SubKind::Durable { key },
        })
    }

    /// A non-durable subscription to a topic, or to every topic of a
    /// composite (one private queue attached to each).
    fn subscribe_topics(
        &self,
        destination: &Destination,
        spec: ConsumerSpec,
    ) -> Result<Subscription, BrokerError> {
        let consumer_id = spec.id;
        let name = spec.name.clone();
        let elements = composite_elements(destination);
        if elements.iter().any(|d| d.is_queue()) {
            return Err(BrokerError::Invalid(format!(
                "a topic subscription cannot include queues: {destination}"
            )));
        }
        let sub_id = self.next_id();
        let queue = Arc::new(Queue::new(
            destination.clone(),
            self.config.destination_memory_limit,
            false,
            self.me.clone(),
            None,
        ));
        let mut topics = Vec::with_capacity(elements.len());
        let sub = TopicSub {
            id: sub_id,
            queue: queue.clone(),
            no_local: spec.no_local,
            connection: spec.connection,
            selector: spec.selector.clone(),
            reader: spec.reader.clone(),
        };
        let mut wildcard = false;
        for d in &elements {
            if is_wildcard(&d.name) {
                // Every topic the pattern covers, now and later. Registered
                // first so a topic created meanwhile is not missed (attach
                // ignores a second attachment).
                wildcard = true;
                self.wildcards
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((d.name.clone(), sub.clone()));
                let existing: Vec<Arc<Topic>> = self
                    .topics
                    .iter()
                    .filter(|t| {
                        wildcard_matches(&d.name, t.key()) && self.may_read(&sub, t.value())
                    })
                    .map(|t| t.value().clone())
                    .collect();
                for t in existing {
                    t.attach(sub.clone());
                }
                continue;
            }
            let topic = self.topic(&d.name);
            topic.attach(sub.clone());
            if d.name.as_ref() == TEMP_QUEUE_ADVISORY || d.name.as_ref() == TEMP_TOPIC_ADVISORY {
                for m in self.temp_advisories(&d.name) {
                    queue.send(m);
                }
            }
            for m in self.consumer_advisories(&d.name) {
                queue.send(m);
            }
            topics.push(topic);
        }
        queue.add_consumer(spec);
        for (d, t) in elements.iter().zip(&topics) {
            self.advise_consumer(d, &name, true, t.subscription_count());
        }
        Ok(Subscription {
            queue,
            consumer_id,
            name,
            kind: SubKind::Topic {
                topics,
                sub_id,
                wildcard,
            },
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
        let name = &sub.name;
        sub.queue
            .remove_consumer(sub.consumer_id, delivered_upto, delivered_are_consumed);
        let destination = sub.queue.destination().clone();
        match &sub.kind {
            SubKind::Queue => {
                self.advise_consumer(&destination, name, false, sub.queue.consumer_count());
            }
            SubKind::Topic {
                topics,
                sub_id,
                wildcard,
            } => {
                if *wildcard {
                    self.wildcards
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|(_, s)| s.id != *sub_id);
                    let all: Vec<Arc<Topic>> =
                        self.topics.iter().map(|t| t.value().clone()).collect();
                    for t in all {
                        t.detach(*sub_id);
                    }
                }
                for topic in topics {
                    topic.detach(*sub_id);
                    self.advise_consumer(
                        topic.destination(),
                        name,
                        false,
                        topic.subscription_count(),
                    );
                }
                sub.queue.mark_deleted();
                sub.queue.purge();
            }
            SubKind::Durable { key } => {
                if let Some(d) = self.durables.get(key) {
                    let mut active = d.consumer.lock().unwrap_or_else(|e| e.into_inner());
                    if *active == Some(sub.consumer_id) {
                        *active = None;
                    }
                }
                self.advise_consumer(&destination, name, false, 0);
            }
        }
    }

    /// The queue that holds a durable subscription's messages.
    pub fn durable_queue(&self, client_id: &str, name: &str) -> Option<Arc<Queue>> {
        let key: (Arc<str>, Arc<str>) = (Arc::from(client_id), Arc::from(name));
        self.durables.get(&key).map(|d| d.queue.clone())
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
                d.queue.mark_deleted();
                d.queue.purge();
                if let Some(store) = &self.store {
                    store.submit(vec![Op::SubRemove { sub: d.store_id }]);
                }
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
    /// `removal` records, atomically with the copy's addition, that the
    /// original is gone from where it was.
    pub fn dead_letter(&self, message: &Arc<Message>, cause: DeadCause, removal: Option<Op>) {
        let discard = |why: &str| {
            tracing::debug!(message_id = %message.id, ?cause, "{why}");
            if let (Some(store), Some(op)) = (&self.store, removal.clone()) {
                store.submit(vec![op]);
            }
        };
        if !message.persistent && !self.config.dead_letter_non_persistent {
            return discard("non-persistent message discarded");
        }
        if message.destination.is_queue()
            && *message.destination.name == *self.config.dead_letter_queue
        {
            tracing::warn!(message_id = %message.id, "message on the dead-letter queue discarded");
            return discard("message on the dead-letter queue discarded");
        }
        // As ActiveMQ: same message id, the original destination recorded,
        // the expiration moved to `originalExpiration`, and a failure cause
        // only where one is known (a STOMP NACK gives none).
        let mut copy = Message::clone(message);
        copy.extras_mut().original_destination = Some(message.destination.clone());
        copy.destination = Destination::queue(self.config.dead_letter_queue.as_str());
        if copy.property("originalExpiration").is_none() {
            copy.properties.push((
                ByteStr::from_static("originalExpiration"),
                PropValue::Long(message.expiration),
            ));
        }
        copy.expiration = 0;
        let reason = match &cause {
            DeadCause::Expired => Some(format!(
                "java.lang.Throwable: Message Expired. Expiration:{}",
                message.expiration
            )),
            DeadCause::Poison(reason) => reason.as_deref().map(str::to_string),
        };
        if let Some(reason) = reason {
            copy.properties
                .retain(|(k, _)| k.as_str() != "dlqDeliveryFailureCause");
            copy.properties.push((
                ByteStr::from_static("dlqDeliveryFailureCause"),
                PropValue::String(ByteStr::from(reason)),
            ));
        }
        tracing::debug!(message_id = %message.id, ?cause, "message moved to the dead-letter queue");
        copy.store_id = 0;
        let target = Target::Queue(self.queue(&self.config.dead_letter_queue));
        let (copy, op) = self.persist(&target, copy);
        let stored = op.is_some().then_some(copy.store_id);
        let mut ops: Vec<Op> = op.into_iter().collect();
        ops.extend(removal);
        let Some(store) = &self.store else {
            target.send(copy);
            return;
        };
        // The record is queued before the copy can be consumed (its removal
        // must follow it in the journal).
        let handle = tokio::runtime::Handle::try_current();
        let (Some(id), Ok(rt), Target::Queue(q)) = (stored, handle, &target) else {
            store.submit(ops);
            target.send(copy);
            return;
        };
        let written = store.start_write(ops);
        let q = q.clone();
        target.send(copy);
        // The copy may be paged out at once (the dead-letter queue keeps a
        // backlog in the journal): it can be read back once written, and
        // nothing else would tell the queue so.
        rt.spawn(async move {
            match written.await {
                Ok(()) => q.kick(),
                Err(e) => {
                    // Neither the copy nor the removal of the original is
                    // stored: the original is delivered again after a restart.
                    tracing::warn!(error = %e, "a dead-letter copy could not be stored");
                    q.withdraw(id);
                    // Page-in may have stopped at it: what is behind goes on.
                    q.kick();
                }
            }
        });
    }

    fn persistence(&self, sub: Option<u64>) -> Option<Persistence> {
        self.store.as_ref().map(|store| Persistence {
            store: store.clone(),
            sub,
        })
    }

    fn new_durable(
        &self,
        store_id: u64,
        topic: &Arc<Topic>,
        destination: &Destination,
        no_local: bool,
        connection: u64,
        selector: Option<Arc<selector::Selector>>,
    ) -> Arc<DurableSub> {
        let sub_id = self.next_id();
        let queue = Arc::new(Queue::new(
            destination.clone(),
            self.config.destination_memory_limit,
            true,
            self.me.clone(),
            self.persistence(Some(store_id)),
        ));
        topic.attach(TopicSub {
            id: sub_id,
            queue: queue.clone(),
            no_local,
            connection,
            selector: selector.clone(),
            reader: None,
        });
        Arc::new(DurableSub {
            store_id,
            topic: topic.clone(),
            sub_id,
            queue,
            no_local,
            selector,
            consumer: Mutex::new(None),
        })
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Shares a message, with the journal record that makes it survive if
    /// it needs one (not for a non-persistent message, a temporary
    /// destination, or a topic without durable subscriptions that take it):
    /// the message gets its store id first, and the record holds the same
    /// message as the destinations.
    pub fn persist(&self, target: &Target, mut m: Message) -> (Arc<Message>, Option<Op>) {
        let subs = self.persist_plan(target, &mut m);
        // The journal's record holds the message too: a queue cannot give
        // it buffers of its own later (see `Queue::compacts`).
        if let (Some(_), Target::Queue(q)) = (&subs, target) {
            if q.compacts(&m) {
                m.compact();
            }
        }
        let m = Arc::new(m);
        let op = subs.map(|subs| Op::Add {
            id: m.store_id,
            destination: m.destination.clone(),
            subs,
            message: m.clone(),
        });
        (m, op)
    }

    /// Gives a message that needs a journal record its store id; returns the
    /// durable subscriptions the record is for (empty for a queue).
    fn persist_plan(&self, target: &Target, m: &mut Message) -> Option<Vec<u64>> {
        let store = self.store.as_ref()?;
        if !m.persistent || m.destination.kind.is_temporary() {
            return None;
        }
        let subs = match target {
            Target::Queue(_) => Vec::new(),
            Target::Topic(t) => {
                let subs = t.durable_sub_ids_for(m);
                if subs.is_empty() {
                    return None;
                }
                subs
            }
            // Sent as its elements (see `each_element`).
            Target::Many(_) | Target::Virtual(_) => return None,
        };
        m.store_id = store.next_id();
        Some(subs)
    }

    /// Waits while the store is over its limit (producer flow control), or
    /// fails when it is configured to.
    async fn store_room(&self) -> Result<(), StoreError> {
        match &self.store {
            Some(store) => store.room().await,
            None => Ok(()),
        }
    }

    /// Sends a message: a persistent one is in the journal, durable, before
    /// it is queued (and before the caller confirms it to its producer).
    /// Returns queues over their memory limit, for the producer to wait on.
    pub async fn send(
        &self,
        target: &Target,
        message: Message,
    ) -> Result<Vec<Arc<Queue>>, StoreError> {
        if self.is_scheduler_management(&message) {
            self.manage_jobs(&message).await;
            return Ok(Vec::new());
        }
        if let Some(spec) = self.scheduling(&message)? {
            let (job, op) = self.new_job(message, spec)?;
            let (Some(op), Some(store)) = (op, &self.store) else {
                self.jobs.add(job);
                return Ok(Vec::new());
            };
            self.store_room().await?;
            let written = store.start_write(vec![op]);
            // Scheduled once durable, even if the caller stops waiting: a
            // stored job is never left waiting for a restart.
            let Some(me) = self.me.upgrade() else {
                written.await?;
                self.jobs.add(job);
                return Ok(Vec::new());
            };
            return tokio::spawn(async move {
                written.await?;
                me.jobs.add(job);
                Ok(Vec::new())
            })
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("send did not finish: {e}"))));
        }
        if let Target::Many(_) | Target::Virtual(_) = target {
            // Each element is sent (and stored) as if sent to it alone.
            let mut full = Vec::new();
            for (t, m) in each_element(target, message) {
                full.extend(Box::pin(self.send(&t, m)).await?);
            }
            return Ok(full);
        }
        let (message, op) = self.persist(target, message);
        let Some(op) = op else {
            return Ok(target.send(message));
        };
        self.store_room().await?;
        let Some(store) = &self.store else {
            return Ok(target.send(message));
        };
        match target {
            // Store and dispatch at once: a consumer may have the message
            // (and acknowledge it, which cancels both records) before the
            // journal writes it. The producer is told once it is durable or
            // once it is consumed, whichever comes first.
            Target::Queue(q) => {
                let id = message.store_id;
                let durable = store.start_write_deferred(vec![op]);
                let (over, dispatched) = q.send_dispatched(message);
                store.wake(id, dispatched);
                let full = if over { vec![q.clone()] } else { Vec::new() };
                if let Err(e) = durable.await {
                    // Not stored: take it back if nobody has it yet.
                    q.withdraw(id);
                    return Err(e);
                }
                // If it was paged out, it can be read back now.
                q.kick();
                Ok(full)
            }
            // Published once durable, even if the caller stops waiting
            // (its connection failed): a stored message is never left
            // unpublished until a restart.
            _ => {
                let written = store.start_write(vec![op]);
                let target = target.clone();
                tokio::spawn(async move {
                    written.await?;
                    Ok(target.send(message))
                })
                .await
                .unwrap_or_else(|e| Err(StoreError::Io(format!("send did not finish: {e}"))))
            }
        }
    }

    /// Commits a transaction: its persistent sends and its acknowledgements
    /// go to the journal in one record, then take effect. It runs to the end
    /// even if the caller stops waiting (its connection failed half-way):
    /// what the journal records is always what takes effect.
    pub async fn commit(
        &self,
        tx: transaction::Transaction,
    ) -> Result<Vec<Arc<Queue>>, StoreError> {
        match self.me.upgrade() {
            Some(me) => tokio::spawn(async move { me.commit_now(tx).await })
                .await
                .unwrap_or_else(|e| Err(StoreError::Io(format!("commit did not finish: {e}")))),
            None => self.commit_now(tx).await,
        }
    }

    async fn commit_now(
        &self,
        tx: transaction::Transaction,
    ) -> Result<Vec<Arc<Queue>>, StoreError> {
        let (sends, acks) = tx.into_parts();
        let mut ops = Vec::new();
        // Scheduled sends become jobs, recorded with the rest.
        let mut jobs = Vec::new();
        let mut plain = Vec::new();
        let mut managed = Vec::new();
        for (target, m) in sends {
            if self.is_scheduler_management(&m) {
                managed.push(m);
                continue;
            }
            let job = match self.scheduling(&m) {
                Ok(Some(spec)) => self.new_job(m, spec).map(Some),
                Ok(None) => {
                    plain.push((target, m));
                    Ok(None)
                }
                Err(e) => Err(e),
            };
            match job {
                Ok(Some((job, op))) => {
                    ops.extend(op);
                    jobs.push(job);
                }
                Ok(None) => {}
                Err(e) => {
                    // Nothing of the transaction happens.
                    for (queue, consumer, seqs) in &acks {
                        queue.settle_held(*consumer, seqs, false, false);
                    }
                    return Err(e);
                }
            }
        }
        let sends: Vec<(Target, Arc<Message>)> = plain
            .into_iter()
            .flat_map(|(target, m)| each_element(&target, m))
            .map(|(target, m)| {
                let (m, op) = self.persist(&target, m);
                ops.extend(op);
                (target, m)
            })
            .collect();
        for (queue, consumer, seqs) in &acks {
            ops.extend(queue.held_removals(*consumer, seqs));
        }
        if let (Some(store), false) = (&self.store, ops.is_empty()) {
            let written = match self.store_room().await {
                Ok(()) => store.write(ops).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                // Nothing of the transaction happened: its acknowledgements
                // are undone (the messages are unacknowledged again).
                for (queue, consumer, seqs) in &acks {
                    queue.settle_held(*consumer, seqs, false, false);
                }
                return Err(e);
            }
        }
        let mut full = Vec::new();
        for job in jobs {
            self.jobs.add(job);
        }
        for m in managed {
            self.manage_jobs(&m).await;
        }
        for (target, m) in sends {
            full.extend(target.send(m));
        }
        for (queue, consumer, seqs) in acks {
            queue.settle_held(consumer, &seqs, true, true);
        }
        Ok(full)
    }

    /// Takes the expired messages out of every queue and durable
    /// subscription, consumed or not (run periodically, as ActiveMQ's
    /// expireMessagesPeriod). Returns how many.
    pub fn expire_messages(&self) -> usize {
        let queues: Vec<Arc<Queue>> = self
            .queues
            .iter()
            .map(|q| q.value().clone())
            .chain(self.durables.iter().map(|d| d.value().queue.clone()))
            .collect();
        queues.iter().map(|q| q.expire_pending()).sum()
    }

    /// Resolves when everything recorded so far is durable (a receipt for an
    /// acknowledgement is sent after this).
    pub async fn sync(&self) -> Result<(), StoreError> {
        match &self.store {
            Some(store) => store.barrier().await,
            None => Ok(()),
        }
    }

    /// Rebuilds queues and durable subscriptions from the journal.
    pub fn restore(&self, recovered: Recovered) {
        let mut by_store_id: std::collections::HashMap<u64, Arc<DurableSub>> = Default::default();
        for sub in recovered.subs {
            let topic = self.topic(&sub.topic.name);
            let selector = sub
                .selector
                .as_deref()
                .and_then(|s| selector::Selector::parse(s, false).ok())
                .map(Arc::new);
            let d = self.new_durable(sub.sub, &topic, &sub.topic, sub.no_local, 0, selector);
            self.durables
                .insert((sub.client_id.clone(), sub.name.clone()), d.clone());
            by_store_id.insert(sub.sub, d);
        }
        // The queues made before, messages or not (recorded already).
        for d in &recovered.queues {
            self.make_queue(d, false);
        }
        let mut queued: std::collections::HashMap<Arc<str>, Vec<u64>> = Default::default();
        let jobs_destination = scheduler::jobs_destination();
        let mut jobs = Vec::new();
        for (destination, id) in recovered.queued {
            if destination == jobs_destination {
                jobs.push(id);
                continue;
            }
            queued.entry(destination.name).or_default().push(id);
        }
        self.restore_jobs(&jobs);
        for (name, ids) in queued {
            self.queue(&name).restore_paged(ids);
        }
        // Each durable subscription reads its messages back as it is
        // consumed from, as a queue does.
        let mut owed: std::collections::HashMap<u64, Vec<u64>> = Default::default();
        for (_, subs, id) in recovered.owed {
            for s in subs {
                owed.entry(s).or_default().push(id);
            }
        }
        for (sub, ids) in owed {
            if let Some(d) = by_store_id.get(&sub) {
                d.queue.restore_paged(ids);
            }
        }
    }

    /// Flushes and closes the store (at shutdown, after every connection).
    pub fn close_store(&self) {
        if let Some(store) = &self.store {
            store.close();
        }
    }
}

#[cfg(test)]
mod tests;
