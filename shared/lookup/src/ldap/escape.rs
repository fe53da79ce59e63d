//! Escaping of user-supplied values before they go into filters and DNs.

use std::fmt::Write;

/// Escapes a value for an LDAP search filter (RFC 4515 §3): `*`, `(`, `)`,
/// `\` and NUL become `\XX`; so do all other bytes outside printable ASCII,
/// which keeps filters readable in logs.
pub fn escape_filter(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'*' | b'(' | b')' | b'\\' | 0 | 0x80.. | ..0x20 | 0x7f => {
                let _ = write!(out, "\\{b:02x}");
            }
            _ => out.push(char::from(b)),
        }
    }
    out
}

/// Escapes a value for use as an attribute value in a DN (RFC 4514 §2.4):
/// `"`, `+`, `,`, `;`, `<`, `>`, `\`, `=` get a backslash, as do a leading
/// space or `#` and a trailing space; NUL and other control bytes become `\XX`.
pub fn escape_dn(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_metacharacters_are_escaped() {
        assert_eq!(escape_filter("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(escape_filter("\\2a"), "\\5c2a");
        assert_eq!(escape_filter("a\0b"), "a\\00b");
        assert_eq!(escape_filter("alice"), "alice");
        assert_eq!(escape_filter("é"), "\\c3\\a9");
    }

    #[test]
    fn escaped_filters_parse_and_match_literally() {
        // The escaped value must be a single assertion value to the parser.
        for hostile in ["*)(uid=*", "\\2a", "x)(|(objectClass=*)", "(", "\\"] {
            let f = format!("(uid={})", escape_filter(hostile));
            assert!(ldap3::parse_filter(&f).is_ok(), "{f}");
        }
    }

    #[test]
    fn dn_specials_are_escaped() {
        assert_eq!(escape_dn("a,b=c"), "a\\,b\\=c");
        assert_eq!(escape_dn(" x "), "\\ x\\ ");
        assert_eq!(escape_dn("#x#"), "\\#x#");
        assert_eq!(escape_dn("q\"+;<>\\"), "q\\\"\\+\\;\\<\\>\\\\");
        assert_eq!(escape_dn("a\0"), "a\\00");
        assert_eq!(escape_dn("Zoë"), "Zoë");
    }
}
