//! Clients built on the project's own codecs, used by the load tools.

pub mod openwire;
pub mod stomp;
