//! A scripted Asterisk Manager Interface server for tests, written to the
//! framing of Asterisk's `main/manager.c`: the `Asterisk Call Manager/<ver>`
//! greeting on connect, `Key: Value` lines ending in CRLF, a blank line
//! ending each message, `Response: Success|Error`, `EventList: start` …
//! `EventList: Complete`, events at any time, MD5 challenge login, and
//! `Response: Goodbye` to Logoff.
//!
//! Like Asterisk, it handles one session's actions in order. Fault modes
//! (slow replies, no reply, a connection dropped in the middle of a message,
//! refused logins) are switched at run time. Dropping the server closes the
//! listener and every session, which to a client looks like a PBX going down;
//! [`FakeAmi::start_on`] brings one back on the same port.

use cgp_runtime::sync;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const GREETING: &str = "Asterisk Call Manager/13.0.0";

/// What the server does with actions other than Challenge and Login (or, for
/// `RefuseLogin`, with logins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every reply waits this long.
    Slow(Duration),
    /// Actions are read and never answered.
    NoReply,
    /// Half of the reply is written, then the connection is closed.
    DropMidMessage,
    /// Every login gets `Response: Error`.
    RefuseLogin,
}

#[derive(Default)]
struct State {
    mailboxes: HashMap<String, (u32, u32)>,
    /// (exten, context) → (hint, status)
    extensions: HashMap<(String, String), (String, i32)>,
    actions: HashMap<String, usize>,
    logins: usize,
}

struct Shared {
    username: String,
    secret: String,
    md5: bool,
    fault: Mutex<Fault>,
    state: Mutex<State>,
    /// Logged-in sessions, for events.
    sessions: Mutex<Vec<Arc<Mutex<TcpStream>>>>,
    /// Every session, to close them all on drop.
    all: Mutex<Vec<TcpStream>>,
    stopping: AtomicBool,
    challenge: AtomicU64,
}

pub struct FakeAmi {
    port: u16,
    shared: Arc<Shared>,
}

impl FakeAmi {
    /// Starts a server on a free loopback port. `md5`: whether it answers
    /// `Action: Challenge` (else clients must log in with a plain secret).
    pub fn start(username: &str, secret: &str, md5: bool) -> FakeAmi {
        FakeAmi::start_on(0, username, secret, md5)
    }

    /// Starts a server on `port` (0: a free one).
    pub fn start_on(port: u16, username: &str, secret: &str, md5: bool) -> FakeAmi {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind fake AMI");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            username: username.into(),
            secret: secret.into(),
            md5,
            fault: Mutex::new(Fault::None),
            state: Mutex::new(State::default()),
            sessions: Mutex::new(Vec::new()),
            all: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            challenge: AtomicU64::new(0x5eed),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if let Ok(c) = conn.try_clone() {
                    sync::lock(&s.all).push(c);
                }
                let s = s.clone();
                std::thread::spawn(move || session(&s, conn));
            }
        });
        FakeAmi { port, shared }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set_fault(&self, fault: Fault) {
        *sync::lock(&self.shared.fault) = fault;
    }

    pub fn set_mailbox(&self, mailbox: &str, new: u32, old: u32) {
        sync::lock(&self.shared.state)
            .mailboxes
            .insert(mailbox.into(), (new, old));
    }

    pub fn set_extension(&self, exten: &str, context: &str, hint: &str, status: i32) {
        sync::lock(&self.shared.state)
            .extensions
            .insert((exten.into(), context.into()), (hint.into(), status));
    }

    /// Changes a mailbox and sends `Event: MessageWaiting` to every session.
    pub fn message_waiting(&self, mailbox: &str, new: u32, old: u32) {
        self.set_mailbox(mailbox, new, old);
        let waiting = if new > 0 { "1" } else { "0" };
        self.broadcast(&[
            ("Event", "MessageWaiting"),
            ("Privilege", "call,all"),
            ("Mailbox", mailbox),
            ("Waiting", waiting),
            ("New", &new.to_string()),
            ("Old", &old.to_string()),
        ]);
    }

    /// Changes an extension and sends `Event: ExtensionStatus`.
    pub fn extension_status(&self, exten: &str, context: &str, hint: &str, status: i32) {
        self.set_extension(exten, context, hint, status);
        self.broadcast(&[
            ("Event", "ExtensionStatus"),
            ("Privilege", "call,all"),
            ("Exten", exten),
            ("Context", context),
            ("Hint", hint),
            ("Status", &status.to_string()),
            ("StatusText", status_text(status)),
        ]);
    }

    /// How many actions of this name were received (Login and Challenge
    /// included).
    pub fn count(&self, action: &str) -> usize {
        sync::lock(&self.shared.state)
            .actions
            .get(action)
            .copied()
            .unwrap_or(0)
    }

    /// All actions received, by name.
    pub fn counts(&self) -> HashMap<String, usize> {
        sync::lock(&self.shared.state).actions.clone()
    }

    /// Successful logins so far.
    pub fn logins(&self) -> usize {
        sync::lock(&self.shared.state).logins
    }

    /// Logged-in sessions right now.
    pub fn sessions(&self) -> usize {
        sync::lock(&self.shared.sessions).len()
    }

    fn broadcast(&self, fields: &[(&str, &str)]) {
        let msg = message(fields);
        sync::lock(&self.shared.sessions)
            .retain(|s| sync::lock(s).write_all(msg.as_bytes()).is_ok());
    }
}

impl Drop for FakeAmi {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for c in sync::lock(&self.shared.all).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        sync::lock(&self.shared.sessions).clear();
        // Wakes the accept loop so that it sees `stopping` and closes the
        // listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn status_text(status: i32) -> &'static str {
    match status {
        0 => "Idle",
        1 => "InUse",
        2 => "Busy",
        4 => "Unavailable",
        8 => "Ringing",
        16 => "OnHold",
        _ => "Unknown",
    }
}

fn message(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out
}

fn md5_hex(text: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads one message: `Key: Value` lines up to a blank line. `None` at end of
/// input.
fn read_message(r: &mut impl BufRead) -> Option<Vec<(String, String)>> {
    let mut fields = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if fields.is_empty() {
                continue;
            }
            return Some(fields);
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

fn session(s: &Shared, conn: TcpStream) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let writer = Arc::new(Mutex::new(conn));
    let send = |text: &str| sync::lock(&writer).write_all(text.as_bytes()).is_ok();
    if !send(&format!("{GREETING}\r\n")) {
        return;
    }
    let mut reader = BufReader::new(read_half);
    let mut challenge: Option<String> = None;
    let mut logged_in = false;
    while let Some(msg) = read_message(&mut reader) {
        if s.stopping.load(Ordering::SeqCst) {
            return;
        }
        let get = |k: &str| {
            msg.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let action = get("Action").unwrap_or("").to_string();
        *sync::lock(&s.state)
            .actions
            .entry(action.clone())
            .or_default() += 1;
        let id = get("ActionID").map(str::to_string);
        let with_id = |mut fields: Vec<(&str, String)>| {
            if let Some(id) = &id {
                fields.insert(1, ("ActionID", id.clone()));
            }
            let borrowed: Vec<(&str, &str)> =
                fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            message(&borrowed)
        };
        let error =
            |text: &str| with_id(vec![("Response", "Error".into()), ("Message", text.into())]);
        let fault = *sync::lock(&s.fault);
        let reply = match action.to_ascii_lowercase().as_str() {
            "challenge" => {
                if s.md5 && get("AuthType").is_some_and(|t| t.eq_ignore_ascii_case("md5")) {
                    let c = s.challenge.fetch_add(7919, Ordering::SeqCst).to_string();
                    challenge = Some(c.clone());
                    with_id(vec![("Response", "Success".into()), ("Challenge", c)])
                } else {
                    error("Must specify AuthType")
                }
            }
            "login" => {
                let user_ok = get("Username") == Some(s.username.as_str());
                let secret_ok = match (get("AuthType"), get("Key"), &challenge) {
                    (Some(t), Some(key), Some(c)) if t.eq_ignore_ascii_case("md5") => {
                        key.eq_ignore_ascii_case(&md5_hex(&format!("{c}{}", s.secret)))
                    }
                    _ => get("Secret") == Some(s.secret.as_str()),
                };
                if user_ok && secret_ok && fault != Fault::RefuseLogin {
                    logged_in = true;
                    sync::lock(&s.state).logins += 1;
                    sync::lock(&s.sessions).push(writer.clone());
                    let mut r = with_id(vec![
                        ("Response", "Success".into()),
                        ("Message", "Authentication accepted".into()),
                    ]);
                    r.push_str(&message(&[
                        ("Event", "FullyBooted"),
                        ("Privilege", "system,all"),
                        ("Status", "Fully Booted"),
                    ]));
                    r
                } else {
                    error("Authentication failed")
                }
            }
            _ if !logged_in => error("Permission denied"),
            "logoff" => {
                send(&with_id(vec![
                    ("Response", "Goodbye".into()),
                    ("Message", "Thanks for all the fish.".into()),
                ]));
                return;
            }
            "ping" => with_id(vec![
                ("Response", "Success".into()),
                ("Ping", "Pong".into()),
                ("Timestamp", "1700000000.000000".into()),
            ]),
            "mailboxcount" | "extensionstate"
                if get(if action.eq_ignore_ascii_case("mailboxcount") {
                    "Mailbox"
                } else {
                    "Exten"
                })
                .is_none_or(str::is_empty) =>
            {
                error("Mailbox or Exten not specified")
            }
            "mailboxcount" => {
                let mailbox = get("Mailbox").unwrap_or("").to_string();
                let (new, old) = sync::lock(&s.state)
                    .mailboxes
                    .get(&mailbox)
                    .copied()
                    .unwrap_or((0, 0));
                with_id(vec![
                    ("Response", "Success".into()),
                    ("Message", "Mailbox Message Count".into()),
                    ("Mailbox", mailbox),
                    ("UrgMessages", "0".into()),
                    ("NewMessages", new.to_string()),
                    ("OldMessages", old.to_string()),
                ])
            }
            "extensionstate" => {
                let exten = get("Exten").unwrap_or("").to_string();
                let context = get("Context").unwrap_or("default").to_string();
                let (hint, status) = sync::lock(&s.state)
                    .extensions
                    .get(&(exten.clone(), context.clone()))
                    .cloned()
                    .unwrap_or_else(|| (String::new(), -1));
                with_id(vec![
                    ("Response", "Success".into()),
                    ("Message", "Extension Status".into()),
                    ("Exten", exten),
                    ("Context", context),
                    ("Hint", hint),
                    ("Status", status.to_string()),
                    ("StatusText", status_text(status).into()),
                ])
            }
            "extensionstatelist" => {
                let mut r = with_id(vec![
                    ("Response", "Success".into()),
                    ("EventList", "start".into()),
                    ("Message", "Extension Statuses will follow".into()),
                ]);
                let exts = sync::lock(&s.state).extensions.clone();
                for ((exten, context), (hint, status)) in &exts {
                    r.push_str(&with_id(vec![
                        ("Event", "ExtensionStatus".into()),
                        ("Exten", exten.clone()),
                        ("Context", context.clone()),
                        ("Hint", hint.clone()),
                        ("Status", status.to_string()),
                        ("StatusText", status_text(*status).into()),
                    ]));
                }
                r.push_str(&with_id(vec![
                    ("Event", "ExtensionStateListComplete".into()),
                    ("EventList", "Complete".into()),
                    ("ListItems", exts.len().to_string()),
                ]));
                r
            }
            _ => error("Invalid/unknown command"),
        };
        let is_login = matches!(action.to_ascii_lowercase().as_str(), "login" | "challenge");
        match fault {
            Fault::Slow(d) if !is_login => std::thread::sleep(d),
            Fault::NoReply if !is_login => continue,
            Fault::DropMidMessage if !is_login => {
                let half = &reply[..reply.len() / 2];
                send(half);
                let _ = sync::lock(&writer).shutdown(Shutdown::Both);
                return;
            }
            _ => {}
        }
        if !send(&reply) {
            return;
        }
    }
}
