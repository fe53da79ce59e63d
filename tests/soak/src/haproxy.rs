//! A real HAProxy (Debian `haproxy` package) for the soak run: a TCP
//! frontend on a free loopback port, one backend with template server slots
//! for cgp-balancer to fill, and an admin socket. Runs in the foreground as
//! `nobody` when the soak runs as root; freeze, restart and drop stop it.

use cgp_tests::process::{free_port, unprivileged};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BACKEND: &str = "cluster";

pub struct Haproxy {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Haproxy {
    /// Writes the configuration into `dir` and starts HAProxy.
    pub fn start(dir: &Path) -> std::io::Result<Haproxy> {
        std::fs::create_dir_all(dir)?;
        let port = free_port();
        let d = dir.display();
        std::fs::write(
            dir.join("haproxy.cfg"),
            format!(
                "global\n\
                 \tstats socket {d}/admin.sock mode 666 level admin\n\
                 \tstats timeout 10s\n\
                 defaults\n\
                 \tmode tcp\n\
                 \ttimeout connect 1s\n\
                 \ttimeout client 5s\n\
                 \ttimeout server 5s\n\
                 frontend cgp\n\
                 \tbind 127.0.0.1:{port}\n\
                 \tdefault_backend {BACKEND}\n\
                 backend {BACKEND}\n\
                 \tserver-template cgp 1-8 127.0.0.1:1 disabled\n"
            ),
        )?;
        if let Some((uid, gid)) = unprivileged() {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
        let mut h = Haproxy {
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        h.start_again()?;
        Ok(h)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// (Re)starts HAProxy with the same configuration; it comes back with
    /// its template slots empty, as after a real reload.
    pub fn start_again(&mut self) -> std::io::Result<()> {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("haproxy.log"))?;
        // Started in its own directory: running as `nobody`, it could not
        // return to a test working directory that only root may enter.
        let mut cmd = Command::new("haproxy");
        cmd.current_dir(&self.dir)
            .arg("-db")
            .arg("-f")
            .arg(self.dir.join("haproxy.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some((uid, gid)) = unprivileged() {
            cmd.uid(uid).gid(gid);
        }
        self.child = Some(cmd.spawn()?);
        let started = Instant::now();
        while !self.socket().exists() {
            if started.elapsed() > Duration::from_secs(20) {
                return Err(std::io::Error::other(
                    "haproxy admin socket did not appear within 20s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn signal(&self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            cgp_tests::process::signal(child, sig);
        }
    }

    pub fn stop(&mut self) {
        self.signal(libc::SIGCONT);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}
