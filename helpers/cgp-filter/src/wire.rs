//! The filter's wire grammar (docs/wire.md): the `FILE` request and the
//! verdict of the rules in each reply dialect.

use crate::template::{HeaderTemplate, Var};
use cgp_wire::data::Value;
use cgp_wire::{Reply, Request};
use serde::Deserialize;

/// The queue file a request names: `FILE <name> [HEADERS]`, the name
/// relative to the base directory. Any other request, or one without a
/// name, gets its `FAILURE` reply: filters answer `FAILURE` to what they do
/// not know.
pub fn file_name(req: &Request) -> Result<Vec<u8>, Reply> {
    if req.command != "FILE" {
        return Err(Reply::failure("unsupported command"));
    }
    match req.args().as_deref() {
        Ok([Value::Str(name), rest @ ..]) => {
            let headers_flag = |h: &Value| {
                h.as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case("HEADERS"))
            };
            if !rest.is_empty() && !matches!(rest, [h] if headers_flag(h)) {
                tracing::debug!(args = rest.len(), "extra FILE arguments ignored");
            }
            Ok(name.clone())
        }
        _ => Err(Reply::failure("FILE needs a file name")),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: &Verdict, v4: bool) -> String {
        String::from_utf8(v.reply(v4).0.body().to_vec()).unwrap()
    }

    #[test]
    fn file_requests() {
        let name = |line: &str| file_name(&Request::parse(line.as_bytes()).unwrap());
        assert_eq!(name("1 FILE Queue/1.msg"), Ok(b"Queue/1.msg".to_vec()));
        assert_eq!(
            name("1 FILE \"Queue/a b.msg\" HEADERS"),
            Ok(b"Queue/a b.msg".to_vec())
        );
        assert_eq!(
            name("1 FILE"),
            Err(Reply::failure("FILE needs a file name"))
        );
        assert_eq!(name("1 SCAN x"), Err(Reply::failure("unsupported command")));
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
}
