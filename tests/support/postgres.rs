// Usage: `let pg = Postgres::start(SQL);` then point a helper at
// `pg.host()` (database `mail`, role `cgp`, password `cgppw`); `psql(sql)`
// changes data under it; `stop()`/`start_again()`, `freeze()`/`thaw()` and
// `hold_lock(table)` inject faults; dropping it stops the server and removes
// its data directory.

//! A real PostgreSQL server (Debian `postgresql` package) in a throwaway
//! data directory, on a free loopback port with its socket in that
//! directory, run as `nobody` when the tests run as root.

use crate::process::{chown_tree, free_port, unprivileged, wait_ready};
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub const DATABASE: &str = "mail";
pub const ROLE: &str = "cgp";
pub const PASSWORD: &str = "cgppw";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Started with TLS (a certificate signed by `ca_file()`).
    tls: bool,
    child: Option<Child>,
}

/// The newest server installed (`/usr/lib/postgresql/<version>/bin`).
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("the postgresql package is installed (tests/run.sh installs it)")
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("a PostgreSQL server in /usr/lib/postgresql")
        .1
}

/// A command run as the unprivileged user, in `dir` (it could not return
/// to a working directory that only root may enter).
fn command(program: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir);
    if let Some((uid, gid)) = unprivileged() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The server's processes: the postmaster and its children (each backend
/// is a session leader of its own, so no process group holds them all),
/// with their states.
fn processes(postmaster: u32) -> Vec<(libc::pid_t, char)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| {
            let pid: libc::pid_t = p.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(p.path().join("stat")).ok()?;
            // After the parenthesised name: state, ppid.
            let (_, rest) = stat.rsplit_once(") ")?;
            let mut fields = rest.split(' ');
            let state = fields.next()?.chars().next()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            (pid as u32 == postmaster || ppid == postmaster).then_some((pid, state))
        })
        .collect()
}

/// Sends `sig` to a process of the server.
fn kill(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our own
    // unreaped child or one of its children.
    unsafe { libc::kill(pid, sig) };
}

impl Postgres {
    /// A fresh cluster with database `mail`, role `cgp` (password `cgppw`,
    /// scram over TCP), loaded with `sql` as the superuser, running.
    pub fn start(sql: &str) -> Postgres {
        Postgres::start_with(sql, false)
    }

    /// The same, with TLS offered: a certificate for 127.0.0.1 and
    /// localhost signed by `ca_file()`.
    pub fn start_tls(sql: &str) -> Postgres {
        Postgres::start_with(sql, true)
    }

    fn start_with(sql: &str, tls: bool) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("cgp-postgres-")
            .tempdir()
            .expect("temp dir");
        if tls {
            crate::slapd::make_certificates(dir.path());
            // The server refuses a key others may read.
            std::fs::set_permissions(
                dir.path().join("server.key"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("chmod server.key");
        }
        if let Some((uid, gid)) = unprivileged() {
            chown_tree(dir.path(), uid, gid);
        }
        let bin = bin_dir();
        run_ok(
            command(&bin.join("initdb"), dir.path())
                .arg("-D")
                .arg(dir.path().join("data"))
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--no-sync",
                    "--encoding=UTF8",
                    "--locale=C",
                ]),
            "initdb",
        );
        let mut pg = Postgres {
            dir,
            bin,
            port: free_port(),
            tls,
            child: None,
        };
        pg.start_again();
        pg.psql_as(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"),
        );
        // CREATE DATABASE cannot share a transaction with other commands.
        pg.psql_as("postgres", &format!("CREATE DATABASE {DATABASE}"));
        pg.psql(sql);
        pg
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`, as `[directory.sql] hosts` takes it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The CA that signed the server certificate (TLS only).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's own log.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Runs `sql` in database `mail` as the superuser; its output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_as(DATABASE, sql)
    }

    fn psql_cmd(&self, database: &str) -> Command {
        let mut cmd = command(&self.bin.join("psql"), self.dir.path());
        cmd.arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d"])
            .arg(database)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
        cmd
    }

    /// The SQL goes on stdin: a large load does not fit in an argument.
    fn psql_as(&self, database: &str, sql: &str) -> String {
        let mut child = self
            .psql_cmd(database)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        let mut stdin = child.stdin.take().expect("stdin");
        let sql = sql.to_string();
        let writer = std::thread::spawn(move || stdin.write_all(sql.as_bytes()));
        let out = child.wait_with_output().expect("psql output");
        writer.join().expect("writer").expect("write to psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A session that takes an exclusive lock on `table` and keeps it (and
    /// with it every query on the table waiting) until dropped.
    pub fn hold_lock(&self, table: &str) -> LockHolder {
        let mut child = self
            .psql_cmd(DATABASE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn psql");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(
            stdin,
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT 'locked';"
        )
        .expect("write to psql");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
            &mut line,
        )
        .expect("read from psql");
        assert_eq!(line.trim(), "locked");
        LockHolder {
            child,
            stdin: Some(stdin),
        }
    }

    /// (Re)starts the server on the same port with the same data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "postgres is already running");
        let log = std::fs::File::create(self.log()).expect("postgres log");
        if let Some((uid, gid)) = unprivileged() {
            std::os::unix::fs::chown(self.log(), Some(uid), Some(gid)).expect("chown log");
        }
        let mut cmd = command(&self.bin.join("postgres"), self.dir.path());
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "max_connections=200"]);
        if self.tls {
            let d = self.dir.path().display();
            cmd.args(["-c", "ssl=on"])
                .args(["-c", &format!("ssl_cert_file={d}/server.pem")])
                .args(["-c", &format!("ssl_key_file={d}/server.key")]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let mut child = cmd.spawn().expect("spawn postgres");
        let port = self.port;
        let socket = self.dir.path().join(format!(".s.PGSQL.{port}"));
        wait_ready(&mut child, "postgres", &self.log(), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && socket.exists()
                && self
                    .psql_cmd("postgres")
                    .arg("-c")
                    .arg("SELECT 1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        });
        self.child = Some(child);
    }

    /// Sends `sig` to the postmaster first (so that it forks no more),
    /// then to every child.
    fn signal_all(&self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            for (pid, _) in processes(child.id()) {
                kill(pid, sig);
            }
        }
    }

    /// Fast shutdown (clients are disconnected); the port stays reserved.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        for (p, _) in processes(pid) {
            kill(p, libc::SIGCONT);
        }
        kill(pid as libc::pid_t, libc::SIGINT);
        let started = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                for (p, _) in processes(pid) {
                    kill(p, libc::SIGKILL);
                }
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Suspends the server and every backend with SIGSTOP: connections stay
    /// open, nothing answers. Returns once they have all stopped.
    pub fn freeze(&self) {
        let Some(child) = &self.child else { return };
        kill(child.id() as libc::pid_t, libc::SIGSTOP);
        self.signal_all(libc::SIGSTOP);
        let started = Instant::now();
        while !processes(child.id()).iter().all(|(_, state)| *state == 'T') {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "postgres did not stop"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resumes a frozen server.
    pub fn thaw(&self) {
        self.signal_all(libc::SIGCONT);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A session holding a table lock; dropping it ends the session.
pub struct LockHolder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
