//! The configuration file of `cgp-auth` (TOML). Single values are checked
//! while deserializing, so errors carry a line number; rules between keys are
//! checked in `validate`.

use crate::hash::Stored;
use cgp_lookup::cgp_cli::CliConfig;
use cgp_lookup::ldap::{LdapConfig, Scope, check_filter};
use cgp_runtime::config::{HelperConfig, KeyError, LogConfig, RuntimeConfig};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    /// Where users and passwords live.
    pub backend: BackendKind,
    /// Tell "account locked", "password expired", "account disabled" and
    /// "not permitted" apart in ERROR replies (CGP shows the text to the
    /// user); otherwise every refusal reads "invalid credentials".
    pub detailed_errors: bool,
    /// Answer READPLAIN from the directory (off: `FAILURE "not supported"`).
    pub readplain: bool,
    #[serde(rename = "static")]
    pub static_users: StaticConfig,
    pub ldap: LdapConfig,
    /// How users are found in the directory, for every domain not listed in
    /// `domains`.
    pub lookup: Lookup,
    /// Per-domain lookups (each a complete `lookup` table).
    pub domains: BTreeMap<String, Lookup>,
    pub cache: CacheConfig,
    pub throttle: ThrottleConfig,
    pub provision: ProvisionConfig,
    pub store: StoreConfig,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Users listed in this file (`[[static.users]]`).
    #[default]
    Static,
    Ldap,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaticConfig {
    /// Accept `{PLAIN}` / `{CLEARTEXT}` passwords (refused by default).
    pub allow_plaintext: bool,
    pub users: Vec<StaticUser>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    /// `user@domain`.
    #[serde(deserialize_with = "de_address")]
    pub name: String,
    /// A hashed password: `{SSHA}`, `{SSHA256}`, `{SSHA512}`, `{SHA*}`,
    /// bcrypt (`$2b$…`, `{BLF-CRYPT}`), argon2 (`$argon2id$…`).
    pub password: String,
    #[serde(default)]
    pub disabled: bool,
    /// The secret READPLAIN returns (e.g. a SIP password).
    pub secret: Option<String>,
    /// Directory-style attributes for account provisioning (NEW).
    #[serde(default)]
    pub attributes: BTreeMap<String, Vec<String>>,
}

/// How to find a user and decide whether they may log in.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lookup {
    /// Search base.
    pub base: String,
    #[serde(deserialize_with = "de_scope")]
    pub scope: Scope,
    /// Search filter; `{user}`, `{domain}` and `{email}` are replaced by the
    /// escaped local part, domain and whole address.
    #[serde(deserialize_with = "de_filter")]
    pub filter: String,
    /// The fast path: bind straight to this DN (same placeholders, escaped
    /// for DNs) without a search. Bind mode only.
    pub dn_template: Option<String>,
    pub mode: Mode,
    /// Compare mode: the attribute that holds the password hash.
    pub password_attribute: String,
    /// The entry must also match this filter.
    #[serde(deserialize_with = "de_opt_filter")]
    pub access_filter: Option<String>,
    /// The entry must be a member of one of these groups (DNs).
    pub groups: Vec<String>,
    pub group_check: GroupCheck,
    /// Group search: this filter, `{dn}` replaced by the user's escaped DN,
    /// searched at each group's DN.
    #[serde(deserialize_with = "de_filter")]
    pub group_filter: String,
    /// memberOf check: the user attribute that lists groups.
    pub member_of_attribute: String,
    /// READPLAIN answers from this attribute (e.g. `AstAccountSecret`).
    pub readplain_attribute: Option<String>,
}

impl Default for Lookup {
    fn default() -> Self {
        Lookup {
            base: String::new(),
            scope: Scope::Sub,
            filter: "(&(objectClass=inetOrgPerson)(uid={user}))".into(),
            dn_template: None,
            mode: Mode::Bind,
            password_attribute: "userPassword".into(),
            access_filter: None,
            groups: Vec::new(),
            group_check: GroupCheck::Search,
            group_filter: "(member={dn})".into(),
            member_of_attribute: "memberOf".into(),
            readplain_attribute: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Bind as the user (the directory checks the password and its policy).
    #[default]
    Bind,
    /// Read the password hash with the service account and check it here.
    Compare,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GroupCheck {
    /// Search each group for a member value equal to the user's DN.
    #[default]
    Search,
    /// Read the user's memberOf attribute.
    MemberOf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long a successful check answers from the cache (0s: never).
    #[serde(with = "humantime_serde")]
    pub positive_ttl: Duration,
    /// How long a wrong password answers from the cache (0s: never).
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// While the directory is unavailable, entries up to this long past
    /// their TTL still answer (0s: off).
    #[serde(with = "humantime_serde")]
    pub stale_window: Duration,
    /// Search-then-bind: how long the DN a search found for a user is
    /// bound to again without searching (0s: always search). Memory only,
    /// emptied on reload.
    #[serde(with = "humantime_serde")]
    pub dn_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            positive_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(60),
            stale_window: Duration::ZERO,
            dn_ttl: Duration::ZERO,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    pub enabled: bool,
    /// The delay after the first failure; it doubles with each further one.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Failures older than this are forgotten.
    #[serde(with = "humantime_serde")]
    pub reset_after: Duration,
    /// Client networks never delayed.
    pub trusted_networks: Vec<IpNet>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            enabled: true,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            reset_after: Duration::from_secs(900),
            trusted_networks: vec![
                "127.0.0.0/8".parse().expect("valid net"),
                "::1/128".parse().expect("valid net"),
            ],
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionConfig {
    /// Create accounts for NEW requests (off: NEW is refused).
    pub enabled: bool,
    /// CGP account setting ← directory attribute (first value).
    pub settings: BTreeMap<String, String>,
    /// Account aliases come from this attribute's addresses in the
    /// account's domain.
    pub aliases_attribute: Option<String>,
    pub cli: CliConfig,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        ProvisionConfig {
            enabled: false,
            settings: BTreeMap::from([("RealName".to_string(), "cn".to_string())]),
            aliases_attribute: Some("mail".into()),
            cli: CliConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The sled directory for the cache and throttling state; without it
    /// both live in memory only.
    pub path: Option<PathBuf>,
}

fn de_address<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.split_once('@') {
        Some((u, dom)) if !u.is_empty() && !dom.is_empty() && !dom.contains('@') => {
            Ok(s.to_ascii_lowercase())
        }
        _ => Err(serde::de::Error::custom(format!(
            "{s:?} is not a user@domain address"
        ))),
    }
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

/// A filter template must parse once its placeholders are filled.
fn check_template(f: &str) -> Result<(), String> {
    let sample = f
        .replace("{user}", "u")
        .replace("{domain}", "d")
        .replace("{email}", "u@d")
        .replace("{dn}", "cn=x");
    check_filter(&sample)
}

fn de_filter<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_template(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

fn de_opt_filter<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_filter(d).map(Some)
}

impl AuthConfig {
    /// The lookup for a domain.
    pub fn lookup_for(&self, domain: &str) -> &Lookup {
        self.domains.get(domain).unwrap_or(&self.lookup)
    }

    fn validate_lookup(&self, key: &str, l: &Lookup) -> Result<(), KeyError> {
        if l.base.is_empty() {
            return Err(KeyError::new(
                format!("{key}.base"),
                "the ldap back end needs a search base",
            ));
        }
        if l.mode == Mode::Compare && l.dn_template.is_some() {
            return Err(KeyError::new(
                format!("{key}.dn_template"),
                "the DN template is a bind-mode fast path; compare mode searches",
            ));
        }
        if l.mode == Mode::Compare && self.ldap.bind_dn.is_none() {
            return Err(KeyError::new(
                format!("{key}.mode"),
                "compare mode reads password hashes: set ldap.bind_dn",
            ));
        }
        Ok(())
    }
}

impl HelperConfig for AuthConfig {
    fn runtime(&self) -> &RuntimeConfig {
        &self.runtime
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn validate(&self) -> Result<(), KeyError> {
        match self.backend {
            BackendKind::Static => {
                let mut seen = std::collections::HashSet::new();
                for (i, u) in self.static_users.users.iter().enumerate() {
                    let key = format!("static.users[{i}].password");
                    Stored::parse(&u.password, self.static_users.allow_plaintext)
                        .map_err(|e| KeyError::new(key, e))?;
                    if !seen.insert(&u.name) {
                        return Err(KeyError::new(
                            format!("static.users[{i}].name"),
                            format!("{} is listed twice", u.name),
                        ));
                    }
                }
            }
            BackendKind::Ldap => {
                self.ldap.validate("ldap")?;
                self.validate_lookup("lookup", &self.lookup)?;
                for (domain, l) in &self.domains {
                    self.validate_lookup(&format!("domains.{domain}"), l)?;
                }
            }
        }
        let t = &self.throttle;
        if t.enabled && (t.initial_delay.is_zero() || t.max_delay < t.initial_delay) {
            return Err(KeyError::new(
                "throttle.max_delay",
                "needs 0 < initial_delay <= max_delay",
            ));
        }
        if self.provision.enabled {
            let c = &self.provision.cli;
            if c.password.is_none() == c.password_file.is_none() {
                return Err(KeyError::new(
                    "provision.cli.password",
                    "give exactly one of password and password_file",
                ));
            }
        }
        Ok(())
    }
}
