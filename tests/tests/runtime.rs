//! Runtime behaviour that a transcript cannot show: completion order,
//! signals, configuration reload, the statistics line, logging and
//! `--check-config`. All run on the probe helper
//! (`shared/runtime/examples/probe_helper.rs`).

use cgp_tests::bin;
use cgp_tests::session::Session;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

/// The probe helper with `extra` arguments and a configuration file.
fn probe(config: &std::path::Path, extra: &[&str]) -> Session {
    let mut cmd = Command::new(bin("probe_helper"));
    cmd.args(extra).arg("--config").arg(config);
    Session::spawn(cmd)
}

fn config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let p = dir.path().join("probe.toml");
    cgp_tests::write_config(&p, text).unwrap();
    p
}

/// Runs `conversation` on the probe helper after `1 INTF <intf>` and its
/// reply; then expects exit 0 and nothing on stderr at the end of input.
fn conversation(intf: u32, conversation: impl Fn(&mut Session)) {
    let dir = tempfile::tempdir().unwrap();
    let mut h = probe(&config(&dir, ""), &[]);
    h.send_line(&format!("1 INTF {intf}"));
    assert_eq!(h.line(false), format!("1 INTF {intf}"));
    conversation(&mut h);
    let (code, err) = h.close();
    assert_eq!((code, err.as_str()), (Some(0), ""));
}

/// Sends `requests` after INTF and expects the replies in the order
/// `replies`; then end of input, exit 0, no stderr.
fn replies_in_order(requests: &[&str], replies: &[&str]) {
    conversation(4, |h| {
        for r in requests {
            h.send_line(r);
        }
        for r in replies {
            assert_eq!(h.line(false), *r);
        }
    });
}

#[test]
fn replies_leave_in_completion_order() {
    replies_in_order(
        &["2 SLEEP 600", "3 SLEEP 300", "4 SLEEP 0"],
        &["4 OK", "3 OK", "2 OK"],
    );
}

#[test]
fn requests_with_one_order_key_keep_their_order() {
    // 2 is slow; 3 has its key and must wait for it; 4 has another key.
    replies_in_order(
        &[
            "2 ORDERED group-a 500",
            "3 ORDERED group-a 0",
            "4 ORDERED group-b 0",
        ],
        &["4 OK", "2 OK", "3 OK"],
    );
}

#[test]
fn every_request_gets_one_reply_and_quit_comes_last() {
    // Enough lines for dispatcher threads to race each other: whatever
    // order the replies take, each comes once and none after QUIT's.
    conversation(4, |h| {
        for i in 2..2002 {
            h.send_line(&format!("{i} ECHO {i}"));
        }
        h.send_line("9999 QUIT");
        let mut answered = std::collections::HashSet::new();
        loop {
            let (seq, body) = h.read_reply();
            if seq == "9999" {
                assert_eq!(body, "OK");
                break;
            }
            assert_eq!(body, format!("OK ({seq})"));
            assert!(answered.insert(seq.clone()), "{seq} answered twice");
        }
        assert_eq!(answered.len(), 2000);
    });
}

#[test]
fn quit_waits_for_work_running_on_the_compute_pool() {
    // 2's handler holds a compute thread when QUIT is read: 2 is answered
    // first all the same.
    replies_in_order(&["2 COMPUTE 300", "3 QUIT"], &["2 OK", "3 OK"]);
}

#[test]
fn a_panic_in_compute_work_gets_the_panic_reply_and_the_pool_goes_on() {
    conversation(4, |h| {
        // Two pool threads: the replies may come in either order.
        h.send_line("2 COMPUTEPANIC");
        h.send_line("3 COMPUTE 0");
        assert_eq!(h.reply("2"), "FAILURE \"internal error\"");
        assert_eq!(h.reply("3"), "OK");
        // The thread that ran the panicking job takes work again.
        for i in 4..8 {
            h.send_line(&format!("{i} COMPUTE 0"));
        }
        for i in 4..8 {
            assert_eq!(h.reply(&i.to_string()), "OK");
        }
    });
}

#[test]
fn sigterm_drains_requests_in_flight_then_exits_0() {
    conversation(3, |h| {
        h.send_line("2 SLEEP 500");
        std::thread::sleep(Duration::from_millis(100));
        h.signal(libc::SIGTERM);
        h.info_starting("* SIGTERM received");
        assert_eq!(h.line(false), "2 OK");
    });
}

/// CGP keeps the helper's stdin open while it is idle: SIGTERM alone must
/// end it, idle or with requests in flight, after their replies.
#[test]
fn sigterm_exits_0_while_stdin_stays_open() {
    for load in [0, 40] {
        let dir = tempfile::tempdir().unwrap();
        let mut h = probe(&config(&dir, ""), &[]);
        h.send_line("1 INTF 3");
        assert_eq!(h.line(false), "1 INTF 3");
        for i in 0..load {
            h.send_line(&format!("{} SLEEP 300", i + 2));
        }
        std::thread::sleep(Duration::from_millis(50));
        h.signal(libc::SIGTERM);
        h.info_starting("* SIGTERM received");
        let mut answered = std::collections::HashSet::new();
        for _ in 0..load {
            let (seq, body) = h.read_reply();
            assert_eq!(body, "OK");
            assert!(answered.insert(seq));
        }
        let (code, err) = h.exit_with_stdin_open();
        assert_eq!((code, err.as_str()), (Some(0), ""), "{load} in flight");
    }
}

/// SIGTERM or SIGHUP while the helper is still starting (here a start that
/// takes 500 ms, as a directory connection can) must not kill it with the
/// signal's default action.
#[test]
fn signals_during_start_are_handled_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(&dir, "");
    let mut h = probe(&path, &["--build-delay", "500"]);
    std::thread::sleep(Duration::from_millis(100));
    h.signal(libc::SIGHUP);
    h.send_line("1 INTF 3");
    assert_eq!(h.line(false), "1 INTF 3");
    h.send_line("2 ECHO x");
    assert_eq!(h.line(false), "2 OK (x)");
    let (code, err) = h.close();
    assert_eq!((code, err.as_str()), (Some(0), ""), "after an early SIGHUP");

    let mut h = probe(&path, &["--build-delay", "500"]);
    std::thread::sleep(Duration::from_millis(100));
    h.signal(libc::SIGTERM);
    let (code, err) = h.exit_with_stdin_open();
    assert_eq!(
        (code, err.as_str()),
        (Some(0), ""),
        "after an early SIGTERM"
    );
}

/// A token in flight is never answered twice, whatever the second line's
/// command: CGP would take the first reply for the request it sent first.
#[test]
fn runtime_commands_on_a_token_in_flight_are_dropped() {
    conversation(3, |h| {
        h.send_line("2 SLEEP 400");
        for dup in ["2 KEY", "2 INTF 4", "2 QUIT", "2", "2 ECHO again"] {
            h.send_line(dup);
            let warned = h.info_starting("* request 2 dropped");
            assert!(warned.contains("already in flight"), "{warned}");
        }
        // 3 follows the duplicates: its reply proves they were read.
        h.send_line("3 KEY");
        assert_eq!(h.line(false), "3 OK");
        assert_eq!(h.line(false), "2 OK");
        // Answered, 2 may be used again.
        h.send_line("2 KEY");
        assert_eq!(h.line(false), "2 OK");
    });
}

/// A line without a readable token is logged by its length and command
/// word, never by its text: it may carry a password.
#[test]
fn an_unnumbered_line_is_logged_without_its_text() {
    conversation(3, |h| {
        h.send_line("x VRFY a@b.test S3cretPw1");
        let logged = h.info_starting("* line without a sequence number");
        assert!(
            logged.contains("25 bytes") && logged.contains("VRFY"),
            "{logged}"
        );
        assert!(
            !logged.contains("S3cret") && !logged.contains("a@b"),
            "{logged}"
        );
        h.send_line("S3cretPw1");
        let logged = h.info_starting("* line without a sequence number");
        assert!(!logged.contains("S3cret"), "{logged}");
    });
}

/// `max_in_flight` bounds the handlers running at once on every path,
/// requests that wait (SLEEP) and ones that compute alike.
#[test]
fn the_in_flight_bound_is_never_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = probe(&config(&dir, "[runtime]\nmax_in_flight = 3\n"), &[]);
    h.send_line("1 INTF 3");
    assert_eq!(h.line(false), "1 INTF 3");
    for i in 0..30 {
        let command = if i % 2 == 0 { "SLEEP 30" } else { "COMPUTE 20" };
        h.send_line(&format!("{} {command}", i + 2));
    }
    for _ in 0..30 {
        assert_eq!(h.read_reply().1, "OK");
    }
    h.send_line("99 PEAK");
    assert_eq!(h.line(false), "99 OK 3");
    let (code, err) = h.close();
    assert_eq!((code, err.as_str()), (Some(0), ""));
}

#[test]
fn sighup_reloads_and_a_bad_file_keeps_the_old_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(&dir, "[runtime]\ndeadline = \"5s\"\n");
    let mut h = probe(&path, &[]);
    h.send_line("1 INTF 3");
    assert_eq!(h.line(false), "1 INTF 3");
    // A request in flight across a reload still gets its reply. Lines are
    // dispatched in order, so the reply to 3 proves 2 is in flight.
    h.send_line("2 SLEEP 1000");
    h.send_line("3 ECHO x");
    assert_eq!(h.line(false), "3 OK (x)");
    cgp_tests::write_config(&path, "[runtime]\ndeadline = \"300ms\"\n").unwrap();
    h.signal(libc::SIGHUP);
    h.info_starting("* configuration reloaded");
    assert_eq!(h.line(false), "2 OK");
    // The new deadline applies to new requests.
    h.send_line("30 HANG");
    assert_eq!(h.line(false), "30 FAILURE \"timeout\"");
    // A broken file is refused, naming the problem without its text.
    cgp_tests::write_config(&path, "[runtime]\ndeadline = \"secret-ish\"\n").unwrap();
    h.signal(libc::SIGHUP);
    let refused = h.info_starting("* configuration reload refused, old configuration kept:");
    assert!(refused.contains("line 2"), "{refused}");
    assert!(!refused.contains("secret-ish"), "{refused}");
    h.send_line("4 HANG");
    assert_eq!(h.line(false), "4 FAILURE \"timeout\"");
    h.send_line("5 QUIT");
    assert_eq!(h.line(false), "5 OK");
    let (code, err) = h.close();
    assert_eq!((code, err.as_str()), (Some(0), ""));
}

#[test]
fn periodic_stats_line_counts_replies_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = probe(
        &config(&dir, "[runtime]\nstats_interval = \"300ms\"\n"),
        &[],
    );
    h.send_line("1 INTF 3");
    h.send_line("2 ECHO a");
    h.send_line("3 NOSUCH");
    assert_eq!(h.line(false), "1 INTF 3");
    let _ = (h.line(false), h.line(false));
    let stats = h.info_starting("* stats ");
    assert!(stats.contains("requests=3"), "{stats}");
    assert!(stats.contains("ERROR=1 INTF=1 OK=1"), "{stats}");
    assert!(stats.contains("p50=") && stats.contains("p99="), "{stats}");
    let (code, _) = h.close();
    assert_eq!(code, Some(0));
}

#[test]
fn logs_go_to_the_configured_file_never_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("probe.log");
    let text = format!(
        "[log]\njournald = false\nfile = \"{}\"\nlevel = \"debug\"\n",
        log.display()
    );
    let mut h = probe(&config(&dir, &text), &[]);
    h.send_line("1 INTF 3");
    h.send_line("2 PANIC");
    assert_eq!(h.line(false), "1 INTF 3");
    assert_eq!(h.line(false), "2 FAILURE \"internal error\"");
    let (code, err) = h.close();
    assert_eq!(
        (code, err.as_str()),
        (Some(0), ""),
        "a panic must not reach stderr"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("started"), "{logged}");
    assert!(logged.contains("probe asked to panic"), "{logged}");
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn check_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(&dir, "[runtime]\nmax_in_flight = 8\n");
    let out = Command::new(bin("probe_helper"))
        .args(["--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));

    let bad = dir.path().join("bad.toml");
    cgp_tests::write_config(
        &bad,
        "[runtime]\nmax_in_flight = 8\n[log]\nlevl = \"info\"\n",
    )
    .unwrap();
    let out = Command::new(bin("probe_helper"))
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(err.contains("line 4") && err.contains("levl"), "{err}");
}
