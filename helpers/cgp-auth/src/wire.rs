//! Arguments of the authenticator's commands. Passwords may contain spaces,
//! quotes and `\NNN` escapes when CGP quotes them, and are taken literally
//! when CGP sends a bare token, so the line is tokenised here rather than
//! with the generic value parser (which would reject a bare `pa"ss`).

use cgp_lookup::directory::{Account, AccountError};
use cgp_wire::data::parse_value;
use std::net::IpAddr;

/// `VRFY [(mode)] user@domain password`.
#[derive(Debug)]
pub struct Vrfy {
    pub account: Account,
    pub password: Vec<u8>,
    /// A client address found in the mode, for throttling and logs.
    pub ip: Option<IpAddr>,
}

enum Token<'a> {
    Group(&'a [u8]),
    Quoted(Vec<u8>),
    Bare(&'a [u8]),
}

fn skip_ws(i: &[u8]) -> &[u8] {
    let n = i.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &i[n..]
}

/// The end of a quoted string starting at `i[0] == '"'`.
fn quoted_end(i: &[u8]) -> Option<usize> {
    let mut pos = 1;
    while pos < i.len() {
        match i[pos] {
            b'\\' => pos += 2,
            b'"' => return Some(pos + 1),
            _ => pos += 1,
        }
    }
    None
}

fn next_token(i: &[u8]) -> Result<Option<(Token<'_>, &[u8])>, &'static str> {
    let i = skip_ws(i);
    match i.first() {
        None => Ok(None),
        Some(b'(') => {
            let mut depth = 0usize;
            let mut pos = 0;
            while pos < i.len() {
                match i[pos] {
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(Some((Token::Group(&i[..=pos]), &i[pos + 1..])));
                        }
                    }
                    b'"' => {
                        pos += quoted_end(&i[pos..]).ok_or("unterminated quoted string")? - 1;
                    }
                    _ => {}
                }
                pos += 1;
            }
            Err("unbalanced parentheses")
        }
        Some(b'"') => {
            let end = quoted_end(i).ok_or("unterminated quoted string")?;
            let value = parse_value(&i[..end]).map_err(|_| "bad quoted string")?;
            let bytes = value.as_bytes().ok_or("bad quoted string")?.to_vec();
            Ok(Some((Token::Quoted(bytes), &i[end..])))
        }
        Some(_) => {
            let n = i.iter().take_while(|b| !b.is_ascii_whitespace()).count();
            Ok(Some((Token::Bare(&i[..n]), &i[n..])))
        }
    }
}

fn word<'a>(t: &'a Token<'_>) -> Option<&'a [u8]> {
    match t {
        Token::Quoted(b) => Some(b),
        Token::Bare(b) => Some(b),
        Token::Group(_) => None,
    }
}

/// The first IP address among the words of a mode group such as
/// `(IMAP [192.0.2.7])` or `(SMTP, 2001:db8::1)`.
fn ip_in(group: &[u8]) -> Option<IpAddr> {
    group
        .split(|&c| c.is_ascii_whitespace() || matches!(c, b',' | b';' | b'(' | b')' | b'"'))
        .filter_map(|w| {
            let w = &w[w.iter().take_while(|&&c| c == b'[').count()..];
            // `[addr]` or `[addr]:port`
            let w = w.split(|&c| c == b']').next().unwrap_or(w);
            // Only words that can be addresses are worth a parse (the
            // protocol names in front never are).
            if !w.iter().any(|&c| c == b'.' || c == b':') {
                return None;
            }
            std::str::from_utf8(w).ok()?.parse::<IpAddr>().ok()
        })
        .next()
}

pub const VRFY_USAGE: &str = "expected: VRFY [(mode)] user@domain password";

impl Vrfy {
    pub fn parse(rest: &[u8]) -> Result<Vrfy, &'static str> {
        let (first, mut rest) = next_token(rest)?.ok_or(VRFY_USAGE)?;
        let mut ip = None;
        let user_tok = if let Token::Group(g) = first {
            ip = ip_in(g);
            let (t, r) = next_token(rest)?.ok_or(VRFY_USAGE)?;
            rest = r;
            t
        } else {
            first
        };
        let account = parse_account(word(&user_tok).ok_or(VRFY_USAGE)?)?;
        let (pw_tok, _) = next_token(rest)?.ok_or(VRFY_USAGE)?;
        let password = word(&pw_tok).ok_or(VRFY_USAGE)?.to_vec();
        Ok(Vrfy {
            account,
            password,
            ip,
        })
    }
}

/// The single `user@domain` argument of NEW and READPLAIN.
fn parse_account(raw: &[u8]) -> Result<Account, &'static str> {
    Account::parse(raw).map_err(|e| match e {
        AccountError::NotUtf8 => "the account name is not UTF-8",
        AccountError::Malformed => "expected user@domain",
    })
}

pub fn single_account(rest: &[u8], usage: &'static str) -> Result<Account, &'static str> {
    let (t, after) = next_token(rest)?.ok_or(usage)?;
    let t = match t {
        // READPLAIN may carry a mode group too, like VRFY.
        Token::Group(_) => next_token(after)?.ok_or(usage)?.0,
        other => other,
    };
    parse_account(word(&t).ok_or(usage)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vrfy(s: &str) -> Vrfy {
        Vrfy::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn plain_and_quoted_passwords() {
        let v = vrfy("alice@Example.TEST secret");
        assert_eq!(v.account.address(), "alice@example.test");
        assert_eq!(v.password, b"secret");
        assert_eq!(v.ip, None);
        let v = vrfy(r#"(IMAP) bob@example.test "pa ss\"word""#);
        assert_eq!(v.password, b"pa ss\"word");
        let v = vrfy(r#"bob@example.test "p\"a ss\233""#);
        assert_eq!(v.password, b"p\"a ss\xe9");
        // A bare token is literal, quotes and backslashes included.
        let v = vrfy(r#"bob@example.test pa"ss\1"#);
        assert_eq!(v.password, br#"pa"ss\1"#);
    }

    #[test]
    fn mode_with_address() {
        let v = vrfy("(IMAP [192.0.2.7]) a@b.c x");
        assert_eq!(v.ip, Some("192.0.2.7".parse().unwrap()));
        let v = vrfy("(SMTP, 2001:db8::1) a@b.c x");
        assert_eq!(v.ip, Some("2001:db8::1".parse().unwrap()));
        let v = vrfy("(\"HTTP (x)\" [10.0.0.1]:443) a@b.c x");
        assert_eq!(v.ip, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_input_is_an_error() {
        for bad in [
            "",
            "alice@example.test",
            "alice secret",
            "(IMAP",
            "@x y",
            "a@ y",
            "a@b@c y",
            "(IMAP) a@b.c",
            "a@b.c \"open",
        ] {
            assert!(Vrfy::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn single_account_forms() {
        assert_eq!(
            single_account(b"new@x.test", "u").unwrap().address(),
            "new@x.test"
        );
        assert_eq!(
            single_account(b"(IMAP) new@x.test", "u").unwrap().address(),
            "new@x.test"
        );
        assert!(single_account(b"", "u").is_err());
        assert!(single_account(b"nodomain", "u").is_err());
    }
}
