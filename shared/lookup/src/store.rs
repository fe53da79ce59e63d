//! The local store (sled) behind caches and helper state.
//!
//! The store is never the only copy of the truth a helper needs to answer:
//! auth caches can be rebuilt from the directory, banner announcements are
//! re-added by administrators, balancer state is re-sent by the cluster. So
//! opening it must never stop a helper from serving: a lock still held by a
//! previous process (CGP's Auto-Restart can start the new one first) is
//! retried briefly, a store that cannot be read is moved aside and replaced,
//! and only when even that fails does the helper run without one.

pub mod remote;

use serde::Deserialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long `open` keeps retrying a store locked by another process.
pub const LOCK_WAIT: Duration = Duration::from_secs(3);

/// sled's page cache for a store: the helpers' state is small, and sled's
/// default (1 GiB) would let the cache grow with the data into resident
/// memory.
pub const CACHE_CAPACITY: u64 = 16 << 20;

/// Where state shared by the members of a cluster lives (`store.backend`):
/// the local sled store (one server), or Redis (a Dynamic Cluster; the
/// local store then only stands in while Redis is down).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Sled,
    Redis,
}

/// The `[store]` table of a helper: where its state lives.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The local sled directory; without it the local state lives in
    /// memory only. What it holds with the Redis back end is the helper's
    /// own affair (its page in docs/ says).
    pub path: Option<PathBuf>,
    /// `redis`: state shared by every member of a cluster.
    pub backend: Backend,
    pub redis: remote::RedisConfig,
}

impl StoreConfig {
    /// Checks the Redis table when it is the back end; `key` is where the
    /// table sits in the file (`store`).
    pub fn validate(&self, key: &str) -> Result<(), remote::ConfigError> {
        match self.backend {
            Backend::Redis => self.redis.validate(&format!("{key}.redis")),
            Backend::Sled => Ok(()),
        }
    }
}

/// What `open` had to do to give a store back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Opened as it was.
    Clean,
    /// The old store could not be read; it was moved to this path and a
    /// fresh one started.
    Replaced { moved_to: PathBuf },
}

pub struct Store {
    db: sled::Db,
    path: PathBuf,
}

impl Store {
    /// Opens the store at `path`, waiting up to `lock_wait` for a lock held by
    /// another process and replacing a store that cannot be read. `Err` means
    /// no store can be had; the caller then runs without one.
    pub fn open(path: &Path, lock_wait: Duration) -> Result<(Store, Opened), String> {
        let until = std::time::Instant::now() + lock_wait;
        let mut delay = Duration::from_millis(25);
        loop {
            match try_open(path) {
                Ok(db) => return Ok((Store::ready(db, path), Opened::Clean)),
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < until => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(400));
                }
                Err(e) if is_lock_error(&e) => {
                    return Err(format!(
                        "store {} is locked by another process",
                        path.display()
                    ));
                }
                Err(_) => {
                    let moved_to = aside_path(path);
                    std::fs::rename(path, &moved_to).map_err(|e| {
                        format!(
                            "store {} is unreadable and cannot be moved aside: {e}",
                            path.display()
                        )
                    })?;
                    let db = try_open(path)
                        .map_err(|e| format!("store {}: cannot create: {e}", path.display()))?;
                    return Ok((Store::ready(db, path), Opened::Replaced { moved_to }));
                }
            }
        }
    }

    /// A store in temporary files, removed when it is dropped: state kept
    /// for the life of the process only. Its `path()` is empty.
    pub fn temporary() -> sled::Result<Store> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(CACHE_CAPACITY)
            .open()?;
        Ok(Store {
            db,
            path: PathBuf::new(),
        })
    }

    fn ready(db: sled::Db, path: &Path) -> Store {
        restrict(path);
        Store {
            db,
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A named keyspace of the store.
    pub fn tree(&self, name: &str) -> sled::Result<sled::Tree> {
        self.db.open_tree(name)
    }

    /// Writes everything to disk; for state that must survive a crash.
    pub fn flush(&self) -> sled::Result<()> {
        self.db.flush().map(|_| ())
    }
}

fn try_open(path: &Path) -> sled::Result<sled::Db> {
    std::fs::create_dir_all(path)?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY)
        .open()
}

fn is_lock_error(e: &sled::Error) -> bool {
    // sled reports a lock held by another process as an I/O error
    // (WouldBlock from flock).
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("lock"))
}

fn aside_path(path: &Path) -> PathBuf {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".broken-{stamp}"));
    path.with_file_name(name)
}

/// State files hold hashes and account names: readable by the owner only.
fn restrict(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let mode = if e.path().is_dir() { 0o700 } else { 0o600 };
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode));
            if e.path().is_dir() {
                restrict(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_persists_and_restricts_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        {
            let (s, how) = Store::open(&path, LOCK_WAIT).unwrap();
            assert_eq!(how, Opened::Clean);
            s.tree("t").unwrap().insert(b"k", b"v").unwrap();
            s.flush().unwrap();
        }
        let (s, _) = Store::open(&path, LOCK_WAIT).unwrap();
        assert_eq!(
            s.tree("t").unwrap().get(b"k").unwrap().as_deref(),
            Some(&b"v"[..])
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        for e in std::fs::read_dir(&path).unwrap().flatten() {
            if e.path().is_file() {
                assert_eq!(
                    e.metadata().unwrap().permissions().mode() & 0o077,
                    0,
                    "{:?}",
                    e.path()
                );
            }
        }
    }

    #[test]
    fn a_corrupt_store_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        {
            let (s, _) = Store::open(&path, LOCK_WAIT).unwrap();
            s.tree("t").unwrap().insert(b"k", b"v").unwrap();
            s.flush().unwrap();
        }
        // Garbage where sled keeps its configuration header.
        std::fs::write(path.join("conf"), b"\xff\xfegarbage").unwrap();
        let (s, how) = Store::open(&path, LOCK_WAIT).unwrap();
        match how {
            Opened::Replaced { moved_to } => assert!(moved_to.exists()),
            Opened::Clean => panic!("a corrupt store opened clean"),
        }
        assert!(s.tree("t").unwrap().get(b"k").unwrap().is_none());
    }
}
