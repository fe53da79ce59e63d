//! The `ipvs` driver: Linux IPVS through `ipvsadm`, one virtual service per
//! VIP and port, real servers in direct-routing mode (`-g`). A draining
//! server has weight 0: IPVS sends it no new connections and lets the
//! existing ones finish. In dry-run mode the commands are reported as `*`
//! lines and applied to a table kept in memory instead of the kernel's.

use super::{Applied, Change, Mode, Note, Slot, diff, op_limit, run_program};
use crate::config::{IpvsConfig, Protocol};
use crate::state::Target;
use cgp_runtime::sync;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Service {
    pub proto: Protocol,
    pub vip: IpAddr,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    Route,
    Masq,
    Tunnel,
    /// The real server is this machine.
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Real {
    pub forward: Forward,
    pub weight: u32,
    pub active: u64,
    pub inactive: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntry {
    pub scheduler: String,
    pub persistent: Option<u32>,
    pub reals: BTreeMap<IpAddr, Real>,
}

/// The virtual services of a machine, as `ipvsadm -Ln` shows them.
pub type Table = BTreeMap<Service, ServiceEntry>;

/// One `ipvsadm` invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddService(Service, String, Option<u32>),
    EditService(Service, String, Option<u32>),
    DelService(Service),
    AddReal(Service, IpAddr, u32),
    EditReal(Service, IpAddr, u32),
    DelReal(Service, IpAddr),
}

fn host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

impl Op {
    /// The arguments after the program name.
    pub fn args(&self) -> Vec<String> {
        let svc = |s: &Service| {
            let flag = match s.proto {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
            };
            vec![flag.to_string(), host_port(s.vip, s.port)]
        };
        let sched = |sch: &str, p: &Option<u32>| {
            let mut v = vec!["-s".to_string(), sch.to_string()];
            if let Some(t) = p {
                v.extend(["-p".to_string(), t.to_string()]);
            }
            v
        };
        let real = |s: &Service, ip: &IpAddr| vec!["-r".to_string(), host_port(*ip, s.port)];
        let weight = |w: &u32| vec!["-g".to_string(), "-w".to_string(), w.to_string()];
        let (head, parts): (&str, Vec<Vec<String>>) = match self {
            Op::AddService(s, sch, p) => ("-A", vec![svc(s), sched(sch, p)]),
            Op::EditService(s, sch, p) => ("-E", vec![svc(s), sched(sch, p)]),
            Op::DelService(s) => ("-D", vec![svc(s)]),
            Op::AddReal(s, ip, w) => ("-a", vec![svc(s), real(s, ip), weight(w)]),
            Op::EditReal(s, ip, w) => ("-e", vec![svc(s), real(s, ip), weight(w)]),
            Op::DelReal(s, ip) => ("-d", vec![svc(s), real(s, ip)]),
        };
        std::iter::once(head.to_string())
            .chain(parts.into_iter().flatten())
            .collect()
    }

    /// What the kernel does with this command, applied to a table (the
    /// dry-run balancer).
    fn apply(&self, t: &mut Table) {
        let real = |weight| Real {
            forward: Forward::Route,
            weight,
            active: 0,
            inactive: 0,
        };
        match self {
            Op::AddService(s, sch, p) | Op::EditService(s, sch, p) => {
                let e = t.entry(*s).or_default();
                e.scheduler = sch.clone();
                e.persistent = *p;
            }
            Op::DelService(s) => {
                t.remove(s);
            }
            Op::AddReal(s, ip, w) | Op::EditReal(s, ip, w) => {
                t.entry(*s).or_default().reals.insert(*ip, real(*w));
            }
            Op::DelReal(s, ip) => {
                if let Some(e) = t.get_mut(s) {
                    e.reals.remove(ip);
                }
            }
        }
    }
}

/// Parses the output of `ipvsadm -Ln`. Firewall-mark services (`FWM`) are
/// skipped: the helper never manages them.
pub fn parse_list(text: &str) -> Result<Table, String> {
    let mut table = Table::new();
    let mut current: Option<Service> = None;
    for (n, line) in text.lines().enumerate() {
        let bad = |what: &str| format!("ipvsadm -Ln line {}: {what}: {line:?}", n + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["IP", "Virtual", ..] | ["Prot", ..] | ["->", "RemoteAddress:Port", ..] => {}
            ["FWM", ..] => current = None,
            [proto @ ("TCP" | "UDP"), addr, sched, flags @ ..] => {
                let (vip, port) =
                    split_host_port(addr).ok_or_else(|| bad("bad virtual address"))?;
                let proto = if *proto == "TCP" {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                let persistent = match flags.iter().position(|f| *f == "persistent") {
                    Some(i) => Some(
                        flags
                            .get(i + 1)
                            .and_then(|t| t.parse().ok())
                            .ok_or_else(|| bad("bad persistence"))?,
                    ),
                    None => None,
                };
                let svc = Service { proto, vip, port };
                table.insert(
                    svc,
                    ServiceEntry {
                        scheduler: sched.to_string(),
                        persistent,
                        reals: BTreeMap::new(),
                    },
                );
                current = Some(svc);
            }
            ["->", addr, fwd, weight, active, inactive] => {
                let Some(svc) = current else { continue };
                let (ip, _) = split_host_port(addr).ok_or_else(|| bad("bad real server"))?;
                let forward = match *fwd {
                    "Route" => Forward::Route,
                    "Masq" => Forward::Masq,
                    "Tunnel" => Forward::Tunnel,
                    "Local" => Forward::Local,
                    _ => return Err(bad("unknown forwarding method")),
                };
                let num = |s: &str| s.parse::<u64>().map_err(|_| bad("bad number"));
                let real = Real {
                    forward,
                    weight: u32::try_from(num(weight)?).map_err(|_| bad("bad weight"))?,
                    active: num(active)?,
                    inactive: num(inactive)?,
                };
                table.entry(svc).or_default().reals.insert(ip, real);
            }
            _ => return Err(bad("unexpected line")),
        }
    }
    Ok(table)
}

fn split_host_port(s: &str) -> Option<(IpAddr, u16)> {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let (h, p) = rest.split_once("]:")?;
            (h, p)
        }
        None => s.rsplit_once(':')?,
    };
    Some((host.parse().ok()?, port.parse().ok()?))
}

pub struct Ipvs {
    cfg: IpvsConfig,
    /// The dry-run balancer.
    simulated: Mutex<Table>,
}

impl Ipvs {
    pub fn new(cfg: IpvsConfig) -> Ipvs {
        Ipvs {
            cfg,
            simulated: Mutex::new(Table::new()),
        }
    }

    fn owns(&self, s: &Service, target: &Target) -> bool {
        s.proto == self.cfg.protocol
            && target.vips.contains(&s.vip)
            && self.cfg.ports.contains(&s.port)
    }

    /// The group's part of the table as the target wants it.
    pub fn wanted(&self, target: &Target) -> Table {
        if !target.services {
            return Table::new();
        }
        let reals: BTreeMap<IpAddr, Real> = target
            .servers
            .iter()
            .map(|(ep, want)| {
                let w = Slot::wanted(*want, target.weight.unwrap_or(1)).weight;
                (
                    ep.ip,
                    Real {
                        forward: Forward::Route,
                        weight: w,
                        active: 0,
                        inactive: 0,
                    },
                )
            })
            .collect();
        let mut t = Table::new();
        for vip in &target.vips {
            for port in &self.cfg.ports {
                t.insert(
                    Service {
                        proto: self.cfg.protocol,
                        vip: *vip,
                        port: *port,
                    },
                    ServiceEntry {
                        scheduler: self.cfg.scheduler.clone(),
                        persistent: self.cfg.persistent,
                        reals: reals.clone(),
                    },
                );
            }
        }
        t
    }

    async fn read(&self, deadline: Instant) -> Result<Table, String> {
        if self.cfg.dry_run {
            return Ok(sync::lock(&self.simulated).clone());
        }
        let argv = [self.program(), "-Ln".to_string()];
        parse_list(&run_program(&argv, b"", op_limit(self.cfg.timeout, deadline)).await?)
    }

    fn program(&self) -> String {
        self.cfg.ipvsadm.to_string_lossy().into_owned()
    }

    pub async fn reconcile(
        &self,
        target: &Target,
        deadline: Instant,
        note: Note<'_>,
    ) -> Result<Applied, String> {
        let actual = self.read(deadline).await?;
        let ours: Table = actual
            .into_iter()
            .filter(|(s, _)| self.owns(s, target))
            .collect();
        let ops = plan(&ours, &self.wanted(target));
        for op in &ops {
            let mut argv = vec![self.program()];
            argv.extend(op.args());
            if self.cfg.dry_run {
                note(&format!("dry-run: {}", argv.join(" ")));
                op.apply(&mut sync::lock(&self.simulated));
            } else {
                tracing::info!(command = %argv.join(" "), "ipvsadm");
                run_program(&argv, b"", op_limit(self.cfg.timeout, deadline)).await?;
            }
        }
        let after: Table = self
            .read(deadline)
            .await?
            .into_iter()
            .filter(|(s, _)| self.owns(s, target))
            .collect();
        let left = plan(&after, &self.wanted(target));
        if !left.is_empty() {
            return Err(format!(
                "IPVS does not match after {} change(s): {} left",
                ops.len(),
                left.len()
            ));
        }
        Ok(Applied { changes: ops.len() })
    }
}

fn slots(e: &ServiceEntry) -> BTreeMap<IpAddr, Slot> {
    e.reals
        .iter()
        .map(|(ip, r)| {
            let mode = match (r.forward, r.weight) {
                // Another forwarding method must be replaced, whatever the weight.
                (Forward::Masq | Forward::Tunnel | Forward::Local, _) => Mode::Maint,
                (Forward::Route, 0) => Mode::Drain,
                (Forward::Route, _) => Mode::Ready,
            };
            (
                *ip,
                Slot {
                    mode,
                    weight: r.weight,
                },
            )
        })
        .collect()
}

/// The `ipvsadm` commands that turn `actual` into `wanted` (both restricted
/// to the group's own services).
pub fn plan(actual: &Table, wanted: &Table) -> Vec<Op> {
    let mut ops = Vec::new();
    let empty = ServiceEntry::default();
    for (svc, want) in wanted {
        let have = match actual.get(svc) {
            None => {
                ops.push(Op::AddService(
                    *svc,
                    want.scheduler.clone(),
                    want.persistent,
                ));
                &empty
            }
            Some(h) => {
                if h.scheduler != want.scheduler || h.persistent != want.persistent {
                    ops.push(Op::EditService(
                        *svc,
                        want.scheduler.clone(),
                        want.persistent,
                    ));
                }
                h
            }
        };
        let mut wanted_slots = slots(want);
        // A draining real server that is gone stays gone; one that is there
        // keeps weight 0 until its drain period ends.
        wanted_slots.retain(|ip, s| s.mode == Mode::Ready || have.reals.contains_key(ip));
        for change in diff(&slots(have), &wanted_slots) {
            ops.push(match change {
                Change::Add(ip, s) => Op::AddReal(*svc, ip, s.weight),
                Change::Update { key, to, .. } => Op::EditReal(*svc, key, to.weight),
                Change::Remove(ip) => Op::DelReal(*svc, ip),
            });
        }
    }
    ops.extend(
        actual
            .keys()
            .filter(|s| !wanted.contains_key(s))
            .map(|s| Op::DelService(*s)),
    );
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Want;
    use crate::wire::Endpoint;
    use std::path::Path;
    use std::time::Duration;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/balancer")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn cfg(ports: &[u16]) -> IpvsConfig {
        IpvsConfig {
            ipvsadm: "/sbin/ipvsadm".into(),
            dry_run: true,
            ports: ports.to_vec(),
            protocol: Protocol::Tcp,
            scheduler: "wlc".into(),
            persistent: None,
            timeout: Duration::from_secs(1),
        }
    }

    fn target(vips: &[&str], servers: &[(&str, Want)]) -> Target {
        Target {
            vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
            services: true,
            servers: servers
                .iter()
                .map(|(s, w)| (s.parse::<Endpoint>().unwrap(), *w))
                .collect(),
            weight: None,
        }
    }

    fn lines(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|o| format!("ipvsadm {}", o.args().join(" ")))
            .collect()
    }

    #[test]
    fn parses_a_captured_listing() {
        let t = parse_list(&fixture("ipvsadm-Ln.txt")).unwrap();
        let smtp = Service {
            proto: Protocol::Tcp,
            vip: "192.0.2.10".parse().unwrap(),
            port: 25,
        };
        let e = &t[&smtp];
        assert_eq!(e.scheduler, "wlc");
        assert_eq!(e.reals.len(), 3);
        let r = e.reals[&"10.0.0.12".parse::<IpAddr>().unwrap()];
        assert_eq!(
            (r.forward, r.weight, r.active, r.inactive),
            (Forward::Route, 0, 3, 17)
        );
        let pop = Service { port: 110, ..smtp };
        assert_eq!(t[&pop].persistent, Some(300));
        let v6 = Service {
            proto: Protocol::Udp,
            vip: "2001:db8::10".parse().unwrap(),
            port: 53,
        };
        assert_eq!(
            t[&v6].reals[&"2001:db8::5".parse::<IpAddr>().unwrap()].forward,
            Forward::Masq
        );
        // The firewall-mark service and its real servers are not taken.
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn parses_an_empty_listing_and_refuses_garbage() {
        assert!(
            parse_list(&fixture("ipvsadm-Ln-empty.txt"))
                .unwrap()
                .is_empty()
        );
        assert!(parse_list("TCP  nonsense wlc\n").is_err());
        assert!(parse_list("TCP 192.0.2.1:25 wlc\n  -> 10.0.0.1:25 Route x 0 0\n").is_err());
    }

    #[test]
    fn command_lines_from_scratch_and_for_each_change() {
        let ipvs = Ipvs::new(cfg(&[25, 110]));
        let t = target(
            &["192.0.2.10"],
            &[("10.0.0.11", Want::Ready), ("[10.0.0.12]:25", Want::Ready)],
        );
        let ops = plan(&Table::new(), &ipvs.wanted(&t));
        assert_eq!(
            lines(&ops),
            [
                "ipvsadm -A -t 192.0.2.10:25 -s wlc",
                "ipvsadm -a -t 192.0.2.10:25 -r 10.0.0.11:25 -g -w 1",
                "ipvsadm -a -t 192.0.2.10:25 -r 10.0.0.12:25 -g -w 1",
                "ipvsadm -A -t 192.0.2.10:110 -s wlc",
                "ipvsadm -a -t 192.0.2.10:110 -r 10.0.0.11:110 -g -w 1",
                "ipvsadm -a -t 192.0.2.10:110 -r 10.0.0.12:110 -g -w 1",
            ]
        );
        let mut table = Table::new();
        ops.iter().for_each(|o| o.apply(&mut table));
        assert!(
            plan(&table, &ipvs.wanted(&t)).is_empty(),
            "applying the plan reaches the target"
        );

        // Drain one: weight 0, nothing else.
        let drained = target(
            &["192.0.2.10"],
            &[("10.0.0.11", Want::Ready), ("10.0.0.12", Want::Drain)],
        );
        assert_eq!(
            lines(&plan(&table, &ipvs.wanted(&drained))),
            [
                "ipvsadm -e -t 192.0.2.10:25 -r 10.0.0.12:25 -g -w 0",
                "ipvsadm -e -t 192.0.2.10:110 -r 10.0.0.12:110 -g -w 0",
            ]
        );
        // Drain over: removed.
        let gone = target(&["192.0.2.10"], &[("10.0.0.11", Want::Ready)]);
        assert_eq!(
            lines(&plan(&table, &ipvs.wanted(&gone))),
            [
                "ipvsadm -d -t 192.0.2.10:25 -r 10.0.0.12:25",
                "ipvsadm -d -t 192.0.2.10:110 -r 10.0.0.12:110"
            ]
        );
        // Duty given up with nothing left: the services go.
        let stopped = Target {
            services: false,
            servers: BTreeMap::new(),
            ..gone
        };
        assert_eq!(
            lines(&plan(&table, &ipvs.wanted(&stopped))),
            [
                "ipvsadm -D -t 192.0.2.10:25",
                "ipvsadm -D -t 192.0.2.10:110"
            ]
        );
    }

    #[test]
    fn command_lines_against_a_captured_table() {
        // The capture has 10.0.0.12 draining (weight 0) and 10.0.0.13 in
        // masquerading mode; port 110 is persistent.
        let mut c = cfg(&[25, 110]);
        c.persistent = Some(300);
        let ipvs = Ipvs::new(c);
        let actual: Table = parse_list(&fixture("ipvsadm-Ln.txt"))
            .unwrap()
            .into_iter()
            .filter(|(s, _)| ipvs.owns(s, &target(&["192.0.2.10"], &[])))
            .collect();
        let t = target(
            &["192.0.2.10"],
            &[
                ("10.0.0.11", Want::Ready),
                ("10.0.0.12", Want::Ready),
                ("10.0.0.13", Want::Ready),
            ],
        );
        assert_eq!(
            lines(&plan(&actual, &ipvs.wanted(&t))),
            [
                "ipvsadm -E -t 192.0.2.10:25 -s wlc -p 300",
                "ipvsadm -e -t 192.0.2.10:25 -r 10.0.0.12:25 -g -w 1",
                "ipvsadm -e -t 192.0.2.10:25 -r 10.0.0.13:25 -g -w 1",
                "ipvsadm -a -t 192.0.2.10:110 -r 10.0.0.12:110 -g -w 1",
                "ipvsadm -a -t 192.0.2.10:110 -r 10.0.0.13:110 -g -w 1",
            ]
        );
    }

    #[test]
    fn ipv6_and_udp_command_lines() {
        let mut c = cfg(&[53]);
        c.protocol = Protocol::Udp;
        c.scheduler = "rr".into();
        let ipvs = Ipvs::new(c);
        let t = target(&["2001:db8::10"], &[("[2001:db8::5]:53", Want::Ready)]);
        assert_eq!(
            lines(&plan(&Table::new(), &ipvs.wanted(&t))),
            [
                "ipvsadm -A -u [2001:db8::10]:53 -s rr",
                "ipvsadm -a -u [2001:db8::10]:53 -r [2001:db8::5]:53 -g -w 1"
            ]
        );
    }

    /// The real (not dry-run) path against a stand-in `ipvsadm` that lists
    /// a captured table and records the other commands without applying
    /// them: the commands run, and the verification sees they did not take.
    #[tokio::test]
    async fn real_mode_runs_ipvsadm_and_verifies() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/balancer/ipvsadm-Ln.txt");
        let log = dir.path().join("calls");
        let fake = dir.path().join("ipvsadm");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nif [ \"$1\" = -Ln ]; then cat '{}'; else echo \"$@\" >> '{}'; fi\n",
                fixture.display(),
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = cfg(&[80]);
        c.dry_run = false;
        c.ipvsadm = fake;
        c.scheduler = "rr".into();
        let ipvs = Ipvs::new(c);
        let deadline = Instant::now() + Duration::from_secs(5);
        let note = |_: &str| {};
        // 192.0.2.20:80 already has 10.0.0.50 (and a Local server): no change.
        let t = target(
            &["192.0.2.20"],
            &[("10.0.0.50", Want::Ready), ("127.0.0.1", Want::Ready)],
        );
        let e = ipvs.reconcile(&t, deadline, &note).await.unwrap_err();
        // The Local entry must become a direct-routing one.
        assert_eq!(e, "IPVS does not match after 1 change(s): 1 left");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "-e -t 192.0.2.20:80 -r 127.0.0.1:80 -g -w 1\n"
        );
        let t = target(&["192.0.2.20"], &[("10.0.0.50", Want::Ready)]);
        let mut c2 = ipvs.cfg.clone();
        c2.ipvsadm = "/nonexistent/ipvsadm".into();
        let missing = Ipvs::new(c2)
            .reconcile(&t, deadline, &note)
            .await
            .unwrap_err();
        assert!(
            missing.starts_with("cannot run /nonexistent/ipvsadm"),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn dry_run_reports_each_command_once() {
        let ipvs = Ipvs::new(cfg(&[25]));
        let seen = Mutex::new(Vec::new());
        let note = |s: &str| seen.lock().unwrap().push(s.to_string());
        let t = target(&["192.0.2.10"], &[("10.0.0.11", Want::Ready)]);
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            ipvs.reconcile(&t, deadline, &note).await.unwrap().changes,
            2
        );
        assert_eq!(
            ipvs.reconcile(&t, deadline, &note).await.unwrap().changes,
            0
        );
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "dry-run: /sbin/ipvsadm -A -t 192.0.2.10:25 -s wlc",
                "dry-run: /sbin/ipvsadm -a -t 192.0.2.10:25 -r 10.0.0.11:25 -g -w 1"
            ]
        );
    }
}
