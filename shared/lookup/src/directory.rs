//! The directory: one interface over the places people live (the static
//! file, LDAP, SQL; the MX Proxy and CloudPBX APIs later), used the same
//! way by every helper.
//!
//! - [`Account`]: an account name or mail address, parsed once.
//! - [`Person`]: an id (the DN in LDAP), attributes and groups.
//! - [`DirectoryError`]: the question could not be decided now (a helper
//!   answers with a temporary failure); "no such person" and "wrong
//!   password" are answers, not errors.
//! - [`Backend`]: what a place where people live implements; adding one is
//!   an implementation of this trait and a `type` in [`DirectoryConfig`].
//! - [`Directory`]: what helpers call. It puts one bounded cache in front of
//!   the back end and applies one policy for several matching entries:
//!   they are refused as ambiguous, with a warning in the log.
//! - [`Template`]: the placeholders `{user}`, `{domain}`, `{address}`,
//!   `{dn}` and `{attr:NAME}`, filled in one pass with values escaped for
//!   their context.

mod account;
mod cache;
mod config;
mod error;
mod ldap;
mod mxproxy;
pub mod password;
mod person;
mod sql;
mod static_file;
mod template;

pub use account::{Account, AccountError};
pub use cache::{CacheConfig, Source};
pub use config::{
    DirectoryConfig, GroupLookup, GroupsConfig, Kind, Mode, SearchConfig, StaticConfig, StaticUser,
};
pub use error::DirectoryError;
pub use mxproxy::{Login, MxProxyConfig};
pub use person::{Dn, DnError, Group, GroupRef, Person};
pub use sql::{Host, Query, SqlConfig, TlsMode};
pub use template::{
    AccountDn, AccountFilter, CliValue, Context, EntryFilter, Field, Template, TemplateError,
    Values, is_attribute_name,
};

use cache::Cache;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The future a [`Backend`] method returns (boxed, so that one helper can
/// hold any back end behind `Arc<dyn Backend>`; only cache misses pay it).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a person is looked up.
#[derive(Clone, Copy, Debug)]
pub enum By<'a> {
    /// By the name they log in with (LDAP: `search.user_filter`).
    Account(&'a Account),
    /// By one of their mail addresses (LDAP: `search.mail_filter`).
    Mail(&'a Account),
}

impl By<'_> {
    pub fn account(&self) -> &Account {
        match self {
            By::Account(a) | By::Mail(a) => a,
        }
    }
}

/// The verdict on a password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Wrong password or no such person (never told apart to a client).
    Invalid,
    /// Locked out by the password policy.
    Locked,
    /// The password has expired.
    Expired,
    /// The password was reset and must be changed before use.
    MustChange,
    /// The account is disabled.
    Disabled,
    /// The password is right, but the access rules (LDAP `access_filter`)
    /// do not let the person in, or logon is not permitted now or from here.
    NotPermitted,
}

impl Verdict {
    /// A short text for logs and detailed error replies.
    pub fn reason(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Invalid => "invalid credentials",
            Verdict::Locked => "account locked",
            Verdict::Expired => "password expired",
            Verdict::MustChange => "password must be changed",
            Verdict::Disabled => "account disabled",
            Verdict::NotPermitted => "not permitted",
        }
    }
}

/// A place where people live. Implement it to add a back end; helpers use
/// it only through [`Directory`].
pub trait Backend: Send + Sync + 'static {
    /// Every entry that matches (the policy for more than one is the
    /// [`Directory`]'s; two are enough to tell). Shared, not copied: a back
    /// end that holds its people in memory answers without copying them.
    fn find<'a>(&'a self, by: By<'a>) -> BoxFuture<'a, Result<Vec<Arc<Person>>, DirectoryError>>;

    /// Checks a password for a person `find` gave.
    fn check<'a>(
        &'a self,
        account: &'a Account,
        person: &'a Person,
        password: &'a [u8],
    ) -> BoxFuture<'a, Result<Verdict, DirectoryError>>;

    /// Spends on a name nobody has what checking a real person's password
    /// costs, so that the time of a refusal does not tell which names exist.
    fn check_unknown<'a>(&'a self, account: &'a Account, password: &'a [u8]) -> BoxFuture<'a, ()>;

    /// The person an account checks its password as without a lookup, when
    /// the back end can tell (LDAP `dn_template`).
    fn direct(&self, _account: &Account) -> Option<Person> {
        None
    }

    /// Whether the access rules (LDAP `access_filter` and
    /// `required_groups`, the static file's `disabled`) let the person in;
    /// a back end without access rules lets everyone in.
    fn permitted<'a>(
        &'a self,
        _account: &'a Account,
        _person: &'a Person,
    ) -> BoxFuture<'a, Result<bool, DirectoryError>> {
        Box::pin(std::future::ready(Ok(true)))
    }

    /// The person's clear secret (READPLAIN), read now, never cached; a
    /// back end that keeps none has none to give.
    fn secret<'a>(
        &'a self,
        _account: &'a Account,
        _person: &'a Person,
    ) -> BoxFuture<'a, Result<Option<String>, DirectoryError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Connects now, so that a configuration error shows at start.
    fn probe(&self) -> BoxFuture<'_, Result<(), DirectoryError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Whether answers are worth caching (not for data already in memory).
    fn cacheable(&self) -> bool {
        true
    }
}

/// What helpers call: a back end with the cache and the policies in front.
/// Cheap to clone.
#[derive(Clone)]
pub struct Directory {
    backend: Arc<dyn Backend>,
    cache: Option<Arc<Cache>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

impl Directory {
    /// A directory on any back end (a new one, or a fake in tests).
    pub fn with_backend(backend: impl Backend, cache: &CacheConfig) -> Directory {
        // With both TTLs at zero nothing could be answered from the cache:
        // every lookup would only add an entry to drop later.
        let keeps = !cache.ttl.is_zero() || !cache.negative_ttl.is_zero();
        let cache = (backend.cacheable() && keeps).then(|| Arc::new(Cache::new(cache)));
        Directory {
            backend: Arc::new(backend),
            cache,
        }
    }

    /// The person with this login name; `None` when there is none (or
    /// several: refused as ambiguous).
    pub async fn find(&self, account: &Account) -> Result<Option<Arc<Person>>, DirectoryError> {
        self.lookup(By::Account(account)).await.map(|(p, _)| p)
    }

    /// The person with this mail address.
    pub async fn find_by_mail(
        &self,
        address: &Account,
    ) -> Result<Option<Arc<Person>>, DirectoryError> {
        self.lookup(By::Mail(address)).await.map(|(p, _)| p)
    }

    /// The cached answer for a mail address, without asking the back end:
    /// `None` when it must be asked (not cached, expired, or a back end
    /// that is not cached). For work that must not wait, such as the
    /// filter's rules on the blocking pool.
    pub fn cached_by_mail(&self, address: &Account) -> Option<Option<Arc<Person>>> {
        self.cache.as_ref()?.peek(&Self::key(By::Mail(address)))
    }

    fn key(by: By<'_>) -> String {
        let (kind, a) = match by {
            By::Account(a) => ("a:", a),
            By::Mail(a) => ("m:", a),
        };
        [kind, a.address()].concat()
    }

    async fn lookup(&self, by: By<'_>) -> Result<(Option<Arc<Person>>, Source), DirectoryError> {
        let ask = || async {
            let mut found = self.backend.find(by).await?;
            if found.len() > 1 {
                // A name must never resolve to "one of them": whose data,
                // whose password?
                tracing::warn!(account = %by.account(), entries = found.len(), "several directory entries match; refused as ambiguous");
                return Ok(None);
            }
            Ok(found.pop())
        };
        match &self.cache {
            Some(cache) => cache.get(&Self::key(by), ask).await,
            None => Ok((ask().await?, Source::Asked)),
        }
    }

    /// Checks a password. Unknown names cost what a real check costs. A
    /// person kept in the cache whose check fails is looked up again, in
    /// case their entry moved; the cache holds ids, never passwords.
    pub async fn verify(
        &self,
        account: &Account,
        password: &[u8],
    ) -> Result<Verdict, DirectoryError> {
        let person = match self.backend.direct(account) {
            Some(p) => Arc::new(p),
            None => match self.lookup_again_if_absent(account).await? {
                (None, _) => {
                    self.backend.check_unknown(account, password).await;
                    return Ok(Verdict::Invalid);
                }
                (Some(p), Source::Asked) => p,
                (Some(p), Source::Cached) => {
                    let v = self.backend.check(account, &p, password).await?;
                    if v != Verdict::Invalid {
                        return self.admit(account, &p, v).await;
                    }
                    self.forget(account);
                    match self.lookup(By::Account(account)).await? {
                        (Some(again), _) if again.id != p.id => again,
                        _ => return Ok(Verdict::Invalid),
                    }
                }
            },
        };
        let v = self.backend.check(account, &person, password).await?;
        self.admit(account, &person, v).await
    }

    /// A kept "no such person" is asked again when a password is checked:
    /// a wrong password for a kept person costs a check and a lookup, and
    /// so must a name nobody has.
    async fn lookup_again_if_absent(
        &self,
        account: &Account,
    ) -> Result<(Option<Arc<Person>>, Source), DirectoryError> {
        match self.lookup(By::Account(account)).await? {
            (None, Source::Cached) => {
                self.forget(account);
                self.lookup(By::Account(account)).await
            }
            found => Ok(found),
        }
    }

    fn forget(&self, account: &Account) {
        if let Some(cache) = &self.cache {
            cache.forget(&Self::key(By::Account(account)));
        }
    }

    /// Access rules only after a good password, so that they tell nothing
    /// to someone guessing.
    async fn admit(
        &self,
        account: &Account,
        person: &Person,
        v: Verdict,
    ) -> Result<Verdict, DirectoryError> {
        if v == Verdict::Ok && !self.permitted(account, person).await? {
            return Ok(Verdict::NotPermitted);
        }
        Ok(v)
    }

    /// Whether the access rules (LDAP `access_filter` and
    /// `required_groups`, the static file's `disabled`) let the person in.
    pub async fn permitted(
        &self,
        account: &Account,
        person: &Person,
    ) -> Result<bool, DirectoryError> {
        self.backend.permitted(account, person).await
    }

    /// The person's clear secret (READPLAIN), read now.
    pub async fn secret(
        &self,
        account: &Account,
        person: &Person,
    ) -> Result<Option<String>, DirectoryError> {
        self.backend.secret(account, person).await
    }

    /// Connects now (LDAP), so that a configuration error shows at start.
    pub async fn probe(&self) -> Result<(), DirectoryError> {
        self.backend.probe().await
    }
}

#[cfg(test)]
mod tests {
    use super::password::tests::{bcrypt4, ssha};
    use super::*;

    fn account(s: &str) -> Account {
        Account::parse(s.as_bytes()).unwrap()
    }

    fn static_dir(toml_users: &str) -> Directory {
        let config: DirectoryConfig = toml::from_str(toml_users).unwrap();
        config.validate("directory").unwrap();
        config.open(&[]).unwrap()
    }

    /// People a helper only shows (a banner's name and phone) need no
    /// password, and no password logs them in.
    #[tokio::test]
    async fn a_static_person_without_a_password_is_found_but_never_let_in() {
        let dir = static_dir(
            r#"
            [[static.users]]
            name = "carol@example.test"
            attributes = { cn = ["Carol"] }
            "#,
        );
        let carol = account("carol@example.test");
        let p = dir.find_by_mail(&carol).await.unwrap().unwrap();
        assert_eq!(p.first("cn"), Some("Carol"));
        assert_eq!(dir.verify(&carol, b"").await, Ok(Verdict::Invalid));
        assert_eq!(dir.verify(&carol, b"x").await, Ok(Verdict::Invalid));
    }

    #[tokio::test]
    async fn the_static_file_finds_verifies_and_lists_groups() {
        let dir = static_dir(&format!(
            r#"
            [[static.users]]
            name = "Alice@Example.test"
            password = "{}"
            mail = ["a.smith@example.test"]
            groups = ["Staff"]
            secret = "sip-secret"
            attributes = {{ cn = ["Alice Smith"] }}
            [[static.users]]
            name = "bob@example.test"
            password = "{}"
            disabled = true
            "#,
            ssha(b"pw", b"salt0001"),
            bcrypt4("pw"),
        ));
        let alice = account("alice@EXAMPLE.test");
        let p = dir.find(&alice).await.unwrap().unwrap();
        assert_eq!(p.first("CN"), Some("Alice Smith"));
        assert!(p.in_group(&GroupRef::new("staff")));
        let by_mail = dir
            .find_by_mail(&account("A.Smith@example.test"))
            .await
            .unwrap();
        assert_eq!(by_mail.unwrap().id, p.id);
        assert!(
            dir.find(&account("a.smith@example.test"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(dir.verify(&alice, b"pw").await, Ok(Verdict::Ok));
        assert_eq!(dir.verify(&alice, b"px").await, Ok(Verdict::Invalid));
        let bob = account("bob@example.test");
        assert_eq!(dir.verify(&bob, b"pw").await, Ok(Verdict::Disabled));
        assert_eq!(
            dir.verify(&account("nobody@x"), b"pw").await,
            Ok(Verdict::Invalid)
        );
        assert_eq!(dir.secret(&alice, &p).await, Ok(Some("sip-secret".into())));
        let bob_p = dir.find(&bob).await.unwrap().unwrap();
        assert_eq!(dir.permitted(&bob, &bob_p).await, Ok(false));
    }

    /// A back end whose answers a test sets, counting its calls.
    #[derive(Default)]
    struct Scripted {
        people: Mutex<Vec<Person>>,
        password: &'static [u8],
        finds: AtomicUsize,
        checks: AtomicUsize,
        unknown: AtomicUsize,
    }

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    impl Backend for Arc<Scripted> {
        fn find<'a>(
            &'a self,
            _: By<'a>,
        ) -> BoxFuture<'a, Result<Vec<Arc<Person>>, DirectoryError>> {
            self.finds.fetch_add(1, Ordering::Relaxed);
            let people = self
                .people
                .lock()
                .unwrap()
                .iter()
                .cloned()
                .map(Arc::new)
                .collect();
            Box::pin(std::future::ready(Ok(people)))
        }
        fn check<'a>(
            &'a self,
            _: &'a Account,
            person: &'a Person,
            password: &'a [u8],
        ) -> BoxFuture<'a, Result<Verdict, DirectoryError>> {
            self.checks.fetch_add(1, Ordering::Relaxed);
            let current = self
                .people
                .lock()
                .unwrap()
                .iter()
                .any(|p| p.id == person.id);
            let ok = current && password == self.password;
            Box::pin(std::future::ready(Ok(if ok {
                Verdict::Ok
            } else {
                Verdict::Invalid
            })))
        }
        fn check_unknown<'a>(&'a self, _: &'a Account, _: &'a [u8]) -> BoxFuture<'a, ()> {
            self.unknown.fetch_add(1, Ordering::Relaxed);
            Box::pin(std::future::ready(()))
        }
    }

    fn person(id: &str) -> Person {
        Person {
            id: id.into(),
            ..Person::default()
        }
    }

    #[tokio::test]
    async fn several_entries_are_refused_as_ambiguous() {
        let b = Arc::new(Scripted {
            people: Mutex::new(vec![person("uid=a,ou=one"), person("uid=a,ou=two")]),
            password: b"pw",
            ..Scripted::default()
        });
        let dir = Directory::with_backend(b.clone(), &CacheConfig::default());
        let a = account("a@x");
        assert_eq!(dir.find(&a).await, Ok(None));
        // Not "one of them" either when a password is checked.
        assert_eq!(dir.verify(&a, b"pw").await, Ok(Verdict::Invalid));
        assert_eq!(b.checks.load(Ordering::Relaxed), 0);
        assert_eq!(b.unknown.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_cached_person_whose_check_fails_is_looked_up_again() {
        let b = Arc::new(Scripted {
            people: Mutex::new(vec![person("uid=a,ou=old")]),
            password: b"pw",
            ..Scripted::default()
        });
        let dir = Directory::with_backend(b.clone(), &CacheConfig::default());
        let a = account("a@x");
        assert_eq!(dir.verify(&a, b"pw").await, Ok(Verdict::Ok));
        // A repeat login takes the kept id: no second search.
        assert_eq!(dir.verify(&a, b"pw").await, Ok(Verdict::Ok));
        assert_eq!(b.finds.load(Ordering::Relaxed), 1);
        // A wrong password with an unchanged entry: one search to re-check,
        // no second check.
        assert_eq!(dir.verify(&a, b"no").await, Ok(Verdict::Invalid));
        assert_eq!(
            (
                b.finds.load(Ordering::Relaxed),
                b.checks.load(Ordering::Relaxed)
            ),
            (2, 3)
        );
        // The entry moved: the kept id fails, the new one is found and
        // checked.
        *b.people.lock().unwrap() = vec![person("uid=a,ou=new")];
        assert_eq!(dir.verify(&a, b"pw").await, Ok(Verdict::Ok));
        assert_eq!(b.finds.load(Ordering::Relaxed), 3);
    }
}
