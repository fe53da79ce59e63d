//! NEW: create a CGP account for a directory user through the CGP CLI, with
//! the steps of the profile its domain selects.
//!
//! A profile becomes a plan first: every CLI command with its values filled
//! from the account and the person's entry, encoded with the CGP data
//! encoder. Nothing is sent when a value is missing. The commands then run
//! in order; each is idempotent (an account or mailbox that exists is
//! success, the others set what they set), so a NEW that failed half-way
//! is completed by CGP's retry of it.

use crate::profile::{Dict, PASSWORD, Profile, Profiles, Step, Text};
use cgp_lookup::cgp_cli::{CliClient, CliError};
use cgp_lookup::directory::{Account, Directory, DirectoryError, Person, Values};
use cgp_wire::Value;

/// What a masked secret shows as.
const MASK: &str = "********";

/// One CLI command of a plan.
#[derive(Debug)]
pub struct Command {
    pub verb: &'static str,
    /// The line sent.
    line: String,
    /// The line shown (dry run, reports): secrets masked.
    shown: String,
    /// Values that must never reach a log: the line's secrets.
    secrets: Vec<String>,
    /// CREATEACCOUNT, CREATEMAILBOX: "already exists" is success.
    creates: bool,
}

impl Command {
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// A plan that cannot be made: a value the entry lacks.
#[derive(Debug, PartialEq, Eq)]
pub struct Missing {
    /// 1-based step number.
    pub step: usize,
    pub verb: &'static str,
    /// What lacks a value (e.g. `mailbox`).
    pub what: &'static str,
}

/// How a command went.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The account or mailbox existed already.
    Existed,
}

/// A command that failed: the 1-based step number, and the CLI's error
/// with any secret of the command masked.
#[derive(Debug)]
pub struct Failed {
    pub step: usize,
    pub verb: &'static str,
    pub error: CliError,
}

fn line(verb: &str, args: &[Value]) -> String {
    let mut out = verb.as_bytes().to_vec();
    for a in args {
        out.push(b' ');
        a.encode_into(&mut out);
    }
    // The encoder writes UTF-8 text and escapes what could break a line.
    String::from_utf8_lossy(&out).into_owned()
}

/// A keyword of a command (`MAILBOX`, `CLASS`): an atom.
fn word(w: &str) -> Value {
    Value::str(w)
}

/// Fills a dictionary; entries whose value (or key) needs an attribute the
/// person lacks are left out. With `mask`, `Password` values are replaced.
fn fill_dict(d: &Dict, v: &Values<'_>, person: &Person, mask: bool) -> Value {
    Value::Dict(
        d.iter()
            .filter_map(|(k, t)| {
                let k = k.fill_person(v, person)?;
                let t = t.fill_person(v, person)?;
                let t = if mask && k.eq_ignore_ascii_case(PASSWORD) {
                    MASK.to_string()
                } else {
                    t
                };
                Some((k.into_bytes(), Value::str(t)))
            })
            .collect(),
    )
}

fn secrets(d: &Dict, v: &Values<'_>, person: &Person) -> Vec<String> {
    d.iter()
        .filter(|(k, _)| k.as_str().eq_ignore_ascii_case(PASSWORD))
        .filter_map(|(_, t)| t.fill_person(v, person))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Aliases: the filled templates, and the local parts of the attribute's
/// addresses in the account's own domain; never the account's own name.
fn aliases(
    templates: &[Text],
    attribute: Option<&str>,
    v: &Values<'_>,
    person: &Person,
) -> Vec<String> {
    let account = v.account;
    let from_attribute = attribute
        .into_iter()
        .flat_map(|a| person.values(a))
        .filter_map(|addr| {
            let (local, domain) = addr.rsplit_once('@')?;
            domain
                .eq_ignore_ascii_case(account.domain())
                .then(|| local.to_string())
        });
    let mut out: Vec<String> = templates
        .iter()
        .filter_map(|t| t.fill_person(v, person))
        .chain(from_attribute)
        .map(|a| a.to_lowercase())
        .filter(|a| {
            a != account.user()
                && !a.is_empty()
                && !a.contains(|c: char| c.is_whitespace() || c.is_control() || c == '@')
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The commands a profile sends for an account. Steps with nothing to set
/// (no aliases, every setting left out) send nothing: an empty alias list
/// would remove the aliases the account has.
pub fn plan(
    profile: &Profile,
    account: &Account,
    person: &Person,
) -> Result<Vec<Command>, Missing> {
    let v = Values { account, dn: None };
    let name = Value::str(account.address());
    let mut out = Vec::new();
    for (i, step) in profile.steps.iter().enumerate() {
        let verb = step.verb();
        let need = |t: &Text, what: &'static str| {
            t.fill_person(&v, person).map(Value::str).ok_or(Missing {
                step: i + 1,
                verb,
                what,
            })
        };
        // (arguments as sent, arguments as shown, secrets)
        let (args, shown, secret, creates) = match step {
            Step::CreateAccount { settings } => (
                vec![name.clone(), fill_dict(settings, &v, person, false)],
                Some(vec![name.clone(), fill_dict(settings, &v, person, true)]),
                secrets(settings, &v, person),
                true,
            ),
            Step::UpdateAccountSettings { settings: d } | Step::UpdateAccountPrefs { prefs: d } => {
                let filled = fill_dict(d, &v, person, false);
                if matches!(&filled, Value::Dict(e) if e.is_empty()) {
                    continue;
                }
                (
                    vec![name.clone(), filled],
                    Some(vec![name.clone(), fill_dict(d, &v, person, true)]),
                    secrets(d, &v, person),
                    false,
                )
            }
            Step::CreateMailbox { mailbox, class } => {
                let mut args = vec![name.clone(), word("MAILBOX"), need(mailbox, "mailbox")?];
                if let Some(c) = class {
                    args.extend([word("CLASS"), need(c, "class")?]);
                }
                (args, None, Vec::new(), true)
            }
            Step::SetMailboxClass { mailbox, class } => (
                vec![
                    name.clone(),
                    word("MAILBOX"),
                    need(mailbox, "mailbox")?,
                    word("CLASS"),
                    need(class, "class")?,
                ],
                None,
                Vec::new(),
                false,
            ),
            Step::SetMailboxAcl { mailbox, acl } => {
                let filled = fill_dict(acl, &v, person, false);
                if matches!(&filled, Value::Dict(e) if e.is_empty()) {
                    continue;
                }
                (
                    vec![
                        name.clone(),
                        word("MAILBOX"),
                        need(mailbox, "mailbox")?,
                        filled,
                    ],
                    None,
                    Vec::new(),
                    false,
                )
            }
            Step::SetAccountAliases {
                aliases: t,
                attribute,
            } => {
                let list = aliases(t, attribute.as_deref(), &v, person);
                if list.is_empty() {
                    continue;
                }
                (
                    vec![
                        name.clone(),
                        Value::Array(list.iter().map(Value::str).collect()),
                    ],
                    None,
                    Vec::new(),
                    false,
                )
            }
        };
        let line = line(verb, &args);
        out.push(Command {
            verb,
            shown: shown.map_or_else(|| line.clone(), |s| self::line(verb, &s)),
            line,
            secrets: secret,
            creates,
        });
    }
    Ok(out)
}

/// Why an account's steps cannot run.
#[derive(Debug)]
pub enum NotReady {
    /// No such person in the directory.
    Unknown,
    /// The access rules keep the person out.
    NotPermitted,
    /// The profile needs a value the person's entry lacks.
    Missing(String, Missing),
    Directory(DirectoryError),
}

/// Looks the account's person up, applies the access rules and makes the
/// plan of the profile its domain selects (named in the result).
pub async fn prepare<'p>(
    dir: &Directory,
    profiles: &'p Profiles,
    account: &Account,
) -> Result<(&'p Profile, Vec<Command>), NotReady> {
    let person = dir
        .find(account)
        .await
        .map_err(NotReady::Directory)?
        .ok_or(NotReady::Unknown)?;
    if !dir
        .permitted(account, &person)
        .await
        .map_err(NotReady::Directory)?
    {
        return Err(NotReady::NotPermitted);
    }
    let profile = profiles.select(account.domain());
    let commands =
        plan(profile, account, &person).map_err(|m| NotReady::Missing(profile.name.clone(), m))?;
    Ok((profile, commands))
}

/// Masks secrets in a text.
fn redact(text: String, secrets: &[String]) -> String {
    secrets.iter().fold(text, |t, s| {
        if t.contains(s.as_str()) {
            t.replace(s.as_str(), MASK)
        } else {
            t
        }
    })
}

/// Sends one command: `Existed` when a creating command finds its object
/// there already (CGP answers "… already exists"). Error texts have the
/// plan's secrets masked (`masked`: a server may quote a value back).
async fn send(cli: &CliClient, c: &Command, masked: &[String]) -> Result<Outcome, CliError> {
    match cli.command(&c.line).await {
        Ok(_) => Ok(Outcome::Done),
        Err(CliError::Refused { text, .. })
            if c.creates && text.to_ascii_lowercase().contains("already exist") =>
        {
            Ok(Outcome::Existed)
        }
        Err(CliError::Refused { code, text }) => Err(CliError::Refused {
            code,
            text: redact(text, masked),
        }),
        Err(CliError::Unavailable(text)) => Err(CliError::Unavailable(redact(text, masked))),
    }
}

/// Runs a plan in order, stopping at the first command that fails;
/// `report` sees each command's outcome.
pub async fn run(
    cli: &CliClient,
    commands: &[Command],
    mut report: impl FnMut(usize, &Command, &Result<Outcome, CliError>),
) -> Result<(), Failed> {
    let masked: Vec<String> = commands.iter().flat_map(|c| c.secrets.clone()).collect();
    for (i, c) in commands.iter().enumerate() {
        let r = send(cli, c, &masked).await;
        report(i + 1, c, &r);
        if let Err(error) = r {
            return Err(Failed {
                step: i + 1,
                verb: c.verb,
                error,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Profiles, ProvisionFile};

    fn profiles(text: &str) -> Profiles {
        #[derive(serde::Deserialize)]
        struct F {
            provision: ProvisionFile,
        }
        let f: F = toml::from_str(text).unwrap();
        Profiles::compile(&f.provision).unwrap()
    }

    fn person() -> Person {
        let mut p = Person {
            id: "uid=room-1".into(),
            ..Person::default()
        };
        p.push_values("cn", ["Room \"One\"".to_string()]);
        p.push_values("roomNumber", ["101".to_string()]);
        p.push_values("roomPassword", ["s3cret pw".to_string()]);
        p.push_values(
            "mail",
            [
                "room-1@confroom.resources.example.com".to_string(),
                "Big.Room@CONFROOM.resources.example.com".to_string(),
                "big@elsewhere.test".to_string(),
            ],
        );
        p
    }

    /// The shipped example's profiles.
    fn example() -> Profiles {
        profiles(include_str!(
            "../../../packaging/examples/auth-resources.toml"
        ))
    }

    fn shown(domain: &str) -> Vec<String> {
        let account = Account::parse(format!("room-1@{domain}").as_bytes()).unwrap();
        let p = example();
        plan(p.select(domain), &account, &person())
            .unwrap()
            .iter()
            .map(|c| c.shown().to_string())
            .collect()
    }

    #[test]
    fn a_plan_fills_and_encodes_every_step() {
        let a = "\"room-1@confroom.resources.example.com\"";
        assert_eq!(
            shown("confroom.resources.example.com"),
            [
                format!(r#"CREATEACCOUNT {a} {{RealName="Room \"One\"";ServiceClass=Resource;}}"#),
                format!(r#"CREATEMAILBOX {a} MAILBOX Calendar CLASS "IPF.Appointment""#),
                format!(r#"SETMAILBOXCLASS {a} MAILBOX Calendar CLASS "IPF.Appointment""#),
                format!("UPDATEACCOUNTSETTINGS {a} {{AutoAccept=YES;}}"),
                format!(
                    r#"SETMAILBOXACL {a} MAILBOX Calendar {{"all_events@example.com"=lrswipkxtea;}}"#
                ),
                format!("SETACCOUNTALIASES {a} (room101)"),
                format!(
                    r#"UPDATEACCOUNTPREFS {a} {{UserFrom="\"Room \"One\"\" <room-1@confroom.resources.example.com>";}}"#
                ),
            ]
        );
        // Parking places: the wider profile (no aliases, a plain mailbox).
        let parking = shown("parking.resources.example.com");
        assert_eq!(parking.len(), 6);
        assert!(parking[1].ends_with("MAILBOX Calendar"), "{}", parking[1]);
        // People: the default profile.
        let a = Account::parse(b"big.room@example.com").unwrap();
        let default = plan(example().select("example.com"), &a, &person()).unwrap();
        assert_eq!(
            default.len(),
            1,
            "no address of the person is in example.com"
        );
        assert_eq!(
            default[0].shown(),
            r#"CREATEACCOUNT "big.room@example.com" {RealName="Room \"One\"";}"#
        );
    }

    #[test]
    fn a_password_is_sent_but_never_shown() {
        let p = profiles(
            r#"
[provision.profiles.x]
domains = ["*"]
steps = [{ step = "CREATEACCOUNT", settings = { Password = "{attr:roomPassword}" } }]
"#,
        );
        let account = Account::parse(b"room-1@example.com").unwrap();
        let plan = plan(p.select("example.com"), &account, &person()).unwrap();
        assert_eq!(
            plan[0].shown(),
            r#"CREATEACCOUNT "room-1@example.com" {Password="********";}"#
        );
        assert!(
            plan[0].line.contains(r#"Password="s3cret pw""#),
            "{}",
            plan[0].line
        );
        assert_eq!(plan[0].secrets, ["s3cret pw"]);
        assert_eq!(
            redact("bad password s3cret pw".into(), &plan[0].secrets),
            "bad password ********"
        );
    }

    #[test]
    fn a_missing_value_stops_the_plan_and_empty_steps_send_nothing() {
        let p = profiles(
            r#"
[provision.profiles.x]
domains = ["example.test"]
[[provision.profiles.x.steps]]
step = "SETACCOUNTALIASES"
aliases_attribute = "mail"
[[provision.profiles.x.steps]]
step = "UPDATEACCOUNTPREFS"
prefs = { UserFrom = "{attr:displayName} <{address}>" }
[[provision.profiles.x.steps]]
step = "CREATEMAILBOX"
mailbox = "{attr:calendarName}"
"#,
        );
        let account = Account::parse(b"bob@example.test").unwrap();
        assert_eq!(
            plan(p.select("example.test"), &account, &person()).unwrap_err(),
            Missing {
                step: 3,
                verb: "CREATEMAILBOX",
                what: "mailbox"
            }
        );
    }
}
