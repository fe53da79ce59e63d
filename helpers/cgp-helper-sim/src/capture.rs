//! The capture file of `cgp-helper-sim tap`: what its records look like,
//! how secrets are masked before a record is written, and how `--transcript`
//! reads the requests of a capture back, with the masked values filled.
//!
//! One record per line: `<UTC time> <dir> <text>`, where `<dir>` is `>` for
//! a line CGP sent to the helper, `<` for a line the helper wrote, `>~` or
//! `<~` for a last line that had no end of line, and `!` for an event of the
//! tap itself. `<text>` is the line with `\` written `\\`, control bytes and
//! bytes that are not UTF-8 written `\xHH`, and each masked value written
//! `{secret:N}` (a known secret) or `{secret:N TYPE LEN}` (an argument the
//! tap does not know: its type and its length on the wire, never its bytes).
//! A literal `{secret:` in a line is written `\{secret:`.

use cgp_wire::Request;
use cgp_wire::data::{Value, parse_value_spans};
use cgp_wire::request::LineError;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// How a capture file starts; `--transcript` tells a capture by it.
pub const CAPTURE_MARK: &str = "# cgp-helper-sim capture";

/// The first line of every capture file.
pub const HEADER: &str = "# cgp-helper-sim capture v1: <UTC time> <dir> <line>; \
    > to the helper, < from it, ! tap event, ~ no end of line; \
    {secret:N} and {secret:N TYPE LEN} are masked values";

const PLACEHOLDER: &str = "{secret:";

/// Lines longer than this are recorded by their length only: the tap does
/// not hold more of a line than this to mask it.
pub const MAX_RECORDED_LINE: usize = 64 * 1024;

/// READPLAIN requests whose reply is still to come; past this many (CGP
/// never has so many in flight) every reply's arguments are masked.
const MAX_TRACKED: usize = 65_536;

/// Commands whose arguments are recorded as they are: nothing in them is
/// secret (versions, names, queue file paths, the reconstructed banner and
/// load-balancer commands, whose real shape is what a capture is for).
const PLAIN: &[&str] = &[
    "INTF",
    "QUIT",
    "NEW",
    "READPLAIN",
    "FILE",
    "BANNER",
    "START",
    "SERVERS",
    "ADD",
    "REMOVE",
    "STOP",
];

/// Turns lines into record text with every secret masked, numbering the
/// masked values across the whole capture.
#[derive(Default)]
pub struct Masker {
    next: u64,
    readplain: HashSet<Vec<u8>>,
    /// Set once too many READPLAIN replies were pending to keep track.
    mask_all_replies: bool,
}

impl Masker {
    /// The number the next masked value gets.
    pub fn next_number(&self) -> u64 {
        self.next + 1
    }

    /// Numbers masked values from `n` on, so that a capture appended to
    /// after a restart keeps one number per value.
    pub fn number_from(&mut self, n: u64) {
        self.next = self.next.max(n.saturating_sub(1));
    }

    /// The record text of a line too long to be kept: its length.
    pub fn too_long(&mut self, len: usize) -> String {
        let mut out = String::new();
        self.masked(&mut out, Some(("line", len)));
        out
    }

    /// The record text of a line CGP sent (without its LF).
    pub fn request(&mut self, line: &[u8]) -> String {
        let (line, cr) = split_cr(line);
        if line.len() > MAX_RECORDED_LINE {
            return self.too_long(line.len() + cr.len());
        }
        let mut out = String::with_capacity(line.len() + 8);
        if line.iter().all(u8::is_ascii_whitespace) {
            escape_into(&mut out, line);
        } else {
            match Request::parse(line) {
                // No sequence number: it may be anything, a password too.
                Err(LineError::NoSequence) => self.masked(&mut out, Some(("line", line.len()))),
                Err(LineError::NoCommand { .. }) => escape_into(&mut out, line),
                Ok(req) => self.masked_request(&mut out, line, &req),
            }
        }
        escape_into(&mut out, cr);
        out
    }

    /// The record text of a line the helper wrote (without its LF).
    pub fn reply(&mut self, line: &[u8]) -> String {
        let (line, cr) = split_cr(line);
        if line.len() > MAX_RECORDED_LINE {
            return self.too_long(line.len() + cr.len());
        }
        let mut out = String::with_capacity(line.len() + 8);
        let seq = line.split(|b| *b == b' ').next().unwrap_or_default();
        let secret = self.readplain.remove(seq) || self.mask_all_replies;
        // `<seq> <word>`, then the arguments; `*` lines and the rest keep
        // every byte.
        let head = if secret && !line.starts_with(b"*") {
            word_end(line, 2)
        } else {
            line.len()
        };
        escape_into(&mut out, &line[..head]);
        if head < line.len() {
            let gap = line[head..].iter().take_while(|b| **b == b' ').count();
            escape_into(&mut out, &line[head..head + gap]);
            self.masked(&mut out, None);
        }
        escape_into(&mut out, cr);
        out
    }

    fn masked_request(&mut self, out: &mut String, line: &[u8], req: &Request) {
        // `rest` is the tail of the line, so everything before it (token,
        // command word, a `(group)` such as SASL's method) stays in place.
        let head = line.len() - req.rest.len();
        escape_into(out, &line[..head]);
        let command = req.command.as_str();
        if command == "READPLAIN" {
            if self.readplain.len() < MAX_TRACKED {
                self.readplain.insert(req.seq.clone());
            } else {
                self.mask_all_replies = true;
            }
        }
        if PLAIN.contains(&command) {
            escape_into(out, &req.rest);
            return;
        }
        let Ok(args) = parse_value_spans(&req.rest) else {
            self.masked(out, Some(("raw", req.rest.len())));
            return;
        };
        // Arguments shown as they are: VRFY's mode and name (the password
        // and anything after it are masked), SASL's mode.
        let shown = match command {
            "VRFY" => match args.first() {
                Some((_, Value::Array(_))) => 2,
                _ => 1,
            },
            "SASL" => usize::from(matches!(args.first(), Some((_, Value::Array(_))))),
            _ => 0,
        };
        let mut at = 0;
        for (i, (span, value)) in args.iter().enumerate() {
            escape_into(out, &req.rest[at..span.start]);
            if i < shown {
                escape_into(out, &req.rest[span.clone()]);
            } else if command == "VRFY" {
                self.masked(out, None);
            } else {
                let kind = match value {
                    Value::Str(_) if req.rest[span.start] == b'"' => "string",
                    Value::Str(_) => "atom",
                    Value::Array(_) => "array",
                    Value::Dict(_) => "dictionary",
                    Value::Null => "null",
                };
                self.masked(out, Some((kind, span.len())));
            }
            at = span.end;
        }
        escape_into(out, &req.rest[at..]);
    }

    fn masked(&mut self, out: &mut String, shape: Option<(&str, usize)>) {
        self.next += 1;
        let _ = match shape {
            Some((kind, len)) => write!(out, "{PLACEHOLDER}{} {kind} {len}}}", self.next),
            None => write!(out, "{PLACEHOLDER}{}}}", self.next),
        };
    }
}

fn split_cr(line: &[u8]) -> (&[u8], &[u8]) {
    match line.strip_suffix(b"\r") {
        Some(l) => (l, b"\r"),
        None => (line, b""),
    }
}

/// Where the `n`th space-separated word of `line` ends.
fn word_end(line: &[u8], n: usize) -> usize {
    let mut at = 0;
    for _ in 0..n {
        at += line[at..].iter().take_while(|b| **b == b' ').count();
        at += line[at..].iter().take_while(|b| **b != b' ').count();
    }
    at
}

/// The highest placeholder number in some record text, if any.
pub fn highest_number(record: &str) -> Option<u64> {
    record
        .match_indices(PLACEHOLDER)
        .filter(|(at, _)| !record[..*at].ends_with('\\'))
        .filter_map(|(at, p)| {
            let digits = &record[at + p.len()..];
            let end = digits
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(digits.len());
            digits[..end].parse::<u64>().ok()
        })
        .max()
}

/// Appends `bytes` as record text (see the module's description).
pub fn escape_into(out: &mut String, bytes: &[u8]) {
    for chunk in bytes.utf8_chunks() {
        let text = chunk.valid();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if rest.starts_with(PLACEHOLDER) {
                out.push('\\');
            }
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u8);
                }
                c => out.push(c),
            }
            rest = &rest[c.len_utf8()..];
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// What the operator gave for masked values (`--fill N=VALUE`), and how
/// many placeholders had none.
#[derive(Default)]
pub struct Fills {
    values: HashMap<u64, Vec<u8>>,
    pub unfilled: u64,
}

impl Fills {
    /// Parses `N=VALUE` options; VALUE is sent as written (a quoted string
    /// for a password with spaces).
    pub fn parse(options: &[String]) -> Result<Fills, String> {
        let mut values = HashMap::new();
        for o in options {
            let (n, value) = o
                .split_once('=')
                .and_then(|(n, v)| Some((n.trim().parse::<u64>().ok()?, v)))
                .ok_or_else(|| {
                    format!("--fill {o:?}: expected N=VALUE, N the number of a {{secret:N}}")
                })?;
            values.insert(n, value.as_bytes().to_vec());
        }
        Ok(Fills {
            values,
            unfilled: 0,
        })
    }
}

/// The request line of a capture record, when it is one: decoded, each
/// placeholder replaced by its fill or, without one, by a stand-in of its
/// type and length (`x` atoms, a quoted string of `x`, `()`, `{}`).
pub fn request_of(record: &str, fills: &mut Fills) -> Option<Vec<u8>> {
    let mut fields = record.splitn(3, ' ');
    let (_time, dir) = (fields.next()?, fields.next()?);
    if dir != ">" && dir != ">~" {
        return None;
    }
    let text = fields.next().unwrap_or_default();
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix(PLACEHOLDER) {
            if let Some((inside, tail)) = after.split_once('}') {
                fill_into(&mut out, inside, fills);
                rest = tail;
                continue;
            }
        }
        if let Some(after) = rest.strip_prefix('\\') {
            let (bytes, tail) = unescape(after);
            out.extend_from_slice(&bytes);
            rest = tail;
            continue;
        }
        let mut buf = [0; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        rest = &rest[c.len_utf8()..];
    }
    Some(out)
}

fn unescape(after: &str) -> (Vec<u8>, &str) {
    if let Some(hex) = after.strip_prefix('x') {
        if let Some(b) = hex.get(..2).and_then(|h| u8::from_str_radix(h, 16).ok()) {
            return (vec![b], &hex[2..]);
        }
    }
    match after.chars().next() {
        Some(c) => (c.to_string().into_bytes(), &after[c.len_utf8()..]),
        None => (b"\\".to_vec(), after),
    }
}

fn fill_into(out: &mut Vec<u8>, inside: &str, fills: &mut Fills) {
    let mut words = inside.split(' ');
    let n = words.next().and_then(|n| n.parse::<u64>().ok());
    if let Some(value) = n.and_then(|n| fills.values.get(&n)) {
        out.extend_from_slice(value);
        return;
    }
    fills.unfilled += 1;
    let kind = words.next().unwrap_or_default();
    let len = words
        .next()
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(1);
    // Stand-ins keep a line's shape, never its length past what a line may
    // hold.
    let len = len.clamp(1, MAX_RECORDED_LINE);
    match kind {
        "string" => {
            out.push(b'"');
            out.resize(out.len() + len.saturating_sub(2), b'x');
            out.push(b'"');
        }
        "array" => out.extend_from_slice(b"()"),
        "dictionary" => out.extend_from_slice(b"{}"),
        "null" => out.extend_from_slice(b"#NULL#"),
        _ => out.resize(out.len() + len, b'x'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(m: &mut Masker, line: &str) -> String {
        m.request(line.as_bytes())
    }

    #[test]
    fn vrfy_keeps_mode_and_name_and_masks_the_password() {
        let mut m = Masker::default();
        assert_eq!(
            req(
                &mut m,
                "2 VRFY (IMAP [192.0.2.7]) bob@x.test \"pa ss\\\"w\""
            ),
            "2 VRFY (IMAP [192.0.2.7]) bob@x.test {secret:1}"
        );
        assert_eq!(
            req(&mut m, "3 vrfy bob@x.test hunter2 extra"),
            "3 vrfy bob@x.test {secret:2} {secret:3}"
        );
    }

    #[test]
    fn sasl_keeps_the_method_and_mode_only() {
        let mut m = Masker::default();
        assert_eq!(
            req(&mut m, "4 SASL(CRAM-MD5) (IMAP) bob@x.test \"c2VjcmV0\""),
            "4 SASL(CRAM-MD5) (IMAP) {secret:1 atom 10} {secret:2 string 10}"
        );
    }

    #[test]
    fn readplain_replies_are_masked_other_replies_are_not() {
        let mut m = Masker::default();
        assert_eq!(
            req(&mut m, "5 READPLAIN bob@x.test"),
            "5 READPLAIN bob@x.test"
        );
        assert_eq!(m.reply(b"6 OK \"not secret\""), "6 OK \"not secret\"");
        assert_eq!(m.reply(b"5 OK \"s3cret\""), "5 OK {secret:1}");
        // Answered once: the same token later is another request.
        assert_eq!(m.reply(b"5 OK \"x\""), "5 OK \"x\"");
        assert_eq!(m.reply(b"* 5 OK pw"), "* 5 OK pw");
    }

    #[test]
    fn unknown_commands_show_types_and_lengths() {
        let mut m = Masker::default();
        assert_eq!(
            req(&mut m, "7 RADIUS bob {a=\"1\";} (x, y) #NULL# \"q\""),
            "7 RADIUS {secret:1 atom 3} {secret:2 dictionary 8} {secret:3 array 6} \
             {secret:4 null 6} {secret:5 string 3}"
        );
        assert_eq!(req(&mut m, "8 KEY abc"), "8 KEY {secret:6 atom 3}");
        assert_eq!(req(&mut m, "9 CDR \"open"), "9 CDR {secret:7 raw 5}");
        assert_eq!(
            req(&mut m, "x VRFY a@b.test S3cretPw1"),
            "{secret:8 line 25}"
        );
    }

    #[test]
    fn plain_commands_and_odd_bytes_are_kept_readably() {
        let mut m = Masker::default();
        assert_eq!(
            m.request(b"1 FILE Queue/1.msg\r"),
            "1 FILE Queue/1.msg\\x0d"
        );
        assert_eq!(
            m.request(b"2 BANNER \xff \\ {secret:1}"),
            "2 BANNER \\xff \\\\ \\{secret:1}"
        );
        assert_eq!(m.request(b"   "), "   ");
        assert_eq!(m.request(b"3"), "3");
    }

    #[test]
    fn overlong_lines_are_recorded_by_length() {
        let mut m = Masker::default();
        let line = format!("2 ECHO {}", "y".repeat(MAX_RECORDED_LINE));
        assert_eq!(
            m.request(line.as_bytes()),
            format!("{{secret:1 line {}}}", line.len())
        );
    }

    #[test]
    fn records_come_back_as_the_lines_sent_with_fills_or_stand_ins() {
        let mut m = Masker::default();
        let mut fills = Fills::parse(&["1=\"pa ss\"".to_string()]).unwrap();
        for (line, back) in [
            (
                &b"2 VRFY bob@x.test hunter2"[..],
                &b"2 VRFY bob@x.test \"pa ss\""[..],
            ),
            (b"3 FROB \"abcd\" (a) z", b"3 FROB \"xxxx\" () x"),
            (
                b"4 BANNER \xff \\ {secret:1}\r",
                b"4 BANNER \xff \\ {secret:1}\r",
            ),
        ] {
            let record = format!("2026-12-06T18:40:01.000001Z > {}", m.request(line));
            assert_eq!(
                request_of(&record, &mut fills).as_deref(),
                Some(back),
                "{record}"
            );
        }
        assert_eq!(fills.unfilled, 3);
        assert_eq!(
            highest_number("t > 2 X {secret:3 atom 1} {secret:12}"),
            Some(12)
        );
        assert_eq!(highest_number("t > 2 X \\{secret:99}"), None);
        assert_eq!(request_of("t < 2 OK", &mut fills), None);
        assert!(Fills::parse(&["x=1".to_string()]).is_err());
    }
}
