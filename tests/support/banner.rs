//! Fixtures for driving `cgp-banner`: a session over its stdio, a
//! configuration using a scripted PBX, and the PBX with its mailboxes. Used by
//! `tests/tests/banner.rs` and the benchmark `examples/bench_banner.rs`.

use crate::bin;
use crate::fake_ami::FakeAmi;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running helper driven one request at a time (or in bursts).
pub struct Session {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    next: u32,
    /// Replies read while waiting for another one (replies come in any order).
    early: std::collections::HashMap<String, String>,
}

impl Session {
    pub fn start(config: &Path) -> Session {
        Session::spawn(
            &bin("cgp-banner"),
            &["--config".as_ref(), config.as_os_str()],
        )
    }

    pub fn spawn(program: &Path, args: &[&std::ffi::OsStr]) -> Session {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cgp-banner");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                assert!(line.len() < 4096, "line over 4096 bytes");
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
        let mut s = Session {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: Some(stderr),
            next: 1,
            early: std::collections::HashMap::new(),
        };
        assert_eq!(s.ask("INTF 3"), "INTF 3");
        s
    }

    pub fn send(&mut self, request: &str) -> String {
        let seq = self.next.to_string();
        self.next += 1;
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{seq} {request}").expect("write request");
        stdin.flush().unwrap();
        seq
    }

    /// The reply body to `seq`; `*` lines are skipped.
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

    /// The next reply line from the helper, as (seq, body).
    pub fn read_reply(&mut self) -> (String, String) {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .expect("a reply within 20 s");
            if line.starts_with('*') {
                continue;
            }
            let (s, body) = line.split_once(' ').expect("<seq> <reply>");
            return (s.to_string(), body.to_string());
        }
    }

    /// Sends `n` requests keeping `in_flight` outstanding; returns the time
    /// taken and the replies by body.
    pub fn drive(
        &mut self,
        n: usize,
        in_flight: usize,
        request: impl Fn(usize) -> String,
    ) -> (Duration, std::collections::BTreeMap<String, usize>) {
        assert!(self.early.is_empty());
        let start = Instant::now();
        let mut bodies = std::collections::BTreeMap::new();
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
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "still {got:?}, want {want:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// QUIT, then the exit status and stderr checked.
    pub fn finish(mut self) {
        assert_eq!(self.ask("QUIT"), "OK");
        drop(self.stdin.take());
        let status = self.child.wait().expect("exit");
        assert!(status.success(), "{status:?}");
        let stderr = self.stderr.take().unwrap().join().unwrap();
        assert!(stderr.is_empty(), "stderr: {stderr}");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const USERS: &str = r#"
[directory.users."alice@example.com"]
real_name = "Alice Example"
groups = ["staff"]
mailbox = "1001@default"
extension = "1001"
pbx = "pbx1"

[directory.users."bob@example.com"]
real_name = "Bob"
mailbox = "1002@default"
extension = "1002"
"#;

pub const RULES: &str = r#"
[[banner]]
type = "Phone"
template = "{real_name}: {vm_new} new, {vm_old} old, phone {ext_state}"
default = "PBX unavailable"

[[banner]]
type = "Voicemail"
template = "{vm_new} new"
default = "PBX unavailable"

[[banner]]
type = "Notices"
format = "html"
template = "{announcements}"

[[banner]]
type = "Long"
template = "{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}"

[[banner]]
type = "LongHtml"
format = "html"
template = "{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}"
default = "<i>short</i>"
"#;

/// Writes a configuration for a helper using the PBX on `port`.
pub fn config(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[runtime]
deadline = "2s"
stats_interval = "0s"

[log]
journald = false

[store]
path = "{store}"
spool_poll = "100ms"

[ami]
action_timeout = "1500ms"
connect_timeout = "1s"
ping_interval = "1s"
reconnect_min = "50ms"
reconnect_max = "200ms"

[[ami.servers]]
name = "pbx1"
host = "127.0.0.1"
port = {port}
username = "cgp"
secret = "s3cret"
{extra}
{USERS}
{RULES}
"#,
        store = dir.join("state").display()
    );
    let path = dir.join("banner.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn pbx() -> FakeAmi {
    let fake = FakeAmi::start("cgp", "s3cret", true);
    fake.set_mailbox("1001@default", 2, 5);
    fake.set_mailbox("1002@default", 0, 1);
    fake.set_extension("1001", "default", "PJSIP/1001", 0);
    fake.set_extension("1002", "default", "PJSIP/1002", 2);
    fake
}

pub const ALICE_IDLE: &str = r#"OK "Alice Example: 2 new, 5 old, phone idle""#;
