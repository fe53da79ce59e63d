//! The wire grammar of the balancer helper: parsing of requests and
//! formatting of replies, in this one module.
//!
//! RECONSTRUCTED (docs/wire.md, cgp-balancer): no public source gives CGP's
//! command layout for the Load Balancer helper, so this module is the
//! project's reconstruction and the only place to change once a capture from
//! a real server is available:
//!
//! ```text
//! <seq> START <group> [<vip-list>]      become the balancer of <group>
//! <seq> SERVERS <group> <address-list>  full set of active servers
//! <seq> ADD <group> <address>           one server became active
//! <seq> REMOVE <group> <address>        one server went away
//! <seq> STOP <group>                    give up the balancer duty
//! ```
//!
//! Lists are CGP arrays `(a, b, c)` of strings; an address is `10.0.0.5`,
//! `[10.0.0.5]`, `[10.0.0.5]:25`, `10.0.0.5:25`, `[2001:db8::5]:25` or
//! `2001:db8::5`. A request in any other shape (another command, fewer or
//! more arguments, other types) is not guessed at: it is refused with an
//! error, the state is left as it is, and its shape is logged (see
//! [`Refused::UnknownShape`]).

use cgp_wire::Reply;
use cgp_wire::data::{Value, parse_values};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A cluster member's address, with the port when the cluster gave one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl Endpoint {
    pub fn with_port(self, port: Option<u16>) -> Endpoint {
        Endpoint { port, ..self }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "[{}]:{p}", self.ip),
            None => write!(f, "[{}]", self.ip),
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Endpoint, String> {
        let bad = || format!("bad address {s:?}");
        let (host, port) = if let Some(inner) = s.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else if s.matches(':').count() == 1 {
            // One colon: IPv4 with a port. More: a bare IPv6 address.
            let (host, port) = s.split_once(':').ok_or_else(bad)?;
            (host, Some(port))
        } else {
            (s, None)
        };
        let ip = host.parse::<IpAddr>().map_err(|_| bad())?;
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
            None => None,
        };
        Ok(Endpoint { ip, port })
    }
}

impl TryFrom<String> for Endpoint {
    type Error = String;
    fn try_from(s: String) -> Result<Endpoint, String> {
        s.parse()
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.to_string()
    }
}

/// One balancer command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `vips` is `None` when the cluster sent no list (the group's configured
    /// VIPs apply).
    Start {
        vips: Option<Vec<IpAddr>>,
    },
    Servers(Vec<Endpoint>),
    Add(Endpoint),
    Remove(Endpoint),
    Stop,
}

impl Command {
    /// The same command with every address passed through `f`.
    pub fn map_endpoints(self, f: impl Fn(Endpoint) -> Endpoint) -> Command {
        match self {
            Command::Servers(list) => Command::Servers(list.into_iter().map(f).collect()),
            Command::Add(ep) => Command::Add(f(ep)),
            Command::Remove(ep) => Command::Remove(f(ep)),
            other => other,
        }
    }
}

/// A request understood.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub group: String,
    pub command: Command,
}

/// Why a request is refused. Either way the reply is an error and no state
/// changes.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not in the reconstructed grammar; the reason for the reply. The
    /// helper logs the request's shape once.
    UnknownShape(String),
    /// In the grammar, with a value it cannot take.
    Bad(String),
}

impl Refused {
    pub fn reason(&self) -> &str {
        match self {
            Refused::UnknownShape(r) | Refused::Bad(r) => r,
        }
    }
}

/// Parses a balancer command.
pub fn parse(command: &str, rest: &[u8]) -> Result<Parsed, Refused> {
    use Refused::{Bad, UnknownShape};
    let (min_args, max_args) = match command {
        "START" => (1, 2),
        "STOP" => (1, 1),
        "SERVERS" | "ADD" | "REMOVE" => (2, 2),
        _ => return Err(UnknownShape("unsupported command".into())),
    };
    let args = parse_values(rest).map_err(|e| UnknownShape(format!("bad arguments: {e}")))?;
    if args.len() < min_args || args.len() > max_args {
        return Err(UnknownShape(format!("{command} takes {}", usage(command))));
    }
    let group = match &args[0] {
        Value::Str(g) if g.is_empty() => {
            return Err(Bad("the group must be a non-empty string".into()));
        }
        Value::Str(_) => args[0]
            .as_str()
            .ok_or_else(|| Bad("the group is not UTF-8".into()))?
            .to_string(),
        _ => return Err(UnknownShape("the group must be a string".into())),
    };
    let command = match command {
        "START" => Command::Start {
            vips: match args.get(1) {
                Some(list) => Some(list_of(list, "VIP", |s| s.parse::<IpAddr>().ok())?),
                None => None,
            },
        },
        "STOP" => Command::Stop,
        "SERVERS" => Command::Servers(list_of(&args[1], "address", |s| s.parse().ok())?),
        "ADD" => Command::Add(address(&args[1])?),
        _ => Command::Remove(address(&args[1])?),
    };
    Ok(Parsed { group, command })
}

/// The arguments a command takes.
fn usage(command: &str) -> &'static str {
    match command {
        "START" => "<group> [<vip-list>]",
        "STOP" => "<group>",
        "SERVERS" => "<group> <address-list>",
        _ => "<group> <address>",
    }
}

fn address(v: &Value) -> Result<Endpoint, Refused> {
    match v {
        Value::Str(_) => v
            .as_str()
            .ok_or_else(|| Refused::Bad("the address is not UTF-8".into()))?
            .parse()
            .map_err(Refused::Bad),
        _ => Err(Refused::UnknownShape(
            "the address must be a string, not a list".into(),
        )),
    }
}

/// A CGP array whose items all parse; duplicates are kept out (a list is a
/// set of members).
fn list_of<T: PartialEq>(
    v: &Value,
    what: &str,
    item: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, Refused> {
    let Value::Array(items) = v else {
        return Err(Refused::UnknownShape(format!(
            "the {what} list must be a list: (a, b, c)"
        )));
    };
    let mut out = Vec::with_capacity(items.len());
    for i in items {
        let bad = || {
            format!(
                "bad {what} in list: {}",
                String::from_utf8_lossy(&i.encode())
            )
        };
        // A list inside the list is another shape; a string that is no
        // address is a bad value.
        let parsed = match i {
            Value::Str(_) => i
                .as_str()
                .and_then(&item)
                .ok_or_else(|| Refused::Bad(bad()))?,
            _ => return Err(Refused::UnknownShape(bad())),
        };
        if !out.contains(&parsed) {
            out.push(parsed);
        }
    }
    Ok(out)
}

/// The reply once the balancer matches the desired state.
pub fn applied() -> Reply {
    Reply::ok()
}

/// The reply when it does not (or the request is wrong).
pub fn refused(reason: &str) -> Reply {
    Reply::error(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        s.parse().unwrap()
    }

    #[test]
    fn address_forms() {
        assert_eq!(ep("10.0.0.5"), ep("[10.0.0.5]"));
        assert_eq!(ep("10.0.0.5:25"), ep("[10.0.0.5]:25"));
        assert_eq!(ep("[10.0.0.5]:25").port, Some(25));
        assert_eq!(ep("2001:db8::5").port, None);
        assert_eq!(ep("[2001:db8::5]:110").port, Some(110));
        assert_eq!(ep("[2001:db8::5]:110").to_string(), "[2001:db8::5]:110");
        for bad in [
            "",
            "x",
            "10.0.0.5:",
            "10.0.0.5:0",
            "[10.0.0.5",
            "[10.0.0.5]x",
            "10.0.0.5:99999",
            "300.0.0.1",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn commands() {
        let p = |c: &str, r: &str| parse(c, r.as_bytes());
        assert_eq!(
            p("START", "mail (192.0.2.10, \"192.0.2.11\")")
                .unwrap()
                .command,
            Command::Start {
                vips: Some(vec![
                    "192.0.2.10".parse().unwrap(),
                    "192.0.2.11".parse().unwrap()
                ])
            }
        );
        assert_eq!(
            p("START", "mail").unwrap().command,
            Command::Start { vips: None }
        );
        let s = p("SERVERS", "mail ([10.0.0.5]:25, 10.0.0.6, 10.0.0.6)").unwrap();
        assert_eq!(
            s.command,
            Command::Servers(vec![ep("10.0.0.5:25"), ep("10.0.0.6")])
        );
        assert_eq!(
            p("SERVERS", "mail ()").unwrap().command,
            Command::Servers(vec![])
        );
        assert_eq!(
            p("ADD", "mail [10.0.0.7]").unwrap().command,
            Command::Add(ep("10.0.0.7"))
        );
        assert_eq!(p("REMOVE", "\"mail\" 10.0.0.7").unwrap().group, "mail");
        assert_eq!(p("STOP", "mail").unwrap().command, Command::Stop);
    }

    #[test]
    fn other_shapes_are_not_guessed_at() {
        let e = |c: &str, r: &str| match parse(c, r.as_bytes()) {
            Err(Refused::UnknownShape(reason)) => reason,
            other => panic!("{c} {r}: {other:?}"),
        };
        assert_eq!(e("VRFY", "x"), "unsupported command");
        assert_eq!(e("SERVERS", "mail"), "SERVERS takes <group> <address-list>");
        assert_eq!(
            e("SERVERS", "mail () trailing"),
            "SERVERS takes <group> <address-list>"
        );
        assert_eq!(e("STOP", "mail extra"), "STOP takes <group>");
        assert_eq!(e("STOP", ""), "STOP takes <group>");
        assert_eq!(
            e("SERVERS", "mail 10.0.0.5"),
            "the address list must be a list: (a, b, c)"
        );
        assert_eq!(
            e("SERVERS", "mail ((10.0.0.5))"),
            "bad address in list: (\"10.0.0.5\")"
        );
        assert!(e("SERVERS", "mail (10.0.0.5").starts_with("bad arguments: "));
        assert_eq!(
            e("ADD", "mail (10.0.0.5)"),
            "the address must be a string, not a list"
        );
        assert_eq!(e("STOP", "(mail)"), "the group must be a string");
    }

    #[test]
    fn bad_values() {
        let e = |c: &str, r: &str| match parse(c, r.as_bytes()) {
            Err(Refused::Bad(reason)) => reason,
            other => panic!("{c} {r}: {other:?}"),
        };
        assert_eq!(
            e("SERVERS", "mail (10.0.0.5, nope)"),
            "bad address in list: nope"
        );
        assert_eq!(e("START", "\"\""), "the group must be a non-empty string");
        assert_eq!(e("START", "mail (1.2.3)"), "bad VIP in list: \"1.2.3\"");
        assert_eq!(e("ADD", "mail 10.0.0.5:0"), "bad address \"10.0.0.5:0\"");
    }
}
