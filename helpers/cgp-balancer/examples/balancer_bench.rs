//! Benchmark of cgp-balancer against a real HAProxy: how many requests a
//! SERVERS command sends to HAProxy, and how long reconciling 50 servers
//! takes. Run with `bench/balancer.sh`.
//!
//! A relay between the helper and HAProxy's admin socket counts the request
//! lines the helper sends, so the figures come from the wire, not from the
//! helper's own account. Times are reported as ratios to a baseline measured
//! in the same run: one direct `show servers state` round trip to HAProxy.

use cgp_tests::bin;
use cgp_tests::haproxy::Haproxy;
use cgp_tests::session::Session;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SERVERS: usize = 50;
const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);

/// What the helper sent to HAProxy.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    /// `show …` requests (reading the state).
    reads: usize,
    /// Other request lines: one per balancer entry changed.
    changes: usize,
    /// Runtime API commands inside those lines (joined with `;`).
    commands: usize,
}

/// Forwards each connection to HAProxy's admin socket, counting requests.
fn relay(listen: &Path, upstream: PathBuf) -> Arc<Mutex<Counts>> {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let listener = UnixListener::bind(listen).expect("bind relay socket");
    let c = counts.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let up = upstream.clone();
            let c = c.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = BufReader::new(client.try_clone().expect("clone"));
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                {
                    let mut c = c.lock().unwrap();
                    if line.starts_with("show ") {
                        c.reads += 1;
                    } else {
                        c.changes += 1;
                        c.commands += line.split(';').count();
                    }
                }
                let mut server = UnixStream::connect(&up).expect("haproxy admin socket");
                server.write_all(line.as_bytes()).expect("forward");
                let mut answer = Vec::new();
                let _ = server.read_to_end(&mut answer);
                let mut client = client;
                let _ = client.write_all(&answer);
            });
        }
    });
    counts
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let hx = Haproxy::start("backend cgp\n    balance roundrobin\n");
    let work = tempfile::tempdir().expect("work dir");
    let relay_path = work.path().join("relay.sock");
    let counts = relay(&relay_path, hx.socket());
    let config = work.path().join("balancer.toml");
    // The runtime deadline is left at its default (20 s).
    std::fs::write(
        &config,
        format!(
            "state_path = \"{d}/state\"\ndrain_grace = \"1h\"\nreconcile_interval = \"0s\"\n\
             [runtime]\nmax_in_flight = 1\nstats_interval = \"0s\"\n[log]\njournald = false\n\
             [groups.cgp]\nweight = 10\n[groups.cgp.haproxy]\nsocket = \"{s}\"\nbackend = \"cgp\"\nport = 25\n",
            d = work.path().display(),
            s = relay_path.display()
        ),
    )
    .expect("config");
    let mut h = Session::start(&bin("cgp-balancer"), &config);

    let baseline = median(
        (0..21)
            .map(|_| {
                let t = Instant::now();
                hx.command("show servers state cgp");
                t.elapsed()
            })
            .collect(),
    );
    assert_eq!(h.ask("START cgp"), "OK");

    let ip = |i: usize| format!("127.0.1.{i}");
    let list = |ips: &[String]| format!("SERVERS cgp ({})", ips.join(", "));
    let all: Vec<String> = (1..=SERVERS).map(ip).collect();
    let one_left: Vec<String> = all[..SERVERS - 1].to_vec();
    let one_joined: Vec<String> = one_left.iter().cloned().chain([ip(SERVERS + 1)]).collect();
    let scenarios = [
        (format!("{SERVERS} servers from scratch"), list(&all)),
        ("same set again".to_string(), list(&all)),
        (format!("1 of {SERVERS} leaves (drain)"), list(&one_left)),
        (format!("1 joins ({SERVERS} again)"), list(&one_joined)),
        ("1 replaced by another".to_string(), list(&all)),
    ];
    println!("baseline: one direct `show servers state` round trip = {baseline:.2?}");
    println!(
        "{:<26} {:>6} {:>14} {:>9} {:>10} {:>12}",
        "SERVERS command", "reply", "HAProxy reads", "changes", "time", "x baseline"
    );
    let mut scratch = Duration::ZERO;
    for (name, request) in &scenarios {
        let before = *counts.lock().unwrap();
        let t = Instant::now();
        let reply = h.ask(request);
        let took = t.elapsed();
        let after = *counts.lock().unwrap();
        if scratch.is_zero() {
            scratch = took;
        }
        println!(
            "{:<26} {:>6} {:>14} {:>9} {:>8.1}ms {:>12.1}",
            name,
            reply,
            after.reads - before.reads,
            after.changes - before.changes,
            took.as_secs_f64() * 1000.0,
            took.as_secs_f64() / baseline.as_secs_f64()
        );
    }
    let ready = hx
        .servers("cgp")
        .iter()
        .filter(|s| s.ready() && s.name.starts_with("cgp"))
        .count();
    println!(
        "from scratch: {scratch:.2?} = {:.3} of the default deadline ({DEFAULT_DEADLINE:?}); HAProxy shows {ready} ready servers",
        scratch.as_secs_f64() / DEFAULT_DEADLINE.as_secs_f64()
    );
    let c = *counts.lock().unwrap();
    println!(
        "total: {} change lines carrying {} runtime API commands, {} state reads",
        c.changes, c.commands, c.reads
    );
    h.finish();
}
