//! The shared store: Redis (or Valkey, KeyDB), for state every member of a
//! CGP Dynamic Cluster must see alike.
//!
//! It is never waited for beyond its operation timeout: a failed or slow
//! operation marks the store down, the caller falls back to its local store,
//! and only one request at a time probes again, once per `retry_after`, so
//! that a frozen server costs one timeout per probe, not one per request.
//! Several URLs are tried in turn: each failure moves the next probe to the
//! next URL.

use cgp_runtime::config::{Secret, SecretFile};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, Script, TlsCertificates};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod hash;

/// The shared store's configuration (`[store.redis]`).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://` (TLS); several for failover,
    /// tried in order. One with a password in it makes the file a
    /// secret-holding one.
    #[serde(deserialize_with = "de_urls")]
    pub urls: Vec<String>,
    /// Prefix of every key, so that several sites or suites share a server.
    pub namespace: String,
    /// The ACL user (Redis 6+); none: the `default` user.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A file holding the password (first line), instead of `password`.
    pub password_file: Option<SecretFile>,
    /// PEM file of the CA that signed the server's certificate (`rediss://`);
    /// none: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Longest wait for one operation (connecting included) before the
    /// request goes on with the local store.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// While the store is down, how often one request tries it again.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

fn de_urls<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let urls = Vec::<toml::Spanned<String>>::deserialize(d)?;
    Ok(urls
        .into_iter()
        .map(|u| {
            let with_password = url::Url::parse(u.get_ref()).is_ok_and(|p| p.password().is_some());
            if with_password {
                cgp_runtime::config::holds_secret(u.span());
            }
            u.into_inner()
        })
        .collect())
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            urls: Vec::new(),
            namespace: "cgp".into(),
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            timeout: Duration::from_millis(200),
            retry_after: Duration::from_secs(2),
        }
    }
}

// The password stays out of `{:?}` (configurations are logged at debug).
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact(u)).collect::<Vec<_>>(),
            )
            .field("namespace", &self.namespace)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl RedisConfig {
    /// Checks what can be checked without connecting; `key` is where the
    /// table sits in the file, for the error.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let err = |k: &str, m: String| {
            Err(ConfigError {
                key: format!("{key}.{k}"),
                message: m,
            })
        };
        if self.urls.is_empty() {
            return err(
                "urls",
                "needs at least one redis:// or rediss:// URL".into(),
            );
        }
        for u in &self.urls {
            if let Err(e) = u.as_str().into_connection_info() {
                // The URL may carry a password: name its position only.
                return err(
                    "urls",
                    format!("URL {} is not valid: {}", redact(u), e.category()),
                );
            }
        }
        if self.password.is_some() && self.password_file.is_some() {
            return err(
                "password",
                "give password or password_file, not both".into(),
            );
        }
        if self.namespace.is_empty() || self.namespace.contains(char::is_whitespace) {
            return err("namespace", "must be a non-empty word".into());
        }
        if self.timeout.is_zero() || self.retry_after.is_zero() {
            return err(
                "timeout",
                "timeout and retry_after must be more than 0s".into(),
            );
        }
        Ok(())
    }
}

/// A URL with any password replaced, for logs and errors.
fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(s, rest)| {
        // The last `@`: a password may hold one.
        let (auth, host) = rest.rsplit_once('@')?;
        Some((s, auth, host))
    }) {
        Some((scheme, auth, host)) => {
            let user = auth.split_once(':').map_or(auth, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// A configuration key the shared store cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The full key, e.g. `store.redis.urls`.
    pub key: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("shared store down (retried after {0:?})")]
    Down(Duration),
    #[error("shared store timed out after {0:?}")]
    Timeout(Duration),
    #[error("shared store failed: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A change of the store's health, for the caller to log once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The first failure of an outage; the text names the server and cause.
    Lost(String),
    Recovered,
}

/// What an operation gave, and the health change it revealed.
pub struct Outcome<T> {
    pub result: Result<T, StoreError>,
    pub health: Option<Health>,
}

impl<T> Outcome<T> {
    /// Logs a change of the store's health once, at warn and as a `*` line
    /// through `info` (the CGP log), in every helper's words: `helper` is
    /// the binary, `meanwhile` what it does while the store is down, `again`
    /// what comes back with it. Gives the value, if there is one.
    pub fn reported(
        self,
        info: &(dyn Fn(&str) + Sync),
        helper: &str,
        meanwhile: &str,
        again: &str,
    ) -> Option<T> {
        match self.health {
            Some(Health::Lost(why)) => {
                tracing::warn!(error = %why, "shared store unavailable; {meanwhile} until it is back");
                info(&format!(
                    "{helper}: shared store unavailable ({why}); {meanwhile}"
                ));
            }
            Some(Health::Recovered) => {
                tracing::warn!("shared store back; {again}");
                info(&format!("{helper}: shared store back; {again}"));
            }
            None => {}
        }
        self.result.ok()
    }
}

pub struct RedisStore {
    managers: Vec<(String, ConnectionManager)>,
    namespace: String,
    timeout: Duration,
    retry_after: Duration,
    /// The URL in use; moved on after a failure.
    current: AtomicUsize,
    down: AtomicBool,
    /// When the next probe may start, while down.
    next_probe: Mutex<Instant>,
    bump: Script,
    absent: Absent,
}

/// Keys this member found absent (see [`RedisStore::counts`]), each with
/// the instant until which that answer is trusted.
#[derive(Default)]
struct Absent {
    keys: Mutex<HashMap<String, Instant>>,
    /// Moved on by every write of this member as it starts and as it ends:
    /// a read that overlapped one records nothing, so that it cannot record
    /// a key as absent after the write that created it.
    writes: AtomicU64,
}

/// At most this many absent keys are remembered; beyond, the expired ones
/// go, or all of them if that frees less than half the room.
const MAX_ABSENT: usize = 65_536;

impl Absent {
    /// Whether every key is known absent now.
    fn all(&self, keys: &[String]) -> bool {
        let now = Instant::now();
        let known = cgp_runtime::sync::lock(&self.keys);
        keys.iter()
            .all(|k| known.get(k).is_some_and(|until| now < *until))
    }

    fn record(&self, keys: impl Iterator<Item = String>, writes: u64, trusted: Duration) {
        let until = Instant::now() + trusted;
        let mut known = cgp_runtime::sync::lock(&self.keys);
        // Checked under the lock that `forget` takes too: a write that
        // starts after this check removes what is recorded here.
        if self.writes.load(Ordering::Acquire) != writes {
            return;
        }
        for key in keys {
            if known.len() >= MAX_ABSENT && !known.contains_key(&key) {
                let now = Instant::now();
                known.retain(|_, until| now < *until);
                // At least half the room free after a sweep, so that a
                // sweep (a pass over the map) comes at most once per
                // MAX_ABSENT / 2 new keys, whatever the rate of logins.
                if known.len() > MAX_ABSENT / 2 {
                    known.clear();
                }
            }
            known.insert(key, until);
        }
    }

    /// Called as a write to `keys` starts and as it ends, whatever its
    /// result.
    fn forget<K: AsRef<str>>(&self, keys: &[K]) {
        let mut known = cgp_runtime::sync::lock(&self.keys);
        self.writes.fetch_add(1, Ordering::AcqRel);
        for key in keys {
            known.remove(key.as_ref());
        }
    }
}

/// Counts a failure under each key unless its tag is among the key's recent
/// ones (a retried password counts once), and (re)arms the key's expiry.
/// Tags are stored `tag,` one after the other, so a search for `tag,` can
/// only match a whole tag. KEYS: the counters; ARGV: tag, expiry (ms), how
/// many tags to keep.
const BUMP: &str = r"
local mark = ARGV[1] .. ','
local keep = tonumber(ARGV[3]) * #mark
for _, k in ipairs(KEYS) do
  local recent = redis.call('HGET', k, 'r') or ''
  if not string.find(recent, mark, 1, true) then
    redis.call('HINCRBY', k, 'n', 1)
    recent = recent .. mark
    if #recent > keep then recent = string.sub(recent, #recent - keep + 1) end
    redis.call('HSET', k, 'r', recent)
  end
  redis.call('PEXPIRE', k, ARGV[2])
end
return 0
";

/// The sliding window of [`RedisStore::count_in_window`]. KEYS: the
/// window; ARGV: member, window (ms), limit.
static WINDOW: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return n end
if n >= limit then return limit + 1 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], window)
return n + 1
",
    )
});

impl RedisStore {
    /// Prepares a connection per URL without connecting (the first
    /// operation does); reads the password and CA files. Must be called
    /// within a tokio runtime.
    pub fn new(cfg: &RedisConfig) -> Result<RedisStore, StoreError> {
        let bad = |k: &str, m: String| {
            StoreError::Config(ConfigError {
                key: format!("store.redis.{k}"),
                message: m,
            })
        };
        let password =
            cgp_runtime::config::either(cfg.password.as_ref(), cfg.password_file.as_ref())
                .map_err(|e| bad("password_file", e.to_string()))?;
        let root_cert = match &cfg.ca_file {
            Some(f) => Some(
                std::fs::read(f).map_err(|e| bad("ca_file", format!("{}: {e}", f.display())))?,
            ),
            None => None,
        };
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_max_delay(cfg.retry_after);
        let mut managers = Vec::new();
        for url in &cfg.urls {
            let mut info = url.as_str().into_connection_info().map_err(|e| {
                bad(
                    "urls",
                    format!("URL {} is not valid: {}", redact(url), e.category()),
                )
            })?;
            let mut settings = info.redis_settings().clone();
            if let Some(u) = &cfg.username {
                settings = settings.set_username(u);
            }
            if let Some(p) = &password {
                settings = settings.set_password(p.expose());
            }
            info = info.set_redis_settings(settings);
            let client = if url.starts_with("rediss://") {
                Client::build_with_tls(
                    info,
                    TlsCertificates {
                        client_tls: None,
                        root_cert: root_cert.clone(),
                    },
                )
            } else {
                Client::open(info)
            }
            .map_err(|e| bad("urls", format!("{}: {}", redact(url), e.category())))?;
            let manager = ConnectionManager::new_lazy_with_config(client, manager_cfg.clone())
                .map_err(|e| bad("urls", format!("{}: {}", redact(url), e.category())))?;
            managers.push((redact(url), manager));
        }
        Ok(RedisStore {
            managers,
            namespace: cfg.namespace.clone(),
            timeout: cfg.timeout,
            retry_after: cfg.retry_after,
            current: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            next_probe: Mutex::new(Instant::now()),
            bump: Script::new(BUMP),
            absent: Absent::default(),
        })
    }

    /// The full key: the namespace, then `parts` joined by `:`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut k = self.namespace.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// May this request use the store? While it is down, one request per
    /// `retry_after` probes it; the others go local at once.
    fn admit(&self) -> bool {
        if !self.down.load(Ordering::Acquire) {
            return true;
        }
        let mut next = cgp_runtime::sync::lock(&self.next_probe);
        let now = Instant::now();
        if now < *next {
            return false;
        }
        *next = now + self.retry_after;
        true
    }

    /// Runs one operation (one round trip) under the timeout, and keeps
    /// the health state.
    async fn call<T, F, Fut>(&self, op: F) -> Outcome<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.admit() {
            return Outcome {
                result: Err(StoreError::Down(self.retry_after)),
                health: None,
            };
        }
        let at = self.current.load(Ordering::Acquire) % self.managers.len();
        let (url, manager) = &self.managers[at];
        let result = match tokio::time::timeout(self.timeout, op(manager.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        let health = match &result {
            Ok(_) => self
                .down
                .swap(false, Ordering::AcqRel)
                .then_some(Health::Recovered),
            Err(e) => {
                // The next probe tries the next server.
                let _ = self.current.compare_exchange(
                    at,
                    (at + 1) % self.managers.len(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                *cgp_runtime::sync::lock(&self.next_probe) = Instant::now() + self.retry_after;
                (!self.down.swap(true, Ordering::AcqRel))
                    .then(|| Health::Lost(format!("{url}: {e}")))
            }
        };
        Outcome { result, health }
    }

    /// Runs a write to `keys` through `call`, ending the trust in their
    /// absence as it starts and again once it is answered.
    async fn write<K, T, F, Fut>(&self, keys: &[K], op: F) -> Outcome<T>
    where
        K: AsRef<str>,
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.absent.forget(keys);
        let outcome = self.call(op).await;
        self.absent.forget(keys);
        outcome
    }

    /// The counts under `keys` (0 for a key absent or expired), in one
    /// round trip, or none: a key found absent is taken as absent without
    /// asking for `absent_for` after (0: always ask). Within that time a
    /// write by another member is not seen here; a write by this member
    /// (`bump`, `remove`) ends it at once for its keys. While the store is
    /// down nothing is taken as known.
    pub async fn counts(&self, keys: &[String], absent_for: Duration) -> Outcome<Vec<u32>> {
        let remember = !absent_for.is_zero();
        if remember && !self.down.load(Ordering::Acquire) && self.absent.all(keys) {
            return Outcome {
                result: Ok(vec![0; keys.len()]),
                health: None,
            };
        }
        let writes = self.absent.writes.load(Ordering::Acquire);
        let outcome = self
            .call(|mut c| async move {
                let mut pipe = redis::pipe();
                for k in keys {
                    pipe.hget(k, "n");
                }
                let got: Vec<Option<u32>> = pipe.query_async(&mut c).await?;
                Ok(got.into_iter().map(Option::unwrap_or_default).collect())
            })
            .await;
        if let (true, Ok(counts)) = (remember, &outcome.result) {
            let absent = keys.iter().zip(counts).filter(|&(_, &n)| n == 0);
            self.absent
                .record(absent.map(|(k, _)| k.clone()), writes, absent_for);
        }
        outcome
    }

    /// Counts one event under each key unless `tag` is among the last
    /// `keep` tags of the key, and makes each key expire `ttl` after this
    /// event; one round trip.
    pub async fn bump(
        &self,
        keys: &[String],
        tag: &str,
        ttl: Duration,
        keep: usize,
    ) -> Outcome<()> {
        let mut invocation = self.bump.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        invocation
            .arg(tag)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(keep);
        self.write(keys, |mut c| async move {
            let _: i64 = invocation.invoke_async(&mut c).await?;
            Ok(())
        })
        .await
    }

    /// Counts `member` in the sliding window `window` under `key` (a
    /// sorted set scored by the server's clock, so members of a cluster
    /// with skewed clocks count alike) and gives how many the window holds
    /// with it; one round trip. A member already in the window is not
    /// counted again (a retried message). When the window holds `limit`
    /// already, `member` is not added and `limit + 1` comes back, so a
    /// key never holds more than `limit` members.
    pub async fn count_in_window(
        &self,
        key: &str,
        member: &str,
        window: Duration,
        limit: u64,
    ) -> Outcome<u64> {
        let mut invocation = WINDOW.prepare_invoke();
        invocation
            .key(key)
            .arg(member)
            .arg(window.as_millis().max(1) as u64)
            .arg(limit);
        self.call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
    }

    /// Removes `key`; one round trip.
    pub async fn remove(&self, key: &str) -> Outcome<()> {
        self.write(&[key], |mut c| async move {
            let _: i64 = redis::cmd("DEL").arg(key).query_async(&mut c).await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_errors_and_debug() {
        assert_eq!(redact("redis://u:s3cret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("rediss://:a@b@h"), "rediss://:***@h");
        let cfg = RedisConfig {
            urls: vec!["redis://:s3cret@[".into()],
            password: Some("s3cret".into()),
            ..RedisConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let e = cfg.validate("store.redis").unwrap_err();
        assert_eq!(e.key, "store.redis.urls");
        assert!(!e.message.contains("s3cret"), "{e}");
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn absent_keys_are_trusted_until_they_expire_or_are_written() {
        let absent = Absent::default();
        let (a, ab) = (keys(&["a"]), keys(&["a", "b"]));
        assert!(!absent.all(&a));
        absent.record(a.iter().cloned(), 0, Duration::from_secs(60));
        assert!(absent.all(&a));
        // Every key must be known.
        assert!(!absent.all(&ab));
        // A write of this member ends it at once.
        absent.forget(&a);
        assert!(!absent.all(&a));
        // And it ends by itself.
        let w = absent.writes.load(Ordering::Acquire);
        absent.record(ab.iter().cloned(), w, Duration::from_millis(30));
        assert!(absent.all(&ab));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!absent.all(&ab));
    }

    #[test]
    fn a_read_that_overlapped_a_write_records_nothing() {
        let absent = Absent::default();
        let a = keys(&["a"]);
        // The read starts, a write to any key starts meanwhile, the read's
        // answer (absent) arrives: it may predate the write.
        let before = absent.writes.load(Ordering::Acquire);
        absent.forget(&["other"]);
        absent.record(a.iter().cloned(), before, Duration::from_secs(60));
        assert!(!absent.all(&a));
    }

    #[test]
    fn absent_keys_stay_bounded() {
        let absent = Absent::default();
        for i in 0..MAX_ABSENT + 10 {
            absent.record(std::iter::once(format!("k{i}")), 0, Duration::from_secs(60));
            assert!(cgp_runtime::sync::lock(&absent.keys).len() <= MAX_ABSENT);
        }
        // All were still trusted: the map was emptied, then refilled.
        assert!(absent.all(&keys(&["k65545"])));
        assert!(!absent.all(&keys(&["k0"])));
        assert_eq!(cgp_runtime::sync::lock(&absent.keys).len(), 10);

        // Mostly expired: only the expired ones go.
        let absent = Absent::default();
        let live = MAX_ABSENT / 4;
        let names = |range: std::ops::Range<usize>| range.map(|i| format!("k{i}"));
        absent.record(names(0..live), 0, Duration::from_secs(60));
        absent.record(names(live..MAX_ABSENT), 0, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        absent.record(
            names(MAX_ABSENT..MAX_ABSENT + 1),
            0,
            Duration::from_secs(60),
        );
        assert_eq!(cgp_runtime::sync::lock(&absent.keys).len(), live + 1);
        assert!(absent.all(&keys(&["k0", "k65536"])));
    }

    #[test]
    fn validate_names_the_key() {
        let ok = RedisConfig {
            urls: vec!["redis://127.0.0.1:6379".into()],
            ..RedisConfig::default()
        };
        assert!(ok.validate("store.redis").is_ok());
        let none = RedisConfig::default();
        assert_eq!(none.validate("s").unwrap_err().key, "s.urls");
        let both = RedisConfig {
            password: Some("a".into()),
            password_file: Some("/x".into()),
            ..ok.clone()
        };
        assert_eq!(both.validate("s").unwrap_err().key, "s.password");
    }
}
