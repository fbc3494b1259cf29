//! ferromq: a message broker that Apache ActiveMQ 5.x clients can switch to
//! unchanged.
//!
//! Layers, each in its own module: [`transport`] (listeners, protocol
//! sniffing) → protocol codecs and sessions ([`stomp`]) → the protocol-free
//! [`broker`] core. [`config`] holds the settings; [`Server`] ties them
//! together and is what both `main` and the tests start.

pub mod broker;
pub mod bstr;
pub mod client;
pub mod config;
pub mod loadtool;
pub mod openwire;
pub mod stomp;
pub mod store;
pub mod transport;

pub use config::Config;
pub use transport::{ListenerKind, Server};
