//! Banner templates: literal text with `{placeholder}`s, parsed once when
//! the configuration is read (so an unknown placeholder is a configuration
//! error with a line number) and rendered per request with escaping that
//! fits the banner's format.

use serde::Deserialize;

/// Longest value a placeholder contributes, so that a hostile or broken
/// directory entry cannot crowd out the rest of the banner.
pub const MAX_VALUE_BYTES: usize = 512;

/// What a banner is: plain text or HTML.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Text,
    Html,
}

/// Values a template can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    Account,
    User,
    Domain,
    Type,
    RealName,
    Department,
    VmNew,
    VmOld,
    ExtState,
    MissedCalls,
    MissedSince,
    Announcements,
}

impl Var {
    fn from_name(name: &str) -> Option<Var> {
        Some(match name {
            "account" => Var::Account,
            "user" => Var::User,
            "domain" => Var::Domain,
            "type" => Var::Type,
            "real_name" => Var::RealName,
            "department" => Var::Department,
            "vm_new" => Var::VmNew,
            "vm_old" => Var::VmOld,
            "ext_state" => Var::ExtState,
            "missed_calls" => Var::MissedCalls,
            "missed_since" => Var::MissedSince,
            "announcements" => Var::Announcements,
            _ => return None,
        })
    }
}

pub const VAR_NAMES: &str = "account, user, domain, type, real_name, department, vm_new, vm_old, \
     ext_state, missed_calls, missed_since, announcements";

/// A placeholder's value.
pub enum Filled {
    /// Raw text, escaped while rendering.
    Raw(String),
    /// Already escaped for the banner's format.
    Escaped(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl TryFrom<String> for Template {
    type Error = String;

    /// `{name}` is a placeholder, `{{` and `}}` are literal braces.
    fn try_from(text: String) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                    let var = Var::from_name(name.trim()).ok_or_else(|| {
                        format!("unknown placeholder {{{name}}}; known: {VAR_NAMES}")
                    })?;
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Var(var));
                }
                '}' => return Err("a lone `}` (write `}}` for a literal brace)".into()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Template::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Template {
    /// Whether rendering needs this value.
    pub fn uses(&self, var: Var) -> bool {
        self.parts.contains(&Part::Var(var))
    }

    /// Renders the template; `value` gives each placeholder's value, or
    /// `None` when it is not available (then the whole banner is).
    pub fn render(
        &self,
        format: Format,
        mut value: impl FnMut(Var) -> Option<Filled>,
    ) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => match value(*v)? {
                    Filled::Raw(s) => push_escaped(&mut out, &s, format),
                    Filled::Escaped(s) => out.push_str(&s),
                },
            }
        }
        Some(out)
    }
}

/// Appends a value: control characters become spaces (a directory value must
/// not break a line or a layout), the length is capped, and in HTML every
/// markup character is escaped.
pub fn push_escaped(out: &mut String, value: &str, format: Format) {
    // At most MAX_VALUE_BYTES, cut between characters.
    let mut end = value.len().min(MAX_VALUE_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let kept = &value[..end];
    // Byte by byte, runs that need no replacement copied whole. The
    // control characters (`char::is_control`: C0, DEL and C1) are all found
    // by their first byte, so every cut below falls between characters.
    let bytes = kept.as_bytes();
    let mut plain = 0;
    let mut i = 0;
    while i < bytes.len() {
        let (replacement, len) = match (format, bytes[i]) {
            (_, 0..=0x1f | 0x7f) => (" ", 1),
            // U+0080 to U+009F.
            (_, 0xc2) if matches!(bytes.get(i + 1), Some(0x80..=0x9f)) => (" ", 2),
            (Format::Html, b'&') => ("&amp;", 1),
            (Format::Html, b'<') => ("&lt;", 1),
            (Format::Html, b'>') => ("&gt;", 1),
            (Format::Html, b'"') => ("&quot;", 1),
            (Format::Html, b'\'') => ("&#39;", 1),
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&kept[plain..i]);
        out.push_str(replacement);
        i += len;
        plain = i;
    }
    out.push_str(&kept[plain..]);
    if end < value.len() {
        out.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Template {
        Template::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn parses_placeholders_and_literal_braces() {
        let tpl = t("Hi {real_name}, {{not}} {vm_new}");
        assert!(tpl.uses(Var::RealName) && tpl.uses(Var::VmNew));
        assert!(!tpl.uses(Var::ExtState));
        let out = tpl.render(Format::Text, |v| Some(Filled::Raw(format!("{v:?}"))));
        assert_eq!(out.as_deref(), Some("Hi RealName, {not} VmNew"));
        let pre =
            t("{announcements}").render(Format::Html, |_| Some(Filled::Escaped("a<br>b".into())));
        assert_eq!(pre.as_deref(), Some("a<br>b"));
    }

    #[test]
    fn unknown_placeholders_and_lone_braces_are_refused() {
        let e = Template::try_from("{password}".to_string()).unwrap_err();
        assert!(e.contains("unknown placeholder {password}"), "{e}");
        assert!(Template::try_from("a } b".to_string()).is_err());
    }

    #[test]
    fn a_missing_value_makes_the_banner_unavailable() {
        assert_eq!(t("x {vm_new}").render(Format::Text, |_| None), None);
        assert_eq!(
            t("plain").render(Format::Text, |_| None).as_deref(),
            Some("plain")
        );
    }

    #[test]
    fn hostile_values_are_escaped_for_html_and_flattened_for_text() {
        let evil = "<script>alert('x')</script>\"&\r\n\u{7}";
        let html = t("<b>{real_name}</b>")
            .render(Format::Html, |_| Some(Filled::Raw(evil.into())))
            .unwrap();
        assert_eq!(
            html,
            "<b>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;   </b>"
        );
        let text = t("{real_name}")
            .render(Format::Text, |_| Some(Filled::Raw(evil.into())))
            .unwrap();
        assert_eq!(text, "<script>alert('x')</script>\"&   ");
    }

    #[test]
    fn long_values_are_capped() {
        let long = "é".repeat(1000);
        let out = t("{department}")
            .render(Format::Text, |_| Some(Filled::Raw(long.clone())))
            .unwrap();
        assert!(out.len() <= MAX_VALUE_BYTES + '…'.len_utf8());
        assert!(out.ends_with('…'));
    }

    #[test]
    fn escaping_agrees_with_a_character_by_character_reference() {
        // The plain definition: every control character (C0, DEL, C1) to a
        // space, HTML's five characters to entities, cut after the last
        // whole character within the cap.
        fn reference(value: &str, format: Format) -> String {
            let mut out = String::new();
            let mut used = 0;
            for c in value.chars() {
                used += c.len_utf8();
                if used > MAX_VALUE_BYTES {
                    out.push('…');
                    break;
                }
                match (format, if c.is_control() { ' ' } else { c }) {
                    (Format::Html, '&') => out.push_str("&amp;"),
                    (Format::Html, '<') => out.push_str("&lt;"),
                    (Format::Html, '>') => out.push_str("&gt;"),
                    (Format::Html, '"') => out.push_str("&quot;"),
                    (Format::Html, '\'') => out.push_str("&#39;"),
                    (_, c) => out.push(c),
                }
            }
            out
        }
        let pieces = [
            "a", "é", "\u{85}", "\u{9f}", "\u{a0}", "\u{c2}", "<", "&", "'", "\"", "\u{7f}", "\n",
            "€", "😀", "\u{80}", "x\u{1}",
        ];
        let mut seed = 7u32;
        for len in [0, 1, 3, 40, 300, 600] {
            for _ in 0..50 {
                let value: String = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        pieces[(seed >> 16) as usize % pieces.len()]
                    })
                    .collect();
                for format in [Format::Html, Format::Text] {
                    let mut got = String::new();
                    push_escaped(&mut got, &value, format);
                    assert_eq!(got, reference(&value, format), "{value:?}");
                }
            }
        }
    }
}
