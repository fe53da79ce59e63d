//! CGP queue files (docs/wire.md): where `FILE` may point, and reading
//! the envelope, the header and a bounded prefix of the body.
//!
//! The file is opened read-only and read front to back through a bounded
//! buffer: the envelope and the header up to their configured limits, the
//! body only when a rule needs it and only up to the scan limit, so memory
//! stays bounded whatever the message size.

use crate::message::{Attachment, attachments};
use memchr::{memchr, memmem};
use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::net::IpAddr;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

/// Component tags of messages CGP generates itself (besides any source at
/// `[0.0.0.0]`), as rspamd's CGP helper recognises them.
const SELF_TAGS: [&str; 6] = ["DSN", "GROUP", "LIST", "PBX", "PIPE", "RULE"];

/// The `S` envelope line: which component submitted the message, as whom,
/// from where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub tag: String,
    pub auth_user: Option<String>,
    pub ip: Option<IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The return-path; empty for `<>`.
    pub sender: Option<String>,
    pub recipients: Vec<String>,
    pub source: Option<Source>,
    /// Every envelope line verbatim, unknown prefixes included, one after
    /// the other without their line breaks (one buffer, not one per line).
    text: String,
    /// Where each line ends in `text`.
    ends: Vec<usize>,
}

impl Envelope {
    /// Parses envelope lines given in any order (the tests' way in).
    #[cfg(test)]
    pub fn parse<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> Envelope {
        Self::parse_within(lines, 0)
    }

    /// Parses envelope lines given in any order, about `bytes` bytes in
    /// all: the one buffer they are kept in is made that size at once.
    fn parse_within<S: AsRef<str>>(lines: impl IntoIterator<Item = S>, bytes: usize) -> Envelope {
        let lines = lines.into_iter();
        let mut env = Envelope {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(lines.size_hint().0),
            ..Envelope::default()
        };
        for line in lines {
            let line = line.as_ref().trim_end_matches(['\r', '\n']);
            match line.split_at_checked(2) {
                Some(("P ", rest)) => env.sender = angle_address(rest),
                Some(("R ", rest)) => env.recipients.extend(angle_address(rest)),
                Some(("S ", rest)) => env.source = Some(parse_source(rest)),
                _ => {}
            }
            env.text.push_str(line);
            env.ends.push(env.text.len());
        }
        env
    }

    /// Every envelope line as it was, in file order.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.text[start..end])
    }

    pub fn auth_user(&self) -> Option<&str> {
        self.source.as_ref().and_then(|s| s.auth_user.as_deref())
    }

    pub fn client_ip(&self) -> Option<IpAddr> {
        self.source.as_ref().and_then(|s| s.ip)
    }

    /// Whether CGP generated the message itself.
    pub fn self_generated(&self) -> bool {
        self.source.as_ref().is_some_and(|s| {
            s.ip.is_some_and(|ip| ip.is_unspecified())
                || SELF_TAGS.iter().any(|t| s.tag.eq_ignore_ascii_case(t))
        })
    }
}

/// The last `<…>` of a line; `Some("")` for `<>`. Searched as bytes: both
/// brackets are ASCII, so the cuts fall on character boundaries.
fn angle_address(rest: &str) -> Option<String> {
    let open = memchr::memrchr(b'<', rest.as_bytes())?;
    let close = memchr(b'>', &rest.as_bytes()[open..])? + open;
    Some(rest[open + 1..close].trim().to_string())
}

/// `[<user>] TAG [ip] …`
fn parse_source(rest: &str) -> Source {
    let mut rest = rest.trim();
    let mut src = Source::default();
    if rest.starts_with('<') {
        if let Some(close) = rest.find('>') {
            let user = rest[1..close].trim();
            src.auth_user = (!user.is_empty()).then(|| user.to_string());
            rest = rest[close + 1..].trim_start();
        }
    }
    let mut words = rest.split_whitespace();
    src.tag = words
        .next()
        .filter(|w| !w.starts_with('['))
        .unwrap_or("")
        .to_string();
    if let Some(open) = rest.find('[') {
        if let Some(close) = rest[open..].find(']') {
            src.ip = rest[open + 1..open + close].parse().ok();
        }
    }
    src
}

/// Why a `FILE` path was not opened.
#[derive(Debug)]
pub enum OpenError {
    /// The path leads outside the base directory (`..`, an absolute path
    /// elsewhere, a symlink): refused, never opened.
    Escapes,
    /// The file cannot be opened or read (missing, permissions, I/O).
    Unreadable(std::io::Error),
}

/// The CGP base directory, which `FILE` paths must not leave.
#[derive(Debug)]
pub struct BaseDir {
    /// Canonical path.
    path: PathBuf,
    /// Open directory, the anchor of the `openat2` calls.
    dir: File,
}

impl BaseDir {
    pub fn open(path: &Path) -> std::io::Result<BaseDir> {
        let path = path.canonicalize()?;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&path)?;
        Ok(BaseDir { path, dir })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens a `FILE` argument read-only; refuses anything that leads out of
    /// the base directory. Returns the file and its path (lexically
    /// normalised).
    pub fn open_file(&self, name: impl AsRef<Path>) -> Result<(File, PathBuf), OpenError> {
        let normal = self.inside(name.as_ref())?;
        match self.open_beneath(self.relative(&normal)) {
            Some(Ok(file)) => Ok((file, normal)),
            // ELOOP: a symlink on the way, which may lead out or stay
            // inside; the real path decides, before anything is opened.
            Some(Err(e)) if e.raw_os_error() != Some(libc::ELOOP) => Err(OpenError::Unreadable(e)),
            _ => self.open_resolved(normal),
        }
    }

    /// `path` below the base directory, relative to it; `path` is the base
    /// path followed by more components (what [`Self::inside`] returns, or
    /// a real path checked to start with the base).
    fn relative<'p>(&self, path: &'p Path) -> &'p Path {
        let below = &path.as_os_str().as_bytes()[self.path.as_os_str().len()..];
        Path::new(OsStr::from_bytes(below.strip_prefix(b"/").unwrap_or(below)))
    }

    /// The lexical check: `..` and absolute paths may not lead out. Done
    /// first, so that a missing file reached through `..` is refused rather
    /// than reported as unreadable.
    fn inside(&self, name: &Path) -> Result<PathBuf, OpenError> {
        // What CGP sends (`Queue/123.msg`) is already normal: only the
        // join is needed.
        let plain = |seg: &[u8]| !matches!(seg, b"" | b"." | b"..");
        let bytes = name.as_os_str().as_bytes();
        if !bytes.starts_with(b"/") && bytes.split(|&b| b == b'/').all(plain) {
            // Concatenated as bytes: `Path::join` compares components.
            let mut normal = self.path.as_os_str().to_owned();
            if !self.path.as_os_str().as_bytes().ends_with(b"/") {
                normal.push("/");
            }
            normal.push(name);
            return Ok(PathBuf::from(normal));
        }
        let mut normal = PathBuf::new();
        for c in self.path.join(name).components() {
            match c {
                Component::ParentDir => {
                    normal.pop();
                }
                Component::CurDir => {}
                other => normal.push(other),
            }
        }
        if !normal.starts_with(&self.path) || normal == self.path {
            return Err(OpenError::Escapes);
        }
        Ok(normal)
    }

    /// One `openat2` call that follows no symlink (ELOOP otherwise): with
    /// `..` and absolute paths already refused by [`Self::inside`], such a
    /// path cannot leave the base directory. `RESOLVE_BENEATH` would say the
    /// same for more of the kernel's time (a scoped lookup leaves its
    /// lock-free walk to check the result); what CGP sends never has a
    /// symlink, and the rare one takes the slower, checked way. `None`
    /// where the call does not exist (Linux before 5.6, seccomp filters).
    fn open_beneath(&self, relative: &Path) -> Option<std::io::Result<File>> {
        let c_path = std::ffi::CString::new(relative.as_os_str().as_bytes()).ok()?;
        // SAFETY: open_how is plain integers, for which all zeroes is valid.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        // O_NONBLOCK: a FIFO planted in the queue must not hang the open; it
        // changes nothing for regular files.
        how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_NO_SYMLINKS;
        // SAFETY: the arguments are a valid directory descriptor, a
        // NUL-terminated path and a pointer to an open_how of the given size,
        // all alive for the duration of the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.dir.as_raw_fd(),
                c_path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOSYS | libc::EPERM) => None,
                _ => Some(Err(e)),
            };
        }
        // SAFETY: the kernel just returned this descriptor to us alone.
        Some(Ok(unsafe { File::from_raw_fd(fd as RawFd) }))
    }

    /// The way through symlinks: the real path is worked out first
    /// (`canonicalize` reads links and metadata, it opens nothing) and must
    /// be inside the base directory and a regular file; only then is it
    /// opened, by a path that has no symlink left. Opening first and
    /// checking after would open whatever a link points at: a device, or a
    /// FIFO whose blocked writer that open releases.
    fn open_resolved(&self, normal: PathBuf) -> Result<(File, PathBuf), OpenError> {
        let real = normal.canonicalize().map_err(OpenError::Unreadable)?;
        if !real.starts_with(&self.path) || real == self.path {
            return Err(OpenError::Escapes);
        }
        let meta = std::fs::symlink_metadata(&real).map_err(OpenError::Unreadable)?;
        if !meta.is_file() {
            return Err(OpenError::Unreadable(not_regular()));
        }
        // A link swapped in between the check and the open makes the open
        // fail (ELOOP), it is not followed.
        let file = match self.open_beneath(self.relative(&real)) {
            Some(opened) => opened,
            None => std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
                .open(&real),
        };
        Ok((file.map_err(OpenError::Unreadable)?, normal))
    }
}

/// The error of a `FILE` that is something other than a regular file.
fn not_regular() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")
}

/// Limits of one read.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub envelope: usize,
    pub header: usize,
    /// Body bytes to read; 0 when no rule looks at the body.
    pub body: usize,
}

/// What the filter knows about one queue file.
#[derive(Debug, Default)]
pub struct QueueFile {
    /// The file name without `.msg`, as rspamd's Queue-ID.
    pub queue_id: String,
    pub envelope: Envelope,
    /// The RFC 5322 header, ending with its empty line when complete.
    pub header: Vec<u8>,
    pub header_truncated: bool,
    /// The attachments within the first `Limits::body` bytes of the body.
    /// The body itself is not kept: it is parsed as soon as it is read, so
    /// that no more than one body per worker thread is ever in memory.
    pub attachments: Vec<Attachment>,
    /// Size of the message (header and body) in bytes.
    pub size: u64,
    /// Time since the file was last written.
    pub age: Duration,
}

impl QueueFile {
    /// Reads an opened queue file within `limits`; `path` names it.
    pub fn read(file: &File, path: &Path, limits: Limits) -> std::io::Result<QueueFile> {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(not_regular());
        }
        let mut r = Reader {
            file,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            size: meta.len(),
        };
        let mut env_lines = Vec::new();
        let mut env_bytes = 0usize;
        loop {
            let line = r.line(limits.envelope.saturating_sub(env_bytes))?;
            if line.is_empty() {
                break;
            }
            env_bytes += line.len();
            if is_blank(&r.buf[line.clone()]) {
                break;
            }
            if env_bytes >= limits.envelope {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("envelope longer than {} bytes", limits.envelope),
                ));
            }
            env_lines.push(line);
        }
        // The envelope is checked as UTF-8 in one piece (it is ASCII in
        // practice): a check per line cost more. Lines end at an LF, so
        // they are cut on character boundaries.
        let env_end = env_lines.last().map_or(0, |l| l.end);
        let envelope = match std::str::from_utf8(&r.buf[..env_end]) {
            Ok(all) => Envelope::parse_within(env_lines.iter().map(|l| &all[l.clone()]), env_bytes),
            Err(_) => {
                Envelope::parse_within(env_lines.into_iter().map(|l| text(&r.buf[l])), env_bytes)
            }
        };
        let mut qf = QueueFile {
            queue_id: path
                .file_name()
                .map(|n| n.to_string_lossy())
                .map(|n| n.strip_suffix(".msg").unwrap_or(&n).to_string())
                .unwrap_or_default(),
            envelope,
            size: meta.len().saturating_sub(env_bytes as u64),
            age: SystemTime::now()
                .duration_since(meta.modified()?)
                .unwrap_or_default(),
            ..QueueFile::default()
        };
        let header_start = r.pos;
        // Most headers end, empty line included, within what the first read
        // brought: found with two searches instead of line by line.
        match empty_line_end(&r.buf[header_start..]).filter(|&end| end <= limits.header) {
            Some(end) => r.pos += end,
            None => loop {
                let room = limits.header.saturating_sub(r.pos - header_start);
                if room == 0 {
                    qf.header_truncated = true;
                    break;
                }
                let line = r.line(room)?;
                if line.is_empty() || is_blank(&r.buf[line]) {
                    break;
                }
            },
        }
        let header_end = r.pos;
        if limits.body > 0 && !qf.header_truncated {
            r.read_more(limits.body)?;
            qf.attachments = attachments(&r.buf[header_start..]);
        }
        let mut buf = r.buf;
        buf.truncate(header_end);
        buf.drain(..header_start);
        qf.header = buf;
        Ok(qf)
    }
}

/// Reads a file front to back into one buffer, which keeps every byte read
/// (the envelope, the header and the scanned part of the body are parsed
/// from it); lines are found with `memchr`, with no copy per line.
struct Reader<'f> {
    file: &'f File,
    buf: Vec<u8>,
    /// Bytes of `buf` already taken as lines.
    pos: usize,
    eof: bool,
    /// The file's size when it was opened.
    size: u64,
}

/// The first read: the envelope and header of most messages fit in it, so
/// most files take one `read` call and the body is never copied.
const FIRST_READ: usize = 4096;

impl Reader<'_> {
    /// The next line (LF included) of at most `max` bytes, as a range of
    /// `buf`; empty at the end of the file.
    fn line(&mut self, max: usize) -> std::io::Result<Range<usize>> {
        loop {
            let avail = &self.buf[self.pos..];
            let within = avail.len().min(max);
            let len = match memchr(b'\n', &avail[..within]) {
                Some(i) => i + 1,
                None if within == max || self.eof => within,
                // Each read doubles the buffer: a long header takes a few
                // reads, not one per line.
                None => {
                    self.fill(FIRST_READ.max(self.buf.len()))?;
                    continue;
                }
            };
            let line = self.pos..self.pos + len;
            self.pos += len;
            return Ok(line);
        }
    }

    /// Reads up to `want` more bytes onto the end of `buf`: one `read` call
    /// when the file has that many bytes left (`left` says how many it had
    /// when opened), so the end of a small file costs no extra call.
    fn fill(&mut self, want: usize) -> std::io::Result<()> {
        let left = self.size.saturating_sub(self.buf.len() as u64);
        let want = if left > 0 {
            want.min(left as usize)
        } else {
            want
        };
        // Reserved first: `read_to_end` then reads straight into the spare
        // room, without zeroing it or probing with a small read.
        self.buf.reserve(want);
        let n = self.file.take(want as u64).read_to_end(&mut self.buf)?;
        self.eof = n == 0;
        Ok(())
    }

    /// Reads until `more` bytes past the taken lines are in `buf`, or to the
    /// end of the file.
    fn read_more(&mut self, more: usize) -> std::io::Result<()> {
        let have = self.buf.len() - self.pos;
        let want = more.saturating_sub(have);
        if want > 0 && !self.eof {
            self.fill(want)?;
        }
        self.buf
            .truncate(self.pos + more.min(self.buf.len() - self.pos));
        Ok(())
    }
}

/// Bytes as text, invalid UTF-8 replaced; checked the fast way first, as
/// envelope lines are ASCII.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

fn is_blank(line: &[u8]) -> bool {
    matches!(line, b"\n" | b"\r\n")
}

/// Where the first empty line of `text` ends (its line break included), if
/// it has one.
fn empty_line_end(text: &[u8]) -> Option<usize> {
    for blank in [&b"\n"[..], b"\r\n"] {
        if text.starts_with(blank) {
            return Some(blank.len());
        }
    }
    // An empty line follows the line break of the line before it. The
    // searchers are built once: building one costs more than a search.
    static LF: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new("\n\n"));
    static CRLF: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new("\n\r\n"));
    // The ending of the first line is likely the file's: that search goes
    // first, and the other only up to where the first one found its line.
    let crlf_file = memchr(b'\n', text).is_some_and(|i| i > 0 && text[i - 1] == b'\r');
    let (likely, other) = if crlf_file {
        (&*CRLF, &*LF)
    } else {
        (&*LF, &*CRLF)
    };
    let end = |f: &memmem::Finder<'_>, text: &[u8]| f.find(text).map(|i| i + f.needle().len());
    let first = end(likely, text);
    end(other, &text[..first.unwrap_or(text.len())]).or(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_in_any_order_with_unknown_lines() {
        let env = Envelope::parse([
            "R W 26-04-2019 15:57:14 0000 ____ _FY_ <bob@example.test>\r",
            "S <alice@example.test> SMTP [192.0.2.10]",
            "X something new",
            "A client.example.test [192.0.2.10]",
            "O L",
            "P I 26-04-2019 15:57:14 0000 ____ ____ <alice@example.test>",
            "R W 26-04-2019 15:57:14 0000 ____ _FY_ <carol@example.test>",
        ]);
        assert_eq!(env.sender.as_deref(), Some("alice@example.test"));
        assert_eq!(env.recipients, ["bob@example.test", "carol@example.test"]);
        assert_eq!(env.auth_user(), Some("alice@example.test"));
        assert_eq!(env.client_ip(), Some("192.0.2.10".parse().unwrap()));
        assert_eq!(env.source.as_ref().unwrap().tag, "SMTP");
        let lines: Vec<_> = env.lines().collect();
        assert_eq!(lines.len(), 7);
        assert_eq!(
            lines[0],
            "R W 26-04-2019 15:57:14 0000 ____ _FY_ <bob@example.test>"
        );
        assert_eq!(lines[2], "X something new");
        assert_eq!(
            lines[6],
            "R W 26-04-2019 15:57:14 0000 ____ _FY_ <carol@example.test>"
        );
        assert!(!env.self_generated());
    }

    #[test]
    fn self_generated_sources() {
        for s in [
            "S DSN [0.0.0.0]",
            "S RULE [0.0.0.0]",
            "S WEBUSER [0.0.0.0]",
            "S PIPE [127.0.0.1]",
        ] {
            assert!(Envelope::parse([s]).self_generated(), "{s}");
        }
        let anon = Envelope::parse(["S SMTP [198.51.100.3]", "P I x <>"]);
        assert!(!anon.self_generated());
        assert_eq!(anon.auth_user(), None);
        assert_eq!(anon.sender.as_deref(), Some(""));
    }

    /// Limits of 1 KiB for the envelope and the header, no body.
    const SMALL: Limits = Limits {
        envelope: 1024,
        header: 1024,
        body: 0,
    };

    /// Writes `bytes` to `path` and reads it as a queue file.
    fn written(path: &Path, bytes: impl AsRef<[u8]>, limits: Limits) -> QueueFile {
        std::fs::write(path, bytes).unwrap();
        QueueFile::read(&File::open(path).unwrap(), path, limits).unwrap()
    }

    fn base() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("base");
        std::fs::create_dir_all(base.join("Queue")).unwrap();
        std::fs::write(
            base.join("Queue/1.msg"),
            "S SMTP [192.0.2.1]\n\nSubject: x\n\nbody\n",
        )
        .unwrap();
        std::fs::write(root.path().join("secret.msg"), "x").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret.msg"), base.join("Queue/link.msg"))
            .unwrap();
        std::os::unix::fs::symlink(base.join("Queue/1.msg"), base.join("Queue/abs.msg")).unwrap();
        // Directories reached through a symlink: one inside, one outside.
        std::os::unix::fs::symlink("Queue", base.join("Spool")).unwrap();
        std::os::unix::fs::symlink(root.path(), base.join("Up")).unwrap();
        (root, base.canonicalize().unwrap())
    }

    #[test]
    fn paths_stay_inside_the_base_directory() {
        let (root, base) = base();
        let dir = BaseDir::open(&base).unwrap();
        // Both ways of opening: openat2 and the portable fallback.
        let both = |name: &str| {
            let fallback = dir
                .inside(Path::new(name))
                .and_then(|n| dir.open_resolved(n));
            [dir.open_file(name), fallback]
        };
        let abs = base.join("Queue/1.msg");
        for good in [
            "Queue/1.msg",
            "./Queue/../Queue/1.msg",
            abs.to_str().unwrap(),
        ] {
            for r in both(good) {
                let (_, path) = r.unwrap_or_else(|_| panic!("{good}"));
                assert_eq!(path, abs);
            }
        }
        // Symlinks are fine where the file opened is inside, even by way of
        // the outside: the real path decides.
        for name in ["Queue/abs.msg", "Spool/1.msg", "Up/base/Queue/1.msg"] {
            for r in both(name) {
                assert!(r.is_ok(), "{name}");
            }
        }
        for bad in [
            "../secret.msg",
            "Queue/../../secret.msg",
            "/etc/passwd",
            "Queue/link.msg",
            "Up/secret.msg",
            "..",
            "",
            "../nope.msg",
        ] {
            for r in both(bad) {
                assert!(matches!(r, Err(OpenError::Escapes)), "{bad}");
            }
        }
        for r in both("Queue/nope.msg") {
            assert!(matches!(r, Err(OpenError::Unreadable(_))));
        }
        // A FIFO neither hangs the open nor gets read.
        let fifo = base.join("Queue/fifo.msg");
        mkfifo(&fifo);
        let [direct, resolved] = both("Queue/fifo.msg");
        let (file, _) = direct.unwrap();
        assert!(QueueFile::read(&file, &fifo, SMALL).is_err());
        assert!(matches!(resolved, Err(OpenError::Unreadable(_))));
        drop(root);
    }

    /// Makes a FIFO at `path`.
    fn mkfifo(path: &Path) {
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo gets a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    }

    /// Counts the opens of the files it watches (inotify `IN_OPEN`, queued
    /// by the kernel as part of the open call itself).
    struct OpenWatch(File);

    impl OpenWatch {
        fn new(paths: &[&Path]) -> OpenWatch {
            // SAFETY: plain system calls on a descriptor we own and valid
            // NUL-terminated paths.
            unsafe {
                let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
                assert!(fd >= 0);
                for p in paths {
                    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
                    assert!(libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN) >= 0);
                }
                OpenWatch(File::from_raw_fd(fd))
            }
        }

        /// Whether anything was opened since the watch began.
        fn opened(&mut self) -> bool {
            let mut events = [0u8; 4096];
            self.0.read(&mut events).is_ok_and(|n| n > 0)
        }
    }

    #[test]
    fn symlinks_out_are_refused_before_anything_is_opened() {
        let (root, base) = base();
        let dir = BaseDir::open(&base).unwrap();
        let fifo = root.path().join("outside.fifo");
        mkfifo(&fifo);
        let secret = root.path().join("secret.msg");
        for (link, target) in [
            ("fifo.msg", fifo.as_path()),
            ("zero.msg", Path::new("/dev/zero")),
            ("passwd.msg", secret.as_path()),
        ] {
            std::os::unix::fs::symlink(target, base.join("Queue").join(link)).unwrap();
        }
        let mut watch = OpenWatch::new(&[&fifo, &secret]);
        for name in [
            "Queue/fifo.msg",
            "Queue/zero.msg",
            "Queue/passwd.msg",
            "Up/outside.fifo",
        ] {
            let r = dir.open_file(name);
            assert!(matches!(r, Err(OpenError::Escapes)), "{name}: {r:?}");
            let r = dir
                .inside(Path::new(name))
                .and_then(|n| dir.open_resolved(n));
            assert!(matches!(r, Err(OpenError::Escapes)), "{name}: {r:?}");
        }
        assert!(!watch.opened(), "a target outside the base was opened");
        // The watch does see an open.
        drop(File::open(&secret).unwrap());
        assert!(watch.opened());
        drop(root);
    }

    #[test]
    fn envelope_with_bytes_that_are_not_utf8() {
        let (root, base) = base();
        let path = base.join("Queue/8bit.msg");
        let qf = written(
            &path,
            b"S <a@example.test> SMTP [192.0.2.7]\nX caf\xe9\nR W x <b@example.test>\n\nSubject: s\n\n",
            SMALL,
        );
        let env = &qf.envelope;
        assert_eq!(env.auth_user(), Some("a@example.test"));
        assert_eq!(env.recipients, ["b@example.test"]);
        let lines: Vec<_> = env.lines().collect();
        assert_eq!(lines[1], "X caf\u{fffd}");
        assert_eq!(qf.header, b"Subject: s\n\n");
        drop(root);
    }

    #[test]
    fn header_ends_at_its_first_empty_line() {
        let (root, base) = base();
        let path = base.join("Queue/h.msg");
        let limits = SMALL;
        for (text, header) in [
            ("S x\n\nA: 1\n\nB: 2\n", "A: 1\n\n"),
            ("S x\r\n\r\nA: 1\r\n\r\nB: 2\r\n", "A: 1\r\n\r\n"),
            ("S x\n\nA: 1\r\n\tb\n\r\nB\n\n", "A: 1\r\n\tb\n\r\n"),
            ("S x\n\n\nbody\n", "\n"),
            ("S x\n\n\r\nbody\n", "\r\n"),
            ("S x\n\nA: 1\n \nB: 2", "A: 1\n \nB: 2"),
            ("S x\n\n", ""),
        ] {
            let qf = written(&path, text, limits);
            assert_eq!(qf.header, header.as_bytes(), "{text:?}");
            assert!(!qf.header_truncated);
        }
        // A header longer than the first read is found line by line.
        let long = format!("S x\n\n{}\n", "X-Pad: 0123456789\n".repeat(500));
        let big = Limits {
            header: 1 << 20,
            ..limits
        };
        let qf = written(&path, &long, big);
        assert_eq!(qf.header.len(), long.len() - 5);
        drop(root);
    }

    #[test]
    fn reads_within_limits() {
        let (root, base) = base();
        let path = base.join("Queue/big.msg");
        let mut text =
            String::from("S <a@example.test> XIMSS [192.0.2.5]\r\nR W x <b@example.test>\r\n\r\n");
        text.push_str(
            "Subject: hello\r\n\tworld\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n",
        );
        text.push_str("--b\r\nContent-Type: image/png; name=early.png\r\n\r\nPNG\r\n");
        text.push_str(&"0123456789".repeat(1000));
        text.push_str("\r\n--b\r\nContent-Type: image/gif; name=late.gif\r\n\r\nGIF\r\n--b--\r\n");
        std::fs::write(&path, &text).unwrap();
        let limits = Limits { body: 200, ..SMALL };
        let read = |l: Limits| QueueFile::read(&File::open(&path).unwrap(), &path, l);
        let qf = read(limits).unwrap();
        assert_eq!(qf.queue_id, "big");
        assert_eq!(qf.envelope.recipients, ["b@example.test"]);
        assert_eq!(
            qf.header,
            b"Subject: hello\r\n\tworld\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        );
        let names = |q: &QueueFile| {
            let names = q
                .attachments
                .iter()
                .map(|a| a.name.clone().unwrap_or_default());
            names.collect::<Vec<_>>()
        };
        assert_eq!(names(&qf), ["early.png"]);
        let all = read(Limits {
            body: 1 << 20,
            ..limits
        })
        .unwrap();
        assert_eq!(names(&all), ["early.png", "late.gif"]);
        let envelope_len = text.find("\r\n\r\n").unwrap() + 4;
        assert_eq!(qf.size, (text.len() - envelope_len) as u64);
        let no_body = read(Limits { body: 0, ..limits }).unwrap();
        assert!(no_body.attachments.is_empty());
        let short = read(Limits {
            header: 20,
            ..limits
        })
        .unwrap();
        assert!(short.header_truncated && short.header.len() == 20);
        // The empty line itself must fit: one byte short is a cut header.
        let full = qf.header.len();
        let exact = read(Limits {
            header: full,
            ..limits
        })
        .unwrap();
        assert!(!exact.header_truncated && exact.header == qf.header);
        let cut = read(Limits {
            header: full - 1,
            ..limits
        })
        .unwrap();
        assert!(cut.header_truncated && cut.header.len() == full - 1);
        let e = read(Limits {
            envelope: 40,
            ..limits
        })
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        drop(root);
    }
}
