//! The bounded cache in front of every directory: answers (a person, or
//! "no such person") are kept for a TTL, misses for their own TTL; failures
//! are not kept. Requests that ask for a key while it is being asked wait
//! for that answer instead of asking too.

use super::{DirectoryError, Person};
use cgp_runtime::sync;
use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `[directory.cache]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long a person found is reused (0s: not kept).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long "no such person" is reused (0s: not kept).
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// At most this many answers are kept; past it, expired ones are
    /// dropped, and if that is not enough the cache starts over.
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(60),
            max_entries: 100_000,
        }
    }
}

/// One key's answer and when it was had; empty while being asked, and
/// again after a failure.
type Slot = tokio::sync::OnceCell<(Instant, Option<Arc<Person>>)>;

/// Whether an answer was asked for now or came from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Asked,
    Cached,
}

pub struct Cache {
    config: CacheConfig,
    entries: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Cache {
    pub fn new(config: &CacheConfig) -> Cache {
        Cache {
            config: config.clone(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn fresh(&self, (at, answer): &(Instant, Option<Arc<Person>>)) -> bool {
        let ttl = if answer.is_some() {
            self.config.ttl
        } else {
            self.config.negative_ttl
        };
        at.elapsed() < ttl
    }

    /// The kept answer for `key`, or the slot to wait on or fill.
    fn slot(&self, key: &str) -> Result<Option<Arc<Person>>, Arc<Slot>> {
        let mut entries = sync::lock(&self.entries);
        if let Some(slot) = entries.get(key) {
            match slot.get() {
                Some(answer) if self.fresh(answer) => return Ok(answer.1.clone()),
                // Being asked (or the last asking failed): join it.
                None => return Err(slot.clone()),
                Some(_) => {}
            }
        }
        if entries.len() >= self.config.max_entries {
            entries.retain(|_, s| s.get().is_none_or(|a| self.fresh(a)));
            if entries.len() >= self.config.max_entries {
                entries.clear();
            }
        }
        let slot = Arc::new(Slot::new());
        entries.insert(key.to_string(), slot.clone());
        Err(slot)
    }

    /// The answer for `key`: kept, or asked with `ask` (once for all the
    /// requests that want it at that moment). If the asking request fails or
    /// is dropped at its deadline, a waiting one asks.
    pub async fn get<F, Fut>(
        &self,
        key: &str,
        ask: F,
    ) -> Result<(Option<Arc<Person>>, Source), DirectoryError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Arc<Person>>, DirectoryError>>,
    {
        let slot = match self.slot(key) {
            Ok(hit) => return Ok((hit, Source::Cached)),
            Err(slot) => slot,
        };
        let mut source = Source::Cached;
        let (_, answer) = slot
            .get_or_try_init(|| async {
                source = Source::Asked;
                Ok::<_, DirectoryError>((Instant::now(), ask().await?))
            })
            .await?;
        Ok((answer.clone(), source))
    }

    /// The kept answer for `key`, if there is a fresh one; asks nothing.
    pub fn peek(&self, key: &str) -> Option<Option<Arc<Person>>> {
        let entries = sync::lock(&self.entries);
        let answer = entries.get(key)?.get()?;
        self.fresh(answer).then(|| answer.1.clone())
    }

    /// Forgets one key (its answer proved stale).
    pub fn forget(&self, key: &str) {
        sync::lock(&self.entries).remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        sync::lock(&self.entries).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn person(id: &str) -> Option<Arc<Person>> {
        Some(Arc::new(Person {
            id: id.into(),
            ..Person::default()
        }))
    }

    #[tokio::test]
    async fn answers_are_kept_failures_are_not() {
        let cache = Cache::new(&CacheConfig::default());
        let calls = AtomicUsize::new(0);
        let ask = |answer: Result<Option<Arc<Person>>, DirectoryError>| {
            calls.fetch_add(1, Ordering::Relaxed);
            std::future::ready(answer)
        };
        let (p, s) = cache.get("a", || ask(Ok(person("a")))).await.unwrap();
        assert_eq!((p.unwrap().id.as_str(), s), ("a", Source::Asked));
        let (p, s) = cache.get("a", || ask(Ok(None))).await.unwrap();
        assert_eq!((p.unwrap().id.as_str(), s), ("a", Source::Cached));
        assert_eq!(
            cache.get("n", || ask(Ok(None))).await.unwrap(),
            (None, Source::Asked)
        );
        assert_eq!(
            cache.get("n", || ask(Ok(person("n")))).await.unwrap(),
            (None, Source::Cached)
        );
        let down = || ask(Err(DirectoryError::Unavailable("down".into())));
        assert!(cache.get("f", down).await.is_err());
        assert!(cache.get("f", down).await.is_err());
        // A peek sees kept answers only, and asks nothing.
        assert_eq!(
            cache.peek("a").map(|p| p.map(|p| p.id.clone())),
            Some(Some("a".into()))
        );
        assert_eq!(cache.peek("n"), Some(None));
        assert_eq!(cache.peek("f"), None);
        assert_eq!(cache.peek("never"), None);
        assert_eq!(calls.load(Ordering::Relaxed), 4);
        cache.forget("a");
        assert_eq!(
            cache.get("a", || ask(Ok(None))).await.unwrap(),
            (None, Source::Asked)
        );
    }

    #[tokio::test]
    async fn misses_expire_on_their_own_ttl_and_the_cache_stays_bounded() {
        let cache = Cache::new(&CacheConfig {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::ZERO,
            max_entries: 10,
        });
        let ask = |p: Option<Arc<Person>>| std::future::ready(Ok(p));
        cache.get("n", || ask(None)).await.unwrap();
        assert_eq!(cache.get("n", || ask(None)).await.unwrap().1, Source::Asked);
        for i in 0..25 {
            cache
                .get(&format!("k{i}"), || ask(person("x")))
                .await
                .unwrap();
            assert!(cache.len() <= 10);
        }
    }

    #[tokio::test]
    async fn one_ask_for_requests_that_ask_at_once() {
        let cache = Arc::new(Cache::new(&CacheConfig::default()));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut asking = tokio::task::JoinSet::new();
        for i in 0..10 {
            let (cache, calls) = (cache.clone(), calls.clone());
            asking.spawn(async move {
                let key = ["a", "b"][i % 2];
                cache
                    .get(key, || async {
                        calls.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(None)
                    })
                    .await
            });
        }
        while let Some(answer) = asking.join_next().await {
            assert_eq!(answer.unwrap().unwrap().0, None);
        }
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}
