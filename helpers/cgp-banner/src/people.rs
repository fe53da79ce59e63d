//! What a banner shows about a person, read from the suite's one directory
//! (`cgp_lookup::directory`, configured under `[directory]`): `[attributes]`
//! says which attribute gives each value. The defaults follow the Asterisk
//! LDAP schema (`contrib/scripts/asterisk.ldap-schema`); static people carry
//! the same attribute names.

use cgp_lookup::directory::{GroupRef, Person};
use serde::Deserialize;

/// `[attributes]` of the banner's configuration.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Attributes {
    pub real_name: String,
    pub department: String,
    /// `box@context`; `AstVoicemailMailbox` holds the box alone.
    pub mailbox: String,
    pub extension: String,
    /// The extension's dialplan context; `default` when absent.
    pub context: String,
    /// `Name <exten>`: the extension when `extension` is absent.
    pub caller_id: String,
    /// The PBX name (`[[ami.servers]]`); unset or absent: the first server.
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

/// The context of an extension whose person names none.
const DEFAULT_CONTEXT: &str = "default";

impl Attributes {
    /// The attributes the directory must read for the banner.
    pub fn names(&self) -> Vec<&str> {
        let mut names = vec![
            self.real_name.as_str(),
            &self.department,
            &self.mailbox,
            &self.extension,
            &self.context,
            &self.caller_id,
        ];
        names.extend(self.pbx.as_deref());
        names
    }

    pub fn real_name<'p>(&self, p: &'p Person) -> Option<&'p str> {
        p.first(&self.real_name)
    }

    pub fn department<'p>(&self, p: &'p Person) -> Option<&'p str> {
        p.first(&self.department)
    }

    pub fn mailbox<'p>(&self, p: &'p Person) -> Option<&'p str> {
        p.first(&self.mailbox)
    }

    pub fn extension<'p>(&self, p: &'p Person) -> Option<&'p str> {
        p.first(&self.extension).or_else(|| {
            let (_, rest) = p.first(&self.caller_id)?.rsplit_once('<')?;
            rest.strip_suffix('>')
        })
    }

    pub fn context<'p>(&self, p: &'p Person) -> &'p str {
        p.first(&self.context).unwrap_or(DEFAULT_CONTEXT)
    }

    pub fn pbx<'p>(&self, p: &'p Person) -> Option<&'p str> {
        p.first(self.pbx.as_deref()?)
    }
}

/// Whether the person is in `group` (a name, or a group's DN).
pub fn in_group(person: Option<&Person>, group: &str) -> bool {
    person.is_some_and(|p| p.in_group(&GroupRef::new(group)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_from_the_named_attributes() {
        let a = Attributes::default();
        let mut p = Person::default();
        p.push_values("CN", ["Alice".to_string()]);
        p.push_values("astaccountcallerid", ["Alice <1001>".to_string()]);
        assert_eq!(a.real_name(&p), Some("Alice"));
        assert_eq!(a.extension(&p), Some("1001"), "from the caller id");
        assert_eq!(a.context(&p), "default");
        assert_eq!(a.pbx(&p), None);
        p.push_values("AstAccountName", ["1002".to_string()]);
        assert_eq!(a.extension(&p), Some("1002"), "the extension first");
    }
}
