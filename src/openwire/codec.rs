//! OpenWire framing and the WireFormatInfo handshake: a `tokio_util` decoder
//! that reads the first frame in the initial format and every later one in
//! the negotiated format, and the negotiation rules (reference §2).

use crate::openwire::marshal::{self, Format, ReadCache, WriteCache};
use crate::openwire::primitive_map::{decode_map, encode_map, MapValue};
use crate::openwire::schema::{self, WIRE_FORMAT_INFO};
use crate::openwire::value::{Struct, Value};
use crate::openwire::wire::WireError;
use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::Decoder;

pub const MAGIC: [u8; 8] = *b"ActiveMQ";
/// The newest protocol version we speak (ActiveMQ 5.17's).
pub const VERSION: i32 = 12;

#[derive(Debug, Error)]
pub enum CodecError {
    #[error("malformed OpenWire frame: {0}")]
    Wire(#[from] WireError),
    #[error("frame of {size} bytes is over the maximum frame size of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("{0}")]
    Handshake(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A WireFormatInfo's content: the proposed version and options.
#[derive(Clone, Debug, PartialEq)]
pub struct WireFormatInfo {
    pub version: i32,
    pub properties: Vec<(String, MapValue)>,
}

impl WireFormatInfo {
    /// What this broker proposes (ActiveMQ 5.17's broker defaults).
    pub fn broker_proposal(max_frame_size: u64, max_inactivity_ms: i64) -> Self {
        let s = |v: &str| MapValue::String(v.to_string());
        WireFormatInfo {
            version: VERSION,
            properties: vec![
                ("StackTraceEnabled".into(), MapValue::Bool(true)),
                (
                    "PlatformDetails".into(),
                    s(concat!("ferromq ", env!("CARGO_PKG_VERSION"))),
                ),
                ("CacheEnabled".into(), MapValue::Bool(true)),
                ("TcpNoDelayEnabled".into(), MapValue::Bool(true)),
                ("SizePrefixDisabled".into(), MapValue::Bool(false)),
                ("CacheSize".into(), MapValue::Int(1024)),
                ("ProviderName".into(), s("ActiveMQ")),
                ("TightEncodingEnabled".into(), MapValue::Bool(true)),
                (
                    "MaxFrameSize".into(),
                    MapValue::Long(max_frame_size.min(i64::MAX as u64) as i64),
                ),
                (
                    "MaxInactivityDuration".into(),
                    MapValue::Long(max_inactivity_ms),
                ),
                (
                    "MaxInactivityDurationInitalDelay".into(),
                    MapValue::Long(10_000),
                ),
                ("MaxFrameSizeEnabled".into(), MapValue::Bool(true)),
                ("ProviderVersion".into(), s("5.17.2")),
            ],
        }
    }

    pub fn from_struct(s: &Struct) -> Result<Self, CodecError> {
        if s.type_id != WIRE_FORMAT_INFO {
            return Err(CodecError::Handshake(format!(
                "expected WireFormatInfo first, got type {}",
                s.type_id
            )));
        }
        if s.get("magic") != &Value::Raw8(MAGIC) {
            return Err(CodecError::Handshake("bad WireFormatInfo magic".into()));
        }
        let properties = match s.bytes("marshalledProperties") {
            Some(b) => decode_map(b)?.unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(WireFormatInfo {
            version: s.int("version"),
            properties,
        })
    }

    pub fn to_struct(&self) -> Result<Struct, CodecError> {
        Ok(Struct::new(WIRE_FORMAT_INFO)
            .with("magic", Value::Raw8(MAGIC))
            .with("version", Value::Int(self.version))
            .with(
                "marshalledProperties",
                Value::Bytes(encode_map(&self.properties)?),
            ))
    }

    fn prop(&self, key: &str) -> Option<&MapValue> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// A boolean option; absent counts as false.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.prop(key), Some(MapValue::Bool(true)))
    }

    /// A numeric option; absent counts as 0.
    pub fn number(&self, key: &str) -> i64 {
        match self.prop(key) {
            Some(MapValue::Int(v)) => *v as i64,
            Some(MapValue::Long(v)) => *v,
            Some(MapValue::Short(v)) => *v as i64,
            _ => 0,
        }
    }

    pub fn text(&self, key: &str) -> Option<&str> {
        match self.prop(key) {
            Some(MapValue::String(s)) => Some(s),
            _ => None,
        }
    }
}

/// The result of a handshake, computed the same way by both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub format: Format,
    pub max_frame_size: u64,
    /// 0 disables inactivity monitoring.
    pub max_inactivity_ms: i64,
    pub initial_delay_ms: i64,
}

fn min_positive(a: i64, b: i64) -> i64 {
    match (a > 0, b > 0) {
        (true, true) => a.min(b),
        (true, false) => a,
        (false, true) => b,
        (false, false) => 0,
    }
}

pub fn negotiate(ours: &WireFormatInfo, theirs: &WireFormatInfo) -> Result<Negotiated, CodecError> {
    let version = min_positive(ours.version as i64, theirs.version as i64);
    if version < 1 {
        return Err(CodecError::Handshake(format!(
            "unsupported OpenWire version {}",
            theirs.version
        )));
    }
    let both = |k: &str| ours.flag(k) && theirs.flag(k);
    let cache = both("CacheEnabled");
    let mut cache_size = ours.number("CacheSize").min(theirs.number("CacheSize"));
    if cache_size <= 0 {
        cache_size = 16383;
    }
    let inactivity = |k: &str| {
        let (a, b) = (ours.number(k), theirs.number(k));
        if a <= 0 || b <= 0 {
            0
        } else {
            a.min(b)
        }
    };
    Ok(Negotiated {
        format: Format {
            version: version.min(VERSION as i64) as u8,
            tight: both("TightEncodingEnabled"),
            cache,
            cache_size: if cache {
                cache_size.min(32767) as usize
            } else {
                0
            },
            stack_traces: both("StackTraceEnabled"),
            size_prefix: !both("SizePrefixDisabled"),
        },
        max_frame_size: min_positive(ours.number("MaxFrameSize"), theirs.number("MaxFrameSize"))
            as u64,
        max_inactivity_ms: inactivity("MaxInactivityDuration"),
        initial_delay_ms: min_positive(
            ours.number("MaxInactivityDurationInitalDelay"),
            theirs.number("MaxInactivityDurationInitalDelay"),
        ),
    })
}

/// A decoded frame: a structure, or (once [`OpenWireCodec::fast_paths`]
/// is on) a MessageAck or a message decoded without one.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Struct(Struct),
    Ack(Box<marshal::AckFrame>),
    Message(Box<marshal::MessageParts>),
}

impl Inbound {
    /// The structure the generic decoder gives for this frame; `None` for
    /// a message from the fast path (which keeps only part of it).
    pub fn into_struct(self) -> Option<Struct> {
        match self {
            Inbound::Struct(s) => Some(s),
            Inbound::Ack(a) => Some(a.to_struct()),
            Inbound::Message(_) => None,
        }
    }
}

/// Decodes OpenWire frames: the first in the initial format, the rest in
/// the format set with [`OpenWireCodec::negotiated`].
#[derive(Debug)]
pub struct OpenWireCodec {
    format: Format,
    cache: ReadCache,
    max_frame_size: u64,
    fast_paths: bool,
    /// Without size prefixes: the buffer length the last attempt needed at
    /// least, so that a frame trickling in is not decoded again from the
    /// start on every read, only once more bytes can make a difference.
    retry_at: usize,
}

impl OpenWireCodec {
    pub fn new(max_frame_size: u64) -> Self {
        OpenWireCodec {
            format: Format::INITIAL,
            cache: ReadCache::new(0),
            max_frame_size,
            fast_paths: false,
            retry_at: 0,
        }
    }

    /// MessageAcks come as [`Inbound::Ack`] and messages as
    /// [`Inbound::Message`] from now on.
    pub fn fast_paths(&mut self, on: bool) {
        self.fast_paths = on;
    }

    /// Switches to the negotiated format for every later frame.
    pub fn negotiated(&mut self, n: &Negotiated) {
        self.format = n.format;
        self.cache = ReadCache::new(n.format.cache_size);
        self.max_frame_size = self.max_frame_size.min(n.max_frame_size.max(1));
    }

    pub fn format(&self) -> Format {
        self.format
    }
}

impl Decoder for OpenWireCodec {
    type Item = Inbound;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if self.format.size_prefix {
            if buf.len() < 4 {
                return Ok(None);
            }
            let size = i32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
            if size < 1 {
                return Err(WireError::Invalid(format!("frame size {size}")).into());
            }
            // Refuse an oversize frame before buffering it.
            if size as u64 > self.max_frame_size {
                return Err(CodecError::TooLarge {
                    size: size as u64,
                    max: self.max_frame_size,
                });
            }
            let total = 4 + size as usize;
            if buf.len() < total {
                buf.reserve(total - buf.len());
                return Ok(None);
            }
            let frame = buf.split_to(total).freeze().slice(4..);
            let type_id = frame.first().copied().unwrap_or(0);
            let mut fast = None;
            if self.fast_paths {
                if type_id == schema::MESSAGE_ACK {
                    fast = marshal::decode_ack(&frame, &self.format, &mut self.cache)?
                        .map(|(a, used)| (Inbound::Ack(Box::new(a)), used));
                } else if schema::is_message(type_id) {
                    fast = marshal::decode_message(&frame, &self.format, &mut self.cache)?
                        .map(|(m, used)| (Inbound::Message(Box::new(m)), used));
                }
            }
            let (item, used) = match fast {
                Some(f) => f,
                None => {
                    let (s, used) = marshal::decode(&frame, &self.format, &mut self.cache)?;
                    (Inbound::Struct(s), used)
                }
            };
            if used != frame.len() {
                return Err(WireError::Invalid(format!(
                    "{} bytes left over after a {} frame",
                    frame.len() - used,
                    schema::type_name(type_id)
                ))
                .into());
            }
            return Ok(Some(item));
        }
        // No size prefix: the frame ends where its last field does.
        if buf.is_empty() {
            return Ok(None);
        }
        if buf.len() < self.retry_at {
            return Ok(None);
        }
        let bytes = Bytes::copy_from_slice(buf);
        match marshal::decode(&bytes, &self.format, &mut self.cache) {
            Ok((s, used)) => {
                self.retry_at = 0;
                buf.advance(used);
                Ok(Some(Inbound::Struct(s)))
            }
            Err(WireError::Truncated { needed }) => {
                // What it needs at least: refused now if that is too much
                // (not buffered up to it first).
                let at_least = buf.len().saturating_add(needed.max(1));
                if at_least as u64 > self.max_frame_size {
                    return Err(CodecError::TooLarge {
                        size: at_least as u64,
                        max: self.max_frame_size,
                    });
                }
                self.retry_at = at_least;
                buf.reserve(needed.min(1 << 20));
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The encoding side of a connection: its format and write cache.
#[derive(Debug)]
pub struct FrameWriter {
    format: Format,
    cache: WriteCache,
}

impl FrameWriter {
    pub fn new(format: Format) -> Self {
        FrameWriter {
            cache: WriteCache::new(format.cache_size),
            format,
        }
    }

    pub fn encode(&mut self, s: &Struct, out: &mut Vec<u8>) -> Result<(), WireError> {
        marshal::encode(s, &self.format, &mut self.cache, out)
    }

    /// Encodes a MessageDispatch from its parts (see [`marshal::encode_dispatch`]).
    pub fn encode_dispatch(
        &mut self,
        consumer_id: &Value,
        destination: &Value,
        message: &marshal::MessageFields,
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        marshal::encode_dispatch(
            consumer_id,
            destination,
            message,
            &self.format,
            &mut self.cache,
            out,
        )
    }
}

/// Encodes a WireFormatInfo (always in the initial format).
pub fn encode_wire_format_info(info: &WireFormatInfo, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let mut cache = WriteCache::new(0);
    marshal::encode(&info.to_struct()?, &Format::INITIAL, &mut cache, out)?;
    Ok(())
}

#[cfg(test)]
mod tests;
