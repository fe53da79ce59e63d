//! `cgp-auth` as CGP runs it, against a real slapd (and the scripted CGP
//! CLI for NEW): verdicts, escaping, access rules, failover, outages, the
//! stale window, restarts on the same store, throttling, and no password in
//! any log line or store file.

use cgp_tests::fake_cli::FakeCli;
use cgp_tests::session::Session;
use cgp_tests::slapd::{Slapd, connection_toml};
use cgp_tests::{bin, testdata, workspace};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every password the tests send, to look for in logs and stores.
const PASSWORDS: &[&str] = &[
    "alicepw",
    "bobpw",
    "wrong-pass",
    "guess-1",
    "guess-2",
    "guess-3",
    "sp ace \"quote\" back\\slash é",
    "lucypw",
    "erinpw",
    "davepw",
];

/// cgp-auth started with `config` written to `dir/auth.toml`, past INTF.
fn start(dir: &Path, config: &str) -> Session {
    let path = dir.join("auth.toml");
    cgp_tests::write_config(&path, config).unwrap();
    Session::start(&bin("cgp-auth"), &path)
}

trait Vrfy {
    /// `VRFY` from an IMAP client at 192.0.2.10; the reply body.
    fn vrfy(&mut self, user: &str, password: &str) -> String;
}

impl Vrfy for Session {
    fn vrfy(&mut self, user: &str, password: &str) -> String {
        self.ask(&format!(
            "VRFY (IMAP [192.0.2.10]) {user} {}",
            quote(password)
        ))
    }
}

/// A CGP quoted string.
fn quote(s: &str) -> String {
    String::from_utf8(cgp_wire::data::encode_quoted(s.as_bytes())).unwrap()
}

/// The configuration for one test: the LDAP back end on `uris`, logs at
/// debug level in `dir`, plus `extra` TOML (tables after the top keys).
fn config(dir: &Path, uris: &[String], top: &str, extra: &str) -> String {
    format!(
        r#"{top}

[directory]
type = "ldap"

[runtime]
deadline = "8s"
stats_interval = "0s"

[log]
journald = false
level = "debug"
file = "{log}"

[directory.ldap]
{connection}
{extra}
"#,
        log = dir.join("auth.log").display(),
        connection = connection_toml(uris),
    )
}

const LOOKUP: &str = r#"
[directory.search]
base = "ou=people,dc=example,dc=org"
"#;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cgp-auth-test-")
        .tempdir()
        .unwrap()
}

/// Every file under `dir` (logs, configs, the store), for secret checks.
fn all_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else if p.extension().is_none_or(|x| x != "toml") {
            out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
        }
    }
    out
}

fn assert_no_passwords(dir: &Path) {
    let files = all_bytes(dir);
    assert!(!files.is_empty());
    for (path, bytes) in files {
        for pw in PASSWORDS {
            assert!(
                !bytes.windows(pw.len()).any(|w| w == pw.as_bytes()),
                "password {pw:?} found in {}",
                path.display()
            );
        }
    }
}

#[test]
fn verdicts_escaping_and_no_secrets_anywhere() {
    let slapd = Slapd::start_default();
    let dir = tempdir();
    let store = dir.path().join("store");
    let extra = format!(
        "{LOOKUP}\n[store]\npath = \"{}\"\n[cache]\nnegative_ttl = \"0s\"\n[throttle]\nenabled = false\n",
        store.display()
    );
    let mut h = start(
        dir.path(),
        &config(dir.path(), &[slapd.uri()], "detailed_errors = true", &extra),
    );
    assert_eq!(h.vrfy("alice@example.test", "alicepw"), "OK");
    assert_eq!(
        h.vrfy("alice@example.test", "wrong-pass"),
        r#"ERROR "invalid credentials""#
    );
    assert_eq!(h.vrfy("bob@example.test", "bobpw"), "OK");
    assert_eq!(
        h.vrfy("ghost@example.test", "alicepw"),
        r#"ERROR "invalid credentials""#
    );
    assert_eq!(
        h.vrfy("carol@example.test", "sp ace \"quote\" back\\slash é"),
        "OK"
    );
    assert_eq!(
        h.vrfy("carol@example.test", "sp ace"),
        r#"ERROR "invalid credentials""#
    );
    // The same password as raw \ddd escapes of its UTF-8 bytes.
    assert_eq!(
        h.ask(r#"VRFY carol@example.test "sp ace \"quote\" back\\slash \195\169""#),
        "OK"
    );
    // Filter injection in the name matches nobody, even with a real password.
    for user in [
        "*)(uid=*@example.test",
        "*@example.test",
        "\\2a@example.test",
        "alice)(|(uid=*@example.test",
    ] {
        assert_eq!(
            h.vrfy(user, "alicepw"),
            r#"ERROR "invalid credentials""#,
            "{user}"
        );
    }
    // Password policy (ppolicy overlay), shown because detailed_errors is on.
    assert_eq!(
        h.vrfy("lucy@example.test", "lucypw"),
        r#"ERROR "account locked""#
    );
    assert_eq!(
        h.vrfy("erin@example.test", "erinpw"),
        r#"ERROR "password expired""#
    );
    // An empty password is never an anonymous bind.
    assert_eq!(
        h.ask(r#"VRFY alice@example.test """#),
        r#"ERROR "invalid credentials""#
    );
    // Cached now: the same answer again (idempotent).
    assert_eq!(h.vrfy("alice@example.test", "alicepw"), "OK");
    h.finish();
    assert!(
        std::fs::read_to_string(dir.path().join("auth.log"))
            .unwrap()
            .contains("alice@example.test")
    );
    assert_no_passwords(dir.path());
}

#[test]
fn group_rule_compare_mode_template_and_domains() {
    let slapd = Slapd::start_default();
    let dir = tempdir();
    let extra = |groups: &str| {
        format!(
            r#"
[directory.search]
base = "ou=people,dc=example,dc=org"
required_groups = ["cn=outbound,ou=groups,dc=example,dc=org"]
secret_attribute = "AstAccountSecret"

[directory.groups]
{groups}

[directory.domains."compare.test"]
base = "ou=people,dc=example,dc=org"
mode = "compare"

[directory.domains."Template.TEST"]
base = "ou=people,dc=example,dc=org"
dn_template = "uid={{user}},ou=people,dc=example,dc=org"
access_filter = "(departmentNumber=Sales)"

[directory.domains."other.test"]
base = "ou=partners,dc=example,dc=org"
user_filter = "(mail={{address}})"

[directory.domains."memberof.test"]
base = "ou=people,dc=example,dc=org"
required_groups = ["CN=Outbound, OU=Groups, DC=example, DC=org"]

[directory.domains."memberof-template.test"]
base = "ou=people,dc=example,dc=org"
dn_template = "uid={{user}},ou=people,dc=example,dc=org"
required_groups = ["cn=staff,ou=groups,dc=example,dc=org"]

[throttle]
enabled = false
"#
        )
    };
    // The same rules with groups found by a search and read from memberOf.
    for groups in [
        "lookup = \"search\"\nbase = \"ou=groups,dc=example,dc=org\"",
        "lookup = \"member_of\"",
    ] {
        let mut h = start(
            dir.path(),
            &config(
                dir.path(),
                &[slapd.uri()],
                "detailed_errors = true\nreadplain = true",
                &extra(groups),
            ),
        );
        let ok = "OK";
        let invalid = r#"ERROR "invalid credentials""#;
        let not_permitted = r#"ERROR "not permitted""#;
        let carol_pw = "sp ace \"quote\" back\\slash é";
        for (user, password, want) in [
            // cn=outbound holds alice only.
            ("alice@example.test", "alicepw", ok),
            ("bob@example.test", "bobpw", not_permitted),
            // The rule is checked after the password: a wrong one reveals
            // nothing.
            ("bob@example.test", "wrong-pass", invalid),
            // Compare mode checks the {SSHA} userPassword read by the
            // service account.
            ("bob@compare.test", "bobpw", ok),
            ("bob@compare.test", "wrong-pass", invalid),
            ("nobody@compare.test", "bobpw", invalid),
            // DN template: one bind, then the access filter (bob is in
            // Sales); the domain key was written Template.TEST.
            ("bob@template.test", "bobpw", ok),
            ("alice@template.test", "alicepw", not_permitted),
            ("x,ou=people@template.test", "bobpw", invalid),
            // Group DNs as written in the configuration, checked with the
            // search or after a template bind.
            ("alice@memberof.test", "alicepw", ok),
            ("bob@memberof.test", "bobpw", not_permitted),
            ("bob@memberof-template.test", "bobpw", ok),
            ("carol@memberof-template.test", carol_pw, not_permitted),
            // Per-domain base and filter: dave lives under ou=partners.
            ("dave@other.test", "davepw", ok),
            ("dave@example.test", "davepw", invalid),
        ] {
            assert_eq!(h.vrfy(user, password), want, "{user} ({groups})");
        }
        assert_eq!(h.ask("READPLAIN alice@example.test"), r#"OK "alicesip""#);
        assert_eq!(
            h.ask("READPLAIN bob@example.test"),
            r#"ERROR "unknown user""#
        );
        h.finish();
        assert_no_passwords(dir.path());
    }
}

#[test]
fn outages_failover_and_the_stale_window() {
    let mut first = Slapd::start_default();
    let second = Slapd::start_default();
    let dir = tempdir();
    let extra = format!(
        "{LOOKUP}\n[cache]\npositive_ttl = \"1s\"\nstale_window = \"1h\"\n[throttle]\nenabled = false\n"
    );
    let mut h = start(
        dir.path(),
        &config(dir.path(), &[first.uri(), second.uri()], "", &extra),
    );
    assert_eq!(h.vrfy("alice@example.test", "alicepw"), "OK");
    // Failover: the first server stops, the second answers.
    first.stop();
    assert_eq!(h.vrfy("bob@example.test", "bobpw"), "OK");
    assert_eq!(
        h.vrfy("bob@example.test", "wrong-pass"),
        r#"ERROR "invalid credentials""#
    );
    first.start_again();
    drop(second);
    // Fail-back happens on reconnect; the first server serves again.
    let started = Instant::now();
    while h.vrfy("alice@example.test", "guess-1") != r#"ERROR "invalid credentials""# {
        assert!(started.elapsed() < Duration::from_secs(20), "no recovery");
    }
    // Frozen: a reply within the deadline, FAILURE or stale OK, never a hang.
    std::thread::sleep(Duration::from_millis(1100));
    first.freeze();
    let t = Instant::now();
    assert_eq!(
        h.vrfy("alice@example.test", "alicepw"),
        "OK",
        "the stale window answers"
    );
    assert_eq!(
        h.vrfy("alice@example.test", "guess-2"),
        r#"FAILURE "directory unavailable""#
    );
    assert_eq!(
        h.vrfy("bob@example.test", "guess-3"),
        r#"FAILURE "directory unavailable""#
    );
    assert!(
        t.elapsed() < Duration::from_secs(8 * 3),
        "{:?}",
        t.elapsed()
    );
    first.thaw();
    let started = Instant::now();
    while h.vrfy("bob@example.test", "bobpw") != "OK" {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no recovery after thaw"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Stopped: FAILURE at once (connection refused), then recovery.
    first.stop();
    let t = Instant::now();
    assert_eq!(
        h.vrfy("carol@example.test", "guess-1"),
        r#"FAILURE "directory unavailable""#
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    first.start_again();
    let started = Instant::now();
    while h.vrfy("carol@example.test", "sp ace \"quote\" back\\slash é") != "OK" {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no recovery after restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    h.finish();
    assert_no_passwords(dir.path());
}

#[test]
fn without_a_stale_window_an_outage_is_a_failure() {
    let mut slapd = Slapd::start_default();
    let dir = tempdir();
    let extra = format!("{LOOKUP}\n[cache]\npositive_ttl = \"1s\"\n[throttle]\nenabled = false\n");
    let mut h = start(dir.path(), &config(dir.path(), &[slapd.uri()], "", &extra));
    assert_eq!(h.vrfy("alice@example.test", "alicepw"), "OK");
    slapd.stop();
    // Within the TTL the cache still answers; past it, FAILURE.
    assert_eq!(h.vrfy("alice@example.test", "alicepw"), "OK");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        h.vrfy("alice@example.test", "alicepw"),
        r#"FAILURE "directory unavailable""#
    );
}

#[test]
fn a_killed_helper_restarts_on_the_same_store() {
    let mut slapd = Slapd::start_default();
    let dir = tempdir();
    let store = dir.path().join("store");
    let extra = format!(
        "{LOOKUP}\n[store]\npath = \"{}\"\n[cache]\npositive_ttl = \"1h\"\n[throttle]\nenabled = false\n",
        store.display()
    );
    let cfg = config(dir.path(), &[slapd.uri()], "", &extra);
    let mut h = start(dir.path(), &cfg);
    assert_eq!(h.vrfy("alice@example.test", "alicepw"), "OK");
    // sled writes its log to disk every 500ms; give it that, then kill -9.
    std::thread::sleep(Duration::from_millis(1500));
    h.kill();
    slapd.stop();
    // The new process gets the store (lock released with the dead process)
    // and answers from it while the directory is down.
    let mut h = start(dir.path(), &cfg);
    assert_eq!(h.vrfy("alice@example.test", "alicepw"), "OK");
    assert_eq!(
        h.vrfy("alice@example.test", "wrong-pass"),
        r#"FAILURE "directory unavailable""#
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&store).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "store readable by others: {mode:o}");
    h.finish();
    assert_no_passwords(dir.path());
}

#[test]
fn new_creates_accounts_through_the_cli() {
    let mut slapd = Slapd::start_default();
    let cli = FakeCli::start("postmaster", "clipw");
    let dir = tempdir();
    let extra = format!(
        r#"
[directory.search]
base = "ou=people,dc=example,dc=org"
required_groups = ["cn=staff,ou=groups,dc=example,dc=org"]

[directory.groups]
lookup = "member_of"

[throttle]
enabled = false

[provision]
enabled = true
aliases_attribute = "mail"

[provision.settings]
RealName = "cn"
ou = "departmentNumber"
telephoneNumber = "telephoneNumber"
AstCallerID = "AstAccountCallerID"

[provision.cli]
address = "{}"
login = "postmaster"
password = "clipw"
connect_timeout = "1s"
op_timeout = "1s"
"#,
        cli.address()
    );
    let mut h = start(dir.path(), &config(dir.path(), &[slapd.uri()], "", &extra));
    assert_eq!(h.ask("NEW alice@example.test"), "OK");
    let a = cli.account("alice@example.test").expect("account created");
    let setting = |k: &str| {
        a.settings
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    assert_eq!(setting("RealName").as_deref(), Some("Alice Liddell"));
    assert_eq!(setting("ou").as_deref(), Some("Research"));
    assert_eq!(setting("telephoneNumber").as_deref(), Some("+1 555 0101"));
    assert_eq!(setting("AstCallerID").as_deref(), Some("Alice <1001>"));
    assert_eq!(a.aliases, vec!["alice.liddell".to_string()]);
    // Again: the account exists, which counts as success.
    assert_eq!(h.ask("NEW alice@example.test"), "OK");
    assert_eq!(cli.account("alice@example.test").unwrap(), a);
    // An account made in CGP by other means.
    cli.add_account("bob@example.test");
    assert_eq!(h.ask("NEW bob@example.test"), "OK");
    // Not in the directory, or outside the group (carol is in no group).
    assert_eq!(
        h.ask("NEW ghost@example.test"),
        r#"ERROR "no such user in directory""#
    );
    assert_eq!(h.ask("NEW carol@example.test"), r#"ERROR "not permitted""#);
    assert!(cli.account("carol@example.test").is_none());
    assert_eq!(h.ask("NEW nodomain"), r#"ERROR "expected user@domain""#);
    // One login served every command.
    assert_eq!(cli.logins(), 1);
    let creates = cli
        .commands()
        .iter()
        .filter(|c| c.starts_with("CREATEACCOUNT"))
        .count();
    assert_eq!(creates, 3);
    // A hung CLI: FAILURE within the op timeout, then service resumes.
    cli.set_silent(true);
    slapd.stop();
    // (A user not asked for yet: bob's entry is in the directory cache.)
    assert_eq!(
        h.ask("NEW erin@example.test"),
        r#"FAILURE "directory unavailable""#
    );
    slapd.start_again();
    let started = Instant::now();
    loop {
        let r = h.ask("NEW bob@example.test");
        if r == r#"FAILURE "account server unavailable""# {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    cli.set_silent(false);
    assert_eq!(h.ask("NEW bob@example.test"), "OK");
    assert!(cli.logins() >= 2, "the broken session was replaced");
    drop(cli);
    h.finish();
}

#[test]
fn new_with_the_cli_down_is_a_temporary_failure() {
    let slapd = Slapd::start_default();
    let dir = tempdir();
    let port = cgp_tests::slapd::free_port();
    let extra = format!(
        "{LOOKUP}\n[provision]\nenabled = true\n[provision.cli]\naddress = \"127.0.0.1:{port}\"\npassword = \"x\"\nconnect_timeout = \"1s\"\n"
    );
    let mut h = start(dir.path(), &config(dir.path(), &[slapd.uri()], "", &extra));
    assert_eq!(
        h.ask("NEW alice@example.test"),
        r#"FAILURE "account server unavailable""#
    );
    assert_eq!(
        h.ask("NEW ghost@example.test"),
        r#"ERROR "no such user in directory""#
    );
}

#[test]
fn throttling_delays_only_the_guilty_reply() {
    let slapd = Slapd::start_default();
    let dir = tempdir();
    let extra = format!(
        "{LOOKUP}\n[cache]\nnegative_ttl = \"0s\"\n[throttle]\ninitial_delay = \"400ms\"\nmax_delay = \"3200ms\"\ntrusted_networks = [\"10.0.0.0/8\"]\n"
    );
    let mut h = start(dir.path(), &config(dir.path(), &[slapd.uri()], "", &extra));
    let attempt = |h: &mut Session, ip: &str, user: &str, pw: &str| {
        let t = Instant::now();
        let r = h.ask(&format!("VRFY (IMAP [{ip}]) {user} {}", quote(pw)));
        (r, t.elapsed())
    };
    let bad = r#"ERROR "invalid credentials""#;
    // No failures yet: no delay.
    let (r, _) = attempt(&mut h, "192.0.2.1", "alice@example.test", "guess-1");
    assert_eq!(r, bad);
    // One failure owed: at least 400ms.
    let (r, d) = attempt(&mut h, "192.0.2.1", "alice@example.test", "guess-2");
    assert_eq!(r, bad);
    assert!(d >= Duration::from_millis(400), "{d:?}");
    // Two: at least 800ms.
    let (r, d) = attempt(&mut h, "192.0.2.1", "alice@example.test", "guess-3");
    assert_eq!(r, bad);
    assert!(d >= Duration::from_millis(800), "{d:?}");
    // Three distinct failures owe 1600ms. Repeating a password already
    // tried does not count again: still 1600ms, not 3200ms.
    let (_, d1) = attempt(&mut h, "192.0.2.1", "alice@example.test", "guess-3");
    let (_, d2) = attempt(&mut h, "192.0.2.1", "alice@example.test", "guess-3");
    assert!(d1 >= Duration::from_millis(1600), "{d1:?}");
    assert!(
        d2 >= Duration::from_millis(1600) && d2 < Duration::from_millis(3000),
        "{d2:?}"
    );
    // A delayed reply holds back nobody else: another client's request sent
    // after it is answered first.
    let slow = h.send(&format!(
        "VRFY (IMAP [192.0.2.1]) bob@example.test {}",
        quote("bobpw")
    ));
    let fast = h.send(&format!(
        "VRFY (IMAP [198.51.100.7]) bob@example.test {}",
        quote("bobpw")
    ));
    assert_eq!(h.read_reply(), (fast, "OK".to_string()));
    assert_eq!(h.reply(&slow), "OK");
    // Trusted networks owe nothing, whatever the account's record.
    let (r, d) = attempt(&mut h, "10.1.2.3", "carol@example.test", "guess-1");
    assert_eq!(r, bad);
    let (_, d2) = attempt(&mut h, "10.1.2.3", "carol@example.test", "guess-2");
    assert!(
        d < Duration::from_millis(400) && d2 < Duration::from_millis(400),
        "{d:?} {d2:?}"
    );
    h.finish();
    assert_no_passwords(dir.path());
}

#[test]
fn the_readme_demo_runs() {
    let input = std::fs::read(testdata("auth").join("demo.in")).unwrap();
    let o = cgp_tests::transcript::run(
        &bin("cgp-auth"),
        &[
            "--config".into(),
            cgp_tests::example("auth-embedded.toml")
                .into_os_string()
                .into_string()
                .unwrap(),
        ],
        &workspace(),
        &input,
        Duration::from_secs(60),
    );
    assert!(
        cgp_tests::transcript::check_contract(&o, &input).is_empty(),
        "{o:?}"
    );
    let reply = |seq: &str| o.replies[seq][0].clone();
    assert_eq!(reply("2"), "2 OK");
    assert_eq!(reply("3"), r#"3 ERROR "invalid credentials""#);
    assert_eq!(reply("4"), "4 OK");
    assert_eq!(reply("5"), "5 OK");
    assert_eq!(reply("6"), r#"6 ERROR "account disabled""#);
    assert_eq!(reply("7"), r#"7 ERROR "invalid credentials""#);
    assert_eq!(reply("9"), r#"9 OK "alicesip""#);
    assert_eq!(reply("12"), "12 OK");
}

#[test]
fn check_config_reports_errors_with_keys() {
    let dir = tempdir();
    let run = |text: &str| {
        let p = dir.path().join("c.toml");
        cgp_tests::write_config(&p, text).unwrap();
        let o = cgp_tests::check_config("cgp-auth", &p);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert!(run("").0);
    assert!(run(&std::fs::read_to_string(cgp_tests::example("auth-embedded.toml")).unwrap()).0);
    let (ok, err) = run("[directory]\ntype = \"ldap\"\n");
    assert!(!ok && err.contains("directory.search.base"), "{err}");
    let (ok, err) = run("[[directory.static.users]]\nname = \"a@b\"\npassword = \"plain\"\n");
    assert!(
        !ok && err.contains("directory.static.users[0].password"),
        "{err}"
    );
    let (ok, err) = run("[directory.search]\nuser_filter = \"(uid={user}\"\n");
    assert!(!ok && err.contains("line 2"), "{err}");
    // The old placeholder names are refused with the new one named.
    let (ok, err) = run("[directory.search]\nuser_filter = \"(mail={email})\"\n");
    assert!(
        !ok && err.contains("line 2") && err.contains("{address}"),
        "{err}"
    );
    let (ok, err) = run("[directory.ldap]\nuris = [\"http://x\"]\n");
    assert!(!ok && err.contains("line 2"), "{err}");
    let (ok, err) = run("bogus = 1\n");
    assert!(!ok && err.contains("bogus"), "{err}");
    // The bind password never shows in an error.
    let (ok, err) = run(
        "[directory]\ntype = \"ldap\"\n[directory.ldap]\nbind_password = \"s3cr3t-pw\"\n[directory.search]\nbase = \"dc=x\"\n",
    );
    assert!(!ok && err.contains("directory.ldap.bind_dn"), "{err}");
    assert!(!err.contains("s3cr3t-pw"), "{err}");
    let (ok, err) = run("[directory.ldap]\nbind_password = 42\n");
    assert!(!ok && err.contains("line 2"), "{err}");
}

#[test]
fn hash_password_makes_usable_hashes() {
    for scheme in ["ssha512", "bcrypt", "argon2"] {
        let mut child = Command::new(bin("cgp-auth"))
            .args(["--hash-password", scheme])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"pa ss\"w\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let dir = tempdir();
        let cfg = format!(
            "[log]\njournald = false\n[throttle]\nenabled = false\n[[directory.static.users]]\nname = \"u@x.test\"\npassword = {hash:?}\n"
        );
        let mut h = start(dir.path(), &cfg);
        assert_eq!(h.ask(r#"VRFY u@x.test "pa ss\"w""#), "OK", "{scheme}");
        assert_eq!(
            h.ask(r#"VRFY u@x.test "pa ss""#),
            r#"ERROR "invalid credentials""#,
            "{scheme}"
        );
        h.finish();
    }
}

#[test]
fn sighup_reloads_users_and_keeps_the_state() {
    let dir = tempdir();
    let user = |name: &str| {
        format!(
            "[[directory.static.users]]\nname = \"{name}\"\npassword = \"{{SSHA}}X2W8QR6LP+CsG3vDkc6H+BFqXBKaduqD\"\n"
        )
    };
    let base =
        "[log]\njournald = false\n[throttle]\ninitial_delay = \"300ms\"\ntrusted_networks = []\n";
    let mut h = start(dir.path(), &format!("{base}{}", user("alice@example.test")));
    assert_eq!(h.vrfy("alice@example.test", "alicepw"), "OK");
    assert_eq!(
        h.vrfy("bob@example.test", "alicepw"),
        r#"ERROR "invalid credentials""#
    );
    cgp_tests::write_config(
        dir.path().join("auth.toml"),
        format!(
            "{base}{}{}",
            user("alice@example.test"),
            user("bob@example.test")
        ),
    )
    .unwrap();
    // SAFETY: kill with a child pid we own.
    unsafe {
        libc::kill(h.child.id() as libc::pid_t, libc::SIGHUP);
    }
    let started = Instant::now();
    loop {
        let t = Instant::now();
        let r = h.vrfy("bob@example.test", "alicepw");
        if r == "OK" {
            // bob's earlier failure is still on record after the reload:
            // this reply owed the delay.
            assert!(
                t.elapsed() >= Duration::from_millis(300),
                "{:?}",
                t.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "reload not applied: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    h.finish();
}

/// A TCP relay in front of slapd that records the LDAP operations the
/// helper sends, by protocol tag (RFC 4511: 0x60 BindRequest, 0x63
/// SearchRequest): what the directory is asked, seen from outside.
struct OpRelay {
    port: u16,
    ops: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

const BIND: u8 = 0x60;
const SEARCH: u8 = 0x63;

impl OpRelay {
    fn start(upstream: u16) -> OpRelay {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ops = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = ops.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut s2, &mut c2));
                let seen = seen.clone();
                std::thread::spawn(move || {
                    while let Some((op, message)) = read_ldap_message(&mut client) {
                        seen.lock().unwrap().push(op);
                        if server.write_all(&message).is_err() {
                            return;
                        }
                    }
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        OpRelay { port, ops }
    }

    fn uri(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// The operations sent since the last call.
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.ops.lock().unwrap())
    }
}

/// One BER-encoded LDAPMessage: its operation tag and its bytes.
fn read_ldap_message(r: &mut impl std::io::Read) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).ok()?;
    let mut message = head.to_vec();
    let len = if head[1] < 0x80 {
        head[1] as usize
    } else {
        let mut n = vec![0u8; (head[1] & 0x7f) as usize];
        r.read_exact(&mut n).ok()?;
        message.extend_from_slice(&n);
        n.iter().fold(0usize, |acc, b| acc << 8 | *b as usize)
    };
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    // messageID INTEGER (tag, short length, value), then the operation.
    let op = *body.get(2 + *body.get(1)? as usize)?;
    message.extend_from_slice(&body);
    Some((op, message))
}

/// cgp-auth talking to slapd through a relay that records the directory
/// operations, with `cache` as its `[directory.cache]` table, the verdict
/// cache off and throttling off. One
/// connection of each kind, so that no connection opens (with its service
/// bind) after the first request.
fn relayed(cache: &str) -> (Slapd, OpRelay, tempfile::TempDir, Session) {
    let slapd = Slapd::start_default();
    let relay = OpRelay::start(slapd.port());
    let dir = tempdir();
    let extra = format!(
        "{LOOKUP}\n[directory.cache]\n{cache}[cache]\npositive_ttl = \"0s\"\nnegative_ttl = \"0s\"\n[throttle]\nenabled = false\n"
    );
    let cfg = config(dir.path(), &[relay.uri()], "", &extra).replace(
        "max_backoff = \"200ms\"",
        "max_backoff = \"200ms\"\npool_size = 1\nbind_pool_size = 1",
    );
    let h = start(dir.path(), &cfg);
    (slapd, relay, dir, h)
}

#[test]
fn an_unknown_user_costs_the_directory_what_a_wrong_password_costs() {
    let (_slapd, relay, _dir, mut h) = relayed("ttl = \"0s\"\nnegative_ttl = \"0s\"\n");
    assert_eq!(h.vrfy("alice@example.test", "alicepw"), "OK");
    relay.take();
    assert_eq!(
        h.vrfy("alice@example.test", "wrong-pass"),
        r#"ERROR "invalid credentials""#
    );
    let wrong = relay.take();
    assert_eq!(wrong, [SEARCH, BIND]);
    assert_eq!(
        h.vrfy("ghost@example.test", "wrong-pass"),
        r#"ERROR "invalid credentials""#
    );
    assert_eq!(relay.take(), wrong);
    // The extra bind never lets anybody in.
    assert_eq!(
        h.vrfy("ghost@example.test", "alicepw"),
        r#"ERROR "invalid credentials""#
    );
    assert_eq!(h.vrfy("alice@example.test", "alicepw"), "OK");
    h.finish();
}

#[test]
fn the_dn_cache_skips_the_search_and_notices_a_moved_user() {
    let (slapd, relay, _dir, mut h) = relayed("ttl = \"1h\"\nnegative_ttl = \"1h\"\n");
    // Warm the connections (their first use binds the service account).
    assert_eq!(h.vrfy("alice@example.test", "alicepw"), "OK");
    relay.take();
    assert_eq!(h.vrfy("alice@example.test", "alicepw"), "OK");
    assert_eq!(relay.take(), [BIND]);
    // A refusal searches again: the password may be wrong, or the DN.
    assert_eq!(
        h.vrfy("alice@example.test", "wrong-pass"),
        r#"ERROR "invalid credentials""#
    );
    assert_eq!(relay.take(), [BIND, SEARCH]);
    // An unknown user costs what a wrong password costs, also when the
    // directory remembers that there is no such user: it asks again.
    for _ in 0..2 {
        assert_eq!(
            h.vrfy("ghost@example.test", "wrong-pass"),
            r#"ERROR "invalid credentials""#
        );
        assert_eq!(relay.take(), [SEARCH, BIND]);
    }
    assert_eq!(h.vrfy("bob@example.test", "bobpw"), "OK");
    relay.take();
    // bob moves (his entry keeps uid=bob); the old DN fails, the search
    // finds the new one.
    let out = Command::new("ldapmodrdn")
        .args(["-x", "-H", &slapd.uri()])
        .args(["-D", "cn=admin,dc=example,dc=org", "-w", "secret"])
        .args(["uid=bob,ou=people,dc=example,dc=org", "uid=bob-moved"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(h.vrfy("bob@example.test", "bobpw"), "OK");
    assert_eq!(relay.take(), [BIND, SEARCH, BIND]);
    assert_eq!(h.vrfy("bob@example.test", "bobpw"), "OK");
    assert_eq!(relay.take(), [BIND]);
    h.finish();
}

/// `cgp-auth provision` reads the attributes its profile names from LDAP
/// even with NEW off (sites that create accounts ahead keep NEW off).
#[test]
fn the_provision_subcommand_reads_profile_attributes_from_ldap() {
    let slapd = Slapd::start_default();
    let dir = tempdir();
    let extra = format!(
        "{LOOKUP}\n[provision]\nenabled = false\n[provision.profiles.people]\ndomains = [\"example.test\"]\n[[provision.profiles.people.steps]]\nstep = \"UPDATEACCOUNTPREFS\"\nprefs = {{ UserFrom = \"\\\"{{attr:cn}}\\\" <{{address}}>\" }}\n"
    );
    let path = dir.path().join("auth.toml");
    cgp_tests::write_config(&path, config(dir.path(), &[slapd.uri()], "", &extra)).unwrap();
    let o = Command::new(bin("cgp-auth"))
        .args(["provision", "--dry-run", "alice@example.test", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        out.lines().last(),
        Some(
            r#"UPDATEACCOUNTPREFS "alice@example.test" {UserFrom="\"Alice Liddell\" <alice@example.test>";}"#
        )
    );
}
