//! A helper process driven over its stdio the way CGP drives it: the one
//! driver the integration tests, fixtures and benchmarks share.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a test waits for any one line: generous, because a loaded
/// machine is slow, and a bound, so that a silent helper fails the test.
pub const LINE_WAIT: Duration = Duration::from_secs(20);

/// A running helper with piped stdio. Stdout lines arrive on a channel,
/// stderr is collected until exit (CGP reads it only then; it must stay
/// empty). The process is killed when the session is dropped.
pub struct Session {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    next: u32,
    /// Replies read while waiting for another one (replies come in any order).
    early: HashMap<String, String>,
}

impl Session {
    /// Starts `cmd` (the program and its arguments); sends nothing.
    pub fn spawn(mut cmd: Command) -> Session {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Session {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: Some(stderr),
            next: 1,
            early: HashMap::new(),
        }
    }

    /// Starts `program --config <config>` and checks that INTF is answered.
    pub fn start(program: &Path, config: &Path) -> Session {
        let mut cmd = Command::new(program);
        cmd.arg("--config").arg(config);
        Session::start_cmd(cmd)
    }

    /// Starts `cmd` (the helper itself, or a wrapper such as `unshare -n`
    /// that execs it) and checks that INTF is answered.
    pub fn start_cmd(cmd: Command) -> Session {
        let mut s = Session::spawn(cmd);
        assert_eq!(s.ask("INTF 3"), "INTF 3");
        s
    }

    /// Sends `<seq> <request>` with the next sequence number; returns it.
    pub fn send(&mut self, request: &str) -> String {
        let seq = self.next.to_string();
        self.next += 1;
        self.send_line(&format!("{seq} {request}"));
        seq
    }

    /// Sends one raw line, sequence number included.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write request");
        stdin.flush().expect("flush request");
    }

    /// The reply body to `seq`; `*` lines are skipped, other replies kept
    /// for later.
    pub fn reply(&mut self, seq: &str) -> String {
        loop {
            if let Some(body) = self.early.remove(seq) {
                return body;
            }
            let (s, body) = self.read_reply();
            let earlier = self.early.insert(s.clone(), body);
            assert!(earlier.is_none(), "{s} answered twice");
        }
    }

    /// The next reply from the helper, as (seq, body).
    pub fn read_reply(&mut self) -> (String, String) {
        let line = self.line(false);
        assert!(line.len() < 4096, "a line of {} bytes", line.len() + 1);
        let (s, body) = line.split_once(' ').expect("<seq> <reply>");
        (s.to_string(), body.to_string())
    }

    /// The next line; `*` lines are skipped unless `info` is set.
    pub fn line(&mut self, info: bool) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(LINE_WAIT)
                .unwrap_or_else(|_| panic!("no line from the helper within {LINE_WAIT:?}"));
            if info || !line.starts_with('*') {
                return line;
            }
        }
    }

    /// Reads lines until a `*` line starting with `prefix`, which it
    /// returns; the lines before it are dropped.
    pub fn info_starting(&mut self, prefix: &str) -> String {
        loop {
            let line = self.line(true);
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Sends a request and waits for its reply body.
    pub fn ask(&mut self, request: &str) -> String {
        let seq = self.send(request);
        self.reply(&seq)
    }

    /// Asks until the reply is `want` (state that changes in the
    /// background), within a generous bound.
    pub fn ask_until(&mut self, request: &str, want: &str) {
        let start = Instant::now();
        loop {
            let got = self.ask(request);
            if got == want {
                return;
            }
            assert!(start.elapsed() < LINE_WAIT, "still {got:?}, want {want:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `n` requests keeping `in_flight` outstanding; returns the time
    /// taken and the count of replies by body.
    pub fn drive(
        &mut self,
        n: usize,
        in_flight: usize,
        request: impl Fn(usize) -> String,
    ) -> (Duration, BTreeMap<String, usize>) {
        assert!(self.early.is_empty());
        let start = Instant::now();
        let mut bodies = BTreeMap::new();
        let (mut sent, mut got) = (0, 0);
        while got < n {
            while sent - got < in_flight && sent < n {
                self.send(&request(sent));
                sent += 1;
            }
            let (_, body) = self.read_reply();
            *bodies.entry(body).or_insert(0) += 1;
            got += 1;
        }
        (start.elapsed(), bodies)
    }

    /// QUIT: the helper answers OK, exits 0 and wrote nothing on stderr.
    pub fn finish(mut self) {
        assert_eq!(self.ask("QUIT"), "OK");
        let (code, stderr) = self.close();
        assert_eq!(code, Some(0));
        assert!(stderr.is_empty(), "stderr: {stderr}");
    }

    /// Closes stdin (end of input) and waits: the exit code and stderr.
    pub fn close(&mut self) -> (Option<i32>, String) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for the helper");
        (status.code(), self.stderr())
    }

    /// Waits for the helper to exit with stdin still open, as CGP keeps
    /// it, within [`LINE_WAIT`]: the exit code (`None` when a signal ended
    /// it) and stderr. Fails the test if the helper is still running.
    pub fn exit_with_stdin_open(&mut self) -> (Option<i32>, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the helper") {
                return (status.code(), self.stderr());
            }
            assert!(
                start.elapsed() < LINE_WAIT,
                "the helper did not exit within {LINE_WAIT:?} with stdin open"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|t| t.join().expect("stderr thread"))
            .unwrap_or_default()
    }

    /// Sends a signal to the helper (SIGTERM, SIGHUP, SIGSTOP, SIGCONT…).
    pub fn signal(&self, sig: libc::c_int) {
        assert!(crate::process::signal(&self.child, sig), "signal {sig}");
    }

    pub fn kill(mut self) {
        self.child.kill().expect("kill the helper");
        self.child.wait().expect("wait for the helper");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
