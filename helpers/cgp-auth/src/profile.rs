//! Provisioning profiles: the CLI steps `NEW` runs for an account, chosen by
//! the account's domain. Written as `[provision.profiles.NAME]` tables and
//! compiled once, when the configuration is read, into [`Profiles`]; what
//! does not compile is kept as a [`CompileError`] that names the key, and
//! `--check-config` reports it with the key's line.

use cgp_lookup::cgp_cli::CliConfig;
use cgp_lookup::directory::{CliValue, Template, is_attribute_name};
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[provision]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionFile {
    /// Create accounts for NEW requests (off: NEW is refused).
    pub enabled: bool,
    /// The default profile (domains no profile names): CGP account setting
    /// ← directory attribute (first value).
    pub settings: BTreeMap<String, String>,
    /// The default profile's aliases: this attribute's addresses in the
    /// account's domain.
    pub aliases_attribute: Option<String>,
    /// Profiles by name.
    pub profiles: BTreeMap<String, ProfileFile>,
    pub cli: CliConfig,
}

impl Default for ProvisionFile {
    fn default() -> Self {
        ProvisionFile {
            enabled: false,
            settings: BTreeMap::from([("RealName".to_string(), "cn".to_string())]),
            aliases_attribute: Some("mail".into()),
            profiles: BTreeMap::new(),
            cli: CliConfig::default(),
        }
    }
}

/// `[provision.profiles.NAME]` as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileFile {
    /// `example.com`, `*.resources.example.com` or `*`.
    pub domains: Vec<String>,
    pub steps: Vec<StepFile>,
}

/// One `[[provision.profiles.NAME.steps]]` table as written: the keys of
/// every kind of step; which ones a step takes is checked when it compiles.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepFile {
    pub step: String,
    pub settings: Option<BTreeMap<String, String>>,
    pub prefs: Option<BTreeMap<String, String>>,
    pub mailbox: Option<String>,
    pub class: Option<String>,
    pub acl: Option<BTreeMap<String, String>>,
    pub aliases: Option<Vec<String>>,
    pub aliases_attribute: Option<String>,
}

/// A profile that does not compile: the dotted key and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {message}")]
pub struct CompileError {
    pub key: String,
    pub message: String,
}

fn error(key: impl Into<String>, message: impl Into<String>) -> CompileError {
    CompileError {
        key: key.into(),
        message: message.into(),
    }
}

/// A CLI value: literal text, placeholders, `{attr:NAME}`.
pub type Text = Template<CliValue>;

/// A dictionary of CLI values (account settings, WebUser preferences, an
/// ACL), in the order written (sorted by key).
#[derive(Clone, Default)]
pub struct Dict(Vec<(Text, Text)>);

impl std::ops::Deref for Dict {
    type Target = [(Text, Text)];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

// Hand-written so that a literal password can never reach a log through
// `{:?}`.
impl std::fmt::Debug for Dict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if k.as_str().eq_ignore_ascii_case(PASSWORD) {
                    "(hidden)"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            }))
            .finish()
    }
}

/// One compiled step: one CLI command.
#[derive(Clone, Debug)]
pub enum Step {
    CreateAccount {
        settings: Dict,
    },
    CreateMailbox {
        mailbox: Text,
        class: Option<Text>,
    },
    SetMailboxClass {
        mailbox: Text,
        class: Text,
    },
    UpdateAccountSettings {
        settings: Dict,
    },
    SetMailboxAcl {
        mailbox: Text,
        acl: Dict,
    },
    SetAccountAliases {
        aliases: Vec<Text>,
        attribute: Option<String>,
    },
    UpdateAccountPrefs {
        prefs: Dict,
    },
}

/// The steps a configuration may name, and the keys each takes besides
/// `step`.
const STEPS: [(&str, &[&str]); 7] = [
    ("CREATEACCOUNT", &["settings"]),
    ("CREATEMAILBOX", &["mailbox", "class"]),
    ("SETMAILBOXCLASS", &["mailbox", "class"]),
    ("UPDATEACCOUNTSETTINGS", &["settings"]),
    ("SETMAILBOXACL", &["mailbox", "acl"]),
    ("SETACCOUNTALIASES", &["aliases", "aliases_attribute"]),
    ("UPDATEACCOUNTPREFS", &["prefs"]),
];

/// Mailbox classes CGP knows (literal values are checked against them).
const CLASSES: [&str; 6] = [
    "IPF.Appointment",
    "IPF.Contact",
    "IPF.Task",
    "IPF.Note",
    "IPF.StickyNote",
    "IPF.Journal",
];

/// Mailbox access rights letters (IMAP ACL, RFC 4314, as CGP takes them).
const RIGHTS: &str = "lrswipkxteacd";

/// The setting that holds a password: never shown, never logged.
pub const PASSWORD: &str = "Password";

impl Step {
    /// The CLI command the step sends.
    pub fn verb(&self) -> &'static str {
        match self {
            Step::CreateAccount { .. } => "CREATEACCOUNT",
            Step::CreateMailbox { .. } => "CREATEMAILBOX",
            Step::SetMailboxClass { .. } => "SETMAILBOXCLASS",
            Step::UpdateAccountSettings { .. } => "UPDATEACCOUNTSETTINGS",
            Step::SetMailboxAcl { .. } => "SETMAILBOXACL",
            Step::SetAccountAliases { .. } => "SETACCOUNTALIASES",
            Step::UpdateAccountPrefs { .. } => "UPDATEACCOUNTPREFS",
        }
    }

    /// Every template of the step.
    fn texts(&self) -> Vec<&Text> {
        fn dict(d: &Dict) -> Vec<&Text> {
            d.iter().flat_map(|(k, v)| [k, v]).collect()
        }
        match self {
            Step::CreateAccount { settings } | Step::UpdateAccountSettings { settings } => {
                dict(settings)
            }
            Step::UpdateAccountPrefs { prefs } => dict(prefs),
            Step::CreateMailbox { mailbox, class } => {
                std::iter::once(mailbox).chain(class.as_ref()).collect()
            }
            Step::SetMailboxClass { mailbox, class } => vec![mailbox, class],
            Step::SetMailboxAcl { mailbox, acl } => {
                std::iter::once(mailbox).chain(dict(acl)).collect()
            }
            Step::SetAccountAliases { aliases, .. } => aliases.iter().collect(),
        }
    }

    /// The directory attributes the step reads.
    pub fn attributes(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .texts()
            .into_iter()
            .flat_map(Text::attributes)
            .collect();
        if let Step::SetAccountAliases {
            attribute: Some(a), ..
        } = self
        {
            out.push(a);
        }
        out
    }
}

/// Which domains a profile is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// One domain.
    Exact(String),
    /// `*.suffix`: every domain that ends in `.suffix` (not `suffix`
    /// itself); kept with its leading dot.
    Below(String),
    /// `*`: every domain.
    Any,
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        let lower = text.to_ascii_lowercase();
        if lower == "*" {
            return Ok(Pattern::Any);
        }
        let (domain, below) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (lower.as_str(), false),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !domain.split('.').all(label_ok) {
            return Err(format!(
                "{text:?}: expected a domain, `*.domain` or `*` (a `*` only as the first label)"
            ));
        }
        Ok(if below {
            Pattern::Below(format!(".{domain}"))
        } else {
            Pattern::Exact(domain.to_string())
        })
    }

    /// How specific a match is, when it matches (higher wins): an exact
    /// domain, then the longest `*.suffix`, then `*`.
    fn rank(&self, domain: &str) -> Option<(u8, usize)> {
        match self {
            Pattern::Exact(d) => (d == domain).then_some((2, d.len())),
            Pattern::Below(suffix) => domain
                .ends_with(suffix.as_str())
                .then_some((1, suffix.len())),
            Pattern::Any => Some((0, 0)),
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(d) => f.write_str(d),
            Pattern::Below(suffix) => write!(f, "*{suffix}"),
            Pattern::Any => f.write_str("*"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Profile {
    /// The table's name (`default` for the `[provision]` settings).
    pub name: String,
    pub patterns: Vec<Pattern>,
    pub steps: Vec<Step>,
}

/// Every profile of the configuration, compiled.
#[derive(Clone, Debug)]
pub struct Profiles {
    profiles: Vec<Profile>,
    /// For domains no profile names: `[provision] settings` and
    /// `aliases_attribute`.
    default: Profile,
}

/// The name of the profile made of the `[provision]` settings.
pub const DEFAULT: &str = "default";

impl Profiles {
    pub fn compile(file: &ProvisionFile) -> Result<Profiles, CompileError> {
        let mut profiles: Vec<Profile> = Vec::new();
        for (name, p) in &file.profiles {
            let key = format!("provision.profiles.{name}");
            if p.domains.is_empty() {
                return Err(error(format!("{key}.domains"), "name at least one domain"));
            }
            let mut patterns = Vec::new();
            for (i, d) in p.domains.iter().enumerate() {
                let at = format!("{key}.domains[{i}]");
                let pattern = Pattern::parse(d).map_err(|m| error(&at, m))?;
                if let Some(other) = profiles
                    .iter()
                    .find(|o| o.patterns.contains(&pattern))
                    .map(|o| o.name.as_str())
                    .or_else(|| patterns.contains(&pattern).then_some(name.as_str()))
                {
                    return Err(error(
                        at,
                        format!("{pattern} is already a domain of profile {other:?}"),
                    ));
                }
                patterns.push(pattern);
            }
            if p.steps.is_empty() {
                return Err(error(format!("{key}.steps"), "a profile needs steps"));
            }
            let steps = p
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| compile_step(s, &format!("{key}.steps[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            profiles.push(Profile {
                name: name.clone(),
                patterns,
                steps,
            });
        }
        Ok(Profiles {
            profiles,
            default: default_profile(file)?,
        })
    }

    /// The profile for a domain (lower case): the most specific pattern
    /// that matches, else the default profile.
    pub fn select(&self, domain: &str) -> &Profile {
        self.profiles
            .iter()
            .filter_map(|p| {
                p.patterns
                    .iter()
                    .filter_map(|pat| pat.rank(domain))
                    .max()
                    .map(|r| (r, p))
            })
            .max_by_key(|(r, _)| *r)
            .map_or(&self.default, |(_, p)| p)
    }

    /// Every directory attribute a profile reads, with the key that names it.
    pub fn attributes(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        for p in std::iter::once(&self.default).chain(&self.profiles) {
            for (i, s) in p.steps.iter().enumerate() {
                let key = match p.name.as_str() {
                    DEFAULT => "provision".to_string(),
                    name => format!("provision.profiles.{name}.steps[{i}]"),
                };
                out.extend(s.attributes().into_iter().map(|a| (key.clone(), a)));
            }
        }
        out
    }
}

impl Default for Profiles {
    fn default() -> Self {
        Profiles::compile(&ProvisionFile::default()).expect("the default profile compiles")
    }
}

/// The `[provision]` settings and aliases attribute as a profile: CREATEACCOUNT
/// with each setting filled from its attribute, then SETACCOUNTALIASES.
fn default_profile(file: &ProvisionFile) -> Result<Profile, CompileError> {
    let mut settings = Vec::new();
    for (setting, attr) in &file.settings {
        let key = format!("provision.settings.{setting}");
        if !is_attribute_name(attr) {
            return Err(error(key, format!("{attr:?} is not an attribute name")));
        }
        settings.push((
            literal(setting, &key)?,
            text(&format!("{{attr:{attr}}}"), &key)?,
        ));
    }
    let settings = Dict(settings);
    check_setting_names(&settings, "provision.settings", true)?;
    let mut steps = vec![Step::CreateAccount { settings }];
    if let Some(attr) = &file.aliases_attribute {
        steps.push(Step::SetAccountAliases {
            aliases: Vec::new(),
            attribute: Some(attribute(attr, "provision.aliases_attribute")?),
        });
    }
    Ok(Profile {
        name: DEFAULT.into(),
        patterns: vec![Pattern::Any],
        steps,
    })
}

fn text(source: &str, key: &str) -> Result<Text, CompileError> {
    Text::parse(source).map_err(|e| error(key, e.to_string()))
}

/// A name that must not vary per account (a setting's name).
fn literal(source: &str, key: &str) -> Result<Text, CompileError> {
    let t = text(source, key)?;
    if !t.is_literal() || source.is_empty() {
        return Err(error(key, "a setting name is plain text"));
    }
    Ok(t)
}

fn attribute(name: &str, key: &str) -> Result<String, CompileError> {
    if is_attribute_name(name) {
        Ok(name.to_string())
    } else {
        Err(error(key, format!("{name:?} is not an attribute name")))
    }
}

fn dict(
    map: &BTreeMap<String, String>,
    key: &str,
    keys_are_names: bool,
) -> Result<Dict, CompileError> {
    let entries = map
        .iter()
        .map(|(k, v)| {
            let at = format!("{key}.{k}");
            let name = if keys_are_names {
                literal(k, &at)?
            } else {
                text(k, &at)?
            };
            Ok((name, text(v, &at)?))
        })
        .collect::<Result<Vec<_>, CompileError>>()?;
    Ok(Dict(entries))
}

/// Setting names: each once (CGP compares them without regard to case),
/// and `Password` only where a password may be set.
fn check_setting_names(d: &Dict, key: &str, password_ok: bool) -> Result<(), CompileError> {
    for (i, (name, _)) in d.iter().enumerate() {
        let name = name.as_str();
        let at = format!("{key}.{name}");
        if d[..i]
            .iter()
            .any(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
        {
            return Err(error(at, "set twice (names ignore case)"));
        }
        if name.eq_ignore_ascii_case(PASSWORD) && !password_ok {
            return Err(error(at, "a password is an account setting, not set here"));
        }
    }
    Ok(())
}

fn compile_step(s: &StepFile, key: &str) -> Result<Step, CompileError> {
    let verb = s.step.to_ascii_uppercase();
    let Some((_, allowed)) = STEPS.iter().find(|(v, _)| *v == verb) else {
        return Err(error(
            format!("{key}.step"),
            format!(
                "unknown step {:?}; the steps are {}",
                s.step,
                STEPS.map(|(v, _)| v).join(", ")
            ),
        ));
    };
    let given = [
        ("settings", s.settings.is_some()),
        ("prefs", s.prefs.is_some()),
        ("mailbox", s.mailbox.is_some()),
        ("class", s.class.is_some()),
        ("acl", s.acl.is_some()),
        ("aliases", s.aliases.is_some()),
        ("aliases_attribute", s.aliases_attribute.is_some()),
    ];
    if let Some((k, _)) = given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
        return Err(error(
            format!("{key}.{k}"),
            format!("{verb} does not take {k}; it takes {}", allowed.join(", ")),
        ));
    }
    let need = |v: &Option<String>, k: &str| -> Result<Text, CompileError> {
        let at = format!("{key}.{k}");
        match v {
            Some(v) if !v.is_empty() => text(v, &at),
            _ => Err(error(at, format!("{verb} needs {k}"))),
        }
    };
    let class = |c: &Text| -> Result<(), CompileError> {
        if c.is_literal() && !CLASSES.contains(&c.as_str()) {
            return Err(error(
                format!("{key}.class"),
                format!(
                    "unknown mailbox class {:?}; CGP's are {}",
                    c.as_str(),
                    CLASSES.join(", ")
                ),
            ));
        }
        Ok(())
    };
    let settings = |m: &Option<BTreeMap<String, String>>, k: &str, password_ok: bool| {
        let at = format!("{key}.{k}");
        let d = dict(m.as_ref().unwrap_or(&BTreeMap::new()), &at, true)?;
        check_setting_names(&d, &at, password_ok)?;
        Ok::<_, CompileError>(d)
    };
    let step = match verb.as_str() {
        "CREATEACCOUNT" => Step::CreateAccount {
            settings: settings(&s.settings, "settings", true)?,
        },
        "UPDATEACCOUNTSETTINGS" | "UPDATEACCOUNTPREFS" => {
            let prefs = verb == "UPDATEACCOUNTPREFS";
            let (m, k) = if prefs {
                (&s.prefs, "prefs")
            } else {
                (&s.settings, "settings")
            };
            let d = settings(m, k, !prefs)?;
            if d.is_empty() {
                return Err(error(format!("{key}.{k}"), format!("{verb} needs {k}")));
            }
            if prefs {
                Step::UpdateAccountPrefs { prefs: d }
            } else {
                Step::UpdateAccountSettings { settings: d }
            }
        }
        "CREATEMAILBOX" => {
            let class_text = s.class.as_ref().map(|c| text(c, &format!("{key}.class")));
            let class_text = class_text.transpose()?;
            if let Some(c) = &class_text {
                class(c)?;
            }
            Step::CreateMailbox {
                mailbox: need(&s.mailbox, "mailbox")?,
                class: class_text,
            }
        }
        "SETMAILBOXCLASS" => {
            let c = need(&s.class, "class")?;
            class(&c)?;
            Step::SetMailboxClass {
                mailbox: need(&s.mailbox, "mailbox")?,
                class: c,
            }
        }
        "SETMAILBOXACL" => {
            let at = format!("{key}.acl");
            let acl = dict(s.acl.as_ref().unwrap_or(&BTreeMap::new()), &at, false)?;
            if acl.is_empty() {
                return Err(error(at, "SETMAILBOXACL needs acl (identifier = rights)"));
            }
            for (who, rights) in acl.iter() {
                let r = rights.as_str();
                let letters = r.strip_prefix(['+', '-']).unwrap_or(r);
                if rights.is_literal() && !letters.chars().all(|c| RIGHTS.contains(c)) {
                    return Err(error(
                        format!("{at}.{}", who.as_str()),
                        format!("{r:?}: rights are letters of {RIGHTS}, optionally after + or -"),
                    ));
                }
            }
            Step::SetMailboxAcl {
                mailbox: need(&s.mailbox, "mailbox")?,
                acl,
            }
        }
        "SETACCOUNTALIASES" => {
            let aliases = s
                .aliases
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, a)| text(a, &format!("{key}.aliases[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let attribute = s
                .aliases_attribute
                .as_ref()
                .map(|a| attribute(a, &format!("{key}.aliases_attribute")))
                .transpose()?;
            if aliases.is_empty() && attribute.is_none() {
                return Err(error(
                    format!("{key}.aliases"),
                    "SETACCOUNTALIASES needs aliases or aliases_attribute",
                ));
            }
            Step::SetAccountAliases { aliases, attribute }
        }
        _ => unreachable!("every name of STEPS has its arm"),
    };
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<Profiles, CompileError> {
        #[derive(Deserialize)]
        struct F {
            provision: ProvisionFile,
        }
        let f: F = toml::from_str(text).unwrap();
        Profiles::compile(&f.provision)
    }

    const RESOURCES: &str = r#"
[provision.profiles.resources]
domains = ["*.resources.example.com"]
[[provision.profiles.resources.steps]]
step = "CREATEACCOUNT"
settings = { RealName = "{attr:cn}", ServiceClass = "Resource" }
[[provision.profiles.resources.steps]]
step = "CREATEMAILBOX"
mailbox = "Calendar"
class = "IPF.Appointment"
[provision.profiles.rooms]
domains = ["confroom.resources.example.com", "*.rooms.example.com"]
steps = [{ step = "createaccount" }]
[provision.profiles.all]
domains = ["*"]
steps = [{ step = "CREATEACCOUNT" }]
"#;

    #[test]
    fn the_most_specific_pattern_wins() {
        let p = compile(RESOURCES).unwrap();
        let name = |d: &str| p.select(d).name.clone();
        assert_eq!(name("parking.resources.example.com"), "resources");
        assert_eq!(name("confroom.resources.example.com"), "rooms");
        assert_eq!(name("a.b.rooms.example.com"), "rooms");
        // `*.x` is below x, not x itself.
        assert_eq!(name("resources.example.com"), "all");
        assert_eq!(name("example.org"), "all");
        let p = compile("[provision]\nsettings = { RealName = \"cn\" }\n").unwrap();
        assert_eq!(p.select("example.org").name, DEFAULT);
        assert_eq!(
            p.attributes(),
            [
                ("provision".to_string(), "cn"),
                ("provision".to_string(), "mail")
            ]
        );
    }

    #[test]
    fn a_literal_password_is_not_in_debug_output() {
        let p = compile(
            "[provision.profiles.x]\ndomains = [\"*\"]\nsteps = [{ step = \"CREATEACCOUNT\", settings = { PASSWORD = \"initial-pw-9\", RealName = \"{attr:cn}\" } }]",
        )
        .unwrap();
        let shown = format!("{p:?}");
        assert!(!shown.contains("initial-pw-9"), "{shown}");
        assert!(shown.contains("\"PASSWORD\": \"(hidden)\""), "{shown}");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "[provision.profiles.x]\ndomains = [\"a.test\"]\nsteps = [{ step = \"CREATEFOLDER\" }]",
                "provision.profiles.x.steps[0].step",
                "unknown step",
            ),
            (
                "[provision.profiles.x]\ndomains = [\"a.test\"]\nsteps = [{ step = \"CREATEACCOUNT\", settings = { RealName = \"{attr:c n}\" } }]",
                "provision.profiles.x.steps[0].settings.RealName",
                "attribute name",
            ),
            (
                "[provision.profiles.x]\ndomains = [\"a.test\"]\nsteps = [{ step = \"CREATEACCOUNT\", settings = { RealName = \"{usr}\" } }]",
                "provision.profiles.x.steps[0].settings.RealName",
                "unknown placeholder {usr}",
            ),
            (
                "[provision.profiles.x]\ndomains = [\"a.test\"]\nsteps = [{ step = \"CREATEMAILBOX\", mailbox = \"Calendar\", acl = { a = \"l\" } }]",
                "provision.profiles.x.steps[0].acl",
                "does not take acl",
            ),
            (
                "[provision.profiles.x]\ndomains = [\"a.test\"]\nsteps = [{ step = \"SETMAILBOXCLASS\", mailbox = \"Calendar\", class = \"IPF.Apointment\" }]",
                "provision.profiles.x.steps[0].class",
                "unknown mailbox class",
            ),
            (
                "[provision.profiles.x]\ndomains = [\"a.test\"]\nsteps = [{ step = \"SETMAILBOXACL\", mailbox = \"Calendar\", acl = { \"all_events@{domain}\" = \"lrz\" } }]",
                "provision.profiles.x.steps[0].acl.all_events@{domain}",
                "rights are letters",
            ),
            (
                "[provision.profiles.x]\ndomains = [\"a.test\"]\nsteps = [{ step = \"UPDATEACCOUNTPREFS\", prefs = { password = \"x\" } }]",
                "provision.profiles.x.steps[0].prefs.password",
                "a password is an account setting",
            ),
            (
                "[provision.profiles.x]\ndomains = [\"a.*.test\"]\nsteps = [{ step = \"CREATEACCOUNT\" }]",
                "provision.profiles.x.domains[0]",
                "expected a domain",
            ),
            (
                "[provision.profiles.x]\ndomains = [\"*.R.test\"]\nsteps = [{ step = \"CREATEACCOUNT\" }]\n[provision.profiles.y]\ndomains = [\"*.r.test\"]\nsteps = [{ step = \"CREATEACCOUNT\" }]",
                "provision.profiles.y.domains[0]",
                "already a domain of profile \"x\"",
            ),
            (
                "[provision.settings]\nRealName = \"c n\"",
                "provision.settings.RealName",
                "not an attribute name",
            ),
        ];
        for (text, key, message) in cases {
            let e = compile(text).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            assert!(e.message.contains(message), "{text}: {}", e.message);
        }
    }
}
