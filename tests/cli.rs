//! The `ferromq` binary: configuration errors stop start-up with a message
//! naming the key; SIGTERM stops a running broker with exit status 0.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ferromq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferromq"))
}

#[test]
fn a_wrong_config_key_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("broker.toml");
    std::fs::write(&conf, "[stomp]\nmax_headerz = 5\n").unwrap();
    let out = ferromq().arg("--config").arg(&conf).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_headerz"), "{err}");

    std::fs::write(&conf, "[listeners]\nstomp = \"not-an-address\"\n").unwrap();
    let out = ferromq().arg("--config").arg(&conf).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listeners.stomp"));

    let out = ferromq()
        .args(["--stomp-addr", "bogus"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listeners.stomp"));
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_broker_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = ferromq()
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--stomp-addr", "127.0.0.1:0", "--auto-addr", "127.0.0.1:0"])
        .args(["--ws-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the start-up line.
    let mut out = child.stdout.take().unwrap();
    let mut log = String::new();
    let mut buf = [0u8; 4096];
    while !log.contains("started") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no start-up line: {log}"
        );
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "broker exited early: {log}");
        log.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        dir.path().join("data").is_dir(),
        "the data directory is created"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "broker did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("stopped"), "{rest}");
}
