//! The LDAP back end: people found by a search (or named by a DN
//! template), passwords checked by a bind as the person or compared with
//! the hash read by the service account, groups found by a search or read
//! from `memberOf`.

use super::config::{DirectoryConfig, GroupLookup, GroupsConfig, Mode, SearchConfig};
use super::password::{self, Stored};
use super::template::Values;
use super::{Account, Backend, BoxFuture, By, DirectoryError, Dn, Group, Person, Verdict};
use crate::ldap::{self as client, BindOutcome, Entry, Scope};
use cgp_runtime::sync;
use std::sync::Arc;
use std::sync::Mutex;

pub struct LdapDirectory {
    client: client::Directory,
    config: DirectoryConfig,
    /// What a search for a person asks for ("1.1": nothing).
    attributes: Vec<String>,
    /// The first RDN of a DN no entry has (a random name), bound with the
    /// given password when no person is found, so that an unknown name
    /// costs the same bind as a wrong password.
    absent_rdn: String,
    /// Compare mode: the last stored password value read from the
    /// directory, checked against when no person is found (same reason;
    /// until one is seen, an `{SSHA}` value, the OpenLDAP default).
    compare_dummy: Mutex<Stored>,
}

impl From<BindOutcome> for Verdict {
    fn from(b: BindOutcome) -> Self {
        match b {
            BindOutcome::Ok => Verdict::Ok,
            BindOutcome::InvalidCredentials => Verdict::Invalid,
            BindOutcome::Locked => Verdict::Locked,
            BindOutcome::Expired => Verdict::Expired,
            BindOutcome::MustChange => Verdict::MustChange,
            BindOutcome::Disabled => Verdict::Disabled,
            BindOutcome::NotPermitted => Verdict::NotPermitted,
        }
    }
}

impl LdapDirectory {
    pub fn new(
        config: &DirectoryConfig,
        mut attributes: Vec<String>,
    ) -> Result<LdapDirectory, DirectoryError> {
        // The cache holds no secrets: password hashes and READPLAIN
        // secrets are read when they are needed, never with the person.
        let secret = |a: &str| {
            std::iter::once(&config.search)
                .chain(config.domains.values())
                .any(|s| {
                    s.password_attribute.eq_ignore_ascii_case(a)
                        || s.secret_attribute
                            .as_deref()
                            .is_some_and(|x| x.eq_ignore_ascii_case(a))
                })
        };
        attributes.retain(|a| {
            let keep = !secret(a);
            if !keep {
                tracing::warn!(attribute = %a, "a password or secret attribute is not read with the person");
            }
            keep
        });
        if config.groups.lookup == GroupLookup::MemberOf {
            attributes.push(config.groups.member_of_attribute.clone());
        }
        if attributes.is_empty() {
            // "1.1": no attributes (RFC 4511 §4.5.1.8).
            attributes.push("1.1".into());
        }
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| DirectoryError::Failed(e.to_string()))?;
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        Ok(LdapDirectory {
            client: client::Directory::new(&config.ldap).map_err(DirectoryError::Failed)?,
            config: config.clone(),
            attributes,
            absent_rdn: format!("cn=cgp-no-such-user-{nonce}"),
            compare_dummy: Mutex::new(
                Stored::parse("{SSHA}AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", false)
                    .expect("a well-formed {SSHA} value"),
            ),
        })
    }

    fn search_for(&self, account: &Account) -> &SearchConfig {
        self.config.search_for(account.domain())
    }

    async fn read(&self, dn: &str, attribute: &str) -> Result<Vec<String>, DirectoryError> {
        let found = self
            .client
            .search(dn, Scope::Base, "(objectClass=*)", &[attribute])
            .await?;
        Ok(found
            .into_iter()
            .next()
            .map(|e| e.all(attribute).to_vec())
            .unwrap_or_default())
    }

    async fn groups(&self, entry: &Entry, account: &Account) -> Result<Vec<Group>, DirectoryError> {
        let g: &GroupsConfig = &self.config.groups;
        Ok(match g.lookup {
            GroupLookup::None => Vec::new(),
            GroupLookup::MemberOf => entry
                .all(&g.member_of_attribute)
                .iter()
                .filter_map(|v| match Dn::parse(v) {
                    Ok(dn) => Some(Group::from_dn(dn)),
                    Err(e) => {
                        tracing::debug!(error = %e, "memberOf value skipped");
                        None
                    }
                })
                .collect(),
            GroupLookup::Search => {
                let base = g.base.as_deref().unwrap_or(&self.search_for(account).base);
                let filter = g.filter.fill(&Values {
                    account,
                    dn: Some(&entry.dn),
                });
                self.client
                    .search(base, Scope::Sub, &filter, &[g.name_attribute.as_str()])
                    .await?
                    .into_iter()
                    .map(|e| {
                        let name = e.first(&g.name_attribute).map(str::to_lowercase);
                        let dn = Dn::parse(&e.dn).ok();
                        match (name, dn) {
                            (Some(name), dn) => Group { name, dn },
                            (None, Some(dn)) => Group::from_dn(dn),
                            (None, None) => Group::named(&e.dn),
                        }
                    })
                    .collect()
            }
        })
    }
}

impl Backend for LdapDirectory {
    fn find<'a>(&'a self, by: By<'a>) -> BoxFuture<'a, Result<Vec<Arc<Person>>, DirectoryError>> {
        Box::pin(async move {
            let account = by.account();
            let search = self.search_for(account);
            let filter = match by {
                By::Account(a) => search.user_filter.fill_account(a),
                By::Mail(a) => search.mail_filter.fill_account(a),
            };
            let attrs: Vec<&str> = self.attributes.iter().map(String::as_str).collect();
            let entries = self
                .client
                .search(&search.base, search.scope, &filter, &attrs)
                .await?;
            if entries.len() > 1 {
                // Refused by the directory: no group search for them.
                return Ok(entries
                    .into_iter()
                    .map(|e| {
                        Arc::new(Person {
                            id: e.dn,
                            ..Person::default()
                        })
                    })
                    .collect());
            }
            let mut people = Vec::with_capacity(1);
            for entry in entries {
                people.push(Arc::new(self.person(entry, account).await?));
            }
            Ok(people)
        })
    }

    fn check<'a>(
        &'a self,
        account: &'a Account,
        person: &'a Person,
        password: &'a [u8],
    ) -> BoxFuture<'a, Result<Verdict, DirectoryError>> {
        Box::pin(self.check_with(self.search_for(account), person, password))
    }

    fn check_unknown<'a>(&'a self, account: &'a Account, password: &'a [u8]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let search = self.search_for(account);
            match search.mode {
                Mode::Bind => {
                    // A DN that does not exist: its answer (invalid
                    // credentials, or an error) changes nothing.
                    let absent = format!("{},{}", self.absent_rdn, search.base);
                    if let Err(e) = self.client.check_password(&absent, password).await {
                        tracing::debug!(error = %e, "bind for an unknown name failed");
                    }
                }
                Mode::Compare => {
                    let dummy = sync::lock(&self.compare_dummy).clone();
                    password::check(&dummy, password).await;
                }
            }
        })
    }

    fn direct(&self, account: &Account) -> Option<Person> {
        let search = self.search_for(account);
        let template = search.dn_template.as_ref()?;
        Some(Person {
            id: template.fill_account(account),
            ..Person::default()
        })
    }

    fn permitted<'a>(
        &'a self,
        account: &'a Account,
        person: &'a Person,
    ) -> BoxFuture<'a, Result<bool, DirectoryError>> {
        Box::pin(async move {
            let search = self.search_for(account);
            if let Some(filter) = &search.access_filter {
                let filter = filter.fill(&Values {
                    account,
                    dn: Some(&person.id),
                });
                let hits = self
                    .client
                    .search(&person.id, Scope::Base, &filter, &["1.1"])
                    .await?;
                if hits.is_empty() {
                    return Ok(false);
                }
            }
            let required = &search.required_groups;
            if required.is_empty() {
                return Ok(true);
            }
            if search.dn_template.is_some() && person.groups.is_empty() {
                // Bound through the DN template: the entry was not read.
                let whole = self.complete(account, person).await?;
                return Ok(required.iter().any(|g| whole.in_group(g)));
            }
            Ok(required.iter().any(|g| person.in_group(g)))
        })
    }

    fn secret<'a>(
        &'a self,
        account: &'a Account,
        person: &'a Person,
    ) -> BoxFuture<'a, Result<Option<String>, DirectoryError>> {
        Box::pin(async move {
            let Some(attr) = &self.search_for(account).secret_attribute else {
                return Ok(None);
            };
            Ok(self.read(&person.id, attr).await?.into_iter().next())
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), DirectoryError>> {
        Box::pin(async move { Ok(self.client.probe().await?) })
    }
}

impl LdapDirectory {
    /// The whole person (attributes, groups) for an id alone.
    async fn complete(&self, account: &Account, person: &Person) -> Result<Person, DirectoryError> {
        let attrs: Vec<&str> = self.attributes.iter().map(String::as_str).collect();
        let found = self
            .client
            .search(&person.id, Scope::Base, "(objectClass=*)", &attrs)
            .await?;
        match found.into_iter().next() {
            Some(entry) => self.person(entry, account).await,
            None => Ok(person.clone()),
        }
    }

    /// A person from their entry, with their groups.
    async fn person(&self, entry: Entry, account: &Account) -> Result<Person, DirectoryError> {
        let groups = self.groups(&entry, account).await?;
        let mut person = Person {
            id: entry.dn,
            attributes: Vec::with_capacity(entry.attrs.len()),
            groups,
        };
        for (name, values) in entry.attrs {
            if name != "1.1" {
                person.push_values(&name, values);
            }
        }
        Ok(person)
    }

    async fn check_with(
        &self,
        search: &SearchConfig,
        person: &Person,
        password: &[u8],
    ) -> Result<Verdict, DirectoryError> {
        match search.mode {
            Mode::Bind => Ok(self
                .client
                .check_password(&person.id, password)
                .await?
                .into()),
            Mode::Compare => {
                let attr = search.password_attribute.as_str();
                for value in self.read(&person.id, attr).await? {
                    // Clear-text values in the directory are never accepted.
                    match Stored::parse(&value, false) {
                        Ok(stored) => {
                            let matched = password::check(&stored, password).await;
                            *sync::lock(&self.compare_dummy) = stored;
                            if matched {
                                return Ok(Verdict::Ok);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(dn = %person.id, error = %e, "unusable password value")
                        }
                    }
                }
                Ok(Verdict::Invalid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_read_with_the_person() {
        let config: DirectoryConfig = toml::from_str(
            r#"
type = "ldap"
attributes = ["cn", "USERPASSWORD", "AstAccountSecret", "hash"]
[search]
base = "dc=x"
secret_attribute = "astaccountsecret"
[domains.y]
base = "dc=y"
mode = "compare"
password_attribute = "hash"
"#,
        )
        .unwrap();
        let dir = LdapDirectory::new(&config, config.attributes.clone()).unwrap();
        assert_eq!(dir.attributes, ["cn"]);
    }
}
