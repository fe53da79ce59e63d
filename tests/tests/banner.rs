//! `cgp-banner` as CGP runs it, against the scripted AMI server: banners with
//! PBX data, refresh by event, a PBX that is down, silent or comes back,
//! announcements added while the helper runs, request coalescing, and the
//! 4096-byte line.

use cgp_tests::bin;
use cgp_tests::fake_ami::{FakeAmi, Fault};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running helper driven one request at a time (or in bursts).
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    next: u32,
    /// Replies read while waiting for another one (replies come in any order).
    early: std::collections::HashMap<String, String>,
}

impl Session {
    fn start(config: &Path) -> Session {
        Session::spawn(
            &bin("cgp-banner"),
            &["--config".as_ref(), config.as_os_str()],
        )
    }

    fn spawn(program: &Path, args: &[&std::ffi::OsStr]) -> Session {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cgp-banner");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                assert!(line.len() < 4096, "line over 4096 bytes");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut s = Session {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: Some(stderr),
            next: 1,
            early: std::collections::HashMap::new(),
        };
        assert_eq!(s.ask("INTF 3"), "INTF 3");
        s
    }

    fn send(&mut self, request: &str) -> String {
        let seq = self.next.to_string();
        self.next += 1;
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{seq} {request}").expect("write request");
        stdin.flush().unwrap();
        seq
    }

    /// The reply body to `seq`; `*` lines are skipped.
    fn reply(&mut self, seq: &str) -> String {
        loop {
            if let Some(body) = self.early.remove(seq) {
                return body;
            }
            let (s, body) = self.read_reply();
            let earlier = self.early.insert(s.clone(), body);
            assert!(earlier.is_none(), "{s} answered twice");
        }
    }

    /// The next reply line from the helper, as (seq, body).
    fn read_reply(&mut self) -> (String, String) {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .expect("a reply within 20 s");
            if line.starts_with('*') {
                continue;
            }
            let (s, body) = line.split_once(' ').expect("<seq> <reply>");
            return (s.to_string(), body.to_string());
        }
    }

    /// Sends `n` requests keeping `in_flight` outstanding; returns the time
    /// taken and the replies by body.
    fn drive(
        &mut self,
        n: usize,
        in_flight: usize,
        request: impl Fn(usize) -> String,
    ) -> (Duration, std::collections::BTreeMap<String, usize>) {
        assert!(self.early.is_empty());
        let start = Instant::now();
        let mut bodies = std::collections::BTreeMap::new();
        let (mut sent, mut got) = (0, 0);
        while got < n {
            while sent - got < in_flight && sent < n {
                self.send(&request(sent));
                sent += 1;
            }
            let (_, body) = self.read_reply();
            *bodies.entry(body).or_insert(0) += 1;
            got += 1;
        }
        (start.elapsed(), bodies)
    }

    fn ask(&mut self, request: &str) -> String {
        let seq = self.send(request);
        self.reply(&seq)
    }

    /// Asks until the reply is `want` (state that changes in the
    /// background), within a generous bound.
    fn ask_until(&mut self, request: &str, want: &str) {
        let start = Instant::now();
        loop {
            let got = self.ask(request);
            if got == want {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "still {got:?}, want {want:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// QUIT, then the exit status and stderr checked.
    fn finish(mut self) {
        assert_eq!(self.ask("QUIT"), "OK");
        drop(self.stdin.take());
        let status = self.child.wait().expect("exit");
        assert!(status.success(), "{status:?}");
        let stderr = self.stderr.take().unwrap().join().unwrap();
        assert!(stderr.is_empty(), "stderr: {stderr}");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const USERS: &str = r#"
[directory.users."alice@example.com"]
real_name = "Alice Example"
groups = ["staff"]
mailbox = "1001@default"
extension = "1001"
pbx = "pbx1"

[directory.users."bob@example.com"]
real_name = "Bob"
mailbox = "1002@default"
extension = "1002"
"#;

const RULES: &str = r#"
[[banner]]
type = "Phone"
template = "{real_name}: {vm_new} new, {vm_old} old, phone {ext_state}"
default = "PBX unavailable"

[[banner]]
type = "Voicemail"
template = "{vm_new} new"
default = "PBX unavailable"

[[banner]]
type = "Notices"
format = "html"
template = "{announcements}"

[[banner]]
type = "Long"
template = "{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}"

[[banner]]
type = "LongHtml"
format = "html"
template = "{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}"
default = "<i>short</i>"
"#;

/// Writes a configuration for a helper using the PBX on `port`.
fn config(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[runtime]
deadline = "2s"
stats_interval = "0s"

[log]
journald = false

[store]
path = "{store}"
spool_poll = "100ms"

[ami]
action_timeout = "1500ms"
connect_timeout = "1s"
ping_interval = "1s"
reconnect_min = "50ms"
reconnect_max = "200ms"

[[ami.servers]]
name = "pbx1"
host = "127.0.0.1"
port = {port}
username = "cgp"
secret = "s3cret"
{extra}
{USERS}
{RULES}
"#,
        store = dir.join("state").display()
    );
    let path = dir.join("banner.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn pbx() -> FakeAmi {
    let fake = FakeAmi::start("cgp", "s3cret", true);
    fake.set_mailbox("1001@default", 2, 5);
    fake.set_mailbox("1002@default", 0, 1);
    fake.set_extension("1001", "default", "PJSIP/1001", 0);
    fake.set_extension("1002", "default", "PJSIP/1002", 2);
    fake
}

const ALICE_IDLE: &str = r#"OK "Alice Example: 2 new, 5 old, phone idle""#;

#[test]
fn pbx_banners_are_cached_and_refreshed_by_events() {
    let dir = tempfile::tempdir().unwrap();
    let fake = pbx();
    let mut s = Session::start(&config(dir.path(), fake.port(), ""));
    s.ask_until("BANNER Phone alice@example.com", ALICE_IDLE);
    assert_eq!(
        s.ask("BANNER Phone bob@example.com"),
        r#"OK "Bob: 0 new, 1 old, phone busy""#
    );
    let mailbox_actions = fake.count("MailboxCount");
    for _ in 0..20 {
        assert_eq!(s.ask("BANNER Phone alice@example.com"), ALICE_IDLE);
    }
    assert_eq!(
        fake.count("MailboxCount"),
        mailbox_actions,
        "cached answers send no action"
    );
    // Extension states came from the ExtensionStateList loaded at login.
    assert_eq!(fake.count("ExtensionStateList"), 1);

    fake.message_waiting("1001@default", 3, 5);
    fake.extension_status("1001", "default", "PJSIP/1001", 8);
    s.ask_until(
        "BANNER Phone alice@example.com",
        r#"OK "Alice Example: 3 new, 5 old, phone ringing""#,
    );
    assert_eq!(
        fake.count("MailboxCount"),
        mailbox_actions,
        "events refresh without an action"
    );
    s.finish();
}

#[test]
fn a_pbx_that_is_down_or_silent_yields_the_default_banner_in_time_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let fake = pbx();
    let port = fake.port();
    let mut s = Session::start(&config(dir.path(), port, ""));
    s.ask_until("BANNER Phone alice@example.com", ALICE_IDLE);

    // Silent PBX: the action times out, the user gets the default banner
    // well within the 2 s deadline. (bob's mailbox is not cached yet.)
    fake.set_fault(Fault::NoReply);
    let t = Instant::now();
    assert_eq!(
        s.ask("BANNER Voicemail bob@example.com"),
        r#"OK "PBX unavailable""#
    );
    assert!(
        t.elapsed() < Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );

    // PBX down: answered at once, and what was cached is forgotten because
    // events may be missed while the link is down.
    drop(fake);
    s.ask_until("BANNER Phone alice@example.com", r#"OK "PBX unavailable""#);
    let t = Instant::now();
    assert_eq!(
        s.ask("BANNER Phone alice@example.com"),
        r#"OK "PBX unavailable""#
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    // Back on the same port: the helper reconnects by itself.
    let fake = FakeAmi::start_on(port, "cgp", "s3cret", true);
    fake.set_mailbox("1001@default", 1, 0);
    fake.set_extension("1001", "default", "PJSIP/1001", 1);
    s.ask_until(
        "BANNER Phone alice@example.com",
        r#"OK "Alice Example: 1 new, 0 old, phone in use""#,
    );
    s.finish();
}

#[test]
fn a_burst_for_many_users_sends_one_action_per_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let fake = pbx();
    fake.set_fault(Fault::Slow(Duration::from_millis(5)));
    let users: String = (0..100)
        .map(|i| {
            fake.set_mailbox(&format!("{}@default", 2000 + i), i, 0);
            format!(
                "[directory.users.\"u{i}@example.com\"]\nreal_name = \"U{i}\"\nmailbox = \"{}@default\"\n",
                2000 + i
            )
        })
        .collect();
    let mut s = Session::start(&config(dir.path(), fake.port(), &users));
    s.ask_until("BANNER Phone alice@example.com", ALICE_IDLE);
    let before = fake.count("MailboxCount");
    let seqs: Vec<(String, u32)> = (0..1000)
        .map(|n| {
            let i = n % 100;
            (s.send(&format!("BANNER Voicemail u{i}@example.com")), i)
        })
        .collect();
    for (seq, i) in seqs {
        assert_eq!(s.reply(&seq), format!("OK \"{i} new\""));
    }
    let sent = fake.count("MailboxCount") - before;
    assert_eq!(sent, 100, "one MailboxCount per distinct mailbox");
    s.finish();
}

#[test]
fn announcements_added_and_removed_while_the_helper_runs() {
    let dir = tempfile::tempdir().unwrap();
    let fake = pbx();
    let cfg = config(dir.path(), fake.port(), "");
    let announce = |args: &[&str]| {
        let out = Command::new(bin("cgp-banner"))
            .arg("--config")
            .arg(&cfg)
            .arg("announce")
            .args(args)
            .output()
            .expect("run announce");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // Before the helper runs: applied to the store directly.
    let early = announce(&["add", "--text", "Early & <bold>", "--for", "1h"]);
    let mut s = Session::start(&cfg);
    assert_eq!(
        s.ask("BANNER Notices bob@example.com"),
        r#"OK "Early &amp; &lt;bold&gt;""#
    );
    // While it runs: queued in the spool and picked up.
    let staff = announce(&[
        "add",
        "--text",
        "Staff only",
        "--target",
        "group:staff",
        "--for",
        "1h",
    ]);
    s.ask_until(
        "BANNER Notices alice@example.com",
        r#"OK "Early &amp; &lt;bold&gt;<br>Staff only""#,
    );
    assert_eq!(
        s.ask("BANNER Notices bob@example.com"),
        r#"OK "Early &amp; &lt;bold&gt;""#
    );
    let listed = announce(&["list"]);
    assert!(
        listed.contains(early.trim()) && listed.contains(staff.trim()),
        "{listed}"
    );
    announce(&["remove", early.trim()]);
    s.ask_until("BANNER Notices alice@example.com", r#"OK "Staff only""#);
    s.ask_until("BANNER Notices bob@example.com", r#"ERROR "no banner""#);
    s.finish();
    // The state survives the helper and is private.
    let listed = announce(&["list"]);
    assert!(
        !listed.contains(early.trim()) && listed.contains(staff.trim()),
        "{listed}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("state"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0);
}

#[test]
fn overlong_banners_are_cut_or_replaced_to_fit_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let fake = pbx();
    // Ä is 2 bytes, `"` becomes `\"` on the wire: the cut must count both.
    let long_name = "Ä\\\"".repeat(200);
    let users = format!("[directory.users.\"long@example.com\"]\nreal_name = \"{long_name}\"\n");
    let mut s = Session::start(&config(dir.path(), fake.port(), &users));
    let text = s.ask("BANNER Long long@example.com");
    assert!(text.starts_with(r#"OK "Ä\"Ä\"Ä"#), "{text}");
    assert!(text.ends_with("…\""), "{}", &text[text.len() - 20..]);
    assert!(
        text.len() > 3900,
        "cut near the limit, not far below: {}",
        text.len()
    );
    assert_eq!(
        s.ask("BANNER LongHtml long@example.com"),
        r#"OK "<i>short</i>""#
    );
    s.finish();
}

#[test]
fn announce_refuses_bad_input_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, "");
    for args in [
        &["add", "--text", "x", "--target", "everyone", "--for", "1h"][..],
        &["add", "--text", "x", "--until", "yesterday"][..],
        &[
            "add",
            "--text",
            "x",
            "--from",
            "2030-01-02T00:00:00Z",
            "--until",
            "2030-01-01T00:00:00Z",
        ][..],
        &["add", "--text", "x"][..],
    ] {
        let out = Command::new(bin("cgp-banner"))
            .arg("--config")
            .arg(&cfg)
            .arg("announce")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
}

#[test]
fn users_from_ldap_with_groups_hostile_values_and_a_directory_outage() {
    use cgp_tests::slapd::{BASE, SERVICE_DN, SERVICE_PASSWORD, Slapd};
    let dir = tempfile::tempdir().unwrap();
    let mut ldif =
        std::fs::read_to_string(cgp_tests::testdata("ldap").join("directory.ldif")).unwrap();
    ldif.push('\n');
    ldif.push_str(
        &std::fs::read_to_string(cgp_tests::testdata("banner").join("hostile.ldif")).unwrap(),
    );
    let ldif_path = dir.path().join("directory.ldif");
    std::fs::write(&ldif_path, ldif).unwrap();
    let mut slapd = Slapd::start(&ldif_path);
    let fake = pbx();
    fake.set_mailbox("1003@default", 1, 1);
    fake.set_extension("1003", "default", "PJSIP/1003", 4);
    let ldap = format!(
        r#"
[directory.ldap]
base = "{BASE}"
group_base = "ou=groups,{BASE}"
cache_ttl = "300ms"
[directory.ldap.server]
uris = ["{uri}"]
bind_dn = "{SERVICE_DN}"
bind_password = "{SERVICE_PASSWORD}"
connect_timeout = "500ms"
op_timeout = "500ms"

[[announcement]]
text = "Staff only"
target = "group:staff"

[[banner]]
type = "Card"
format = "html"
template = "<b>{{real_name}}</b> {{department}}"
default = "<b>directory unavailable</b>"

[[banner]]
type = "CardText"
template = "{{real_name}} / {{department}} / {{ext_state}}"
default = "directory unavailable"
"#,
        uri = slapd.uri()
    );
    let mut s = Session::start(&config(dir.path(), fake.port(), &ldap));
    s.ask_until(
        "BANNER Phone alice@example.test",
        r#"OK "Alice Liddell: 2 new, 5 old, phone idle""#,
    );
    assert_eq!(
        s.ask("BANNER Notices bob@example.test"),
        r#"OK "Staff only""#
    );
    assert_eq!(
        s.ask("BANNER Notices carol@example.test"),
        r#"ERROR "no banner""#
    );
    assert_eq!(
        s.ask("BANNER Card mallory@example.test"),
        r#"OK "<b>&lt;img src=x onerror=alert(1)&gt; &quot;Mal&quot; &amp; co</b> Evil  1 OK &quot;injected&quot; ""#
    );
    assert_eq!(
        s.ask("BANNER CardText mallory@example.test"),
        r#"OK "<img src=x onerror=alert(1)> \"Mal\" & co / Evil  1 OK \"injected\"  / unavailable""#
    );
    // Filter metacharacters in the account match nobody.
    assert_eq!(
        s.ask("BANNER Card *@example.test"),
        r#"OK "<b>directory unavailable</b>""#
    );
    // Directory down: once the cached entry expires, the default banner,
    // in time; back up: the entry again.
    slapd.stop();
    std::thread::sleep(Duration::from_millis(400));
    let t = Instant::now();
    assert_eq!(
        s.ask("BANNER Card bob@example.test"),
        r#"OK "<b>directory unavailable</b>""#
    );
    assert!(
        t.elapsed() < Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
    slapd.start_again();
    s.ask_until(
        "BANNER Card bob@example.test",
        r#"OK "<b>Bob Builder</b> Sales""#,
    );
    s.finish();
}

/// The benchmark (bench/banner.sh runs it in release mode and prints the
/// figures for docs/banner.md):
/// 1. cached PBX banners at 16 in flight, as a ratio of the null helper's
///    rate measured by the same driver in the same run;
/// 2. with the AMI server answering in 5 ms, the AMI actions sent for a
///    burst of 1,000 requests for 100 distinct users.
#[test]
#[ignore = "benchmark; run by bench/banner.sh"]
fn bench_banner() {
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let fake = pbx();
    let users: String = (0..100)
        .map(|i| {
            fake.set_mailbox(&format!("{}@default", 2000 + i), i, 0);
            fake.set_extension(&format!("{}", 2000 + i), "default", "PJSIP/x", 0);
            format!(
                "[directory.users.\"u{i}@example.com\"]\nreal_name = \"U{i}\"\nmailbox = \"{0}@default\"\nextension = \"{0}\"\n",
                2000 + i
            )
        })
        .collect();
    let cfg = config(dir.path(), fake.port(), &users);

    // cgp-helper-sim drives both helpers; rounds alternate so that load
    // from elsewhere on the machine hits both alike; the median is reported.
    let sim = |program: &Path, args: &[&std::ffi::OsStr]| -> f64 {
        let out = Command::new(bin("cgp-helper-sim"))
            .args(["--generate", &N.to_string(), "--in-flight", "16"])
            .args(["--request", "BANNER Phone u{n%100}@example.com"])
            .arg("--")
            .arg(program)
            .args(args)
            .output()
            .expect("run cgp-helper-sim");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("rate=")?.strip_suffix("/s")?.parse().ok())
            .unwrap_or_else(|| panic!("no rate in {text:?}"))
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut nulls, mut banners) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        nulls.push(sim(&bin("null_helper"), &[]));
        banners.push(sim(
            &bin("cgp-banner"),
            &["--config".as_ref(), cfg.as_os_str()],
        ));
    }
    let (null_rate, rate) = (median(nulls), median(banners));
    println!(
        "cached banners (name, voicemail, phone state), 16 in flight, {N} requests for 100 users, \
         median of 5: null helper {null_rate:.0}/s, cgp-banner {rate:.0}/s, ratio {:.2} (target >= 0.5); \
         MailboxCount actions over the 5 runs: {}",
        rate / null_rate,
        fake.count("MailboxCount")
    );

    let slow = pbx();
    slow.set_fault(Fault::Slow(Duration::from_millis(5)));
    let users: String = (0..100)
        .map(|i| {
            slow.set_mailbox(&format!("{}@default", 3000 + i), i, 0);
            slow.set_extension(&format!("{}", 3000 + i), "default", "PJSIP/x", 0);
            format!(
                "[directory.users.\"v{i}@example.com\"]\nreal_name = \"V{i}\"\nmailbox = \"{0}@default\"\nextension = \"{0}\"\n",
                3000 + i
            )
        })
        .collect();
    let dir2 = tempfile::tempdir().unwrap();
    let mut s = Session::start(&config(dir2.path(), slow.port(), &users));
    s.ask_until("BANNER Phone alice@example.com", ALICE_IDLE);
    let before = slow.counts();
    let (time, bodies) = s.drive(1000, 1000, |n| {
        format!("BANNER Phone v{}@example.com", n % 100)
    });
    let after = slow.counts();
    let mut sent: Vec<(String, usize)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    sent.sort();
    let total: usize = sent.iter().map(|(_, d)| d).sum();
    let pbx_banners: usize = bodies
        .iter()
        .filter(|(b, _)| b.contains(" new, "))
        .map(|(_, c)| c)
        .sum();
    println!(
        "burst of 1000 requests for 100 users, AMI answering in 5 ms: {total} AMI actions {sent:?} \
         (target <= 100), {pbx_banners} PBX banners, {:.0} ms",
        time.as_secs_f64() * 1000.0
    );
    s.finish();
}

#[test]
fn sighup_reloads_rules_and_keeps_pbx_links_and_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let fake = pbx();
    let cfg = config(dir.path(), fake.port(), "");
    let mut s = Session::start(&cfg);
    s.ask_until("BANNER Phone alice@example.com", ALICE_IDLE);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("phone {ext_state}\"", "phone {ext_state} (v2)\"")
            .replace("spool_poll = \"100ms\"", "spool_poll = \"150ms\""),
    )
    .unwrap();
    // SAFETY: kill(2) on the helper this test started.
    assert_eq!(unsafe { libc::kill(s.child.id() as i32, libc::SIGHUP) }, 0);
    s.ask_until(
        "BANNER Phone alice@example.com",
        r#"OK "Alice Example: 2 new, 5 old, phone idle (v2)""#,
    );
    assert_eq!(fake.logins(), 1, "the PBX link survives a reload");
    // The store is still held: the announce command queues for the helper.
    let out = Command::new(bin("cgp-banner"))
        .arg("--config")
        .arg(&cfg)
        .args(["announce", "add", "--text", "after reload", "--for", "1h"])
        .output()
        .unwrap();
    assert!(out.status.success());
    s.ask_until("BANNER Notices bob@example.com", r#"OK "after reload""#);
    s.finish();
}

#[test]
fn a_store_locked_by_the_previous_process_is_taken_over_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let fake = pbx();
    let cfg = config(dir.path(), fake.port(), "");
    let out = Command::new(bin("cgp-banner"))
        .arg("--config")
        .arg(&cfg)
        .args(["announce", "add", "--text", "stored", "--for", "1h"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut old = Session::start(&cfg);
    assert_eq!(old.ask("BANNER Notices bob@example.com"), r#"OK "stored""#);
    // CGP's Auto-Restart can start the new process before the old one exits.
    let mut new = Session::start(&cfg);
    assert_eq!(
        new.ask("BANNER Notices bob@example.com"),
        r#"ERROR "no banner""#,
        "serves without the store while it is locked"
    );
    new.ask_until("BANNER Phone alice@example.com", ALICE_IDLE);
    old.finish();
    new.ask_until("BANNER Notices bob@example.com", r#"OK "stored""#);
    new.finish();
}
