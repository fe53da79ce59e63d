//! MX Proxy back end of the directory: passwords checked with the OAuth2
//! resource-owner password grant (`POST /auth`, form body, HTTP Basic client
//! credentials), people read from the contact list (`GET /contacts`, with a
//! service account's token).
//!
//! - A user's access token is dropped as soon as the grant answers: it is
//!   never logged, cached or kept.
//! - 200 with a token is [`Verdict::Ok`]; 400 and 401 are
//!   [`Verdict::Invalid`], so a wrong password and an unknown name give the
//!   same reply after the same round trip; 5xx, a timeout or no connection
//!   are [`DirectoryError::Unavailable`] within `timeout`.
//! - The service account's token is held in memory until `expires_in`, and
//!   granted again when the server says it expired (401).
//! - After a good password the user's own token asks `GET /auth` who they
//!   are on the MX server (`mx`, `ext`, `jid`), unless that is known from
//!   less than `profile_ttl` ago; `find` adds it to the person (contacts
//!   first), so `NEW` right after a login has it. The answer's
//!   `softPhonePwd` is never read.

use super::cache::Cache;
use super::{Account, Backend, BoxFuture, By, CacheConfig, DirectoryError, Person, Verdict};
use crate::http::{self, BodyError};
use cgp_runtime::config::Secret;
use cgp_runtime::sync;
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use url::Url;

/// `[directory.mxproxy]`.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MxProxyConfig {
    pub base_url: Url,
    pub client_id: String,
    /// The application's secret (HTTP Basic on `POST /auth`); never logged.
    pub client_secret: Secret,
    /// What the grant's `username` is: the whole address or its user part.
    #[serde(default)]
    pub login: Login,
    /// The account whose token reads the contact list; unset: no contacts
    /// (`find` answers nobody).
    #[serde(default)]
    pub service_username: Option<String>,
    #[serde(default)]
    pub service_password: Option<Secret>,
    /// Bound on one call, body included.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest body taken; larger ones are an error.
    #[serde(default = "default_max")]
    pub max_response_bytes: usize,
    /// How long what `GET /auth` told of a user (mx, ext, jid) is kept
    /// after a good password; `0s`: `GET /auth` is not asked.
    #[serde(default = "default_profile_ttl", with = "humantime_serde")]
    pub profile_ttl: Duration,
}

fn default_profile_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_max() -> usize {
    4 << 20
}

/// The grant's `username`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Login {
    /// `user@domain`.
    #[default]
    Address,
    /// `user`.
    User,
}

/// Keeps the secrets out of logs and error texts.
impl std::fmt::Debug for MxProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MxProxyConfig")
            .field("base_url", &self.base_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<hidden>")
            .field("service_username", &self.service_username)
            .field("service_password", &"<hidden>")
            .field("timeout", &self.timeout)
            .field("profile_ttl", &self.profile_ttl)
            .finish_non_exhaustive()
    }
}

impl MxProxyConfig {
    /// Rules between keys, as `(key under the table, message)`.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !matches!(self.base_url.scheme(), "http" | "https") {
            return Err(("base_url", "must be an http:// or https:// URL"));
        }
        if self.client_id.is_empty() || self.client_secret.is_empty() {
            return Err(("client_secret", "client_id and client_secret are needed"));
        }
        if self.service_username.is_some() != self.service_password.is_some() {
            return Err((
                "service_password",
                "give service_username and service_password together",
            ));
        }
        if self.timeout.is_zero() {
            return Err(("timeout", "must be more than 0s"));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Grant {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// `GET /auth`: the token's owner on the MX server. The answer also holds
/// the soft phone's password, which is not even read.
#[derive(Deserialize)]
struct Me {
    #[serde(default)]
    mx: String,
    #[serde(default)]
    ext: String,
    #[serde(default)]
    jid: String,
}

impl Me {
    /// A person with `mx`, `ext` (and `telephoneNumber`, as contacts have
    /// it) and `jid`.
    fn person(self) -> Person {
        let mut p = Person {
            id: self.jid.clone(),
            ..Person::default()
        };
        for (name, value) in [
            ("mx", self.mx),
            ("ext", self.ext.clone()),
            ("telephoneNumber", self.ext),
            ("jid", self.jid),
        ] {
            if !value.is_empty() {
                p.push_values(name, [value]);
            }
        }
        p
    }
}

#[derive(Deserialize)]
struct Contacts {
    contacts: Vec<Contact>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Contact {
    jid: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
    #[serde(default)]
    ext: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    cell_phone: Option<String>,
    #[serde(default)]
    home_phone: Option<String>,
    #[serde(default)]
    did: Option<String>,
}

impl Contact {
    /// A person with the contact's values under the names LDAP people use
    /// (`cn`, `givenName`, `sn`, `mail`, `mobile`, `homePhone`,
    /// `telephoneNumber` = the extension) and MX Proxy's own (`ext`, `did`,
    /// `jid`).
    fn person(self) -> Person {
        let mut p = Person {
            id: self.jid.clone(),
            ..Person::default()
        };
        let cn = format!("{} {}", self.first_name, self.last_name);
        for (name, value) in [
            ("cn", Some(cn.trim().to_string())),
            ("givenName", Some(self.first_name)),
            ("sn", Some(self.last_name)),
            ("ext", Some(self.ext.clone())),
            ("telephoneNumber", Some(self.ext)),
            ("jid", Some(self.jid)),
            ("mail", self.email),
            ("mobile", self.cell_phone),
            ("homePhone", self.home_phone),
            ("did", self.did),
        ] {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                p.push_values(name, [v]);
            }
        }
        p
    }
}

/// What a grant came to.
enum Granted {
    Token(String, Duration),
    Refused,
}

pub(crate) struct MxProxy {
    http: reqwest::Client,
    config: MxProxyConfig,
    /// The service account's token and when it expires.
    service: Mutex<Option<(String, Instant)>>,
    /// What `GET /auth` told of users after their good passwords, by
    /// address; as bounded as the directory's cache.
    profiles: Cache,
}

impl MxProxy {
    /// `max_entries`: the directory cache's bound, which the kept profiles
    /// share.
    pub(crate) fn new(
        config: &MxProxyConfig,
        max_entries: usize,
    ) -> Result<MxProxy, DirectoryError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| DirectoryError::Failed(e.to_string()))?;
        Ok(MxProxy {
            http,
            config: config.clone(),
            service: Mutex::new(None),
            profiles: Cache::new(&CacheConfig {
                ttl: config.profile_ttl,
                negative_ttl: Duration::ZERO,
                max_entries,
            }),
        })
    }

    fn url(&self, path: &str) -> Url {
        http::endpoint(&self.config.base_url, &[path], &[])
    }

    /// `POST /auth` with the password grant.
    async fn grant(&self, username: &str, password: &str) -> Result<Granted, DirectoryError> {
        let form = [
            ("username", username),
            ("password", password),
            ("grant_type", "password"),
        ];
        let resp = self
            .http
            .post(self.url("auth"))
            .basic_auth(
                &self.config.client_id,
                Some(self.config.client_secret.expose()),
            )
            .form(&form)
            .send()
            .await
            .map_err(unavailable)?;
        match resp.status().as_u16() {
            200 => {}
            400 | 401 => return Ok(Granted::Refused),
            s @ 500.. => return Err(DirectoryError::Unavailable(format!("MX Proxy: HTTP {s}"))),
            s => {
                return Err(DirectoryError::Failed(format!(
                    "MX Proxy: HTTP {s} on /auth"
                )));
            }
        }
        let body = http::read_body(resp, self.config.max_response_bytes)
            .await
            .map_err(body_error)?;
        let g: Grant = serde_json::from_slice(&body)
            .map_err(|e| DirectoryError::Failed(format!("MX Proxy /auth: {e}")))?;
        if g.access_token.is_empty() {
            return Err(DirectoryError::Failed("MX Proxy /auth: empty token".into()));
        }
        let life = Duration::from_secs(g.expires_in.unwrap_or(60));
        Ok(Granted::Token(g.access_token, life))
    }

    /// The service account's token, granted again when `stale`.
    async fn service_token(&self, stale: bool) -> Result<Option<String>, DirectoryError> {
        let (Some(user), Some(password)) =
            (&self.config.service_username, &self.config.service_password)
        else {
            return Ok(None);
        };
        if !stale {
            if let Some((t, until)) = &*sync::lock(&self.service) {
                if Instant::now() < *until {
                    return Ok(Some(t.clone()));
                }
            }
        }
        match self.grant(user, password.expose()).await? {
            Granted::Token(t, life) => {
                *sync::lock(&self.service) = Some((t.clone(), Instant::now() + life));
                Ok(Some(t))
            }
            Granted::Refused => Err(DirectoryError::Failed(
                "MX Proxy refused the service account".into(),
            )),
        }
    }

    /// `GET <path>` with a Bearer token: the JSON answer, or `None` when
    /// the server says the token expired (401).
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
    ) -> Result<Option<T>, DirectoryError> {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .map_err(unavailable)?;
        match resp.status().as_u16() {
            200 => {
                let body = http::read_body(resp, self.config.max_response_bytes)
                    .await
                    .map_err(body_error)?;
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| DirectoryError::Failed(format!("MX Proxy /{path}: {e}")))
            }
            401 => Ok(None),
            s @ 500.. => Err(DirectoryError::Unavailable(format!("MX Proxy: HTTP {s}"))),
            s => Err(DirectoryError::Failed(format!(
                "MX Proxy: HTTP {s} on /{path}"
            ))),
        }
    }

    /// `GET /contacts`, once more with a new token when the server says
    /// the token expired.
    async fn contacts(&self) -> Result<Vec<Contact>, DirectoryError> {
        for stale in [false, true] {
            let Some(token) = self.service_token(stale).await? else {
                return Ok(Vec::new());
            };
            if let Some(c) = self.get::<Contacts>("contacts", &token).await? {
                return Ok(c.contacts);
            }
        }
        Err(DirectoryError::Failed(
            "MX Proxy refused a newly granted token".into(),
        ))
    }

    /// After a good password: who the user is on the MX server, with their
    /// own `token` (granted once more with `password` if the server says it
    /// expired), unless known from less than `profile_ttl` ago. A failure
    /// is logged; the password was right all the same.
    async fn learn(&self, account: &Account, token: String, password: &str) {
        if self.config.profile_ttl.is_zero() {
            return;
        }
        let ask = || async {
            let mut token = token;
            for stale in [false, true] {
                if stale {
                    match self.grant(self.username(account), password).await? {
                        Granted::Token(t, _) => token = t,
                        Granted::Refused => break,
                    }
                }
                if let Some(me) = self.get::<Me>("auth", &token).await? {
                    return Ok(Some(Arc::new(me.person())));
                }
            }
            Err(DirectoryError::Failed(
                "MX Proxy refused a newly granted token on GET /auth".into(),
            ))
        };
        if let Err(e) = self.profiles.get(account.address(), ask).await {
            tracing::warn!(account = %account, error = %e, "MX Proxy: GET /auth failed; the user's mx, ext and jid are not known");
        }
    }

    fn username<'a>(&self, account: &'a Account) -> &'a str {
        match self.config.login {
            Login::Address => account.address(),
            Login::User => account.user(),
        }
    }

    async fn verdict(&self, account: &Account, password: &[u8]) -> Result<Verdict, DirectoryError> {
        // A password that is not UTF-8 cannot be sent in the form.
        let Ok(password) = std::str::from_utf8(password) else {
            return Ok(Verdict::Invalid);
        };
        // The token proves the password, asks who the user is, and is
        // dropped.
        Ok(match self.grant(self.username(account), password).await? {
            Granted::Token(token, _) => {
                self.learn(account, token, password).await;
                Verdict::Ok
            }
            Granted::Refused => Verdict::Invalid,
        })
    }
}

/// A transport error, without the URL.
fn unavailable(e: reqwest::Error) -> DirectoryError {
    DirectoryError::Unavailable(format!("MX Proxy: {}", e.without_url()))
}

fn body_error(e: BodyError) -> DirectoryError {
    match e {
        BodyError::Transport(e) => unavailable(e),
        e @ BodyError::TooLarge(_) => DirectoryError::Failed(format!("MX Proxy: {e}")),
    }
}

impl Backend for MxProxy {
    /// From the contact list: by mail address, or by extension for a login
    /// name that is one.
    fn find<'a>(&'a self, by: By<'a>) -> BoxFuture<'a, Result<Vec<Arc<Person>>, DirectoryError>> {
        Box::pin(async move {
            let account = by.account();
            let contacts = self.contacts().await?;
            let mut found: Vec<Person> = contacts
                .into_iter()
                .filter(|c| {
                    let mail = c
                        .email
                        .as_deref()
                        .is_some_and(|m| m.eq_ignore_ascii_case(account.address()));
                    let ext = matches!(by, By::Account(_)) && c.ext == account.user();
                    mail || ext
                })
                .map(Contact::person)
                .collect();
            // What the user's own login told: added to their contact, or
            // the person when the contact list has none (or is not read).
            if let Some(me) = self.profiles.peek(account.address()).flatten() {
                match found.as_mut_slice() {
                    [] => found.push(Person::clone(&me)),
                    [one] => {
                        for (name, values) in &me.attributes {
                            if one.values(name).is_empty() {
                                one.push_values(name, values.iter().cloned());
                            }
                        }
                    }
                    _ => {}
                }
            }
            Ok(found.into_iter().map(Arc::new).collect())
        })
    }

    fn check<'a>(
        &'a self,
        account: &'a Account,
        _: &'a Person,
        password: &'a [u8],
    ) -> BoxFuture<'a, Result<Verdict, DirectoryError>> {
        Box::pin(self.verdict(account, password))
    }

    /// Only the server knows who exists: the grant is asked all the same.
    fn check_unknown<'a>(&'a self, account: &'a Account, password: &'a [u8]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let _ = self.verdict(account, password).await;
        })
    }

    /// Every name goes to the grant, known to the contact list or not, so
    /// that an unknown name costs what a wrong password costs.
    fn direct(&self, account: &Account) -> Option<Person> {
        Some(Person {
            id: account.address().to_string(),
            ..Person::default()
        })
    }

    // No access rules (everyone permitted) and no secret: MX Proxy never
    // reveals a password. The trait's defaults say both.
}
