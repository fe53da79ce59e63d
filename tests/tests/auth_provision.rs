//! `cgp-auth` provisioning profiles against the scripted CGP CLI, with
//! people in the static directory: every step's end state in CGP, a step
//! failing on each position then the retry completing the account, NEW
//! twice giving the same state and reply, `cgp-auth provision` with and
//! without `--dry-run`, and `--check-config` naming file, line and key.

use cgp_tests::bin;
use cgp_tests::fake_cli::{Account, FakeCli, Mailbox};
use cgp_tests::session::Session;
use cgp_tests::transcript::check_case_with_config;
use cgp_wire::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const DOMAIN: &str = "confroom.resources.example.test";
/// The secret each room's Password setting takes: never in a log.
const SECRET: &str = "Room-Secret-7";

/// Rooms 1 to 8 (one per failing step, and more), and a person of the main
/// domain for the default profile.
fn users() -> String {
    let mut out = String::new();
    for n in 1..=8 {
        out += &format!(
            r#"
[[directory.static.users]]
name = "room-{n}@{DOMAIN}"
attributes = {{ cn = ["Conference Room {n}"], roomSecret = ["{SECRET}"], mail = ["room-{n}@{DOMAIN}", "Room.{n}@{DOMAIN}", "room{n}@example.test"] }}
"#
        );
    }
    out + r#"
[[directory.static.users]]
name = "alice@example.test"
attributes = { cn = ["Alice Liddell"], mail = ["alice@example.test", "Alice.Liddell@example.test"], roomSecret = ["-"] }
"#
}

const PROFILE: &str = r#"
[provision]
enabled = true
aliases_attribute = "mail"
[provision.settings]
RealName = "cn"

[provision.profiles.resources]
domains = ["*.resources.example.test"]
[[provision.profiles.resources.steps]]
step = "CREATEACCOUNT"
settings = { RealName = "{attr:cn}", ServiceClass = "Resource", Password = "{attr:roomSecret}" }
[[provision.profiles.resources.steps]]
step = "CREATEMAILBOX"
mailbox = "Calendar"
[[provision.profiles.resources.steps]]
step = "SETMAILBOXCLASS"
mailbox = "Calendar"
class = "IPF.Appointment"
[[provision.profiles.resources.steps]]
step = "UPDATEACCOUNTSETTINGS"
settings = { AutoAccept = "YES" }
[[provision.profiles.resources.steps]]
step = "SETMAILBOXACL"
mailbox = "Calendar"
acl = { "all_events@example.test" = "lrswipkxtea" }
[[provision.profiles.resources.steps]]
step = "SETACCOUNTALIASES"
aliases_attribute = "mail"
[[provision.profiles.resources.steps]]
step = "UPDATEACCOUNTPREFS"
prefs = { UserFrom = "\"{attr:cn}\" <{address}>" }
"#;

const VERBS: [&str; 7] = [
    "CREATEACCOUNT",
    "CREATEMAILBOX",
    "SETMAILBOXCLASS",
    "UPDATEACCOUNTSETTINGS",
    "SETMAILBOXACL",
    "SETACCOUNTALIASES",
    "UPDATEACCOUNTPREFS",
];

fn write_config(dir: &Path, cli: &FakeCli) -> PathBuf {
    let text = format!(
        r#"
[runtime]
deadline = "8s"
stats_interval = "0s"
[log]
journald = false
level = "debug"
file = "{log}"
[throttle]
enabled = false
[directory]
type = "static"
{users}
{PROFILE}
[provision.cli]
address = "{address}"
login = "postmaster"
password = "clipw"
connect_timeout = "1s"
op_timeout = "1s"
"#,
        log = dir.join("auth.log").display(),
        users = users(),
        address = cli.address(),
    );
    let path = dir.join("auth.toml");
    cgp_tests::write_config(&path, text).unwrap();
    path
}

fn dict(pairs: &[(&str, &str)]) -> Value {
    Value::Dict(
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), Value::str(v)))
            .collect(),
    )
}

/// What the profile makes of room `n` in CGP.
fn room(n: u32) -> Account {
    Account {
        settings: dict(&[
            ("Password", SECRET),
            ("RealName", &format!("Conference Room {n}")),
            ("ServiceClass", "Resource"),
            ("AutoAccept", "YES"),
        ]),
        prefs: dict(&[(
            "UserFrom",
            &format!("\"Conference Room {n}\" <room-{n}@{DOMAIN}>"),
        )]),
        aliases: vec![format!("room.{n}")],
        mailboxes: BTreeMap::from([(
            "Calendar".to_string(),
            Mailbox {
                class: Some("IPF.Appointment".into()),
                acl: BTreeMap::from([("all_events@example.test".into(), "lrswipkxtea".into())]),
            },
        )]),
    }
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("auth.log")).unwrap_or_default()
}

/// Asserts that one line of the helper's log holds every one of `parts`.
fn assert_logged(dir: &Path, parts: &[&str]) {
    let log = log(dir);
    assert!(
        log.lines().any(|l| parts.iter().all(|p| l.contains(p))),
        "no log line with {parts:?}:\n{log}"
    );
}

#[test]
fn every_step_reaches_cgp_and_new_twice_is_the_same() {
    let cli = FakeCli::start("postmaster", "clipw");
    let dir = tempfile::tempdir().unwrap();
    let mut h = Session::start(&bin("cgp-auth"), &write_config(dir.path(), &cli));
    let name = format!("room-1@{DOMAIN}");
    assert_eq!(h.ask(&format!("NEW {name}")), "OK");
    assert_eq!(cli.account(&name), Some(room(1)));
    let sent: Vec<String> = cli.commands();
    let verbs: Vec<&str> = sent
        .iter()
        .filter_map(|c| c.split(' ').next())
        .filter(|v| *v != "INLINE")
        .collect();
    assert_eq!(verbs, VERBS);
    // Again: the same commands, the account and mailbox found existing,
    // the same state and the same reply.
    assert_eq!(h.ask(&format!("NEW {name}")), "OK");
    assert_eq!(cli.account(&name), Some(room(1)));
    assert_eq!(cli.commands()[sent.len()..], sent[1..]);
    // A domain no profile names: the default profile of [provision].
    assert_eq!(h.ask("NEW alice@example.test"), "OK");
    let alice = cli.account("alice@example.test").unwrap();
    assert_eq!(alice.settings, dict(&[("RealName", "Alice Liddell")]));
    assert_eq!(alice.aliases, ["alice.liddell"]);
    assert!(alice.mailboxes.is_empty());
    h.finish();
    assert!(!log(dir.path()).contains(SECRET));
}

#[test]
fn a_failing_step_answers_failure_and_the_retry_completes_the_account() {
    let cli = FakeCli::start("postmaster", "clipw");
    let dir = tempfile::tempdir().unwrap();
    let mut h = Session::start(&bin("cgp-auth"), &write_config(dir.path(), &cli));
    for (i, verb) in VERBS.iter().enumerate() {
        let n = i as u32 + 1;
        let name = format!("room-{n}@{DOMAIN}");
        cli.fail_once(verb, 1, &format!("500 cannot do it: {SECRET}"));
        assert_eq!(
            h.ask(&format!("NEW {name}")),
            r#"FAILURE "account provisioning failed""#,
            "{verb}"
        );
        // The steps before the failing one are done, the rest are not.
        let partial = cli.account(&name);
        assert_eq!(partial.is_some(), i > 0, "{verb}");
        assert_ne!(partial, Some(room(n)), "{verb}");
        // CGP retries NEW; the retry completes the account.
        assert_eq!(h.ask(&format!("NEW {name}")), "OK", "{verb}");
        assert_eq!(cli.account(&name), Some(room(n)), "{verb}");
    }
    h.finish();
    for (i, verb) in VERBS.iter().enumerate() {
        assert_logged(
            dir.path(),
            &[
                "NEW: provisioning step failed",
                "profile=resources",
                &format!(" step={} ", i + 1),
                &format!("command={verb}"),
                "CLI error 500",
            ],
        );
    }
    // The server's error text quoted the password back: masked.
    assert!(!log(dir.path()).contains(SECRET));
}

/// Polls `done` until it holds, for at most 10 s.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The transcript `testdata/auth-provision/provision`: each line's reply,
/// a NEW repeated, a failing step and CGP's retry. Each NEW is fed once the
/// one before has done its CLI work, so that the retry comes after the
/// failure, as CGP's would.
#[test]
fn the_provisioning_transcript_shows_each_reply() {
    let cli = FakeCli::start("postmaster", "clipw");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &cli);
    let prefs_sent = |n: usize| {
        cli.commands()
            .iter()
            .filter(|c| c.starts_with("UPDATEACCOUNTPREFS"))
            .count()
            >= n
    };
    let hold = |line: &[u8]| match line.split(|b| *b == b' ').next() {
        Some(b"3") => wait_until("room-1 is provisioned", || prefs_sent(1)),
        Some(b"4") => {
            wait_until("room-1 is provisioned again", || prefs_sent(2));
            cli.fail_once("CREATEMAILBOX", 1, "500 mailbox storage unavailable");
        }
        Some(b"5") => wait_until("the failure is logged", || {
            log(dir.path()).contains("NEW: provisioning step failed")
        }),
        Some(b"6") => wait_until("room-2 is provisioned", || prefs_sent(3)),
        _ => {}
    };
    check_case_with_config(
        &bin("cgp-auth"),
        "auth-provision",
        "provision",
        &config,
        &hold,
    );
    assert_eq!(cli.account(&format!("room-1@{DOMAIN}")), Some(room(1)));
    assert_eq!(cli.account(&format!("room-2@{DOMAIN}")), Some(room(2)));
    assert!(cli.account("alice@example.test").is_some());
    assert_logged(
        dir.path(),
        &["NEW: provisioning step failed", "command=CREATEMAILBOX"],
    );
}

#[test]
fn a_value_the_entry_lacks_sends_nothing() {
    let cli = FakeCli::start("postmaster", "clipw");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &cli);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "mailbox = \"Calendar\"\n[[provision.profiles.resources.steps]]\nstep = \"SETMAILBOXCLASS\"",
        "mailbox = \"{attr:cn}\"\n[[provision.profiles.resources.steps]]\nstep = \"SETMAILBOXCLASS\"",
    );
    // Room 9 has no cn.
    let text = text.replace(
        "\n[provision]\n",
        &format!("\n[[directory.static.users]]\nname = \"room-9@{DOMAIN}\"\nattributes = {{ cn = [], roomSecret = [\"x\"], mail = [] }}\n[provision]\n"),
    );
    cgp_tests::write_config(&path, text).unwrap();
    let mut h = Session::start(&bin("cgp-auth"), &path);
    assert_eq!(
        h.ask(&format!("NEW room-9@{DOMAIN}")),
        r#"ERROR "incomplete directory entry""#
    );
    assert_eq!(cli.logins(), 0);
    h.finish();
    assert_logged(
        dir.path(),
        &[
            "NEW: the directory entry lacks a value",
            "step=2",
            "missing=mailbox",
        ],
    );
}

fn provision(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let o: Output = Command::new(bin("cgp-auth"))
        .arg("provision")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

#[test]
fn the_provision_subcommand_shows_or_runs_the_steps() {
    let cli = FakeCli::start("postmaster", "clipw");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &cli);
    let name = format!("room-2@{DOMAIN}");
    let (code, out, err) = provision(&config, &["--dry-run", &name]);
    assert_eq!(code, Some(0), "{err}");
    let a = format!("\"{name}\"");
    let expected = [
        format!(r#"profile "resources" for {name}"#),
        format!(
            r#"CREATEACCOUNT {a} {{Password="********";RealName="Conference Room 2";ServiceClass=Resource;}}"#
        ),
        format!("CREATEMAILBOX {a} MAILBOX Calendar"),
        format!(r#"SETMAILBOXCLASS {a} MAILBOX Calendar CLASS "IPF.Appointment""#),
        format!("UPDATEACCOUNTSETTINGS {a} {{AutoAccept=YES;}}"),
        format!(r#"SETMAILBOXACL {a} MAILBOX Calendar {{"all_events@example.test"=lrswipkxtea;}}"#),
        format!(r#"SETACCOUNTALIASES {a} ("room.2")"#),
        format!(r#"UPDATEACCOUNTPREFS {a} {{UserFrom="\"Conference Room 2\" <{name}>";}}"#),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
    // Nothing sent: not even a login.
    assert_eq!(cli.logins(), 0);
    assert!(cli.account(&name).is_none());

    // Run: each step reported, the account complete.
    let (code, out, err) = provision(&config, &[&name]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], expected[0]);
    for (i, line) in lines[1..].iter().enumerate() {
        assert_eq!(*line, format!("{}. {} -> OK", i + 1, expected[i + 1]));
    }
    assert_eq!(cli.account(&name), Some(room(2)));
    assert!(!out.contains(SECRET));
    // Again: the account and mailbox exist, which is success.
    let (code, out, _) = provision(&config, &[&name]);
    assert_eq!(code, Some(0));
    assert!(out.contains("1. CREATEACCOUNT"), "{out}");
    assert_eq!(out.matches("-> OK (already existed)").count(), 2, "{out}");

    // A refused step: exit 4, the rest not run.
    cli.fail_once("SETMAILBOXACL", 1, "500 no such account: all_events");
    let (code, out, _) = provision(&config, &[&format!("room-3@{DOMAIN}")]);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("5. SETMAILBOXACL"), "{out}");
    assert!(
        out.contains("-> FAILED: CLI error 500: no such account"),
        "{out}"
    );
    assert!(!out.contains("6. "), "{out}");
    // No such person: exit 2; the CLI silent: exit 3.
    let (code, _, err) = provision(&config, &[&format!("ghost@{DOMAIN}")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no such user in directory"), "{err}");
    cli.set_silent(true);
    let (code, _, _) = provision(&config, &[&format!("room-4@{DOMAIN}")]);
    assert_eq!(code, Some(3));
    cli.set_silent(false);
    // A bad argument: exit 1.
    let (code, _, err) = provision(&config, &["no-domain"]);
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn check_config_names_file_line_and_key_of_a_bad_profile() {
    let cli = FakeCli::start("postmaster", "clipw");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &cli);
    let good = std::fs::read_to_string(&config).unwrap();
    let check = |text: &str| {
        cgp_tests::write_config(&config, text).unwrap();
        let o = cgp_tests::check_config("cgp-auth", &config);
        (o.status.success(), String::from_utf8(o.stderr).unwrap())
    };
    assert_eq!(check(&good), (true, String::new()));
    let line_of = |text: &str, needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .unwrap()
    };
    let cases = [
        (
            "step = \"SETMAILBOXCLASS\"",
            "step = \"SETMAILBOXCLAS\"",
            "provision.profiles.resources.steps[2].step",
            "unknown step",
        ),
        (
            "{attr:roomSecret}",
            "{attr:roomSecrets}",
            "provision.profiles.resources.steps[0]",
            "no user of the static directory has the attribute \"roomSecrets\"",
        ),
        (
            "<{address}>",
            "<{email}>",
            "provision.profiles.resources.steps[6].prefs.UserFrom",
            "placeholder {email} is now {address}",
        ),
        (
            "class = \"IPF.Appointment\"",
            "class = \"IPF.Appointments\"",
            "provision.profiles.resources.steps[2].class",
            "unknown mailbox class",
        ),
    ];
    let path = config.display().to_string();
    for (from, to, key, message) in cases {
        let bad = good.replacen(from, to, 1);
        let (ok, err) = check(&bad);
        let line = line_of(&bad, to);
        assert!(!ok, "{to}");
        assert!(err.contains(&path), "{err}");
        assert!(err.contains(&format!("key `{key}`")), "{err}");
        assert!(err.contains(message), "{err}");
        // The line of the key (a whole step's key: the line of its table).
        let want = if key.ends_with(']') {
            line_of(&bad, "[[provision.profiles.resources.steps]]")
        } else {
            line
        };
        assert!(err.contains(&format!("line {want}")), "{err}");
    }
    // A key no step takes: refused while the file is read, with its line.
    let bad = good.replacen("mailbox = \"Calendar\"", "folder = \"Calendar\"", 1);
    let (ok, err) = check(&bad);
    assert!(!ok);
    assert!(
        err.contains(&format!("line {}", line_of(&bad, "folder =")))
            && err.contains("unknown field `folder`"),
        "{err}"
    );
}

#[test]
fn an_alias_another_account_holds_fails_the_step() {
    let cli = FakeCli::start("postmaster", "clipw");
    let dir = tempfile::tempdir().unwrap();
    let mut h = Session::start(&bin("cgp-auth"), &write_config(dir.path(), &cli));
    // room-8's alias `room.8` is an account of its own already: the step
    // fails (CGP retries NEW) rather than leaving the alias out unsaid.
    cli.add_account(&format!("room.8@{DOMAIN}"));
    let name = format!("room-8@{DOMAIN}");
    assert_eq!(
        h.ask(&format!("NEW {name}")),
        r#"FAILURE "account provisioning failed""#
    );
    let a = cli.account(&name).unwrap();
    assert!(a.aliases.is_empty() && a.prefs == dict(&[]), "{a:?}");
    h.finish();
    assert_logged(
        dir.path(),
        &[
            "NEW: provisioning step failed",
            "command=SETACCOUNTALIASES",
            "already exists",
        ],
    );
}

/// Without profiles, as configured before them: an alias failure used to
/// be logged and NEW answered `OK`; it is now the step's FAILURE.
#[test]
fn without_profiles_an_alias_failure_is_a_failure_too() {
    let cli = FakeCli::start("postmaster", "clipw");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &cli);
    let legacy = std::fs::read_to_string(&path).unwrap().replace(
        PROFILE,
        "[provision]\nenabled = true\naliases_attribute = \"mail\"\n[provision.settings]\nRealName = \"cn\"\n",
    );
    cgp_tests::write_config(&path, legacy).unwrap();
    let mut h = Session::start(&bin("cgp-auth"), &path);
    cli.fail_once("SETACCOUNTALIASES", 1, "500 cannot do it");
    assert_eq!(
        h.ask("NEW alice@example.test"),
        r#"FAILURE "account provisioning failed""#
    );
    assert!(
        cli.account("alice@example.test")
            .unwrap()
            .aliases
            .is_empty()
    );
    assert_eq!(h.ask("NEW alice@example.test"), "OK");
    assert_eq!(
        cli.account("alice@example.test").unwrap().aliases,
        ["alice.liddell"]
    );
    h.finish();
}
