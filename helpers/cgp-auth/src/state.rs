//! The local state in sled: the verdict cache and the throttling counters.
//!
//! Passwords are never stored: a cache key is a fingerprint, SHA-256 over a
//! random per-store salt, the account and the password. The store is a
//! cache, never the truth: when it cannot be opened the helper keeps the
//! same state in memory.

mod records;
mod shared;

pub use shared::Owed;

use crate::config::{CacheConfig, ThrottleConfig};
use cgp_lookup::store::remote::RedisStore;
use cgp_lookup::store::{CACHE_CAPACITY, LOCK_WAIT, Opened, Store};
use cgp_runtime::sync;
use records::{Failures, Negative, Positive};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub type Fingerprint = [u8; 32];

/// Fingerprints kept per throttled key, so that retrying the same wrong
/// password does not escalate the delay.
const RECENT: usize = 8;

/// Accounts whose good-password fingerprint is kept in memory in front of
/// sled (about 100 bytes each); beyond this, lookups fall through to sled.
const FRONT_ENTRIES: usize = 32 * 1024;

/// Buckets of [`KeyCounts`] (4 bytes each).
const BUCKETS: usize = 16 * 1024;

/// How many throttle keys hash to each bucket, never less than the truth
/// (counted up before a key is written, down after it is removed). A bucket
/// at zero proves a key has no failures on record, which spares the sled
/// read on nearly every request from a client and account that never
/// failed; any other bucket only means "look in sled".
struct KeyCounts {
    counts: Box<[AtomicU32]>,
    // Per-process random keys, so nobody can aim keys at one bucket.
    hasher: RandomState,
}

impl KeyCounts {
    fn new() -> KeyCounts {
        KeyCounts {
            counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }

    fn bucket(&self, key: &[u8]) -> &AtomicU32 {
        &self.counts[self.hasher.hash_one(key) as usize % BUCKETS]
    }

    fn maybe_present(&self, key: &[u8]) -> bool {
        self.bucket(key).load(Ordering::Acquire) != 0
    }

    fn add(&self, key: &[u8]) {
        self.bucket(key).fetch_add(1, Ordering::AcqRel);
    }

    fn sub(&self, key: &[u8]) {
        self.bucket(key).fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct State {
    // Kept open for as long as the trees are used.
    _store: Option<Store>,
    cache: sled::Tree,
    throttle: sled::Tree,
    throttled: KeyCounts,
    /// SHA-256 having absorbed one block, the salt padded with zeros: each
    /// fingerprint starts from a copy of it, so that an account and a
    /// password of usual lengths cost one compression, not two.
    salted: Sha256,
    /// The positive cache entries in memory, account -> (fingerprint,
    /// stamp), mirroring sled's `p` entries: every write goes to both, so
    /// an account found here needs no sled read. An account absent here may
    /// still be in sled (evicted, or from an earlier run).
    front: Mutex<HashMap<String, (Fingerprint, u64)>>,
    /// Bumped when the cache is emptied on reload; a verdict reached under
    /// an older generation (a request in flight across the reload) is not
    /// stored. Writers hold it shared, the clear holds it exclusively.
    generation: RwLock<u64>,
    /// What happened at open, for the start-up log.
    pub opened: String,
    /// The cluster's shared throttling counters; the trees above stand in
    /// for them while it is down.
    shared: Option<RedisStore>,
}

/// Trusted networks, and everyone when throttling is off, owe no delay.
fn exempt(cfg: &ThrottleConfig, ip: Option<IpAddr>) -> bool {
    !cfg.enabled || ip.is_some_and(|ip| cfg.trusted_networks.iter().any(|n| n.contains(&ip)))
}

/// The delay `count` failures earn: doubling from the initial delay, capped.
fn delay_for(cfg: &ThrottleConfig, count: u32) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    cfg.initial_delay
        .saturating_mul(1u32 << (count - 1).min(20))
        .min(cfg.max_delay)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn age(stamp: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(stamp))
}

/// What the cache knows about an account and password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached {
    Ok,
    Invalid,
}

fn open_trees(db: &sled::Db) -> sled::Result<(sled::Tree, sled::Tree, sled::Tree)> {
    Ok((
        db.open_tree("cache")?,
        db.open_tree("throttle")?,
        db.open_tree("meta")?,
    ))
}

impl State {
    /// Opens the store at `path`, or keeps the state in memory.
    pub fn open(path: Option<&Path>) -> State {
        let (store, opened) = match path.map(|p| Store::open(p, LOCK_WAIT)) {
            Some(Ok((s, Opened::Clean))) => {
                let what = format!("store {}", s.path().display());
                (Some(s), what)
            }
            Some(Ok((s, Opened::Replaced { moved_to }))) => {
                let what = format!(
                    "store {} was unreadable, moved to {} and started afresh",
                    s.path().display(),
                    moved_to.display()
                );
                (Some(s), what)
            }
            Some(Err(e)) => (None, format!("{e}; running with the state in memory")),
            None => (None, "no store configured; state in memory".into()),
        };
        let trees = store.as_ref().and_then(|s| {
            Some((
                s.tree("cache").ok()?,
                s.tree("throttle").ok()?,
                s.tree("meta").ok()?,
            ))
        });
        let (store, (cache, throttle, meta), opened) = match trees {
            Some(t) => (store, t, opened),
            None => {
                // The same page cache bound as a store on disk (sled's
                // default is 1 GiB).
                let db = sled::Config::new()
                    .temporary(true)
                    .cache_capacity(CACHE_CAPACITY)
                    .open()
                    .expect("an in-memory sled database opens");
                let t = open_trees(&db).expect("in-memory trees open");
                let opened = if store.is_some() {
                    "store trees unreadable; state in memory".into()
                } else {
                    opened
                };
                (None, t, opened)
            }
        };
        let salt = match meta.get(b"salt").ok().flatten() {
            Some(v) if v.len() == 32 => v.as_ref().try_into().expect("32 bytes"),
            _ => {
                let mut s = [0u8; 32];
                getrandom::fill(&mut s).expect("the OS random source works");
                let _ = meta.insert(b"salt", &s[..]);
                s
            }
        };
        // Failures recorded by an earlier run still count.
        let throttled = KeyCounts::new();
        for key in throttle.iter().keys().flatten() {
            throttled.add(&key);
        }
        State {
            _store: store,
            cache,
            throttle,
            throttled,
            salted: Sha256::new_with_prefix([&salt[..], &[0u8; 32]].concat()),
            front: Mutex::new(HashMap::new()),
            generation: RwLock::new(0),
            opened,
            shared: None,
        }
    }

    /// Keeps the throttling counters in `shared` from now on.
    pub fn with_shared(mut self, shared: RedisStore) -> State {
        self.shared = Some(shared);
        self
    }

    pub fn fingerprint(&self, account: &str, password: &[u8]) -> Fingerprint {
        let mut h = self.salted.clone();
        h.update((account.len() as u64).to_be_bytes());
        h.update(account.as_bytes());
        h.update(password);
        h.finalize().into()
    }

    /// A cached verdict no older than its TTL plus `extra` (the stale
    /// window while the directory is down, else zero). Each account keeps
    /// one positive entry, for its latest good password, so a changed
    /// password is noticed at the first login with the new one.
    pub fn cached(
        &self,
        cfg: &CacheConfig,
        account: &str,
        fp: &Fingerprint,
        extra: Duration,
    ) -> Option<Cached> {
        if !cfg.positive_ttl.is_zero() {
            if let Some((good, stamp)) = self.positive(account) {
                if age(stamp) < cfg.positive_ttl + extra && good == *fp {
                    return Some(Cached::Ok);
                }
            }
        }
        if !cfg.negative_ttl.is_zero() {
            if let Some(v) = self.cache.get(records::negative_key(fp)).ok().flatten() {
                if Negative::decode(&v).is_some_and(|n| age(n.stamp) < cfg.negative_ttl + extra) {
                    return Some(Cached::Invalid);
                }
            }
        }
        None
    }

    fn front(&self) -> MutexGuard<'_, HashMap<String, (Fingerprint, u64)>> {
        sync::lock(&self.front)
    }

    /// The account's latest good fingerprint and its stamp: from memory,
    /// else from sled (and then kept in memory). The sled read happens under
    /// the lock, so that a newer entry written meanwhile is not replaced.
    fn positive(&self, account: &str) -> Option<(Fingerprint, u64)> {
        let mut front = self.front();
        if let Some(hit) = front.get(account) {
            return Some(*hit);
        }
        let v = self
            .cache
            .get(records::positive_key(account))
            .ok()
            .flatten()?;
        let p = Positive::decode(&v)?;
        let entry = (p.fp, p.stamp);
        Self::put_front(&mut front, account, entry);
        Some(entry)
    }

    /// Puts an entry in memory. A full map is emptied (the sweep drops
    /// expired entries every minute, so it fills only with live ones), which
    /// costs no more than sled reads until it refills.
    fn put_front(
        front: &mut HashMap<String, (Fingerprint, u64)>,
        account: &str,
        entry: (Fingerprint, u64),
    ) {
        if front.len() >= FRONT_ENTRIES && !front.contains_key(account) {
            front.clear();
        }
        front.insert(account.to_string(), entry);
    }

    /// Records a verdict from the back end. Errors are logged, never fatal:
    /// the cache only saves work.
    pub fn remember(
        &self,
        generation: u64,
        cfg: &CacheConfig,
        account: &str,
        fp: &Fingerprint,
        verdict: Cached,
    ) {
        let current = sync::read(&self.generation);
        if *current != generation {
            return;
        }
        let now = now_ms();
        let positive = records::positive_key(account);
        let result = match verdict {
            Cached::Ok if !cfg.positive_ttl.is_zero() => {
                let v = Positive {
                    fp: *fp,
                    stamp: now,
                }
                .encode();
                // Both copies change under the lock, so that two logins
                // racing with different passwords leave memory and sled
                // agreeing on the later one.
                let mut front = self.front();
                let stored = self.cache.insert(positive, &v[..]);
                if stored.is_ok() {
                    Self::put_front(&mut front, account, (*fp, now));
                }
                drop(front);
                stored
                    .and_then(|_| self.cache.remove(records::negative_key(fp)))
                    .map(drop)
            }
            Cached::Invalid => {
                // The directory now refuses a password the cache accepted:
                // it was changed there.
                let dropped = if self.positive(account).is_some_and(|(good, _)| good == *fp) {
                    let mut front = self.front();
                    front.remove(account);
                    self.cache.remove(&positive).map(drop)
                } else {
                    Ok(())
                };
                if cfg.negative_ttl.is_zero() {
                    dropped
                } else {
                    let v = Negative { stamp: now }.encode();
                    dropped.and_then(|_| {
                        self.cache
                            .insert(records::negative_key(fp), &v[..])
                            .map(drop)
                    })
                }
            }
            Cached::Ok => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cache write failed");
        }
    }

    /// The delay owed before answering, from the failures of this account
    /// and of this client address in the local store (trusted networks owe
    /// none).
    fn local_delay(&self, cfg: &ThrottleConfig, account: &str, ip: Option<IpAddr>) -> Duration {
        if exempt(cfg, ip) {
            return Duration::ZERO;
        }
        records::throttle_keys(account, ip)
            .iter()
            .filter(|k| self.throttled.maybe_present(k))
            .filter_map(|k| self.throttle.get(k).ok().flatten())
            .filter_map(|v| {
                let f = Failures::decode(&v)?;
                (age(f.stamp) < cfg.reset_after).then(|| delay_for(cfg, f.count))
            })
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Counts a failed attempt in the local store, unless this very
    /// password failed recently.
    fn local_failed(
        &self,
        cfg: &ThrottleConfig,
        account: &str,
        ip: Option<IpAddr>,
        fp: &Fingerprint,
    ) {
        if !cfg.enabled {
            return;
        }
        let tag: records::Tag = fp[..8].try_into().expect("8 bytes");
        for key in records::throttle_keys(account, ip) {
            // Counted before the write, so that a reader never misses it;
            // taken back when the key was there already.
            self.throttled.add(&key);
            let result = self.throttle.fetch_and_update(&key, |old| {
                let mut f = old
                    .and_then(Failures::decode)
                    .filter(|f| age(f.stamp) < cfg.reset_after)
                    .unwrap_or(Failures {
                        count: 0,
                        stamp: 0,
                        recent: Vec::new(),
                    });
                if !f.recent.contains(&tag) {
                    f.count = f.count.saturating_add(1);
                    f.recent.push(tag);
                    if f.recent.len() > RECENT {
                        f.recent.remove(0);
                    }
                }
                f.stamp = now_ms();
                Some(f.encode())
            });
            match result {
                Ok(None) => {}
                Ok(Some(_)) => self.throttled.sub(&key),
                Err(e) => {
                    self.throttled.sub(&key);
                    tracing::warn!(error = %e, "throttle write failed");
                }
            }
        }
    }

    /// A successful login clears the account's failures in the local store
    /// (not the client's: one good password must not unlock guessing at
    /// other accounts).
    fn local_succeeded(&self, account: &str) {
        let key = records::account_key(account);
        // Reads first: most logins have nothing to clear, and a sled
        // removal is a write.
        if self.throttled.maybe_present(&key) && self.throttle.contains_key(&key).unwrap_or(true) {
            self.remove_throttle(&key);
        }
    }

    fn remove_throttle(&self, key: &[u8]) {
        if let Ok(Some(_)) = self.throttle.remove(key) {
            self.throttled.sub(key);
        }
    }

    /// Drops cache and throttle entries that can no longer answer.
    pub fn sweep(&self, cache: &CacheConfig, throttle: &ThrottleConfig) {
        let cache_limit = cache.positive_ttl.max(cache.negative_ttl) + cache.stale_window;
        self.front().retain(|_, (_, t)| age(*t) < cache_limit);
        for (k, v) in self.cache.iter().flatten() {
            if records::cache_stamp(&k, &v).is_none_or(|t| age(t) >= cache_limit) {
                let _ = self.cache.remove(k);
            }
        }
        for (k, v) in self.throttle.iter().flatten() {
            if Failures::decode(&v).is_none_or(|f| age(f.stamp) >= throttle.reset_after) {
                self.remove_throttle(&k);
            }
        }
    }

    /// Forgets every cached verdict (after a reload: users, rules or the
    /// back end may have changed). Throttling state stays.
    pub fn clear_cache(&self) {
        let mut generation = sync::write(&self.generation);
        *generation += 1;
        self.front().clear();
        if let Err(e) = self.cache.clear() {
            tracing::warn!(error = %e, "cache clear failed");
        }
    }

    /// The cache generation a new helper instance writes under.
    pub fn generation(&self) -> u64 {
        *sync::read(&self.generation)
    }

    pub fn flush(&self) {
        let _ = self.cache.flush();
        let _ = self.throttle.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> ThrottleConfig {
        ThrottleConfig {
            trusted_networks: vec!["10.0.0.0/8".parse().unwrap()],
            ..ThrottleConfig::default()
        }
    }

    #[test]
    fn cache_answers_and_notices_a_changed_password() {
        let s = State::open(None);
        let cfg = CacheConfig::default();
        let old = s.fingerprint("a@x", b"old");
        let new = s.fingerprint("a@x", b"new");
        assert_ne!(old, new);
        assert_eq!(s.cached(&cfg, "a@x", &old, Duration::ZERO), None);
        s.remember(s.generation(), &cfg, "a@x", &old, Cached::Ok);
        assert_eq!(
            s.cached(&cfg, "a@x", &old, Duration::ZERO),
            Some(Cached::Ok)
        );
        s.remember(s.generation(), &cfg, "a@x", &new, Cached::Ok);
        assert_eq!(s.cached(&cfg, "a@x", &old, Duration::ZERO), None);
        assert_eq!(
            s.cached(&cfg, "a@x", &new, Duration::ZERO),
            Some(Cached::Ok)
        );
        let wrong = s.fingerprint("a@x", b"wrong");
        s.remember(s.generation(), &cfg, "a@x", &wrong, Cached::Invalid);
        assert_eq!(
            s.cached(&cfg, "a@x", &wrong, Duration::ZERO),
            Some(Cached::Invalid)
        );
        // The directory refusing a cached password (changed there) drops it.
        s.remember(s.generation(), &cfg, "a@x", &new, Cached::Invalid);
        assert_eq!(
            s.cached(&cfg, "a@x", &new, Duration::ZERO),
            Some(Cached::Invalid)
        );
        s.remember(s.generation(), &cfg, "a@x", &old, Cached::Ok);
        assert_eq!(
            s.cached(&cfg, "a@x", &old, Duration::ZERO),
            Some(Cached::Ok)
        );
        // Same password, other account: another fingerprint.
        assert_ne!(s.fingerprint("b@x", b"new"), new);
    }

    #[test]
    fn ttl_zero_disables_and_expiry_needs_the_stale_window() {
        let s = State::open(None);
        let off = CacheConfig {
            positive_ttl: Duration::ZERO,
            negative_ttl: Duration::ZERO,
            stale_window: Duration::ZERO,
        };
        let fp = s.fingerprint("a@x", b"pw");
        s.remember(s.generation(), &off, "a@x", &fp, Cached::Ok);
        assert_eq!(s.cached(&off, "a@x", &fp, Duration::ZERO), None);
        let short = CacheConfig {
            positive_ttl: Duration::from_millis(1),
            ..CacheConfig::default()
        };
        s.remember(s.generation(), &short, "a@x", &fp, Cached::Ok);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(s.cached(&short, "a@x", &fp, Duration::ZERO), None);
        assert_eq!(
            s.cached(&short, "a@x", &fp, Duration::from_secs(60)),
            Some(Cached::Ok)
        );
    }

    #[test]
    fn delays_double_up_to_the_cap_and_repeats_do_not_count() {
        let s = State::open(None);
        let t = throttle();
        let ip = Some("192.0.2.1".parse().unwrap());
        assert_eq!(s.local_delay(&t, "a@x", ip), Duration::ZERO);
        let same = s.fingerprint("a@x", b"wrong");
        for _ in 0..5 {
            s.local_failed(&t, "a@x", ip, &same);
        }
        assert_eq!(s.local_delay(&t, "a@x", ip), Duration::from_secs(1));
        for (i, want) in [2, 4, 8, 8, 8].into_iter().enumerate() {
            let fp = s.fingerprint("a@x", format!("guess{i}").as_bytes());
            s.local_failed(&t, "a@x", ip, &fp);
            assert_eq!(s.local_delay(&t, "a@x", ip), Duration::from_secs(want));
        }
        // The client address carries the penalty to other accounts...
        assert_eq!(s.local_delay(&t, "b@x", ip), Duration::from_secs(8));
        // ...but not to other clients, and trusted networks owe nothing.
        assert_eq!(
            s.local_delay(&t, "b@x", Some("192.0.2.2".parse().unwrap())),
            Duration::ZERO
        );
        let trusted = Some("10.1.2.3".parse().unwrap());
        s.local_failed(&t, "c@x", trusted, &same);
        assert_eq!(s.local_delay(&t, "c@x", trusted), Duration::ZERO);
        // Success clears the account, not the client.
        s.local_succeeded("a@x");
        assert_eq!(s.local_delay(&t, "a@x", None), Duration::ZERO);
        assert_eq!(s.local_delay(&t, "a@x", ip), Duration::from_secs(8));
    }

    #[test]
    fn verdicts_of_an_older_generation_are_not_stored() {
        let s = State::open(None);
        let cfg = CacheConfig::default();
        let fp = s.fingerprint("a@x", b"pw");
        let before = s.generation();
        s.remember(before, &cfg, "a@x", &fp, Cached::Ok);
        s.clear_cache();
        assert_eq!(s.cached(&cfg, "a@x", &fp, Duration::ZERO), None);
        s.remember(before, &cfg, "a@x", &fp, Cached::Invalid);
        assert_eq!(s.cached(&cfg, "a@x", &fp, Duration::ZERO), None);
        s.remember(s.generation(), &cfg, "a@x", &fp, Cached::Ok);
        assert_eq!(s.cached(&cfg, "a@x", &fp, Duration::ZERO), Some(Cached::Ok));
    }

    #[test]
    fn sweep_drops_only_expired_entries() {
        let s = State::open(None);
        let short = CacheConfig {
            positive_ttl: Duration::from_millis(30),
            negative_ttl: Duration::from_millis(30),
            stale_window: Duration::ZERO,
        };
        let t = ThrottleConfig {
            reset_after: Duration::from_millis(30),
            ..throttle()
        };
        let old = s.fingerprint("old@x", b"pw");
        s.remember(s.generation(), &short, "old@x", &old, Cached::Ok);
        s.remember(
            s.generation(),
            &short,
            "old@x",
            &s.fingerprint("old@x", b"bad"),
            Cached::Invalid,
        );
        s.local_failed(&t, "old@x", Some("192.0.2.1".parse().unwrap()), &old);
        std::thread::sleep(Duration::from_millis(60));
        let fresh = s.fingerprint("new@x", b"pw");
        s.remember(s.generation(), &short, "new@x", &fresh, Cached::Ok);
        s.local_failed(&t, "new@x", None, &fresh);
        s.sweep(&short, &t);
        assert_eq!(s.cache.len(), 1);
        assert_eq!(s.throttle.len(), 1);
        assert_eq!(
            s.cached(&short, "new@x", &fresh, Duration::ZERO),
            Some(Cached::Ok)
        );
    }

    #[test]
    fn persists_across_reopen_with_the_same_salt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let cfg = CacheConfig::default();
        let t = throttle();
        let ip = Some("192.0.2.1".parse().unwrap());
        let fp = {
            let s = State::open(Some(&path));
            let fp = s.fingerprint("a@x", b"pw");
            s.remember(s.generation(), &cfg, "a@x", &fp, Cached::Ok);
            s.local_failed(&t, "b@x", ip, &fp);
            s.flush();
            fp
        };
        let s = State::open(Some(&path));
        assert_eq!(s.fingerprint("a@x", b"pw"), fp);
        // Read from sled (nothing in memory yet), then from memory.
        assert!(s.front().is_empty());
        assert_eq!(s.cached(&cfg, "a@x", &fp, Duration::ZERO), Some(Cached::Ok));
        assert_eq!(s.front().len(), 1);
        assert_eq!(s.cached(&cfg, "a@x", &fp, Duration::ZERO), Some(Cached::Ok));
        // The failures of the earlier run still delay.
        assert_eq!(s.local_delay(&t, "b@x", None), Duration::from_secs(1));
        assert_eq!(s.local_delay(&t, "c@x", ip), Duration::from_secs(1));
        s.local_succeeded("b@x");
        assert_eq!(s.local_delay(&t, "b@x", None), Duration::ZERO);
    }

    #[test]
    fn key_counts_follow_the_throttle_tree() {
        let s = State::open(None);
        let t = throttle();
        let ip = Some("192.0.2.1".parse().unwrap());
        let total = |s: &State| {
            s.throttled
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u32>()
        };
        for pw in [&b"one"[..], b"two", b"two"] {
            s.local_failed(&t, "a@x", ip, &s.fingerprint("a@x", pw));
        }
        // One key for the account, one for the address, however many
        // failures.
        assert_eq!(total(&s), 2);
        assert_eq!(s.throttle.len(), 2);
        s.local_succeeded("a@x");
        assert_eq!(total(&s), 1);
        s.local_succeeded("a@x");
        assert_eq!(total(&s), 1);
        let gone = ThrottleConfig {
            reset_after: Duration::ZERO,
            ..t
        };
        s.sweep(&CacheConfig::default(), &gone);
        assert_eq!((total(&s), s.throttle.len()), (0, 0));
    }
}
