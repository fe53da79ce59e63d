//! `[directory]`: one configuration shape for every helper. Single values
//! (templates, addresses, password hashes) are compiled while they are
//! deserialized, so their errors carry a line; rules between keys are
//! checked by [`DirectoryConfig::validate`].

use super::mxproxy::MxProxyConfig;
use super::password::Stored;
use super::sql::SqlConfig;
use super::template::{AccountDn, AccountFilter, EntryFilter, Template};
use super::{Account, CacheConfig, Directory, DirectoryError, GroupRef};
use crate::ldap::{LdapConfig, Scope};
use cgp_runtime::KeyError;
use cgp_runtime::config::Secret;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// Which back end holds the people.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `[[directory.static.users]]` in the configuration file.
    #[default]
    Static,
    Ldap,
    /// PostgreSQL (`[directory.sql]`).
    Sql,
    /// MX Proxy: `[directory.mxproxy]`.
    MxProxy,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Attributes read for every person (helpers add the ones their own
    /// settings name).
    pub attributes: Vec<String>,
    pub cache: CacheConfig,
    #[serde(rename = "static")]
    pub static_file: StaticConfig,
    /// LDAP connection settings (URIs, service account, timeouts, TLS).
    pub ldap: LdapConfig,
    /// How people are found in LDAP, for every domain not in `domains`.
    pub search: SearchConfig,
    /// Per-domain searches (each a complete `search` table); the keys are
    /// domains, matched without regard to case.
    #[serde(deserialize_with = "de_domains")]
    pub domains: BTreeMap<String, SearchConfig>,
    pub groups: GroupsConfig,
    /// SQL connection settings and queries.
    pub sql: SqlConfig,
    /// MX Proxy connection settings (`type = "mxproxy"`).
    pub mxproxy: Option<MxProxyConfig>,
}

/// `[directory.search]`: how a person is found in LDAP, and how their
/// password is checked.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Search base.
    pub base: String,
    #[serde(deserialize_with = "de_scope")]
    pub scope: Scope,
    /// Finds a person by login name.
    pub user_filter: Template<AccountFilter>,
    /// Finds a person by mail address.
    pub mail_filter: Template<AccountFilter>,
    /// Bind mode's fast path: bind straight to this DN without a search.
    pub dn_template: Option<Template<AccountDn>>,
    pub mode: Mode,
    /// Compare mode: the attribute that holds the password hash.
    pub password_attribute: String,
    /// The entry must also match this filter to be let in (checked after a
    /// good password, at the entry's DN).
    pub access_filter: Option<Template<EntryFilter>>,
    /// Only members of one of these groups (names, or DNs) are let in
    /// (checked after a good password); empty: everybody.
    pub required_groups: Vec<GroupRef>,
    /// The attribute READPLAIN answers from (e.g. `AstAccountSecret`).
    pub secret_attribute: Option<String>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            base: String::new(),
            scope: Scope::Sub,
            user_filter: Template::parse("(&(objectClass=inetOrgPerson)(uid={user}))")
                .expect("a valid default"),
            mail_filter: Template::parse("(mail={address})").expect("a valid default"),
            dn_template: None,
            mode: Mode::Bind,
            password_attribute: "userPassword".into(),
            access_filter: None,
            required_groups: Vec::new(),
            secret_attribute: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Bind as the person (the directory checks the password and its
    /// policy).
    #[default]
    Bind,
    /// Read the password hash with the service account and check it here.
    Compare,
}

/// `[directory.groups]`: how a person's groups are found.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    pub lookup: GroupLookup,
    /// Search: where groups are searched (default: `search.base`).
    pub base: Option<String>,
    /// Search: the filter that finds the person's groups.
    pub filter: Template<EntryFilter>,
    /// Search: the attribute that names a group.
    pub name_attribute: String,
    /// member_of: the person's attribute that lists their groups' DNs.
    pub member_of_attribute: String,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            lookup: GroupLookup::None,
            base: None,
            filter: Template::parse("(&(objectClass=groupOfNames)(member={dn}))")
                .expect("a valid default"),
            name_attribute: "cn".into(),
            member_of_attribute: "memberOf".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GroupLookup {
    /// Groups are not looked up.
    #[default]
    None,
    /// One search under `groups.base` with `groups.filter`.
    Search,
    /// The person's `memberOf` attribute (no extra search).
    MemberOf,
}

/// `[directory.static]`: people listed in the configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaticConfig {
    /// Accept `{PLAIN}` / `{CLEARTEXT}` passwords (refused by default).
    pub allow_plaintext: bool,
    pub users: Vec<StaticUser>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    /// `user@domain`, the login name.
    pub name: Account,
    /// A hashed password: `{SSHA}`, `{SSHA256}`, `{SSHA512}`, `{SHA*}`,
    /// bcrypt (`$2b$…`, `{BLF-CRYPT}`), argon2 (`$argon2id$…`). Unset: a
    /// person the helpers know about (a banner's name and phone) who cannot
    /// log in with a password.
    #[serde(default, deserialize_with = "de_stored")]
    pub password: Option<Stored>,
    #[serde(default)]
    pub disabled: bool,
    /// The secret READPLAIN returns (e.g. a SIP password).
    pub secret: Option<Secret>,
    /// Further mail addresses the person is found by (the name always is).
    #[serde(default)]
    pub mail: Vec<Account>,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, Vec<String>>,
}

impl<'de> Deserialize<'de> for GroupRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(GroupRef::new(&String::deserialize(d)?))
    }
}

impl<'de> Deserialize<'de> for Account {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Account::parse(s.as_bytes())
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a user@domain address")))
    }
}

/// Clear text is parsed here and refused in `validate` unless
/// `allow_plaintext` (a sibling key) allows it; it makes the file a
/// secret-holding one.
fn de_stored<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Stored>, D::Error> {
    let s = toml::Spanned::<String>::deserialize(d)?;
    let stored = Stored::parse(s.get_ref(), true).map_err(serde::de::Error::custom)?;
    if matches!(stored, Stored::Plain(_)) {
        cgp_runtime::config::holds_secret(s.span());
    }
    Ok(Some(stored))
}

fn de_scope<'de, D: Deserializer<'de>>(d: D) -> Result<Scope, D::Error> {
    match String::deserialize(d)?.as_str() {
        "base" => Ok(Scope::Base),
        "one" => Ok(Scope::One),
        "sub" => Ok(Scope::Sub),
        other => Err(serde::de::Error::custom(format!(
            "{other:?}: expected base, one or sub"
        ))),
    }
}

/// Domain keys are lower-cased, as account domains are.
fn de_domains<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, SearchConfig>, D::Error> {
    let mut out = BTreeMap::new();
    for (domain, search) in BTreeMap::<String, SearchConfig>::deserialize(d)? {
        let key = domain.to_lowercase();
        if out.insert(key.clone(), search).is_some() {
            return Err(serde::de::Error::custom(format!(
                "domain {key} is listed twice"
            )));
        }
    }
    Ok(out)
}

impl DirectoryConfig {
    /// The search for a domain (lower case, as in [`Account::domain`]).
    pub fn search_for(&self, domain: &str) -> &SearchConfig {
        self.domains.get(domain).unwrap_or(&self.search)
    }

    /// Rules between keys; `prefix` is the table's dotted key
    /// (`directory`).
    pub fn validate(&self, prefix: &str) -> Result<(), KeyError> {
        let key = |k: &str| format!("{prefix}.{k}");
        if self.cache.max_entries == 0 {
            return Err(KeyError::new(
                key("cache.max_entries"),
                "must be at least 1",
            ));
        }
        match self.kind {
            Kind::Static => {
                let mut seen = std::collections::HashSet::new();
                for (i, u) in self.static_file.users.iter().enumerate() {
                    if matches!(u.password, Some(Stored::Plain(_)))
                        && !self.static_file.allow_plaintext
                    {
                        return Err(KeyError::new(
                            key(&format!("static.users[{i}].password")),
                            super::password::PasswordError::Plaintext.to_string(),
                        ));
                    }
                    if !seen.insert(&u.name) {
                        return Err(KeyError::new(
                            key(&format!("static.users[{i}].name")),
                            format!("{} is listed twice", u.name),
                        ));
                    }
                }
            }
            Kind::Ldap => {
                self.ldap.validate(&key("ldap"))?;
                self.validate_search(&key("search"), &self.search)?;
                for (domain, s) in &self.domains {
                    self.validate_search(&key(&format!("domains.{domain}")), s)?;
                }
            }
            Kind::Sql => self.sql.validate(&key("sql"))?,
            Kind::MxProxy => match &self.mxproxy {
                None => {
                    return Err(KeyError::new(
                        key("mxproxy"),
                        "type = \"mxproxy\" needs this table",
                    ));
                }
                Some(m) => m
                    .check()
                    .map_err(|(k, m)| KeyError::new(key(&format!("mxproxy.{k}")), m))?,
            },
        }
        Ok(())
    }

    fn validate_search(&self, key: &str, s: &SearchConfig) -> Result<(), KeyError> {
        if s.base.is_empty() {
            return Err(KeyError::new(
                format!("{key}.base"),
                "the ldap back end needs a search base",
            ));
        }
        if s.mode == Mode::Compare && s.dn_template.is_some() {
            return Err(KeyError::new(
                format!("{key}.dn_template"),
                "the DN template is a bind-mode fast path; compare mode searches",
            ));
        }
        if !s.required_groups.is_empty() && self.groups.lookup == GroupLookup::None {
            return Err(KeyError::new(
                format!("{key}.required_groups"),
                "needs groups.lookup = \"search\" or \"member_of\"",
            ));
        }
        if s.mode == Mode::Compare && self.ldap.bind_dn.is_none() {
            return Err(KeyError::new(
                format!("{key}.mode"),
                "compare mode reads password hashes: set ldap.bind_dn",
            ));
        }
        Ok(())
    }

    /// Builds the directory: reads password files, computes the dummies of
    /// the static file (slow for bcrypt and argon2: call it off the async
    /// threads or accept the wait at start), opens no connection.
    /// `attributes` are what the helper's own settings read, on top of
    /// `directory.attributes`.
    pub fn open(&self, attributes: &[&str]) -> Result<Directory, DirectoryError> {
        let mut wanted: Vec<String> = self.attributes.clone();
        for a in attributes {
            if !wanted.iter().any(|w| w.eq_ignore_ascii_case(a)) {
                wanted.push(a.to_string());
            }
        }
        Ok(match self.kind {
            Kind::Static => Directory::with_backend(
                super::static_file::StaticDirectory::new(&self.static_file)?,
                &self.cache,
            ),
            Kind::Ldap => {
                Directory::with_backend(super::ldap::LdapDirectory::new(self, wanted)?, &self.cache)
            }
            // The queries' columns are the attributes.
            Kind::Sql => {
                Directory::with_backend(super::sql::SqlDirectory::new(&self.sql)?, &self.cache)
            }
            Kind::MxProxy => {
                let m = self.mxproxy.as_ref().ok_or_else(|| {
                    DirectoryError::Failed("type = \"mxproxy\" needs [directory.mxproxy]".into())
                })?;
                Directory::with_backend(
                    super::mxproxy::MxProxy::new(m, self.cache.max_entries)?,
                    &self.cache,
                )
            }
        })
    }
}
