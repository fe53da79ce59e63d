//! LDAP directory access for the helpers: a small pool of service connections
//! (searches, bound as the service account), a separate pool of connections
//! for user binds (a bind changes the identity of the whole connection),
//! failover across URIs with fail-back to the first, reconnect with backoff,
//! a WhoAmI probe on idle connections, and timeouts on every network step so
//! that a hung server yields [`LdapError::Unavailable`], never a hang.
//!
//! ldap3 has no pooling or reconnect by design (ldap3 issues #81, #96), hence
//! the pool here.

pub(crate) mod conn;
mod ppolicy;

use cgp_runtime::KeyError;
use cgp_runtime::config::{Secret, SecretFile};
use conn::{Pools, Purpose};
use serde::{Deserialize, Deserializer};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where and how to reach the directory. Embed it in a helper's config as a
/// `[ldap]` table; call [`LdapConfig::validate`] from the helper's
/// `HelperConfig::validate`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdapConfig {
    /// Server URIs (`ldap://`, `ldaps://`, `ldapi://`) in failover order; new
    /// connections always try the first one first (fail-back).
    #[serde(deserialize_with = "de_uris")]
    pub uris: Vec<String>,
    /// The service account for searches; anonymous when absent.
    pub bind_dn: Option<String>,
    /// The service account's password; never logged.
    pub bind_password: Option<Secret>,
    /// A file holding the service account's password (first line).
    pub bind_password_file: Option<SecretFile>,
    /// TCP connect plus TLS plus the service bind, per server tried.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// One LDAP operation (search, bind, probe).
    #[serde(with = "humantime_serde")]
    pub op_timeout: Duration,
    /// Upgrade `ldap://` connections with StartTLS.
    pub starttls: bool,
    /// Verify server certificates (LDAPS and StartTLS).
    pub tls_verify: bool,
    /// PEM file with the CA certificates to trust instead of the system ones.
    pub ca_file: Option<PathBuf>,
    /// Service connections (each multiplexes many searches).
    #[serde(deserialize_with = "de_positive")]
    pub pool_size: usize,
    /// Connections for user binds (one bind at a time on each).
    #[serde(deserialize_with = "de_positive")]
    pub bind_pool_size: usize,
    /// An idle connection is probed with WhoAmI before reuse after this long.
    #[serde(with = "humantime_serde")]
    pub idle_probe: Duration,
    /// Longest wait before retrying a server that failed; the wait starts at
    /// 100 ms and doubles on every further failure.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// A connection to a server other than the first is dropped after this
    /// long, so that the first server takes over again once it is back.
    #[serde(with = "humantime_serde")]
    pub failback_after: Duration,
}

impl Default for LdapConfig {
    fn default() -> Self {
        LdapConfig {
            uris: vec!["ldap://127.0.0.1:389".into()],
            bind_dn: None,
            bind_password: None,
            bind_password_file: None,
            connect_timeout: Duration::from_secs(3),
            op_timeout: Duration::from_secs(5),
            starttls: false,
            tls_verify: true,
            ca_file: None,
            pool_size: 4,
            bind_pool_size: 4,
            idle_probe: Duration::from_secs(30),
            max_backoff: Duration::from_secs(5),
            failback_after: Duration::from_secs(60),
        }
    }
}

// Hand-written so that the service password can never reach a log through
// `{:?}`.
impl fmt::Debug for LdapConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapConfig")
            .field("uris", &self.uris)
            .field("bind_dn", &self.bind_dn)
            .field(
                "bind_password",
                &self.bind_password.as_ref().map(|_| "(hidden)"),
            )
            .field("bind_password_file", &self.bind_password_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("op_timeout", &self.op_timeout)
            .field("starttls", &self.starttls)
            .field("tls_verify", &self.tls_verify)
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .field("bind_pool_size", &self.bind_pool_size)
            .field("idle_probe", &self.idle_probe)
            .field("max_backoff", &self.max_backoff)
            .field("failback_after", &self.failback_after)
            .finish()
    }
}

fn de_uris<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let uris = Vec::<String>::deserialize(d)?;
    if uris.is_empty() {
        return Err(serde::de::Error::custom("needs at least one URI"));
    }
    for uri in &uris {
        if !["ldap://", "ldaps://", "ldapi://"]
            .iter()
            .any(|s| uri.starts_with(s))
        {
            return Err(serde::de::Error::custom(format!(
                "{uri:?} is not an ldap://, ldaps:// or ldapi:// URI"
            )));
        }
    }
    Ok(uris)
}

fn de_positive<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

impl LdapConfig {
    /// Cross-key checks; `prefix` is the table's dotted key (e.g. `ldap`).
    pub fn validate(&self, prefix: &str) -> Result<(), KeyError> {
        let key = |k: &str| format!("{prefix}.{k}");
        if self.bind_password.is_some() && self.bind_password_file.is_some() {
            return Err(KeyError::new(
                key("bind_password_file"),
                "give bind_password or bind_password_file, not both",
            ));
        }
        if self.bind_dn.is_some()
            && self.bind_password.is_none()
            && self.bind_password_file.is_none()
        {
            return Err(KeyError::new(
                key("bind_dn"),
                "needs bind_password or bind_password_file",
            ));
        }
        if self.bind_dn.is_none()
            && (self.bind_password.is_some() || self.bind_password_file.is_some())
        {
            return Err(KeyError::new(
                key("bind_dn"),
                "a bind password is set but no bind_dn",
            ));
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("op_timeout", self.op_timeout),
            ("max_backoff", self.max_backoff),
        ] {
            if d.is_zero() {
                return Err(KeyError::new(key(name), "must be more than 0s"));
            }
        }
        Ok(())
    }
}

/// Checks that a search filter is well formed (RFC 4515), for configuration
/// checks before any server sees it.
pub fn check_filter(filter: &str) -> Result<(), String> {
    ldap3::parse_filter(filter)
        .map(drop)
        .map_err(|_| format!("{filter:?} is not a valid LDAP filter"))
}

/// Search scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Base,
    One,
    Sub,
}

impl From<Scope> for ldap3::Scope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Base => ldap3::Scope::Base,
            Scope::One => ldap3::Scope::OneLevel,
            Scope::Sub => ldap3::Scope::Subtree,
        }
    }
}

/// One search result. Attribute names are kept in lower case; use
/// [`Entry::first`] and [`Entry::all`], which ignore case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub dn: String,
    pub attrs: HashMap<String, Vec<String>>,
}

impl Entry {
    pub fn new(dn: String, attrs: HashMap<String, Vec<String>>) -> Entry {
        let attrs = attrs
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        Entry { dn, attrs }
    }

    /// The first value of an attribute.
    pub fn first(&self, attr: &str) -> Option<&str> {
        self.all(attr).first().map(String::as_str)
    }

    /// All values of an attribute (empty when absent).
    pub fn all(&self, attr: &str) -> &[String] {
        self.attrs
            .get(&attr.to_ascii_lowercase())
            .map_or(&[], Vec::as_slice)
    }
}

/// Why an operation gave no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LdapError {
    /// No server answered in time (down, hung, refusing, busy).
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    /// A server answered with an error (bad filter, no such base, refused
    /// service bind...).
    #[error("directory error: {0}")]
    Other(String),
}

/// The verdict of a user bind. Password-policy answers come from the
/// OpenLDAP ppolicy response control, or from the Active Directory
/// diagnostic sub-codes (`data 775` and friends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindOutcome {
    Ok,
    InvalidCredentials,
    /// Locked out by the password policy.
    Locked,
    /// The password has expired.
    Expired,
    /// The password was reset and must be changed before use.
    MustChange,
    /// The account is disabled or expired.
    Disabled,
    /// Logon not permitted now or from here.
    NotPermitted,
}

/// A directory: cheap to clone, connects lazily.
#[derive(Clone)]
pub struct Directory {
    pools: Arc<Pools>,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("uris", &self.pools.uris())
            .finish()
    }
}

impl Directory {
    /// Builds the pools; reads `bind_password_file` and `ca_file`, but opens
    /// no connection.
    pub fn new(cfg: &LdapConfig) -> Result<Directory, String> {
        Ok(Directory {
            pools: Arc::new(Pools::new(cfg)?),
        })
    }

    /// Searches on a service connection.
    pub async fn search(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<Entry>, LdapError> {
        self.pools.search(base, scope, filter, attrs).await
    }

    /// Checks a password with a simple bind as `dn` on a bind connection. An
    /// empty password or DN is refused without asking the server: LDAP treats
    /// such a bind as anonymous and would report success (RFC 4513 §5.1.2).
    pub async fn check_password(
        &self,
        dn: &str,
        password: &[u8],
    ) -> Result<BindOutcome, LdapError> {
        if dn.is_empty() || password.is_empty() {
            return Ok(BindOutcome::InvalidCredentials);
        }
        // ldap3 takes the password as &str; a password that is not UTF-8
        // cannot be sent, and cannot be anybody's directory password either.
        let Ok(password) = std::str::from_utf8(password) else {
            return Ok(BindOutcome::InvalidCredentials);
        };
        self.pools.user_bind(dn, password).await
    }

    /// Opens a service connection now, so that a configuration error
    /// shows at start rather than on the first request.
    pub async fn probe(&self) -> Result<(), LdapError> {
        self.pools.probe(Purpose::Service).await
    }
}
