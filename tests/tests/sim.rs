//! `cgp-helper-sim` against the four helper binaries, and against helpers
//! that break the contract on purpose: a checker must be seen to fail.

use cgp_tests::bin;
use std::io::Write;
use std::process::Command;

fn sim(args: &[&str], helper: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("cgp-helper-sim"))
        .args(args)
        .arg("--")
        .args(helper)
        .output()
        .expect("run cgp-helper-sim");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hundred_thousand_generated_requests_against_each_helper() {
    for helper in ["cgp-auth", "cgp-filter", "cgp-banner", "cgp-balancer"] {
        let path = bin(helper);
        let (code, out, err) = sim(
            &["--generate", "100000", "--in-flight", "32"],
            &[path.to_str().unwrap()],
        );
        assert_eq!(code, 0, "{helper}: {out}{err}");
        assert!(
            out.contains("requests=100002 replies=100002 violations=0"),
            "{helper}: {out}"
        );
    }
}

/// A shell helper: `body` runs once per request with `$s` (sequence) and `$c`
/// (command) set, after INTF is answered.
fn shell_helper(body: &str) -> Vec<String> {
    let script = format!(
        "while read -r s c rest; do case \"$c\" in INTF) echo \"$s INTF 3\";; QUIT) echo \"$s OK\"; exit 0;; *) {body};; esac; done"
    );
    vec!["sh".into(), "-c".into(), script]
}

fn violations(body: &str, extra: &[&str]) -> (i32, String) {
    let helper = shell_helper(body);
    let helper: Vec<&str> = helper.iter().map(String::as_str).collect();
    let mut args = vec!["--generate", "5"];
    args.extend_from_slice(extra);
    let (code, out, err) = sim(&args, &helper);
    (code, format!("{out}{err}"))
}

#[test]
fn a_correct_shell_helper_passes() {
    let (code, text) = violations("echo \"$s OK\"", &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("violations=0"), "{text}");
}

#[test]
fn duplicate_replies_are_violations() {
    let (code, text) = violations("echo \"$s OK\"; echo \"$s OK\"", &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("second reply for one request"), "{text}");
}

#[test]
fn replies_with_a_wrong_token_are_violations() {
    let (code, text) = violations("echo \"0$s OK\"", &["--reply-timeout", "2"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("reply for no request in flight: 02 OK"),
        "{text}"
    );
    assert!(text.contains("got no reply"), "{text}");
}

#[test]
fn stderr_output_is_a_violation() {
    let (code, text) = violations("echo oops >&2; echo \"$s OK\"", &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("to stderr"), "{text}");
}

#[test]
fn overlong_lines_are_violations() {
    let (code, text) = violations("printf '%s OK %05000d\\n' \"$s\" 0", &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("line of 5006 bytes"), "{text}");
}

#[test]
fn a_silent_helper_is_caught_by_the_reply_timeout() {
    let (code, text) = violations("true", &["--reply-timeout", "1"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no line from the helper for 1s"), "{text}");
}

#[test]
fn transcripts_and_printed_replies() {
    let dir = cgp_tests::testdata("runtime");
    let probe = bin("probe_helper");
    let out = Command::new(bin("cgp-helper-sim"))
        .args(["--transcript", "crlf.in", "--print", "--cwd"])
        .arg(&dir)
        .arg("--")
        .arg(probe)
        .args(["--config", "config.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\n2 OK (\"a b\",c)\n"), "{text}");
    assert!(text.contains("requests=4 replies=4 violations=0"), "{text}");
}

#[test]
fn transcripts_are_sent_as_they_are_read() {
    // A transcript from a pipe that stays open: replies must come before
    // its end, as they would for an endless input.
    let dir = cgp_tests::testdata("runtime");
    let mut child = Command::new(bin("cgp-helper-sim"))
        .args(["--transcript", "/dev/stdin", "--print", "--"])
        .arg(bin("probe_helper"))
        .args(["--config", "config.toml"])
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"1 INTF 3\n2 ECHO streamed\n").unwrap();
    stdin.flush().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let want = "2 OK (streamed)";
    loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("no reply while the transcript was still open");
        if line == want {
            break;
        }
    }
    stdin.write_all(b"3 QUIT\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    let rest: Vec<String> = rx.iter().collect();
    assert!(status.success(), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("requests=3 replies=3 violations=0")),
        "{rest:?}"
    );
}

#[test]
fn absurd_generate_counts_are_refused() {
    let (code, out, err) = sim(&["--generate", "1000000000000"], &["true"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("1000000000000 is not in 1..=100000000"),
        "{err}"
    );
}
