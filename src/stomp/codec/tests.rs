use super::*;
use std::path::PathBuf;

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("protocol-fixtures/stomp")
}

/// Decodes a whole stream, switching to the version a CONNECTED frame names
/// (or `version` once a CONNECT went by, for client streams).
fn decode_all(bytes: &[u8], client_version: Version) -> Result<Vec<Item>, CodecError> {
    let mut codec = StompCodec::new(Limits::default());
    let mut buf = BytesMut::from(bytes);
    let mut items = Vec::new();
    while let Some(item) = codec.decode(&mut buf)? {
        if let Item::Frame(f) = &item {
            match f.command {
                Command::Connected => {
                    let v = f
                        .header("version")
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    codec.set_version(Version::parse(&v).unwrap_or(Version::V1_0));
                }
                Command::Connect | Command::Stomp => codec.set_version(client_version),
                _ => {}
            }
        }
        items.push(item);
    }
    assert!(buf.is_empty(), "bytes left over: {:?}", &buf[..]);
    Ok(items)
}

/// Decodes byte by byte; must give the same items as decoding all at once.
fn decode_bytewise(bytes: &[u8], client_version: Version) -> Vec<Item> {
    let mut codec = StompCodec::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for &b in bytes {
        buf.put_u8(b);
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            if let Item::Frame(f) = &item {
                match f.command {
                    Command::Connected => {
                        let v = f.header("version").unwrap().to_string();
                        codec.set_version(Version::parse(&v).unwrap());
                    }
                    Command::Connect | Command::Stomp => codec.set_version(client_version),
                    _ => {}
                }
            }
            items.push(item);
        }
    }
    items
}

/// The frames the fixture's listing says are in `file`: (command, body length),
/// with ("EOL", n) for n heart-beat EOLs.
fn listed_frames(listing: &str, file: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut in_section = false;
    for line in listing.lines() {
        if let Some(rest) = line.strip_prefix("-- ") {
            in_section = rest.starts_with(&format!("{file} "));
            continue;
        }
        if !in_section || !line.trim_start().starts_with("off=") {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields[2] == "EOL" {
            let n: usize = fields[3].trim_start_matches('x').parse().unwrap();
            out.push(("EOL".to_string(), n));
        } else {
            let body: usize = fields[3].trim_start_matches("body=").parse().unwrap();
            out.push((fields[2].to_string(), body));
        }
    }
    out
}

fn summarize(items: &[Item]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for item in items {
        match item {
            Item::HeartBeat => match out.last_mut() {
                Some((c, n)) if c == "EOL" => *n += 1,
                _ => out.push(("EOL".into(), 1)),
            },
            Item::Frame(f) => out.push((f.command.to_string(), f.body.len())),
        }
    }
    out
}

#[test]
fn every_fixture_stream_decodes_as_listed() {
    let dir = fixtures_dir();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !name.ends_with(".bin") || name.contains(".openwire.") {
            continue;
        }
        // The listing is the longest `<prefix>.txt` (scenario names hold dots).
        let scenario = (1..name.len())
            .rev()
            .map(|i| &name[..i])
            .find(|p| dir.join(format!("{p}.txt")).exists())
            .unwrap_or_else(|| panic!("{name}: no listing file"));
        let listing = std::fs::read_to_string(dir.join(format!("{scenario}.txt"))).unwrap();
        let expected = listed_frames(&listing, &name);
        assert!(!expected.is_empty(), "{name}: no listing");
        let bytes = std::fs::read(&path).unwrap();
        // Every client in the captures asked for one version; 1.2 unless 1.0 only.
        let version = if scenario == "connect-1.0" {
            Version::V1_0
        } else {
            Version::V1_2
        };
        if name == "error-malformed-frame.c2s.bin" {
            // The last SEND has content-length:abc: everything before it
            // decodes, then the codec refuses it as ActiveMQ does.
            let err = decode_all(&bytes, version).unwrap_err();
            assert_eq!(
                err.to_string(),
                "Specified content-length is not a valid integer"
            );
            let mut codec = StompCodec::new(Limits::default());
            let mut buf = BytesMut::from(&bytes[..]);
            let mut items = Vec::new();
            while let Ok(Some(item)) = codec.decode(&mut buf) {
                items.push(item);
            }
            assert_eq!(summarize(&items), expected[..expected.len() - 1], "{name}");
            checked += 1;
            continue;
        }
        let items = decode_all(&bytes, version).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(summarize(&items), expected, "{name}");
        assert_eq!(
            decode_bytewise(&bytes, version),
            items,
            "{name} byte by byte"
        );
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} fixture streams found");
}

#[test]
fn fixture_header_escaping_is_decoded() {
    let bytes = std::fs::read(fixtures_dir().join("header-escaping.s2c.bin")).unwrap();
    let items = decode_all(&bytes, Version::V1_2).unwrap();
    let msg = items
        .iter()
        .find_map(|i| match i {
            Item::Frame(f) if f.command == Command::Message => Some(f),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        msg.header("escaped-value").unwrap(),
        "line1\nline2:colon\\backslash\rcr"
    );
    assert_eq!(msg.header("key:with:colons").unwrap(), "v");
    assert_eq!(msg.header("utf8-header").unwrap(), "你好");
    assert!(msg.header("message-id").unwrap().starts_with("ID:vm-"));
    // Re-encoding gives back the bytes ActiveMQ wrote for that frame.
    let mut out = BytesMut::new();
    encode_frame(msg, Version::V1_2, &mut out);
    let text = String::from_utf8_lossy(&bytes);
    let start = text.find("MESSAGE\n").unwrap();
    assert_eq!(&bytes[start..start + out.len()], &out[..]);
}

#[test]
fn fixture_binary_body_is_byte_exact() {
    let bytes = std::fs::read(fixtures_dir().join("binary-body-content-length.c2s.bin")).unwrap();
    let items = decode_all(&bytes, Version::V1_2).unwrap();
    let send = items
        .iter()
        .find_map(|i| match i {
            Item::Frame(f) if f.command == Command::Send => Some(f),
            _ => None,
        })
        .unwrap();
    assert_eq!(send.body.len(), 16);
    assert!(send.body.contains(&0));
}

#[test]
fn header_line_without_colon_is_an_empty_header() {
    let mut codec = StompCodec::new(Limits::default());
    let mut buf = BytesMut::from(&b"SEND\ndestination:/queue/a\nno-colon\n\nbody\0"[..]);
    let Some(Item::Frame(f)) = codec.decode(&mut buf).unwrap() else {
        panic!()
    };
    assert_eq!(f.header("no-colon").unwrap(), "");
    assert_eq!(&f.body[..], b"body");
}

#[test]
fn first_repeated_header_wins_and_crlf_is_accepted() {
    let mut codec = StompCodec::new(Limits::default());
    codec.set_version(Version::V1_2);
    let mut buf = BytesMut::from(&b"\r\nSEND\r\nfoo:first\r\nfoo:second\r\n\r\nx\0\r\n"[..]);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(Item::HeartBeat));
    let Some(Item::Frame(f)) = codec.decode(&mut buf).unwrap() else {
        panic!()
    };
    assert_eq!(f.header("foo").unwrap(), "first");
    assert_eq!(f.headers.len(), 2);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(Item::HeartBeat));
    assert!(buf.is_empty());
}

#[test]
fn escapes_depend_on_version_and_never_apply_to_connect() {
    let raw = b"SEND\na\\cb:x\\ny\\\\z\\r\n\n\0";
    let mut codec = StompCodec::new(Limits::default());
    let Some(Item::Frame(f)) = codec.decode(&mut BytesMut::from(&raw[..])).unwrap() else {
        panic!()
    };
    assert_eq!(f.headers[0].0, "a\\cb", "1.0 does not unescape");

    codec.set_version(Version::V1_1);
    let Some(Item::Frame(f)) = codec.decode(&mut BytesMut::from(&raw[..])).unwrap() else {
        panic!()
    };
    assert_eq!(
        f.headers[0],
        ("a:b".into(), "x\ny\\z\\r".into()),
        "1.1 keeps an unknown escape"
    );

    let mut codec = StompCodec::new(Limits::default());
    codec.set_version(Version::V1_2);
    let Some(Item::Frame(f)) = codec.decode(&mut BytesMut::from(&raw[..])).unwrap() else {
        panic!()
    };
    assert_eq!(f.headers[0], ("a:b".into(), "x\ny\\z\r".into()));

    let Some(Item::Frame(f)) = codec
        .decode(&mut BytesMut::from(&b"CONNECT\nlogin:a\\cb\n\n\0"[..]))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(f.header("login").unwrap(), "a\\cb");
}

#[test]
fn content_length_body_may_hold_nul_and_is_checked() {
    let mut codec = StompCodec::new(Limits::default());
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:3\n\na\0b\0"[..]);
    let Some(Item::Frame(f)) = codec.decode(&mut buf).unwrap() else {
        panic!()
    };
    assert_eq!(&f.body[..], b"a\0b");

    for bad in [
        &b"SEND\ncontent-length:abc\n\n\0"[..],
        b"SEND\ncontent-length:-1\n\n\0",
    ] {
        let err = StompCodec::new(Limits::default())
            .decode(&mut BytesMut::from(bad))
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("content-length is not a valid integer"));
    }
    let err = StompCodec::new(Limits::default())
        .decode(&mut BytesMut::from(&b"SEND\ncontent-length:1\n\nab\0"[..]))
        .unwrap_err();
    assert!(matches!(err, CodecError::Malformed(_)));
}

#[test]
fn limits_are_enforced_before_buffering() {
    let limits = Limits {
        max_command_length: 16,
        max_header_length: 32,
        max_headers: 3,
        max_frame_size: 64,
    };
    let cases: [(&[u8], &str); 5] = [
        (&[b'A'; 40], "command length"),
        (
            b"SEND\nh:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "header length",
        ),
        (b"SEND\na:1\nb:2\nc:3\nd:4\n", "number of headers"),
        (b"SEND\ncontent-length:65\n\n", "data length"),
        (
            &[b"SEND\n\n".as_slice(), &[b'x'; 70]].concat(),
            "data length",
        ),
    ];
    for (input, what) in cases {
        let err = StompCodec::new(limits)
            .decode(&mut BytesMut::from(input))
            .unwrap_err();
        assert!(matches!(err, CodecError::TooLarge(_)), "{what}: {err}");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
}

#[test]
fn invalid_utf8_header_is_malformed() {
    let err = StompCodec::new(Limits::default())
        .decode(&mut BytesMut::from(&b"SEND\nh:\xff\xfe\n\n\0"[..]))
        .unwrap_err();
    assert!(err.to_string().contains("UTF-8"));
}

#[test]
fn large_body_is_taken_in_one_piece() {
    let body = vec![7u8; 20 * 1024 * 1024];
    let mut wire = BytesMut::new();
    let frame = Frame::new(Command::Send)
        .with_header("content-length", body.len().to_string())
        .with_body(body.clone());
    encode_frame(&frame, Version::V1_2, &mut wire);
    let mut codec = StompCodec::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut got = None;
    for chunk in wire.chunks(64 * 1024) {
        buf.extend_from_slice(chunk);
        if let Some(Item::Frame(f)) = codec.decode(&mut buf).unwrap() {
            got = Some(f);
        }
    }
    assert_eq!(got.unwrap().body.len(), body.len());
}

/// A small deterministic generator (xorshift64*) for the property tests.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn text(&mut self, alphabet: &[&str], max: usize) -> String {
        (0..self.below(max + 1))
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }
}

#[test]
fn arbitrary_bytes_never_panic_the_decoder() {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "bin") {
            seeds.push(std::fs::read(path).unwrap());
        }
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let alphabet: &[u8] = b"\0\n\r:\\cnrSENDCONTENT-length0123456789 \xff";
    for round in 0..20_000 {
        let mut input: Vec<u8> = if round % 2 == 0 {
            let seed = &seeds[rng.below(seeds.len())];
            seed[..seed.len().min(600)].to_vec()
        } else {
            (0..rng.below(200))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect()
        };
        for _ in 0..rng.below(8) {
            if input.is_empty() {
                break;
            }
            let i = rng.below(input.len());
            input[i] = match rng.below(3) {
                0 => alphabet[rng.below(alphabet.len())],
                1 => rng.next() as u8,
                _ => b'\n',
            };
        }
        let limits = Limits {
            max_command_length: 64,
            max_header_length: 128,
            max_headers: 8,
            max_frame_size: 4096,
        };
        let mut codec = StompCodec::new(limits);
        codec.set_version([Version::V1_0, Version::V1_1, Version::V1_2][round % 3]);
        let mut buf = BytesMut::new();
        'feed: for chunk in input.chunks(1 + rng.below(16)) {
            buf.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }
}

#[test]
fn encode_then_decode_is_identity() {
    let mut rng = Rng(42);
    let commands = [
        Command::Send,
        Command::Message,
        Command::Subscribe,
        Command::Ack,
        Command::Receipt,
        Command::Error,
        Command::Connect,
        Command::Connected,
    ];
    let plain = ["a", "b", "z", "0", "-", ".", "/", "é", "你", " "];
    let special = ["\n", ":", "\\", "\r"];
    for round in 0..5_000 {
        let version = [Version::V1_0, Version::V1_1, Version::V1_2][round % 3];
        let command = commands[rng.below(commands.len())].clone();
        // What a header may hold depends on the version and the command.
        let mut alphabet: Vec<&str> = plain.to_vec();
        let escapes = version >= Version::V1_1 && !command.is_connect_family();
        if escapes {
            alphabet.extend_from_slice(&special[..if version == Version::V1_2 { 4 } else { 3 }]);
        }
        let mut frame = Frame::new(command);
        let mut names = std::collections::HashSet::new();
        for _ in 0..rng.below(6) {
            let mut name = rng.text(&alphabet, 8);
            if name.is_empty() || name == "content-length" || (!escapes && name.contains(':')) {
                name.insert(0, 'h');
            }
            if !names.insert(name.clone()) {
                continue;
            }
            let mut value = rng.text(&alphabet, 12);
            if !escapes {
                // 1.0 and CONNECT values are trimmed on the way in.
                value = value.trim().to_string();
            }
            frame.headers.push((name.into(), value.into()));
        }
        let body: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
        let has_nul = body.contains(&0);
        if has_nul || rng.below(2) == 0 {
            frame
                .headers
                .push(("content-length".into(), body.len().to_string().into()));
        }
        frame.body = Bytes::from(body);

        let mut wire = BytesMut::new();
        encode_frame(&frame, version, &mut wire);
        let mut codec = StompCodec::new(Limits::default());
        codec.set_version(version);
        let Some(Item::Frame(decoded)) = codec.decode(&mut wire).unwrap() else {
            panic!("no frame")
        };
        assert_eq!(decoded, frame, "round {round} {version:?}");
        assert_eq!(codec.decode(&mut wire).unwrap(), Some(Item::HeartBeat));
        assert!(wire.is_empty());
    }
}

#[test]
fn frames_already_buffered_are_not_copied() {
    // Bodies are slices of the read buffer: decoding a content-length frame
    // whose body is already there must not move the buffer (the frames
    // before it still share it, so a copy doubles the memory queued
    // messages hold).
    let one = b"SEND\ndestination:/queue/a\ncontent-length:5\n\nhello\0";
    let mut buf = BytesMut::with_capacity(one.len() * 3);
    for _ in 0..3 {
        buf.extend_from_slice(one);
    }
    let start = buf.as_ptr() as usize;
    let end = start + buf.capacity();
    let mut codec = StompCodec::new(Limits::default());
    for _ in 0..3 {
        let Some(Item::Frame(f)) = codec.decode(&mut buf).unwrap() else {
            panic!("a frame")
        };
        let at = f.body.as_ptr() as usize;
        assert_eq!(&f.body[..], b"hello");
        assert!(at >= start && at < end, "the body was copied elsewhere");
    }
}

#[test]
fn header_text_is_escaped_as_each_version_requires() {
    let text = "a:b\nc\\d\re";
    let put = |v: Option<Version>| {
        let mut out = BytesMut::new();
        put_text(&mut out, text, v);
        String::from_utf8(out.to_vec()).unwrap()
    };
    assert_eq!(put(None), text, "CONNECT frames are never escaped");
    assert_eq!(put(Some(Version::V1_0)), text);
    assert_eq!(put(Some(Version::V1_1)), "a\\cb\\nc\\\\d\re");
    assert_eq!(put(Some(Version::V1_2)), "a\\cb\\nc\\\\d\\re");
    // What is written decodes back to the text, for every version.
    for v in [Version::V1_1, Version::V1_2] {
        let mut frame = BytesMut::from(&b"SEND\nh:"[..]);
        put_text(&mut frame, text, Some(v));
        frame.extend_from_slice(b"\n\n\0");
        let mut codec = StompCodec::new(Limits::default());
        codec.set_version(v);
        let Some(Item::Frame(f)) = codec.decode(&mut frame).unwrap() else {
            panic!()
        };
        assert_eq!(f.header("h").unwrap(), text, "{v:?}");
    }
    let mut n = BytesMut::new();
    for v in [0, 7, -1, i64::MIN, i64::MAX] {
        n.clear();
        put_int(&mut n, v);
        assert_eq!(&n[..], v.to_string().as_bytes());
    }
    n.clear();
    put_uint(&mut n, u64::MAX);
    assert_eq!(&n[..], u64::MAX.to_string().as_bytes());
}
