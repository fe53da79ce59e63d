// Usage: `let redis = Redis::start();` then point helpers at `redis.url()`;
// `stop()`/`start_again()`, `freeze()`/`thaw()` inject faults; dropping it
// stops redis-server and removes its directory.

//! A real redis-server (Debian `redis-server` package) on a free loopback
//! port, without persistence, run as `nobody` when the tests run as root.

use crate::process::{self, chown_tree, free_port, unprivileged, wait_ready};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Redis {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("cgp-redis-")
            .tempdir()
            .expect("temp dir");
        if let Some((uid, gid)) = unprivileged() {
            chown_tree(dir.path(), uid, gid);
        }
        let mut redis = Redis {
            dir,
            port: free_port(),
            child: None,
        };
        redis.start_again();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.log")
    }

    /// (Re)starts redis-server on the same port, empty.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let log = std::fs::File::create(self.log()).expect("redis log");
        if let Some((uid, gid)) = unprivileged() {
            std::os::unix::fs::chown(self.log(), Some(uid), Some(gid)).expect("chown log");
        }
        let mut cmd = Command::new("redis-server");
        cmd.current_dir(self.dir.path())
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        if let Some((uid, gid)) = unprivileged() {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().expect("spawn redis-server");
        let port = self.port;
        wait_ready(&mut child, "redis-server", &self.log(), || {
            Redis::command_at(port, "PING").is_some_and(|r| r == "+PONG")
        });
        self.child = Some(child);
    }

    /// Sends one inline command; the answer's first line, or the text of a
    /// bulk string (`INFO`).
    fn command_at(port: u16, line: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{line}\r\n").as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        let mut answer = String::new();
        r.read_line(&mut answer).ok()?;
        let answer = answer.trim_end().to_string();
        match answer
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(len) => {
                let mut body = vec![0; len];
                r.read_exact(&mut body).ok()?;
                String::from_utf8(body).ok()
            }
            None => Some(answer),
        }
    }

    /// An inline command to the running server (e.g. `KEYS *`).
    pub fn command(&self, line: &str) -> String {
        Redis::command_at(self.port, line).expect("redis answers")
    }

    /// Stops redis-server (the port stays reserved for `start_again`).
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            process::terminate(child);
        }
    }

    /// Suspends redis-server with SIGSTOP (see `process::freeze`).
    pub fn freeze(&self) {
        if let Some(child) = &self.child {
            process::freeze(child, "redis-server");
        }
    }

    pub fn thaw(&self) {
        if let Some(child) = &self.child {
            process::signal(child, libc::SIGCONT);
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
