//! The RFC 5322 side of a queue file, through `mail-parser`: header fields
//! with their decoded values (folding undone, RFC 2047 words and 8-bit text
//! decoded), the From addresses and the attachments within the scan limit.

use mail_parser::parsers::MessageStream;
use mail_parser::{Address, HeaderName, HeaderValue, MessageParser, MimeHeaders};
use memchr::{memchr, memchr_iter, memchr2};

/// The header fields of a message, parsed once.
#[derive(Debug, Default)]
pub struct Headers<'p> {
    /// (lower-case name, decoded value) in message order; the names are
    /// the parser's.
    fields: Vec<(&'p str, String)>,
    /// The addresses of every From field, lower-case.
    pub from: Vec<String>,
}

/// Fields parsed as addresses; every other wanted field is decoded text.
const ADDRESS_FIELDS: [&str; 11] = [
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-bcc",
];

/// Parses the header fields some rule looks at, and skips the others.
///
/// The header is walked field by field the way mail-parser's own header
/// loop does (`MessageStream::parse_header_name`, then the value), but only
/// the wanted fields are handed to its value parsers: a skipped field costs
/// one `memchr` per line instead of a byte-by-byte parse.
#[derive(Debug)]
pub struct HeaderParser {
    /// (lower-case name, parsed as addresses, value wanted), for the names
    /// mail-parser takes as field names.
    names: Vec<(String, bool, bool)>,
    /// The From addresses are wanted ([`Headers::from`]).
    from: bool,
}

impl HeaderParser {
    /// A parser for the values of the fields called `names` (any case) and,
    /// with `from`, the addresses of the From fields.
    pub fn new(names: impl IntoIterator<Item = String>, from: bool) -> HeaderParser {
        let mut names: Vec<String> = names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
        names.sort();
        names.dedup();
        // A name mail-parser does not take as a field name never matches.
        names.retain(|n| HeaderName::parse(n.as_str()).is_some());
        let mut names: Vec<(String, bool, bool)> = names
            .into_iter()
            .map(|n| {
                let address = ADDRESS_FIELDS.contains(&n.as_str());
                (n, address, true)
            })
            .collect();
        if from && !names.iter().any(|(n, ..)| n == "from") {
            // Parsed for its addresses only: no displayed value to build.
            names.push(("from".to_string(), true, false));
        }
        HeaderParser { names, from }
    }

    pub fn parse(&self, header: &[u8]) -> Headers<'_> {
        let mut out = Headers::default();
        if self.names.is_empty() {
            return out;
        }
        let mut s = MessageStream::new(header);
        loop {
            // Between fields, as `MessageStream::parse_headers`: white space
            // is skipped and an empty line ends the header.
            loop {
                match s.peek() {
                    Some(b'\n') | None => return out,
                    Some(ch) if !ch.is_ascii_whitespace() => break,
                    _ => {
                        s.next();
                    }
                }
            }
            // A name without white space up to its colon, as nearly all
            // are, is the name mail-parser finds (its known names are
            // their lower-case spellings): only odd lines go through its
            // byte-by-byte scan.
            let at = s.offset();
            let parsed;
            let name = match memchr2(b':', b'\n', &header[at..]) {
                Some(len)
                    if len > 0
                        && header[at + len] == b':'
                        && !header[at..at + len].iter().any(u8::is_ascii_whitespace) =>
                {
                    s.skip_bytes(len + 1);
                    &header[at..at + len]
                }
                _ => {
                    let Some(name) = s.parse_header_name() else {
                        if s.is_eof() {
                            return out;
                        }
                        continue;
                    };
                    parsed = name;
                    parsed.as_str().as_bytes()
                }
            };
            let Some((wanted, address, value_wanted)) = self
                .names
                .iter()
                .find(|(n, ..)| n.as_bytes().eq_ignore_ascii_case(name))
            else {
                let end = field_end(header, s.offset());
                skip_to(&mut s, end);
                continue;
            };
            let value = if *address {
                match s.parse_address() {
                    HeaderValue::Address(a) => {
                        if self.from && wanted == "from" {
                            out.from
                                .extend(addresses(&a).map(|(_, addr)| addr.to_lowercase()));
                        }
                        if !value_wanted {
                            continue;
                        }
                        shown(&a)
                    }
                    _ if !value_wanted => continue,
                    _ => String::new(),
                }
            } else {
                text(&mut s, header)
            };
            out.fields.push((wanted.as_str(), value));
        }
    }
}

/// Where the field whose value starts at `from` ends: past the line break
/// that is not followed by a space or tab (folding), or at the end.
fn field_end(header: &[u8], from: usize) -> usize {
    let mut at = from;
    while let Some(i) = memchr(b'\n', &header[at..]) {
        at += i + 1;
        if !matches!(header.get(at), Some(b' ' | b'\t')) {
            return at;
        }
    }
    header.len()
}

/// A line without the spaces, tabs and CRs around it (not other white
/// space: mail-parser keeps form feeds).
fn trim_folding(mut line: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r', rest @ ..] = line {
        line = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r'] = line {
        line = rest;
    }
    line
}

/// Moves the stream to `end` (never backwards, never past the end).
fn skip_to(s: &mut MessageStream<'_>, end: usize) {
    let at = s.offset();
    if end > at {
        s.skip_bytes(end - at);
    }
}

/// A text field's value, decoded as `MessageStream::parse_unstructured`
/// decodes it. Without RFC 2047 words, which is most fields, that decoding
/// is only the unfolding (every line trimmed of spaces, tabs and CRs, the
/// non-empty ones joined by one space, no value without a final line
/// break), done here on whole lines; `field_walk_matches_mail_parser` checks
/// the two agree.
fn text(s: &mut MessageStream<'_>, header: &[u8]) -> String {
    let start = s.offset();
    let end = field_end(header, start);
    let raw = &header[start..end];
    if memchr_iter(b'=', raw).any(|i| raw.get(i + 1) == Some(&b'?')) {
        return match s.parse_unstructured() {
            HeaderValue::Text(t) => t.into_owned(),
            _ => String::new(),
        };
    }
    skip_to(s, end);
    if raw.last() != Some(&b'\n') {
        return String::new();
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut from = 0;
    for end in memchr_iter(b'\n', raw) {
        let line = trim_folding(&raw[from..end]);
        from = end + 1;
        if line.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(line);
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl Headers<'_> {
    /// The decoded values of the fields called `name` (lower-case).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Addresses as a field value: `Name <addr>` or `addr`, joined by `, `.
fn shown(a: &Address<'_>) -> String {
    let mut out = String::new();
    for (i, (name, addr)) in addresses(a).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match name {
            Some(name) => {
                out.push_str(name);
                out.push_str(" <");
                out.push_str(addr);
                out.push('>');
            }
            None => out.push_str(addr),
        }
    }
    out
}

fn addresses<'a>(a: &'a Address<'_>) -> impl Iterator<Item = (Option<&'a str>, &'a str)> + 'a {
    a.iter()
        .filter_map(|x| Some((x.name.as_deref(), x.address.as_deref()?)))
}

/// One attachment: its file name and `type/subtype`, lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: Option<String>,
    pub content_type: String,
}

/// The attachments of a message given as its header and a prefix of its
/// body; parts past the prefix are not seen.
pub fn attachments(raw: &[u8]) -> Vec<Attachment> {
    let Some(msg) = MessageParser::new().parse(raw) else {
        return Vec::new();
    };
    msg.attachments()
        .map(|part| Attachment {
            name: part.attachment_name().map(str::to_string),
            content_type: part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{sub}", ct.ctype()),
                    None => ct.ctype().to_string(),
                })
                .unwrap_or_else(|| "application/octet-stream".into())
                .to_ascii_lowercase(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_encoded_and_8bit_fields() {
        let wanted = ["From", "subject", "X-Tag", "date", "nope"].map(String::from);
        let parser = HeaderParser::new(wanted, true);
        let h = parser.parse(
            "From: =?UTF-8?B?w4Rsw69jZQ==?= <Alice@Example.test>, bob@example.test\r\n\
             Subject: =?ISO-8859-1?Q?Gr=FC=DFe?= aus\r\n\tdem Labor\r\n\
             X-Tag: caf\u{e9} cr\u{e8}me\r\n\
             X-Tag: second\r\n\
             Date: Fri, 26 Apr 2019 15:57:14 +0000\r\n\
             X-Other: not wanted\r\n\r\n"
                .as_bytes(),
        );
        assert_eq!(h.from, ["alice@example.test", "bob@example.test"]);
        assert_eq!(
            h.values("subject").collect::<Vec<_>>(),
            ["Grüße aus dem Labor"]
        );
        assert_eq!(
            h.values("x-tag").collect::<Vec<_>>(),
            ["café crème", "second"]
        );
        let from: Vec<_> = h.values("from").collect();
        assert_eq!(from, ["Älïce <Alice@Example.test>, bob@example.test"]);
        assert_eq!(
            h.values("date").collect::<Vec<_>>(),
            ["Fri, 26 Apr 2019 15:57:14 +0000"]
        );
        assert_eq!(h.values("nope").count(), 0);
        assert_eq!(h.values("x-other").count(), 0);
        assert_eq!(
            HeaderParser::new([], false)
                .parse(b"Subject: x\r\n\r\n")
                .values("subject")
                .count(),
            0
        );
    }

    #[test]
    fn from_addresses_without_the_from_value() {
        let header = b"From: Al <AL@x.test>, b@y.test\nSubject: s\n\n";
        // Addresses wanted, the value not (no rule matches on From).
        let parser = HeaderParser::new(["subject".to_string()], true);
        let h = parser.parse(header);
        assert_eq!(h.from, ["al@x.test", "b@y.test"]);
        assert_eq!(h.values("from").count(), 0);
        assert_eq!(h.values("subject").collect::<Vec<_>>(), ["s"]);
        // The value wanted, the addresses not.
        let parser = HeaderParser::new(["from".to_string()], false);
        let h = parser.parse(header);
        assert!(h.from.is_empty());
        assert_eq!(
            h.values("from").collect::<Vec<_>>(),
            ["Al <AL@x.test>, b@y.test"]
        );
    }

    /// What mail-parser's own header loop gives for the wanted fields: the
    /// reference the field walk and the unfolding shortcut must agree with.
    fn reference(names: &[&str], header: &[u8]) -> Vec<(String, String)> {
        let mut parser = MessageParser::new().default_header_ignore();
        for n in names {
            let h = HeaderName::parse(n.to_string()).unwrap();
            parser = if ADDRESS_FIELDS.contains(n) {
                parser.header_address(h)
            } else {
                parser.header_text(h)
            };
        }
        let Some(msg) = parser.parse_headers(header) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for h in msg.headers() {
            let name = h.name().to_ascii_lowercase();
            if !names.contains(&name.as_str()) {
                continue;
            }
            let value = match h.value() {
                HeaderValue::Text(t) => t.to_string(),
                HeaderValue::Address(a) => addresses(a)
                    .map(|(n, addr)| match n {
                        Some(n) => format!("{n} <{addr}>"),
                        None => addr.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => String::new(),
            };
            out.push((name, value));
        }
        out
    }

    #[test]
    fn field_walk_matches_mail_parser() {
        let names = ["subject", "x-tag", "received", "from", "x-empty"];
        let parser = HeaderParser::new(names.map(String::from), true);
        let headers: [&[u8]; 14] = [
            b"Subject: plain\r\n\r\nbody",
            b"Subject:   padded \t \r\nX-Tag:\tx\r\n\r\n",
            b"Received: from a\r\n\tby b\r\n    \r\n\t for c; date\r\nX-Tag: y\n\n",
            b"Subject: =?UTF-8?Q?caf=C3=A9?= and\n =?UTF-8?B?w6k=?= more\n\n",
            b"Subject: no final line break",
            b"Subject: form\x0cfeed\x0c\nX-Empty:\nX-Empty:   \n\n",
            b"Subject: bad \xff\xfe bytes \xe2\x82\n\tand \xc3\xa9\n\n",
            b"no colon here\nSubject: after\n\n",
            b"  \tSubject: leading space\nSub ject: spaced name\n\n",
            b"X-Other: a\n\tSubject: folded into X-Other\nsubject: lower\n\n",
            b"From: \"Al, B\" <al@x.test>, (c) bob@y.test\nFrom: =?UTF-8?Q?=C3=84?= <c@z.test>\n\n",
            b"From: \"open quote <q@x.test>\nSubject: next\n\n",
            b"Subject: a =? b ?= c\nX-Tag: =?bogus\n\n",
            b"X-Tag: one\r\nX-Tag: two\r\n\tthree\r\nX-TAG: four\r\n\r\nSubject: body\r\n",
        ];
        for header in headers {
            let ours: Vec<(String, String)> = parser
                .parse(header)
                .fields
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect();
            assert_eq!(
                ours,
                reference(&names, header),
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[test]
    fn attachments_in_the_scanned_part_only() {
        let header = b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n";
        let body = b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
--b\r\nContent-Type: application/x-msdownload; name=\"run.exe\"\r\n\
Content-Disposition: attachment; filename=\"run.exe\"\r\n\r\nMZ\r\n\
--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"=?UTF-8?Q?R=C3=A9sum=C3=A9.pdf?=\"\r\n\r\n%PDF\r\n--b--\r\n";
        let all = attachments(&[&header[..], &body[..]].concat());
        let names: Vec<_> = all
            .iter()
            .map(|a| a.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["run.exe", "Résumé.pdf"]);
        assert_eq!(all[0].content_type, "application/x-msdownload");
        // Cut where the PDF part starts: the scan limit falls between parts.
        let cut = body.windows(5).position(|w| w == b"MZ\r\n-").unwrap() + 4;
        let first = attachments(&[&header[..], &body[..cut]].concat());
        assert_eq!(first.len(), 1, "{first:?}");
    }
}
