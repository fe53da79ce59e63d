//! The CGP data model ("Data Formats" page of the CGP Guide) with a nom parser
//! and an encoder.
//!
//! Everything works on bytes: CGP strings are UTF-8, but a helper must survive
//! anything a peer or an administrator pipes in, so invalid UTF-8 is carried
//! through instead of rejected. The parser never panics and bounds nesting
//! depth, so hostile input cannot exhaust the stack.

use nom::IResult;
use nom::Parser;
use nom::bytes::complete::{tag, take_while, take_while1};
use nom::error::{Error as NomError, ErrorKind};
use std::ops::Range;

/// Deepest nesting of arrays and dictionaries the parser accepts.
pub const MAX_DEPTH: usize = 32;

/// One CGP value. Atoms and quoted strings are the same value on the wire
/// (`abc` and `"abc"` mean the same string), so both parse to [`Value::Str`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Str(Vec<u8>),
    /// `(a, b, c)`; also the parenthesised groups of requests such as the VRFY
    /// mode `(IMAP)` or the method of `SASL(CRAM-MD5)`.
    Array(Vec<Value>),
    /// `{key=value;key2=value2;}`; keys keep their wire order.
    Dict(Vec<(Vec<u8>, Value)>),
    /// `#NULL#`
    Null,
}

impl Value {
    pub fn str(s: impl AsRef<[u8]>) -> Value {
        Value::Str(s.as_ref().to_vec())
    }

    /// The bytes of a string value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A string value as UTF-8 text, when it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// Looks a key up in a dictionary value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(pairs) => pairs
                .iter()
                .find(|(k, _)| k == key.as_bytes())
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The wire form of this value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Str(s) => encode_str_into(s, out),
            Value::Null => out.extend_from_slice(b"#NULL#"),
            Value::Array(items) => {
                out.push(b'(');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.encode_into(out);
                }
                out.push(b')');
            }
            Value::Dict(pairs) => {
                out.push(b'{');
                for (k, v) in pairs {
                    encode_str_into(k, out);
                    out.push(b'=');
                    v.encode_into(out);
                    out.push(b';');
                }
                out.push(b'}');
            }
        }
    }
}

/// Encodes a string: as an atom when that is safe (only `[A-Za-z0-9]`, the
/// Guide's rule), otherwise quoted with every byte that could break a line or
/// a quote escaped.
pub fn encode_str(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    encode_str_into(s, &mut out);
    out
}

pub fn encode_str_into(s: &[u8], out: &mut Vec<u8>) {
    if !s.is_empty() && s.iter().all(u8::is_ascii_alphanumeric) {
        out.extend_from_slice(s);
    } else {
        encode_quoted_into(s, out);
    }
}

/// Always-quoted form, for free text (error reasons, header fields) where the
/// protocol reference recommends quoting even plain words.
pub fn encode_quoted(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    encode_quoted_into(s, &mut out);
    out
}

/// Room to reserve for `len` bytes as a quoted string: the quotes and a
/// few escapes too (a filter's header lines each end in one), so that
/// they do not grow the buffer again.
pub fn quoted_room(len: usize) -> usize {
    len + len / 16 + 4
}

pub fn encode_quoted_into(s: &[u8], out: &mut Vec<u8>) {
    out.reserve(quoted_room(s.len()));
    out.push(b'"');
    // Runs of bytes that need no escape are copied whole: replies are
    // mostly plain text, and a push per byte was the bulk of a banner's
    // reply encoding. Which bytes need one is a table lookup.
    let mut plain = 0;
    for (i, &b) in s.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&s[plain..i]);
        plain = i + 1;
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            // LF is a line break; `\e` is CGP's system-independent EOL.
            b'\n' => out.extend_from_slice(b"\\e"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(&[b'\\', b'0' + b / 100, b'0' + (b / 10) % 10, b'0' + b % 10])
            }
        }
    }
    out.extend_from_slice(&s[plain..]);
    out.push(b'"');
}

/// The bytes a quoted string escapes: `\\`, `"`, control characters and DEL.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'\\' as usize] = true;
    table[b'"' as usize] = true;
    table[0x7f] = true;
    table
};

/// Why a piece of CGP data could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataError {
    /// Byte offset into the input where parsing stopped.
    pub offset: usize,
    pub reason: &'static str,
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

impl std::error::Error for DataError {}

/// Parses exactly one value; surrounding white space is allowed.
pub fn parse_value(input: &[u8]) -> Result<Value, DataError> {
    let mut values = parse_values(input)?;
    match values.len() {
        1 => Ok(values.remove(0)),
        0 => Err(DataError {
            offset: 0,
            reason: "no value",
        }),
        _ => Err(DataError {
            offset: 0,
            reason: "more than one value",
        }),
    }
}

/// Parses a run of values separated by white space: the arguments of a
/// request line.
pub fn parse_values(input: &[u8]) -> Result<Vec<Value>, DataError> {
    let mut out = Vec::new();
    each_value(input, |_, v| out.push(v))?;
    Ok(out)
}

/// Like [`parse_values`], with the byte range each value takes in `input`,
/// for a reader that must keep or replace values where they stand (the
/// simulator's capture masks secrets in place).
pub fn parse_value_spans(input: &[u8]) -> Result<Vec<(Range<usize>, Value)>, DataError> {
    let mut out = Vec::new();
    each_value(input, |span, v| out.push((span, v)))?;
    Ok(out)
}

fn each_value(input: &[u8], mut f: impl FnMut(Range<usize>, Value)) -> Result<(), DataError> {
    let mut rest = ws(input);
    while !rest.is_empty() {
        match value(rest, 0) {
            Ok((r, v)) => {
                let start = input.len() - rest.len();
                f(start..input.len() - r.len(), v);
                if !r.is_empty() && !is_ws(r[0]) {
                    return Err(error_at(input, r, "unexpected character"));
                }
                rest = ws(r);
            }
            Err(e) => return Err(from_nom(input, e)),
        }
    }
    Ok(())
}

fn error_at(input: &[u8], rest: &[u8], reason: &'static str) -> DataError {
    DataError {
        offset: input.len() - rest.len(),
        reason,
    }
}

fn from_nom(input: &[u8], e: nom::Err<NomError<&[u8]>>) -> DataError {
    match e {
        nom::Err::Error(e) | nom::Err::Failure(e) => {
            let reason = match e.code {
                ErrorKind::Char => "unterminated quoted string",
                ErrorKind::TooLarge => "nesting too deep",
                ErrorKind::SeparatedList => "malformed array",
                ErrorKind::Tag => "malformed value",
                ErrorKind::Verify => "malformed dictionary",
                _ => "malformed value",
            };
            error_at(input, e.input, reason)
        }
        nom::Err::Incomplete(_) => DataError {
            offset: input.len(),
            reason: "incomplete value",
        },
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn ws(i: &[u8]) -> &[u8] {
    let n = i.iter().take_while(|b| is_ws(**b)).count();
    &i[n..]
}

/// Bytes that may stand in an unquoted atom. Wider than the Guide's
/// letters-and-digits rule (the vendor CLI reader accepts `.@-_!#%:` and 8-bit
/// bytes), so that addresses, paths and `[ip]` tokens arrive as atoms.
pub fn is_atom_byte(b: u8) -> bool {
    b > b' ' && b != 0x7f && !matches!(b, b'"' | b'(' | b')' | b',' | b'{' | b'}' | b';' | b'=')
}

fn fail(i: &[u8], kind: ErrorKind) -> nom::Err<NomError<&[u8]>> {
    nom::Err::Failure(NomError::new(i, kind))
}

fn value(i: &[u8], depth: usize) -> IResult<&[u8], Value> {
    if depth > MAX_DEPTH {
        return Err(fail(i, ErrorKind::TooLarge));
    }
    match i.first() {
        Some(b'"') => quoted(i).map(|(r, s)| (r, Value::Str(s))),
        Some(b'(') => array(i, depth),
        Some(b'{') => dict(i, depth),
        _ => take_while1(is_atom_byte)
            .map(|a: &[u8]| {
                if a == b"#NULL#" {
                    Value::Null
                } else {
                    Value::Str(a.to_vec())
                }
            })
            .parse(i),
    }
}

/// A quoted string with the Guide's escapes; `\e` is read as a line break.
/// An unknown escape keeps the escaped byte, and `\NNN` above 255 keeps the
/// digits literally, so every input decodes to something without panicking.
fn quoted(i: &[u8]) -> IResult<&[u8], Vec<u8>> {
    let (mut rest, _) = tag(&b"\""[..]).parse(i)?;
    let mut out = Vec::new();
    loop {
        let (r, plain) = take_while(|b| b != b'"' && b != b'\\').parse(rest)?;
        out.extend_from_slice(plain);
        match r {
            [b'"', tail @ ..] => return Ok((tail, out)),
            [b'\\', esc, tail @ ..] => {
                rest = tail;
                match esc {
                    b'e' | b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    d0 @ b'0'..=b'9' => match tail {
                        [d1 @ b'0'..=b'9', d2 @ b'0'..=b'9', after @ ..] => {
                            let code = u32::from(d0 - b'0') * 100
                                + u32::from(d1 - b'0') * 10
                                + u32::from(d2 - b'0');
                            match u8::try_from(code) {
                                Ok(byte) => {
                                    out.push(byte);
                                    rest = after;
                                }
                                Err(_) => out.push(*d0),
                            }
                        }
                        _ => out.push(*d0),
                    },
                    other => out.push(*other),
                }
            }
            // Point at the opening quote: that is what needs closing.
            _ => return Err(fail(i, ErrorKind::Char)),
        }
    }
}

/// `(a, b)`. Elements may also be separated by white space alone, because
/// request groups such as a VRFY mode are not guaranteed to use commas.
fn array(i: &[u8], depth: usize) -> IResult<&[u8], Value> {
    let (mut rest, _) = tag(&b"("[..]).parse(i)?;
    let mut items = Vec::new();
    rest = ws(rest);
    loop {
        match rest.first() {
            Some(b')') => return Ok((&rest[1..], Value::Array(items))),
            None => return Err(fail(rest, ErrorKind::SeparatedList)),
            _ => {}
        }
        let (r, v) = value(rest, depth + 1)?;
        items.push(v);
        rest = ws(r);
        match rest.first() {
            Some(b',') => rest = ws(&rest[1..]),
            Some(b')') => {}
            Some(_) if rest.len() < r.len() => {}
            _ => return Err(fail(rest, ErrorKind::SeparatedList)),
        }
    }
}

/// `{key=value;}`: every pair ends with `;`.
fn dict(i: &[u8], depth: usize) -> IResult<&[u8], Value> {
    let (mut rest, _) = tag(&b"{"[..]).parse(i)?;
    let mut pairs = Vec::new();
    loop {
        rest = ws(rest);
        match rest.first() {
            Some(b'}') => return Ok((&rest[1..], Value::Dict(pairs))),
            None => return Err(fail(rest, ErrorKind::Verify)),
            _ => {}
        }
        let (r, key) = match value(rest, depth + 1)? {
            (r, Value::Str(k)) => (r, k),
            _ => return Err(fail(rest, ErrorKind::Verify)),
        };
        let r = ws(r);
        let Some(r) = r.strip_prefix(b"=") else {
            return Err(fail(r, ErrorKind::Verify));
        };
        let (r, v) = value(ws(r), depth + 1)?;
        let r = ws(r);
        let Some(r) = r.strip_prefix(b";") else {
            return Err(fail(r, ErrorKind::Verify));
        };
        pairs.push((key, v));
        rest = r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn atoms_and_quoted_strings() {
        assert_eq!(parse_value(b"abc").unwrap(), Value::str("abc"));
        assert_eq!(
            parse_value(br#""p\"a ss\233""#).unwrap(),
            Value::Str(b"p\"a ss\xe9".to_vec())
        );
        assert_eq!(
            parse_value(br#""a\\b\ec\td\re\nf""#).unwrap(),
            Value::str("a\\b\nc\td\re\nf")
        );
        assert_eq!(parse_value(b"#NULL#").unwrap(), Value::Null);
        assert_eq!(parse_value(br##""#NULL#""##).unwrap(), Value::str("#NULL#"));
    }

    #[test]
    fn odd_escapes_never_fail() {
        assert_eq!(parse_value(br#""\q""#).unwrap(), Value::str("q"));
        assert_eq!(parse_value(br#""\999x""#).unwrap(), Value::str("999x"));
        assert_eq!(parse_value(br#""\12""#).unwrap(), Value::str("12"));
    }

    #[test]
    fn arrays_dicts_and_groups() {
        assert_eq!(
            parse_value(b"(a, \"b c\",(d))").unwrap(),
            Value::Array(vec![
                Value::str("a"),
                Value::str("b c"),
                Value::Array(vec![Value::str("d")])
            ])
        );
        assert_eq!(
            parse_value(b"(IMAP [192.0.2.7])").unwrap(),
            Value::Array(vec![Value::str("IMAP"), Value::str("[192.0.2.7]")])
        );
        let d = parse_value(b"{protocol=XIMSS; clientIP=\"192.0.2.7\"; x = (1,2);}").unwrap();
        assert_eq!(d.get("clientIP"), Some(&Value::str("192.0.2.7")));
        assert_eq!(
            d.get("x"),
            Some(&Value::Array(vec![Value::str("1"), Value::str("2")]))
        );
        assert_eq!(parse_value(b"()").unwrap(), Value::Array(vec![]));
        assert_eq!(parse_value(b"{}").unwrap(), Value::Dict(vec![]));
    }

    #[test]
    fn broken_input_is_an_error_not_a_panic() {
        for bad in [
            &b"\"abc"[..],
            b"(a,b",
            b"{a=b}",
            b"{a b;}",
            b"(a,,b)",
            b")",
            b"{=;}",
            b"\"\\",
        ] {
            assert!(
                parse_value(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "(".repeat(10_000);
        assert_eq!(
            parse_value(deep.as_bytes()).unwrap_err().reason,
            "nesting too deep"
        );
    }

    #[test]
    fn values_in_a_request_line() {
        let v = parse_values(br#"(IMAP) user@example.test "pa ss\"word""#).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[1], Value::str("user@example.test"));
        assert_eq!(v[2], Value::str("pa ss\"word"));
        assert!(parse_values(b"a\"b").is_err());
    }

    #[test]
    fn escape_table_is_backslash_quote_and_controls() {
        for b in 0..=255u8 {
            let want = matches!(b, b'\\' | b'"' | 0..=0x1f | 0x7f);
            assert_eq!(NEEDS_ESCAPE[usize::from(b)], want, "{b:#x}");
        }
    }

    #[test]
    fn encoder_follows_the_reference_examples() {
        // docs/wire.md, quoted strings: a folded header with a tab, a
        // backslash and quotes.
        let text = "DKIM-Signature: v=1; a=rsa-sha256; d=example.test;\n\tb=abc\\def; z=\"q\"";
        assert_eq!(
            encode_quoted(text.as_bytes()),
            br#""DKIM-Signature: v=1; a=rsa-sha256; d=example.test;\e\tb=abc\\def; z=\"q\"""#
        );
        assert_eq!(encode_str(b"abc123"), b"abc123");
        assert_eq!(encode_str(b""), b"\"\"");
        assert_eq!(encode_str(b"a\x01\x7f\xc3\xa9"), b"\"a\\001\\127\xc3\xa9\"");
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            proptest::collection::vec(any::<u8>(), 0..24).prop_map(Value::Str),
            "[a-zA-Z0-9]{1,8}".prop_map(Value::str),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(
                    (proptest::collection::vec(any::<u8>(), 0..8), inner),
                    0..6
                )
                .prop_map(Value::Dict),
            ]
        })
    }

    proptest! {
        #[test]
        fn parse_of_encode_is_identity(v in arb_value()) {
            prop_assert_eq!(parse_value(&v.encode()).unwrap(), v);
        }

        #[test]
        fn encoded_values_never_contain_raw_line_breaks(v in arb_value()) {
            let wire = v.encode();
            prop_assert!(!wire.contains(&b'\n') && !wire.contains(&b'\r'));
        }

        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_values(&bytes);
        }
    }
}
