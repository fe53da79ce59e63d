//! The RFC 5322 side of a queue file, through `mail-parser`: header fields
//! with their decoded values (folding undone, RFC 2047 words and 8-bit text
//! decoded), the From addresses and the attachments within the scan limit.

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser, MimeHeaders};

/// The header fields of a message, parsed once.
#[derive(Debug, Default)]
pub struct Headers {
    /// (lower-case name, decoded value) in message order.
    fields: Vec<(String, String)>,
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
#[derive(Debug)]
pub struct HeaderParser {
    parser: MessageParser,
    names: Vec<String>,
}

impl HeaderParser {
    /// A parser for the fields called `names` (any case).
    pub fn new(names: impl IntoIterator<Item = String>) -> HeaderParser {
        let mut names: Vec<String> = names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
        names.sort();
        names.dedup();
        let mut parser = MessageParser::new().default_header_ignore();
        for n in &names {
            let Some(h) = HeaderName::parse(n.clone()) else {
                continue;
            };
            parser = if ADDRESS_FIELDS.contains(&n.as_str()) {
                parser.header_address(h)
            } else {
                parser.header_text(h)
            };
        }
        HeaderParser { parser, names }
    }

    pub fn parse(&self, header: &[u8]) -> Headers {
        let mut out = Headers::default();
        if self.names.is_empty() {
            return out;
        }
        let Some(msg) = self.parser.parse_headers(header) else {
            return out;
        };
        for h in msg.headers() {
            let name = h.name().to_ascii_lowercase();
            if self.names.binary_search(&name).is_err() {
                continue;
            }
            let value = match h.value() {
                HeaderValue::Text(t) => t.to_string(),
                HeaderValue::TextList(l) => l.join(", "),
                HeaderValue::Address(a) => {
                    if name == "from" {
                        out.from
                            .extend(addresses(a).map(|(_, addr)| addr.to_lowercase()));
                    }
                    addresses(a)
                        .map(|(n, addr)| match n {
                            Some(n) => format!("{n} <{addr}>"),
                            None => addr.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                }
                _ => String::new(),
            };
            out.fields.push((name, value));
        }
        out
    }
}

impl Headers {
    /// The decoded values of the fields called `name` (lower-case).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
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
        let h = HeaderParser::new(wanted).parse(
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
            HeaderParser::new([])
                .parse(b"Subject: x\r\n\r\n")
                .values("subject")
                .count(),
            0
        );
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
