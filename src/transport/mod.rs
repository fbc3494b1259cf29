//! Listeners: accept connections, sniff the protocol on the auto port, and
//! hand each connection to its protocol's session in its own task.

pub mod activity;
pub mod outbox;
pub mod trim;
pub mod websocket;

/// Ends a connection's writer task: it flushes what the session queued,
/// but a peer that stopped reading does not keep it around for long.
pub async fn join_writer(writer: tokio::task::JoinHandle<()>, token: &CancellationToken) {
    token.cancel();
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
}

use crate::broker::Broker;
use crate::config::Config;
use crate::openwire::session::OpenWireSettings;
use crate::stomp::session::StompSettings;
use bytes::BytesMut;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Sniffs each connection: STOMP or OpenWire (ActiveMQ's `auto`).
    Auto,
    Stomp,
    OpenWire,
    /// STOMP over WebSocket.
    WebSocket,
}

/// What the first bytes of a connection say it speaks.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    Stomp,
    OpenWire,
    Unknown,
    /// Not enough bytes yet.
    NeedMore,
}

/// Decides the protocol from the first bytes. STOMP starts with a command
/// (`CONNECT`, `STOMP`) or heart-beat EOLs; OpenWire starts with a 4-byte
/// size prefix (high byte 0 for any sane WireFormatInfo), then type 1 and the
/// magic `ActiveMQ`.
pub fn sniff(bytes: &[u8]) -> Sniffed {
    match bytes.first() {
        None => Sniffed::NeedMore,
        Some(b'\n' | b'\r') | Some(b'A'..=b'Z') => Sniffed::Stomp,
        Some(0) => {
            if bytes.len() < 13 {
                // Size prefix + type 1 + "ActiveMQ".
                let magic = b"\x01ActiveMQ";
                let seen = &bytes[4.min(bytes.len())..];
                if magic.starts_with(seen) {
                    return Sniffed::NeedMore;
                }
                return Sniffed::Unknown;
            }
            if &bytes[4..13] == b"\x01ActiveMQ" {
                Sniffed::OpenWire
            } else {
                Sniffed::Unknown
            }
        }
        Some(_) => Sniffed::Unknown,
    }
}

pub struct Server {
    broker: Arc<Broker>,
    listeners: Vec<(ListenerKind, TcpListener)>,
    settings: Settings,
    max_connections: usize,
    expire_period: Duration,
}

/// Per-protocol settings every connection task gets.
#[derive(Clone)]
struct Settings {
    stomp: Arc<StompSettings>,
    openwire: Arc<OpenWireSettings>,
}

impl Server {
    /// Opens the store (recovering what it holds) and binds every configured
    /// listener (address port 0 picks a free port).
    pub async fn bind(config: &Config) -> io::Result<Server> {
        let (store, recovered) = if config.store.enabled {
            let (store, recovered) = crate::store::Store::open(config.store_config())
                .map_err(|e| io::Error::other(e.to_string()))?;
            (Some(store), Some(recovered))
        } else {
            (None, None)
        };
        let mut listeners = Vec::new();
        for (key, kind) in [
            ("listeners.auto", ListenerKind::Auto),
            ("listeners.stomp", ListenerKind::Stomp),
            ("listeners.openwire", ListenerKind::OpenWire),
            ("listeners.ws", ListenerKind::WebSocket),
        ] {
            if let Some(addr) = config.listener(key) {
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on {addr} ({key}): {e}"))
                })?;
                listeners.push((kind, listener));
            }
        }
        // Advisories name the broker by the address it really listens on.
        let mut core = config.core_config();
        if let Some(addr) = listeners
            .iter()
            .find(|(k, _)| matches!(k, ListenerKind::Auto | ListenerKind::OpenWire))
            .and_then(|(_, l)| l.local_addr().ok())
        {
            core.broker_url = format!("tcp://{addr}");
        }
        let broker = Broker::with_store(core, store);
        if let Some(r) = recovered {
            let took = r.took;
            let messages = r.owed.len() + r.queued.len();
            broker.restore(r);
            info!(
                messages,
                took_ms = took.as_millis() as u64,
                "persistent messages restored"
            );
        }
        Ok(Server {
            broker,
            listeners,
            settings: Settings {
                stomp: Arc::new(config.stomp_settings()),
                openwire: Arc::new(config.openwire_settings()),
            },
            max_connections: config.limits.max_connections,
            expire_period: Duration::from_millis(config.broker.expire_messages_period_ms),
        })
    }

    pub fn local_addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, l)| l.local_addr().ok())
    }

    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, closes
    /// every connection and waits (bounded) for them to finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.max_connections));
        for (kind, listener) in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, ?kind, "listening");
            }
            tracker.spawn(accept_loop(
                kind,
                listener,
                self.broker.clone(),
                self.settings.clone(),
                permits.clone(),
                tracker.clone(),
                shutdown.clone(),
            ));
        }
        // Expired messages leave queues nobody consumes from too.
        let broker = self.broker.clone();
        let stop = shutdown.clone();
        let period = self.expire_period;
        let sweeper = async move {
            if period.is_zero() {
                return;
            }
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        let n = broker.expire_messages();
                        if n > 0 {
                            tracing::debug!(expired = n, "expired messages taken out");
                        }
                    }
                }
            }
        };
        tracker.spawn(sweeper);
        // Memory freed by drained backlogs goes back to the system.
        let usage = self.broker.memory_usage().clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let mut trimmer = trim::Trimmer::default();
            let mut tick = tokio::time::interval(trim::PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        let (peak, used) = (usage.take_peak(), usage.used());
                        if trimmer.due(peak, used) {
                            tracing::debug!(used, "memory freed by drained backlogs goes back to the system");
                            // (It walks the allocator's free lists: off the workers.)
                            let _ = tokio::task::spawn_blocking(trim::trim).await;
                        }
                    }
                }
            }
        });
        // Scheduled messages go when they are due.
        tracker.spawn(self.broker.clone().run_scheduler(shutdown.clone()));
        shutdown.cancelled().await;
        info!("shutting down: closing connections");
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .is_err()
        {
            warn!("some connections did not close within 10 s");
        }
        // Last: everything confirmed is on disk.
        self.broker.close_store();
    }
}

async fn accept_loop(
    kind: ListenerKind,
    listener: TcpListener,
    broker: Arc<Broker>,
    settings: Settings,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(%peer, "connection refused: the maximum number of connections is reached");
            continue;
        };
        let span = info_span!("conn", %peer, protocol = tracing::field::Empty, client_id = tracing::field::Empty);
        let broker = broker.clone();
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(
            async move {
                serve_connection(kind, stream, broker, settings, shutdown).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn serve_connection(
    kind: ListenerKind,
    mut stream: TcpStream,
    broker: Arc<Broker>,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let mut prefix = BytesMut::with_capacity(4096);
    let protocol = match kind {
        ListenerKind::WebSocket => {
            tracing::Span::current().record("protocol", "stomp+ws");
            let wait = settings.stomp.connect_timeout;
            let Some(leftover) = websocket_upgrade(&mut stream, prefix, wait, &shutdown).await
            else {
                return;
            };
            crate::stomp::session::serve(
                stream,
                BytesMut::new(),
                Some(leftover),
                broker,
                settings.stomp,
                shutdown,
            )
            .await;
            return;
        }
        ListenerKind::Stomp => Sniffed::Stomp,
        ListenerKind::OpenWire => Sniffed::OpenWire,
        ListenerKind::Auto => {
            let wait = settings
                .stomp
                .connect_timeout
                .min(settings.openwire.handshake_timeout);
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match sniff(&prefix) {
                    Sniffed::NeedMore => {}
                    Sniffed::Unknown => {
                        warn!(first_bytes = ?&prefix[..prefix.len().min(16)], "unknown protocol; closing");
                        return;
                    }
                    known => break known,
                }
                let read = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => {
                        info!("no protocol data in time; closing");
                        return;
                    }
                    read = stream.read_buf(&mut prefix) => read,
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }
    };
    if protocol == Sniffed::OpenWire {
        tracing::Span::current().record("protocol", "openwire");
        crate::openwire::session::serve(stream, prefix, broker, settings.openwire, shutdown).await;
    } else {
        tracing::Span::current().record("protocol", "stomp");
        crate::stomp::session::serve(stream, prefix, None, broker, settings.stomp, shutdown).await;
    }
}

/// Reads a WebSocket upgrade request and answers it: `101` and what was read
/// past the request, or an HTTP error (and `None`: the connection closes).
async fn websocket_upgrade(
    stream: &mut TcpStream,
    mut buf: BytesMut,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Option<BytesMut> {
    use tokio::io::AsyncWriteExt;
    let deadline = tokio::time::Instant::now() + wait;
    let head = loop {
        if let Some(end) = websocket::head_end(&buf) {
            break Ok(end);
        }
        if websocket::not_http(&buf) {
            break Err(websocket::Refusal {
                status: 400,
                reason: "Bad Request",
                text: "not an HTTP request: this port speaks STOMP over WebSocket".into(),
            });
        }
        if buf.len() > websocket::MAX_REQUEST {
            break Err(websocket::Refusal {
                status: 431,
                reason: "Request Header Fields Too Large",
                text: format!("the request head is over {} bytes", websocket::MAX_REQUEST),
            });
        }
        let read = tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep_until(deadline) => {
                info!("no WebSocket upgrade in time; closing");
                return None;
            }
            read = stream.read_buf(&mut buf) => read,
        };
        match read {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    };
    match head.and_then(|end| websocket::parse_upgrade(&buf[..end]).map(|u| (u, end))) {
        Ok((upgrade, end)) => {
            let response = websocket::accept_response(&upgrade);
            stream.write_all(response.as_bytes()).await.ok()?;
            let _ = buf.split_to(end);
            Some(buf)
        }
        Err(refusal) => {
            warn!(status = refusal.status, reason = %refusal.text, "WebSocket upgrade refused");
            let _ = stream.write_all(refusal.response().as_bytes()).await;
            let _ = stream.shutdown().await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_protocols() {
        assert_eq!(sniff(b""), Sniffed::NeedMore);
        assert_eq!(sniff(b"CONNECT\n"), Sniffed::Stomp);
        assert_eq!(sniff(b"\nSTOMP"), Sniffed::Stomp);
        assert_eq!(sniff(b"\x00\x00\x01\x64\x01Activ"), Sniffed::NeedMore);
        assert_eq!(
            sniff(b"\x00\x00\x01\x64\x01ActiveMQ\x00"),
            Sniffed::OpenWire
        );
        assert_eq!(sniff(b"\x00\x00\x01\x64\x07"), Sniffed::Unknown);
        assert_eq!(sniff(b"GET / HTTP/1.1"), Sniffed::Stomp);
        assert_eq!(sniff(b"\x16\x03\x01"), Sniffed::Unknown);
        let fixture = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/protocol-fixtures/openwire/connect-close.c2s.bin"
        ))
        .unwrap();
        assert_eq!(sniff(&fixture), Sniffed::OpenWire);
    }
}
