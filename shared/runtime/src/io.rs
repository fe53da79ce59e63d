//! The two threads at the edges of a helper: the stdin reader and the
//! stdout writer.
//!
//! stdin is read on a plain thread, not with `tokio::io::stdin`, whose
//! blocking read cannot be cancelled and can hang runtime shutdown: here the
//! process simply exits while the thread is still blocked.

use crate::sync;
use cgp_wire::request::{MAX_SEQ_LEN, Reply};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// CGP's limit for any line a helper writes, end-of-line included.
pub const MAX_REPLY_LINE: usize = 4096;

/// One item of a [`Batch`].
#[derive(Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// One line without its LF (and without a trailing CR).
    Line(&'a [u8]),
    /// A line over the limit was discarded; its start is kept so the sequence
    /// token can still be answered.
    TooLong { prefix: &'a [u8] },
}

/// The complete lines one read brought in, in one buffer: one allocation
/// (and one free on another thread) per batch instead of per line.
#[derive(Debug, Default)]
pub struct Batch {
    text: Vec<u8>,
    /// Start, end and "too long" of each line in `text`.
    lines: Vec<(usize, usize, bool)>,
}

impl Batch {
    pub fn inputs(&self) -> impl Iterator<Item = Input<'_>> {
        self.lines.iter().map(|&(start, end, too_long)| {
            let text = &self.text[start..end];
            if too_long {
                Input::TooLong { prefix: text }
            } else {
                Input::Line(text)
            }
        })
    }
}

/// Splits input into [`Batch`]es of whole lines.
pub struct LineReader<R> {
    src: BufReader<R>,
    max_line: usize,
    batch: Batch,
    /// Where the line being read starts in `batch.text`.
    start: usize,
    too_long: bool,
    done: bool,
}

impl<R: Read> LineReader<R> {
    pub fn new(source: R, max_line: usize) -> LineReader<R> {
        Self::with_buffer(BufReader::with_capacity(64 * 1024, source), max_line)
    }

    fn with_buffer(src: BufReader<R>, max_line: usize) -> LineReader<R> {
        LineReader {
            src,
            max_line,
            batch: Batch::default(),
            start: 0,
            too_long: false,
            done: false,
        }
    }

    /// The complete lines the next read brings in, read before a further
    /// read could block; `None` at end of input.
    pub fn next_batch(&mut self) -> Option<Batch> {
        while !self.done {
            let used = match self.src.fill_buf() {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) | Ok([]) => {
                    self.done = true;
                    0
                }
                Ok(buf) => {
                    if self.batch.text.capacity() == 0 {
                        self.batch.text.reserve(buf.len());
                    }
                    let (text, start, max) = (&mut self.batch.text, self.start, self.max_line);
                    match buf.iter().position(|b| *b == b'\n') {
                        Some(pos) => {
                            self.too_long |= append(text, start, &buf[..pos], max, self.too_long);
                            pos + 1
                        }
                        None => {
                            self.too_long |= append(text, start, buf, max, self.too_long);
                            let n = buf.len();
                            self.src.consume(n);
                            // The rest of this line needs another read, which
                            // may block: hand over the lines already complete
                            // first, and carry the started one into a new
                            // batch.
                            if !self.batch.lines.is_empty() {
                                let started = Batch {
                                    text: self.batch.text.split_off(self.start),
                                    lines: Vec::new(),
                                };
                                self.start = 0;
                                return Some(std::mem::replace(&mut self.batch, started));
                            }
                            continue;
                        }
                    }
                }
            };
            self.src.consume(used);
            let mut end = self.batch.text.len();
            // A last line without LF still counts as a line.
            if !self.done || end > self.start || self.too_long {
                if !self.too_long && end > self.start && self.batch.text[end - 1] == b'\r' {
                    end -= 1;
                }
                self.batch.lines.push((self.start, end, self.too_long));
                self.start = self.batch.text.len();
                self.too_long = false;
            }
            // Hand the batch over before the next read could block.
            if (self.done || self.src.buffer().is_empty()) && !self.batch.lines.is_empty() {
                self.start = 0;
                return Some(std::mem::take(&mut self.batch));
            }
        }
        None
    }
}

/// Appends a chunk to the line that starts at `start` unless it is already
/// too long; returns true when the line has just passed the limit. Only the
/// start of an overlong line is kept, enough to read its sequence token.
fn append(
    text: &mut Vec<u8>,
    start: usize,
    chunk: &[u8],
    max_line: usize,
    already_too_long: bool,
) -> bool {
    if already_too_long {
        return false;
    }
    let len = text.len() - start;
    if len + chunk.len() > max_line {
        let keep = (MAX_SEQ_LEN + 1).saturating_sub(len).min(chunk.len());
        text.extend_from_slice(&chunk[..keep]);
        text.truncate(start + MAX_SEQ_LEN + 1);
        return true;
    }
    text.extend_from_slice(chunk);
    false
}

/// What travels to the writer thread.
enum Out {
    Line(Vec<u8>),
    /// Everything queued before it is written; then the thread ends.
    Close,
}

/// stdout, one line at a time under its lock; `None` once closed, or after
/// a write error (CGP closed the pipe): lines are dropped from then on,
/// nobody is left to read them.
type Output = Arc<Mutex<Option<Box<dyn Write + Send>>>>;

/// Writes one whole line in one write and flushes it; the caller holds the
/// output's lock.
fn write_line(out: &mut Option<Box<dyn Write + Send>>, line: &[u8]) {
    if let Some(w) = out.as_mut() {
        if w.write_all(line).and_then(|()| w.flush()).is_err() {
            *out = None;
        }
    }
}

/// The only path to stdout. Cheap to clone. Lines from the stdin reader go
/// through one bounded queue to the writer thread, so that the reader reads
/// on while its replies are written (a cache hit's reply costs the reader
/// no write). A reply that waited is written by the thread that finished
/// it ([`Writer::write_now`]): handing it to the writer thread cost a
/// cross-thread wake-up per request, the largest cost of a request that
/// only waits for its back end. Either way each line is written whole, in
/// one write, and flushed, one at a time.
#[derive(Clone)]
pub struct Writer {
    tx: std::sync::mpsc::SyncSender<Out>,
    out: Output,
}

impl Writer {
    /// Queues a reply line. The caller has already made sure it fits.
    pub fn reply(&self, seq: &[u8], reply: &Reply) {
        debug_assert!(reply.line_len(seq) <= MAX_REPLY_LINE);
        self.line(reply.line(seq));
    }

    /// Queues a whole line, end of line included. The caller has already
    /// made sure it fits. After [`WriterThread::close`] lines are dropped:
    /// the process is about to exit and nobody reads them.
    pub fn line(&self, line: Vec<u8>) {
        debug_assert!(line.len() <= MAX_REPLY_LINE && line.ends_with(b"\n"));
        let _ = self.tx.send(Out::Line(line));
    }

    /// Writes a whole line on this thread, after running `first`, both
    /// under the output's lock: nothing else is written between the two.
    /// For a thread whose next job can wait for one write (an async worker,
    /// a compute thread), never the reader.
    pub fn write_now(&self, line: &[u8], first: impl FnOnce()) {
        debug_assert!(line.len() <= MAX_REPLY_LINE && line.ends_with(b"\n"));
        let mut out = sync::lock(&self.out);
        first();
        write_line(&mut out, line);
    }

    /// Sends a `* ` information line, which CGP copies to its log. Control
    /// characters are replaced and the line is cut to fit the limit.
    pub fn info(&self, text: &str) {
        self.line(info_line(text));
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

/// The writer thread, closed explicitly: clones of [`Writer`] live on in
/// threads that may never end (the stdin reader blocked on a pipe CGP keeps
/// open), so waiting for the last one to be dropped could wait for ever.
pub struct WriterThread {
    closer: Writer,
    thread: JoinHandle<()>,
}

impl WriterThread {
    /// Writes what was queued before this call, then ends the thread; lines
    /// written or queued later are dropped.
    pub fn close(self) {
        let _ = self.closer.tx.send(Out::Close);
        let _ = self.thread.join();
    }
}

/// Starts the writer thread. The queue holds at most `queue` lines: when
/// CGP stops reading, senders wait instead of piling up replies in memory.
pub fn spawn_writer<W: Write + Send + 'static>(out: W, queue: usize) -> (Writer, WriterThread) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Out>(queue);
    let out: Output = Arc::new(Mutex::new(Some(Box::new(out))));
    let thread_out = out.clone();
    let thread = std::thread::Builder::new()
        .name("stdout-writer".into())
        .spawn(move || {
            // After a write error lines are received and dropped, so that
            // senders never wait on a dead pipe.
            while let Ok(Out::Line(line)) = rx.recv() {
                write_line(&mut sync::lock(&thread_out), &line);
            }
            // Closed: nothing is written after the last line queued (QUIT's
            // reply), not even by the threads that write at once.
            *sync::lock(&thread_out) = None;
        })
        .expect("spawning the stdout writer thread");
    let writer = Writer { tx, out };
    let closer = writer.clone();
    (writer, WriterThread { closer, thread })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a reader makes of `input`: each line as text, an overlong one as
    /// `TooLong:<prefix>`.
    fn read_all(input: &[u8], max: usize) -> Vec<String> {
        batches(input, max, 7).into_iter().flatten().collect()
    }

    /// The batches of a reader whose reads return at most `read` bytes, as
    /// they do on a pipe.
    fn batches(input: &[u8], max: usize, read: usize) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut reader = LineReader::with_buffer(
            BufReader::with_capacity(read, std::io::Cursor::new(input.to_vec())),
            max,
        );
        while let Some(batch) = reader.next_batch() {
            out.push(shown(&batch));
        }
        out
    }

    /// A batch's lines as text, an overlong one as `TooLong:<prefix>`.
    fn shown(batch: &Batch) -> Vec<String> {
        batch
            .inputs()
            .map(|i| match i {
                Input::Line(l) => String::from_utf8_lossy(l).into_owned(),
                Input::TooLong { prefix } => format!("TooLong:{}", String::from_utf8_lossy(prefix)),
            })
            .collect()
    }

    #[test]
    fn lf_crlf_and_a_last_line_without_eol() {
        let got = read_all(b"1 INTF 3\r\n2 KEY\n\n3 QUIT", 100);
        assert_eq!(got, ["1 INTF 3", "2 KEY", "", "3 QUIT"]);
    }

    #[test]
    fn overlong_lines_are_cut_and_reading_goes_on() {
        let mut input = b"7 FILE ".to_vec();
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend_from_slice(b"\n8 KEY\n");
        let got = read_all(&input, 1024);
        assert_eq!(got.len(), 2);
        let prefix = got[0].strip_prefix("TooLong:").expect(&got[0]);
        assert!(prefix.starts_with("7 FILE "));
        assert!(prefix.len() <= MAX_SEQ_LEN + 1);
        assert_eq!(got[1], "8 KEY");
    }

    #[test]
    fn lines_spanning_reads_and_batches_stay_whole() {
        let input: Vec<u8> = (0..200)
            .flat_map(|i| format!("{i} ECHO {}\r\n", "y".repeat(i % 37)).into_bytes())
            .collect();
        let want: Vec<String> = (0..200)
            .map(|i| format!("{i} ECHO {}", "y".repeat(i % 37)))
            .collect();
        for read in [1, 5, 16, 64, 4096] {
            assert_eq!(read_all_with(&input, read), want, "reads of {read}");
        }
    }

    fn read_all_with(input: &[u8], read: usize) -> Vec<String> {
        batches(input, 100, read).into_iter().flatten().collect()
    }

    #[test]
    fn batches_never_grow_past_one_read() {
        let input: Vec<u8> = (0..100)
            .flat_map(|i| format!("{i} KEY\n").into_bytes())
            .collect();
        // Reads of 16 bytes end in the middle of lines.
        let got = batches(&input, 100, 16);
        for batch in &got {
            assert!(batch.len() <= 3, "a batch of {} lines", batch.len());
        }
        assert_eq!(got.concat().len(), 100);
    }

    #[test]
    fn invalid_utf8_is_carried_through() {
        let batch = LineReader::new(&b"1 X \xff\xfe\n"[..], 100)
            .next_batch()
            .unwrap();
        let got: Vec<Input> = batch.inputs().collect();
        assert_eq!(got, [Input::Line(b"1 X \xff\xfe")]);
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
        let kept = w.clone();
        w.reply(b"01", &Reply::ok());
        w.info("hi");
        // Both paths write whole lines; `first` runs before the line.
        let mut ran = false;
        w.write_now(b"02 OK\n", || ran = true);
        assert!(ran);
        // A clone still alive elsewhere (the stdin reader's) does not keep
        // the thread from ending.
        h.close();
        kept.info("too late");
        kept.write_now(b"03 OK\n", || {});
        // The line written at once comes anywhere between the queued
        // ones, which keep their order.
        let written = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(written.matches("02 OK\n").count(), 1, "{written:?}");
        assert_eq!(written.replace("02 OK\n", ""), "01 OK\n* hi\n");
    }

    #[test]
    fn after_a_write_error_lines_are_dropped() {
        struct Failing(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl Write for Failing {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (w, h) = spawn_writer(Failing(tries.clone()), 4);
        w.write_now(b"01 OK\n", || {});
        w.info("two");
        w.write_now(b"03 OK\n", || {});
        h.close();
        assert_eq!(tries.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
