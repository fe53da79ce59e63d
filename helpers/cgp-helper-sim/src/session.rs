//! One conversation with a helper: the requests to send and the checks on
//! what comes back.

use crate::capture::{CAPTURE_MARK, Fills, request_of};
use cgp_wire::request::sequence_token;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MAX_LINE: usize = 4096;

/// One line to send; `seq` is set when a reply is owed for it.
pub struct Outgoing {
    line: Vec<u8>,
    seq: Option<Vec<u8>>,
    quit: bool,
}

/// The longest transcript line read: longer lines are an error, so that a
/// file without ends of line cannot fill the memory.
const MAX_TRANSCRIPT_LINE: usize = 4 << 20;

/// Lines of a transcript looked at, at most, for the INTF it may open with.
const INTF_LOOKAHEAD: usize = 64;

/// Latency samples kept exactly; past this, every other sample is dropped
/// and from then on only every other reply sampled (and so on), so the
/// memory stays fixed on an endless run and the samples spread over all of
/// it.
const SAMPLES: usize = 1 << 20;

/// Answered tokens remembered to catch a second reply; older ones are
/// forgotten (a very late second reply is then a reply for no request).
const REMEMBERED: usize = 1 << 16;

/// Violations kept to be listed; the rest are counted.
const KEPT_VIOLATIONS: usize = 1000;

/// The lines to send, in order, made as they are sent: a transcript is
/// read line by line and a generated load is generated request by request,
/// so neither grows with its length.
pub struct Plan {
    ahead: VecDeque<Outgoing>,
    source: Source,
    /// Set for a capture made by `tap`: its requests are sent, with their
    /// masked values filled.
    capture: Option<Fills>,
    /// Why reading the transcript stopped early.
    pub error: Option<String>,
}

enum Source {
    Lines(BufReader<Box<dyn Read>>),
    Generated {
        next: u64,
        n: u64,
        templates: Vec<String>,
    },
    Done,
}

impl Plan {
    /// A transcript: its lines as they are, or a capture's requests. An
    /// INTF goes first unless the transcript opens with one, as CGP always
    /// does.
    pub fn transcript(reader: Box<dyn Read>, fills: Fills, intf: u32) -> Plan {
        let mut plan = Plan {
            ahead: VecDeque::new(),
            source: Source::Lines(BufReader::with_capacity(64 * 1024, reader)),
            capture: None,
            error: None,
        };
        // Read ahead to the first request (or a few lines).
        let mut fills = Some(fills);
        while plan.ahead.len() < INTF_LOOKAHEAD {
            let Some(line) = plan.read_line() else { break };
            if let Some(f) = fills.take() {
                if line.starts_with(CAPTURE_MARK.as_bytes()) {
                    plan.capture = Some(f);
                }
            }
            let Some(line) = plan.decode(line) else {
                continue;
            };
            let owed = line.seq.is_some();
            plan.ahead.push_back(line);
            if owed {
                break;
            }
        }
        let opens_with_intf = plan
            .ahead
            .iter()
            .find(|l| l.seq.is_some())
            .is_some_and(|l| command_of(&l.line).eq_ignore_ascii_case(b"INTF"));
        if !opens_with_intf {
            plan.ahead
                .push_front(outgoing(format!("0 INTF {intf}").into_bytes()));
        }
        plan
    }

    /// INTF, `n` requests cycling through the templates, then QUIT.
    pub fn generated(n: u64, templates: &[String], intf: u32) -> Plan {
        Plan {
            ahead: VecDeque::from([outgoing(format!("1 INTF {intf}").into_bytes())]),
            source: Source::Generated {
                next: 0,
                n,
                templates: templates.to_vec(),
            },
            capture: None,
            error: None,
        }
    }

    /// How many masked values of a capture had no `--fill` and got a
    /// stand-in.
    pub fn unfilled(&self) -> u64 {
        self.capture.as_ref().map_or(0, |f| f.unfilled)
    }

    /// Whether the next line may have to wait for its input (a transcript
    /// read from a pipe): what was written should be flushed first.
    fn may_wait(&self) -> bool {
        match &self.source {
            Source::Lines(reader) => self.ahead.is_empty() && reader.buffer().is_empty(),
            _ => false,
        }
    }

    /// The next line to send; `None` at the end.
    pub fn next_line(&mut self) -> Option<Outgoing> {
        if let Some(line) = self.ahead.pop_front() {
            return Some(line);
        }
        loop {
            match &mut self.source {
                Source::Done => return None,
                Source::Generated { next, n, templates } => {
                    let i = *next;
                    *next += 1;
                    let line = if i < *n {
                        let template = &templates[(i % templates.len() as u64) as usize];
                        format!("{} {}", i + 2, expand(template, i))
                    } else {
                        let quit = format!("{} QUIT", *n + 2);
                        self.source = Source::Done;
                        quit
                    };
                    return Some(outgoing(line.into_bytes()));
                }
                Source::Lines(_) => {
                    let line = self.read_line()?;
                    if let Some(out) = self.decode(line) {
                        return Some(out);
                    }
                }
            }
        }
    }

    /// A transcript line, or for a capture the request of a record.
    fn decode(&mut self, line: Vec<u8>) -> Option<Outgoing> {
        match &mut self.capture {
            None => Some(outgoing(line)),
            Some(fills) => request_of(&String::from_utf8_lossy(&line), fills).map(outgoing),
        }
    }

    fn read_line(&mut self) -> Option<Vec<u8>> {
        let Source::Lines(reader) = &mut self.source else {
            return None;
        };
        let mut line = Vec::new();
        let read = reader
            .by_ref()
            .take(MAX_TRANSCRIPT_LINE as u64 + 1)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) => {
                self.source = Source::Done;
                None
            }
            Ok(_) if line.last() == Some(&b'\n') => {
                line.pop();
                Some(line)
            }
            Ok(_) if line.len() > MAX_TRANSCRIPT_LINE => {
                self.error = Some(format!(
                    "a transcript line is over {MAX_TRANSCRIPT_LINE} bytes"
                ));
                self.source = Source::Done;
                None
            }
            // The last line, without an end of line.
            Ok(_) => Some(line),
            Err(e) => {
                self.error = Some(format!("cannot read the transcript: {e}"));
                self.source = Source::Done;
                None
            }
        }
    }
}

fn outgoing(line: Vec<u8>) -> Outgoing {
    // Any line with a readable sequence token is owed a reply, even one
    // with no command (it gets an error).
    let seq = sequence_token(&line).map(<[u8]>::to_vec);
    let quit = command_of(&line).eq_ignore_ascii_case(b"QUIT");
    Outgoing { line, seq, quit }
}

fn command_of(line: &[u8]) -> &[u8] {
    let mut words = line
        .split(|b| *b == b' ' || *b == b'\t' || *b == b'\r')
        .filter(|w| !w.is_empty());
    words.next();
    words.next().unwrap_or_default()
}

/// Replaces `{n}` with `i` and `{n%K}` with `i % K`.
pub fn expand(template: &str, i: u64) -> String {
    let mut out = String::with_capacity(template.len() + 8);
    let mut rest = template;
    while let Some(start) = rest.find("{n") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let spec = &after[..end];
        match spec.strip_prefix('%').map(str::parse::<u64>) {
            None if spec.is_empty() => out.push_str(&i.to_string()),
            Some(Ok(k)) if k > 0 => out.push_str(&(i % k).to_string()),
            _ => out.push_str(&rest[start..start + 3 + end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

pub struct Session {
    pub command: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub in_flight: usize,
    pub print: bool,
    pub reply_timeout: Duration,
}

#[derive(Default)]
pub struct Report {
    pub requests: usize,
    pub replies: usize,
    pub info_lines: usize,
    /// The first violations found; `violation_count` counts them all.
    pub violations: Vec<String>,
    pub violation_count: usize,
    pub elapsed: Duration,
    latencies_us: Vec<u64>,
    max_us: u64,
    /// One reply in this many is sampled.
    stride: u64,
}

impl Report {
    fn latency(&mut self, us: u64) {
        self.max_us = self.max_us.max(us);
        if self.replies as u64 % self.stride.max(1) != 0 {
            return;
        }
        self.latencies_us.push(us);
        if self.latencies_us.len() >= SAMPLES {
            let mut odd = false;
            self.latencies_us.retain(|_| {
                odd = !odd;
                odd
            });
            self.stride = self.stride.max(1) * 2;
        }
    }

    pub fn summary(&self) -> String {
        let mut l = self.latencies_us.clone();
        l.sort_unstable();
        let pct = |p: usize| {
            l.get((l.len().saturating_sub(1)) * p / 100)
                .map_or(0.0, |v| *v as f64 / 1000.0)
        };
        let secs = self.elapsed.as_secs_f64();
        format!(
            "requests={} replies={} violations={} elapsed={:.3}s rate={:.0}/s p50={:.3}ms p99={:.3}ms max={:.3}ms",
            self.requests,
            self.replies,
            self.violation_count,
            secs,
            if secs > 0.0 {
                self.replies as f64 / secs
            } else {
                0.0
            },
            pct(50),
            pct(99),
            self.max_us as f64 / 1000.0
        )
    }
}

enum Event {
    Line(Instant, Vec<u8>),
    Eof,
}

impl Session {
    pub fn run(&self, plan: &mut Plan) -> Result<Report, String> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or("no helper command given")?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut stderr = child.stderr.take().ok_or("no stderr")?;
        let mut stdin = Some(std::io::BufWriter::new(
            child.stdin.take().ok_or("no stdin")?,
        ));

        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(64 * 1024, stdout);
            loop {
                let mut line = Vec::with_capacity(64);
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Event::Eof);
                        return;
                    }
                    Ok(_) => {
                        if tx.send(Event::Line(Instant::now(), line)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let err_thread = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = stderr.read_to_end(&mut b);
            b
        });

        let mut state = State::new(self.print);
        let started = Instant::now();
        let mut exhausted = false;
        while !state.eof {
            if let Some(w) = stdin.as_mut() {
                // Fill the window; CGP sends nothing more after QUIT.
                while !exhausted && state.outstanding.len() < self.in_flight && state.quit.is_none()
                {
                    let Some(out) = plan.next_line() else {
                        exhausted = true;
                        break;
                    };
                    if w.write_all(&out.line)
                        .and_then(|()| w.write_all(b"\n"))
                        .is_err()
                    {
                        state.violation("helper stopped reading its input".into());
                        exhausted = true;
                        break;
                    }
                    if let Some(seq) = &out.seq {
                        state.sent(seq, out.quit);
                    }
                    // A line read from a slow stream goes out now, not when
                    // the window is full.
                    if plan.may_wait() {
                        let _ = w.flush();
                    }
                }
                let _ = w.flush();
                // Without QUIT the conversation ends with end of input, as
                // when CGP closes the pipe; with it, once QUIT is answered.
                let all_sent = exhausted || state.quit.is_some();
                if all_sent && (state.quit.is_none() || state.quit_answered) {
                    stdin = None;
                }
            }
            match rx.recv_timeout(self.reply_timeout) {
                Ok(ev) => state.event(ev),
                Err(_) => {
                    state.violation(format!(
                        "no line from the helper for {}s with {} request(s) unanswered",
                        self.reply_timeout.as_secs(),
                        state.outstanding.len()
                    ));
                    break;
                }
            }
            while let Ok(ev) = rx.try_recv() {
                state.event(ev);
            }
        }
        drop(stdin);
        if let Some(e) = &plan.error {
            state.violation(e.clone());
        }
        state.report.elapsed = started.elapsed();
        let unanswered: Vec<String> = state
            .outstanding
            .keys()
            .map(|seq| String::from_utf8_lossy(seq).into_owned())
            .collect();
        for seq in unanswered {
            state.violation(format!("request {seq} got no reply"));
        }
        let exit = wait_with_limit(&mut child, Duration::from_secs(10));
        match exit {
            Some(0) => {}
            Some(code) => state.violation(format!("helper exited with status {code}")),
            None => state.violation("helper did not exit within 10s of end of input".into()),
        }
        let err = err_thread.join().unwrap_or_default();
        if !err.is_empty() {
            state.violation(format!(
                "helper wrote {} byte(s) to stderr: {:?}",
                err.len(),
                String::from_utf8_lossy(&err[..err.len().min(200)])
            ));
        }
        Ok(state.report)
    }
}

struct State {
    report: Report,
    outstanding: HashMap<Vec<u8>, Instant>,
    answered: HashSet<Vec<u8>>,
    /// The answered tokens, oldest first, to forget the oldest.
    answered_order: VecDeque<Vec<u8>>,
    quit: Option<Vec<u8>>,
    quit_answered: bool,
    eof: bool,
    print: bool,
}

impl State {
    fn new(print: bool) -> State {
        State {
            report: Report::default(),
            outstanding: HashMap::new(),
            answered: HashSet::new(),
            answered_order: VecDeque::new(),
            quit: None,
            quit_answered: false,
            eof: false,
            print,
        }
    }

    fn violation(&mut self, v: String) {
        self.report.violation_count += 1;
        if self.report.violations.len() < KEPT_VIOLATIONS {
            self.report.violations.push(v);
        }
    }

    fn sent(&mut self, seq: &[u8], quit: bool) {
        self.report.requests += 1;
        self.answered.remove(seq);
        if self
            .outstanding
            .insert(seq.to_vec(), Instant::now())
            .is_some()
        {
            let seq = String::from_utf8_lossy(seq).into_owned();
            self.violation(format!("sequence {seq} sent again while still in flight"));
        }
        if quit {
            self.quit = Some(seq.to_vec());
        }
    }

    fn event(&mut self, ev: Event) {
        let (at, line) = match ev {
            Event::Eof => {
                self.eof = true;
                return;
            }
            Event::Line(at, line) => (at, line),
        };
        if self.print {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&line);
        }
        let shown = || String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
        if line.len() > MAX_LINE {
            self.violation(format!("line of {} bytes: {}…", line.len(), shown()));
        }
        if line.last() != Some(&b'\n') {
            self.violation(format!("last line has no end of line: {}", shown()));
        }
        if line.starts_with(b"*") {
            self.report.info_lines += 1;
            return;
        }
        let seq = line
            .split(|b| *b == b' ' || *b == b'\n')
            .next()
            .unwrap_or_default();
        if let Some(sent) = self.outstanding.remove(seq) {
            self.report.replies += 1;
            self.report
                .latency(u64::try_from(at.duration_since(sent).as_micros()).unwrap_or(u64::MAX));
            if self.answered.insert(seq.to_vec()) {
                self.answered_order.push_back(seq.to_vec());
            }
            if self.answered_order.len() > REMEMBERED {
                if let Some(old) = self.answered_order.pop_front() {
                    self.answered.remove(&old);
                }
            }
            if self.quit.as_deref() == Some(seq) {
                self.quit_answered = true;
                if !self.outstanding.is_empty() {
                    let n = self.outstanding.len();
                    self.violation(format!(
                        "QUIT answered while {n} request(s) were unanswered"
                    ));
                }
            }
        } else if self.answered.contains(seq) {
            self.violation(format!("second reply for one request: {}", shown()));
        } else {
            self.violation(format!("reply for no request in flight: {}", shown()));
        }
    }
}

fn wait_with_limit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let until = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status.code().unwrap_or(-1)),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(mut p: Plan) -> Vec<(String, Option<String>, bool)> {
        std::iter::from_fn(|| p.next_line())
            .map(|o| {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                (text(&o.line), o.seq.as_deref().map(text), o.quit)
            })
            .collect()
    }

    fn transcript(text: &'static [u8]) -> Plan {
        Plan::transcript(Box::new(text), Fills::default(), 4)
    }

    #[test]
    fn templates_expand_the_index() {
        assert_eq!(expand("VRFY u{n%3}@x {n}", 7), "VRFY u1@x 7");
        assert_eq!(expand("{n%0} {m} {n", 7), "{n%0} {m} {n");
    }

    #[test]
    fn transcripts_get_an_intf_first_unless_they_open_with_one() {
        let l = lines(transcript(b"2 KEY\n3 QUIT\n"));
        assert_eq!(l[0].0, "0 INTF 4");
        assert!(l[2].2);
        let l = lines(transcript(b"1 INTF 3\ngarbage\n\n2 KEY"));
        assert_eq!(l.len(), 4);
        assert!(l[1].1.is_none() && l[2].1.is_none());
        assert_eq!(l[3].1.as_deref(), Some("2"));
        let l = lines(transcript(b"garbage\n1 INTF 3\n"));
        assert_eq!(l[1].0, "1 INTF 3");
    }

    #[test]
    fn generated_plans_end_with_quit() {
        let l = lines(Plan::generated(3, &["KEY".to_string()], 4));
        let l: Vec<_> = l.into_iter().map(|l| l.0).collect();
        assert_eq!(l, ["1 INTF 4", "2 KEY", "3 KEY", "4 KEY", "5 QUIT"]);
    }

    #[test]
    fn generated_plans_are_made_as_they_are_sent() {
        // A count no memory could hold as a list of lines.
        let mut p = Plan::generated(u64::MAX - 2, &["KEY".to_string()], 4);
        assert_eq!(p.next_line().map(|o| o.line), Some(b"1 INTF 4".to_vec()));
        assert_eq!(p.next_line().map(|o| o.line), Some(b"2 KEY".to_vec()));
    }

    #[test]
    fn captures_send_their_requests_with_fills() {
        let capture = b"# cgp-helper-sim capture v1: x\n\
            2026-12-06T18:40:01.000001Z ! helper started\n\
            2026-12-06T18:40:01.000002Z > 1 INTF 4\n\
            2026-12-06T18:40:01.000003Z < 1 INTF 3\n\
            2026-12-06T18:40:01.000004Z > 2 VRFY bob@x.test {secret:1}\n\
            2026-12-06T18:40:01.000005Z > 3 FROB {secret:2 atom 3}\n\
            2026-12-06T18:40:01.000006Z >~ 4 QUIT\n";
        let fills = Fills::parse(&["1=\"pa ss\"".to_string()]).unwrap();
        let mut p = Plan::transcript(Box::new(&capture[..]), fills, 4);
        let mut sent = Vec::new();
        while let Some(o) = p.next_line() {
            sent.push(String::from_utf8_lossy(&o.line).into_owned());
        }
        assert_eq!(
            sent,
            [
                "1 INTF 4",
                "2 VRFY bob@x.test \"pa ss\"",
                "3 FROB xxx",
                "4 QUIT"
            ]
        );
        assert_eq!(p.unfilled(), 1);
    }

    #[test]
    fn a_line_without_end_past_the_limit_ends_the_transcript() {
        let endless = std::io::repeat(b'x');
        let mut p = Plan::transcript(Box::new(endless), Fills::default(), 4);
        assert_eq!(p.next_line().map(|o| o.line), Some(b"0 INTF 4".to_vec()));
        assert!(p.next_line().is_none());
        assert!(
            p.error.as_deref().unwrap_or_default().contains("over"),
            "{:?}",
            p.error
        );
    }

    #[test]
    fn latency_samples_stay_bounded_and_spread_over_the_run() {
        let mut r = Report::default();
        let n = SAMPLES as u64 * 3;
        for i in 0..n {
            r.replies += 1;
            r.latency(i);
        }
        assert!(r.latencies_us.len() < SAMPLES);
        assert!(r.latencies_us.iter().any(|v| *v < 1000));
        assert!(r.latencies_us.iter().any(|v| *v > n - 1000));
        assert_eq!(r.max_us, n - 1);
    }

    #[test]
    fn answered_tokens_and_latencies_stay_bounded() {
        let mut s = State::new(false);
        for i in 0..(REMEMBERED + 10) {
            let seq = i.to_string();
            s.sent(seq.as_bytes(), false);
            s.event(Event::Line(
                Instant::now(),
                format!("{seq} OK\n").into_bytes(),
            ));
        }
        assert_eq!(s.answered.len(), REMEMBERED);
        assert_eq!(s.report.replies, REMEMBERED + 10);
        assert_eq!(s.report.violation_count, 0);
    }
}
