//! Soak test of the whole suite, not part of `cargo test`. Run it with
//! `tests/soak/run.sh --duration 10m` (see docs/soak.md).
//!
//! All four helpers run at once, each in rounds of `cgp-helper-sim
//! --generate` with a random size and in-flight depth, on a mix of valid and
//! malformed requests (`tests/soak/requests/<helper>.txt`). Every helper
//! restarts each round on the same store directory, as CGP's Auto-Restart
//! does. A second cgp-auth and cgp-banner run as members of a Dynamic
//! Cluster, with `store.backend = "redis"` on the soak's redis-server.
//! Meanwhile a chaos thread freezes (SIGSTOP) and restarts slapd, HAProxy
//! and redis-server, and kills helpers with SIGKILL or SIGTERM mid-round.
//!
//! A killed round proves nothing about the protocol (CGP itself re-sends
//! what a killed helper left unanswered), so it is only counted. Every other
//! round must pass the simulator's contract checks; a failed round right
//! after a kill counts as a store that failed to reopen. The run passes only
//! with zero violations and zero reopen failures.

use cgp_tests::fake_ami::FakeAmi;
use cgp_tests::haproxy::Haproxy;
use cgp_tests::redis::Redis;
use cgp_tests::slapd::{self, Slapd};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "cgp-soak", about = "Soak test of the cgp-helpers suite")]
struct Args {
    /// How long to run, e.g. 90s, 10m.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Mean time between two chaos events.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    chaos_every: Duration,
    /// Where the helpers and cgp-helper-sim are built (default: beside this
    /// binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Working directory, kept afterwards (default: a temporary one, removed).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Seed of the random choices, to replay a run.
    #[arg(long)]
    seed: Option<u64>,
}

/// The backend behind the HAProxy fixture's frontend.
const BACKEND: &str = "cgp";

/// The helpers under test: the name in the report, the binary, its
/// configuration (`config/<c>.toml`) and requests (`requests/<r>.txt`). The
/// `-redis` ones keep their shared state in the soak's redis-server.
const HELPERS: [(&str, &str, &str, &str); 7] = [
    ("cgp-auth", "cgp-auth", "auth", "auth"),
    ("cgp-filter", "cgp-filter", "filter", "filter"),
    ("cgp-banner", "cgp-banner", "banner", "banner"),
    ("cgp-balancer", "cgp-balancer", "balancer", "balancer"),
    ("cgp-auth-redis", "cgp-auth", "auth-redis", "auth"),
    ("cgp-banner-redis", "cgp-banner", "banner-redis", "banner"),
    ("cgp-filter-redis", "cgp-filter", "filter-redis", "filter"),
];

/// What one helper's rounds added up to.
#[derive(Default)]
struct Totals {
    rounds: u64,
    killed_rounds: u64,
    requests: u64,
    replies: u64,
    violations: u64,
    reopen_failures: u64,
    config: String,
}

/// The simulator a helper's current round runs, for the chaos thread.
#[derive(Default)]
struct Slot {
    sim: Option<u32>,
    killed: bool,
}

/// Faults injected into one back end.
#[derive(Default)]
struct Faults {
    frozen: u64,
    restarted: u64,
}

#[derive(Default)]
struct Chaos {
    slapd: Faults,
    haproxy: Faults,
    redis: Faults,
    helper_kills: u64,
    helper_terms: u64,
}

struct Plan {
    name: &'static str,
    helper: PathBuf,
    sim: PathBuf,
    base: PathBuf,
    config: Option<PathBuf>,
    templates: Vec<String>,
    failures: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match soak(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cgp-soak: {e}");
            ExitCode::from(2)
        }
    }
}

fn soak(args: &Args) -> Result<bool, String> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .ok_or("no directory for this binary")?
            .to_path_buf(),
    };
    let mut temp = None;
    let work = match &args.work {
        Some(w) => w.clone(),
        None => {
            let t = tempfile::Builder::new()
                .prefix("cgp-soak-")
                .tempdir()
                .map_err(|e| e.to_string())?;
            let path = t.path().to_path_buf();
            temp = Some(t);
            path
        }
    };
    let soak_dir = cgp_tests::workspace().join("tests/soak");
    for dir in ["base/Queue", "config", "state", "logs", "failures"] {
        std::fs::create_dir_all(work.join(dir)).map_err(|e| format!("{dir}: {e}"))?;
    }
    copy_queue(&soak_dir.join("queue"), &work.join("base/Queue"))?;

    let slapd = Slapd::start_default();
    // Template slots for cgp-balancer to fill, behind the fixture's frontend.
    let haproxy = Haproxy::start(&format!(
        "backend {BACKEND}\n    server-template cgp 1-8 127.0.0.1:1 disabled\n"
    ));
    let ami = FakeAmi::start("cgp", "amisecret", true);
    let redis = Redis::start();
    ami.set_mailbox("1001@default", 2, 5);
    let values = [
        ("@LDAP_URI@", slapd.uri()),
        ("@SERVICE_DN@", slapd::SERVICE_DN.to_string()),
        ("@SERVICE_PASSWORD@", slapd::SERVICE_PASSWORD.to_string()),
        ("@BASE@", slapd::BASE.to_string()),
        ("@HAPROXY_SOCKET@", haproxy.socket().display().to_string()),
        ("@HAPROXY_BACKEND@", BACKEND.to_string()),
        ("@HAPROXY_PORT@", haproxy.port().to_string()),
        ("@AMI_PORT@", ami.port().to_string()),
        ("@REDIS_URL@", redis.url()),
        ("@WORK@", work.display().to_string()),
    ];
    let fill = |text: &str| {
        values
            .iter()
            .fold(text.to_string(), |t, (k, v)| t.replace(k, v))
    };

    println!(
        "soak: {} with chaos every ~{}, seed {seed}, work {}",
        humantime::format_duration(args.duration),
        humantime::format_duration(args.chaos_every),
        work.display()
    );
    let mut plans = Vec::new();
    for (name, binary, short, requests) in HELPERS {
        let helper = bin_dir.join(binary);
        let sim = bin_dir.join("cgp-helper-sim");
        for b in [&helper, &sim] {
            if !b.exists() {
                return Err(format!("{} is not built", b.display()));
            }
        }
        let templates: Vec<String> = read(&soak_dir.join(format!("requests/{requests}.txt")))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(fill)
            .collect();
        let (config, note) = soak_config(&helper, &soak_dir, &work, short, &fill)?;
        // On built-in defaults a cluster member would not use Redis at all.
        if config.is_none() && name.ends_with("-redis") {
            return Err(format!("{name}: {note}"));
        }
        println!(
            "{name}: {} request templates, config: {note}",
            templates.len()
        );
        plans.push((
            Plan {
                name,
                helper,
                sim,
                base: work.join("base"),
                config,
                templates,
                failures: work.join("failures"),
            },
            note,
        ));
    }

    let deadline = Instant::now() + args.duration;
    let done = Arc::new(AtomicBool::new(false));
    let slots: Vec<Arc<Mutex<Slot>>> = plans.iter().map(|_| Arc::default()).collect();
    let workers: Vec<_> = plans
        .into_iter()
        .zip(&slots)
        .enumerate()
        .map(|(i, ((plan, note), slot))| {
            let slot = slot.clone();
            let rng = fastrand::Rng::with_seed(seed.wrapping_add(i as u64 + 1));
            std::thread::spawn(move || {
                let mut totals = rounds(&plan, deadline, &slot, rng);
                totals.config = note;
                (plan.name, totals)
            })
        })
        .collect();
    let chaos_slots = slots.clone();
    let chaos_done = done.clone();
    let every = args.chaos_every;
    let chaos = std::thread::spawn(move || {
        let mut peers = Peers {
            slapd,
            haproxy,
            redis,
        };
        let counts = chaos(
            &mut peers,
            &chaos_slots,
            every,
            &chaos_done,
            fastrand::Rng::with_seed(seed),
        );
        (counts, peers)
    });

    let results: Vec<(&str, Totals)> = workers
        .into_iter()
        .map(|w| w.join().expect("a soak worker panicked"))
        .collect();
    done.store(true, Ordering::SeqCst);
    let (counts, peers) = chaos.join().map_err(|_| "the chaos thread panicked")?;
    drop((peers, ami));

    let pass = report(&results, &counts, &work);
    if !pass {
        // Keep the failed rounds' logs for the report's path.
        temp.map(tempfile::TempDir::keep);
    }
    Ok(pass)
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn copy_queue(from: &Path, to: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))?;
    for e in entries.flatten() {
        std::fs::copy(e.path(), to.join(e.file_name()))
            .map_err(|err| format!("{}: {err}", e.path().display()))?;
    }
    Ok(())
}

/// The helper's soak configuration, when it accepts it. A helper still
/// being written may refuse keys it does not know yet: it then runs on its
/// built-in defaults, and the report says so.
fn soak_config(
    helper: &Path,
    soak_dir: &Path,
    work: &Path,
    short: &str,
    fill: &dyn Fn(&str) -> String,
) -> Result<(Option<PathBuf>, String), String> {
    let template = soak_dir.join(format!("config/{short}.toml"));
    let path = work.join(format!("config/{short}.toml"));
    cgp_tests::write_config(&path, fill(&read(&template)?)).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(work.join(format!("state/{short}"))).map_err(|e| e.to_string())?;
    let check = Command::new(helper)
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .map_err(|e| format!("{}: {e}", helper.display()))?;
    if check.status.success() {
        return Ok((Some(path), format!("tests/soak/config/{short}.toml")));
    }
    let why = String::from_utf8_lossy(&check.stderr);
    let why = why.lines().next().unwrap_or("refused");
    Ok((
        None,
        format!("built-in defaults (soak config refused: {why})"),
    ))
}

/// The numbers of the simulator's summary line.
fn summary(stdout: &str) -> Option<(u64, u64, u64)> {
    let line = stdout.lines().rev().find(|l| l.starts_with("requests="))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some((field("requests")?, field("replies")?, field("violations")?))
}

/// Runs rounds of one helper until the deadline.
fn rounds(plan: &Plan, deadline: Instant, slot: &Mutex<Slot>, mut rng: fastrand::Rng) -> Totals {
    let mut totals = Totals::default();
    let mut after_kill = false;
    // Rounds aim at 2-20 s of work at the helper's last measured rate
    // (replies per second, killed rounds included), so that a slow helper
    // (cgp-auth delays wrong passwords on purpose) still gets many restarts
    // and kills in a run. The first guess is low: a fast helper catches up
    // in a round or two, a slow one never starts with a minutes-long round.
    let mut rate = 20.0_f64;
    while Instant::now() < deadline {
        totals.rounds += 1;
        let n = ((rate * (2.0 + rng.f64() * 18.0)) as u32).clamp(20, 3000);
        let started = Instant::now();
        let in_flight = [1, 4, 16, 64][rng.usize(..4)];
        let mut cmd = Command::new(&plan.sim);
        cmd.arg("--cwd")
            .arg(&plan.base)
            .args(["--in-flight", &in_flight.to_string()])
            .args(["--generate", &n.to_string()])
            .args(["--reply-timeout", "30"]);
        for t in &plan.templates {
            cmd.arg("--request").arg(t);
        }
        cmd.arg("--").arg(&plan.helper);
        if let Some(c) = &plan.config {
            cmd.arg("--config").arg(c);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                totals.violations += 1;
                eprintln!("{}: cannot start cgp-helper-sim: {e}", plan.name);
                break;
            }
        };
        lock(slot).sim = Some(child.id());
        let out = child.wait_with_output();
        let killed = {
            let mut s = lock(slot);
            s.sim = None;
            std::mem::take(&mut s.killed)
        };
        let Ok(out) = out else {
            totals.violations += 1;
            continue;
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (requests, replies, violations) = summary(&stdout).unwrap_or((0, 0, 0));
        if replies > 0 {
            rate = replies as f64 / started.elapsed().as_secs_f64().max(0.001);
        }
        if killed {
            totals.killed_rounds += 1;
            after_kill = true;
            continue;
        }
        totals.requests += requests;
        totals.replies += replies;
        if !out.status.success() {
            totals.violations += violations.max(1);
            if after_kill {
                totals.reopen_failures += 1;
            }
            let log = plan
                .failures
                .join(format!("{}-round{}.log", plan.name, totals.rounds));
            let _ = std::fs::write(
                &log,
                format!(
                    "{stdout}\n--- stderr ---\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
        after_kill = false;
    }
    totals
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The children of `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (comm) state ppid …": comm may hold spaces and parentheses.
            let ppid: u32 = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// Signals the helper of a running round and marks the round killed.
fn kill_helper(slot: &Mutex<Slot>, sig: libc::c_int) -> bool {
    let mut s = lock(slot);
    let Some(sim) = s.sim else { return false };
    let Some(helper) = children(sim).into_iter().next() else {
        return false;
    };
    // SAFETY: kill has no memory-safety preconditions; the pid is the child
    // of a simulator this process started and still waits for.
    unsafe {
        libc::kill(helper as libc::pid_t, sig);
    }
    s.killed = true;
    true
}

fn pause(rng: &mut fastrand::Rng, min_ms: u64, max_ms: u64) {
    std::thread::sleep(Duration::from_millis(rng.u64(min_ms..=max_ms)));
}

/// The back ends the chaos thread injects faults into.
struct Peers {
    slapd: Slapd,
    haproxy: Haproxy,
    redis: Redis,
}

/// A back end that can be frozen and restarted.
trait Peer {
    fn freeze(&self);
    fn thaw(&self);
    fn stop(&mut self);
    fn start_again(&mut self);
}

macro_rules! peer {
    ($($t:ty),*) => {$(
        impl Peer for $t {
            fn freeze(&self) { <$t>::freeze(self) }
            fn thaw(&self) { <$t>::thaw(self) }
            fn stop(&mut self) { <$t>::stop(self) }
            fn start_again(&mut self) { <$t>::start_again(self) }
        }
    )*};
}
peer!(Slapd, Haproxy, Redis);

/// Freezes `peer` (SIGSTOP) for 1–8 s, or stops it and starts it again
/// after 0.5–3 s (a restarted HAProxy comes back with empty slots, a
/// restarted redis-server empty, as without persistence).
fn fault(peer: &mut dyn Peer, restart: bool, count: &mut Faults, rng: &mut fastrand::Rng) {
    if restart {
        peer.stop();
        pause(rng, 500, 3000);
        peer.start_again();
        count.restarted += 1;
    } else {
        peer.freeze();
        pause(rng, 1000, 8000);
        peer.thaw();
        count.frozen += 1;
    }
}

/// Injects faults until `done`.
fn chaos(
    peers: &mut Peers,
    slots: &[Arc<Mutex<Slot>>],
    every: Duration,
    done: &AtomicBool,
    mut rng: fastrand::Rng,
) -> Chaos {
    let mut c = Chaos::default();
    let mean = every.as_millis() as u64;
    while !done.load(Ordering::SeqCst) {
        pause(&mut rng, mean / 2, mean * 3 / 2);
        if done.load(Ordering::SeqCst) {
            break;
        }
        let k = rng.u8(0..8);
        let restart = k % 2 == 1;
        match k {
            0 | 1 => fault(&mut peers.slapd, restart, &mut c.slapd, &mut rng),
            2 | 3 => fault(&mut peers.haproxy, restart, &mut c.haproxy, &mut rng),
            4 | 5 => fault(&mut peers.redis, restart, &mut c.redis, &mut rng),
            _ => {
                let slot = &slots[rng.usize(..slots.len())];
                let (sig, count) = if k == 6 {
                    (libc::SIGKILL, &mut c.helper_kills)
                } else {
                    (libc::SIGTERM, &mut c.helper_terms)
                };
                if kill_helper(slot, sig) {
                    *count += 1;
                }
            }
        }
    }
    c
}

/// Prints the counts; true when the run passed.
fn report(results: &[(&str, Totals)], c: &Chaos, work: &Path) -> bool {
    println!();
    println!(
        "{:<14} {:>7} {:>7} {:>10} {:>10} {:>10} {:>8}",
        "helper", "rounds", "killed", "requests", "replies", "violations", "reopen!"
    );
    let mut pass = true;
    for (name, t) in results {
        println!(
            "{:<14} {:>7} {:>7} {:>10} {:>10} {:>10} {:>8}",
            name, t.rounds, t.killed_rounds, t.requests, t.replies, t.violations, t.reopen_failures
        );
        pass &= t.violations == 0 && t.reopen_failures == 0 && t.rounds > t.killed_rounds;
    }
    for (name, t) in results {
        println!("{name}: config {}", t.config);
    }
    println!(
        "chaos: slapd frozen {} restarted {}; haproxy frozen {} restarted {}; redis frozen {} restarted {}; helpers killed (SIGKILL) {} terminated (SIGTERM) {}",
        c.slapd.frozen,
        c.slapd.restarted,
        c.haproxy.frozen,
        c.haproxy.restarted,
        c.redis.frozen,
        c.redis.restarted,
        c.helper_kills,
        c.helper_terms
    );
    if pass {
        println!("soak: PASS (zero protocol violations, every store reopened)");
    } else {
        println!(
            "soak: FAIL (failed rounds are in {})",
            work.join("failures").display()
        );
    }
    pass
}
