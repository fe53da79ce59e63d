//! Templates of reply texts and added header fields: `{sender}`, `{user}`,
//! `{rule}`, `{queue_id}` and `{attr:NAME}` placeholders, parsed once when
//! the configuration is loaded.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// Why a template or a header field does not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unmatched `}}` in {0:?} (write `}}}}` for a brace)")]
    Unmatched(String),
    #[error("unclosed `{{` in {0:?}")]
    Unclosed(String),
    #[error("unknown placeholder {{{placeholder}}} in {text:?}")]
    Unknown { placeholder: String, text: String },
    #[error("{0:?} is not a header field (`Name: value`)")]
    NotAField(String),
    #[error("{0:?} is not a header field name")]
    BadName(String),
    #[error("the value of {0} holds control characters")]
    ControlCharacters(String),
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
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
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
                return Err(TemplateError::Unmatched(s.to_string()));
            }
            let end = after
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(s.to_string()))?;
            let var = match &after[..end] {
                "sender" => Var::Sender,
                "user" => Var::User,
                "rule" => Var::Rule,
                "queue_id" => Var::QueueId,
                v => match v.strip_prefix("attr:") {
                    Some(a) if !a.is_empty() => Var::Attr(a.to_string()),
                    _ => {
                        return Err(TemplateError::Unknown {
                            placeholder: v.to_string(),
                            text: s.to_string(),
                        });
                    }
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
    pub fn parse(s: &str) -> Result<HeaderTemplate, TemplateError> {
        let (name, value) = s
            .split_once(':')
            .ok_or_else(|| TemplateError::NotAField(s.to_string()))?;
        // RFC 5322 field names: printable ASCII except the colon.
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b)) {
            return Err(TemplateError::BadName(name.to_string()));
        }
        if value.contains(|c: char| c.is_control()) {
            return Err(TemplateError::ControlCharacters(name.to_string()));
        }
        Ok(HeaderTemplate {
            name: name.to_string(),
            value: Template::parse(value.trim())?,
        })
    }

    /// Appends the folded field to `out`; false (and `out` left in part
    /// written) when a placeholder has no value.
    pub(crate) fn render_into<'v>(
        &self,
        out: &mut String,
        value: impl Fn(&Var) -> Option<&'v str>,
    ) -> bool {
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
    use crate::wire::Modifiers;

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
