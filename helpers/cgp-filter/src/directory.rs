//! Directory facts about a sender, behind a small trait so that the rule
//! engine can be tested without a server, with a short cache in front.

use crate::patterns::lower_case;
use cgp_runtime::sync;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A person found in the directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Person {
    pub dn: String,
    /// Lower-case attribute name and values: the few attributes the rules
    /// read, found by a scan, cheaper than hashing the name.
    pub attributes: Vec<(String, Vec<String>)>,
    /// Lower-case names of the groups the person belongs to.
    pub groups: Vec<String>,
}

impl Person {
    pub fn values(&self, attribute: &str) -> &[String] {
        self.attributes
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(attribute))
            .map_or(&[], |(_, values)| values.as_slice())
    }
}

/// Why the directory gave no answer (down, timed out, refused the bind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable(pub String);

/// What the rules ask the directory.
pub trait Directory: Send + Sync + 'static {
    /// The person with this address, `None` when there is none.
    fn person(
        &self,
        address: &str,
    ) -> impl Future<Output = Result<Option<Arc<Person>>, Unavailable>> + Send;
}

/// Answers a directory has at hand, without a wait.
pub trait Recall: Send + Sync {
    /// The person with this (lower-case) address, when the answer is at
    /// hand: `Some(None)` when there is none, `None` when it must be asked.
    fn recall(&self, address: &str) -> Option<Option<Arc<Person>>>;
}

/// Keeps answers (found or not found) for `ttl`; failures are not kept, so
/// the next request asks again. Requests that ask for an address while it
/// is being asked wait for that answer instead of asking too: after a
/// start or an expiry, a burst of messages from one sender makes one
/// search, not one each.
pub struct Cached<D> {
    inner: D,
    ttl: Duration,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

/// One address's answer and when it was had, filled by the first request
/// that asks; empty while asked, and again after a failure.
type Entry = tokio::sync::OnceCell<(Instant, Option<Arc<Person>>)>;

/// A bound on the cache: past it, expired entries are dropped, and if that
/// is not enough the cache starts over (answers are cheap to get again).
const MAX_ENTRIES: usize = 100_000;

impl<D: Directory> Cached<D> {
    pub fn new(inner: D, ttl: Duration) -> Cached<D> {
        Cached {
            inner,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The answer of `entry` if it is still fresh.
    fn fresh(&self, entry: &Entry) -> Option<Option<Arc<Person>>> {
        entry
            .get()
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, answer)| answer.clone())
    }

    /// The kept answer for `key`, or the entry to wait on or fill.
    fn lookup(&self, key: &str) -> Result<Option<Arc<Person>>, Arc<Entry>> {
        let mut entries = sync::lock(&self.entries);
        if let Some(entry) = entries.get(key) {
            if let Some(answer) = self.fresh(entry) {
                return Ok(answer);
            }
            // Being asked (or the last asking failed): join it.
            if entry.get().is_none() {
                return Err(entry.clone());
            }
        }
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, e| e.get().is_none_or(|(at, _)| at.elapsed() < ttl));
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        let entry = Arc::new(Entry::new());
        entries.insert(key.to_string(), entry.clone());
        Err(entry)
    }
}

impl<D: Directory> Recall for Cached<D> {
    fn recall(&self, address: &str) -> Option<Option<Arc<Person>>> {
        let entries = sync::lock(&self.entries);
        self.fresh(entries.get(address)?)
    }
}

impl<D: Directory> Directory for Cached<D> {
    async fn person(&self, address: &str) -> Result<Option<Arc<Person>>, Unavailable> {
        // The rules ask with lower-case addresses: a cache hit copies none.
        let key = lower_case(address);
        let entry = match self.lookup(&key) {
            Ok(hit) => return Ok(hit),
            Err(entry) => entry,
        };
        // One request asks; the others wait for its answer. If it fails or
        // its request is dropped at its deadline, a waiting one asks.
        let (_, answer) = entry
            .get_or_try_init(|| async {
                // Boxed: a directory search (the LDAP client's futures) is
                // several kilobytes of state, which would otherwise be part
                // of every request's future and be copied with it, cache
                // hit or not.
                let answer = Box::pin(self.inner.person(&key)).await?;
                Ok::<_, Unavailable>((Instant::now(), answer))
            })
            .await?;
        Ok(answer.clone())
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory directory for the rule engine's tests.
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Default)]
    pub struct Fake {
        pub people: HashMap<String, Arc<Person>>,
        pub down: AtomicBool,
        pub calls: AtomicUsize,
    }

    impl Fake {
        pub fn with(mut self, address: &str, groups: &[&str], attrs: &[(&str, &str)]) -> Fake {
            let mut attributes: Vec<(String, Vec<String>)> = Vec::new();
            for (k, v) in attrs {
                let k = k.to_ascii_lowercase();
                match attributes.iter_mut().find(|(name, _)| *name == k) {
                    Some((_, values)) => values.push(v.to_string()),
                    None => attributes.push((k, vec![v.to_string()])),
                }
            }
            let p = Person {
                dn: format!("uid={address},ou=people"),
                attributes,
                groups: groups.iter().map(|g| g.to_lowercase()).collect(),
            };
            self.people.insert(address.to_string(), Arc::new(p));
            self
        }
    }

    impl Directory for Fake {
        async fn person(&self, address: &str) -> Result<Option<Arc<Person>>, Unavailable> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Err(Unavailable("directory down".into()));
            }
            Ok(self.people.get(address).cloned())
        }
    }

    /// Recalls nothing: the rules' tests see every answer asked for.
    impl Recall for Fake {
        fn recall(&self, _: &str) -> Option<Option<Arc<Person>>> {
            None
        }
    }

    impl Directory for Arc<Fake> {
        async fn person(&self, address: &str) -> Result<Option<Arc<Person>>, Unavailable> {
            self.as_ref().person(address).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Fake;
    use super::*;
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn cache_keeps_answers_not_failures() {
        let fake = Arc::new(Fake::default().with("alice@example.test", &["staff"], &[]));
        let cached = Cached::new(fake.clone(), Duration::from_secs(60));
        let a = cached.person("Alice@Example.test").await.unwrap().unwrap();
        assert_eq!(a.groups, ["staff"]);
        assert!(cached.person("alice@example.test").await.unwrap().is_some());
        assert!(
            cached
                .person("nobody@example.test")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            cached
                .person("nobody@example.test")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(fake.calls.load(Ordering::Relaxed), 2);
        fake.down.store(true, Ordering::Relaxed);
        assert!(cached.person("alice@example.test").await.unwrap().is_some());
        assert!(cached.person("carol@example.test").await.is_err());
        assert!(cached.person("carol@example.test").await.is_err());
        assert_eq!(fake.calls.load(Ordering::Relaxed), 4);
    }

    /// A directory that takes a while to answer.
    struct Slow(std::sync::atomic::AtomicUsize);

    impl Directory for Slow {
        async fn person(&self, _: &str) -> Result<Option<Arc<Person>>, Unavailable> {
            self.0.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(None)
        }
    }

    #[tokio::test]
    async fn one_search_for_requests_that_ask_at_once() {
        let cached = Arc::new(Cached::new(
            Slow(Default::default()),
            Duration::from_secs(60),
        ));
        let mut asking = tokio::task::JoinSet::new();
        for i in 0..10 {
            let cached = cached.clone();
            // Two addresses, one of them in two spellings.
            let who = ["a@example.test", "A@example.test", "b@example.test"][i % 3];
            asking.spawn(async move { cached.person(who).await });
        }
        while let Some(answer) = asking.join_next().await {
            assert_eq!(answer.unwrap(), Ok(None));
        }
        assert_eq!(cached.inner.0.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn entries_expire() {
        let fake = Arc::new(Fake::default());
        let cached = Cached::new(fake.clone(), Duration::ZERO);
        cached.person("x@example.test").await.unwrap();
        cached.person("x@example.test").await.unwrap();
        assert_eq!(fake.calls.load(Ordering::Relaxed), 2);
    }
}
