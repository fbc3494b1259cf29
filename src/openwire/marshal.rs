//! The generic OpenWire marshaller: walks a type's declaration (`schema.rs`)
//! to decode or encode it, in tight or loose encoding, for any protocol
//! version, with or without the marshalling cache.

use crate::openwire::schema::{self, Enc};
use crate::openwire::value::{StackFrame, Struct, Throwable, Value};
use crate::openwire::wire::{
    modified_utf8_len, put_loose_string, put_modified_utf8, put_tight_long, put_tight_string,
    BitReader, BitWriter, Reader, Result, WireError,
};
use bytes::{BufMut, Bytes};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// A negotiated wire format (or the initial one used for WireFormatInfo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    pub version: u8,
    pub tight: bool,
    pub cache: bool,
    pub cache_size: usize,
    pub stack_traces: bool,
    pub size_prefix: bool,
}

impl Format {
    /// The format every WireFormatInfo is written in: loose, no cache, prefixed.
    pub const INITIAL: Format = Format {
        version: 12,
        tight: false,
        cache: false,
        cache_size: 0,
        stack_traces: false,
        size_prefix: true,
    };
}

/// The reader's side of the marshalling cache (one per direction).
#[derive(Debug)]
pub struct ReadCache {
    slots: Vec<Value>,
    /// Slots written by the frame being decoded: applied only if it decodes
    /// completely (a frame without size prefix may be retried with more
    /// bytes). One entry per slot, however often the frame writes it.
    pending: Vec<(usize, Value)>,
    /// Per slot, 1 + its entry's index in `pending` (0: not written by this
    /// frame), so that a frame full of cache writes and reads costs each
    /// one a lookup, not a scan.
    pending_at: Vec<u32>,
}

impl ReadCache {
    pub fn new(size: usize) -> Self {
        ReadCache {
            slots: vec![Value::Null; size],
            pending: Vec::new(),
            pending_at: vec![0; size],
        }
    }

    fn slot(&self, index: i16) -> Result<usize> {
        if index < 0 || index as usize >= self.slots.len() {
            return Err(WireError::Invalid(format!(
                "marshalling cache index {index} out of range"
            )));
        }
        Ok(index as usize)
    }

    fn get(&self, index: i16) -> Result<Value> {
        let i = self.slot(index)?;
        match self.pending_at[i] {
            0 => Ok(self.slots[i].clone()),
            at => Ok(self.pending[at as usize - 1].1.clone()),
        }
    }

    fn put(&mut self, index: i16, value: Value) -> Result<()> {
        if index == -1 {
            return Ok(()); // sent inline, not stored
        }
        let i = self.slot(index)?;
        match self.pending_at[i] {
            0 => {
                self.pending.push((i, value));
                self.pending_at[i] = self.pending.len() as u32;
            }
            at => self.pending[at as usize - 1].1 = value,
        }
        Ok(())
    }

    fn commit(&mut self) {
        for (i, v) in self.pending.drain(..) {
            self.slots[i] = v;
            self.pending_at[i] = 0;
        }
    }

    fn rollback(&mut self) {
        for (i, _) in self.pending.drain(..) {
            self.pending_at[i] = 0;
        }
    }
}

/// The writer's side of the marshalling cache, assigning indices as the
/// Java writer does (a wrapping counter, eviction of the oldest entries when
/// fewer than 100 slots are free).
#[derive(Debug)]
pub struct WriteCache {
    map: HashMap<Value, i16, BuildHasherDefault<FxHasher>>,
    slots: Vec<Option<Value>>,
    next: usize,
    next_eviction: usize,
    /// Addresses of recently written shared structures and their indices
    /// (checked against `slots` before use), and where `Null` is.
    recent: [(usize, i16); 8],
    recent_next: usize,
    null_at: Option<i16>,
    /// Scratch space of [`encode`], kept between frames.
    data: Vec<u8>,
    bits: BitWriter,
    block: Vec<u8>,
}

/// A fast hash for the write cache's keys (values this connection writes;
/// a peer can only slow down its own connection's cache).
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(n as u64);
    }

    fn write_u32(&mut self, n: u32) {
        self.add(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

const CACHE_FREE_SPACE: usize = 100;

impl WriteCache {
    pub fn new(size: usize) -> Self {
        WriteCache {
            map: HashMap::default(),
            slots: vec![None; size],
            next: 0,
            next_eviction: 0,
            recent: [(0, 0); 8],
            recent_next: 0,
            null_at: None,
            data: Vec::with_capacity(1024),
            bits: BitWriter::default(),
            block: Vec::with_capacity(64),
        }
    }

    fn sweep(&mut self) {
        let size = self.slots.len();
        while size > 0 && self.map.len() > size.saturating_sub(CACHE_FREE_SPACE) {
            if let Some(old) = self.slots[self.next_eviction].take() {
                self.map.remove(&old);
            }
            self.next_eviction = (self.next_eviction + 1) % size;
        }
    }

    fn add(&mut self, value: &Value) -> i16 {
        let size = self.slots.len();
        let i = self.next;
        self.next = (self.next + 1) % size;
        if self.map.len() < size {
            if let Some(old) = self.slots[i].replace(value.clone()) {
                self.map.remove(&old);
            }
            self.map.insert(value.clone(), i as i16);
            self.remember(value, i as i16);
            i as i16
        } else {
            -1
        }
    }

    /// The index `value` is cached at. The same shared structure written
    /// again (a memoized id or destination) is found by its address,
    /// without hashing it.
    fn lookup(&mut self, value: &Value) -> Option<i16> {
        let slot_holds = |slots: &[Option<Value>], i: i16| match (&slots[i as usize], value) {
            (Some(Value::Obj(a)), Value::Obj(b)) => std::sync::Arc::ptr_eq(a, b),
            (Some(Value::Null), Value::Null) => true,
            _ => false,
        };
        match value {
            Value::Obj(a) => {
                let at = std::sync::Arc::as_ptr(a) as usize;
                if let Some(&(_, i)) = self.recent.iter().find(|(p, _)| *p == at) {
                    if slot_holds(&self.slots, i) {
                        return Some(i);
                    }
                }
            }
            Value::Null => {
                if let Some(i) = self.null_at {
                    if slot_holds(&self.slots, i) {
                        return Some(i);
                    }
                }
            }
            _ => {}
        }
        let i = *self.map.get(value)?;
        self.remember(value, i);
        Some(i)
    }

    fn remember(&mut self, value: &Value, i: i16) {
        match value {
            Value::Obj(a) => {
                let at = std::sync::Arc::as_ptr(a) as usize;
                let n = self.recent.len();
                self.recent[self.recent_next % n] = (at, i);
                self.recent_next = self.recent_next.wrapping_add(1);
            }
            Value::Null => self.null_at = Some(i),
            _ => {}
        }
    }
}

/// Decodes one frame (type byte first, no size prefix) in `format`.
pub fn decode(frame: &Bytes, format: &Format, cache: &mut ReadCache) -> Result<(Struct, usize)> {
    let mut r = Reader::over(frame);
    let res = decode_frame(&mut r, format, cache);
    match res {
        Ok(s) => {
            cache.commit();
            Ok((s, r.position()))
        }
        Err(e) => {
            cache.rollback();
            Err(e)
        }
    }
}

/// A MessageId inside a MessageAck.
#[derive(Debug, Clone, PartialEq)]
pub struct AckedId {
    pub text_view: Option<String>,
    pub producer_id: Value,
    pub producer_seq: i64,
    pub broker_seq: i64,
}

/// A MessageAck, decoded without building structures for it (acks come
/// as often as messages). `to_struct` gives what the generic decoder does.
#[derive(Debug, Clone, PartialEq)]
pub struct AckFrame {
    pub command_id: i32,
    pub response_required: bool,
    pub destination: Value,
    pub transaction_id: Value,
    pub consumer_id: Value,
    pub ack_type: i8,
    pub first: Option<AckedId>,
    pub last: Option<AckedId>,
    pub message_count: i32,
    pub poison_cause: Value,
}

impl AckedId {
    fn to_value(&self) -> Value {
        let mut s = Struct::new(schema::MESSAGE_ID);
        s.fields = vec![
            Value::opt_str(self.text_view.clone()),
            self.producer_id.clone(),
            Value::Long(self.producer_seq),
            Value::Long(self.broker_seq),
        ];
        Value::obj(s)
    }

    fn from_value(v: &Value) -> Option<AckedId> {
        let s = v.as_struct().filter(|s| s.type_id == schema::MESSAGE_ID)?;
        Some(AckedId {
            text_view: s.str("textView").map(str::to_string),
            producer_id: s.get("producerId").clone(),
            producer_seq: s.long("producerSequenceId"),
            broker_seq: s.long("brokerSequenceId"),
        })
    }
}

impl AckFrame {
    pub fn to_struct(&self) -> Struct {
        let id = |m: &Option<AckedId>| m.as_ref().map_or(Value::Null, AckedId::to_value);
        Struct {
            type_id: schema::MESSAGE_ACK,
            fields: vec![
                Value::Int(self.command_id),
                Value::Bool(self.response_required),
                self.destination.clone(),
                self.transaction_id.clone(),
                self.consumer_id.clone(),
                Value::Byte(self.ack_type),
                id(&self.first),
                id(&self.last),
                Value::Int(self.message_count),
                self.poison_cause.clone(),
            ],
        }
    }

    /// `None` when `s` is not a MessageAck of the usual shape.
    pub fn from_struct(s: &Struct) -> Option<AckFrame> {
        if s.type_id != schema::MESSAGE_ACK {
            return None;
        }
        let id = |name: &str| match s.get(name) {
            Value::Null => Some(None),
            v => AckedId::from_value(v).map(Some),
        };
        Some(AckFrame {
            command_id: s.command_id(),
            response_required: s.response_required(),
            destination: s.get("destination").clone(),
            transaction_id: s.get("transactionId").clone(),
            consumer_id: s.get("consumerId").clone(),
            ack_type: s.byte("ackType"),
            first: id("firstMessageId")?,
            last: id("lastMessageId")?,
            message_count: s.int("messageCount"),
            poison_cause: s.get("poisonCause").clone(),
        })
    }
}

/// Decodes a MessageAck frame (type byte first) the fast way. `Ok(None)`
/// when it is not one, or not of the usual shape (a message id that is not
/// a MessageId): the generic [`decode`] takes it then.
pub fn decode_ack(
    frame: &Bytes,
    format: &Format,
    cache: &mut ReadCache,
) -> Result<Option<(AckFrame, usize)>> {
    if frame.first() != Some(&schema::MESSAGE_ACK) {
        return Ok(None);
    }
    fast_decode(frame, format, cache, |_, d| d.ack())
}

/// Runs a fast decoder over a frame: the cache's changes are kept only
/// when it takes the frame (`Ok(Some)`), with the bytes it used.
fn fast_decode<T>(
    frame: &Bytes,
    format: &Format,
    cache: &mut ReadCache,
    f: impl FnOnce(u8, &mut Decoder) -> Result<Option<T>>,
) -> Result<Option<(T, usize)>> {
    let mut r = Reader::over(frame);
    let res = with_decoder(&mut r, format, cache, f);
    match res {
        Ok(Some(v)) => {
            cache.commit();
            Ok(Some((v, r.position())))
        }
        Ok(None) => {
            cache.rollback();
            Ok(None)
        }
        Err(e) => {
            cache.rollback();
            Err(e)
        }
    }
}

/// What the broker takes from a message frame (types 23–29), decoded
/// without building structures for it: messages are the commonest frame.
/// The other fields are read (and the marshalling cache kept) but not kept.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageParts {
    pub type_id: u8,
    pub command_id: i32,
    pub response_required: bool,
    pub producer_id: Value,
    pub destination: Value,
    pub transaction_id: Value,
    pub original_destination: Value,
    /// `None` when absent.
    pub message_id: Option<AckedId>,
    pub group_id: Option<String>,
    pub group_seq: i32,
    pub correlation_id: Option<String>,
    pub persistent: bool,
    pub expiration: i64,
    pub priority: i8,
    pub reply_to: Value,
    pub timestamp: i64,
    pub jms_type: Option<String>,
    pub content: Option<Bytes>,
    pub properties: Option<Bytes>,
    pub compressed: bool,
}

impl MessageParts {
    /// The same parts from a structure the generic decoder gave; `None`
    /// when it is not a message, or its message id is not a MessageId.
    pub fn from_struct(s: &Struct) -> Option<MessageParts> {
        use schema::msg;
        if !schema::is_message(s.type_id) {
            return None;
        }
        let f = &s.fields;
        let string = |i: usize| match &f[i] {
            Value::Str(v) => Some(v.clone()),
            _ => None,
        };
        let bytes = |i: usize| match &f[i] {
            Value::Bytes(b) => Some(b.clone()),
            _ => None,
        };
        let message_id = match &f[msg::MESSAGE_ID] {
            Value::Null => None,
            v => Some(AckedId::from_value(v)?),
        };
        Some(MessageParts {
            type_id: s.type_id,
            command_id: s.command_id(),
            response_required: s.response_required(),
            producer_id: f[msg::PRODUCER_ID].clone(),
            destination: f[msg::DESTINATION].clone(),
            transaction_id: f[msg::TRANSACTION_ID].clone(),
            original_destination: f[msg::ORIGINAL_DESTINATION].clone(),
            message_id,
            group_id: string(msg::GROUP_ID),
            group_seq: match f[msg::GROUP_SEQUENCE] {
                Value::Int(v) => v,
                _ => 0,
            },
            correlation_id: string(msg::CORRELATION_ID),
            persistent: matches!(f[msg::PERSISTENT], Value::Bool(true)),
            expiration: match f[msg::EXPIRATION] {
                Value::Long(v) => v,
                _ => 0,
            },
            priority: match f[msg::PRIORITY] {
                Value::Byte(v) => v,
                _ => 0,
            },
            reply_to: f[msg::REPLY_TO].clone(),
            timestamp: match f[msg::TIMESTAMP] {
                Value::Long(v) => v,
                _ => 0,
            },
            jms_type: string(msg::TYPE),
            content: bytes(msg::CONTENT),
            properties: bytes(msg::PROPERTIES),
            compressed: matches!(f[msg::COMPRESSED], Value::Bool(true)),
        })
    }
}

/// Decodes a message frame (type byte first) the fast way. `Ok(None)`
/// when it is not one, or not of the usual shape (a message id that is not
/// a MessageId): the generic [`decode`] takes it then.
pub fn decode_message(
    frame: &Bytes,
    format: &Format,
    cache: &mut ReadCache,
) -> Result<Option<(MessageParts, usize)>> {
    match frame.first() {
        Some(&t) if schema::is_message(t) => {}
        _ => return Ok(None),
    }
    fast_decode(frame, format, cache, |type_id, d| d.message(type_id))
}

/// Reads a frame's type byte (and, tight, its flag block), then runs `f`
/// with a decoder over the rest.
fn with_decoder<T>(
    r: &mut Reader,
    format: &Format,
    cache: &mut ReadCache,
    f: impl FnOnce(u8, &mut Decoder) -> Result<T>,
) -> Result<T> {
    let type_id = r.u8()?;
    if !format.tight {
        let mut d = Decoder {
            r,
            bits: None,
            format,
            cache,
            depth: 0,
            array_items: 0,
        };
        return f(type_id, &mut d);
    }
    let n = match r.u8()? {
        0xC0 => r.u8()? as usize,
        0x80 => {
            let n = r.i16()?;
            if n < 0 {
                return Err(WireError::Invalid("negative flag block length".into()));
            }
            n as usize
        }
        n => n as usize,
    };
    let block = r.take(n)?;
    let mut bits = BitReader::new(block);
    let mut d = Decoder {
        r,
        bits: Some(&mut bits),
        format,
        cache,
        depth: 0,
        array_items: 0,
    };
    f(type_id, &mut d)
}

fn decode_frame(r: &mut Reader, format: &Format, cache: &mut ReadCache) -> Result<Struct> {
    with_decoder(r, format, cache, |type_id, d| {
        let fields = schema::fields(type_id).ok_or(WireError::UnknownType(type_id))?;
        d.fields(type_id, fields)
    })
}

struct Decoder<'a, 'b, 'c> {
    r: &'a mut Reader<'b>,
    bits: Option<&'a mut BitReader<'c>>,
    format: &'a Format,
    cache: &'a mut ReadCache,
    depth: usize,
    /// Array items decoded so far in this frame.
    array_items: usize,
}

const MAX_DEPTH: usize = 32;
/// Array items one frame may hold, all its arrays together. Real commands
/// carry a few (broker paths); without a limit, a loose-encoded frame of
/// one-byte null items would decode to ~40 times its size in memory.
const MAX_ARRAY_ITEMS: usize = 65_536;

impl Decoder<'_, '_, '_> {
    /// MessageAck's fields after the type byte; `None` when a message id
    /// is not a MessageId.
    fn ack(&mut self) -> Result<Option<AckFrame>> {
        let version = self.format.version;
        let command_id = self.r.i32()?;
        let response_required = self.flag()?;
        let destination = self.field(Enc::CObj)?;
        let transaction_id = self.field(Enc::CObj)?;
        let consumer_id = self.field(Enc::CObj)?;
        let ack_type = self.r.i8()?;
        let Some(first) = self.acked_id()? else {
            return Ok(None);
        };
        let Some(last) = self.acked_id()? else {
            return Ok(None);
        };
        let message_count = self.r.i32()?;
        let poison_cause = if version >= 7 {
            self.field(Enc::Exc)?
        } else {
            Value::Null
        };
        Ok(Some(AckFrame {
            command_id,
            response_required,
            destination,
            transaction_id,
            consumer_id,
            ack_type,
            first,
            last,
            message_count,
            poison_cause,
        }))
    }

    /// A message's fields after the type byte, in the declaration's order
    /// (so every version's fields, as the generic walk reads them); `None`
    /// when the message id is not a MessageId.
    fn message(&mut self, type_id: u8) -> Result<Option<MessageParts>> {
        use schema::msg;
        let fields = schema::fields(type_id).ok_or(WireError::UnknownType(type_id))?;
        let mut m = MessageParts {
            type_id,
            command_id: 0,
            response_required: false,
            producer_id: Value::Null,
            destination: Value::Null,
            transaction_id: Value::Null,
            original_destination: Value::Null,
            message_id: None,
            group_id: None,
            group_seq: 0,
            correlation_id: None,
            persistent: false,
            expiration: 0,
            priority: 0,
            reply_to: Value::Null,
            timestamp: 0,
            jms_type: None,
            content: None,
            properties: None,
            compressed: false,
        };
        for (i, f) in fields.iter().enumerate() {
            if !f.present_in(self.format.version) {
                continue;
            }
            match i {
                msg::COMMAND_ID => m.command_id = self.r.i32()?,
                msg::RESPONSE_REQUIRED => m.response_required = self.flag()?,
                msg::PRODUCER_ID => m.producer_id = self.field(Enc::CObj)?,
                msg::DESTINATION => m.destination = self.field(Enc::CObj)?,
                msg::TRANSACTION_ID => m.transaction_id = self.field(Enc::CObj)?,
                msg::ORIGINAL_DESTINATION => m.original_destination = self.field(Enc::CObj)?,
                msg::MESSAGE_ID => match self.acked_id()? {
                    Some(id) => m.message_id = id,
                    None => return Ok(None),
                },
                msg::GROUP_ID => m.group_id = self.string()?,
                msg::GROUP_SEQUENCE => m.group_seq = self.r.i32()?,
                msg::CORRELATION_ID => m.correlation_id = self.string()?,
                msg::PERSISTENT => m.persistent = self.flag()?,
                msg::EXPIRATION => m.expiration = self.long()?,
                msg::PRIORITY => m.priority = self.r.i8()?,
                msg::REPLY_TO => m.reply_to = self.field(Enc::Obj)?,
                msg::TIMESTAMP => m.timestamp = self.long()?,
                msg::TYPE => m.jms_type = self.string()?,
                msg::CONTENT => m.content = self.bytes()?,
                msg::PROPERTIES => m.properties = self.bytes()?,
                msg::COMPRESSED => m.compressed = self.flag()?,
                // Read, not kept.
                _ => self.skip(f.enc)?,
            }
        }
        Ok(Some(m))
    }

    /// Reads past a field (no value built for the plain kinds).
    fn skip(&mut self, enc: Enc) -> Result<()> {
        match enc {
            Enc::Bool => {
                self.flag()?;
            }
            Enc::Byte => {
                self.r.i8()?;
            }
            Enc::Int => {
                self.r.i32()?;
            }
            Enc::Long => {
                self.long()?;
            }
            Enc::Str => {
                self.string()?;
            }
            Enc::Bytes => {
                self.bytes()?;
            }
            // Structures may go through the cache: the generic way.
            _ => {
                self.field(enc)?;
            }
        }
        Ok(())
    }

    fn long(&mut self) -> Result<i64> {
        match &mut self.bits {
            Some(b) => self.r.tight_long(b),
            None => self.r.i64(),
        }
    }

    /// A byte array field: `None` when absent.
    fn bytes(&mut self) -> Result<Option<Bytes>> {
        if !self.flag()? {
            return Ok(None);
        }
        let n = self.r.len32()?;
        Ok(Some(self.r.take_bytes(n)?))
    }

    /// A nested MessageId: `Some(None)` when absent, `None` when another
    /// type is there.
    fn acked_id(&mut self) -> Result<Option<Option<AckedId>>> {
        if !self.flag()? {
            return Ok(Some(None));
        }
        if self.r.u8()? != schema::MESSAGE_ID {
            return Ok(None);
        }
        // A nested structure, as the generic walk counts it.
        if self.depth + 1 > MAX_DEPTH {
            return Err(WireError::Invalid("structures nested too deeply".into()));
        }
        self.depth += 1;
        let id = self.message_id_fields();
        self.depth -= 1;
        Ok(Some(Some(id?)))
    }

    /// A MessageId's fields, after its type byte.
    fn message_id_fields(&mut self) -> Result<AckedId> {
        let text_view = if self.format.version >= 10 {
            self.string()?
        } else {
            None
        };
        let producer_id = self.field(Enc::CObj)?;
        let long = |d: &mut Self| match &mut d.bits {
            Some(b) => d.r.tight_long(b),
            None => d.r.i64(),
        };
        let producer_seq = long(self)?;
        let broker_seq = long(self)?;
        Ok(AckedId {
            text_view,
            producer_id,
            producer_seq,
            broker_seq,
        })
    }

    fn flag(&mut self) -> Result<bool> {
        match &mut self.bits {
            Some(b) => b.read(),
            None => self.r.bool(),
        }
    }

    fn fields(&mut self, type_id: u8, fields: &'static [schema::Field]) -> Result<Struct> {
        let mut values = Vec::with_capacity(fields.len());
        for f in fields {
            if !f.present_in(self.format.version) {
                values.push(Value::default_for(f.enc));
                continue;
            }
            // Scalars are pushed in place: a `Result<Value>` round trip
            // through the stack costs more than the decoding itself.
            match f.enc {
                Enc::Bool => values.push(Value::Bool(self.flag()?)),
                Enc::Byte => values.push(Value::Byte(self.r.i8()?)),
                Enc::Int => values.push(Value::Int(self.r.i32()?)),
                Enc::Long => {
                    let v = match &mut self.bits {
                        Some(b) => self.r.tight_long(b)?,
                        None => self.r.i64()?,
                    };
                    values.push(Value::Long(v));
                }
                enc => self.field_into(enc, &mut values)?,
            }
        }
        Ok(Struct {
            type_id,
            fields: values,
        })
    }

    /// Decodes a field onto the end of `values` (the common kinds in place).
    fn field_into(&mut self, enc: Enc, values: &mut Vec<Value>) -> Result<()> {
        match enc {
            Enc::Str => {
                let s = self.string()?;
                values.push(match s {
                    Some(s) => Value::Str(s),
                    None => Value::Null,
                });
            }
            Enc::Bytes => {
                if self.flag()? {
                    let n = self.r.len32()?;
                    let b = self.r.take_bytes(n)?;
                    values.push(Value::Bytes(b));
                } else {
                    values.push(Value::Null);
                }
            }
            Enc::CObj if self.format.cache => {
                let new = self.flag()?;
                let index = self.r.i16()?;
                if new {
                    let v = self.nested()?;
                    self.cache.put(index, v.clone())?;
                    values.push(v);
                } else {
                    values.push(self.cache.get(index)?);
                }
            }
            Enc::Obj | Enc::CObj => {
                if !self.flag()? {
                    values.push(Value::Null);
                } else {
                    let s = self.nested_struct()?;
                    values.push(Value::obj(s));
                }
            }
            enc => values.push(self.field(enc)?),
        }
        Ok(())
    }

    fn field(&mut self, enc: Enc) -> Result<Value> {
        Ok(match enc {
            Enc::Bool => Value::Bool(self.flag()?),
            Enc::Byte => Value::Byte(self.r.i8()?),
            Enc::Int => Value::Int(self.r.i32()?),
            Enc::Long => Value::Long(match &mut self.bits {
                Some(b) => self.r.tight_long(b)?,
                None => self.r.i64()?,
            }),
            Enc::Str => Value::opt_str(self.string()?),
            Enc::Bytes => {
                if self.flag()? {
                    let n = self.r.len32()?;
                    Value::Bytes(self.r.take_bytes(n)?)
                } else {
                    Value::Null
                }
            }
            Enc::Raw8 => Value::Raw8(self.r.take(8)?.try_into().expect("8 bytes")),
            Enc::Obj => self.nested()?,
            Enc::CObj => {
                if !self.format.cache {
                    return self.nested();
                }
                let new = self.flag()?;
                let index = self.r.i16()?;
                if new {
                    let v = self.nested()?;
                    self.cache.put(index, v.clone())?;
                    v
                } else {
                    self.cache.get(index)?
                }
            }
            Enc::ObjArr => {
                if self.flag()? {
                    let n = self.r.i16()?;
                    if n < 0 {
                        return Err(WireError::Invalid("negative array length".into()));
                    }
                    self.array_items += n as usize;
                    if self.array_items > MAX_ARRAY_ITEMS {
                        return Err(WireError::Invalid(format!(
                            "more than {MAX_ARRAY_ITEMS} array items in one frame"
                        )));
                    }
                    let mut items = Vec::with_capacity((n as usize).min(64));
                    for _ in 0..n {
                        items.push(self.nested()?);
                    }
                    Value::Arr(items)
                } else {
                    Value::Null
                }
            }
            Enc::Exc => match self.throwable()? {
                Some(t) => Value::Exc(Box::new(t)),
                None => Value::Null,
            },
        })
    }

    fn string(&mut self) -> Result<Option<String>> {
        match &mut self.bits {
            Some(b) => self.r.tight_string(b),
            None => self.r.loose_string(),
        }
    }

    fn nested(&mut self) -> Result<Value> {
        if !self.flag()? {
            return Ok(Value::Null);
        }
        Ok(Value::obj(self.nested_struct()?))
    }

    /// A nested structure whose presence flag was read (and set).
    fn nested_struct(&mut self) -> Result<Struct> {
        let type_id = self.r.u8()?;
        let fields = schema::fields(type_id).ok_or(WireError::UnknownType(type_id))?;
        if self.bits.is_some() && schema::is_marshal_aware(type_id) && self.flag()? {
            return Err(WireError::Invalid(
                "pre-marshalled nested structures are not supported".into(),
            ));
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(WireError::Invalid("structures nested too deeply".into()));
        }
        let s = self.fields(type_id, fields)?;
        self.depth -= 1;
        Ok(s)
    }

    fn throwable(&mut self) -> Result<Option<Throwable>> {
        if !self.flag()? {
            return Ok(None);
        }
        let mut t = Throwable {
            class: self.string()?,
            message: self.string()?,
            ..Throwable::default()
        };
        if self.format.stack_traces {
            let n = self.r.i16()?;
            for _ in 0..n.max(0) {
                t.frames.push(StackFrame {
                    class: self.string()?,
                    method: self.string()?,
                    file: self.string()?,
                    line: self.r.i32()?,
                });
            }
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(WireError::Invalid(
                    "exception causes nested too deeply".into(),
                ));
            }
            t.cause = self.throwable()?.map(Box::new);
            self.depth -= 1;
        }
        Ok(Some(t))
    }
}

/// Encodes one frame in `format`, with its size prefix when the format has one.
pub fn encode(
    s: &Struct,
    format: &Format,
    cache: &mut WriteCache,
    out: &mut Vec<u8>,
) -> Result<()> {
    encode_with(s.type_id, format, cache, out, |e| e.fields(s))
}

/// Runs `fill` with an encoder over the connection's scratch buffers, then
/// writes the frame (size prefix, type, flag block, data) to `out`.
fn encode_with(
    type_id: u8,
    format: &Format,
    cache: &mut WriteCache,
    out: &mut Vec<u8>,
    fill: impl FnOnce(&mut Encoder) -> Result<()>,
) -> Result<()> {
    if format.cache {
        cache.sweep();
    }
    let mut data = std::mem::take(&mut cache.data);
    let mut bits = std::mem::take(&mut cache.bits);
    let mut block = std::mem::take(&mut cache.block);
    data.clear();
    bits.clear();
    block.clear();
    let encoded = fill(&mut Encoder {
        data: &mut data,
        bits: format.tight.then_some(&mut bits),
        format,
        cache,
    });
    if format.tight {
        bits.put_block(&mut block);
    }
    let result = encoded.map(|()| {
        let size = 1 + block.len() + data.len();
        if format.size_prefix {
            out.put_i32(size as i32);
        }
        out.reserve(size);
        out.put_u8(type_id);
        out.extend_from_slice(&block);
        out.extend_from_slice(&data);
    });
    // Large bodies are not kept around.
    if data.capacity() <= 64 * 1024 {
        cache.data = data;
    }
    cache.bits = bits;
    cache.block = block;
    result
}

/// A message's content for [`encode_dispatch`].
#[derive(Debug, Clone, Copy)]
pub enum Content<'a> {
    /// Bytes as they go on the wire.
    Raw(&'a [u8]),
    /// A text body: written as an i32 length and modified UTF-8.
    Text(&'a str),
}

/// The fields of a message delivery, borrowed from the core message (see
/// `convert::dispatch_fields`); structures are shared values.
#[derive(Debug)]
pub struct MessageFields<'a> {
    pub type_id: u8,
    pub producer_id: &'a Value,
    pub destination: &'a Value,
    pub original_destination: &'a Value,
    pub producer_seq: i64,
    pub broker_seq: i64,
    pub group_id: Option<&'a str>,
    pub group_seq: i32,
    pub correlation_id: Option<&'a str>,
    pub persistent: bool,
    pub expiration: i64,
    pub priority: i8,
    pub reply_to: &'a Value,
    pub timestamp: i64,
    pub jms_type: Option<&'a str>,
    pub content: Option<Content<'a>>,
    pub properties: Option<&'a [u8]>,
    pub data_structure: &'a Value,
    pub redelivery_counter: i32,
    pub broker_in_time: i64,
    pub broker_out_time: i64,
    pub group_first: bool,
}

/// Encodes a MessageDispatch of a message straight from its fields, with
/// no intermediate [`Struct`]: the deliveries' hot path. The bytes (and the
/// write cache's state) are those [`encode`] gives for the equivalent
/// structure.
pub fn encode_dispatch(
    consumer_id: &Value,
    destination: &Value,
    m: &MessageFields,
    format: &Format,
    cache: &mut WriteCache,
    out: &mut Vec<u8>,
) -> Result<()> {
    let fields = schema::fields(m.type_id).ok_or(WireError::UnknownType(m.type_id))?;
    if !schema::is_message(m.type_id) {
        return Err(WireError::Invalid(format!(
            "{} is not a message",
            schema::type_name(m.type_id)
        )));
    }
    encode_with(schema::MESSAGE_DISPATCH, format, cache, out, |e| {
        e.dispatch(consumer_id, destination, m, fields)
    })
}

struct Encoder<'a> {
    data: &'a mut Vec<u8>,
    bits: Option<&'a mut BitWriter>,
    format: &'a Format,
    cache: &'a mut WriteCache,
}

fn mismatch(enc: Enc, v: &Value) -> WireError {
    WireError::Invalid(format!("value {v:?} does not fit a {enc:?} field"))
}

impl Encoder<'_> {
    fn flag(&mut self, b: bool) {
        match &mut self.bits {
            Some(bits) => bits.write(b),
            None => self.data.put_u8(b as u8),
        }
    }

    fn fields(&mut self, s: &Struct) -> Result<()> {
        let fields = schema::fields(s.type_id).ok_or(WireError::UnknownType(s.type_id))?;
        if fields.len() != s.fields.len() {
            return Err(WireError::Invalid(format!(
                "{} has {} fields, not {}",
                schema::type_name(s.type_id),
                fields.len(),
                s.fields.len()
            )));
        }
        for (f, v) in fields.iter().zip(&s.fields) {
            if f.present_in(self.format.version) {
                self.field(f.enc, v)?;
            }
        }
        Ok(())
    }

    fn field(&mut self, enc: Enc, v: &Value) -> Result<()> {
        match (enc, v) {
            (Enc::Bool, Value::Bool(b)) => self.flag(*b),
            (Enc::Byte, Value::Byte(b)) => self.data.put_i8(*b),
            (Enc::Int, Value::Int(i)) => self.data.put_i32(*i),
            (Enc::Long, Value::Long(l)) => match &mut self.bits {
                Some(bits) => put_tight_long(self.data, bits, *l),
                None => self.data.put_i64(*l),
            },
            (Enc::Str, Value::Str(_) | Value::Null) => {
                let s = match v {
                    Value::Str(s) => Some(s.as_str()),
                    _ => None,
                };
                self.string(s)?;
            }
            (Enc::Bytes, Value::Null) => self.flag(false),
            (Enc::Bytes, Value::Bytes(b)) => {
                self.flag(true);
                self.data.put_i32(b.len() as i32);
                self.data.extend_from_slice(b);
            }
            (Enc::Raw8, Value::Raw8(b)) => self.data.extend_from_slice(b),
            (Enc::Obj, _) => self.nested(v)?,
            (Enc::CObj, _) => {
                if !self.format.cache {
                    return self.nested(v);
                }
                match self.cache.lookup(v) {
                    Some(index) => {
                        self.flag(false);
                        self.data.put_i16(index);
                    }
                    None => {
                        // As the Java writer: nested values are cached first,
                        // so the outer value gets its index after them.
                        self.flag(true);
                        let at = self.data.len();
                        self.data.put_i16(0);
                        self.nested(v)?;
                        let index = self.cache.add(v);
                        self.data[at..at + 2].copy_from_slice(&index.to_be_bytes());
                    }
                }
            }
            (Enc::ObjArr, Value::Null) => self.flag(false),
            (Enc::ObjArr, Value::Arr(items)) => {
                self.flag(true);
                self.data.put_i16(items.len() as i16);
                for item in items {
                    self.nested(item)?;
                }
            }
            (Enc::Exc, Value::Null) => self.flag(false),
            (Enc::Exc, Value::Exc(t)) => self.throwable(t)?,
            (enc, v) => return Err(mismatch(enc, v)),
        }
        Ok(())
    }

    /// MessageDispatch's fields: commandId, responseRequired, consumerId,
    /// destination, message, redeliveryCounter.
    fn dispatch(
        &mut self,
        consumer_id: &Value,
        destination: &Value,
        m: &MessageFields,
        fields: &'static [schema::Field],
    ) -> Result<()> {
        self.data.put_i32(0);
        self.flag(false);
        self.field(Enc::CObj, consumer_id)?;
        self.field(Enc::CObj, destination)?;
        // The message, nested (and marshal-aware: not pre-marshalled).
        self.flag(true);
        self.data.put_u8(m.type_id);
        if self.bits.is_some() {
            self.flag(false);
        }
        let version = self.format.version;
        for (i, f) in fields.iter().enumerate() {
            if !f.present_in(version) {
                continue;
            }
            match i {
                schema::msg::COMMAND_ID => self.data.put_i32(0),
                schema::msg::RESPONSE_REQUIRED => self.flag(false),
                schema::msg::PRODUCER_ID => self.field(Enc::CObj, m.producer_id)?,
                schema::msg::DESTINATION => self.field(Enc::CObj, m.destination)?,
                schema::msg::ORIGINAL_DESTINATION => {
                    self.field(Enc::CObj, m.original_destination)?
                }
                schema::msg::MESSAGE_ID => self.message_id(m)?,
                schema::msg::GROUP_ID => self.string(m.group_id)?,
                schema::msg::GROUP_SEQUENCE => self.data.put_i32(m.group_seq),
                schema::msg::CORRELATION_ID => self.string(m.correlation_id)?,
                schema::msg::PERSISTENT => self.flag(m.persistent),
                schema::msg::EXPIRATION => self.long(m.expiration),
                schema::msg::PRIORITY => self.data.put_i8(m.priority),
                schema::msg::REPLY_TO => self.nested(m.reply_to)?,
                schema::msg::TIMESTAMP => self.long(m.timestamp),
                schema::msg::TYPE => self.string(m.jms_type)?,
                schema::msg::CONTENT => self.content(m.content),
                schema::msg::PROPERTIES => match m.properties {
                    Some(p) => {
                        self.flag(true);
                        self.data.put_i32(p.len() as i32);
                        self.data.extend_from_slice(p);
                    }
                    None => self.flag(false),
                },
                schema::msg::DATA_STRUCTURE => self.nested(m.data_structure)?,
                schema::msg::REDELIVERY_COUNTER => self.data.put_i32(m.redelivery_counter),
                schema::msg::BROKER_IN_TIME => self.long(m.broker_in_time),
                schema::msg::BROKER_OUT_TIME => self.long(m.broker_out_time),
                schema::msg::GROUP_FIRST_FOR_CONSUMER => self.flag(m.group_first),
                _ => self.field(f.enc, &Value::default_for(f.enc))?,
            }
        }
        self.data.put_i32(m.redelivery_counter);
        Ok(())
    }

    fn message_id(&mut self, m: &MessageFields) -> Result<()> {
        self.flag(true);
        self.data.put_u8(schema::MESSAGE_ID);
        let fields = schema::fields(schema::MESSAGE_ID).expect("a known type");
        let version = self.format.version;
        for f in fields {
            if !f.present_in(version) {
                continue;
            }
            match f.name {
                "producerId" => self.field(Enc::CObj, m.producer_id)?,
                "producerSequenceId" => self.long(m.producer_seq),
                "brokerSequenceId" => self.long(m.broker_seq),
                _ => self.field(f.enc, &Value::default_for(f.enc))?,
            }
        }
        Ok(())
    }

    fn long(&mut self, v: i64) {
        match &mut self.bits {
            Some(bits) => put_tight_long(self.data, bits, v),
            None => self.data.put_i64(v),
        }
    }

    fn content(&mut self, c: Option<Content>) {
        match c {
            None => self.flag(false),
            Some(Content::Raw(b)) => {
                self.flag(true);
                self.data.put_i32(b.len() as i32);
                self.data.extend_from_slice(b);
            }
            Some(Content::Text(t)) => {
                let n = modified_utf8_len(t);
                self.flag(true);
                self.data.put_i32(4 + n as i32);
                self.data.put_i32(n as i32);
                put_modified_utf8(self.data, t);
            }
        }
    }

    fn string(&mut self, s: Option<&str>) -> Result<()> {
        match &mut self.bits {
            Some(bits) => put_tight_string(self.data, bits, s),
            None => put_loose_string(self.data, s),
        }
    }

    fn nested(&mut self, v: &Value) -> Result<()> {
        match v {
            Value::Null => {
                self.flag(false);
                Ok(())
            }
            Value::Obj(s) => {
                self.flag(true);
                self.data.put_u8(s.type_id);
                if self.bits.is_some() && schema::is_marshal_aware(s.type_id) {
                    self.flag(false);
                }
                self.fields(s)
            }
            other => Err(mismatch(Enc::Obj, other)),
        }
    }

    fn throwable(&mut self, t: &Throwable) -> Result<()> {
        self.flag(true);
        self.string(t.class.as_deref())?;
        self.string(t.message.as_deref())?;
        if self.format.stack_traces {
            self.data.put_i16(t.frames.len() as i16);
            for fr in &t.frames {
                self.string(fr.class.as_deref())?;
                self.string(fr.method.as_deref())?;
                self.string(fr.file.as_deref())?;
                self.data.put_i32(fr.line);
            }
            match &t.cause {
                Some(c) => self.throwable(c)?,
                None => self.flag(false),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_writes_slots_once_and_commits_or_rolls_back() {
        let mut c = ReadCache::new(4);
        c.put(1, Value::Int(1)).unwrap();
        c.commit();
        // One frame rewriting the same slot many times keeps one entry.
        for n in 0..10_000 {
            c.put(2, Value::Int(n)).unwrap();
        }
        c.put(1, Value::Int(7)).unwrap();
        assert_eq!(c.pending.len(), 2);
        assert_eq!(c.get(2).unwrap(), Value::Int(9_999));
        assert_eq!(c.get(1).unwrap(), Value::Int(7));
        assert_eq!(c.get(3).unwrap(), Value::Null);
        c.rollback();
        assert_eq!(c.get(1).unwrap(), Value::Int(1));
        assert_eq!(c.get(2).unwrap(), Value::Null);
        c.put(2, Value::Int(5)).unwrap();
        c.put(-1, Value::Int(6)).unwrap();
        c.commit();
        assert_eq!(c.get(2).unwrap(), Value::Int(5));
        assert!(c.get(4).is_err() && c.put(-2, Value::Null).is_err());
        assert!(c.pending_at.iter().all(|&a| a == 0));
    }

    #[test]
    fn a_frame_may_not_hold_more_than_so_many_array_items() {
        let format = Format {
            version: 12,
            ..Format::INITIAL
        };
        let peers = |n: usize| Value::Arr(vec![Value::Null; n]);
        let info = |peers_per: usize, k: usize| {
            let inner: Vec<Value> = (0..k)
                .map(|_| {
                    Value::obj(
                        Struct::new(schema::BROKER_INFO).with("peerBrokerInfos", peers(peers_per)),
                    )
                })
                .collect();
            Struct::new(schema::BROKER_INFO).with("peerBrokerInfos", Value::Arr(inner))
        };
        let decode_it = |s: &Struct| {
            let mut out = Vec::new();
            encode(s, &format, &mut WriteCache::new(0), &mut out).unwrap();
            // Without its size prefix, as the codec hands it over.
            decode(
                &Bytes::copy_from_slice(&out[4..]),
                &format,
                &mut ReadCache::new(0),
            )
        };
        // Two peers of 32 000 nulls each: within the limit.
        let (back, _) = decode_it(&info(32_000, 2)).unwrap();
        assert_eq!(back, info(32_000, 2));
        // Three: refused.
        assert!(matches!(
            decode_it(&info(32_000, 3)),
            Err(WireError::Invalid(_))
        ));
    }
}
