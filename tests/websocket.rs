//! STOMP over WebSocket on the broker's `ws` listener, with a raw client
//! that controls every byte: the upgrade, masking, fragmentation, control
//! frames and what is refused.

mod common;

use common::*;
use ferromq::stomp::frame::Command;
use ferromq::transport::websocket::accept_key;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Sends an HTTP request head; returns the connection and the response head.
async fn http(addr: SocketAddr, request: &str) -> (TcpStream, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let end = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before a response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("an HTTP response in time");
    let rest = buf.split_off(end);
    (stream, String::from_utf8(buf).unwrap(), rest)
}

fn upgrade_request(protocols: Option<&str>) -> String {
    let protocols = protocols
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    format!("GET /stomp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{protocols}\r\n")
}

impl Ws {
    async fn open(addr: SocketAddr, protocols: Option<&str>) -> (Ws, String) {
        let (stream, head, rest) = http(addr, &upgrade_request(protocols)).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(
            head.contains(&format!("Sec-WebSocket-Accept: {}\r\n", accept_key(KEY))),
            "{head}"
        );
        (Ws { stream, buf: rest }, head)
    }

    /// One masked client frame.
    async fn frame(&mut self, b0: u8, payload: &[u8]) {
        let mask = [0x5a, 0x17, 0xc3, 0x01];
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        // In small pieces: the server must not care how TCP cuts them.
        for piece in f.chunks(7) {
            self.stream.write_all(piece).await.unwrap();
        }
    }

    async fn text(&mut self, payload: &str) {
        self.frame(0x81, payload.as_bytes()).await;
    }

    /// The next server frame: (opcode, payload); `None` when the connection
    /// closed.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(WAIT, async {
            loop {
                if self.buf.len() >= 2 {
                    let b0 = self.buf[0];
                    assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                    let (len, at) = match self.buf[1] & 0x7f {
                        126 if self.buf.len() >= 4 => {
                            (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                        }
                        127 if self.buf.len() >= 10 => (
                            u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                            10,
                        ),
                        126 | 127 => (usize::MAX, 0),
                        n => (n as usize, 2),
                    };
                    if len != usize::MAX && self.buf.len() >= at + len {
                        assert_ne!(b0 & 0x80, 0, "the server sends final frames");
                        let payload = self.buf[at..at + len].to_vec();
                        self.buf.drain(..at + len);
                        return Some((b0 & 0x0f, payload));
                    }
                }
                let mut chunk = [0u8; 65536];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("a frame (or the end) in time")
    }

    /// The next data message, which must hold whole STOMP frames.
    async fn stomp(&mut self) -> (u8, String) {
        let (op, payload) = self.next().await.expect("a message");
        assert!(op == 1 || op == 2, "opcode {op}");
        assert!(
            payload.ends_with(b"\0\n") || payload.ends_with(b"\0") || payload == b"\n",
            "not whole frames: {:?}",
            String::from_utf8_lossy(&payload)
        );
        (op, String::from_utf8_lossy(&payload).into_owned())
    }
}

#[tokio::test]
async fn stomp_frames_cut_and_joined_any_way_in_websocket_messages() {
    let b = TestBroker::start().await;
    let addr = b.ws.unwrap();
    let (mut ws, head) = Ws::open(addr, Some("v10.stomp, v11.stomp, v12.stomp")).await;
    assert!(
        head.contains("Sec-WebSocket-Protocol: v12.stomp\r\n"),
        "{head}"
    );
    // CONNECT over three frames of one message (text, continuation x2).
    ws.frame(0x01, b"CONNECT\naccept-ver").await;
    ws.frame(0x00, b"sion:1.2\nhost:lo").await;
    ws.frame(0x80, b"calhost\n\n\0").await;
    let (op, connected) = ws.stomp().await;
    assert_eq!(op, 1);
    assert!(connected.starts_with("CONNECTED\n"), "{connected}");
    assert!(connected.contains("version:1.2\n"), "{connected}");
    // SUBSCRIBE and two SENDs in one message, the second SEND cut in two.
    ws.text("SUBSCRIBE\nid:0\ndestination:/queue/ws1\n\n\0SEND\ndestination:/queue/ws1\n\nfirst\0SEND\ndestin")
        .await;
    ws.text("ation:/queue/ws1\ncontent-length:3\n\n\0\x01\x02\0")
        .await;
    // Whole frames per message: both in one, or one each.
    let (op, mut got) = ws.stomp().await;
    assert_eq!(op, 1);
    if !got.contains("content-length:3") {
        let (op, more) = ws.stomp().await;
        assert_eq!(op, 1, "NULs and control characters are UTF-8: text");
        got += &more;
    }
    let frames: Vec<&str> = got.split_inclusive("\0\n").collect();
    assert_eq!(frames.len(), 2, "{got:?}");
    assert!(
        frames[0].starts_with("MESSAGE\n") && frames[0].ends_with("\n\nfirst\0\n"),
        "{got:?}"
    );
    assert!(
        frames[1].starts_with("MESSAGE\n") && frames[1].ends_with("\n\n\0\u{1}\u{2}\0\n"),
        "{got:?}"
    );
    // A plain TCP client's binary message to the WebSocket one.
    let mut tcp = b.connect("1.2").await;
    let f = frame(Command::Send, &[("destination", "/queue/ws1")])
        .with_header("content-length", "3")
        .with_body(bytes::Bytes::from_static(&[0xff, 0x00, 0xfe]));
    tcp.send(&f).await;
    let (op, payload) = ws.next().await.unwrap();
    assert_eq!(op, 2, "not UTF-8: a binary message");
    assert!(payload.ends_with(b"\n\n\xff\x00\xfe\0\n"), "{payload:?}");
    // A body bigger than the writer copies: still one message.
    let big = "z".repeat(3 << 20);
    tcp.send_text("/queue/ws1", &big, None).await;
    let (op, m3) = ws.stomp().await;
    assert_eq!(op, 1);
    assert!(
        m3.starts_with("MESSAGE\n") && m3.contains(&big),
        "{}",
        m3.len()
    );
    // Queued before the subscription, so that they are written together:
    // the body that is not UTF-8 still comes alone, in a binary message.
    tcp.send_text("/queue/ws2", "before", None).await;
    tcp.send(
        &frame(Command::Send, &[("destination", "/queue/ws2")])
            .with_header("content-length", "2")
            .with_body(bytes::Bytes::from_static(&[0xc3, 0x28])),
    )
    .await;
    tcp.send_text("/queue/ws2", "after", Some("queued")).await;
    ws.text("SUBSCRIBE\nid:2\ndestination:/queue/ws2\n\n\0")
        .await;
    let (op, before) = ws.stomp().await;
    assert_eq!(op, 1);
    assert!(before.ends_with("\n\nbefore\0\n"), "{before:?}");
    let (op, payload) = ws.next().await.unwrap();
    assert_eq!(op, 2);
    assert!(payload.ends_with(b"\n\n\xc3\x28\0\n") && payload.starts_with(b"MESSAGE\n"));
    let (op, after) = ws.stomp().await;
    assert_eq!(op, 1);
    assert!(
        after.starts_with("MESSAGE\n") && after.ends_with("\n\nafter\0\n"),
        "{after:?}"
    );
    // DISCONNECT: the receipt, then a normal close, then the end.
    ws.text("DISCONNECT\nreceipt:bye\n\n\0").await;
    let (_, receipt) = ws.stomp().await;
    assert!(
        receipt.starts_with("RECEIPT\nreceipt-id:bye\n"),
        "{receipt:?}"
    );
    assert_eq!(ws.next().await, Some((8, 1000u16.to_be_bytes().to_vec())));
    assert_eq!(ws.next().await, None);
}

#[tokio::test]
async fn pings_are_answered_and_a_close_ends_the_connection() {
    let b = TestBroker::start().await;
    let (mut ws, head) = Ws::open(b.ws.unwrap(), None).await;
    assert!(!head.contains("Sec-WebSocket-Protocol"), "{head}");
    ws.frame(0x89, b"are you there").await;
    assert_eq!(ws.next().await, Some((0xA, b"are you there".to_vec())));
    // A pong nobody asked for is ignored; STOMP still works.
    ws.frame(0x8A, b"").await;
    ws.text("CONNECT\naccept-version:1.2\nheart-beat:0,100\n\n\0")
        .await;
    let (_, connected) = ws.stomp().await;
    assert!(connected.contains("heart-beat:100,0"), "{connected}");
    // Heart-beats come as messages of their own.
    assert_eq!(ws.next().await, Some((1, b"\n".to_vec())));
    ws.frame(0x88, &1001u16.to_be_bytes()).await;
    loop {
        match ws.next().await {
            Some((1, p)) if p == b"\n" => continue,
            other => {
                assert_eq!(other, Some((8, 1001u16.to_be_bytes().to_vec())));
                break;
            }
        }
    }
    assert_eq!(ws.next().await, None);
}

#[tokio::test]
async fn websocket_protocol_errors_close_with_1002() {
    let b = TestBroker::start().await;
    let (mut ws, _) = Ws::open(b.ws.unwrap(), Some("stomp")).await;
    // Unmasked.
    ws.stream.write_all(b"\x81\x02hi").await.unwrap();
    assert_eq!(ws.next().await, Some((8, 1002u16.to_be_bytes().to_vec())));
    assert_eq!(ws.next().await, None);
    // A reserved opcode.
    let (mut ws, _) = Ws::open(b.ws.unwrap(), Some("stomp")).await;
    ws.frame(0x83, b"x").await;
    assert_eq!(ws.next().await, Some((8, 1002u16.to_be_bytes().to_vec())));
    assert_eq!(ws.next().await, None);
    // STOMP errors stay STOMP errors: an ERROR frame in a message.
    let (mut ws, _) = Ws::open(b.ws.unwrap(), Some("stomp")).await;
    ws.text("SEND\ndestination:/queue/x\n\nbefore connect\0")
        .await;
    let (_, error) = ws.stomp().await;
    assert!(error.starts_with("ERROR\n"), "{error}");
}

#[tokio::test]
async fn what_is_not_a_stomp_websocket_upgrade_gets_an_http_error() {
    let b = TestBroker::start().await;
    let addr = b.ws.unwrap();
    let (_, head, _) = http(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        head.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{head}"
    );
    let (_, head, _) = http(addr, &upgrade_request(None).replacen("GET", "POST", 1)).await;
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
    let (_, head, _) = http(addr, &upgrade_request(Some("mqtt"))).await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    // A STOMP client on the WebSocket port is told at once, not after the
    // connect timeout.
    let started = std::time::Instant::now();
    let (_, head, _) = http(addr, "CONNECT\naccept-version:1.2\n\n\0").await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // A head that never ends is cut off.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let filler = format!("X-Filler: {}\r\n", "a".repeat(1000));
    let mut refused = String::new();
    for _ in 0..40 {
        if s.write_all(filler.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(WAIT, s.read_to_string(&mut refused)).await;
    assert!(refused.starts_with("HTTP/1.1 431 "), "{refused:?}");
}
