//! The shape of a request: what it looks like, never what it says.
//!
//! Some helpers' grammars are reconstructed, not published. A request such a
//! helper does not understand gets the helper's safe answer, and its shape is
//! logged so that an administrator can report the real grammar without
//! handing over anyone's data: the command word (when it is a short word),
//! the type of each argument, and the length of each (bytes of a string,
//! items of a list or dictionary). Values never appear.

use crate::Request;
use crate::data::Value;
use std::collections::HashSet;
use std::fmt::Write;
use std::sync::Mutex;

/// Longest command word shown as itself; a longer one (or one with other
/// characters than letters, digits, `-` and `_`) is shown by its length.
const MAX_WORD: usize = 20;

/// Distinct shapes reported by one [`UnknownShapes`]; after that one line
/// says that further shapes are not reported.
pub const MAX_SHAPES: usize = 64;

/// A request's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// The command word and the type of each argument, e.g.
    /// `BANNER string string dict`: what makes two shapes the same.
    pub form: String,
    /// The length of each argument, in the order of `form`, e.g. `10 0 2`.
    pub lengths: String,
}

impl Shape {
    pub fn of(req: &Request) -> Shape {
        let mut form = String::new();
        let word = &req.command;
        let plain = word.len() <= MAX_WORD
            && word
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if plain {
            form.push_str(word);
        } else {
            let _ = write!(form, "<word of {} bytes>", word.len());
        }
        if let Some(group) = &req.command_group {
            let _ = write!(form, "({})", kind(group));
        }
        let mut lengths = String::new();
        match req.args() {
            Ok(args) => {
                for a in &args {
                    let _ = write!(form, " {}", kind(a));
                    if !lengths.is_empty() {
                        lengths.push(' ');
                    }
                    let _ = write!(lengths, "{}", length(a));
                }
            }
            Err(_) => {
                form.push_str(" <unparsable>");
                let _ = write!(lengths, "{}", req.rest.len());
            }
        }
        Shape { form, lengths }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Str(_) => "string",
        Value::Array(_) => "list",
        Value::Dict(_) => "dict",
        Value::Null => "null",
    }
}

fn length(v: &Value) -> usize {
    match v {
        Value::Str(s) => s.len(),
        Value::Array(items) => items.len(),
        Value::Dict(pairs) => pairs.len(),
        Value::Null => 0,
    }
}

/// Reports each unknown shape once per process, at warn level, up to
/// [`MAX_SHAPES`] shapes.
#[derive(Default)]
pub struct UnknownShapes {
    seen: Mutex<HashSet<String>>,
}

impl UnknownShapes {
    /// Logs `req`'s shape unless it was logged before; `answer` says what
    /// the helper answered instead.
    pub fn report(&self, req: &Request, answer: &str) {
        let shape = Shape::of(req);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&shape.form) {
            return;
        }
        if seen.len() == MAX_SHAPES {
            // One more entry than the limit marks the notice as given.
            seen.insert(String::new());
            tracing::warn!(
                limit = MAX_SHAPES,
                "more unknown request shapes; no further ones are logged"
            );
            return;
        }
        if seen.len() > MAX_SHAPES {
            return;
        }
        tracing::warn!(
            shape = %shape.form,
            lengths = %shape.lengths,
            answer,
            "request in an unknown shape (reported once per shape)"
        );
        seen.insert(shape.form);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(line: &str) -> Shape {
        Shape::of(&Request::parse(line.as_bytes()).unwrap())
    }

    #[test]
    fn types_and_lengths_without_values() {
        let s = shape(r#"1 banner WebUserTop "secret@example.com" {a=1;b=2;} (x, y, z) #NULL#"#);
        assert_eq!(s.form, "BANNER string string dict list null");
        assert_eq!(s.lengths, "10 18 2 3 0");
        let s = shape("2 SASL(CRAM-MD5) abc");
        assert_eq!(s.form, "SASL(list) string");
        let s = shape(r#"3 X "unclosed"#);
        assert_eq!(
            (s.form.as_str(), s.lengths.as_str()),
            ("X <unparsable>", "9")
        );
        let s = shape("4 PASSWORD=hunter2 x");
        assert_eq!(s.form, "<word of 16 bytes> string");
        assert!(!format!("{s:?}").contains("hunter2"));
        let s = shape("5 AVERYLONGCOMMANDWORDTHATGOESON");
        assert_eq!(s.form, "<word of 30 bytes>");
    }

    #[test]
    fn the_set_of_shapes_is_bounded() {
        let shapes = UnknownShapes::default();
        for i in 0..(MAX_SHAPES * 3) {
            let line = format!("1 CMD{i}");
            shapes.report(&Request::parse(line.as_bytes()).unwrap(), "ERROR");
        }
        assert_eq!(shapes.seen.lock().unwrap().len(), MAX_SHAPES + 1);
    }
}
