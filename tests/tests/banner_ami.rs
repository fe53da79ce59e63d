//! The AMI back end (`cgp_lookup::ami`) against the scripted AMI server,
//! alone and behind the PBX interface (`cgp_lookup::pbx`).

use cgp_lookup::ami::{Ami, AmiConfig, AmiServer, ExtensionState};
use cgp_lookup::pbx::{ExtState, ExtensionId, Pbx, PbxError, PbxEvent, Voicemail};
use cgp_tests::fake_ami::{FakeAmi, Fault};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

fn server(name: &str, port: u16, secret: &str, require_md5: bool) -> AmiServer {
    AmiServer {
        name: name.into(),
        host: "127.0.0.1".into(),
        port,
        username: "cgp".into(),
        secret: secret.into(),
        require_md5,
    }
}

fn config(servers: Vec<AmiServer>) -> AmiConfig {
    AmiConfig {
        servers,
        action_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(2),
        ping_interval: Duration::from_secs(1),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(300),
    }
}

/// Waits (generously) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_event(
    rx: &mut broadcast::Receiver<PbxEvent>,
    want: impl Fn(&PbxEvent) -> bool,
) -> PbxEvent {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let e = rx.recv().await.expect("event stream open");
            if want(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event within the bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_login_actions_lists_and_typed_errors() {
    let fake = FakeAmi::start("cgp", "s3cret", true);
    fake.set_mailbox("1001@default", 3, 7);
    fake.set_extension("1001", "default", "PJSIP/1001", 1);
    fake.set_extension("1002", "default", "PJSIP/1002", 0);
    let ami = Ami::start(&config(vec![server("pbx1", fake.port(), "s3cret", true)]));
    until("login", || ami.is_up("pbx1")).await;
    assert_eq!(fake.count("Challenge"), 1, "MD5 login asks for a challenge");
    assert_eq!(ami.default_server(), Some("pbx1"));

    assert_eq!(
        ami.mailbox_count("pbx1", "1001@default").await,
        Ok(Voicemail { new: 3, old: 7 })
    );
    assert_eq!(
        ami.extension_state("pbx1", "1001", "default")
            .await
            .map(|s| s.status),
        Ok(1)
    );
    ami.ping("pbx1").await.expect("Ping: Pong");
    let mut list = ami
        .extension_states("pbx1")
        .await
        .expect("EventList gathered");
    list.sort_by(|a, b| a.exten.cmp(&b.exten));
    assert_eq!(
        list,
        vec![
            ExtensionState {
                exten: "1001".into(),
                context: "default".into(),
                status: 1
            },
            ExtensionState {
                exten: "1002".into(),
                context: "default".into(),
                status: 0
            },
        ]
    );
    assert!(matches!(
        ami.mailbox_count("nosuch", "1").await,
        Err(PbxError::UnknownPbx(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_login_when_no_challenge_is_offered_and_md5_can_be_required() {
    let fake = FakeAmi::start("cgp", "plain", false);
    let ami = Ami::start(&config(vec![
        server("plain", fake.port(), "plain", false),
        server("strict", fake.port(), "plain", true),
    ]));
    until("plain login", || ami.is_up("plain")).await;
    ami.ping("plain").await.expect("logged in with Secret");
    // Give the strict client time for several attempts; it must never log in.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!ami.is_up("strict"));
    assert!(matches!(ami.ping("strict").await, Err(PbxError::Down(_))));
    assert_eq!(fake.logins(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_login_keeps_the_server_down_without_blocking_callers() {
    let fake = FakeAmi::start("cgp", "right", true);
    let ami = Ami::start(&config(vec![server("pbx", fake.port(), "wrong", false)]));
    until("several login attempts", || fake.count("Login") >= 2).await;
    let t = Instant::now();
    assert!(matches!(
        ami.mailbox_count("pbx", "1@x").await,
        Err(PbxError::Down(_))
    ));
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "a down server fails at once"
    );
    assert_eq!(fake.logins(), 0);

    // The right secret, but the server refuses every login.
    let refusing = FakeAmi::start("cgp", "right", true);
    refusing.set_fault(Fault::RefuseLogin);
    let ami = Ami::start(&config(vec![server(
        "pbx",
        refusing.port(),
        "right",
        false,
    )]));
    until("several login attempts", || refusing.count("Login") >= 2).await;
    assert!(!ami.is_up("pbx"));
    assert_eq!(refusing.logins(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_servers_time_out_within_the_action_timeout() {
    let fake = FakeAmi::start("cgp", "s", true);
    fake.set_mailbox("1@x", 1, 0);
    let ami = Ami::start(&config(vec![server("pbx", fake.port(), "s", false)]));
    until("login", || ami.is_up("pbx")).await;

    fake.set_fault(Fault::Slow(Duration::from_millis(100)));
    assert_eq!(
        ami.mailbox_count("pbx", "1@x").await,
        Ok(Voicemail { new: 1, old: 0 })
    );

    fake.set_fault(Fault::NoReply);
    let t = Instant::now();
    assert!(matches!(
        ami.mailbox_count("pbx", "1@x").await,
        Err(PbxError::Timeout(_))
    ));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_error_is_typed_and_a_lost_link_is_down() {
    let fake = FakeAmi::start("cgp", "s", true);
    let ami = Ami::start(&config(vec![server("pbx", fake.port(), "s", false)]));
    until("login", || ami.is_up("pbx")).await;
    assert_eq!(
        ami.mailbox_count("pbx", "").await,
        Err(PbxError::Refused("Mailbox or Exten not specified".into()))
    );
    assert!(ami.is_up("pbx"), "a refused action leaves the link up");
    drop(fake);
    until("link lost", || !ami.is_up("pbx")).await;
    assert!(matches!(ami.ping("pbx").await, Err(PbxError::Down(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_forwarded_and_a_dropped_link_resyncs_then_reconnects() {
    let fake = FakeAmi::start("cgp", "s", true);
    let ami = Ami::start(&config(vec![server("pbx", fake.port(), "s", false)]));
    let mut rx = ami.subscribe();
    until("login", || ami.is_up("pbx")).await;
    until("session registered", || fake.sessions() == 1).await;

    fake.message_waiting("1001@default", 2, 5);
    let e = next_event(&mut rx, |e| matches!(e, PbxEvent::Voicemail { .. })).await;
    assert_eq!(
        e,
        PbxEvent::Voicemail {
            pbx: "pbx".into(),
            mailbox: "1001@default".into(),
            counts: Voicemail { new: 2, old: 5 }
        }
    );
    fake.extension_status("1001", "default", "PJSIP/1001", 8);
    let e = next_event(&mut rx, |e| matches!(e, PbxEvent::Extension { .. })).await;
    assert_eq!(
        e,
        PbxEvent::Extension {
            pbx: "pbx".into(),
            extension: ExtensionId {
                exten: "1001".into(),
                context: "default".into()
            },
            state: ExtState::Ringing
        }
    );

    // A reply cut in the middle: the call fails, the link is rebuilt.
    fake.set_fault(Fault::DropMidMessage);
    assert!(ami.ping("pbx").await.is_err());
    next_event(&mut rx, |e| matches!(e, PbxEvent::Resync { .. })).await;
    fake.set_fault(Fault::None);
    next_event(&mut rx, |e| matches!(e, PbxEvent::Connected { .. })).await;
    until("back up", || ami.is_up("pbx")).await;
    ami.ping("pbx").await.expect("works after reconnect");
    assert!(fake.logins() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_at_start_is_connected_when_it_comes_up() {
    // A free port with nothing listening yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let other = FakeAmi::start("cgp", "s", true);
    let ami = Ami::start(&config(vec![
        server("late", port, "s", false),
        server("early", other.port(), "s", false),
    ]));
    until("the running server", || ami.is_up("early")).await;
    assert!(matches!(ami.ping("late").await, Err(PbxError::Down(_))));
    let late = FakeAmi::start_on(port, "cgp", "s", true);
    late.set_mailbox("9@x", 4, 0);
    until("the late server", || ami.is_up("late")).await;
    assert_eq!(
        ami.mailbox_count("late", "9@x").await,
        Ok(Voicemail { new: 4, old: 0 })
    );
    assert_eq!(
        other.count("MailboxCount"),
        0,
        "actions go to the named server only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_detect_a_server_that_stopped_answering() {
    let fake = FakeAmi::start("cgp", "s", true);
    let mut cfg = config(vec![server("pbx", fake.port(), "s", false)]);
    cfg.ping_interval = Duration::from_millis(300);
    let ami = Ami::start(&cfg);
    let mut rx = ami.subscribe();
    until("login", || ami.is_up("pbx")).await;
    until("keep-alive pings", || fake.count("Ping") >= 2).await;
    assert_eq!(fake.logins(), 1, "answered pings keep the link");

    // Logins still work, but nothing else is answered: the unanswered ping
    // must bring the link down, and the supervisor logs in again.
    fake.set_fault(Fault::NoReply);
    next_event(&mut rx, |e| matches!(e, PbxEvent::Resync { .. })).await;
    until("a new login", || fake.logins() >= 2).await;
}

/// The PBX interface over AMI: a link lost while the PBX's state changes
/// leaves nothing stale behind; after the reconnect the extension table is
/// rebuilt from one ExtensionStateList, without a question per extension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pbx_interface_rebuilds_state_after_a_reconnect_instead_of_keeping_it() {
    let fake = FakeAmi::start("cgp", "s", true);
    fake.set_extension("1001", "default", "PJSIP/1001", 0);
    fake.set_mailbox("1001@default", 1, 0);
    let ami = Arc::new(Ami::start(&config(vec![server(
        "pbx",
        fake.port(),
        "s",
        false,
    )])));
    let pbx = Pbx::start(vec![ami.clone()], Duration::from_secs(300)).unwrap();
    let phone = ExtensionId {
        exten: "1001".into(),
        context: "default".into(),
    };
    until("the first snapshot", || {
        fake.count("ExtensionStateList") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pbx.extension(None, &phone).await, Ok(ExtState::Idle));
    assert_eq!(
        pbx.voicemail(Some("pbx"), "1001@default").await,
        Ok(Voicemail { new: 1, old: 0 })
    );

    fake.set_extension("1001", "default", "PJSIP/1001", 2);
    fake.set_mailbox("1001@default", 3, 0);
    fake.set_fault(Fault::DropMidMessage);
    assert!(ami.ping("pbx").await.is_err());
    until("link lost", || !ami.is_up("pbx")).await;
    fake.set_fault(Fault::None);
    until("the second snapshot", || {
        fake.count("ExtensionStateList") == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pbx.extension(None, &phone).await, Ok(ExtState::Busy));
    assert_eq!(
        fake.count("ExtensionState"),
        0,
        "states came from the lists"
    );
    assert_eq!(
        pbx.voicemail(None, "1001@default").await,
        Ok(Voicemail { new: 3, old: 0 }),
        "the count from before the link loss is not reused"
    );
}
