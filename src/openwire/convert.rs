//! OpenWire structures ⇄ core values: destinations, ids, messages and
//! advisories. A JMS message becomes the core's protocol-free message on the
//! way in (text decoded from Java's modified UTF-8, compressed bodies
//! inflated) and is rebuilt on the way out.

use crate::broker::destination::{Destination, DestinationKind};
use crate::broker::message::{Advisory, BodyKind, ConsumerName, Message, MessageId, PropValue};
use crate::bstr::ByteStr;
use crate::openwire::codec::FrameWriter;
use crate::openwire::marshal::{Content, MessageFields, MessageParts};
use crate::openwire::primitive_map::{read_map_len, read_typed, write_string};
use crate::openwire::schema::{self, msg};
use crate::openwire::value::{Struct, Throwable, Value};
use crate::openwire::wire::{
    decode_modified_utf8, modified_utf8_len, put_modified_utf8, PutExt, Reader, WireError,
};
use bytes::{BufMut, Bytes};
use std::sync::Arc;

/// A message that cannot be taken in.
#[derive(Debug)]
pub struct ConvertError(pub String);

pub fn destination_from(s: &Struct) -> Option<Destination> {
    let kind = match s.type_id {
        schema::ACTIVEMQ_QUEUE => DestinationKind::Queue,
        schema::ACTIVEMQ_TOPIC => DestinationKind::Topic,
        schema::ACTIVEMQ_TEMP_QUEUE => DestinationKind::TempQueue,
        schema::ACTIVEMQ_TEMP_TOPIC => DestinationKind::TempTopic,
        _ => return None,
    };
    Some(Destination::new(kind, s.str("physicalName")?))
}

pub fn destination_value(d: &Destination) -> Value {
    let type_id = match d.kind {
        DestinationKind::Queue => schema::ACTIVEMQ_QUEUE,
        DestinationKind::Topic => schema::ACTIVEMQ_TOPIC,
        DestinationKind::TempQueue => schema::ACTIVEMQ_TEMP_QUEUE,
        DestinationKind::TempTopic => schema::ACTIVEMQ_TEMP_TOPIC,
    };
    Value::obj(Struct::new(type_id).with("physicalName", Value::str(d.name.as_ref())))
}

/// `connectionId:sessionId:value` of a ProducerId or ConsumerId.
pub fn id_string(s: &Struct) -> String {
    let conn = s.str("connectionId").unwrap_or_default();
    format!("{conn}:{}:{}", s.long("sessionId"), s.long("value"))
}

/// Splits `conn:session:value` (the connection id itself holds colons).
fn split_id(text: &str) -> (&str, i64, i64) {
    let mut parts = text.rsplitn(3, ':');
    let value = parts.next().and_then(|v| v.parse().ok());
    let session = parts.next().and_then(|v| v.parse().ok());
    match (parts.next(), session, value) {
        (Some(conn), Some(s), Some(v)) => (conn, s, v),
        _ => (text, 0, 0),
    }
}

pub fn producer_id_value(text: &str) -> Value {
    let (conn, session, value) = split_id(text);
    Value::obj(
        Struct::new(schema::PRODUCER_ID)
            .with("connectionId", Value::str(conn))
            .with("value", Value::Long(value))
            .with("sessionId", Value::Long(session)),
    )
}

pub fn consumer_id_value(name: &ConsumerName) -> Value {
    Value::obj(
        Struct::new(schema::CONSUMER_ID)
            .with("connectionId", Value::str(name.connection_id.as_ref()))
            .with("sessionId", Value::Long(name.session))
            .with("value", Value::Long(name.value)),
    )
}

pub fn consumer_name(s: &Struct) -> ConsumerName {
    ConsumerName {
        connection_id: Arc::from(s.str("connectionId").unwrap_or_default()),
        session: s.long("sessionId"),
        value: s.long("value"),
    }
}

pub fn throwable(class: &str, message: &str) -> Value {
    Value::Exc(Box::new(Throwable {
        class: Some(class.to_string()),
        message: Some(message.to_string()),
        ..Throwable::default()
    }))
}

/// Bodies may not inflate past this (a decompression bomb is refused).
const MAX_INFLATED: usize = 128 * 1024 * 1024;

/// Inflates a compressed body, to at most `limit` bytes (what the message
/// says it holds, when it says). A result the message keeps is shrunk to
/// its length first: its memory is counted by its length.
fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, ConvertError> {
    miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(data, limit)
        .map_err(|e| ConvertError(format!("cannot inflate a compressed body: {e:?}")))
}

/// The text of the last producer (or consumer) id a connection received:
/// one producer's messages share it (queued messages keep it), and it is not
/// formatted again for each (the marshalling cache hands the same structure
/// back).
#[derive(Default)]
pub struct IdMemo {
    last: Option<(Arc<Struct>, Arc<str>)>,
    /// The last destination read, likewise.
    destination: Option<(Arc<Struct>, Destination)>,
}

impl IdMemo {
    /// The destination a structure names (`None` when it names none).
    pub fn destination(&mut self, v: &Value) -> Option<Destination> {
        let Value::Obj(d) = v else {
            return None;
        };
        if let Some((s, dest)) = &self.destination {
            if Arc::ptr_eq(s, d) || **s == **d {
                return Some(dest.clone());
            }
        }
        let dest = destination_from(d)?;
        self.destination = Some((d.clone(), dest.clone()));
        Some(dest)
    }

    /// `None` when `id` is not a structure.
    pub fn get(&mut self, id: &Value) -> Option<Arc<str>> {
        let Value::Obj(id) = id else {
            return None;
        };
        if let Some((s, t)) = &self.last {
            if Arc::ptr_eq(s, id) || **s == **id {
                return Some(t.clone());
            }
        }
        let t: Arc<str> = Arc::from(id_string(id));
        self.last = Some((id.clone(), t.clone()));
        Some(t)
    }
}

/// Builds the core message for an OpenWire message command.
pub fn message_from_struct(
    s: &Struct,
    connection: u64,
    producers: &mut IdMemo,
) -> Result<Message, ConvertError> {
    let parts = MessageParts::from_struct(s).ok_or_else(|| {
        ConvertError("not a message, or its message id is not a MessageId".into())
    })?;
    message_from_parts(&parts, connection, producers)
}

pub fn message_from_parts(
    p: &MessageParts,
    connection: u64,
    producers: &mut IdMemo,
) -> Result<Message, ConvertError> {
    let destination = producers
        .destination(&p.destination)
        .ok_or_else(|| ConvertError("message without a destination".into()))?;
    let id = match &p.message_id {
        Some(mid) => MessageId {
            producer: producers
                .get(&mid.producer_id)
                .unwrap_or_else(|| Arc::from("")),
            seq: mid.producer_seq as u64,
        },
        None => return Err(ConvertError("message without a message id".into())),
    };
    let compressed = p.compressed;
    let content = p.content.clone();
    // A text message whose text is null, or an object message without an
    // object: the client tells them from empty ones by a null content.
    let null_text = match p.type_id {
        schema::ACTIVEMQ_TEXT_MESSAGE => match &content {
            None => true,
            Some(c) => !compressed && c.len() >= 4 && c[..4] == [0xFF; 4],
        },
        schema::ACTIVEMQ_OBJECT_MESSAGE => content.is_none(),
        _ => false,
    };
    let (body_kind, body) = match p.type_id {
        schema::ACTIVEMQ_TEXT_MESSAGE => {
            let raw = match content {
                Some(c) if compressed => Bytes::from(inflate(&c, MAX_INFLATED)?),
                Some(c) => c,
                None => Bytes::new(),
            };
            let text = if raw.len() >= 4 {
                let n = i32::from_be_bytes(raw[..4].try_into().expect("4 bytes"));
                if n < 0 {
                    Bytes::new()
                } else {
                    let end = (4 + n as usize).min(raw.len());
                    let utf8 = decode_modified_utf8(&raw[4..end])
                        .map_err(|e| ConvertError(format!("bad text body: {e}")))?;
                    Bytes::from(utf8.into_bytes())
                }
            } else {
                Bytes::new()
            };
            (BodyKind::Text, text)
        }
        schema::ACTIVEMQ_BYTES_MESSAGE => {
            let body = match content {
                Some(c) if compressed && c.len() >= 4 => {
                    let n = i32::from_be_bytes(c[..4].try_into().expect("4 bytes")).max(0) as usize;
                    // A little past the declared length, so that the end
                    // of the stream fits; the rest is cut off.
                    let mut v = inflate(&c[4..], n.min(MAX_INFLATED).saturating_add(64))?;
                    v.truncate(n);
                    v.shrink_to_fit();
                    Bytes::from(v)
                }
                Some(c) => c,
                None => Bytes::new(),
            };
            (BodyKind::Bytes, body)
        }
        t @ (schema::ACTIVEMQ_MAP_MESSAGE
        | schema::ACTIVEMQ_OBJECT_MESSAGE
        | schema::ACTIVEMQ_STREAM_MESSAGE) => {
            let kind = match t {
                schema::ACTIVEMQ_MAP_MESSAGE => BodyKind::Map,
                schema::ACTIVEMQ_OBJECT_MESSAGE => BodyKind::Object,
                _ => BodyKind::Stream,
            };
            let body = match content {
                Some(c) if compressed => {
                    let mut v = inflate(&c, MAX_INFLATED)?;
                    v.shrink_to_fit();
                    Bytes::from(v)
                }
                Some(c) => c,
                None => Bytes::new(),
            };
            (kind, body)
        }
        _ => (BodyKind::Empty, Bytes::new()),
    };
    // Whether the body is a slice of the frame (not decoded or inflated):
    // the message keeps the frame then, and its properties can share it.
    let shares_frame = !compressed
        && !body.is_empty()
        && matches!(
            body_kind,
            BodyKind::Bytes | BodyKind::Map | BodyKind::Object | BodyKind::Stream
        );
    let mut m = Message::new(id, destination, body_kind, body);
    m.null_body = null_text;
    m.producer_connection = connection;
    m.persistent = p.persistent;
    m.priority = p.priority.clamp(0, 9) as u8;
    m.expiration = p.expiration;
    m.timestamp = p.timestamp;
    if let Some(c) = &p.correlation_id {
        m.extras_mut().correlation_id = Some(ByteStr::from(c.as_str()));
    }
    if let Some(t) = &p.jms_type {
        m.extras_mut().jms_type = Some(ByteStr::from(t.as_str()));
    }
    if let Some(r) = p.reply_to.as_struct().and_then(destination_from) {
        m.extras_mut().reply_to = Some(r);
    }
    // Sized once: queued messages keep their properties for long.
    let group = p.group_id.is_some() as usize * 2;
    m.properties = match &p.properties {
        Some(b) => decode_properties(b, group, shares_frame)
            .map_err(|e| ConvertError(format!("bad message properties: {e}")))?,
        None => Vec::with_capacity(group),
    };
    if let Some(g) = &p.group_id {
        m.properties.insert(
            0,
            (
                ByteStr::from_static("JMSXGroupID"),
                PropValue::String(ByteStr::from(g.as_str())),
            ),
        );
        m.properties.insert(
            1,
            (
                ByteStr::from_static("JMSXGroupSeq"),
                PropValue::Int(p.group_seq),
            ),
        );
    }
    if let Some(orig) = p
        .original_destination
        .as_struct()
        .and_then(destination_from)
    {
        m.extras_mut().original_destination = Some(orig);
    }
    if m.properties.capacity() > m.properties.len() {
        m.properties.shrink_to_fit(); // some were not JMS property types
    }
    Ok(m)
}

/// Message properties (a primitive map) as the core's property list, with
/// room for `extra` more. Keys and string values are slices of `map` when
/// `share` (the message keeps the frame anyway); otherwise they are copied
/// together into one buffer of just their bytes: one allocation, not one
/// per entry, and nothing else of the map kept. Values that are not JMS
/// property types (null, byte arrays, maps, lists) are left out.
fn decode_properties(
    map: &Bytes,
    extra: usize,
    share: bool,
) -> Result<Vec<(ByteStr, PropValue)>, WireError> {
    let mut r = Reader::over(map);
    let Some(n) = read_map_len(&mut r)? else {
        return Ok(Vec::with_capacity(extra));
    };
    let mut out = Vec::with_capacity(n.min(1024) + extra);
    for _ in 0..n {
        let len = r.u16()? as usize;
        let key = modified_utf8_str(&mut r, len)?;
        let v = match r.u8()? {
            1 => PropValue::Bool(r.bool()?),
            2 => PropValue::Byte(r.i8()?),
            3 => PropValue::Short(r.u16()? as i16), // a char
            4 => PropValue::Short(r.i16()?),
            5 => PropValue::Int(r.i32()?),
            6 => PropValue::Long(r.i64()?),
            7 => PropValue::Double(r.f64()?),
            8 => PropValue::Float(r.f32()?),
            9 => {
                let len = r.u16()? as usize;
                PropValue::String(modified_utf8_str(&mut r, len)?)
            }
            13 => match r.i32()? {
                len if len < 0 => continue,
                len => PropValue::String(modified_utf8_str(&mut r, len as usize)?),
            },
            t => {
                read_typed(&mut r, t, 0)?;
                continue;
            }
        };
        out.push((key, v));
    }
    if !share {
        crate::broker::message::own_property_strings(&mut out);
    }
    Ok(out)
}

/// `len` bytes of modified UTF-8 as a string: a slice of the reader's
/// bytes when they are plain ASCII (the same in both encodings).
fn modified_utf8_str(r: &mut Reader, len: usize) -> Result<ByteStr, WireError> {
    let raw = r.take_bytes(len)?;
    if raw.iter().all(|&b| b != 0 && b < 0x80) {
        return Ok(ByteStr::from_utf8(raw).expect("ASCII"));
    }
    Ok(ByteStr::from(decode_modified_utf8(&raw)?))
}

/// A text body as OpenWire content: i32 length, then modified UTF-8.
fn text_content(body: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(body);
    let n = modified_utf8_len(&text);
    let mut out = Vec::with_capacity(4 + n);
    out.put_i32(n as i32);
    put_modified_utf8(&mut out, &text);
    Bytes::from(out)
}

/// The last destinations and producer ids a connection wrote, as values:
/// consecutive deliveries share them (a clone is a reference count).
#[derive(Default)]
pub struct ValueMemo {
    destinations: Vec<(Destination, Value)>,
    producers: Vec<(Arc<str>, Value)>,
    /// Scratch space for a delivery's marshalled properties.
    properties: Vec<u8>,
}

const MEMO_ENTRIES: usize = 8;

impl ValueMemo {
    pub fn destination(&mut self, d: &Destination) -> Value {
        if let Some((_, v)) = self.destinations.iter().find(|(k, _)| k == d) {
            return v.clone();
        }
        let v = destination_value(d);
        if self.destinations.len() == MEMO_ENTRIES {
            self.destinations.remove(0);
        }
        self.destinations.push((d.clone(), v.clone()));
        v
    }

    pub fn producer(&mut self, id: &Arc<str>) -> Value {
        if let Some((_, v)) = self
            .producers
            .iter()
            .find(|(k, _)| Arc::ptr_eq(k, id) || k == id)
        {
            return v.clone();
        }
        let v = producer_id_value(id);
        if self.producers.len() == MEMO_ENTRIES {
            self.producers.remove(0);
        }
        self.producers.push((id.clone(), v.clone()));
        v
    }
}

/// Writes a delivery's MessageDispatch straight from the core message (the
/// same bytes as encoding `message_to_struct`'s structure in a dispatch).
#[allow(clippy::too_many_arguments)]
pub fn encode_delivery(
    writer: &mut FrameWriter,
    consumer_id: &Value,
    m: &Message,
    redelivery_count: u32,
    group_first: bool,
    broker_seq: u64,
    now: i64,
    memo: &mut ValueMemo,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let producer = memo.producer(&m.id.producer);
    let destination = memo.destination(&m.destination);
    let extras = m.extras();
    let original = match &extras.original_destination {
        Some(o) => memo.destination(o),
        None => Value::Null,
    };
    let reply_to = match &extras.reply_to {
        Some(r) => memo.destination(r),
        None => Value::Null,
    };
    let data_structure = match &extras.advisory {
        Some(a) => advisory_value(a),
        None => Value::Null,
    };
    let mut props = std::mem::take(&mut memo.properties);
    let (group_id, group_seq, has_props) = marshal_properties(&m.properties, &mut props);
    let text;
    let content = match m.body_kind {
        BodyKind::Text | BodyKind::Object if m.null_body => None,
        BodyKind::Text => {
            text = String::from_utf8_lossy(&m.body);
            Some(Content::Text(&text))
        }
        BodyKind::Empty => None,
        BodyKind::Map if m.body.is_empty() => None,
        _ => Some(Content::Raw(&m.body)),
    };
    let fields = MessageFields {
        type_id: message_type(m.body_kind),
        producer_id: &producer,
        destination: &destination,
        original_destination: &original,
        producer_seq: m.id.seq as i64,
        broker_seq: broker_seq as i64,
        group_id,
        group_seq,
        correlation_id: extras.correlation_id.as_deref(),
        persistent: m.persistent,
        expiration: m.expiration,
        priority: m.priority as i8,
        reply_to: &reply_to,
        timestamp: m.timestamp,
        jms_type: extras.jms_type.as_deref(),
        content,
        properties: has_props.then_some(props.as_slice()),
        data_structure: &data_structure,
        redelivery_counter: redelivery_count as i32,
        broker_in_time: m.timestamp,
        broker_out_time: now,
        group_first,
    };
    let result = writer.encode_dispatch(consumer_id, &destination, &fields, out);
    if props.capacity() <= 64 * 1024 {
        memo.properties = props;
    }
    result
}

/// Marshals properties as ActiveMQ's primitive map, but for the JMSX group
/// ones, which are fields of their own. Returns those and whether there is
/// a map (none when there are no other properties or they cannot be
/// marshalled).
fn marshal_properties<'a>(
    properties: &'a [(ByteStr, PropValue)],
    out: &mut Vec<u8>,
) -> (Option<&'a str>, i32, bool) {
    out.clear();
    out.put_i32(0);
    let (mut group_id, mut group_seq, mut n) = (None, 0, 0i32);
    let mut ok = true;
    for (k, v) in properties {
        match (k.as_str(), v) {
            ("JMSXGroupID", PropValue::String(g)) => group_id = Some(g.as_str()),
            ("JMSXGroupSeq", PropValue::Int(s)) => group_seq = *s,
            _ => {
                n += 1;
                ok &= out.put_utf(k.as_str()).is_ok();
                match v {
                    PropValue::Bool(b) => {
                        out.put_u8(1);
                        out.put_u8(*b as u8);
                    }
                    PropValue::Byte(b) => {
                        out.put_u8(2);
                        out.put_i8(*b);
                    }
                    PropValue::Short(x) => {
                        out.put_u8(4);
                        out.put_i16(*x);
                    }
                    PropValue::Int(x) => {
                        out.put_u8(5);
                        out.put_i32(*x);
                    }
                    PropValue::Long(x) => {
                        out.put_u8(6);
                        out.put_i64(*x);
                    }
                    PropValue::Double(x) => {
                        out.put_u8(7);
                        out.put_f64(*x);
                    }
                    PropValue::Float(x) => {
                        out.put_u8(8);
                        out.put_f32(*x);
                    }
                    PropValue::String(x) => ok &= write_string(out, x.as_str()).is_ok(),
                }
            }
        }
    }
    out[..4].copy_from_slice(&n.to_be_bytes());
    (group_id, group_seq, ok && n > 0)
}

fn message_type(kind: BodyKind) -> u8 {
    match kind {
        BodyKind::Text => schema::ACTIVEMQ_TEXT_MESSAGE,
        BodyKind::Bytes => schema::ACTIVEMQ_BYTES_MESSAGE,
        BodyKind::Map => schema::ACTIVEMQ_MAP_MESSAGE,
        BodyKind::Object => schema::ACTIVEMQ_OBJECT_MESSAGE,
        BodyKind::Stream => schema::ACTIVEMQ_STREAM_MESSAGE,
        BodyKind::Empty => schema::ACTIVEMQ_MESSAGE,
    }
}

/// Builds the OpenWire message for a delivery. `broker_seq` becomes the
/// message id's brokerSequenceId, which the client echoes in its acks.
pub fn message_to_struct(
    m: &Message,
    redelivery_count: u32,
    broker_seq: u64,
    now: i64,
    memo: &mut ValueMemo,
) -> Struct {
    let mut s = Struct::new(message_type(m.body_kind));
    let f = &mut s.fields;
    let producer = memo.producer(&m.id.producer);
    f[msg::PRODUCER_ID] = producer.clone();
    f[msg::DESTINATION] = memo.destination(&m.destination);
    f[msg::MESSAGE_ID] = Value::obj(
        Struct::new(schema::MESSAGE_ID)
            .with("producerId", producer)
            .with("producerSequenceId", Value::Long(m.id.seq as i64))
            .with("brokerSequenceId", Value::Long(broker_seq as i64)),
    );
    if let Some(o) = &m.extras().original_destination {
        f[msg::ORIGINAL_DESTINATION] = memo.destination(o);
    }
    f[msg::PERSISTENT] = Value::Bool(m.persistent);
    f[msg::EXPIRATION] = Value::Long(m.expiration);
    f[msg::PRIORITY] = Value::Byte(m.priority as i8);
    f[msg::TIMESTAMP] = Value::Long(m.timestamp);
    f[msg::CORRELATION_ID] = Value::opt_str(m.extras().correlation_id.as_deref());
    f[msg::TYPE] = Value::opt_str(m.extras().jms_type.as_deref());
    if let Some(r) = &m.extras().reply_to {
        f[msg::REPLY_TO] = memo.destination(r);
    }
    f[msg::CONTENT] = match m.body_kind {
        BodyKind::Text | BodyKind::Object if m.null_body => Value::Null,
        BodyKind::Text => Value::Bytes(text_content(&m.body)),
        BodyKind::Empty => Value::Null,
        BodyKind::Map if m.body.is_empty() => Value::Null,
        _ => Value::Bytes(m.body.clone()),
    };
    let mut props = Vec::new();
    let (group_id, group_seq, has_props) = marshal_properties(&m.properties, &mut props);
    f[msg::GROUP_ID] = Value::opt_str(group_id);
    f[msg::GROUP_SEQUENCE] = Value::Int(group_seq);
    if has_props {
        f[msg::PROPERTIES] = Value::Bytes(Bytes::from(props));
    }
    if let Some(a) = &m.extras().advisory {
        f[msg::DATA_STRUCTURE] = advisory_value(a);
    }
    f[msg::REDELIVERY_COUNTER] = Value::Int(redelivery_count as i32);
    f[msg::BROKER_IN_TIME] = Value::Long(m.timestamp);
    f[msg::BROKER_OUT_TIME] = Value::Long(now);
    s
}

fn advisory_value(a: &Advisory) -> Value {
    match a {
        Advisory::TempDestination {
            added,
            destination,
            connection_id,
        } => Value::obj(
            Struct::new(schema::DESTINATION_INFO)
                .with(
                    "connectionId",
                    Value::obj(
                        Struct::new(schema::CONNECTION_ID)
                            .with("value", Value::str(connection_id.as_ref())),
                    ),
                )
                .with("destination", destination_value(destination))
                .with("operationType", Value::Byte(if *added { 0 } else { 1 })),
        ),
        Advisory::Consumer {
            added: true,
            consumer,
            destination,
        } => Value::obj(
            Struct::new(schema::CONSUMER_INFO)
                .with("consumerId", consumer_id_value(consumer))
                .with("destination", destination_value(destination))
                .with("prefetchSize", Value::Int(1000))
                .with("dispatchAsync", Value::Bool(true)),
        ),
        Advisory::Consumer {
            added: false,
            consumer,
            ..
        } => Value::obj(
            Struct::new(schema::REMOVE_INFO)
                .with("objectId", consumer_id_value(consumer))
                .with("lastDeliveredSequenceId", Value::Long(-2)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_decode_to_jms_types_sharing_one_buffer() {
        use crate::openwire::primitive_map::{encode_map, MapValue};
        let map = encode_map(&[
            ("b".into(), MapValue::Bool(true)),
            ("y".into(), MapValue::Byte(-3)),
            ("c".into(), MapValue::Char(65)),
            ("s".into(), MapValue::Short(-300)),
            ("i".into(), MapValue::Int(7)),
            ("l".into(), MapValue::Long(1 << 40)),
            ("f".into(), MapValue::Float(1.5)),
            ("d".into(), MapValue::Double(-2.25)),
            ("str".into(), MapValue::String("plain".into())),
            ("nul\0".into(), MapValue::String("é\0𝄞".into())),
            // Not JMS property types: left out.
            ("null".into(), MapValue::Null),
            ("bytes".into(), MapValue::Bytes(Bytes::from_static(b"xy"))),
            (
                "map".into(),
                MapValue::Map(vec![("k".into(), MapValue::Int(1))]),
            ),
            ("list".into(), MapValue::List(vec![MapValue::Int(1)])),
            ("last".into(), MapValue::Int(9)),
        ])
        .unwrap();
        let want: Vec<(ByteStr, PropValue)> = vec![
            ("b".into(), PropValue::Bool(true)),
            ("y".into(), PropValue::Byte(-3)),
            ("c".into(), PropValue::Short(65)),
            ("s".into(), PropValue::Short(-300)),
            ("i".into(), PropValue::Int(7)),
            ("l".into(), PropValue::Long(1 << 40)),
            ("f".into(), PropValue::Float(1.5)),
            ("d".into(), PropValue::Double(-2.25)),
            ("str".into(), PropValue::String("plain".into())),
            ("nul\0".into(), PropValue::String("é\0𝄞".into())),
            ("last".into(), PropValue::Int(9)),
        ];
        for share in [false, true] {
            let got = decode_properties(&map, 2, share).unwrap();
            assert_eq!(got, want);
            assert!(got.capacity() >= want.len() + 2);
            // Unshared: the strings live in one buffer of just their bytes
            // (the skipped values are not kept); shared: in the map itself.
            let inside = |s: &ByteStr| {
                let p = s.as_bytes().as_ptr() as usize;
                let m = map.as_ptr() as usize;
                p >= m && p < m + map.len()
            };
            // (Keys with a NUL are decoded, never slices.)
            assert!(got
                .iter()
                .all(|(k, _)| inside(k) == (share && !k.contains('\0'))));
            if !share {
                let base = got[0].0.as_bytes().as_ptr();
                let (last, _) = &got[got.len() - 1];
                let span = last.as_bytes().as_ptr() as usize + last.len() - base as usize;
                let strings: usize = got
                    .iter()
                    .map(|(k, v)| {
                        k.len()
                            + if let PropValue::String(s) = v {
                                s.len()
                            } else {
                                0
                            }
                    })
                    .sum();
                assert_eq!(span, strings);
            }
        }
        // Truncated or oversized maps are refused, never panic.
        for cut in 0..map.len() {
            let _ = decode_properties(&map.slice(..cut), 0, cut % 2 == 0);
        }
        assert!(decode_properties(&Bytes::from_static(&[0x7f, 0, 0, 0]), 0, true).is_err());
        assert!(
            decode_properties(&Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]), 0, true)
                .unwrap()
                .is_empty()
        );
    }

    fn sample_messages() -> Vec<Message> {
        let id = |seq| MessageId {
            producer: Arc::from(format!("ID:x-1-2-1:1:1:{}", seq % 3)),
            seq,
        };
        let mut out = Vec::new();
        let mut m = Message::new(
            id(1),
            Destination::queue("q"),
            BodyKind::Text,
            Bytes::from("smile 😀 nul\0 é".as_bytes().to_vec()),
        );
        m.persistent = true;
        m.priority = 7;
        m.extras_mut().correlation_id = Some("c".into());
        m.extras_mut().jms_type = Some("t".into());
        m.expiration = 1 << 40;
        m.timestamp = 1_700_000_000_000;
        m.extras_mut().reply_to = Some(Destination::new(DestinationKind::TempQueue, "ID:x:1"));
        m.properties.push(("n".into(), PropValue::Int(3)));
        m.properties
            .push(("JMSXGroupID".into(), PropValue::String("g".into())));
        m.properties
            .push(("JMSXGroupSeq".into(), PropValue::Int(4)));
        m.properties
            .push(("s".into(), PropValue::String("é".into())));
        m.properties.push(("b".into(), PropValue::Bool(true)));
        m.properties.push(("y".into(), PropValue::Byte(-2)));
        m.properties.push(("h".into(), PropValue::Short(-3)));
        m.properties.push(("l".into(), PropValue::Long(-1)));
        m.properties.push(("f".into(), PropValue::Float(1.5)));
        m.properties.push(("d".into(), PropValue::Double(-2.5)));
        out.push(m);
        let mut m = Message::new(
            id(2),
            Destination::topic("t"),
            BodyKind::Bytes,
            Bytes::from(vec![7u8; 300]),
        );
        m.extras_mut().original_destination = Some(Destination::queue("orig"));
        m.timestamp = 65_535;
        out.push(m);
        let mut m = Message::new(id(3), Destination::queue("q"), BodyKind::Text, Bytes::new());
        m.null_body = true;
        out.push(m);
        out.push(Message::new(
            id(4),
            Destination::queue("q"),
            BodyKind::Empty,
            Bytes::new(),
        ));
        out.push(Message::new(
            id(5),
            Destination::queue("q"),
            BodyKind::Map,
            Bytes::new(),
        ));
        out.push(Message::new(
            id(6),
            Destination::queue("other"),
            BodyKind::Object,
            Bytes::from_static(b"\xac\xed"),
        ));
        let mut m = Message::new(
            id(7),
            Destination::topic("ActiveMQ.Advisory.Consumer.Queue.q"),
            BodyKind::Empty,
            Bytes::new(),
        );
        m.extras_mut().advisory = Some(Arc::new(Advisory::Consumer {
            added: true,
            consumer: ConsumerName {
                connection_id: Arc::from("ID:c-1"),
                session: 1,
                value: 2,
            },
            destination: Destination::queue("q"),
        }));
        out.push(m);
        // Only the group properties: no property map at all.
        let mut m = Message::new(
            id(8),
            Destination::queue("q"),
            BodyKind::Stream,
            Bytes::new(),
        );
        m.properties
            .push(("JMSXGroupID".into(), PropValue::String("g2".into())));
        out.push(m);
        out
    }

    #[test]
    fn deliveries_encode_as_their_structures_do() {
        use crate::openwire::marshal::{decode, Format, ReadCache};
        let consumer = consumer_id_value(&ConsumerName {
            connection_id: Arc::from("ID:c-1"),
            session: 1,
            value: 1,
        });
        for version in [1u8, 2, 3, 6, 9, 10, 12] {
            for tight in [false, true] {
                for cache in [false, true] {
                    let format = Format {
                        version,
                        tight,
                        cache,
                        cache_size: if cache { 1024 } else { 0 },
                        stack_traces: false,
                        size_prefix: true,
                    };
                    let mut generic = FrameWriter::new(format);
                    let mut fast = FrameWriter::new(format);
                    let (mut memo_g, mut memo_f) = (ValueMemo::default(), ValueMemo::default());
                    let mut reader = ReadCache::new(format.cache_size);
                    // Twice over: the second round hits the write cache.
                    for (i, m) in sample_messages()
                        .iter()
                        .chain(&sample_messages())
                        .enumerate()
                    {
                        let seq = i as u64 + 1;
                        let s = Struct::new(schema::MESSAGE_DISPATCH)
                            .with("consumerId", consumer.clone())
                            .with("destination", memo_g.destination(&m.destination))
                            .with(
                                "message",
                                Value::obj(message_to_struct(m, 2, seq, 99, &mut memo_g)),
                            )
                            .with("redeliveryCounter", Value::Int(2));
                        let (mut a, mut b) = (Vec::new(), Vec::new());
                        generic.encode(&s, &mut a).unwrap();
                        encode_delivery(
                            &mut fast,
                            &consumer,
                            m,
                            2,
                            false,
                            seq,
                            99,
                            &mut memo_f,
                            &mut b,
                        )
                        .unwrap();
                        assert_eq!(
                            a, b,
                            "message {i}, version {version}, tight {tight}, cache {cache}"
                        );
                        let (back, _) =
                            decode(&Bytes::from(b[4..].to_vec()), &format, &mut reader).unwrap();
                        if version == 12 {
                            // (Older versions lack some fields: defaults come back.)
                            assert_eq!(back, s);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ids_split_and_join() {
        assert_eq!(split_id("ID:h-1-2-1:3:-1:7"), ("ID:h-1-2-1:3", -1, 7));
        let v = producer_id_value("ID:h-1-2-1:3:2:9");
        assert_eq!(id_string(v.as_struct().unwrap()), "ID:h-1-2-1:3:2:9");
    }

    #[test]
    fn compressed_bytes_bodies_inflate_to_their_declared_length_only() {
        let m = sample_messages().swap_remove(0);
        let mut s = message_to_struct(&m, 0, 1, 0, &mut ValueMemo::default());
        s.type_id = schema::ACTIVEMQ_BYTES_MESSAGE;
        s.set("compressed", Value::Bool(true));
        let compressed = |n: i32, data: &[u8]| {
            let mut c = n.to_be_bytes().to_vec();
            c.extend(miniz_oxide::deflate::compress_to_vec_zlib(data, 6));
            Value::Bytes(Bytes::from(c))
        };
        let body: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        s.set("content", compressed(1000, &body));
        let m = message_from_struct(&s, 9, &mut IdMemo::default()).unwrap();
        assert_eq!(&m.body[..], &body[..]);
        // A bomb: a few bytes declared, megabytes inside. It is refused
        // rather than held (and counted as a few bytes).
        s.set("content", compressed(4, &vec![0u8; 8 << 20]));
        assert!(message_from_struct(&s, 9, &mut IdMemo::default()).is_err());
    }

    #[test]
    fn messages_round_trip_through_the_core() {
        let m = sample_messages().swap_remove(0);
        let s = message_to_struct(&m, 2, 11, 0, &mut ValueMemo::default());
        let back = message_from_struct(&s, 9, &mut IdMemo::default()).unwrap();
        assert_eq!(back.body, m.body);
        assert_eq!(back.id, m.id);
        assert!(back.persistent);
        assert_eq!(back.priority, 7);
        assert_eq!(back.extras().reply_to, m.extras().reply_to);
        assert_eq!(back.property("n"), Some(&PropValue::Int(3)));
        assert_eq!(
            back.property("JMSXGroupID"),
            Some(&PropValue::String("g".into()))
        );
        assert_eq!(s.get("redeliveryCounter"), &Value::Int(2));
        let mid = s.obj("messageId").unwrap();
        assert_eq!(mid.long("brokerSequenceId"), 11);
    }
}
