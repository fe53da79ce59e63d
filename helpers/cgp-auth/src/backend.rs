//! Where users live: the static list in the configuration file, or an LDAP
//! directory.

use crate::config::{AuthConfig, BackendKind, GroupCheck, Lookup, Mode};
use crate::hash::{self, Stored};
use crate::wire::Account;
use cgp_lookup::ldap::{BindOutcome, Directory, Entry, LdapError, Scope, escape_dn, escape_filter};
use cgp_runtime::sync;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Users whose DN is remembered (`cache.dn_ttl`); a full map is emptied.
const DN_CACHE_ENTRIES: usize = 32 * 1024;

/// The back end's verdict on a password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Wrong password or no such user (never told apart to the client).
    Invalid,
    Locked,
    Expired,
    MustChange,
    Disabled,
    NotPermitted,
}

impl Verdict {
    /// The ERROR text when details may be shown.
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

/// A user found for NEW or READPLAIN, with whether the access rules let
/// them in.
pub struct Found {
    pub entry: Entry,
    pub permitted: bool,
}

pub struct StaticUser {
    stored: Stored,
    disabled: bool,
    secret: Option<String>,
    entry: Entry,
}

pub enum Backend {
    Static(Box<StaticBackend>),
    Ldap(Box<LdapBackend>),
}

pub struct StaticBackend {
    users: HashMap<String, StaticUser>,
    /// What an unknown user's password is checked against, so that the
    /// reply takes as long as for a known user with a wrong password (the
    /// time must not tell which users exist). `None` with no users at all.
    dummy: Option<Stored>,
}

pub struct LdapBackend {
    dir: Directory,
    config: Arc<AuthConfig>,
    /// The first RDN of a DN no entry has (a random name), bound with the
    /// given password when a search finds no user, so that an unknown
    /// user costs the same bind as a wrong password.
    absent_rdn: String,
    /// Compare mode: the last stored password value read from the
    /// directory, checked against when no user is found (same reason;
    /// until one is seen, an `{SSHA}` value, the OpenLDAP default).
    compare_dummy: Mutex<Stored>,
    /// Search-then-bind with `cache.dn_ttl`: address -> (DN, when found).
    dns: Mutex<HashMap<String, (String, Instant)>>,
}

/// The scheme and cost of a stored value: users of one scheme take one
/// time to check.
fn scheme_of(stored: &Stored) -> String {
    match stored {
        Stored::Sha { alg, salt, .. } => format!("{alg:?}/{}", salt.len()),
        // `$2b$12$`: variant and cost.
        Stored::Bcrypt(h) => h.chars().take(7).collect(),
        // `$argon2id$v=19$m=19456,t=2,p=1$`: everything before the salt.
        Stored::Argon2(h) => h.rsplitn(3, '$').last().unwrap_or_default().to_string(),
        Stored::Plain(_) => "plain".into(),
    }
}

/// The dummy for unknown users: a stored value of the scheme most users
/// have. Its password is somebody's, but an unknown user's verdict is
/// "invalid" whatever the check says: only its cost matters.
fn dummy_of<'a>(stored: impl Iterator<Item = &'a Stored>) -> Option<Stored> {
    let mut by_scheme: HashMap<String, (usize, &Stored)> = HashMap::new();
    for s in stored {
        by_scheme.entry(scheme_of(s)).or_insert((0, s)).0 += 1;
    }
    by_scheme
        .into_values()
        .max_by_key(|(n, _)| *n)
        .map(|(_, s)| s.clone())
}

impl Backend {
    pub fn new(config: &Arc<AuthConfig>) -> Result<Backend, String> {
        match config.backend {
            BackendKind::Static => {
                let mut users = HashMap::new();
                for u in &config.static_users.users {
                    let stored = Stored::parse(&u.password, config.static_users.allow_plaintext)
                        .map_err(|e| format!("static user {}: {e}", u.name))?;
                    let attrs = u
                        .attributes
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    users.insert(
                        u.name.clone(),
                        StaticUser {
                            stored,
                            disabled: u.disabled,
                            secret: u.secret.clone(),
                            entry: Entry::new(u.name.clone(), attrs),
                        },
                    );
                }
                let dummy = dummy_of(users.values().map(|u: &StaticUser| &u.stored));
                Ok(Backend::Static(Box::new(StaticBackend { users, dummy })))
            }
            // A reload builds new pools (the old ones close when their last
            // request finishes): connecting again costs little, and it picks
            // up a changed password file too.
            BackendKind::Ldap => {
                let mut nonce = [0u8; 8];
                getrandom::fill(&mut nonce).map_err(|e| format!("random source: {e}"))?;
                let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
                Ok(Backend::Ldap(Box::new(LdapBackend {
                    dir: Directory::new(&config.ldap)?,
                    config: config.clone(),
                    absent_rdn: format!("cn=cgp-auth-no-such-user-{nonce}"),
                    compare_dummy: Mutex::new(
                        Stored::parse("{SSHA}AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", false)
                            .expect("a well-formed {SSHA} value"),
                    ),
                    dns: Mutex::new(HashMap::new()),
                })))
            }
        }
    }

    pub async fn verify(&self, account: &Account, password: &[u8]) -> Result<Verdict, LdapError> {
        match self {
            Backend::Static(b) => {
                let Some(u) = b.users.get(&account.address()) else {
                    if let Some(dummy) = &b.dummy {
                        hash::verify(dummy.clone(), password.to_vec()).await;
                    }
                    return Ok(Verdict::Invalid);
                };
                if !hash::verify(u.stored.clone(), password.to_vec()).await {
                    return Ok(Verdict::Invalid);
                }
                Ok(if u.disabled {
                    Verdict::Disabled
                } else {
                    Verdict::Ok
                })
            }
            Backend::Ldap(l) => l.verify(account, password).await,
        }
    }

    /// The user's entry for NEW; `None` when not in the directory.
    pub async fn find(
        &self,
        account: &Account,
        attrs: &[&str],
    ) -> Result<Option<Found>, LdapError> {
        match self {
            Backend::Static(b) => Ok(b.users.get(&account.address()).map(|u| Found {
                entry: u.entry.clone(),
                permitted: !u.disabled,
            })),
            Backend::Ldap(l) => l.find(account, attrs).await,
        }
    }

    /// The clear secret for READPLAIN: `Ok(None)` for an unknown or not
    /// permitted user, `Ok(Some(None))` when the user has none.
    pub async fn secret(&self, account: &Account) -> Result<Option<Option<String>>, LdapError> {
        match self {
            Backend::Static(b) => Ok(b
                .users
                .get(&account.address())
                .filter(|u| !u.disabled)
                .map(|u| u.secret.clone())),
            Backend::Ldap(l) => {
                let lookup = l.config.lookup_for(&account.domain);
                let Some(attr) = lookup.readplain_attribute.as_deref() else {
                    return Ok(Some(None));
                };
                Ok(l.find(account, &[attr])
                    .await?
                    .filter(|f| f.permitted)
                    .map(|f| f.entry.first(attr).map(str::to_string)))
            }
        }
    }
}

/// Fills `{user}`, `{domain}` and `{email}` with escaped values.
fn fill(template: &str, account: &Account, escape: fn(&str) -> String) -> String {
    let mut out = template.to_string();
    // Only the placeholders present are escaped and replaced: this runs for
    // every directory request.
    for (name, value) in [
        ("{user}", account.user.as_str()),
        ("{domain}", account.domain.as_str()),
    ] {
        if out.contains(name) {
            out = out.replace(name, &escape(value));
        }
    }
    if out.contains("{email}") {
        out = out.replace("{email}", &escape(&account.address()));
    }
    out
}

impl LdapBackend {
    async fn search_user(
        &self,
        lookup: &Lookup,
        account: &Account,
        attrs: &[&str],
    ) -> Result<Option<Entry>, LdapError> {
        let filter = fill(&lookup.filter, account, escape_filter);
        let mut wanted: Vec<&str> = attrs.to_vec();
        if lookup.group_check == GroupCheck::MemberOf && !lookup.groups.is_empty() {
            wanted.push(&lookup.member_of_attribute);
        }
        if wanted.is_empty() {
            // "1.1": no attributes (RFC 4511 §4.5.1.8).
            wanted.push("1.1");
        }
        let mut entries = self
            .dir
            .search(&lookup.base, lookup.scope, &filter, &wanted)
            .await?;
        match entries.len() {
            0 => Ok(None),
            1 => Ok(entries.pop()),
            n => {
                // An ambiguous name must never log in as "one of them".
                tracing::warn!(account = %account.address(), entries = n, "filter matches several entries; refused");
                Ok(None)
            }
        }
    }

    /// Whether the entry passes the access filter and the group rule.
    async fn permitted(&self, lookup: &Lookup, entry: &Entry) -> Result<bool, LdapError> {
        if let Some(f) = &lookup.access_filter {
            let hits = self.dir.search(&entry.dn, Scope::Base, f, &["1.1"]).await?;
            if hits.is_empty() {
                return Ok(false);
            }
        }
        if lookup.groups.is_empty() {
            return Ok(true);
        }
        match lookup.group_check {
            GroupCheck::MemberOf => {
                let member_of = if entry
                    .attrs
                    .contains_key(&lookup.member_of_attribute.to_ascii_lowercase())
                {
                    entry.all(&lookup.member_of_attribute).to_vec()
                } else {
                    // The fast path has no entry attributes yet.
                    let e = self
                        .dir
                        .search(
                            &entry.dn,
                            Scope::Base,
                            "(objectClass=*)",
                            &[&lookup.member_of_attribute],
                        )
                        .await?;
                    e.first()
                        .map(|e| e.all(&lookup.member_of_attribute).to_vec())
                        .unwrap_or_default()
                };
                Ok(lookup
                    .groups
                    .iter()
                    .any(|g| member_of.iter().any(|m| same_dn(m, g))))
            }
            GroupCheck::Search => {
                let filter = lookup
                    .group_filter
                    .replace("{dn}", &escape_filter(&entry.dn));
                for g in &lookup.groups {
                    match self.dir.search(g, Scope::Base, &filter, &["1.1"]).await {
                        Ok(hits) if !hits.is_empty() => return Ok(true),
                        Ok(_) => {}
                        // A group that does not exist has no members.
                        Err(LdapError::Other(e)) => {
                            tracing::warn!(group = %g, error = %e, "group search failed")
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(false)
            }
        }
    }

    /// Bind mode without a DN template: the user's entry and the bind's
    /// verdict, `None` for no such user (after the same bind a wrong
    /// password costs, so that the time tells nothing).
    async fn search_then_bind(
        &self,
        lookup: &Lookup,
        account: &Account,
        password: &[u8],
    ) -> Result<Option<(Entry, Verdict)>, LdapError> {
        let remembered = self.known_dn(account);
        if let Some(dn) = &remembered {
            let v = Verdict::from(self.dir.check_password(dn, password).await?);
            if v != Verdict::Invalid {
                return Ok(Some((Entry::new(dn.clone(), HashMap::new()), v)));
            }
            // A wrong password, or the user's DN changed: a search tells.
        }
        let Some(entry) = self.search_user(lookup, account, &[]).await? else {
            sync::lock(&self.dns).remove(&account.address());
            if remembered.is_none() {
                // A DN that does not exist: its answer (invalid
                // credentials, or an error) changes nothing.
                let absent = format!("{},{}", self.absent_rdn, lookup.base);
                if let Err(e) = self.dir.check_password(&absent, password).await {
                    tracing::debug!(error = %e, "bind for an unknown user failed");
                }
            }
            return Ok(None);
        };
        self.remember_dn(account, &entry.dn);
        if remembered.as_deref() == Some(entry.dn.as_str()) {
            // That DN refused this password a moment ago.
            return Ok(Some((entry, Verdict::Invalid)));
        }
        let v = Verdict::from(self.dir.check_password(&entry.dn, password).await?);
        Ok(Some((entry, v)))
    }

    /// The user's DN from an earlier search, while `cache.dn_ttl` allows.
    fn known_dn(&self, account: &Account) -> Option<String> {
        let ttl = self.config.cache.dn_ttl;
        if ttl.is_zero() {
            return None;
        }
        sync::lock(&self.dns)
            .get(&account.address())
            .filter(|(_, found)| found.elapsed() < ttl)
            .map(|(dn, _)| dn.clone())
    }

    fn remember_dn(&self, account: &Account, dn: &str) {
        if self.config.cache.dn_ttl.is_zero() {
            return;
        }
        let mut dns = sync::lock(&self.dns);
        if dns.len() >= DN_CACHE_ENTRIES {
            // Expired entries first; a map full of live ones starts over.
            let ttl = self.config.cache.dn_ttl;
            dns.retain(|_, (_, found)| found.elapsed() < ttl);
            if dns.len() >= DN_CACHE_ENTRIES {
                dns.clear();
            }
        }
        dns.insert(account.address(), (dn.to_string(), Instant::now()));
    }

    async fn verify(&self, account: &Account, password: &[u8]) -> Result<Verdict, LdapError> {
        let lookup = self.config.lookup_for(&account.domain);
        let (entry, verdict) = match (lookup.mode, &lookup.dn_template) {
            (Mode::Bind, Some(template)) => {
                let dn = fill(template, account, escape_dn);
                let v = Verdict::from(self.dir.check_password(&dn, password).await?);
                (Entry::new(dn, HashMap::new()), v)
            }
            (Mode::Bind, None) => match self.search_then_bind(lookup, account, password).await? {
                Some(found) => found,
                None => return Ok(Verdict::Invalid),
            },
            (Mode::Compare, _) => {
                let attr = lookup.password_attribute.as_str();
                let Some(entry) = self.search_user(lookup, account, &[attr]).await? else {
                    // The check a wrong password costs, against the last
                    // value seen in the directory.
                    let dummy = sync::lock(&self.compare_dummy).clone();
                    hash::verify(dummy, password.to_vec()).await;
                    return Ok(Verdict::Invalid);
                };
                let mut matched = false;
                for value in entry.all(attr) {
                    // Clear-text values in the directory are never accepted.
                    match Stored::parse(value, false) {
                        Ok(stored) => {
                            *sync::lock(&self.compare_dummy) = stored.clone();
                            if hash::verify(stored, password.to_vec()).await {
                                matched = true;
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(dn = %entry.dn, error = %e, "unusable password value")
                        }
                    }
                }
                (
                    entry,
                    if matched {
                        Verdict::Ok
                    } else {
                        Verdict::Invalid
                    },
                )
            }
        };
        // Access rules only after a good password, so that they reveal
        // nothing to someone guessing.
        if verdict == Verdict::Ok && !self.permitted(lookup, &entry).await? {
            return Ok(Verdict::NotPermitted);
        }
        Ok(verdict)
    }

    async fn find(&self, account: &Account, attrs: &[&str]) -> Result<Option<Found>, LdapError> {
        let lookup = self.config.lookup_for(&account.domain);
        let Some(entry) = self.search_user(lookup, account, attrs).await? else {
            return Ok(None);
        };
        let permitted = self.permitted(lookup, &entry).await?;
        Ok(Some(Found { entry, permitted }))
    }
}

/// DN equality, ignoring case and spaces after separators; good enough for
/// the group DNs an administrator writes in the configuration.
fn same_dn(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.split(',')
            .map(|p| p.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::tests::VERIFIED;

    fn ssha(salt: &[u8]) -> String {
        use base64::Engine;
        use sha1::Digest;
        let mut raw = sha1::Sha1::new_with_prefix(b"pw")
            .chain_update(salt)
            .finalize()
            .to_vec();
        raw.extend_from_slice(salt);
        format!(
            "{{SSHA}}{}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    fn static_backend(users: &[(&str, String)]) -> Backend {
        let mut toml = String::from("backend = \"static\"\n");
        for (name, password) in users {
            toml.push_str(&format!(
                "[[static.users]]\nname = \"{name}\"\npassword = \"{password}\"\n"
            ));
        }
        let config: AuthConfig = toml::from_str(&toml).unwrap();
        Backend::new(&Arc::new(config)).unwrap()
    }

    fn verify(b: &Backend, user: &str, password: &[u8]) -> (Verdict, Vec<Stored>) {
        VERIFIED.with(|v| v.borrow_mut().clear());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let account = Account::parse(user.as_bytes()).unwrap();
        let verdict = rt.block_on(b.verify(&account, password)).unwrap();
        (verdict, VERIFIED.with(|v| v.take()))
    }

    #[test]
    fn an_unknown_user_costs_the_check_of_a_wrong_password() {
        let bcrypt = bcrypt::hash_with_salt("pw", 4, [1u8; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoB);
        let b = static_backend(&[
            ("a@x", ssha(b"salt0001")),
            ("b@x", ssha(b"salt0002")),
            ("c@x", bcrypt),
        ]);
        let (v, known) = verify(&b, "a@x", b"wrong");
        assert_eq!(v, Verdict::Invalid);
        assert_eq!(known.len(), 1);
        let (v, unknown) = verify(&b, "nobody@x", b"wrong");
        assert_eq!(v, Verdict::Invalid);
        // One check, of the scheme most users have (salted SHA-1 here).
        assert_eq!(unknown.len(), 1);
        assert_eq!(scheme_of(&unknown[0]), scheme_of(&known[0]));
        // Even the password of the user the dummy came from is refused.
        assert_eq!(verify(&b, "nobody@x", b"pw").0, Verdict::Invalid);
        assert_eq!(verify(&b, "a@x", b"pw").0, Verdict::Ok);
        // No users, nothing to imitate.
        assert_eq!(
            verify(&static_backend(&[]), "a@x", b"pw"),
            (Verdict::Invalid, vec![])
        );
    }

    #[test]
    fn dn_comparison_ignores_case_and_spaces() {
        assert!(same_dn(
            "CN=Mail Users, OU=Groups,DC=corp",
            "cn=mail users,ou=groups,dc=corp"
        ));
        assert!(!same_dn("cn=staff,ou=groups", "cn=outbound,ou=groups"));
        assert!(!same_dn("cn=staff", "cn=staff,ou=groups"));
    }

    #[test]
    fn placeholders_are_escaped_for_their_context() {
        let a = Account::parse(b"x*)(uid=*@ex.test").unwrap();
        assert_eq!(
            fill("(uid={user})", &a, escape_filter),
            "(uid=x\\2a\\29\\28uid=\\2a)"
        );
        let a = Account::parse(b"a,ou=admins@ex.test").unwrap();
        assert_eq!(
            fill("uid={user},ou=people", &a, escape_dn),
            "uid=a\\,ou\\=admins,ou=people"
        );
        assert_eq!(
            fill("(mail={email})", &a, escape_filter),
            "(mail=a,ou=admins@ex.test)"
        );
    }
}
