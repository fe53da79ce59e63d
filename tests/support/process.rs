//! What every peer fixture (slapd, HAProxy) needs from the system: a free
//! port, the unprivileged user to run as when the tests run as root, and a
//! wait for the peer to come up that fails fast when it dies instead.

use std::net::TcpListener;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// uid and gid of `nobody` when running as root: peers started by the tests
/// never run as root.
pub fn unprivileged() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions; getpwnam gets a NUL-terminated
    // name and its result is only read before the next call.
    unsafe {
        if libc::getuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"nobody".as_ptr());
        assert!(!pw.is_null(), "no user nobody");
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// Gives a fixture directory to the unprivileged user.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown fixture");
    if path.is_dir() {
        for e in std::fs::read_dir(path).expect("read fixture dir") {
            chown_tree(&e.expect("dir entry").path(), uid, gid);
        }
    }
}

/// Waits up to 20 s for `ready`; panics with the peer's log if it exits
/// first or does not come up in time.
pub fn wait_ready(child: &mut Child, what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what} not up within 20s: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` to a child not yet reaped; false when the kernel refused.
pub fn signal(child: &Child, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return false;
    };
    // SAFETY: kill has no memory-safety preconditions; the pid is our own
    // child, not yet reaped, so it cannot name another process.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Stops a peer the way an administrator would: wakes it if frozen, asks it
/// to stop, and kills it only if it has not exited within 10 s.
pub fn terminate(mut child: Child) {
    signal(&child, libc::SIGCONT);
    signal(&child, libc::SIGTERM);
    let started = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Suspends a peer with SIGSTOP: connections stay open, nothing answers.
/// Returns once every thread has stopped: a thread still running could
/// otherwise answer one more request.
pub fn freeze(child: &Child, what: &str) {
    signal(child, libc::SIGSTOP);
    let tasks = std::path::PathBuf::from(format!("/proc/{}/task", child.id()));
    let started = Instant::now();
    let all_stopped = || {
        std::fs::read_dir(&tasks).is_ok_and(|dir| {
            dir.flatten().all(|t| {
                // The state follows the parenthesised command name.
                std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('T'))
                })
            })
        })
    };
    while !all_stopped() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} did not stop"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
