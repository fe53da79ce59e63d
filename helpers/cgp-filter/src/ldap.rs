//! The [`Directory`] of the rules on the suite's LDAP back end: one search
//! for the person, one for their groups when a rule asks about groups.

use crate::config::DirectoryConfig;
use crate::directory::{Directory, Person, Unavailable};
use cgp_lookup::ldap::{self, Scope, escape_filter};
use std::sync::Arc;

pub struct LdapPeople {
    ldap: ldap::Directory,
    base: String,
    user_filter: String,
    /// Attributes read from a person's entry (lower-case).
    attributes: Vec<String>,
    /// `(base, filter, name attribute)` when some rule asks about groups.
    groups: Option<(String, String, String)>,
}

impl LdapPeople {
    /// `attributes` and `needs_groups` come from the compiled rules, so the
    /// directory is asked for no more than the rules use.
    pub fn new(
        cfg: &DirectoryConfig,
        attributes: impl IntoIterator<Item = String>,
        needs_groups: bool,
    ) -> Result<LdapPeople, String> {
        Ok(LdapPeople {
            ldap: ldap::Directory::new(&cfg.ldap)?,
            base: cfg.base.clone(),
            user_filter: cfg.user_filter.clone(),
            attributes: attributes.into_iter().collect(),
            groups: match (&cfg.group_base, needs_groups) {
                (Some(base), true) => Some((
                    base.clone(),
                    cfg.group_filter.clone(),
                    cfg.group_name_attribute.clone(),
                )),
                _ => None,
            },
        })
    }
}

/// Replaces `{name}` placeholders by values escaped for an LDAP filter.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(template.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{k}}}"), &escape_filter(v))
    })
}

fn unavailable(e: ldap::LdapError) -> Unavailable {
    // A server that answers with an error (a bad filter, a missing base)
    // cannot tell the rules anything either: same policy as a down one.
    Unavailable(e.to_string())
}

impl Directory for LdapPeople {
    async fn person(&self, address: &str) -> Result<Option<Arc<Person>>, Unavailable> {
        let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
        let filter = fill(
            &self.user_filter,
            &[("address", address), ("local", local), ("domain", domain)],
        );
        let attrs: Vec<&str> = self.attributes.iter().map(String::as_str).collect();
        // Without attributes, ask for none rather than for all of them.
        let attrs = if attrs.is_empty() { vec!["1.1"] } else { attrs };
        let mut found = self
            .ldap
            .search(&self.base, Scope::Sub, &filter, &attrs)
            .await
            .map_err(unavailable)?;
        if found.len() > 1 {
            tracing::warn!(%address, entries = found.len(), "several directory entries; the first by DN is used");
            found.sort_by(|a, b| a.dn.cmp(&b.dn));
        }
        let Some(entry) = found.into_iter().next() else {
            return Ok(None);
        };
        let mut groups = Vec::new();
        if let Some((base, filter, name)) = &self.groups {
            let filter = fill(filter, &[("dn", &entry.dn), ("address", address)]);
            for g in self
                .ldap
                .search(base, Scope::Sub, &filter, &[name.as_str()])
                .await
                .map_err(unavailable)?
            {
                groups.extend(g.all(name).iter().map(|n| n.to_lowercase()));
            }
            groups.sort();
        }
        Ok(Some(Arc::new(Person {
            dn: entry.dn,
            attributes: entry.attrs.into_iter().collect(),
            groups,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_escaped() {
        let f = fill(
            "(&(mail={address})(uid={local}))",
            &[("address", "a*)(uid=*@x.test"), ("local", "a*)(uid=*")],
        );
        assert_eq!(
            f,
            "(&(mail=a\\2a\\29\\28uid=\\2a@x.test)(uid=a\\2a\\29\\28uid=\\2a))"
        );
    }
}
