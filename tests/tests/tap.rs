//! `cgp-helper-sim tap` in front of real helpers: bytes pass through
//! unchanged both ways, the contract holds through it, secrets never reach
//! the capture, a file that cannot be written stops the recording and
//! nothing else, signals reach the helper and its exit status comes back;
//! and `cgp-helper-sim --transcript` replays a capture.

use cgp_tests::session::Session;
use cgp_tests::transcript::{run, run_all_with};
use cgp_tests::{bin, testdata};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn tap_args(out: &Path) -> Vec<String> {
    vec![
        "tap".into(),
        "--out".into(),
        out.display().to_string(),
        "--".into(),
    ]
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

fn runtime_cases() -> Vec<(String, Vec<u8>)> {
    let dir = testdata("runtime");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let case = name.strip_suffix(".in")?.to_string();
            Some((case, std::fs::read(e.path()).ok()?))
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "runtime cases: {}", cases.len());
    cases
}

/// Runs the probe helper on `input` through the tap, with `tee` on both
/// of the helper's pipes: returns (what the tap wrote, what the helper
/// received, what the helper wrote, the tap's exit status).
fn through_tee(
    capture: &Path,
    input: &[u8],
    work: &Path,
) -> (Vec<u8>, Vec<u8>, Vec<u8>, Option<i32>) {
    let seen = work.join("seen.in");
    let said = work.join("said.out");
    let script = format!(
        "tee '{}' | '{}' --config config.toml | tee '{}'",
        seen.display(),
        bin("probe_helper").display(),
        said.display()
    );
    let mut args = tap_args(capture);
    args.extend(["sh".into(), "-c".into(), script]);
    let (out, code) = raw_stdout(&args, input);
    (
        out,
        std::fs::read(&seen).unwrap(),
        std::fs::read(&said).unwrap(),
        code,
    )
}

/// The exact bytes the tap writes for `input`, and its exit code.
fn raw_stdout(args: &[String], input: &[u8]) -> (Vec<u8>, Option<i32>) {
    let mut child = Command::new(bin("cgp-helper-sim"))
        .args(args)
        .current_dir(testdata("runtime"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "stderr");
    (out.stdout, out.status.code())
}

/// `cgp-helper-sim <sim> -- cgp-helper-sim tap <tap> -- probe_helper`:
/// checks that the simulator found no violation; returns what it printed.
fn sim_through_tap(sim: &[&str], tap: Vec<String>) -> String {
    let mut helper = vec![path_str(&bin("cgp-helper-sim"))];
    helper.extend(tap);
    helper.push(path_str(&bin("probe_helper")));
    let out = Command::new(bin("cgp-helper-sim"))
        .args(sim)
        .arg("--")
        .args(&helper)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{err}");
    assert!(text.contains("violations=0"), "{text}");
    text
}

#[test]
fn bytes_pass_through_unchanged_both_ways_on_the_runtime_transcripts() {
    for (case, input) in runtime_cases() {
        let dir = tempfile::tempdir().unwrap();
        let capture = dir.path().join("cap");
        let (out, seen, said, code) = through_tee(&capture, &input, dir.path());
        assert_eq!(code, Some(0), "{case}");
        assert!(seen == input, "{case}: the helper did not get CGP's bytes");
        assert!(
            out == said,
            "{case}: CGP did not get the helper's bytes:\n{}\n---\n{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&said)
        );
        let mode = std::fs::metadata(&capture).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{case}");
    }
}

#[test]
fn the_contract_holds_through_the_tap_on_every_runtime_case() {
    let dir = tempfile::tempdir().unwrap();
    let args = tap_args(&dir.path().join("cap"));
    let probe = path_str(&bin("probe_helper"));
    let mut extra: Vec<&str> = args.iter().map(String::as_str).collect();
    extra.push(&probe);
    run_all_with(&bin("cgp-helper-sim"), &extra, "runtime");
}

#[test]
fn reply_order_through_the_tap_is_the_order_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut tapped = tap_args(&dir.path().join("cap"));
    tapped.push(path_str(&bin("probe_helper")));
    let config = ["--config".to_string(), "config.toml".to_string()];
    tapped.extend(config.clone());
    // Cases whose order the helper's timing decides, not chance.
    for case in ["out_of_order", "quit_in_flight", "deadline"] {
        let input = std::fs::read(testdata("runtime").join(format!("{case}.in"))).unwrap();
        let limit = Duration::from_secs(60);
        let direct = run(
            &bin("probe_helper"),
            &config,
            &testdata("runtime"),
            &input,
            limit,
        );
        let through = run(
            &bin("cgp-helper-sim"),
            &tapped,
            &testdata("runtime"),
            &input,
            limit,
        );
        assert_eq!(direct.order, through.order, "{case}");
        assert_eq!(direct.replies, through.replies, "{case}");
    }
}

#[test]
fn exactly_once_under_load_and_every_line_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("cap");
    let sim = [
        "--generate",
        "20000",
        "--in-flight",
        "32",
        "--request",
        "ECHO {n}",
    ];
    let text = sim_through_tap(&sim, tap_args(&capture));
    assert!(
        text.contains("requests=20002 replies=20002 violations=0"),
        "{text}"
    );
    let cap = std::fs::read_to_string(&capture).unwrap();
    let count = |dir: &str| {
        cap.lines()
            .filter(|l| l.split(' ').nth(1) == Some(dir))
            .count()
    };
    assert_eq!(count(">"), 20002);
    // Every reply plus the start-up and stats `*` lines.
    assert!(count("<") >= 20002, "{}", count("<"));
    assert!(cap.contains("! helper ended: exit status 0"), "{cap}");
}

/// Every secret a capture could see: VRFY passwords, SASL credentials,
/// READPLAIN replies, KEY data, unknown commands' arguments, a line
/// without a token.
#[test]
fn secrets_never_reach_the_capture() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("auth.cap");
    let auth = testdata("auth");
    // cgp-auth on its own password and READPLAIN cases, through the tap.
    for (case, config) in [
        ("passwords", "config.toml"),
        ("readplain", "readplain.toml"),
    ] {
        let input = std::fs::read(auth.join(format!("{case}.in"))).unwrap();
        let mut args = tap_args(&capture);
        args.extend([path_str(&bin("cgp-auth")), "--config".into(), config.into()]);
        let o = run(
            &bin("cgp-helper-sim"),
            &args,
            &auth,
            &input,
            Duration::from_secs(60),
        );
        assert_eq!(o.status, Some(0), "{case}: {o:?}");
        assert!(
            o.replies
                .get("2")
                .is_some_and(|r| r[0].contains("secret") || case == "passwords"),
            "{case}: the READPLAIN secret must still reach CGP: {o:?}"
        );
    }
    // The probe helper for the commands cgp-auth does not take.
    let mut cmd = Command::new(bin("cgp-helper-sim"));
    cmd.args(tap_args(&capture)).arg(bin("probe_helper"));
    let mut h = Session::spawn(cmd);
    for line in [
        "1 INTF 3",
        "2 SASL(PLAIN) (IMAP [192.0.2.7]) AGJvYgBTYXNsU2VjcmV0",
        "3 KEY LicenseKey-0123",
        "4 RADIUSAUTH bob@x.test \"RadiusPass9\" {attr=\"NasSecret7\";}",
        "x VRFY a@b.test NoTokenPw5",
        "5 VRFY (IMAP) bob@x.test \"Spaced Pw 6\"",
    ] {
        h.send_line(line);
    }
    for seq in ["1", "2", "3", "4", "5"] {
        h.reply(seq);
    }
    let (code, err) = h.close();
    assert_eq!((code, err.as_str()), (Some(0), ""));

    let cap = std::fs::read_to_string(&capture).unwrap();
    let mode = std::fs::metadata(&capture).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let secrets = [
        "AGJvYgBTYXNsU2VjcmV0",
        "LicenseKey",
        "RadiusPass9",
        "NasSecret7",
        "NoTokenPw5",
        "Spaced Pw",
        // The READPLAIN secret of testdata/auth/readplain.toml.
        "sip \\\"secret",
        // The VRFY passwords of the auth cases.
        "alicepw",
        "wrong",
        "pa\"ss",
        "p\\\"a ss",
        "*)(uid=*",
        "extra words",
    ];
    // The helpers' own `*` lines to the CGP log pass as they are; what
    // they say is each helper's business.
    let records = cap
        .lines()
        .filter(|r| !r.contains(" < * ") && !r.contains(" <~ * "));
    for record in records {
        for s in secrets {
            assert!(
                !record.to_lowercase().contains(&s.to_lowercase()),
                "secret {s:?} in the capture: {record}"
            );
        }
    }
    // Three runs appended to one file: each masked value has a number of
    // its own.
    let mut numbers: Vec<&str> = cap
        .split("{secret:")
        .skip(1)
        .map(|s| s.split(|c: char| !c.is_ascii_digit()).next().unwrap())
        .filter(|n| !n.is_empty())
        .collect();
    let all = numbers.len();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), all, "{cap}");
    // The shape of what was masked is there.
    for shown in [
        "> 2 SASL(PLAIN) (IMAP [192.0.2.7]) {secret:",
        "> 3 KEY {secret:",
        "atom 15}",
        " string 13} {secret:",
        " dictionary 20}",
        "> {secret:",
        "> 5 VRFY (IMAP) bob@x.test {secret:",
        "READPLAIN alice@example.test",
        "< 2 OK {secret:",
    ] {
        assert!(cap.contains(shown), "{shown:?} not in the capture:\n{cap}");
    }
}

/// The capture's tap `*` notice in what the tap wrote: exactly once, as a
/// line of its own; the helper's own bytes around it unchanged.
fn without_notice(out: &[u8]) -> (Vec<u8>, usize) {
    let mut rest = Vec::new();
    let mut notices = 0;
    for line in out.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b"* cgp-helper-sim tap: capture stopped") {
            notices += 1;
            assert!(line.ends_with(b"passing bytes on unrecorded\n"), "{line:?}");
        } else {
            rest.extend_from_slice(line);
        }
    }
    (rest, notices)
}

#[test]
fn an_unwritable_capture_stops_recording_and_nothing_else() {
    for out in [
        // Writes fail (ENOSPC).
        PathBuf::from("/dev/full"),
        // Cannot be created.
        PathBuf::from("/nonexistent-dir/cap"),
    ] {
        for (case, input) in runtime_cases() {
            let dir = tempfile::tempdir().unwrap();
            let (tapped, _, said, code) = through_tee(&out, &input, dir.path());
            assert_eq!(code, Some(0), "{case}");
            let (helper_bytes, notices) = without_notice(&tapped);
            assert_eq!(
                notices,
                1,
                "{case} {}: {}",
                out.display(),
                String::from_utf8_lossy(&tapped)
            );
            assert!(helper_bytes == said, "{case}: the helper's bytes changed");
        }
    }
}

#[test]
fn a_capture_that_stops_taking_bytes_does_not_hold_the_helper() {
    // A FIFO whose reader never reads: its buffer fills, and a blocking
    // writer would hang there.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("cap");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let sim = [
        "--generate",
        "20000",
        "--in-flight",
        "16",
        "--reply-timeout",
        "10",
        "--request",
        "ECHO a-line-long-enough-to-fill-the-pipe-quickly-{n}",
        "--print",
    ];
    let text = sim_through_tap(&sim, tap_args(&fifo));
    assert!(
        text.contains("requests=20002 replies=20002 violations=0"),
        "{text}"
    );
    let notices = text
        .lines()
        .filter(|l| l.starts_with("* cgp-helper-sim tap: capture stopped (cannot write"))
        .count();
    assert_eq!(notices, 1, "{text}");
}

#[test]
fn signals_reach_the_helper_and_its_end_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("probe.toml");
    cgp_tests::write_config(&config, "").unwrap();
    let start = || {
        let mut cmd = Command::new(bin("cgp-helper-sim"));
        cmd.args(tap_args(&dir.path().join("cap")))
            .arg(bin("probe_helper"))
            .arg("--config")
            .arg(&config);
        let mut h = Session::spawn(cmd);
        assert_eq!(h.ask("INTF 3"), "INTF 3");
        h
    };
    let mut h = start();
    h.signal(libc::SIGHUP);
    h.info_starting("* configuration reloaded");
    h.signal(libc::SIGTERM);
    h.info_starting("* SIGTERM received");
    let (code, err) = h.close();
    assert_eq!((code, err.as_str()), (Some(0), ""));
    let cap = std::fs::read_to_string(dir.path().join("cap")).unwrap();
    assert!(cap.contains("! signal HUP passed to the helper"), "{cap}");
    assert!(cap.contains("! signal TERM passed to the helper"), "{cap}");

    // The probe helper does not catch SIGINT: it dies of it, and so does
    // the tap, as CGP would see the helper die.
    let mut h = start();
    h.signal(libc::SIGINT);
    let status = h.child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");

    // An exit status, and the helper's stderr, pass through untouched.
    let out = Command::new(bin("cgp-helper-sim"))
        .args(tap_args(&dir.path().join("cap")))
        .args(["sh", "-c", "echo 'fatal: reason' >&2; exit 3"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "fatal: reason\n");
    assert!(out.stdout.is_empty());
}

#[test]
fn partial_lines_and_invalid_utf8_pass_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("cap");
    // A helper that answers without a final end of line, in 8-bit bytes.
    let mut args = tap_args(&capture);
    args.extend([
        "sh".into(),
        "-c".into(),
        "cat >/dev/null; printf '1 OK \\377\\n* half'".into(),
    ]);
    let (out, code) = raw_stdout(&args, b"1 FROB \xfe\n2 PART");
    assert_eq!(code, Some(0));
    assert_eq!(out, b"1 OK \xff\n* half");
    let cap = std::fs::read_to_string(&capture).unwrap();
    assert!(cap.contains(" > 1 FROB {secret:1 atom 1}\n"), "{cap}");
    assert!(cap.contains(" >~ 2 PART\n"), "{cap}");
    assert!(cap.contains(" < 1 OK \\xff\n"), "{cap}");
    assert!(cap.contains(" <~ * half\n"), "{cap}");
}

#[test]
fn the_capture_is_rotated_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("cap");
    let mut tap = tap_args(&capture);
    tap.splice(
        3..3,
        ["--max-bytes", "4096", "--keep", "2"].map(String::from),
    );
    sim_through_tap(&["--generate", "2000", "--request", "ECHO {n}"], tap);
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["cap", "cap.1", "cap.2"]);
    for n in &names {
        let meta = std::fs::metadata(dir.path().join(n)).unwrap();
        // A record may pass the bound by its own length, no more.
        assert!(meta.len() < 4096 + 512, "{n}: {}", meta.len());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{n}");
        let text = std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert!(text.starts_with("# cgp-helper-sim capture v1"), "{n}");
    }
}

#[test]
fn a_capture_is_replayed_with_its_masked_values_filled() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("auth.cap");
    let auth = testdata("auth");
    let mut args = tap_args(&capture);
    args.extend([
        path_str(&bin("cgp-auth")),
        "--config".into(),
        "config.toml".into(),
    ]);
    let input = b"1 INTF 3\n2 VRFY alice@example.test \"alicepw\"\n3 QUIT\n";
    let o = run(
        &bin("cgp-helper-sim"),
        &args,
        &auth,
        input,
        Duration::from_secs(60),
    );
    assert_eq!(o.replies["2"], ["2 OK"]);
    let cap = std::fs::read_to_string(&capture).unwrap();
    assert!(
        cap.contains("> 2 VRFY alice@example.test {secret:1}"),
        "{cap}"
    );

    let replay = |fill: &[&str]| {
        let out = Command::new(bin("cgp-helper-sim"))
            .arg("--transcript")
            .arg(&capture)
            .args(fill)
            .args(["--print", "--"])
            .arg(bin("cgp-auth"))
            .args(["--config", "config.toml"])
            .current_dir(&auth)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (out, err) = replay(&["--fill", "1=\"alicepw\""]);
    assert!(out.contains("\n2 OK\n"), "{out}{err}");
    assert!(
        out.contains("requests=3 replies=3 violations=0"),
        "{out}{err}"
    );
    let (out, err) = replay(&[]);
    assert!(out.contains("\n2 ERROR \"invalid credentials\"\n"), "{out}");
    assert!(err.contains("1 masked value(s)"), "{err}");
}
