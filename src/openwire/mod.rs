//! OpenWire, the native protocol of the ActiveMQ JMS client: primitives
//! ([`wire`]), one declaration per data structure ([`schema`]), a generic
//! marshaller for tight/loose, cached/uncached, versions 1–12 ([`marshal`]),
//! framing and the handshake ([`codec`]).

pub mod codec;
pub mod convert;
pub mod marshal;
pub mod primitive_map;
pub mod schema;
pub mod session;
pub mod value;
pub mod wire;
