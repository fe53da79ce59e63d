//! `cgp-banner` as CGP runs it, against the scripted AMI server: banners with
//! PBX data, refresh by event, a PBX that is down, silent or comes back,
//! announcements added while the helper runs, request coalescing, and the
//! 4096-byte line.

use cgp_tests::banner::{ALICE_IDLE, config, pbx, session, static_user};
use cgp_tests::bin;
use cgp_tests::fake_ami::{FakeAmi, Fault};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn pbx_banners_are_cached_and_refreshed_by_events() {
    let dir = tempfile::tempdir().unwrap();
    let fake = pbx();
    let mut s = session(&config(dir.path(), fake.port(), ""));
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
    // Extension states are loaded by one ExtensionStateList after login.
    // It runs beside the first requests (which may ask ExtensionState for
    // their one extension meanwhile), so it is waited for, within a bound.
    let start = Instant::now();
    while fake.count("ExtensionStateList") == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fake.count("ExtensionStateList"), 1, "{:?}", fake.counts());

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
    let mut s = session(&config(dir.path(), port, ""));
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
            static_user(
                &format!("u{i}@example.com"),
                &format!("U{i}"),
                Some(2000 + i),
            )
        })
        .collect();
    let mut s = session(&config(dir.path(), fake.port(), &users));
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
    let mut s = session(&cfg);
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
    let long_name = "Ä\"".repeat(200);
    let users = static_user("long@example.com", &long_name, None);
    let mut s = session(&config(dir.path(), fake.port(), &users));
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

/// Issue 14, defect 4: `--for 1000000years` was accepted and `list` then
/// panicked formatting a time after year 9999.
#[test]
fn a_window_past_year_9999_is_refused_where_it_enters_and_never_breaks_list() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, "");
    let announce = |args: &[&str]| {
        Command::new(bin("cgp-banner"))
            .arg("--config")
            .arg(&cfg)
            .arg("announce")
            .args(args)
            .output()
            .unwrap()
    };
    let out = announce(&["add", "--text", "x", "--for", "1000000years"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {out:?}");
    assert!(
        err.contains("--for \"1000000years\"") && err.contains("9999-12-31T23:59:59Z"),
        "{err}"
    );
    // A spool file written by hand (or by an older version) with such a
    // window is set aside, and `list` still works.
    let ok = announce(&["add", "--text", "kept", "--for", "1h"]);
    assert!(ok.status.success(), "{ok:?}");
    let spool = dir.path().join("state.spool");
    std::fs::write(
        spool.join("op-0000000000000000-huge.json"),
        r#"{"op":"add","id":"huge","text":"t","target":"all","from":0,"until":18446744073709551615}"#,
    )
    .unwrap();
    let out = announce(&["list", "--all"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        listed.contains("kept") && !listed.contains("huge"),
        "{listed}"
    );
    assert!(spool.join("bad-op-0000000000000000-huge.json").exists());
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
[directory]
type = "ldap"
[directory.cache]
ttl = "300ms"
negative_ttl = "300ms"
[directory.ldap]
uris = ["{uri}"]
bind_dn = "{SERVICE_DN}"
bind_password = "{SERVICE_PASSWORD}"
connect_timeout = "500ms"
op_timeout = "500ms"
[directory.search]
base = "{BASE}"
mail_filter = "(mail={{address}})"
[directory.groups]
lookup = "search"
base = "ou=groups,{BASE}"

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
    let mut s = session(&config(dir.path(), fake.port(), &ldap));
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

#[test]
fn sighup_reloads_rules_and_keeps_pbx_links_and_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let fake = pbx();
    let cfg = config(dir.path(), fake.port(), "");
    let mut s = session(&cfg);
    s.ask_until("BANNER Phone alice@example.com", ALICE_IDLE);
    let text = std::fs::read_to_string(&cfg).unwrap();
    cgp_tests::write_config(
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
    let mut old = session(&cfg);
    assert_eq!(old.ask("BANNER Notices bob@example.com"), r#"OK "stored""#);
    // CGP's Auto-Restart can start the new process before the old one exits.
    let mut new = session(&cfg);
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

/// Issue 18: a request outside the reconstructed grammar gets no banner,
/// and its shape (never its values) is logged at warn level once.
#[test]
fn unknown_request_shapes_get_no_banner_and_are_logged_once_without_values() {
    let dir = tempfile::tempdir().unwrap();
    let (log_section, log) = cgp_tests::warn_log(dir.path());
    let cfg = dir.path().join("banner.toml");
    cgp_tests::write_config(
        &cfg,
        format!(
            "default_banner = \"Welcome\"\n[runtime]\nstats_interval = \"0s\"\n{log_section}\
             [[banner]]\ntemplate = \"Hello {{account}}\"\n"
        ),
    )
    .unwrap();
    let mut s = session(&cfg);
    for _ in 0..3 {
        assert_eq!(
            s.ask("BANNER XIMSSLogin secret.user@example.com {} s3cretvalue"),
            r#"ERROR "no banner""#
        );
        assert_eq!(s.ask("BANNERX hidden"), r#"ERROR "no banner""#);
    }
    // Another account of the same shape: not logged again.
    assert_eq!(
        s.ask("BANNER XIMSSLogin bob@example.com {} other"),
        r#"ERROR "no banner""#
    );
    assert_eq!(
        s.ask("BANNER XIMSSLogin bob@example.com"),
        r#"OK "Hello bob@example.com""#
    );
    s.finish();
    let (logged, lines) = cgp_tests::unknown_shape_lines(&log);
    assert_eq!(lines.len(), 2, "{logged}");
    assert!(lines.iter().all(|l| l.contains("WARN")), "{logged}");
    assert!(
        lines[0].contains("shape=BANNER string string dict string")
            && lines[0].contains("lengths=10 23 0 11"),
        "{logged}"
    );
    assert!(lines[1].contains("shape=BANNERX string"), "{logged}");
    for secret in ["secret.user", "s3cretvalue", "hidden", "XIMSSLogin"] {
        assert!(!logged.contains(secret), "{secret} in {logged}");
    }
}
