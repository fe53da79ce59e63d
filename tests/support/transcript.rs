//! Runs a helper on a transcript and checks what it wrote.
//!
//! A case is `testdata/<helper>/<case>.in` (the lines CGP would send) and
//! `<case>.out` (the replies expected). Replies are compared as a set keyed by
//! sequence token, because a helper may answer in any order. `*` lines are
//! ignored unless `.out` lists them; a listed `* text` line must match the
//! start of some `*` line the helper wrote. The helper runs with the case's
//! directory as working directory and with `--config <case>.toml`, else
//! `--config config.toml`, when such a file exists.
//!
//! Whatever the case, the contract is checked: exit status 0, nothing on
//! stderr, no line over 4096 bytes, no sequence token answered twice, the
//! reply to QUIT last.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a helper wrote for one transcript.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Reply lines keyed by sequence token, in the order written.
    pub replies: BTreeMap<String, Vec<String>>,
    pub order: Vec<String>,
    pub info: Vec<String>,
    pub stderr: String,
    pub status: Option<i32>,
    pub elapsed: Duration,
}

/// Runs `program` with `args` in `cwd`, feeding `input` and closing stdin.
pub fn run(program: &Path, args: &[String], cwd: &Path, input: &[u8], limit: Duration) -> Outcome {
    run_held(program, args, cwd, input, limit, &|_| {})
}

/// [`run`], calling `hold` with each line before it is fed: for what a
/// transcript cannot say (a PBX event arrives between two requests, a text
/// message a helper sends after its reply and drops at exit is sent).
pub fn run_held(
    program: &Path,
    args: &[String],
    cwd: &Path,
    input: &[u8],
    limit: Duration,
    hold: &(dyn Fn(&[u8]) + Sync),
) -> Outcome {
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        // Times a helper shows (a banner's "missed since 08:12") are local
        // times: a transcript pins the zone so its expected lines hold on
        // any machine.
        .env("TZ", "UTC")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (status, out, err) = std::thread::scope(|scope| {
        scope.spawn(move || {
            for line in input.split_inclusive(|b| *b == b'\n') {
                hold(line);
                if stdin.write_all(line).is_err() {
                    break;
                }
            }
        });
        let out_reader = scope.spawn(move || {
            let mut b = Vec::new();
            let _ = stdout.read_to_end(&mut b);
            b
        });
        let err_reader = scope.spawn(move || {
            let mut b = Vec::new();
            let _ = stderr.read_to_end(&mut b);
            b
        });
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s.code();
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let out = out_reader.join().unwrap_or_default();
        let err = err_reader.join().unwrap_or_default();
        (status, out, err)
    });
    let mut outcome = Outcome {
        stderr: String::from_utf8_lossy(&err).into(),
        status,
        elapsed: started.elapsed(),
        ..Outcome::default()
    };
    for raw in out.split_inclusive(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(raw.strip_suffix(b"\n").unwrap_or(raw)).into_owned();
        assert!(
            raw.len() <= 4096,
            "line of {} bytes written: {}…",
            raw.len(),
            &line[..80.min(line.len())]
        );
        if line.starts_with('*') {
            outcome.info.push(line);
        } else {
            let seq = line.split(' ').next().unwrap_or_default().to_string();
            outcome.order.push(seq.clone());
            outcome.replies.entry(seq).or_default().push(line);
        }
    }
    outcome
}

/// Checks the contract every helper keeps, whatever it was asked.
pub fn check_contract(o: &Outcome, input: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    if o.status != Some(0) {
        problems.push(format!("exit status {:?}, expected 0", o.status));
    }
    if !o.stderr.is_empty() {
        problems.push(format!("stderr not empty: {:?}", o.stderr));
    }
    for (seq, lines) in &o.replies {
        if lines.len() > 1 {
            problems.push(format!(
                "sequence {seq} answered {} times: {lines:?}",
                lines.len()
            ));
        }
    }
    let quit = input.split(|b| *b == b'\n').find_map(|l| {
        let l = String::from_utf8_lossy(l);
        let mut w = l.split_whitespace();
        let seq = w.next()?.to_string();
        w.next()
            .filter(|c| c.eq_ignore_ascii_case("QUIT"))
            .map(|_| seq)
    });
    if let Some(q) = quit {
        if o.order.last() != Some(&q) {
            problems.push(format!(
                "the reply to QUIT ({q}) is not the last reply: {:?}",
                o.order
            ));
        }
    }
    problems
}

/// Runs one case of a helper's testdata directory, with `extra` before the
/// case's own arguments; returns the problems found.
pub fn run_case(program: &Path, extra: &[&str], dir: &Path, case: &str) -> Vec<String> {
    let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    if let Some(config) = [format!("{case}.toml"), "config.toml".to_string()]
        .into_iter()
        .find(|c| dir.join(c).exists())
    {
        args.extend(["--config".to_string(), config]);
    }
    run_case_args(program, &args, dir, case, &|_| {})
}

/// Runs the case `testdata/<dir>/<case>` with `--config <config>`: a
/// configuration the test wrote (an example pointed at a fake server), not
/// one of the tree; `hold` as in [`run_held`]. Panics with the problems found.
pub fn check_case_with_config(
    program: &Path,
    dir: &str,
    case: &str,
    config: &Path,
    hold: &(dyn Fn(&[u8]) + Sync),
) {
    let args = ["--config".to_string(), config.display().to_string()];
    let problems = run_case_args(program, &args, &crate::testdata(dir), case, hold);
    assert!(
        problems.is_empty(),
        "{case}: {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Runs one case with exactly `args`; returns the problems found.
fn run_case_args(
    program: &Path,
    args: &[String],
    dir: &Path,
    case: &str,
    hold: &(dyn Fn(&[u8]) + Sync),
) -> Vec<String> {
    let input = std::fs::read(dir.join(format!("{case}.in"))).expect("case input");
    // Compared as lossy text on both sides: replies may carry 8-bit bytes.
    let expected = std::fs::read(dir.join(format!("{case}.out"))).expect("case output");
    let expected = String::from_utf8_lossy(&expected);
    let o = run_held(program, args, dir, &input, Duration::from_secs(60), hold);
    let mut problems = check_contract(&o, &input);
    let mut want_replies = BTreeSet::new();
    for line in expected
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        if line.starts_with('*') {
            if !o.info.iter().any(|i| i.starts_with(line)) {
                problems.push(format!("missing info line {line:?}; got {:?}", o.info));
            }
        } else {
            want_replies.insert(line.to_string());
        }
    }
    let got: BTreeSet<String> = o.replies.values().flatten().cloned().collect();
    for missing in want_replies.difference(&got) {
        problems.push(format!("expected reply missing: {missing}"));
    }
    for extra in got.difference(&want_replies) {
        problems.push(format!("unexpected reply: {extra}"));
    }
    problems
}

/// Runs every case in `testdata/<dir>` against `program`; panics with all
/// problems of all cases.
pub fn run_all(program: &Path, dir: &str) {
    run_all_with(program, &[], dir);
}

/// [`run_all`] with arguments given to the program before each case's own.
pub fn run_all_with(program: &Path, extra: &[&str], dir: &str) {
    let dir = crate::testdata(dir);
    let mut cases: Vec<String> = std::fs::read_dir(&dir)
        .expect("testdata directory")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let case = name.strip_suffix(".in")?.to_string();
            dir.join(format!("{case}.out")).exists().then_some(case)
        })
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", dir.display());
    let mut report = Vec::new();
    for case in &cases {
        for p in run_case(program, extra, &dir, case) {
            report.push(format!("{case}: {p}"));
        }
    }
    assert!(
        report.is_empty(),
        "{} problem(s):\n{}",
        report.len(),
        report.join("\n")
    );
}
