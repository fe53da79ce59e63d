//! Templates with placeholders, one vocabulary for every template of the
//! suite: `{user}` (the local part), `{domain}`, `{address}` (`user@domain`),
//! where a person's entry is known `{dn}`, and in the contexts that fill
//! values from a person's entry `{attr:NAME}` (the attribute's first value).
//!
//! A template is split once, when the configuration is read, into literal
//! text and placeholders; filling it joins the parts with each value escaped
//! for the template's context in one pass. A value is never scanned for
//! placeholders again, so a local part such as `{domain}` stays itself.

use super::{Account, Person};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// A placeholder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `{user}`: the local part.
    User,
    /// `{domain}`: the domain, lower case.
    Domain,
    /// `{address}`: `user@domain`.
    Address,
    /// `{dn}`: the DN of the person's entry.
    Dn,
    /// `{id}`: the id of the person's row (SQL queries).
    Id,
}

impl Field {
    pub(super) fn name(self) -> &'static str {
        match self {
            Field::User => "{user}",
            Field::Domain => "{domain}",
            Field::Address => "{address}",
            Field::Dn => "{dn}",
            Field::Id => "{id}",
        }
    }
}

/// Names other helpers used before this vocabulary, refused with a hint.
const RENAMED: [(&str, Field); 3] = [
    ("email", Field::Address),
    ("account", Field::Address),
    ("local", Field::User),
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Part {
    Text(String),
    Field(Field),
    /// `{attr:NAME}`: the first value of a directory attribute.
    Attr(String),
}

/// Why a template was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder {{{0}}}; this template takes {1}")]
    Unknown(String, String),
    #[error("placeholder {{{0}}} is now {1}")]
    Renamed(String, &'static str),
    #[error("{0}")]
    Invalid(String),
}

/// What a template is filled with.
#[derive(Clone, Copy, Debug)]
pub struct Values<'a> {
    pub account: &'a Account,
    pub dn: Option<&'a str>,
}

/// What kind of text a template makes: which placeholders it takes, how
/// values are escaped in it, and how a filled sample is checked at load.
pub trait Context {
    const FIELDS: &'static [Field];
    /// Whether `{attr:NAME}` placeholders are taken.
    const ATTRIBUTES: bool = false;
    fn escape(value: &str) -> Cow<'_, str>;
    /// Checks a sample filling of the template.
    fn check(sample: &str) -> Result<(), String>;
}

/// An LDAP search filter that names an account (`{user}`, `{domain}`,
/// `{address}`); values are escaped for filters (RFC 4515).
#[derive(Debug)]
pub enum AccountFilter {}

/// An LDAP filter that may also name the person's entry (`{dn}`), such as
/// the filter that finds a person's groups.
#[derive(Debug)]
pub enum EntryFilter {}

/// A DN built from an account; values are escaped for DN values (RFC 4514).
#[derive(Debug)]
pub enum AccountDn {}

fn check_filter(sample: &str) -> Result<(), String> {
    crate::ldap::check_filter(sample)
}

impl Context for AccountFilter {
    const FIELDS: &'static [Field] = &[Field::User, Field::Domain, Field::Address];
    fn escape(value: &str) -> Cow<'_, str> {
        ldap3::ldap_escape(value)
    }
    fn check(sample: &str) -> Result<(), String> {
        check_filter(sample)
    }
}

impl Context for EntryFilter {
    const FIELDS: &'static [Field] = &[Field::User, Field::Domain, Field::Address, Field::Dn];
    fn escape(value: &str) -> Cow<'_, str> {
        ldap3::ldap_escape(value)
    }
    fn check(sample: &str) -> Result<(), String> {
        check_filter(sample)
    }
}

impl Context for AccountDn {
    const FIELDS: &'static [Field] = &[Field::User, Field::Domain, Field::Address];
    fn escape(value: &str) -> Cow<'_, str> {
        ldap3::dn_escape(value)
    }
    fn check(sample: &str) -> Result<(), String> {
        super::Dn::parse(sample)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// A value sent to the CGP CLI (an account setting, a mailbox name, an
/// ACL entry): `{user}`, `{domain}`, `{address}` and `{attr:NAME}`. Values
/// are not escaped here: the filled text becomes one string of the CGP data
/// encoder, which quotes it.
#[derive(Debug)]
pub enum CliValue {}

impl Context for CliValue {
    const FIELDS: &'static [Field] = &[Field::User, Field::Domain, Field::Address];
    const ATTRIBUTES: bool = true;
    fn escape(value: &str) -> Cow<'_, str> {
        Cow::Borrowed(value)
    }
    fn check(_sample: &str) -> Result<(), String> {
        Ok(())
    }
}

/// A template compiled for one context.
pub struct Template<C> {
    source: String,
    parts: Vec<Part>,
    context: PhantomData<C>,
}

impl<C> Clone for Template<C> {
    fn clone(&self) -> Self {
        Template {
            source: self.source.clone(),
            parts: self.parts.clone(),
            context: PhantomData,
        }
    }
}

impl<C> fmt::Debug for Template<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.source)
    }
}

impl<C> PartialEq for Template<C> {
    fn eq(&self, other: &Self) -> bool {
        self.parts == other.parts
    }
}

impl<C: Context> Template<C> {
    /// Splits `source` into text and placeholders. `{name}` with a name of
    /// letters is a placeholder and must be one this context takes; any
    /// other brace is text.
    pub fn parse(source: &str) -> Result<Template<C>, TemplateError> {
        let parts = split(source, C::FIELDS, C::ATTRIBUTES)?;
        let template = Template {
            source: source.to_string(),
            parts,
            context: PhantomData,
        };
        let account = Account::parse(b"sample@example.test").expect("a valid sample");
        let sample = template.fill(&Values {
            account: &account,
            dn: Some("cn=sample,dc=example,dc=test"),
        });
        C::check(&sample).map_err(TemplateError::Invalid)?;
        Ok(template)
    }

    /// The template with each placeholder replaced by its value, escaped
    /// for the context, in one pass. `{dn}` without a DN is left empty.
    pub fn fill(&self, values: &Values<'_>) -> String {
        // Only contexts with `ATTRIBUTES` hold `{attr:…}`; they are filled
        // through `fill_person`.
        self.fill_with(values, |_| Some("")).unwrap_or_default()
    }

    /// Fills a template that may name attributes from `person`'s entry;
    /// `None` when the person lacks one of them.
    pub fn fill_person(&self, values: &Values<'_>, person: &Person) -> Option<String> {
        self.fill_with(values, |a| person.first(a))
    }

    fn fill_with<'p>(
        &self,
        values: &Values<'_>,
        attribute: impl Fn(&str) -> Option<&'p str>,
    ) -> Option<String> {
        let mut out = String::with_capacity(self.source.len() + values.account.address().len());
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => out.push_str(&C::escape(match f {
                    Field::User => values.account.user(),
                    Field::Domain => values.account.domain(),
                    Field::Address => values.account.address(),
                    Field::Dn | Field::Id => values.dn.unwrap_or_default(),
                })),
                Part::Attr(a) => out.push_str(&C::escape(attribute(a)?)),
            }
        }
        Some(out)
    }

    /// The directory attributes the template names.
    pub fn attributes(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Attr(a) => Some(a.as_str()),
            _ => None,
        })
    }

    /// Whether the template is plain text, without placeholders.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Fills the account placeholders (no `{dn}`).
    pub fn fill_account(&self, account: &Account) -> String {
        self.fill(&Values { account, dn: None })
    }

    /// Whether the template uses a placeholder.
    pub fn uses(&self, field: Field) -> bool {
        self.parts.contains(&Part::Field(field))
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// Splits `source` into text and placeholders. `{name}` with a name of
/// letters is a placeholder and must be one of `fields`; `{attr:NAME}` is
/// one where `attributes` allows it (refused elsewhere); any other brace is
/// text.
pub(super) fn split(
    source: &str,
    fields: &[Field],
    attributes: bool,
) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = source;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        if let Some(attr) = after.strip_prefix(ATTR) {
            let name = attr.split_once('}').map_or(attr, |(n, _)| n);
            if !attributes {
                return Err(TemplateError::Invalid(format!(
                    "{{{ATTR}{name}}}: this template takes no directory attributes"
                )));
            }
            if !attr.contains('}') || !is_attribute_name(name) {
                return Err(TemplateError::Invalid(format!(
                    "{{{ATTR}{name}: expected {{attr:NAME}} with an attribute name (letters, digits, -)"
                )));
            }
            text.push_str(&rest[..open]);
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Attr(name.to_string()));
            rest = &attr[name.len() + 1..];
            continue;
        }
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphabetic() || *b == b'_')
            .count();
        if name_len == 0 || after.as_bytes().get(name_len) != Some(&b'}') {
            text.push_str(&rest[..=open]);
            rest = after;
            continue;
        }
        let name = &after[..name_len];
        let field = fields
            .iter()
            .copied()
            .find(|f| &f.name()[1..f.name().len() - 1] == name)
            .ok_or_else(|| match RENAMED.iter().find(|(old, _)| *old == name) {
                Some((_, new)) if fields.contains(new) => {
                    TemplateError::Renamed(name.to_string(), new.name())
                }
                _ => TemplateError::Unknown(
                    name.to_string(),
                    fields
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            })?;
        text.push_str(&rest[..open]);
        if !text.is_empty() {
            parts.push(Part::Text(std::mem::take(&mut text)));
        }
        parts.push(Part::Field(field));
        rest = &after[name_len + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

const ATTR: &str = "attr:";

/// An LDAP attribute description (RFC 4512: a letter, then letters, digits
/// and hyphens; `;option`s allowed), which also covers SQL column names
/// and the static file's keys.
pub fn is_attribute_name(name: &str) -> bool {
    name.split(';').enumerate().all(|(i, part)| {
        let mut bytes = part.bytes();
        match bytes.next() {
            Some(b) if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) => {
                bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }
            _ => false,
        }
    })
}

impl<'de, C: Context> Deserialize<'de> for Template<C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Template::parse(&source).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(s: &str) -> Account {
        Account::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn values_are_not_expanded_again() {
        // A local part that looks like a placeholder stays itself, in every
        // context: the old replace-per-name expansion bound `{domain}@alice`
        // as `uid=alice`.
        let a = account("{domain}@alice");
        let dn = Template::<AccountDn>::parse("uid={user},ou=people,dc=x").unwrap();
        assert_eq!(dn.fill_account(&a), "uid={domain},ou=people,dc=x");
        let f = Template::<AccountFilter>::parse("(&(uid={user})(o={domain}))").unwrap();
        assert_eq!(f.fill_account(&a), "(&(uid={domain})(o=alice))");
        let a = account("{address}@x.test");
        let f = Template::<EntryFilter>::parse("(&(member={dn})(mail={address}))").unwrap();
        assert_eq!(
            f.fill(&Values {
                account: &a,
                dn: Some("uid={user},dc=x")
            }),
            "(&(member=uid={user},dc=x)(mail={address}@x.test))"
        );
    }

    #[test]
    fn values_are_escaped_for_their_context() {
        let a = account("x*)(uid=*@ex.test");
        let f = Template::<AccountFilter>::parse("(uid={user})").unwrap();
        assert_eq!(f.fill_account(&a), "(uid=x\\2a\\29\\28uid=\\2a)");
        let a = account("a,ou=admins@ex.test");
        let dn = Template::<AccountDn>::parse("uid={user},ou=people").unwrap();
        assert_eq!(dn.fill_account(&a), "uid=a\\2cou\\3dadmins,ou=people");
        let f = Template::<AccountFilter>::parse("(mail={address})").unwrap();
        assert_eq!(f.fill_account(&a), "(mail=a,ou=admins@ex.test)");
    }

    #[test]
    fn unknown_and_renamed_placeholders_are_refused_at_load() {
        let e = Template::<AccountFilter>::parse("(uid={usr})").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown placeholder {usr}; this template takes {user}, {domain}, {address}"
        );
        let e = Template::<AccountFilter>::parse("(mail={email})").unwrap_err();
        assert_eq!(e.to_string(), "placeholder {email} is now {address}");
        assert!(Template::<AccountFilter>::parse("(member={dn})").is_err());
        assert!(Template::<AccountFilter>::parse("(uid={user}").is_err());
        assert!(Template::<AccountDn>::parse("{user}").is_err());
        // Braces that are no placeholder are text.
        let f = Template::<AccountFilter>::parse("(cn={ x }{user})").unwrap();
        assert_eq!(f.fill_account(&account("a@b")), "(cn={ x }a)");
    }

    #[test]
    fn attributes_fill_cli_values_once_and_are_refused_elsewhere() {
        let t = Template::<CliValue>::parse("\"{attr:cn}\" <{address}>").unwrap();
        assert_eq!(t.attributes().collect::<Vec<_>>(), ["cn"]);
        let mut p = Person::default();
        // A value that looks like a placeholder is not expanded again.
        p.push_values("CN", ["{user} {attr:cn}".to_string()]);
        let a = account("room-1@confroom.example.test");
        let v = Values {
            account: &a,
            dn: None,
        };
        assert_eq!(
            t.fill_person(&v, &p).as_deref(),
            Some("\"{user} {attr:cn}\" <room-1@confroom.example.test>")
        );
        assert_eq!(t.fill_person(&v, &Person::default()), None);
        assert!(
            Template::<CliValue>::parse("Calendar")
                .unwrap()
                .is_literal()
        );
        for bad in ["{attr:}", "{attr:c n}", "{attr:cn", "{dn}"] {
            assert!(Template::<CliValue>::parse(bad).is_err(), "{bad}");
        }
        let e = Template::<AccountFilter>::parse("(cn={attr:cn})").unwrap_err();
        assert!(e.to_string().contains("no directory attributes"), "{e}");
    }
}
