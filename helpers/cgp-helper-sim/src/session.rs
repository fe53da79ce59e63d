//! One conversation with a helper: the requests to send and the checks on
//! what comes back.

use cgp_wire::request::sequence_token;
use std::collections::{HashMap, HashSet};
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

/// The lines to send, in order.
pub struct Plan {
    lines: Vec<Outgoing>,
}

impl Plan {
    /// A transcript: its lines as they are. An INTF goes first unless the
    /// transcript opens with one, as CGP always does.
    pub fn transcript(bytes: &[u8], intf: u32) -> Plan {
        let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let mut lines: Vec<Outgoing> = if body.is_empty() {
            Vec::new()
        } else {
            body.split(|b| *b == b'\n')
                .map(|l| outgoing(l.to_vec()))
                .collect()
        };
        let opens_with_intf = lines
            .iter()
            .find(|l| l.seq.is_some())
            .is_some_and(|l| command_of(&l.line).eq_ignore_ascii_case(b"INTF"));
        if !opens_with_intf {
            lines.insert(0, outgoing(format!("0 INTF {intf}").into_bytes()));
        }
        Plan { lines }
    }

    /// INTF, `n` requests cycling through the templates, then QUIT.
    pub fn generated(n: u64, templates: &[String], intf: u32) -> Plan {
        let mut lines = Vec::with_capacity(n as usize + 2);
        lines.push(outgoing(format!("1 INTF {intf}").into_bytes()));
        for i in 0..n {
            let template = &templates[(i % templates.len() as u64) as usize];
            lines.push(outgoing(
                format!("{} {}", i + 2, expand(template, i)).into_bytes(),
            ));
        }
        lines.push(outgoing(format!("{} QUIT", n + 2).into_bytes()));
        Plan { lines }
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
    pub violations: Vec<String>,
    pub elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Report {
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
            self.violations.len(),
            secs,
            if secs > 0.0 {
                self.replies as f64 / secs
            } else {
                0.0
            },
            pct(50),
            pct(99),
            pct(100)
        )
    }
}

enum Event {
    Line(Instant, Vec<u8>),
    Eof,
}

impl Session {
    pub fn run(&self, plan: &Plan) -> Result<Report, String> {
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

        let mut state = State {
            report: Report::default(),
            outstanding: HashMap::new(),
            answered: HashSet::new(),
            quit: None,
            quit_answered: false,
            eof: false,
            print: self.print,
        };
        let started = Instant::now();
        let mut next = 0;
        while !state.eof {
            if let Some(w) = stdin.as_mut() {
                // Fill the window; CGP sends nothing more after QUIT.
                while next < plan.lines.len()
                    && state.outstanding.len() < self.in_flight
                    && state.quit.is_none()
                {
                    let out = &plan.lines[next];
                    next += 1;
                    if w.write_all(&out.line)
                        .and_then(|()| w.write_all(b"\n"))
                        .is_err()
                    {
                        state.violation("helper stopped reading its input".into());
                        break;
                    }
                    if let Some(seq) = &out.seq {
                        state.sent(seq, out.quit);
                    }
                }
                let _ = w.flush();
                // Without QUIT the conversation ends with end of input, as
                // when CGP closes the pipe; with it, once QUIT is answered.
                let all_sent = next >= plan.lines.len() || state.quit.is_some();
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
        state.report.elapsed = started.elapsed();
        for seq in state.outstanding.keys() {
            let seq = String::from_utf8_lossy(seq).into_owned();
            state
                .report
                .violations
                .push(format!("request {seq} got no reply"));
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
    quit: Option<Vec<u8>>,
    quit_answered: bool,
    eof: bool,
    print: bool,
}

impl State {
    fn violation(&mut self, v: String) {
        self.report.violations.push(v);
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
                .latencies_us
                .push(u64::try_from(at.duration_since(sent).as_micros()).unwrap_or(u64::MAX));
            self.answered.insert(seq.to_vec());
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

    #[test]
    fn templates_expand_the_index() {
        assert_eq!(expand("VRFY u{n%3}@x {n}", 7), "VRFY u1@x 7");
        assert_eq!(expand("{n%0} {m} {n", 7), "{n%0} {m} {n");
    }

    #[test]
    fn transcripts_get_an_intf_first_unless_they_open_with_one() {
        let p = Plan::transcript(b"2 KEY\n3 QUIT\n", 4);
        assert_eq!(p.lines[0].line, b"0 INTF 4");
        assert!(p.lines[2].quit);
        let p = Plan::transcript(b"1 INTF 3\ngarbage\n\n2 KEY", 4);
        assert_eq!(p.lines.len(), 4);
        assert!(p.lines[1].seq.is_none() && p.lines[2].seq.is_none());
        assert_eq!(p.lines[3].seq.as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn generated_plans_end_with_quit() {
        let p = Plan::generated(3, &["KEY".to_string()], 4);
        let lines: Vec<_> = p
            .lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.line).into_owned())
            .collect();
        assert_eq!(lines, ["1 INTF 4", "2 KEY", "3 KEY", "4 KEY", "5 QUIT"]);
    }
}
