//! `cgp-banner` members of one cluster sharing their announcements in a
//! real redis-server: a change made with `announce` on one member shows on
//! the other within `store.refresh`, and Redis stopped, frozen and
//! restarted under load costs no request its answer.

use cgp_tests::bin;
use cgp_tests::redis::Redis;
use cgp_tests::session::Session;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const REFRESH: Duration = Duration::from_millis(500);
const NOTICES: &str = r#"BANNER Notices "" {protocol=HTTP;}"#;
const NONE: &str = r#"ERROR "no banner""#;
const SHOWN: &str = r#"OK "Maintenance tonight""#;

/// A member's configuration in `dir`: announcements in Redis at `url`,
/// read every `REFRESH`.
fn config(dir: &Path, url: &str) -> PathBuf {
    let text = format!(
        r#"[runtime]
deadline = "2s"
stats_interval = "0s"

[log]
journald = false
level = "info"
file = "{dir}/banner.log"

[store]
backend = "redis"
refresh = "{refresh}ms"

[store.redis]
urls = ["{url}"]
namespace = "test"
timeout = "200ms"
retry_after = "300ms"

[[banner]]
type = "Notices"
template = "{{announcements}}"
"#,
        dir = dir.display(),
        refresh = REFRESH.as_millis()
    );
    let path = dir.join("banner.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `cgp-banner --config <config> announce <args>`: (success, stdout, stderr).
fn announce(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("cgp-banner"))
        .arg("--config")
        .arg(config)
        .arg("announce")
        .args(args)
        .output()
        .expect("run announce");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Asks until the banner is `want`; how long that took.
fn shows_within(h: &mut Session, want: &str) -> Duration {
    let start = Instant::now();
    h.ask_until(NOTICES, want);
    start.elapsed()
}

/// Sends `n` banner requests, 32 at a time: every one answered with the
/// announcement; the time they took.
fn load(h: &mut Session, n: usize) -> Duration {
    let (took, bodies) = h.drive(n, 32, |_| NOTICES.to_string());
    assert_eq!(bodies.get(SHOWN), Some(&n), "{bodies:?}");
    took
}

#[test]
fn an_announcement_added_on_one_member_shows_on_the_other() {
    let redis = Redis::start();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (c1, c2) = (
        config(d1.path(), &redis.url()),
        config(d2.path(), &redis.url()),
    );
    let mut one = Session::start(&bin("cgp-banner"), &c1);
    let mut two = Session::start(&bin("cgp-banner"), &c2);
    assert_eq!(one.ask(NOTICES), NONE);
    assert_eq!(two.ask(NOTICES), NONE);

    // Added with member one's configuration: in Redis when the command
    // returns, on member two within one refresh (and some slack for a
    // loaded machine).
    let (ok, id, err) = announce(
        &c1,
        &["add", "--text", "Maintenance tonight", "--for", "1h"],
    );
    assert!(ok, "{err}");
    let id = id.trim().to_string();
    let took = shows_within(&mut two, SHOWN);
    assert!(took < REFRESH + Duration::from_secs(1), "{took:?}");
    shows_within(&mut one, SHOWN);
    // Listed from either member, under the namespace, nothing but the
    // announcement in it.
    let (ok, listed, _) = announce(&c2, &["list"]);
    assert!(
        ok && listed.starts_with(&id) && listed.contains("Maintenance tonight"),
        "{listed}"
    );
    assert_eq!(redis.command("KEYS *"), "*1");
    assert_eq!(redis.command("HLEN test:banner:announcements"), ":1");

    // Removed with member two's configuration: gone from member one.
    let (ok, _, err) = announce(&c2, &["remove", &id]);
    assert!(ok, "{err}");
    let took = shows_within(&mut one, NONE);
    assert!(took < REFRESH + Duration::from_secs(1), "{took:?}");
    // The member whose configuration made the change reads Redis like the
    // others.
    shows_within(&mut two, NONE);
    // An id nobody added is refused, not silently accepted.
    let (ok, _, err) = announce(&c2, &["remove", &id]);
    assert!(!ok && err.contains("no announcement has the id"), "{err}");
    one.finish();
    two.finish();
}

#[test]
fn redis_stopped_frozen_and_restarted_under_load() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), &redis.url());
    let (ok, _, err) = announce(&c, &["add", "--text", "Maintenance tonight", "--for", "1h"]);
    assert!(ok, "{err}");
    let mut h = Session::start(&bin("cgp-banner"), &c);
    assert_eq!(h.ask(NOTICES), SHOWN);

    // Frozen: requests keep the last copy at once, the first request after
    // the poller noticed tells the CGP log.
    redis.freeze();
    let took = load(&mut h, 2000);
    assert!(took < Duration::from_secs(5), "{took:?}");
    std::thread::sleep(REFRESH + Duration::from_millis(400));
    let seq = h.send(NOTICES);
    let info = h.info_starting("* cgp-banner: shared store unavailable");
    assert!(info.contains("showing the last announcements"), "{info}");
    assert_eq!(h.reply(&seq), SHOWN);
    load(&mut h, 2000);
    redis.thaw();
    let seq = h.send(NOTICES);
    assert_eq!(h.reply(&seq), SHOWN);
    wait_for_info(&mut h, "* cgp-banner: shared store back");

    // Stopped: the same; the command says it cannot write.
    redis.stop();
    load(&mut h, 2000);
    let (ok, _, err) = announce(&c, &["add", "--text", "lost", "--for", "1h"]);
    assert!(
        !ok && err.contains("Redis unreachable, nothing changed"),
        "{err}"
    );
    wait_for_info(&mut h, "* cgp-banner: shared store unavailable");
    let took = load(&mut h, 2000);
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Restarted empty (no persistence): back by itself, and the members
    // follow what Redis holds.
    redis.start_again();
    wait_for_info(&mut h, "* cgp-banner: shared store back");
    h.ask_until(NOTICES, NONE);
    h.finish();
    let log = std::fs::read_to_string(dir.path().join("banner.log")).unwrap();
    assert_eq!(log.matches("shared store unavailable").count(), 2, "{log}");
}

/// Sends requests until a `*` line starting with `prefix` comes (the poller
/// notices in the background; the next request reports it).
fn wait_for_info(h: &mut Session, prefix: &str) {
    let start = Instant::now();
    loop {
        let seq = h.send(NOTICES);
        let mut found = false;
        loop {
            let line = h.line(true);
            if line.starts_with(prefix) {
                found = true;
            } else if line.split_once(' ').is_some_and(|(s, _)| s == seq) {
                break;
            }
        }
        if found {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no {prefix:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
