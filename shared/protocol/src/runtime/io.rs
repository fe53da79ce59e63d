//! The two threads at the edges of a helper: the stdin reader and the single
//! stdout writer.
//!
//! stdin is read on a plain thread, not with `tokio::io::stdin`, whose
//! blocking read cannot be cancelled and can hang runtime shutdown: here the
//! process simply exits while the thread is still blocked.

use crate::request::{MAX_SEQ_LEN, Reply};
use std::io::{BufRead, BufReader, Read, Write};
use std::thread::JoinHandle;
use tokio::sync::mpsc;

/// CGP's limit for any line a helper writes, end-of-line included.
pub const MAX_REPLY_LINE: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// One line without its LF (and without a trailing CR).
    Line(Vec<u8>),
    /// A line over the limit was discarded; its start is kept so the sequence
    /// token can still be answered.
    TooLong { prefix: Vec<u8> },
}

/// Reads lines until end of input, then closes the channel. Lines arrive in
/// batches: all the complete lines one read brought in, so that a burst costs
/// one channel hand-over instead of one per line.
pub fn spawn_reader<R: Read + Send + 'static>(
    source: R,
    max_line: usize,
    tx: mpsc::Sender<Vec<Input>>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("stdin-reader".into())
        .spawn(move || read_lines(BufReader::with_capacity(64 * 1024, source), max_line, &tx))
        .expect("spawning the stdin reader thread")
}

fn read_lines<R: Read>(mut src: BufReader<R>, max_line: usize, tx: &mpsc::Sender<Vec<Input>>) {
    let mut line = Vec::with_capacity(256);
    let mut too_long = false;
    let mut batch = Vec::new();
    loop {
        let (done, used) = match src.fill_buf() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => (true, 0),
            Ok([]) => (true, 0),
            Ok(buf) => match buf.iter().position(|b| *b == b'\n') {
                Some(pos) => {
                    too_long |= append(&mut line, &buf[..pos], max_line, too_long);
                    (false, pos + 1)
                }
                None => {
                    too_long |= append(&mut line, buf, max_line, too_long);
                    let n = buf.len();
                    src.consume(n);
                    // The rest of this line needs another read, which may
                    // block: hand over the lines already complete first.
                    if !batch.is_empty() && tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                        return;
                    }
                    continue;
                }
            },
        };
        src.consume(used);
        // A last line without LF still counts as a line.
        if !done || !line.is_empty() || too_long {
            let input = if too_long {
                Input::TooLong {
                    prefix: std::mem::take(&mut line),
                }
            } else {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Input::Line(std::mem::replace(&mut line, Vec::with_capacity(256)))
            };
            too_long = false;
            batch.push(input);
        }
        // Hand the batch over before the next read could block.
        if (done || src.buffer().is_empty())
            && !batch.is_empty()
            && tx.blocking_send(std::mem::take(&mut batch)).is_err()
        {
            return;
        }
        if done {
            return;
        }
    }
}

/// Appends a chunk unless the line is already too long; returns true when the
/// line has just passed the limit. Only the start of an overlong line is
/// kept, enough to read its sequence token.
fn append(line: &mut Vec<u8>, chunk: &[u8], max_line: usize, already_too_long: bool) -> bool {
    if already_too_long {
        return false;
    }
    if line.len() + chunk.len() > max_line {
        let keep = (MAX_SEQ_LEN + 1)
            .saturating_sub(line.len())
            .min(chunk.len());
        line.extend_from_slice(&chunk[..keep]);
        line.truncate(MAX_SEQ_LEN + 1);
        return true;
    }
    line.extend_from_slice(chunk);
    false
}

/// The only path to stdout. Cheap to clone; lines are written whole, one
/// write each, and flushed.
#[derive(Clone)]
pub struct Writer {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl Writer {
    /// Sends a reply line. The caller has already made sure it fits.
    pub fn reply(&self, seq: &[u8], reply: &Reply) {
        debug_assert!(reply.line_len(seq) <= MAX_REPLY_LINE);
        let _ = self.tx.send(reply.line(seq));
    }

    /// Sends a `* ` information line, which CGP copies to its log. Control
    /// characters are replaced and the line is cut to fit the limit.
    pub fn info(&self, text: &str) {
        let _ = self.tx.send(info_line(text));
    }
}

pub fn info_line(text: &str) -> Vec<u8> {
    let mut line = Vec::with_capacity(text.len() + 3);
    line.extend_from_slice(b"* ");
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        let mut buf = [0u8; 4];
        let enc = c.encode_utf8(&mut buf).as_bytes();
        if line.len() + enc.len() + 1 > MAX_REPLY_LINE {
            break;
        }
        line.extend_from_slice(enc);
    }
    line.push(b'\n');
    line
}

/// Starts the writer thread; it ends when every [`Writer`] is dropped, after
/// writing what was queued. The queue holds at most `queue` lines: when CGP
/// stops reading, senders wait instead of piling up replies in memory.
pub fn spawn_writer<W: Write + Send + 'static>(
    mut out: W,
    queue: usize,
) -> (Writer, JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(queue);
    let handle = std::thread::Builder::new()
        .name("stdout-writer".into())
        .spawn(move || {
            let mut broken = false;
            for line in rx {
                // After a write error (CGP closed the pipe) lines are dropped:
                // nobody is left to read them.
                if !broken {
                    broken = out.write_all(&line).and_then(|()| out.flush()).is_err();
                }
            }
        })
        .expect("spawning the stdout writer thread");
    (Writer { tx }, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], max: usize) -> Vec<Input> {
        let (tx, mut rx) = mpsc::channel(100);
        // A small buffer makes lines span reads, as they do on a pipe.
        read_lines(
            BufReader::with_capacity(7, std::io::Cursor::new(input.to_vec())),
            max,
            &tx,
        );
        drop(tx);
        let mut out = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            out.extend(batch);
        }
        out
    }

    #[test]
    fn lf_crlf_and_a_last_line_without_eol() {
        let got = read_all(b"1 INTF 3\r\n2 KEY\n\n3 QUIT", 100);
        assert_eq!(
            got,
            vec![
                Input::Line(b"1 INTF 3".to_vec()),
                Input::Line(b"2 KEY".to_vec()),
                Input::Line(vec![]),
                Input::Line(b"3 QUIT".to_vec()),
            ]
        );
    }

    #[test]
    fn overlong_lines_are_cut_and_reading_goes_on() {
        let mut input = b"7 FILE ".to_vec();
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend_from_slice(b"\n8 KEY\n");
        let got = read_all(&input, 1024);
        assert_eq!(got.len(), 2);
        match &got[0] {
            Input::TooLong { prefix } => {
                assert!(prefix.starts_with(b"7 FILE "));
                assert!(prefix.len() <= MAX_SEQ_LEN + 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(got[1], Input::Line(b"8 KEY".to_vec()));
    }

    #[test]
    fn batches_never_grow_past_one_read() {
        let (tx, mut rx) = mpsc::channel(1000);
        let input: Vec<u8> = (0..100)
            .flat_map(|i| format!("{i} KEY\n").into_bytes())
            .collect();
        // Reads of 16 bytes end in the middle of lines.
        read_lines(
            BufReader::with_capacity(16, std::io::Cursor::new(input)),
            100,
            &tx,
        );
        drop(tx);
        let mut total = 0;
        while let Ok(batch) = rx.try_recv() {
            assert!(batch.len() <= 3, "a batch of {} lines", batch.len());
            total += batch.len();
        }
        assert_eq!(total, 100);
    }

    #[test]
    fn invalid_utf8_is_carried_through() {
        assert_eq!(
            read_all(b"1 X \xff\xfe\n", 100),
            vec![Input::Line(b"1 X \xff\xfe".to_vec())]
        );
    }

    #[test]
    fn info_lines_are_sanitised_and_bounded() {
        assert_eq!(info_line("a\nb\tc"), b"* a b c\n");
        let long = "é".repeat(5000);
        let line = info_line(&long);
        assert!(line.len() <= MAX_REPLY_LINE);
        assert!(std::str::from_utf8(&line).is_ok());
    }

    #[test]
    fn writer_writes_whole_lines_in_order() {
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (w, h) = spawn_writer(Shared(buf.clone()), 4);
        w.reply(b"01", &Reply::ok());
        w.info("hi");
        drop(w);
        h.join().unwrap();
        assert_eq!(&*buf.lock().unwrap(), b"01 OK\n* hi\n");
    }
}
