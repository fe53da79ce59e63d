//! A client for the CommuniGate Pro CLI over its PWD port (TCP 106): a
//! greeting `200 …`, `USER`/`PASS` login, `INLINE` so that data replies come
//! as `201 <data>` on one line, then one command per line answered by one
//! numeric line (200 OK, 201 with data, anything else an error with text).
//! The line protocol follows the vendor's CGP::CLI module.
//!
//! One session, commands serialised on it (account provisioning is rare);
//! every step has a timeout, and a broken session is reopened on the next
//! command.

use cgp_runtime::config::{Secret, SecretFile};
use cgp_wire::data::{Value, parse_value};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;
use tokio::time::timeout;

/// Longest reply line read (a `201` line carries a whole dictionary).
const MAX_LINE: u64 = 1 << 20;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CliConfig {
    /// `host:port` of the PWD/CLI service.
    pub address: String,
    /// A CGP account with the rights the commands need (e.g. postmaster).
    pub login: String,
    /// Its password; never logged.
    pub password: Option<Secret>,
    /// Or a file holding the password (first line).
    pub password_file: Option<SecretFile>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// One command, from sending it to its reply.
    #[serde(with = "humantime_serde")]
    pub op_timeout: Duration,
}

impl Default for CliConfig {
    fn default() -> Self {
        CliConfig {
            address: "127.0.0.1:106".into(),
            login: "postmaster".into(),
            password: None,
            password_file: None,
            connect_timeout: Duration::from_secs(3),
            op_timeout: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for CliConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CliConfig")
            .field("address", &self.address)
            .field("login", &self.login)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("password_file", &self.password_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CliError {
    /// No answer in time, connection refused or broken, or login refused.
    Unavailable(String),
    /// The server answered the command with an error code.
    Refused { code: u32, text: String },
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Unavailable(s) => write!(f, "CLI unavailable: {s}"),
            CliError::Refused { code, text } => write!(f, "CLI error {code}: {text}"),
        }
    }
}

impl std::error::Error for CliError {}

struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

pub struct CliClient {
    address: String,
    login: String,
    password: String,
    connect_timeout: Duration,
    op_timeout: Duration,
    session: Mutex<Option<Session>>,
}

impl fmt::Debug for CliClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CliClient")
            .field("address", &self.address)
            .field("login", &self.login)
            .finish()
    }
}

/// One reply line: its code and the rest.
fn split_reply(line: &str) -> Result<(u32, &str), CliError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (code, text) = line.split_once(' ').unwrap_or((line, ""));
    code.parse()
        .map(|c| (c, text))
        .map_err(|_| CliError::Unavailable(format!("not a CLI reply: {:?}", truncate(line))))
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl CliClient {
    pub fn new(cfg: &CliConfig) -> Result<CliClient, String> {
        let password = match (&cfg.password, &cfg.password_file) {
            (Some(p), None) => p.clone(),
            (None, Some(path)) => path.read().map_err(|e| format!("password_file {e}"))?,
            (Some(_), Some(_)) => return Err("give password or password_file, not both".into()),
            (None, None) => return Err("the CLI needs password or password_file".into()),
        };
        if cfg.login.is_empty() || cfg.login.contains(['\r', '\n', ' ']) {
            return Err("the CLI login must be one word".into());
        }
        if password.expose().contains(['\r', '\n']) {
            return Err("the CLI password cannot contain line breaks".into());
        }
        Ok(CliClient {
            address: cfg.address.clone(),
            login: cfg.login.clone(),
            password: password.expose().to_string(),
            connect_timeout: cfg.connect_timeout,
            op_timeout: cfg.op_timeout,
            session: Mutex::new(None),
        })
    }

    /// Sends one command line (the caller encodes its arguments with
    /// [`Value::encode`], so no line break can get in) and returns the data
    /// of a `201` reply, or `None` for `200`.
    pub async fn command(&self, line: &str) -> Result<Option<Value>, CliError> {
        if line.contains(['\r', '\n']) {
            return Err(CliError::Refused {
                code: 0,
                text: "command contains a line break".into(),
            });
        }
        let mut guard = self.session.lock().await;
        // A session kept from earlier may have been closed by the server
        // meanwhile; such a failure is retried once on a fresh session.
        let reused = guard.is_some();
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(self.open().await?);
            }
            let session = guard.as_mut().expect("opened above");
            match timeout(self.op_timeout, exchange(session, line)).await {
                Ok(Ok(reply)) => return reply,
                Ok(Err(e)) => {
                    *guard = None;
                    if !(reused && attempt == 0) {
                        return Err(e);
                    }
                }
                Err(_) => {
                    *guard = None;
                    return Err(CliError::Unavailable(format!(
                        "no reply within {:?}",
                        self.op_timeout
                    )));
                }
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn open(&self) -> Result<Session, CliError> {
        let connect = async {
            let stream = TcpStream::connect(&self.address)
                .await
                .map_err(|e| CliError::Unavailable(format!("{}: {e}", self.address)))?;
            let (r, w) = stream.into_split();
            let mut s = Session {
                reader: BufReader::new(r),
                writer: w,
            };
            expect(&mut s, None, 200, "greeting").await?;
            expect(&mut s, Some(&format!("USER {}", self.login)), 300, "USER").await?;
            expect(
                &mut s,
                Some(&format!("PASS {}", self.password)),
                200,
                "login",
            )
            .await?;
            expect(&mut s, Some("INLINE"), 200, "INLINE").await?;
            Ok(s)
        };
        match timeout(self.connect_timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(CliError::Unavailable(format!(
                "{}: no login within {:?}",
                self.address, self.connect_timeout
            ))),
        }
    }

    /// Ends the session politely, if one is open.
    pub async fn close(&self) {
        if let Some(mut s) = self.session.lock().await.take() {
            let _ = timeout(self.op_timeout, exchange(&mut s, "QUIT")).await;
        }
    }
}

/// Sends `line` (if any) and reads one reply line with the expected code;
/// login steps only, so the server's text never carries our password.
async fn expect(
    s: &mut Session,
    line: Option<&str>,
    code: u32,
    step: &str,
) -> Result<(), CliError> {
    if let Some(line) = line {
        send(s, line).await?;
    }
    let reply = read_line(s).await?;
    let (got, text) = split_reply(&reply)?;
    if got == code {
        Ok(())
    } else {
        Err(CliError::Unavailable(format!(
            "{step} answered {got} {}",
            truncate(text)
        )))
    }
}

async fn send(s: &mut Session, line: &str) -> Result<(), CliError> {
    let mut bytes = Vec::with_capacity(line.len() + 2);
    bytes.extend_from_slice(line.as_bytes());
    bytes.extend_from_slice(b"\r\n");
    s.writer
        .write_all(&bytes)
        .await
        .map_err(|e| CliError::Unavailable(format!("write: {e}")))
}

async fn read_line(s: &mut Session) -> Result<String, CliError> {
    let mut buf = Vec::new();
    let n = (&mut s.reader)
        .take(MAX_LINE)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| CliError::Unavailable(format!("read: {e}")))?;
    if n == 0 {
        return Err(CliError::Unavailable("connection closed".into()));
    }
    if buf.last() != Some(&b'\n') {
        return Err(CliError::Unavailable("reply line too long".into()));
    }
    String::from_utf8(buf).map_err(|_| CliError::Unavailable("reply is not UTF-8".into()))
}

/// One command and its reply. The outer `Result` is about the session; the
/// inner one is the server's verdict on the command.
async fn exchange(
    s: &mut Session,
    line: &str,
) -> Result<Result<Option<Value>, CliError>, CliError> {
    send(s, line).await?;
    let reply = read_line(s).await?;
    let (code, text) = split_reply(&reply)?;
    Ok(match code {
        200 => Ok(None),
        201 => parse_value(text.as_bytes())
            .map(Some)
            .map_err(|e| CliError::Refused {
                code,
                text: format!("unreadable data: {e}"),
            }),
        _ => Err(CliError::Refused {
            code,
            text: text.to_string(),
        }),
    })
}
