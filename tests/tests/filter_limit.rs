//! cgp-filter's `sender_limit`: two filter processes sharing one real
//! redis-server enforce one limit (each message counted once, however often
//! it is filtered), the local store keeps its counts across a restart, and a
//! Redis that is frozen or stopped gives the failure policy within the
//! deadline, logged once per outage, with recovery on its own.

use cgp_tests::bin;
use cgp_tests::redis::Redis;
use cgp_tests::session::Session;
use std::path::Path;
use std::time::{Duration, Instant};

const OVER: &str = r#"REJECTED "alice@example.test sent more than 5 messages this hour""#;
const DOWN: &str = r#"FAILURE "message filter temporarily unavailable""#;

/// A filter on the base directory `dir` (its `Queue/`), with the store
/// table `store`, logging to `<dir>/<name>.log`.
fn filter(dir: &Path, name: &str, store: &str) -> Session {
    let config = format!(
        r#"[runtime]
deadline = "3s"
stats_interval = "0s"
[log]
journald = false
level = "info"
file = "{dir}/{name}.log"
[filter]
base_dir = "{dir}"
[failure]
store_down = "failure"
{store}
[[rule]]
name = "limit"
when = {{ sender_limit = "5 per 1h" }}
action = "reject"
text = "{{user}} sent more than 5 messages this hour"
"#,
        dir = dir.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    Session::start(&bin("cgp-filter"), &path)
}

fn redis_store(url: &str) -> String {
    format!(
        "[store]\nbackend = \"redis\"\n[store.redis]\nurls = [\"{url}\"]\nnamespace = \"t\"\ntimeout = \"200ms\"\nretry_after = \"300ms\"\n"
    )
}

/// Queue files `0.msg`…`<n-1>.msg` from alice (authenticated), and `anon.msg`.
fn queue(dir: &Path, n: usize) {
    let q = dir.join("Queue");
    std::fs::create_dir_all(&q).unwrap();
    for i in 0..n {
        std::fs::write(
            q.join(format!("{i}.msg")),
            "S <alice@example.test> SMTP [192.0.2.1]\nP I x <alice@example.test>\nR W x <bob@example.test>\n\nSubject: hi\n\nbody\n",
        )
        .unwrap();
    }
    std::fs::write(
        q.join("anon.msg"),
        "S SMTP [192.0.2.9]\nP I x <alice@example.test>\nR W x <bob@example.test>\n\nSubject: hi\n\nbody\n",
    )
    .unwrap();
}

fn file(h: &mut Session, name: &str) -> String {
    h.ask(&format!("FILE Queue/{name}.msg"))
}

#[test]
fn two_filters_sharing_one_redis_enforce_one_limit_and_count_each_message_once() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    queue(dir.path(), 10);
    let mut one = filter(dir.path(), "one", &redis_store(&redis.url()));
    let mut two = filter(dir.path(), "two", &redis_store(&redis.url()));
    // Alternating between the members: five pass, the rest is over.
    for i in 0..10 {
        let h = if i % 2 == 0 { &mut one } else { &mut two };
        let want = if i < 5 { "OK" } else { OVER };
        assert_eq!(file(h, &i.to_string()), want, "message {i}");
    }
    // Filtered again (CGP retrying a FILE request): counted once, so the
    // verdict stays; unauthenticated mail is not counted.
    assert_eq!(file(&mut two, "0"), "OK");
    assert_eq!(file(&mut one, "4"), "OK");
    assert_eq!(file(&mut one, "7"), OVER);
    assert_eq!(file(&mut two, "anon"), "OK");
    // One key for the sender and window, under the namespace, holding at
    // most the limit.
    assert_eq!(redis.command("DBSIZE"), ":1");
    assert_eq!(
        redis.command("ZCARD t:filter:sent:3600000:alice@example.test"),
        ":5"
    );
    one.finish();
    two.finish();
}

#[test]
fn the_local_store_keeps_its_counts_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    queue(dir.path(), 7);
    let store = format!("[store]\npath = \"{}/state\"\n", dir.path().display());
    let mut f = filter(dir.path(), "f", &store);
    for i in 0..6 {
        let want = if i < 5 { "OK" } else { OVER };
        assert_eq!(file(&mut f, &i.to_string()), want, "message {i}");
    }
    f.finish();
    let mut f = filter(dir.path(), "f", &store);
    assert_eq!(file(&mut f, "6"), OVER);
    assert_eq!(file(&mut f, "2"), "OK");
    f.finish();
}

/// Asks until the reply is `want`, within a bound; each reply within `bound`.
fn until(h: &mut Session, name: &str, want: &str, bound: Duration) {
    let start = Instant::now();
    loop {
        let t = Instant::now();
        let got = file(h, name);
        assert!(t.elapsed() < bound, "{:?} for {got}", t.elapsed());
        if got == want {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "still {got}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_frozen_or_stopped_redis_gives_the_failure_policy_within_the_deadline() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    queue(dir.path(), 1);
    let mut f = filter(dir.path(), "f", &redis_store(&redis.url()));
    assert_eq!(file(&mut f, "0"), "OK");
    // Frozen: the operation times out (200 ms), far within the deadline
    // (3 s, whose reply would be REJECTED).
    redis.freeze();
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(file(&mut f, "0"), DOWN);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    // Unauthenticated mail needs no count and passes.
    assert_eq!(file(&mut f, "anon"), "OK");
    redis.thaw();
    until(&mut f, "0", "OK", Duration::from_secs(2));
    // Stopped: refused connections, the same policy; back on its own.
    redis.stop();
    until(&mut f, "0", DOWN, Duration::from_secs(2));
    redis.start_again();
    until(&mut f, "0", "OK", Duration::from_secs(2));
    f.finish();
    let log = std::fs::read_to_string(dir.path().join("f.log")).unwrap();
    let lost = log.matches("shared store unavailable").count();
    let back = log.matches("shared store back").count();
    // Once per outage, not once per request.
    assert_eq!((lost, back), (2, 2), "{log}");
}
