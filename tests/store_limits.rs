//! The store against a really full filesystem (a small tmpfs, when the
//! machine lets the test mount one), and against its configured limit.

mod common;

use common::*;
use ferromq::stomp::frame::Command;
use std::time::Duration;

fn persistent(dest: &str, body: &[u8], receipt: &str) -> ferromq::stomp::frame::Frame {
    frame(
        Command::Send,
        &[
            ("destination", dest),
            ("persistent", "true"),
            ("receipt", receipt),
            ("content-length", &body.len().to_string()),
        ],
    )
    .with_body(body.to_vec())
}

/// Sends until the broker refuses; returns how many were confirmed and the error.
async fn fill(p: &mut Client, dest: &str, body: &[u8], max: usize) -> (usize, Option<String>) {
    for i in 0..max {
        p.send(&persistent(dest, body, &format!("r{i}"))).await;
        let f = p.recv().await;
        if f.command == Command::Error {
            return (i, f.header("message").map(|m| m.to_string()));
        }
        assert_eq!(f.command, Command::Receipt);
    }
    (max, None)
}

#[tokio::test]
async fn over_the_store_limit_sends_fail_clearly_and_resume_when_consumed() {
    let b = TestBroker::start_with(|c| {
        c.store.limit = 512 * 1024;
        c.store.segment_size = 64 * 1024;
        c.store.on_limit = "fail".into();
    })
    .await;
    let mut p = b.connect("1.2").await;
    let body = vec![7u8; 16 * 1024];
    let (ok, err) = fill(&mut p, "/queue/limit", &body, 200).await;
    let err = err.expect("the limit must be reached");
    assert!(err.contains("over its limit"), "{err}");
    assert!((20..60).contains(&ok), "{ok} sends before the limit");
    // Consuming frees segments; sends work again.
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/limit", "client", &[]).await;
    let mut last = None;
    for _ in 0..ok {
        last = Some(c.expect_message().await);
    }
    c.send(&frame(
        Command::Ack,
        &[
            ("id", last.unwrap().header("ack").unwrap()),
            ("receipt", "a"),
        ],
    ))
    .await;
    c.expect_receipt("a").await;
    let (more, _) = fill(&mut p, "/queue/limit", &body, 5).await;
    assert_eq!(more, 5, "space came back");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_really_full_filesystem_gets_clear_errors_and_loses_nothing() {
    let mount = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(mount.path())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!(
            "NOTE: cannot mount a tmpfs here (not root?): the really-full-filesystem case is covered \
             only by the injected-failure tests in this run"
        );
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mount.path().to_path_buf());
    // Something to free later, as an operator would.
    let filler = mount.path().join("filler");
    std::fs::write(&filler, vec![0u8; 512 * 1024]).unwrap();
    let data = mount.path().join("data");
    {
        let b = TestBroker::start_in(&data, |c| c.store.segment_size = 256 * 1024).await;
        let mut p = b.connect("1.2").await;
        let body = vec![1u8; 32 * 1024];
        let (ok, err) = fill(&mut p, "/queue/full", &body, 200).await;
        let err = err.expect("the disk must fill up");
        assert!(err.contains("store write failed"), "{err}");
        assert!(ok > 5, "{ok} confirmed before the disk was full");
        // The connection is still usable, and consumers are served.
        let mut c = b.connect("1.2").await;
        c.subscribe("s", "/queue/full", "auto", &[]).await;
        c.expect_message().await;
        // Space comes back: sends succeed again.
        std::fs::remove_file(&filler).unwrap();
        let (more, err) = fill(&mut p, "/queue/after", &body, 3).await;
        assert_eq!(more, 3, "{err:?}");
        drop(c);
        b.stop().await;
    }
    // After a restart the journal is intact: every confirmed message is there.
    let b = TestBroker::start_in(&data, |_| {}).await;
    let mut c = b.connect("1.2").await;
    c.subscribe("s", "/queue/after", "auto", &[]).await;
    for _ in 0..3 {
        c.expect_message().await;
    }
    assert!(c.recv_within(Duration::from_millis(300)).await.is_none());
    b.stop().await;
}
