//! STOMP frames ⇄ core messages, as ActiveMQ's STOMP connector maps them.
//!
//! SEND: `content-length` present → a bytes message, absent → a text message;
//! `persistent`, `priority`, `expires`, `correlation-id`, `reply-to` and `type`
//! set the matching message fields; every other header (except `destination`,
//! `receipt`, `transaction`, `content-length`) becomes a string property.
//! MESSAGE: the reverse, with the standard headers ActiveMQ writes.

use crate::broker::destination::{Destination, DestinationKind};
use crate::broker::message::{BodyKind, Message, MessageId, PropValue};
use crate::broker::subscription::Delivery;
use crate::stomp::codec::{put_int, put_int_header, put_known_header, put_text, put_uint};
use crate::stomp::frame::{Frame, Version};
use bytes::{BufMut, BytesMut};
use std::fmt::Write as _;
use std::sync::Arc;

/// A SEND that cannot become a message (a per-frame, non-fatal error).
#[derive(Debug, PartialEq, Eq)]
pub struct MappingError(pub String);

/// Parses a STOMP destination (`/queue/a`, `/topic/a`). As in ActiveMQ, a
/// name without a known prefix is a queue of exactly that name.
pub fn parse_destination(name: &str) -> Result<Destination, MappingError> {
    let name = name.trim();
    match parse_prefixed(name) {
        Some(d) if d.name.is_empty() => Err(MappingError(format!(
            "Invalid destination name: a non-empty name is required: [{name}]"
        ))),
        Some(d) => Ok(d),
        None if name.is_empty() => Err(MappingError(
            "Invalid empty or 'null' Destination header".into(),
        )),
        None => Ok(Destination::queue(name)),
    }
}

fn parse_prefixed(name: &str) -> Option<Destination> {
    if let Some(rest) = name.strip_prefix("/queue/") {
        Some(Destination::queue(rest))
    } else if let Some(rest) = name.strip_prefix("/topic/") {
        Some(Destination::topic(rest))
    } else if let Some(rest) = name.strip_prefix("/remote-temp-queue/") {
        Some(Destination::new(DestinationKind::TempQueue, rest))
    } else {
        name.strip_prefix("/remote-temp-topic/")
            .map(|rest| Destination::new(DestinationKind::TempTopic, rest))
    }
}

/// `/temp-queue/NAME` or `/temp-topic/NAME`: a temporary destination of the
/// sending connection, named by it (the kind and the connection's name).
pub fn temp_name(name: &str) -> Option<(DestinationKind, &str)> {
    if let Some(rest) = name.strip_prefix("/temp-queue/") {
        Some((DestinationKind::TempQueue, rest))
    } else {
        name.strip_prefix("/temp-topic/")
            .map(|rest| (DestinationKind::TempTopic, rest))
    }
}

/// Writes a destination in STOMP form.
pub fn write_destination(out: &mut String, d: &Destination) {
    out.push_str(destination_prefix(d));
    out.push_str(&d.name);
}

fn destination_prefix(d: &Destination) -> &'static str {
    match d.kind {
        DestinationKind::Queue => "/queue/",
        DestinationKind::Topic => "/topic/",
        // As ActiveMQ shows another connection's temporary destinations.
        DestinationKind::TempQueue => "/remote-temp-queue/",
        DestinationKind::TempTopic => "/remote-temp-topic/",
    }
}

pub fn destination_string(d: &Destination) -> String {
    let mut s = String::with_capacity(8 + d.name.len());
    write_destination(&mut s, d);
    s
}

/// Headers of a SEND that are not copied into the message's properties.
fn is_transport_header(name: &str) -> bool {
    matches!(
        name,
        "destination"
            | "receipt"
            | "transaction"
            | "content-length"
            | "persistent"
            | "priority"
            | "expires"
            | "correlation-id"
            | "reply-to"
            | "type"
            | "message-id"
            | "timestamp"
            | "redelivered"
            | "subscription"
            | "ack"
    )
}

/// Builds the core message for a SEND frame.
pub fn message_from_send(
    frame: Frame,
    destination: Destination,
    id: MessageId,
    connection: u64,
) -> Result<Message, MappingError> {
    let mut body_kind = if frame.header("content-length").is_some() {
        BodyKind::Bytes
    } else {
        BodyKind::Text
    };
    // `amq-msg-type` forces the body type; then it and content-length stay as properties.
    let forced = match frame.header("amq-msg-type").map(|v| v.trim()) {
        None => false,
        Some("text") => {
            body_kind = BodyKind::Text;
            true
        }
        Some("bytes") => {
            body_kind = BodyKind::Bytes;
            true
        }
        Some(other) => return Err(MappingError(format!("Unsupported message type '{other}'"))),
    };
    if body_kind == BodyKind::Text && std::str::from_utf8(&frame.body).is_err() {
        body_kind = BodyKind::Bytes;
    }
    let mut message = Message::new(id, destination, body_kind, frame.body);
    message.producer_connection = connection;
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in &frame.headers {
        // Repeated headers: the first one wins.
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name.as_str());
        match name.as_str() {
            "persistent" => message.persistent = value.trim() == "true",
            "priority" => {
                let p: i64 = value
                    .trim()
                    .parse()
                    .map_err(|_| MappingError(format!("Invalid priority header: {value}")))?;
                message.priority = p.clamp(0, 9) as u8;
            }
            "expires" => {
                message.expiration = value
                    .trim()
                    .parse()
                    .map_err(|_| MappingError(format!("Invalid expires header: {value}")))?;
            }
            "timestamp" => {
                if let Ok(t) = value.trim().parse() {
                    message.timestamp = t;
                }
            }
            "correlation-id" => message.extras_mut().correlation_id = Some(value.clone()),
            "type" => message.extras_mut().jms_type = Some(value.clone()),
            // A reply-to without a known prefix stays a plain property, as in ActiveMQ.
            "reply-to" => match parse_prefixed(value.trim()).filter(|d| !d.name.is_empty()) {
                Some(d) => message.extras_mut().reply_to = Some(d),
                None => message
                    .properties
                    .push((name.clone(), PropValue::String(value.clone()))),
            },
            "content-length" if forced => message
                .properties
                .push((name.clone(), PropValue::String(value.clone()))),
            n if is_transport_header(n) => {}
            _ => message
                .properties
                .push((name.clone(), PropValue::String(value.clone()))),
        }
    }
    // Queued messages keep their properties for long: no spare capacity.
    message.properties.shrink_to_fit();
    Ok(message)
}

/// How a subscription acknowledges (the SUBSCRIBE `ack` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

impl AckMode {
    pub fn parse(value: Option<&str>) -> Option<AckMode> {
        match value.map(str::trim) {
            None | Some("auto") => Some(AckMode::Auto),
            Some("client") => Some(AckMode::Client),
            Some("client-individual") => Some(AckMode::ClientIndividual),
            _ => None,
        }
    }
}

/// The ack id of a delivery (the 1.2 `ack` header): `<consumer>-<seq>`.
pub fn write_ack_id(out: &mut String, consumer: u64, seq: u64) {
    let _ = write!(out, "{consumer}-{seq}");
}

pub fn parse_ack_id(id: &str) -> Option<(u64, u64)> {
    let (c, s) = id.split_once('-')?;
    Some((c.parse().ok()?, s.parse().ok()?))
}

/// Encodes a MESSAGE frame for a delivery straight into the output buffer.
/// Returns the body separately when it is large, so the caller can write it
/// without copying it into the buffer.
/// What a connection's writer keeps between MESSAGE frames: scratch space
/// and the last producer id it escaped (consecutive messages mostly share
/// their producer).
#[derive(Default)]
pub struct EncodeMemo {
    scratch: String,
    producer: Option<(Arc<str>, Version, BytesMut)>,
    /// The connection's temporary destinations, shown as it named them.
    pub temps: Arc<TempNames>,
}

/// A connection's temporary destinations: their broker name, and the name
/// the connection gave them (`/temp-queue/replies`). ActiveMQ shows a
/// connection its own temporary destinations by that name, and everyone
/// else's as `/remote-temp-queue/<broker name>`.
#[derive(Default)]
pub struct TempNames(std::sync::Mutex<std::collections::HashMap<Arc<str>, String>>);

impl TempNames {
    pub fn insert(&self, d: &Destination, given: String) {
        self.lock().insert(d.name.clone(), given);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Arc<str>, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EncodeMemo {
    /// A memo for a connection with these temporary destinations.
    pub fn with_temps(temps: Arc<TempNames>) -> Self {
        EncodeMemo {
            temps,
            ..Default::default()
        }
    }

    /// `<producer id>:` as a message-id header value starts, escaped.
    fn producer_prefix(&mut self, producer: &Arc<str>, version: Version) -> &[u8] {
        let fresh = match &self.producer {
            Some((p, v, _)) => !Arc::ptr_eq(p, producer) || *v != version,
            None => true,
        };
        if fresh {
            let mut escaped = BytesMut::with_capacity(producer.len() + 8);
            put_text(&mut escaped, producer, Some(version));
            put_text(&mut escaped, ":", Some(version));
            self.producer = Some((producer.clone(), version, escaped));
        }
        &self.producer.as_ref().expect("just set").2
    }
}

pub fn encode_message(
    out: &mut BytesMut,
    subscription: &str,
    ack_mode: AckMode,
    version: Version,
    delivery: &Delivery,
    memo: &mut EncodeMemo,
    inline_body_limit: usize,
) -> Option<bytes::Bytes> {
    let m = &delivery.message;
    let esc = Some(version);
    out.reserve(256 + m.body.len().min(inline_body_limit));
    out.extend_from_slice(b"MESSAGE\n");
    put_known_header(out, "subscription", subscription, esc);
    // `<producer id>:<sequence>`, the colon escaped as the others are.
    out.extend_from_slice(b"message-id:");
    out.extend_from_slice(memo.producer_prefix(&m.id.producer, version));
    put_uint(out, m.id.seq);
    out.put_u8(b'\n');
    put_destination_header(out, "destination", &m.destination, esc, &memo.temps);
    if ack_mode != AckMode::Auto && version == Version::V1_2 {
        out.extend_from_slice(b"ack:");
        put_uint(out, delivery.consumer);
        out.put_u8(b'-');
        put_uint(out, delivery.seq);
        out.put_u8(b'\n');
    }
    put_int_header(out, "expires", m.expiration);
    put_int_header(out, "priority", m.priority as i64);
    put_int_header(out, "timestamp", m.timestamp);
    if m.persistent {
        put_known_header(out, "persistent", "true", esc);
    }
    if delivery.redelivered() {
        put_known_header(out, "redelivered", "true", esc);
    }
    let extras = m.extras();
    if let Some(c) = &extras.correlation_id {
        put_known_header(out, "correlation-id", c, esc);
    }
    if let Some(r) = &extras.reply_to {
        put_destination_header(out, "reply-to", r, esc, &memo.temps);
    }
    if let Some(t) = &extras.jms_type {
        put_known_header(out, "type", t, esc);
    }
    if let Some(o) = &extras.original_destination {
        put_destination_header(out, "original-destination", o, esc, &memo.temps);
    }
    for (name, value) in &m.properties {
        put_text(out, name, esc);
        out.put_u8(b':');
        match value {
            PropValue::String(s) => put_text(out, s, esc),
            PropValue::Byte(v) => put_int(out, *v as i64),
            PropValue::Short(v) => put_int(out, *v as i64),
            PropValue::Int(v) => put_int(out, *v as i64),
            PropValue::Long(v) => put_int(out, *v),
            other => {
                memo.scratch.clear();
                let _ = write!(memo.scratch, "{other}");
                put_text(out, &memo.scratch, esc);
            }
        }
        out.put_u8(b'\n');
    }
    // A text body goes without content-length, as ActiveMQ sends it, unless it
    // holds a NUL that would end the frame early. Only text and bytes
    // messages have a body in STOMP: JMS map, object and stream messages
    // (in OpenWire's encoding) and plain messages come without one, as
    // ActiveMQ's STOMP connector sends them.
    let body: &[u8] = match m.body_kind {
        BodyKind::Text | BodyKind::Bytes => &m.body,
        BodyKind::Map | BodyKind::Object | BodyKind::Stream | BodyKind::Empty => &[],
    };
    if m.body_kind == BodyKind::Bytes || memchr::memchr(0, body).is_some() {
        put_int_header(out, "content-length", body.len() as i64);
    }
    out.put_u8(b'\n');
    if body.len() > inline_body_limit {
        return Some(m.body.clone());
    }
    out.extend_from_slice(body);
    out.extend_from_slice(b"\0\n");
    None
}

/// A header line naming a destination as STOMP clients write it.
fn put_destination_header(
    out: &mut BytesMut,
    name: &'static str,
    d: &Destination,
    esc: Option<Version>,
    temps: &TempNames,
) {
    out.extend_from_slice(name.as_bytes());
    out.put_u8(b':');
    if d.kind.is_temporary() {
        if let Some(given) = temps.lock().get(&d.name) {
            put_text(out, given, esc);
            out.put_u8(b'\n');
            return;
        }
    }
    out.extend_from_slice(destination_prefix(d).as_bytes());
    put_text(out, &d.name, esc);
    out.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stomp::codec::{Item, Limits, StompCodec};
    use crate::stomp::frame::Command;
    use bytes::Bytes;
    use std::sync::Arc;
    use tokio_util::codec::Decoder;

    fn id() -> MessageId {
        MessageId {
            producer: Arc::from("ID:h-1-2-1:7:-1:1"),
            seq: 3,
        }
    }

    #[test]
    fn destinations() {
        assert_eq!(
            parse_destination("/queue/a.b").unwrap(),
            Destination::queue("a.b")
        );
        assert_eq!(
            parse_destination("/topic/t").unwrap(),
            Destination::topic("t")
        );
        assert_eq!(
            parse_destination("plain").unwrap(),
            Destination::queue("plain")
        );
        assert!(parse_destination("/queue/").is_err());
    }

    #[test]
    fn send_to_message_and_back() {
        let frame = Frame::new(Command::Send)
            .with_header("destination", "/queue/q")
            .with_header("persistent", "true")
            .with_header("priority", "7")
            .with_header("correlation-id", "c1")
            .with_header("reply-to", "/topic/replies")
            .with_header("type", "kind")
            .with_header("custom", "x:y\nz")
            .with_header("custom", "ignored")
            .with_header("receipt", "r1")
            .with_header("content-length", "3")
            .with_body(&b"a\0b"[..]);
        let m = message_from_send(frame, Destination::queue("q"), id(), 9).unwrap();
        assert_eq!(m.body_kind, BodyKind::Bytes);
        assert!(m.persistent);
        assert_eq!(m.priority, 7);
        assert_eq!(m.properties.len(), 1);
        assert_eq!(m.extras().reply_to, Some(Destination::topic("replies")));

        let delivery = Delivery {
            message: Arc::new(m),
            consumer: 5,
            seq: 11,
            redelivery_count: 1,
            group_first: false,
        };
        let mut out = BytesMut::new();
        let big = encode_message(
            &mut out,
            "sub-1",
            AckMode::Client,
            Version::V1_2,
            &delivery,
            &mut EncodeMemo::default(),
            1 << 20,
        );
        assert!(big.is_none());
        let mut codec = StompCodec::new(Limits::default());
        codec.set_version(Version::V1_2);
        let Some(Item::Frame(f)) = codec.decode(&mut out).unwrap() else {
            panic!()
        };
        assert_eq!(f.command, Command::Message);
        assert_eq!(f.header("message-id").unwrap(), "ID:h-1-2-1:7:-1:1:3");
        assert_eq!(f.header("ack").unwrap(), "5-11");
        assert_eq!(f.header("destination").unwrap(), "/queue/q");
        assert_eq!(f.header("redelivered").unwrap(), "true");
        assert_eq!(f.header("persistent").unwrap(), "true");
        assert_eq!(f.header("custom").unwrap(), "x:y\nz");
        assert_eq!(f.header("reply-to").unwrap(), "/topic/replies");
        assert_eq!(f.header("content-length").unwrap(), "3");
        assert_eq!(&f.body[..], b"a\0b");
        assert!(f.header("receipt").is_none());
    }

    /// The MESSAGE frame a delivery should give, built as a generic frame
    /// (every header through the generic encoder's escaping).
    fn reference_message(
        subscription: &str,
        ack_mode: AckMode,
        version: Version,
        d: &Delivery,
    ) -> BytesMut {
        let m = &d.message;
        let mut f = Frame::new(Command::Message)
            .with_header("subscription", subscription)
            .with_header("message-id", m.id.to_string())
            .with_header("destination", destination_string(&m.destination));
        if ack_mode != AckMode::Auto && version == Version::V1_2 {
            f = f.with_header("ack", format!("{}-{}", d.consumer, d.seq));
        }
        f = f
            .with_header("expires", m.expiration.to_string())
            .with_header("priority", m.priority.to_string())
            .with_header("timestamp", m.timestamp.to_string());
        if m.persistent {
            f = f.with_header("persistent", "true");
        }
        if d.redelivered() {
            f = f.with_header("redelivered", "true");
        }
        if let Some(c) = &m.extras().correlation_id {
            f = f.with_header("correlation-id", c.as_str());
        }
        if let Some(r) = &m.extras().reply_to {
            f = f.with_header("reply-to", destination_string(r));
        }
        if let Some(t) = &m.extras().jms_type {
            f = f.with_header("type", t.as_str());
        }
        if let Some(o) = &m.extras().original_destination {
            f = f.with_header("original-destination", destination_string(o));
        }
        for (name, value) in &m.properties {
            f = f.with_header(name.as_str(), value.to_string());
        }
        if m.body_kind != BodyKind::Text || m.body.contains(&0) {
            f = f.with_header("content-length", m.body.len().to_string());
        }
        let mut out = BytesMut::new();
        crate::stomp::codec::encode_frame(&f.with_body(m.body.clone()), version, &mut out);
        out
    }

    #[test]
    fn messages_encode_as_generic_frames_do() {
        use crate::bstr::ByteStr;
        let odd = |n: &str| Destination::queue(n);
        let mut plain = Message::new(
            id(),
            Destination::topic("t"),
            BodyKind::Text,
            Bytes::from("hi"),
        );
        plain.expiration = 0;
        let mut full = Message::new(
            MessageId {
                producer: Arc::from("ID:h\\x\ny\rz-1:7:-1:1"),
                seq: u64::MAX,
            },
            odd("a:b\nc\rd\\e"),
            BodyKind::Bytes,
            Bytes::from(&b"x\0y"[..]),
        );
        full.persistent = true;
        full.priority = 9;
        full.expiration = -1;
        full.timestamp = i64::MIN;
        full.extras_mut().correlation_id = Some(ByteStr::from("c:1\n"));
        full.extras_mut().reply_to = Some(Destination::topic("r:\r"));
        full.extras_mut().jms_type = Some(ByteStr::from("t\\y"));
        full.extras_mut().original_destination = Some(Destination::queue("o"));
        full.properties = vec![
            (
                ByteStr::from("s:x\r"),
                PropValue::String(ByteStr::from("v:\n\\\r")),
            ),
            (ByteStr::from("b"), PropValue::Bool(true)),
            (ByteStr::from("y"), PropValue::Byte(-128)),
            (ByteStr::from("h"), PropValue::Short(i16::MIN)),
            (ByteStr::from("i"), PropValue::Int(-7)),
            (ByteStr::from("l"), PropValue::Long(i64::MIN)),
            (ByteStr::from("l2"), PropValue::Long(0)),
            (ByteStr::from("f"), PropValue::Float(1.5)),
            (ByteStr::from("d"), PropValue::Double(-0.25)),
        ];
        let text_nul = Message::new(id(), odd("q"), BodyKind::Text, Bytes::from(&b"a\0"[..]));
        // One memo throughout, as a connection's writer has: it must notice
        // each change of producer and of version.
        let mut memo = EncodeMemo::default();
        for m in [plain, full, text_nul] {
            let m = Arc::new(m);
            for redelivery_count in [0, 3] {
                let d = Delivery {
                    message: m.clone(),
                    consumer: 42,
                    seq: 1234567,
                    redelivery_count,
                    group_first: false,
                };
                for version in [Version::V1_0, Version::V1_1, Version::V1_2] {
                    for ack in [AckMode::Auto, AckMode::Client, AckMode::ClientIndividual] {
                        let mut out = BytesMut::new();
                        let big =
                            encode_message(&mut out, "s:1", ack, version, &d, &mut memo, 1 << 20);
                        assert!(big.is_none());
                        let want = reference_message("s:1", ack, version, &d);
                        assert_eq!(
                            String::from_utf8_lossy(&out),
                            String::from_utf8_lossy(&want),
                            "{version:?} {ack:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn ack_ids_round_trip() {
        let mut s = String::new();
        write_ack_id(&mut s, 12, 345);
        assert_eq!(parse_ack_id(&s), Some((12, 345)));
        assert_eq!(parse_ack_id("x-1"), None);
    }
}
