//! The `haproxy` driver: the HAProxy runtime API over its admin socket.
//!
//! The helper owns the servers of one backend whose names start with the
//! configured prefix. Two ways to have servers come and go:
//! - dynamic servers (`add server` / `del server`, HAProxy 2.4 and later),
//!   named `<prefix>_<address>_<port>`;
//! - the slots of a `server-template <prefix> 1-N` line, for backends whose
//!   balancing algorithm does not allow dynamic servers or older HAProxy: a
//!   slot in maintenance is free, a used slot gets `set server … addr`.
//!
//! A leaving server is set to `drain` (existing connections finish, no new
//! ones), then to `maint` and deleted (or freed) when its grace period ends.
//! Each change is one request line to HAProxy (commands joined with `;`).

use super::{Applied, Change, Mode, Note, Slot, diff, op_limit};
use crate::config::{AdminSocket, HaproxyConfig, HaproxyMode};
use crate::state::Target;
use crate::wire::Endpoint;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// `srv_admin_state` bits (HAProxy `SRV_ADMF_*`). CMAINT only remembers
/// that the configuration said `disabled`; it stays set after `state ready`.
const ADMF_MAINT: u32 = 0x01 | 0x02 | 0x20 | 0x40;
const ADMF_DRAIN: u32 = 0x08 | 0x10;

/// One line of `show servers state <backend>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub addr: Option<IpAddr>,
    pub port: u16,
    pub admin: u32,
    pub weight: u32,
}

impl Row {
    pub fn mode(&self) -> Mode {
        if self.admin & ADMF_MAINT != 0 {
            Mode::Maint
        } else if self.admin & ADMF_DRAIN != 0 {
            Mode::Drain
        } else {
            Mode::Ready
        }
    }

    fn endpoint(&self) -> Option<Endpoint> {
        self.addr.map(|ip| Endpoint {
            ip,
            port: Some(self.port),
        })
    }
}

/// Parses `show servers state` (format version 1), by column name so that
/// columns added by later versions do not matter.
pub fn parse_state(text: &str) -> Result<Vec<Row>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    match lines.next().map(str::trim) {
        Some("1") => {}
        Some(other) => {
            return Err(format!(
                "HAProxy answered: {}",
                other.chars().take(200).collect::<String>()
            ));
        }
        None => return Err("HAProxy sent an empty server state".into()),
    }
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix('#'))
        .ok_or("server state without its header line")?
        .split_whitespace()
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or(format!("server state lacks column {name}"))
    };
    let (name, addr, port, admin, weight) = (
        col("srv_name")?,
        col("srv_addr")?,
        col("srv_port")?,
        col("srv_admin_state")?,
        col("srv_uweight")?,
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let get = |i: usize| {
                f.get(i)
                    .copied()
                    .ok_or(format!("short server state line: {l}"))
            };
            let num = |i: usize| {
                get(i)?
                    .parse::<u32>()
                    .map_err(|_| format!("bad number in server state line: {l}"))
            };
            Ok(Row {
                name: get(name)?.to_string(),
                addr: get(addr)?.parse().ok(),
                port: u16::try_from(num(port)?).map_err(|_| format!("bad port in: {l}"))?,
                admin: num(admin)?,
                weight: num(weight)?,
            })
        })
        .collect()
}

/// The group's servers in HAProxy, seen as balancer entries.
#[derive(Debug, Default)]
struct View {
    template: bool,
    actual: BTreeMap<Endpoint, Slot>,
    names: BTreeMap<Endpoint, String>,
    /// Servers to take out whatever the target: a second server for the
    /// same address, or one without a usable address.
    extra: Vec<String>,
    /// Template slots in maintenance, ready for reuse.
    free: Vec<Row>,
}

pub struct Haproxy {
    cfg: HaproxyConfig,
}

impl Haproxy {
    pub fn new(cfg: HaproxyConfig) -> Haproxy {
        Haproxy { cfg }
    }

    pub fn port(&self) -> u16 {
        self.cfg.port
    }

    /// Sends one request line and returns HAProxy's whole answer.
    async fn exchange(&self, line: &str, deadline: Instant) -> Result<String, String> {
        async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
            mut s: S,
            line: &str,
        ) -> std::io::Result<String> {
            s.write_all(format!("{line}\n").as_bytes()).await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        let limit = op_limit(self.cfg.timeout, deadline);
        let io = async {
            match &self.cfg.socket {
                AdminSocket::Unix(p) => talk(tokio::net::UnixStream::connect(p).await?, line).await,
                AdminSocket::Tcp(a) => {
                    talk(tokio::net::TcpStream::connect(a.as_str()).await?, line).await
                }
            }
        };
        match tokio::time::timeout(limit, io).await {
            Ok(Ok(text)) => Ok(text),
            Ok(Err(e)) => Err(format!("HAProxy admin socket: {e}")),
            Err(_) => Err(format!("HAProxy admin socket: no answer within {limit:?}")),
        }
    }

    pub async fn rows(&self, deadline: Instant) -> Result<Vec<Row>, String> {
        let text = self
            .exchange(
                &format!("show servers state {}", self.cfg.backend),
                deadline,
            )
            .await?;
        parse_state(&text)
    }

    fn is_slot(&self, name: &str) -> bool {
        name.strip_prefix(&self.cfg.prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }

    fn view(&self, rows: Vec<Row>) -> View {
        let managed: Vec<Row> = rows
            .into_iter()
            .filter(|r| r.name.starts_with(&self.cfg.prefix))
            .collect();
        let mut v = View {
            template: match self.cfg.mode {
                HaproxyMode::Template => true,
                HaproxyMode::Dynamic => false,
                HaproxyMode::Auto => managed.iter().any(|r| self.is_slot(&r.name)),
            },
            ..View::default()
        };
        for r in managed {
            let mode = r.mode();
            match r.endpoint() {
                _ if v.template && mode == Mode::Maint => v.free.push(r),
                Some(ep) if !v.names.contains_key(&ep) => {
                    v.actual.insert(
                        ep,
                        Slot {
                            mode,
                            weight: r.weight,
                        },
                    );
                    v.names.insert(ep, r.name);
                }
                _ => v.extra.push(r.name),
            }
        }
        v
    }

    fn server(&self, name: &str) -> String {
        format!("{}/{name}", self.cfg.backend)
    }

    fn state_cmd(&self, name: &str, mode: Mode) -> String {
        let word = match mode {
            Mode::Ready => "ready",
            Mode::Drain => "drain",
            Mode::Maint => "maint",
        };
        format!("set server {} state {word}", self.server(name))
    }

    fn removal(&self, name: &str, template: bool) -> Vec<String> {
        let mut cmds = vec![self.state_cmd(name, Mode::Maint)];
        if !template {
            // The drain period is over: cut what is left, then delete.
            cmds.push(format!("shutdown sessions server {}", self.server(name)));
            cmds.push(format!("del server {}", self.server(name)));
        }
        cmds
    }

    /// The request lines for a change, one line per entry changed.
    fn plan(&self, view: &mut View, target: &Target) -> Result<Vec<String>, String> {
        // Without a configured weight, an entry keeps the weight it has.
        let wanted: BTreeMap<Endpoint, Slot> = target
            .servers
            .iter()
            .map(|(ep, w)| {
                let ep = ep.with_port(ep.port.or(Some(self.cfg.port)));
                let weight = target
                    .weight
                    .or(view.actual.get(&ep).map(|s| s.weight))
                    .unwrap_or(1);
                (ep, Slot::wanted(*w, weight))
            })
            .collect();
        let mut lines: Vec<Vec<String>> = view
            .extra
            .iter()
            .map(|n| self.removal(n, view.template))
            .collect();
        let mut changes = diff(&view.actual, &wanted);
        // Removals first: a dynamic server's name may be needed again.
        changes.sort_by_key(|c| !matches!(c, Change::Remove(_)));
        for change in changes {
            lines.push(match change {
                Change::Remove(ep) => self.removal(&view.names[&ep], view.template),
                Change::Update { key, from, to } => {
                    let name = &view.names[&key];
                    let mut cmds = Vec::new();
                    if to.mode == Mode::Ready && from.weight != to.weight {
                        cmds.push(format!(
                            "set server {} weight {}",
                            self.server(name),
                            to.weight
                        ));
                    }
                    if from.mode != to.mode {
                        cmds.push(self.state_cmd(name, to.mode));
                    }
                    cmds
                }
                Change::Add(ep, to) => self.addition(view, ep, to, target.weight)?,
            });
        }
        Ok(lines.into_iter().map(|cmds| cmds.join("; ")).collect())
    }

    /// The commands that bring in a new entry; `weight`: the configured one.
    fn addition(
        &self,
        view: &mut View,
        ep: Endpoint,
        to: Slot,
        weight: Option<u32>,
    ) -> Result<Vec<String>, String> {
        let port = ep.port.unwrap_or(self.cfg.port);
        if view.template {
            // A slot that had this address before, else any free one.
            let at = view
                .free
                .iter()
                .position(|r| r.addr == Some(ep.ip) && r.port == port)
                .unwrap_or(0);
            if view.free.is_empty() {
                return Err(format!("no free server-template slot left for {ep}"));
            }
            let slot = view.free.remove(at);
            let mut cmds = Vec::new();
            if slot.addr != Some(ep.ip) || slot.port != port {
                cmds.push(format!(
                    "set server {} addr {} port {port}",
                    self.server(&slot.name),
                    ep.ip
                ));
            }
            if let Some(w) = weight.filter(|w| *w != slot.weight) {
                cmds.push(format!("set server {} weight {w}", self.server(&slot.name)));
            }
            cmds.push(self.state_cmd(&slot.name, to.mode));
            return Ok(cmds);
        }
        let name = format!(
            "{}_{}_{port}",
            self.cfg.prefix,
            ep.ip.to_string().replace(['.', ':'], "_")
        );
        let addr = match ep.ip {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        };
        let mut add = format!("add server {} {addr}", self.server(&name));
        if let Some(w) = weight {
            add.push_str(&format!(" weight {w}"));
        }
        for o in &self.cfg.server_options {
            add.push(' ');
            add.push_str(o);
        }
        // Dynamic servers start in maintenance.
        Ok(vec![add, self.state_cmd(&name, to.mode)])
    }

    pub async fn reconcile(
        &self,
        target: &Target,
        deadline: Instant,
        note: Note<'_>,
    ) -> Result<Applied, String> {
        let mut view = self.view(self.rows(deadline).await?);
        let mut lines = self.plan(&mut view, target)?;
        if lines
            .iter()
            .any(|l| l.contains("add server ") || l.contains("del server "))
        {
            let info = self.exchange("show info", deadline).await?;
            match dynamic_support(&info)? {
                (Dynamic::Yes, _) => {}
                (Dynamic::Experimental, _) => {
                    for l in lines
                        .iter_mut()
                        .filter(|l| l.contains("add server ") || l.contains("del server "))
                    {
                        l.insert_str(0, "experimental-mode on; ");
                    }
                }
                (Dynamic::No, version) => {
                    return Err(format!(
                        "HAProxy {version} has no dynamic servers: declare `server-template {} 1-N` slots in backend {}",
                        self.cfg.prefix, self.cfg.backend
                    ));
                }
            }
        }
        let mut answers = Vec::new();
        for line in &lines {
            tracing::info!(backend = %self.cfg.backend, command = %line, "haproxy");
            let answer = self.exchange(line, deadline).await?;
            answers.extend(
                answer
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !is_success(l))
                    .map(String::from),
            );
        }
        // HAProxy's own answers are free text; its state read back decides.
        let mut after = self.view(self.rows(deadline).await?);
        let left = self.plan(&mut after, target).unwrap_or_else(|e| vec![e]);
        if !left.is_empty() {
            let why = answers
                .first()
                .map_or(String::new(), |a| format!(" (HAProxy said: {a})"));
            return Err(format!(
                "HAProxy does not match after {} change(s): {} left{why}",
                lines.len(),
                left.len()
            ));
        }
        if !answers.is_empty() {
            note(&format!("HAProxy: {}", answers.join("; ")));
        }
        Ok(Applied {
            changes: lines.len(),
        })
    }
}

/// What an HAProxy version offers for `add server` / `del server`.
#[derive(Debug, PartialEq, Eq)]
enum Dynamic {
    No,
    /// 2.4: only after `experimental-mode on` in the same session.
    Experimental,
    Yes,
}

/// Reads the version from `show info`.
fn dynamic_support(show_info: &str) -> Result<(Dynamic, String), String> {
    let version = show_info
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(str::trim)
        .ok_or("HAProxy did not tell its version (show info)")?;
    let mut numbers = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let support = match (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) {
        (0..=1, _) | (2, 0..=3) => Dynamic::No,
        (2, 4) => Dynamic::Experimental,
        _ => Dynamic::Yes,
    };
    Ok((support, version.to_string()))
}

/// The answers of the runtime API that report success.
fn is_success(line: &str) -> bool {
    [
        "New server registered",
        "Server deleted",
        "IP changed from",
        "no need to change",
        "port changed from",
    ]
    .iter()
    .any(|p| line.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Want;
    use std::time::Duration;

    const STATE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 be 1 static1 127.0.0.1 2 0 1 1 1 1 0 2 0 0 0 0 - 40001 - 0 0 - - 0
3 be 2 cgp_127_0_0_2_25 127.0.0.2 2 8 3 3 0 1 0 0 0 0 0 0 - 25 - 0 0 - - 0
3 be 3 cgp_127_0_0_3_25 127.0.0.3 0 1 1 1 0 1 0 0 0 0 0 0 - 25 - 0 0 - - 0

";

    fn driver(mode: HaproxyMode) -> Haproxy {
        Haproxy::new(HaproxyConfig {
            socket: AdminSocket::Unix("/nonexistent".into()),
            backend: "be".into(),
            prefix: "cgp".into(),
            port: 25,
            mode,
            server_options: vec!["check".into()],
            timeout: Duration::from_secs(1),
        })
    }

    fn target(servers: &[(&str, Want)], weight: Option<u32>) -> Target {
        Target {
            vips: vec![],
            services: true,
            servers: servers
                .iter()
                .map(|(s, w)| (s.parse().unwrap(), *w))
                .collect(),
            weight,
        }
    }

    #[test]
    fn reads_admin_states() {
        let rows = parse_state(STATE).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].mode(), Mode::Ready);
        assert_eq!(rows[1].mode(), Mode::Drain);
        assert_eq!(rows[1].weight, 3);
        assert_eq!(rows[2].mode(), Mode::Maint);
        // A template slot enabled after `disabled` in the configuration.
        assert_eq!(
            Row {
                admin: 4,
                ..rows[0].clone()
            }
            .mode(),
            Mode::Ready
        );
        assert!(
            parse_state("Can't find backend.\n")
                .unwrap_err()
                .contains("Can't find backend")
        );
        assert!(parse_state("").is_err());
    }

    #[test]
    fn dynamic_plan_touches_only_what_differs() {
        let h = driver(HaproxyMode::Auto);
        let mut v = h.view(parse_state(STATE).unwrap());
        assert!(!v.template);
        let t = target(
            &[
                ("127.0.0.2", Want::Ready),
                ("127.0.0.3:25", Want::Drain),
                ("[2001:db8::5]:26", Want::Ready),
            ],
            Some(3),
        );
        assert_eq!(
            h.plan(&mut v, &t).unwrap(),
            [
                "set server be/cgp_127_0_0_2_25 state ready",
                "set server be/cgp_127_0_0_3_25 state drain",
                "add server be/cgp_2001_db8__5_26 [2001:db8::5]:26 weight 3 check; set server be/cgp_2001_db8__5_26 state ready",
            ]
        );
        let mut v = h.view(parse_state(STATE).unwrap());
        assert_eq!(
            h.plan(&mut v, &target(&[("127.0.0.2:25", Want::Drain)], Some(1)))
                .unwrap(),
            [
                "set server be/cgp_127_0_0_3_25 state maint; shutdown sessions server be/cgp_127_0_0_3_25; del server be/cgp_127_0_0_3_25"
            ]
        );
    }

    #[test]
    fn dynamic_servers_by_version() {
        let v = |t: &str| dynamic_support(t).map(|(d, _)| d);
        assert_eq!(
            v("Name: HAProxy\nVersion: 2.6.12-1+deb12u4\n"),
            Ok(Dynamic::Yes)
        );
        assert_eq!(v("Version: 3.0.5\n"), Ok(Dynamic::Yes));
        assert_eq!(
            v("Version: 2.4.22-0ubuntu0.22.04.3\n"),
            Ok(Dynamic::Experimental)
        );
        assert_eq!(v("Version: 2.2.9-2+deb11u6\n"), Ok(Dynamic::No));
        assert_eq!(v("Version: 1.8.19\n"), Ok(Dynamic::No));
        assert!(v("Permission denied.\n").is_err());
    }

    #[test]
    fn weights_are_set_only_when_configured() {
        let h = driver(HaproxyMode::Dynamic);
        let servers = [
            ("127.0.0.2", Want::Ready),
            ("127.0.0.3", Want::Ready),
            ("127.0.0.9", Want::Ready),
        ];
        let mut v = h.view(parse_state(STATE).unwrap());
        assert_eq!(
            h.plan(&mut v, &target(&servers, None)).unwrap(),
            [
                "set server be/cgp_127_0_0_2_25 state ready",
                "set server be/cgp_127_0_0_3_25 state ready",
                "add server be/cgp_127_0_0_9_25 127.0.0.9:25 check; set server be/cgp_127_0_0_9_25 state ready",
            ]
        );
        let mut v = h.view(parse_state(STATE).unwrap());
        assert_eq!(
            h.plan(&mut v, &target(&servers, Some(7))).unwrap(),
            [
                "set server be/cgp_127_0_0_2_25 weight 7; set server be/cgp_127_0_0_2_25 state ready",
                "set server be/cgp_127_0_0_3_25 weight 7; set server be/cgp_127_0_0_3_25 state ready",
                "add server be/cgp_127_0_0_9_25 127.0.0.9:25 weight 7 check; set server be/cgp_127_0_0_9_25 state ready",
            ]
        );
    }

    #[test]
    fn template_plan_fills_free_slots() {
        let text = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_port
4 tpl 1 cgp1 127.0.0.9 2 4 1 26
4 tpl 2 cgp2 0.0.0.0 0 5 1 25
4 tpl 3 cgp3 127.0.0.7 0 5 1 25
";
        let h = driver(HaproxyMode::Auto);
        let mut v = h.view(parse_state(text).unwrap());
        assert!(v.template);
        assert_eq!(v.free.len(), 2);
        let t = target(
            &[("127.0.0.7", Want::Ready), ("127.0.0.8", Want::Ready)],
            None,
        );
        assert_eq!(
            h.plan(&mut v, &t).unwrap(),
            [
                "set server be/cgp1 state maint",
                "set server be/cgp3 state ready",
                "set server be/cgp2 addr 127.0.0.8 port 25; set server be/cgp2 state ready",
            ]
        );
        let mut v = h.view(parse_state(text).unwrap());
        let t = target(
            &[
                ("127.0.0.9:26", Want::Ready),
                ("127.0.0.1", Want::Ready),
                ("127.0.0.2", Want::Ready),
                ("127.0.0.3", Want::Ready),
            ],
            None,
        );
        assert!(
            h.plan(&mut v, &t)
                .unwrap_err()
                .contains("no free server-template slot")
        );
    }
}
