//! What the directory knows about a person: an id (the DN in LDAP),
//! attributes and groups; and distinguished names compared as LDAP does.

use std::fmt;

/// A person found in a directory. Attribute names are kept in lower case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Person {
    /// The entry's DN in LDAP, the account name in the static file.
    pub id: String,
    /// Attribute name (lower case) and values: the few attributes the
    /// helpers read, found by a scan (cheaper than hashing the name).
    pub attributes: Vec<(String, Vec<String>)>,
    /// The groups the person belongs to (empty when the directory is not
    /// configured to look groups up).
    pub groups: Vec<Group>,
}

impl Person {
    /// All values of an attribute (empty when absent); the name ignores case.
    pub fn values(&self, attribute: &str) -> &[String] {
        self.attributes
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(attribute))
            .map_or(&[], |(_, values)| values.as_slice())
    }

    /// The first value of an attribute.
    pub fn first(&self, attribute: &str) -> Option<&str> {
        self.values(attribute).first().map(String::as_str)
    }

    /// Whether the person is in the group: `group` is compared with each
    /// group's name (ignoring case) or, when it is a DN, with its DN.
    pub fn in_group(&self, group: &GroupRef) -> bool {
        self.groups.iter().any(|g| group.matches(g))
    }

    /// Adds values to an attribute (name lower-cased).
    pub fn push_values(&mut self, attribute: &str, values: impl IntoIterator<Item = String>) {
        let name = attribute.to_ascii_lowercase();
        match self.attributes.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.extend(values),
            None => self.attributes.push((name, values.into_iter().collect())),
        }
    }
}

/// A group a person belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The group's name, lower case: its name attribute (`cn`), or the
    /// value of the first RDN of its DN when only the DN is known.
    pub name: String,
    /// The group's DN, when it has one (LDAP).
    pub dn: Option<Dn>,
}

impl Group {
    /// A group known by its DN only (`memberOf` values): named by its first
    /// RDN's value.
    pub fn from_dn(dn: Dn) -> Group {
        Group {
            name: dn.first_value().unwrap_or_default().to_string(),
            dn: Some(dn),
        }
    }

    pub fn named(name: &str) -> Group {
        Group {
            name: name.to_lowercase(),
            dn: None,
        }
    }
}

/// A group as a configuration names it: a name, or a DN (when it parses as
/// one with at least two RDNs, `cn=staff,ou=groups,...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRef {
    name: String,
    dn: Option<Dn>,
}

impl GroupRef {
    pub fn new(text: &str) -> GroupRef {
        GroupRef {
            name: text.to_lowercase(),
            dn: Dn::parse(text).ok().filter(|d| d.rdns.len() > 1),
        }
    }

    fn matches(&self, g: &Group) -> bool {
        match (&self.dn, &g.dn) {
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
            (None, _) => self.name == g.name,
        }
    }
}

/// Why a text is not a DN.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a distinguished name")]
pub struct DnError(pub String);

/// A distinguished name compared the way LDAP compares them (RFC 4514,
/// caseIgnoreMatch values): attribute types and values ignore case, spaces
/// around separators do not count, escapes (`\,`, `\2c`) are undone before
/// comparing, and the values of a multi-valued RDN compare in any order.
#[derive(Clone)]
pub struct Dn {
    text: String,
    /// Per RDN, its (type, value) pairs, normalised and sorted.
    rdns: Vec<Vec<(String, String)>>,
}

impl Dn {
    pub fn parse(text: &str) -> Result<Dn, DnError> {
        let bad = || DnError(text.to_string());
        let mut rdns = Vec::new();
        if text.trim().is_empty() {
            return Ok(Dn {
                text: String::new(),
                rdns,
            });
        }
        let mut rdn: Vec<(String, String)> = Vec::new();
        let mut bytes = text.bytes().peekable();
        loop {
            // The attribute type, up to '='.
            let mut kind = String::new();
            loop {
                match bytes.next() {
                    Some(b'=') => break,
                    Some(b) if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' => {
                        kind.push(char::from(b.to_ascii_lowercase()))
                    }
                    Some(b' ') if kind.is_empty() => {}
                    Some(b' ') if matches!(bytes.peek(), Some(b' ' | b'=')) => {}
                    _ => return Err(bad()),
                }
            }
            if kind.is_empty() {
                return Err(bad());
            }
            // The value, up to an unescaped ',', ';' or '+'.
            let mut value = Vec::new();
            // Escaped bytes are kept even when they are spaces.
            let mut kept = 0;
            let end = loop {
                match bytes.next() {
                    None => break None,
                    Some(sep @ (b',' | b';' | b'+')) => break Some(sep),
                    Some(b'\\') => {
                        let hi = bytes.next().ok_or_else(bad)?;
                        let byte = match (char::from(hi).to_digit(16), bytes.peek()) {
                            (Some(h), Some(&lo)) if char::from(lo).is_ascii_hexdigit() => {
                                bytes.next();
                                (h * 16 + char::from(lo).to_digit(16).unwrap_or(0)) as u8
                            }
                            _ => hi,
                        };
                        value.push(byte);
                        kept = value.len();
                    }
                    Some(b' ') if value.is_empty() => {}
                    Some(b) => value.push(b),
                }
            };
            while value.len() > kept && value.last() == Some(&b' ') {
                value.pop();
            }
            let value = String::from_utf8(value).map_err(|_| bad())?;
            rdn.push((kind, value.to_lowercase()));
            if end != Some(b'+') {
                rdn.sort();
                rdns.push(std::mem::take(&mut rdn));
            }
            if end.is_none() {
                break;
            }
        }
        Ok(Dn {
            text: text.to_string(),
            rdns,
        })
    }

    /// The DN as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The (unescaped, lower-case) value of the first RDN.
    pub fn first_value(&self) -> Option<&str> {
        self.rdns.first()?.first().map(|(_, v)| v.as_str())
    }
}

impl PartialEq for Dn {
    fn eq(&self, other: &Dn) -> bool {
        self.rdns == other.rdns
    }
}

impl Eq for Dn {}

impl fmt::Debug for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dn({:?})", self.text)
    }
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dn(s: &str) -> Dn {
        Dn::parse(s).unwrap()
    }

    #[test]
    fn dns_compare_as_ldap_does() {
        assert_eq!(
            dn("CN=Mail Users, OU=Groups,DC=corp"),
            dn("cn=mail users,ou=groups,dc=corp")
        );
        // Escapes are undone before comparing: `\,`, `\2c` and `\2C` are one
        // comma, and a comma in a value is not a separator.
        assert_eq!(dn("cn=Smith\\, John,dc=x"), dn("cn=smith\\2c john,dc=x"));
        assert_eq!(dn("cn=Smith\\2C John,dc=x"), dn("cn=smith\\, john,dc=x"));
        assert_ne!(dn("cn=Smith\\, John,dc=x"), dn("cn=Smith,cn=John,dc=x"));
        // Multi-valued RDNs in any order.
        assert_eq!(dn("cn=a+uid=b,dc=x"), dn("UID=b + CN=a,dc=x"));
        // An escaped trailing space is part of the value.
        assert_ne!(dn("cn=a\\ ,dc=x"), dn("cn=a,dc=x"));
        assert_ne!(dn("cn=staff,ou=groups"), dn("cn=outbound,ou=groups"));
        assert_ne!(dn("cn=staff"), dn("cn=staff,ou=groups"));
        assert!(Dn::parse("no equals sign").is_err());
        assert!(Dn::parse("cn=x\\").is_err());
    }

    #[test]
    fn groups_match_by_name_or_dn() {
        let p = Person {
            groups: vec![
                Group::from_dn(dn("cn=Staff,ou=groups,dc=x")),
                Group::named("Sales"),
            ],
            ..Person::default()
        };
        assert!(p.in_group(&GroupRef::new("staff")));
        assert!(p.in_group(&GroupRef::new("CN=staff, OU=Groups, DC=x")));
        assert!(!p.in_group(&GroupRef::new("cn=staff,ou=other,dc=x")));
        assert!(p.in_group(&GroupRef::new("SALES")));
        assert!(!p.in_group(&GroupRef::new("cn=sales,ou=groups,dc=x")));
    }
}
