//! `cgp-auth` members of one cluster sharing their throttling counters in a
//! real redis-server, and what they do when it stops, freezes and returns.

use cgp_tests::bin;
use cgp_tests::redis::Redis;
use cgp_tests::session::Session;
use std::path::Path;
use std::time::{Duration, Instant};

const BAD: &str = r#"ERROR "invalid credentials""#;

/// A member's configuration: the static user alice (password `alicepw`),
/// throttling from `initial`, clean answers trusted for `recheck`, the
/// Redis back end at `url`, the local store and the log in `dir`.
fn member(dir: &Path, url: &str, initial: &str, max: &str, recheck: &str) -> Session {
    let config = format!(
        r#"[runtime]
deadline = "3s"
stats_interval = "0s"

[log]
journald = false
level = "info"
file = "{dir}/auth.log"

[cache]
negative_ttl = "0s"

[throttle]
initial_delay = "{initial}"
max_delay = "{max}"
shared_recheck = "{recheck}"
trusted_networks = []

[store]
path = "{dir}/state"
backend = "redis"

[store.redis]
urls = ["{url}"]
namespace = "test"
timeout = "200ms"
retry_after = "300ms"

[[directory.static.users]]
name = "alice@example.test"
password = "{{SSHA}}X2W8QR6LP+CsG3vDkc6H+BFqXBKaduqD"
"#,
        dir = dir.display()
    );
    let path = dir.join("auth.toml");
    cgp_tests::write_config(&path, config).unwrap();
    Session::start(&bin("cgp-auth"), &path)
}

fn attempt(h: &mut Session, ip: &str, pw: &str) -> (String, Duration) {
    let t = Instant::now();
    let r = h.ask(&format!("VRFY (IMAP [{ip}]) alice@example.test {pw}"));
    (r, t.elapsed())
}

#[test]
fn two_members_see_each_others_failures() {
    let redis = Redis::start();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut one = member(d1.path(), &redis.url(), "400ms", "3200ms", "1s");
    let mut two = member(d2.path(), &redis.url(), "400ms", "3200ms", "1s");
    // A failure on member one, from one address...
    let (r, _) = attempt(&mut one, "192.0.2.1", "guess-1");
    assert_eq!(r, BAD);
    // ...delays the account on member two, from another address.
    let (r, d) = attempt(&mut two, "192.0.2.2", "guess-2");
    assert_eq!(r, BAD);
    assert!(d >= Duration::from_millis(400), "{d:?}");
    // Two failures now: member one owes 800ms, from a third address.
    let (r, d) = attempt(&mut one, "192.0.2.3", "guess-3");
    assert_eq!(r, BAD);
    assert!(d >= Duration::from_millis(800), "{d:?}");
    // The keys carry the namespace, the account and the address, never a
    // password.
    assert_eq!(
        redis.command("EXISTS test:auth:throttle:u:alice@example.test"),
        ":1"
    );
    assert_eq!(redis.command("EXISTS test:auth:throttle:4:c0000201"), ":1");
    // A good password on member two clears the account for member one.
    let (r, _) = attempt(&mut two, "192.0.2.4", "alicepw");
    assert_eq!(r, "OK");
    let (r, d) = attempt(&mut one, "192.0.2.5", "alicepw");
    assert_eq!(r, "OK");
    assert!(d < Duration::from_millis(400), "{d:?}");
    // A good login with a clean record is one round trip: the check, no
    // removal.
    assert_eq!(redis.command("CONFIG RESETSTAT"), "+OK");
    let (r, _) = attempt(&mut one, "192.0.2.6", "alicepw");
    assert_eq!(r, "OK");
    let stats = redis.command("INFO commandstats");
    assert!(stats.contains("cmdstat_hget:calls=2,"), "{stats}");
    assert!(!stats.contains("cmdstat_del"), "{stats}");
    one.finish();
    two.finish();
}

#[test]
fn a_clean_answer_is_trusted_for_shared_recheck_and_no_longer() {
    let redis = Redis::start();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut one = member(d1.path(), &redis.url(), "400ms", "3200ms", "2s");
    let mut two = member(d2.path(), &redis.url(), "400ms", "3200ms", "2s");
    // Both members connected to Redis before the interval is timed.
    assert_eq!(attempt(&mut two, "192.0.2.10", "alicepw").0, "OK");
    // A good login finds the account and the address clean; the next one
    // within the interval asks Redis nothing at all.
    assert_eq!(attempt(&mut one, "192.0.2.7", "alicepw").0, "OK");
    assert_eq!(redis.command("CONFIG RESETSTAT"), "+OK");
    let clean_at = Instant::now();
    assert_eq!(attempt(&mut one, "192.0.2.7", "alicepw").0, "OK");
    let stats = redis.command("INFO commandstats");
    assert!(!stats.contains("cmdstat_hget"), "{stats}");
    // A failure on member two is not seen by member one within the
    // interval: one attempt goes through there without delay...
    assert_eq!(attempt(&mut two, "192.0.2.8", "guess-1").0, BAD);
    let (r, d) = attempt(&mut one, "192.0.2.7", "guess-2");
    assert!(
        clean_at.elapsed() < Duration::from_millis(1500),
        "too slow to test"
    );
    assert_eq!(r, BAD);
    assert!(d < Duration::from_millis(400), "{d:?}");
    // ...and member one's own failure ends the interval at once: two
    // failures counted now, 800ms owed.
    let (r, d) = attempt(&mut one, "192.0.2.7", "guess-3");
    assert_eq!(r, BAD);
    assert!(d >= Duration::from_millis(800), "{d:?}");
    // A good login clears the account; past the interval, member one asks
    // again and sees a failure counted on member two meanwhile.
    assert_eq!(attempt(&mut one, "192.0.2.7", "alicepw").0, "OK");
    assert_eq!(attempt(&mut one, "192.0.2.9", "alicepw").0, "OK");
    assert_eq!(attempt(&mut two, "192.0.2.8", "guess-4").0, BAD);
    std::thread::sleep(Duration::from_millis(2100));
    let (r, d) = attempt(&mut one, "192.0.2.9", "alicepw");
    assert_eq!(r, "OK");
    assert!(d >= Duration::from_millis(400), "{d:?}");
    one.finish();
    two.finish();
}

/// Sends `n` logins, `in_flight` at a time, half of them wrong, from 50
/// addresses: every one answered OK or refused, none failed or lost.
fn load(h: &mut Session, n: usize) -> Duration {
    let (took, bodies) = h.drive(n, 32, |i| {
        let pw = if i % 2 == 0 { "alicepw" } else { "wrong" };
        format!("VRFY (IMAP [192.0.2.{}]) alice@example.test {pw}", i % 50)
    });
    assert_eq!(bodies.values().sum::<usize>(), n);
    assert!(bodies.keys().all(|b| b == "OK" || b == BAD), "{bodies:?}");
    took
}

fn log_count(dir: &Path, text: &str) -> usize {
    std::fs::read_to_string(dir.join("auth.log"))
        .unwrap_or_default()
        .matches(text)
        .count()
}

#[test]
fn redis_stopped_frozen_and_restarted_under_load() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut h = member(dir.path(), &redis.url(), "5ms", "20ms", "1s");
    load(&mut h, 300);
    assert_ne!(redis.command("DBSIZE"), ":0");
    let lost = "shared store unavailable";
    let back = "shared store back";
    assert_eq!(log_count(dir.path(), lost), 0);

    redis.stop();
    // The first request to notice tells the CGP log, once.
    let seq = h.send("VRFY (IMAP [192.0.2.1]) alice@example.test wrong");
    let info = h.info_starting("* cgp-auth: shared store unavailable");
    assert!(info.contains("throttling on the local store"), "{info}");
    assert_eq!(h.reply(&seq), BAD);
    let took = load(&mut h, 300);
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(log_count(dir.path(), lost), 1);
    // Throttling went on locally: that address's failure still delays.
    let (r, d) = attempt(&mut h, "192.0.2.1", "guess-9");
    assert_eq!(r, BAD);
    assert!(d >= Duration::from_millis(5), "{d:?}");

    redis.start_again();
    let start = Instant::now();
    while log_count(dir.path(), back) < 1 {
        assert!(start.elapsed() < Duration::from_secs(10), "never recovered");
        load(&mut h, 50);
    }
    // The counters are in Redis again (it restarted empty).
    assert_ne!(redis.command("DBSIZE"), ":0");

    redis.freeze();
    let took = load(&mut h, 300);
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The outage is logged by the request that noticed it, which may still
    // be writing its log line when the load's last reply arrives.
    let start = Instant::now();
    while log_count(dir.path(), lost) < 2 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(log_count(dir.path(), lost), 2);
    redis.thaw();
    let start = Instant::now();
    while log_count(dir.path(), back) < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "never recovered");
        load(&mut h, 50);
    }
    h.finish();
}

#[test]
fn the_cluster_example_validates_and_a_bad_store_names_its_key() {
    let check = |path: &Path| {
        let out = cgp_tests::check_config("cgp-auth", path);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = check(&cgp_tests::example("auth-cluster.toml"));
    assert!(ok, "{text}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("auth.toml");
    for (config, key) in [
        ("[store]\nbackend = \"redis\"\n", "store.redis.urls"),
        (
            "[store]\nbackend = \"redis\"\n[store.redis]\nurls = [\"redis://:s3cret@host:1/x\"]\n",
            "store.redis.urls",
        ),
        ("[store]\nbackend = \"memcached\"\n", "line 2"),
        (
            "[throttle]\nshared_recheck = \"5m\"\n",
            "throttle.shared_recheck",
        ),
    ] {
        cgp_tests::write_config(&bad, config).unwrap();
        let (ok, text) = check(&bad);
        assert!(!ok && text.contains(key), "{config}: {text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
