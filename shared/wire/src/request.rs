//! Request lines (`<seq> <COMMAND> [args]`) and replies (`<seq> <body>`).

use crate::data::{DataError, Value, encode_quoted_into, parse_value, parse_values, quoted_room};

/// The longest sequence token accepted. CGP sends short decimal numbers,
/// sometimes zero-padded; anything longer is not a sequence number.
pub const MAX_SEQ_LEN: usize = 32;

/// A request line split into its parts. The sequence token is kept byte for
/// byte, because `00042` must come back as `00042`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub seq: Vec<u8>,
    /// The command word, upper-cased (commands are matched case-insensitively).
    pub command: String,
    /// The group attached to the command word, as in `SASL(CRAM-MD5)`.
    pub command_group: Option<Value>,
    /// Everything after the command, unparsed: commands such as `CDR` take
    /// opaque text, and parsing is the handler's choice.
    pub rest: Vec<u8>,
}

/// Why a line is not a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineError {
    /// No sequence token can be read, so no reply can be addressed.
    NoSequence,
    /// A sequence token but nothing after it.
    NoCommand { seq: Vec<u8> },
}

/// Reads the sequence token at the start of a line: 1 to [`MAX_SEQ_LEN`]
/// ASCII digits followed by white space or the end of the line.
pub fn sequence_token(line: &[u8]) -> Option<&[u8]> {
    let n = line.iter().take_while(|b| b.is_ascii_digit()).count();
    let ends_well = line.get(n).is_none_or(|b| *b == b' ' || *b == b'\t');
    (n > 0 && n <= MAX_SEQ_LEN && ends_well).then(|| &line[..n])
}

impl Request {
    pub fn parse(line: &[u8]) -> Result<Request, LineError> {
        let seq = sequence_token(line).ok_or(LineError::NoSequence)?;
        let after = trim_start(&line[seq.len()..]);
        let word_len = after
            .iter()
            .take_while(|b| !matches!(b, b' ' | b'\t' | b'('))
            .count();
        if word_len == 0 {
            return Err(LineError::NoCommand { seq: seq.to_vec() });
        }
        let command = String::from_utf8_lossy(&after[..word_len]).to_ascii_uppercase();
        let mut rest = &after[word_len..];
        let mut command_group = None;
        if rest.first() == Some(&b'(') {
            let close = rest
                .iter()
                .position(|b| *b == b')')
                .map_or(rest.len(), |p| p + 1);
            // An unparseable group is kept as its raw text so the handler can
            // still answer "unsupported" with the method name.
            command_group = Some(
                parse_value(&rest[..close]).unwrap_or_else(|_| Value::Str(rest[..close].to_vec())),
            );
            rest = &rest[close..];
        }
        Ok(Request {
            seq: seq.to_vec(),
            command,
            command_group,
            rest: trim_start(rest).to_vec(),
        })
    }

    /// The arguments parsed as CGP values.
    pub fn args(&self) -> Result<Vec<Value>, DataError> {
        parse_values(&self.rest)
    }

    /// The sequence token as text (it is ASCII digits by construction).
    pub fn seq_str(&self) -> &str {
        std::str::from_utf8(&self.seq).unwrap_or("?")
    }
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| matches!(c, b' ' | b'\t')).count();
    &b[n..]
}

/// The body of a reply: everything after `<seq> `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    body: Vec<u8>,
}

impl Reply {
    /// A reply of one keyword (`OK`, `DISCARD`, `FAILURE`…).
    pub fn word(keyword: &str) -> Reply {
        Reply {
            body: keyword.as_bytes().to_vec(),
        }
    }

    pub fn ok() -> Reply {
        Reply::word("OK")
    }

    /// `<KEYWORD> "<text>"`, the text always quoted.
    pub fn with_text(keyword: &str, text: &str) -> Reply {
        Reply::word(keyword).quoted(text.as_bytes())
    }

    pub fn error(text: &str) -> Reply {
        Reply::with_text("ERROR", text)
    }

    pub fn failure(text: &str) -> Reply {
        Reply::with_text("FAILURE", text)
    }

    pub fn rejected(text: &str) -> Reply {
        Reply::with_text("REJECTED", text)
    }

    /// Appends ` <value>` in CGP encoding.
    pub fn value(mut self, v: &Value) -> Reply {
        self.body.push(b' ');
        v.encode_into(&mut self.body);
        self
    }

    /// Appends ` "<text>"`, always quoted.
    pub fn quoted(mut self, text: &[u8]) -> Reply {
        // One growth for the space, the string and a word after it
        // (`ADDHEADER "…" OK`).
        self.body.reserve(1 + quoted_room(text.len()) + 3);
        self.body.push(b' ');
        encode_quoted_into(text, &mut self.body);
        self
    }

    /// Appends ` <word>` verbatim; the caller guarantees it is one atom.
    pub fn then(mut self, word: &str) -> Reply {
        self.body.push(b' ');
        self.body.extend_from_slice(word.as_bytes());
        self
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The first word of the reply (`OK`, `ERROR`…), for statistics and logs.
    pub fn kind(&self) -> &str {
        let end = self
            .body
            .iter()
            .position(|b| *b == b' ')
            .unwrap_or(self.body.len());
        std::str::from_utf8(&self.body[..end]).unwrap_or("?")
    }

    /// The full line `<seq> <body>\n`.
    pub fn line(&self, seq: &[u8]) -> Vec<u8> {
        let mut line = Vec::with_capacity(seq.len() + self.body.len() + 2);
        line.extend_from_slice(seq);
        line.push(b' ');
        line.extend_from_slice(&self.body);
        line.push(b'\n');
        line
    }

    /// Length of the full line, end-of-line included.
    pub fn line_len(&self, seq: &[u8]) -> usize {
        seq.len() + 1 + self.body.len() + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_sequence_token_byte_for_byte() {
        let r = Request::parse(b"000042 file Queue/1.msg").unwrap();
        assert_eq!(r.seq, b"000042");
        assert_eq!(r.command, "FILE");
        assert_eq!(r.rest, b"Queue/1.msg");
        assert_eq!(Reply::ok().line(&r.seq), b"000042 OK\n");
    }

    #[test]
    fn sasl_group_is_split_from_the_command() {
        let r = Request::parse(b"4 SASL(CRAM-MD5) (IMAP) u@x.test abc").unwrap();
        assert_eq!(r.command, "SASL");
        assert_eq!(
            r.command_group,
            Some(Value::Array(vec![Value::str("CRAM-MD5")]))
        );
        assert_eq!(r.args().unwrap().len(), 3);
        let broken = Request::parse(b"4 SASL(\"x) y").unwrap();
        assert_eq!(broken.command, "SASL");
        assert_eq!(broken.command_group, Some(Value::str("(\"x)")));
    }

    #[test]
    fn lines_that_are_not_requests() {
        assert_eq!(Request::parse(b"hello world"), Err(LineError::NoSequence));
        assert_eq!(Request::parse(b""), Err(LineError::NoSequence));
        assert_eq!(Request::parse(b"12x QUIT"), Err(LineError::NoSequence));
        assert_eq!(
            Request::parse(b"12   "),
            Err(LineError::NoCommand {
                seq: b"12".to_vec()
            })
        );
        let long = "1".repeat(MAX_SEQ_LEN + 1) + " QUIT";
        assert_eq!(Request::parse(long.as_bytes()), Err(LineError::NoSequence));
    }

    #[test]
    fn replies_quote_free_text() {
        let r = Reply::error("bad \"thing\"\nhere");
        assert_eq!(r.body(), br#"ERROR "bad \"thing\"\ehere""#);
        assert_eq!(r.kind(), "ERROR");
        assert_eq!(
            Reply::word("ADDHEADER").quoted(b"X: y").then("OK").body(),
            br#"ADDHEADER "X: y" OK"#
        );
    }
}
