use super::*;
use crate::openwire::schema;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("protocol-fixtures/openwire")
}

/// Splits a stream into its WireFormatInfo and the raw rest.
fn handshake(bytes: &[u8]) -> (WireFormatInfo, &[u8]) {
    let mut codec = OpenWireCodec::new(u64::MAX);
    let mut buf = BytesMut::from(bytes);
    let first = codec
        .decode(&mut buf)
        .unwrap()
        .unwrap()
        .into_struct()
        .unwrap();
    let used = bytes.len() - buf.len();
    (WireFormatInfo::from_struct(&first).unwrap(), &bytes[used..])
}

/// The type ids the listing gives for one direction.
fn listed_types(listing: &str, direction: &str) -> Vec<u8> {
    let line = listing
        .lines()
        .skip_while(|l| !l.starts_with(&format!("== command types in order, {direction}")))
        .nth(1)
        .unwrap_or_else(|| panic!("no {direction} listing"));
    line.split_whitespace()
        .map(|t| t.split(':').next().unwrap().parse().unwrap())
        .collect()
}

struct Stream {
    frames: Vec<(Inbound, Vec<u8>)>,
}

impl Stream {
    /// The structures, from a codec without fast paths.
    fn structs(&self) -> Vec<(Struct, Vec<u8>)> {
        self.frames
            .iter()
            .map(|(i, b)| (i.clone().into_struct().expect("a structure"), b.clone()))
            .collect()
    }
}

/// Decodes the rest of a stream frame by frame, keeping each frame's bytes.
fn decode_rest(rest: &[u8], n: &Negotiated) -> Stream {
    decode_rest_with(rest, n, false)
}

fn decode_rest_with(rest: &[u8], n: &Negotiated, fast: bool) -> Stream {
    let mut codec = OpenWireCodec::new(u64::MAX);
    codec.negotiated(n);
    codec.fast_paths(fast);
    let mut buf = BytesMut::from(rest);
    let mut frames = Vec::new();
    let mut offset = 0;
    while !buf.is_empty() {
        let before = buf.len();
        let s = codec
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("at offset {offset}: {e}"))
            .unwrap_or_else(|| panic!("incomplete frame at offset {offset}"));
        let used = before - buf.len();
        frames.push((s, rest[offset..offset + used].to_vec()));
        offset += used;
    }
    Stream { frames }
}

#[test]
fn every_fixture_decodes_completely_and_reencodes_byte_identical() {
    let mut scenarios: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".c2s.bin").map(str::to_string)
        })
        .collect();
    scenarios.sort();
    assert!(scenarios.len() >= 18, "{scenarios:?}");
    let mut frames_checked = 0;
    let mut fast_acks = 0;
    let mut fast_messages = 0;
    for scenario in &scenarios {
        let c2s = std::fs::read(dir().join(format!("{scenario}.c2s.bin"))).unwrap();
        let s2c = std::fs::read(dir().join(format!("{scenario}.s2c.bin"))).unwrap();
        let listing = std::fs::read_to_string(dir().join(format!("{scenario}.txt"))).unwrap();
        let (client, c_rest) = handshake(&c2s);
        let (broker, s_rest) = handshake(&s2c);
        assert_eq!(broker.version, 12);
        let n = negotiate(&broker, &client).unwrap();
        assert_eq!(n, negotiate(&client, &broker).unwrap(), "symmetric");
        for (direction, rest, first_type) in [
            ("client -> broker", c_rest, 1u8),
            ("broker -> client", s_rest, 1u8),
        ] {
            let stream = decode_rest(rest, &n).structs();
            // MessageAcks decoded the fast way are the same structures, and
            // messages the same parts of them, with the same cache.
            let fast = decode_rest_with(rest, &n, true);
            assert_eq!(fast.frames.len(), stream.len());
            for ((f, fb), (s, sb)) in fast.frames.iter().zip(&stream) {
                assert_eq!(fb, sb, "{scenario} {direction}");
                match f {
                    Inbound::Struct(f) => assert_eq!(f, s, "{scenario} {direction}"),
                    Inbound::Ack(a) => {
                        assert_eq!(&a.to_struct(), s, "{scenario} {direction}");
                        fast_acks += 1;
                    }
                    Inbound::Message(m) => {
                        let parts = marshal::MessageParts::from_struct(s);
                        assert_eq!(Some(&**m), parts.as_ref(), "{scenario} {direction}");
                        fast_messages += 1;
                    }
                }
            }
            let mut types = vec![first_type];
            types.extend(stream.iter().map(|(s, _)| s.type_id));
            assert_eq!(
                types,
                listed_types(&listing, direction),
                "{scenario} {direction}"
            );
            // Re-encode with a fresh write cache: the same bytes, frame by frame.
            let mut writer = FrameWriter::new(n.format);
            for (i, (s, original)) in stream.iter().enumerate() {
                let mut out = Vec::new();
                writer.encode(s, &mut out).unwrap();
                if &out != original {
                    let at = out
                        .iter()
                        .zip(original)
                        .position(|(a, b)| a != b)
                        .unwrap_or(out.len().min(original.len()));
                    panic!(
                        "{scenario} {direction} frame {i} ({}) differs at byte {at}:\n ours {:02x?}\n real {:02x?}\n{s:?}",
                        schema::type_name(s.type_id),
                        &out[at.saturating_sub(8)..(at + 24).min(out.len())],
                        &original[at.saturating_sub(8)..(at + 24).min(original.len())]
                    );
                }
                frames_checked += 1;
            }
        }
    }
    assert!(frames_checked > 300, "{frames_checked}");
    assert!(fast_acks > 20, "{fast_acks}");
    assert!(fast_messages > 20, "{fast_messages}");
}

#[test]
fn negotiation_follows_the_fixture_options() {
    let cases = [
        ("queue-send-receive-text", 12, true, true, true),
        ("queue-send-receive-text-loose", 12, false, true, true),
        ("queue-send-receive-text-nocache", 12, true, false, true),
        ("queue-send-receive-text-v1", 1, true, true, true),
        ("queue-send-receive-text-noprefix", 12, true, true, false),
        (
            "queue-send-receive-text-noprefix-clientonly",
            12,
            true,
            true,
            true,
        ),
    ];
    for (scenario, version, tight, cache, prefix) in cases {
        let c2s = std::fs::read(dir().join(format!("{scenario}.c2s.bin"))).unwrap();
        let s2c = std::fs::read(dir().join(format!("{scenario}.s2c.bin"))).unwrap();
        let n = negotiate(&handshake(&s2c).0, &handshake(&c2s).0).unwrap();
        assert_eq!(n.format.version, version, "{scenario}");
        assert_eq!(n.format.tight, tight, "{scenario}");
        assert_eq!(n.format.cache, cache, "{scenario}");
        assert_eq!(n.format.size_prefix, prefix, "{scenario}");
        assert_eq!(n.max_inactivity_ms, 30_000);
    }
}

#[test]
fn a_decoded_text_message_has_its_fields() {
    let c2s = std::fs::read(dir().join("queue-send-receive-text.c2s.bin")).unwrap();
    let s2c = std::fs::read(dir().join("queue-send-receive-text.s2c.bin")).unwrap();
    let (client, rest) = handshake(&c2s);
    let n = negotiate(&handshake(&s2c).0, &client).unwrap();
    let stream = decode_rest(rest, &n).structs();
    let msg = &stream.iter().find(|(s, _)| s.type_id == 28).unwrap().0;
    assert_eq!(
        msg.obj("destination").unwrap().str("physicalName"),
        Some("fixtures.q")
    );
    assert!(msg.bool("persistent"));
    assert!(msg.response_required());
    let content = msg.bytes("content").unwrap();
    assert_eq!(&content[4..], b"hello fixtures 1");
    let props =
        crate::openwire::primitive_map::decode_map(msg.bytes("marshalledProperties").unwrap())
            .unwrap()
            .unwrap();
    assert!(props.contains(&("n".to_string(), MapValue::Int(1))));
}

#[test]
fn oversize_and_garbage_frames_are_refused() {
    let mut codec = OpenWireCodec::new(1000);
    let mut buf = BytesMut::from(&[0u8, 0, 0x10, 0, 1][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::TooLarge { .. })
    ));
    let mut codec = OpenWireCodec::new(1000);
    let mut buf = BytesMut::from(&[0u8, 0, 0, 2, 77, 0][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::Wire(WireError::UnknownType(77)))
    ));
    let mut codec = OpenWireCodec::new(1000);
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert!(codec.decode(&mut buf).is_err());
}

#[test]
fn arbitrary_bytes_never_panic_the_decoder() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let base = std::fs::read(dir().join("message-types.c2s.bin")).unwrap();
    let (client, rest) = handshake(&base);
    let broker = WireFormatInfo::broker_proposal(u64::MAX, 30_000);
    let n = negotiate(&broker, &client).unwrap();
    for round in 0..3000 {
        let mut input = rest[..rest.len().min(400)].to_vec();
        for _ in 0..(next() % 6) {
            let i = (next() as usize) % input.len();
            input[i] = next() as u8;
        }
        if round % 3 == 0 {
            input = (0..(next() % 300)).map(|_| next() as u8).collect();
        }
        let mut codec = OpenWireCodec::new(1 << 20);
        codec.negotiated(&n);
        codec.fast_paths(round % 2 == 0);
        let mut buf = BytesMut::from(&input[..]);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }
    // Damaged MessageAcks and messages: the fast decoders never panic, and
    // whenever both decoders take a frame they agree on it.
    let mut frames: Vec<(Negotiated, Vec<u8>)> = Vec::new();
    for scenario in ["client-ack-and-recover", "message-types"] {
        let c2s = std::fs::read(dir().join(format!("{scenario}.c2s.bin"))).unwrap();
        let (client, rest) = handshake(&c2s);
        let n = negotiate(&broker, &client).unwrap();
        frames.extend(
            decode_rest(rest, &n)
                .structs()
                .into_iter()
                .filter(|(s, _)| s.type_id == schema::MESSAGE_ACK || schema::is_message(s.type_id))
                .map(|(_, bytes)| (n, bytes)),
        );
    }
    assert!(frames.len() > 10, "{}", frames.len());
    let (mut agreed, mut refused) = (0, 0);
    for _ in 0..5000 {
        let (n, frame) = &frames[(next() as usize) % frames.len()];
        let mut input = frame.clone();
        for _ in 0..(1 + next() % 3) {
            let i = 4 + (next() as usize) % (input.len() - 4);
            input[i] = next() as u8;
        }
        let decode = |fast: bool| {
            let mut codec = OpenWireCodec::new(1 << 20);
            codec.negotiated(n);
            codec.fast_paths(fast);
            codec.decode(&mut BytesMut::from(&input[..]))
        };
        match (decode(true), decode(false)) {
            (Ok(Some(Inbound::Message(m))), Ok(Some(Inbound::Struct(s)))) => {
                assert_eq!(Some(*m), marshal::MessageParts::from_struct(&s));
                agreed += 1;
            }
            (Ok(Some(a)), Ok(Some(b))) => {
                assert_eq!(a.into_struct(), b.into_struct());
                agreed += 1;
            }
            _ => refused += 1,
        }
    }
    assert!(agreed > 0 && refused > 0, "{agreed} {refused}");
}

#[test]
fn frames_without_size_prefix_decode_as_they_trickle_in() {
    let c2s = std::fs::read(dir().join("queue-send-receive-text.c2s.bin")).unwrap();
    let s2c = std::fs::read(dir().join("queue-send-receive-text.s2c.bin")).unwrap();
    let (client, rest) = handshake(&c2s);
    let n = negotiate(&handshake(&s2c).0, &client).unwrap();
    let structs: Vec<Struct> = decode_rest(rest, &n)
        .structs()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    // The same commands, written without size prefixes.
    let mut unprefixed = n;
    unprefixed.format.size_prefix = false;
    let mut writer = FrameWriter::new(unprefixed.format);
    let mut stream = Vec::new();
    for s in &structs {
        writer.encode(s, &mut stream).unwrap();
    }
    let mut codec = OpenWireCodec::new(u64::MAX);
    codec.negotiated(&unprefixed);
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for chunk in stream.chunks(7) {
        buf.extend_from_slice(chunk);
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            decoded.push(item.into_struct().unwrap());
        }
        // An incomplete frame waits for the bytes it lacks: asking again
        // without them does not decode it again.
        if !buf.is_empty() {
            assert!(codec.retry_at > buf.len());
        }
    }
    assert!(buf.is_empty());
    assert_eq!(decoded, structs);
    // A frame past the size limit is refused as soon as what it needs is
    // known to be past it, not buffered up to it.
    let biggest = structs
        .iter()
        .map(|s| {
            let mut one = Vec::new();
            FrameWriter::new(unprefixed.format)
                .encode(s, &mut one)
                .unwrap();
            one
        })
        .max_by_key(Vec::len)
        .unwrap();
    let limit = biggest.len() / 2;
    let mut codec = OpenWireCodec::new(limit as u64);
    codec.negotiated(&unprefixed);
    let mut buf = BytesMut::new();
    let mut refused = false;
    for chunk in biggest.chunks(7) {
        buf.extend_from_slice(chunk);
        match codec.decode(&mut buf) {
            Ok(None) => assert!(buf.len() <= limit, "{} bytes buffered", buf.len()),
            Err(CodecError::TooLarge { .. }) => {
                refused = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(refused);
}
