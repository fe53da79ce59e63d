//! cgp-filter as a whole binary: the example configuration against a real
//! slapd, failure policy and queue age, restarts, untouched queue files and a
//! huge message. The golden transcript cases run from `transcripts.rs`.

use cgp_tests::slapd::{SERVICE_PASSWORD, Slapd};
use cgp_tests::transcript::{Outcome, check_contract, run};
use cgp_tests::{bin, testdata};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A CGP base directory with a `Queue/` of the given files.
struct Base {
    dir: tempfile::TempDir,
}

impl Base {
    fn new(files: &[(&str, &str)]) -> Base {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("Queue")).expect("Queue dir");
        let base = Base { dir };
        for (name, text) in files {
            base.write(name, text);
        }
        base
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path().join("Queue").join(name), text).expect("queue file");
    }

    fn config(&self, text: &str) -> PathBuf {
        let p = self.path().join("filter.toml");
        cgp_tests::write_config(&p, text).expect("config");
        p
    }

    /// Runs the filter on `FILE Queue/<name>` for each name, after `INTF 4`.
    fn run(&self, config: &Path, names: &[&str]) -> BTreeMap<String, String> {
        let mut input = String::from("1 INTF 4\n");
        for (i, n) in names.iter().enumerate() {
            input.push_str(&format!("{} FILE Queue/{n}\n", i + 2));
        }
        input.push_str("999 QUIT\n");
        let o = run(
            &bin("cgp-filter"),
            &["--config".into(), config.display().to_string()],
            self.path(),
            input.as_bytes(),
            Duration::from_secs(60),
        );
        let problems = check_contract(&o, input.as_bytes());
        assert!(problems.is_empty(), "{problems:?}");
        replies_by_file(&o, names)
    }
}

/// The reply body for each file name.
fn replies_by_file(o: &Outcome, names: &[&str]) -> BTreeMap<String, String> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let seq = (i + 2).to_string();
            let line = o.replies.get(&seq).and_then(|l| l.first()).cloned();
            let line = line.unwrap_or_else(|| panic!("no reply for {n}: {o:?}"));
            (n.to_string(), line[seq.len() + 1..].to_string())
        })
        .collect()
}

fn message(source: &str, sender: &str, rcpts: &[&str], header: &str) -> String {
    let mut m = format!("S {source}\nP I 26-04-2019 15:57:14 0000 ____ ____ <{sender}>\n");
    for r in rcpts {
        m.push_str(&format!("R W 26-04-2019 15:57:14 0000 ____ _FY_ <{r}>\n"));
    }
    m.push('\n');
    m.push_str(header);
    m.push_str("\nbody\n");
    m
}

/// The shipped example configuration, pointed at the test slapd.
fn example_config(slapd: &Slapd, log: &Path) -> String {
    let text = std::fs::read_to_string(cgp_tests::example("filter.toml"))
        .expect("packaging/examples/filter.toml");
    let replaced = text
        .replace("ldap://127.0.0.1:389", &slapd.uri())
        .replace(
            "bind_password_file = \"/etc/cgp-helpers/ldap.secret\"",
            &format!("bind_password = \"{SERVICE_PASSWORD}\""),
        )
        .replace(
            "/var/log/cgp-helpers/filter.log",
            &log.display().to_string(),
        )
        .replace("op_timeout = \"3s\"", "op_timeout = \"1s\"")
        .replace("deadline = \"15s\"", "deadline = \"20s\"");
    assert_ne!(replaced, text);
    replaced
}

const REFUSED: &str = "is not allowed to send mail outside the organisation; ask the helpdesk to join the outbound group";

#[test]
fn example_configuration_is_valid() {
    let out = cgp_tests::check_config("cgp-filter", &cgp_tests::example("filter.toml"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

#[test]
fn example_rules_against_the_directory() {
    let mut slapd = Slapd::start_default();
    let base = Base::new(&[
        (
            "alice-out.msg",
            &message(
                "<alice@example.test> SMTP [192.0.2.10]",
                "alice@example.test",
                &["partner@other.test", "bob@example.test"],
                "From: Alice <alice@example.test>\nSubject: offer\n",
            ),
        ),
        (
            "bob-out.msg",
            &message(
                "<bob@example.test> XIMSS [192.0.2.11]",
                "bob@example.test",
                &["alice@example.test", "partner@other.test"],
                "From: Bob <bob@example.test>\nSubject: offer\n",
            ),
        ),
        (
            "bob-in.msg",
            &message(
                "<bob@example.test> XIMSS [192.0.2.11]",
                "bob@example.test",
                &["alice@example.test"],
                "From: Bob <bob@example.test>\nSubject: lunch\n",
            ),
        ),
        (
            "alice-alias.msg",
            &message(
                "<alice@example.test> SMTP [192.0.2.10]",
                "alice@example.test",
                &["bob@example.test"],
                "From: =?UTF-8?Q?Alice_L.?= <Alice.Liddell@example.test>\nSubject: hi\n",
            ),
        ),
        (
            "alice-as-bob.msg",
            &message(
                "<alice@example.test> SMTP [192.0.2.10]",
                "alice@example.test",
                &["carol@example.test"],
                "From: Bob <bob@example.test>\nSubject: trust me\n",
            ),
        ),
        (
            "inbound.msg",
            &message(
                "SMTP [203.0.113.9]",
                "dave@other.test",
                &["alice@example.test"],
                "From: dave@other.test\nSubject: hello\n",
            ),
        ),
        (
            "dsn.msg",
            &message(
                "DSN [0.0.0.0]",
                "",
                &["partner@other.test"],
                "Subject: failure\n",
            ),
        ),
    ]);
    let config = base.config(&example_config(&slapd, &base.path().join("filter.log")));
    let names = [
        "alice-out.msg",
        "bob-out.msg",
        "bob-in.msg",
        "alice-alias.msg",
        "alice-as-bob.msg",
        "inbound.msg",
        "dsn.msg",
    ];
    let alice_headers =
        r#"ADDHEADER "X-Sender-Department: Research\eX-Sender-Phone: Alice <1001>" OK"#;
    let expected: BTreeMap<String, String> = [
        ("alice-out.msg", alice_headers.to_string()),
        (
            "bob-out.msg",
            format!("ERROR \"bob@example.test {REFUSED}\""),
        ),
        (
            "bob-in.msg",
            r#"ADDHEADER "X-Sender-Department: Sales\eX-Sender-Phone: Bob <1002>" OK"#.into(),
        ),
        ("alice-alias.msg", alice_headers.to_string()),
        (
            "alice-as-bob.msg",
            "ERROR \"alice@example.test may only send with one of their own addresses in From\""
                .into(),
        ),
        ("inbound.msg", "OK".into()),
        ("dsn.msg", "OK".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(base.run(&config, &names), expected);
    // A restarted filter (a new process, an empty cache) gives the same replies.
    assert_eq!(base.run(&config, &names), expected);

    // Directory down: what needs it is rejected for now, the rest goes on.
    slapd.stop();
    let down = base.run(&config, &["alice-out.msg", "inbound.msg", "dsn.msg"]);
    let tempfail = "REJECTED \"message filter temporarily unavailable, will retry\"";
    assert_eq!(down["alice-out.msg"], tempfail);
    assert_eq!(down["inbound.msg"], "OK");
    assert_eq!(down["dsn.msg"], "OK");

    // ...but not for ever: past failure.max_age the message passes.
    let old = SystemTime::now() - Duration::from_secs(5 * 3600);
    let f = std::fs::File::options()
        .write(true)
        .open(base.path().join("Queue/bob-out.msg"))
        .expect("open");
    f.set_modified(old).expect("set mtime");
    drop(f);
    let aged = base.run(&config, &["bob-out.msg", "alice-out.msg"]);
    assert_eq!(aged["bob-out.msg"], "OK");
    assert_eq!(aged["alice-out.msg"], tempfail);

    // With the directory back, the verdict is the rules' again.
    slapd.start_again();
    assert_eq!(
        base.run(&config, &["bob-out.msg"])["bob-out.msg"],
        format!("ERROR \"bob@example.test {REFUSED}\"")
    );
    assert_eq!(
        base.run(&config, &["bob-in.msg"])["bob-in.msg"],
        r#"ADDHEADER "X-Sender-Department: Sales\eX-Sender-Phone: Bob <1002>" OK"#
    );
    // A hung server (stopped, not gone) is the same, within the op timeout.
    slapd.freeze();
    let started = std::time::Instant::now();
    let hung = base.run(&config, &["alice-out.msg"]);
    slapd.thaw();
    assert_eq!(hung["alice-out.msg"], tempfail);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let log = std::fs::read_to_string(base.path().join("filter.log")).unwrap_or_default();
    assert!(
        !log.contains(SERVICE_PASSWORD),
        "the bind password reached the log"
    );
}

/// Every file's bytes, permissions and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32, SystemTime)> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            let meta = e.metadata().expect("metadata");
            let bytes = std::fs::read(e.path()).expect("read");
            (
                e.path(),
                (
                    bytes,
                    meta.permissions().mode(),
                    meta.modified().expect("mtime"),
                ),
            )
        })
        .collect()
}

#[test]
fn golden_queue_files_are_left_as_they_were_and_replies_repeat() {
    let dir = testdata("filter");
    let before = snapshot(&dir.join("Queue"));
    assert!(before.len() >= 8, "golden queue files missing");
    let input = std::fs::read(dir.join("actions_v4.in")).expect("case");
    let args = ["--config".to_string(), "config.toml".to_string()];
    let runs: Vec<Outcome> = (0..2)
        .map(|_| {
            run(
                &bin("cgp-filter"),
                &args,
                &dir,
                &input,
                Duration::from_secs(60),
            )
        })
        .collect();
    assert_eq!(snapshot(&dir.join("Queue")), before);
    assert_eq!(runs[0].replies, runs[1].replies);
    assert!(runs[0].replies.len() >= 15, "{:?}", runs[0].replies);
}

#[test]
fn huge_message_is_read_within_the_limits() {
    let base = Base::new(&[]);
    let path = base.path().join("Queue/huge.msg");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    write!(
        f,
        "S <alice@example.test> SMTP [192.0.2.10]\nP I x <alice@example.test>\nR W x <bob@example.test>\n\n\
         From: alice@example.test\nSubject: the big one\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"B\"\n\n\
         --B\nContent-Type: application/octet-stream\n\
         Content-Disposition: attachment; filename=\"data.bin\"\n\
         Content-Transfer-Encoding: base64\n\n"
    )
    .expect("write");
    let line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkwMTIzNDU2Nzg5MDEy\n";
    for _ in 0..(40 << 20) / line.len() {
        f.write_all(line.as_bytes()).expect("write");
    }
    // Past the scan limit: the filter does not see this attachment.
    write!(
        f,
        "--B\nContent-Type: application/octet-stream\n\
         Content-Disposition: attachment; filename=\"late.exe\"\n\nMZ\n--B--\n"
    )
    .expect("write");
    drop(f);
    base.write(
        "small.msg",
        &message(
            "<alice@example.test> SMTP [192.0.2.10]",
            "alice@example.test",
            &["bob@example.test"],
            "From: alice@example.test\nSubject: small\nContent-Type: multipart/mixed; boundary=\"B\"\n\n--B\nContent-Type: application/octet-stream\nContent-Disposition: attachment; filename=\"early.exe\"\n\nMZ\n--B--",
        ),
    );
    let config = base.config(
        r#"
[runtime]
stats_interval = "0s"
[filter]
scan_limit = 65536
[[rule]]
name = "exe"
when = { attachment_name = "(?i)\\.exe$" }
action = "bounce"
text = "no executables"
[[rule]]
name = "big"
when = { size_over = 30000000, header = { subject = "big" } }
add_header = ["X-Big: yes"]
"#,
    );
    let replies = base.run(&config, &["huge.msg", "small.msg"]);
    assert_eq!(replies["huge.msg"], r#"ADDHEADER "X-Big: yes" OK"#);
    assert_eq!(replies["small.msg"], r#"ERROR "no executables""#);
}

/// The peak resident memory of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM value")
}

#[test]
fn requests_waiting_for_a_silent_directory_hold_no_message() {
    // An LDAP server that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = silent.local_addr().expect("port").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming() {
            held.push(c);
        }
    });
    // Envelopes of 2 MiB (many recipients): 64 of them held at once are
    // 64 times that and more, as the envelope is also parsed.
    let mut text =
        String::from("S <bob@example.test> SMTP [192.0.2.11]\nP I x <bob@example.test>\n");
    let mut i = 0;
    while text.len() < 2 << 20 {
        text.push_str(&format!(
            "R W 26-04-2019 15:57:14 0000 ____ _FY_ <user{i:07}@example.test>\n"
        ));
        i += 1;
    }
    text.push_str("\nFrom: bob@example.test\nSubject: many\n\nhello\n");
    let base = Base::new(&[("wide.msg", &text)]);
    let config = base.config(&format!(
        r#"
[runtime]
stats_interval = "0s"
deadline = "4s"
[failure]
max_age = "100years"
[directory]
type = "ldap"
[directory.ldap]
uris = ["ldap://127.0.0.1:{port}"]
connect_timeout = "2s"
op_timeout = "2s"
[directory.search]
base = "ou=people,dc=example,dc=org"
[directory.groups]
lookup = "search"
[[rule]]
name = "outbound"
when = {{ authenticated = true }}
unless = {{ member_of = ["outbound"] }}
action = "bounce"
"#
    ));
    let mut cmd = std::process::Command::new(bin("cgp-filter"));
    cmd.arg("--config").arg(&config).current_dir(base.path());
    let mut s = cgp_tests::session::Session::start_cmd(cmd);
    let seqs: Vec<String> = (0..64).map(|_| s.send("FILE Queue/wide.msg")).collect();
    for seq in &seqs {
        assert_eq!(
            s.reply(seq),
            r#"REJECTED "message filter temporarily unavailable""#,
            "the directory's failure policy"
        );
    }
    let peak_mib = peak_rss_kib(s.child.id()) / 1024;
    assert!(
        peak_mib < 128,
        "peak RSS {peak_mib} MiB for 64 waiting requests"
    );
}

#[test]
fn a_rule_that_does_not_compile_is_reported_at_its_line() {
    let base = Base::new(&[]);
    // The first rule has a `stop` too: looking the key up by name would
    // point there.
    let config = base.config(
        "[[rule]]\nname = \"first\"\nstop = true\n\n[[rule]]\nname = \"second\"\naction = \"bounce\"\nstop = false\n",
    );
    let out = cgp_tests::check_config("cgp-filter", &config);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 5, key `rule[1].stop`"), "{err}");
}
