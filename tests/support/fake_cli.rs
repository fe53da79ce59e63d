//! A scripted CommuniGate Pro CLI (PWD) server for tests: the `200`
//! greeting, `USER`/`PASS` login, `INLINE`, and the account commands the
//! helpers send (`CREATEACCOUNT`, `UPDATEACCOUNTSETTINGS`,
//! `UPDATEACCOUNTPREFS`, `SETACCOUNTALIASES`, `CREATEMAILBOX`,
//! `SETMAILBOXCLASS`, `SETMAILBOXACL`, `GETACCOUNTSETTINGS`,
//! `GETACCOUNTALIASES`, `QUIT`), keeping accounts, their settings,
//! preferences, aliases and mailboxes (class, ACL) in memory and recording
//! every command line after login. Any command can be made to fail once on
//! demand ([`FakeCli::fail_once`]).
//!
//! Usage: `let cli = FakeCli::start("postmaster", "clipw");` then point the
//! helper at `cli.address()`; inspect `cli.commands()` and `cli.account(name)`.

use cgp_runtime::sync;
use cgp_wire::data::{Value, parse_values};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An account created through the fake server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub settings: Value,
    /// WebUser preferences (`UPDATEACCOUNTPREFS`).
    pub prefs: Value,
    pub aliases: Vec<String>,
    /// Mailboxes by name.
    pub mailboxes: BTreeMap<String, Mailbox>,
}

impl Account {
    fn new(settings: Value) -> Account {
        Account {
            settings,
            prefs: Value::Dict(Vec::new()),
            aliases: Vec::new(),
            mailboxes: BTreeMap::new(),
        }
    }
}

/// A mailbox of an account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mailbox {
    pub class: Option<String>,
    /// Identifier → rights.
    pub acl: BTreeMap<String, String>,
}

/// A failure asked for: the `nth` next command with this verb fails once.
struct Failure {
    verb: String,
    nth: usize,
    reply: String,
}

#[derive(Default)]
struct State {
    accounts: BTreeMap<String, Account>,
    commands: Vec<String>,
    logins: usize,
    failures: Vec<Failure>,
}

pub struct FakeCli {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl FakeCli {
    /// Listens on a free loopback port and accepts `login`/`password`.
    pub fn start(login: &str, password: &str) -> FakeCli {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake CLI");
        let addr = listener.local_addr().expect("fake CLI address");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let state = Arc::new(Mutex::new(State::default()));
        let silent = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (login, password) = (login.to_string(), password.to_string());
        {
            let (state, silent, stop) = (state.clone(), silent.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (state, silent) = (state.clone(), silent.clone());
                            let (login, password) = (login.clone(), password.clone());
                            std::thread::spawn(move || {
                                let _ = serve(stream, &state, &silent, &login, &password);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        FakeCli {
            addr,
            state,
            silent,
            stop,
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Adds an account as if it existed before the test.
    pub fn add_account(&self, name: &str) {
        sync::lock(&self.state).accounts.insert(
            name.to_ascii_lowercase(),
            Account::new(Value::Dict(Vec::new())),
        );
    }

    /// Every account, by name.
    pub fn accounts(&self) -> BTreeMap<String, Account> {
        sync::lock(&self.state).accounts.clone()
    }

    /// The `nth` (1-based) command with this verb from now on is answered
    /// with `reply` (e.g. `500 disk full`) and changes nothing; later ones
    /// run as usual.
    pub fn fail_once(&self, verb: &str, nth: usize, reply: &str) {
        assert!(nth >= 1, "nth counts from 1");
        sync::lock(&self.state).failures.push(Failure {
            verb: verb.to_ascii_uppercase(),
            nth,
            reply: reply.to_string(),
        });
    }

    pub fn account(&self, name: &str) -> Option<Account> {
        sync::lock(&self.state)
            .accounts
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    /// Every command line received after a successful login.
    pub fn commands(&self) -> Vec<String> {
        sync::lock(&self.state).commands.clone()
    }

    /// How many sessions logged in.
    pub fn logins(&self) -> usize {
        sync::lock(&self.state).logins
    }

    /// While set, the server reads commands but never answers (a hung CGP).
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::Relaxed);
    }
}

impl Drop for FakeCli {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    stream: TcpStream,
    state: &Mutex<State>,
    silent: &AtomicBool,
    login: &str,
    password: &str,
) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reply = |line: &str| out.write_all(format!("{line}\r\n").as_bytes());
    reply("200 fake.example.test CommuniGate Pro PWD Server 6.3 ready <1.1@fake.example.test>")?;
    let mut user = None;
    let mut logged_in = false;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let line = line.trim_end_matches('\r');
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let word = word.to_ascii_uppercase();
        if !logged_in {
            match word.as_str() {
                "USER" => {
                    user = Some(rest.to_string());
                    reply("300 please send the password")?;
                }
                "PASS" if user.as_deref() == Some(login) && rest == password => {
                    logged_in = true;
                    sync::lock(state).logins += 1;
                    reply("200 login OK, proceed")?;
                }
                "PASS" => reply("515 incorrect password or account name")?,
                "QUIT" => return reply("200 bye"),
                _ => reply("500 login first")?,
            }
            continue;
        }
        sync::lock(state).commands.push(line.to_string());
        if silent.load(Ordering::Relaxed) {
            continue;
        }
        let answer = command(state, &word, rest);
        reply(&answer)?;
        if word == "QUIT" {
            return Ok(());
        }
    }
    Ok(())
}

fn command(state: &Mutex<State>, word: &str, rest: &str) -> String {
    let args = match parse_values(rest.as_bytes()) {
        Ok(a) => a,
        Err(e) => return format!("501 syntax error: {e}"),
    };
    let name = args
        .first()
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    let mut st = sync::lock(state);
    let mut failed = None;
    st.failures.retain_mut(|f| {
        if f.verb != word {
            return true;
        }
        f.nth -= 1;
        if f.nth == 0 && failed.is_none() {
            failed = Some(f.reply.clone());
            return false;
        }
        true
    });
    if let Some(reply) = failed {
        return reply;
    }
    // `MAILBOX name` after the account name, for the mailbox commands.
    let mailbox = match (args.get(1).and_then(Value::as_str), args.get(2)) {
        (Some(k), Some(v)) if k.eq_ignore_ascii_case("MAILBOX") => v.as_str().map(str::to_string),
        _ => None,
    };
    // `CLASS c` after the mailbox.
    let class = match (args.get(3).and_then(Value::as_str), args.get(4)) {
        (Some(k), Some(v)) if k.eq_ignore_ascii_case("CLASS") => v.as_str().map(str::to_string),
        _ => None,
    };
    match (word, name) {
        ("INLINE", _) => "200 OK".into(),
        ("QUIT", _) => "200 bye".into(),
        ("CREATEACCOUNT", Some(name)) => {
            if !name.contains('@') {
                return "501 account name needs a domain".into();
            }
            if st.accounts.contains_key(&name) {
                return "500 account with this name already exists".into();
            }
            let settings = args.get(1).cloned().unwrap_or(Value::Dict(Vec::new()));
            if !matches!(settings, Value::Dict(_)) {
                return "501 settings must be a dictionary".into();
            }
            st.accounts.insert(name, Account::new(settings));
            "200 OK".into()
        }
        ("UPDATEACCOUNTSETTINGS" | "UPDATEACCOUNTPREFS", Some(name)) => {
            let Some(Value::Dict(new)) = args.get(1) else {
                return "501 settings must be a dictionary".into();
            };
            let Some(a) = st.accounts.get_mut(&name) else {
                return "513 unknown account".into();
            };
            let target = if word == "UPDATEACCOUNTPREFS" {
                &mut a.prefs
            } else {
                &mut a.settings
            };
            let Value::Dict(old) = target else {
                unreachable!("settings and prefs are dictionaries")
            };
            for (k, v) in new {
                match old.iter_mut().find(|(o, _)| o.eq_ignore_ascii_case(k)) {
                    Some((_, o)) => *o = v.clone(),
                    None => old.push((k.clone(), v.clone())),
                }
            }
            "200 OK".into()
        }
        ("CREATEMAILBOX", Some(name)) => {
            let Some(mailbox) = mailbox else {
                return "501 expected: CREATEMAILBOX account MAILBOX name [CLASS class]".into();
            };
            let Some(a) = st.accounts.get_mut(&name) else {
                return "513 unknown account".into();
            };
            if a.mailboxes.contains_key(&mailbox) {
                return "500 mailbox with this name already exists".into();
            }
            a.mailboxes.insert(
                mailbox,
                Mailbox {
                    class,
                    ..Mailbox::default()
                },
            );
            "200 OK".into()
        }
        ("SETMAILBOXCLASS", Some(name)) => {
            let (Some(mailbox), Some(class)) = (mailbox, class) else {
                return "501 expected: SETMAILBOXCLASS account MAILBOX name CLASS class".into();
            };
            match st
                .accounts
                .get_mut(&name)
                .and_then(|a| a.mailboxes.get_mut(&mailbox))
            {
                Some(m) => {
                    m.class = Some(class);
                    "200 OK".into()
                }
                None => "520 mailbox does not exist".into(),
            }
        }
        ("SETMAILBOXACL", Some(name)) => {
            let (Some(mailbox), Some(Value::Dict(acl))) = (mailbox, args.get(3)) else {
                return "501 expected: SETMAILBOXACL account MAILBOX name {id=rights;}".into();
            };
            let Some(m) = st
                .accounts
                .get_mut(&name)
                .and_then(|a| a.mailboxes.get_mut(&mailbox))
            else {
                return "520 mailbox does not exist".into();
            };
            for (who, rights) in acl {
                let who = String::from_utf8_lossy(who).into_owned();
                let rights = rights.as_str().unwrap_or_default();
                let entry = m.acl.entry(who.clone()).or_default();
                // `+r` adds, `-r` removes, plain text replaces.
                if let Some(add) = rights.strip_prefix('+') {
                    entry.extend(
                        add.chars()
                            .filter(|c| !entry.contains(*c))
                            .collect::<Vec<_>>(),
                    );
                } else if let Some(remove) = rights.strip_prefix('-') {
                    entry.retain(|c| !remove.contains(c));
                } else {
                    *entry = rights.to_string();
                }
                if entry.is_empty() {
                    m.acl.remove(&who);
                }
            }
            "200 OK".into()
        }
        ("SETACCOUNTALIASES", Some(name)) => {
            let Some(Value::Array(items)) = args.get(1) else {
                return "501 aliases must be an array".into();
            };
            let aliases: Vec<String> = items
                .iter()
                .filter_map(|v| v.as_str().map(|s| s.to_ascii_lowercase()))
                .collect();
            // An alias names one object: not another account, nor another
            // account's alias.
            let domain = name.split_once('@').map_or("", |(_, d)| d);
            let taken = aliases.iter().find(|alias| {
                let full = format!("{alias}@{domain}");
                st.accounts.iter().any(|(n, a)| {
                    *n != name
                        && (*n == full
                            || (n.ends_with(&format!("@{domain}")) && a.aliases.contains(alias)))
                })
            });
            if let Some(alias) = taken {
                return format!("500 {alias}: account with this name already exists");
            }
            match st.accounts.get_mut(&name) {
                Some(a) => {
                    a.aliases = aliases;
                    "200 OK".into()
                }
                None => "513 unknown account".into(),
            }
        }
        ("GETACCOUNTSETTINGS", Some(name)) => match st.accounts.get(&name) {
            Some(a) => format!("201 {}", String::from_utf8_lossy(&a.settings.encode())),
            None => "513 unknown account".into(),
        },
        ("GETACCOUNTALIASES", Some(name)) => match st.accounts.get(&name) {
            Some(a) => {
                let arr = Value::Array(a.aliases.iter().map(Value::str).collect());
                format!("201 {}", String::from_utf8_lossy(&arr.encode()))
            }
            None => "513 unknown account".into(),
        },
        _ => "500 unknown command".into(),
    }
}
