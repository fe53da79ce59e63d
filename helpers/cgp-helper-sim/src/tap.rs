//! `cgp-helper-sim tap`: CGP starts it as a helper's Program Path; it starts
//! the real helper and passes every byte through unchanged both ways, while
//! a thread of its own records both directions, secrets masked
//! ([`crate::capture`]), to a size-bounded, rotated file.
//!
//! Passing bytes never waits for the file: the two forwarding threads hand
//! a copy of what they read to the recorder through a queue bounded in bytes,
//! without waiting, and a file that cannot be written (or a queue that fills up)
//! stops the recording for good, which is said once on a `*` line put
//! between two lines of the helper's output. A request is queued for the
//! recorder before it is passed on, so the recorder sees a READPLAIN before
//! the reply it must mask.

use crate::capture::{HEADER, MAX_RECORDED_LINE, Masker, highest_number};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Bytes waiting for the recorder, at most: a slow disk gets this much
/// slack before the recording stops, and the tap's memory stays bounded.
const QUEUE_BYTES: usize = 16 << 20;
/// What a queued message costs besides its bytes.
const MSG_COST: usize = 64;
const READ_SIZE: usize = 16 * 1024;

pub struct Tap {
    pub out: PathBuf,
    pub max_bytes: u64,
    pub keep: u32,
    pub command: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Request,
    Reply,
}

enum Msg {
    Chunk(Dir, SystemTime, Vec<u8>),
    Event(SystemTime, String),
    /// Both sides are over: record what is left, flush, stop.
    Finish,
}

/// What the threads share: whether recording goes on, the notice to put
/// into the helper's output, and that output.
struct Shared {
    recording: AtomicBool,
    notice: Mutex<Option<String>>,
    out: Mutex<Out>,
    queue: Sender<Msg>,
    /// Bytes queued for the recorder and not yet written.
    pending: AtomicUsize,
}

struct Out {
    stdout: File,
    /// Whether the last byte written was an end of line (or none was
    /// written): only there may the tap's own `*` line go.
    at_boundary: bool,
}

impl Shared {
    /// Queues a copy for the recorder without waiting; a full queue stops
    /// the recording.
    fn record(&self, msg: Msg) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        let cost = msg.cost();
        if self.pending.fetch_add(cost, Ordering::Relaxed) + cost > QUEUE_BYTES {
            self.pending.fetch_sub(cost, Ordering::Relaxed);
            self.stop("the capture file is written more slowly than the helper talks");
            return;
        }
        // Fails only once the recorder has stopped, and then nothing is
        // recorded any more.
        let _ = self.queue.send(msg);
    }

    fn event(&self, text: String) {
        self.record(Msg::Event(SystemTime::now(), text));
    }

    /// Stops recording, once, and says so to CGP at the next line boundary
    /// of the helper's output (now, if the output is at one and free).
    fn stop(&self, reason: &str) {
        if !self.recording.swap(false, Ordering::Relaxed) {
            return;
        }
        *crate::sync_lock(&self.notice) = Some(format!(
            "* cgp-helper-sim tap: capture stopped ({reason}); passing bytes on unrecorded\n"
        ));
        if let Ok(mut out) = self.out.try_lock() {
            let _ = out.write(b"", &self.notice);
        }
    }
}

impl Msg {
    /// What the message counts against [`QUEUE_BYTES`]; `Finish` is sent
    /// outside the bound.
    fn cost(&self) -> usize {
        match self {
            Msg::Chunk(_, _, bytes) => MSG_COST + bytes.len(),
            Msg::Event(_, text) => MSG_COST + text.len(),
            Msg::Finish => 0,
        }
    }
}

impl Out {
    /// Writes the helper's bytes as they are, with a pending notice put
    /// after the first end of line (or first, at a boundary).
    fn write(&mut self, chunk: &[u8], notice: &Mutex<Option<String>>) -> std::io::Result<()> {
        let pending = crate::sync_lock(notice).take();
        let split = match &pending {
            Some(_) if self.at_boundary => Some(0),
            Some(_) => chunk.iter().position(|b| *b == b'\n').map(|p| p + 1),
            None => None,
        };
        match (split, pending) {
            (Some(at), Some(text)) => {
                self.stdout.write_all(&chunk[..at])?;
                self.stdout.write_all(text.as_bytes())?;
                self.stdout.write_all(&chunk[at..])?;
            }
            (_, pending) => {
                *crate::sync_lock(notice) = pending;
                self.stdout.write_all(chunk)?;
            }
        }
        if let Some(last) = chunk.last() {
            self.at_boundary = *last == b'\n';
        }
        Ok(())
    }
}

impl Tap {
    /// Runs the helper under the tap; returns its exit status, or the
    /// reason it could not be started.
    pub fn run(self) -> Result<ExitStatus, String> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or("no helper command given")?;
        // Registered before the helper starts, so that no signal in between
        // ends the tap and orphans the helper; the helper gets the default
        // handlers back when it execs.
        let mut signals = Signals::new([SIGTERM, SIGHUP, SIGINT])
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        let stdout = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("cannot use stdout: {e}"))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let pid = child.id() as libc::pid_t;
        let (queue, rx) = channel();
        let shared = Arc::new(Shared {
            recording: AtomicBool::new(true),
            notice: Mutex::new(None),
            out: Mutex::new(Out {
                stdout: File::from(stdout),
                at_boundary: true,
            }),
            queue,
            pending: AtomicUsize::new(0),
        });
        shared.event(format!(
            "helper started, pid {pid}: {}",
            self.command.join(" ")
        ));
        let (done_tx, done) = sync_channel(1);
        let recorder = Recorder::new(self.out, self.max_bytes, self.keep);
        let s = shared.clone();
        std::thread::spawn(move || {
            recorder.run(&s, &rx);
            let _ = done_tx.send(());
        });

        let s = shared.clone();
        let reaped = Arc::new(AtomicBool::new(false));
        let gone = reaped.clone();
        std::thread::spawn(move || {
            for sig in signals.forever() {
                // The pid stays the helper's until it is waited for below;
                // after that the tap is exiting, and the signal is not sent
                // to a process that may have been given the number since.
                if gone.load(Ordering::Relaxed) {
                    continue;
                }
                // SAFETY: kill(2) touches no memory of ours; `pid` is our
                // child, not yet waited for.
                unsafe { libc::kill(pid, sig) };
                s.event(format!("signal {} passed to the helper", signal_name(sig)));
            }
        });

        let mut to_helper = child.stdin.take().ok_or("no stdin")?;
        let s = shared.clone();
        std::thread::spawn(move || {
            let ended = each_read(std::io::stdin(), |chunk| {
                // Recorded before it is passed on: see the module's text.
                s.record(Msg::Chunk(Dir::Request, SystemTime::now(), chunk.to_vec()));
                to_helper.write_all(chunk).is_ok()
            });
            if ended {
                s.event("end of input from CGP".into());
            }
            // Dropping the pipe tells the helper, as CGP closing it would.
        });

        let mut from_helper = child.stdout.take().ok_or("no stdout")?;
        let s = shared.clone();
        let replies = std::thread::spawn(move || {
            let mut cgp_gone = false;
            each_read(&mut from_helper, |chunk| {
                let at = SystemTime::now();
                // If CGP stopped reading for good, keep draining the helper
                // so that it is not blocked on a full pipe while it exits.
                if !cgp_gone {
                    cgp_gone = crate::sync_lock(&s.out).write(chunk, &s.notice).is_err();
                }
                s.record(Msg::Chunk(Dir::Reply, at, chunk.to_vec()));
                true
            });
        });

        let status = child
            .wait()
            .map_err(|e| format!("cannot wait for the helper: {e}"))?;
        reaped.store(true, Ordering::Relaxed);
        let _ = replies.join();
        shared.event(format!("helper ended: {}", describe(status)));
        // The recorder gets a little time to write the end; a file that
        // hangs does not keep the helper's exit from CGP.
        if shared.recording.load(Ordering::Relaxed) && shared.queue.send(Msg::Finish).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
        Ok(status)
    }
}

/// Hands each read of `from` to `each` as it comes, until the end of input
/// (true) or until `each` returns false or the input fails (false).
fn each_read(mut from: impl Read, mut each: impl FnMut(&[u8]) -> bool) -> bool {
    let mut buf = vec![0; READ_SIZE];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                if !each(&buf[..n]) {
                    return false;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {}", signal_name(sig)),
        _ => "unknown status".into(),
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        SIGTERM => "TERM".into(),
        SIGHUP => "HUP".into(),
        SIGINT => "INT".into(),
        libc::SIGKILL => "KILL".into(),
        other => other.to_string(),
    }
}

/// Ends the tap the way the helper ended: the same exit status, or the
/// same signal.
pub fn exit_like(status: ExitStatus) -> ! {
    if let Some(sig) = status.signal() {
        let _ = signal_hook::low_level::emulate_default_handler(sig);
        std::process::exit(128 + sig);
    }
    std::process::exit(status.code().unwrap_or(1))
}

/// The thread that writes the capture file.
struct Recorder {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<std::io::BufWriter<File>>,
    written: u64,
    masker: Masker,
    /// Per direction: the line read so far, and its length once it passed
    /// [`MAX_RECORDED_LINE`] (its bytes are then no longer kept).
    partial: [(Vec<u8>, Option<usize>); 2],
}

impl Recorder {
    fn new(path: PathBuf, max_bytes: u64, keep: u32) -> Recorder {
        Recorder {
            path,
            max_bytes,
            keep,
            file: None,
            written: 0,
            masker: Masker::default(),
            partial: Default::default(),
        }
    }

    fn run(mut self, shared: &Shared, rx: &Receiver<Msg>) {
        if let Err(e) = self.open() {
            shared.stop(&format!("cannot open {}: {e}", self.path.display()));
        }
        loop {
            let msg = match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // Everything queued is taken, then written out: a capture read
            // while the helper runs is up to date.
            let mut finish = false;
            let mut result = Ok(());
            for msg in std::iter::once(msg).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                finish |= matches!(msg, Msg::Finish);
                shared.pending.fetch_sub(msg.cost(), Ordering::Relaxed);
                result = result.and_then(|()| self.take(msg));
                if finish || result.is_err() {
                    break;
                }
            }
            if let Some(f) = self.file.as_mut() {
                result = result.and_then(|()| f.flush());
            }
            if let Err(e) = result {
                shared.stop(&format!("cannot write {}: {e}", self.path.display()));
                self.file = None;
            }
            if finish || self.file.is_none() {
                return;
            }
        }
    }

    fn take(&mut self, msg: Msg) -> std::io::Result<()> {
        match msg {
            Msg::Event(at, text) => self.write(at, "!", &text),
            Msg::Chunk(dir, at, bytes) => {
                let mut rest = &bytes[..];
                while let Some(end) = rest.iter().position(|b| *b == b'\n') {
                    self.extend(dir, &rest[..end]);
                    self.line(dir, at, "")?;
                    rest = &rest[end + 1..];
                }
                self.extend(dir, rest);
                Ok(())
            }
            Msg::Finish => {
                let now = SystemTime::now();
                for dir in [Dir::Request, Dir::Reply] {
                    let (bytes, long) = &self.partial[dir as usize];
                    if !bytes.is_empty() || long.is_some() {
                        self.line(dir, now, "~")?;
                    }
                }
                Ok(())
            }
        }
    }

    fn extend(&mut self, dir: Dir, bytes: &[u8]) {
        let (line, long) = &mut self.partial[dir as usize];
        match long {
            Some(n) => *n += bytes.len(),
            None if line.len() + bytes.len() > MAX_RECORDED_LINE => {
                *long = Some(line.len() + bytes.len());
                *line = Vec::new();
            }
            None => line.extend_from_slice(bytes),
        }
    }

    fn line(&mut self, dir: Dir, at: SystemTime, mark: &str) -> std::io::Result<()> {
        let (line, long) = std::mem::take(&mut self.partial[dir as usize]);
        let text = match (long, dir) {
            (Some(n), _) => self.masker.too_long(n),
            (None, Dir::Request) => self.masker.request(&line),
            (None, Dir::Reply) => self.masker.reply(&line),
        };
        let arrow = if dir == Dir::Request { ">" } else { "<" };
        self.write(at, &format!("{arrow}{mark}"), &text)
    }

    fn write(&mut self, at: SystemTime, dir: &str, text: &str) -> std::io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        let record = format!("{} {dir} {text}\n", humantime::format_rfc3339_micros(at));
        self.write_raw(&record)?;
        if self.written >= self.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn write_raw(&mut self, text: &str) -> std::io::Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.write_all(text.as_bytes())?;
            self.written += text.len() as u64;
        }
        Ok(())
    }

    /// FILE becomes FILE.1, FILE.1 FILE.2, … up to FILE.<keep>, the oldest
    /// dropped; recording goes on in a new FILE.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        for n in (1..self.keep).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.open()
    }

    fn open(&mut self) -> std::io::Result<()> {
        let file = open_private(&self.path)?;
        self.written = file.metadata()?.len();
        if self.written > 0 && self.file.is_none() {
            self.continue_numbers();
        }
        self.file = Some(std::io::BufWriter::new(file));
        // Every file says where its numbers start, so that a tap started
        // later on a file rotated before its first secret goes on from there.
        let start = self.masker.next_number();
        self.write_raw(&format!("{HEADER}\n"))?;
        self.write(
            SystemTime::now(),
            "!",
            &format!("secrets numbered from {start}"),
        )
    }

    /// A capture appended to after a restart goes on with the numbers of
    /// the one before, so that each `{secret:N}` names one value.
    fn continue_numbers(&mut self) {
        let Ok(file) = File::open(&self.path) else {
            return;
        };
        let reader = std::io::BufReader::new(file).take(self.max_bytes.saturating_mul(2));
        for record in std::io::BufRead::split(reader, b'\n').map_while(Result::ok) {
            let record = String::from_utf8_lossy(&record);
            let from = record
                .split_once(" ! secrets numbered from ")
                .and_then(|(_, n)| n.trim().parse::<u64>().ok());
            if let Some(n) = from.or_else(|| highest_number(&record).map(|n| n + 1)) {
                self.masker.number_from(n);
            }
        }
    }
}

/// Opens the capture for appending, created 0600. Not through a symbolic
/// link, and without waiting: a FIFO nobody reads is refused at once
/// instead of holding the tap. An existing regular file is made 0600.
fn open_private(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.is_file() && meta.permissions().mode() & 0o777 != 0o600 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}
