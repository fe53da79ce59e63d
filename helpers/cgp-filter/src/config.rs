//! The configuration file of `cgp-filter`: general settings, the failure
//! policy, the directory and the ordered rules.
//!
//! Single values (regexes, addresses, CIDRs, header fields, templates) are
//! checked while they are deserialized, so their errors carry a line number.
//! The rules are compiled as soon as the file is read, once: what spans
//! several keys (list files, rules that need the directory) is found then,
//! kept, and reported by `validate()` with the key and the rule's place in
//! the file.

use crate::patterns::{AddressPattern, IpPattern, MailAddress, Regex};
use crate::rules::RuleSet;
use crate::template::{HeaderTemplate, Template};
use crate::wire::Dialect;
use cgp_lookup::cloudpbx::sms::{GsmNumber, SmsConfig};
use cgp_lookup::directory::DirectoryConfig;
use cgp_lookup::store::StoreConfig;
use cgp_runtime::config::{HelperConfig, KeyError, LogConfig, RuntimeConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The configuration file as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    pub filter: Settings,
    pub failure: FailureConfig,
    /// Who the sender is: the suite's one directory configuration.
    pub directory: Option<DirectoryConfig>,
    /// Where `sender_limit` counts: sled (one server) or Redis (a cluster).
    pub store: StoreConfig,
    /// The SMS gateway and queue of the rules' `sms` notifications.
    pub sms: Option<SmsSettings>,
    /// `[[rule]]` tables, evaluated in order, with where each is written.
    #[serde(rename = "rule")]
    pub rules: Vec<toml::Spanned<RuleConfig>>,
}

/// The configuration with its rules compiled.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "ConfigFile")]
pub struct FilterConfig {
    pub file: ConfigFile,
    /// The compiled rules, or why they do not compile.
    pub rules: Result<Arc<RuleSet>, CompileError>,
}

impl From<ConfigFile> for FilterConfig {
    fn from(file: ConfigFile) -> FilterConfig {
        let rules = RuleSet::compile(&file).map(Arc::new);
        FilterConfig { file, rules }
    }
}

impl Default for FilterConfig {
    fn default() -> FilterConfig {
        FilterConfig::from(ConfigFile::default())
    }
}

/// A configuration that does not compile: the key, and where the rule
/// it belongs to is written when it is in a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {message}")]
pub struct CompileError {
    pub key: String,
    pub message: String,
    /// Byte range in the file (the toml crate's span).
    pub span: Option<Range<usize>>,
}

impl CompileError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> CompileError {
        CompileError {
            key: key.into(),
            message: message.into(),
            span: None,
        }
    }

    /// Places the error at `span` unless it has a place already.
    pub fn within(mut self, span: Range<usize>) -> CompileError {
        self.span.get_or_insert(span);
        self
    }
}

impl From<CompileError> for KeyError {
    fn from(e: CompileError) -> KeyError {
        let at = e.span;
        let e = KeyError::new(e.key, e.message);
        match at {
            Some(span) => e.at(span),
            None => e,
        }
    }
}

impl HelperConfig for FilterConfig {
    fn runtime(&self) -> &RuntimeConfig {
        &self.file.runtime
    }
    fn log(&self) -> &LogConfig {
        &self.file.log
    }
    fn validate(&self) -> Result<(), KeyError> {
        if let Some(d) = &self.file.directory {
            d.validate("directory")?;
        }
        self.file
            .store
            .validate("store")
            .map_err(|e| KeyError::new(e.key, e.message))?;
        if let Some(sms) = &self.file.sms {
            sms.cloudpbx
                .check("sms.cloudpbx")
                .map_err(|(k, m)| KeyError::new(k, m))?;
            if sms.queue == 0 {
                return Err(KeyError::new("sms.queue", "must be more than 0"));
            }
            // The rate table keeps a time per message sent, per number.
            if sms.per_number.count > 100 {
                return Err(KeyError::new("sms.per_number", "at most 100 messages"));
            }
        }
        match &self.rules {
            Ok(_) => Ok(()),
            Err(e) => Err(e.clone().into()),
        }
    }
}

/// The `[filter]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The CGP base directory that `FILE` paths are relative to; the working
    /// directory (where CGP starts helpers) when not set.
    pub base_dir: Option<PathBuf>,
    /// `auto` follows the negotiated INTF (4 and up: modifiers then `OK`;
    /// 3 and below: a bare `ADDHEADER`), `v3` and `v4` force one form.
    pub dialect: Dialect,
    /// Domains whose recipients are local; entries may be `file:PATH`.
    pub local_domains: Vec<AddressPattern>,
    /// The envelope is read up to this many bytes (many recipients).
    pub max_envelope_bytes: usize,
    /// The header is read up to this many bytes; the rest is not looked at.
    pub max_header_bytes: usize,
    /// Attachment conditions look at the body up to this many bytes.
    pub scan_limit: usize,
    /// The reply used when the computed one would pass 4096 bytes.
    pub oversize: Fallback,
    /// Directory attributes holding the addresses of a person (for
    /// `from_is_own`).
    pub address_attributes: Vec<String>,
    /// Recipients found in the directory count as local even when their
    /// domain is not in `local_domains`.
    pub recipients_in_directory_are_local: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            base_dir: None,
            dialect: Dialect::Auto,
            local_domains: Vec::new(),
            max_envelope_bytes: 4 << 20,
            max_header_bytes: 256 << 10,
            scan_limit: 1 << 20,
            oversize: Fallback {
                action: Policy::Pass,
                text: "message filter reply too long".into(),
            },
            address_attributes: vec!["mail".into()],
            recipients_in_directory_are_local: false,
        }
    }
}

/// What to answer when the filter cannot decide.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// `OK`: the message goes on unfiltered.
    Pass,
    /// `REJECTED "<text>"`: the message stays queued and is retried.
    Rejected,
    /// `FAILURE "<text>"`: the helper reports its own failure.
    Failure,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    pub action: Policy,
    #[serde(default = "default_failure_text")]
    pub text: String,
}

fn default_failure_text() -> String {
    "message filter temporarily unavailable".into()
}

/// The `[failure]` table: the failure policy of this rule set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailureConfig {
    /// When the directory does not answer.
    pub directory_down: Policy,
    /// When the queue file cannot be opened or read.
    pub unreadable: Policy,
    /// The text of `REJECTED` and `FAILURE` replies of this policy.
    pub text: String,
    /// A queue file older than this is no longer rejected temporarily: the
    /// `after_max_age` policy applies instead, so no message loops for ever.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub after_max_age: Policy,
    /// When a `sender_limit` cannot be counted (the store down or slow).
    pub store_down: Policy,
}

impl Default for FailureConfig {
    fn default() -> Self {
        FailureConfig {
            directory_down: Policy::Rejected,
            unreadable: Policy::Rejected,
            text: default_failure_text(),
            max_age: Duration::from_secs(4 * 3600),
            after_max_age: Policy::Pass,
            store_down: Policy::Rejected,
        }
    }
}

/// What a matching rule does to the message.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through (with the header fields, mirrors and routes collected).
    #[default]
    Accept,
    /// Drop it silently (`DISCARD`).
    Discard,
    /// Refuse it for good with `text` (`ERROR`, the sender gets a bounce).
    Bounce,
    /// Refuse it for now with `text` (`REJECTED`, it stays queued).
    Reject,
}

/// One `[[rule]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// Every condition given must hold.
    #[serde(default)]
    pub when: Conditions,
    /// The rule does not match when every condition given here holds.
    pub unless: Option<Conditions>,
    #[serde(default)]
    pub action: Action,
    /// Ends rule processing; implied by discard, bounce and reject.
    pub stop: Option<bool>,
    /// The text of a bounce or reject; `{sender}`, `{user}`, `{rule}`,
    /// `{queue_id}` and `{attr:NAME}` are replaced.
    pub text: Option<Template>,
    /// Header fields to add (`Name: value`, templates as in `text`); a field
    /// whose `{attr:NAME}` has no value is left out.
    #[serde(default)]
    pub add_header: Vec<HeaderTemplate>,
    /// Addresses that get a copy (`MIRRORTO`, INTF 4 only).
    #[serde(default)]
    pub mirror_to: Vec<MailAddress>,
    /// Recipients to add (`ADDROUTE`, INTF 4 only).
    #[serde(default)]
    pub add_route: Vec<MailAddress>,
    /// A text message sent when the rule matches (whatever the reply).
    pub sms: Option<SmsRule>,
}

/// The `sms` of a rule: to whom, and what.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsRule {
    /// Fixed numbers (nine digits; `+48`, spaces and dashes are taken).
    #[serde(default)]
    pub to: Vec<Number>,
    /// The directory attribute holding each recipient's number (e.g.
    /// `mobile`); recipients not in the directory, or without it, get none.
    pub recipient_attribute: Option<String>,
    /// The message; placeholders as in `text`. Cut to 1,024 characters.
    pub text: Template,
}

/// A GSM number of the configuration, checked where it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Number(pub GsmNumber);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        GsmNumber::parse(&text)
            .map(Number)
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

/// The `[sms]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsSettings {
    /// The exchange whose gateway sends the messages.
    pub cloudpbx: SmsConfig,
    /// Messages waiting to be sent, at most; further ones are dropped.
    #[serde(default = "default_sms_queue")]
    pub queue: usize,
    /// How many messages one number gets, at most, over a window.
    #[serde(default = "default_sms_rate")]
    pub per_number: Rate,
}

fn default_sms_queue() -> usize {
    256
}

fn default_sms_rate() -> Rate {
    Rate {
        count: 3,
        window: Duration::from_secs(600),
    }
}

/// `N per DURATION`, e.g. `500 per 1h`: at most N over any window of that
/// length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub window: Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        let bad = || format!("{s:?} is not `N per DURATION` (e.g. \"500 per 1h\")");
        let (n, window) = s.split_once(" per ").ok_or_else(bad)?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        let window = humantime_serde::re::humantime::parse_duration(window.trim())
            .map_err(|e| format!("{s:?}: {e}"))?;
        if count == 0 || window.as_millis() == 0 {
            return Err(format!(
                "{s:?}: the count and the window must be more than 0"
            ));
        }
        Ok(Rate { count, window })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The conditions of a rule; absent ones are not checked.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conditions {
    /// The component tag of the `S` envelope line (SMTP, XIMSS, DSN…).
    pub source: Option<Vec<String>>,
    /// Generated by CGP itself (`[0.0.0.0]`, DSN/GROUP/LIST/PBX/PIPE/RULE).
    pub self_generated: Option<bool>,
    /// Submitted by an authenticated user.
    pub authenticated: Option<bool>,
    /// The envelope sender matches one of these.
    pub sender: Option<Vec<AddressPattern>>,
    /// Some recipient matches one of these.
    pub recipient: Option<Vec<AddressPattern>>,
    /// Some recipient is outside the local domains.
    pub external_recipient: Option<bool>,
    /// The client IP is in one of these networks.
    pub client_ip: Option<Vec<IpPattern>>,
    /// Header field name → regex on its decoded value (any occurrence).
    pub header: BTreeMap<String, Regex>,
    /// Message size in bytes (header and body).
    pub size_over: Option<u64>,
    pub size_under: Option<u64>,
    /// Some attachment's file name matches (body read up to the scan limit).
    pub attachment_name: Option<Regex>,
    /// Some attachment's `type/subtype` matches.
    pub attachment_type: Option<Regex>,
    /// The sender belongs to one of these directory groups.
    pub member_of: Option<Vec<String>>,
    /// Directory attribute → regex on one of its values.
    pub attribute: BTreeMap<String, Regex>,
    /// Every From address belongs to the authenticated user.
    pub from_is_own: Option<bool>,
    /// The authenticated sender has sent more than this, this message
    /// included (counted when a rule reaches the condition).
    pub sender_limit: Option<Rate>,
}
