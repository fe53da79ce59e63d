//! Account names: `local@domain`, parsed once where a name enters.

use std::fmt;

/// Why a name is not an account name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("the account name is not UTF-8")]
    NotUtf8,
    #[error("expected user@domain")]
    Malformed,
}

/// A CGP account name or mail address, lower-cased (CGP names and mail
/// domains are case-insensitive). The address is kept whole, so that the
/// local part, the domain and the address are all borrowed from one string.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Account {
    address: String,
    at: usize,
}

impl Account {
    /// Parses `local@domain`: both parts non-empty, no second `@`, no
    /// whitespace or control characters.
    pub fn parse(raw: &[u8]) -> Result<Account, AccountError> {
        let text = std::str::from_utf8(raw).map_err(|_| AccountError::NotUtf8)?;
        let at = text.find('@').ok_or(AccountError::Malformed)?;
        let (local, domain) = (&text[..at], &text[at + 1..]);
        // ASCII names, the common case, are checked and lower-cased byte by
        // byte (ASCII whitespace and controls are what `char::is_whitespace`
        // and `is_control` find there), without Unicode tables.
        let bad = |s: &str| {
            s.is_empty()
                || if s.is_ascii() {
                    s.bytes()
                        .any(|b| b == b'@' || b == b' ' || b.is_ascii_control())
                } else {
                    s.contains('@') || s.chars().any(|c| c.is_whitespace() || c.is_control())
                }
        };
        if bad(local) || bad(domain) {
            return Err(AccountError::Malformed);
        }
        if text.is_ascii() {
            return Ok(Account {
                address: text.to_ascii_lowercase(),
                at,
            });
        }
        let (local, domain) = (local.to_lowercase(), domain.to_lowercase());
        Ok(Account {
            at: local.len(),
            address: [local.as_str(), "@", domain.as_str()].concat(),
        })
    }

    /// The local part (`{user}` in templates).
    pub fn user(&self) -> &str {
        &self.address[..self.at]
    }

    /// The domain, lower-cased (`{domain}`).
    pub fn domain(&self) -> &str {
        &self.address[self.at + 1..]
    }

    /// `user@domain` (`{address}`).
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Account({:?})", self.address)
    }
}

impl std::str::FromStr for Account {
    type Err = AccountError;
    fn from_str(s: &str) -> Result<Account, AccountError> {
        Account::parse(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_lower_cased_once() {
        let a = Account::parse(b"Alice@Example.COM").unwrap();
        assert_eq!(
            (a.user(), a.domain(), a.address()),
            ("alice", "example.com", "alice@example.com")
        );
        let a = Account::parse("ÉVE@Exämple.test".as_bytes()).unwrap();
        assert_eq!((a.user(), a.domain()), ("éve", "exämple.test"));
        // A character whose lower case is longer keeps the parts apart.
        let a = Account::parse("İ@x".as_bytes()).unwrap();
        assert_eq!(a.domain(), "x");
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in ["", "@x", "x@", "a@b@c", "a b@c", "a@b\tc", "nodomain"] {
            assert_eq!(
                Account::parse(bad.as_bytes()),
                Err(AccountError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(Account::parse(b"a\xff@x"), Err(AccountError::NotUtf8));
    }
}
