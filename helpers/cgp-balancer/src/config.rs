//! The configuration file of `cgp-balancer`: global settings and one table
//! per balancer group, each naming exactly one driver.

use cgp_runtime::config::{HelperConfig, KeyError, LogConfig, RuntimeConfig};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancerConfig {
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    /// Where the desired state of every group is kept (a sled directory).
    /// Without it the state lives in memory only and a restarted helper
    /// knows nothing until the cluster sends its commands again.
    pub state_path: Option<PathBuf>,
    /// How long a leaving server is drained before it is removed.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Period of the background reconcile that repairs a balancer changed
    /// behind the helper's back (an HAProxy reload loses dynamic servers);
    /// `0s` turns it off (drain expiry still runs).
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    pub groups: BTreeMap<String, GroupConfig>,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            runtime: RuntimeConfig::default(),
            log: LogConfig::default(),
            state_path: None,
            drain_grace: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(30),
            groups: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GroupConfig {
    /// VIPs used when START carries no list.
    pub vips: Vec<IpAddr>,
    /// Weight of an active server; without it HAProxy servers keep the
    /// weight HAProxy gives them (backends with a static algorithm accept no
    /// other) and IPVS uses 1.
    #[serde(deserialize_with = "weight")]
    pub weight: Option<u32>,
    /// Program run as `<hook…> up|down <group> <vip>…` to bring VIPs up on
    /// START and down on STOP; it must be idempotent.
    pub vip_hook: Vec<String>,
    pub haproxy: Option<HaproxyConfig>,
    pub ipvs: Option<IpvsConfig>,
    pub exec: Option<ExecConfig>,
}

fn weight<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let w = u32::deserialize(d)?;
    if (1..=256).contains(&w) {
        Ok(Some(w))
    } else {
        Err(serde::de::Error::custom("weight must be 1 to 256"))
    }
}

/// How the HAProxy driver adds servers.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HaproxyMode {
    /// Template slots when the backend has some, else dynamic servers.
    #[default]
    Auto,
    /// `add server` / `del server` (HAProxy 2.4 and later).
    Dynamic,
    /// Slots of a `server-template <prefix> 1-N` line, filled with
    /// `set server … addr`.
    Template,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HaproxyConfig {
    /// The admin socket: a UNIX socket path, `unix:<path>` or `tcp:<host>:<port>`.
    pub socket: AdminSocket,
    /// The backend holding the group's servers.
    #[serde(deserialize_with = "haproxy_word")]
    pub backend: String,
    /// Servers whose name starts with this are the helper's; others in the
    /// backend are left alone.
    #[serde(default = "default_prefix", deserialize_with = "haproxy_word")]
    pub prefix: String,
    /// Port used when the cluster gives an address without one.
    pub port: u16,
    #[serde(default)]
    pub mode: HaproxyMode,
    /// Extra keywords for `add server` (for example `["check", "inter", "2s"]`).
    #[serde(default, deserialize_with = "haproxy_words")]
    pub server_options: Vec<String>,
    /// Limit for one admin-socket exchange.
    #[serde(default = "default_op_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_prefix() -> String {
    "cgp".into()
}

fn default_op_timeout() -> Duration {
    Duration::from_secs(2)
}

/// A word that can stand in an HAProxy runtime command without breaking it.
fn check_word(w: &str) -> Result<(), &'static str> {
    let ok = !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b'/' | b'\\' | b'#'));
    ok.then_some(())
        .ok_or("must be one word without ; / \\ or #")
}

fn haproxy_word<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let w = String::deserialize(d)?;
    check_word(&w).map_err(serde::de::Error::custom)?;
    Ok(w)
}

fn haproxy_words<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let words = Vec::<String>::deserialize(d)?;
    for w in &words {
        // Option values may hold a slash (`ca-file /etc/…`), never a separator.
        let ok = !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_graphic() && b != b';' && b != b'#');
        if !ok {
            return Err(serde::de::Error::custom(
                "server_options: each item must be one word without ; or #",
            ));
        }
    }
    Ok(words)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminSocket {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for AdminSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminSocket::Unix(p) => write!(f, "unix:{}", p.display()),
            AdminSocket::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl<'de> Deserialize<'de> for AdminSocket {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Some(addr) = s.strip_prefix("tcp:") {
            match addr.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(AdminSocket::Tcp(addr.to_string()))
                }
                _ => Err(serde::de::Error::custom(
                    "a TCP admin socket is tcp:<host>:<port>",
                )),
            }
        } else {
            let path = s.strip_prefix("unix:").unwrap_or(&s);
            if path.starts_with('/') {
                Ok(AdminSocket::Unix(PathBuf::from(path)))
            } else {
                Err(serde::de::Error::custom(
                    "the admin socket must be an absolute path, unix:<path> or tcp:<host>:<port>",
                ))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IpvsConfig {
    /// The `ipvsadm` program.
    #[serde(default = "default_ipvsadm")]
    pub ipvsadm: PathBuf,
    /// Print the commands as `*` lines instead of running them (the
    /// balancer is then simulated in memory).
    #[serde(default)]
    pub dry_run: bool,
    /// One virtual service per VIP and port.
    pub ports: Vec<u16>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default = "default_scheduler", deserialize_with = "scheduler")]
    pub scheduler: String,
    /// Persistence timeout in seconds (`-p`), when clients must stick.
    #[serde(default)]
    pub persistent: Option<u32>,
    /// Limit for one `ipvsadm` run.
    #[serde(default = "default_op_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_ipvsadm() -> PathBuf {
    PathBuf::from("ipvsadm")
}

fn default_scheduler() -> String {
    "wlc".into()
}

fn scheduler<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    const KNOWN: &[&str] = &[
        "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh",
        "twos",
    ];
    let s = String::deserialize(d)?;
    if KNOWN.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "scheduler must be one of {}",
            KNOWN.join(", ")
        )))
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Program and arguments; it gets the desired state as JSON on stdin
    /// and exits 0 once its balancer matches.
    pub command: Vec<String>,
    #[serde(default = "default_exec_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_exec_timeout() -> Duration {
    Duration::from_secs(10)
}

impl HelperConfig for BalancerConfig {
    fn runtime(&self) -> &RuntimeConfig {
        &self.runtime
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn validate(&self) -> Result<(), KeyError> {
        for (name, g) in &self.groups {
            let key = |k: &str| format!("groups.{name}.{k}");
            let drivers = [g.haproxy.is_some(), g.ipvs.is_some(), g.exec.is_some()];
            if drivers.iter().filter(|d| **d).count() != 1 {
                return Err(KeyError::new(
                    format!("groups.{name}"),
                    "needs exactly one driver table: haproxy, ipvs or exec",
                ));
            }
            if let Some(h) = &g.haproxy {
                if h.port == 0 {
                    return Err(KeyError::new(key("haproxy.port"), "must be 1 to 65535"));
                }
            }
            if let Some(i) = &g.ipvs {
                if i.ports.is_empty() || i.ports.contains(&0) {
                    return Err(KeyError::new(
                        key("ipvs.ports"),
                        "must list at least one port, each 1 to 65535",
                    ));
                }
            }
            if let Some(e) = &g.exec {
                if !e.command.first().is_some_and(|p| p.starts_with('/')) {
                    return Err(KeyError::new(
                        key("exec.command"),
                        "must start with the program's absolute path",
                    ));
                }
            }
            if !g.vip_hook.is_empty() && !g.vip_hook[0].starts_with('/') {
                return Err(KeyError::new(
                    key("vip_hook"),
                    "must start with the program's absolute path",
                ));
            }
        }
        self.check_overlaps()
    }
}

impl BalancerConfig {
    /// Two groups must not own the same servers: the same HAProxy backend
    /// and prefix, or the same IPVS service.
    fn check_overlaps(&self) -> Result<(), KeyError> {
        let mut owners: BTreeMap<String, &str> = BTreeMap::new();
        for (name, g) in &self.groups {
            let mut owned = Vec::new();
            if let Some(h) = &g.haproxy {
                owned.push(format!(
                    "HAProxy backend {} at {} with prefix {}",
                    h.backend, h.socket, h.prefix
                ));
            }
            if let Some(i) = &g.ipvs {
                for vip in &g.vips {
                    for port in &i.ports {
                        owned.push(format!("IPVS service {:?} {vip}:{port}", i.protocol));
                    }
                }
            }
            for what in owned {
                if let Some(other) = owners.insert(what.clone(), name) {
                    return Err(KeyError::new(
                        format!("groups.{name}"),
                        format!("{what} already belongs to group {other}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BalancerConfig, String> {
        let c: BalancerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()
            .map_err(|e| format!("{}: {}", e.key, e.message))?;
        Ok(c)
    }

    #[test]
    fn the_packaged_example_is_valid() {
        let text = include_str!("../../../packaging/examples/balancer.toml");
        let c = parse(text).unwrap();
        assert!(c.groups.values().any(|g| g.haproxy.is_some()));
        assert!(c.groups.values().any(|g| g.ipvs.is_some()));
    }

    #[test]
    fn one_driver_per_group() {
        let e = parse("[groups.a]\nvips = [\"192.0.2.1\"]\n").unwrap_err();
        assert_eq!(
            e,
            "groups.a: needs exactly one driver table: haproxy, ipvs or exec"
        );
        let e =
            parse("[groups.a.ipvs]\nports = [25]\n[groups.a.exec]\ncommand = [\"/bin/true\"]\n")
                .unwrap_err();
        assert!(e.starts_with("groups.a:"), "{e}");
    }

    #[test]
    fn single_values_are_checked_while_parsing() {
        for (bad, why) in [
            (
                "[groups.a.haproxy]\nsocket = \"rel/path\"\nbackend = \"b\"\nport = 25\n",
                "absolute path",
            ),
            (
                "[groups.a.haproxy]\nsocket = \"tcp:h\"\nbackend = \"b\"\nport = 25\n",
                "tcp:<host>:<port>",
            ),
            (
                "[groups.a.haproxy]\nsocket = \"/s\"\nbackend = \"b; del\"\nport = 25\n",
                "one word",
            ),
            (
                "[groups.a.ipvs]\nports = [25]\nscheduler = \"best\"\n",
                "scheduler must be",
            ),
            (
                "[groups.a]\nweight = 0\n[groups.a.ipvs]\nports = [25]\n",
                "weight must be",
            ),
            (
                "[groups.a.ipvs]\nports = [25]\nbogus = 1\n",
                "unknown field",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("line"), "{bad}: {e}");
        }
        let e = parse("[groups.a.ipvs]\nports = []\n").unwrap_err();
        assert_eq!(
            e,
            "groups.a.ipvs.ports: must list at least one port, each 1 to 65535"
        );
        let e = parse("[groups.a.exec]\ncommand = [\"x\"]\n").unwrap_err();
        assert!(e.starts_with("groups.a.exec.command"), "{e}");
    }

    #[test]
    fn groups_do_not_share_servers() {
        let h = "socket = \"/s\"\nbackend = \"b\"\nport = 25\n";
        let e = parse(&format!("[groups.a.haproxy]\n{h}[groups.b.haproxy]\n{h}")).unwrap_err();
        assert!(e.starts_with("groups.b: HAProxy backend b"), "{e}");
        assert!(e.ends_with("already belongs to group a"), "{e}");
        parse(&format!(
            "[groups.a.haproxy]\n{h}[groups.b.haproxy]\n{h}prefix = \"other\"\n"
        ))
        .unwrap();
        let i = "[groups.X]\nvips = [\"192.0.2.1\"]\n[groups.X.ipvs]\nports = [25, 110]\n";
        let e = parse(&format!("{}{}", i.replace('X', "a"), i.replace('X', "b"))).unwrap_err();
        assert!(
            e.contains("IPVS service Tcp 192.0.2.1:25 already belongs to group a"),
            "{e}"
        );
    }

    #[test]
    fn socket_forms() {
        let c = parse(
            "[groups.a.haproxy]\nsocket = \"tcp:127.0.0.1:9999\"\nbackend = \"b\"\nport = 25\n",
        )
        .unwrap();
        assert_eq!(
            c.groups["a"].haproxy.as_ref().unwrap().socket,
            AdminSocket::Tcp("127.0.0.1:9999".into())
        );
        let c = parse(
            "[groups.a.haproxy]\nsocket = \"unix:/run/h.sock\"\nbackend = \"b\"\nport = 25\n",
        )
        .unwrap();
        assert_eq!(
            c.groups["a"].haproxy.as_ref().unwrap().socket,
            AdminSocket::Unix("/run/h.sock".into())
        );
    }
}
