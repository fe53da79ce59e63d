// Usage: `let hx = Haproxy::start(backends)` with the backend sections of the
// configuration (use `{port}`-free text; the fixture adds global, defaults and
// a frontend); point a helper at `hx.socket()` or `hx.tcp_socket()`; read
// `hx.servers("backend")`; `restart()`, `freeze()`/`thaw()` inject faults;
// dropping it stops HAProxy and removes its directory.

//! A real HAProxy (Debian `haproxy` package) in the foreground on loopback
//! high ports, with a UNIX and a TCP admin socket at level admin, run as
//! `nobody` when the tests run as root. Tests read the result of a helper's
//! work back from HAProxy itself with `show servers state`.

use crate::process::{self, free_port, unprivileged, wait_ready};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Generous bound for anything the tests wait for.
pub const LIMIT: Duration = Duration::from_secs(20);

pub struct Haproxy {
    dir: tempfile::TempDir,
    admin_port: u16,
    frontend_port: u16,
    child: Option<Child>,
}

/// One server as `show servers state` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub id: u32,
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub admin: u32,
    pub weight: u32,
}

impl Server {
    /// Forced, inherited, resolution or hostname maintenance.
    pub fn maint(&self) -> bool {
        self.admin & (0x01 | 0x02 | 0x20 | 0x40) != 0
    }

    pub fn drain(&self) -> bool {
        !self.maint() && self.admin & (0x08 | 0x10) != 0
    }

    pub fn ready(&self) -> bool {
        !self.maint() && !self.drain()
    }
}

/// A system program: Debian puts haproxy and ipvsadm in /usr/sbin, which is
/// not on an ordinary user's PATH.
pub fn sbin(name: &str) -> PathBuf {
    let p = Path::new("/usr/sbin").join(name);
    if p.exists() { p } else { PathBuf::from(name) }
}

impl Haproxy {
    /// Starts HAProxy with these backend sections after a fixed global,
    /// defaults and frontend part.
    pub fn start(backends: &str) -> Haproxy {
        let dir = tempfile::tempdir().expect("haproxy dir");
        // HAProxy (as nobody) creates its socket here; the tests, as root,
        // reach it whatever its owner.
        if let Some((uid, gid)) = unprivileged() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown haproxy dir");
        }
        let admin_port = free_port();
        let frontend_port = free_port();
        let config = format!(
            "global\n    stats socket {}/admin.sock mode 600 level admin\n    \
             stats socket ipv4@127.0.0.1:{admin_port} level admin\n    stats timeout 30s\n    nbthread 1\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n\
             frontend fe\n    bind 127.0.0.1:{}\n    default_backend cgp\n{backends}",
            dir.path().display(),
            frontend_port,
        );
        std::fs::write(dir.path().join("haproxy.cfg"), config).expect("haproxy.cfg");
        let mut hx = Haproxy {
            dir,
            admin_port,
            frontend_port,
            child: None,
        };
        hx.start_again();
        hx
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// The port of the frontend, whose default backend is `cgp`.
    pub fn port(&self) -> u16 {
        self.frontend_port
    }

    /// The TCP admin socket as a helper's `socket` setting.
    pub fn tcp_socket(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.admin_port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("haproxy.log")
    }

    /// Starts HAProxy (again) from its configuration file: dynamic servers
    /// and runtime changes are gone, as after a restart in production.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "haproxy is already running");
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::File::create(self.log()).expect("haproxy log");
        // Started in its own directory: running as `nobody`, it could not
        // return to a test working directory that only root may enter.
        let mut cmd = Command::new(sbin("haproxy"));
        cmd.current_dir(self.dir.path())
            .arg("-db")
            .arg("-f")
            .arg(self.dir.path().join("haproxy.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some((uid, gid)) = unprivileged() {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd
            .spawn()
            .expect("spawn haproxy (is the haproxy package installed?)");
        let log = self.log();
        wait_ready(&mut child, "haproxy", &log, || {
            self.try_command("show info").is_ok()
        });
        self.child = Some(child);
    }

    fn try_command(&self, line: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(self.socket())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("{line}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// One runtime API command; its answer.
    pub fn command(&self, line: &str) -> String {
        self.try_command(line)
            .unwrap_or_else(|e| panic!("haproxy command {line:?}: {e}"))
    }

    /// `show servers state <backend>`, parsed by column name.
    pub fn servers(&self, backend: &str) -> Vec<Server> {
        let text = self.command(&format!("show servers state {backend}"));
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        assert_eq!(lines.next(), Some("1"), "server state format: {text}");
        let header: Vec<&str> = lines
            .next()
            .expect("header")
            .trim_start_matches('#')
            .split_whitespace()
            .collect();
        let col = |n: &str| {
            header
                .iter()
                .position(|h| *h == n)
                .unwrap_or_else(|| panic!("no column {n}"))
        };
        lines
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Server {
                    id: f[col("srv_id")].parse().expect("srv_id"),
                    name: f[col("srv_name")].to_string(),
                    addr: f[col("srv_addr")].to_string(),
                    port: f[col("srv_port")].parse().expect("srv_port"),
                    admin: f[col("srv_admin_state")].parse().expect("admin state"),
                    weight: f[col("srv_uweight")].parse().expect("weight"),
                }
            })
            .collect()
    }

    /// Polls `servers(backend)` until `ok` holds (or panics after `limit`
    /// with the last state seen).
    pub fn wait_for(
        &self,
        backend: &str,
        limit: Duration,
        ok: impl Fn(&[Server]) -> bool,
    ) -> Vec<Server> {
        let started = Instant::now();
        loop {
            let s = self.servers(backend);
            if ok(&s) {
                return s;
            }
            assert!(
                started.elapsed() < limit,
                "haproxy state not reached within {limit:?}: {s:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            process::signal(child, sig);
        }
    }

    /// Suspends HAProxy: connections are accepted by the kernel, nothing answers.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            process::terminate(child);
        }
    }

    /// Stops and starts HAProxy under whoever is using it.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}
