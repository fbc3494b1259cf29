//! STOMP 1.0/1.1/1.2: a pure codec ([`codec`]), frames ([`frame`]), the
//! mapping to core messages ([`mapping`]) and the per-connection session
//! ([`session`]).

pub mod codec;
pub mod frame;
pub mod mapping;
pub mod session;
