//! Where a user's name, department, groups, mailbox and extension come from.
//! Behind a trait so that an LDAP directory (Asterisk schema attributes
//! `AstAccountMailbox`, `AstVoicemailMailbox`, `AstAccountCallerID`) can sit
//! next to the static map of the configuration.

use cgp_lookup::ldap::{self, LdapConfig, Scope, escape_filter};
use cgp_runtime::sync;
use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the banner needs to know about one user.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Person {
    pub real_name: Option<String>,
    pub department: Option<String>,
    /// Groups an announcement can target.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Voicemail box, `box@context`.
    pub mailbox: Option<String>,
    /// Extension whose hint state is shown.
    pub extension: Option<String>,
    /// Dialplan context of the extension's hint.
    #[serde(default = "default_context")]
    pub context: String,
    /// The `[[ami.servers]]` name of the user's PBX; the first server when
    /// unset.
    pub pbx: Option<String>,
}

fn default_context() -> String {
    "default".into()
}

/// Entries are shared, not copied, between the directory and requests.
pub type Found = Option<Arc<Person>>;

pub type Lookup<'a> = Pin<Box<dyn Future<Output = Result<Found, String>> + Send + 'a>>;

/// A source of [`Person`] records. `Ok(None)`: no such user; `Err`: the
/// directory could not be asked (the banner then falls back to its default).
pub trait Directory: Send + Sync {
    fn lookup<'a>(&'a self, account: &'a str) -> Lookup<'a>;
}

/// The `[directory.users]` map of the configuration, keyed by lower-case
/// `user@domain`.
pub struct StaticDirectory {
    users: HashMap<String, Arc<Person>>,
}

impl StaticDirectory {
    pub fn new(users: &HashMap<String, Person>) -> StaticDirectory {
        StaticDirectory {
            users: users
                .iter()
                .map(|(k, v)| (k.to_lowercase(), Arc::new(v.clone())))
                .collect(),
        }
    }
}

impl Directory for StaticDirectory {
    fn lookup<'a>(&'a self, account: &'a str) -> Lookup<'a> {
        Box::pin(std::future::ready(Ok(self.users.get(account).cloned())))
    }
}

/// `[directory.ldap]`: users searched in LDAP, for accounts the static map
/// does not list.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSource {
    /// Connection settings (`uris`, `bind_dn`, timeouts…).
    #[serde(default)]
    pub server: LdapConfig,
    /// Where users are searched.
    pub base: String,
    /// `{account}`, `{user}` and `{domain}` are replaced by the request's
    /// values, escaped for LDAP filters.
    #[serde(default = "default_filter")]
    pub filter: String,
    #[serde(default)]
    pub scope: SearchScope,
    /// Where `groupOfNames` entries listing the user as `member` are
    /// searched, for announcements by group; unset: no groups.
    #[serde(default)]
    pub group_base: Option<String>,
    /// How long an entry (or its absence) is reused.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    #[serde(default)]
    pub attributes: Attributes,
}

fn default_filter() -> String {
    "(mail={account})".into()
}

fn default_ttl() -> Duration {
    Duration::from_secs(300)
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SearchScope {
    Base,
    One,
    #[default]
    Sub,
}

/// Which attribute gives each value; defaults follow the Asterisk LDAP
/// schema (`contrib/scripts/asterisk.ldap-schema`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Attributes {
    pub real_name: String,
    pub department: String,
    /// `box@context`; `AstVoicemailMailbox` holds the box alone.
    pub mailbox: String,
    pub extension: String,
    pub context: String,
    /// `Name <exten>`: the extension when `extension` is absent.
    pub caller_id: String,
    /// The `[[ami.servers]]` name; unset: the first server.
    pub pbx: Option<String>,
}

impl Default for Attributes {
    fn default() -> Self {
        Attributes {
            real_name: "cn".into(),
            department: "departmentNumber".into(),
            mailbox: "AstAccountMailbox".into(),
            extension: "AstAccountName".into(),
            context: "AstAccountContext".into(),
            caller_id: "AstAccountCallerID".into(),
            pbx: None,
        }
    }
}

impl LdapSource {
    /// Cross-key checks for `HelperConfig::validate`.
    pub fn validate(&self) -> Result<(), cgp_runtime::KeyError> {
        use cgp_runtime::KeyError;
        self.server.validate("directory.ldap.server")?;
        let sample = fill(&self.filter, "u@d");
        ldap::check_filter(&sample).map_err(|e| KeyError::new("directory.ldap.filter", e))?;
        if self.cache_ttl.is_zero() {
            return Err(KeyError::new(
                "directory.ldap.cache_ttl",
                "must be more than 0s",
            ));
        }
        Ok(())
    }
}

/// The filter with the account's parts put in, escaped.
fn fill(filter: &str, account: &str) -> String {
    let (user, domain) = account.rsplit_once('@').unwrap_or((account, ""));
    filter
        .replace("{account}", &escape_filter(account))
        .replace("{user}", &escape_filter(user))
        .replace("{domain}", &escape_filter(domain))
}

/// Users from LDAP, cached for `cache_ttl` (absence included; failures are
/// not cached, so the next request asks again).
pub struct LdapDirectory {
    dir: ldap::Directory,
    source: LdapSource,
    cache: Mutex<HashMap<String, (Instant, Found)>>,
}

impl LdapDirectory {
    pub fn new(source: &LdapSource) -> Result<LdapDirectory, String> {
        Ok(LdapDirectory {
            dir: ldap::Directory::new(&source.server)?,
            source: source.clone(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn cached(&self, account: &str) -> Option<Found> {
        let cache = sync::lock(&self.cache);
        cache
            .get(account)
            .filter(|(at, _)| at.elapsed() < self.source.cache_ttl)
            .map(|(_, p)| p.clone())
    }

    async fn fetch(&self, account: &str) -> Result<Found, String> {
        let a = &self.source.attributes;
        let mut wanted = vec![
            a.real_name.as_str(),
            &a.department,
            &a.mailbox,
            &a.extension,
            &a.context,
            &a.caller_id,
        ];
        wanted.extend(a.pbx.as_deref());
        let scope = match self.source.scope {
            SearchScope::Base => Scope::Base,
            SearchScope::One => Scope::One,
            SearchScope::Sub => Scope::Sub,
        };
        let filter = fill(&self.source.filter, account);
        let found = self
            .dir
            .search(&self.source.base, scope, &filter, &wanted)
            .await
            .map_err(|e| e.to_string())?;
        // Two entries for one address: refuse to guess whose data to show.
        let [entry] = found.as_slice() else {
            return Ok(None);
        };
        let groups = match &self.source.group_base {
            Some(base) => {
                let filter = format!(
                    "(&(objectClass=groupOfNames)(member={}))",
                    escape_filter(&entry.dn)
                );
                self.dir
                    .search(base, Scope::Sub, &filter, &["cn"])
                    .await
                    .map_err(|e| e.to_string())?
                    .iter()
                    .filter_map(|g| g.first("cn").map(str::to_string))
                    .collect()
            }
            None => Vec::new(),
        };
        let get = |attr: &str| entry.first(attr).map(str::to_string);
        let extension = get(&a.extension).or_else(|| {
            let cid = entry.first(&a.caller_id)?;
            let (_, rest) = cid.rsplit_once('<')?;
            rest.strip_suffix('>').map(str::to_string)
        });
        Ok(Some(Arc::new(Person {
            real_name: get(&a.real_name),
            department: get(&a.department),
            groups,
            mailbox: get(&a.mailbox),
            extension,
            context: get(&a.context).unwrap_or_else(default_context),
            pbx: a.pbx.as_deref().and_then(get),
        })))
    }
}

impl Directory for LdapDirectory {
    fn lookup<'a>(&'a self, account: &'a str) -> Lookup<'a> {
        Box::pin(async move {
            if let Some(hit) = self.cached(account) {
                return Ok(hit);
            }
            let person = self.fetch(account).await?;
            sync::lock(&self.cache).insert(account.to_string(), (Instant::now(), person.clone()));
            Ok(person)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(
            fill("(mail={account})", "a*)(uid=*@x"),
            "(mail=a\\2a\\29\\28uid=\\2a@x)"
        );
        assert_eq!(
            fill("(&(uid={user})(o={domain}))", "bob@example.com"),
            "(&(uid=bob)(o=example.com))"
        );
    }
}
