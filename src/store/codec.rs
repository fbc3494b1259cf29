//! The journal's encoding of core messages and destinations: a compact
//! binary form, versioned by the record kinds that carry it.

use crate::broker::destination::{Destination, DestinationKind};
use crate::broker::message::{BodyKind, Extras, Message, MessageId, PropValue};
use crate::bstr::ByteStr;
use bytes::{BufMut, Bytes};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("corrupt store record: {0}")]
pub struct DecodeError(pub &'static str);

pub struct Cursor<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a Bytes) -> Self {
        Cursor { buf, pos: 0 }
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(DecodeError("truncated"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }
    /// The next length-prefixed bytes, copied: what is decoded (recovered
    /// messages stay queued for long) must not keep the segment it was read
    /// from in memory.
    pub fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
    /// The next length-prefixed bytes, borrowed.
    pub fn raw(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A destination's kind and name, borrowed.
    pub fn raw_destination(&mut self) -> Result<(DestinationKind, &'a str), DecodeError> {
        let kind = self.destination_kind()?;
        let name = std::str::from_utf8(self.raw()?).map_err(|_| DecodeError("invalid UTF-8"))?;
        Ok((kind, name))
    }
    pub fn str(&mut self) -> Result<ByteStr, DecodeError> {
        ByteStr::from_utf8(self.bytes()?).map_err(|_| DecodeError("invalid UTF-8"))
    }
    fn opt_str(&mut self) -> Result<Option<ByteStr>, DecodeError> {
        Ok(match self.u8()? {
            0 => None,
            _ => Some(self.str()?),
        })
    }
    pub fn destination(&mut self) -> Result<Destination, DecodeError> {
        let (kind, name) = self.raw_destination()?;
        Ok(Destination::new(kind, name))
    }
    fn destination_kind(&mut self) -> Result<DestinationKind, DecodeError> {
        Ok(match self.u8()? {
            0 => DestinationKind::Queue,
            1 => DestinationKind::Topic,
            2 => DestinationKind::TempQueue,
            3 => DestinationKind::TempTopic,
            _ => return Err(DecodeError("destination kind")),
        })
    }
    fn opt_destination(&mut self) -> Result<Option<Destination>, DecodeError> {
        Ok(match self.u8()? {
            0 => None,
            _ => Some(self.destination()?),
        })
    }
}

pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.extend_from_slice(b);
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.put_u8(0),
        Some(s) => {
            out.put_u8(1);
            put_bytes(out, s.as_bytes());
        }
    }
}

pub fn put_destination(out: &mut Vec<u8>, d: &Destination) {
    out.put_u8(match d.kind {
        DestinationKind::Queue => 0,
        DestinationKind::Topic => 1,
        DestinationKind::TempQueue => 2,
        DestinationKind::TempTopic => 3,
    });
    put_bytes(out, d.name.as_bytes());
}

fn put_opt_destination(out: &mut Vec<u8>, d: Option<&Destination>) {
    match d {
        None => out.put_u8(0),
        Some(d) => {
            out.put_u8(1);
            put_destination(out, d);
        }
    }
}

pub fn encode_message(out: &mut Vec<u8>, m: &Message) {
    put_bytes(out, m.id.producer.as_bytes());
    out.put_u64_le(m.id.seq);
    put_destination(out, &m.destination);
    out.put_u8(match m.body_kind {
        BodyKind::Text => 0,
        BodyKind::Bytes => 1,
        BodyKind::Map => 2,
        BodyKind::Object => 3,
        BodyKind::Stream => 4,
        BodyKind::Empty => 5,
    });
    out.put_u8(m.persistent as u8 | (m.null_body as u8) << 1);
    out.put_u8(m.priority);
    out.put_i64_le(m.expiration);
    out.put_i64_le(m.timestamp);
    put_opt_str(out, m.extras().correlation_id.as_deref());
    put_opt_destination(out, m.extras().reply_to.as_ref());
    put_opt_str(out, m.extras().jms_type.as_deref());
    put_opt_destination(out, m.extras().original_destination.as_ref());
    out.put_u32_le(m.properties.len() as u32);
    for (k, v) in &m.properties {
        put_bytes(out, k.as_bytes());
        match v {
            PropValue::Bool(b) => {
                out.put_u8(0);
                out.put_u8(*b as u8);
            }
            PropValue::Byte(b) => {
                out.put_u8(1);
                out.put_i8(*b);
            }
            PropValue::Short(x) => {
                out.put_u8(2);
                out.put_i16_le(*x);
            }
            PropValue::Int(x) => {
                out.put_u8(3);
                out.put_i32_le(*x);
            }
            PropValue::Long(x) => {
                out.put_u8(4);
                out.put_i64_le(*x);
            }
            PropValue::Float(x) => {
                out.put_u8(5);
                out.put_f32_le(*x);
            }
            PropValue::Double(x) => {
                out.put_u8(6);
                out.put_f64_le(*x);
            }
            PropValue::String(s) => {
                out.put_u8(7);
                put_bytes(out, s.as_bytes());
            }
        }
    }
    put_bytes(out, &m.body);
}

/// Only the priority of an encoded message (what recovery needs to order a
/// queue whose messages it leaves in the journal).
pub fn peek_priority(c: &mut Cursor) -> Result<u8, DecodeError> {
    c.raw()?; // producer
    c.u64()?; // sequence
    c.raw_destination()?;
    c.u8()?; // body kind
    c.u8()?; // flags
    c.u8()
}

pub fn decode_message(c: &mut Cursor) -> Result<Message, DecodeError> {
    let producer = c.str()?;
    let seq = c.u64()?;
    let destination = c.destination()?;
    let body_kind = match c.u8()? {
        0 => BodyKind::Text,
        1 => BodyKind::Bytes,
        2 => BodyKind::Map,
        3 => BodyKind::Object,
        4 => BodyKind::Stream,
        5 => BodyKind::Empty,
        _ => return Err(DecodeError("body kind")),
    };
    let flags = c.u8()?;
    let priority = c.u8()?;
    let expiration = c.i64()?;
    let timestamp = c.i64()?;
    let correlation_id = c.opt_str()?;
    let reply_to = c.opt_destination()?;
    let jms_type = c.opt_str()?;
    let original_destination = c.opt_destination()?;
    let n = c.u32()? as usize;
    let mut properties = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let k = c.str()?;
        let v = match c.u8()? {
            0 => PropValue::Bool(c.u8()? != 0),
            1 => PropValue::Byte(c.u8()? as i8),
            2 => PropValue::Short(i16::from_le_bytes(c.take(2)?.try_into().expect("2"))),
            3 => PropValue::Int(c.u32()? as i32),
            4 => PropValue::Long(c.i64()?),
            5 => PropValue::Float(f32::from_bits(c.u32()?)),
            6 => PropValue::Double(f64::from_bits(c.u64()?)),
            7 => PropValue::String(c.str()?),
            _ => return Err(DecodeError("property type")),
        };
        properties.push((k, v));
    }
    let body = c.bytes()?;
    let mut m = Message::new(
        MessageId {
            producer: Arc::from(producer.as_str()),
            seq,
        },
        destination,
        body_kind,
        body,
    );
    m.persistent = flags & 1 != 0;
    m.null_body = flags & 2 != 0;
    m.priority = priority;
    m.expiration = expiration;
    m.timestamp = timestamp;
    m.set_extras(Extras {
        correlation_id,
        reply_to,
        jms_type,
        original_destination,
        advisory: None,
    });
    m.properties = properties;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let mut m = Message::new(
            MessageId {
                producer: Arc::from("ID:p-1:1:1"),
                seq: 9,
            },
            Destination::queue("q"),
            BodyKind::Bytes,
            Bytes::from_static(b"\0body"),
        );
        m.persistent = true;
        m.priority = 8;
        m.expiration = 123;
        m.extras_mut().correlation_id = Some("c".into());
        m.extras_mut().reply_to = Some(Destination::topic("r"));
        m.properties = vec![
            ("s".into(), PropValue::String("v".into())),
            ("i".into(), PropValue::Int(-3)),
            ("d".into(), PropValue::Double(1.5)),
            ("b".into(), PropValue::Bool(true)),
        ];
        let mut out = Vec::new();
        encode_message(&mut out, &m);
        let bytes = Bytes::from(out);
        let back = decode_message(&mut Cursor::new(&bytes)).unwrap();
        assert_eq!(back.id, m.id);
        assert_eq!(back.body, m.body);
        assert_eq!(back.properties, m.properties);
        assert_eq!(back.extras().reply_to, m.extras().reply_to);
        assert!(back.persistent);
        assert_eq!(back.priority, 8);
        // Nothing decoded points into the record (the segment read at
        // recovery is freed once replayed).
        let record = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        assert!(!record.contains(&(back.body.as_ptr() as usize)));
        for (k, v) in &back.properties {
            assert!(!record.contains(&(k.as_ptr() as usize)));
            if let PropValue::String(v) = v {
                assert!(!record.contains(&(v.as_ptr() as usize)));
            }
        }
        assert!(decode_message(&mut Cursor::new(&bytes.slice(..10))).is_err());
    }
}
