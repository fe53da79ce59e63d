//! Directory facts about a sender, from the suite's directory layer
//! (`cgp_lookup::directory`, with its one cache), behind two small traits
//! so that the rule engine can be tested without a server.

use cgp_lookup::directory::Account;
pub use cgp_lookup::directory::{DirectoryError, Person};
use std::future::Future;
use std::sync::Arc;

/// Answers a directory has at hand, without a wait.
pub trait Recall: Send + Sync {
    /// The person with this mail address, when the answer is at hand:
    /// `Some(None)` when there is none, `None` when it must be asked.
    fn recall(&self, address: &str) -> Option<Option<Arc<Person>>>;
}

/// What the rules ask the directory.
pub trait Directory: Send + Sync + 'static {
    /// The person with this mail address, `None` when there is none.
    fn person(
        &self,
        address: &str,
    ) -> impl Future<Output = Result<Option<Arc<Person>>, DirectoryError>> + Send;
}

// A sender or recipient that is not `user@domain` (`<>`, `postmaster`)
// has no entry: that is an answer, not a question for the directory.

impl Recall for cgp_lookup::directory::Directory {
    fn recall(&self, address: &str) -> Option<Option<Arc<Person>>> {
        match Account::parse(address.as_bytes()) {
            Ok(account) => {
                let known = self.cached_by_mail(&account);
                if known.is_some() {
                    cgp_runtime::metrics::count(cgp_runtime::metrics::Event::CacheHit);
                }
                known
            }
            Err(_) => Some(None),
        }
    }
}

impl Directory for cgp_lookup::directory::Directory {
    async fn person(&self, address: &str) -> Result<Option<Arc<Person>>, DirectoryError> {
        match Account::parse(address.as_bytes()) {
            Ok(account) => self.find_by_mail(&account).await,
            Err(_) => Ok(None),
        }
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory directory for the rule engine's tests.
    use super::*;
    use cgp_lookup::directory::Group;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Default)]
    pub struct Fake {
        pub people: HashMap<String, Arc<Person>>,
        pub down: AtomicBool,
        pub calls: AtomicUsize,
    }

    impl Fake {
        pub fn with(mut self, address: &str, groups: &[&str], attrs: &[(&str, &str)]) -> Fake {
            let mut p = Person {
                id: format!("uid={address},ou=people"),
                groups: groups.iter().map(|g| Group::named(g)).collect(),
                ..Person::default()
            };
            for (k, v) in attrs {
                p.push_values(k, [v.to_string()]);
            }
            self.people.insert(address.to_string(), Arc::new(p));
            self
        }
    }

    impl Directory for Fake {
        async fn person(&self, address: &str) -> Result<Option<Arc<Person>>, DirectoryError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Err(DirectoryError::Unavailable("directory down".into()));
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
}
