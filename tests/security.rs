//! Authentication and authorization over real sockets: STOMP frames and the
//! load tools (STOMP and OpenWire) against a broker with users and
//! authorization entries.

mod common;

use common::{frame, Client, TestBroker};
use ferromq::broker::security::{EntrySpec, UserSpec};
use ferromq::loadtool::{run_consumer, run_producer, CommonArgs, ConsumerArgs, ProducerArgs};
use ferromq::stomp::frame::Command;
use std::time::Duration;

fn user(name: &str, password: &str, groups: &str) -> UserSpec {
    UserSpec {
        name: name.into(),
        password: password.into(),
        groups: groups.into(),
    }
}

fn queue_entry(pattern: &str, read: &str, write: &str, admin: &str) -> EntrySpec {
    EntrySpec {
        queue: Some(pattern.into()),
        topic: None,
        read: read.into(),
        write: write.into(),
        admin: admin.into(),
    }
}

async fn secured() -> TestBroker {
    TestBroker::start_with(|c| {
        c.security.users = vec![
            user("admin", "adminpw", "admins,users"),
            user("user", "userpw", "users"),
        ];
        c.security.authorization = vec![
            queue_entry(">", "admins", "admins", "admins"),
            queue_entry("USERS.>", "users", "users", "users"),
            queue_entry("READONLY.>", "users", "admins", "admins"),
            EntrySpec {
                topic: Some(">".into()),
                read: "admins".into(),
                write: "admins".into(),
                admin: "admins".into(),
                ..EntrySpec::default()
            },
            EntrySpec {
                topic: Some("USERS.*".into()),
                read: "users".into(),
                admin: "users".into(),
                ..EntrySpec::default()
            },
        ];
    })
    .await
}

#[tokio::test]
async fn stomp_wrong_credentials_get_an_error_and_the_connection_closes() {
    let b = secured().await;
    for headers in [
        vec![("login", "user"), ("passcode", "wrong")],
        vec![("login", "ghost"), ("passcode", "userpw")],
        vec![],
    ] {
        let mut c = Client::raw(b.stomp).await;
        let mut f = frame(
            Command::Connect,
            &[("accept-version", "1.2"), ("receipt", "c1")],
        );
        for (k, v) in &headers {
            f = f.with_header(*k, *v);
        }
        c.send(&f).await;
        let e = c.expect_error().await;
        let who = headers.first().map_or("null", |h| h.1);
        assert_eq!(
            e.header("message").map(|m| m.as_str()),
            Some(format!("User name [{who}] or password is invalid.").as_str())
        );
        assert_eq!(e.header("receipt-id").map(|m| m.as_str()), Some("c1"));
        assert!(c.closed_within(Duration::from_secs(5)).await);
    }
    let ok = Client::connect(b.stomp, "1.2", &[("login", "user"), ("passcode", "userpw")]).await;
    ok.disconnect().await;
    b.stop().await;
}

#[tokio::test]
async fn stomp_sends_and_subscriptions_are_checked() {
    let b = secured().await;
    let mut u = Client::connect(b.stomp, "1.2", &[("login", "user"), ("passcode", "userpw")]).await;
    refused(
        &mut u,
        Command::Send,
        "/queue/ADMIN.q",
        "User user is not authorized to write to: queue://ADMIN.q",
    )
    .await;
    // Reading a queue no one made yet is creating it: an admin's.
    refused(
        &mut u,
        Command::Subscribe,
        "/queue/READONLY.a",
        "User user is not authorized to create: queue://READONLY.a",
    )
    .await;
    assert!(b.broker.find_queue("READONLY.a").is_none(), "nothing made");
    // Once the admin made it, the user reads it, but never writes to it.
    let mut a = Client::connect(
        b.stomp,
        "1.2",
        &[("login", "admin"), ("passcode", "adminpw")],
    )
    .await;
    a.send_text("/queue/READONLY.a", "from the admin", Some("a1"))
        .await;
    u.subscribe("2", "/queue/READONLY.a", "auto", &[]).await;
    assert_eq!(common::body(&u.expect_message().await), "from the admin");
    refused(
        &mut u,
        Command::Send,
        "/queue/READONLY.a",
        "User user is not authorized to write to: queue://READONLY.a",
    )
    .await;
    // A composite is checked element by element: nothing of it is sent.
    refused(
        &mut u,
        Command::Send,
        "/queue/USERS.a,/queue/ADMIN.b",
        "User user is not authorized to write to: queue://ADMIN.b",
    )
    .await;
    assert_eq!(b.broker.queue("USERS.a").pending_count(), 0);
    // The connection still works where the user may go.
    u.subscribe("3", "/queue/USERS.b", "auto", &[]).await;
    u.send_text("/queue/USERS.b", "mine", Some("s4")).await;
    assert_eq!(common::body(&u.expect_message().await), "mine");
    u.disconnect().await;
    a.disconnect().await;
    b.stop().await;
}

/// A SEND or SUBSCRIBE with a receipt that the broker refuses: an ERROR
/// with `message` and the receipt's id.
async fn refused(c: &mut Client, command: Command, destination: &str, message: &str) {
    c.send(&frame(
        command,
        &[
            ("destination", destination),
            ("id", "x"),
            ("receipt", "refused"),
        ],
    ))
    .await;
    let e = c.expect_error().await;
    assert_eq!(e.header("message").map(|m| m.as_str()), Some(message));
    assert_eq!(e.header("receipt-id").map(|m| m.as_str()), Some("refused"));
}

/// A wildcard subscription is allowed where an entry of a topic it covers
/// allows it, and joins only the topics its user may read, existing or new.
#[tokio::test]
async fn wildcard_subscriptions_join_only_readable_topics() {
    let b = secured().await;
    let mut a = Client::connect(
        b.stomp,
        "1.2",
        &[("login", "admin"), ("passcode", "adminpw")],
    )
    .await;
    a.send_text("/topic/USERS.x.old", "made before", Some("a0"))
        .await;
    let mut u = Client::connect(b.stomp, "1.2", &[("login", "user"), ("passcode", "userpw")]).await;
    refused(
        &mut u,
        Command::Subscribe,
        "/topic/ADMIN.>",
        "User user is not authorized to read from: topic://ADMIN.>",
    )
    .await;
    u.subscribe("1", "/topic/USERS.>", "auto", &[]).await;
    for (i, topic) in [
        "/topic/USERS.x.old",
        "/topic/USERS.a",
        "/topic/USERS.a.b",
        "/topic/USERS.c",
    ]
    .iter()
    .enumerate()
    {
        a.send_text(topic, topic, Some(&format!("a{}", i + 1)))
            .await;
    }
    let got: Vec<String> = [u.expect_message().await, u.expect_message().await]
        .iter()
        .map(common::body)
        .collect();
    assert_eq!(got, ["/topic/USERS.a", "/topic/USERS.c"]);
    assert!(
        u.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing from the topics only admins read"
    );
    u.disconnect().await;
    a.disconnect().await;
    b.stop().await;
}

fn args(url: String, destination: &str, login: Option<(&str, &str)>) -> CommonArgs {
    CommonArgs {
        url,
        destination: destination.into(),
        count: 200,
        clients: 1,
        duration: None,
        timeout: 30.0,
        json: false,
        threads: 1,
        user: login.map(|l| l.0.to_string()),
        password: login.map(|l| l.1.to_string()),
    }
}

/// The load tools give credentials over both protocols, and report the
/// refusals (OpenWire: the broker's SecurityException).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tools_log_in_over_stomp_and_openwire() {
    let b = secured().await;
    for url in [format!("stomp://{}", b.stomp), format!("tcp://{}", b.auto)] {
        let dest = "queue://USERS.tools";
        let consumer = tokio::spawn(run_consumer(ConsumerArgs {
            common: args(url.clone(), dest, Some(("user", "userpw"))),
            ack: "auto".into(),
            prefetch: 100,
            batch: 0,
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let p = run_producer(ProducerArgs {
            common: args(url.clone(), dest, Some(("user", "userpw"))),
            size: 100,
            persistent: true,
            batch: 0,
            rate: 0.0,
        })
        .await
        .unwrap();
        assert_eq!(
            (p.messages, p.errors),
            (200, 0),
            "{url}: {:?}",
            p.first_error
        );
        let c = consumer.await.unwrap().unwrap();
        assert_eq!(
            (c.messages, c.errors),
            (200, 0),
            "{url}: {:?}",
            c.first_error
        );

        for (login, refusal) in [
            (
                Some(("user", "nope")),
                "User name [user] or password is invalid.",
            ),
            (None, "User name [null] or password is invalid."),
        ] {
            let error = producer_error(&url, dest, login).await;
            assert!(error.contains(refusal), "{url}: {error}");
        }
        let error = producer_error(&url, "queue://ADMIN.tools", Some(("user", "userpw"))).await;
        assert!(
            error.contains("User user is not authorized to write to: queue://ADMIN.tools"),
            "{url}: {error}"
        );
    }
    b.stop().await;
}

/// The first error a producer run of the load tool met (persistent sends,
/// so that a refusal comes back to it).
async fn producer_error(url: &str, destination: &str, login: Option<(&str, &str)>) -> String {
    let run = run_producer(ProducerArgs {
        common: args(url.to_string(), destination, login),
        size: 100,
        persistent: true,
        batch: 0,
        rate: 0.0,
    })
    .await;
    match run {
        Ok(s) => s.first_error.unwrap_or_default(),
        Err(e) => e.to_string(),
    }
}
