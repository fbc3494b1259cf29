//! Broker configuration: `conf/broker.toml`, every key optional.
//!
//! A key that is not known, or a value of the wrong type or out of range,
//! stops start-up with a message naming it.

use crate::broker::security::{EntrySpec, UserSpec};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub broker: BrokerSection,
    pub listeners: Listeners,
    pub stomp: StompSection,
    pub openwire: OpenWireSection,
    pub store: StoreSection,
    pub limits: LimitsSection,
    pub security: SecuritySection,
    /// Test hook: make the journal's writes or syncs fail.
    #[serde(skip)]
    pub store_faults: crate::store::journal::Faults,
}

/// The persistent store (the journal in `<data_dir>/journal`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `false` keeps persistent messages in memory only (like ActiveMQ's
    /// `persistent="false"`).
    pub enabled: bool,
    /// `"always"`: fsync before a persistent send is confirmed (group commit
    /// shares it between concurrent senders). `"periodic"`: fsync every
    /// `sync_interval_ms`; sends are confirmed once written.
    pub sync: String,
    pub sync_interval_ms: u64,
    /// Size of one journal segment file.
    pub segment_size: u64,
    /// Bytes the journal may use (ActiveMQ's storeUsage, 100 GiB by default).
    pub limit: u64,
    /// `"block"`: persistent sends wait while the store is full (producer
    /// flow control); `"fail"`: they get an error at once.
    pub on_limit: String,
    /// Longest time, in µs, the journal holds the record of a persistent
    /// queue message that was handed to a consumer at once: its ack within
    /// that time means the record is never written (and its producer is
    /// confirmed then). Adaptive: it is not held while acks come too late.
    /// 0 writes at once.
    pub dispatch_hold_us: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            enabled: true,
            sync: "always".into(),
            sync_interval_ms: 1000,
            segment_size: 32 * 1024 * 1024,
            limit: 100 * 1024 * 1024 * 1024,
            on_limit: "block".into(),
            dispatch_hold_us: 1000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenWireSection {
    /// Largest OpenWire frame, in bytes (ActiveMQ's `wireFormat.maxFrameSize`).
    pub max_frame_size: u64,
    /// Proposed inactivity timeout in ms (`wireFormat.maxInactivityDuration`); 0 disables.
    pub max_inactivity_ms: i64,
    /// Milliseconds a new connection has to send its WireFormatInfo.
    pub handshake_timeout_ms: u64,
}

impl Default for OpenWireSection {
    fn default() -> Self {
        let s = crate::openwire::session::OpenWireSettings::default();
        OpenWireSection {
            max_frame_size: s.max_frame_size,
            max_inactivity_ms: s.max_inactivity_ms,
            handshake_timeout_ms: s.handshake_timeout.as_millis() as u64,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// Broker name (appears in client-id errors, advisories).
    pub name: String,
    /// Where persistent data lives.
    pub data_dir: PathBuf,
    /// The dead-letter queue.
    pub dead_letter_queue: String,
    /// How often expired messages are taken out of queues and durable
    /// subscriptions nobody consumes from (ActiveMQ's expireMessagesPeriod);
    /// 0 disables it (they still expire when they would be delivered).
    pub expire_messages_period_ms: u64,
    /// Virtual topics (ActiveMQ's default virtualTopic): a message sent to a
    /// topic this pattern matches is also sent to every queue named
    /// `virtual_topic_prefix` + the topic's name. "" disables them.
    pub virtual_topics: String,
    pub virtual_topic_prefix: String,
    /// ActiveMQ's `schedulerSupport`: messages with `AMQ_SCHEDULED_DELAY`,
    /// `AMQ_SCHEDULED_PERIOD`, `AMQ_SCHEDULED_REPEAT` are held and sent
    /// later. Off (as ActiveMQ): they go at once.
    pub scheduler_support: bool,
}

/// Listener addresses; an empty string disables a listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// Protocol-sniffing port (ActiveMQ's `auto` transport): STOMP and OpenWire.
    pub auto: String,
    /// STOMP only.
    pub stomp: String,
    /// OpenWire only (disabled by default: the auto port serves OpenWire).
    pub openwire: String,
    /// STOMP over WebSocket (ActiveMQ's `ws://`, for browsers and stompjs).
    pub ws: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StompSection {
    pub max_command_length: usize,
    pub max_header_length: usize,
    pub max_headers: usize,
    /// Largest frame body, in bytes (ActiveMQ's `maxDataLength`).
    pub max_frame_size: usize,
    /// Silence allowed from a heart-beating client, as a multiple of its interval.
    pub heartbeat_grace: f64,
    /// Milliseconds a new connection has to send CONNECT.
    pub connect_timeout_ms: u64,
    pub queue_prefetch: u32,
    pub topic_prefetch: u32,
    pub durable_topic_prefetch: u32,
    pub max_subscriptions_per_connection: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_connections: usize,
    /// Bytes of unconsumed messages a destination may hold before its
    /// producers are made to wait (producer flow control).
    pub destination_memory_limit: usize,
    /// Bytes one open transaction may hold.
    pub max_transaction_size: usize,
    /// Bytes of scheduled messages held (ActiveMQ's jobSchedulerUsage);
    /// past it, a scheduled send is refused.
    pub scheduler_memory_limit: usize,
    /// Bytes of messages all destinations together hold in memory
    /// (ActiveMQ's systemUsage memoryUsage): at it, every producer waits.
    pub memory_limit: usize,
}

/// Users and authorization (ActiveMQ's simpleAuthenticationPlugin and
/// authorizationPlugin); see [`crate::broker::security`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// Who may connect. None: anyone (no authentication).
    pub users: Vec<UserSpec>,
    /// With users: a connection giving no credentials at all connects as
    /// `anonymous_user` in `anonymous_group` (ActiveMQ's anonymousAccessAllowed).
    pub anonymous_access: bool,
    pub anonymous_user: String,
    pub anonymous_group: String,
    /// Who may read, write and create where. None: everyone may do anything.
    pub authorization: Vec<EntrySpec>,
    /// Who may read, write and create temporary destinations (no `queue` or
    /// `topic` key). Absent: anyone.
    pub temp_destinations: Option<EntrySpec>,
}

impl Default for SecuritySection {
    fn default() -> Self {
        SecuritySection {
            users: Vec::new(),
            anonymous_access: false,
            anonymous_user: "anonymous".into(),
            anonymous_group: "anonymous".into(),
            authorization: Vec::new(),
            temp_destinations: None,
        }
    }
}

impl SecuritySection {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let mut names = std::collections::HashSet::new();
        for u in &self.users {
            if u.name.trim().is_empty() {
                return invalid("security.users", "a user without a name".into());
            }
            if !names.insert(u.name.as_str()) {
                return invalid(
                    "security.users",
                    format!("user {:?} is listed twice", u.name),
                );
            }
        }
        for e in &self.authorization {
            match (&e.queue, &e.topic) {
                (Some(p), None) | (None, Some(p)) if !p.trim().is_empty() => {}
                _ => {
                    return invalid(
                        "security.authorization",
                        format!("an entry needs exactly one of queue = \"PATTERN\" or topic = \"PATTERN\" ({e:?})"),
                    )
                }
            }
        }
        if let Some(t) = &self.temp_destinations {
            if t.queue.is_some() || t.topic.is_some() {
                return invalid(
                    "security.temp_destinations",
                    "covers every temporary destination: no queue or topic key".into(),
                );
            }
        }
        if self.anonymous_user.trim().is_empty() || self.anonymous_group.trim().is_empty() {
            return invalid(
                "security.anonymous_user",
                "the anonymous user and group need names".into(),
            );
        }
        Ok(())
    }

    pub fn security(&self) -> crate::broker::security::Security {
        crate::broker::security::Security::new(
            &self.users,
            self.anonymous_access,
            &self.anonymous_user,
            &self.anonymous_group,
            &self.authorization,
            self.temp_destinations.as_ref(),
        )
    }
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            name: "localhost".into(),
            data_dir: PathBuf::from("./data"),
            dead_letter_queue: "ActiveMQ.DLQ".into(),
            expire_messages_period_ms: 30_000,
            virtual_topics: "VirtualTopic.>".into(),
            virtual_topic_prefix: "Consumer.*.".into(),
            scheduler_support: false,
        }
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            auto: "0.0.0.0:61616".into(),
            stomp: "0.0.0.0:61613".into(),
            openwire: String::new(),
            ws: "0.0.0.0:61614".into(),
        }
    }
}

impl Default for StompSection {
    fn default() -> Self {
        let s = crate::stomp::session::StompSettings::default();
        StompSection {
            max_command_length: s.limits.max_command_length,
            max_header_length: s.limits.max_header_length,
            max_headers: s.limits.max_headers,
            max_frame_size: s.limits.max_frame_size,
            heartbeat_grace: s.heartbeat_grace,
            connect_timeout_ms: s.connect_timeout.as_millis() as u64,
            queue_prefetch: s.queue_prefetch,
            topic_prefetch: s.topic_prefetch,
            durable_topic_prefetch: s.durable_topic_prefetch,
            max_subscriptions_per_connection: s.max_subscriptions,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_connections: 10_000,
            destination_memory_limit: 64 * 1024 * 1024,
            max_transaction_size: 64 * 1024 * 1024,
            scheduler_memory_limit: 256 * 1024 * 1024,
            memory_limit: 1024 * 1024 * 1024,
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot: addresses and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_listener("listeners.auto", &self.listeners.auto)?;
        parse_listener("listeners.stomp", &self.listeners.stomp)?;
        parse_listener("listeners.openwire", &self.listeners.openwire)?;
        parse_listener("listeners.ws", &self.listeners.ws)?;
        if self.openwire.max_frame_size == 0 {
            return Err(ConfigError::Invalid {
                key: "openwire.max_frame_size",
                message: "must be greater than 0".into(),
            });
        }
        if self.openwire.max_inactivity_ms < 0 {
            return Err(ConfigError::Invalid {
                key: "openwire.max_inactivity_ms",
                message: "must be 0 (disabled) or more".into(),
            });
        }
        let positive = |key: &'static str, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    key,
                    message: "must be greater than 0".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("stomp.max_command_length", self.stomp.max_command_length)?;
        positive("stomp.max_header_length", self.stomp.max_header_length)?;
        positive("stomp.max_headers", self.stomp.max_headers)?;
        positive("stomp.max_frame_size", self.stomp.max_frame_size)?;
        positive("limits.max_connections", self.limits.max_connections)?;
        positive(
            "limits.destination_memory_limit",
            self.limits.destination_memory_limit,
        )?;
        positive(
            "limits.max_transaction_size",
            self.limits.max_transaction_size,
        )?;
        positive("limits.memory_limit", self.limits.memory_limit)?;
        positive(
            "limits.scheduler_memory_limit",
            self.limits.scheduler_memory_limit,
        )?;
        if !(self.stomp.heartbeat_grace >= 1.0 && self.stomp.heartbeat_grace <= 100.0) {
            return Err(ConfigError::Invalid {
                key: "stomp.heartbeat_grace",
                message: format!(
                    "must be between 1.0 and 100.0, not {}",
                    self.stomp.heartbeat_grace
                ),
            });
        }
        if !matches!(self.store.sync.as_str(), "always" | "periodic") {
            return Err(ConfigError::Invalid {
                key: "store.sync",
                message: format!(
                    "must be \"always\" or \"periodic\", not {:?}",
                    self.store.sync
                ),
            });
        }
        if !matches!(self.store.on_limit.as_str(), "block" | "fail") {
            return Err(ConfigError::Invalid {
                key: "store.on_limit",
                message: format!(
                    "must be \"block\" or \"fail\", not {:?}",
                    self.store.on_limit
                ),
            });
        }
        if self.store.segment_size < 64 * 1024 {
            return Err(ConfigError::Invalid {
                key: "store.segment_size",
                message: "must be at least 65536".into(),
            });
        }
        if self.store.sync_interval_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "store.sync_interval_ms",
                message: "must be greater than 0".into(),
            });
        }
        if self.broker.name.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "broker.name",
                message: "must not be empty".into(),
            });
        }
        self.security.validate()?;
        let prefix = self.broker.virtual_topic_prefix.trim();
        if !self.broker.virtual_topics.trim().is_empty()
            && (!prefix.ends_with('.') || prefix.split('.').any(|p| p == ">"))
        {
            return Err(ConfigError::Invalid {
                key: "broker.virtual_topic_prefix",
                message: format!(
                    "must end with \".\" and have no \">\" (like \"Consumer.*.\"), not {prefix:?}"
                ),
            });
        }
        if self.broker.dead_letter_queue.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "broker.dead_letter_queue",
                message: "must not be empty".into(),
            });
        }
        Ok(())
    }

    /// The address of a listener, `None` when it is disabled.
    pub fn listener(&self, key: &'static str) -> Option<SocketAddr> {
        let value = match key {
            "listeners.auto" => &self.listeners.auto,
            "listeners.stomp" => &self.listeners.stomp,
            "listeners.openwire" => &self.listeners.openwire,
            "listeners.ws" => &self.listeners.ws,
            _ => return None,
        };
        parse_listener(key, value).ok().flatten()
    }

    pub fn stomp_settings(&self) -> crate::stomp::session::StompSettings {
        let s = &self.stomp;
        crate::stomp::session::StompSettings {
            limits: crate::stomp::codec::Limits {
                max_command_length: s.max_command_length,
                max_header_length: s.max_header_length,
                max_headers: s.max_headers,
                max_frame_size: s.max_frame_size,
            },
            heartbeat_grace: s.heartbeat_grace,
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            queue_prefetch: s.queue_prefetch,
            topic_prefetch: s.topic_prefetch,
            durable_topic_prefetch: s.durable_topic_prefetch,
            max_subscriptions: s.max_subscriptions_per_connection,
            max_transaction_bytes: self.limits.max_transaction_size,
            ..Default::default()
        }
    }

    pub fn openwire_settings(&self) -> crate::openwire::session::OpenWireSettings {
        crate::openwire::session::OpenWireSettings {
            max_frame_size: self.openwire.max_frame_size,
            max_inactivity_ms: self.openwire.max_inactivity_ms,
            handshake_timeout: Duration::from_millis(self.openwire.handshake_timeout_ms),
            max_transaction_bytes: self.limits.max_transaction_size,
            ..Default::default()
        }
    }

    pub fn store_config(&self) -> crate::store::StoreConfig {
        let mut c = crate::store::StoreConfig::new(self.broker.data_dir.join("journal"));
        c.segment_size = self.store.segment_size;
        c.limit = self.store.limit;
        c.max_record = (self.stomp.max_frame_size as u64)
            .max(self.openwire.max_frame_size)
            .saturating_add(1024 * 1024)
            .min(u32::MAX as u64) as usize;
        c.sync = match self.store.sync.as_str() {
            "periodic" => crate::store::SyncPolicy::Periodic(Duration::from_millis(
                self.store.sync_interval_ms,
            )),
            _ => crate::store::SyncPolicy::Always,
        };
        c.fail_when_full = self.store.on_limit == "fail";
        c.dispatch_hold = Duration::from_micros(self.store.dispatch_hold_us);
        c.faults = self.store_faults.clone();
        c
    }

    pub fn core_config(&self) -> crate::broker::CoreConfig {
        crate::broker::CoreConfig {
            broker_name: self.broker.name.clone(),
            destination_memory_limit: self.limits.destination_memory_limit,
            dead_letter_queue: self.broker.dead_letter_queue.clone(),
            dead_letter_non_persistent: false,
            broker_url: format!(
                "tcp://{}",
                self.listener("listeners.auto")
                    .or(self.listener("listeners.openwire"))
                    .map_or_else(|| "localhost:61616".to_string(), |a| a.to_string())
            ),
            security: std::sync::Arc::new(self.security.security()),
            virtual_topics: self.broker.virtual_topics.trim().to_string(),
            virtual_topic_prefix: self.broker.virtual_topic_prefix.trim().to_string(),
            scheduler_support: self.broker.scheduler_support,
            scheduler_memory_limit: self.limits.scheduler_memory_limit,
            memory_limit: self.limits.memory_limit,
        }
    }
}

fn parse_listener(key: &'static str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    // Accept ActiveMQ-style URIs too: tcp://0.0.0.0:61616, stomp://...
    let addr = value.split_once("://").map_or(value, |(_, rest)| rest);
    let addr = addr.split('?').next().unwrap_or(addr);
    addr.parse::<SocketAddr>()
        .map(Some)
        .map_err(|e| ConfigError::Invalid {
            key,
            message: format!("'{value}' is not an address like 127.0.0.1:61613 ({e})"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.listeners.auto, "0.0.0.0:61616");
        assert_eq!(c.listener("listeners.stomp").unwrap().port(), 61613);
        assert_eq!(c.broker.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn the_shipped_config_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/broker.toml");
        Config::from_file(&path).unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[stomp]\nmax_headerz = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_headerz"), "{err}");
        let err = Config::from_toml("[nope]\n").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn wrong_values_are_named() {
        let err = Config::from_toml("[listeners]\nstomp = \"nonsense\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listeners.stomp"), "{err}");
        let err = Config::from_toml("[stomp]\nmax_headers = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_headers"), "{err}");
        let err = Config::from_toml("[stomp]\nheartbeat_grace = 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("stomp.heartbeat_grace"), "{err}");
        let err = Config::from_toml("[limits]\nmax_connections = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.max_connections"), "{err}");
    }

    #[test]
    fn security_section() {
        let c = Config::from_toml(
            r#"
[security]
anonymous_access = true
[[security.users]]
name = "admin"
password = "pw"
groups = "admins,users"
[[security.authorization]]
queue = ">"
read = "admins"
write = "admins"
admin = "admins"
[security.temp_destinations]
read = "*"
"#,
        )
        .unwrap();
        let s = c.core_config().security;
        assert!(s.authorizing());
        assert_eq!(
            s.authenticate(Some("admin"), Some("pw")).unwrap().user(),
            "admin"
        );
        assert_eq!(s.authenticate(None, None).unwrap().user(), "anonymous");
        assert!(
            !format!("{c:?}").contains("\"pw\""),
            "passwords stay out of Debug"
        );
        for (bad, key) in [
            (
                "[[security.authorization]]\nread = \"a\"\n",
                "security.authorization",
            ),
            (
                "[[security.authorization]]\nqueue = \">\"\ntopic = \">\"\n",
                "security.authorization",
            ),
            (
                "[[security.users]]\nname = \"a\"\n[[security.users]]\nname = \"a\"\n",
                "security.users",
            ),
            (
                "[security.temp_destinations]\nqueue = \">\"\n",
                "security.temp_destinations",
            ),
            (
                "[[security.users]]\nname = \"a\"\npasswd = \"x\"\n",
                "passwd",
            ),
        ] {
            let err = Config::from_toml(bad).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn listeners_accept_uris_and_can_be_disabled() {
        let c =
            Config::from_toml("[listeners]\nauto = \"tcp://127.0.0.1:7000?x=1\"\nstomp = \"\"\n")
                .unwrap();
        assert_eq!(c.listener("listeners.auto").unwrap().port(), 7000);
        assert!(c.listener("listeners.stomp").is_none());
    }
}
