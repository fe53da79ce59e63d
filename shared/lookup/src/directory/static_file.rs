//! The static back end: people listed in the configuration file.

use super::password::{self, Dummies, Stored};
use super::{
    Account, Backend, BoxFuture, By, DirectoryError, Group, Person, StaticConfig, Verdict,
};
use std::collections::HashMap;
use std::future::ready;
use std::sync::Arc;

struct User {
    person: Arc<Person>,
    /// `None`: no password logs this person in.
    stored: Option<Stored>,
    disabled: bool,
    secret: Option<String>,
}

pub struct StaticDirectory {
    /// By login name.
    users: HashMap<String, Arc<User>>,
    /// By mail address (the login name included).
    mail: HashMap<String, Arc<User>>,
    dummies: Dummies,
}

impl StaticDirectory {
    pub fn new(config: &StaticConfig) -> Result<StaticDirectory, DirectoryError> {
        let mut users = HashMap::new();
        let mut mail: HashMap<String, Arc<User>> = HashMap::new();
        for u in &config.users {
            let mut person = Person {
                id: u.name.address().to_string(),
                groups: u.groups.iter().map(|g| Group::named(g)).collect(),
                ..Person::default()
            };
            for (name, values) in &u.attributes {
                person.push_values(name, values.iter().cloned());
            }
            let user = Arc::new(User {
                person: Arc::new(person),
                stored: u.password.clone(),
                disabled: u.disabled,
                secret: u.secret.as_ref().map(|s| s.expose().to_string()),
            });
            users.insert(u.name.address().to_string(), user.clone());
            for address in std::iter::once(&u.name).chain(&u.mail) {
                // Two people with one address are found as both, and the
                // directory refuses the address as ambiguous.
                mail.entry(address.address().to_string())
                    .and_modify(|_| tracing::debug!(%address, "address listed twice"))
                    .or_insert_with(|| user.clone());
            }
        }
        let dummies = Dummies::new(users.values().filter_map(|u| u.stored.as_ref()))
            .map_err(|e| DirectoryError::Failed(e.to_string()))?;
        Ok(StaticDirectory {
            users,
            mail,
            dummies,
        })
    }

    fn user(&self, person: &Person) -> Option<&Arc<User>> {
        self.users.get(&person.id)
    }
}

impl Backend for StaticDirectory {
    fn find<'a>(&'a self, by: By<'a>) -> BoxFuture<'a, Result<Vec<Arc<Person>>, DirectoryError>> {
        let found = match by {
            By::Account(a) => self.users.get(a.address()),
            By::Mail(a) => self.mail.get(a.address()),
        };
        Box::pin(ready(Ok(found
            .map(|u| u.person.clone())
            .into_iter()
            .collect())))
    }

    fn check<'a>(
        &'a self,
        account: &'a Account,
        person: &'a Person,
        password: &'a [u8],
    ) -> BoxFuture<'a, Result<Verdict, DirectoryError>> {
        Box::pin(async move {
            let Some(user) = self.user(person) else {
                return Ok(Verdict::Invalid);
            };
            let Some(stored) = &user.stored else {
                // Costs what a check costs, as for a name nobody has.
                self.check_unknown(account, password).await;
                return Ok(Verdict::Invalid);
            };
            if !password::check(stored, password).await {
                return Ok(Verdict::Invalid);
            }
            Ok(if user.disabled {
                Verdict::Disabled
            } else {
                Verdict::Ok
            })
        })
    }

    fn check_unknown<'a>(&'a self, account: &'a Account, password: &'a [u8]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(dummy) = self.dummies.pick(account.address()) {
                password::check(dummy, password).await;
            }
        })
    }

    fn permitted<'a>(
        &'a self,
        _account: &'a Account,
        person: &'a Person,
    ) -> BoxFuture<'a, Result<bool, DirectoryError>> {
        Box::pin(ready(Ok(self.user(person).is_some_and(|u| !u.disabled))))
    }

    fn secret<'a>(
        &'a self,
        _account: &'a Account,
        person: &'a Person,
    ) -> BoxFuture<'a, Result<Option<String>, DirectoryError>> {
        Box::pin(ready(Ok(self.user(person).and_then(|u| u.secret.clone()))))
    }

    fn cacheable(&self) -> bool {
        false
    }
}
