//! cgp-filter's `sms` action against the fake CloudPBX API: the message
//! reaches the right number with the right body, the filter's reply never
//! waits for the gateway, the queue and the per-number rate are bounded,
//! numbers the gateway would not take are refused and logged, and form
//! fields are encoded, never spliced.

use cgp_tests::bin;
use cgp_tests::fake_cloudpbx::{FakeCloudPbx, Mode};
use cgp_tests::session::{LINE_WAIT, Session};
use cgp_tests::transcript::check_case_with_config;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const KEY: &str = "sms-key";

/// A CGP base directory, the fake gateway and a filter started on them.
struct Setup {
    dir: tempfile::TempDir,
    fake: FakeCloudPbx,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("Queue")).expect("Queue dir");
        Setup {
            dir,
            fake: FakeCloudPbx::start("Moja", KEY),
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("filter.log")
    }

    /// Starts the filter with `[sms]` settings `sms` and the rule `rule`.
    fn start(&self, sms: &str, rule: &str) -> Session {
        let config = format!(
            r#"
[log]
journald = false
file = "{log}"
level = "info"
[filter]
base_dir = "{base}"
[sms]
{sms}
[sms.cloudpbx]
base_urls = ["{url}"]
api_key = "{KEY}"
timeout = "1s"
[directory]
type = "static"
[[directory.static.users]]
name = "bob@example.test"
attributes = {{ mobile = ["+48 600-100-200"] }}
[[directory.static.users]]
name = "carol@example.test"
attributes = {{ mobile = ["+49 170 1234567"] }}
[[directory.static.users]]
name = "dave@example.test"
[[rule]]
name = "notify"
{rule}
"#,
            log = self.log().display(),
            base = self.dir.path().display(),
            url = self.fake.base_url(),
        );
        let path = self.dir.path().join("filter.toml");
        cgp_tests::write_config(&path, config).expect("config");
        Session::start(&bin("cgp-filter"), &path)
    }

    /// Writes `Queue/<name>.msg` from alice to `rcpts`; returns its FILE path.
    fn message(&self, name: &str, rcpts: &[&str]) -> String {
        let mut m =
            String::from("S <alice@example.test> SMTP [192.0.2.1]\nP I x <alice@example.test>\n");
        for r in rcpts {
            m.push_str(&format!("R W x <{r}>\n"));
        }
        m.push_str("\nSubject: hello\n\nbody\n");
        std::fs::write(self.dir.path().join("Queue").join(format!("{name}.msg")), m)
            .expect("queue file");
        format!("Queue/{name}.msg")
    }

    /// Waits until the log holds `n` lines containing `what`; returns them.
    fn wait_log(&self, what: &str, n: usize) -> Vec<String> {
        wait_for(|| {
            let lines = lines_with(&self.log(), what);
            (lines.len() >= n).then_some(lines)
        })
    }
}

fn lines_with(log: &Path, what: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_string)
        .collect()
}

fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < LINE_WAIT, "not within {LINE_WAIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_recipients_number_and_a_fixed_one_get_the_template_with_metacharacters_encoded() {
    let s = Setup::new();
    let mut f = s.start(
        "",
        r#"sms = { to = ["600 100 201"], recipient_attribute = "mobile", text = "Mail from {sender} & co: 100% in {queue_id}&to=999999999#x" }"#,
    );
    let file = s.message(
        "7",
        &[
            "bob@example.test",
            "carol@example.test",
            "dave@example.test",
            "nobody@example.test",
        ],
    );
    assert_eq!(f.ask(&format!("FILE {file}")), "OK");
    let sent = wait_for(|| {
        let sent = s.fake.sms();
        (sent.len() >= 2).then_some(sent)
    });
    let body = "Mail from alice@example.test & co: 100% in 7&to=999999999#x";
    assert_eq!(
        sent,
        [
            fields(&[("to", "600100200"), ("body", body)]),
            fields(&[("to", "600100201"), ("body", body)]),
        ]
    );
    // Carol's number is abroad: refused and logged; Dave has none.
    let refused = s.wait_log("SMS number refused", 1);
    assert!(refused[0].contains("carol@example.test"), "{refused:?}");
    assert_eq!(s.wait_log("SMS sent", 2).len(), 2);
    f.finish();
    assert_eq!(s.fake.sms().len(), 2);
}

#[test]
fn bodies_are_cut_to_1024_characters() {
    let s = Setup::new();
    let long = "ż".repeat(1100);
    let mut f = s.start(
        "",
        &format!(r#"sms = {{ to = ["600100200"], text = "{long}" }}"#),
    );
    assert_eq!(
        f.ask(&format!("FILE {}", s.message("1", &["bob@example.test"]))),
        "OK"
    );
    let sent = wait_for(|| s.fake.sms().pop());
    assert_eq!(sent[1].1, "ż".repeat(1024));
    f.finish();
}

#[test]
fn the_reply_never_waits_for_a_slow_or_failing_gateway_and_nothing_is_retried() {
    let s = Setup::new();
    s.fake.set_sms_mode(Mode::Slow);
    let mut f = s.start("", r#"sms = { to = ["600100200"], text = "x" }"#);
    let file = s.message("1", &["bob@example.test"]);
    let start = Instant::now();
    assert_eq!(f.ask(&format!("FILE {file}")), "OK");
    // The gateway answers after 5 s; the client gives up after 1 s.
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let failed = s.wait_log("SMS not sent", 1);
    assert!(failed[0].contains("did not answer"), "{failed:?}");
    s.fake.set_sms_mode(Mode::Error500);
    assert_eq!(f.ask(&format!("FILE {file}")), "OK");
    let failed = s.wait_log("SMS not sent", 2);
    assert!(failed[1].contains("HTTP 500"), "{failed:?}");
    // One request per message: a failure is not sent again.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.fake.sms().len(), 2);
    assert!(!std::fs::read_to_string(s.log()).unwrap().contains(KEY));
    f.finish();
}

#[test]
fn a_full_queue_drops_and_logs() {
    let s = Setup::new();
    s.fake.set_sms_mode(Mode::Slow);
    let mut f = s.start(
        "queue = 2\nper_number = \"100 per 1m\"",
        r#"sms = { to = ["600100200"], text = "x" }"#,
    );
    let file = s.message("1", &["bob@example.test"]);
    let (_, bodies) = f.drive(10, 10, |_| format!("FILE {file}"));
    assert_eq!(bodies.get("OK"), Some(&10));
    // One being sent and two waiting, or two waiting when the sender had
    // not yet taken the first: the rest is dropped.
    let dropped = lines_with(&s.log(), "SMS queue full").len();
    assert!((7..=8).contains(&dropped), "{dropped} dropped");
    let tried = s.wait_log("SMS not sent", 10 - dropped);
    assert_eq!(tried.len(), 10 - dropped);
    assert_eq!(s.fake.sms().len(), 10 - dropped);
    f.finish();
}

#[test]
fn each_number_gets_at_most_its_rate() {
    let s = Setup::new();
    let mut f = s.start(
        "per_number = \"2 per 1h\"",
        r#"sms = { recipient_attribute = "mobile", text = "x" }"#,
    );
    for i in 0..5 {
        let file = s.message(&i.to_string(), &["bob@example.test"]);
        assert_eq!(f.ask(&format!("FILE {file}")), "OK");
    }
    assert_eq!(s.wait_log("SMS rate limit", 3).len(), 3);
    assert_eq!(s.wait_log("SMS sent", 2).len(), 2);
    assert_eq!(s.fake.sms().len(), 2);
    f.finish();
}

/// The example of `packaging/examples/`, its LDAP directory swapped for a
/// static one, pointed at the fake: the transcript `testdata/filter-sms/sms`
/// (the replies come at once), then the two text messages at the fake.
#[test]
fn the_sms_example_answers_its_transcript_and_the_gateway_gets_both_messages() {
    let fake = FakeCloudPbx::start("Moja", KEY);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cloudpbx.secret");
    cgp_tests::write_config(&key, KEY).unwrap();
    let text = std::fs::read_to_string(cgp_tests::example("filter-sms.toml")).unwrap();
    let (head, rules) = text.split_at(text.find("[directory]").unwrap());
    let rules = &rules[rules.find("[[rule]]").unwrap()..];
    let config = format!(
        "{head}[directory]\ntype = \"static\"\n[[directory.static.users]]\nname = \"alice@example.org\"\nattributes = {{ mobile = [\"+48 600-200-300\"] }}\n\n{rules}"
    )
    .replace("/var/log/cgp-helpers/filter.log", &dir.path().join("filter.log").display().to_string())
    .replace("/etc/cgp-helpers/cloudpbx.secret", &key.display().to_string())
    .replace("https://api.cloudpbx.pl/", fake.base_url());
    let path = dir.path().join("filter-sms.toml");
    cgp_tests::write_config(&path, config).unwrap();
    // The example's text messages, in either order (the requests of a
    // transcript run at once); the helper drops what is still queued at
    // exit, so QUIT waits for them.
    let mut expected = [
        fields(&[
            ("to", "600200300"),
            ("body", "Urgent mail from bob@example.org (urgent)"),
        ]),
        fields(&[
            ("to", "600100200"),
            (
                "body",
                "executable: refused mail from eve@example.net (queue tool)",
            ),
        ]),
    ];
    check_case_with_config(&bin("cgp-filter"), "filter-sms", "sms", &path, &|line| {
        if line.starts_with(b"5 QUIT") {
            wait_for(|| (fake.sms().len() >= 2).then_some(()));
        }
    });
    // Without the `test` field (false, as the example says).
    let mut sent: Vec<Vec<(String, String)>> = fake
        .sms()
        .into_iter()
        .map(|m| m.into_iter().filter(|(k, _)| k != "test").collect())
        .collect();
    sent.sort();
    expected.sort();
    assert_eq!(sent, expected);
}
