//! Administrators' announcements: kept in the local store (sled), changed
//! through a spool directory so that `cgp-banner announce …` works while the
//! helper runs; or, with `store.backend = "redis"`, in one Redis hash shared
//! by every member of a cluster, which the command writes directly and each
//! helper reads every `store.refresh`.
//!
//! sled locks its store for one process, and the running helper holds it. So
//! the subcommand never writes the store of a running helper: it drops one
//! small file per change (`add` or `remove`) into the spool, written under a
//! temporary name and renamed, so a reader never sees half of it. Whoever
//! holds the store imports the spool: the helper every `spool_poll`, or the
//! subcommand itself when no helper runs (it then takes the lock for a
//! moment). After each import the holder writes `snapshot.json` next to the
//! spool files, which is what `announce list` shows while a helper runs.

use cgp_lookup::store::remote::{RedisConfig, RedisStore};
use cgp_lookup::store::{LOCK_WAIT, Opened, Store};
use cgp_runtime::sync;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TREE: &str = "announcements";
const SNAPSHOT: &str = "snapshot.json";
const OP_PREFIX: &str = "op-";

/// Who sees an announcement: `all`, `domain:<domain>` or `group:<group>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Target {
    All,
    Domain(String),
    Group(String),
}

impl TryFrom<String> for Target {
    type Error = String;
    fn try_from(s: String) -> Result<Target, String> {
        match s.split_once(':') {
            None if s == "all" => Ok(Target::All),
            Some(("domain", d)) if !d.is_empty() => Ok(Target::Domain(d.to_lowercase())),
            Some(("group", g)) if !g.is_empty() => Ok(Target::Group(g.to_string())),
            _ => Err(format!(
                "target {s:?}: use all, domain:<domain> or group:<group>"
            )),
        }
    }
}

impl From<Target> for String {
    fn from(t: Target) -> String {
        match t {
            Target::All => "all".into(),
            Target::Domain(d) => format!("domain:{d}"),
            Target::Group(g) => format!("group:{g}"),
        }
    }
}

/// The last second an announcement's window can reach: the end of year 9999,
/// the latest time RFC 3339 (and so `announce list`) can write.
pub const LATEST: u64 = 253_402_300_799;

/// One announcement. Times are Unix seconds; the window is `[from, until)`,
/// with `from < until <= LATEST`: every way in (the command line, the spool,
/// the store, the snapshot) goes through [`Announcement::check`] or its
/// deserializer, so a window nobody can display never gets in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Record")]
pub struct Announcement {
    pub id: String,
    pub text: String,
    pub target: Target,
    pub from: u64,
    pub until: u64,
    /// Banner types it shows in; empty: all.
    #[serde(default)]
    pub types: Vec<String>,
}

/// An announcement as written in a file, before its window is checked.
#[derive(Deserialize)]
struct Record {
    id: String,
    text: String,
    target: Target,
    from: u64,
    until: u64,
    #[serde(default)]
    types: Vec<String>,
}

impl TryFrom<Record> for Announcement {
    type Error = WindowError;
    fn try_from(r: Record) -> Result<Announcement, WindowError> {
        Announcement::check(r.from, r.until)?;
        Ok(Announcement {
            id: r.id,
            text: r.text,
            target: r.target,
            from: r.from,
            until: r.until,
            types: r.types,
        })
    }
}

/// Why a window is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("the window ends before it starts")]
    Empty,
    #[error("the window ends after 9999-12-31T23:59:59Z, the latest time an announcement can have")]
    TooLate,
}

impl Announcement {
    /// Checks a window `[from, until)`.
    pub fn check(from: u64, until: u64) -> Result<(), WindowError> {
        if until > LATEST {
            Err(WindowError::TooLate)
        } else if until <= from {
            Err(WindowError::Empty)
        } else {
            Ok(())
        }
    }

    /// Whether it shows now in a banner of `kind` for a user of `domain`
    /// who is in the groups `in_group` says.
    pub fn applies(
        &self,
        now: u64,
        kind: &str,
        domain: Option<&str>,
        in_group: impl Fn(&str) -> bool,
    ) -> bool {
        let in_window = self.from <= now && now < self.until;
        let type_ok = self.types.is_empty() || self.types.iter().any(|t| t == kind);
        let target_ok = match &self.target {
            Target::All => true,
            Target::Domain(d) => domain == Some(d.as_str()),
            Target::Group(g) => in_group(g),
        };
        in_window && type_ok && target_ok
    }
}

/// One change waiting in the spool.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    Add(Announcement),
    Remove { id: String },
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh identifier: time-ordered, unique across processes. Spool files
/// are applied in the order of their names, so two changes made by one
/// process within one clock tick are kept apart by a counter, not by the
/// random part (which once put a `remove` before the `add` it undoes).
pub fn new_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut salt = [0u8; 2];
    // Without randomness the pid still separates concurrent writers.
    let _ = getrandom::fill(&mut salt);
    format!(
        "{nanos:016x}{:04x}{count:04x}{:04x}",
        std::process::id() & 0xffff,
        u16::from_le_bytes(salt)
    )
}

/// The spool directory and the store it feeds.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn new(dir: &Path) -> Spool {
        Spool {
            dir: dir.to_path_buf(),
        }
    }

    fn ensure_dir(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
    }

    /// Writes `bytes` to `name` in the spool, atomically and mode 0600.
    fn write_atomic(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.ensure_dir()?;
        let tmp = self.dir.join(format!(".tmp-{name}"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(name))
    }

    /// Queues a change.
    pub fn push(&self, op: &Op) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(op).map_err(std::io::Error::other)?;
        self.write_atomic(&format!("{OP_PREFIX}{}.json", new_id()), &bytes)
    }

    /// The queued changes in the order they were made, with their files.
    pub fn pending(&self) -> Vec<(PathBuf, Op)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(OP_PREFIX) && n.ends_with(".json"))
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|p| {
                let op = std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                if op.is_none() {
                    // Not JSON, or an announcement whose window is refused
                    // (see `Announcement::check`). Renamed out of the way, so it is reported once and
                    // kept for the administrator to look at.
                    let aside = p.with_file_name(format!(
                        "bad-{}",
                        p.file_name().and_then(|n| n.to_str()).unwrap_or_default()
                    ));
                    tracing::warn!(file = %aside.display(), "unreadable or invalid spool file set aside");
                    let _ = std::fs::rename(&p, &aside);
                }
                op.map(|op| (p, op))
            })
            .collect()
    }

    /// Applies the queued changes to the store, removes their files and
    /// writes the snapshot. Returns every announcement in the store.
    pub fn import(&self, store: &Store) -> Result<Vec<Announcement>, String> {
        let tree = store.tree(TREE).map_err(|e| e.to_string())?;
        let pending = self.pending();
        for (_, op) in &pending {
            let done = match op {
                Op::Add(a) => serde_json::to_vec(a)
                    .map_err(|e| e.to_string())
                    .and_then(|v| tree.insert(a.id.as_bytes(), v).map_err(|e| e.to_string())),
                Op::Remove { id } => tree.remove(id.as_bytes()).map_err(|e| e.to_string()),
            };
            done.map(|_| ())?;
        }
        if !pending.is_empty() {
            store.flush().map_err(|e| e.to_string())?;
            for (path, _) in &pending {
                let _ = std::fs::remove_file(path);
            }
        }
        let all: Vec<Announcement> = tree
            .iter()
            .values()
            .flatten()
            .filter_map(|v| serde_json::from_slice(&v).ok())
            .collect();
        if !pending.is_empty() || !self.dir.join(SNAPSHOT).exists() {
            let bytes = serde_json::to_vec_pretty(&all).map_err(|e| e.to_string())?;
            self.write_atomic(SNAPSHOT, &bytes)
                .map_err(|e| format!("cannot write the snapshot: {e}"))?;
        }
        Ok(all)
    }

    /// The last snapshot a store holder wrote.
    pub fn snapshot(&self) -> Vec<Announcement> {
        std::fs::read(self.dir.join(SNAPSHOT))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

/// Where the running helper's announcements come from.
enum Source {
    /// The local store, fed by the spool; `None` until it can be opened.
    Local {
        path: PathBuf,
        store: Mutex<Option<Store>>,
        spool: Spool,
    },
    /// One Redis hash shared by the members of a cluster, read whole at
    /// each refresh.
    Shared { redis: RedisStore, key: String },
}

/// The announcements the running helper shows, kept in memory for
/// requests: from the local store, read at start and after each spool
/// import; or from Redis, read at start and every `store.refresh`.
///
/// Like every user of the store (see `cgp_lookup::store`), the helper serves
/// without it when it cannot be opened, typically because the process CGP
/// is replacing still holds its lock; the poller keeps trying, so stored
/// announcements come back as soon as the lock is free. Redis down, slow or
/// frozen costs requests nothing: they read the last copy, and only the
/// poller waits for Redis (at most `store.redis.timeout`).
pub struct Announcements {
    source: Source,
    current: RwLock<Arc<Vec<Announcement>>>,
    /// `*` lines about the shared store's health waiting for the next
    /// request to send them: the poller has no way to the CGP log of its
    /// own. `pending` spares requests the lock while there are none.
    notices: Mutex<Vec<String>>,
    pending: AtomicBool,
}

/// At most this many health lines wait for a request (a flapping Redis
/// while no request comes keeps the latest).
const MAX_NOTICES: usize = 4;

impl Announcements {
    fn new(source: Source) -> Announcements {
        Announcements {
            source,
            current: RwLock::new(Arc::new(Vec::new())),
            notices: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
        }
    }

    /// Opens the local store (waiting up to `LOCK_WAIT` for a lock),
    /// imports the spool and starts the poller.
    pub async fn start(path: PathBuf, spool_dir: PathBuf, every: Duration) -> Arc<Announcements> {
        let a = Arc::new(Announcements::new(Source::Local {
            path,
            store: Mutex::new(None),
            spool: Spool::new(&spool_dir),
        }));
        let first = a.clone();
        match tokio::task::spawn_blocking(move || first.refresh(LOCK_WAIT)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "announcement store unavailable; retrying in the background")
            }
            Err(e) => tracing::error!(error = %e, "announcement store task failed"),
        }
        tokio::spawn(poll(Arc::downgrade(&a), every));
        a
    }

    /// Reads the announcements from Redis once (within its timeout) and
    /// starts the poller. `Err` only for what no retry mends (an
    /// unreadable password file).
    pub async fn start_shared(
        cfg: &RedisConfig,
        refresh: Duration,
    ) -> Result<Arc<Announcements>, String> {
        let redis = RedisStore::new(cfg).map_err(|e| e.to_string())?;
        let key = shared_key(&redis);
        let a = Arc::new(Announcements::new(Source::Shared { redis, key }));
        a.fetch().await;
        tokio::spawn(poll(Arc::downgrade(&a), refresh));
        Ok(a)
    }

    pub fn current(&self) -> Arc<Vec<Announcement>> {
        sync::read(&self.current).clone()
    }

    /// The `*` lines waiting to be sent, emptied.
    pub fn take_notices(&self) -> Vec<String> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *sync::lock(&self.notices))
    }

    fn notify(&self, line: &str) {
        let mut notices = sync::lock(&self.notices);
        if notices.len() == MAX_NOTICES {
            notices.remove(0);
        }
        notices.push(line.to_string());
        self.pending.store(true, Ordering::Release);
    }

    /// Opens the local store if it is not open yet, then imports the spool.
    fn refresh(&self, lock_wait: Duration) -> Result<(), String> {
        let Source::Local { path, store, spool } = &self.source else {
            return Ok(());
        };
        let mut store = sync::lock(store);
        if store.is_none() {
            let (opened, how) = Store::open(path, lock_wait)?;
            if let Opened::Replaced { moved_to } = how {
                tracing::error!(moved_to = %moved_to.display(), "unreadable store replaced; announcements must be added again");
            }
            tracing::info!(path = %path.display(), "announcement store open");
            *store = Some(opened);
        }
        let Some(open) = store.as_ref() else {
            return Ok(());
        };
        let all = spool.import(open)?;
        *sync::write(&self.current) = Arc::new(all);
        Ok(())
    }

    /// Replaces the copy with Redis's, or keeps it when Redis cannot be
    /// had; a lost or regained Redis is logged once.
    async fn fetch(&self) {
        let Source::Shared { redis, key } = &self.source else {
            return;
        };
        let fields = redis.hash_all(key).await.reported(
            &|line| self.notify(line),
            "cgp-banner",
            "showing the last announcements",
            "announcements shared again",
        );
        if let Some(fields) = fields {
            *sync::write(&self.current) = Arc::new(decode(fields));
        }
    }
}

/// The Redis hash of announcements: one field per id, its JSON as value.
pub fn shared_key(redis: &RedisStore) -> String {
    redis.key(&["banner", "announcements"])
}

/// The announcements of the Redis hash, in the order of their ids (the
/// order they were added, as in the local store); a value that is not a
/// valid announcement is left out.
pub fn decode(fields: HashMap<String, Vec<u8>>) -> Vec<Announcement> {
    let mut all: Vec<Announcement> = fields
        .into_iter()
        .filter_map(|(id, v)| match serde_json::from_slice(&v) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::debug!(id, error = %e, "invalid announcement in Redis left out");
                None
            }
        })
        .collect();
    all.sort_by(|a: &Announcement, b| a.id.cmp(&b.id));
    all
}

/// Refreshes the announcements every `every` for as long as they live.
async fn poll(a: Weak<Announcements>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(a) = a.upgrade() else { return };
        if matches!(a.source, Source::Shared { .. }) {
            a.fetch().await;
            continue;
        }
        // One attempt per round: the lock of a store held elsewhere is not
        // waited for here.
        match tokio::task::spawn_blocking(move || a.refresh(Duration::ZERO)).await {
            Ok(Err(e)) => tracing::debug!(error = %e, "announcement spool not imported"),
            Err(e) => tracing::warn!(error = %e, "announcement spool task failed"),
            Ok(Ok(())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(id: &str, target: Target) -> Announcement {
        Announcement {
            id: id.into(),
            text: format!("text {id}"),
            target,
            from: 100,
            until: 200,
            types: vec![],
        }
    }

    #[test]
    fn targets_round_trip_and_bad_ones_are_refused() {
        for s in ["all", "domain:example.com", "group:staff"] {
            let t = Target::try_from(s.to_string()).unwrap();
            assert_eq!(String::from(t), s);
        }
        assert!(Target::try_from("domain:".to_string()).is_err());
        assert!(Target::try_from("everyone".to_string()).is_err());
    }

    #[test]
    fn window_type_and_target_decide() {
        let none = |_: &str| false;
        let mut a = ann("1", Target::Domain("example.com".into()));
        assert!(a.applies(150, "WebUserTop", Some("example.com"), none));
        assert!(!a.applies(99, "WebUserTop", Some("example.com"), none));
        assert!(!a.applies(200, "WebUserTop", Some("example.com"), none));
        assert!(!a.applies(150, "WebUserTop", Some("other.test"), none));
        assert!(!a.applies(150, "WebUserTop", None, none));
        a.types = vec!["XIMSSLogin".into()];
        assert!(!a.applies(150, "WebUserTop", Some("example.com"), none));
        let g = ann("2", Target::Group("staff".into()));
        assert!(g.applies(150, "x", None, |g| g == "staff"));
        assert!(!g.applies(150, "x", None, |g| g == "sales"));
    }

    #[test]
    fn spool_changes_reach_the_store_in_order_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("state"), Duration::from_secs(1)).unwrap();
        let spool = Spool::new(&dir.path().join("spool"));
        spool.push(&Op::Add(ann("a", Target::All))).unwrap();
        spool.push(&Op::Add(ann("b", Target::All))).unwrap();
        spool.push(&Op::Remove { id: "a".into() }).unwrap();
        assert_eq!(spool.pending().len(), 3);
        let all = spool.import(&store).unwrap();
        assert_eq!(all, vec![ann("b", Target::All)]);
        assert!(spool.pending().is_empty());
        assert_eq!(spool.snapshot(), all);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("spool")), 0o700);
        assert_eq!(mode(&dir.path().join("spool").join(SNAPSHOT)), 0o600);
        // Importing again changes nothing: the same state, idempotently.
        assert_eq!(spool.import(&store).unwrap(), all);
        // A broken file is set aside, not retried for ever.
        let broken = dir.path().join("spool").join("op-0-broken.json");
        std::fs::write(&broken, b"{not json").unwrap();
        assert_eq!(spool.import(&store).unwrap(), all);
        assert!(!broken.exists());
        assert!(
            dir.path()
                .join("spool")
                .join("bad-op-0-broken.json")
                .exists()
        );
    }

    #[test]
    fn redis_values_decode_in_id_order_and_bad_ones_are_left_out() {
        let json = |a: &Announcement| serde_json::to_vec(a).unwrap();
        let (a, b) = (ann("a", Target::All), ann("b", Target::All));
        let mut window = ann("w", Target::All);
        window.until = window.from;
        let fields = HashMap::from([
            ("b".to_string(), json(&b)),
            ("a".to_string(), json(&a)),
            ("x".to_string(), b"{not json".to_vec()),
            // A window nobody can show is refused here as everywhere.
            ("w".to_string(), json(&window)),
        ]);
        assert_eq!(decode(fields), vec![a, b]);
    }

    #[test]
    fn health_lines_wait_for_a_request_and_stay_few() {
        let a = Announcements::new(Source::Local {
            path: PathBuf::new(),
            store: Mutex::new(None),
            spool: Spool::new(Path::new("/nonexistent")),
        });
        assert!(a.take_notices().is_empty());
        for i in 0..10 {
            a.notify(&format!("line {i}"));
        }
        assert_eq!(a.take_notices(), ["line 6", "line 7", "line 8", "line 9"]);
        assert!(a.take_notices().is_empty());
    }
}
