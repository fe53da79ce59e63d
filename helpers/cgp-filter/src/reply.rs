//! What the filter answers: the verdict of the rules, its wire form in each
//! dialect (protocol.md §3.4, §1.6), and the header fields and texts built
//! from templates.

use cgp_wire::Reply;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// Which reply form to send.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// By the negotiated INTF: 4 and up → v4, else v3.
    #[default]
    Auto,
    /// `ADDHEADER "…"` alone as the final reply; no MIRRORTO/ADDROUTE.
    V3,
    /// Modifiers (`ADDHEADER`, `MIRRORTO`, `ADDROUTE`) followed by `OK`.
    V4,
}

impl Dialect {
    /// Whether modifiers followed by `OK` are sent for this conversation.
    pub fn modifiers(self, intf: u32) -> bool {
        match self {
            Dialect::Auto => intf >= 4,
            Dialect::V3 => false,
            Dialect::V4 => true,
        }
    }
}

/// The header fields, copies and extra recipients collected from the rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Modifiers {
    /// Complete fields, folded with `\n` + space, one after the other with
    /// `\n` between them: the argument of `ADDHEADER` as it is sent, built
    /// in one buffer.
    pub headers: String,
    pub mirror_to: Vec<String>,
    pub add_route: Vec<String>,
}

/// The outcome for one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept(Modifiers),
    Discard,
    Bounce(String),
    Reject(String),
    Failure(String),
}

impl Verdict {
    pub fn pass() -> Verdict {
        Verdict::Accept(Modifiers::default())
    }

    /// The reply, and whether MIRRORTO/ADDROUTE had to be left out because
    /// the dialect has no place for them.
    pub fn reply(&self, modifiers_form: bool) -> (Reply, bool) {
        match self {
            Verdict::Accept(m) if modifiers_form => {
                let mut r = m.add_header();
                let addresses = (m.mirror_to.iter().map(|a| ("MIRRORTO", a)))
                    .chain(m.add_route.iter().map(|a| ("ADDROUTE", a)));
                for (word, a) in addresses {
                    let base = match r {
                        Some(prev) => prev.then(word),
                        None => Reply::word(word),
                    };
                    r = Some(if is_token(a) {
                        base.then(a)
                    } else {
                        base.quoted(a.as_bytes())
                    });
                }
                (r.map_or_else(Reply::ok, |r| r.then("OK")), false)
            }
            Verdict::Accept(m) => {
                let dropped = !m.mirror_to.is_empty() || !m.add_route.is_empty();
                (m.add_header().unwrap_or_else(Reply::ok), dropped)
            }
            Verdict::Discard => (Reply::word("DISCARD"), false),
            Verdict::Bounce(t) => (Reply::error(t), false),
            Verdict::Reject(t) => (Reply::rejected(t), false),
            Verdict::Failure(t) => (Reply::failure(t), false),
        }
    }
}

impl Modifiers {
    /// Renders `h` as one more field, unless a placeholder has no value.
    pub fn push_header<'v>(&mut self, h: &HeaderTemplate, value: impl Fn(&Var) -> Option<&'v str>) {
        let start = self.headers.len();
        if start > 0 {
            self.headers.push('\n');
        } else {
            // Room for a few short fields at once: growing the buffer field
            // by field costs a reallocation each.
            self.headers.reserve(HEADERS_CAPACITY);
        }
        if !h.render_into(&mut self.headers, value) {
            self.headers.truncate(start);
        }
    }

    /// `ADDHEADER "<fields>"`, when there are fields.
    fn add_header(&self) -> Option<Reply> {
        (!self.headers.is_empty()).then(|| Reply::word("ADDHEADER").quoted(self.headers.as_bytes()))
    }
}

/// What the header buffer starts with: a reply's worth of short fields.
const HEADERS_CAPACITY: usize = 256;

/// Whether an address goes as a bare token: the CGP reader takes it as one
/// (the official CLI reader's word characters). Others are quoted.
fn is_token(a: &str) -> bool {
    !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b >= 0x80 || b"-_.@!#%:".contains(&b))
}

/// A placeholder of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Var {
    /// The envelope sender.
    Sender,
    /// The authenticated user, empty when none.
    User,
    /// The rule's name.
    Rule,
    QueueId,
    /// The first value of a directory attribute of the sender.
    Attr(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// Text with `{sender}`, `{user}`, `{rule}`, `{queue_id}` and `{attr:NAME}`
/// placeholders; `{{` and `}}` stand for braces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(i) = rest.find(['{', '}']) {
            text.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let brace = &rest[i..i + 1];
            if after.starts_with(brace) {
                text.push_str(brace);
                rest = &after[1..];
                continue;
            }
            if brace == "}" {
                return Err(format!(
                    "unmatched `}}` in {s:?} (write `}}}}` for a brace)"
                ));
            }
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in {s:?}"))?;
            let var = match &after[..end] {
                "sender" => Var::Sender,
                "user" => Var::User,
                "rule" => Var::Rule,
                "queue_id" => Var::QueueId,
                v => match v.strip_prefix("attr:") {
                    Some(a) if !a.is_empty() => Var::Attr(a.to_string()),
                    _ => return Err(format!("unknown placeholder {{{v}}} in {s:?}")),
                },
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Var(var));
            rest = &after[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template(pieces))
    }

    /// The directory attributes the template uses.
    pub fn attributes(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Var(Var::Attr(a)) => Some(a.as_str()),
            _ => None,
        })
    }

    /// The text with every placeholder replaced; `None` when `value` has
    /// nothing for one of them. Values are made single-line.
    pub fn expand<'v>(&self, value: impl Fn(&Var) -> Option<&'v str>) -> Option<String> {
        let mut out = String::new();
        self.expand_into(&mut out, value)?;
        Some(out)
    }

    /// `expand`, onto the end of `out`.
    fn expand_into<'v>(
        &self,
        out: &mut String,
        value: impl Fn(&Var) -> Option<&'v str>,
    ) -> Option<()> {
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => push_one_line(out, value(v)?),
            }
        }
        Some(())
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Template::parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// Control characters (CR and LF above all) would let a directory value or
/// an address start a new header field: they become spaces.
fn push_one_line(out: &mut String, s: &str) {
    if s.contains(char::is_control) {
        let spaced: String = s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        out.push_str(spaced.trim());
    } else {
        out.push_str(s.trim());
    }
}

/// A header field to add: `Name: value template`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderTemplate {
    pub name: String,
    pub value: Template,
}

impl HeaderTemplate {
    pub fn parse(s: &str) -> Result<HeaderTemplate, String> {
        let (name, value) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not a header field (`Name: value`)"))?;
        // RFC 5322 field names: printable ASCII except the colon.
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b)) {
            return Err(format!("{name:?} is not a header field name"));
        }
        if value.contains(|c: char| c.is_control()) {
            return Err(format!("the value of {name} holds control characters"));
        }
        Ok(HeaderTemplate {
            name: name.to_string(),
            value: Template::parse(value.trim())?,
        })
    }

    /// Appends the folded field to `out`; false (and `out` left in part
    /// written) when a placeholder has no value.
    fn render_into<'v>(&self, out: &mut String, value: impl Fn(&Var) -> Option<&'v str>) -> bool {
        let start = out.len();
        out.push_str(&self.name);
        out.push_str(": ");
        if self.value.expand_into(out, value).is_none() {
            return false;
        }
        // A field that fits on one line is what folding would give back.
        if out.len() - start > FOLD_AT {
            let folded = fold(&out[start..]);
            out.truncate(start);
            out.push_str(&folded);
        }
        true
    }
}

impl<'de> Deserialize<'de> for HeaderTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        HeaderTemplate::parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// Lines of a folded field stay within this many bytes where spaces allow
/// (RFC 5322 §2.1.1 recommends 78).
const FOLD_AT: usize = 78;

/// Folds a field at spaces: the line break goes before the space, which
/// then starts the continuation line.
pub fn fold(field: &str) -> String {
    let mut out = String::with_capacity(field.len() + 8);
    let mut line = 0;
    for (i, word) in field.split(' ').enumerate() {
        if i > 0 {
            // Never fold right after the field name.
            if i > 1 && line + 1 + word.len() > FOLD_AT {
                out.push('\n');
                line = 0;
            }
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: &Verdict, v4: bool) -> String {
        String::from_utf8(v.reply(v4).0.body().to_vec()).unwrap()
    }

    #[test]
    fn dialects() {
        assert!(Dialect::Auto.modifiers(4) && !Dialect::Auto.modifiers(3));
        assert!(Dialect::V4.modifiers(1) && !Dialect::V3.modifiers(9));
        let m = Modifiers {
            headers: "X-A: 1\nX-B: two\n words".into(),
            mirror_to: vec!["archive@example.test".into()],
            add_route: vec!["a+b@example.test".into()],
        };
        let v = Verdict::Accept(m.clone());
        assert_eq!(
            body(&v, true),
            r#"ADDHEADER "X-A: 1\eX-B: two\e words" MIRRORTO archive@example.test ADDROUTE "a+b@example.test" OK"#
        );
        assert_eq!(
            v.reply(false),
            (
                Reply::word("ADDHEADER").quoted(b"X-A: 1\nX-B: two\n words"),
                true
            )
        );
        let only_headers = Verdict::Accept(Modifiers {
            headers: m.headers.clone(),
            ..Modifiers::default()
        });
        assert!(!only_headers.reply(false).1);
        assert_eq!(body(&Verdict::pass(), true), "OK");
        assert_eq!(body(&Verdict::pass(), false), "OK");
        let mirror = Verdict::Accept(Modifiers {
            mirror_to: m.mirror_to,
            ..Modifiers::default()
        });
        assert_eq!(body(&mirror, true), "MIRRORTO archive@example.test OK");
        assert_eq!(body(&Verdict::Discard, false), "DISCARD");
        assert_eq!(
            body(&Verdict::Bounce("no \"way\"".into()), true),
            r#"ERROR "no \"way\"""#
        );
        assert_eq!(
            body(&Verdict::Reject("later".into()), false),
            r#"REJECTED "later""#
        );
        assert_eq!(body(&Verdict::Failure("x".into()), false), r#"FAILURE "x""#);
    }

    #[test]
    fn templates() {
        let t =
            Template::parse("{sender} may not write to {{external}} ({rule}, {attr:ou})").unwrap();
        assert_eq!(t.attributes().collect::<Vec<_>>(), ["ou"]);
        let val = |v: &Var| match v {
            Var::Sender => Some("a@x.test"),
            Var::Rule => Some("r1"),
            Var::Attr(a) if a == "ou" => Some("Sales\r\nBcc: evil@x.test"),
            _ => None,
        };
        assert_eq!(
            t.expand(val).unwrap(),
            "a@x.test may not write to {external} (r1, Sales  Bcc: evil@x.test)"
        );
        assert_eq!(Template::parse("{user}").unwrap().expand(val), None);
        for bad in ["{nope}", "{attr:}", "{sender", "a } b"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_fields_are_checked_and_folded() {
        let h = HeaderTemplate::parse("X-Department: {attr:departmentNumber}").unwrap();
        assert_eq!(h.name, "X-Department");
        let dep = |v: &Var| matches!(v, Var::Attr(_)).then_some("Research");
        let mut m = Modifiers::default();
        m.push_header(&h, dep);
        m.push_header(&h, |_| None);
        assert_eq!(m.headers, "X-Department: Research");
        m.push_header(&h, dep);
        assert_eq!(m.headers, "X-Department: Research\nX-Department: Research");
        let long = HeaderTemplate::parse("X-Long: {attr:x}").unwrap();
        let words = ["word"; 40].join(" ");
        let mut folded = Modifiers::default();
        folded.push_header(&long, |_| Some(&words));
        assert_eq!(folded.headers, fold(&format!("X-Long: {words}")));
        for bad in ["NoColon", ": v", "Bad Name: v", "X: a\tb"] {
            assert!(HeaderTemplate::parse(bad).is_err(), "{bad}");
        }
        let long = format!("X-Long: {}", ["word"; 40].join(" "));
        let folded = fold(&long);
        assert!(folded.lines().all(|l| l.len() <= FOLD_AT), "{folded}");
        assert!(
            folded.lines().skip(1).all(|l| l.starts_with(' ')),
            "{folded}"
        );
        assert_eq!(folded.replace('\n', ""), long);
        let unbreakable = format!("X-Id: {}", "z".repeat(100));
        assert_eq!(fold(&unbreakable), unbreakable);
    }
}
