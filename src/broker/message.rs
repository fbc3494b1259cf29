//! The one internal message model every protocol maps to and from.
//!
//! A [`Message`] is immutable once accepted by the broker and shared as
//! `Arc<Message>` between the destination, every subscription holding it and
//! every outbound queue: its body is `Bytes`, so a fan-out to N subscribers
//! copies nothing. Per-delivery state (redelivery count, delivery sequence)
//! lives beside it in the destination, never inside it.

use crate::broker::destination::Destination;
use crate::bstr::ByteStr;
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;

/// JMS default priority.
pub const DEFAULT_PRIORITY: u8 = 4;

/// What the body holds. The bytes of a body are always in [`Message::body`];
/// the kind says how a protocol should present them (JMS message class,
/// STOMP `content-length` or not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// UTF-8 text (JMS TextMessage; a STOMP SEND without content-length).
    Text,
    /// Opaque bytes (JMS BytesMessage; a STOMP SEND with content-length).
    Bytes,
    /// A JMS MapMessage, in the protocol's own map encoding.
    Map,
    /// A JMS ObjectMessage (Java serialization), opaque to the broker.
    Object,
    /// A JMS StreamMessage, in the protocol's own encoding.
    Stream,
    /// A plain JMS Message with no body.
    Empty,
}

/// A typed message property (JMS property types).
#[derive(Clone, Debug, PartialEq)]
pub enum PropValue {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    String(ByteStr),
}

impl fmt::Display for PropValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropValue::Bool(v) => write!(f, "{v}"),
            PropValue::Byte(v) => write!(f, "{v}"),
            PropValue::Short(v) => write!(f, "{v}"),
            PropValue::Int(v) => write!(f, "{v}"),
            PropValue::Long(v) => write!(f, "{v}"),
            PropValue::Float(v) => write!(f, "{v:?}"),
            PropValue::Double(v) => write!(f, "{v:?}"),
            PropValue::String(v) => f.write_str(v),
        }
    }
}

/// A message id in ActiveMQ's shape: `<producer id>:<sequence>`, where the
/// producer id is `ID:<host>-<port>-<start>-<n>:<conn>:<session>:<producer>`.
/// The producer part is shared by all messages of one producer, so creating an
/// id allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MessageId {
    pub producer: Arc<str>,
    pub seq: u64,
}

impl MessageId {
    /// True when `text` is this id written out (`{producer}:{seq}`).
    pub fn matches(&self, text: &str) -> bool {
        match text.rsplit_once(':') {
            Some((producer, seq)) => {
                producer == &*self.producer && seq.parse::<u64>().ok() == Some(self.seq)
            }
            None => false,
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.producer, self.seq)
    }
}

/// A message as the broker core sees it.
#[derive(Clone, Debug)]
pub struct Message {
    pub id: MessageId,
    pub destination: Destination,
    pub body_kind: BodyKind,
    pub body: Bytes,
    /// Application properties, in the order they were set. STOMP custom headers
    /// become string properties.
    pub properties: Vec<(ByteStr, PropValue)>,
    pub persistent: bool,
    /// 0 (lowest) to 9 (highest).
    pub priority: u8,
    /// Milliseconds since the epoch; 0 = never expires.
    pub expiration: i64,
    /// Milliseconds since the epoch, set when the producer sent it.
    pub timestamp: i64,
    /// The headers most messages do not have, boxed apart (see [`Extras`]):
    /// read them with [`Message::extras`], set them with
    /// [`Message::extras_mut`].
    extras: Option<Box<Extras>>,
    /// Which broker connection produced it (for `noLocal`).
    pub producer_connection: u64,
    /// A JMS text message whose text is null (not empty), or an object message without an object.
    pub null_body: bool,
    /// Its id in the persistent store; 0 when it is not stored.
    pub store_id: u64,
}

/// A message's rarely set headers. Kept out of line: a queued message's
/// footprint is mostly fixed-size parts (a backlog of small messages is
/// dominated by them), and these would add 120 bytes to every one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extras {
    pub correlation_id: Option<ByteStr>,
    pub reply_to: Option<Destination>,
    pub jms_type: Option<ByteStr>,
    /// Set on a copy moved to a dead-letter queue: where it was first sent.
    pub original_destination: Option<Destination>,
    /// What an advisory message is about (ActiveMQ's advisory topics).
    pub advisory: Option<Arc<Advisory>>,
}

impl Extras {
    const NONE: Extras = Extras {
        correlation_id: None,
        reply_to: None,
        jms_type: None,
        original_destination: None,
        advisory: None,
    };

    fn is_empty(&self) -> bool {
        *self == Extras::NONE
    }
}

/// The subject of an advisory message; protocols render it (OpenWire as the
/// message's `dataStructure`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Advisory {
    /// A temporary destination was created (`added`) or deleted.
    TempDestination {
        added: bool,
        destination: Destination,
        connection_id: Arc<str>,
    },
    /// A consumer was added to or removed from a destination.
    Consumer {
        added: bool,
        consumer: ConsumerName,
        destination: Destination,
    },
}

/// A consumer's identity as clients know it (ActiveMQ's ConsumerId parts).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConsumerName {
    pub connection_id: Arc<str>,
    pub session: i64,
    pub value: i64,
}

impl Message {
    /// A message with defaults for every header (non-persistent, priority 4).
    pub fn new(id: MessageId, destination: Destination, body_kind: BodyKind, body: Bytes) -> Self {
        Message {
            id,
            destination,
            body_kind,
            body,
            properties: Vec::new(),
            persistent: false,
            priority: DEFAULT_PRIORITY,
            expiration: 0,
            timestamp: now_millis(),
            extras: None,
            producer_connection: 0,
            null_body: false,
            store_id: 0,
        }
    }

    /// The rarely set headers (all `None` for most messages).
    pub fn extras(&self) -> &Extras {
        self.extras.as_deref().unwrap_or(&Extras::NONE)
    }

    /// The rarely set headers, for setting one.
    pub fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Default::default)
    }

    /// Replaces the rarely set headers (nothing is kept when all are `None`).
    pub fn set_extras(&mut self, extras: Extras) {
        self.extras = (!extras.is_empty()).then(|| Box::new(extras));
    }

    pub fn property(&self, name: &str) -> Option<&PropValue> {
        self.properties
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| v)
    }

    /// True when the message's expiration time has passed.
    pub fn is_expired(&self, now: i64) -> bool {
        self.expiration > 0 && now >= self.expiration
    }

    /// Gives the message buffers of its own. A protocol may hand over a
    /// body, property names and values, or headers that are slices of the
    /// buffer the frame was read into, shared with the other frames of the
    /// same read: cheap for a message that is passed on at once, but one
    /// that waits keeps that whole buffer alive, more than it counts (a
    /// backlog that is consumed out of order, by selectors or priorities,
    /// would keep every buffer any of its messages came in).
    pub fn compact(&mut self) {
        // (An empty slice still holds its buffer.)
        self.body = if self.body.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&self.body)
        };
        own_property_strings(&mut self.properties);
        if let Some(e) = self.extras.as_mut() {
            for s in [&mut e.correlation_id, &mut e.jms_type]
                .into_iter()
                .flatten()
            {
                *s = ByteStr::from(s.as_str());
            }
        }
    }

    /// The memory a queued message holds, for the memory limits: the
    /// shared message and its place in a queue, its body, its property
    /// table and the buffer of their strings (as [`Message::compact`] leaves
    /// them), each allocation with the allocator's own share. The limits
    /// bound the process's memory only if this is close to the truth
    /// (`tests/memory_accounting.rs` measures it against a counting
    /// allocator): a 256 B message with two properties holds ~720 B.
    pub fn memory_size(&self) -> usize {
        use std::mem::size_of;
        // Per allocation: glibc's header and rounding up to 16 bytes.
        const ALLOCATION: usize = 16;
        // The Arc's counts, and the queue's entry for it (order, pointer,
        // redelivery count: 24 bytes) in a VecDeque that grows by doubling.
        const FIXED: usize = size_of::<Message>() + 16 + ALLOCATION + 32;
        // A buffer shared by slices (`Bytes` once cloned or sliced).
        const SHARED: usize = 24 + ALLOCATION;
        let mut size = FIXED;
        if !self.body.is_empty() {
            // (A body of its own is one allocation until it is shared.)
            size += self.body.len() + ALLOCATION;
        }
        if !self.properties.is_empty() {
            let strings: usize = self
                .properties
                .iter()
                .map(|(k, v)| {
                    k.len()
                        + match v {
                            PropValue::String(s) => s.len(),
                            _ => 0,
                        }
                })
                .sum();
            size += self.properties.len() * size_of::<(ByteStr, PropValue)>()
                + ALLOCATION
                + strings
                + ALLOCATION
                + SHARED;
        }
        if let Some(e) = &self.extras {
            let strings: usize = [&e.correlation_id, &e.jms_type]
                .into_iter()
                .flatten()
                .map(|s| s.len() + ALLOCATION + SHARED)
                .sum();
            size += size_of::<Extras>() + ALLOCATION + strings;
        }
        size
    }
}

/// Moves the strings of `props` (names and string values) into one buffer
/// of their own.
pub fn own_property_strings(props: &mut [(ByteStr, PropValue)]) {
    let value_len = |v: &PropValue| match v {
        PropValue::String(s) => s.len(),
        _ => 0,
    };
    let total: usize = props.iter().map(|(k, v)| k.len() + value_len(v)).sum();
    // (Empty strings too: an empty slice still holds its buffer.)
    let mut buf = Vec::with_capacity(total);
    for (k, v) in props.iter() {
        buf.extend_from_slice(k.as_bytes());
        if let PropValue::String(s) = v {
            buf.extend_from_slice(s.as_bytes());
        }
    }
    let buf = ByteStr::from_utf8(Bytes::from(buf)).expect("UTF-8 strings end to end");
    let mut at = 0;
    let mut take = |s: &mut ByteStr| {
        let n = s.len();
        *s = buf.slice(at..at + n);
        at += n;
    };
    for (k, v) in props.iter_mut() {
        take(k);
        if let PropValue::String(s) = v {
            take(s);
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_matches_its_text() {
        let id = MessageId {
            producer: Arc::from("ID:host-1-2-1:3:-1:1"),
            seq: 42,
        };
        let text = id.to_string();
        assert_eq!(text, "ID:host-1-2-1:3:-1:1:42");
        assert!(id.matches(&text));
        assert!(!id.matches("ID:host-1-2-1:3:-1:1:43"));
        assert!(!id.matches("nonsense"));
    }

    #[test]
    fn rare_headers_take_room_only_when_set() {
        // A queued message's fixed part: what a backlog of small messages
        // pays per message besides the body.
        assert!(
            std::mem::size_of::<Message>() <= 176,
            "{}",
            std::mem::size_of::<Message>()
        );
        let mut m = Message::new(
            MessageId {
                producer: Arc::from("p"),
                seq: 1,
            },
            Destination::queue("q"),
            BodyKind::Bytes,
            Bytes::new(),
        );
        assert!(m.extras.is_none());
        m.set_extras(Extras::default());
        assert!(m.extras.is_none(), "all None keeps nothing");
        m.extras_mut().jms_type = Some(ByteStr::from_static("t"));
        assert_eq!(m.extras().jms_type.as_deref(), Some("t"));
        let copy = m.clone();
        assert_eq!(copy.extras().jms_type.as_deref(), Some("t"));
        m.set_extras(Extras::default());
        assert!(m.extras.is_none());
        assert_eq!(m.extras().jms_type, None);
    }
}
