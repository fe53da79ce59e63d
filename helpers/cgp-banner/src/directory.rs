//! Where a user's name, department, groups, mailbox and extension come from.
//! Behind a trait so that an LDAP directory (Asterisk schema attributes
//! `AstAccountMailbox`, `AstVoicemailMailbox`, `AstAccountCallerID`) can sit
//! next to the static map of the configuration.

use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

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

pub type Lookup<'a> = Pin<Box<dyn Future<Output = Result<Option<Person>, String>> + Send + 'a>>;

/// A source of [`Person`] records. `Ok(None)`: no such user; `Err`: the
/// directory could not be asked (the banner then falls back to its default).
pub trait Directory: Send + Sync {
    fn lookup<'a>(&'a self, account: &'a str) -> Lookup<'a>;
}

/// The `[directory.users]` map of the configuration, keyed by lower-case
/// `user@domain`.
pub struct StaticDirectory {
    users: HashMap<String, Person>,
}

impl StaticDirectory {
    pub fn new(users: &HashMap<String, Person>) -> StaticDirectory {
        StaticDirectory {
            users: users
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.clone()))
                .collect(),
        }
    }
}

impl Directory for StaticDirectory {
    fn lookup<'a>(&'a self, account: &'a str) -> Lookup<'a> {
        Box::pin(std::future::ready(Ok(self.users.get(account).cloned())))
    }
}
